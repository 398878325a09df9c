"""``rptdose mc``: Monte Carlo references — GATE 10, our fast MC split on Dask, validation.

Thin layer over :mod:`dosimetry.dose.gate` (``gate``, ``gate-read``, ``g4-data``),
:func:`dosimetry.dose.mc.split.dose_mc_split` (``run``) and
:func:`planning.workflow.validate.validate_workdir` (``validate``, in :mod:`cli.validate`).
Registered in ``cli/main.py`` with ``app.add_typer(mc_app, name="mc")``.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from cli.dose import TiaUnit, _callback, _progress
from cli.validate import validate_cmd
from dosimetry.errors import InputError

__all__ = ["mc_app"]

mc_app = typer.Typer(
    help="Monte Carlo references: GATE 10, the fast MC split on Dask, engine validation.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    add_completion=False,
)

out = Console(highlight=False, soft_wrap=True)


class SourceChoice(StrEnum):
    """How GATE emits the nuclide."""

    ION = "ion"
    SPECTRUM = "spectrum"


class GridChoice(StrEnum):
    """Where GATE scores dose."""

    TIA = "tia"
    CT = "ct"


def _read_tia(path: Path, unit: TiaUnit):
    import SimpleITK as sitk

    from dosimetry.io.images import read_image
    from dosimetry.units import mbq_h_to_bq_s

    tia = read_image(path)
    if unit is TiaUnit.MBQ_H:
        tia = sitk.Cast(tia, sitk.sitkFloat64) * mbq_h_to_bq_s(1.0)
    return tia


def _write_result(result, output: Path, extra: dict) -> list[str]:
    from dosimetry.io.atomic import atomic_write_text
    from dosimetry.io.images import write_image

    output.mkdir(parents=True, exist_ok=True)
    written = [str(write_image(result.dose, output / "dose_gy.nii.gz"))]
    if result.uncertainty is not None:
        written.append(str(write_image(result.uncertainty, output / "dose_sigma_gy.nii.gz")))
    written.append(str(atomic_write_text(output / "dose.json", json.dumps(
        {**result.to_dict(), **extra}, indent=1, default=str))))
    return written


@mc_app.command("gate")
def gate_cmd(
    tia_image: Annotated[Path, typer.Argument(
        help="Time-integrated activity map: decays per voxel [Bq·s] (or MBq·h with "
             "--tia-unit mbq-h).")],
    ct: Annotated[Path, typer.Option(help="CT [HU] covering the TIA map.")],
    nuclide: Annotated[str, typer.Option(help="Nuclide, e.g. Lu-177 or I-131.")],
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Output folder: dose_gy.nii.gz, dose_sigma_gy.nii.gz, "
                               "dose.json and the simulation/ folder with GATE's outputs.")]
    = None,
    export: Annotated[Path | None, typer.Option(
        help="Only write a self-contained simulation folder (script + inputs) to run where "
             "GATE and its Geant4 data exist; needs no Geant4 data here.")] = None,
    decays: Annotated[int, typer.Option(help="Decays to simulate (all threads).", min=1)]
    = 1_000_000,
    threads: Annotated[int, typer.Option(help="Geant4 threads per run.", min=1)] = 1,
    seed: Annotated[int, typer.Option(help="Random seed.", min=0)] = 0,
    source: Annotated[SourceChoice, typer.Option(
        help="ion (Geant4 radioactive decay) or spectrum (ICRP-107 radiations).")]
    = SourceChoice.ION,
    emissions: Annotated[str, typer.Option(
        help="spectrum source: comma-separated beta, ic, auger, gamma, x (or all).")] = "all",
    dose_grid: Annotated[GridChoice, typer.Option(help="Score on the tia or the ct grid.")]
    = GridChoice.TIA,
    g4_data: Annotated[Path | None, typer.Option(
        "--g4-data", help="Folder with the Geant4 data sets (else $RPTDOSE_G4_DATA, "
                          "opengate's data folder, or G4…DATA variables).")] = None,
    jobs: Annotated[int, typer.Option(
        help="Split into this many runs with independent seeds, run on Dask and merged.",
        min=1)] = 1,
    scheduler: Annotated[str | None, typer.Option(
        help="Dask scheduler address (default: a local cluster); workers must see the "
             "output folder under the same path.")] = None,
    workers: Annotated[int | None, typer.Option(help="Local cluster workers.", min=1)] = None,
    allow_partial: Annotated[bool, typer.Option(
        help="With --jobs: when jobs fail for good, write the merge of the others, marked "
             "incomplete in dose.json (default: fail).")] = False,
    tia_unit: Annotated[TiaUnit, typer.Option(help="Unit of the TIA voxel values.")]
    = TiaUnit.BQ_S,
) -> None:
    """Absorbed dose by GATE 10 (opengate), or a self-contained simulation with --export."""
    from dosimetry.dose.gate.bridge import GateSettings, export_simulation
    from dosimetry.dose.gate.engine import dose_gate
    from dosimetry.io.images import read_image

    if output is None and export is None:
        raise InputError("give -o/--output OUT to run GATE here, or --export DIR to write a "
                         "simulation to run elsewhere")
    if output is not None and export is not None:
        raise InputError("--export writes a simulation without running it; give either "
                         "-o/--output or --export, not both")
    tia = _read_tia(tia_image, tia_unit)
    ct_img = read_image(ct)
    emis = None if source is SourceChoice.ION else emissions
    if export is not None:
        settings = GateSettings(n_decays=decays, threads=threads, seed=seed,
                                source_mode=source.value, dose_grid=dose_grid.value)
        folder = export_simulation(tia, ct_img, nuclide, export, settings, emis)
        out.print(f"wrote the GATE simulation {escape(str(folder))} ({source.value} source, "
                  f"{decays} decays, {threads} threads). Run it where GATE and the Geant4 data "
                  f"are installed:\n  python {escape(str(folder / 'rptdose_gate.py'))}\n"
                  "then read it back with `rptdose mc gate-read "
                  f"{escape(str(folder))} --like {escape(str(tia_image))} -o OUT`")
        return
    assert output is not None
    progress, task = _progress(f"GATE ({jobs} job{'s' if jobs > 1 else ''})")
    with progress:
        result = dose_gate(tia, nuclide, ct_img, n_decays=decays, seed=seed, threads=threads,
                           source_mode=source.value, emissions=emis, dose_grid=dose_grid.value,
                           g4_data=g4_data, work_dir=output, jobs=jobs, scheduler=scheduler,
                           n_workers=workers, allow_partial=allow_partial,
                           progress=_callback(progress, task))
    written = _write_result(result, output, {"tia_image": str(tia_image), "ct": str(ct)})
    m = result.metadata
    out.print(f"gate: {result.nuclide}, {m.get('n_decays')} decays in {m.get('jobs')} job(s); "
              f"wrote {', '.join(escape(w) for w in written)}")


@mc_app.command("gate-read")
def gate_read_cmd(
    folder: Annotated[Path, typer.Argument(help="An exported GATE simulation folder.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")],
    run_dir: Annotated[Path | None, typer.Option(
        help="The run's output folder (default FOLDER/output).")] = None,
    like: Annotated[Path | None, typer.Option(
        help="The original TIA map: the dose gets its exact geometry (checked).")] = None,
) -> None:
    """Read back a GATE run done elsewhere: dose [Gy] and σ on the TIA map's grid."""
    from dosimetry.dose.gate.bridge import read_run
    from dosimetry.io.atomic import atomic_write_text
    from dosimetry.io.images import read_image, write_image

    like_img = read_image(like) if like is not None else None
    run = read_run(folder, run_dir, like=like_img)
    output.mkdir(parents=True, exist_ok=True)
    written = [str(write_image(run.dose, output / "dose_gy.nii.gz")),
               str(write_image(run.sigma, output / "dose_sigma_gy.nii.gz")),
               str(atomic_write_text(output / "dose.json", json.dumps(
                   {"engine": "gate", **run.result}, indent=1, default=str)))]
    out.print(f"gate run of {run.result.get('decays_simulated'):.0f} decays read back; wrote "
              f"{', '.join(escape(w) for w in written)}")


@mc_app.command("g4-data")
def g4_data_cmd(
    g4_data: Annotated[Path | None, typer.Option(
        "--g4-data", help="Folder to check (else the default search).")] = None,
) -> None:
    """Say where the Geant4 data sets for GATE are, or how to install them."""
    from dosimetry.dose.gate.g4data import find_g4_data

    data = find_g4_data(g4_data)
    out.print(f"Geant4 data found: {escape(data.origin)}")
    for var, path in sorted(data.paths.items()):
        out.print(f"  {var} = {escape(str(path))}")
    for line in data.version_mismatch:
        out.print(f"[yellow]warning:[/yellow] {escape(line)}")


@mc_app.command("run")
def mc_run_cmd(
    tia_image: Annotated[Path, typer.Argument(
        help="Time-integrated activity map: decays per voxel [Bq·s] (or MBq·h with "
             "--tia-unit mbq-h).")],
    nuclide: Annotated[str, typer.Option(help="Nuclide, e.g. Lu-177 or I-131.")],
    output: Annotated[Path, typer.Option(
        "-o", "--output", help="Output folder: dose_gy.nii.gz, dose_sigma_gy.nii.gz, "
                               "dose.json.")],
    ct: Annotated[Path | None, typer.Option(help="CT [HU] (resampled to the TIA grid).")]
    = None,
    decays: Annotated[int, typer.Option(help="Decays in total.", min=1)] = 10_000_000,
    jobs: Annotated[int, typer.Option(help="Jobs (independent seeds), merged.", min=1)] = 4,
    seed: Annotated[int, typer.Option(help="Seed from which the job seeds derive.", min=0)]
    = 0,
    emissions: Annotated[str, typer.Option(
        help="Radiations: comma-separated beta, ic, auger, gamma, x (or all).")] = "all",
    scheduler: Annotated[str | None, typer.Option(
        help="Dask scheduler address (default: a local cluster).")] = None,
    workers: Annotated[int | None, typer.Option(help="Local cluster workers.", min=1)] = None,
    allow_partial: Annotated[bool, typer.Option(
        help="When jobs fail for good, write the merge of the others, marked incomplete in "
             "dose.json (default: fail).")] = False,
    tia_unit: Annotated[TiaUnit, typer.Option(help="Unit of the TIA voxel values.")]
    = TiaUnit.BQ_S,
) -> None:
    """Fast voxel MC split by seed into jobs on Dask, merged with its uncertainty."""
    from dosimetry.dose.mc.split import dose_mc_split
    from dosimetry.io.images import read_image

    tia = _read_tia(tia_image, tia_unit)
    ct_img = read_image(ct) if ct is not None else None
    progress, task = _progress(f"fast MC ({jobs} jobs)")
    with progress:
        result = dose_mc_split(tia, nuclide, ct_img, n_decays=decays, n_jobs=jobs, seed=seed,
                               scheduler=scheduler, n_workers=workers, emissions=emissions,
                               allow_partial=allow_partial, progress=_callback(progress, task))
    written = _write_result(result, output, {"tia_image": str(tia_image),
                                             "ct": str(ct) if ct else None})
    m = result.metadata
    state = "" if m.get("complete", True) else " [yellow](INCOMPLETE: failed jobs left out)[/]"
    out.print(f"mc: {result.nuclide}, {m.get('n_decays')} decays in "
              f"{len(m.get('jobs_done', ())) or jobs}/{jobs} jobs{state}; wrote "
              f"{', '.join(escape(w) for w in written)}")


mc_app.command("validate")(validate_cmd)
