"""``validate_cmd`` (``rptdose mc validate``) through typer's CliRunner.

Mounted on a small app as ``cli/mc.py`` mounts it; the work folder is a small digital patient
whose kinetics and dose (LED) stages ran (``tests/planning/workflow/validation_workdir.py``).
"""

import json

import pytest
import typer
from typer.testing import CliRunner

from cli.validate import validate_cmd
from dosimetry.errors import InputError, MissingDataError
from tests.planning.workflow.validation_workdir import make_validation_workdir

app = typer.Typer(pretty_exceptions_enable=False)
app.command("validate")(validate_cmd)
app.command("other")(lambda: None)  # two commands: "validate" stays a sub-command name

#: Wide enough that rich does not fold the table's columns.
ENV = {"COLUMNS": "200"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return make_validation_workdir(tmp_path_factory.mktemp("clival"), dose_engine="led").root


def test_validate_prints_the_table_and_the_report_path(workdir):
    r = CliRunner().invoke(app, ["validate", str(workdir), "--engines", "led,dvk",
                                 "--mc-decays", "5000", "--seed", "1"], env=ENV)
    assert r.exit_code == 0, r.output
    out = r.output
    assert "reference: the fast voxel Monte Carlo with 5e+03 decays, seed 1" in out
    assert "reference σ (median)" in out
    assert "VOI mean dose: engine − reference" in out
    assert "led Δ [%]" in out and "dvk Δ [%]" in out
    for name in ("liver", "kidney_left", "lesion_1"):
        assert name in out
    assert "γ 3%/3mm global" in out and "γ 2%/2mm global" in out
    assert f"report: {workdir / 'validation' / 'validation.html'}" in out
    data = json.loads((workdir / "validation" / "validation.json").read_text())
    assert data["reference"]["n_decays"] == 5000 and data["reference"]["seed"] == 1
    assert data["comparison"]["engines"] == ["led", "dvk"]
    assert data["study"]["dose_engine"] == "led"
    # The CT's air below −1000 HU is clipped: said once, naming the runs that met it.
    assert "clipped" in out and "(reference, led, dvk)" in out


def test_validate_errors_are_ours(workdir, tmp_path):
    r = CliRunner().invoke(app, ["validate", str(tmp_path)])
    assert isinstance(r.exception, InputError) and "not a work folder" in str(r.exception)
    r = CliRunner().invoke(app, ["validate", str(workdir), "--engines", "dvk,fast"])
    assert isinstance(r.exception, InputError) and "engines 'dvk,fast'" in str(r.exception)
    missing = tmp_path / "gate_dose.nii.gz"
    r = CliRunner().invoke(app, ["validate", str(workdir), "--reference", "gate",
                                 "--reference-dose", str(missing), "--engines", "led"])
    assert isinstance(r.exception, InputError)
    assert f"{missing}: image file not found" in str(r.exception)
    r = CliRunner().invoke(app, ["validate", str(workdir), "--reference", "geant4"])
    assert r.exit_code == 2  # usage error from typer: invalid choice
    r = CliRunner().invoke(app, ["validate", str(workdir), "--mc-decays", "0"])
    assert r.exit_code == 2  # below min=1


def test_validate_without_the_dose_stage(workdir, tmp_path):
    import shutil

    early = tmp_path / "work"
    shutil.copytree(workdir, early, ignore=shutil.ignore_patterns("dose", "validation"))
    r = CliRunner().invoke(app, ["validate", str(early), "--engines", "led"])
    assert isinstance(r.exception, MissingDataError)
    assert "dose/vois.json: missing (the dose stage has not run)" in str(r.exception)
