"""The built-in organ model: a small 3D U-Net on CT, run on a coarse grid.

Pipeline of :func:`segment_organs`: the CT (HU) is smoothed and resampled onto an isotropic
working grid (the model's ``spacing_mm``, 6 mm for the shipped model; :mod:`~dosimetry.
segmentation.grid`) with axes along the patient's L, P, S whatever the file's voxel order,
cropped to the box of everything denser than air (:func:`body_box`), turned into the model's
input channels (:func:`model_inputs`: two CT windows, :func:`ct_channels`, and, for models whose
card says ``in_channels`` 5, three body-relative position channels, :func:`coord_channels`,
which tell the network where in the body, and on which side, a voxel lies), and passed through
the U-Net in one piece. The class
probabilities are resampled linearly onto the CT grid and the label of a voxel is their arg-max;
each organ then keeps its largest connected component.

The weights are ours, trained on digital patients by
:func:`dosimetry.segmentation.train.train_segmentation`; their model card (JSON beside the
weights) records how. Weights are loaded with ``torch.load(weights_only=True)`` after their
SHA-256 checksum has been compared with the one recorded in this module (shipped weights) or
in the card (weights the user trained): a file that does not match is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dosimetry.devices import check_torch_device
from dosimetry.errors import InputError
from dosimetry.segmentation.grid import argmax_upsampled, resample_to, working_grid
from dosimetry.segmentation.labelmap import LabelEntry, LabelMap, LabelTable, label_image
from dosimetry.segmentation.names import StructureKind

#: Folder of the shipped weights and model cards.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: File stem of the shipped organ model (``.pt`` weights, ``.json`` model card).
ORGAN_MODEL = "organs_ct_unet"
#: SHA-256 of the shipped weight files, recorded when they were trained (see the model cards).
SHIPPED_SHA256: dict[str, str] = {
    "lesions_spect_unet.pt": "6a8da3360132116298031b7024958514f3a01d2cca69dfd0ff181be44f83d033",
    "organs_ct_unet.pt": "71317109c5cad686d21038d8cc1a701ab85f7e37d04d0f70d8160cbb99c61f20",
}

ProgressFn = Callable[[str, float], None]


class WeightsChecksumError(InputError):
    """A weights file does not have the SHA-256 checksum recorded for it."""


@dataclass(frozen=True)
class ModelCard:
    """What a weights file is: architecture, classes, input convention, provenance, figures.

    Written as JSON beside the weights (``<stem>.json``) by the training function.
    """

    name: str
    weights_file: str
    sha256: str
    architecture: dict[str, Any]
    classes: tuple[str, ...]
    spacing_mm: float
    input: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    torch_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"name": self.name, "weights_file": self.weights_file, "sha256": self.sha256,
                "architecture": self.architecture, "classes": list(self.classes),
                "spacing_mm": self.spacing_mm, "input": self.input, "training": self.training,
                "evaluation": self.evaluation, "torch_version": self.torch_version}

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ModelCard:
        """Read a model card; :class:`InputError` naming the file and field when malformed."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: model card not found")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            return cls(name=str(d["name"]), weights_file=str(d["weights_file"]),
                       sha256=str(d["sha256"]), architecture=dict(d["architecture"]),
                       classes=tuple(d["classes"]), spacing_mm=float(d["spacing_mm"]),
                       input=dict(d["input"]), training=dict(d.get("training", {})),
                       evaluation=dict(d.get("evaluation", {})),
                       torch_version=str(d.get("torch_version", "")))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path}: not a valid model card ({type(exc).__name__}: {exc})"
                             ) from None


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fp:
        for chunk in iter(lambda: fp.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference: the torch module (eval mode), its card and device."""

    module: Any
    card: ModelCard
    device: str


def load_model(stem: str = ORGAN_MODEL, weights_dir: str | os.PathLike[str] | None = None,
               device: str = "cpu") -> LoadedModel:
    """Load a U-Net from ``<weights_dir>/<stem>.pt`` after checking its checksum.

    Parameters
    ----------
    stem : str
        File stem of the weights and the card.
    weights_dir : path, optional
        Folder holding ``<stem>.pt`` and ``<stem>.json``; default the shipped weights.
    device : str
        Torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``).

    Raises
    ------
    InputError
        Card or weights missing or malformed.
    WeightsChecksumError
        The weights' SHA-256 differs from the recorded one (shipped: this module's table;
        otherwise the card's).
    """
    import torch

    from dosimetry.segmentation.unet import UNetConfig, build_unet

    dev = check_torch_device(device)
    folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    if weights_dir is None and not (folder / f"{stem}.json").is_file():
        raise InputError(
            f"{folder / stem}.json: model card not found: the model {stem!r} is not installed "
            "(train it with 'rptdose train segmentation' for the organ model, 'rptdose train "
            "lesions' for the lesion model, then pass its folder; or use --backend "
            "totalsegmentator or masks:PATH)")
    card = ModelCard.read(folder / f"{stem}.json")
    wpath = folder / card.weights_file
    if not wpath.is_file():
        raise InputError(f"{wpath}: model weights not found (model card {folder / stem}.json)")
    shipped = weights_dir is None or folder.resolve() == WEIGHTS_DIR
    expected = SHIPPED_SHA256.get(card.weights_file) if shipped else None
    expected = expected or card.sha256
    actual = sha256_file(wpath)
    if actual != expected:
        raise WeightsChecksumError(
            f"{wpath}: SHA-256 {actual} does not match the recorded {expected}; the file was "
            "changed or damaged, refusing to load it (retrain with 'rptdose train segmentation' "
            "or restore the file)")
    try:
        state = torch.load(wpath, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises various errors on damaged or unsafe files
        raise InputError(f"{wpath}: cannot load weights ({type(exc).__name__}: {exc})") from None
    try:
        config = UNetConfig.from_dict(card.architecture)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{folder / stem}.json: invalid architecture in the model card "
                         f"({type(exc).__name__}: {exc})") from None
    listed = card.input.get("channels")
    if isinstance(listed, list) and len(listed) != config.in_channels:
        raise InputError(f"{folder / stem}.json: the card lists {len(listed)} input channels "
                         f"but its architecture has in_channels {config.in_channels}")
    module = build_unet(config, "cpu")
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError) as exc:
        raise InputError(f"{wpath}: weights do not fit the architecture in the card ({exc})"
                         ) from None
    module.eval()
    module.to(dev)
    return LoadedModel(module=module, card=card, device=dev)


def ct_channels(hu: np.ndarray) -> np.ndarray:
    """The organ model's input channels from CT numbers [HU], (Z, Y, X) → (2, Z, Y, X) float32.

    Channel 0: the whole range, ``clip(HU, −1000, 1000) / 500``; channel 1: a soft-tissue
    window, ``(clip(HU, −150, 250) − 50) / 100``, where the organs differ by 10–20 HU.
    """
    h = np.asarray(hu, dtype=np.float32)
    a = np.clip(h, -1000.0, 1000.0) / np.float32(500.0)
    b = (np.clip(h, -150.0, 250.0) - np.float32(50.0)) / np.float32(100.0)
    return np.stack([a, b]).astype(np.float32)


#: Input channels of the organ model per ``architecture.in_channels`` of its card: the two CT
#: windows alone (the first models), or followed by the three position channels.
INPUT_CHANNELS: dict[int, tuple[str, ...]] = {
    2: ("clip(HU, -1000, 1000) / 500", "(clip(HU, -150, 250) - 50) / 100"),
    5: ("clip(HU, -1000, 1000) / 500", "(clip(HU, -150, 250) - 50) / 100",
        "(k - c_k) / h_k, k the S (cranio-caudal) index of the working grid",
        "(j - c_j) / h_j, j the P (anterior-posterior) index",
        "(i - c_i) / h_i, i the L (right-left) index"),
}
#: How the position channels are normalised (recorded in the model card).
COORDINATE_CONVENTION = (
    "working grid axes along the patient's L, P, S (grid.working_grid(axis_aligned=True)); "
    "body box = body_box(HU) (voxels > -400 HU plus 4 voxels, the box the network is run on); "
    "per axis c = (first + last index of the box) / 2 and h = max((box length) / 2, 1), so the "
    "box spans about [-1, 1]")


def coord_channels(shape: tuple[int, int, int], box: tuple[slice, slice, slice],
                   points: np.ndarray | None = None) -> np.ndarray:
    """Body-relative position channels (3, Z, Y, X) float32, in (S, P, L) order.

    For each axis, ``(index − c) / h`` with ``c`` the centre and ``h`` the half-extent of the
    body box (:data:`COORDINATE_CONVENTION`). By default the channels cover the box itself
    (the region :func:`segment_organs` runs the network on); ``points`` (…, 3) gives instead
    the (z, y, x) working-grid indices, possibly fractional, of every voxel, as the training
    patches sample them.
    """
    del shape  # the normalisation depends on the box alone
    c = np.array([(b.start + b.stop - 1) / 2.0 for b in box])
    h = np.array([max((b.stop - b.start) / 2.0, 1.0) for b in box])
    if points is None:
        axes = [(np.arange(b.start, b.stop, dtype=np.float64) - ci) / hi
                for b, ci, hi in zip(box, c, h, strict=True)]
        grids = np.meshgrid(*axes, indexing="ij")
        return np.stack(grids).astype(np.float32)
    out = (np.asarray(points, dtype=np.float64) - c) / h
    return np.moveaxis(out, -1, 0).astype(np.float32)


def model_inputs(hu: np.ndarray, box: tuple[slice, slice, slice], in_channels: int
                 ) -> np.ndarray:
    """The organ model's input (in_channels, Z', Y', X') on the body box of the working grid.

    Raises
    ------
    InputError
        ``in_channels`` is not a convention this code knows (:data:`INPUT_CHANNELS`).
    """
    if in_channels not in INPUT_CHANNELS:
        raise InputError(f"the organ model expects {in_channels} input channels; this version "
                         f"knows {sorted(INPUT_CHANNELS)} (2: CT windows; 5: CT windows and "
                         "body-relative position); retrain it with 'rptdose train segmentation'")
    x = ct_channels(hu[box])
    if in_channels == 5:
        x = np.concatenate([x, coord_channels(hu.shape, box)])
    return x


def body_box(hu: np.ndarray, margin: int = 4, threshold_hu: float = -400.0
             ) -> tuple[slice, slice, slice]:
    """Index box (z, y, x) of the voxels denser than ``threshold_hu``, plus ``margin`` voxels."""
    m = hu > threshold_hu
    if not m.any():
        return tuple(slice(0, n) for n in hu.shape)  # type: ignore[return-value]
    out = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        nz = np.flatnonzero(m.any(axis=other))
        out.append(slice(max(int(nz[0]) - margin, 0), min(int(nz[-1]) + 1 + margin,
                                                         hu.shape[ax])))
    return tuple(out)  # type: ignore[return-value]


def predict_probabilities(model: LoadedModel, channels: np.ndarray) -> np.ndarray:
    """Class probabilities (C, Z, Y, X) of the model for input channels (K, Z, Y, X)."""
    import torch

    from dosimetry.segmentation.unet import pad_to_multiple

    div = 2 ** (len(model.card.architecture["channels"]) - 1)
    pads = pad_to_multiple(channels.shape[1:], div)
    x = np.pad(channels, ((0, 0), *pads), mode="edge")
    with torch.inference_mode():
        t = torch.from_numpy(np.ascontiguousarray(x))[None].to(model.device)
        p = torch.softmax(model.module(t), dim=1)[0].float().cpu().numpy()
    sl = tuple(slice(b, b + n) for (b, _), n in zip(pads, channels.shape[1:], strict=True))
    return np.ascontiguousarray(p[(slice(None), *sl)])


def keep_largest_component(labels: np.ndarray, which: list[int]) -> np.ndarray:
    """Keep, for each label in ``which``, only its largest 6-connected component (in place)."""
    from scipy import ndimage

    boxes = ndimage.find_objects(labels.astype(np.int32, copy=False))
    for lab in which:
        if lab - 1 >= len(boxes) or boxes[lab - 1] is None:
            continue
        box = boxes[lab - 1]
        sub = labels[box]
        m = sub == lab
        cc, n = ndimage.label(m)
        if n > 1:
            sizes = np.bincount(cc.ravel())
            sizes[0] = 0
            sub[m & (cc != int(np.argmax(sizes)))] = 0
    return labels


@dataclass(frozen=True)
class OrganPrediction:
    """Result of :func:`segment_organs`: the label map and timings [s] per step."""

    labels: LabelMap
    timings_s: dict[str, float]
    working_size: tuple[int, int, int]


def segment_organs(ct: sitk.Image, device: str = "cpu", *,
                   model: LoadedModel | None = None,
                   weights_dir: str | os.PathLike[str] | None = None,
                   progress: ProgressFn | None = None) -> OrganPrediction:
    """Segment the built-in organs on a CT with the shipped (or given) U-Net.

    Parameters
    ----------
    ct : SimpleITK.Image
        CT in HU, any grid and direction.
    device : str
        Torch device.
    model : LoadedModel, optional
        An already loaded model (else loaded from ``weights_dir`` or the shipped weights).
    weights_dir : path, optional
        Folder with ``organs_ct_unet.pt`` and its card.
    progress : callable(step, fraction), optional

    Returns
    -------
    OrganPrediction
        Labels (uint16) on the CT's grid (``CopyInformation`` of ``ct``); label *k* is the
        card's class *k* (1 = liver, …).
    """
    report = progress or (lambda step, frac: None)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    if model is None:
        report("loading model", 0.0)
        model = load_model(ORGAN_MODEL, weights_dir, device)
    times["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    report("resampling CT", 0.1)
    work = working_grid(ct, model.card.spacing_mm, axis_aligned=True)
    hu_img = resample_to(ct, work, default=-1000.0)
    hu = sitk.GetArrayFromImage(hu_img)
    box = body_box(hu)
    times["resample_down"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    report("running the network", 0.3)
    in_ch = int(model.card.architecture["in_channels"])
    probs_box = predict_probabilities(model, model_inputs(hu, box, in_ch))
    probs = np.zeros((probs_box.shape[0], *hu.shape), dtype=np.float32)
    probs[0] = 1.0
    probs[(slice(None), *box)] = probs_box
    times["network"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    report("resampling labels", 0.7)
    lab = argmax_upsampled(probs, hu_img, ct)
    n_cls = len(model.card.classes)
    keep_largest_component(lab, list(range(1, n_cls)))
    times["resample_up"] = time.perf_counter() - t0
    table = LabelTable(tuple(LabelEntry(i, name, StructureKind.ORGAN)
                             for i, name in enumerate(model.card.classes) if i > 0))
    report("done", 1.0)
    return OrganPrediction(
        labels=LabelMap(label_image(lab, ct), table,
                        source=f"builtin:{model.card.name} (sha256 {model.card.sha256[:12]})"),
        timings_s=times, working_size=tuple(int(n) for n in probs_box.shape[1:]))
