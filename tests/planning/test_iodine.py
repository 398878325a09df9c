"""I-131 formulas: Marinelli worked example, blood-dose SOP formula, lung-retention rule."""

from __future__ import annotations

import pytest

from dosimetry.errors import InputError
from dosimetry.nuclides import get_nuclide
from planning.iodine import (
    BLOOD_BETA_GY_ML_PER_GBQ_H,
    MARINELLI_K,
    blood_beta_coefficient,
    blood_dose_gy_per_gbq,
    lung_rule_max_activity_gbq,
    marinelli_activity_mbq,
    marinelli_dose_gy,
    marinelli_k_from_energy,
    max_tolerable_activity_gbq,
)


def test_marinelli_worked_example():
    # Graves' disease: 150 Gy to a 30 g thyroid, RAIU_max 50 %, T_eff 5 d:
    # A = 24.7 × 150 × 30 / (50 × 5) = 111150 / 250 = 444.6 MBq (hand arithmetic, exact).
    assert marinelli_activity_mbq(150.0, 30.0, 50.0, 5.0) == pytest.approx(444.6, rel=1e-14)
    assert marinelli_dose_gy(444.6, 30.0, 50.0, 5.0) == pytest.approx(150.0, rel=1e-14)


def test_marinelli_constant_is_consistent_with_the_i131_electron_energy():
    e = get_nuclide("I-131").electron_energy_mev_per_decay  # 0.19184 MeV (ICRP-107)
    k_e = marinelli_k_from_energy(e)
    # Electrons only, all absorbed: k = 100 / (E · 86400/ln2 · 1e6 · 1.602e-13 / 1e-3) = 26.1.
    assert k_e == pytest.approx(26.10, abs=0.01)
    # 24.7 implies 0.2027 MeV/decay absorbed: electrons + ~0.011 MeV of self-absorbed photons,
    # i.e. within 6 % of the electron-only value and below it (photons add energy).
    assert 0.94 * k_e < MARINELLI_K < k_e
    assert marinelli_k_from_energy(0.2027) == pytest.approx(MARINELLI_K, rel=1e-3)


def test_blood_beta_coefficient_from_first_principles():
    e = get_nuclide("I-131").electron_energy_mev_per_decay
    # 1 GBq·h per mL: 3.6e12 decays × 0.19184 MeV = 0.1106 J into 1.00–1.05 g of blood.
    lo, hi = blood_beta_coefficient(e, 1.05), blood_beta_coefficient(e, 1.00)
    assert lo == pytest.approx(105.3, abs=0.1) and hi == pytest.approx(110.6, abs=0.1)
    assert lo < BLOOD_BETA_GY_ML_PER_GBQ_H < hi


def test_blood_dose_and_mta_worked_example():
    # τ_blood 1e-3 h/mL, τ_WB 20 h, 70 kg: 108e-3 + 0.0188·20/70^(2/3) = 0.108 + 0.022137
    d = blood_dose_gy_per_gbq(1e-3, 20.0, 70.0)
    assert d == pytest.approx(0.108 + 0.0188 * 20.0 / 70.0 ** (2 / 3), rel=1e-14)
    assert d == pytest.approx(0.13014, abs=1e-5)
    assert max_tolerable_activity_gbq(d) == pytest.approx(2.0 / d, rel=1e-14)  # ≈ 15.4 GBq


def test_lung_rule():
    # 20 % retained at 48 h: 2.96 GBq / 0.2 = 14.8 GBq.
    assert lung_rule_max_activity_gbq(0.2) == pytest.approx(14.8, rel=1e-14)
    with pytest.raises(InputError, match="1.5"):
        lung_rule_max_activity_gbq(1.5)


@pytest.mark.parametrize(("args", "match"), [
    ((150.0, 30.0, 150.0, 5.0), "≤ 100, got 150"),
    ((150.0, -30.0, 50.0, 5.0), "thyroid mass.*-30"),
    ((150.0, 30.0, 50.0, 0.0), "effective half-life.*0"),
])
def test_marinelli_bad_inputs_named(args, match):
    with pytest.raises(InputError, match=match):
        marinelli_activity_mbq(*args)
