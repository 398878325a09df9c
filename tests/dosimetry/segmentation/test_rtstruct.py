"""RTSTRUCT: even–odd polygon fill, rasterisation onto aligned and non-aligned grids, reading."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from dosimetry.errors import GeometryError, InputError
from dosimetry.segmentation.names import StructureKind
from dosimetry.segmentation.rtstruct import (
    RTStructWarning,
    contour_volume_ml,
    fill_polygons,
    polygon_area_mm2,
    rasterise_roi,
    read_rtstruct,
    rtstruct_to_labelmap,
    write_rtstruct,
)
from tests.dosimetry.segmentation.conftest import circle, make_grid

FOR_UID = "1.2.826.0.1.3680043.8.498.1"


def _band_tolerance(perimeter_px: float) -> float:
    """Expected |pixel count − area| for centre sampling of a smooth boundary, in pixels.

    Each pixel the boundary crosses is counted in or out by whether its centre is inside; the
    error per pixel is uniform in ±½, so the total is a sum of ~P independent terms of standard
    deviation 1/√12 ≈ 0.29 px (P = perimeter in pixels). Four standard deviations.
    """
    return 4.0 * 0.29 * math.sqrt(perimeter_px)


# ------------------------------------------------------------------------------------ fill
def test_square_between_pixel_centres_fills_exactly():
    # edges at half-integer indices: exactly 20 × 12 centres inside
    sq = np.array([[4.5, 3.5], [24.5, 3.5], [24.5, 15.5], [4.5, 15.5]])
    m = fill_polygons([sq], (30, 40))
    assert m.sum() == 20 * 12
    assert m[4:16, 5:25].all()


def test_circle_area_matches_pi_r_squared():
    r = 40.0
    c = circle((100.3, 80.7), r, 0.0, n=2000)[:, :2]
    m = fill_polygons([c], (200, 200))
    # 2000-gon area differs from πr² by 2e-6 relative: negligible
    assert abs(m.sum() - math.pi * r * r) < _band_tolerance(2 * math.pi * r)
    assert abs(polygon_area_mm2(c) - math.pi * r * r) < 1e-4 * math.pi * r * r


def test_hole_and_island_by_even_odd_rule():
    # centres off the pixel lattice: a lattice-centred circle has pixel centres exactly on its
    # boundary, where the count is degenerate rather than random
    outer = circle((50.3, 49.6), 40, 0)[:, :2]
    hole = circle((50.3, 49.6), 20, 0)[:, :2]
    island = circle((50.3, 49.6), 8, 0)[:, :2]
    m = fill_polygons([outer, hole], (100, 100))
    want = math.pi * (40**2 - 20**2)
    assert abs(m.sum() - want) < _band_tolerance(2 * math.pi * 60)
    assert not m[50, 50] and m[50, 15]
    m3 = fill_polygons([outer, hole, island], (100, 100))
    assert m3[50, 50] and not m3[50, 35]
    # two disjoint contours are two islands, and the winding of a contour does not matter
    left, right = circle((25.37, 50.21), 10, 0)[:, :2], circle((75.61, 49.73), 10, 0)[::-1, :2]
    two = fill_polygons([left, right], (100, 100))
    assert abs(two.sum() - 2 * math.pi * 100) < _band_tolerance(2 * 2 * math.pi * 10)


def test_polygon_partly_outside_the_grid_is_clipped():
    sq = np.array([[-10.5, -10.5], [5.5, -10.5], [5.5, 5.5], [-10.5, 5.5]])
    m = fill_polygons([sq], (20, 20))
    assert m.sum() == 6 * 6


# ------------------------------------------------------------------------------------ grids
def _sphere_contours(radius, z_planes, centre=(0.0, 0.0)):
    return [circle(centre, math.sqrt(radius**2 - z**2), z, n=360)
            for z in z_planes if abs(z) < radius]


def test_aligned_contours_fill_their_slices(tmp_path):
    grid = make_grid(size=(64, 64, 20), spacing=(1.0, 1.0, 2.0), origin=(-32, -32, -20))
    zs = -20 + 2.0 * np.arange(20)  # the slice centres
    contours = _sphere_contours(15.0, zs, centre=(0.37, -0.21))  # off the pixel lattice
    path = write_rtstruct(tmp_path / "rs.dcm", [("Liver", contours)],
                          frame_of_reference_uid=FOR_UID)
    ss = read_rtstruct(path)
    roi = ss.roi("Liver")
    m = rasterise_roi(roi, grid)
    for k, z in enumerate(zs):
        r2 = 15.0**2 - z**2
        if r2 <= 0:
            assert not m[k].any()
            continue
        area = math.pi * r2  # mm² = pixels (1 mm pixels)
        assert abs(m[k].sum() - area) <= _band_tolerance(2 * math.pi * math.sqrt(r2)) + 1
    vol = m.sum() * 2.0 * 1e-3
    assert vol == pytest.approx(contour_volume_ml(roi), rel=0.02)


def test_contours_between_slices_go_through_the_auxiliary_grid(tmp_path):
    # contour planes 1 mm off the slice centres (half a spacing): each stands for a 2 mm slab
    grid = make_grid(size=(64, 64, 20), spacing=(1.0, 1.0, 2.0), origin=(-32, -32, -20))
    zs = -19.0 + 2.0 * np.arange(19)
    contours = _sphere_contours(15.0, zs)
    path = write_rtstruct(tmp_path / "rs.dcm", [("Liver", contours)],
                          frame_of_reference_uid=FOR_UID)
    roi = read_rtstruct(path).roi("liver")
    m = rasterise_roi(roi, grid)
    want = contour_volume_ml(roi)
    # shape-based interpolation: between two planes the radius varies linearly, a frustum, whose
    # volume differs from the two half-slabs of the contour volume by πh(r₁ − r₂)²/6 per gap;
    # summed over this sphere that is ≈ 0.5 %; the in-plane boundary band adds ≈ 0.3 %
    assert m.sum() * 2.0e-3 == pytest.approx(want, rel=0.02)


def test_oblique_grid_volume_is_kept(tmp_path):
    # target grid rotated by 30° about x: the contours' planes are not its slices
    a = math.radians(30)
    d = (1, 0, 0, 0, math.cos(a), math.sin(a), 0, -math.sin(a), math.cos(a))
    grid = make_grid(size=(60, 60, 60), spacing=(1.0, 1.0, 1.0), origin=(0, 0, 0),
                     direction=d)
    centre = grid.TransformContinuousIndexToPhysicalPoint((29.5, 29.5, 29.5))
    zs = centre[2] + np.arange(-19.0, 20.0, 1.0)
    contours = [circle(centre[:2], math.sqrt(max(20.0**2 - (z - centre[2]) ** 2, 0.0)), z)
                for z in zs if abs(z - centre[2]) < 20.0]
    path = write_rtstruct(tmp_path / "rs.dcm", [("Sphere", contours)],
                          frame_of_reference_uid=FOR_UID)
    roi = read_rtstruct(path).roi("Sphere")
    m = rasterise_roi(roi, grid)
    want = 4.0 / 3.0 * math.pi * 20.0**3 * 1e-3  # 33.5 mL; contours sample it at 1 mm
    # 1 mm voxels on a 20 mm sphere: the boundary band (~5000 voxels) gives ≈ 0.3 %; the 1 mm
    # slab model of the contours adds ≲ 1 %
    assert m.sum() * 1e-3 == pytest.approx(want, rel=0.03)


def test_labelmap_names_kinds_and_overlaps(tmp_path):
    grid = make_grid()
    zs = -20 + 2.0 * np.arange(20)
    lung = [circle((0, 0), 25, z) for z in zs[2:18]]
    tumour = [circle((5, 5), 6, z) for z in zs[8:12]]
    path = write_rtstruct(tmp_path / "rs.dcm", [("Lung", lung), ("GTV tumour", tumour)],
                          frame_of_reference_uid=FOR_UID, interpreted_types=["ORGAN", "GTV"])
    lm = rtstruct_to_labelmap(path, grid)
    assert [(e.name, e.kind) for e in lm.table] == [("lung", StructureKind.ORGAN),
                                                    ("gtv_tumour", StructureKind.LESION)]
    arr = lm.array()
    assert (arr == 2).sum() > 0 and arr[10, 37, 37] == 2  # tumour wins over lung
    assert any("overlaps" in w for w in lm.warnings)
    sub = rtstruct_to_labelmap(path, grid, rois=["Lung"])
    assert [e.name for e in sub.table] == ["lung"]


def test_missing_roi_lists_the_rois(tmp_path):
    grid = make_grid()
    path = write_rtstruct(tmp_path / "rs.dcm", [("Lung", [circle((0, 0), 5, 0.0)])],
                          frame_of_reference_uid=FOR_UID)
    with pytest.raises(InputError, match=r"no ROI 'Heart'.*'Lung'"):
        rtstruct_to_labelmap(path, grid, rois=["Heart"])
    with pytest.raises(GeometryError, match="frame of reference"):
        rtstruct_to_labelmap(path, grid, frame_of_reference_uid="1.2.3")


def test_non_closed_contours_are_left_out_with_a_warning(tmp_path):
    import pydicom

    path = write_rtstruct(tmp_path / "rs.dcm", [("Lung", [circle((0, 0), 5, 0.0),
                                                          circle((0, 0), 5, 2.0)])],
                          frame_of_reference_uid=FOR_UID)
    ds = pydicom.dcmread(path)
    ds.ROIContourSequence[0].ContourSequence[1].ContourGeometricType = "POINT"
    ds.save_as(path)
    with pytest.warns(RTStructWarning, match="left out 1 POINT contour"):
        ss = read_rtstruct(path)
    assert len(ss.roi("Lung").contours) == 1


def test_not_an_rtstruct_is_refused(tmp_path):
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"not dicom at all")
    with pytest.raises(InputError, match="not a readable DICOM"):
        read_rtstruct(bad)
    img = sitk.Image([4, 4, 2], sitk.sitkInt16)
    from dosimetry.io.dicom_write import DicomSeriesMeta, uid_from_seed, write_ct_series

    meta = DicomSeriesMeta(patient_id="X", study_uid=uid_from_seed("s"),
                           series_uid=uid_from_seed("se"), frame_of_reference_uid=FOR_UID)
    write_ct_series(sitk.Cast(img, sitk.sitkFloat32), tmp_path / "ct", meta)
    with pytest.raises(InputError, match="no RTSTRUCT"):
        read_rtstruct(tmp_path / "ct")
    with pytest.raises(InputError, match="not an RT Structure Set"):
        read_rtstruct(tmp_path / "ct" / "CT_0001.dcm")
