"""Stitching the reconstructions of several bed positions into one image.

Each bed is reconstructed on its own grid; the grids share the transaxial plane and differ in z.
The stitched grid spans from the lowest to the highest valid slice of all beds, on the z lattice
of the lowest bed (a bed whose slices fall between lattice points is resampled linearly in z
onto it, which is reported). Only each bed's *valid* slices are used (those inside the
detector's axial field of view, see :func:`dosimetry.reconstruction.recon.axial_field_rows`).

Overlap (where two consecutive beds both have valid slices):

* ``midpoint`` (default; what PyTomography's ``stitch_multibed`` does): the lower bed supplies
  the lower half of the overlap and the upper bed the upper half, so every slice comes from the
  bed in which it lies further from the axial edge (the edge slices of a bed have the lowest
  sensitivity and the most noise);
* ``linear``: a weighted mean with weights falling linearly from 1 to 0 across the overlap
  (weights sum to 1, so activity is conserved), which hides a step between beds at the cost of
  mixing the noisier edge slices in.

A gap between beds (no overlap) is left at zero and reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import SimpleITK as sitk

from dosimetry.errors import GeometryError, InputError
from dosimetry.reconstruction.geometry import ObjectGeometry

__all__ = ["StitchMethod", "StitchResult", "stitch_beds"]


class StitchMethod(StrEnum):
    """How overlapping slices of consecutive beds are combined."""

    MIDPOINT = "midpoint"
    LINEAR = "linear"


@dataclass(frozen=True, eq=False)
class StitchResult:
    """A stitched image and how the overlaps were handled.

    Attributes
    ----------
    image : SimpleITK.Image
    method : StitchMethod
    overlaps_slices : tuple of int
        Overlapping valid slices between consecutive beds (negative: a gap).
    description : str
        One line for reports.
    notes : tuple of str
    """

    image: sitk.Image
    method: StitchMethod
    overlaps_slices: tuple[int, ...]
    description: str
    notes: tuple[str, ...] = ()


def stitch_beds(images: Sequence[sitk.Image],
                valid_slices: Sequence[tuple[int, int]] | None = None,
                method: StitchMethod | str = StitchMethod.MIDPOINT) -> StitchResult:
    """Stitch bed reconstructions (any order) into one image.

    Parameters
    ----------
    images : sequence of SimpleITK.Image
        One per bed: identity direction, the same x–y grid and z spacing.
    valid_slices : sequence of (int, int), optional
        Per image, the first and last slice (inclusive) holding valid data; default all.
    method : StitchMethod or str
        ``"midpoint"`` or ``"linear"`` (see the module notes).

    Returns
    -------
    StitchResult

    Raises
    ------
    GeometryError
        Grids that differ in the x–y plane, spacing or direction.
    """
    try:
        method = StitchMethod(method)
    except ValueError:
        raise InputError(f"stitching method {method!r}: use one of "
                         f"{', '.join(m.value for m in StitchMethod)}") from None
    if not images:
        raise InputError("no bed images to stitch")
    geoms = [ObjectGeometry.from_image(im, f"bed {i + 1}") for i, im in enumerate(images)]
    ranges = list(valid_slices) if valid_slices is not None else \
        [(0, g.size[2] - 1) for g in geoms]
    if len(ranges) != len(images):
        raise InputError(f"{len(ranges)} valid-slice ranges for {len(images)} bed images")
    for i, ((a, b), g) in enumerate(zip(ranges, geoms, strict=True)):
        if not (0 <= a <= b < g.size[2]):
            raise InputError(f"bed {i + 1}: valid slices {a}…{b} outside 0…{g.size[2] - 1}")
    ref = geoms[0]
    for i, g in enumerate(geoms[1:], start=2):
        if g.size[:2] != ref.size[:2] or not np.allclose(g.spacing_mm, ref.spacing_mm,
                                                         rtol=1e-5) \
                or not np.allclose(g.origin_mm[:2], ref.origin_mm[:2], atol=0.01):
            raise GeometryError(f"bed {i} grid {g.to_dict()} does not share the x–y plane and "
                                f"spacing of bed 1 {ref.to_dict()}")
    if len(images) == 1:
        a, b = ranges[0]
        arr = sitk.GetArrayFromImage(images[0]).astype(np.float32)
        out = geoms[0].with_slices(a, b) if b > a else geoms[0]
        img = out.image(np.ascontiguousarray(arr[a:b + 1])) if b > a else images[0]
        return StitchResult(img, method, (), "one bed, no stitching")

    dz = ref.spacing_mm[2]
    order = sorted(range(len(images)), key=lambda i: geoms[i].z_of_slice(ranges[i][0]))
    base = geoms[order[0]]
    notes: list[str] = []
    arrays: list[np.ndarray] = []
    starts: list[int] = []  # lattice index of each array's slice 0
    lattice_ranges: list[tuple[int, int]] = []
    for i in order:
        g, (a, b) = geoms[i], ranges[i]
        arr = sitk.GetArrayFromImage(images[i]).astype(np.float32)
        shift = (g.origin_mm[2] - base.origin_mm[2]) / dz  # lattice index of bed slice 0
        if abs(shift - round(shift)) <= 0.01:
            k_start = round(shift)
        else:
            # lattice slice k_start + m lies at bed index m + f (0 < f < 1): interpolate
            k_start = int(np.ceil(shift))
            f = k_start - shift
            arr = ((1.0 - f) * arr[:-1] + f * arr[1:]).astype(np.float32)
            b = min(b - 1, arr.shape[0] - 1)
            if b < a:
                raise InputError(f"bed at z {g.origin_mm[2]:.2f} mm: too few valid slices to "
                                 "resample onto the stitching lattice")
            notes.append(f"bed at z {g.origin_mm[2]:.2f} mm lies {f:.3f} slice off the "
                         "stitching lattice; resampled linearly in z")
        arrays.append(arr)
        starts.append(k_start)
        lattice_ranges.append((k_start + a, k_start + b))
    first = min(r[0] for r in lattice_ranges)
    last = max(r[1] for r in lattice_ranges)
    out = np.zeros((last - first + 1, ref.shape_zyx[1], ref.shape_zyx[2]), dtype=np.float64)
    weights = [np.zeros(last - first + 1) for _ in arrays]
    for j, (a, b) in enumerate(lattice_ranges):
        weights[j][a - first:b - first + 1] = 1.0
    overlaps: list[int] = []
    for j in range(len(arrays) - 1):
        _, lo_b = lattice_ranges[j]
        up_a, _ = lattice_ranges[j + 1]
        n_ov = lo_b - up_a + 1
        overlaps.append(n_ov)
        if n_ov <= 0:
            notes.append(f"beds {j + 1} and {j + 2} (by z) leave a gap of {-n_ov} slice(s) "
                         f"({-n_ov * dz:.1f} mm) with no data; set to zero")
            continue
        ks = np.arange(up_a, lo_b + 1) - first
        if method is StitchMethod.MIDPOINT:
            half = n_ov // 2
            weights[j][ks[half:]] = 0.0  # lower bed keeps the lower half (the smaller, if odd)
            weights[j + 1][ks[:half]] = 0.0
        else:
            ramp = (np.arange(n_ov) + 1.0) / (n_ov + 1.0)
            weights[j][ks] = 1.0 - ramp
            weights[j + 1][ks] = ramp
    for j, arr in enumerate(arrays):
        for k in np.nonzero(weights[j])[0]:
            out[k] += weights[j][k] * arr[k + first - starts[j]]
    z0 = base.origin_mm[2] + first * dz
    geom = ObjectGeometry((*ref.size[:2], last - first + 1), ref.spacing_mm,
                          (ref.origin_mm[0], ref.origin_mm[1], z0))
    desc = (f"{len(images)} beds stitched ({method.value}); overlaps of "
            f"{', '.join(f'{n} slices ({n * dz:.0f} mm)' for n in overlaps)}")
    if method is StitchMethod.MIDPOINT:
        desc += ": each bed supplies the half of an overlap nearer its own centre"
    else:
        desc += ": linearly weighted mean across each overlap"
    return StitchResult(geom.image(out.astype(np.float32)), method, tuple(overlaps), desc,
                        tuple(notes))
