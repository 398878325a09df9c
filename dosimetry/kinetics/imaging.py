"""Shared checks for series of activity images (same grid, times, units, masks)."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import numpy as np
import SimpleITK as sitk

from dosimetry import units
from dosimetry.errors import InputError
from dosimetry.io.images import require_same_grid


class ImageUnit(StrEnum):
    """What the voxel values of an activity image are."""

    BQ_PER_VOXEL = "Bq"  # activity in the voxel
    BQ_PER_ML = "Bq/mL"  # activity concentration


def voxel_volume_ml(image: sitk.Image) -> float:
    """Volume of one voxel [mL] from the image spacing [mm]."""
    return units.voxel_volume_ml(image.GetSpacing())


def to_bq_per_voxel_factor(image: sitk.Image, unit: ImageUnit | str) -> float:
    """Factor turning the image's voxel values into Bq per voxel."""
    u = ImageUnit(unit)
    return voxel_volume_ml(image) if u is ImageUnit.BQ_PER_ML else 1.0


def check_series(images: Sequence[sitk.Image], times_s: Sequence[float] | np.ndarray,
                 *others: tuple[sitk.Image | None, str]) -> np.ndarray:
    """Validate a series of activity images and their times; return the times as an array.

    Parameters
    ----------
    images : sequence of SimpleITK.Image
        One scalar 3D image per timepoint, all on one grid.
    times_s : sequence of float
        Time of each image after injection [s]: finite, ≥ 0, distinct.
    *others : (image or None, name)
        Further images that must share the grid (mask, label map).

    Raises
    ------
    InputError
        Wrong count, bad times, non-scalar images.
    GeometryError
        Any image not on the first image's grid (size, spacing, origin, direction).
    """
    images = list(images)
    t = np.asarray(times_s, dtype=float).ravel()
    if len(images) < 2:
        raise InputError(f"need at least 2 activity images, got {len(images)}")
    if t.size != len(images):
        raise InputError(f"{len(images)} images but {t.size} times")
    for i, ti in enumerate(t):
        if not np.isfinite(ti) or ti < 0:
            raise InputError(f"time of image {i} must be ≥ 0 s after injection, got {ti}")
    if np.unique(t).size != t.size:
        raise InputError(f"duplicate image times: {[units.s_to_hours(x) for x in t]} h")
    ref = images[0]
    for i, img in enumerate(images):
        if img.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(f"image {i} has {img.GetNumberOfComponentsPerPixel()} components "
                             "per voxel; activity images must be scalar")
        if i:
            require_same_grid(ref, img, "image 0", f"image {i} "
                              f"(t = {units.s_to_hours(t[i]):.4g} h)")
    for img, name in others:
        if img is not None:
            require_same_grid(ref, img, "image 0", name)
    return t


def label_array(labels: sitk.Image, what: str = "label map") -> np.ndarray:
    """Integer labels as a flat int64 array (z, y, x order); refuses non-integer values."""
    arr = sitk.GetArrayViewFromImage(labels)
    if np.issubdtype(arr.dtype, np.integer):
        out = np.asarray(arr, dtype=np.int64).ravel()
    else:
        f = np.asarray(arr, dtype=float).ravel()
        if not np.all(np.isfinite(f)) or np.any(f != np.round(f)):
            bad = f[~(np.isfinite(f) & (f == np.round(f)))][0]
            raise InputError(f"{what} must hold integer labels, found {bad}")
        out = f.astype(np.int64)
    if out.size and out.min() < 0:
        raise InputError(f"{what} has a negative label {int(out.min())}")
    return out
