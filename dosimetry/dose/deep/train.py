"""Training, calibration and evaluation of the deep dose ensemble (any torch device).

Training (per nuclide)
    K members of :class:`~dosimetry.dose.deep.model.DoseCorrectionNet`, each from its own seed
    on a bootstrap resample of the training patches (Lakshminarayanan et al. 2017, "Simple and
    scalable predictive uncertainty estimation using deep ensembles", NeurIPS,
    arXiv:1612.01474). Loss: the squared error of the predicted dose against the MC dose,
    weighted by 1/(D_DVK + 0.05·max D_DVK)² (max over the patch) — a relative error where the
    dose is high, an absolute one (in units of 5 % of the maximum) where it is low and the MC
    target is mostly noise — over voxels of density > 0.05 g/cm³ (air has no meaningful dose).
    The weights depend on the inputs only, so the noise of the MC target does not bias the
    minimiser (E[(p − y)²] is smallest at p = E[y]). Augmentation: the 48 flips and axis
    permutations of the (isotropic) patches, under which the physics is invariant.

Uncertainty and its calibration
    σ = α·√(s² + (β·D)²), with s the ensemble's standard deviation per voxel, β = 0.01 a floor
    for what all members share (kernel, table and model-family errors) and α fitted on held-out
    MC patches so that 95 % of the voxels satisfy |D − D_MC| ≤ 2·√(σ² + σ_MC²) (the MC target's
    own noise is allowed for). α is fitted on one half of the held-out patients and the
    coverage is reported on the other half.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dosimetry.dose.deep.model import DoseCorrectionNet, features, receptive_radius
from dosimetry.errors import InputError

__all__ = ["TrainSettings", "calibrate", "evaluate_patches", "predict_patch", "train_ensemble"]

#: Relative floor of the predicted uncertainty (fraction of the dose), see the module docstring.
SIGMA_FLOOR = 0.01
#: Density below which voxels are not scored (air; g/cm³).
MIN_DENSITY = 0.05
#: Regions for the per-region metrics, by density (g/cm³).
REGIONS = {"soft": (0.9, 1.15), "lung": (0.1, 0.6), "bone": (1.15, 3.0)}


@dataclass(frozen=True)
class TrainSettings:
    """Hyper-parameters of :func:`train_ensemble`."""

    members: int = 4
    steps: int = 2000
    batch: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    width: int = 24
    dilations: tuple[int, ...] = (1, 2, 4, 2, 1)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.members < 1 or self.steps < 1 or self.batch < 1:
            raise InputError("members, steps and batch must be ≥ 1")
        if not self.lr > 0:
            raise InputError(f"learning rate must be > 0, got {self.lr}")


def _stack(patches: Sequence[dict[str, Any]], device: torch.device) -> dict[str, torch.Tensor]:
    def t(key: str) -> torch.Tensor:
        return torch.as_tensor(np.stack([p[key] for p in patches]), device=device)[:, None]

    out = {k: t(k) for k in ("dvk", "tia", "density", "mc")}
    out["spacing"] = torch.as_tensor([p["spacing"] for p in patches], device=device,
                                     dtype=torch.float32)
    if all("mc_sigma" in p for p in patches):
        out["mc_sigma"] = t("mc_sigma")
    return out


def _weights(dvk: torch.Tensor, density: torch.Tensor) -> torch.Tensor:
    """1/(D_DVK + 0.05·max D_DVK)² per patch: relative error where the dose is high, absolute
    (in units of 5 % of the patch maximum) where it is low — where the MC target is mostly
    noise, a relative weight would let single events dominate the loss."""
    top = dvk.amax(dim=(1, 2, 3, 4), keepdim=True)
    w = 1.0 / (dvk + 0.05 * top + 1e-30) ** 2 * top ** 2
    return w * (density > MIN_DENSITY)


def _augment(tensors: list[torch.Tensor], gen: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(3, generator=gen).tolist()
    flips = [d + 2 for d in range(3) if torch.rand(1, generator=gen).item() < 0.5]
    out = []
    for x in tensors:
        y = x.permute(0, 1, *[p + 2 for p in perm])
        if flips:
            y = torch.flip(y, flips)
        out.append(y.contiguous())
    return out


def train_ensemble(train: Sequence[dict[str, Any]], settings: TrainSettings = TrainSettings(),
                   *, device: str = "cpu",
                   progress: Callable[[int, int, float], None] | None = None
                   ) -> tuple[list[DoseCorrectionNet], dict[str, Any]]:
    """Train the ensemble on patches with MC targets; returns the members and a log."""
    if len(train) < 2:
        raise InputError(f"need at least 2 training patches, got {len(train)}")
    dev = torch.device(device)
    data = _stack(train, dev)
    feats = features(data["dvk"], data["tia"], data["density"], data["spacing"])
    w = _weights(data["dvk"], data["density"])
    members: list[DoseCorrectionNet] = []
    log: dict[str, Any] = {"members": [], "n_patches": len(train), "device": str(dev)}
    n = len(train)
    total_steps = settings.members * settings.steps
    t_start = time.perf_counter()
    for k in range(settings.members):
        torch.manual_seed(settings.seed * 1000 + k)
        gen = torch.Generator().manual_seed(settings.seed * 1000 + k)
        boot = torch.randint(0, n, (n,), generator=gen)
        net = DoseCorrectionNet(settings.width, settings.dilations).to(dev)
        opt = torch.optim.AdamW(net.parameters(), lr=settings.lr,
                                weight_decay=settings.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr,
                                                    total_steps=settings.steps, pct_start=0.1)
        losses = []
        for step in range(settings.steps):
            idx = boot[torch.randint(0, n, (min(settings.batch, n),), generator=gen)].to(dev)
            x, d, y, ww = _augment([feats[idx], data["dvk"][idx], data["mc"][idx], w[idx]], gen)
            pred = d * torch.exp(net(x))
            loss = (ww * (pred - y) ** 2).sum() / ww.gt(0).sum().clamp_min(1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if progress is not None and (step % 50 == 0 or step == settings.steps - 1):
                progress(k * settings.steps + step + 1, total_steps, losses[-1])
        net.eval()
        members.append(net)
        tail = losses[-max(1, settings.steps // 10):]
        log["members"].append({"seed": settings.seed * 1000 + k,
                               "final_loss": float(np.mean(tail)),
                               "first_loss": float(np.mean(losses[:10]))})
    log["train_time_s"] = time.perf_counter() - t_start
    log["receptive_radius_voxels"] = receptive_radius(settings.dilations)
    return members, log


@torch.no_grad()
def predict_patch(members: Sequence[DoseCorrectionNet], dvk: torch.Tensor, tia: torch.Tensor,
                  density: torch.Tensor, spacing: float | torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ensemble mean dose and the members' standard deviation (same units as ``dvk``)."""
    x = features(dvk, tia, density, spacing)
    preds = torch.stack([dvk * torch.exp(m(x)) for m in members])
    mean = preds.mean(0)
    std = preds.std(0, unbiased=True) if len(members) > 1 else torch.zeros_like(mean)
    return mean, std


def _predict_all(members, patches, device) -> list[dict[str, np.ndarray]]:
    dev = torch.device(device)
    out = []
    for p in patches:
        d = _stack([p], dev)
        mean, std = predict_patch(members, d["dvk"], d["tia"], d["density"], d["spacing"])
        out.append({"deep": mean[0, 0].cpu().numpy(), "std": std[0, 0].cpu().numpy()})
    return out


def _scored(p: dict[str, Any]) -> np.ndarray:
    """Voxels scored for calibration: density > 0.05 and DVK dose ≥ 10 % of its patch maximum
    (chosen on the input, not on the noisy MC target, which would select upward fluctuations)."""
    return (p["density"] > MIN_DENSITY) & (p["dvk"] >= 0.1 * float(p["dvk"].max()))


def _fit_alpha(e: np.ndarray, b: np.ndarray, s: np.ndarray, target: float) -> float:
    """Smallest α with a fraction ``target`` of |e| ≤ 2√((α·b)² + s²) (bisection)."""
    def coverage(alpha: float) -> float:
        return float(np.mean(e <= 2.0 * np.sqrt((alpha * b) ** 2 + s ** 2)))

    lo, hi = 1e-3, 1.0
    while coverage(hi) < target and hi < 1e4:
        hi *= 2.0
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if coverage(mid) < target:
            lo = mid
        else:
            hi = mid
    return float(hi)


def _regions(p: dict[str, Any]) -> dict[str, np.ndarray]:
    """Organ-like regions of a patch: density classes among the voxels of DVK ≥ 10 % of the
    maximum, and the hot region (DVK ≥ 50 %), each with at least 8 voxels."""
    top = float(p["dvk"].max())
    out = {name: (p["density"] >= lo) & (p["density"] < hi) & (p["dvk"] >= 0.1 * top)
           for name, (lo, hi) in REGIONS.items()}
    out["hot"] = (p["density"] > MIN_DENSITY) & (p["dvk"] >= 0.5 * top)
    return {k: v for k, v in out.items() if v.sum() >= 8}


def calibrate(members: Sequence[DoseCorrectionNet], patches: Sequence[dict[str, Any]], *,
              device: str = "cpu", target: float = 0.95, beta: float = SIGMA_FLOOR
              ) -> tuple[float, float]:
    """α for voxels and α for region means, each for a two-sided coverage ``target``.

    Voxels: |D − D_MC| ≤ 2√(σ² + σ_MC²) with σ = α·√(s² + (βD)²). Regions (organ-like means):
    |D̄ − D̄_MC| ≤ 2√((α_VOI·σ̄)² + σ̄_MC²) with σ̄ the mean of √(s² + (βD)²) over the region
    (errors of a model are correlated between neighbouring voxels) and σ̄_MC = √(Σσ_MC²)/N.
    Noise of the MC target inflates the voxel α (its batch σ is itself uncertain); the region
    α is the one to use for organ means.
    """
    preds = _predict_all(members, patches, device)
    err, base, smc = [], [], []
    r_err, r_base, r_smc = [], [], []
    for p, q in zip(patches, preds, strict=True):
        m = _scored(p)
        sig_mc = p.get("mc_sigma", np.zeros_like(p["mc"]))
        b = np.sqrt(q["std"] ** 2 + (beta * q["deep"]) ** 2)
        err.append(np.abs(q["deep"][m] - p["mc"][m]))
        base.append(b[m])
        smc.append(sig_mc[m])
        for rm in _regions(p).values():
            r_err.append(abs(float(q["deep"][rm].mean()) - float(p["mc"][rm].mean())))
            r_base.append(float(b[rm].mean()))
            r_smc.append(float(np.sqrt((sig_mc[rm].astype(np.float64) ** 2).sum()) / rm.sum()))
    e, b, s = (np.concatenate(v).astype(np.float64) for v in (err, base, smc))
    alpha = _fit_alpha(e, b, s, target)
    alpha_voi = _fit_alpha(*(np.asarray(v, dtype=np.float64) for v in (r_err, r_base, r_smc)),
                           target)
    return alpha, alpha_voi


def evaluate_patches(members: Sequence[DoseCorrectionNet], patches: Sequence[dict[str, Any]],
                     alpha: float, alpha_voi: float | None = None, *, device: str = "cpu",
                     beta: float = SIGMA_FLOOR) -> dict[str, Any]:
    """Held-out metrics: per-region mean-dose error of deep and DVK against MC, the median
    voxel error, and the coverage of the calibrated σ (voxels with α, regions with α_VOI)."""
    preds = _predict_all(members, patches, device)
    alpha_voi = alpha if alpha_voi is None else alpha_voi
    reg: dict[str, dict[str, list[float]]] = {r: {"deep": [], "dvk": [], "cover": []}
                                              for r in (*REGIONS, "hot")}
    vox_cover, rms_deep, rms_dvk = [], [], []
    for p, q in zip(patches, preds, strict=True):
        m = _scored(p)
        sig = alpha * np.sqrt(q["std"] ** 2 + (beta * q["deep"]) ** 2)
        smc = p.get("mc_sigma", np.zeros_like(p["mc"]))
        if m.any():
            vox_cover.append(np.abs(q["deep"][m] - p["mc"][m])
                             <= 2 * np.sqrt(sig[m] ** 2 + smc[m] ** 2))
            ref = p["mc"][m]
            rms_deep.append(np.abs(q["deep"][m] - ref) / float(p["dvk"].max()))
            rms_dvk.append(np.abs(p["dvk"][m] - ref) / float(p["dvk"].max()))
        base = np.sqrt(q["std"] ** 2 + (beta * q["deep"]) ** 2)
        for r, rm in _regions(p).items():
            mc_mean = float(p["mc"][rm].mean())
            if not mc_mean > 0:
                continue
            reg[r]["deep"].append(float(q["deep"][rm].mean()) / mc_mean - 1)
            reg[r]["dvk"].append(float(p["dvk"][rm].mean()) / mc_mean - 1)
            s_reg = alpha_voi * float(base[rm].mean())  # correlated within a region
            s_mc = float(np.sqrt((smc[rm].astype(np.float64) ** 2).sum()) / rm.sum())
            reg[r]["cover"].append(abs(float(q["deep"][rm].mean()) - mc_mean)
                                   <= 2 * math.hypot(s_reg, s_mc))

    def summary(v: list[float]) -> dict[str, float]:
        a = np.asarray(v, dtype=np.float64)
        if not a.size:
            return {"n": 0}
        return {"n": int(a.size), "mean": float(a.mean()), "mean_abs": float(np.abs(a).mean()),
                "p95_abs": float(np.percentile(np.abs(a), 95))}

    return {
        "alpha": alpha, "alpha_voi": alpha_voi, "beta": beta, "n_patches": len(patches),
        "voxel_coverage_2sigma": float(np.concatenate(vox_cover).mean()) if vox_cover else None,
        # |D − D_MC| in units of the patch maximum, median over scored voxels (includes the MC
        # target's own noise, the same for both engines)
        "voxel_median_abs_error_of_max": {
            "deep": float(np.median(np.concatenate(rms_deep))) if rms_deep else None,
            "dvk": float(np.median(np.concatenate(rms_dvk))) if rms_dvk else None},
        "regions": {r: {"deep": summary(v["deep"]), "dvk": summary(v["dvk"]),
                        "coverage_2sigma": float(np.mean(v["cover"])) if v["cover"] else None}
                    for r, v in reg.items()},
    }
