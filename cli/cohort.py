"""``rptdose cohort run``: many studies through the pipeline in parallel on Dask.

Thin layer: parse, call :func:`planning.workflow.cohort.run_cohort`, print a progress bar and the
cohort table. Register with ``app.add_typer(cohort_app, name="cohort")``. Bad input raises
:class:`dosimetry.errors.RptdoseError` subclasses, which the main entry point turns into one line;
when any study failed the table says which and the exit status is 1.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

cohort_app = typer.Typer(
    help="Cohorts: many studies through the pipeline in parallel (Dask).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@cohort_app.command("run")
def cohort_run_cmd(
    manifests: Annotated[list[Path], typer.Argument(help="Study manifests (.yaml/.json).")],
    output: Annotated[Path, typer.Option(
        "-o", "--output", help="Cohort folder: one work folder per study, cohort.json/.csv.")],
    dose_engine: Annotated[str, typer.Option(help="led, dvk, mc, deep or gate.")] = "dvk",
    segmenter: Annotated[str, typer.Option(
        help="builtin, totalsegmentator, masks (each manifest's labels) or masks:PATH.")]
    = "builtin",
    registration: Annotated[str, typer.Option(help="classical or learned.")] = "classical",
    seed: Annotated[int, typer.Option(help="Seed of every random step.")] = 0,
    scheduler: Annotated[str | None, typer.Option(
        help="Address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786 (default: a "
             "local cluster on this machine).")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Worker processes of the local cluster (default: one per study, at most one per "
             "core and per 2 GiB of memory).")] = None,
    threads_per_worker: Annotated[int, typer.Option(
        help="Threads per local worker (studies run one per thread).")] = 1,
) -> None:
    """Run the pipeline on every study in parallel; a failing study does not stop the others."""
    from dosimetry.errors import InputError
    from planning.workflow.cohort import StudyOutcome, run_cohort
    from planning.workflow.pipeline import PipelineOptions

    try:
        options = PipelineOptions(dose_engine=dose_engine, segmenter=segmenter,
                                  registration_method=registration, seed=seed)
    except ValueError as exc:  # pydantic: name the option and the value
        raise InputError(" ".join(str(exc).split())) from None

    with warnings.catch_warnings(record=True) as caught, \
            Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                     TimeElapsedColumn(), console=out, transient=False) as bar:
        warnings.simplefilter("default")
        task = bar.add_task("studies", total=len(manifests))

        def progress(outcome: StudyOutcome) -> None:
            where = f" in {outcome.stage}" if outcome.stage else ""
            state = ("[green]ok[/green]" if outcome.ok else f"[red]failed{where}[/red]: "
                     f"{escape(f'{outcome.error_type}: {outcome.error}')}")
            bar.console.print(f"{escape(outcome.name)}: {state} ({outcome.seconds:.0f} s)")
            bar.advance(task)

        result = run_cohort(manifests, output, options, scheduler=scheduler,
                            n_workers=workers, threads_per_worker=threads_per_worker,
                            progress=progress)

    table = Table("study", "status", "stage", "seconds", "VOIs", "error",
                  title=f"cohort of {len(result.studies)} studies", title_justify="left")
    for s in result.studies:
        table.add_row(escape(s.name), "ok" if s.ok else "[red]failed[/red]", s.stage or "",
                      f"{s.seconds:.0f}", str(len(s.vois)) if s.ok else "",
                      escape(f"{s.error_type}: {s.error}") if s.error else "")
    out.print(table)
    out.print(f"summary: {escape(str(result.summary_csv))}")
    out.print(f"         {escape(str(result.summary_json))}")
    quiet = (DeprecationWarning, PendingDeprecationWarning, ResourceWarning)
    for w in dict.fromkeys(str(c.message) for c in caught if not issubclass(c.category, quiet)):
        err.print("[yellow]warning:[/yellow] " + escape(w))
    for s in result.studies:
        for w in s.warnings:
            err.print(f"[yellow]warning:[/yellow] {escape(s.name)}: {escape(w)}")
    if not result.ok:
        names = ", ".join(s.name for s in result.failed)
        err.print(f"[red]error:[/red] {len(result.failed)} of {len(result.studies)} studies "
                  f"failed: {escape(names)}")
        raise typer.Exit(code=1)
