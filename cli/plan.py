"""``rptdose plan`` and ``rptdose bed``: thin commands over :mod:`planning`.

Register them with ``app.command("plan")(plan_cmd)`` and ``app.command("bed")(bed_cmd)``.
Errors are raised as :class:`dosimetry.errors.InputError` (``cli.main.main`` prints one line).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dosimetry.errors import InputError

__all__ = ["bed_cmd", "plan_cmd"]


def _enum(enum_cls, value: str, option: str):
    try:
        return enum_cls(value)
    except ValueError:
        raise InputError(f"{option} {value!r} is not one of "
                         f"{', '.join(e.value for e in enum_cls)}") from None


def _num(x: float | None, spec: str = ".4g") -> str:
    return "–" if x is None or not math.isfinite(x) else format(x, spec)


def _print_plan(out: Console, plan, protocol) -> None:
    colour = {"optimal": "green", "infeasible": "red", "nothing-to-plan": "yellow"}
    out.print(f"[bold]{escape(protocol.title or protocol.name)}[/bold] — "
              f"[{colour[plan.status.value]}]{plan.status.value}[/]: {escape(plan.message)}")
    for r in plan.reasons:
        out.print(f"  [red]why:[/red] {escape(r)}")
    if plan.cycles:
        t = Table("cycle", "activity [GBq]", title="recommended activities", title_justify="left")
        for c in plan.cycles:
            t.add_row(str(c.cycle_number), f"{c.activity_gbq:.3f}")
        t.add_row("total", f"{plan.total_activity_gbq:.3f}", style="bold")
        out.print(t)
    out.print(f"binding constraint: [bold]{escape(plan.binding_constraint)}[/bold]"
              f"   method: {escape(plan.method)}")
    if plan.equal_cycle_activity_gbq is not None:
        out.print(f"closed-form equal-cycle activity: {_num(plan.equal_cycle_activity_gbq)} GBq")
    conf = plan.confidence is not None
    cols = ["VOI", "limit", "enforced", "delivered", "planned", "margin", "margin %"]
    if conf:
        cols += ["at conf.", "risk"]
    cols += ["P(exceed)"]
    t = Table(*cols, title="limits (margin = limit − planned estimate; bold: binding)",
              title_justify="left")
    for c in plan.constraints:
        q = {"dose": "dose", "bed": "BED", "eqd2": "EQD2"}.get(c.quantity.value, "retained 48 h")
        lim = f"{q} ≤ {c.limit:g} {c.unit}" + (" per cycle" if c.scope.value == "per-cycle"
                                                else "")
        row = [escape(c.voi), lim, "yes" if c.enforced else "advisory", _num(c.delivered),
               _num(c.planned_total), _num(c.margin), _num(c.margin_percent, ".1f")]
        if conf:
            row += [_num(c.planned_at_confidence), _num(c.allocated_risk, ".3g")]
        row += [_num(c.probability_exceed, ".3g")]
        t.add_row(*row, style="bold" if c.binding else None)
    if plan.constraints:
        out.print(t)
    if plan.targets:
        t = Table("VOI", "Gy/GBq", "delivered BED [Gy]", "planned dose [Gy]", "total BED [Gy]",
                  "total EQD2 [Gy]", title="targets", title_justify="left")
        for g in plan.targets:
            t.add_row(escape(g.name), _num(g.dose_gy_per_gbq), _num(g.delivered_bed_gy),
                      _num(g.planned_dose_gy), _num(g.total_bed_gy), _num(g.total_eqd2_gy))
        out.print(t)
    out.print(f"objective ({plan.objective.value}): {_num(plan.objective_value)} "
              f"{plan.objective_unit}; P(any enforced limit exceeded) ≤ "
              f"{_num(plan.probability_any_exceed_bound, '.3g')}")
    for n in plan.notes:
        out.print(f"[yellow]note:[/yellow] {escape(n)}")


def plan_cmd(
    results_path: Annotated[Path, typer.Argument(
        metavar="RESULTS.json", help="Per-VOI dosimetry result (planning/RESULTS_SCHEMA.md).")],
    protocol: Annotated[str | None, typer.Option(
        help="lu177-dotatate | lu177-psma | i131-dtc | i131-benign.")] = None,
    protocol_file: Annotated[Path | None, typer.Option(
        help="Custom protocol (.yaml/.json) instead of --protocol.")] = None,
    cycles_done: Annotated[int | None, typer.Option(
        help="Delivered cycles (default: those recorded in RESULTS.json).")] = None,
    kidney_bed_limit_gy: Annotated[float | None, typer.Option(
        help="Kidney BED limit [Gy] (40 without, 28 with risk factors; Bodei 2008).")] = None,
    confidence: Annotated[float | None, typer.Option(
        help="Hold every limit with this probability (e.g. 0.95); default: point estimates.")]
    = None,
    objective: Annotated[str | None, typer.Option(
        help="min-lesion-bed | mean-lesion-bed | total-activity | target-dose.")] = None,
    min_activity_gbq: Annotated[float | None, typer.Option(
        help="Minimum activity per cycle [GBq].")] = None,
    max_activity_gbq: Annotated[float | None, typer.Option(
        help="Maximum activity per cycle [GBq].")] = None,
    total_cycles: Annotated[int | None, typer.Option(
        help="Total number of cycles (overrides the protocol).")] = None,
    target_dose_gy: Annotated[float | None, typer.Option(
        help="Target absorbed dose [Gy] (i131-benign).")] = None,
    lung_metastases: Annotated[bool, typer.Option(
        "--lung-metastases", help="Enforce the 48-h retention rule (i131-dtc).")] = False,
    uncertainty: Annotated[str, typer.Option(
        help="Distribution of Gy/GBq: lognormal | normal.")] = "lognormal",
    risk_allocation: Annotated[str, typer.Option(
        help="bonferroni (P(any limit) ≤ 1−confidence) | each (per limit).")] = "bonferroni",
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Write the plan (.json/.yaml) atomically.")] = None,
    curves: Annotated[Path | None, typer.Option(
        help="Write TCP/NTCP against activity per cycle (.png).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
    = False,
) -> None:
    """Recommend the activity of the remaining cycles from a dosimetry result."""
    from planning.optimiser import RiskAllocation, UncertaintyModel, optimise_plan
    from planning.outcome import outcome_curves, plot_outcome_curves
    from planning.planner import build_problem
    from planning.protocols import LimitQuantity, Objective, default_protocol, load_protocol
    from planning.results import load_results

    if (protocol is None) == (protocol_file is None):
        raise InputError("give exactly one of --protocol and --protocol-file")
    prot = default_protocol(protocol) if protocol is not None else load_protocol(protocol_file)
    if confidence is not None and not 0.5 < confidence < 1.0:
        raise InputError(f"--confidence must be in (0.5, 1), got {confidence}")
    if kidney_bed_limit_gy is not None:
        prot = prot.with_limit_value("kidney", LimitQuantity.BED, kidney_bed_limit_gy)
    if lung_metastases:
        prot = prot.with_enforced("whole-body", LimitQuantity.RETAINED_ACTIVITY_48H)
    prot = prot.with_updates(min_activity_gbq=min_activity_gbq,
                             max_activity_gbq=max_activity_gbq, n_cycles=total_cycles,
                             target_dose_gy=target_dose_gy)
    obj = None if objective is None else _enum(Objective, objective, "--objective")
    results = load_results(results_path)
    problem = build_problem(
        results, prot, cycles_done=cycles_done, confidence=confidence, objective=obj,
        uncertainty=_enum(UncertaintyModel, uncertainty, "--uncertainty"),
        risk_allocation=_enum(RiskAllocation, risk_allocation, "--risk-allocation"))
    plan = optimise_plan(problem)
    if output is not None:
        plan.save(output)
    if curves is not None and problem.settings.remaining_cycles > 0:
        hi = prot.max_activity_gbq
        oc = outcome_curves(problem, np.linspace(0.0, hi, 61))
        planned = plan.cycles[0].activity_gbq if plan.cycles and plan.feasible else None
        plot_outcome_curves(oc, curves, planned_activity_gbq=planned,
                            title=f"{prot.name}: {results.patient_id}")
    if as_json:
        doc = {"protocol": prot.name, "patient_id": results.patient_id,
               "results": str(results_path), **plan.to_dict()}
        typer.echo(json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False))
        return
    out = Console(highlight=False, soft_wrap=True)
    out.print(f"patient {escape(results.patient_id)}, {results.nuclide} "
              f"{escape(results.radiopharmaceutical)}, dosimetry of cycle "
              f"{results.cycle_number} ({results.administered_activity_mbq:.0f} MBq)")
    _print_plan(out, plan, prot)
    if output is not None:
        out.print(f"wrote {output}")
    if curves is not None:
        out.print(f"wrote {curves}" if problem.settings.remaining_cycles > 0
                  else "no curves: no cycles remain")


def bed_cmd(
    dose_gy: Annotated[float, typer.Option(help="Absorbed dose of one administration [Gy].")],
    teff_h: Annotated[float, typer.Option(help="Effective (clearance) half-life [h].")],
    tissue: Annotated[str, typer.Option(
        help="kidney | red-marrow | blood | salivary-gland | liver | tumour | normal-tissue …")]
    = "kidney",
    uptake_h: Annotated[float | None, typer.Option(
        help="Uptake half-time [h] (default: instantaneous uptake).")] = None,
    alpha_beta_gy: Annotated[float | None, typer.Option(
        help="Override α/β [Gy].")] = None,
    repair_half_time_h: Annotated[float | None, typer.Option(
        help="Override the repair half-time [h].")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """BED and EQD2 of a dose delivered with a mono-exponential dose rate (closed form)."""
    from dosimetry import units
    from planning.radiobiology import DoseRateShape, bed_from_dose_rate
    from planning.tissues import get_tissue

    for name, v in (("--dose-gy", dose_gy), ("--teff-h", teff_h)):
        if not math.isfinite(v) or v < 0 or (name == "--teff-h" and v == 0):
            raise InputError(f"{name} must be finite and {'> 0' if name == '--teff-h' else '≥ 0'},"
                             f" got {v}")
    tis = get_tissue(tissue).with_values(alpha_beta_gy, repair_half_time_h)
    t_eff = units.hours_to_s(teff_h)
    shape = (DoseRateShape.mono(t_eff) if uptake_h is None
             else DoseRateShape.mono_uptake(t_eff, units.hours_to_s(uptake_h)))
    res = bed_from_dose_rate(dose_gy, shape, tis)
    doc = {"bed_gy": res.bed_gy, "eqd2_gy": res.eqd2_gy, "dose_gy": res.dose_gy,
           "g_factor": res.g_factor, "tissue": tis.name, "alpha_beta_gy": tis.alpha_beta_gy,
           "repair_half_time_h": tis.repair_half_time_h, "teff_h": teff_h,
           "uptake_half_time_h": uptake_h, "parameters_source": tis.source,
           "parameters_verified": tis.verified}
    if as_json:
        typer.echo(json.dumps(doc, indent=2, ensure_ascii=False))
        return
    out = Console(highlight=False, soft_wrap=True)
    out.print(f"BED {res.bed_gy:.4g} Gy, EQD2 {res.eqd2_gy:.4g} Gy "
              f"(D {dose_gy:g} Gy, G {res.g_factor:.4g})")
    out.print(f"{tis.name}: α/β {tis.alpha_beta_gy:g} Gy, T_rep {tis.repair_half_time_h:g} h, "
              f"T_eff {teff_h:g} h" + ("" if uptake_h is None else f", uptake {uptake_h:g} h"))
    out.print(f"source: {escape(tis.source)}" + ("" if tis.verified else " [unverified]"))
