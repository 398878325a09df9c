"""The ``rptdose`` command: parse, call a library function, print.

Errors raised on purpose by the library (:class:`dosimetry.errors.RptdoseError`) become one
readable line on stderr and exit status 1; usage errors exit 2 (typer's convention); an
unexpected error prints one line and exits 3 (set ``RPTDOSE_DEBUG=1`` to see the traceback).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dosimetry import __version__
from dosimetry.errors import RptdoseError

app = typer.Typer(
    name="rptdose",
    help="Radiopharmaceutical-therapy dosimetry and treatment planning (Lu-177, I-131).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Help texts carry units in brackets ("[MBq]", "[h]"): never read them as rich markup.
    rich_markup_mode=None,
)

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _warn(message: str) -> None:
    err.print("[yellow]warning:[/yellow] " + escape(message))


def _version_callback(value: bool) -> None:
    if value:
        out.print(f"rptdose {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version_callback,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """rptdose: from a multi-timepoint quantitative SPECT/CT study to absorbed dose and a plan."""


# ----------------------------------------------------------------------------------- nuclide
@app.command("nuclide")
def nuclide_cmd(
    name: Annotated[str, typer.Argument(help="Nuclide, e.g. Lu-177, Lu177, 177Lu, I-131.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    min_yield: Annotated[
        float, typer.Option(help="Hide lines below this yield per decay.")
    ] = 0.001,
) -> None:
    """Print ICRP-107 decay data: half-life, mean energies per decay, emission lines."""
    from dosimetry import units
    from dosimetry.nuclides import get_nuclide

    nuc = get_nuclide(name)
    if as_json:
        out.print_json(json.dumps(nuc.to_dict()))
        return
    hl = nuc.half_life_s
    out.print(
        f"[bold]{nuc.name}[/bold]  half-life {hl / units.DAY:.4g} d "
        f"({hl / units.HOUR:.5g} h, {hl:.6g} s)"
    )
    out.print(f"  electrons (β + IC + Auger): {nuc.electron_energy_mev_per_decay:.5f} MeV/decay")
    out.print(f"  photons   (γ + X):          {nuc.photon_energy_mev_per_decay:.5f} MeV/decay")
    table = Table(
        "radiation",
        "energy (keV)",
        "yield (%)",
        title=f"lines with yield ≥ {min_yield:.3g} per decay",
        title_justify="left",
    )
    for line in sorted(nuc.lines, key=lambda x: (x.radiation, x.energy_mev)):
        if line.yield_per_decay >= min_yield:
            table.add_row(
                str(line.radiation),
                f"{line.energy_mev * 1e3:.3f}",
                f"{line.yield_per_decay * 100:.4g}",
            )
    out.print(table)
    out.print("source: ICRP Publication 107 (doi:10.1016/j.icrp.2008.10.004)")


# ----------------------------------------------------------------------------------- ingest
def _parse_datetime(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not an ISO date-time such as 2024-05-01T09:30", param_hint=option
        ) from None


@app.command("ingest")
def ingest_cmd(
    dicom_dir: Annotated[Path, typer.Argument(help="Folder exported from the scanner.")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Manifest to write (.yaml/.json).")
    ] = Path("study.yaml"),
    injection_time: Annotated[
        str | None,
        typer.Option(
            help="Injection date-time (ISO 8601, scanner local time) when the files lack it."
        ),
    ] = None,
    injected_activity_mbq: Annotated[
        float | None,
        typer.Option(help="Administered activity [MBq] when the files lack it.", min=0.0),
    ] = None,
    calibration_cps_per_mbq: Annotated[
        float | None,
        typer.Option(help="SPECT sensitivity [cps/MBq] for images in counts.", min=0.0),
    ] = None,
    frame_duration_s: Annotated[
        float | None,
        typer.Option(
            help="Acquisition duration [s] for images in counts when the files lack it.", min=0.0
        ),
    ] = None,
    nuclide: Annotated[str | None, typer.Option(help="Nuclide, e.g. Lu-177.")] = None,
    radiopharmaceutical: Annotated[str | None, typer.Option(help="e.g. DOTATATE.")] = None,
    patient_id: Annotated[
        str | None,
        typer.Option(help="Pseudonym to record (default: derived from the DICOM PatientID)."),
    ] = None,
    spect_fwhm_mm: Annotated[
        float | None,
        typer.Option(help="Reconstructed SPECT resolution FWHM [mm] of your system; enables "
                     "the partial-volume correction.", min=0.0),
    ] = None,
    allow_mixed_patients: Annotated[
        bool, typer.Option(help="Accept a folder holding several patients.")
    ] = False,
    reconstruct_projections: Annotated[
        bool, typer.Option(help="Reconstruct raw SPECT projections (with the CT of their frame "
                           "of reference) into recon/ beside the manifest and use them.")
    ] = False,
) -> None:
    """Scan a DICOM export, pair SPECT with CT per timepoint, and write a study manifest."""
    from dosimetry.study.ingest import ingest_dicom, require_complete

    inj = _parse_datetime(injection_time, "--injection-time")
    for bad in (injected_activity_mbq, calibration_cps_per_mbq, frame_duration_s):
        if bad is not None and bad <= 0:
            raise typer.BadParameter(f"must be > 0, got {bad}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = ingest_dicom(
            dicom_dir,
            output,
            injection_datetime=inj,
            injected_activity_mbq=injected_activity_mbq,
            calibration_cps_per_mbq=calibration_cps_per_mbq,
            frame_duration_s=frame_duration_s,
            nuclide=nuclide,
            radiopharmaceutical=radiopharmaceutical,
            patient_id=patient_id,
            spect_fwhm_mm=spect_fwhm_mm,
            allow_mixed_patients=allow_mixed_patients,
            reconstruct_projections=reconstruct_projections,
        )
    table = Table(
        "modality",
        "series",
        "acquired",
        "images",
        "frame of ref.",
        "note",
        title=f"DICOM series in {dicom_dir}",
        title_justify="left",
    )
    for row in result.rows:
        table.add_row(*row)
    out.print(table)
    if result.timepoints:
        tps = Table(
            "timepoint",
            "SPECT",
            "acquired",
            "units",
            "CT",
            "RTSTRUCT",
            title="timepoints",
            title_justify="left",
        )
        for c in result.timepoints:
            tps.add_row(
                c.label,
                c.spect_description or c.spect_series_uid,
                c.acquisition_datetime.strftime("%Y-%m-%d %H:%M")
                if c.acquisition_datetime
                else "-",
                c.units,
                "yes" if c.ct_series_uid else "[red]missing[/red]",
                "yes" if c.rtstruct_series_uid else "-",
            )
        out.print(tps)
    messages = list(result.warnings)
    messages += [str(w.message) for w in caught if str(w.message) not in messages]
    for m in messages:
        _warn(m)
    study = require_complete(result)
    out.print(
        f"wrote {output} ({len(study.timepoints)} timepoint(s), {study.nuclide}, "
        f"{study.administered_activity_mbq:.1f} MBq, patient {study.patient_id})"
    )


@app.command("validate")
def validate_cmd(
    manifest: Annotated[Path, typer.Argument(help="Study manifest (.yaml/.json).")],
) -> None:
    """Validate a study manifest and the files it points to (headers only)."""
    from dosimetry.study.manifest import check_study_files, load_study

    study = load_study(manifest)
    for w in check_study_files(study, manifest.resolve().parent):
        _warn(w)
    times = ", ".join(f"{t / 3600:.1f} h" for t in study.times_after_injection_s())
    out.print(
        f"{manifest}: valid — {study.nuclide} {study.radiopharmaceutical}, "
        f"{study.administered_activity_mbq:.1f} MBq, timepoints at {times}"
    )


# ----------------------------------------------------------------------------------- sub-commands
def _register() -> None:
    from cli.cohort import cohort_app
    from cli.denoise import denoise_cmd, train_denoiser_cmd
    from cli.dose import dose_cmd, kernel_app, train_dose_cmd
    from cli.mc import mc_app
    from cli.phantom import phantom_app
    from cli.plan import bed_cmd, plan_cmd
    from cli.recon import recon_cmd
    from cli.register import register_cmd, train_registration_cmd
    from cli.run import demo_cmd, run_cmd
    from cli.segment import segment_cmd, train_lesions_cmd, train_segmentation_cmd
    from cli.tac import tac_app

    train_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                            help="Train the models rptdose ships, reproducibly.")
    train_app.command("segmentation")(train_segmentation_cmd)
    train_app.command("registration")(train_registration_cmd)
    train_app.command("lesions")(train_lesions_cmd)
    train_app.command("dose")(train_dose_cmd)
    train_app.command("denoiser")(train_denoiser_cmd)
    app.command("run")(run_cmd)
    app.command("demo")(demo_cmd)
    app.command("register")(register_cmd)
    app.command("segment")(segment_cmd)
    app.command("denoise")(denoise_cmd)
    app.add_typer(train_app, name="train")
    app.add_typer(cohort_app, name="cohort", help="Run many studies in parallel on Dask.")

    app.add_typer(phantom_app, name="phantom", help="Digital patients with ground truth.")
    app.add_typer(tac_app, name="tac", help="Time-activity curves: fit, select, integrate.")
    app.command("dose")(dose_cmd)
    app.add_typer(kernel_app, name="kernel", help="Dose voxel kernels from the voxel MC.")
    app.add_typer(mc_app, name="mc", help="Monte Carlo references: GATE 10, fast MC on Dask, "
                                          "engine validation.")
    app.command("plan")(plan_cmd)
    app.command("bed")(bed_cmd)
    app.command("recon")(recon_cmd)


_register()


# ----------------------------------------------------------------------------------- entry
def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: run the app, turning our errors into one line.

    Returns the exit status: 0 success, 1 an error the library raised on purpose (bad input,
    missing data, geometry), 2 a usage error, 3 an unexpected error, 130 interrupted.
    """
    try:
        app(args=argv, prog_name="rptdose", standalone_mode=True)
    except SystemExit as exc:  # click's standalone mode ends every run with SystemExit
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except RptdoseError as exc:
        err.print("[red]error:[/red] " + escape(str(exc)))
        return 1
    except KeyboardInterrupt:
        err.print("aborted")
        return 130
    except Exception as exc:
        if os.environ.get("RPTDOSE_DEBUG"):
            raise
        err.print(
            f"[red]internal error:[/red] {type(exc).__name__}: {escape(str(exc))} "
            "(set RPTDOSE_DEBUG=1 for the traceback)"
        )
        return 3
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
