"""Vectorised voxel-wise TIA kernel (torch; runs unchanged on CPU and CUDA).

For each voxel (a column of an (n_t, n_vox) tensor) a mono-exponential A(t) = A₀·e^(−λt) is fitted
by weighted least squares on ln A over the samples that are finite and > 0, in closed form:

    ln Aᵢ = b − λ·(tᵢ − t̄),  weights wᵢ = Aᵢ

(wᵢ = Aᵢ is the inverse variance of ln Aᵢ when var(Aᵢ) ∝ Aᵢ, i.e. counting statistics). Then

* λ ≥ λp: fitted, TIA = A₀/λ;
* 0 < λ < λp: clamped to λ = λp (faster-than-physical retention is non-physical), b refitted;
* λ ≤ 0 (activity rising over the whole series), fewer than two usable samples, or
  λ·t₁ > ``max_rate_times_t1`` (back-extrapolation to injection by more than e^10): fallback to
  the trapezoid with a physical-decay tail on max(A, 0) with non-finite samples as 0.

Voxels with no positive finite sample are "empty" (TIA = 0). Output is finite and ≥ 0.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch

from dosimetry.kinetics import models as km
from dosimetry.kinetics.models import TrapezoidHead


class VoxelStatus(IntEnum):
    """How each voxel's TIA was obtained."""

    FITTED = 0
    CLAMPED = 1
    FALLBACK = 2
    EMPTY = 3


def mono_exponential_tia(activity: torch.Tensor, times_s: np.ndarray, lam_phys: float, *,
                         head: TrapezoidHead = TrapezoidHead.ZERO,
                         max_rate_times_t1: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxel-wise TIA by log-linear mono-exponential fit with physical-decay fallback.

    Parameters
    ----------
    activity : (n_t, n_vox) torch.Tensor
        Activity per voxel at each time (any unit; the TIA is in that unit × s). Floating
        dtype; NaN, ±inf, zeros and negatives allowed. Its device is used throughout.
    times_s : (n_t,) ndarray
        Sample times after injection [s], increasing, ≥ 0.
    lam_phys : float
        Physical decay constant [1/s].
    head : TrapezoidHead
        Closure before the first sample for the fallback.
    max_rate_times_t1 : float
        Largest accepted λ·t₁ (t₁ the first positive time).

    Returns
    -------
    tia : (n_vox,) torch.Tensor
        Time-integrated activity (activity unit × s), finite, ≥ 0.
    status : (n_vox,) torch.Tensor of int8
        :class:`VoxelStatus` per voxel.
    """
    dev, dt = activity.device, activity.dtype
    times = np.asarray(times_s, dtype=float)
    t_mean = float(times.mean())
    t_scale = float(times.max() - times.min()) or 1.0
    u = torch.as_tensor((times - t_mean) / t_scale, device=dev, dtype=dt)[:, None]
    finite = torch.isfinite(activity)
    a0 = torch.where(finite, activity, torch.zeros((), device=dev, dtype=dt))
    pos = a0 > 0
    w = torch.where(pos, a0, torch.zeros((), device=dev, dtype=dt))
    logs = torch.log(torch.where(pos, a0, torch.ones((), device=dev, dtype=dt)))
    wu = w * u
    s = w.sum(0)
    su = wu.sum(0)
    sy = (w * logs).sum(0)
    suu = (wu * u).sum(0)
    suy = (wu * logs).sum(0)
    npos = pos.sum(0)
    den = s * suu - su * su
    tiny = torch.finfo(dt).tiny
    ok = (npos >= 2) & (den > 1e-9 * s * s) & (s > tiny)
    den_safe = torch.where(ok, den, torch.ones_like(den))
    s_safe = torch.where(s > tiny, s, torch.ones_like(s))
    slope_u = (s * suy - su * sy) / den_safe
    lam = -slope_u / t_scale
    lam_p = float(lam_phys)
    clamped = ok & (lam > 0) & (lam < lam_p)
    lam_c = torch.clamp(lam, min=lam_p)
    # b = ln A(t̄); with λ fixed at λp the least-squares b is the weighted mean of ln A + λ(t − t̄).
    b = torch.where(clamped, (sy + lam_p * t_scale * su) / s_safe, (sy - slope_u * su) / s_safe)
    t1 = float(times[times > 0].min()) if np.any(times > 0) else t_scale
    physical = ok & (lam > 0) & (lam_c * t1 <= max_rate_times_t1)
    log_a0 = b + lam_c * t_mean
    tia_fit = torch.exp(torch.where(physical, log_a0, torch.zeros_like(log_a0))) / lam_c
    physical = physical & torch.isfinite(tia_fit)

    wt = torch.as_tensor(km.trapezoid_weights(times, lam_p, head=head), device=dev, dtype=dt)
    tia_trap = (wt[:, None] * torch.clamp(a0, min=0)).sum(0)
    empty = npos == 0
    tia = torch.where(physical, tia_fit, tia_trap)
    tia = torch.where(empty, torch.zeros_like(tia), tia)
    tia = torch.where(torch.isfinite(tia) & (tia > 0), tia, torch.zeros_like(tia))

    status = torch.full(tia.shape, int(VoxelStatus.FALLBACK), device=dev, dtype=torch.int8)
    status[physical] = int(VoxelStatus.FITTED)
    status[physical & clamped] = int(VoxelStatus.CLAMPED)
    status[empty] = int(VoxelStatus.EMPTY)
    return tia, status
