"""Training the built-in organ model on digital patients, reproducibly.

:func:`train_segmentation` makes its own training data: digital-patient CTs from
:func:`phantoms.anatomy.make_anatomy` (the one place ``dosimetry`` reaches into ``phantoms``,
imported at call time, so that importing ``dosimetry`` never needs it), each generated on a
randomly drawn native CT grid with random noise and blur, then brought onto the model's working
grid by the same resampling as inference (:mod:`~dosimetry.segmentation.grid`). Targets are the
organs' volume fractions per working voxel (soft labels), so the network learns partial volume
and the arg-max of its up-sampled probabilities lands between coarse voxel centres.

What the augmentation is for (the phantom generator has shortcuts a network would learn): each
organ has one CT number per patient with a little texture, shapes are perturbed ellipsoids, the
noise is white. Each training patch is therefore drawn through

* a random affine map (rotation ±10° about the cranio-caudal axis, ±5° about the others,
  scale 0.85–1.15 per axis) and a smooth elastic displacement (up to ≈ 6 mm);
* a global CT-number change ``HU·a + b`` (a ∈ [0.92, 1.08], b ∈ [−25, 25] HU), a smooth bias
  field (≤ 12 HU), extra white noise (σ ≤ 12 HU per working-grid voxel) and, for one patch in three,
  a Gaussian blur (σ ≤ 0.8 voxel), on top of the per-patient native grid (2.5–5 mm), noise
  (σ 5–25 HU) and blur (σ ≤ 1 mm) the data were generated with.

Position: the network also sees where each voxel lies relative to the body box (three
channels, :func:`~dosimetry.segmentation.builtin.coord_channels`), because several organs
differ from the surrounding soft tissue by only 3–20 HU and a patch alone does not show which
side of the body, or how far up, it is. The box is that of the whole working-grid case (as at
inference); a patch's position channels are the box-relative coordinates of the points it
samples, so they follow the affine and elastic warps exactly, and are then jittered a little
(shift ≤ 0.04, scale 0.96–1.04 per axis) against the scan range differing between scanners.

There are no left–right flips: the anatomy is not mirror-symmetric (liver right, spleen left)
and the model must tell left and right organs apart.

Reproducibility: everything random comes from ``seed`` (phantom seeds ``seed·10⁴ + i``, patch
sampling, augmentation, initial weights); torch runs with deterministic algorithms and a fixed
number of threads. The same seed, epochs, torch build and CPU type give identical weights.
Held-out patients (seeds :data:`HELDOUT_SEEDS`) are never seen in training; their Dice per organ
is written into the model card.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dosimetry.errors import InputError
from dosimetry.io.atomic import atomic_write_bytes, atomic_write_text
from dosimetry.segmentation.builtin import (
    COORDINATE_CONVENTION,
    INPUT_CHANNELS,
    ORGAN_MODEL,
    WEIGHTS_DIR,
    ModelCard,
    body_box,
    coord_channels,
    load_model,
    segment_organs,
    sha256_file,
)
from dosimetry.segmentation.grid import resample_to, working_grid
from dosimetry.segmentation.names import BUILTIN_ORGANS

#: Phantom seeds of the held-out patients (never used for training; training seeds are
#: ``seed · 10⁴ + i`` with seed < 90).
HELDOUT_SEEDS: tuple[int, ...] = tuple(range(900_000, 900_008))

ProgressFn = Callable[[str, float], None]


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (defaults: the run recorded in ``weights/README.md``)."""

    seed: int = 0
    epochs: int = 70
    steps_per_epoch: int = 50
    batch_size: int = 2
    #: 19 × 29 × 29 cm at 6 mm. Measured on one thread: 0.30 s per step at 32 × 48 × 48 and
    #: 0.24 s at 32 × 40 × 40 (6 mm), 1.0 s at 48 × 64 × 64; the position channels carry the
    #: context a larger patch would.
    patch: tuple[int, int, int] = (32, 48, 48)
    n_patients: int = 30
    n_heldout: int = 6
    spacing_mm: float = 6.0
    #: Give the network the three body-relative position channels (5 inputs instead of 2).
    coordinates: bool = True
    channels: tuple[int, ...] = (8, 16, 32, 64)
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    #: Torch threads. One thread: on the 2-core reference machine, shared with other work,
    #: a step took 0.45 s on one thread and 1.7–4.7 s on two (threads waiting on each other).
    threads: int = 1
    #: Fraction of patches centred on an organ (class drawn uniformly), the rest anywhere
    #: in the body.
    organ_centred: float = 0.75

    def __post_init__(self) -> None:
        if not (isinstance(self.seed, int) and 0 <= self.seed < 90):
            raise InputError(f"training seed {self.seed!r} must be an integer in 0–89 (phantom "
                             "seeds seed·10⁴ + i must stay apart from the held-out seeds)")
        if self.epochs < 1 or self.steps_per_epoch < 1 or self.batch_size < 1:
            raise InputError(f"epochs {self.epochs}, steps per epoch {self.steps_per_epoch} and "
                             f"batch size {self.batch_size} must be ≥ 1")
        if self.n_patients < 1 or not (0 <= self.n_heldout <= len(HELDOUT_SEEDS)):
            raise InputError(f"{self.n_patients} training patients (≥ 1) and {self.n_heldout} "
                             f"held-out patients (0–{len(HELDOUT_SEEDS)}) requested")
        div = 2 ** (len(self.channels) - 1)
        if any(p % div for p in self.patch):
            raise InputError(f"patch {self.patch} must be a multiple of {div} on every axis")

    @property
    def steps(self) -> int:
        """Total optimiser steps."""
        return self.epochs * self.steps_per_epoch

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        d = asdict(self)
        d["patch"] = list(self.patch)
        d["channels"] = list(self.channels)
        return d


# ============================================================================ training data
@dataclass(frozen=True)
class TrainingCase:
    """One patient on the working grid.

    ``hu`` (Z, Y, X) float32 CT numbers; ``fractions`` (n_organs, Z, Y, X) float16 volume
    fraction of each organ per voxel; ``index`` per organ, flat indices of voxels more than half
    inside it (for organ-centred patches); ``body`` flat indices of voxels denser than −400 HU.
    """

    seed: int
    hu: np.ndarray
    fractions: np.ndarray
    index: tuple[np.ndarray, ...]
    body: np.ndarray
    native_spacing_mm: tuple[float, float, float]
    noise_hu: float
    #: :func:`~dosimetry.segmentation.builtin.body_box` of ``hu`` (computed when not given).
    box: tuple[slice, slice, slice] | None = None

    def body_box(self) -> tuple[slice, slice, slice]:
        """The body box of the whole case, as inference computes it on its working grid."""
        return self.box if self.box is not None else body_box(self.hu)


@dataclass(frozen=True)
class HeldOutCase:
    """A held-out patient at its native grid: CT [HU] and the true organ labels."""

    seed: int
    ct: sitk.Image
    truth: sitk.Image  # labels 1…n in BUILTIN_ORGANS order, 0 elsewhere


def _phantom(seed: int, inplane_mm: float, slice_mm: float, rng: np.random.Generator,
             head_neck: bool, n_lesions: int, deformation_mm: float):
    from phantoms.anatomy import AnatomyOptions, GridSpec, make_anatomy

    opts = AnatomyOptions(head_neck=head_neck, n_lesions=n_lesions,
                          deformation_mm=deformation_mm)
    return make_anatomy(np.random.default_rng([seed, 7]), opts,
                        GridSpec(inplane_mm=inplane_mm, slice_mm=slice_mm))


def _organ_lut(anatomy) -> np.ndarray:
    """Phantom label → organ class (0 = not one of ours)."""
    lut = np.zeros(int(anatomy.labels.max()) + 1, dtype=np.uint8)
    for t in anatomy.tissues:
        if t.name in BUILTIN_ORGANS and t.label < lut.size:
            lut[t.label] = BUILTIN_ORGANS.index(t.name) + 1
    return lut


def _native_ct(anatomy, rng: np.random.Generator, noise_hu: float, blur_mm: float
               ) -> tuple[sitk.Image, np.ndarray]:
    """The patient's CT (core grid, identity direction) and its organ-class array."""
    from scipy import ndimage

    g = anatomy.core_grid
    hu = anatomy.hu[anatomy.core].astype(np.float32, copy=True)
    if blur_mm > 0:
        sp = (g.spacing[2], g.spacing[1], g.spacing[0])
        hu = ndimage.gaussian_filter(hu, [blur_mm / s for s in sp])
    hu += np.float32(noise_hu) * rng.standard_normal(hu.shape, dtype=np.float32)
    np.rint(hu, out=hu)
    np.clip(hu, -1024.0, 3071.0, out=hu)
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing(g.spacing)
    img.SetOrigin(g.origin)
    classes = _organ_lut(anatomy)[anatomy.labels[anatomy.core]]
    return img, classes


def make_training_case(seed: int, spacing_mm: float = 5.0) -> TrainingCase:
    """One randomly drawn digital patient on the working grid (see the module docstring)."""
    rng = np.random.default_rng([seed, 11])
    inplane = float(rng.uniform(2.5, 5.0))
    slice_mm = float(rng.uniform(2.5, 5.0))
    anatomy = _phantom(seed, inplane, slice_mm, rng, head_neck=bool(rng.random() < 0.15),
                       n_lesions=int(rng.integers(0, 5)),
                       deformation_mm=float(rng.uniform(2.0, 6.0)))
    noise = float(rng.uniform(5.0, 25.0))
    ct, classes = _native_ct(anatomy, rng, noise, float(rng.uniform(0.0, 1.0)))
    work = working_grid(ct, spacing_mm)
    hu = sitk.GetArrayFromImage(resample_to(ct, work, default=-1000.0))
    fr = np.zeros((len(BUILTIN_ORGANS), *hu.shape), dtype=np.float16)
    index = []
    for k in range(len(BUILTIN_ORGANS)):
        m = sitk.GetImageFromArray((classes == k + 1).astype(np.float32))
        m.CopyInformation(ct)
        f = np.clip(sitk.GetArrayFromImage(resample_to(m, work)), 0.0, 1.0)
        fr[k] = f.astype(np.float16)
        index.append(np.flatnonzero(f > 0.5).astype(np.int32))
    body = np.flatnonzero(hu > -400.0).astype(np.int32)
    return TrainingCase(seed, hu.astype(np.float32), fr, tuple(index), body,
                        (inplane, inplane, slice_mm), noise, body_box(hu))


def make_heldout_case(seed: int) -> HeldOutCase:
    """A held-out patient as the digital-patient studies write it: 2.5 × 2.5 × 3 mm CT grid,
    noise σ 10–20 HU (as :func:`phantoms.acquisition.simulate_ct`), no extra blur."""
    rng = np.random.default_rng([seed, 13])
    anatomy = _phantom(seed, 2.5, 3.0, rng, head_neck=False, n_lesions=3, deformation_mm=4.0)
    ct, classes = _native_ct(anatomy, rng, float(rng.uniform(10.0, 20.0)), 0.0)
    truth = sitk.GetImageFromArray(classes.astype(np.uint16))
    truth.CopyInformation(ct)
    return HeldOutCase(seed, ct, truth)


# ============================================================================ augmentation
def _rotation(rng: np.random.Generator) -> np.ndarray:
    """Random rotation (z, y, x order): ±10° about z (cranio-caudal), ±5° about y and x."""
    az, ay, ax = np.radians([rng.uniform(-10, 10), rng.uniform(-5, 5), rng.uniform(-5, 5)])
    rz = np.array([[1, 0, 0], [0, np.cos(az), -np.sin(az)], [0, np.sin(az), np.cos(az)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rx = np.array([[np.cos(ax), -np.sin(ax), 0], [np.sin(ax), np.cos(ax), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _sample_patch(case: TrainingCase, rng: np.random.Generator, patch: tuple[int, int, int],
                  organ_centred: float):
    """One augmented patch: hu (1, P…), fractions (n, P…) and position (3, P…) tensors.

    The position channels are the body-box-relative coordinates (S, P, L) of the working-grid
    points the patch samples (after the affine and elastic warps), as
    :func:`~dosimetry.segmentation.builtin.coord_channels` gives them at inference.
    """
    import torch
    import torch.nn.functional as F

    shape = np.array(case.hu.shape)
    n_org = case.fractions.shape[0]
    centre = None
    if rng.random() < organ_centred:
        k = int(rng.integers(n_org))
        if case.index[k].size:
            centre = np.array(np.unravel_index(case.index[k][rng.integers(case.index[k].size)],
                                               case.hu.shape), dtype=float)
            centre += rng.normal(0.0, 6.0, 3)
    if centre is None:
        pool = case.body if case.body.size else np.arange(case.hu.size)
        centre = np.array(np.unravel_index(pool[rng.integers(pool.size)], case.hu.shape),
                          dtype=float)
    p = np.array(patch)
    scale = rng.uniform(0.85, 1.15, 3)
    m = _rotation(rng) / scale[None, :]  # output offsets (voxels) → input offsets
    # crop a box around the centre that holds every sampled point, then sample within it
    reach = np.abs(m) @ ((p - 1) / 2) + 8.0
    lo = np.clip(np.floor(centre - reach).astype(int), 0, shape - 1)
    hi = np.clip(np.ceil(centre + reach).astype(int) + 1, lo + 1, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    vol = np.concatenate([((case.hu[box] + 1000.0) / 1000.0)[None],
                          case.fractions[(slice(None), *box)].astype(np.float32)])
    t_vol = torch.from_numpy(np.ascontiguousarray(vol))[None]  # (1, 1+n, z, y, x)
    offs = np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in p], indexing="ij"),
                    axis=-1)  # (Pz, Py, Px, 3) in (z, y, x)
    pts = offs @ m.T + (centre - lo)
    # smooth elastic displacement: 5³ control points, σ up to 1.5 voxel, trilinear
    amp = rng.uniform(0.0, 1.5)
    ctrl = torch.from_numpy(rng.normal(0.0, amp, (1, 3, 5, 5, 5)).astype(np.float32))
    disp = F.interpolate(ctrl, size=tuple(int(n) for n in p), mode="trilinear",
                         align_corners=True)[0].permute(1, 2, 3, 0).numpy()
    pts = pts + disp
    size = np.array(vol.shape[1:], dtype=float)
    norm = 2.0 * pts / np.maximum(size - 1, 1) - 1.0  # (z, y, x) → grid_sample wants (x, y, z)
    grid = torch.from_numpy(norm[..., ::-1].astype(np.float32).copy())[None]
    out = F.grid_sample(t_vol, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=True)[0]
    hu = out[:1] * 1000.0 - 1000.0  # zero padding is air
    coords = torch.from_numpy(coord_channels(case.hu.shape, case.body_box(), pts + lo))
    return hu, out[1:], coords


def _augment_intensity(hu, rng: np.random.Generator):
    """Global scale/shift, smooth bias field, white noise and occasional blur, in HU."""
    import torch
    import torch.nn.functional as F

    a = float(rng.uniform(0.92, 1.08))
    b = float(rng.uniform(-25.0, 25.0))
    out = hu * a + b
    shape = tuple(hu.shape[1:])
    bias_amp = float(rng.uniform(0.0, 12.0))
    coarse = torch.from_numpy(rng.normal(0.0, bias_amp, (1, 1, 3, 3, 3)).astype(np.float32))
    out = out + F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[0]
    sigma = float(rng.uniform(0.0, 12.0))
    out = out + sigma * torch.from_numpy(rng.standard_normal(hu.shape).astype(np.float32))
    if rng.random() < 1.0 / 3.0:
        s = float(rng.uniform(0.3, 0.8))
        r = np.arange(-2, 3, dtype=np.float32)
        k = np.exp(-0.5 * (r / s) ** 2)
        k = torch.from_numpy(k / k.sum())
        x = out[None]
        for dim in range(3):
            kshape = [1, 1, 1, 1, 1]
            kshape[2 + dim] = 5
            pad = [0, 0, 0, 0, 0, 0]
            pad[2 * (2 - dim)] = pad[2 * (2 - dim) + 1] = 2
            x = F.conv3d(F.pad(x, pad, mode="replicate"), k.view(kshape))
        out = x[0]
    return out


def _ct_channels_torch(hu):
    import torch

    a = torch.clamp(hu, -1000.0, 1000.0) / 500.0
    b = (torch.clamp(hu, -150.0, 250.0) - 50.0) / 100.0
    return torch.cat([a, b], dim=0)


def _batches(cases: Sequence[TrainingCase], cfg: TrainConfig, rng: np.random.Generator
             ) -> Iterator[tuple[Any, Any]]:
    import torch

    while True:
        xs, ys = [], []
        for _ in range(cfg.batch_size):
            case = cases[int(rng.integers(len(cases)))]
            hu, fr, pos = _sample_patch(case, rng, cfg.patch, cfg.organ_centred)
            hu = _augment_intensity(hu, rng)
            x = _ct_channels_torch(hu)
            if cfg.coordinates:
                scale = torch.from_numpy(rng.uniform(0.96, 1.04, (3, 1, 1, 1)).astype(np.float32))
                shift = torch.from_numpy(rng.uniform(-0.04, 0.04, (3, 1, 1, 1)).astype(np.float32))
                x = torch.cat([x, pos * scale + shift], dim=0)
            xs.append(x)
            bg = torch.clamp(1.0 - fr.sum(dim=0, keepdim=True), 0.0, 1.0)
            t = torch.cat([bg, fr], dim=0)
            ys.append(t / t.sum(dim=0, keepdim=True).clamp_min(1e-6))
        yield torch.stack(xs), torch.stack(ys)


def _loss(logits, target):
    """Soft-label cross-entropy plus (1 − mean soft Dice) over the foreground classes."""
    import torch

    logp = torch.log_softmax(logits, dim=1)
    ce = -(target * logp).sum(dim=1).mean()
    p = logp.exp()
    dims = (0, 2, 3, 4)
    inter = (p * target).sum(dim=dims)[1:]
    denom = (p.sum(dim=dims) + target.sum(dim=dims))[1:]
    present = target.sum(dim=dims)[1:] > 1.0
    dice = (2 * inter + 1.0) / (denom + 1.0)
    dl = (1.0 - dice[present]).mean() if bool(present.any()) else logits.new_zeros(())
    return ce + dl, float(ce.detach()), float(dl.detach())


# ============================================================================ evaluation
def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Sørensen–Dice coefficient of two boolean masks (1.0 when both are empty)."""
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def evaluate_heldout(seeds: Sequence[int], *, weights_dir: str | os.PathLike[str] | None = None,
                     device: str = "cpu", progress: ProgressFn | None = None
                     ) -> dict[str, Any]:
    """Dice per organ of the organ model on held-out digital patients.

    Returns ``{"per_case": [{"seed", "dice": {organ: d}, "seconds"}], "mean": {organ: d},
    "min": {organ: d}}``.
    """
    model = load_model(ORGAN_MODEL, weights_dir, device)
    per_case = []
    for i, seed in enumerate(seeds):
        if progress:
            progress(f"held-out patient {seed}", i / max(len(seeds), 1))
        case = make_heldout_case(seed)
        t0 = time.perf_counter()
        pred = segment_organs(case.ct, device, model=model)
        secs = time.perf_counter() - t0
        p = sitk.GetArrayViewFromImage(pred.labels.image)
        t = sitk.GetArrayViewFromImage(case.truth)
        d = {name: round(dice(p == k, t == k), 4)
             for k, name in enumerate(model.card.classes) if k > 0}
        per_case.append({"seed": seed, "dice": d, "seconds": round(secs, 2)})
    organs = [c for c in model.card.classes[1:]]
    mean = {o: round(float(np.mean([c["dice"][o] for c in per_case])), 4) for o in organs} \
        if per_case else {}
    mins = {o: round(float(np.min([c["dice"][o] for c in per_case])), 4) for o in organs} \
        if per_case else {}
    return {"per_case": per_case, "mean": mean, "min": mins}


# ============================================================================ training
@contextlib.contextmanager
def _torch_settings(threads: int):
    import torch

    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_segmentation` wrote and measured."""

    weights: Path
    card: Path
    sha256: str
    heldout: dict[str, Any]
    losses: tuple[float, ...]
    timings_s: dict[str, float] = field(default_factory=dict)


def train_segmentation(seed: int = 0, epochs: int = 70,
                       out: str | os.PathLike[str] | None = None,
                       *, config: TrainConfig | None = None, device: str = "cpu",
                       progress: ProgressFn | None = None) -> TrainResult:
    """Train the built-in organ U-Net on digital patients and write weights and model card.

    Parameters
    ----------
    seed : int
        Seed of everything random (0–89).
    epochs : int
        Epochs of ``config.steps_per_epoch`` optimiser steps each.
    out : path, optional
        Folder for ``organs_ct_unet.pt`` and ``organs_ct_unet.json`` (default: the shipped
        weights folder).
    config : TrainConfig, optional
        Everything else (its ``seed``/``epochs`` are replaced by the arguments).
    device : str
        Torch device for training (CPU gives the reproducible shipped weights).
    progress : callable(step, fraction), optional

    Returns
    -------
    TrainResult
    """
    import torch

    from dosimetry.segmentation.unet import UNetConfig, build_unet

    cfg = config or TrainConfig()
    cfg = TrainConfig(**{**cfg.to_dict(), "seed": seed, "epochs": epochs,
                         "patch": tuple(cfg.patch), "channels": tuple(cfg.channels)})
    report = progress or (lambda step, frac: None)
    out_dir = Path(out) if out is not None else WEIGHTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    with _torch_settings(cfg.threads):
        # ------------------------------------------------------------------- data
        t0 = time.perf_counter()
        seeds = [cfg.seed * 10_000 + i for i in range(cfg.n_patients)]
        cases = []
        for i, s in enumerate(seeds):
            report(f"training patient {i + 1}/{len(seeds)}", 0.15 * i / len(seeds))
            cases.append(make_training_case(s, cfg.spacing_mm))
        timings["data"] = time.perf_counter() - t0

        # ------------------------------------------------------------------- model
        torch.manual_seed(cfg.seed)
        in_ch = 5 if cfg.coordinates else 2
        ucfg = UNetConfig(in_channels=in_ch, n_classes=len(BUILTIN_ORGANS) + 1,
                          channels=cfg.channels)
        net = build_unet(ucfg, device)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate,
                                weight_decay=cfg.weight_decay)
        warm = min(50, cfg.steps // 10)

        def lr_at(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            frac = (step - warm) / max(cfg.steps - warm, 1)
            return 0.5 * (1.0 + math.cos(math.pi * frac)) * 0.98 + 0.02

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        rng = np.random.default_rng([cfg.seed, 99])
        batches = _batches(cases, cfg, rng)
        losses: list[float] = []
        t0 = time.perf_counter()
        net.train()
        running = []
        for step in range(cfg.steps):
            x, y = next(batches)
            x, y = x.to(device), y.to(device)
            opt.zero_grad(set_to_none=True)
            loss, _, _ = _loss(net(x), y)
            loss.backward()
            opt.step()
            sched.step()
            running.append(float(loss.detach()))
            if (step + 1) % cfg.steps_per_epoch == 0:
                losses.append(round(float(np.mean(running)), 5))
                running = []
                ep = (step + 1) // cfg.steps_per_epoch
                report(f"epoch {ep}/{cfg.epochs} loss {losses[-1]:.4f} "
                       f"({time.perf_counter() - t0:.0f} s)", 0.15 + 0.7 * (step + 1) / cfg.steps)
        timings["train"] = time.perf_counter() - t0

        # ------------------------------------------------------------------- save
        net.eval()
        state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
        wpath = out_dir / f"{ORGAN_MODEL}.pt"
        buf = io.BytesIO()  # in memory: the archive's record names do not carry a file name
        torch.save(state, buf)
        atomic_write_bytes(wpath, buf.getvalue())
        sha = sha256_file(wpath)
        card = ModelCard(
            name=ORGAN_MODEL, weights_file=wpath.name, sha256=sha,
            architecture=ucfg.to_dict(), classes=("background", *BUILTIN_ORGANS),
            spacing_mm=cfg.spacing_mm,
            input={"modality": "CT", "units": "HU",
                   "channels": list(INPUT_CHANNELS[in_ch]),
                   **({"coordinates": COORDINATE_CONVENTION} if cfg.coordinates else {}),
                   "grid": f"isotropic {cfg.spacing_mm} mm, the CT's direction cosines, "
                           "antialiasing Gaussian before linear resampling"},
            training=_training_record(cfg, seeds, cases, losses, timings),
            torch_version=torch.__version__)
        cpath = out_dir / f"{ORGAN_MODEL}.json"
        atomic_write_text(cpath, _card_json(card))

    # ----------------------------------------------------------------------- held-out
    t0 = time.perf_counter()
    report("held-out evaluation", 0.9)
    held = evaluate_heldout(HELDOUT_SEEDS[:cfg.n_heldout], weights_dir=out_dir, device=device)
    timings["heldout"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    card = ModelCard(**{**card.__dict__, "evaluation": {
        "data": "held-out digital patients (phantoms.anatomy.make_anatomy, seeds "
                f"{list(HELDOUT_SEEDS[:cfg.n_heldout])}), CT 2.5×2.5×3 mm, noise σ 10–20 HU, "
                "3 lesions, 4 mm deformation; Dice of the final labels on the CT grid",
        "dice_mean": held["mean"], "dice_min": held["min"], "per_case": held["per_case"]},
        "training": {**card.training, "wall_time_s": {k: round(v, 1)
                                                      for k, v in timings.items()}}})
    atomic_write_text(cpath, _card_json(card))
    report("done", 1.0)
    return TrainResult(weights=wpath, card=cpath, sha256=sha, heldout=held,
                       losses=tuple(losses), timings_s=timings)


def _training_record(cfg: TrainConfig, seeds: list[int], cases: list[TrainingCase],
                     losses: list[float], timings: dict[str, float]) -> dict[str, Any]:
    return {
        "command": f"rptdose train segmentation --seed {cfg.seed} --epochs {cfg.epochs} "
                   "-o dosimetry/segmentation/weights",
        "function": "dosimetry.segmentation.train.train_segmentation",
        "config": cfg.to_dict(),
        "data": "digital patients from phantoms.anatomy.make_anatomy (trunk, 15 % with head and "
                "neck, 0–4 lesions, 2–6 mm body deformation), native CT grid drawn in "
                "2.5–5 mm per axis, white noise σ 5–25 HU, blur σ 0–1 mm, resampled to the "
                f"{cfg.spacing_mm} mm working grid; soft targets = organ volume fractions",
        "phantom_seeds": seeds,
        "native_grids_mm": [list(np.round(c.native_spacing_mm, 2)) for c in cases],
        "augmentation": "affine (rot ±10° z, ±5° x/y, scale 0.85–1.15), elastic (5³ control "
                        "points, σ ≤ 1.5 voxel), HU·[0.92, 1.08] + [−25, 25], bias field "
                        "≤ 12 HU, noise σ ≤ 12 HU, blur σ 0.3–0.8 voxel (p = 1/3); no flips"
                        + ("; position channels of the warped sampling points, then scaled "
                           "by 0.96–1.04 and shifted by ±0.04 per axis" if cfg.coordinates
                           else ""),
        "loss": "soft-label cross-entropy + (1 − soft Dice of the present foreground classes)",
        "optimiser": f"AdamW lr {cfg.learning_rate}, weight decay {cfg.weight_decay}, linear "
                     "warm-up then cosine decay",
        "steps": cfg.steps,
        "epoch_losses": losses,
        "threads": cfg.threads,
        "platform": f"{platform.machine()} {platform.system()}, Python "
                    f"{sys.version.split()[0]}",
    }


def _card_json(card: ModelCard) -> str:
    import json

    return json.dumps(card.to_dict(), indent=2, ensure_ascii=False) + "\n"
