"""Label map → RTSTRUCT contours → rasterised back onto the same grid."""

import numpy as np
import pydicom
import SimpleITK as sitk

from dosimetry.segmentation.contours import labelmap_rois
from dosimetry.segmentation.rtstruct import rtstruct_to_labelmap, write_rtstruct


def _labels():
    z, y, x = np.indices((20, 40, 40))
    lab = np.zeros((20, 40, 40), np.uint16)
    lab[((x - 20) ** 2 + (y - 18) ** 2 + (z - 10) ** 2) < 9**2] = 1
    lab[3:8, 5:12, 25:35] = 2  # a box touching nothing
    lab[10:14, 0:6, 0:6] = 3  # touches the image edge
    img = sitk.GetImageFromArray(lab)
    img.SetSpacing((2.0, 2.0, 3.0))
    img.SetOrigin((-40.0, -30.0, 100.0))
    return img, lab


def test_contours_round_trip_through_rtstruct(tmp_path):
    img, lab = _labels()
    names = {1: "liver", 2: "lesion_1", 3: "edge"}
    rois = labelmap_rois(img, names)
    assert [n for n, _ in rois] == ["liver", "lesion_1", "edge"]
    path = write_rtstruct(tmp_path / "rs.dcm", rois, frame_of_reference_uid="1.2.826.0.1.3")
    ds = pydicom.dcmread(path)
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["liver", "lesion_1", "edge"]
    back = rtstruct_to_labelmap(path, img)
    arr = back.array()
    for label, name in names.items():
        ours = lab == label
        theirs = arr == back.table.by_name(name).label
        # Contours at the 0.5 iso-level half a voxel outside the boundary centres, rasterised by
        # voxel centres inside: the mask comes back voxel for voxel.
        assert np.array_equal(ours, theirs), name
