"""DICOM RT Dose: write, read back with our reader and with SimpleITK/GDCM."""

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dosimetry.errors import InputError
from dosimetry.io.dicom_write import DicomSeriesMeta, uid_from_seed
from dosimetry.io.rtdose import read_rtdose, write_rtdose

META = DicomSeriesMeta(patient_id="P1", study_uid=uid_from_seed("s"), series_uid=uid_from_seed("d"),
                       frame_of_reference_uid=uid_from_seed("f"))


def _dose(direction=None):
    rng = np.random.default_rng(3)
    img = sitk.GetImageFromArray(rng.gamma(2.0, 3.0, (9, 11, 13)).astype(np.float32))
    img.SetSpacing((4.8, 4.0, 3.5))
    img.SetOrigin((-100.0, 50.0, 1200.0))
    if direction is not None:
        img.SetDirection(direction)
    return img


@pytest.mark.parametrize("direction", [
    None,
    (1, 0, 0, 0, 1, 0, 0, 0, -1),  # left-handed: frames run against the normal
    tuple(sitk.VersorRigid3DTransform((0.1, 0.2, 0.05, 0.97)).GetMatrix()),  # oblique
])
def test_round_trip(tmp_path, direction):
    img = _dose(direction)
    path = write_rtdose(img, tmp_path / "dose.dcm", META, comment="DVK Lu-177")
    back = read_rtdose(path)
    # The reader may return the same grid with its slice axis reversed (a left-handed direction
    # comes back right-handed): sample it at the original voxel centres to compare. A grid
    # misplaced by a voxel would give other values, and one outside the box the fill value −1.
    same_grid = sitk.Resample(back, img, sitk.Transform(), sitk.sitkNearestNeighbor, -1.0)
    arr, got = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(same_grid)
    # uint32 quantisation keeps each voxel within 1.2e-10 of the peak; float32 storage of the
    # result limits agreement to ~1e-7 relative.
    np.testing.assert_allclose(got, arr, rtol=2e-7, atol=1e-9 * arr.max())
    ds = pydicom.dcmread(path)
    assert ds.Modality == "RTDOSE" and ds.DoseUnits == "GY" and ds.FrameOfReferenceUID == \
        META.frame_of_reference_uid


def test_gdcm_reads_the_same_grid(tmp_path):
    img = _dose()
    path = write_rtdose(img, tmp_path / "dose.dcm", META)
    gdcm = sitk.ReadImage(str(path))
    # GDCM returns the stored integers (it does not apply DoseGridScaling): scale them here.
    scale = float(pydicom.dcmread(path, stop_before_pixels=True).DoseGridScaling)
    np.testing.assert_allclose(sitk.GetArrayFromImage(gdcm).astype(np.float64) * scale,
                               sitk.GetArrayFromImage(img), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gdcm.GetOrigin(), img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(gdcm.GetSpacing(), img.GetSpacing(), atol=1e-4)


def test_bad_dose_refused(tmp_path):
    img = _dose()
    neg = sitk.GetImageFromArray(-sitk.GetArrayFromImage(img))
    with pytest.raises(InputError, match="negative"):
        write_rtdose(neg, tmp_path / "d.dcm", META)
    (tmp_path / "junk.dcm").write_bytes(b"nothing")
    with pytest.raises(InputError, match="junk.dcm"):
        read_rtdose(tmp_path / "junk.dcm")
