"""RESULTS.json: JSON/YAML round trip, validation messages, and the schema document in sync."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dosimetry.errors import InputError
from planning.results import (
    DeliveredCycle,
    DeliveredVoiDose,
    DosimetryResults,
    Exponential,
    KineticsSummary,
    VoiResult,
    load_results,
)

SCHEMA_MD = Path(__file__).resolve().parents[2] / "planning" / "RESULTS_SCHEMA.md"


def test_json_round_trip_is_exact_and_atomic(tmp_path, lu_results):
    lu_results["history"] = [{"cycle_number": 2, "administered_activity_mbq": 7300.0,
                              "administration_date": "2024-01-03",
                              "vois": [{"name": "kidney_left", "dose_gy": 4.1, "bed_gy": 4.5}]}]
    res = DosimetryResults.from_dict(lu_results)
    path = res.save(tmp_path / "RESULTS.json")
    back = load_results(path)
    assert back == res
    text = path.read_text()
    assert back.save(tmp_path / "again.json").read_text() == text  # byte-identical
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RESULTS.json", "again.json"]
    assert json.loads(text)["vois"][0]["kinetics"]["exponentials"][0]["amplitude"] == 0.012


def test_yaml_round_trip(tmp_path, lu_results):
    res = DosimetryResults.from_dict(lu_results)
    assert load_results(res.save(tmp_path / "r.yaml")) == res


def test_derived_values(lu_results):
    res = DosimetryResults.from_dict(lu_results)
    assert res.administered_activity_gbq == pytest.approx(7.4, rel=1e-15)
    assert res.delivered_cycle_numbers == (1,)
    assert res.voi("lesion_1").tissue_parameters()[0].name == "tumour"
    assert res.voi("red marrow").tissue_parameters()[0].name == "red-marrow"
    # 0.012 · e^(−ln2 · 48/50) = 0.012 · 0.5140 (kinetics amplitude = fraction of A₀)
    r48 = res.voi("kidney_left").kinetics.retention_fraction(48.0)
    assert r48 == pytest.approx(0.012 * 2 ** (-48 / 50), rel=1e-12)
    with pytest.raises(InputError, match="no VOI 'spleen'"):
        res.voi("spleen")


def _bad(lu_results, edit):
    edit(lu_results)
    return lu_results


@pytest.mark.parametrize(("edit", "match"), [
    (lambda d: d["vois"][0].update(mean_dose_gy=-1.0), r"vois\.0\.mean_dose_gy.*-1\.0"),
    (lambda d: d["vois"][1].update(dose_gy_per_gbq=float("inf")), r"dose_gy_per_gbq.*inf"),
    (lambda d: d["vois"][0].update(kind="tumour"), r"vois\.0\.kind.*'tumour'"),
    (lambda d: d["vois"][1].update(name="kidney_left"), "repeated.*kidney_left"),
    (lambda d: d.update(nuclide="Xx-999"), "Xx-999"),
    (lambda d: d.update(schema_version=2), "schema_version 2 is not supported"),
    (lambda d: d.update(history=[{"cycle_number": 1, "administered_activity_mbq": 7000}]),
     "history repeats cycle 1"),
    (lambda d: d.update(history=[{"cycle_number": 2, "administered_activity_mbq": 7000,
                                  "vois": [{"name": "spleen", "dose_gy": 1}]}]),
     "'spleen' is not one of"),
    (lambda d: d["vois"][0]["kinetics"].update(exponentials=[], effective_half_life_h=None),
     "needs exponentials or effective_half_life_h"),
    (lambda d: d["vois"][0]["kinetics"].update(
        exponentials=[{"amplitude": 1.0, "rate_per_h": 0.1},
                      {"amplitude": -1.5, "rate_per_h": 0.3}]), "negative at t"),
    (lambda d: d["vois"][0].update(tissue="bone"), "tissue 'bone' is not known"),
    (lambda d: d.update(colour="blue"), r"colour.*Extra inputs"),
])
def test_validation_errors_name_file_field_value(tmp_path, lu_results, edit, match):
    path = tmp_path / "RESULTS.json"
    path.write_text(json.dumps(_bad(lu_results, edit)))
    with pytest.raises(InputError, match=match) as info:
        load_results(path)
    assert str(path) in str(info.value)


def test_file_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_results(tmp_path / "none.json")
    bad = tmp_path / "broken.json"
    bad.write_text("{ not json")
    with pytest.raises(InputError, match=r"broken\.json: not valid JSON"):
        load_results(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(InputError, match="must be a mapping, got list"):
        load_results(bad)


def test_schema_document_lists_every_field():
    text = SCHEMA_MD.read_text(encoding="utf-8")
    documented = set(re.findall(r"`([a-z_0-9]+)`", text))
    for model in (DosimetryResults, VoiResult, KineticsSummary, Exponential, DeliveredCycle,
                  DeliveredVoiDose):
        missing = set(model.model_fields) - documented
        assert not missing, f"{model.__name__} fields not in RESULTS_SCHEMA.md: {missing}"


def test_schema_document_example_is_valid():
    text = SCHEMA_MD.read_text(encoding="utf-8")
    example = re.search(r"```json\n(.*?)```", text, re.S).group(1)
    res = DosimetryResults.from_dict(json.loads(example), source="RESULTS_SCHEMA.md")
    assert res.cycle_number == 2 and res.history[0].vois[0].name == "kidney_left"
