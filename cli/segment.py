"""``rptdose segment`` and ``rptdose train segmentation``.

Thin layer: parse, call :func:`dosimetry.segmentation.segment_study` /
:func:`dosimetry.segmentation.train_segmentation` /
:func:`dosimetry.segmentation.lesion_model.train_lesion_model`, print. Register with
``app.command("segment")(segment_cmd)`` and, under a ``train`` sub-app,
``train_app.command("segmentation")(train_segmentation_cmd)`` and
``train_app.command("lesions")(train_lesions_cmd)``. Errors are
:class:`dosimetry.errors.RptdoseError` subclasses, which the main entry point turns into one line.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description:<34}"), BarColumn(), TextColumn(
        "{task.percentage:>3.0f}%"), TimeElapsedColumn(), console=out, transient=True)


def segment_cmd(
    workdir: Annotated[Path, typer.Argument(help="Work folder (made by 'rptdose run').")],
    backend: Annotated[str, typer.Option(
        help="builtin (our CT model), totalsegmentator (if installed), masks:PATH (label image "
             "with name table, RTSTRUCT or SEG) or masks (the manifest's contours).")]
    = "builtin",
    force: Annotated[bool, typer.Option(help="Recompute even when up to date.")] = False,
    device: Annotated[str, typer.Option(help="Torch device: cpu, cuda, cuda:1 …")] = "cpu",
    lesions: Annotated[bool, typer.Option(
        "--lesions/--no-lesions", help="Detect lesions on the reference SPECT.")] = True,
    min_lesion_ml: Annotated[float, typer.Option(
        help="Smallest lesion kept [mL].", min=0.0)] = 1.0,
    lesion_method: Annotated[str, typer.Option(
        help="threshold (threshold / region growing, organ-aware) or model (the trained "
             "lesion model; threshold when its weights are absent).")] = "threshold",
) -> None:
    """Segment organs on the reference CT and lesions on its SPECT; print the organ table."""
    from dosimetry.segmentation import LesionOptions, segment_study
    from dosimetry.study.workdir import WorkDir

    wd = WorkDir.open(workdir)
    with warnings.catch_warnings(record=True) as caught, _progress() as bar:
        warnings.simplefilter("always")
        task = bar.add_task("segmentation", total=1.0)

        def update(step: str, frac: float) -> None:
            bar.update(task, completed=frac, description=step[:34])

        result = segment_study(wd, backend, force=force, progress=update, device=device,
                               detect=lesions,
                               lesion_options=LesionOptions(min_volume_ml=min_lesion_ml,
                                                           method=lesion_method))
    table = Table("label", "structure", "kind", "voxels", "volume (mL)", "mass (g)",
                  "mean HU", title=f"segmentation of {workdir} (reference timepoint "
                  f"{result.reference_timepoint}, backend {result.backend})",
                  title_justify="left")
    for r in result.organs.rows:
        table.add_row(str(r.label), r.name, r.kind.value, str(r.voxels), f"{r.volume_ml:.1f}",
                      f"{r.mass_g:.1f}", "-" if r.mean_hu is None else f"{r.mean_hu:.0f}")
    out.print(table)
    out.print(f"lesions from: {escape(result.lesion_source)}")
    seen = set()
    for m in [*result.warnings, *(str(w.message) for w in caught)]:
        if m not in seen:
            seen.add(m)
            err.print("[yellow]warning:[/yellow] " + escape(m))
    state = "up to date, not recomputed" if result.reused else result.message
    out.print(f"{escape(str(result.labels_path))}: {escape(state)}")


def _with_training_bar(train_fn, *args, **kwargs):
    """Run ``train_fn(*args, progress=…, **kwargs)`` under a progress bar; its result."""
    with _progress() as bar:
        task = bar.add_task("training", total=1.0)

        def update(step: str, frac: float) -> None:
            bar.update(task, completed=frac, description=step[:34])

        return train_fn(*args, progress=update, **kwargs)


def train_segmentation_cmd(
    seed: Annotated[int, typer.Option(help="Seed of everything random (0–89).")] = 0,
    epochs: Annotated[int, typer.Option(help="Epochs of 50 optimiser steps.", min=1)] = 70,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Folder for the weights and model card (default: the shipped "
                               "weights folder).")] = None,
    device: Annotated[str, typer.Option(help="Torch device (cpu gives the shipped, "
                                             "reproducible weights).")] = "cpu",
) -> None:
    """Train the built-in CT organ model on digital patients (reproducible from the seed)."""
    from dosimetry.segmentation import train_segmentation

    result = _with_training_bar(train_segmentation, seed, epochs, output, device=device)
    table = Table("organ", "held-out Dice (mean)", "min", title="held-out digital patients",
                  title_justify="left")
    for organ, d in result.heldout.get("mean", {}).items():
        table.add_row(organ, f"{d:.3f}", f"{result.heldout['min'][organ]:.3f}")
    out.print(table)
    out.print(f"wrote {escape(str(result.weights))} (sha256 {result.sha256}) and "
              f"{escape(str(result.card))}")


def train_lesions_cmd(
    seed: Annotated[int, typer.Option(help="Seed of everything random.")] = 0,
    epochs: Annotated[int, typer.Option(help="Epochs of 50 optimiser steps.", min=1)] = 14,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Folder for the weights and model card (default: the shipped "
                               "weights folder).")] = None,
    device: Annotated[str, typer.Option(help="Torch device (cpu gives the shipped, "
                                             "reproducible weights).")] = "cpu",
) -> None:
    """Train the lesion model on simulated SPECT/CT of digital patients (reproducible)."""
    from dosimetry.segmentation.lesion_model import train_lesion_model

    card = _with_training_bar(train_lesion_model, seed, epochs, output, device=device)
    out.print(f"wrote {escape(card['weights_file'])} (sha256 {card['sha256']}) and its model "
              "card")
