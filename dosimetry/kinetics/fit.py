"""Fitting time-activity curves: lmfit least squares, AICc model selection, NUKFIT acceptance.

The entry point is :func:`fit_tac`. It fits each candidate model of :mod:`.models` that the number
of samples allows, rejects fits that fail the NUKFIT acceptance criteria (every parameter's
coefficient of variation below 50 %, every pairwise correlation below 0.8 in magnitude;
Hardiansyah et al., EJNMMI Phys 2021, doi:10.1186/s40658-021-00427-x), and chooses the accepted
model of lowest corrected Akaike information criterion (Kletting et al., Med Phys 2013,
40:102504, doi:10.1118/1.4820367, DOI unverified; Burnham & Anderson, *Model Selection and
Multimodel Inference*, 2002).
The time-integrated activity (TIA) comes from the analytic integral of the chosen model, its
standard uncertainty from the covariance propagated through the analytic gradient.

Units: times s, activities Bq, TIA Bq·s, rates 1/s. Internally the fit runs on times divided by
the last sample time and activities divided by the largest sample, so that every parameter is of
order one; parameters and covariances are converted back before anything leaves this module.

Likelihood and AICc
-------------------
The sample uncertainties σᵢ are treated as known (given, or from a relative error model when
none are given), so −2 ln L = χ² + const and

.. math:: \\mathrm{AICc} = χ^2 + 2k + \\frac{2k(k+1)}{n-k-1},

defined for n ≥ k + 2; models needing more samples are not candidates. Akaike weights are
:math:`w_i = e^{-Δ_i/2} / \\sum_j e^{-Δ_j/2}` over the models that converged.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import special

from dosimetry import units
from dosimetry.errors import InputError
from dosimetry.kinetics import models as km
from dosimetry.kinetics.models import ModelSpec, ParamKind, TrapezoidHead

if TYPE_CHECKING:  # lmfit and scipy.optimize are imported when a fit runs (slow imports)
    import lmfit

#: Relative standard uncertainty assumed for each sample when the curve carries none.
#: 10 % is a typical per-timepoint activity uncertainty of a VOI in quantitative SPECT/CT
#: (counting, reconstruction, delineation combined; Gear et al., EJNMMI 2018,
#: doi:10.1007/s00259-018-4136-7). Pass the real σ whenever it is known.
DEFAULT_RELATIVE_SIGMA = 0.10

#: Fraction of the TIA beyond the last sample above which a warning is recorded.
EXTRAPOLATION_WARNING_FRACTION = 0.20

_AMPLITUDE_CAP = 1e4  # in units of the largest sample
_RATE_CAP_TIMES_T1 = 50.0  # rate · (first positive sample time) ≤ 50: e^-50 is invisible


class ModelName(StrEnum):
    """Choice of kinetic model (``auto`` selects by AICc among the parametric ones)."""

    AUTO = "auto"
    MONO = "mono"
    MONO_UPTAKE = "mono-uptake"
    BIEXP = "biexp"
    TRIEXP = "triexp"
    TRAPEZOID = "trapezoid"


#: The parametric models, in order of complexity.
PARAMETRIC_MODELS: tuple[ModelName, ...] = (ModelName.MONO, ModelName.MONO_UPTAKE,
                                            ModelName.BIEXP, ModelName.TRIEXP)


class FallbackWarning(UserWarning):
    """A kinetics routine used a fallback (different model or method than the normal path)."""


def _announce(message: str, notes: list[str], stacklevel: int = 3) -> None:
    """Record a fallback in ``notes`` and issue it as a :class:`FallbackWarning`."""
    notes.append(message)
    warnings.warn(message, FallbackWarning, stacklevel=stacklevel)


def _hours(t_s: float) -> str:
    return f"{units.s_to_hours(t_s):.6g} h"


def _mbq(a_bq: float) -> str:
    return f"{units.bq_to_mbq(a_bq):.6g} MBq"


# ----------------------------------------------------------------------------------- input
@dataclass(frozen=True)
class TimeActivityCurve:
    """Activity samples of one VOI after injection, validated.

    Attributes
    ----------
    times_s : tuple of float
        Sample times after injection [s], ≥ 0, distinct; stored sorted.
    activity_bq : tuple of float
        Activity [Bq], finite, ≥ 0, at least one > 0.
    sigma_bq : tuple of float or None
        Standard uncertainty of each sample [Bq], > 0; None to use a relative error model.
    voi : str
        Name used in messages and reports.
    source : str
        Where the data came from (file name), for messages.

    Raises
    ------
    InputError
        Fewer than 2 samples, mismatched lengths, non-finite or negative times, duplicate times,
        NaN or negative activities, non-positive σ — naming the VOI and the bad value.
    """

    times_s: tuple[float, ...]
    activity_bq: tuple[float, ...]
    sigma_bq: tuple[float, ...] | None = None
    voi: str = "VOI"
    source: str = ""

    def __post_init__(self) -> None:
        where = f"{self.source}: " if self.source else ""
        who = f"{where}VOI {self.voi!r}"
        t = np.asarray(self.times_s, dtype=float).ravel()
        a = np.asarray(self.activity_bq, dtype=float).ravel()
        s = None if self.sigma_bq is None else np.asarray(self.sigma_bq, dtype=float).ravel()
        if t.size != a.size or (s is not None and s.size != t.size):
            raise InputError(f"{who}: {t.size} times but {a.size} activities"
                             + ("" if s is None else f" and {s.size} uncertainties"))
        if t.size < 2:
            raise InputError(f"{who}: needs at least 2 time points, got {t.size}")
        for ti in t:
            if not np.isfinite(ti):
                raise InputError(f"{who}: time {ti} is not a finite number")
            if ti < 0:
                raise InputError(f"{who}: time {_hours(ti)} is before injection (negative)")
        uniq, counts = np.unique(t, return_counts=True)
        if np.any(counts > 1):
            raise InputError(f"{who}: duplicate time {_hours(float(uniq[counts > 1][0]))}")
        for ti, ai in zip(t, a, strict=True):
            if not np.isfinite(ai):
                raise InputError(f"{who}: activity at {_hours(ti)} is {ai} (not a number)")
            if ai < 0:
                raise InputError(f"{who}: activity at {_hours(ti)} is negative ({_mbq(ai)})")
        if not np.any(a > 0):
            raise InputError(f"{who}: every activity is zero; nothing to fit")
        if s is not None:
            for ti, si in zip(t, s, strict=True):
                if not np.isfinite(si) or si <= 0:
                    raise InputError(f"{who}: uncertainty at {_hours(ti)} must be > 0, got {si}")
        order = np.argsort(t)
        object.__setattr__(self, "times_s", tuple(float(x) for x in t[order]))
        object.__setattr__(self, "activity_bq", tuple(float(x) for x in a[order]))
        if s is not None:
            object.__setattr__(self, "sigma_bq", tuple(float(x) for x in s[order]))

    @property
    def n(self) -> int:
        """Number of samples."""
        return len(self.times_s)

    @property
    def times(self) -> np.ndarray:
        """Sample times [s] as an array."""
        return np.array(self.times_s)

    @property
    def activity(self) -> np.ndarray:
        """Activities [Bq] as an array."""
        return np.array(self.activity_bq)

    def effective_sigma(self, relative_sigma: float = DEFAULT_RELATIVE_SIGMA) -> np.ndarray:
        """σ per sample [Bq]: the given ones, else ``relative_sigma`` × activity.

        The relative model is floored at 1 % of the largest activity so that a zero sample
        keeps a finite weight.
        """
        if self.sigma_bq is not None:
            return np.array(self.sigma_bq)
        if not (relative_sigma > 0 and np.isfinite(relative_sigma)):
            raise InputError(f"relative_sigma must be > 0, got {relative_sigma}")
        a = self.activity
        return relative_sigma * np.maximum(a, 0.01 * a.max())

    def with_activity(self, activity_bq: Sequence[float] | np.ndarray) -> TimeActivityCurve:
        """Same times, σ and name with new activities (used for resampling; not validated
        for sign, since resampled values may dip below zero)."""
        new = object.__new__(TimeActivityCurve)
        object.__setattr__(new, "times_s", self.times_s)
        object.__setattr__(new, "activity_bq", tuple(float(x) for x in activity_bq))
        object.__setattr__(new, "sigma_bq", self.sigma_bq)
        object.__setattr__(new, "voi", self.voi)
        object.__setattr__(new, "source", self.source)
        return new


@dataclass(frozen=True)
class AcceptanceCriteria:
    """Acceptance criteria for a fitted model.

    The NUKFIT criteria (Hardiansyah et al., EJNMMI Phys 2021,
    doi:10.1186/s40658-021-00427-x): every fitted parameter's coefficient of variation below
    ``max_cv`` and every off-diagonal correlation below ``max_abs_correlation`` in magnitude.
    In addition (ours, set ``min_p_value=0`` to disable) the χ² goodness of fit must not be
    improbable: P(χ²_{n−k} ≥ χ²) ≥ ``min_p_value`` when n > k. Without it a model that misses the
    data by many σ (a mono-exponential through a clear uptake phase) would be "accepted" simply
    because its two parameters are well determined.
    """

    max_cv: float = 0.5
    max_abs_correlation: float = 0.8
    min_p_value: float = 1e-3

    def __post_init__(self) -> None:
        if not 0 <= self.min_p_value < 1:
            raise InputError(f"min_p_value must be in [0, 1), got {self.min_p_value}")
        if not self.max_cv > 0:
            raise InputError(f"max_cv must be > 0, got {self.max_cv}")
        if not 0 < self.max_abs_correlation <= 1:
            raise InputError(f"max_abs_correlation must be in (0, 1], got "
                             f"{self.max_abs_correlation}")


# ----------------------------------------------------------------------------------- results
def _si_name(name: str, kind: ParamKind) -> str:
    return f"{name}_bq" if kind is ParamKind.AMPLITUDE else f"{name}_per_s"


@dataclass(frozen=True)
class ModelCandidate:
    """One model fitted to one curve (SI units: Bq, 1/s, Bq·s).

    ``params``/``sigmas`` are keyed ``<name>_bq`` for amplitudes and ``<name>_per_s`` for rates
    (see :mod:`.models` for the names); ``covariance`` follows the same order. For the
    trapezoid model they are empty. ``aicc`` and ``akaike_weight`` are NaN where not defined.
    """

    model: ModelName
    success: bool
    message: str
    n_params: int = 0
    params: dict[str, float] = field(default_factory=dict)
    sigmas: dict[str, float] = field(default_factory=dict)
    covariance: tuple[tuple[float, ...], ...] = ()
    chi_square: float = math.nan
    aicc: float = math.nan
    akaike_weight: float = math.nan
    accepted: bool = False
    rejection_reasons: tuple[str, ...] = ()
    max_cv: float = math.nan
    max_abs_correlation: float = math.nan
    p_value: float = math.nan
    tia_bq_s: float = math.nan
    tia_sigma_bq_s: float = math.nan
    extrapolated_fraction: float = math.nan
    at_bounds: tuple[str, ...] = ()
    held_fixed: tuple[str, ...] = ()

    @property
    def theta(self) -> np.ndarray:
        """Free parameters in model order (SI)."""
        return np.array(list(self.params.values()))

    @property
    def covariance_matrix(self) -> np.ndarray:
        """Covariance of ``theta`` (SI), shape (p, p)."""
        return np.array(self.covariance, dtype=float).reshape(self.n_params, self.n_params)

    def evaluate(self, t_s: np.ndarray | Sequence[float]) -> np.ndarray:
        """Fitted activity [Bq] at times ``t_s`` [s] (parametric models only)."""
        if self.model is ModelName.TRAPEZOID or not self.params:
            raise ValueError(f"{self.model} candidate has no parametric curve")
        return km.evaluate(km.get_model(self.model), self.theta, t_s)

    def integral(self, t_end_s: float = math.inf) -> float:
        """Analytic ∫₀^T of the fitted curve [Bq·s]."""
        if self.model is ModelName.TRAPEZOID or not self.params:
            raise ValueError(f"{self.model} candidate has no parametric curve")
        return km.integral(km.get_model(self.model), self.theta, t_end_s)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (NaN → None)."""
        return clean_json({
            "model": str(self.model), "success": self.success, "message": self.message,
            "n_params": self.n_params, "params": self.params, "sigmas": self.sigmas,
            "chi_square": self.chi_square, "aicc": self.aicc,
            "akaike_weight": self.akaike_weight, "accepted": self.accepted,
            "rejection_reasons": list(self.rejection_reasons), "max_cv": self.max_cv,
            "max_abs_correlation": self.max_abs_correlation, "p_value": self.p_value,
            "tia_bq_s": self.tia_bq_s,
            "tia_sigma_bq_s": self.tia_sigma_bq_s,
            "extrapolated_fraction": self.extrapolated_fraction,
            "at_bounds": list(self.at_bounds), "held_fixed": list(self.held_fixed),
        })


@dataclass(frozen=True)
class KineticFit:
    """Result of :func:`fit_tac`: the chosen model, its TIA ± σ, and why it was chosen.

    Attributes
    ----------
    success : bool
        False when no TIA could be obtained (``message`` says why; values are NaN).
    message : str
        One line on the outcome.
    model : ModelName
        The model that gave the TIA (the requested one when the fit failed).
    requested : ModelName
        What the caller asked for (``auto`` for selection).
    reason : str
        Why this model was chosen (AICc, weights, rejections, fallbacks).
    tac : TimeActivityCurve
        The data.
    sigma_bq : tuple of float
        σ per sample actually used [Bq].
    sigma_assumed : bool
        True when σ came from the relative error model rather than the data.
    decay_constant_per_s : float
        Physical decay constant used as the lower bound of clearance rates [1/s].
    params, sigmas, covariance
        The chosen model's parameters (SI; empty for the trapezoid).
    tia_bq_s, tia_sigma_bq_s : float
        TIA ∫₀^∞ A dt [Bq·s] and its standard uncertainty from the sample uncertainties
        (covariance propagation; calibration and other fully correlated terms are added by
        :func:`dosimetry.kinetics.uncertainty.tia_uncertainty`).
    extrapolated_fraction : float
        Fraction of the TIA after the last sample.
    chi_square, dof, reduced_chi_square, r_squared : float
        Goodness of fit of the chosen model (NaN for the trapezoid).
    candidates : tuple of ModelCandidate
        Every model tried, with AICc, weight and acceptance.
    warnings : tuple of str
        Fallbacks (also issued as :class:`FallbackWarning`) and cautions such as an
        extrapolated fraction above 20 %.
    fallback : bool
        True when the normal selection path was left.
    trapezoid_head : TrapezoidHead
        Closure used by the trapezoid model.
    """

    success: bool
    message: str
    model: ModelName
    requested: ModelName
    reason: str
    tac: TimeActivityCurve
    sigma_bq: tuple[float, ...]
    sigma_assumed: bool
    decay_constant_per_s: float
    params: dict[str, float] = field(default_factory=dict)
    sigmas: dict[str, float] = field(default_factory=dict)
    covariance: tuple[tuple[float, ...], ...] = ()
    tia_bq_s: float = math.nan
    tia_sigma_bq_s: float = math.nan
    extrapolated_fraction: float = math.nan
    chi_square: float = math.nan
    dof: int = 0
    reduced_chi_square: float = math.nan
    r_squared: float = math.nan
    candidates: tuple[ModelCandidate, ...] = ()
    warnings: tuple[str, ...] = ()
    fallback: bool = False
    trapezoid_head: TrapezoidHead = TrapezoidHead.ZERO

    def __bool__(self) -> bool:
        return self.success

    @property
    def voi(self) -> str:
        """VOI name."""
        return self.tac.voi

    @property
    def chosen(self) -> ModelCandidate | None:
        """The candidate that gave the TIA (None when the fit failed)."""
        for c in self.candidates:
            if c.model is self.model and c.success:
                return c
        return None

    @property
    def aicc(self) -> dict[str, float]:
        """AICc per candidate model (NaN where undefined)."""
        return {str(c.model): c.aicc for c in self.candidates}

    @property
    def akaike_weights(self) -> dict[str, float]:
        """Akaike weight per candidate model (NaN where undefined)."""
        return {str(c.model): c.akaike_weight for c in self.candidates}

    def evaluate(self, t_s: np.ndarray | Sequence[float]) -> np.ndarray:
        """The chosen model's activity [Bq] at ``t_s`` [s]."""
        t_s = np.asarray(t_s, dtype=float)
        if not self.success:
            return np.full(t_s.shape, np.nan)
        if self.model is ModelName.TRAPEZOID:
            return km.trapezoid_evaluate(self.tac.times, self.tac.activity,
                                         self.decay_constant_per_s, t_s, self.trapezoid_head)
        return km.evaluate(km.get_model(self.model), np.array(list(self.params.values())), t_s)

    def integral(self, t_end_s: float = math.inf) -> float:
        """∫₀^T of the chosen model [Bq·s], analytic (T = ``t_end_s``, default ∞)."""
        if not self.success:
            return math.nan
        if self.model is ModelName.TRAPEZOID:
            return km.trapezoid_integral(self.tac.times, self.tac.activity,
                                         self.decay_constant_per_s, t_end_s, self.trapezoid_head)
        return km.integral(km.get_model(self.model), np.array(list(self.params.values())),
                           t_end_s)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary in internal units (NaN → None)."""
        return clean_json({
            "voi": self.voi, "success": self.success, "message": self.message,
            "model": str(self.model), "requested": str(self.requested), "reason": self.reason,
            "decay_constant_per_s": self.decay_constant_per_s,
            "tia_bq_s": self.tia_bq_s, "tia_sigma_bq_s": self.tia_sigma_bq_s,
            "extrapolated_fraction": self.extrapolated_fraction,
            "params": self.params, "sigmas": self.sigmas,
            "chi_square": self.chi_square, "dof": self.dof,
            "reduced_chi_square": self.reduced_chi_square, "r_squared": self.r_squared,
            "aicc": self.aicc, "akaike_weights": self.akaike_weights,
            "sigma_assumed": self.sigma_assumed, "fallback": self.fallback,
            "warnings": list(self.warnings),
            "candidates": [c.to_dict() for c in self.candidates],
        })


def clean_json(obj: Any) -> Any:
    """Replace non-finite floats by None and numpy scalars by Python ones, recursively, so
    that the result serialises as strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean_json(v) for v in obj]
    if isinstance(obj, np.floating):
        return clean_json(float(obj))
    return obj


# ----------------------------------------------------------------------------------- core fit
@dataclass(frozen=True)
class _Problem:
    """The curve in scaled units: t / t_scale, A / a_scale."""

    t: np.ndarray
    y: np.ndarray
    s: np.ndarray
    lam: float  # physical decay constant in scaled units
    t_scale: float
    a_scale: float
    rate_cap: float

    @classmethod
    def build(cls, tac: TimeActivityCurve, sigma_bq: np.ndarray, lam_phys: float,
              activity_bq: np.ndarray | None = None) -> _Problem:
        t = tac.times
        a = tac.activity if activity_bq is None else np.asarray(activity_bq, float)
        t_scale = float(t[-1])
        a_scale = float(np.max(np.abs(tac.activity)))
        t_pos = t[t > 0]
        t1 = float(t_pos[0]) / t_scale if t_pos.size else 1.0
        lam = lam_phys * t_scale
        rate_cap = max(_RATE_CAP_TIMES_T1 / t1, 100.0 * lam)
        return cls(t / t_scale, a / a_scale, sigma_bq / a_scale, lam, t_scale, a_scale, rate_cap)

    def unit_factors(self, spec: ModelSpec) -> np.ndarray:
        """Multiply scaled θ by these to get SI θ."""
        return np.array([self.a_scale if k is ParamKind.AMPLITUDE else 1.0 / self.t_scale
                         for k in spec.kinds])

    def bounds(self, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
        lo = spec.lower_bounds(self.lam)
        hi = np.array([_AMPLITUDE_CAP if k is ParamKind.AMPLITUDE else self.rate_cap
                       for k in spec.kinds])
        return lo, hi


def _loglinear_rate(t: np.ndarray, y: np.ndarray, s: np.ndarray) -> float:
    """Decay rate of a weighted log-linear fit to the positive samples (NaN if < 2)."""
    ok = y > 0
    if ok.sum() < 2:
        return math.nan
    w = (y[ok] / s[ok]) ** 2
    x, z = t[ok], np.log(y[ok])
    sw = w.sum()
    xm, zm = (w * x).sum() / sw, (w * z).sum() / sw
    den = (w * (x - xm) ** 2).sum()
    if den <= 0:
        return math.nan
    return float(-(w * (x - xm) * (z - zm)).sum() / den)


def _rate_grids(spec: ModelSpec, p: _Problem) -> list[np.ndarray]:
    """Starting values of the rate parameters (amplitudes are solved by NNLS)."""
    lam, cap = p.lam, p.rate_cap
    n = p.t.size
    tail = max(2, (n + 1) // 2)
    r_all = _loglinear_rate(p.t, p.y, p.s)
    r_tail = _loglinear_rate(p.t[-tail:], p.y[-tail:], p.s[-tail:])
    slows = sorted({float(np.clip(r, lam * 1.001, cap / 50)) for r in (r_all, r_tail, lam)
                    if np.isfinite(r)})
    t_pos = p.t[p.t > 0]
    t1 = float(t_pos[0]) if t_pos.size else 1.0
    grids: list[np.ndarray] = []
    name = spec.name
    if name == "mono":
        grids = [np.array([r]) for r in slows]
    elif name == "mono-uptake":
        for r in slows:
            for mu in (0.3 / t1, 1.0 / t1, 3.0 / t1, 10.0 / t1, 3.0 * r):
                grids.append(np.array([r, min(mu, cap / 2)]))
    elif name == "biexp":
        for r in slows:
            for f in (3.0, 10.0, 30.0, 100.0):
                grids.append(np.array([r, min(r * f, cap / 2)]))
    elif name == "triexp":
        for r in slows:
            for f2 in (3.0, 15.0):
                for f3 in (3.0, 15.0):
                    l2 = min(r * f2, cap / 4)
                    l3 = min(l2 * f3, cap / 2)
                    grids.append(np.array([r, l2 - r, l3 - l2]))
    return grids


def _assemble(spec: ModelSpec, rates: np.ndarray, amps: np.ndarray) -> np.ndarray:
    theta = np.empty(spec.n_params)
    ai = spec.amplitude_indices()
    ri = [i for i in range(spec.n_params) if i not in ai]
    theta[list(ai)] = amps
    theta[ri] = rates
    return theta


def _starts(spec: ModelSpec, p: _Problem, keep: int = 3) -> list[np.ndarray]:
    """Starting points: rate grids with amplitudes from non-negative least squares."""
    from scipy.optimize import nnls

    ai = spec.amplitude_indices()
    scored: list[tuple[float, np.ndarray]] = []
    for rates in _rate_grids(spec, p):
        cols = []
        for j in range(len(ai)):
            unit = np.zeros(len(ai))
            unit[j] = 1.0
            cols.append(km.evaluate(spec, _assemble(spec, rates, unit), p.t) / p.s)
        design = np.column_stack(cols)
        amps, rnorm = nnls(design, p.y / p.s)
        amps = np.maximum(amps, 1e-3)  # stay off the bound so every parameter can move
        scored.append((float(rnorm), _assemble(spec, rates, amps)))
    scored.sort(key=lambda x: x[0])
    return [th for _, th in scored[:keep]]


def _interior(theta: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    span = hi - lo
    return np.clip(theta, lo + 1e-9 * np.maximum(span, 1.0), hi - 1e-9 * span)


def _residual(params: lmfit.Parameters, spec: ModelSpec, p: _Problem, y: np.ndarray):
    theta = np.array([params[n].value for n in spec.param_names])
    return (km.evaluate(spec, theta, p.t) - y) / p.s


def _residual_jac(params: lmfit.Parameters, spec: ModelSpec, p: _Problem, y: np.ndarray):
    theta = np.array([params[n].value for n in spec.param_names])
    return km.jacobian(spec, theta, p.t) / p.s[:, None]


def _lmfit_run(spec: ModelSpec, p: _Problem, y: np.ndarray, start: np.ndarray):
    import lmfit

    lo, hi = p.bounds(spec)
    start = _interior(start, lo, hi)
    params = lmfit.Parameters()
    for name, v, a, b in zip(spec.param_names, start, lo, hi, strict=True):
        params.add(name, value=float(v), min=float(a), max=float(b))
    mini = lmfit.Minimizer(_residual, params, fcn_args=(spec, p, y))
    # lmfit computes its own covariance after the fit (we compute ours from the analytic
    # Jacobian); on degenerate fits its sqrt of a negative variance would warn — not our result.
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        res = mini.minimize(method="least_squares", jac=_residual_jac)
    theta = np.array([res.params[n].value for n in spec.param_names])
    chi2 = float(np.sum(_residual(res.params, spec, p, y) ** 2))
    return theta, chi2, bool(res.success), str(res.message)


@dataclass(frozen=True)
class _Raw:
    spec: ModelSpec
    success: bool
    message: str
    theta: np.ndarray  # scaled
    cov: np.ndarray  # scaled
    chi2: float
    fixed: tuple[int, ...] = ()  # parameters held fixed for the covariance


def _fit_scaled(spec: ModelSpec, p: _Problem, y: np.ndarray,
                starts: list[np.ndarray]) -> _Raw:
    n, k = p.t.size, spec.n_params
    if n < k:
        return _Raw(spec, False, f"{spec.name} has {k} parameters and needs at least {k} "
                    f"samples, got {n}", np.full(k, np.nan), np.full((k, k), np.nan), math.nan)
    best: tuple[float, np.ndarray, str] | None = None
    last_msg = "no starting point"
    for s0 in starts:
        try:
            theta, chi2, ok, msg = _lmfit_run(spec, p, y, s0)
        except (ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
            last_msg = f"optimiser error: {exc}"
            continue
        if not (ok and np.all(np.isfinite(theta)) and np.isfinite(chi2)):
            last_msg = f"optimiser did not converge: {msg}"
            continue
        if best is None or chi2 < best[0]:
            best = (chi2, theta, msg)
    if best is None:
        return _Raw(spec, False, last_msg, np.full(k, np.nan), np.full((k, k), np.nan),
                    math.nan)
    chi2, theta, msg = best
    if spec.name == "biexp" and theta[1] > theta[3]:  # order the components: slow first
        theta = theta[[2, 3, 0, 1]]
    jac = km.jacobian(spec, theta, p.t) / p.s[:, None]
    cov = _covariance(jac)
    if cov is not None:
        return _Raw(spec, True, f"converged: {msg}", theta, cov, chi2)
    # A rate driven so high (e.g. uptake faster than the first sample can resolve) that the
    # curve no longer depends on it, or stopped at its cap: hold it fixed and take the
    # covariance of the others. Relative sensitivity: ‖∂r/∂θᵢ‖·|θᵢ|.
    _, hi = p.bounds(spec)
    sens = np.linalg.norm(jac, axis=0) * np.abs(theta)
    pinned = [i for i, kind in enumerate(spec.kinds)
              if kind is ParamKind.RATE
              and (theta[i] >= hi[i] * (1 - 1e-6) or sens[i] <= 1e-8 * sens.max())]
    free = [i for i in range(k) if i not in pinned]
    if pinned and free:
        sub = _covariance(jac[:, free])
        if sub is not None:
            cov = np.zeros((k, k))
            cov[np.ix_(free, free)] = sub
            names = ", ".join(spec.param_names[i] for i in pinned)
            return _Raw(spec, True, f"converged: {msg}; {names} too fast to resolve, held "
                        "fixed for the covariance", theta, cov, chi2, tuple(pinned))
    return _Raw(spec, False, "covariance is singular (parameters not identifiable from "
                "these samples)", theta, np.full((k, k), np.inf), chi2)


def _covariance(jac: np.ndarray) -> np.ndarray | None:
    """(JᵀJ)⁻¹ for a weighted Jacobian, or None when it is (numerically) singular."""
    if jac.shape[0] < jac.shape[1]:
        return None
    sv = np.linalg.svd(jac, compute_uv=False)
    if sv.size == 0 or sv[-1] <= 1e-12 * sv[0]:
        return None
    return np.linalg.inv(jac.T @ jac)


def _aicc(chi2: float, n: int, k: int) -> float:
    if n - k - 1 <= 0 or not np.isfinite(chi2):
        return math.nan
    return chi2 + 2 * k + 2 * k * (k + 1) / (n - k - 1)


def _candidate(raw: _Raw, p: _Problem, criteria: AcceptanceCriteria, weight: float,
               n: int) -> ModelCandidate:
    spec = raw.spec
    model = ModelName(spec.name)
    if not raw.success:
        return ModelCandidate(model, False, raw.message, n_params=spec.n_params,
                              chi_square=raw.chi2, rejection_reasons=(raw.message,))
    f = p.unit_factors(spec)
    theta_si = raw.theta * f
    cov_si = raw.cov * np.outer(f, f)
    sig = np.sqrt(np.clip(np.diag(raw.cov), 0, None))
    names = [_si_name(nm, kd) for nm, kd in zip(spec.param_names, spec.kinds, strict=True)]
    with np.errstate(divide="ignore", invalid="ignore"):
        cv = np.where(raw.theta != 0, sig / np.abs(raw.theta), np.inf)
        corr = raw.cov / np.outer(sig, sig)
    off = corr[~np.eye(spec.n_params, dtype=bool)]
    off = off[np.isfinite(off)]  # parameters held fixed (σ = 0) have no correlation
    max_corr = float(np.max(np.abs(off))) if off.size else 0.0
    reasons = []
    for nm, c in zip(names, cv, strict=True):
        if not c < criteria.max_cv:
            reasons.append(f"CV of {nm} is {c * 100:.0f} % (≥ {criteria.max_cv * 100:.0f} %)")
    if not max_corr < criteria.max_abs_correlation:
        reasons.append(f"|correlation| {max_corr:.2f} (≥ {criteria.max_abs_correlation:.2f})")
    dof = n - spec.n_params
    p_value = float(special.gammaincc(dof / 2.0, raw.chi2 / 2.0)) if dof > 0 else math.nan
    if p_value < criteria.min_p_value:
        reasons.append(f"χ² {raw.chi2:.3g} for {dof} dof (p = {p_value:.1e} < "
                       f"{criteria.min_p_value:g})")
    lo, hi = p.bounds(spec)
    at_bounds = tuple(nm for nm, v, a, b in zip(names, raw.theta, lo, hi, strict=True)
                      if abs(v - a) <= 1e-6 * max(abs(a), 1e-12) or abs(v - b) <= 1e-6 * b)
    tia_scaled = km.integral(spec, raw.theta)
    g = km.integral_gradient(spec, raw.theta)
    tia_var = float(g @ raw.cov @ g)
    unit = p.a_scale * p.t_scale
    to_last = km.integral(spec, raw.theta, float(p.t[-1]))
    extra = 1.0 - to_last / tia_scaled if tia_scaled > 0 else math.nan
    return ModelCandidate(
        model=model, success=True, message=raw.message, n_params=spec.n_params,
        params=dict(zip(names, (float(v) for v in theta_si), strict=True)),
        sigmas=dict(zip(names, (float(v) for v in np.sqrt(np.diag(cov_si))), strict=True)),
        covariance=tuple(tuple(float(v) for v in row) for row in cov_si),
        chi_square=raw.chi2, aicc=_aicc(raw.chi2, n, spec.n_params), akaike_weight=weight,
        accepted=not reasons, rejection_reasons=tuple(reasons),
        max_cv=float(np.max(cv)), max_abs_correlation=max_corr, p_value=p_value,
        tia_bq_s=tia_scaled * unit, tia_sigma_bq_s=math.sqrt(max(tia_var, 0.0)) * unit,
        extrapolated_fraction=extra, at_bounds=at_bounds,
        held_fixed=tuple(names[i] for i in raw.fixed),
    )


def _akaike_weights(aiccs: Sequence[float]) -> list[float]:
    vals = np.array(aiccs, dtype=float)
    ok = np.isfinite(vals)
    out = np.full(vals.shape, math.nan)
    if ok.any():
        d = vals[ok] - vals[ok].min()
        e = np.exp(-0.5 * d)
        out[ok] = e / e.sum()
    return [float(v) for v in out]


def _trapezoid_candidate(tac: TimeActivityCurve, sigma: np.ndarray, lam_phys: float,
                         head: TrapezoidHead, message: str) -> ModelCandidate:
    w = km.trapezoid_weights(tac.times, lam_phys, head=head)
    tia = float(w @ tac.activity)
    sig = float(np.sqrt(np.sum((w * sigma) ** 2)))
    tail = tac.activity[-1] / lam_phys
    return ModelCandidate(ModelName.TRAPEZOID, True, message, accepted=True,
                          tia_bq_s=tia, tia_sigma_bq_s=sig,
                          extrapolated_fraction=tail / tia if tia > 0 else math.nan)


def _model_name(value: ModelName | str) -> ModelName:
    try:
        return ModelName(value)
    except ValueError:
        raise InputError(f"unknown kinetic model {value!r}; choose one of "
                         f"{', '.join(m.value for m in ModelName)}") from None


def _check_lambda(decay_constant_per_s: float) -> float:
    lam = float(decay_constant_per_s)
    if not (np.isfinite(lam) and lam > 0):
        raise InputError(f"decay constant must be a positive number [1/s], got "
                         f"{decay_constant_per_s}")
    return lam


def fit_model(tac: TimeActivityCurve, model: ModelName | str, decay_constant_per_s: float, *,
              relative_sigma: float = DEFAULT_RELATIVE_SIGMA,
              criteria: AcceptanceCriteria | None = None,
              start: Sequence[float] | np.ndarray | None = None,
              activity_bq: np.ndarray | None = None,
              sigma_bq: np.ndarray | None = None) -> ModelCandidate:
    """Fit one parametric model to ``tac`` (no selection, no fallback).

    Parameters
    ----------
    tac : TimeActivityCurve
    model : ModelName or str
        One of the parametric models.
    decay_constant_per_s : float
        Physical decay constant [1/s], the lower bound of clearance rates.
    relative_sigma : float
        Relative σ per sample when ``tac`` has none.
    criteria : AcceptanceCriteria, optional
    start : (p,) array_like, optional
        Starting θ in SI (e.g. a previous fit); the usual starts are tried only if it fails.
    activity_bq : (n,) ndarray, optional
        Replacement activities with the same σ (used by Monte Carlo resampling).
    sigma_bq : (n,) ndarray, optional
        σ per sample [Bq] overriding the curve's (e.g. the σ an earlier fit used).

    Returns
    -------
    ModelCandidate
        ``success`` False with the reason when it could not be fitted.
    """
    lam = _check_lambda(decay_constant_per_s)
    model = _model_name(model)
    if model not in PARAMETRIC_MODELS:
        raise InputError(f"fit_model needs a parametric model, got {model!r}")
    spec = km.get_model(model)
    sigma = (tac.effective_sigma(relative_sigma) if sigma_bq is None
             else np.asarray(sigma_bq, dtype=float))
    p = _Problem.build(tac, sigma, lam, activity_bq)
    crit = criteria or AcceptanceCriteria()
    raw = None
    if start is not None:
        s0 = np.asarray(start, dtype=float) / p.unit_factors(spec)
        raw = _fit_scaled(spec, p, p.y, [s0])
    if raw is None or not raw.success:
        raw = _fit_scaled(spec, p, p.y, _starts(spec, p))
    return _candidate(raw, p, crit, math.nan, tac.n)


def _goodness(tac: TimeActivityCurve, sigma: np.ndarray, cand: ModelCandidate):
    if not cand.params:
        return math.nan, 0, math.nan, math.nan
    y = tac.activity
    f = cand.evaluate(tac.times)
    w = 1.0 / sigma**2
    chi2 = float(np.sum(w * (f - y) ** 2))
    dof = tac.n - cand.n_params
    ybar = float(np.sum(w * y) / np.sum(w))
    ss_tot = float(np.sum(w * (y - ybar) ** 2))
    r2 = 1.0 - chi2 / ss_tot if ss_tot > 0 else math.nan
    return chi2, dof, (chi2 / dof if dof > 0 else math.nan), r2


def fit_tac(tac: TimeActivityCurve, decay_constant_per_s: float,
            model: ModelName | str = ModelName.AUTO, *,
            relative_sigma: float = DEFAULT_RELATIVE_SIGMA,
            criteria: AcceptanceCriteria | None = None,
            trapezoid_head: TrapezoidHead | str = TrapezoidHead.ZERO,
            candidates: Sequence[ModelName | str] | None = None) -> KineticFit:
    """Fit a time-activity curve and integrate it: AICc selection with NUKFIT acceptance.

    Parameters
    ----------
    tac : TimeActivityCurve
        Samples (s, Bq, optional σ in Bq).
    decay_constant_per_s : float
        Physical decay constant λp [1/s] (``get_nuclide(name).decay_constant_per_s``); every
        clearance rate is constrained to ≥ λp and the trapezoid tail decays with it.
    model : ModelName or str
        ``auto`` (default) selects; a model name fits that model only (no fallback: a failure
        gives ``success=False``); ``trapezoid`` integrates the samples.
    relative_sigma : float
        Relative σ per sample when ``tac`` carries none (default 10 %).
    criteria : AcceptanceCriteria, optional
        NUKFIT thresholds (default CV < 50 %, |r| < 0.8).
    trapezoid_head : TrapezoidHead
        Closure between injection and the first sample for the trapezoid model.
    candidates : sequence of ModelName, optional
        Restrict the models considered by ``auto`` (default: all parametric ones).

    Returns
    -------
    KineticFit
        Never None; ``success`` False with ``message`` when no TIA could be obtained.

    Notes
    -----
    Selection (``auto``):

    1. Candidates are the models with n ≥ k + 2 samples (AICc defined). With fewer samples
       only the mono-exponential is fitted, without selection (announced).
    2. Among converged candidates meeting every acceptance criterion the lowest AICc wins.
    3. If none does, the lowest-AICc model meeting the CV and goodness-of-fit criteria is used
       (correlation relaxed; announced).
    4. Otherwise the trapezoid with a physical-decay tail is used (announced).

    Every announcement is a :class:`FallbackWarning` and a line in ``warnings``.
    """
    lam = _check_lambda(decay_constant_per_s)
    requested = _model_name(model)
    try:
        head = TrapezoidHead(trapezoid_head)
    except ValueError:
        raise InputError(f"unknown trapezoid head {trapezoid_head!r}; choose one of "
                         f"{', '.join(h.value for h in TrapezoidHead)}") from None
    crit = criteria or AcceptanceCriteria()
    sigma = tac.effective_sigma(relative_sigma)
    notes: list[str] = []
    base = dict(tac=tac, sigma_bq=tuple(float(s) for s in sigma),
                sigma_assumed=tac.sigma_bq is None, decay_constant_per_s=lam,
                requested=requested, trapezoid_head=head)

    if requested is ModelName.TRAPEZOID:
        cand = _trapezoid_candidate(tac, sigma, lam, head, "trapezoid with physical-decay tail")
        return _finish(base, cand, (cand,), "trapezoid requested", notes, fallback=False)

    n = tac.n
    p = _Problem.build(tac, sigma, lam)
    if requested is not ModelName.AUTO:
        spec = km.get_model(requested)
        raw = _fit_scaled(spec, p, p.y, _starts(spec, p))
        cand = _candidate(raw, p, crit, 1.0 if raw.success else math.nan, n)
        if not cand.success:
            return KineticFit(success=False, message=f"{requested} fit failed: {cand.message}",
                              model=requested, reason="requested model could not be fitted",
                              candidates=(cand,), **base)
        if not cand.accepted:
            notes.append(f"{requested} does not meet the acceptance criteria: "
                         + "; ".join(cand.rejection_reasons))
        return _finish(base, cand, (cand,), f"{requested} requested", notes, fallback=False)

    pool = [_model_name(m) for m in (candidates or PARAMETRIC_MODELS)]
    for m in pool:
        if m not in PARAMETRIC_MODELS:
            raise InputError(f"candidate models must be parametric, got {m!r}")
    allowed = [m for m in pool if n >= km.get_model(m).n_params + 2]
    fallback = False
    if not allowed:
        allowed = [ModelName.MONO]
        _announce(f"{n} samples are too few for AICc selection (needs ≥ 4); fitting the "
                  "mono-exponential without selection", notes)
        fallback = True
    raws = [_fit_scaled(km.get_model(m), p, p.y, _starts(km.get_model(m), p)) for m in allowed]
    aiccs = [_aicc(r.chi2, n, r.spec.n_params) if r.success else math.nan for r in raws]
    weights = _akaike_weights(aiccs)
    cands = tuple(_candidate(r, p, crit, w, n) for r, w in zip(raws, weights, strict=True))
    ok = [c for c in cands if c.success]
    acc = [c for c in ok if c.accepted]

    def key(c: ModelCandidate) -> tuple[float, int]:
        return (c.aicc if np.isfinite(c.aicc) else math.inf, c.n_params)

    rejected = "; ".join(f"{c.model}: {', '.join(c.rejection_reasons)}"
                         for c in cands if not c.accepted)
    if acc:
        chosen = min(acc, key=key)
        reason = (f"lowest AICc among {len(acc)} model(s) meeting the acceptance criteria"
                  if len(acc) > 1 else "only model meeting the acceptance criteria")
        if np.isfinite(chosen.aicc):
            reason += f" (AICc {chosen.aicc:.2f}, Akaike weight {chosen.akaike_weight:.2f})"
        if rejected:
            reason += f"; rejected — {rejected}"
        return _finish(base, chosen, cands, reason, notes, fallback)
    # Fallback: relax the correlation criterion (the amplitude–rate correlation of an
    # exponential term reflects how far t = 0 lies from the samples, not over-fitting); a model
    # with undetermined parameters or a poor fit is not used — the trapezoid is, instead.
    relaxed = [c for c in ok if c.max_cv < crit.max_cv
               and not (c.p_value < crit.min_p_value)]
    if relaxed:
        chosen = min(relaxed, key=key)
        what = "meets the CV and goodness-of-fit criteria but not the correlation one"
        _announce(f"no model meets all acceptance criteria ({rejected}); using {chosen.model}, "
                  f"which {what}", notes)
        return _finish(base, chosen, cands, f"fallback: {chosen.model} {what} "
                       f"(AICc {chosen.aicc:.2f}); rejected — {rejected}", notes, fallback=True)
    why = "converged" if not ok else "met the CV and goodness-of-fit criteria"
    _announce(f"no kinetic model {why} ({rejected}); using the trapezoid with a "
              "physical-decay tail", notes)
    trap = _trapezoid_candidate(tac, sigma, lam, head, f"fallback: no parametric model {why}")
    return _finish(base, trap, (*cands, trap), f"fallback: no parametric model {why} "
                   f"({rejected})", notes, fallback=True)


def _finish(base: dict[str, Any], chosen: ModelCandidate, cands: tuple[ModelCandidate, ...],
            reason: str, notes: list[str], fallback: bool) -> KineticFit:
    tac: TimeActivityCurve = base["tac"]
    sigma = np.array(base["sigma_bq"])
    chi2, dof, red, r2 = _goodness(tac, sigma, chosen)
    if chosen.extrapolated_fraction > EXTRAPOLATION_WARNING_FRACTION:
        notes.append(f"{chosen.extrapolated_fraction * 100:.0f} % of the TIA lies after the "
                     f"last sample ({_hours(tac.times_s[-1])}); a later sample would reduce "
                     "the extrapolation")
    if chosen.at_bounds:
        notes.append(f"{chosen.model}: parameter(s) at a bound: {', '.join(chosen.at_bounds)}")
    if chosen.held_fixed:
        notes.append(f"{chosen.model}: {', '.join(chosen.held_fixed)} not resolved by the "
                     "samples (too fast); held fixed, σ = 0")
    return KineticFit(
        success=True,
        message=f"{chosen.model}: TIA {units.bq_s_to_mbq_h(chosen.tia_bq_s):.4g} ± "
                f"{units.bq_s_to_mbq_h(chosen.tia_sigma_bq_s):.3g} MBq·h",
        model=chosen.model, reason=reason, params=dict(chosen.params),
        sigmas=dict(chosen.sigmas), covariance=chosen.covariance,
        tia_bq_s=chosen.tia_bq_s, tia_sigma_bq_s=chosen.tia_sigma_bq_s,
        extrapolated_fraction=chosen.extrapolated_fraction, chi_square=chi2, dof=dof,
        reduced_chi_square=red, r_squared=r2, candidates=cands, warnings=tuple(notes),
        fallback=fallback, **base,
    )
