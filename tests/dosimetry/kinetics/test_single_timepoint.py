"""Single-timepoint methods: Hänscheid's bias formula, Madsen's exactness, error propagation."""

import math

import numpy as np
import pytest

from dosimetry.errors import InputError
from dosimetry.kinetics import (
    POPULATION_HALF_LIVES,
    StpMethod,
    hanscheid_ratio,
    hanscheid_tia,
    madsen_tia,
    population_half_life,
    single_timepoint_tia,
)

H = 3600.0
LN2 = math.log(2)


def _mono(a0, t_eff_h, t_h):
    lam = LN2 / (t_eff_h * H)
    return a0 * math.exp(-lam * t_h * H), a0 / lam


def test_hanscheid_ratio_maximum_and_ten_percent_band():
    t_eff = 50 * H
    t = np.linspace(0.05, 5, 200001) * t_eff
    r = hanscheid_ratio(t, t_eff)
    # physics.md: maximum +6.15 % at t = T_eff/ln 2 (2/(ln2·e) = 1.06148…).
    assert r.max() == pytest.approx(2 / (LN2 * math.e), rel=1e-9)
    assert r.max() - 1 == pytest.approx(0.0615, abs=5e-5)
    assert t[np.argmax(r)] / t_eff == pytest.approx(1 / LN2, rel=1e-4)  # grid step 2.5e-5·T
    # Within ±10 % for t/T ∈ [0.76, 2.44]: the band edges sit at r ≈ 0.9 (rounded to 2 dp).
    inside = (t / t_eff >= 0.76) & (t / t_eff <= 2.44)
    assert np.all(np.abs(r[inside] - 1) <= 0.1 + 3e-3)  # edges quoted to 2 decimals
    assert hanscheid_ratio(0.76 * t_eff, t_eff) == pytest.approx(0.9, abs=3e-3)
    assert hanscheid_ratio(2.44 * t_eff, t_eff) == pytest.approx(0.9, abs=3e-3)


@pytest.mark.parametrize("t_h", [24.0, 72.0, 96.0, 168.0])
def test_hanscheid_estimate_and_exact_bias(t_h):
    a_t, exact = _mono(1e9, 50.0, t_h)
    res = hanscheid_tia(a_t, t_h * H, t_eff_s=50 * H, sigma_t_eff_s=0.0)
    assert res.tia_bq_s == pytest.approx(2 * a_t * t_h * H / LN2, rel=1e-14)
    ratio = float(hanscheid_ratio(t_h * H, 50 * H))
    assert res.tia_bq_s / exact == pytest.approx(ratio, rel=1e-12)  # the exact bias formula
    # With no population spread, the method error is exactly the known bias.
    assert res.method_relative_sigma == pytest.approx(abs(ratio - 1), rel=1e-9)
    assert res.method_relative_bias == pytest.approx(ratio - 1, rel=1e-9)


@pytest.mark.parametrize("t_h", [4.0, 24.0, 72.0, 168.0])
def test_madsen_is_exact_for_mono_exponential(t_h):
    a_t, exact = _mono(3e8, 67.0, t_h)
    res = madsen_tia(a_t, t_h * H, t_eff_s=67 * H, sigma_t_eff_s=0.0)
    assert res.tia_bq_s == pytest.approx(exact, rel=1e-12)  # rounding only
    assert res.method_relative_sigma == 0.0
    assert res.sigma_bq_s == 0.0


def _brute_force_rms(method, t_h, mean_h, sd_h, n=400_000):
    rng = np.random.default_rng(11)
    s2 = math.log1p((sd_h / mean_h) ** 2)
    t_eff = np.exp(math.log(mean_h) - s2 / 2 + math.sqrt(s2) * rng.standard_normal(n))
    lam = LN2 / t_eff
    exact = np.exp(lam * t_h) / lam
    if method == "hanscheid":
        est = 2 * t_h / LN2
    else:
        est = math.exp(LN2 / mean_h * t_h) / (LN2 / mean_h)
    return float(np.sqrt(np.mean((est / exact - 1) ** 2)))


@pytest.mark.parametrize("method", ["hanscheid", "madsen"])
@pytest.mark.parametrize("t_h", [24.0, 72.0, 144.0])
def test_population_spread_is_propagated(method, t_h):
    pop = population_half_life("Lu-177 DOTATATE", "kidney")
    res = single_timepoint_tia(method, 1e8, t_h * H, population=pop)
    ref = _brute_force_rms(method, t_h, pop.t_eff_h, pop.sigma_h)
    # Gauss–Hermite (40 nodes) vs 4e5 Monte Carlo draws: MC relative error of an RMS ≈
    # kurtosis-dependent ~1/√(2N)·few ≈ 0.5 %; 3 % covers it.
    assert res.method_relative_sigma == pytest.approx(ref, rel=0.03)
    assert res.sigma_bq_s == pytest.approx(res.method_relative_sigma * res.tia_bq_s)


def test_madsen_error_vanishes_to_first_order_at_optimal_time():
    t_eff = 50 * H
    near = madsen_tia(1e8, t_eff / LN2, t_eff_s=t_eff, sigma_t_eff_s=0.2 * t_eff)
    early = madsen_tia(1e8, 0.2 * t_eff / LN2, t_eff_s=t_eff, sigma_t_eff_s=0.2 * t_eff)
    late = madsen_tia(1e8, 3 * t_eff / LN2, t_eff_s=t_eff, sigma_t_eff_s=0.2 * t_eff)
    # d ln TIA / d ln T = 1 − ln2·t/T: zero at t = T/ln2, 0.8 early, −2 late → with a 20 %
    # spread the errors are ≈ second-order (a few %), ≈ 16 %, ≈ 40 %+.
    assert near.method_relative_sigma < 0.05
    assert early.method_relative_sigma > 2 * near.method_relative_sigma
    assert late.method_relative_sigma > early.method_relative_sigma


def test_activity_sigma_is_combined():
    res = madsen_tia(1e8, 72 * H, t_eff_s=50 * H, sigma_t_eff_s=10 * H, activity_sigma_bq=5e6)
    assert res.activity_relative_sigma == pytest.approx(0.05)
    assert res.relative_sigma == pytest.approx(math.hypot(0.05, res.method_relative_sigma))


def test_population_lookup_and_provenance():
    e = population_half_life("177Lu-DOTATATE", "Kidneys")
    assert e.t_eff_h == 50.0 and e.organ == "kidney"
    assert population_half_life("lu177 dotatate", "NET tumour").t_eff_h == 77.0
    assert population_half_life("Lu-177 DOTATATE", "liver").t_eff_h == 67.0
    psma = population_half_life("Lu-177 PSMA-617", "kidney")
    assert not psma.sigma_verified and "unverified" in psma.note
    assert all(e.source for e in POPULATION_HALF_LIVES)
    with pytest.raises(InputError, match=r"'Lu-177 PSMA-617' in 'tumour'.*known:"):
        population_half_life("Lu-177 PSMA-617", "tumour")


def test_hanscheid_out_of_band_is_warned_and_inputs_checked():
    res = hanscheid_tia(1e8, 10 * H, t_eff_s=50 * H, sigma_t_eff_s=5 * H)
    assert res.warnings and "outside [0.76, 2.44]" in res.warnings[0]
    assert res.method is StpMethod.HANSCHEID
    with pytest.raises(InputError, match="measurement time must be > 0 s .* got -5"):
        madsen_tia(1e8, -5.0, t_eff_s=50 * H)
    with pytest.raises(InputError, match="effective half-life"):
        hanscheid_tia(1e8, 24 * H)
