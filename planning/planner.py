"""From a dosimetry result (RESULTS.json) and a protocol to a plan.

:func:`build_problem` turns a :class:`~planning.results.DosimetryResults` and a
:class:`~planning.protocols.Protocol` into a :class:`~planning.optimiser.PlanningProblem`:

* tissue parameters per VOI (explicit, else from the name; the generic fallback is announced);
* G from each VOI's kinetic model (its exponentials, else mono-exponential with T_eff);
* delivered dose = this cycle's mean dose + the history's doses; a history cycle without a VOI's
  dose is estimated as dose_gy_per_gbq × its activity (announced); σ of the delivered dose is
  the *sum* of the cycles' σ (errors fully correlated across cycles: same camera, calibration
  and method — the conservative choice);
* delivered BED = Σ over cycles of D_c(1 + G D_c/(α/β)), with the history's ``bed_gy`` where
  given, else with this cycle's G (announced);
* whole-body retention at 48 h from the kinetics (I-131 lung rule).

:func:`plan_from_results` then calls :func:`~planning.optimiser.optimise_plan`.
"""

from __future__ import annotations

import math

from dosimetry import units
from dosimetry.errors import InputError
from planning.iodine import marinelli_activity_mbq
from planning.optimiser import (
    PlanningProblem,
    PlanResult,
    PlanSettings,
    RiskAllocation,
    UncertaintyModel,
    VoiPlanInput,
    optimise_plan,
)
from planning.protocols import Objective, Protocol
from planning.radiobiology import bed, dose_fraction_after
from planning.results import DosimetryResults, VoiResult
from planning.tissues import TissueName

__all__ = ["build_problem", "plan_from_results"]

#: Fraction of a cycle's dose still to come at the next cycle above which BED addition is
#: announced as approximate.
OVERLAP_WARN = 0.01


def _check_cycles(results: DosimetryResults, cycles_done: int | None) -> int:
    recorded = results.delivered_cycle_numbers
    n = len(recorded) if cycles_done is None else cycles_done
    least = 0 if results.is_tracer else 1
    if n < least:
        raise InputError(f"cycles done must be ≥ {least} (the result itself is a delivered "
                         f"therapy cycle), got {n}")
    expected = set(range(1, n + 1))
    missing = sorted(expected - set(recorded))
    extra = sorted(set(recorded) - expected)
    if extra:
        raise InputError(f"cycles done = {n}, but the result records cycle(s) {extra} "
                         f"(recorded: {list(recorded)})")
    if missing:
        raise InputError(f"cycles done = {n}, but cycle(s) {missing} are not in the result's "
                         "history: add them (cycle_number and administered_activity_mbq; "
                         "per-VOI doses optional)")
    return n


def _voi_input(results: DosimetryResults, v: VoiResult, notes: list[str]) -> VoiPlanInput:
    tissue, matched = v.tissue_parameters()
    if not matched:
        notes.append(f"{v.name}: tissue not recognised from the name; generic "
                     f"{tissue.name} parameters used (α/β {tissue.alpha_beta_gy:g} Gy, "
                     f"T_rep {tissue.repair_half_time_h:g} h) — set 'tissue' in the result")
    shape = v.kinetics.dose_rate_shape()
    g = shape.g_factor(tissue.repair_half_time_s)
    ab = tissue.alpha_beta_gy
    if results.is_tracer:  # a tracer is not a therapy cycle: its small dose is not counted
        doses, sigmas, beds = [], [], []
    else:
        doses = [v.mean_dose_gy]
        sigmas = [v.mean_dose_sigma_gy]
        beds = [float(bed(v.mean_dose_gy, g, ab))]
    for c in sorted(results.history, key=lambda c: c.cycle_number):
        rec = next((x for x in c.vois if x.name == v.name), None)
        act_gbq = c.administered_activity_mbq * units.MBQ / units.GBQ
        if rec is None:
            d = v.dose_gy_per_gbq * act_gbq
            doses.append(d)
            sigmas.append(v.dose_gy_per_gbq_sigma * act_gbq)
            beds.append(float(bed(d, g, ab)))
            notes.append(f"{v.name}: cycle {c.cycle_number} dose not recorded; estimated "
                         f"{d:.4g} Gy from {v.dose_gy_per_gbq:.4g} Gy/GBq × {act_gbq:.4g} GBq")
            continue
        doses.append(rec.dose_gy)
        sigmas.append(rec.dose_sigma_gy)
        if rec.bed_gy is None:
            beds.append(float(bed(rec.dose_gy, g, ab)))
            if rec.dose_gy > 0:
                notes.append(f"{v.name}: cycle {c.cycle_number} BED computed with the kinetics "
                             f"of cycle {results.cycle_number}")
        else:
            beds.append(rec.bed_gy)
    retention = None
    if tissue.name == TissueName.WHOLE_BODY:
        r = v.kinetics.retention_fraction(48.0)
        if r is not None and 0 < r <= 1:
            retention = r
        elif r is not None:
            notes.append(f"{v.name}: retention at 48 h from the kinetics is {r:.4g}, not in "
                         "(0, 1]: amplitudes must be fractions of the administered activity")
    return VoiPlanInput(
        name=v.name, kind=v.kind, tissue=tissue, dose_gy_per_gbq=v.dose_gy_per_gbq,
        dose_gy_per_gbq_sigma=v.dose_gy_per_gbq_sigma, g_factor=g,
        delivered_dose_gy=float(sum(doses)), delivered_dose_sigma_gy=float(sum(sigmas)),
        delivered_bed_gy=float(sum(beds)), retention_fraction_48h=retention, mass_g=v.mass_g)


def build_problem(results: DosimetryResults, protocol: Protocol, *,
                  cycles_done: int | None = None, confidence: float | None = None,
                  objective: Objective | None = None,
                  uncertainty: UncertaintyModel = UncertaintyModel.LOGNORMAL,
                  risk_allocation: RiskAllocation = RiskAllocation.BONFERRONI,
                  min_unequal_gain: float = 0.01) -> PlanningProblem:
    """The planning problem of ``results`` under ``protocol`` (module docstring).

    Parameters
    ----------
    results : DosimetryResults
        Dosimetry of the latest imaged cycle with the history of delivered cycles.
    protocol : Protocol
        Cycles, activity bounds, limits, objective.
    cycles_done : int, optional
        Delivered cycles (default: those recorded in ``results``); must match the record.
    confidence : float, optional
        Chance-constrained mode: probability (0.5–1) with which the limits must hold.
    objective : Objective, optional
        Overrides the protocol's objective.

    Raises
    ------
    InputError
        Nuclide of the result differs from the protocol's, or the cycle record is incomplete.
    """
    if results.nuclide != protocol.nuclide:
        raise InputError(f"the result is for {results.nuclide} but protocol {protocol.name!r} "
                         f"is for {protocol.nuclide}")
    done = _check_cycles(results, cycles_done)
    notes: list[str] = []
    if results.is_tracer:
        notes.append(f"dosimetry from a tracer administration "
                     f"({results.administered_activity_mbq:g} MBq): not counted as a therapy "
                     "cycle, its dose not added to the delivered totals")
    remaining = protocol.n_cycles - done
    if remaining < 0:
        notes.append(f"{done} cycles delivered, more than the protocol's {protocol.n_cycles}")
        remaining = 0
    vois = tuple(_voi_input(results, v, notes) for v in results.vois)
    if protocol.n_cycles > 1 and protocol.interval_s > 0:
        for v in results.vois:
            frac = dose_fraction_after(v.kinetics.dose_rate_shape(), protocol.interval_s)
            if frac > OVERLAP_WARN:
                notes.append(f"{v.name}: {100 * frac:.2g} % of a cycle's dose is still to come "
                             f"after the {protocol.interval_weeks:g}-week interval; adding BED "
                             "across cycles is approximate")
    obj = objective or protocol.objective
    if obj is Objective.TARGET_DOSE:
        _marinelli_note(results, protocol, notes)
    settings = PlanSettings(
        remaining_cycles=remaining, first_cycle_number=done + 1,
        min_activity_gbq=protocol.min_activity_gbq, max_activity_gbq=protocol.max_activity_gbq,
        objective=obj, confidence=confidence, uncertainty=uncertainty,
        risk_allocation=risk_allocation, target_dose_gy=protocol.target_dose_gy,
        target_tissue=protocol.target_tissue, min_unequal_gain=min_unequal_gain)
    return PlanningProblem(vois=vois, limits=protocol.limits, settings=settings,
                           notes=tuple(notes))


def _marinelli_note(results: DosimetryResults, protocol: Protocol, notes: list[str]) -> None:
    """Cross-check a target-dose plan with the Marinelli formula where the kinetics allow."""
    if protocol.target_dose_gy is None:
        return
    for v in results.vois:
        tissue, _ = v.tissue_parameters()
        if tissue.name != protocol.target_tissue or v.mass_g is None:
            continue
        ex = v.kinetics.exponentials
        if len(ex) != 1 or not 0 < ex[0].amplitude <= 1:
            continue
        t_eff_d = math.log(2.0) / ex[0].rate_per_h / 24.0
        a = marinelli_activity_mbq(protocol.target_dose_gy, v.mass_g, 100 * ex[0].amplitude,
                                   t_eff_d)
        notes.append(f"{v.name}: Marinelli cross-check (k = 24.7, uptake "
                     f"{100 * ex[0].amplitude:.3g} %, T_eff {t_eff_d:.3g} d, {v.mass_g:g} g): "
                     f"{a:.4g} MBq for {protocol.target_dose_gy:g} Gy")


def plan_from_results(results: DosimetryResults, protocol: Protocol, **kwargs) -> PlanResult:
    """Plan the remaining cycles of ``results`` under ``protocol`` (see :func:`build_problem`)."""
    return optimise_plan(build_problem(results, protocol, **kwargs))
