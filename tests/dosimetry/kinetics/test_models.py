"""Model functions: analytic integrals, Jacobians and gradients against numerical truth."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import quad

from dosimetry.kinetics import models as km
from dosimetry.kinetics.models import TrapezoidHead

H = 3600.0
LAM_P = math.log(2) / (6.647 * 86400)  # Lu-177, ICRP-107 half-life 6.647 d


def _theta(name: str, rng: np.random.Generator) -> np.ndarray:
    """Random physical parameters (SI) for a model: rates between λp and ln2/(0.5 h)."""
    spec = km.get_model(name)
    out = []
    for kind, phys in zip(spec.kinds, spec.rate_floor_is_physical, strict=True):
        if kind is km.ParamKind.AMPLITUDE:
            out.append(rng.uniform(1e6, 1e9))
        elif phys:
            out.append(LAM_P + rng.uniform(0, math.log(2) / (10 * H)))
        else:
            out.append(rng.uniform(0, math.log(2) / (2 * H)))
    return np.array(out)


@pytest.mark.parametrize("name", list(km.MODELS))
@pytest.mark.parametrize("seed", range(5))
def test_integrals_match_quad(name, seed):
    spec = km.get_model(name)
    theta = _theta(name, np.random.default_rng(seed))

    scale = float(np.max(np.abs(theta)))

    def f(x_h):  # the curve in hours and units of the largest amplitude: O(1) for quad
        return float(km.evaluate(spec, theta, np.array([x_h * H]))[0]) / scale

    def ref(lo_h, hi_h):
        return quad(f, lo_h, hi_h, limit=200, epsabs=0, epsrel=1e-10)[0] * scale * H

    for t_end_h in (24.0, 168.0):
        # Closed form vs adaptive quadrature of the same smooth function: agreement to the
        # quadrature's requested tolerance (1e-10) plus rounding; 1e-8 leaves margin.
        assert km.integral(spec, theta, t_end_h * H) == pytest.approx(ref(0, t_end_h), rel=1e-8)
    # Infinite range split where the fast terms have died out and the slow tail remains.
    assert km.integral(spec, theta) == pytest.approx(ref(0, 168) + ref(168, np.inf), rel=1e-8)


@pytest.mark.parametrize("name", list(km.MODELS))
def test_curves_are_non_negative(name):
    rng = np.random.default_rng(7)
    t = np.linspace(0, 2000 * H, 4001)
    for _ in range(20):
        assert np.all(km.evaluate(km.get_model(name), _theta(name, rng), t) >= -1e-6)


@pytest.mark.parametrize("name", list(km.MODELS))
@pytest.mark.parametrize("t_end", [48 * H, np.inf])
def test_gradients_match_finite_differences(name, t_end):
    spec = km.get_model(name)
    theta = _theta(name, np.random.default_rng(3))
    t = np.array([1, 4, 24, 48, 96, 168]) * H
    g = km.integral_gradient(spec, theta, t_end)
    jac = km.jacobian(spec, theta, t)
    for j in range(spec.n_params):
        h = 1e-6 * max(abs(theta[j]), 1e-9)
        up, dn = theta.copy(), theta.copy()
        up[j] += h
        dn[j] -= h
        fd_int = (km.integral(spec, up, t_end) - km.integral(spec, dn, t_end)) / (2 * h)
        fd_f = (km.evaluate(spec, up, t) - km.evaluate(spec, dn, t)) / (2 * h)
        # Central differences have O(h²) truncation ≈ 1e-12 relative and rounding ≈ ε/h ≈ 1e-10
        # relative; 1e-6 is far outside both.
        assert g[j] == pytest.approx(fd_int, rel=1e-6, abs=1e-6 * abs(km.integral(spec, theta)))
        np.testing.assert_allclose(jac[:, j], fd_f, rtol=1e-6, atol=1e-9 * np.abs(fd_f).max())


def test_mono_integral_closed_form():
    a0, lam = 5e7, math.log(2) / (50 * H)
    spec = km.get_model("mono")
    assert km.integral(spec, [a0, lam]) == pytest.approx(a0 / lam, rel=1e-14)
    t_end = 72 * H
    assert km.integral(spec, [a0, lam], t_end) == pytest.approx(
        a0 / lam * (1 - math.exp(-lam * t_end)), rel=1e-14)


@settings(max_examples=40, deadline=None)
@given(times=st.lists(st.floats(0.5, 300.0), min_size=2, max_size=6, unique=True),
       values=st.lists(st.floats(0.0, 1e3), min_size=6, max_size=6),
       head=st.sampled_from(list(TrapezoidHead)),
       t_end=st.one_of(st.just(math.inf), st.floats(0.1, 600.0)))
def test_trapezoid_weights_match_direct_integration(times, values, head, t_end):
    t = np.sort(np.array(times)) * H
    t_end = t_end * H
    a = np.array(values[: t.size])
    w = km.trapezoid_weights(t, LAM_P, t_end, head)
    # Reference: integrate the model's own curve numerically on a fine grid (piecewise linear
    # part exactly with np.trapezoid over the knots, tail analytically).
    knots = np.concatenate(([0.0], t))
    vals = np.concatenate(([0.0 if head is TrapezoidHead.ZERO else a[0]], a))
    upper = min(t_end, t[-1])
    grid = np.unique(np.concatenate((knots[knots <= upper], [upper])))
    ref = np.trapezoid(np.interp(grid, knots, vals), grid)
    if t_end > t[-1]:
        ref += a[-1] * (-math.expm1(-LAM_P * (t_end - t[-1]))) / LAM_P
    # Both sums are exact for piecewise-linear functions: only rounding differs.
    assert float(w @ a) == pytest.approx(ref, rel=1e-9, abs=1e-9 * H)


def test_trapezoid_evaluate_matches_integral():
    t = np.array([4, 24, 48, 168]) * H
    a = np.array([10.0, 8.0, 6.0, 2.0])
    grid = np.linspace(0, 3000 * H, 300001)
    curve = km.trapezoid_evaluate(t, a, LAM_P, grid)
    # Fine-grid trapezoid of the curve (exact on the linear part; the tail is convex so the
    # grid overestimates it by ≈ (Δt²/12)·λp²·tail ≈ 1e-7 relative) vs the weights.
    assert np.trapezoid(curve, grid) == pytest.approx(km.trapezoid_integral(t, a, LAM_P),
                                                      rel=2e-4)  # the grid stops at 3000 h
    assert curve[0] == 0.0


def test_get_model_unknown():
    with pytest.raises(KeyError, match="quadexp"):
        km.get_model("quadexp")
