"""NIfTI/MHD image I/O and atomic writes."""

import os

import numpy as np
import pytest
import SimpleITK as sitk

from dosimetry.errors import InputError
from dosimetry.io.atomic import atomic_path, atomic_write_text
from dosimetry.io.images import overlap_fraction, read_image, write_image


def _image(seed=0, shape=(7, 9, 11)):
    rng = np.random.default_rng(seed)
    img = sitk.GetImageFromArray(rng.random(shape, dtype=np.float32))  # (z, y, x)
    img.SetSpacing((1.5, 2.0, 3.25))
    img.SetOrigin((-100.0, 20.0, 5.0))
    c, s = np.cos(0.3), np.sin(0.3)
    img.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    return img


@pytest.mark.parametrize("name", ["a.nii.gz", "a.nii", "a.mha", "a.mhd", "a.nrrd"])
def test_round_trip_keeps_voxels_and_geometry(tmp_path, name):
    img = _image()
    path = write_image(img, tmp_path / name)
    back = read_image(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))
    # NIfTI stores geometry as float32 (qform/sform): agreement to 1e-4 mm / 1e-5 in cosines.
    np.testing.assert_allclose(back.GetSpacing(), img.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(back.GetOrigin(), img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), img.GetDirection(), atol=1e-5)
    leftovers = [p.name for p in tmp_path.iterdir() if ".part" in p.name]
    assert leftovers == []


def test_missing_and_unknown_format(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "nothing.nii.gz")
    bad = tmp_path / "image.xyz"
    bad.write_text("x")
    with pytest.raises(InputError, match=r"unknown image format '\.xyz'"):
        read_image(bad)


def test_corrupt_file_is_reported_by_path(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(InputError, match="broken.nii.gz"):
        read_image(bad)


def test_oversized_image_refused_before_allocation(tmp_path, monkeypatch):
    path = write_image(_image(shape=(20, 20, 20)), tmp_path / "big.nii.gz")
    monkeypatch.setenv("RPTDOSE_MAX_IMAGE_BYTES", "1000")
    with pytest.raises(InputError, match=r"big\.nii\.gz.*refusing to allocate"):
        read_image(path)


def test_header_declaring_huge_size_refused(tmp_path):
    # A MetaImage header is plain text: declare 100000³ voxels with a tiny raw file.
    (tmp_path / "huge.raw").write_bytes(b"\0" * 16)
    (tmp_path / "huge.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 100000 100000 100000\n"
        "ElementType = MET_FLOAT\nElementDataFile = huge.raw\n")
    with pytest.raises(InputError, match="huge.mhd.*GiB"):
        read_image(tmp_path / "huge.mhd")


def test_atomic_write_failure_leaves_old_file(tmp_path):
    target = tmp_path / "result.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash in the middle")
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["result.json"]


def test_overlap_fraction():
    a = sitk.Image(10, 10, 10, sitk.sitkFloat32)  # voxel faces span [-0.5, 9.5] mm
    b = sitk.Image(10, 10, 10, sitk.sitkFloat32)
    b.SetOrigin((5.0, 0.0, 0.0))
    assert overlap_fraction(a, b) == pytest.approx(0.5)
    b.SetOrigin((50.0, 0.0, 0.0))
    assert overlap_fraction(a, b) == 0.0
