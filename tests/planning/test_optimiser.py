"""The activity optimiser: closed forms, monotonic behaviour, infeasible and degenerate inputs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from planning.optimiser import (
    PlanningProblem,
    PlanResult,
    PlanSettings,
    PlanStatus,
    RiskAllocation,
    VoiPlanInput,
    optimise_plan,
)
from planning.protocols import LimitQuantity, LimitScope, Objective, OrganLimit
from planning.radiobiology import g_factor_mono
from planning.results import VoiKind
from planning.tissues import get_tissue

H = 3600.0
KIDNEY = get_tissue("kidney")
MARROW = get_tissue("red-marrow")
TUMOUR = get_tissue("tumour")
G_KID = float(g_factor_mono(50 * H, KIDNEY.repair_half_time_s))
G_TUM = float(g_factor_mono(77 * H, TUMOUR.repair_half_time_s))


def kidney(x=0.6, sx=0.0, d=0.0, sd=0.0, name="kidney", bed=None):
    return VoiPlanInput(name=name, kind=VoiKind.ORGAN, tissue=KIDNEY, dose_gy_per_gbq=x,
                        dose_gy_per_gbq_sigma=sx, g_factor=G_KID, delivered_dose_gy=d,
                        delivered_dose_sigma_gy=sd, delivered_bed_gy=bed)


def marrow(x=0.04, sx=0.0, d=0.0, sd=0.0):
    return VoiPlanInput(name="marrow", kind=VoiKind.ORGAN, tissue=MARROW, dose_gy_per_gbq=x,
                        dose_gy_per_gbq_sigma=sx, g_factor=0.01, delivered_dose_gy=d,
                        delivered_dose_sigma_gy=sd)


def lesion(x=3.0, name="lesion", d=0.0, mass=None):
    return VoiPlanInput(name=name, kind=VoiKind.LESION, tissue=TUMOUR, dose_gy_per_gbq=x,
                        g_factor=G_TUM, delivered_dose_gy=d, mass_g=mass)


def lim(tissue, quantity, value, scope=LimitScope.CUMULATIVE, enforced=True):
    return OrganLimit(tissues=(tissue,), quantity=quantity, value=value, scope=scope,
                      enforced=enforced)


KID_BED = lim("kidney", LimitQuantity.BED, 40.0)
KID_DOSE = lim("kidney", LimitQuantity.DOSE, 23.0)
MARROW_DOSE = lim("red-marrow", LimitQuantity.DOSE, 2.0)


def plan(vois, limits, n=3, lo=0.0, hi=1000.0, **kw) -> PlanResult:
    return optimise_plan(PlanningProblem(vois=tuple(vois), limits=tuple(limits),
                                         settings=PlanSettings(remaining_cycles=n,
                                                               min_activity_gbq=lo,
                                                               max_activity_gbq=hi, **kw)))


def test_single_linear_constraint_gives_limit_over_dose_per_gbq():
    # One cycle, kidney absorbed-dose limit 23 Gy, 0.6 Gy/GBq, 4 Gy delivered:
    # a = (23 − 4)/0.6 = 31.667 GBq exactly.
    r = plan([kidney(d=4.0), lesion()], [KID_DOSE], n=1)
    assert r.status is PlanStatus.OPTIMAL and r.feasible
    assert r.activities_gbq[0] == pytest.approx(19.0 / 0.6, rel=1e-12)
    assert r.binding_constraint == "kidney: kidney dose ≤ 23 Gy (cumulative)"
    # Three cycles: the closed-form equal activity is (23 − 4)/(3 · 0.6). The dose limit fixes
    # only the total (19/0.6 GBq); lesion BED is convex in a, so with no lower bound the
    # optimiser concentrates the activity, gaining well over 1 %, and says so.
    r3 = plan([kidney(d=4.0), lesion()], [KID_DOSE], n=3)
    assert r3.equal_cycle_activity_gbq == pytest.approx(19.0 / 1.8, rel=1e-12)
    assert r3.total_activity_gbq == pytest.approx(19.0 / 0.6, rel=1e-7)
    assert r3.constraints[0].margin == pytest.approx(0.0, abs=1e-6)
    assert max(r3.activities_gbq) > 1.5 * r3.equal_cycle_activity_gbq
    assert any("unequal cycles raise the objective" in n for n in r3.notes)


def test_bed_quadratic_root_in_closed_form():
    # BED limit 40 Gy, history 5 Gy BED, R equal cycles: R(x a + k x² a²) = 35,
    # a = [−R x + √(R² x² + 4 R k x² · 35)] / (2 R k x²).
    x, k, n = 0.6, G_KID / 2.6, 3
    r = plan([kidney(x=x, d=4.9, bed=5.0), lesion()], [KID_BED], n=n)
    qa, qb = n * k * x * x, n * x
    expected = (-qb + math.sqrt(qb * qb + 4 * qa * 35.0)) / (2 * qa)
    assert r.equal_cycle_activity_gbq == pytest.approx(expected, rel=1e-12)
    # Tumour α/β 10 vs kidney 2.6: spreading activity evenly is optimal, SLSQP confirms.
    np.testing.assert_allclose(r.activities_gbq, expected, rtol=1e-9)
    assert r.constraints[0].planned_total == pytest.approx(40.0, rel=1e-9)
    assert r.constraints[0].binding and "kidney BED" in r.binding_constraint


def test_more_gy_per_gbq_means_less_activity_and_higher_limit_more():
    acts = [plan([kidney(x=x), lesion()], [KID_BED]).total_activity_gbq
            for x in (0.3, 0.5, 0.8, 1.2)]
    assert all(a > b for a, b in itertools.pairwise(acts))
    by_limit = [plan([kidney(), lesion()], [KID_BED.model_copy(update={"value": v})])
                .total_activity_gbq for v in (20.0, 28.0, 40.0)]
    assert all(a < b for a, b in itertools.pairwise(by_limit))


def test_tightest_of_several_limits_binds_and_margins_are_reported():
    r = plan([kidney(), marrow(), lesion()], [KID_BED, MARROW_DOSE], n=4, hi=14.8)
    binding = [c for c in r.constraints if c.binding]
    assert len(binding) == 1 and binding[0].voi == "marrow"
    assert r.total_activity_gbq == pytest.approx(2.0 / 0.04, rel=1e-9)  # 50 GBq over 4 cycles
    kid = next(c for c in r.constraints if c.voi == "kidney")
    assert kid.margin > 0 and kid.margin_percent == pytest.approx(100 * kid.margin / 40.0)
    assert 0 < kid.probability_exceed < 1 or kid.probability_exceed == 0.0


def test_activity_upper_bound_binds_when_limits_are_far():
    r = plan([kidney(x=0.01), lesion()], [KID_BED], hi=7.4)
    assert r.activities_gbq == (7.4, 7.4, 7.4)
    assert r.binding_constraint == "maximum activity per cycle (7.4 GBq)"
    assert r.activity_bound_binding


def test_limit_already_exceeded_is_explained():
    r = plan([kidney(d=38.0, bed=41.0), lesion()], [KID_BED])
    assert r.status is PlanStatus.INFEASIBLE and not r.feasible
    assert r.activities_gbq == (0.0, 0.0, 0.0)
    assert "already reaches the limit" in r.reasons[0] and "41" in r.reasons[0]


def test_minimum_activity_above_the_limits_is_explained_with_fewer_cycles():
    # Dose limit 23 Gy at 0.6 Gy/GBq, 10 Gy delivered: 13/0.6 = 21.7 GBq left; 3 × 7.4 = 22.2
    # is too much, 2 × 7.4 = 14.8 fits.
    r = plan([kidney(d=10.0), lesion()], [KID_DOSE], n=3, lo=7.4, hi=14.8)
    assert r.status is PlanStatus.INFEASIBLE
    assert "minimum activity 7.4 GBq in each of 3 cycle(s)" in r.reasons[0]
    assert "largest equal activity within the limits is 7.222 GBq" in r.reasons[0]
    assert "with 2 remaining cycle(s) instead of 3 the plan is feasible" in r.reasons[1]


def test_degenerate_inputs_are_explained_not_crashed():
    # zero remaining cycles
    r = plan([kidney(d=10.0), lesion()], [KID_BED], n=0)
    assert r.status is PlanStatus.NOTHING_TO_PLAN and r.cycles == ()
    assert r.constraints[0].delivered > 0
    # no lesions → total activity, announced
    r = plan([kidney()], [KID_BED])
    assert r.objective is Objective.TOTAL_ACTIVITY
    assert any("no lesion VOIs" in n for n in r.notes)
    # every lesion at 0 Gy/GBq → total activity, announced
    r = plan([kidney(), lesion(x=0.0)], [KID_BED])
    assert any("every lesion has 0 Gy/GBq" in n for n in r.notes)
    # an organ with 0 Gy/GBq cannot bind; the activity bound does
    r = plan([kidney(x=0.0), lesion()], [KID_BED], hi=10.0)
    assert r.activities_gbq == (10.0, 10.0, 10.0)
    assert any("0 Gy/GBq" in n for n in r.notes)
    # a limit without a matching VOI is reported as not applied
    r = plan([kidney(), lesion()], [KID_BED, MARROW_DOSE])
    assert any("no VOI of tissue red-marrow" in n for n in r.notes)
    assert all(c.voi == "kidney" for c in r.constraints)


def test_advisory_limits_are_reported_not_enforced():
    advisory = lim("kidney", LimitQuantity.EQD2, 10.0, enforced=False)
    r = plan([kidney(), lesion()], [KID_BED, advisory])
    eq = next(c for c in r.constraints if c.quantity is LimitQuantity.EQD2)
    assert not eq.enforced and eq.margin < 0 and not eq.binding
    # EQD2 = BED/(1 + 2/2.6) for the same VOI (exact algebra).
    bed_row = next(c for c in r.constraints if c.quantity is LimitQuantity.BED)
    assert eq.planned_total == pytest.approx(bed_row.planned_total / (1 + 2 / 2.6), rel=1e-12)


def test_per_cycle_limit_bounds_each_cycle():
    per = lim("red-marrow", LimitQuantity.DOSE, 0.3, scope=LimitScope.PER_CYCLE)
    r = plan([marrow(d=1.0), lesion()], [per], n=2)
    np.testing.assert_allclose(r.activities_gbq, 0.3 / 0.04, rtol=1e-9)
    assert r.constraints[0].delivered == 0.0  # per-cycle limits ignore the history


def test_min_lesion_objective_and_mean_objective():
    vois = [kidney(), lesion(3.0, "a", mass=10.0), lesion(1.0, "b", d=5.0, mass=30.0)]
    r = plan(vois, [KID_BED])
    tb = {t.name: t.total_bed_gy for t in r.targets}
    assert r.objective_value == pytest.approx(min(tb.values()), rel=1e-12)
    rm = plan(vois, [KID_BED], objective=Objective.MEAN_LESION_BED)
    assert rm.objective_value == pytest.approx((10 * tb["a"] + 30 * tb["b"]) / 40, rel=1e-9)


def test_unequal_plan_only_when_it_gains_enough():
    # A linear marrow limit fixes the total activity; lesion BED is convex in a, so
    # concentrating activity gains a little. Below the 1 % default it stays equal.
    vois = [marrow(x=0.04), lesion(3.0)]
    eq = plan(vois, [MARROW_DOSE], n=3, lo=3.7, hi=14.8)
    assert eq.activities_gbq[0] == pytest.approx(eq.activities_gbq[-1], rel=1e-9)
    assert "equal cycles" in eq.method
    uneq = plan(vois, [MARROW_DOSE], n=3, lo=3.7, hi=14.8, min_unequal_gain=0.0)
    assert uneq.objective_value >= eq.objective_value
    assert uneq.total_activity_gbq == pytest.approx(eq.total_activity_gbq, rel=1e-6)


def test_target_dose_mode():
    thyroid = VoiPlanInput(name="thyroid", kind=VoiKind.ORGAN, tissue=get_tissue("thyroid"),
                           dose_gy_per_gbq=400.0, dose_gy_per_gbq_sigma=60.0, g_factor=0.02)
    kw = {"objective": Objective.TARGET_DOSE, "target_dose_gy": 150.0,
          "target_tissue": "thyroid"}
    r = plan([thyroid], [], n=1, hi=2.0, **kw)
    assert r.activities_gbq[0] == pytest.approx(150.0 / 400.0, rel=1e-12)
    assert r.binding_constraint == "target dose"
    conf = plan([thyroid], [], n=1, hi=2.0, confidence=0.9, **kw)
    assert conf.activities_gbq[0] > r.activities_gbq[0]  # reach the dose with 90 % probability
    too_much = plan([thyroid], [], n=1, hi=0.2, **kw)
    assert too_much.status is PlanStatus.INFEASIBLE and "maximum 0.2 GBq" in too_much.reasons[0]
    none = plan([kidney()], [], n=1, hi=2.0, **kw)
    assert none.status is PlanStatus.INFEASIBLE and "no VOI of tissue 'thyroid'" in \
        none.reasons[0]


def test_plan_result_json_round_trip(tmp_path):
    r = plan([kidney(sx=0.08, d=4.0, sd=0.5), marrow(sx=0.01), lesion()],
             [KID_BED, MARROW_DOSE], confidence=0.9, risk_allocation=RiskAllocation.EACH)
    back = PlanResult.from_dict(r.to_dict())
    assert back == r
    path = r.save(tmp_path / "plan.json")
    assert PlanResult.from_dict(__import__("json").loads(path.read_text())) == r
