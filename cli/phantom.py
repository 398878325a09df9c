"""``rptdose phantom``: make digital patients and the IEC body phantom.

Thin layer: parse options, call :func:`phantoms.make_patient` / :func:`phantoms.make_iec`,
show progress, print what was written. Bad values raise :class:`dosimetry.errors.InputError`
(the main entry point turns it into one line and exit status 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dosimetry.errors import InputError

phantom_app = typer.Typer(
    help="Digital patients (multi-timepoint Lu-177 / I-131 SPECT/CT with ground truth) and "
         "the IEC body phantom.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

out = Console(highlight=False, soft_wrap=True)


def parse_hours(text: str) -> tuple[float, ...]:
    """``"4,24,96,168"`` → (4.0, 24.0, 96.0, 168.0); InputError naming the bad value."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise InputError(f"--timepoints-h {text!r}: give comma-separated hours, e.g. 4,24,96,168")
    try:
        return tuple(float(p) for p in parts)
    except ValueError:
        raise InputError(f"--timepoints-h {text!r}: not a comma-separated list of hours "
                         "(e.g. 4,24,96,168)") from None


def _progress() -> Progress:
    return Progress(TextColumn("{task.description:<28}"), BarColumn(), TextColumn(
        "{task.percentage:>3.0f}%"), TimeElapsedColumn(), console=out, transient=True)


@phantom_app.command("make")
def make_cmd(
    out_dir: Annotated[Path, typer.Argument(help="Output folder (must not exist or be empty).")],
    preset: Annotated[str, typer.Option(
        help="Kinetics preset: lu177-dotatate, lu177-psma or i131-dtc.")] = "lu177-dotatate",
    timepoints_h: Annotated[str, typer.Option(
        "--timepoints-h", help="Imaging times after injection [h], comma-separated.")]
    = "4,24,96,168",
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives identical files.")] = 0,
    output_format: Annotated[str, typer.Option(
        "--format", help="Image format: dicom (CT series + NM SPECT) or nifti.")] = "dicom",
    lesions: Annotated[int, typer.Option(help="Number of lesions (0–30).")] = 3,
    head_neck: Annotated[bool | None, typer.Option(
        "--head-neck/--no-head-neck",
        help="Include head and neck (salivary glands); i131-dtc always does.")] = None,
    counts: Annotated[bool, typer.Option(
        "--counts", help="Write SPECT as counts with a calibration factor instead of Bq/mL.")]
    = False,
    ct_mm: Annotated[float, typer.Option(help="CT in-plane voxel size [mm].")] = 2.5,
    slice_mm: Annotated[float, typer.Option(help="CT slice spacing [mm].")] = 3.0,
    spect_mm: Annotated[float | None, typer.Option(
        help="SPECT voxel size [mm] (default 4.7952).")] = None,
    spect_matrix: Annotated[int | None, typer.Option(
        help="SPECT in-plane matrix (default 128).")] = 128,
    deform_mm: Annotated[float, typer.Option(
        help="Amplitude of a smooth deformation between timepoints [mm] (0 = rigid).")] = 0.0,
    motion_scale: Annotated[float, typer.Option(
        help="Scale of the repositioning between timepoints (0 = none).")] = 1.0,
    activity_mbq: Annotated[float | None, typer.Option(
        "--injected-activity-mbq", help="Administered activity [MBq] (default: preset).")]
    = None,
    spect_model: Annotated[str, typer.Option(
        "--spect-model",
        help="SPECT simulation: image (blur and noise in image space, fast) or projection "
             "(projections with attenuation, scatter, collimator response and Poisson noise, "
             "reconstructed by OSEM; slower, realistic noise texture).")] = "image",
    overwrite: Annotated[bool, typer.Option(
        help="Replace an existing output folder.")] = False,
) -> None:
    """Make a multi-timepoint SPECT/CT digital patient with its ground truth."""
    from phantoms import GridSpec, PatientConfig, make_patient

    config = PatientConfig(
        preset=preset, timepoints_h=parse_hours(timepoints_h), seed=seed,
        output_format=output_format, n_lesions=lesions, head_neck=head_neck, counts=counts,
        grid=GridSpec(inplane_mm=ct_mm, slice_mm=slice_mm), spect_spacing_mm=spect_mm,
        spect_matrix=spect_matrix, deformation_mm=deform_mm, motion_scale=motion_scale,
        administered_activity_mbq=activity_mbq, spect_model=spect_model,
    )
    if head_neck is None and config.include_head_neck:
        out.print(f"note: preset {config.preset.value} includes the head and neck")
    with _progress() as bar:
        task = bar.add_task("starting", total=100)

        def update(stage: str, frac: float) -> None:
            bar.update(task, description=stage, completed=100 * frac)

        result = make_patient(out_dir, config, overwrite=overwrite, progress=update)
    study, truth = result.study, result.truth
    out.print(f"wrote {escape(str(result.out_dir))} ({len(result.files)} files, "
              f"{result.timings_s['total']:.1f} s)")
    out.print(f"  manifest  {escape(str(result.manifest))}: {study.nuclide} "
              f"{study.radiopharmaceutical}, {study.administered_activity_mbq:.0f} MBq, "
              f"patient {study.patient_id}, {truth['patient_weight_kg']} kg")
    table = Table("timepoint", "acquired", "SPECT", "in FOV [MBq]", "counts",
                  title="timepoints", title_justify="left")
    for tp, tt in zip(study.timepoints, truth["timepoints"], strict=True):
        table.add_row(tp.label, tp.acquisition_datetime.strftime("%Y-%m-%d %H:%M"),
                      str(tp.spect.path), f"{tt['total_in_fov_mbq']:.1f}",
                      f"{tt['spect']['total_counts']:.3g}")
    out.print(table)
    lesion_note = (f", {truth['anatomy']['lesions_placed']} of "
                   f"{truth['anatomy']['lesions_requested']} lesions placed")
    out.print(f"  truth     {escape(str(result.out_dir / 'truth'))}: truth.json, labels, "
              f"activity and TIA maps, transforms{lesion_note}")


@phantom_app.command("iec")
def iec_cmd(
    out_dir: Annotated[Path, typer.Argument(help="Output folder (must not exist or be empty).")],
    ratio: Annotated[float, typer.Option(help="Sphere-to-background concentration ratio.")]
    = 8.0,
    seed: Annotated[int, typer.Option(help="Seed of the noise.")] = 0,
    nuclide: Annotated[str, typer.Option(help="Lu-177 or I-131.")] = "Lu-177",
    background_kbq_per_ml: Annotated[float, typer.Option(
        help="Background concentration at the scan [kBq/mL].")] = 50.0,
    output_format: Annotated[str, typer.Option(
        "--format", help="Image format: nifti or dicom.")] = "nifti",
    counts: Annotated[bool, typer.Option(
        "--counts", help="Write SPECT as counts with a calibration factor.")] = False,
    ct_mm: Annotated[float, typer.Option(help="CT voxel size [mm].")] = 2.0,
    spect_mm: Annotated[float | None, typer.Option(help="SPECT voxel size [mm].")] = None,
    spect_model: Annotated[str, typer.Option(
        "--spect-model",
        help="SPECT simulation: image (blur and noise in image space, fast) or projection "
             "(projections with attenuation, scatter, collimator response and Poisson noise, "
             "reconstructed by OSEM; slower, realistic noise texture).")] = "image",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")]
    = False,
) -> None:
    """Make the IEC body phantom (six spheres) with CT, SPECT and truth."""
    from phantoms import IECConfig, make_iec

    config = IECConfig(ratio=ratio, background_kbq_per_ml=background_kbq_per_ml,
                       nuclide=nuclide, seed=seed, output_format=output_format, counts=counts,
                       ct_spacing_mm=ct_mm, spect_spacing_mm=spect_mm,
                       spect_model=spect_model)
    with _progress() as bar:
        task = bar.add_task("starting", total=100)

        def update(stage: str, frac: float) -> None:
            bar.update(task, description=stage, completed=100 * frac)

        result = make_iec(out_dir, config, overwrite=overwrite, progress=update)
    t = result.truth
    out.print(f"wrote {escape(str(result.out_dir))} ({len(result.files)} files, "
              f"{result.timings_s['total']:.1f} s): {t['nuclide']}, ratio {t['ratio']:g}, "
              f"background {t['background']['concentration_bq_per_ml'] / 1e3:g} kBq/mL")
    table = Table("sphere", "volume [mL]", "Bq/mL", title="spheres", title_justify="left")
    for s in t["spheres"]:
        table.add_row(s["name"], f"{s['volume_ml']:.3f}", f"{s['concentration_bq_per_ml']:.4g}")
    out.print(table)
