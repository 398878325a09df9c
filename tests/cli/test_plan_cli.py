"""``rptdose plan`` and ``rptdose bed`` through typer's CliRunner on a small app."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from cli.plan import bed_cmd, plan_cmd
from dosimetry.errors import InputError
from tests.planning.conftest import lu_results_dict

app = typer.Typer()
app.command("plan")(plan_cmd)
app.command("bed")(bed_cmd)
runner = CliRunner()


@pytest.fixture
def results_file(tmp_path):
    path = tmp_path / "RESULTS.json"
    path.write_text(json.dumps(lu_results_dict()))
    return path


def test_bed_json_reproduces_physics_md():
    res = runner.invoke(app, ["bed", "--dose-gy", "23", "--teff-h", "40", "--tissue", "kidney",
                              "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["bed_gy"] == pytest.approx(36.31, abs=5e-3)  # physics.md, 2 decimals
    assert doc["eqd2_gy"] == pytest.approx(doc["bed_gy"] / (1 + 2 / 2.6), rel=1e-14)
    assert (doc["alpha_beta_gy"], doc["repair_half_time_h"], doc["tissue"]) == \
        (2.6, 2.8, "kidney")
    assert doc["g_factor"] == pytest.approx(2.8 / 42.8, rel=1e-14)


def test_bed_human_output_and_overrides():
    res = runner.invoke(app, ["bed", "--dose-gy", "5", "--teff-h", "50"])
    assert res.exit_code == 0 and "BED 5.51 Gy" in res.output and "unverified" in res.output
    res = runner.invoke(app, ["bed", "--dose-gy", "5", "--teff-h", "50", "--uptake-h", "2",
                              "--alpha-beta-gy", "3", "--json"])
    doc = json.loads(res.output)
    assert doc["alpha_beta_gy"] == 3.0 and doc["uptake_half_time_h"] == 2.0
    assert doc["g_factor"] < 2.8 / 52.8


@pytest.mark.parametrize(("args", "match"), [
    (["--dose-gy", "-1", "--teff-h", "50"], "--dose-gy must be finite and ≥ 0, got -1"),
    (["--dose-gy", "5", "--teff-h", "0"], "--teff-h must be finite and > 0, got 0"),
    (["--dose-gy", "5", "--teff-h", "50", "--tissue", "bone"], "tissue 'bone'"),
])
def test_bed_bad_input(args, match):
    res = runner.invoke(app, ["bed", *args])
    assert isinstance(res.exception, InputError) and match in str(res.exception)


def test_plan_json(results_file, tmp_path):
    res = runner.invoke(app, ["plan", str(results_file), "--protocol", "lu177-dotatate",
                              "--json", "-o", str(tmp_path / "plan.json")])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["status"] == "optimal" and doc["protocol"] == "lu177-dotatate"
    assert [c["cycle_number"] for c in doc["cycles"]] == [2, 3, 4]
    assert {"binding_constraint", "constraints", "targets", "probability_any_exceed_bound"} \
        <= set(doc)
    kid = next(c for c in doc["constraints"] if c["voi"] == "kidney_left")
    assert {"margin", "margin_percent", "probability_exceed", "unit"} <= set(kid)
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert saved["cycles"] == doc["cycles"]


def test_plan_options_move_the_plan(results_file):
    def total(*extra):
        res = runner.invoke(app, ["plan", str(results_file), "--protocol", "lu177-dotatate",
                                  "--json", *extra])
        assert res.exit_code == 0, res.output
        return json.loads(res.output)["total_activity_gbq"]

    base = total()
    assert total("--kidney-bed-limit-gy", "28") < base
    assert total("--confidence", "0.95") < base
    assert total("--max-activity-gbq", "7.4") == pytest.approx(3 * 7.4)


def test_plan_human_tables(results_file, tmp_path):
    res = runner.invoke(app, ["plan", str(results_file), "--protocol", "lu177-psma",
                              "--confidence", "0.9", "--curves", str(tmp_path / "c.png")],
                        env={"COLUMNS": "160"})
    assert res.exit_code == 0, res.output
    for text in ("recommended activities", "binding constraint", "margin", "P(exceed)",
                 "salivary-gland"):
        assert text in res.output
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_plan_infeasible_is_reported_not_crashed(tmp_path):
    data = lu_results_dict()
    data["vois"][0]["mean_dose_gy"] = 40.0  # kidney BED already > 40 Gy after cycle 1
    path = tmp_path / "R.json"
    path.write_text(json.dumps(data))
    res = runner.invoke(app, ["plan", str(path), "--protocol", "lu177-dotatate", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["status"] == "infeasible" and "already reaches the limit" in doc["reasons"][0]


@pytest.mark.parametrize(("args", "match"), [
    (["--protocol", "lu177-xyz"], "'lu177-xyz'"),
    ([], "exactly one of --protocol and --protocol-file"),
    (["--protocol", "lu177-dotatate", "--confidence", "1.5"], "--confidence must be in"),
    (["--protocol", "lu177-dotatate", "--objective", "max-tcp"], "--objective 'max-tcp'"),
    (["--protocol", "lu177-dotatate", "--cycles-done", "2"], "cycle(s) [2]"),
    (["--protocol", "i131-dtc"], "is for I-131"),
    (["--protocol", "lu177-dotatate", "--min-activity-gbq", "20"], "min_activity_gbq"),
])
def test_plan_bad_input(results_file, args, match):
    res = runner.invoke(app, ["plan", str(results_file), *args])
    assert isinstance(res.exception, InputError), res.output
    assert match in str(res.exception)


def test_plan_missing_file(tmp_path):
    res = runner.invoke(app, ["plan", str(tmp_path / "none.json"), "--protocol",
                              "lu177-dotatate"])
    assert isinstance(res.exception, InputError) and "none.json" in str(res.exception)


def test_plan_with_protocol_file(results_file, tmp_path):
    from planning.protocols import default_protocol

    prot = default_protocol("lu177-dotatate").with_limit_value("kidney", "bed", 28.0)
    prot.with_updates(name="site-dotatate").save(tmp_path / "site.yaml")
    res = runner.invoke(app, ["plan", str(results_file), "--protocol-file",
                              str(tmp_path / "site.yaml"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["protocol"] == "site-dotatate"
    assert any(c["limit"] == 28.0 for c in doc["constraints"])


def test_plan_i131_dtc_lung_rule(tmp_path):
    from tests.planning.test_planner import _i131_results

    path = tmp_path / "dtc.json"
    path.write_text(json.dumps(_i131_results(retention_48h=0.25)))

    def first(*extra):
        res = runner.invoke(app, ["plan", str(path), "--protocol", "i131-dtc", "--json", *extra])
        assert res.exit_code == 0, res.output
        return json.loads(res.output)

    mta = first()
    assert mta["cycles"][0]["activity_gbq"] == pytest.approx(2.0 / 0.13, rel=1e-9)
    lung = first("--lung-metastases")
    assert lung["cycles"][0]["activity_gbq"] == pytest.approx(2.96 / 0.25, rel=1e-9)
