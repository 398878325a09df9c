"""``rptdose cohort run`` through typer's CliRunner, on a real local Dask cluster."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from cli.cohort import cohort_app
from dosimetry.errors import InputError
from tests.planning.workflow.cohort_studies import write_study

app = typer.Typer()
app.add_typer(cohort_app, name="cohort")


def test_failed_studies_are_listed_and_the_exit_status_says_so(tmp_path):
    # The real pipeline on two studies that cannot run: one manifest is not YAML, the other
    # points at images that were deleted. Both fail quickly; each is reported, neither hides
    # the other, and the run ends with status 1.
    corrupt = tmp_path / "corrupt.yaml"
    corrupt.write_text("patient_id: [never closed\n")
    gone = write_study(tmp_path / "gone", "PSEUDO-GONE", 7400.0)
    (tmp_path / "gone" / "spect.nii.gz").unlink()
    res = CliRunner().invoke(app, ["cohort", "run", str(corrupt), str(gone), "-o",
                                   str(tmp_path / "out"), "--dose-engine", "led",
                                   "--workers", "2"])
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert "2 of 2 studies failed: corrupt, PSEUDO-GONE" in res.output
    assert "FileNotFoundError" in res.output and "spect.nii.gz" in res.output
    assert "not valid YAML" in res.output
    summary = json.loads((tmp_path / "out" / "cohort.json").read_text())
    assert summary["failed"] == ["corrupt", "PSEUDO-GONE"]
    assert summary["scheduler"] == "local" and summary["n_workers"] == 2
    assert summary["options"]["dose_engine"] == "led"
    assert (tmp_path / "out" / "cohort.csv").read_text().startswith("name,status,stage,")


def test_bad_input_is_one_of_our_errors(tmp_path):
    good = write_study(tmp_path / "a", "PSEUDO-A", 7400.0)
    res = CliRunner().invoke(app, ["cohort", "run", str(good), str(tmp_path / "nowhere.yaml"),
                                   "-o", str(tmp_path / "out")])
    assert isinstance(res.exception, InputError)
    assert "nowhere.yaml" in str(res.exception)
    res = CliRunner().invoke(app, ["cohort", "run", str(good), "-o", str(tmp_path / "out"),
                                   "--dose-engine", "gamma-knife"])
    assert isinstance(res.exception, InputError) and "gamma-knife" in str(res.exception)
    res = CliRunner().invoke(app, ["cohort", "run", str(good), "-o", str(tmp_path / "out"),
                                   "--workers", "0"])
    assert isinstance(res.exception, InputError) and "workers must be ≥ 1, got 0" in str(
        res.exception)
    assert not (tmp_path / "out").exists()
