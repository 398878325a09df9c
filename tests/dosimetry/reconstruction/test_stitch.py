"""Bed stitching: lattice, overlap rules, fractional offsets, gaps."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from dosimetry.errors import GeometryError, InputError
from dosimetry.reconstruction import ObjectGeometry, stitch_beds


def _bed(z0: float, value: float, n: int = 10, dz: float = 2.0) -> sitk.Image:
    g = ObjectGeometry((4, 4, n), (3.0, 3.0, dz), (-4.5, -4.5, z0))
    arr = np.full(g.shape_zyx, value, np.float32)
    arr += np.arange(n, dtype=np.float32)[:, None, None] * 0.0  # flat per bed
    return g.image(arr)


def test_midpoint_overlap():
    lower, upper = _bed(0.0, 1.0), _bed(12.0, 2.0)  # 6-slice offset: slices 6…9 overlap (4)
    res = stitch_beds([upper, lower])  # any order
    img = res.image
    assert img.GetOrigin()[2] == 0.0 and img.GetSize()[2] == 16
    prof = sitk.GetArrayFromImage(img)[:, 0, 0]
    # lower bed keeps the lower half of the overlap (slices 6, 7), upper the rest
    np.testing.assert_array_equal(prof, [1.0] * 8 + [2.0] * 8)
    assert res.overlaps_slices == (4,)
    assert "half of an overlap nearer its own centre" in res.description


def test_linear_overlap_conserves_and_valid_ranges():
    lower, upper = _bed(0.0, 1.0), _bed(12.0, 1.0)
    res = stitch_beds([lower, upper], method="linear")
    np.testing.assert_allclose(sitk.GetArrayFromImage(res.image)[:, 0, 0], 1.0, rtol=1e-6)
    # only slices 1…8 of each bed are valid: overlap shrinks to slices 7…9 of the lattice
    res = stitch_beds([lower, _bed(12.0, 2.0)], valid_slices=[(1, 8), (1, 8)])
    prof = sitk.GetArrayFromImage(res.image)[:, 0, 0]
    assert res.image.GetOrigin()[2] == pytest.approx(2.0)  # lattice from the first valid slice
    assert res.overlaps_slices == (2,)  # lower valid to lattice 8, upper from 7
    np.testing.assert_array_equal(prof, [1.0] * 7 + [2.0] * 7)


def test_fractional_offset_resampled_and_gap_reported():
    res = stitch_beds([_bed(0.0, 1.0), _bed(11.0, 1.0)])  # 5.5 slices off: interpolated
    assert any("0.500 slice off the stitching lattice" in n for n in res.notes)
    np.testing.assert_allclose(sitk.GetArrayFromImage(res.image), 1.0, rtol=1e-6)
    res = stitch_beds([_bed(0.0, 1.0), _bed(24.0, 1.0)])  # 12 slices apart, 10 each: gap of 2
    assert res.overlaps_slices == (-2,)
    assert any("gap of 2 slice(s)" in n for n in res.notes)
    assert sitk.GetArrayFromImage(res.image)[10:12].max() == 0.0


def test_stitch_errors():
    g = ObjectGeometry((5, 5, 4), (3.0, 3.0, 2.0), (0.0, 0.0, 0.0))
    with pytest.raises(GeometryError, match=r"does not share the x–y plane"):
        stitch_beds([_bed(0.0, 1.0), g.image()])
    with pytest.raises(InputError, match=r"stitching method 'mean'"):
        stitch_beds([_bed(0.0, 1.0)], method="mean")
    rotated = _bed(0.0, 1.0)
    rotated.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, 1))
    with pytest.raises(GeometryError, match=r"not the identity"):
        stitch_beds([rotated])
