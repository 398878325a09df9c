"""``rptdose run`` → ``rptdose mc validate`` → ``rptdose run``: the re-run redoes only the report,
whose methods section then quotes the validation (the report stage's fingerprint includes
``validation/validation.json``)."""

import pytest

from planning.workflow.pipeline import run_pipeline
from planning.workflow.validate import validate_workdir
from tests.integration.test_pipeline import _options, dicom_patient  # noqa: F401 (fixture)


@pytest.mark.slow
def test_validation_reaches_the_report_on_the_next_run(dicom_patient):  # noqa: F811
    root, manifest = dicom_patient
    work = root / "work_validate"
    first = run_pipeline(manifest, work, _options(root))
    assert "report" in first.ran
    html = (work / "report" / "report.html").read_text()
    assert "No study-specific validation of the dose engine was run" in html

    validate_workdir(work, "mc", "led", mc_decays=2000, seed=1)
    again = run_pipeline(manifest, work, _options(root))
    assert again.ran == ["report"]  # only the report depends on the validation
    html = (work / "report" / "report.html").read_text()
    assert "Study-specific engine validation" in html
    assert "Validation of led against the mc reference" in html
    assert "No study-specific validation" not in html
    # Unchanged validation: nothing to redo.
    assert run_pipeline(manifest, work, _options(root)).ran == []
