"""BED/EQD2 and the Lea–Catcheside factor against closed forms, physics.md and quadrature."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate

from dosimetry.errors import InputError
from planning.radiobiology import (
    DoseRateShape,
    bed,
    bed_from_dose_rate,
    bed_over_cycles,
    bed_voxelwise,
    dose_for_bed,
    dose_fraction_after,
    eqd2,
    g_factor_exponentials,
    g_factor_mono,
    g_factor_mono_uptake,
)
from planning.tissues import get_tissue

H = 3600.0
LN2 = math.log(2.0)


@pytest.mark.parametrize(("dose", "t_eff_h", "expected", "atol"), [
    # physics.md kidney table (α/β 2.6 Gy, T_rep 2.8 h). Tolerance: half a unit in the last
    # printed digit of the table (5.510 → 5e-4; 36.31 → 5e-3).
    (5.0, 50.0, 5.510, 5e-4),
    (23.0, 40.0, 36.31, 5e-3),
    (23.0, 50.0, 33.79, 5e-3),
    (23.0, 60.0, 32.07, 5e-3),
])
def test_physics_md_kidney_table(dose, t_eff_h, expected, atol):
    res = bed_from_dose_rate(dose, DoseRateShape.mono(t_eff_h * H), get_tissue("kidney"))
    assert res.bed_gy == pytest.approx(expected, abs=atol)
    # EQD2 = BED/(1 + 2/2.6), exact algebra.
    assert res.eqd2_gy == pytest.approx(res.bed_gy / (1 + 2 / 2.6), rel=1e-14)


def test_mono_g_is_trep_over_trep_plus_teff():
    g = g_factor_mono(50 * H, 2.8 * H)
    assert g == pytest.approx(2.8 / 52.8, rel=1e-14)
    # The general sum-of-exponentials form reduces to it (round-off only).
    assert g_factor_exponentials([3.0], [LN2 / (50 * H)], 2.8 * H) == pytest.approx(g, rel=1e-12)


def _numerical_g(shape: DoseRateShape, t_rep_h: float) -> float:
    """G by adaptive double quadrature over 0 ≤ w ≤ t ≤ T, times in hours."""
    a = np.array(shape.amplitudes)
    lam_h = np.array(shape.rates_per_s) * H
    mu = LN2 / t_rep_h

    def rate(t):
        return float(np.sum(a * np.exp(-lam_h * t)))

    t_max = 45.0 / lam_h.min()  # e^-45 of the slowest term is left out: < 1e-19 relative
    val, _err = integrate.dblquad(lambda w, t: rate(t) * rate(w) * math.exp(-mu * (t - w)),
                                 0.0, t_max, 0.0, lambda t: t, epsabs=0, epsrel=1e-11)
    dose = float(np.sum(a / lam_h))
    return 2.0 * val / dose**2


@pytest.mark.parametrize(("shape", "t_rep_h"), [
    (DoseRateShape.mono(50 * H), 2.8),
    (DoseRateShape.mono_uptake(77 * H, 3 * H), 1.5),
    (DoseRateShape.from_exponentials([0.7, 0.3], [LN2 / (20 * H), LN2 / (90 * H)]), 2.8),
    # tri-exponential with uptake (kinetics' triexp form): a1, a2 > 0, −(a1 + a2) uptake term
    (DoseRateShape.from_exponentials([0.6, 0.4, -1.0],
                                     [LN2 / (60 * H), LN2 / (10 * H), LN2 / (1.5 * H)]), 0.5),
])
def test_closed_form_g_matches_double_integration(shape, t_rep_h):
    # dblquad converges to ~1e-11; 1e-7 leaves room for its error estimate on peaked integrands.
    assert shape.g_factor(t_rep_h * H) == pytest.approx(_numerical_g(shape, t_rep_h), rel=1e-7)


def test_uptake_lowers_g_and_vanishing_uptake_recovers_mono():
    mono = g_factor_mono(50 * H, 2.8 * H)
    assert g_factor_mono_uptake(50 * H, 5 * H, 2.8 * H) < mono
    # Uptake half-time 1e-5 h: the uptake term's contribution scales with T_up/T_rep ~ 4e-6.
    assert g_factor_mono_uptake(50 * H, 1e-5 * H, 2.8 * H) == pytest.approx(mono, rel=1e-4)


positive_shapes = st.lists(
    st.tuples(st.floats(0.01, 10.0), st.floats(0.5, 500.0)), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(terms=positive_shapes, t_rep_h=st.floats(0.1, 10.0), uptake=st.booleans())
def test_g_between_0_and_1_and_decreases_with_faster_repair(terms, t_rep_h, uptake):
    amps = [a for a, _ in terms]
    rates = [LN2 / (t * H) for _, t in terms]
    if uptake:  # a fast uptake term that keeps Ḋ(0) = 0 and Ḋ ≥ 0
        amps.append(-sum(amps))
        rates.append(max(rates) * 5.0)
    shape = DoseRateShape.from_exponentials(amps, rates)
    g = shape.g_factor(t_rep_h * H)
    assert 0.0 < g <= 1.0 + 1e-12
    assert shape.g_factor(t_rep_h * H / 2) < g  # faster repair, less interaction


def test_voxelwise_bed_equals_elementwise():
    rng = np.random.default_rng(3)
    dose = rng.uniform(0, 30, (4, 5, 6))
    t_eff = rng.uniform(20, 120, (4, 5, 6)) * H
    kid = get_tissue("kidney")
    got = bed_voxelwise(dose, kid, t_eff_s=t_eff)
    ref = np.vectorize(lambda d, t: bed_from_dose_rate(d, DoseRateShape.mono(t), kid).bed_gy)(
        dose, t_eff)
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    # Per-voxel exponentials along a trailing axis (bi-exponential with uptake).
    t_up = rng.uniform(1, 5, dose.shape) * H
    amps = np.stack([np.ones_like(dose), -np.ones_like(dose)], -1)
    rates = np.stack([LN2 / t_eff, LN2 / t_eff + LN2 / t_up], -1)
    got2 = bed_voxelwise(dose, kid, amplitudes=amps, rates_per_s=rates)
    np.testing.assert_allclose(got2, bed_voxelwise(dose, kid, t_eff_s=t_eff,
                                                   uptake_half_time_s=t_up), rtol=1e-12)
    # A voxel without dose (all amplitudes 0) gets G = 0 and BED 0, not NaN.
    assert g_factor_exponentials(np.zeros((1, 2)), rates[:1, 0, 0], 2.8 * H)[0] == 0.0


def test_bed_inverse_eqd2_and_cycles():
    b = bed(23.0, 0.06, 2.6)
    assert dose_for_bed(b, 0.06, 2.6) == pytest.approx(23.0, rel=1e-13)
    # EQD2 of fractionated 2-Gy therapy is the physical dose: BED = D(1 + 2/(α/β)).
    assert eqd2(50.0 * (1 + 2 / 3.0), 3.0) == pytest.approx(50.0, rel=1e-14)
    assert bed_over_cycles([5.0, 6.0], [0.05, 0.04], 2.6) == pytest.approx(
        float(bed(5.0, 0.05, 2.6) + bed(6.0, 0.04, 2.6)), rel=1e-14)


def test_cycle_overlap_after_eight_weeks_is_negligible_for_lutetium():
    # e^(−ln2 · 1344 h / 80 h) = 8.8e-6: BED addition across Lu-177 cycles is sound.
    frac = dose_fraction_after(DoseRateShape.mono(80 * H), 8 * 7 * 24 * H)
    assert frac == pytest.approx(2.0 ** (-8 * 7 * 24 / 80), rel=1e-12)
    assert frac < 1e-5


@pytest.mark.parametrize(("amps", "rates", "match"), [
    ([1.0, -1.5], [1e-5, 3e-5], "negative at t"),
    ([1.0], [1e-5, 2e-5], "as many amplitudes as rates"),
    ([1.0], [-1e-5], "rates must be finite and > 0"),
    ([-1.0], [1e-5], "integrates to"),
    ([float("nan")], [1e-5], "amplitudes must be finite"),
])
def test_bad_shapes_are_explained(amps, rates, match):
    with pytest.raises(InputError, match=match):
        DoseRateShape.from_exponentials(amps, rates)


def test_shape_round_trip_and_bad_inputs():
    s = DoseRateShape.mono_uptake(60 * H, 2 * H)
    assert DoseRateShape.from_dict(s.to_dict()) == s
    with pytest.raises(InputError, match="-1"):
        bed_from_dose_rate(-1.0, s, get_tissue("kidney"))
    with pytest.raises(InputError, match="effective half-life"):
        g_factor_mono(0.0, 2.8 * H)
    with pytest.raises(InputError, match="give t_eff_s"):
        bed_voxelwise(np.ones(3), get_tissue("kidney"))
