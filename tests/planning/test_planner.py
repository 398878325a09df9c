"""RESULTS.json + protocol → planning problem → plan, for the four built-in protocols."""

from __future__ import annotations

import math

import pytest

from dosimetry.errors import InputError
from planning.optimiser import PlanStatus
from planning.planner import build_problem, plan_from_results
from planning.protocols import default_protocol
from planning.radiobiology import bed
from planning.results import DosimetryResults
from tests.planning.conftest import mono

LN2 = math.log(2.0)


def test_problem_from_results(lu_results):
    res = DosimetryResults.from_dict(lu_results)
    prob = build_problem(res, default_protocol("lu177-dotatate"))
    v = {x.name: x for x in prob.vois}
    assert prob.settings.remaining_cycles == 3 and prob.settings.first_cycle_number == 2
    # Mono kinetics: G = T_rep/(T_rep + T_eff) = 2.8/52.8 (kidney), exact algebra.
    assert v["kidney_left"].g_factor == pytest.approx(2.8 / 52.8, rel=1e-12)
    assert v["kidney_left"].delivered_bed_gy == pytest.approx(
        float(bed(4.44, 2.8 / 52.8, 2.6)), rel=1e-12)
    assert v["red marrow"].tissue.name == "red-marrow"
    # The uptake phase lowers the lesion's G below the mono value at the same clearance.
    assert v["lesion_1"].g_factor < 1.5 / (1.5 + 77.0)
    assert v["lesion_1"].tissue.name == "tumour"


def test_history_accumulates_estimates_and_announces(lu_results):
    lu_results["cycle_number"] = 3
    lu_results["history"] = [
        {"cycle_number": 1, "administered_activity_mbq": 7400.0,
         "vois": [{"name": "kidney_left", "dose_gy": 4.0, "dose_sigma_gy": 0.5, "bed_gy": 4.4}]},
        {"cycle_number": 2, "administered_activity_mbq": 5000.0},
    ]
    res = DosimetryResults.from_dict(lu_results)
    prob = build_problem(res, default_protocol("lu177-dotatate"))
    kid = next(x for x in prob.vois if x.name == "kidney_left")
    # 4.44 (cycle 3) + 4.0 (cycle 1) + 0.60 Gy/GBq × 5 GBq (cycle 2, estimated)
    assert kid.delivered_dose_gy == pytest.approx(4.44 + 4.0 + 3.0, rel=1e-12)
    assert kid.delivered_dose_sigma_gy == pytest.approx(0.58 + 0.5 + 0.078 * 5, rel=1e-12)
    g = 2.8 / 52.8
    assert kid.delivered_bed_gy == pytest.approx(
        float(bed(4.44, g, 2.6)) + 4.4 + float(bed(3.0, g, 2.6)), rel=1e-12)
    assert any("cycle 2 dose not recorded" in n for n in prob.notes)
    assert prob.settings.remaining_cycles == 1


def test_cycle_record_must_match(lu_results):
    res = DosimetryResults.from_dict(lu_results)
    with pytest.raises(InputError, match=r"cycle\(s\) \[2\] are not in the result's history"):
        build_problem(res, default_protocol("lu177-dotatate"), cycles_done=2)
    with pytest.raises(InputError, match="is for Lu-177"):
        build_problem(res, default_protocol("i131-dtc"))


def test_lu177_plan_end_to_end(lu_results):
    res = DosimetryResults.from_dict(lu_results)
    prot = default_protocol("lu177-dotatate")
    plan = plan_from_results(res, prot)
    assert plan.status is PlanStatus.OPTIMAL and len(plan.cycles) == 3
    assert [c.cycle_number for c in plan.cycles] == [2, 3, 4]
    assert all(3.7 <= c.activity_gbq <= 14.8 for c in plan.cycles)
    strict = plan_from_results(res, prot.with_limit_value("kidney", "bed", 28.0))
    assert strict.total_activity_gbq < plan.total_activity_gbq
    safe = plan_from_results(res, prot, confidence=0.95)
    assert safe.total_activity_gbq < plan.total_activity_gbq
    assert safe.probability_any_exceed_bound <= 0.05 + 1e-3
    done = plan_from_results(res, prot.with_updates(n_cycles=1))
    assert done.status is PlanStatus.NOTHING_TO_PLAN


def _i131_results(retention_48h: float, blood_gy_per_gbq: float = 0.13) -> dict:
    wb_rate = -math.log(retention_48h) / 48.0  # A(48 h)/A₀ = retention_48h
    return {
        "patient_id": "PSEUDO-DTC", "nuclide": "I-131", "radiopharmaceutical": "NaI",
        "cycle_number": 1, "administration": "tracer", "administered_activity_mbq": 74.0,
        "patient_weight_kg": 70.0,
        "vois": [
            {"name": "blood", "kind": "organ", "mean_dose_gy": 0.0096,
             "dose_gy_per_gbq": blood_gy_per_gbq, "dose_gy_per_gbq_sigma": 0.0,
             "kinetics": mono(12.0, 0.1), "engine": "blood-based"},
            {"name": "whole body", "kind": "organ", "mean_dose_gy": 0.004,
             "dose_gy_per_gbq": 0.05,
             "kinetics": {"model": "mono", "effective_half_life_h": LN2 / wb_rate,
                          "exponentials": [{"amplitude": 1.0, "rate_per_h": wb_rate}]}},
        ],
    }


def test_i131_dtc_mta_and_lung_rule():
    res = DosimetryResults.from_dict(_i131_results(retention_48h=0.25))
    prot = default_protocol("i131-dtc")
    plan = plan_from_results(res, prot)
    # No lesions: the maximum tolerable activity 2 Gy / 0.13 Gy/GBq = 15.38 GBq.
    assert plan.activities_gbq[0] == pytest.approx(2.0 / 0.13, rel=1e-9)
    assert "blood" in plan.binding_constraint
    lung = plan_from_results(res, prot.with_enforced("whole-body", "retained-activity-48h"))
    # With diffuse lung metastases: 2.96 GBq / 0.25 = 11.84 GBq < 15.38 GBq.
    assert lung.activities_gbq[0] == pytest.approx(2.96 / 0.25, rel=1e-9)
    assert "retention at 48 h" in lung.binding_constraint


def test_i131_benign_target_dose_with_marinelli_check():
    # 25 g thyroid, uptake 40 %, T_eff 5.5 d (mono): the dose coefficient of the same
    # physics as Marinelli's k = 24.7 is 1000/(24.7·25/(40·5.5)) Gy/GBq.
    coef = 1000.0 / (24.7 * 25.0 / (40.0 * 5.5))
    rate = LN2 / (5.5 * 24.0)
    data = {"patient_id": "PSEUDO-B", "nuclide": "I-131", "radiopharmaceutical": "NaI",
            "cycle_number": 1, "administration": "tracer", "administered_activity_mbq": 3.7,
            "vois": [{"name": "thyroid", "kind": "organ", "mass_g": 25.0,
                      "mean_dose_gy": coef * 0.0037, "dose_gy_per_gbq": coef,
                      "kinetics": {"model": "mono", "exponentials": [
                          {"amplitude": 0.40, "rate_per_h": rate}]}}]}
    res = DosimetryResults.from_dict(data)
    prot = default_protocol("i131-benign").with_updates(target_dose_gy=200.0)
    plan = plan_from_results(res, prot)
    # The tracer is not a therapy cycle: one administration to plan, A = 200 Gy / coef.
    assert plan.status is PlanStatus.OPTIMAL and plan.binding_constraint == "target dose"
    assert plan.activities_gbq[0] == pytest.approx(200.0 / coef, rel=1e-12)
    # Marinelli for 200 Gy: 24.7 · 200 · 25 / (40 · 5.5) MBq — the same number.
    marinelli = 24.7 * 200 * 25 / (40 * 5.5)
    assert plan.activities_gbq[0] * 1000 == pytest.approx(marinelli, rel=1e-12)
    note = next(n for n in plan.notes if "Marinelli cross-check" in n)
    assert f"{marinelli:.4g} MBq" in note
    assert any("tracer administration" in n for n in plan.notes)
