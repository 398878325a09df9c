"""``rptdose denoise`` and ``rptdose train denoiser``.

Thin layer: parse, call :func:`dosimetry.enhancement.denoise` /
:func:`phantoms.denoise_data.build_denoiser`, print. Register with
``app.command("denoise")(denoise_cmd)`` and, under the ``train`` sub-app,
``train_app.command("denoiser")(train_denoiser_cmd)``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def denoise_cmd(
    spect: Annotated[Path, typer.Argument(help="SPECT image (NIfTI/MHD/NRRD), Bq/mL or counts.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Denoised image to write.")],
    device: Annotated[str, typer.Option(help="Torch device: cpu, cuda, cuda:1 …")] = "cpu",
    weights: Annotated[Path | None, typer.Option(
        help="Weights (.pt with its .json card) of a denoiser you trained; default the "
             "shipped one.")] = None,
) -> None:
    """Denoise a low-count quantitative SPECT image; the total activity is preserved."""
    from dosimetry.enhancement import denoise, load_model
    from dosimetry.io.images import read_image, write_image

    image = read_image(spect)
    model = load_model(weights, device=device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = denoise(image, model)
    write_image(result.image, output)
    for m in dict.fromkeys([*result.warnings, *(str(w.message) for w in caught)]):
        err.print("[yellow]warning:[/yellow] " + escape(m))
    change = (result.total_out / result.total_in - 1.0) if result.total_in > 0 else 0.0
    out.print(f"wrote {escape(str(output))} (model {escape(result.model)}; image total "
              f"{result.total_in:.6g} → {result.total_out:.6g}, {100 * change:+.4f} %)")


def train_denoiser_cmd(
    seed: Annotated[int, typer.Option(help="Seed of the training (and of the patient "
                                           "blocks: +100 per seed).", min=0)] = 0,
    epochs: Annotated[int, typer.Option(help="Training epochs.", min=1)] = 16,
    steps_per_epoch: Annotated[int, typer.Option(help="Optimiser steps per epoch.", min=1)]
    = 25,
    patients: Annotated[int, typer.Option(help="Training digital patients.", min=1)] = 6,
    heldout_patients: Annotated[int, typer.Option(
        help="Held-out digital patients (the first 3 validate, the others test).", min=1)]
    = 6,
    work: Annotated[Path | None, typer.Option(
        help="Folder for the simulated samples (kept and reused). Default: "
             "<cache>/denoiser.")] = None,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Weight file (default: the shipped one); its model card "
                               "(.json) is written beside it.")] = None,
    device: Annotated[str, typer.Option(help="Torch device for simulation and training.")]
    = "cpu",
) -> None:
    """Train the SPECT denoiser on digital patients simulated in projection space (seeded).

    Patients 730000+ train, 731000+ are held out (organ activity bias); an IEC phantom at a
    low count level gives recovery and background variability before and after.
    """
    from dosimetry.dose.kernels import kernel_cache_dir
    from dosimetry.enhancement import DENOISER_MODEL, WEIGHTS_DIR
    from dosimetry.enhancement.train import TrainSettings
    from phantoms.denoise_data import build_denoiser

    target = output or WEIGHTS_DIR / f"{DENOISER_MODEL}.pt"
    work = work or kernel_cache_dir().parent / "denoiser"
    settings = TrainSettings(seed=seed, epochs=epochs, steps_per_epoch=steps_per_epoch)
    command = (f"rptdose train denoiser --seed {seed} --epochs {epochs} --steps-per-epoch "
               f"{steps_per_epoch} --patients {patients} --heldout-patients {heldout_patients} "
               f"--device {device}")
    card = build_denoiser(work, target, settings=settings, n_patients=patients,
                          n_heldout=heldout_patients, device=device, command=command,
                          log=lambda msg: out.print(escape(msg)))
    bias = card["evaluation"]["organ_bias"]
    organs = (bias.get("test") or bias["validation"])["organs"]
    summary = ", ".join(f"{o} {v['den_vs_in']['mean_percent']:+.2f} % (worst "
                        f"{v['den_vs_in']['worst_percent']:+.2f} %)" for o, v in organs.items())
    which = "test" if bias.get("test") else "validation"
    out.print(f"wrote {escape(str(target))} (sha256 {card['sha256'][:12]}…); held-out "
              f"({which}) organ activity change by denoising: {summary}")
