"""``rptdose kernel make`` and ``rptdose dose``: dose voxel kernels and dose maps.

Thin layer: parse options, call :func:`dosimetry.dose.kernels.make_kernel` or
:func:`dosimetry.dose.engines.compute_dose`, show progress, print what was written. Bad values
raise :class:`dosimetry.errors.InputError` (the main entry point turns it into one line and exit
status 1).

Registered in ``cli/main.py`` as::

    from cli.dose import dose_cmd, kernel_app
    app.add_typer(kernel_app, name="kernel")
    app.command("dose")(dose_cmd)

``dose_app`` bundles both for stand-alone use and tests.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dosimetry.errors import InputError

__all__ = ["DeviceChoice", "TiaUnit", "dose_app", "dose_cmd", "kernel_app", "kernel_make_cmd",
           "train_dose_cmd"]

kernel_app = typer.Typer(
    help="Dose voxel kernels (voxel S-values) made by rptdose's Monte Carlo.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
dose_app = typer.Typer(
    help="Dose voxel kernels and absorbed-dose maps.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

out = Console(highlight=False, soft_wrap=True)


class TiaUnit(StrEnum):
    """Unit of the TIA image's voxel values."""

    BQ_S = "bq-s"
    MBQ_H = "mbq-h"


class DeviceChoice(StrEnum):
    """Where the Monte Carlo runs."""

    CPU = "cpu"
    CUDA = "cuda"


class EngineChoice(StrEnum):
    """Dose engine (mirrors :class:`dosimetry.dose.engines.DoseEngine`)."""

    LED = "led"
    DVK = "dvk"
    MC = "mc"
    DEEP = "deep"
    GATE = "gate"


def parse_voxel_mm(text: str) -> tuple[float, float, float]:
    """``"4.8"`` → (4.8, 4.8, 4.8); ``"4.8,4.8,5"`` → (4.8, 4.8, 5.0) (x, y, z)."""
    parts = [p.strip() for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        vals = tuple(float(p) for p in parts)
    except ValueError:
        raise InputError(f"--voxel-mm {text!r}: give one size or x,y,z sizes in mm") from None
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3 or not all(v > 0 for v in vals):
        raise InputError(f"--voxel-mm {text!r}: give one size or three sizes > 0 mm")
    return vals  # type: ignore[return-value]


def _progress(description: str) -> tuple[Progress, object]:
    progress = Progress(TextColumn(f"{description:<22}"), BarColumn(),
                        TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=out, transient=True)
    task = progress.add_task(description, total=1)
    return progress, task


def _callback(progress: Progress, task):
    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    return update


@kernel_app.command("make")
def kernel_make_cmd(
    nuclide: Annotated[str, typer.Option(help="Nuclide, e.g. Lu-177 or I-131.")],
    voxel_mm: Annotated[str, typer.Option(
        "--voxel-mm", help="Voxel size [mm]: one value, or x,y,z.")],
    output: Annotated[Path, typer.Option(
        "-o", "--output", help="Kernel image to write (.nii.gz/.mha/.nrrd); a .json sidecar "
        "and a .sigma image are written beside it.")],
    material: Annotated[str, typer.Option(
        help="Medium: soft-tissue-icru, soft-tissue-icrp, water, lung, adipose, "
             "cortical-bone, air.")] = "soft-tissue-icru",
    size: Annotated[int, typer.Option(help="Kernel edge in voxels (odd).")] = 11,
    emissions: Annotated[str, typer.Option(
        help="Radiations: comma-separated beta, ic, auger, gamma, x (or all).")]
    = "beta,ic,auger,gamma,x",
    decays: Annotated[int, typer.Option(help="Decays to simulate.", min=1)] = 1_000_000,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same kernel.",
                                      min=0)] = 0,
    device: Annotated[DeviceChoice, typer.Option(help="cpu or cuda.")] = DeviceChoice.CPU,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Neither read nor store the kernel cache.")] = False,
) -> None:
    """Make a dose voxel kernel [mGy/(MBq·s)] by Monte Carlo in a homogeneous medium."""
    from dosimetry.dose.kernels import make_kernel, write_kernel

    voxel = parse_voxel_mm(voxel_mm)
    progress, task = _progress("kernel Monte Carlo")
    with progress:
        kernel = make_kernel(nuclide, voxel, material, size, emissions, decays, seed=seed,
                             device=device.value, cache=not no_cache,
                             progress=_callback(progress, task))
    write_kernel(kernel, output)
    m = kernel.metadata
    rel = m.get("centre_relative_uncertainty")
    rel_txt = f" ± {100 * rel:.2f} %" if rel is not None else ""
    out.print(
        f"wrote {output}: {m.get('nuclide')} {size}³ kernel, "
        f"{'×'.join(f'{v:g}' for v in voxel)} mm, {m.get('material', {}).get('name')}, "
        f"{','.join(m.get('emissions', []))}; centre {m.get('centre_value', 0):.4g} "
        f"mGy/(MBq·s){rel_txt}; {m.get('n_decays')} decays"
    )


def _sidecar(path: Path, tag: str) -> Path:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd"):
        if name.endswith(suffix):
            return path.with_name(name[: -len(suffix)] + tag + suffix)
    return path.with_name(name + tag)


def _json_path(path: Path) -> Path:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd"):
        if name.endswith(suffix):
            return path.with_name(name[: -len(suffix)] + ".json")
    return path.with_name(name + ".json")


def dose_cmd(
    tia_image: Annotated[Path, typer.Argument(
        help="Time-integrated activity map: decays per voxel [Bq·s] (or MBq·h with "
             "--tia-unit mbq-h).")],
    nuclide: Annotated[str, typer.Option(help="Nuclide, e.g. Lu-177 or I-131.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Dose map to write [Gy].")],
    ct: Annotated[Path | None, typer.Option(
        help="CT [HU] for densities and materials (resampled to the TIA grid if needed).")]
    = None,
    engine: Annotated[EngineChoice, typer.Option(
        help="led (local deposition), dvk (kernel convolution), mc (Monte Carlo), deep "
             "(DVK corrected by a CNN ensemble trained on MC) or gate (GATE 10; needs its "
             "Geant4 data, see `rptdose mc g4-data`; more options in `rptdose mc gate`).")]
    = EngineChoice.DVK,
    decays: Annotated[int, typer.Option(
        help="Decays: simulated by mc, or for a dvk kernel not yet cached.", min=1)]
    = 1_000_000,
    emissions: Annotated[str, typer.Option(
        help="Radiations: comma-separated beta, ic, auger, gamma, x (or all).")] = "all",
    device: Annotated[DeviceChoice, typer.Option(help="cpu or cuda (mc, deep, kernels).")]
    = DeviceChoice.CPU,
    tia_unit: Annotated[TiaUnit, typer.Option(help="Unit of the TIA voxel values.")]
    = TiaUnit.BQ_S,
    seed: Annotated[int, typer.Option(help="Seed of the Monte Carlo.", min=0)] = 0,
    include_photons: Annotated[bool, typer.Option(
        help="led: deposit photon energy locally too.")] = False,
    kernel: Annotated[Path | None, typer.Option(
        help="dvk: kernel image [mGy/(MBq·s)] to use instead of the cache.")] = None,
    weights: Annotated[Path | None, typer.Option(
        help="deep: weight file to use instead of the shipped one.")] = None,
    far_field: Annotated[bool, typer.Option(
        "--far-field/--no-far-field",
        help="dvk, deep: add the photon dose absorbed beyond the kernel's cube (far-field "
             "photon point kernel of our MC).")] = True,
) -> None:
    """Absorbed-dose map [Gy] from a TIA map with the LED, DVK, Monte Carlo or deep engine.

    Writes the dose image, a JSON sidecar with the engine's metadata and, for mc and deep,
    the uncertainty (1σ, Gy; statistical for mc, calibrated model error for deep) as
    <name>.sigma.<ext>.
    """
    import SimpleITK as sitk

    from dosimetry.dose.engines import compute_dose
    from dosimetry.dose.kernels import read_kernel
    from dosimetry.io.atomic import atomic_write_text
    from dosimetry.io.images import read_image, write_image
    from dosimetry.units import mbq_h_to_bq_s

    tia = read_image(tia_image)
    if tia_unit is TiaUnit.MBQ_H:
        tia = sitk.Cast(tia, sitk.sitkFloat64) * mbq_h_to_bq_s(1.0)
    ct_img = read_image(ct) if ct is not None else None
    options: dict = {"emissions": emissions}
    if engine is EngineChoice.LED:
        options["include_photons"] = include_photons
    elif engine is EngineChoice.DVK:
        options.update(seed=seed, device=device.value, kernel_decays=decays,
                       far_field=far_field)
        if kernel is not None:
            options["kernel"] = read_kernel(kernel)
    elif engine is EngineChoice.DEEP:
        options.update(seed=seed, device=device.value, kernel_decays=decays,
                       far_field=far_field)
        if weights is not None:
            if not weights.is_file():
                raise InputError(f"--weights {weights}: no such file")
            options["weights"] = str(weights)
    elif engine is EngineChoice.GATE:
        options = {"seed": seed, "n_decays": decays}  # ion source: every emission
    else:
        options.update(seed=seed, device=device.value, n_decays=decays)
    if engine is EngineChoice.MC:
        progress, task = _progress("dose Monte Carlo")
        with progress:
            result = compute_dose(engine.value, tia, nuclide, ct_img,
                                  progress=_callback(progress, task), **options)
    else:
        result = compute_dose(engine.value, tia, nuclide, ct_img, **options)
    write_image(result.dose, output)
    written = [str(output)]
    if result.uncertainty is not None:
        sig = _sidecar(output, ".sigma")
        write_image(result.uncertainty, sig)
        written.append(str(sig))
    meta_path = _json_path(output)
    atomic_write_text(meta_path, json.dumps(
        {**result.to_dict(), "tia_image": str(tia_image), "tia_unit": tia_unit.value,
         "ct": str(ct) if ct else None}, indent=1, default=str))
    written.append(str(meta_path))
    arr = sitk.GetArrayViewFromImage(result.dose)
    out.print(
        f"{engine.value}: {result.nuclide} ({','.join(e.value for e in result.emissions)}), "
        f"max {float(arr.max()):.4g} Gy; wrote {', '.join(written)}"
    )


def train_dose_cmd(
    nuclide: Annotated[str, typer.Option(help="Lu-177 or I-131.")],
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Weight file (default: the shipped one for the nuclide); a "
                               ".json with the training record is written beside it.")] = None,
    work: Annotated[Path | None, typer.Option(
        help="Folder for the training patches and MC targets (kept; reused when present). "
             "Default: <cache>/deepdose/<nuclide>.")] = None,
    patients: Annotated[int, typer.Option(help="Training digital patients.", min=1)] = 24,
    heldout_patients: Annotated[int, typer.Option(
        help="Held-out digital patients (half calibrate σ, half test).", min=2)] = 6,
    patches_per_patient: Annotated[int, typer.Option(min=1)] = 6,
    patch_size: Annotated[int, typer.Option(help="Patch edge (voxels).", min=16)] = 32,
    decays: Annotated[int, typer.Option(help="MC decays per patch.", min=1000)] = 2_000_000,
    steps: Annotated[int, typer.Option(help="Optimiser steps per member.", min=1)] = 2000,
    members: Annotated[int, typer.Option(help="Ensemble members.", min=1)] = 4,
    device: Annotated[DeviceChoice, typer.Option(help="cpu or cuda (MC and training).")]
    = DeviceChoice.CPU,
    seed: Annotated[int, typer.Option(help="Seed of the patches and of the training.",
                                      min=0)] = 0,
) -> None:
    """Train the deep dose engine on fast-MC dose of digital-patient patches (reproducible).

    Patients 710000+ (Lu-177) or 720000+ (I-131) train, the block 1000 higher is held out
    (+100 per --seed); patch positions are drawn from the first patient seed of each block.
    """
    import os

    from dosimetry.dose.deep import weights_path
    from dosimetry.dose.deep.build import build_model
    from dosimetry.dose.deep.train import TrainSettings
    from dosimetry.dose.kernels import kernel_cache_dir
    from phantoms.dose_data import DosePatchConfig, canonical_nuclide, make_dose_patches

    nuc = canonical_nuclide(nuclide)
    base = {"Lu-177": 710000, "I-131": 720000}.get(nuc)
    if base is None:
        raise InputError(f"--nuclide {nuclide}: deep dose training supports Lu-177 and I-131")
    base += 100 * seed
    target = output or weights_path(nuc)
    work = work or kernel_cache_dir().parent / "deepdose" / nuc
    folders = {"train": (work / "train", tuple(range(base, base + patients))),
               "heldout": (work / "heldout",
                           tuple(range(base + 1000, base + 1000 + heldout_patients)))}
    for name, (folder, seeds) in folders.items():
        if (folder / "index.json").is_file():
            out.print(f"reusing the {name} patches in {folder}")
            continue
        cfg = DosePatchConfig(nuclide=nuc, patient_seeds=seeds, patch_size=patch_size,
                              patches_per_patient=patches_per_patient, seed=seeds[0])
        progress, task = _progress(f"{name} patches")
        with progress:
            make_dose_patches(folder, cfg, progress=_callback(progress, task))
    settings = TrainSettings(members=members, steps=steps, seed=seed)
    command = (f"rptdose train dose --nuclide {nuc} --patients {patients} --heldout-patients "
               f"{heldout_patients} --patches-per-patient {patches_per_patient} --patch-size "
               f"{patch_size} --decays {decays} --steps {steps} --members {members} "
               f"--device {device.value} --seed {seed}")
    meta = build_model(folders["train"][0], folders["heldout"][0], target, settings=settings,
                       device=device.value, n_decays=decays, command=command,
                       log=lambda msg: out.print(msg))
    reg = meta["heldout_metrics"]["regions"]
    summary = ", ".join(f"{r} deep {100 * v['deep'].get('mean', float('nan')):+.1f} % vs dvk "
                        f"{100 * v['dvk'].get('mean', float('nan')):+.1f} %"
                        for r, v in reg.items() if v["deep"].get("n"))
    out.print(f"wrote {target} ({os.path.getsize(target) / 1e6:.1f} MB); held-out mean-dose "
              f"error {summary}")


dose_app.add_typer(kernel_app, name="kernel")
dose_app.command("dose")(dose_cmd)
