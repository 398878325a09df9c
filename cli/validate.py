"""``rptdose mc validate``: the study's dose engines against a Monte Carlo reference.

Thin layer: parse the options, call :func:`planning.workflow.validate.validate_workdir` with a
progress bar, print the VOI × engine differences, the gamma pass rates and where the report is.
Registered (by ``cli/main.py``) under the ``mc`` sub-app as::

    from cli.validate import validate_cmd
    mc_app.command("validate")(validate_cmd)

Errors are :class:`dosimetry.errors.RptdoseError` subclasses, which the main entry point turns
into one line and exit status 1.
"""

from __future__ import annotations

import warnings
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from planning.workflow.validate import DEFAULT_REFERENCE_DECAYS

__all__ = ["ReferenceChoice", "validate_cmd"]

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class ReferenceChoice(StrEnum):
    """Reference dose: computed by the fast MC or by GATE (or what --reference-dose holds)."""

    MC = "mc"
    GATE = "gate"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:+.1f}"


def validate_cmd(
    workdir: Annotated[Path, typer.Argument(
        help="Work folder whose dose stage has run ('rptdose run' / 'rptdose demo').")],
    reference: Annotated[ReferenceChoice, typer.Option(
        help="Reference: mc (our fast Monte Carlo) or gate (GATE 10; needs opengate and the "
             "Geant4 data). With --reference-dose: what that file holds.")]
    = ReferenceChoice.MC,
    engines: Annotated[str, typer.Option(
        help="Engines to validate, comma-separated: led, dvk, deep, mc.")] = "deep,dvk,led",
    reference_dose: Annotated[Path | None, typer.Option(
        help="Reference dose image [Gy] computed elsewhere (e.g. GATE on another machine), on "
             "the TIA grid (kinetics/tia_bq_s.nii.gz) or resampled onto it.")] = None,
    reference_sigma: Annotated[Path | None, typer.Option(
        help="Standard uncertainty (1σ) image [Gy] of --reference-dose.")] = None,
    mc_decays: Annotated[int, typer.Option(
        help="Decays of the computed reference (mc or gate).", min=1)]
    = DEFAULT_REFERENCE_DECAYS,
    seed: Annotated[int, typer.Option(help="Seed of the reference.", min=0)] = 0,
    g4_data: Annotated[Path | None, typer.Option(
        help="gate: folder of the Geant4 data sets (default: found by opengate).")] = None,
    gate_threads: Annotated[int, typer.Option(help="gate: Geant4 threads.", min=1)] = 1,
    device: Annotated[str, typer.Option(help="cpu or cuda (mc and deep).")] = "cpu",
) -> None:
    """Compare the dose engines with a Monte Carlo reference on this study's TIA map and CT.

    Writes WORKDIR/validation/ (validation.json, validation.html with figures, the reference
    dose and each engine's difference map); the dose report's methods section quotes it on
    the next report run.
    """
    from planning.workflow.validate import validate_workdir

    gate_options: dict = {}
    if reference is ReferenceChoice.GATE and reference_dose is None:
        gate_options = {"threads": gate_threads, "g4_data": g4_data}
    with warnings.catch_warnings(record=True) as caught, Progress(
            TextColumn("{task.description:<16}"), BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(), console=out,
            transient=True) as bar:
        warnings.simplefilter("always")
        tasks: dict[str, object] = {}

        def progress(step: str, done: float, total: float) -> None:
            if step not in tasks:
                tasks[step] = bar.add_task(step, total=max(float(total), 1.0))
            bar.update(tasks[step], completed=float(done), total=max(float(total), 1.0))

        result = validate_workdir(
            workdir, reference.value, engines, reference_dose=reference_dose,
            reference_sigma=reference_sigma, mc_decays=mc_decays, seed=seed, device=device,
            gate_options=gate_options, progress=progress)

    c = result.comparison
    ri = result.reference_info
    out.print(f"reference: {escape(str(ri.get('description')))}")
    rel_v = ri.get("voxel_relative_sigma_median_in_vois")
    rel_m = ri.get("voi_mean_relative_sigma_median")
    rel_e = ri.get("voxel_relative_sigma_median_evaluated")
    if rel_v is not None:
        out.print(f"reference σ (median): voxels in the VOIs {100 * rel_v:.2f} %, voxels the "
                  f"gamma evaluates {100 * (rel_e or 0.0):.2f} %, VOI means "
                  f"{100 * (rel_m or 0.0):.2f} %")
    table = Table("VOI", f"{c.reference_name} [Gy]", "σ [%]",
                  *(f"{e} Δ [%]" for e in c.engines),
                  title="VOI mean dose: engine − reference, % of reference", title_justify="left")
    for v in c.vois:
        rel = v.reference_mean_relative_sigma
        table.add_row(v.name, f"{v.reference.mean_gy:.4g}",
                      "–" if rel is None else f"{100 * rel:.2f}",
                      *(_pct(v.difference_pct(e)["mean"]) for e in c.engines))
    out.print(table)
    summary = Table("engine", *(f"γ {g.criterion}" for g in c.gamma[c.engines[0]]),
                    "bias [%]", "LoA [%]", title="voxels (body) and Bland–Altman over VOIs",
                    title_justify="left")
    for e in c.engines:
        ba = c.bland_altman[e]
        loa = ("–" if ba.loa_lower_pct is None or ba.loa_upper_pct is None
               else f"{ba.loa_lower_pct:+.1f} … {ba.loa_upper_pct:+.1f}")
        summary.add_row(e, *(f"{100 * g.pass_rate:.1f} %" for g in c.gamma[e]),
                        _pct(ba.mean_difference_pct), loa)
    out.print(summary)
    for note in result.notes:
        err.print("[yellow]note:[/yellow] " + escape(note))
    # Warnings of the engines and the reference (e.g. HU clipped to the calibration), once each
    # with the runs that raised them; then any other warning of the run (resampling, …).
    raised: dict[str, list[str]] = {}
    for name, info in [("reference", ri), *result.engine_info.items()]:
        for w in info.get("warnings", []):
            raised.setdefault(w, []).append(name)
    for w in dict.fromkeys(str(w.message) for w in caught):
        if w not in result.notes:
            raised.setdefault(w, [])
    for w, names in raised.items():
        who = f" ({', '.join(names)})" if names else ""
        err.print(f"[yellow]warning{escape(who)}:[/yellow] " + escape(w))
    out.print(f"report: {escape(str(result.html_path))}")
    out.print(f"record: {escape(str(result.json_path))}")
    out.print("the dose report quotes it from its next run ('rptdose run STUDY -o WORKDIR' "
              "re-runs only the report stage)")
