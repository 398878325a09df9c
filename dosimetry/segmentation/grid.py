"""Resampling between an image's own grid and the coarse working grid the models run on.

The working grid has the image's physical extent and an isotropic spacing (6 mm for the built-in
organ model, 4 mm for lesion detection), and either the image's direction cosines or, for the
models, the identity direction (arrays in L, P, S order, as the models were trained). Going down,
the image is first smoothed with a Gaussian whose variance is what a box of the new voxel size
adds to the old one, ``σ² = (s_new² − s_old²)/12`` per axis, so that the linear resampling does
not alias. Going back up, class probabilities are resampled linearly and the label is the arg-max
of the interpolated probabilities, which places boundaries between coarse voxel centres rather
than on the coarse voxel faces.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from dosimetry.errors import GeometryError


def working_grid(image: sitk.Image, spacing_mm: float, *, axis_aligned: bool = False
                 ) -> sitk.Image:
    """An empty float32 image on an isotropic grid covering ``image``'s voxel volume.

    By default the direction cosines are those of ``image`` and the coarse grid is centred on
    the fine one. With ``axis_aligned`` the grid has the identity direction (axes along the
    patient's L, P, S) and covers the image's bounding box: what a model trained on LPS-ordered
    arrays must see, whatever order the file stores its voxels in (for an image with the
    identity direction both are the same grid).
    """
    if not (spacing_mm > 0 and math.isfinite(spacing_mm)):
        raise GeometryError(f"working grid spacing {spacing_mm} mm must be > 0")
    size = np.array(image.GetSize(), dtype=float)
    spacing = np.array(image.GetSpacing(), dtype=float)
    if axis_aligned:
        corners = np.array([image.TransformContinuousIndexToPhysicalPoint(
            [(-0.5 if (k >> a) & 1 == 0 else n - 0.5) for a, n in enumerate(size)])
            for k in range(8)])
        lo, hi = corners.min(axis=0), corners.max(axis=0)
        extent = hi - lo
        centre = (lo + hi) / 2.0
        d = np.eye(3)
    else:
        extent = size * spacing
        # centre of the fine grid in continuous index, mapped to physical space
        centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint(
            ((size - 1) / 2).tolist()))
        d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    new_size = np.maximum(np.ceil(extent / spacing_mm - 1e-6), 1).astype(int)
    origin = centre - d @ ((new_size - 1) / 2 * spacing_mm)
    out = sitk.Image([int(n) for n in new_size], sitk.sitkFloat32)
    out.SetSpacing([float(spacing_mm)] * 3)
    out.SetDirection(d.ravel().tolist())
    out.SetOrigin([float(o) for o in origin])
    return out


def antialias_sigma_mm(old_spacing: Sequence[float], new_spacing: Sequence[float]
                       ) -> list[float]:
    """Gaussian σ [mm] per axis that turns a box of ``old`` into (about) a box of ``new``."""
    return [math.sqrt(max(n * n - o * o, 0.0) / 12.0) for o, n in
            zip(old_spacing, new_spacing, strict=True)]


def resample_to(image: sitk.Image, reference: sitk.Image, *, smooth: bool = True,
                default: float = 0.0, interpolator: int = sitk.sitkLinear,
                transform: sitk.Transform | None = None) -> sitk.Image:
    """Resample ``image`` onto ``reference``'s grid (float32), smoothing first when coarsening.

    ``transform`` maps points of ``reference`` space to ``image`` space (identity by default).
    """
    src = sitk.Cast(image, sitk.sitkFloat32)
    if smooth:
        sig = antialias_sigma_mm(src.GetSpacing(), reference.GetSpacing())
        if max(sig) > 0.05 * min(src.GetSpacing()):
            src = sitk.SmoothingRecursiveGaussian(src, [max(s, 1e-3) for s in sig])
    tfm = transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity)
    return sitk.Resample(src, reference, tfm, interpolator, float(default), sitk.sitkFloat32)


def argmax_upsampled(probs: np.ndarray, coarse: sitk.Image, target: sitk.Image,
                     threshold: float = 0.05) -> np.ndarray:
    """Labels on ``target`` as the arg-max of the linearly resampled class probabilities.

    Parameters
    ----------
    probs : (C, Z, Y, X) float ndarray
        Class probabilities on ``coarse``'s grid, class 0 = background.
    coarse : SimpleITK.Image
        The grid of ``probs``.
    target : SimpleITK.Image
        The grid to label.
    threshold : float
        Only the box where some foreground probability exceeds this is resampled (the rest
        is background), which keeps the work proportional to the labelled region.

    Returns
    -------
    (Z, Y, X) uint16 ndarray on ``target``'s grid.
    """
    n_cls = probs.shape[0]
    target_shape = tuple(reversed(target.GetSize()))
    out = np.zeros(target_shape, dtype=np.uint16)
    fg = probs[1:].max(axis=0) > threshold
    if not fg.any():
        return out
    idx = np.argwhere(fg)
    lo, hi = idx.min(axis=0) - 1, idx.max(axis=0) + 1  # (z, y, x), one voxel of margin
    box = target_box(coarse, lo, hi, target)
    if box is None:
        return out
    sub, sl = box
    sub_size = sub.GetSize()
    best = None
    arg = np.zeros(tuple(reversed(sub_size)), dtype=np.uint16)
    for cls in range(n_cls):
        img = sitk.GetImageFromArray(np.ascontiguousarray(probs[cls], dtype=np.float32))
        img.CopyInformation(coarse)
        # outside the coarse grid: background probability 1, others 0
        r = sitk.Resample(img, sub, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear,
                          1.0 if cls == 0 else 0.0, sitk.sitkFloat32)
        a = sitk.GetArrayViewFromImage(r)
        if best is None:
            best = np.array(a, dtype=np.float32)
        else:
            win = a > best
            arg[win] = cls
            best = np.where(win, a, best)
    out[sl] = arg
    return out


def target_box(coarse: sitk.Image, lo, hi, target: sitk.Image
               ) -> tuple[sitk.Image, tuple[slice, slice, slice]] | None:
    """The part of ``target`` covering the (z, y, x) index box ``lo…hi`` of ``coarse``.

    Returns an empty image on that sub-grid (same spacing and direction as ``target``) and the
    (z, y, x) slices of ``target`` it covers, or None when the box misses ``target``.
    """
    corners = []
    for k in range(8):
        ci = [lo[2] if k & 1 else hi[2], lo[1] if k & 2 else hi[1], lo[0] if k & 4 else hi[0]]
        p = coarse.TransformContinuousIndexToPhysicalPoint([float(c) for c in ci])
        corners.append(target.TransformPhysicalPointToContinuousIndex(p))
    c = np.asarray(corners)  # (8, 3) x, y, z continuous index of target
    size = np.array(target.GetSize())
    t_lo = np.floor(c.min(axis=0)).astype(int)
    t_hi = np.ceil(c.max(axis=0)).astype(int)
    if np.any(t_hi < 0) or np.any(t_lo > size - 1):
        return None
    t_lo = np.clip(t_lo, 0, size - 1)
    t_hi = np.clip(t_hi, 0, size - 1)
    sub_size = (t_hi - t_lo + 1).tolist()
    sub = sitk.Image([int(s) for s in sub_size], sitk.sitkFloat32)
    sub.SetSpacing(target.GetSpacing())
    sub.SetDirection(target.GetDirection())
    sub.SetOrigin(target.TransformIndexToPhysicalPoint([int(v) for v in t_lo]))
    sl = (slice(int(t_lo[2]), int(t_hi[2]) + 1), slice(int(t_lo[1]), int(t_hi[1]) + 1),
          slice(int(t_lo[0]), int(t_hi[0]) + 1))
    return sub, sl
