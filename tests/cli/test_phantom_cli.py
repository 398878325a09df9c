"""``rptdose phantom make`` / ``iec`` through typer's CliRunner."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.phantom import parse_hours, phantom_app
from dosimetry.errors import InputError

SMALL = ["--ct-mm", "6", "--slice-mm", "6", "--spect-mm", "9.5904", "--spect-matrix", "64"]


def test_make_writes_a_study_and_reports_it(tmp_path):
    out = tmp_path / "p"
    res = CliRunner().invoke(phantom_app, ["make", str(out), "--preset", "lu177-psma",
                                           "--timepoints-h", "4,24", "--seed", "2",
                                           "--format", "nifti", "--lesions", "1",
                                           "--counts", *SMALL])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and "study.yaml" in res.output and "24h" in res.output
    truth = json.loads((out / "truth" / "truth.json").read_text())
    assert truth["preset"] == "lu177-psma" and truth["generator"]["seed"] == 2
    assert (out / "nifti" / "24h_spect.nii.gz").is_file()


def test_i131_includes_head_and_neck_and_says_so(tmp_path):
    res = CliRunner().invoke(phantom_app, ["make", str(tmp_path / "p"), "--preset", "i131-dtc",
                                           "--timepoints-h", "24", "--format", "nifti",
                                           "--lesions", "0", *SMALL])
    assert res.exit_code == 0, res.output
    assert "head and neck" in res.output
    table = json.loads((tmp_path / "p" / "truth" / "labels.json").read_text())
    assert {"thyroid_gland", "parotid_gland_left"} <= {r["name"] for r in table}


@pytest.mark.parametrize(("args", "match"), [
    (["--preset", "y90-glass"], "y90-glass"),
    (["--timepoints-h", "4,x"], "'4,x'"),
    (["--timepoints-h", "24,4"], "24.0 h and 4.0 h"),
    (["--format", "png"], "'png'"),
    (["--lesions", "99"], "lesions 99"),
])
def test_bad_input_raises_input_error_naming_the_value(tmp_path, args, match):
    res = CliRunner().invoke(phantom_app, ["make", str(tmp_path / "p"), *args, *SMALL])
    assert res.exit_code != 0
    assert isinstance(res.exception, InputError)
    assert match in str(res.exception)
    assert not (tmp_path / "p").exists()


def test_existing_folder_is_refused(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "x").write_text("keep")
    res = CliRunner().invoke(phantom_app, ["make", str(tmp_path / "p"), "--timepoints-h", "4",
                                           *SMALL])
    assert isinstance(res.exception, InputError) and "not empty" in str(res.exception)
    assert (tmp_path / "p" / "x").read_text() == "keep"


def test_spect_model_option_reaches_the_simulation(tmp_path):
    """``--spect-model projection`` makes the SPECT in projection space (recorded in the
    truth); an unknown model is refused by name before anything is written."""
    out = tmp_path / "p"
    res = CliRunner().invoke(phantom_app, ["make", str(out), "--timepoints-h", "24",
                                           "--format", "nifti", "--lesions", "0",
                                           "--spect-model", "projection", *SMALL])
    assert res.exit_code == 0, res.output
    truth = json.loads((out / "truth" / "truth.json").read_text())
    assert truth["acquisition"]["spect_model"] == "projection"
    assert "projection" in truth["timepoints"][0]["spect"]
    bad = CliRunner().invoke(phantom_app, ["make", str(tmp_path / "q"), "--spect-model",
                                           "analytic", *SMALL])
    assert isinstance(bad.exception, InputError) and "'analytic'" in str(bad.exception)
    assert not (tmp_path / "q").exists()


def test_iec_command(tmp_path):
    res = CliRunner().invoke(phantom_app, ["iec", str(tmp_path / "iec"), "--ratio", "4",
                                           "--nuclide", "I-131", "--ct-mm", "4",
                                           "--spect-mm", "6"])
    assert res.exit_code == 0, res.output
    assert "sphere_37mm" in res.output
    truth = json.loads((tmp_path / "iec" / "truth" / "truth.json").read_text())
    assert truth["nuclide"] == "I-131" and truth["ratio"] == 4.0


def test_errors_reach_a_parent_app_as_rptdose_errors(tmp_path):
    """Registered under a parent app (as ``rptdose phantom``), bad input still surfaces as an
    RptdoseError, which the main entry point turns into one line and exit status 1."""
    import typer

    from dosimetry.errors import RptdoseError

    app = typer.Typer()
    app.add_typer(phantom_app, name="phantom")
    try:
        app(["phantom", "make", str(tmp_path / "p"), "--preset", "nope"],
            standalone_mode=False)
    except RptdoseError as exc:
        assert "nope" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("no error raised")


def test_parse_hours():
    assert parse_hours("4, 24,96") == (4.0, 24.0, 96.0)
    with pytest.raises(InputError, match="''"):
        parse_hours("")
