"""End to end: a DICOM digital patient through ingest → register → segment → … → report.

The default-suite test uses a small, coarse digital patient and the truth label map as imported
masks (``--segmenter masks:PATH``), so that it checks the pipeline's plumbing — resume, force,
exports, privacy, failure handling — in about a minute. The slow test runs ``rptdose demo`` as a
user would (built-in segmentation model, DVK) and renders the PDF and HTML.
"""

import json
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from cli.main import app, main
from dosimetry.io.images import read_image
from dosimetry.io.rtdose import read_rtdose
from dosimetry.study.ingest import ingest_dicom, require_complete
from dosimetry.study.manifest import load_study
from phantoms import GridSpec, PatientConfig, make_patient
from planning.results import load_results
from planning.workflow.pipeline import PipelineOptions, StageError, run_pipeline

runner = CliRunner()


@pytest.fixture(scope="module")
def dicom_patient(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    cfg = PatientConfig(grid=GridSpec(inplane_mm=6.0, slice_mm=6.0), spect_spacing_mm=9.5904,
                        spect_matrix=64, output_format="dicom", seed=7, n_lesions=1,
                        timepoints_h=(4.0, 24.0, 96.0))
    made = make_patient(root / "patient", cfg)
    manifest = root / "study.yaml"
    require_complete(ingest_dicom(root / "patient" / "dicom", manifest,
                                  spect_fwhm_mm=made.study.spect_fwhm_mm))
    return root, manifest


def _options(root, **kw):
    kw.setdefault("dose_engine", "led")
    return PipelineOptions(segmenter=f"masks:{root}/patient/truth/labels.nii.gz",
                           truth_dir=root / "patient" / "truth", **kw)


def test_pipeline_runs_resumes_and_exports(dicom_patient):
    root, manifest = dicom_patient
    work = root / "work"
    res = run_pipeline(manifest, work, _options(root))
    assert res.ran == ["registration", "segmentation", "kinetics", "dose", "planning", "report"]
    rep = work / "report"
    for name in ("report.html", "report.pdf", "results.json", "vois.csv", "dose.nii.gz",
                 "dose_rtdose.dcm", "labels.nii.gz", "labels.json", "truth_check.json",
                 "labels_rtstruct.dcm"):
        assert (rep / name).is_file(), name
    results = load_results(rep / "results.json")
    study = load_study(manifest)
    assert results.nuclide == "Lu-177"
    assert results.administered_activity_mbq == pytest.approx(study.administered_activity_mbq)
    liver = next(v for v in results.vois if v.name == "liver")
    assert liver.mass_g > 0 and liver.tia_mbq_h > 0 and liver.mean_dose_gy > 0
    assert liver.dose_gy_per_gbq == pytest.approx(
        liver.mean_dose_gy / (study.administered_activity_mbq / 1000), rel=1e-9)
    # The partial-volume correction ran with the FWHM the manifest carries.
    fits = json.loads((work / "kinetics" / "fits.json").read_text())
    assert fits["partial_volume_correction"]["fwhm_mm"] == study.spect_fwhm_mm
    # Liver TIA against the truth after motion, registration and PVC: the truth check's liver
    # TIA error. 10 %: noise (4 timepoints of Poisson counts), the GTM's Gaussian model of the
    # coarse 9.6 mm SPECT voxels, and registration residuals of a few mm.
    truth = json.loads((root / "patient/truth/truth.json").read_text())["organs"]
    assert liver.tia_mbq_h == pytest.approx(truth["liver"]["tia_mbq_h"], rel=0.10)

    # RT Dose: the dose on the reference CT's frame of reference, values as in dose.nii.gz.
    ds = pydicom.dcmread(rep / "dose_rtdose.dcm")
    ct0 = next(p for p in sorted((root / "patient" / "dicom").rglob("*.dcm"))
               if pydicom.dcmread(p, stop_before_pixels=True).Modality == "CT")
    ct_ds = pydicom.dcmread(ct0, stop_before_pixels=True)
    dose = read_image(rep / "dose.nii.gz")
    rt = read_rtdose(rep / "dose_rtdose.dcm")
    assert np.allclose(rt.GetOrigin(), dose.GetOrigin(), atol=1e-3)
    # Privacy by default: the pseudonym, never the scanner's patient ID or name.
    assert ds.PatientID == study.patient_id != ct_ds.PatientID
    assert str(ds.PatientName) == study.patient_id
    assert "PatientBirthDate" not in ds or not ds.PatientBirthDate
    html = (rep / "report.html").read_text()
    assert str(ct_ds.PatientID) not in html and study.patient_id in html
    rs = pydicom.dcmread(rep / "labels_rtstruct.dcm")
    assert rs.PatientID == study.patient_id
    assert "liver" in [r.ROIName for r in rs.StructureSetROISequence]
    assert rs.StructureSetROISequence[0].ReferencedFrameOfReferenceUID == ds.FrameOfReferenceUID

    # Re-run: everything up to date; forcing kinetics redoes it and the stages after it.
    again = run_pipeline(manifest, work, _options(root))
    assert again.ran == [] and len(again.skipped) == 6
    forced = run_pipeline(manifest, work, _options(root, force=("kinetics",)))
    assert forced.skipped == ["registration", "segmentation"]
    assert forced.ran == ["kinetics", "dose", "planning", "report"]

    # --keep-identifiers puts the CT's identity into the RT Dose, and a date shift moves the
    # study date; only the report stage (and planning, for the date) re-run.
    kept = run_pipeline(manifest, work, _options(root, keep_identifiers=True,
                                                 date_shift_days=-30))
    assert "registration" in kept.skipped and "report" in kept.ran
    ds = pydicom.dcmread(rep / "dose_rtdose.dcm")
    assert ds.PatientID == ct_ds.PatientID and ds.StudyInstanceUID == ct_ds.StudyInstanceUID
    shifted = load_results(rep / "results.json").administration_date
    assert (study.injection_datetime.date() - shifted).days == 30


def test_pipeline_with_the_deep_engine_carries_its_model_sigma(dicom_patient):
    root, manifest = dicom_patient
    work = root / "work_deep"
    res = run_pipeline(manifest, work, _options(root, dose_engine="deep"))
    assert "dose" in res.ran
    engine = json.loads((work / "dose" / "engine.json").read_text())
    assert engine["engine"] == "deep"
    # this fixture's 9.6 mm SPECT voxels are outside the trained 3–4.8 mm: said, not hidden
    assert any("outside the trained" in w for w in engine["warnings"])
    vois = json.loads((work / "dose" / "vois.json").read_text())["vois"]
    liver = next(v for v in vois if v["name"] == "liver")
    comps = liver["sigma_components_relative"]
    assert comps["deep_model"] > 0 and comps["engine_statistics"] == 0.0
    assert comps["dose_conversion"] == pytest.approx(0.02)
    # the far-field photon term's own uncertainty: 10 % of a part of the liver's dose
    assert 0.0 < comps["far_field"] < 0.10
    results = load_results(work / "report" / "results.json")
    assert next(v for v in results.vois if v.name == "liver").mean_dose_gy > 0


def test_a_failing_stage_names_itself_and_keeps_earlier_results(dicom_patient, tmp_path):
    root, manifest = dicom_patient
    work = tmp_path / "work"
    bad = _options(root).model_copy(update={"segmenter": f"masks:{tmp_path}/none.nii.gz"})
    with pytest.raises(StageError, match="segmentation"):
        run_pipeline(manifest, work, bad)
    reg = sorted((work / "registration").glob("*_ct.nii.gz"))
    assert reg, "registration results must survive the failure of a later stage"
    assert not (work / "report").exists() or not any((work / "report").iterdir())
    # The fix (a real label map) resumes after registration.
    res = run_pipeline(manifest, work, _options(root))
    assert res.skipped == ["registration"] and res.ran[0] == "segmentation"


def test_cli_run_bad_input_exits_nonzero_without_traceback(dicom_patient, tmp_path, capsys):
    root, _ = dicom_patient
    assert main(["run", str(tmp_path / "missing.yaml"), "-o", str(tmp_path / "w")]) == 1
    out = capsys.readouterr()
    assert "missing.yaml" in out.err and "Traceback" not in out.err + out.out
    assert main(["run", str(root / "study.yaml"), "-o", str(tmp_path / "w"),
                 "--dose-engine", "nonsense"]) == 1
    out = capsys.readouterr()
    assert "nonsense" in out.err and "Traceback" not in out.err + out.out
    assert not (tmp_path / "w").exists()  # refused before anything was written


@pytest.mark.slow
def test_demo_renders_pdf_and_html(tmp_path):
    r = runner.invoke(app, ["demo", "-o", str(tmp_path / "demo")])
    assert r.exit_code == 0, r.output
    rep = tmp_path / "demo" / "work" / "report"
    assert str(rep / "report.pdf") in r.output.replace("\n", "")
    html = (rep / "report.html").read_text()
    for heading in ("Image quality assurance", "Time-activity curves", "Dosimetry per VOI",
                    "Dose distribution", "Treatment plan", "Truth check",
                    "Methods and validation", "Provenance"):
        assert heading in html, heading
    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm (poppler-utils) is not installed: PDF rendering not checked")
    subprocess.run(["pdftoppm", "-png", "-r", "30", str(rep / "report.pdf"),
                    str(tmp_path / "page")], check=True, capture_output=True)
    pages = sorted(tmp_path.glob("page*.png"))
    assert len(pages) >= 2
    img = sitk.ReadImage(str(pages[0]))
    assert np.asarray(sitk.GetArrayViewFromImage(img)).std() > 0  # not a blank page
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no headless Chromium installed: HTML rendering not checked")
    shot = tmp_path / "html.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                    f"--screenshot={shot}", "--window-size=1200,3000",
                    (rep / "report.html").as_uri()], check=True, capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000
