"""Voxel TIA maps from a series of activity images.

:func:`voxel_tia_map` fits every voxel (inside an optional mask) with the vectorised
mono-exponential kernel of :mod:`.voxel_kernel` (physical-decay clamp, trapezoid fallback), in
chunks to bound memory. :func:`hybrid_tia_map` keeps each voxel's share of its VOI from that map
but rescales the voxels of each VOI so that they sum to the VOI's own fitted TIA (model-selected,
far less noisy than single voxels) — the voxel TAC shape scaled to the VOI fit.

Images come in as Bq per voxel or Bq/mL (``image_unit``); the output image holds the TIA in
Bq·s per voxel on the input grid (geometry copied from the first image).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

import numpy as np
import SimpleITK as sitk
import torch

from dosimetry.errors import InputError
from dosimetry.io.images import check_allocation
from dosimetry.kinetics.fit import FallbackWarning, KineticFit, ModelName, fit_tac
from dosimetry.kinetics.imaging import (
    ImageUnit,
    check_series,
    label_array,
    to_bq_per_voxel_factor,
)
from dosimetry.kinetics.models import TrapezoidHead
from dosimetry.kinetics.voi import voi_tacs
from dosimetry.kinetics.voxel_kernel import VoxelStatus, mono_exponential_tia

#: Default number of voxels processed at once (memory ≈ n_t × chunk × 8 B × ~12 buffers).
DEFAULT_CHUNK_VOXELS = 1 << 18


class VoxelMethod(StrEnum):
    """Voxel TIA method."""

    MONO = "mono"  # voxel-wise mono-exponential with trapezoid fallback
    HYBRID = "hybrid"  # voxel map rescaled per VOI to the VOI fit


@dataclass(frozen=True)
class VoxelTiaResult:
    """A voxel TIA map and how it was made.

    Attributes
    ----------
    image : SimpleITK.Image
        TIA per voxel [Bq·s], float64, on the input grid; 0 outside the mask.
    method : VoxelMethod
    decay_constant_per_s : float
    n_voxels : int
        Voxels processed (inside the mask).
    n_fitted, n_clamped, n_fallback, n_empty : int
        Voxels fitted mono-exponentially, fitted with λ clamped to λp, handed to the trapezoid
        fallback, and with no positive sample (TIA 0).
    voi_scale_factors : dict
        Hybrid only: label → factor applied to its voxels.
    voi_fits : dict
        Hybrid only: label → the VOI fit used.
    warnings : tuple of str
    """

    image: sitk.Image
    method: VoxelMethod
    decay_constant_per_s: float
    n_voxels: int
    n_fitted: int
    n_clamped: int
    n_fallback: int
    n_empty: int
    voi_scale_factors: dict[int, float] = field(default_factory=dict)
    voi_fits: dict[int, KineticFit] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def fallback_fraction(self) -> float:
        """Fallback voxels over voxels with signal (empty voxels excluded)."""
        n = self.n_voxels - self.n_empty
        return self.n_fallback / n if n else 0.0

    def summary(self) -> dict[str, float | int | str]:
        """Counts and fractions for reports."""
        return {"method": str(self.method), "n_voxels": self.n_voxels,
                "n_fitted": self.n_fitted, "n_clamped": self.n_clamped,
                "n_fallback": self.n_fallback, "n_empty": self.n_empty,
                "fallback_fraction": self.fallback_fraction}


def _mask_indices(mask: sitk.Image | None, n: int) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(sitk.GetArrayViewFromImage(mask)).ravel()
    idx = np.flatnonzero(m != 0)
    if idx.size == 0:
        raise InputError("mask has no non-zero voxel")
    return idx


def _run_kernel(images: Sequence[sitk.Image], t: np.ndarray, lam: float,
                idx: np.ndarray | None, *, device: str | torch.device, dtype: torch.dtype,
                chunk_voxels: int, head: TrapezoidHead, factor: float,
                max_rate_times_t1: float) -> tuple[np.ndarray, np.ndarray]:
    """TIA (Bq·s per voxel, flat over the grid) and status (over processed voxels)."""
    if chunk_voxels < 1:
        raise InputError(f"chunk_voxels must be ≥ 1, got {chunk_voxels}")
    dev = torch.device(device)
    views = [np.asarray(sitk.GetArrayViewFromImage(img)).reshape(-1) for img in images]
    n_total = views[0].size
    check_allocation(n_total, 8, "voxel TIA map")
    n_proc = n_total if idx is None else idx.size
    out = np.zeros(n_total, dtype=np.float64)
    status = np.empty(n_proc, dtype=np.int8)
    np_dtype = torch.empty((), dtype=dtype).numpy().dtype
    for start in range(0, n_proc, chunk_voxels):
        stop = min(start + chunk_voxels, n_proc)
        sel = slice(start, stop) if idx is None else idx[start:stop]
        block = np.stack([v[sel] for v in views]).astype(np_dtype, copy=False)
        act = torch.from_numpy(block).to(dev)
        tia, st = mono_exponential_tia(act, t, lam, head=head,
                                       max_rate_times_t1=max_rate_times_t1)
        out[sel] = tia.cpu().numpy().astype(np.float64) * factor
        status[start:stop] = st.cpu().numpy()
    return out, status


def _result_image(flat: np.ndarray, ref: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(flat.reshape(sitk.GetArrayViewFromImage(ref).shape))
    img.CopyInformation(ref)
    return img


def voxel_tia_map(images: Sequence[sitk.Image], times_s: Sequence[float] | np.ndarray,
                  decay_constant_per_s: float, *, mask: sitk.Image | None = None,
                  image_unit: ImageUnit | str = ImageUnit.BQ_PER_ML,
                  device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64,
                  chunk_voxels: int = DEFAULT_CHUNK_VOXELS,
                  trapezoid_head: TrapezoidHead | str = TrapezoidHead.ZERO,
                  max_rate_times_t1: float = 10.0) -> VoxelTiaResult:
    """Voxel-wise TIA map: mono-exponential per voxel, trapezoid + physical tail fallback.

    Parameters
    ----------
    images : sequence of SimpleITK.Image
        Activity images, one per timepoint, on one grid (≥ 2).
    times_s : sequence of float
        Image times after injection [s].
    decay_constant_per_s : float
        Physical decay constant λp [1/s].
    mask : SimpleITK.Image, optional
        Non-zero voxels are processed; others get 0. Same grid.
    image_unit : ImageUnit
        ``Bq/mL`` (default; converted with the voxel volume) or ``Bq`` per voxel.
    device : str or torch.device
        Where the kernel runs (``"cpu"``, ``"cuda"``…).
    dtype : torch.dtype
        Kernel precision (float64 default; float32 is faster, ~1e-6 relative).
    chunk_voxels : int
        Voxels per chunk (bounds memory).
    trapezoid_head : TrapezoidHead
        Fallback closure before the first sample.
    max_rate_times_t1 : float
        Largest accepted λ·t₁ before falling back.

    Returns
    -------
    VoxelTiaResult
        The map (Bq·s per voxel) and the fitted / clamped / fallback / empty counts. Any
        fallback is announced as a :class:`~dosimetry.kinetics.fit.FallbackWarning`.

    Raises
    ------
    GeometryError
        Images or mask on different grids.
    InputError
        Bad times, decay constant or chunk size.
    """
    t = check_series(images, times_s, (mask, "mask"))
    lam = float(decay_constant_per_s)
    if not (np.isfinite(lam) and lam > 0):
        raise InputError(f"decay constant must be > 0 [1/s], got {decay_constant_per_s}")
    order = np.argsort(t)
    images = [images[i] for i in order]
    t = t[order]
    n_total = int(np.prod(images[0].GetSize()))
    idx = _mask_indices(mask, n_total)
    factor = to_bq_per_voxel_factor(images[0], image_unit)
    flat, status = _run_kernel(images, t, lam, idx, device=device, dtype=dtype,
                               chunk_voxels=chunk_voxels, head=TrapezoidHead(trapezoid_head),
                               factor=factor, max_rate_times_t1=max_rate_times_t1)
    counts = np.bincount(status.astype(np.int64), minlength=4)
    notes: list[str] = []
    res = VoxelTiaResult(_result_image(flat, images[0]), VoxelMethod.MONO, lam,
                         int(status.size), int(counts[VoxelStatus.FITTED]),
                         int(counts[VoxelStatus.CLAMPED]), int(counts[VoxelStatus.FALLBACK]),
                         int(counts[VoxelStatus.EMPTY]), warnings=())
    if res.n_fallback:
        msg = (f"{res.n_fallback} of {res.n_voxels - res.n_empty} voxels with signal "
               f"({res.fallback_fraction * 100:.1f} %) fell back to the trapezoid with a "
               "physical-decay tail (too few positive samples, rising or implausibly fast "
               "curve)")
        notes.append(msg)
        warnings.warn(msg, FallbackWarning, stacklevel=2)
    return _replace_warnings(res, notes)


def _replace_warnings(res: VoxelTiaResult, notes: list[str], **changes) -> VoxelTiaResult:
    return replace(res, warnings=(*res.warnings, *notes), **changes)


def hybrid_tia_map(images: Sequence[sitk.Image], times_s: Sequence[float] | np.ndarray,
                   decay_constant_per_s: float, labels: sitk.Image, *,
                   voi_fits: Mapping[int, KineticFit] | None = None,
                   mask: sitk.Image | None = None,
                   image_unit: ImageUnit | str = ImageUnit.BQ_PER_ML,
                   device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64,
                   chunk_voxels: int = DEFAULT_CHUNK_VOXELS,
                   trapezoid_head: TrapezoidHead | str = TrapezoidHead.ZERO,
                   model: ModelName | str = ModelName.AUTO) -> VoxelTiaResult:
    """Hybrid voxel TIA map: voxel-wise shape, VOI-level kinetics.

    The voxel map of :func:`voxel_tia_map` is computed (over the mask and every labelled
    voxel); then for each label L every voxel of L is multiplied by
    TIA_VOI(L) / Σ_{v∈L} TIA_v, so that the VOI sums to its own fitted TIA while the
    distribution inside it follows the voxel fits. Unlabelled voxels keep their voxel values.

    Parameters
    ----------
    images, times_s, decay_constant_per_s, mask, image_unit, device, dtype, chunk_voxels,
    trapezoid_head
        As for :func:`voxel_tia_map`.
    labels : SimpleITK.Image
        Integer label map (0 = background), same grid.
    voi_fits : mapping label → KineticFit, optional
        VOI fits of the *total* activity [Bq]; labels missing here are fitted from the images
        with :func:`~dosimetry.kinetics.fit.fit_tac` (``model``, relative σ default).
    model : ModelName
        Model for the VOI fits made here.

    Returns
    -------
    VoxelTiaResult
        ``method`` HYBRID, with ``voi_scale_factors`` and ``voi_fits``.
    """
    t = check_series(images, times_s, (labels, "label map"), (mask, "mask"))
    lab = label_array(labels)
    if mask is not None:
        m = np.asarray(sitk.GetArrayViewFromImage(mask)).ravel() != 0
        union = sitk.GetImageFromArray((m | (lab > 0)).astype(np.uint8).reshape(
            sitk.GetArrayViewFromImage(labels).shape))
        union.CopyInformation(labels)
    else:
        union = None
    base = voxel_tia_map(images, t, decay_constant_per_s, mask=union, image_unit=image_unit,
                         device=device, dtype=dtype, chunk_voxels=chunk_voxels,
                         trapezoid_head=trapezoid_head)
    fits: dict[int, KineticFit] = dict(voi_fits or {})
    present = [int(v) for v in np.unique(lab) if v > 0]
    missing = [lb for lb in present if lb not in fits]
    if missing:
        tacs = voi_tacs(labels, images, t, image_unit=image_unit)
        for lb in missing:
            fits[lb] = fit_tac(tacs[lb].curve(), decay_constant_per_s, model,
                               trapezoid_head=trapezoid_head)
    flat = sitk.GetArrayFromImage(base.image).ravel()
    notes: list[str] = []
    scales: dict[int, float] = {}
    for lb in present:
        sel = lab == lb
        total = float(flat[sel].sum())
        fit = fits[lb]
        if fit.success and total > 0 and np.isfinite(fit.tia_bq_s):
            scales[lb] = fit.tia_bq_s / total
            flat[sel] *= scales[lb]
        else:
            scales[lb] = 1.0
            msg = (f"label {lb}: VOI fit {'failed' if not fit.success else 'unusable'} "
                   f"({fit.message}) or voxel sum {total:.3g} ≤ 0; voxel values kept unscaled")
            notes.append(msg)
            warnings.warn(msg, FallbackWarning, stacklevel=2)
    return _replace_warnings(base, notes, image=_result_image(flat, images[0]),
                             method=VoxelMethod.HYBRID, voi_scale_factors=scales,
                             voi_fits=fits)
