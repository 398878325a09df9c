"""Registration quality: Dice of propagated labels, Jacobian statistics, target registration
error (TRE) against known transforms, and the checks that refuse a bad registration.

Array kernels (:func:`dice_per_label`, :func:`jacobian_stats`, :func:`tre_stats`) on images
that share a grid; :func:`check_timepoint` raises :class:`RegistrationError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from dosimetry.registration.config import QAThresholds
from dosimetry.registration.errors import RegistrationError


@dataclass(frozen=True)
class JacobianStats:
    """Jacobian determinant of the transform inside the reference body.

    ``fraction_nonpositive`` is the folding fraction (det ≤ 0: space turned inside out).
    """

    min: float
    max: float
    mean: float
    fraction_nonpositive: float
    n_voxels: int

    def to_dict(self) -> dict[str, float | int]:
        return {"min": self.min, "max": self.max, "mean": self.mean,
                "fraction_nonpositive": self.fraction_nonpositive, "n_voxels": self.n_voxels}

    @classmethod
    def from_dict(cls, d: dict) -> JacobianStats:
        return cls(**d)


@dataclass(frozen=True)
class TREStats:
    """Target registration error [mm] over points of the reference body.

    ``|T_registered(x) − T_true(x)|`` for every body voxel centre ``x`` of the evaluation grid:
    the distance between where registration and truth put the same reference point in the
    moving image.
    """

    mean_mm: float
    median_mm: float
    p95_mm: float
    max_mm: float
    n_points: int

    def to_dict(self) -> dict[str, float | int]:
        return {"mean_mm": self.mean_mm, "median_mm": self.median_mm, "p95_mm": self.p95_mm,
                "max_mm": self.max_mm, "n_points": self.n_points}

    @classmethod
    def from_dict(cls, d: dict) -> TREStats:
        return cls(**d)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A| + |B|) of two boolean arrays (1 when both are empty)."""
    na, nb = int(np.count_nonzero(a)), int(np.count_nonzero(b))
    if na + nb == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(a & b)) / (na + nb)


def dice_per_label(reference: sitk.Image, propagated: sitk.Image,
                   labels: list[int] | None = None) -> dict[int, float]:
    """Dice of every label (> 0) present in ``reference``, against ``propagated`` (same grid)."""
    ref = sitk.GetArrayViewFromImage(reference)
    pro = sitk.GetArrayViewFromImage(propagated)
    if ref.shape != pro.shape:
        raise ValueError(f"label maps have shapes {ref.shape} and {pro.shape}")
    if labels is None:
        labels = [int(v) for v in np.unique(ref) if v > 0]
    # one pass: joint histogram of (ref, pro) label pairs
    n = int(max(ref.max(initial=0), pro.max(initial=0))) + 1
    joint = np.bincount(ref.ravel().astype(np.int64) * n + pro.ravel().astype(np.int64),
                        minlength=n * n).reshape(n, n)
    out: dict[int, float] = {}
    for lab in labels:
        if lab >= n:
            continue
        inter = joint[lab, lab]
        total = joint[lab, :].sum() + joint[:, lab].sum()
        out[int(lab)] = float(2.0 * inter / total) if total else 1.0
    return out


def label_volumes_ml(labels: sitk.Image) -> dict[int, float]:
    """Volume [mL] of every label > 0."""
    arr = sitk.GetArrayViewFromImage(labels)
    counts = np.bincount(arr.ravel().astype(np.int64))
    v = float(np.prod(labels.GetSpacing())) * 1e-3
    return {int(i): float(c) * v for i, c in enumerate(counts) if i > 0 and c > 0}


def jacobian_stats(det: sitk.Image | float, mask: sitk.Image) -> JacobianStats:
    """Statistics of a Jacobian-determinant image (or a constant) inside ``mask``."""
    m = sitk.GetArrayViewFromImage(mask) > 0
    n = int(np.count_nonzero(m))
    if not isinstance(det, sitk.Image):
        v = float(det)
        return JacobianStats(v, v, v, 1.0 if v <= 0 else 0.0, n)
    vals = sitk.GetArrayViewFromImage(det)[m].astype(np.float64)
    if vals.size == 0:
        return JacobianStats(math.nan, math.nan, math.nan, 0.0, 0)
    return JacobianStats(min=float(vals.min()), max=float(vals.max()), mean=float(vals.mean()),
                         fraction_nonpositive=float(np.mean(vals <= 0)), n_voxels=n)


def displacement(transform: sitk.Transform, grid: sitk.Image) -> np.ndarray:
    """``T(x) − x`` [mm] for every voxel centre of ``grid``: (z, y, x, 3) float64, components
    in (x, y, z) physical order."""
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, grid.GetSize(),
                                              grid.GetOrigin(), grid.GetSpacing(),
                                              grid.GetDirection())
    return sitk.GetArrayFromImage(field)


def tre_from_displacements(registered: np.ndarray, true: np.ndarray, mask: np.ndarray
                           ) -> TREStats:
    """TRE statistics from two displacement arrays (z, y, x, 3) [mm] over a boolean mask."""
    e = np.linalg.norm(registered - true, axis=-1)[mask]
    if e.size == 0:
        return TREStats(math.nan, math.nan, math.nan, math.nan, 0)
    return TREStats(mean_mm=float(e.mean()), median_mm=float(np.median(e)),
                    p95_mm=float(np.percentile(e, 95)), max_mm=float(e.max()),
                    n_points=int(e.size))


def tre_stats(registered: sitk.Transform, true: sitk.Transform, grid: sitk.Image,
              mask: sitk.Image) -> TREStats:
    """TRE of ``registered`` against ``true`` (both reference → moving points) over the mask's
    voxels on ``grid``."""
    m = sitk.GetArrayViewFromImage(mask) > 0
    return tre_from_displacements(displacement(registered, grid), displacement(true, grid), m)


def max_displacement_mm(transform: sitk.Transform | np.ndarray, start: sitk.Transform,
                        grid: sitk.Image, mask: sitk.Image) -> float:
    """Largest ``|T(x) − T₀(x)|`` [mm] over the mask (T₀ the registration's starting point);
    ``transform`` may be given as its displacement array on ``grid``."""
    m = sitk.GetArrayViewFromImage(mask) > 0
    if not m.any():
        return 0.0
    d_t = transform if isinstance(transform, np.ndarray) else displacement(transform, grid)
    d = np.linalg.norm(d_t - displacement(start, grid), axis=-1)[m]
    return float(d.max())


def body_dice(fixed_mask: sitk.Image, moving_mask: sitk.Image,
              transform: sitk.Transform) -> float:
    """Dice of the fixed body mask and the moving body mask brought onto the fixed grid."""
    warped = sitk.Resample(moving_mask, fixed_mask, transform, sitk.sitkNearestNeighbor, 0,
                           sitk.sitkUInt8)
    return dice(sitk.GetArrayViewFromImage(fixed_mask) > 0,
                sitk.GetArrayViewFromImage(warped) > 0)


def check_timepoint(label: str, *, thresholds: QAThresholds, metric_before: float,
                    metric_after: float, body_dice_after: float, max_disp_mm: float,
                    jacobian: JacobianStats | None,
                    activity_changes_raw: dict[str, float]) -> None:
    """Refuse a registration that is not trustworthy.

    Raises
    ------
    RegistrationError
        Naming the timepoint, the failed criterion, the measured value and the limit.
    """
    if not (math.isfinite(metric_after) and math.isfinite(metric_before)):
        raise RegistrationError(label, f"the similarity metric is not finite (before "
                                       f"{metric_before}, after {metric_after}): the images do "
                                       "not overlap after registration")
    # Mattes MI is negative; lower is better. Worsening relative to |before|.
    worse = (metric_after - metric_before) / max(abs(metric_before), 1e-12)
    if worse > thresholds.max_metric_worsening:
        raise RegistrationError(label, f"the similarity metric got worse ({metric_before:.4f} "
                                       f"→ {metric_after:.4f}, {worse:+.1%} > "
                                       f"{thresholds.max_metric_worsening:.1%} allowed)")
    if jacobian is not None and jacobian.fraction_nonpositive > thresholds.max_folding_fraction:
        raise RegistrationError(label, "the transform folds space: "
                                       f"{jacobian.fraction_nonpositive:.2%} of body voxels "
                                       "have Jacobian determinant ≤ 0 (min "
                                       f"{jacobian.min:.3f}; limit "
                                       f"{thresholds.max_folding_fraction:.2%})")
    if max_disp_mm > thresholds.max_displacement_mm:
        raise RegistrationError(label, f"implausible displacement of {max_disp_mm:.0f} mm inside "
                                       f"the body (limit {thresholds.max_displacement_mm:.0f} mm"
                                       " for repositioning between sessions)")
    if body_dice_after < thresholds.min_body_dice:
        raise RegistrationError(label, f"body outlines do not match after registration (Dice "
                                       f"{body_dice_after:.3f} < {thresholds.min_body_dice:.2f}); "
                                       "the images are probably misaligned or not of the same "
                                       "patient")
    for grid, change in activity_changes_raw.items():
        if abs(change) > thresholds.max_raw_activity_change:
            raise RegistrationError(label, f"resampling onto the reference {grid} grid changed "
                                           f"the in-field activity by {change:+.1%} before "
                                           "correction (limit "
                                           f"±{thresholds.max_raw_activity_change:.0%}): the "
                                           "activity lies on the field-of-view edge or the "
                                           "transform is wrong")
