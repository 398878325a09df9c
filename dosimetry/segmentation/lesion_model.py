"""A trained lesion model on SPECT/CT: a small 3D U-Net that marks lesion voxels.

Input (on a 4 mm working grid with L-P-S axes): three channels,
``log(1 + S/B) / 3`` with S the SPECT [Bq/mL] and B the body background (median soft-tissue
concentration, as :mod:`~dosimetry.segmentation.lesions` estimates it), and the two CT channels of
the organ model (:func:`~dosimetry.segmentation.builtin.ct_channels`), so that the network can
tell a lesion from a kidney or the bladder by its anatomy as well as its uptake. Output: the
probability that a voxel is lesion.

Training (:func:`train_lesion_model`) uses its own digital patients, simulated directly on the
4 mm grid so that contrasts vary far more than in any one kinetics preset: anatomy from
:func:`phantoms.anatomy.make_anatomy` (4–12 lesions of 10–50 mm in liver, bone, lymph nodes and
lungs, head and neck in 30 %), concentrations relative to the body drawn log-uniformly per organ
(kidneys 5–60×, bladder 2–150×, liver 1–15×, spleen 1–25×, salivary glands 1–40×, thyroid
remnant 5–500×, lesions 3–100×, …) with the phantom's texture, a Gaussian blur of FWHM 9–16 mm and
Poisson noise of 2–30 counts per background voxel. Weights, card and checksum are handled as for
the organ model (:mod:`~dosimetry.segmentation.builtin`).

Measured (``weights/README.md``): on held-out digital patients the shipped model finds the lesions
≥ 2 cm as often as the threshold detector but also marks physiological uptake (salivary glands,
kidneys, spots of marrow: about 5 false positives per study), having no organ map to reject them.
The segmentation stage therefore runs it only on request (``LesionOptions.method = "model"``).
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from dosimetry import units
from dosimetry.errors import InputError
from dosimetry.io.atomic import atomic_write_bytes, atomic_write_text
from dosimetry.segmentation.builtin import (
    WEIGHTS_DIR,
    LoadedModel,
    ModelCard,
    ct_channels,
    load_model,
    predict_probabilities,
    sha256_file,
)
from dosimetry.segmentation.grid import resample_to, target_box, working_grid
from dosimetry.segmentation.lesions import SOFT_TISSUE_HU, Lesion, LesionResult

LESION_MODEL = "lesions_spect_unet"
#: Lesion probability above which a voxel is lesion.
PROBABILITY_THRESHOLD = 0.5

ProgressFn = Callable[[str, float], None]


def spect_channels(spect: np.ndarray, hu: np.ndarray, background: float) -> np.ndarray:
    """(3, Z, Y, X) float32: ``log(1 + S/B)/3`` and the two CT channels."""
    s = np.log1p(np.maximum(spect, 0.0) / max(background, 1e-12)) / 3.0
    return np.concatenate([s[None].astype(np.float32), ct_channels(hu)])


def body_background(spect: np.ndarray, hu: np.ndarray) -> float:
    """Median concentration of the soft tissue (robust: once more below 3× the first median)."""
    soft = (hu > SOFT_TISSUE_HU[0]) & (hu < SOFT_TISSUE_HU[1])
    vals = spect[soft] if np.count_nonzero(soft) >= 1000 else spect[hu > -400]
    if vals.size == 0:
        raise InputError("lesion model: no body voxel on the SPECT grid")
    b = float(np.median(vals))
    if b > 0:
        b = float(np.median(vals[vals < 3 * b]))
    return b if b > 0 else max(float(np.mean(vals)), 1e-6)


def detect_lesions_model(spect: sitk.Image, ct: sitk.Image, *, min_volume_ml: float = 1.0,
                         model: LoadedModel | None = None, device: str = "cpu",
                         weights_dir: str | os.PathLike[str] | None = None) -> LesionResult:
    """Lesions by the trained model; labels 1…n on ``spect``'s grid (which must be the CT's).

    Connected regions of probability ≥ :data:`PROBABILITY_THRESHOLD` (26-neighbourhood) of at
    least ``min_volume_ml`` are lesions; their masks on the target grid are the linearly
    resampled probability ≥ the threshold.
    """
    from dosimetry.io.images import require_same_grid

    require_same_grid(spect, ct, "SPECT", "CT")
    if model is None:
        model = load_model(LESION_MODEL, weights_dir, device)
    work = working_grid(ct, model.card.spacing_mm, axis_aligned=True)
    s = sitk.GetArrayFromImage(resample_to(spect, work)).astype(np.float64)
    s[~np.isfinite(s)] = 0.0
    hu = sitk.GetArrayFromImage(resample_to(ct, work, default=-1000.0))
    bg = body_background(s, hu)
    body = hu > -400.0
    from dosimetry.segmentation.builtin import body_box

    box = body_box(hu)
    p = np.zeros(s.shape, dtype=np.float32)
    p[box] = predict_probabilities(model, spect_channels(s[box], hu[box], bg))[1]
    p[~body] = 0.0
    cc, _ = ndimage.label(p >= PROBABILITY_THRESHOLD, structure=np.ones((3, 3, 3)))
    v_ml = units.voxel_volume_ml(work.GetSpacing())
    out = np.zeros(tuple(reversed(spect.GetSize())), dtype=np.uint16)
    spect_arr = sitk.GetArrayViewFromImage(spect)
    t_v_ml = units.voxel_volume_ml(spect.GetSpacing())
    lesions: list[Lesion] = []
    rejected: list[str] = []
    for i, sl in enumerate(ndimage.find_objects(cc), start=1):
        region = cc[sl] == i
        vol = float(region.sum()) * v_ml
        if vol < min_volume_ml:
            rejected.append(f"model region of {vol:.2f} mL below the minimum {min_volume_ml} mL")
            continue
        lo = np.maximum(np.array([b.start for b in sl]) - 2, 0)
        hi = np.minimum(np.array([b.stop for b in sl]) + 1, np.array(s.shape) - 1)
        big = tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi, strict=True))
        keep = ndimage.binary_dilation(cc[big] == i, np.ones((3, 3, 3)))
        sub = sitk.GetImageFromArray(np.where(keep, p[big], 0.0).astype(np.float32))
        sub.SetSpacing(work.GetSpacing())
        sub.SetDirection(work.GetDirection())
        sub.SetOrigin(work.TransformIndexToPhysicalPoint([int(lo[2]), int(lo[1]), int(lo[0])]))
        tb = target_box(sub, np.zeros(3, int), np.array(keep.shape) - 1, spect)
        if tb is None:
            continue
        sub_t, tsl = tb
        r = sitk.GetArrayFromImage(sitk.Resample(sub, sub_t, sitk.Transform(3,
                                                                            sitk.sitkIdentity),
                                                 sitk.sitkLinear, 0.0, sitk.sitkFloat32))
        m = (r >= PROBABILITY_THRESHOLD) & (out[tsl] == 0)
        if not m.any():
            continue
        label = len(lesions) + 1
        out[tsl][m] = label
        vals = spect_arr[tsl][m]
        idx = np.argwhere(m).mean(axis=0) + np.array([t.start for t in tsl])
        centre = spect.TransformContinuousIndexToPhysicalPoint([float(idx[2]), float(idx[1]),
                                                                float(idx[0])])
        lesions.append(Lesion(label=label, name=f"lesion_{label}",
                              volume_ml=float(m.sum()) * t_v_ml,
                              peak_bq_per_ml=float(s[sl][region].max()),
                              mean_bq_per_ml=float(np.mean(vals)),
                              background_bq_per_ml=bg, centre_mm=tuple(float(c) for c in centre),
                              host=""))
    labels = sitk.GetImageFromArray(out)
    labels.CopyInformation(spect)
    return LesionResult(labels=labels, lesions=tuple(lesions), method="model",
                        body_background_bq_per_ml=bg, rejected=tuple(rejected))


# ================================================================================ training
#: Concentration relative to the body (log-uniform range) per phantom label name.
_RELATIVE = {
    "kidney_left": (5.0, 60.0), "kidney_right": (5.0, 60.0), "urinary_bladder": (2.0, 150.0),
    "liver": (1.0, 15.0), "spleen": (1.0, 25.0), "stomach": (0.5, 20.0), "heart": (1.0, 4.0),
    "red_marrow": (0.5, 3.0), "parotid_gland_left": (1.0, 40.0),
    "parotid_gland_right": (1.0, 40.0), "submandibular_gland_left": (1.0, 40.0),
    "submandibular_gland_right": (1.0, 40.0), "thyroid_gland": (5.0, 500.0),
    "subcutaneous_fat": (0.3, 0.7), "torso_fat": (0.3, 0.7), "lung_left": (0.2, 0.5),
    "lung_right": (0.2, 0.5), "brain": (0.2, 1.0), "trachea": (0.0, 0.0),
}
_LESION_RELATIVE = (3.0, 100.0)
_BONE = {"vertebrae", "ribs", "sacrum", "hip_left", "hip_right", "femur_left", "femur_right",
         "skull"}


@dataclass(frozen=True)
class LesionTrainConfig:
    """Settings of :func:`train_lesion_model` (defaults: the shipped model)."""

    seed: int = 0
    epochs: int = 14
    steps_per_epoch: int = 50
    batch_size: int = 2
    patch: tuple[int, int, int] = (32, 40, 40)
    n_patients: int = 12
    draws_per_patient: int = 2
    n_heldout: int = 4
    spacing_mm: float = 4.0
    channels: tuple[int, ...] = (8, 16, 32, 64)
    learning_rate: float = 3e-3
    #: One torch thread, as for the organ model (see ``TrainConfig.threads``).
    threads: int = 1

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        d = asdict(self)
        d["patch"] = list(self.patch)
        d["channels"] = list(self.channels)
        return d


def simulate_case(seed: int, draw: int, spacing_mm: float = 4.0):
    """One simulated SPECT/CT on the working grid: (spect, hu, lesion mask), (Z, Y, X) arrays."""
    from phantoms.anatomy import AnatomyOptions, GridSpec, LesionSite, make_anatomy

    rng = np.random.default_rng([seed, 17])
    hn = bool(rng.random() < 0.3)
    opts = AnatomyOptions(head_neck=hn, n_lesions=int(rng.integers(4, 13)),
                          lesion_sites=tuple(LesionSite), lesion_diameter_mm=(10.0, 50.0),
                          thyroid_remnant=hn and bool(rng.random() < 0.5),
                          deformation_mm=float(rng.uniform(2.0, 6.0)))
    anat = make_anatomy(np.random.default_rng([seed, 7]), opts,
                        GridSpec(inplane_mm=spacing_mm, slice_mm=spacing_mm))
    lab = anat.labels[anat.core]
    hu = anat.hu[anat.core].copy()
    tex = anat.heterogeneity[anat.core]
    r2 = np.random.default_rng([seed, 19, draw])
    hu += np.float32(r2.uniform(10.0, 20.0)) * r2.standard_normal(hu.shape, dtype=np.float32)
    lut = np.zeros(int(lab.max()) + 1)
    for t in anat.tissues:
        if t.label > 100:
            lo, hi = _LESION_RELATIVE
        elif t.name in _RELATIVE:
            lo, hi = _RELATIVE[t.name]
        elif t.name in _BONE:
            lo, hi = 0.2, 0.5
        else:
            lo, hi = 0.8, 1.2
        lut[t.label] = 0.0 if hi == 0 else math.exp(r2.uniform(math.log(lo), math.log(hi)))
    conc = lut[lab] * tex
    fwhm = r2.uniform(9.0, 16.0)
    sig = math.sqrt((fwhm / 2.3548) ** 2 + spacing_mm**2 / 12) / spacing_mm
    blurred = ndimage.gaussian_filter(conc, sig)
    counts_at_bg = r2.uniform(2.0, 30.0)
    spect = r2.poisson(np.maximum(blurred, 0) * counts_at_bg) / counts_at_bg
    return spect.astype(np.float32), hu.astype(np.float32), (lab > 100)


def train_lesion_model(seed: int = 0, epochs: int = 14,
                       out: str | os.PathLike[str] | None = None, *,
                       config: LesionTrainConfig | None = None, device: str = "cpu",
                       progress: ProgressFn | None = None) -> dict[str, Any]:
    """Train the lesion U-Net on simulated SPECT/CT (see the module docstring); write
    ``lesions_spect_unet.pt`` and its card. Returns the card as a dict."""
    import torch
    import torch.nn.functional as F

    from dosimetry.segmentation.train import _torch_settings
    from dosimetry.segmentation.unet import UNetConfig, build_unet

    cfg = config or LesionTrainConfig()
    cfg = LesionTrainConfig(**{**cfg.to_dict(), "seed": seed, "epochs": epochs,
                               "patch": tuple(cfg.patch), "channels": tuple(cfg.channels)})
    report = progress or (lambda step, frac: None)
    out_dir = Path(out) if out is not None else WEIGHTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    with _torch_settings(cfg.threads):
        cases = []
        for i in range(cfg.n_patients):
            for d in range(cfg.draws_per_patient):
                report(f"simulating patient {i + 1}/{cfg.n_patients}", 0.2 * i / cfg.n_patients)
                sp, hu, les = simulate_case(cfg.seed * 10_000 + i, d, cfg.spacing_mm)
                bg = body_background(sp, hu)
                x = spect_channels(sp, hu, bg)
                cases.append((x, les.astype(np.float32), np.argwhere(les), np.argwhere(hu > -400)))
        torch.manual_seed(cfg.seed)
        ucfg = UNetConfig(in_channels=3, n_classes=2, channels=cfg.channels)
        net = build_unet(ucfg, device)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=1e-4)
        steps = cfg.epochs * cfg.steps_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda k: min(1.0, (k + 1) / 50) * (0.02 + 0.98 * 0.5 * (
                1 + math.cos(math.pi * k / steps))))
        rng = np.random.default_rng([cfg.seed, 23])
        p = np.array(cfg.patch)
        losses = []
        run = []
        net.train()
        for step in range(steps):
            xs, ys = [], []
            for _ in range(cfg.batch_size):
                x, y, pos, body = cases[int(rng.integers(len(cases)))]
                pool = pos if (pos.size and rng.random() < 0.6) else body
                c = pool[int(rng.integers(len(pool)))] + rng.integers(-10, 11, 3)
                lo = np.clip(c - p // 2, 0, np.maximum(np.array(y.shape) - p, 0))
                sl = tuple(slice(int(a), int(a) + int(n)) for a, n in zip(lo, p, strict=True))
                xx = np.zeros((3, *p), np.float32)
                xx[1:] = -2.0  # outside the volume: no uptake, air in the CT channels
                yy = np.zeros(tuple(p), np.float32)
                xc, yc = x[(slice(None), *sl)], y[sl]
                xx[(slice(None), *tuple(slice(0, n) for n in yc.shape))] = xc
                yy[tuple(slice(0, n) for n in yc.shape)] = yc
                # intensity augmentation: background estimate off by ±30 %, CT shift
                xx[0] = np.maximum(xx[0] + math.log(rng.uniform(0.7, 1.3)) / 3.0, 0.0)
                xx[1:] += rng.uniform(-0.05, 0.05)
                if rng.random() < 0.5:  # left–right flip: lesions are not lateralised
                    xx, yy = xx[:, :, :, ::-1], yy[:, :, ::-1]
                xs.append(np.ascontiguousarray(xx))
                ys.append(np.ascontiguousarray(yy))
            xt = torch.from_numpy(np.stack(xs)).to(device)
            yt = torch.from_numpy(np.stack(ys)).to(device)
            logits = net(xt)
            target = torch.stack([1 - yt, yt], dim=1)
            logp = F.log_softmax(logits, dim=1)
            ce = -(target * logp).sum(1).mean()
            pr = logp.exp()[:, 1]
            dl = 1 - (2 * (pr * yt).sum() + 1) / (pr.sum() + yt.sum() + 1)
            loss = ce + dl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run.append(float(loss.detach()))
            if (step + 1) % cfg.steps_per_epoch == 0:
                losses.append(round(float(np.mean(run)), 5))
                run = []
                report(f"epoch {(step + 1) // cfg.steps_per_epoch}/{cfg.epochs} loss "
                       f"{losses[-1]:.4f}", 0.2 + 0.7 * (step + 1) / steps)
        net.eval()
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
                   buf)
        wpath = out_dir / f"{LESION_MODEL}.pt"
        atomic_write_bytes(wpath, buf.getvalue())
        card = ModelCard(
            name=LESION_MODEL, weights_file=wpath.name, sha256=sha256_file(wpath),
            architecture=ucfg.to_dict(), classes=("background", "lesion"),
            spacing_mm=cfg.spacing_mm,
            input={"modality": "SPECT (Bq/mL) + CT (HU)",
                   "channels": ["log(1 + S/B) / 3, B = median soft-tissue concentration",
                                "clip(HU, -1000, 1000) / 500", "(clip(HU, -150, 250) - 50) / 100"],
                   "grid": f"isotropic {cfg.spacing_mm} mm, L-P-S axes"},
            training={"command": f"rptdose train lesions --seed {cfg.seed} --epochs "
                                 f"{cfg.epochs} -o dosimetry/segmentation/weights",
                      "function": "dosimetry.segmentation.lesion_model.train_lesion_model",
                      "config": cfg.to_dict(), "epoch_losses": losses,
                      "data": "simulated SPECT/CT on make_anatomy patients (see module "
                              "docstring)",
                      "wall_time_s": round(time.perf_counter() - t_start, 1)},
            torch_version=torch.__version__)
        import json

        atomic_write_text(out_dir / f"{LESION_MODEL}.json",
                          json.dumps(card.to_dict(), indent=2, ensure_ascii=False) + "\n")
    report("done", 1.0)
    return card.to_dict()
