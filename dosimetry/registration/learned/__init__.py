"""The learned deformable registration: rigid pre-alignment + a 3D U-Net displacement field.

The model runs *after* the classical rigid stage (:func:`~dosimetry.registration.classical.
register_pair` with ``stages=(rigid,)``): the moving CT is resampled through the rigid transform
onto an 8 mm grid over the reference CT, and the network (:class:`~.network.RegUNet`) predicts
the residual displacement ``u`` so that ``T(x) = R(x + u(x))`` maps reference points to moving
points.

Weights are ours, trained reproducibly on digital patients by :func:`.train.train_registration`
(the command is in the model card ``weights/regunet_v1.json``). They are loaded with
``torch.load(weights_only=True)`` only after their SHA-256 matches the recorded one
(:data:`SHIPPED_SHA256` for the shipped file). Importing this package does not import torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dosimetry.errors import DependencyError, InputError
from dosimetry.registration.classical import body_mask, to_working, window, working_grid

#: Folder of the shipped weights and model cards.
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
#: The shipped model.
SHIPPED_NAME = "regunet_v1"
SHIPPED_WEIGHTS = WEIGHTS_DIR / f"{SHIPPED_NAME}.pt"
SHIPPED_CARD = WEIGHTS_DIR / f"{SHIPPED_NAME}.json"
#: SHA-256 of the shipped weight file, recorded when it was trained (also in the model card).
SHIPPED_SHA256 = "d707781072586b51575275e6a5f7d09483b88e46536e9dc2011c35bd6cfaf714"

#: Largest weight file accepted (the shipped one is ~160 kB).
MAX_WEIGHTS_BYTES = 16 * 2**20

#: Input conventions shared by training and inference.
INPUT_SPACING_MM = 8.0
INPUT_HU_WINDOW = (-1000.0, 1000.0)
PAD_MULTIPLE = 8


def sha256_of(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a core dependency
        raise DependencyError("the learned registration needs torch (pip install torch)") from exc
    return torch


@dataclass(frozen=True)
class ModelInputs:
    """Network inputs of one pair on the model grid.

    ``fixed`` and ``moving`` are (z, y, x) float32 arrays scaled to [−1, 1] (HU / 1000 in the
    input window); ``moving`` is already resampled through the rigid pre-alignment; ``mask`` is
    the reference body mask.
    """

    grid: sitk.Image
    fixed: np.ndarray
    moving: np.ndarray
    mask: np.ndarray


def model_inputs(fixed_ct: sitk.Image, moving_ct: sitk.Image, linear: sitk.Transform,
                 spacing_mm: float = INPUT_SPACING_MM,
                 hu_window: tuple[float, float] = INPUT_HU_WINDOW,
                 moving_work: sitk.Image | None = None) -> ModelInputs:
    """Prepare a pair for the network (the same function serves training and inference).

    Parameters
    ----------
    fixed_ct, moving_ct : SimpleITK.Image
        CTs [HU].
    linear : SimpleITK.Transform
        Rigid pre-alignment, reference point → moving point.
    moving_work : SimpleITK.Image, optional
        ``to_working(moving_ct, spacing_mm, -1000)`` when already computed (training reuses it).
    """
    lo, hi = hu_window
    fixed_w = window(to_working(fixed_ct, spacing_mm, -1000.0), lo, hi)
    grid = working_grid(fixed_ct, spacing_mm)
    if moving_work is None:
        moving_work = to_working(moving_ct, spacing_mm, -1000.0)
    f = sitk.GetArrayFromImage(fixed_w) * np.float32(1.0 / _hu_scale(hu_window))
    mask = sitk.GetArrayFromImage(body_mask(fixed_w, -400.0)) > 0
    return ModelInputs(grid=grid, fixed=f.astype(np.float32),
                       moving=moving_input(moving_work, grid, linear, hu_window), mask=mask)


def _hu_scale(hu_window: tuple[float, float]) -> float:
    return max(abs(hu_window[0]), abs(hu_window[1]))


def moving_input(moving_work: sitk.Image, grid: sitk.Image, linear: sitk.Transform,
                 hu_window: tuple[float, float] = INPUT_HU_WINDOW) -> np.ndarray:
    """The moving network input: working-resolution moving CT resampled through the rigid
    pre-alignment onto the model grid, windowed and scaled (z, y, x) float32."""
    lo, hi = hu_window
    pre = window(sitk.Resample(moving_work, grid, linear, sitk.sitkLinear, -1000.0,
                               sitk.sitkFloat32), lo, hi)
    return (sitk.GetArrayFromImage(pre) * np.float32(1.0 / _hu_scale(hu_window))).astype(
        np.float32)


def field_image(disp_index_mm: np.ndarray, grid: sitk.Image) -> sitk.Image:
    """Displacement image (vector float64) on ``grid`` from a (3, z, y, x) array whose channels
    are the components along the grid's index axes [mm]; converted to physical x, y, z with the
    direction cosines and rounded to 1 µm (keeps the ``.tfm`` text compact)."""
    d = np.asarray(grid.GetDirection(), float).reshape(3, 3)
    comps = np.moveaxis(disp_index_mm.astype(np.float64), 0, -1)  # (z, y, x, 3)
    phys = comps @ d.T
    img = sitk.GetImageFromArray(np.round(phys, 3), isVector=True)
    img.CopyInformation(grid)
    return img


class LearnedRegistration:
    """A loaded model, ready to predict (see :func:`load_model`)."""

    def __init__(self, net, card: dict[str, Any], path: Path, sha256: str, device) -> None:
        self.net = net
        self.card = card
        self.path = path
        self.sha256 = sha256
        self.device = device

    @property
    def spacing_mm(self) -> float:
        return float(self.card.get("input", {}).get("spacing_mm", INPUT_SPACING_MM))

    @property
    def hu_window(self) -> tuple[float, float]:
        w = self.card.get("input", {}).get("hu_window", INPUT_HU_WINDOW)
        return (float(w[0]), float(w[1]))

    def info(self) -> dict[str, Any]:
        """Identity of the model for fingerprints and reports."""
        return {"name": self.card.get("name", self.path.stem), "weights": self.path.name,
                "sha256": self.sha256}

    def predict_array(self, inputs: ModelInputs) -> np.ndarray:
        """Displacement (3, z, y, x) [mm, index-axis components] for prepared inputs."""
        torch = _torch()
        from dosimetry.registration.learned.network import crop, pad_to_multiple

        f = torch.from_numpy(inputs.fixed)[None, None].to(self.device)
        m = torch.from_numpy(inputs.moving)[None, None].to(self.device)
        f, size = pad_to_multiple(f, PAD_MULTIPLE)
        m, _ = pad_to_multiple(m, PAD_MULTIPLE)
        with torch.inference_mode():
            d = crop(self.net(f, m), size)
        return d[0].detach().cpu().numpy().astype(np.float64)

    def predict(self, fixed_ct: sitk.Image, moving_ct: sitk.Image, linear: sitk.Transform
                ) -> sitk.DisplacementFieldTransform:
        """The residual displacement ``u`` as a transform: compose as ``linear ∘ u``.

        Parameters
        ----------
        fixed_ct, moving_ct : SimpleITK.Image
            Reference and moving CT [HU].
        linear : SimpleITK.Transform
            The rigid pre-alignment (reference point → moving point).
        """
        inputs = model_inputs(fixed_ct, moving_ct, linear, self.spacing_mm, self.hu_window)
        disp = self.predict_array(inputs)
        return sitk.DisplacementFieldTransform(field_image(disp, inputs.grid))


def build_network(card: dict[str, Any]):
    """An untrained :class:`RegUNet` with the architecture of a model card."""
    from dosimetry.registration.learned.network import RegUNet

    arch = card.get("architecture", {})
    return RegUNet(tuple(arch.get("channels", (8, 16, 32, 32))),
                   float(arch.get("displacement_scale_mm", 10.0)))


def load_model(weights: str | os.PathLike[str] | None = None,
               expected_sha256: str | None = None, device: str = "cpu",
               card: str | os.PathLike[str] | None = None) -> LearnedRegistration:
    """Load the learned registration model after checking its SHA-256.

    Parameters
    ----------
    weights : path, optional
        Weight file (``state_dict`` saved by :func:`.train.train_registration`); default the
        shipped ``weights/regunet_v1.pt``.
    expected_sha256 : str, optional
        Required checksum. Default: :data:`SHIPPED_SHA256` for the shipped file; for another
        file, the ``sha256`` of its model card (``<weights stem>.json``) — which guards against
        corruption, not against someone who can rewrite both files.
    device : str
        Torch device (``cpu``, ``cuda``, ``cuda:0`` …).
    card : path, optional
        Model card; default ``<weights stem>.json`` beside the weights.

    Raises
    ------
    InputError
        Missing or oversized file, checksum mismatch (the file is refused, nothing is
        unpickled), missing card, or weights that do not fit the architecture.
    """
    torch = _torch()
    path = Path(weights) if weights is not None else SHIPPED_WEIGHTS
    card_path = Path(card) if card is not None else path.with_suffix(".json")
    if not path.is_file():
        raise InputError(f"{path}: learned registration weights not found"
                         + ("; train them with 'rptdose train registration'"
                            if weights is None else ""))
    size = path.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise InputError(f"{path}: weight file of {size} bytes exceeds the "
                         f"{MAX_WEIGHTS_BYTES} bytes accepted")
    if not card_path.is_file():
        raise InputError(f"{card_path}: model card of {path.name} not found")
    try:
        card_doc = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{card_path}: cannot read model card ({exc})") from None
    if expected_sha256 is None:
        if weights is None or path.resolve() == SHIPPED_WEIGHTS.resolve():
            expected_sha256 = SHIPPED_SHA256
        else:
            expected_sha256 = card_doc.get("sha256")
            if not expected_sha256:
                raise InputError(f"{card_path}: model card records no sha256 for {path.name}")
    actual = sha256_of(path)
    if actual != str(expected_sha256).lower():
        raise InputError(f"{path}: SHA-256 {actual} does not match the recorded "
                         f"{expected_sha256}; refusing to load these weights")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device {device!r} is not a torch device ({exc})") from None
    try:
        state = torch.load(path, map_location=dev, weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise InputError(f"{path}: cannot load weights ({type(exc).__name__}: {exc})") from None
    net = build_network(card_doc)
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, KeyError) as exc:
        raise InputError(f"{path}: weights do not fit the architecture of {card_path.name} "
                         f"({str(exc).splitlines()[0]})") from None
    net.to(dev).eval()
    return LearnedRegistration(net, card_doc, path, actual, dev)


__all__ = [
    "INPUT_HU_WINDOW",
    "INPUT_SPACING_MM",
    "SHIPPED_SHA256",
    "SHIPPED_WEIGHTS",
    "LearnedRegistration",
    "ModelInputs",
    "build_network",
    "field_image",
    "load_model",
    "model_inputs",
    "moving_input",
    "sha256_of",
]
