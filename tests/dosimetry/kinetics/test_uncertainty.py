"""TIA uncertainty: covariance propagation vs Monte Carlo resampling, EANM budget."""

import math

import numpy as np
import pytest

from dosimetry.errors import InputError
from dosimetry.kinetics import (
    TimeActivityCurve,
    counting_relative_sigma,
    fit_tac,
    monte_carlo_tia,
    tia_sigma_from_covariance,
    tia_uncertainty,
    timepoint_sigma,
)
from dosimetry.kinetics import models as km
from dosimetry.nuclides import get_nuclide

H = 3600.0
LAM_P = get_nuclide("Lu-177").decay_constant_per_s


def _lam(t_half_h):
    return math.log(2) / (t_half_h * H)


N_MC = 400
# Relative standard error of a standard deviation estimated from N normal draws: 1/√(2(N−1))
# ≈ 3.5 % for N = 400. Allow 3 of those plus ~5 % for the first-order (linearised) covariance
# against the exact spread of a nonlinear fit at 5 % noise: 15 %.
SIGMA_AGREEMENT = 0.15


@pytest.mark.parametrize(("model", "theta", "times_h"), [
    ("mono", [80e6, _lam(50)], [4, 24, 48, 168]),
    ("mono-uptake", [100e6, _lam(60), _lam(3)], [0.5, 2, 6, 24, 48, 96, 168]),
    ("trapezoid", None, [4, 24, 48, 168]),
])
def test_covariance_sigma_agrees_with_monte_carlo(model, theta, times_h):
    times = np.array(times_h, float) * H
    if theta is None:
        y = 80e6 * np.exp(-_lam(50) * times)
    else:
        y = km.evaluate(km.get_model(model), np.array(theta), times)
    tac = TimeActivityCurve(times, y, 0.05 * y)
    fit = fit_tac(tac, LAM_P, model)
    mc = monte_carlo_tia(fit, np.random.default_rng(2024), N_MC)
    assert mc.n_failed == 0
    assert mc.sigma_bq_s == pytest.approx(fit.tia_sigma_bq_s, rel=SIGMA_AGREEMENT)
    # The resampled mean sits on the fit within a few standard errors of the mean.
    assert abs(mc.mean_bq_s - fit.tia_bq_s) < 4 * mc.sigma_bq_s / math.sqrt(N_MC) + 0.01 * \
        fit.tia_bq_s
    assert mc.percentiles_bq_s["2.5"] < mc.percentiles_bq_s["50"] < mc.percentiles_bq_s["97.5"]


def test_monte_carlo_is_reproducible_with_seed():
    times = np.array([4, 24, 48, 168]) * H
    y = 5e7 * np.exp(-_lam(40) * times)
    fit = fit_tac(TimeActivityCurve(times, y, 0.05 * y), LAM_P, "mono")
    a = monte_carlo_tia(fit, np.random.default_rng(7), 20)
    b = monte_carlo_tia(fit, np.random.default_rng(7), 20)
    assert a == b
    with pytest.raises(InputError, match="seeded numpy.random.Generator"):
        monte_carlo_tia(fit, 7, 20)


def test_covariance_sigma_function_matches_fit():
    times = np.array([4, 24, 48, 168]) * H
    y = 5e7 * np.exp(-_lam(40) * times)
    fit = fit_tac(TimeActivityCurve(times, y, 0.05 * y), LAM_P, "mono")
    s = tia_sigma_from_covariance("mono", list(fit.params.values()), fit.covariance)
    assert s == pytest.approx(fit.tia_sigma_bq_s, rel=1e-12)


def test_budget_adds_correlated_terms_in_quadrature():
    times = np.array([4, 24, 48, 168]) * H
    y = 5e7 * np.exp(-_lam(40) * times)
    fit = fit_tac(TimeActivityCurve(times, y, 0.05 * y), LAM_P, "mono")
    u = tia_uncertainty(fit, calibration_relative_sigma=0.05, recovery_relative_sigma=0.03)
    expect = math.sqrt(fit.tia_sigma_bq_s**2 + (0.05 * fit.tia_bq_s) ** 2
                       + (0.03 * fit.tia_bq_s) ** 2)
    assert u.sigma_bq_s == pytest.approx(expect, rel=1e-12)
    assert u.relative == pytest.approx(expect / fit.tia_bq_s)
    assert u.components_bq_s["calibration"] == pytest.approx(0.05 * fit.tia_bq_s)
    with pytest.raises(InputError, match="calibration_relative_sigma must be ≥ 0, got -0.1"):
        tia_uncertainty(fit, calibration_relative_sigma=-0.1)


def test_calibration_is_correlated_not_per_timepoint():
    # A calibration error scales every timepoint alike; refitting scaled data scales the TIA
    # by exactly the same factor, which is what adding r_cal·TIA in quadrature assumes.
    times = np.array([4, 24, 48, 168]) * H
    y = 5e7 * np.exp(-_lam(40) * times)
    f1 = fit_tac(TimeActivityCurve(times, y, 0.05 * y), LAM_P, "mono")
    f2 = fit_tac(TimeActivityCurve(times, 1.05 * y, 0.05 * 1.05 * y), LAM_P, "mono")
    assert f2.tia_bq_s / f1.tia_bq_s == pytest.approx(1.05, rel=1e-6)


def test_timepoint_sigma_counting_and_relative_terms():
    a = np.array([1e6, 4e6])
    counts = np.array([1e4, 4e4])
    s = timepoint_sigma(a, counts=counts, relative_sigma=0.03, absolute_sigma_bq=1e4)
    expect = np.sqrt((a / np.sqrt(counts)) ** 2 + (0.03 * a) ** 2 + 1e4**2)
    np.testing.assert_allclose(s, expect, rtol=1e-14)
    np.testing.assert_allclose(counting_relative_sigma([100.0, 1e4]), [0.1, 0.01])
    with pytest.raises(InputError, match="counts must be > 0, got 0"):
        counting_relative_sigma([10.0, 0.0])
