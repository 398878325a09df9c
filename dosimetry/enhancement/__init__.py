"""Image enhancement: an AI denoiser for low-count quantitative SPECT.

* :mod:`~dosimetry.enhancement.model` — the residual 3-D U-Net and its count-preserving output
  layer (torch kernels);
* :mod:`~dosimetry.enhancement.train` — seeded training on (low-count, reference) pairs of
  OSEM reconstructions, with augmentation;
* this module — the shipped weights (``weights/denoiser_spect.pt`` and its model card
  ``denoiser_spect.json``), their checked loading, and :func:`denoise` (image in, image out).

The weights are ours, trained on digital patients of :mod:`phantoms` simulated in projection
space and reconstructed with :mod:`dosimetry.reconstruction` (``rptdose train denoiser``; the
card records the command, the seeds, the data and the held-out figures). They are loaded with
``torch.load(weights_only=True)`` only after their SHA-256 matches :data:`SHIPPED_SHA256`
(shipped file) or the card's (a file the user trained). Importing this package does not
import torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dosimetry.devices import check_torch_device
from dosimetry.errors import InputError

__all__ = [
    "DENOISER_MODEL",
    "SHIPPED_SHA256",
    "WEIGHTS_DIR",
    "DenoiseResult",
    "DenoiserChecksumError",
    "LoadedDenoiser",
    "denoise",
    "load_model",
    "save_model",
]

#: Folder of the shipped weights and model card.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: File stem of the shipped denoiser (``.pt`` weights, ``.json`` model card).
DENOISER_MODEL = "denoiser_spect"
#: Format of the model card; bump when the input convention or the network change.
FORMAT_VERSION = 1
#: SHA-256 of the shipped weight file (``weights/README.md`` records how it was made).
SHIPPED_SHA256: dict[str, str] = {
    "denoiser_spect.pt": "39931c1a025245d1e6d8055b85cf1a318b1b1814b0f0d75628581549d423da3f",
}


class DenoiserChecksumError(InputError):
    """A weights file does not have the SHA-256 recorded for it."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fp:
        for chunk in iter(lambda: fp.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class LoadedDenoiser:
    """A denoiser ready for inference: torch module (eval mode), model card, device."""

    module: Any
    card: dict[str, Any]
    sha256: str
    path: Path
    device: str

    @property
    def spacing_mm(self) -> tuple[float, float]:
        """Range of voxel sizes [mm] the network was trained on."""
        lo, hi = self.card.get("spacing_mm_range", (0.0, float("inf")))
        return float(lo), float(hi)


@dataclass(frozen=True, eq=False)
class DenoiseResult:
    """A denoised image and what was done to it.

    Attributes
    ----------
    image : SimpleITK.Image
        Denoised image, same grid and units as the input (float32).
    total_in, total_out : float
        Sum of the voxels (input unit × voxel) before and after; equal to float rounding.
    model : str
        Model name and the first 12 hex digits of its SHA-256.
    warnings : tuple of str
        Announced conditions (e.g. a voxel size outside the training range).
    """

    image: sitk.Image
    total_in: float
    total_out: float
    model: str
    warnings: tuple[str, ...] = field(default=())


def save_model(net, path: str | os.PathLike[str], card: dict[str, Any]) -> tuple[Path, Path]:
    """Write the state dict (float32, atomically) and its model card beside it.

    The card gets ``weights_file``, ``sha256``, ``format`` and ``architecture`` filled in.
    Returns the weights and card paths.
    """
    import io

    import torch

    from dosimetry.io.atomic import atomic_write_bytes, atomic_write_text

    path = Path(path)
    state = {k: v.detach().to("cpu").float().contiguous() for k, v in net.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    raw = buf.getvalue()
    atomic_write_bytes(path, raw)
    full = {**card, "name": path.stem, "format": FORMAT_VERSION, "weights_file": path.name,
            "sha256": hashlib.sha256(raw).hexdigest(),
            "architecture": net.config.to_dict(), "torch_version": torch.__version__}
    card_path = path.with_suffix(".json")
    atomic_write_text(card_path, json.dumps(full, indent=2, ensure_ascii=False,
                                            allow_nan=False) + "\n")
    return path, card_path


def load_model(path: str | os.PathLike[str] | None = None, device: str = "cpu", *,
               expected_sha256: str | None = None) -> LoadedDenoiser:
    """Load the denoiser (the shipped one unless ``path`` names a ``.pt`` with its card).

    ``expected_sha256`` overrides the recorded checksum (the training recipe checks the file
    it has just written against the digest it computed, before that file is pinned).

    Raises
    ------
    InputError
        Weights or card missing or malformed, or weights that do not fit the card.
    DenoiserChecksumError
        The SHA-256 of the weights differs from the recorded one (shipped: this module's
        table; otherwise the card's).
    """
    import torch

    from dosimetry.enhancement.model import DenoiserConfig, build_denoiser

    dev = check_torch_device(device)
    wpath = Path(path) if path is not None else WEIGHTS_DIR / f"{DENOISER_MODEL}.pt"
    cpath = wpath.with_suffix(".json")
    if not wpath.is_file():
        raise InputError(f"{wpath}: denoiser weights not found (train them with `rptdose "
                         "train denoiser`)")
    if not cpath.is_file():
        raise InputError(f"{cpath}: model card of {wpath.name} not found")
    try:
        card = json.loads(cpath.read_text(encoding="utf-8"))
        config = DenoiserConfig.from_dict(card["architecture"])
        recorded = str(card["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{cpath}: not a valid denoiser model card ({type(exc).__name__}: "
                         f"{exc})") from None
    if card.get("format") != FORMAT_VERSION:
        raise InputError(f"{cpath}: card format {card.get('format')!r}, expected "
                         f"{FORMAT_VERSION}; retrain with `rptdose train denoiser`")
    shipped = wpath.resolve().parent == WEIGHTS_DIR and wpath.name in SHIPPED_SHA256
    expected = expected_sha256 or (SHIPPED_SHA256.get(wpath.name) if shipped else None) \
        or recorded
    actual = sha256_file(wpath)
    if actual != expected:
        raise DenoiserChecksumError(
            f"{wpath}: SHA-256 {actual} does not match the recorded {expected}; the file was "
            "changed or damaged, refusing to load it (retrain with `rptdose train denoiser` "
            "or restore the file)")
    try:
        state = torch.load(wpath, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises various errors on damaged or unsafe files
        raise InputError(f"{wpath}: cannot load weights ({type(exc).__name__}: {exc})"
                         ) from None
    net = build_denoiser(config, "cpu")
    try:
        net.load_state_dict(state)
    except (RuntimeError, KeyError) as exc:
        raise InputError(f"{wpath}: weights do not fit the architecture in the card ({exc})"
                         ) from None
    net.eval()
    net.to(dev)
    return LoadedDenoiser(module=net, card=card, sha256=actual, path=wpath, device=dev)


def denoise(image: sitk.Image, model: LoadedDenoiser | None = None, *, device: str = "cpu"
            ) -> DenoiseResult:
    """Denoise a quantitative SPECT image (Bq/mL or counts), preserving its counts.

    Parameters
    ----------
    image : SimpleITK.Image
        OSEM reconstruction, 3-D, non-negative (negative voxels are taken as 0).
    model : LoadedDenoiser, optional
        Default: the shipped model on ``device``.
    device : str
        Torch device when the model is loaded here.

    Returns
    -------
    DenoiseResult
        The image on the same grid; its total equals the input's (negatives clipped) to float
        rounding, and activity moves by no more than about the count-preserving σ.

    Warns
    -----
    UserWarning
        When the voxel size is outside the training range (the noise texture the network
        learned is then at another scale); the result is still computed.
    """
    import torch

    from dosimetry.enhancement.model import denoise_tensor

    if image.GetDimension() != 3:
        raise InputError(f"denoise: need a 3-D image, got {image.GetDimension()}-D")
    model = model or load_model(device=device)
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"denoise: {int((~np.isfinite(arr)).sum())} voxels are NaN or inf")
    notes = []
    sp = image.GetSpacing()
    lo, hi = model.spacing_mm
    if not all(lo * 0.8 <= s <= hi * 1.25 for s in sp):
        msg = (f"voxel size {tuple(round(s, 2) for s in sp)} mm is outside the denoiser's "
               f"training range {lo:g}–{hi:g} mm; its noise model may not fit this image")
        warnings.warn(msg, UserWarning, stacklevel=2)
        notes.append(msg)
    np.maximum(arr, 0.0, out=arr)
    x = torch.from_numpy(arr)[None, None].to(model.device)
    with torch.no_grad():
        y = denoise_tensor(model.module, x, (sp[2], sp[1], sp[0]))
    out_arr = y[0, 0].to("cpu").numpy().astype(np.float32)
    out = sitk.GetImageFromArray(out_arr)
    out.CopyInformation(image)
    return DenoiseResult(image=out, total_in=float(arr.sum(dtype=np.float64)),
                         total_out=float(out_arr.sum(dtype=np.float64)),
                         model=f"{model.card.get('name', DENOISER_MODEL)} "
                               f"(sha256 {model.sha256[:12]})",
                         warnings=tuple(notes))
