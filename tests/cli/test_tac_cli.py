"""``rptdose tac fit``: JSON and human output, plot, seeds, and errors."""

import json
import math

import pytest
import typer
from typer.testing import CliRunner

from cli.tac import tac_app
from dosimetry.errors import FitError, InputError, NuclideError


def _app() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(tac_app, name="tac")
    return app


def _invoke(*args):
    return CliRunner().invoke(_app(), ["tac", *map(str, args)])


def _mono_csv(tmp_path, name="tac.csv"):
    lam = math.log(2) / 50.0  # per hour: T_eff 50 h
    rows = ["voi,time_h,activity_mbq,sigma_mbq"]
    for t in (4, 24, 48, 96, 168):
        a = 100.0 * math.exp(-lam * t)
        rows.append(f"kidney,{t},{a!r},{0.05 * a!r}")
    for t, a in ((1, 40.1), (4, 75.3), (24, 68.0), (48, 50.2), (96, 27.1), (168, 10.9)):
        rows.append(f"spleen,{t},{a},{0.05 * a}")
    p = tmp_path / name
    p.write_text("\n".join(rows) + "\n")
    return p, 100.0 / lam


def test_json_output_per_voi(tmp_path):
    csv, truth = _mono_csv(tmp_path)
    res = _invoke("fit", csv, "--json", "--mc-samples", "50", "--seed", "3")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["nuclide"] == "Lu-177" and doc["seed"] == 3
    by = {v["voi"]: v for v in doc["vois"]}
    k = by["kidney"]
    for key in ("model", "tia_mbq_h", "tia_sigma_mbq_h", "params", "aicc", "akaike_weights",
                "extrapolated_fraction", "success", "message", "warnings", "reason"):
        assert key in k
    assert k["success"] and k["model"] == "mono"
    assert k["tia_mbq_h"] == pytest.approx(truth, rel=1e-6)  # exact mono-exponential data
    assert k["effective_half_lives_h"][0] == pytest.approx(50.0, rel=1e-6)
    assert k["tia_sigma_mc_mbq_h"] is not None and k["tia_sigma_mbq_h"] > 0
    assert set(k["aicc"]) == {"mono", "mono-uptake"}  # 5 samples: biexp not allowed
    assert math.fsum(w for w in k["akaike_weights"].values() if w is not None) == \
        pytest.approx(1.0)
    assert by["spleen"]["model"] == "mono-uptake"


def test_human_output_shows_aicc_table_and_reason(tmp_path):
    csv, _ = _mono_csv(tmp_path)
    res = _invoke("fit", csv, "--mc-samples", "0")
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "VOI kidney" in out and "VOI spleen" in out
    assert "AICc" in out and "weight" in out
    assert "chosen:" in out and "acceptance criteria" in out
    assert "MBq·h" in out


def test_plot_is_written_atomically(tmp_path):
    csv, _ = _mono_csv(tmp_path)
    png = tmp_path / "plots" / "tac.png"
    res = _invoke("fit", csv, "--plot", png, "--log-y", "--mc-samples", "0")
    assert res.exit_code == 0, res.output
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert [p.name for p in png.parent.iterdir()] == ["tac.png"]  # no temporary left behind


def test_same_seed_same_output(tmp_path):
    csv, _ = _mono_csv(tmp_path)
    a = _invoke("fit", csv, "--json", "--mc-samples", "30", "--seed", "11")
    b = _invoke("fit", csv, "--json", "--mc-samples", "30", "--seed", "11")
    assert a.exit_code == 0 and a.stdout == b.stdout


def test_trapezoid_model_and_calibration_term(tmp_path):
    csv, _ = _mono_csv(tmp_path)
    res = _invoke("fit", csv, "--json", "--model", "trapezoid", "--mc-samples", "0",
                  "--calibration-sigma-percent", "5")
    assert res.exit_code == 0, res.output
    k = json.loads(res.stdout)["vois"][0]
    assert k["model"] == "trapezoid" and k["params"] == {}
    fit_s, tot_s = k["tia_sigma_fit_mbq_h"], k["tia_sigma_mbq_h"]
    assert tot_s == pytest.approx(math.hypot(fit_s, 0.05 * k["tia_mbq_h"]), rel=1e-9)


def test_no_sigma_column_uses_assumed_relative_sigma(tmp_path):
    p = tmp_path / "k.csv"
    p.write_text("time_h,activity_mbq\n4,10\n24,8\n48,6.5\n168,2.4\n")
    res = _invoke("fit", p, "--json", "--mc-samples", "0", "--relative-sigma-percent", "8")
    assert res.exit_code == 0, res.output
    v = json.loads(res.stdout)["vois"][0]
    assert v["voi"] == "k" and v["sigma_assumed"] is True


@pytest.mark.parametrize(("text", "exc", "match"), [
    ("voi,time_h,activity_mbq\nkid,4,1\nkid,4,2\n", InputError, r"'kid'.*duplicate time 4 h"),
    ("voi,time_h,activity_mbq\nkid,4,1\nkid,24,-2\n", InputError, r"'kid'.*negative"),
    ("voi,time_h,activity_mbq\nkid,-2,1\nkid,24,2\n", InputError, r"'kid'.*before injection"),
    ("voi,time_h,activity_mbq\nkid,4,nan\nkid,24,2\n", InputError, r"'kid'.*is nan"),
    ("voi,time_h,activity_mbq\nkid,4,1\n", InputError, r"'kid'.*at least 2 time points"),
])
def test_bad_csv_raises_input_error(tmp_path, text, exc, match):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    res = _invoke("fit", p)
    assert res.exit_code != 0
    assert isinstance(res.exception, exc)
    with pytest.raises(exc, match=match):
        raise res.exception


def test_bad_options(tmp_path):
    csv, _ = _mono_csv(tmp_path)
    res = _invoke("fit", csv, "--model", "quadexp")
    assert isinstance(res.exception, InputError) and "quadexp" in str(res.exception)
    res = _invoke("fit", csv, "--nuclide", "Xx-999")
    assert isinstance(res.exception, NuclideError) and "Xx-999" in str(res.exception)


def test_failed_fit_is_reported_and_exits_with_fit_error(tmp_path):
    p = tmp_path / "short.csv"
    p.write_text("voi,time_h,activity_mbq\nliver,24,3\nliver,96,2\nliver,168,1\n")
    res = _invoke("fit", p, "--model", "biexp", "--json")
    assert isinstance(res.exception, FitError)
    assert "liver" in str(res.exception) and "needs at least 4 samples" in str(res.exception)
    doc = json.loads(res.stdout)
    assert doc["vois"][0]["success"] is False and doc["vois"][0]["tia_mbq_h"] is None


def test_no_args_shows_help():
    res = CliRunner().invoke(tac_app, [])
    assert "fit" in res.output
