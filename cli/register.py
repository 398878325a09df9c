"""``rptdose register`` and ``rptdose train registration``: thin layers over
:mod:`dosimetry.registration`.

Register them with ``app.command("register")(register_cmd)`` and, under a ``train`` sub-app,
``train_app.command("registration")(train_registration_cmd)``. Errors the library raises on
purpose (:class:`dosimetry.errors.RptdoseError`, e.g. a timepoint that cannot be registered)
propagate to the main entry point, which prints them as one line with exit status 1.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dosimetry.registration.config import RegistrationMethod

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description:<40}"), BarColumn(),
                    TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(), console=out,
                    transient=True)


def _f(v: float | None, fmt: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, fmt)


def qa_table(result) -> Table:
    """The QA table of a :class:`~dosimetry.registration.RegistrationResult`."""
    has_truth = any(t.qa.tre is not None for t in result.timepoints)
    has_dice = any(t.qa.dice for t in result.timepoints)
    cols = ["timepoint", "with", "metric before → after", "Jacobian min", "folding",
            "body Dice", "activity Δ CT/SPECT grid"]
    if has_dice:
        cols.append("Dice mean (min)")
    if has_truth:
        cols += ["TRE before (mm)", "TRE rigid (mm)", "TRE mean / max (mm)"]
    cols.append("time (s)")
    table = Table(*cols, title=f"registration to {result.reference} ({result.method.value})",
                  title_justify="left")
    for tp in result.timepoints:
        q = tp.qa
        act = []
        for grid in ("ct", "spect"):
            a = q.activity_on(grid)
            act.append("-" if a is None else f"{a.relative_change_raw * 100:+.2f} %")
        row = [tp.label + (" (ref)" if q.is_reference else ""), q.registered_with,
               (f"{_f(q.metric_before, '.3f')} → {_f(q.metric_after, '.3f')}"
                if q.metric_before is not None else "-"),
               _f(q.jacobian.min if q.jacobian else None, ".3f"),
               (f"{q.jacobian.fraction_nonpositive * 100:.2f} %" if q.jacobian else "-"),
               (f"{_f(q.body_dice_before, '.3f')} → {_f(q.body_dice_after, '.3f')}"
                if q.body_dice_after is not None else "-"),
               " / ".join(act)]
        if has_dice:
            row.append(f"{_f(q.dice_mean, '.3f')} ({_f(q.dice_min, '.3f')})"
                       if q.dice else "-")
        if has_truth:
            row += [_f(q.tre_before.mean_mm if q.tre_before else None, ".2f"),
                    _f(q.tre_rigid.mean_mm if q.tre_rigid else None, ".2f"),
                    (f"{q.tre.mean_mm:.2f} / {q.tre.max_mm:.2f}" if q.tre else "-")]
        row.append(f"{q.time_s:.1f}")
        table.add_row(*row)
    return table


def register_cmd(
    workdir: Annotated[Path, typer.Argument(help="Work folder (holds study.yaml).")],
    reference_timepoint: Annotated[str | None, typer.Option(
        "--reference-timepoint",
        help="Timepoint label to register to (default: the manifest's, else the first).")]
    = None,
    method: Annotated[RegistrationMethod, typer.Option(
        help="classical (rigid → affine → B-spline) or learned (rigid + 3D U-Net).")]
    = RegistrationMethod.CLASSICAL,
    force: Annotated[bool, typer.Option(help="Recompute even when up to date.")] = False,
    device: Annotated[str, typer.Option(help="Torch device of the learned model.")] = "cpu",
) -> None:
    """Register every timepoint to the reference CT; SPECT follows with activity conserved."""
    from dataclasses import replace

    from dosimetry.registration import RegistrationOptions, register_study
    from dosimetry.study.workdir import WorkDir

    wd = WorkDir.open(workdir)
    options = replace(RegistrationOptions(), device=device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _progress() as bar:
            task = bar.add_task("registration", total=1.0)

            def progress(message: str, fraction: float) -> None:
                bar.update(task, completed=fraction, description=message[:40])

            result = register_study(wd, reference=reference_timepoint, method=method,
                                    force=force, progress=progress, options=options)
    for w in caught:
        err.print("[yellow]warning:[/yellow] " + escape(str(w.message)))
    out.print(qa_table(result))
    if result.truth:
        out.print(f"TRE against the phantom truth in {escape(result.truth)}; Dice over labels "
                  "≥ 20 mL")
    state = "up to date, nothing recomputed" if result.skipped else f"{result.time_s:.1f} s"
    out.print(f"{escape(result.message)} — {state}; outputs and qa.json in "
              f"{escape(str(result.folder))}")


def train_registration_cmd(
    seed: Annotated[int, typer.Option(help="Seed of everything random.")] = 0,
    epochs: Annotated[int, typer.Option(help="Passes over the training pairs.", min=1)] = 10,
    output: Annotated[Path, typer.Option(
        "-o", "--output", help="Weight file to write (.pt); the model card goes beside it.")]
    = Path("regunet_v1.pt"),
    device: Annotated[str, typer.Option(help="Torch device to train on.")] = "cpu",
) -> None:
    """Train the learned registration model on digital patients (minutes on 2 cores)."""
    from dataclasses import replace

    from dosimetry.registration.learned.train import TrainingConfig, train_registration

    cfg = replace(TrainingConfig(), device=device)
    with _progress() as bar:
        task = bar.add_task("training", total=1.0)

        def progress(message: str, fraction: float) -> None:
            bar.update(task, completed=fraction, description=message[:40])

        res = train_registration(seed=seed, epochs=epochs, out=output, config=cfg,
                                 progress=progress)
    m = res.metrics
    table = Table("held-out pairs", "TRE identity (mm)", "TRE rigid (mm)",
                  "TRE rigid + learned (mm)", "improved", "folding max",
                  title="held-out digital patients (mean TRE over body points)",
                  title_justify="left")
    table.add_row(str(m["pairs"]), f"{m['tre_identity_mean_mm']:.2f}",
                  f"{m['tre_rigid_mean_mm']:.2f}", f"{m['tre_learned_mean_mm']:.2f}",
                  f"{m['pairs_improved']}/{m['pairs']}",
                  f"{m['folding_fraction_max'] * 100:.3f} %")
    out.print(table)
    out.print(f"wrote {escape(str(res.weights))} (SHA-256 {res.sha256}) and "
              f"{escape(str(res.card))} in {res.time_s:.0f} s")
