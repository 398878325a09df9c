"""Kinetics presets: closed-form integrals, conservation, variability, references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate

from dosimetry.errors import InputError
from phantoms.kinetics_presets import (
    MAX_SPECIFIC_FRACTION,
    PRESETS,
    ExpSum,
    OrganModel,
    Preset,
    check_conservation,
    draw_kinetics,
    get_preset,
    label_curves,
)

LAM_LU = math.log(2) / (6.647 * 86400)  # physics.md, ICRP-107 Lu-177 half-life


def test_expsum_integral_is_the_analytic_decay_integral():
    # ∫ A0 e^{-(k+λ)t} dt = A0/(k+λ): compare with adaptive quadrature (rel. tol 1e-8)
    e = ExpSum.of([(0.3, 1e-5), (-0.3, 2e-4), (0.1, 0.0)])
    lam = LAM_LU
    # integrate in hours over pieces up to 100 physical half-lives (the tail is < 2^-100)
    edges = [0.0, 10.0, 100.0, 1000.0, 16000.0]
    num = 3600.0 * sum(integrate.quad(lambda h: e.fraction(h * 3600.0, lam), a, b,
                                      limit=200, epsabs=0, epsrel=1e-11)[0]
                       for a, b in itertools.pairwise(edges))
    assert e.integral_s(lam) == pytest.approx(num, rel=1e-7)
    assert e.integral_s(lam) == pytest.approx(0.3 / (1e-5 + lam) - 0.3 / (2e-4 + lam)
                                              + 0.1 / lam, rel=1e-12)


def test_expsum_merges_equal_rates_and_subtracts():
    a = ExpSum.of([(1.0, 1e-4), (2.0, 1e-4), (1.0, 2e-4)])
    assert a.coefficients == (3.0, 1.0)
    d = a - ExpSum.of([(1.0, 2e-4)])
    assert d.coefficients == (3.0,) and d.rates_per_s == (1e-4,)


def test_organ_curve_rises_from_zero_then_clears():
    m = OrganModel(0.02, 1.0, ((0.3, 8.0), (0.7, 85.0)))
    c = m.curve()
    assert c.biological(0.0) == pytest.approx(0.0, abs=1e-15)
    t = np.linspace(0, 400 * 3600, 2000)
    r = c.biological(t)
    assert r.min() >= -1e-15 and r.max() < 0.02


@pytest.mark.parametrize("preset", list(Preset))
def test_presets_are_cited_and_use_supported_nuclides(preset):
    p = get_preset(preset)
    assert p.references and all(len(r) > 20 for r in p.references)
    assert p.nuclide in ("Lu-177", "I-131")
    assert sum(m.fraction for _, m in p.organs) < MAX_SPECIFIC_FRACTION
    assert abs(sum(c.weight for c in p.pool) - 1) < 1e-12


def test_unknown_preset_names_the_value():
    with pytest.raises(InputError, match="'y90-glass'"):
        get_preset("y90-glass")


def _fake_patient(preset, rng, n_lesions=3):
    lesions = {f"lesion_{i + 1}": float(v) for i, v in enumerate(rng.uniform(1, 60, n_lesions))}
    drawn = draw_kinetics(PRESETS[preset], rng, lesions)
    names = [n for n, _ in drawn.organs]
    kinds = {n: ("lesion" if n.startswith("lesion") else "organ") for n in names}
    kinds.update({"heart": "blood", "red_marrow": "marrow", "body": "tissue",
                  "subcutaneous_fat": "tissue", "trachea": "air"})
    masses = {n: 150.0 for n in names}
    masses.update({"heart": 600.0, "red_marrow": 1200.0, "body": 20000.0,
                   "subcutaneous_fat": 10000.0, "trachea": 0.05})
    factors = {"body": 1.0, "subcutaneous_fat": 0.5}
    return drawn, label_curves(drawn, kinds, masses, factors, 80.0, False)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), preset=st.sampled_from(list(Preset)),
       n_lesions=st.integers(0, 30))
def test_activity_is_conserved_for_any_patient(seed, preset, n_lesions):
    drawn, curves = _fake_patient(preset, np.random.default_rng(seed), n_lesions)
    assert drawn.specific_total <= MAX_SPECIFIC_FRACTION + 1e-12
    # every label ≥ 0, Σ in FOV ≤ whole body ≤ 1 (biological fractions), 60 half-lives
    assert check_conservation(curves, LAM_LU, 60 * 6.647 * 86400) >= -1e-12
    # whole body at t = 0 is exactly what was administered
    assert curves.whole_body.biological(0.0) == pytest.approx(1.0, abs=1e-12)


def test_many_large_lesions_are_scaled_and_recorded():
    rng = np.random.default_rng(0)
    lesions = {f"lesion_{i}": 5000.0 for i in range(1, 11)}
    drawn = draw_kinetics(PRESETS[Preset.LU177_PSMA], rng, lesions)
    assert drawn.specific_scale < 1.0
    assert drawn.specific_total == pytest.approx(MAX_SPECIFIC_FRACTION, rel=1e-12)
    assert "scaled" in drawn.notes[0]


def test_variability_is_seeded_and_log_normal():
    p = PRESETS[Preset.LU177_DOTATATE]
    a = [draw_kinetics(p, np.random.default_rng(s), {}).organ("liver").fraction
         for s in range(400)]
    b = [draw_kinetics(p, np.random.default_rng(s), {}).organ("liver").fraction
         for s in range(400)]
    assert a == b
    logs = np.log(np.asarray(a) / p.organs[2][1].fraction)
    # σ = 0.25 by design; 400 samples: s.e. of the SD ≈ 0.25/√800 ≈ 0.009 → ±0.04 is > 4 s.e.
    assert abs(float(np.std(logs)) - 0.25) < 0.04
    assert abs(float(np.mean(logs))) < 0.05  # s.e. of the mean 0.0125


def test_administered_activity_is_whole_mbq():
    d = draw_kinetics(PRESETS[Preset.I131_DTC], np.random.default_rng(1), {})
    assert d.administered_activity_mbq == round(d.administered_activity_mbq)
    assert 3400 < d.administered_activity_mbq < 4000
