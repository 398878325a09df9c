"""DICOM SEG: round trip through our writer, frames mapped by position, other grids."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dosimetry.errors import GeometryError, InputError
from dosimetry.segmentation.labelmap import LabelEntry, LabelMap, LabelTable, label_image
from dosimetry.segmentation.names import StructureKind
from dosimetry.segmentation.seg import read_seg, read_seg_info, write_seg
from tests.dosimetry.segmentation.conftest import make_grid


@pytest.fixture
def labels():
    # a flipped, axis-permuted direction: geometry must travel with the frames
    ref = make_grid(size=(40, 30, 20), spacing=(2.0, 2.5, 3.0), origin=(-10, 5, 100),
                    direction=(0, 1, 0, 1, 0, 0, 0, 0, -1))
    a = np.zeros((20, 30, 40), np.uint16)
    a[5:10, 5:20, 10:30] = 1
    a[12:15, 3:6, 3:8] = 2
    a[7:9, 8:10, 12:14] = 2  # a lesion inside the organ
    table = LabelTable((LabelEntry(1, "liver"), LabelEntry(2, "lesion_1", StructureKind.LESION)))
    return LabelMap(label_image(a, ref), table), ref, a


def _n_frames(a):
    return sum(int(np.any(a[z] == lab)) for lab in (1, 2) for z in range(a.shape[0]))


def test_round_trip_with_shuffled_frames(tmp_path, labels):
    lm, ref, a = labels
    order = list(np.random.default_rng(0).permutation(_n_frames(a)))
    path = write_seg(lm, tmp_path / "seg.dcm", frame_order=order)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and ds.BitsAllocated == 1
    back = read_seg(path, ref)
    assert np.array_equal(back.array(), a)
    assert [(e.name, e.kind) for e in back.table] == [("liver", StructureKind.ORGAN),
                                                      ("lesion_1", StructureKind.LESION)]
    info = read_seg_info(path)
    assert [s.label for s in info.segments] == ["liver", "lesion_1"]


def test_native_geometry_without_reference(tmp_path, labels):
    lm, ref, a = labels
    back = read_seg(write_seg(lm, tmp_path / "seg.dcm"), None)
    # the plane stack spans only the slices holding a segment (z 3…14 → 12 planes; lesion
    # rows 3…14 and organ rows 5…9 give z indices 5…14)
    img = back.image
    assert img.GetDirection() == ref.GetDirection()
    assert np.allclose(img.GetSpacing(), ref.GetSpacing())
    on_ref = sitk.Resample(img, ref, sitk.Transform(3, sitk.sitkIdentity),
                           sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)
    assert np.array_equal(sitk.GetArrayViewFromImage(on_ref), a)


def test_onto_a_finer_grid_keeps_volumes(tmp_path, labels):
    lm, ref, a = labels
    fine = make_grid(size=(80, 60, 40), spacing=(1.0, 1.25, 1.5), origin=ref.GetOrigin(),
                     direction=ref.GetDirection())
    # shift the fine grid by half a coarse voxel minus half a fine voxel so both cover the
    # same volume
    o = np.asarray(ref.GetOrigin()) - np.asarray(ref.GetDirection()).reshape(3, 3) @ (
        np.array([0.5, 0.625, 0.75]))
    fine.SetOrigin(o.tolist())
    back = read_seg(write_seg(lm, tmp_path / "seg.dcm"), fine)
    v_coarse = np.prod(ref.GetSpacing())
    v_fine = np.prod(fine.GetSpacing())
    for lab in (1, 2):
        # each coarse voxel becomes exactly 8 fine voxels (grids aligned on voxel faces)
        assert (back.array() == lab).sum() * v_fine == pytest.approx((a == lab).sum() * v_coarse)


def test_not_a_seg_and_broken_geometry_are_refused(tmp_path, labels):
    lm, ref, _ = labels
    path = write_seg(lm, tmp_path / "seg.dcm")
    ds = pydicom.dcmread(path)
    ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient = [
        "999", "999", "100"]
    ds.save_as(tmp_path / "bad.dcm")
    with pytest.raises(GeometryError, match="not on one stack"):
        read_seg(tmp_path / "bad.dcm", ref)
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence[1].SegmentIdentificationSequence
    ds.save_as(tmp_path / "bad2.dcm")
    with pytest.raises(InputError, match="frame 2 lacks"):
        read_seg(tmp_path / "bad2.dcm", ref)
    ds = pydicom.dcmread(path)
    ds.Modality = "CT"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.save_as(tmp_path / "ct.dcm")
    with pytest.raises(InputError, match="not a DICOM Segmentation"):
        read_seg(tmp_path / "ct.dcm", ref)
    with pytest.raises(GeometryError, match="frame of reference"):
        read_seg(path, ref, frame_of_reference_uid="1.2.3.4")
