"""Time-activity curve models: values, analytic integrals and their gradients (numpy only).

Every parametric model here is a sum of decaying exponentials

.. math:: f(t; θ) = \\sum_i c_i(θ)\\, e^{-k_i(θ) t},

with coefficients :math:`c_i` linear in the amplitudes of θ and rates :math:`k_i` built from the
rates of θ so that every rate is at least the physical decay constant :math:`λ_p` and the curve is
never negative (amplitudes ≥ 0, uptake rates above clearance rates). That one representation gives
the curve, its Jacobian, and the integral to a finite time :math:`T` or to infinity in closed form:

.. math:: \\int_0^T f\\,dt = \\sum_i \\frac{c_i}{k_i}\\left(1 - e^{-k_i T}\\right),\\qquad
          \\int_0^\\infty f\\,dt = \\sum_i \\frac{c_i}{k_i}.

Functions are unit-agnostic: rates are in the inverse of the time unit used for ``t``, amplitudes
in the activity unit, integrals in activity × time. The fitting code works in scaled units and
converts to the internal units (s, Bq) at its boundary.

The model set follows the function families used in NUKFIT (Kletting et al., Med Phys 2013,
40:102504, doi:10.1118/1.4820367, DOI unverified) with the physical decay folded into every rate:

=============  =====================================================  =========================
name           f(t)                                                   free parameters θ
=============  =====================================================  =========================
mono           a0·e^(−λt)                                             a0, lam=λ ≥ λp
mono-uptake    a0·(e^(−λt) − e^(−(λ+μ)t))                             a0, lam=λ ≥ λp, mu=μ ≥ 0
biexp          a1·e^(−λ1 t) + a2·e^(−λ2 t)                            a1, lam1 ≥ λp, a2, lam2 ≥ λp
triexp         a1·e^(−λ1 t) + a2·e^(−λ2 t) − (a1+a2)·e^(−λ3 t)        a1, lam1 ≥ λp, a2, d2, d3
               with λ2 = λ1 + δ2, λ3 = λ2 + δ3 (d2=δ2, d3=δ3 ≥ 0)
=============  =====================================================  =========================

The non-parametric trapezoid model with a physical-decay tail (integral of the piecewise-linear
interpolation of the data, then :math:`A(t_n)/λ_p` after the last point) is linear in the data;
:func:`trapezoid_weights` returns the weights so that TIA = w·A exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]


class ParamKind(StrEnum):
    """What a free parameter is, which fixes how it scales with the units."""

    AMPLITUDE = "amplitude"  # activity unit
    RATE = "rate"  # inverse time unit


class TrapezoidHead(StrEnum):
    """How the trapezoid model closes the interval between injection and the first sample."""

    ZERO = "zero"  # linear rise from A(0) = 0 to the first sample (uptake at injection)
    CONSTANT = "constant"  # the first sample held back to t = 0


# terms(θ) → (c, k, dc/dθ, dk/dθ); shapes (m,), (m,), (m, p), (m, p).
TermsFn = Callable[[FloatArray], tuple[FloatArray, FloatArray, FloatArray, FloatArray]]


@dataclass(frozen=True)
class ModelSpec:
    """A sum-of-exponentials model: its free parameters and the map θ → (c, k).

    Attributes
    ----------
    name : str
        Model name (the ``ModelName`` value used by the fitting code).
    param_names : tuple of str
        Names of the free parameters θ, in order.
    kinds : tuple of ParamKind
        Amplitude or rate, per parameter.
    rate_floor_is_physical : tuple of bool
        True where the parameter's lower bound is the physical decay constant (a clearance
        rate); False where it is 0 (an amplitude or a rate increment).
    terms : callable
        θ → (c, k, dc/dθ, dk/dθ).
    formula : str
        Human-readable formula.
    """

    name: str
    param_names: tuple[str, ...]
    kinds: tuple[ParamKind, ...]
    rate_floor_is_physical: tuple[bool, ...]
    terms: TermsFn
    formula: str

    @property
    def n_params(self) -> int:
        """Number of free parameters."""
        return len(self.param_names)

    def lower_bounds(self, lam_phys: float) -> FloatArray:
        """Lower bounds of θ: λp for clearance rates, 0 for amplitudes and increments."""
        return np.array([lam_phys if phys else 0.0 for phys in self.rate_floor_is_physical])

    def amplitude_indices(self) -> tuple[int, ...]:
        """Indices of the amplitude parameters (the model is linear in them)."""
        return tuple(i for i, k in enumerate(self.kinds) if k is ParamKind.AMPLITUDE)


def _mono_terms(p: FloatArray):
    a, lam = p
    c = np.array([a])
    k = np.array([lam])
    dc = np.array([[1.0, 0.0]])
    dk = np.array([[0.0, 1.0]])
    return c, k, dc, dk


def _mono_uptake_terms(p: FloatArray):
    a, lam, mu = p
    c = np.array([a, -a])
    k = np.array([lam, lam + mu])
    dc = np.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    dk = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    return c, k, dc, dk


def _biexp_terms(p: FloatArray):
    a1, l1, a2, l2 = p
    c = np.array([a1, a2])
    k = np.array([l1, l2])
    dc = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    dk = np.array([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    return c, k, dc, dk


def _triexp_terms(p: FloatArray):
    a1, l1, a2, d2, d3 = p
    c = np.array([a1, a2, -(a1 + a2)])
    k = np.array([l1, l1 + d2, l1 + d2 + d3])
    dc = np.array([[1.0, 0.0, 0.0, 0.0, 0.0],
                   [0.0, 0.0, 1.0, 0.0, 0.0],
                   [-1.0, 0.0, -1.0, 0.0, 0.0]])
    dk = np.array([[0.0, 1.0, 0.0, 0.0, 0.0],
                   [0.0, 1.0, 0.0, 1.0, 0.0],
                   [0.0, 1.0, 0.0, 1.0, 1.0]])
    return c, k, dc, dk


_A, _R = ParamKind.AMPLITUDE, ParamKind.RATE

#: The parametric models, keyed by name.
MODELS: dict[str, ModelSpec] = {
    "mono": ModelSpec("mono", ("a0", "lam"), (_A, _R), (False, True), _mono_terms,
                      "a0·exp(−λ·t)"),
    "mono-uptake": ModelSpec(
        "mono-uptake", ("a0", "lam", "mu"), (_A, _R, _R), (False, True, False),
        _mono_uptake_terms, "a0·(exp(−λ·t) − exp(−(λ+μ)·t))"),
    "biexp": ModelSpec(
        "biexp", ("a1", "lam1", "a2", "lam2"), (_A, _R, _A, _R), (False, True, False, True),
        _biexp_terms, "a1·exp(−λ1·t) + a2·exp(−λ2·t)"),
    "triexp": ModelSpec(
        "triexp", ("a1", "lam1", "a2", "d2", "d3"), (_A, _R, _A, _R, _R),
        (False, True, False, False, False), _triexp_terms,
        "a1·exp(−λ1·t) + a2·exp(−λ2·t) − (a1+a2)·exp(−λ3·t), λ2 = λ1+δ2, λ3 = λ2+δ3"),
}


def get_model(name: str) -> ModelSpec:
    """Return the :class:`ModelSpec` called ``name`` (KeyError naming the known ones)."""
    try:
        return MODELS[str(name)]
    except KeyError:
        raise KeyError(f"unknown kinetic model {name!r}; known: {', '.join(MODELS)}") from None


def evaluate(spec: ModelSpec, theta: ArrayLike, t: ArrayLike) -> FloatArray:
    """Model value f(t; θ).

    Parameters
    ----------
    spec : ModelSpec
    theta : (p,) array_like
        Free parameters.
    t : (n,) array_like
        Times (same unit as the inverse rates).

    Returns
    -------
    (n,) ndarray
        Activity (unit of the amplitudes).
    """
    c, k, _, _ = spec.terms(np.asarray(theta, dtype=float))
    t = np.asarray(t, dtype=float)
    return np.exp(-np.multiply.outer(t, k)) @ c


def jacobian(spec: ModelSpec, theta: ArrayLike, t: ArrayLike) -> FloatArray:
    """∂f/∂θ at times ``t``; shape (n, p)."""
    c, k, dc, dk = spec.terms(np.asarray(theta, dtype=float))
    t = np.asarray(t, dtype=float)
    e = np.exp(-np.multiply.outer(t, k))  # (n, m)
    return e @ dc - (e * t[:, None] * c[None, :]) @ dk


def _term_integrals(k: FloatArray, t_end: float) -> tuple[FloatArray, FloatArray]:
    """∫0^T e^(−k t) dt and its derivative wrt k, per term."""
    if np.isinf(t_end):
        return 1.0 / k, -1.0 / k**2
    e = np.exp(-k * t_end)
    one_minus = -np.expm1(-k * t_end)
    val = one_minus / k
    dval = (k * t_end * e - one_minus) / k**2
    return val, dval


def integral(spec: ModelSpec, theta: ArrayLike, t_end: float = np.inf) -> float:
    """Analytic ∫₀^T f(t; θ) dt (T = ``t_end``, default ∞)."""
    c, k, _, _ = spec.terms(np.asarray(theta, dtype=float))
    val, _ = _term_integrals(k, float(t_end))
    return float(c @ val)


def integral_gradient(spec: ModelSpec, theta: ArrayLike, t_end: float = np.inf) -> FloatArray:
    """Analytic gradient ∂/∂θ of ∫₀^T f dt; shape (p,).

    Used to propagate the parameter covariance to the time-integrated activity:
    σ²(TIA) = gᵀ C g (first-order, e.g. JCGM 100:2008 §5.2).
    """
    c, k, dc, dk = spec.terms(np.asarray(theta, dtype=float))
    val, dval = _term_integrals(k, float(t_end))
    return val @ dc + (c * dval) @ dk


# ----------------------------------------------------------------------------------- trapezoid
def _segment_weights(times: FloatArray, t_end: float, head: TrapezoidHead) -> FloatArray:
    """Weights w with ∫₀^min(T, t_n) (piecewise-linear interpolation) = w·A."""
    n = times.size
    w = np.zeros(n)
    # Knots: the head knot at t = 0 carries 0 (ZERO) or A_0 (CONSTANT), then the samples.
    knots_t = np.concatenate(([0.0], times))
    # Each knot's value as a combination of the samples: row j → weights over samples.
    knot_coef = np.zeros((n + 1, n))
    knot_coef[1:, :] = np.eye(n)
    if head is TrapezoidHead.CONSTANT:
        knot_coef[0, 0] = 1.0
    upper = min(t_end, float(times[-1]))
    for j in range(n):
        t0, t1 = knots_t[j], knots_t[j + 1]
        if t1 <= t0 or t0 >= upper:
            continue
        hi = min(t1, upper)
        # Integral of the linear interpolant between (t0, v0) and (t1, v1) over [t0, hi]:
        # v(t) = v0 + (v1 − v0)(t − t0)/(t1 − t0); ∫ = (hi − t0)·v0 + (v1 − v0)(hi − t0)²/(2 Δ).
        d = t1 - t0
        s = hi - t0
        w_v1 = s * s / (2.0 * d)
        w_v0 = s - w_v1
        w += w_v0 * knot_coef[j] + w_v1 * knot_coef[j + 1]
    return w


def trapezoid_weights(times: ArrayLike, lam_phys: float, t_end: float = np.inf,
                      head: TrapezoidHead = TrapezoidHead.ZERO) -> FloatArray:
    """Weights w such that the trapezoid-plus-physical-tail integral to ``t_end`` is w·A.

    Parameters
    ----------
    times : (n,) array_like
        Sample times, increasing, ≥ 0.
    lam_phys : float
        Physical decay constant (inverse time unit of ``times``), > 0.
    t_end : float
        Upper integration limit (default ∞).
    head : TrapezoidHead
        Closure between injection and the first sample.

    Returns
    -------
    (n,) ndarray
        Integration weights (time unit).

    Notes
    -----
    After the last sample the activity is assumed to decay physically only, which
    overestimates the tail whenever there is biological clearance — the conservative choice.
    """
    times = np.asarray(times, dtype=float)
    w = _segment_weights(times, float(t_end), TrapezoidHead(head))
    t_last = float(times[-1])
    if t_end > t_last:
        tail = (1.0 / lam_phys if np.isinf(t_end)
                else -np.expm1(-lam_phys * (t_end - t_last)) / lam_phys)
        w[-1] += tail
    return w


def trapezoid_integral(times: ArrayLike, values: ArrayLike, lam_phys: float,
                       t_end: float = np.inf, head: TrapezoidHead = TrapezoidHead.ZERO) -> float:
    """Trapezoid-plus-physical-tail integral of the samples to ``t_end``."""
    return float(trapezoid_weights(times, lam_phys, t_end, head) @ np.asarray(values, float))


def trapezoid_evaluate(times: ArrayLike, values: ArrayLike, lam_phys: float, t: ArrayLike,
                       head: TrapezoidHead = TrapezoidHead.ZERO) -> FloatArray:
    """The trapezoid model's curve: linear interpolation, physical decay after the last point."""
    times = np.asarray(times, dtype=float)
    values = np.asarray(values, dtype=float)
    t = np.asarray(t, dtype=float)
    v0 = 0.0 if TrapezoidHead(head) is TrapezoidHead.ZERO else values[0]
    kt = np.concatenate(([0.0], times)) if times[0] > 0 else times
    kv = np.concatenate(([v0], values)) if times[0] > 0 else values
    out = np.interp(t, kt, kv)
    after = t > times[-1]
    out[after] = values[-1] * np.exp(-lam_phys * (t[after] - times[-1]))
    return out
