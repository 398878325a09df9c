"""Personalised activity per remaining cycle: maximise lesion BED under cumulative organ limits.

Model
-----
For a VOI with dose coefficient x [Gy/GBq] and Lea–Catcheside factor G, a cycle of activity a
[GBq] adds the dose x·a and the BED x·a + k·x²·a², k = G/(α/β) (:mod:`planning.radiobiology`;
BED adds over cycles). With delivered quantity H (dose or BED of the completed cycles), the
cumulative quantity after the remaining cycles a₁…a_R is

    Q(a) = H + x·S₁ + k·x²·S₂,     S₁ = Σ a_c,  S₂ = Σ a_c²,

(k = 0 for absorbed dose; EQD2 limits are BED limits × (1 + 2/(α/β))). Per-cycle limits bound
x·a_c + k·x²·a_c² for every cycle. The same dose coefficient applies to every remaining cycle
(the patient's kinetics are assumed to repeat).

Objective: the lowest total BED over lesions (``min-lesion-bed``, maximised through an
epigraph variable), the mass-weighted mean lesion BED, or the total activity. Solved by
:func:`scipy.optimize.minimize` (SLSQP) from the closed-form equal-cycle plan and tilted starts;
equal cycles are solved analytically (positive root of the BED quadratic in a). For one cycle,
and for the total-activity objective, the equal-cycle closed form is the exact optimum
(every limit is increasing and Schur-convex in a, so for a given total activity equal cycles
are the easiest to fit). Lesion BED is convex in a, so when only absorbed-dose limits bind, a
plan that concentrates activity can score slightly higher; an unequal plan replaces equal
cycles only when it raises the objective by more than ``min_unequal_gain`` (1 % by default),
and the gain is announced.

Uncertainty and the chance-constrained mode
-------------------------------------------
x is uncertain: log-normal (default) or normal (clipped at 0) with the given mean and σ, fully
correlated over the remaining cycles (one patient). The delivered quantity H is normal with its
σ, independent of x. With a confidence level c, each enforced limit must hold with probability
≥ 1 − ε_k, ε_k = (1 − c)/K (Bonferroni over the K enforced limits, so that the probability of
exceeding *any* limit is ≤ 1 − c whatever their correlation) or ε_k = 1 − c (``each``). The
constraint is reformulated with the (1 − ε_k) quantile of Q(a): because Q grows monotonically
with x, when H is exactly known the quantile is H + Q(a; x_{1−ε}) in closed form; otherwise the
distribution of H + g(x) is a convolution evaluated by Gauss–Hermite quadrature over the
narrower of the two terms and the quantile found by root finding. Probabilities of exceeding
each limit are reported in every mode (a deterministic plan that sits at a limit has a
probability near 50 % of exceeding it).

Infeasible and degenerate inputs (limit already exceeded, minimum activity above what the
limits allow, zero Gy/GBq, no lesions, no remaining cycles, no VOI for a limit) give a
:class:`PlanResult` whose ``status``, ``message`` and ``reasons`` say what and why — never an
exception and never ``None``.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Self

import numpy as np
from numpy.polynomial.hermite_e import hermegauss
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from scipy import optimize
from scipy.special import ndtr, ndtri

from dosimetry.io import models as _io
from planning.protocols import LimitQuantity, LimitScope, Objective, OrganLimit
from planning.radiobiology import bed as bed_formula
from planning.radiobiology import eqd2_factor
from planning.results import VoiKind
from planning.tissues import TissueParameters

__all__ = [
    "ConstraintReport",
    "PlanResult",
    "PlanSettings",
    "PlanStatus",
    "PlannedCycle",
    "PlanningProblem",
    "RiskAllocation",
    "TargetReport",
    "UncertaintyModel",
    "VoiPlanInput",
    "optimise_plan",
]

NonNeg = Annotated[float, Field(ge=0)]

#: Gauss–Hermite nodes for the convolution of the delivered and future terms. 40 nodes
#: integrate a smooth CDF over ±8.9 σ; the tests check the probabilities against sampling.
_GH_NODES = 40
#: Relative slack under which a limit counts as binding (the closed forms are exact to
#: round-off; SLSQP stops at ftol 1e-12 so a met limit sits within ~1e-9 of it).
_BINDING_RTOL = 1e-5
#: Relative tolerance on a limit when checking a solver's answer.
_FEAS_RTOL = 1e-7


class UncertaintyModel(StrEnum):
    """Distribution of the dose coefficient (Gy/GBq) around its estimate."""

    LOGNORMAL = "lognormal"
    NORMAL = "normal"


class RiskAllocation(StrEnum):
    """How 1 − confidence is shared among the enforced limits."""

    BONFERRONI = "bonferroni"  # ε/K each: P(any limit exceeded) ≤ ε
    EACH = "each"  # ε each: P(a given limit exceeded) ≤ ε


class PlanStatus(StrEnum):
    """Outcome of planning."""

    OPTIMAL = "optimal"
    INFEASIBLE = "infeasible"
    NOTHING_TO_PLAN = "nothing-to-plan"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _finite_fields(model: BaseModel) -> None:
    for name, value in model:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")


# ------------------------------------------------------------------------------------ inputs
class VoiPlanInput(_Model):
    """What the optimiser knows about one VOI.

    Attributes
    ----------
    name, kind, tissue
        Identification; ``tissue`` gives α/β and decides which limits apply.
    dose_gy_per_gbq, dose_gy_per_gbq_sigma : float
        Dose coefficient for the remaining cycles and its σ [Gy/GBq].
    g_factor : float
        Lea–Catcheside factor of the VOI's dose-rate shape, in [0, 1].
    delivered_dose_gy, delivered_dose_sigma_gy : float
        Absorbed dose of the completed cycles and its σ [Gy].
    delivered_bed_gy : float, optional
        BED of the completed cycles [Gy]; default: the delivered dose as one cycle with
        ``g_factor`` (exact for one completed cycle).
    retention_fraction_48h : float, optional
        Activity at 48 h / administered activity, for retained-activity limits (whole body).
    mass_g : float, optional
        Mass [g]; weights the mean-lesion-BED objective.
    """

    name: str = Field(min_length=1)
    kind: VoiKind
    tissue: TissueParameters
    dose_gy_per_gbq: NonNeg
    dose_gy_per_gbq_sigma: NonNeg = 0.0
    g_factor: float = Field(ge=0, le=1)
    delivered_dose_gy: NonNeg = 0.0
    delivered_dose_sigma_gy: NonNeg = 0.0
    delivered_bed_gy: NonNeg | None = None
    retention_fraction_48h: Annotated[float, Field(gt=0, le=1)] | None = None
    mass_g: Annotated[float, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _fill(self) -> Self:
        _finite_fields(self)
        if self.delivered_bed_gy is None:
            b = float(bed_formula(self.delivered_dose_gy, self.g_factor,
                                  self.tissue.alpha_beta_gy))
            object.__setattr__(self, "delivered_bed_gy", b)
        elif self.delivered_bed_gy < self.delivered_dose_gy * (1 - 1e-9):
            raise ValueError(f"VOI {self.name!r}: delivered BED {self.delivered_bed_gy} Gy is "
                             f"below the delivered dose {self.delivered_dose_gy} Gy")
        return self

    @property
    def k_bed(self) -> float:
        """k = G/(α/β) [1/Gy]: BED of a cycle = x·a + k·(x·a)²."""
        return self.g_factor / self.tissue.alpha_beta_gy


class PlanSettings(_Model):
    """Cycles, bounds, objective and confidence of a plan."""

    remaining_cycles: int = Field(ge=0, le=50)
    first_cycle_number: int = Field(default=1, ge=1)
    min_activity_gbq: NonNeg = 0.0
    max_activity_gbq: float = Field(gt=0)
    objective: Objective = Objective.MIN_LESION_BED
    confidence: float | None = Field(default=None, gt=0.5, lt=1.0)
    uncertainty: UncertaintyModel = UncertaintyModel.LOGNORMAL
    risk_allocation: RiskAllocation = RiskAllocation.BONFERRONI
    target_dose_gy: Annotated[float, Field(gt=0)] | None = None
    target_tissue: str | None = None
    min_unequal_gain: float = Field(default=0.01, ge=0, description=(
        "Relative gain of the objective an unequal plan must bring to replace equal cycles."))

    @model_validator(mode="after")
    def _check(self) -> Self:
        _finite_fields(self)
        if self.min_activity_gbq > self.max_activity_gbq:
            raise ValueError(f"min_activity_gbq {self.min_activity_gbq} exceeds "
                             f"max_activity_gbq {self.max_activity_gbq}")
        if self.objective is Objective.TARGET_DOSE and self.target_dose_gy is None:
            raise ValueError("objective target-dose needs target_dose_gy")
        return self


class PlanningProblem(_Model):
    """Everything :func:`optimise_plan` needs."""

    vois: tuple[VoiPlanInput, ...]
    limits: tuple[OrganLimit, ...] = ()
    settings: PlanSettings
    notes: tuple[str, ...] = ()

    @field_validator("vois")
    @classmethod
    def _unique(cls, v: tuple[VoiPlanInput, ...]) -> tuple[VoiPlanInput, ...]:
        names = [x.name for x in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"VOI names must be unique; repeated: {dupes}")
        return v


# ----------------------------------------------------------------------------------- results
class PlannedCycle(_Model):
    """One planned administration."""

    cycle_number: int
    activity_gbq: float


class ConstraintReport(_Model):
    """A limit applied to one VOI, evaluated at the plan.

    ``planned_total`` is the estimate after the plan (delivered + planned cycles; for per-cycle
    limits, the largest cycle). ``margin`` = limit − planned_total in ``unit`` and in % of the
    limit; ``*_at_confidence`` use the (1 − allocated_risk) quantile. ``probability_exceed``
    is P(limit exceeded) under the uncertainty model.
    """

    label: str
    voi: str
    tissue: str
    quantity: LimitQuantity
    scope: LimitScope
    unit: str
    limit: float
    enforced: bool
    delivered: float
    planned_total: float
    margin: float
    margin_percent: float
    planned_at_confidence: float | None = None
    margin_at_confidence: float | None = None
    allocated_risk: float | None = None
    probability_exceed: float
    binding: bool = False
    source: str = ""
    verified: bool = False


class TargetReport(_Model):
    """A lesion (or the target of a target-dose plan) after the plan."""

    name: str
    kind: VoiKind
    tissue: str
    dose_gy_per_gbq: float
    delivered_dose_gy: float
    delivered_bed_gy: float
    planned_dose_gy: float
    total_dose_gy: float
    total_bed_gy: float
    total_eqd2_gy: float


class PlanResult(_Model):
    """The recommended activities with the reasons, margins and probabilities behind them.

    Attributes
    ----------
    status, feasible, message
        Outcome in a word, a flag, and one sentence.
    reasons : tuple of str
        Why the plan is infeasible (or what makes it degenerate).
    notes : tuple of str
        Assumptions, fallbacks and remarks (announced, never silent).
    cycles : tuple of PlannedCycle
        Activity of each remaining cycle [GBq] (0 GBq when infeasible).
    binding_constraint : str
        Label of the limit that stops more activity, "maximum activity per cycle (… GBq)",
        "target dose", or "none".
    constraints, targets
        Every limit with margins and probabilities; every lesion (target) with its BED.
    equal_cycle_activity_gbq : float, optional
        Closed-form largest equal activity per remaining cycle (reference).
    probability_any_exceed_bound : float
        Union bound Σ_k P(limit k exceeded) over enforced limits (capped at 1).
    """

    status: PlanStatus
    feasible: bool
    message: str
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    objective: Objective
    objective_value: float
    objective_unit: str
    method: str
    confidence: float | None
    uncertainty: UncertaintyModel
    risk_allocation: RiskAllocation
    cycles: tuple[PlannedCycle, ...]
    total_activity_gbq: float
    equal_cycle_activity_gbq: float | None = None
    binding_constraint: str
    activity_bound_binding: bool = False
    probability_any_exceed_bound: float
    constraints: tuple[ConstraintReport, ...] = ()
    targets: tuple[TargetReport, ...] = ()

    @property
    def activities_gbq(self) -> tuple[float, ...]:
        """Activities of the remaining cycles [GBq]."""
        return tuple(c.activity_gbq for c in self.cycles)

    def to_dict(self) -> dict:
        """JSON-compatible dict."""
        return self.model_dump(mode="json")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically as JSON or YAML."""
        return _io.save(self, path, "plan")

    @classmethod
    def from_dict(cls, data, source: str = "<dict>") -> PlanResult:
        """Validate a mapping (inverse of :meth:`to_dict`)."""
        return _io.validate(cls, data, source, "plan")


# ------------------------------------------------------------------------ probability kernels
@dataclass(frozen=True)
class _Coef:
    """Uncertain coefficient X ≥ 0 (Gy/GBq or retained fraction) with mean and σ."""

    mean: float
    sd: float
    model: UncertaintyModel

    @property
    def degenerate(self) -> bool:
        return self.sd <= 0 or self.mean <= 0

    @property
    def _log_params(self) -> tuple[float, float]:
        s2 = math.log1p((self.sd / self.mean) ** 2)
        return math.log(self.mean) - 0.5 * s2, math.sqrt(s2)

    def quantile(self, p: float) -> float:
        if self.degenerate:
            return self.mean
        z = float(ndtri(p))
        if self.model is UncertaintyModel.LOGNORMAL:
            mu, s = self._log_params
            return math.exp(mu + s * z)
        return max(self.mean + self.sd * z, 0.0)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        if self.degenerate:
            return (x >= self.mean).astype(float)
        if self.model is UncertaintyModel.LOGNORMAL:
            mu, s = self._log_params
            with np.errstate(divide="ignore"):
                z = (np.log(np.where(x > 0, x, 1.0)) - mu) / s
            return np.where(x > 0, ndtr(z), 0.0)
        return np.where(x >= 0, ndtr((x - self.mean) / self.sd), 0.0)

    def pdf(self, x: np.ndarray) -> np.ndarray:
        """Density for x > 0 (the normal model's clipped mass at 0 has no density)."""
        x = np.asarray(x, dtype=float)
        if self.degenerate:
            return np.zeros_like(x)
        if self.model is UncertaintyModel.LOGNORMAL:
            mu, s = self._log_params
            safe = np.where(x > 0, x, 1.0)
            z = (np.log(safe) - mu) / s
            return np.where(x > 0, np.exp(-0.5 * z * z) / (safe * s * math.sqrt(2 * math.pi)),
                            0.0)
        z = (x - self.mean) / self.sd
        return np.where(x > 0, np.exp(-0.5 * z * z) / (self.sd * math.sqrt(2 * math.pi)), 0.0)

    def nodes(self) -> tuple[np.ndarray, np.ndarray]:
        xi, w = _gh()
        if self.degenerate:
            return np.array([self.mean]), np.array([1.0])
        if self.model is UncertaintyModel.LOGNORMAL:
            mu, s = self._log_params
            return np.exp(mu + s * xi), w
        return np.maximum(self.mean + self.sd * xi, 0.0), w

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Draws (used by tests and diagnostics)."""
        if self.degenerate:
            return np.full(n, self.mean)
        if self.model is UncertaintyModel.LOGNORMAL:
            mu, s = self._log_params
            return rng.lognormal(mu, s, n)
        return np.maximum(rng.normal(self.mean, self.sd, n), 0.0)


@functools.lru_cache(maxsize=1)
def _gh() -> tuple[np.ndarray, np.ndarray]:
    """Probabilists' Gauss–Hermite nodes and weights normalised to the standard normal."""
    xi, w = hermegauss(_GH_NODES)
    return xi, w / math.sqrt(2 * math.pi)


def _g(x, k: float, s1: float, s2: float):
    """Future quantity for coefficient x: x·S₁ + k·x²·S₂."""
    return x * s1 + k * x * x * s2


def _g_inv(v: np.ndarray, k: float, s1: float, s2: float) -> np.ndarray:
    """x ≥ 0 with g(x) = v, for v ≥ 0 (inf where g ≡ 0)."""
    v = np.asarray(v, dtype=float)
    a, b = k * s2, s1
    if a == 0 and b == 0:
        return np.full_like(v, np.inf)
    return 2.0 * v / (b + np.sqrt(b * b + 4.0 * a * np.maximum(v, 0.0)))


@dataclass(frozen=True)
class _Constraint:
    """One limit on one VOI in internal form: Q = H + N(0, sH) + x·S₁ + k·x²·S₂ ≤ L."""

    limit: OrganLimit
    voi: str
    tissue: str
    coef: _Coef
    k: float
    h: float
    sh: float
    limit_internal: float  # in BED for EQD2 limits
    scale: float  # reported = internal / scale (EQD2 factor; 1 otherwise)
    per_cycle: bool
    eps: float | None  # allocated risk (chance mode, enforced limits)

    @property
    def label(self) -> str:
        return f"{self.voi}: {self.limit.label}"

    def sums(self, a: np.ndarray) -> tuple[float, float]:
        if a.size == 0:
            return 0.0, 0.0
        if self.per_cycle:
            m = float(np.max(a))
            return m, m * m
        return float(np.sum(a)), float(np.sum(a * a))

    # -- distribution of Q -------------------------------------------------------------------
    def _future_degenerate(self, s1: float, s2: float) -> bool:
        return self.coef.degenerate or (s1 == 0 and s2 == 0)

    def _numeric(self, q: float, s1: float, s2: float) -> tuple[float, float, float, float]:
        """F(q), f(q) = dF/dq, ∂F/∂S₁, ∂F/∂S₂ of Q = H + N(0, sH) + g(X), both terms random.

        The convolution is integrated by Gauss–Hermite quadrature over the narrower term while
        the wider one enters through its exact CDF, so the integrand is smooth on the scale of
        the nodes.
        """
        h, sh, k, coef = self.h, self.sh, self.k, self.coef
        lo, hi = coef.quantile(0.158655), coef.quantile(0.841345)
        spread = 0.5 * (_g(hi, k, s1, s2) - _g(lo, k, s1, s2))
        if sh <= spread:  # integrate over the delivered term; X through its CDF
            xi, w = _gh()
            v = q - h - sh * xi
            pos = v > 0
            x = np.where(pos, _g_inv(np.where(pos, v, 0.0), k, s1, s2), 0.0)
            fx = np.where(pos, coef.pdf(x), 0.0)
            gp = s1 + 2.0 * k * x * s2
            cdf = float(np.sum(w * np.where(v >= 0, coef.cdf(x), 0.0)))
            dens = float(np.sum(w * fx / gp))
            d1 = -float(np.sum(w * fx * x / gp))
            d2 = -float(np.sum(w * fx * k * x * x / gp))
            return cdf, dens, d1, d2
        x, wx = coef.nodes()  # integrate over X; the delivered term through Φ
        z = (q - h - _g(x, k, s1, s2)) / sh
        phi = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        cdf = float(np.sum(wx * ndtr(z)))
        dens = float(np.sum(wx * phi)) / sh
        d1 = -float(np.sum(wx * phi * x)) / sh
        d2 = -float(np.sum(wx * phi * k * x * x)) / sh
        return cdf, dens, d1, d2

    def cdf(self, q: float, s1: float, s2: float) -> float:
        """P(Q ≤ q) for future sums S₁, S₂."""
        h, sh, k = self.h, self.sh, self.k
        if sh <= 0:
            v = q - h
            if v < 0:
                return 0.0
            if self._future_degenerate(s1, s2):
                return float(_g(self.coef.mean, k, s1, s2) <= v)
            return float(self.coef.cdf(_g_inv(np.array([v]), k, s1, s2))[0])
        if self._future_degenerate(s1, s2):
            return float(ndtr((q - h - _g(self.coef.mean, k, s1, s2)) / sh))
        return self._numeric(q, s1, s2)[0]

    def quantile(self, p: float, s1: float, s2: float) -> float:
        """The p-quantile of Q (closed form where one term is certain, else Newton)."""
        return self.quantile_and_gradient(p, s1, s2)[0]

    def quantile_and_gradient(self, p: float, s1: float,
                              s2: float) -> tuple[float, float, float]:
        """(q_p, ∂q_p/∂S₁, ∂q_p/∂S₂)."""
        h, sh, k = self.h, self.sh, self.k
        if sh <= 0 or self._future_degenerate(s1, s2):
            x = self.coef.quantile(p) if sh <= 0 else self.coef.mean
            off = 0.0 if sh <= 0 else sh * float(ndtri(p))
            return h + off + _g(x, k, s1, s2), x, k * x * x
        # Safeguarded Newton on F(q) = p from a normal approximation of Q.
        xs, wx = self.coef.nodes()
        gx = _g(xs, k, s1, s2)
        mean = h + float(np.sum(wx * gx))
        sd = math.sqrt(sh * sh + float(np.sum(wx * (gx - (mean - h)) ** 2)))
        lo = h - 10.0 * sh
        hi = h + 10.0 * sh + _g(self.coef.quantile(1.0 - 1e-12), k, s1, s2)
        while self.cdf(hi, s1, s2) < p:
            hi = h + 2.0 * (hi - h)
        q = min(max(mean + sd * float(ndtri(p)), lo), hi)
        tol = 1e-13 * max(1.0, abs(hi))
        for _ in range(200):
            cdf, dens, _, _ = self._numeric(q, s1, s2)
            if cdf > p:
                hi = q
            else:
                lo = q
            q_new = q - (cdf - p) / dens if dens > 0 else math.nan
            if not lo < q_new < hi:
                q_new = 0.5 * (lo + hi)
            if abs(q_new - q) <= tol:
                q = q_new
                break
            q = q_new
        _, dens, d1, d2 = self._numeric(q, s1, s2)
        return q, -d1 / dens, -d2 / dens

    def prob_exceed(self, a: np.ndarray) -> float:
        s1, s2 = self.sums(a)
        return float(min(1.0, max(0.0, 1.0 - self.cdf(self.limit_internal, s1, s2))))

    def estimate(self, a: np.ndarray) -> float:
        s1, s2 = self.sums(a)
        return self.h + _g(self.coef.mean, self.k, s1, s2)

    def effective(self, a: np.ndarray) -> float:
        """The value held to the limit: quantile in chance mode, else the estimate."""
        if self.eps is None:
            return self.estimate(a)
        s1, s2 = self.sums(a)
        return self.quantile(1.0 - self.eps, s1, s2)

    # -- closed forms for the optimiser --------------------------------------------------------
    @property
    def closed_form(self) -> tuple[float, float] | None:
        """(x_eff, offset): effective(a) = H + offset + g(x_eff) when that is exact."""
        if self.eps is None:
            return self.coef.mean, 0.0
        if self.sh <= 0:
            return self.coef.quantile(1.0 - self.eps), 0.0
        if self.coef.degenerate:
            return self.coef.mean, self.sh * float(ndtri(1.0 - self.eps))
        return None

    def max_equal_activity(self, n: int) -> float:
        """Largest a with every one of n cycles at a meeting the limit (inf: never binds)."""
        reps = 1 if self.per_cycle else n
        cf = self.closed_form
        if cf is not None:
            x, off = cf
            c = self.limit_internal - self.h - off  # h = 0 for per-cycle limits
            if x <= 0:
                return math.inf if c >= 0 else 0.0
            if c <= 0:
                return 0.0
            b, qa = x * reps, self.k * x * x * reps
            return 2.0 * c / (b + math.sqrt(b * b + 4.0 * qa * c))

        def excess(a: float) -> float:
            return self.quantile(1.0 - self.eps, reps * a, reps * a * a) - self.limit_internal

        if excess(0.0) >= 0:
            return 0.0
        hi = 1.0
        while excess(hi) < 0:
            hi *= 2.0
            if hi > 1e7:
                return math.inf
        return float(optimize.brentq(excess, 0.0, hi, xtol=1e-12, rtol=4e-15))


# ----------------------------------------------------------------------------- construction
def _resolve(problem: PlanningProblem, notes: list[str]) -> list[_Constraint]:
    s = problem.settings
    out: list[_Constraint] = []
    for lim in problem.limits:
        vois = [v for v in problem.vois if v.tissue.name in lim.tissues]
        if not vois:
            notes.append(f"no VOI of tissue {'/'.join(lim.tissues)}: limit '{lim.label}' not "
                         "applied")
            continue
        for v in vois:
            q = lim.quantity
            per_cycle = lim.scope is LimitScope.PER_CYCLE
            if q is LimitQuantity.RETAINED_ACTIVITY_48H:
                if v.retention_fraction_48h is None:
                    notes.append(f"{v.name}: no retention at 48 h (kinetics without "
                                 f"exponentials): limit '{lim.label}' not applied")
                    continue
                if not per_cycle:
                    notes.append(f"limit '{lim.label}': retained activity is a per-cycle "
                                 "quantity; applied per cycle")
                coef = _Coef(v.retention_fraction_48h, 0.0, s.uncertainty)
                k, h, sh, per_cycle = 0.0, 0.0, 0.0, True
            else:
                coef = _Coef(v.dose_gy_per_gbq, v.dose_gy_per_gbq_sigma, s.uncertainty)
                if (s.uncertainty is UncertaintyModel.NORMAL and v.dose_gy_per_gbq > 0
                        and v.dose_gy_per_gbq_sigma > 0.5 * v.dose_gy_per_gbq):
                    cv = v.dose_gy_per_gbq_sigma / v.dose_gy_per_gbq
                    p0 = float(ndtr(-1.0 / cv))
                    notes.append(f"{v.name}: σ/x = {cv:.2g}"
                                 f" under the normal model puts {100 * p0:.2g} % of the "
                                 "coefficient below 0 (clipped); the log-normal model suits "
                                 "large uncertainties better")
                if q is LimitQuantity.DOSE:
                    k, h, sh = 0.0, v.delivered_dose_gy, v.delivered_dose_sigma_gy
                else:
                    k = v.k_bed
                    h = float(v.delivered_bed_gy or 0.0)
                    d = v.delivered_dose_gy
                    slope = 1.0 + 2.0 * (h - d) / d if d > 0 else 1.0
                    sh = v.delivered_dose_sigma_gy * slope
                if per_cycle:
                    h, sh = 0.0, 0.0
            scale = float(eqd2_factor(v.tissue.alpha_beta_gy)) if q is LimitQuantity.EQD2 else 1.0
            if v.dose_gy_per_gbq == 0 and q is not LimitQuantity.RETAINED_ACTIVITY_48H:
                notes.append(f"{v.name}: 0 Gy/GBq, so '{lim.label}' cannot bind")
            out.append(_Constraint(limit=lim, voi=v.name, tissue=v.tissue.name, coef=coef, k=k,
                                   h=h, sh=sh, limit_internal=lim.value * scale, scale=scale,
                                   per_cycle=per_cycle, eps=None))
    if s.confidence is not None:
        n_enf = sum(c.limit.enforced for c in out)
        eps = 1.0 - s.confidence
        if s.risk_allocation is RiskAllocation.BONFERRONI and n_enf > 1:
            eps /= n_enf
        out = [replace(c, eps=eps if c.limit.enforced else None) for c in out]
    return out


def _targets(problem: PlanningProblem) -> list[VoiPlanInput]:
    s = problem.settings
    if s.objective is Objective.TARGET_DOSE:
        return [v for v in problem.vois if v.tissue.name == s.target_tissue
                or (s.target_tissue is None and v.kind is VoiKind.LESION)]
    return [v for v in problem.vois if v.kind is VoiKind.LESION]


def _lesion_bed(v: VoiPlanInput, a: np.ndarray) -> float:
    x = v.dose_gy_per_gbq
    return float(v.delivered_bed_gy or 0.0) + float(np.sum(x * a + v.k_bed * (x * a) ** 2))


def _objective_value(obj: Objective, targets: list[VoiPlanInput], a: np.ndarray) -> float:
    if obj is Objective.TOTAL_ACTIVITY or not targets:
        return float(np.sum(a))
    beds = np.array([_lesion_bed(v, a) for v in targets])
    if obj is Objective.MIN_LESION_BED:
        return float(np.min(beds))
    masses = [v.mass_g for v in targets]
    if all(m is not None for m in masses):
        w = np.array(masses, dtype=float)
        return float(np.sum(w * beds) / np.sum(w))
    return float(np.mean(beds))


# ---------------------------------------------------------------------------------- reports
def _reports(cons: list[_Constraint], a: np.ndarray) -> list[ConstraintReport]:
    out = []
    for c in cons:
        est = c.estimate(a) / c.scale
        lim = c.limit.value
        at_conf = margin_conf = None
        if c.eps is not None:
            at_conf = c.effective(a) / c.scale
            margin_conf = lim - at_conf
        held = at_conf if at_conf is not None else est
        binding = c.limit.enforced and a.size > 0 and (lim - held) <= _BINDING_RTOL * lim
        out.append(ConstraintReport(
            label=c.label, voi=c.voi, tissue=c.tissue, quantity=c.limit.quantity,
            scope=LimitScope.PER_CYCLE if c.per_cycle else c.limit.scope, unit=c.limit.unit,
            limit=lim, enforced=c.limit.enforced, delivered=c.h / c.scale, planned_total=est,
            margin=lim - est, margin_percent=100.0 * (lim - est) / lim,
            planned_at_confidence=at_conf, margin_at_confidence=margin_conf,
            allocated_risk=c.eps, probability_exceed=c.prob_exceed(a), binding=bool(binding),
            source=c.limit.source, verified=c.limit.verified))
    return out


def _target_reports(targets: list[VoiPlanInput], a: np.ndarray) -> list[TargetReport]:
    out = []
    for v in targets:
        planned = float(v.dose_gy_per_gbq * np.sum(a))
        total_bed = _lesion_bed(v, a)
        out.append(TargetReport(
            name=v.name, kind=v.kind, tissue=v.tissue.name, dose_gy_per_gbq=v.dose_gy_per_gbq,
            delivered_dose_gy=v.delivered_dose_gy,
            delivered_bed_gy=float(v.delivered_bed_gy or 0.0), planned_dose_gy=planned,
            total_dose_gy=v.delivered_dose_gy + planned, total_bed_gy=total_bed,
            total_eqd2_gy=float(total_bed / eqd2_factor(v.tissue.alpha_beta_gy))))
    return out


def _result(problem: PlanningProblem, cons: list[_Constraint], targets: list[VoiPlanInput],
            a: np.ndarray, *, status: PlanStatus, message: str, method: str,
            objective: Objective, reasons: list[str], notes: list[str],
            equal: float | None) -> PlanResult:
    s = problem.settings
    reports = _reports(cons, a)
    binding = [r for r in reports if r.binding]
    at_max = a.size > 0 and bool(np.all(a >= s.max_activity_gbq * (1 - 1e-9)))
    if status is not PlanStatus.OPTIMAL:
        bind = "none"
    elif objective is Objective.TARGET_DOSE:
        bind = "target dose"
    elif binding:
        slack = [(r.limit - (r.planned_at_confidence if r.planned_at_confidence is not None
                             else r.planned_total)) / r.limit for r in binding]
        bind = binding[int(np.argmin(slack))].label
    elif at_max:
        bind = f"maximum activity per cycle ({s.max_activity_gbq:g} GBq)"
    else:
        bind = "none"
    union = min(1.0, sum(r.probability_exceed for r in reports if r.enforced))
    unit = "GBq" if objective is Objective.TOTAL_ACTIVITY else "Gy"
    if objective is Objective.TARGET_DOSE:
        obj_value = min((float(t.delivered_dose_gy + t.dose_gy_per_gbq * np.sum(a))
                         for t in targets), default=0.0)
    else:
        obj_value = _objective_value(objective, targets, a)
    return PlanResult(
        status=status, feasible=status is not PlanStatus.INFEASIBLE, message=message,
        reasons=tuple(reasons), notes=tuple(dict.fromkeys(problem.notes + tuple(notes))),
        objective=objective, objective_value=float(obj_value), objective_unit=unit,
        method=method, confidence=s.confidence, uncertainty=s.uncertainty,
        risk_allocation=s.risk_allocation,
        cycles=tuple(PlannedCycle(cycle_number=s.first_cycle_number + i, activity_gbq=float(x))
                     for i, x in enumerate(a)),
        total_activity_gbq=float(np.sum(a)), equal_cycle_activity_gbq=equal,
        binding_constraint=bind, activity_bound_binding=bool(at_max and not binding
                                                             and status is PlanStatus.OPTIMAL),
        probability_any_exceed_bound=float(union), constraints=tuple(reports),
        targets=tuple(_target_reports(targets, a)))


# ------------------------------------------------------------------------------------ solver
def _max_equal(cons: list[_Constraint], n: int, a_max: float) -> tuple[float, _Constraint | None]:
    best, which = a_max, None
    for c in cons:
        if not c.limit.enforced:
            continue
        m = c.max_equal_activity(n)
        if m < best:
            best, which = m, c
    return best, which


def _fmt(x: float, unit: str) -> str:
    return f"{x:.4g} {unit}"


def _already_exceeded(cons: list[_Constraint]) -> list[str]:
    out = []
    for c in cons:
        if not c.limit.enforced or c.per_cycle:
            continue
        held = c.h if c.eps is None else c.h + c.sh * float(ndtri(1.0 - c.eps))
        if held >= c.limit_internal:
            what = "delivered" if c.eps is None else \
                f"upper {100 * (1 - c.eps):.3g} % bound of the delivered"
            out.append(f"{c.voi}: {what} {c.limit.quantity.value.upper()} "
                       f"{_fmt(held / c.scale, c.limit.unit)} already reaches the limit "
                       f"{_fmt(c.limit.value, c.limit.unit)} ({c.limit.label})")
    return out


def _constraint_funcs(c: _Constraint, n: int):
    """SLSQP inequality constraints (≥ 0) on z = (a, [t]) for one limit, scaled by the limit."""
    L = c.limit_internal
    cf = c.closed_form
    funcs = []
    if c.per_cycle:
        assert cf is not None  # per-cycle limits carry no delivered term: closed form
        x, off = cf
        for i in range(n):
            def fun(z, i=i, x=x, off=off):
                return (L - off - _g(x, c.k, z[i], z[i] ** 2)) / L

            def jac(z, i=i, x=x):
                g = np.zeros_like(z)
                g[i] = -(x + 2 * c.k * x * x * z[i]) / L
                return g
            funcs.append({"type": "ineq", "fun": fun, "jac": jac})
        return funcs
    if cf is not None:
        x, off = cf

        def fun(z):
            a = z[:n]
            return (L - c.h - off - _g(x, c.k, np.sum(a), np.sum(a * a))) / L

        def jac(z):
            g = np.zeros_like(z)
            g[:n] = -(x + 2 * c.k * x * x * z[:n]) / L
            return g
        return [{"type": "ineq", "fun": fun, "jac": jac}]
    p = 1.0 - float(c.eps)

    def fun(z):
        a = z[:n]
        return (L - c.quantile(p, float(np.sum(a)), float(np.sum(a * a)))) / L

    def jac(z):
        a = z[:n]
        _, d1, d2 = c.quantile_and_gradient(p, float(np.sum(a)), float(np.sum(a * a)))
        g = np.zeros_like(z)
        g[:n] = -(d1 + 2.0 * d2 * a) / L
        return g
    return [{"type": "ineq", "fun": fun, "jac": jac}]


def _feasible(cons: list[_Constraint], a: np.ndarray, lo: float, hi: float) -> bool:
    if np.any(a < lo - 1e-9 * max(1.0, lo)) or np.any(a > hi * (1 + 1e-9)):
        return False
    return all(c.effective(a) <= c.limit_internal * (1 + _FEAS_RTOL) + 1e-12
               for c in cons if c.limit.enforced)


def _slsqp(cons: list[_Constraint], targets: list[VoiPlanInput], objective: Objective,
           n: int, lo: float, hi: float, starts: list[np.ndarray]) -> np.ndarray | None:
    scale = max(1.0, _objective_value(objective, targets, starts[0]))
    epigraph = objective is Objective.MIN_LESION_BED and len(targets) > 1
    sl_cons = [f for c in cons if c.limit.enforced for f in _constraint_funcs(c, n)]
    if epigraph:
        for v in targets:
            x, k, hb = v.dose_gy_per_gbq, v.k_bed, float(v.delivered_bed_gy or 0.0)

            def fun(z, x=x, k=k, hb=hb):
                a = z[:n]
                return (hb + np.sum(x * a + k * (x * a) ** 2) - z[n]) / scale

            def jac(z, x=x, k=k):
                g = np.zeros_like(z)
                g[:n] = (x + 2 * k * x * x * z[:n]) / scale
                g[n] = -1.0 / scale
                return g
            sl_cons.append({"type": "ineq", "fun": fun, "jac": jac})

        def obj(z):
            return -z[n] / scale

        def obj_jac(z):
            g = np.zeros_like(z)
            g[n] = -1.0 / scale
            return g
    else:
        def obj(z):
            return -_objective_value(objective, targets, z[:n]) / scale

        obj_jac = None
    bounds = [(lo, hi)] * n + ([(None, None)] if epigraph else [])
    best, best_val = None, -math.inf
    for a0 in starts:
        z0 = np.concatenate([a0, [_objective_value(Objective.MIN_LESION_BED, targets, a0)]]) \
            if epigraph else a0.copy()
        with warnings.catch_warnings():
            # SLSQP may step a hair outside the bounds inside its line search; the answer is
            # checked (and clipped) below, so its runtime warnings say nothing to the user.
            warnings.simplefilter("ignore", RuntimeWarning)
            res = optimize.minimize(obj, z0, jac=obj_jac, bounds=bounds, constraints=sl_cons,
                                    method="SLSQP", options={"ftol": 1e-12, "maxiter": 500})
        a = np.clip(res.x[:n], lo, hi)
        if not _feasible(cons, a, lo, hi):
            continue
        val = _objective_value(objective, targets, a)
        if val > best_val:
            best, best_val = a, val
    return best


def _target_dose_plan(problem: PlanningProblem, cons: list[_Constraint],
                      notes: list[str]) -> PlanResult:
    s = problem.settings
    n = s.remaining_cycles
    targets = _targets(problem)
    obj = Objective.TARGET_DOSE
    zero = np.zeros(n)
    method = "closed form (target dose / Gy per GBq)"

    def infeasible(msg: str, reasons: list[str]) -> PlanResult:
        return _result(problem, cons, targets, zero, status=PlanStatus.INFEASIBLE,
                       message=msg, method=method, objective=obj, reasons=reasons,
                       notes=notes, equal=None)

    if n == 0:
        return _result(problem, cons, targets, zero, status=PlanStatus.NOTHING_TO_PLAN,
                       message="no cycles remain: nothing to plan", method="none",
                       objective=obj, reasons=[], notes=notes, equal=None)
    if not targets:
        return infeasible("no target VOI", [f"no VOI of tissue {s.target_tissue!r} to prescribe "
                                            f"{s.target_dose_gy:g} Gy to"])
    assert s.target_dose_gy is not None
    need = []
    for v in targets:
        rest = s.target_dose_gy - v.delivered_dose_gy
        if rest <= 0:
            need.append(0.0)
            notes.append(f"{v.name}: delivered {v.delivered_dose_gy:.4g} Gy already reaches the "
                         f"target {s.target_dose_gy:g} Gy")
            continue
        if v.dose_gy_per_gbq <= 0:
            return infeasible("target cannot be reached",
                              [f"{v.name}: 0 Gy/GBq — no activity reaches "
                               f"{s.target_dose_gy:g} Gy"])
        coef = _Coef(v.dose_gy_per_gbq, v.dose_gy_per_gbq_sigma, s.uncertainty)
        x = coef.mean if s.confidence is None else coef.quantile(1.0 - s.confidence)
        if x <= 0:
            return infeasible("target cannot be reached with that confidence",
                              [f"{v.name}: the lower {100 * (1 - s.confidence):.3g} % "
                               "quantile of the dose coefficient is 0 Gy/GBq"])
        need.append(rest / (n * x))
    a_req = max(need)
    if a_req > s.max_activity_gbq:
        return infeasible("target needs more than the maximum activity",
                          [f"reaching {s.target_dose_gy:g} Gy needs {a_req:.4g} GBq per cycle "
                           f"> maximum {s.max_activity_gbq:g} GBq"])
    if a_req < s.min_activity_gbq:
        notes.append(f"required {a_req:.4g} GBq raised to the minimum activity "
                     f"{s.min_activity_gbq:g} GBq")
        a_req = s.min_activity_gbq
    a = np.full(n, a_req)
    if not _feasible(cons, a, s.min_activity_gbq, s.max_activity_gbq):
        bad = [c.label for c in cons if c.limit.enforced
               and c.effective(a) > c.limit_internal * (1 + _FEAS_RTOL)]
        res = _result(problem, cons, targets, a, status=PlanStatus.INFEASIBLE,
                      message="the target dose violates an organ limit", method=method,
                      objective=obj, reasons=[f"{a_req:.4g} GBq per cycle for "
                                              f"{s.target_dose_gy:g} Gy exceeds: {b}"
                                              for b in bad], notes=notes, equal=None)
        return res
    conf = "" if s.confidence is None else \
        f" (reached with probability ≥ {100 * s.confidence:.3g} %)"
    return _result(problem, cons, targets, a, status=PlanStatus.OPTIMAL,
                   message=f"{a_req:.4g} GBq per cycle reaches {s.target_dose_gy:g} Gy{conf}",
                   method=method, objective=obj, reasons=[], notes=notes, equal=None)


def optimise_plan(problem: PlanningProblem) -> PlanResult:
    """Recommend the activity of each remaining cycle (module docstring for the model).

    Parameters
    ----------
    problem : PlanningProblem
        VOIs (dose coefficients, G, delivered dose/BED with σ), limits, settings.

    Returns
    -------
    PlanResult
        Never raises for infeasible or degenerate inputs: the result says why.
    """
    s = problem.settings
    notes: list[str] = []
    cons = _resolve(problem, notes)
    n = s.remaining_cycles
    if s.objective is Objective.TARGET_DOSE:
        return _target_dose_plan(problem, cons, notes)
    objective = s.objective
    targets = _targets(problem)
    if objective is not Objective.TOTAL_ACTIVITY:
        if not targets:
            notes.append("no lesion VOIs: the plan maximises the administered activity within "
                         "the limits instead")
            objective = Objective.TOTAL_ACTIVITY
        elif all(v.dose_gy_per_gbq == 0 for v in targets):
            notes.append("every lesion has 0 Gy/GBq: the plan maximises the administered "
                         "activity within the limits instead")
            objective = Objective.TOTAL_ACTIVITY
        else:
            for v in targets:
                if v.dose_gy_per_gbq == 0:
                    notes.append(f"lesion {v.name} has 0 Gy/GBq: its BED cannot grow")
    if s.confidence is None:
        notes.append("deterministic plan (point estimates): probabilities of exceeding are "
                     "reported but not constrained; use a confidence level to constrain them")
    zero = np.zeros(n)
    if n == 0:
        return _result(problem, cons, targets, zero, status=PlanStatus.NOTHING_TO_PLAN,
                       message="no cycles remain: nothing to plan (delivered totals reported)",
                       method="none", objective=objective, reasons=[], notes=notes, equal=None)

    def infeasible(msg: str, reasons: list[str], equal: float | None) -> PlanResult:
        return _result(problem, cons, targets, zero, status=PlanStatus.INFEASIBLE, message=msg,
                       method="closed form (equal cycles)", objective=objective,
                       reasons=reasons, notes=notes, equal=equal)

    exceeded = _already_exceeded(cons)
    if exceeded:
        return infeasible("a limit is already reached by the delivered cycles", exceeded, 0.0)
    a_eq, which = _max_equal(cons, n, s.max_activity_gbq)
    if a_eq < s.min_activity_gbq * (1 - 1e-12):
        assert which is not None
        a_min = np.full(n, s.min_activity_gbq)
        over = which.effective(a_min) / which.scale
        reasons = [f"the minimum activity {s.min_activity_gbq:g} GBq in each of {n} cycle(s) "
                   f"gives {which.voi} {which.limit.quantity.value.upper()} "
                   f"{_fmt(over, which.limit.unit)} > limit "
                   f"{_fmt(which.limit.value, which.limit.unit)} ({which.limit.label}); the "
                   f"largest equal activity within the limits is {a_eq:.4g} GBq per cycle"]
        for k in range(n - 1, 0, -1):
            a_k, _ = _max_equal(cons, k, s.max_activity_gbq)
            if a_k >= s.min_activity_gbq:
                reasons.append(f"with {k} remaining cycle(s) instead of {n} the plan is "
                               f"feasible ({a_k:.4g} GBq each)")
                break
        else:
            if n > 0:
                reasons.append("no further cycle at the minimum activity fits within the limits")
        return infeasible("the minimum activity per cycle violates a limit", reasons, a_eq)
    a = np.full(n, a_eq)
    method = "closed form (equal cycles)"
    if n > 1 and objective is not Objective.TOTAL_ACTIVITY and a_eq > s.min_activity_gbq:
        lo, hi = s.min_activity_gbq, s.max_activity_gbq
        tilt = np.linspace(1.0, -1.0, n)
        starts = [a.copy()]
        for f in (0.3, -0.3):
            starts.append(np.clip(a_eq * (1.0 + f * tilt), lo, hi))
        better = _slsqp(cons, targets, objective, n, lo, hi, starts)
        base = _objective_value(objective, targets, a)
        if better is not None:
            val = _objective_value(objective, targets, better)
            if val > base * (1.0 + s.min_unequal_gain) + 1e-9:
                notes.append(f"unequal cycles raise the objective by "
                             f"{100 * (val / base - 1):.3g} % over equal cycles of "
                             f"{a_eq:.4g} GBq")
                a, method = better, "SLSQP (from the equal-cycle closed form)"
            else:
                method = ("closed form (equal cycles; no unequal plan found by SLSQP gains more "
                          f"than {100 * s.min_unequal_gain:g} %)")
    msg = (f"{n} cycle(s), {float(np.sum(a)):.4g} GBq in total"
           + ("" if s.confidence is None else
              f", limits held with confidence {100 * s.confidence:.3g} %"))
    return _result(problem, cons, targets, a, status=PlanStatus.OPTIMAL, message=msg,
                   method=method, objective=objective, reasons=[], notes=notes, equal=a_eq)
