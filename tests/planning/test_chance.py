"""Chance-constrained plans checked by sampling the dose coefficient and the delivered dose.

Tolerances come from the binomial statistics of the sampled exceedance fraction: with n draws
and probability p its σ is √(p(1−p)/n); 4σ leaves a false-alarm rate below 1e-4 per check.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from planning.optimiser import (
    PlanningProblem,
    PlanSettings,
    RiskAllocation,
    UncertaintyModel,
    VoiPlanInput,
    optimise_plan,
)
from planning.protocols import LimitQuantity, OrganLimit
from planning.results import VoiKind
from planning.tissues import get_tissue

pytestmark = pytest.mark.mc

N = 400_000
KIDNEY, MARROW, TUMOUR = get_tissue("kidney"), get_tissue("red-marrow"), get_tissue("tumour")
G = 0.05  # kidney-like Lea–Catcheside factor
KID_BED = OrganLimit(tissues=("kidney",), quantity=LimitQuantity.BED, value=40.0)
MARROW_DOSE = OrganLimit(tissues=("red-marrow",), quantity=LimitQuantity.DOSE, value=2.0)


def _problem(vois, limits, confidence, model=UncertaintyModel.LOGNORMAL,
             alloc=RiskAllocation.BONFERRONI, n=3):
    lesion = VoiPlanInput(name="lesion", kind=VoiKind.LESION, tissue=TUMOUR,
                          dose_gy_per_gbq=3.0, g_factor=0.02)
    return PlanningProblem(vois=(*vois, lesion), limits=tuple(limits), settings=PlanSettings(
        remaining_cycles=n, max_activity_gbq=100.0, confidence=confidence, uncertainty=model,
        risk_allocation=alloc))


def _sample_x(rng, mean, sd, model):
    """Independent re-implementation of the coefficient distributions (mean and σ given)."""
    if model is UncertaintyModel.LOGNORMAL:
        s2 = math.log1p((sd / mean) ** 2)
        return rng.lognormal(math.log(mean) - s2 / 2, math.sqrt(s2), N)
    return np.maximum(rng.normal(mean, sd, N), 0.0)


def _sampled_q(rng, voi: VoiPlanInput, a: np.ndarray, model, bed: bool) -> np.ndarray:
    x = _sample_x(rng, voi.dose_gy_per_gbq, voi.dose_gy_per_gbq_sigma, model)
    k = voi.k_bed if bed else 0.0
    hist = voi.delivered_bed_gy if bed else voi.delivered_dose_gy
    d = voi.delivered_dose_gy
    slope = (1.0 + 2.0 * (hist - d) / d) if (bed and d > 0) else 1.0
    h = hist + voi.delivered_dose_sigma_gy * slope * rng.standard_normal(N)
    return h + x * a.sum() + k * x * x * (a * a).sum()


def _binom_tol(p):
    return 4.0 * math.sqrt(max(p * (1 - p), 1e-6) / N)


@pytest.mark.parametrize("model", list(UncertaintyModel))
@pytest.mark.parametrize("hist_sigma", [0.0, 0.6, 4.0])
def test_single_limit_exceeded_with_probability_epsilon(model, hist_sigma):
    # hist_sigma 0: closed-form quantile; 0.6 and 4.0: the convolution integrated over the
    # delivered term and over the coefficient respectively.
    kid = VoiPlanInput(name="kidney", kind=VoiKind.ORGAN, tissue=KIDNEY, dose_gy_per_gbq=0.6,
                       dose_gy_per_gbq_sigma=0.12, g_factor=G, delivered_dose_gy=8.0,
                       delivered_dose_sigma_gy=hist_sigma)
    plan = optimise_plan(_problem([kid], [KID_BED], confidence=0.95, model=model))
    a = np.array(plan.activities_gbq)
    row = plan.constraints[0]
    assert row.binding and row.allocated_risk == pytest.approx(0.05)
    # The optimiser held the 95 % quantile at the limit ...
    assert row.planned_at_confidence == pytest.approx(40.0, rel=1e-7)
    # ... its own probability is ε (quadrature: 40 Gauss–Hermite nodes, ~1e-4 absolute) ...
    assert row.probability_exceed == pytest.approx(0.05, abs=5e-4)
    # ... and sampling agrees within binomial statistics.
    q = _sampled_q(np.random.default_rng(7), kid, a, model, bed=True)
    assert np.mean(q > 40.0) == pytest.approx(0.05, abs=_binom_tol(0.05) + 5e-4)


def test_deterministic_plan_reports_the_sampled_probability():
    kid = VoiPlanInput(name="kidney", kind=VoiKind.ORGAN, tissue=KIDNEY, dose_gy_per_gbq=0.6,
                       dose_gy_per_gbq_sigma=0.12, g_factor=G, delivered_dose_gy=8.0,
                       delivered_dose_sigma_gy=1.0)
    plan = optimise_plan(_problem([kid], [KID_BED], confidence=None))
    row = plan.constraints[0]
    assert row.planned_total == pytest.approx(40.0, rel=1e-9)  # sits on the limit
    q = _sampled_q(np.random.default_rng(11), kid, np.array(plan.activities_gbq),
                   UncertaintyModel.LOGNORMAL, bed=True)
    p = float(np.mean(q > 40.0))
    assert 0.3 < p < 0.6  # at the limit: near a coin flip (log-normal mean > median)
    assert row.probability_exceed == pytest.approx(p, abs=_binom_tol(p) + 5e-4)


def test_bonferroni_keeps_the_union_below_epsilon_and_each_is_looser():
    kid = VoiPlanInput(name="kidney", kind=VoiKind.ORGAN, tissue=KIDNEY, dose_gy_per_gbq=0.6,
                       dose_gy_per_gbq_sigma=0.12, g_factor=G, delivered_dose_gy=6.0,
                       delivered_dose_sigma_gy=0.8)
    mar = VoiPlanInput(name="marrow", kind=VoiKind.ORGAN, tissue=MARROW, dose_gy_per_gbq=0.045,
                       dose_gy_per_gbq_sigma=0.01, g_factor=0.01, delivered_dose_gy=0.3)
    bonf = optimise_plan(_problem([kid, mar], [KID_BED, MARROW_DOSE], confidence=0.9))
    each = optimise_plan(_problem([kid, mar], [KID_BED, MARROW_DOSE], confidence=0.9,
                                  alloc=RiskAllocation.EACH))
    assert each.total_activity_gbq > bonf.total_activity_gbq
    assert all(c.allocated_risk == pytest.approx(0.05) for c in bonf.constraints)
    a = np.array(bonf.activities_gbq)
    rng = np.random.default_rng(5)
    # Independent coefficients per organ (the worst case for the union is any dependence; the
    # Bonferroni bound holds for all of them).
    exceed = (_sampled_q(rng, kid, a, UncertaintyModel.LOGNORMAL, True) > 40.0) | \
             (_sampled_q(rng, mar, a, UncertaintyModel.LOGNORMAL, False) > 2.0)
    assert np.mean(exceed) <= 0.1 + _binom_tol(0.1)
    assert bonf.probability_any_exceed_bound <= 0.1 + 1e-3


def test_higher_confidence_means_less_activity():
    kid = VoiPlanInput(name="kidney", kind=VoiKind.ORGAN, tissue=KIDNEY, dose_gy_per_gbq=0.6,
                       dose_gy_per_gbq_sigma=0.12, g_factor=G, delivered_dose_gy=6.0,
                       delivered_dose_sigma_gy=0.8)
    acts = [optimise_plan(_problem([kid], [KID_BED], confidence=c)).total_activity_gbq
            for c in (None, 0.8, 0.95, 0.99)]
    assert all(x > y for x, y in itertools.pairwise(acts))
