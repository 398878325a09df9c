"""``rptdose recon``: quantitative SPECT reconstruction of raw projections.

Thin layer: parse, read the projections (:func:`dosimetry.reconstruction.read_projections`),
call :func:`dosimetry.reconstruction.reconstruct` under a progress bar, write the image and its
metadata atomically, print a summary. Registered in ``cli/main.py`` as
``app.command("recon")(recon_cmd)``. Errors are :class:`dosimetry.errors.RptdoseError`
subclasses, which the main entry point turns into one line.
"""

from __future__ import annotations

import json
import warnings
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from dosimetry.errors import InputError

__all__ = ["recon_cmd"]

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class DeviceChoice(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"


class ScatterChoice(StrEnum):
    TEW = "tew"
    NONE = "none"


class StitchChoice(StrEnum):
    MIDPOINT = "midpoint"
    LINEAR = "linear"


def _metadata_path(output: Path) -> Path:
    name = output.name
    for suffix in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd"):
        if name.lower().endswith(suffix):
            return output.with_name(name[: -len(suffix)] + ".json")
    return output.with_name(name + ".json")


def recon_cmd(
    nm_dicom: Annotated[Path, typer.Argument(
        help="Raw NM projection file, or a folder: every raw tomographic NM series in it is a "
             "bed position.")],
    ct: Annotated[Path | None, typer.Option(
        "--ct", help="CT of the SPECT/CT (DICOM folder or image file, HU) for attenuation "
                     "correction.")] = None,
    output: Annotated[Path, typer.Option(
        "-o", "--output", help="Image to write (.nii.gz, .mha, …); its metadata goes beside it "
                               "as .json.")] = Path("spect.nii.gz"),
    calibration_cps_per_mbq: Annotated[float | None, typer.Option(
        help="Camera sensitivity in the photopeak window [cps/MBq]: output in Bq/mL "
             "(else counts per view).")] = None,
    iterations: Annotated[int, typer.Option(help="OSEM iterations.", min=1, max=1000)] = 4,
    subsets: Annotated[int | None, typer.Option(
        help="OSEM subsets (default: 6 views per subset, e.g. 10 for 60 views).", min=1)] = None,
    device: Annotated[DeviceChoice, typer.Option(help="Torch device.")] = DeviceChoice.CPU,
    psf: Annotated[bool, typer.Option(
        "--psf/--no-psf", help="Model the collimator-detector response.")] = True,
    attenuation: Annotated[bool, typer.Option(
        "--attenuation/--no-attenuation", help="Attenuation correction from the CT.")] = True,
    scatter: Annotated[ScatterChoice, typer.Option(
        help="Scatter estimate: tew (triple energy window) or none.")] = ScatterChoice.TEW,
    collimator: Annotated[str | None, typer.Option(
        help="Collimator code of PyTomography's table (e.g. G8-MEGP, SY-ME) overriding the "
             "header's.")] = None,
    nuclide: Annotated[str | None, typer.Option(
        help="Nuclide, when the header does not name it (picks the photopeak window).")] = None,
    intrinsic_fwhm_mm: Annotated[float, typer.Option(
        help="Intrinsic camera resolution at 140 keV [mm FWHM].", min=0.0)] = 3.8,
    stitching: Annotated[StitchChoice, typer.Option(
        help="Bed overlap: midpoint (each bed its nearer half) or linear (weighted mean).")]
    = StitchChoice.MIDPOINT,
) -> None:
    """Reconstruct raw SPECT projections (OSEM, attenuation, TEW scatter, collimator response,
    bed stitching) into one image in the CT's frame of reference."""
    from dosimetry import units
    from dosimetry.io.atomic import atomic_write_text
    from dosimetry.io.images import write_image
    from dosimetry.reconstruction import read_projections, reconstruct

    if calibration_cps_per_mbq is not None and not calibration_cps_per_mbq > 0:
        raise typer.BadParameter(f"must be > 0, got {calibration_cps_per_mbq}",
                                 param_hint="--calibration-cps-per-mbq")
    if attenuation and ct is None:
        raise InputError("attenuation correction needs the CT: give --ct CT_DIR (or "
                         "--no-attenuation)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ps = read_projections(nm_dicom, nuclide=nuclide)
        for i, bed in enumerate(ps.beds):
            out.print(f"bed {i + 1}: {escape(bed.describe())}")
        bar = Progress(TextColumn("{task.description:<46}"), BarColumn(),
                       TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                       console=out, transient=True)
        with bar:
            task = bar.add_task("reconstruction", total=1.0)

            def update(step: str, frac: float) -> None:
                bar.update(task, completed=frac, description=step[:46])

            res = reconstruct(
                ps, ct if attenuation else None, iterations=iterations, subsets=subsets,
                calibration_cps_per_mbq=calibration_cps_per_mbq, scatter=scatter.value,
                psf=psf, attenuation=attenuation, device=device.value, progress=update,
                collimator=collimator, intrinsic_fwhm_mm_140kev=intrinsic_fwhm_mm,
                stitching=stitching.value)
    write_image(res.image, output)
    meta = res.to_dict()
    meta["source"] = [str(p) for p in ps.files]
    meta_path = _metadata_path(output)
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")

    size = res.image.GetSize()
    sp = res.image.GetSpacing()
    org = res.image.GetOrigin()
    corrections = ", ".join(c for c, on in (("attenuation", res.attenuation),
                                             (f"scatter {res.scatter.value}",
                                              res.scatter.value != "none"),
                                             ("collimator response", res.psf is not None)) if on)
    out.print(f"OSEM {res.iterations} iterations × {res.subsets} subsets, "
              f"{corrections or 'no corrections'}; photopeak "
              f"{escape(res.photopeak_window.describe())}")
    if res.psf is not None:
        out.print(f"collimator: {escape(res.psf.describe())}")
    out.print(f"{escape(res.stitching)}; {res.seconds:.0f} s on {res.device}")
    out.print(f"image {size[0]}×{size[1]}×{size[2]} voxels of "
              f"{sp[0]:.4g}×{sp[1]:.4g}×{sp[2]:.4g} mm, origin "
              f"({org[0]:.1f}, {org[1]:.1f}, {org[2]:.1f}) mm, in {res.units.value}"
              + (" (counts per view)" if res.units.value == "counts" else ""))
    total = res.total_activity_mbq()
    if total is not None:
        out.print(f"total activity in the field of view: {total:.1f} MBq "
                  f"({units.mbq_to_bq(total) / 1e9:.3f} GBq) at "
                  f"{res.calibration_cps_per_mbq:g} cps/MBq")
    seen = set()
    for m in [*res.notes, *(str(w.message) for w in caught)]:
        if m not in seen:
            seen.add(m)
            err.print("[yellow]note:[/yellow] " + escape(m))
    out.print(f"wrote {escape(str(output))} and {escape(str(meta_path))}")
