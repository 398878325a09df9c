"""Time-activity curves of VOIs from a label map and a series of activity images.

For every label > 0 and every timepoint: total activity [Bq] and mean concentration [Bq/mL],
optionally divided by a recovery coefficient for VOIs small enough to need one
(:class:`~dosimetry.kinetics.recovery.RecoveryCurve`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from dosimetry.errors import InputError
from dosimetry.kinetics.fit import FallbackWarning, TimeActivityCurve
from dosimetry.kinetics.imaging import (
    ImageUnit,
    check_series,
    label_array,
    to_bq_per_voxel_factor,
    voxel_volume_ml,
)
from dosimetry.kinetics.recovery import RecoveryCurve


@dataclass(frozen=True)
class VoiTac:
    """The time-activity curve of one VOI.

    Attributes
    ----------
    label : int
        Label value in the label map.
    name : str
        VOI name (``label_<n>`` when none was given).
    n_voxels : int
    volume_ml : float
        VOI volume [mL].
    times_s : tuple of float
        Image times [s].
    total_bq : tuple of float
        Total activity per timepoint [Bq], recovery-corrected when ``recovery_coefficient`` ≠ 1.
    mean_bq_per_ml : tuple of float
        Mean concentration per timepoint [Bq/mL], corrected likewise.
    recovery_coefficient : float
        RC applied (1.0: none).
    """

    label: int
    name: str
    n_voxels: int
    volume_ml: float
    times_s: tuple[float, ...]
    total_bq: tuple[float, ...]
    mean_bq_per_ml: tuple[float, ...]
    recovery_coefficient: float = 1.0

    def curve(self, sigma_bq: Sequence[float] | None = None) -> TimeActivityCurve:
        """The VOI's total-activity curve for :func:`~dosimetry.kinetics.fit.fit_tac`."""
        return TimeActivityCurve(self.times_s, self.total_bq,
                                 None if sigma_bq is None else tuple(sigma_bq), voi=self.name)


@dataclass(frozen=True)
class VoiTacResult:
    """TACs of every labelled VOI, with notes on what was done to them."""

    tacs: tuple[VoiTac, ...]
    image_unit: ImageUnit
    warnings: tuple[str, ...] = ()

    def __getitem__(self, key: int | str) -> VoiTac:
        for tac in self.tacs:
            if tac.label == key or tac.name == key:
                return tac
        raise KeyError(f"no VOI {key!r}; have {[t.name for t in self.tacs]}")


def voi_tacs(labels: sitk.Image, images: Sequence[sitk.Image],
             times_s: Sequence[float] | np.ndarray, *,
             image_unit: ImageUnit | str = ImageUnit.BQ_PER_ML,
             names: Mapping[int, str] | None = None,
             recovery: RecoveryCurve | None = None,
             recovery_max_volume_ml: float | None = None) -> VoiTacResult:
    """Mean and total activity per label per timepoint.

    Parameters
    ----------
    labels : SimpleITK.Image
        Integer label map (0 = background) on the images' grid.
    images : sequence of SimpleITK.Image
        Activity images, one per timepoint, same grid.
    times_s : sequence of float
        Image times after injection [s].
    image_unit : ImageUnit
        Whether voxel values are Bq/mL (default) or Bq per voxel.
    names : mapping int → str, optional
        VOI names by label.
    recovery : RecoveryCurve, optional
        Divide activities of VOIs up to ``recovery_max_volume_ml`` by RC(volume). Larger VOIs
        are left alone (organ-sized VOIs need no sphere-based correction, and the curve is not
        calibrated there).
    recovery_max_volume_ml : float, optional
        Upper volume for the correction (default: the largest calibrated volume).

    Returns
    -------
    VoiTacResult

    Raises
    ------
    GeometryError
        When the label map or an image is not on the first image's grid.
    InputError
        Bad times, non-integer labels, no labelled voxel.

    Notes
    -----
    Non-finite voxel values are counted as zero activity and announced
    (:class:`~dosimetry.kinetics.fit.FallbackWarning`).
    """
    t = check_series(images, times_s, (labels, "label map"))
    unit = ImageUnit(image_unit)
    lab = label_array(labels)
    n_labels = int(lab.max()) + 1 if lab.size else 1
    counts = np.bincount(lab, minlength=n_labels)
    present = [int(i) for i in np.nonzero(counts)[0] if i > 0]
    if not present:
        raise InputError("label map has no voxel with a label > 0")
    vv = voxel_volume_ml(images[0])
    notes: list[str] = []
    totals = np.zeros((len(images), n_labels))
    for i, img in enumerate(images):
        arr = np.asarray(sitk.GetArrayViewFromImage(img), dtype=np.float64).ravel()
        bad = ~np.isfinite(arr)
        if bad.any():
            hit = np.unique(lab[bad])
            hit = hit[hit > 0]
            if hit.size:
                msg = (f"image {i}: {int(bad.sum())} non-finite voxel(s), in label(s) "
                       f"{hit.tolist()}, counted as zero activity")
                notes.append(msg)
                warnings.warn(msg, FallbackWarning, stacklevel=2)
            arr = np.where(bad, 0.0, arr)
        totals[i] = np.bincount(lab, weights=arr, minlength=n_labels)
        totals[i] *= to_bq_per_voxel_factor(img, unit)
    vmax = recovery_max_volume_ml
    if recovery is not None and vmax is None:
        vmax = recovery.volumes_ml[-1]
    out = []
    for lb in present:
        vol = counts[lb] * vv
        rc = 1.0
        if recovery is not None and vol <= vmax:
            rc = float(recovery.rc(vol))
            if not recovery.in_range(vol):
                notes.append(f"label {lb}: volume {vol:.3g} mL is below the smallest calibrated "
                             f"volume {recovery.volumes_ml[0]:.3g} mL; RC held at {rc:.3g}")
        tot = totals[:, lb] / rc
        name = (names or {}).get(lb, f"label_{lb}")
        out.append(VoiTac(lb, name, int(counts[lb]), float(vol), tuple(float(x) for x in t),
                          tuple(float(x) for x in tot), tuple(float(x) for x in tot / vol), rc))
    return VoiTacResult(tuple(out), unit, tuple(notes))
