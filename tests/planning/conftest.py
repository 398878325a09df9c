"""Shared inputs of the planning tests: a small Lu-177 DOTATATE dosimetry result."""

from __future__ import annotations

import copy
import math

import pytest

LN2 = math.log(2.0)


def mono(t_eff_h: float, fraction: float = 0.01) -> dict:
    """Kinetics entry: mono-exponential A(t)/A₀ = fraction·e^(−ln2 t/T_eff)."""
    return {"model": "mono", "effective_half_life_h": t_eff_h,
            "exponentials": [{"amplitude": fraction, "rate_per_h": LN2 / t_eff_h}]}


def lu_results_dict() -> dict:
    """Cycle-1 dosimetry of a Lu-177 DOTATATE patient: two kidneys, marrow, two lesions."""
    return {
        "schema_version": 1,
        "patient_id": "PSEUDO-0001",
        "nuclide": "Lu-177",
        "radiopharmaceutical": "DOTATATE",
        "cycle_number": 1,
        "administered_activity_mbq": 7400.0,
        "patient_weight_kg": 72.0,
        "vois": [
            {"name": "kidney_left", "kind": "organ", "mass_g": 160.0, "mean_dose_gy": 4.44,
             "mean_dose_sigma_gy": 0.58, "dose_gy_per_gbq": 0.60, "dose_gy_per_gbq_sigma": 0.078,
             "tia_mbq_h": 5200.0, "tia_sigma_mbq_h": 600.0, "kinetics": mono(50.0, 0.012),
             "engine": "dvk"},
            {"name": "kidney_right", "kind": "organ", "mass_g": 150.0, "mean_dose_gy": 3.70,
             "mean_dose_sigma_gy": 0.48, "dose_gy_per_gbq": 0.50, "dose_gy_per_gbq_sigma": 0.065,
             "kinetics": mono(50.0, 0.011), "engine": "dvk"},
            {"name": "red marrow", "kind": "organ", "mean_dose_gy": 0.26,
             "mean_dose_sigma_gy": 0.05, "dose_gy_per_gbq": 0.035, "dose_gy_per_gbq_sigma": 0.007,
             "kinetics": mono(60.0, 0.02), "engine": "blood-based"},
            {"name": "lesion_1", "kind": "lesion", "mass_g": 12.0, "mean_dose_gy": 22.2,
             "mean_dose_sigma_gy": 3.0, "dose_gy_per_gbq": 3.0, "dose_gy_per_gbq_sigma": 0.4,
             "kinetics": {"model": "mono-uptake", "effective_half_life_h": 77.0,
                          "exponentials": [{"amplitude": 0.004, "rate_per_h": LN2 / 77.0},
                                           {"amplitude": -0.004, "rate_per_h": LN2 / 3.0}]},
             "engine": "dvk"},
            {"name": "lesion_2", "kind": "lesion", "mass_g": 4.0, "mean_dose_gy": 11.1,
             "mean_dose_sigma_gy": 1.8, "dose_gy_per_gbq": 1.5, "dose_gy_per_gbq_sigma": 0.25,
             "kinetics": mono(77.0, 0.001), "engine": "dvk"},
        ],
        "history": [],
        "source": {"pipeline": "test"},
    }


@pytest.fixture
def lu_results() -> dict:
    """A fresh copy of :func:`lu_results_dict` (tests may edit it)."""
    return copy.deepcopy(lu_results_dict())
