"""DICOM reading and writing on series written by our own writer (no real data needed)."""

from __future__ import annotations

import os
import re
import shutil
from datetime import datetime

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

from dosimetry.errors import InputError
from dosimetry.io import dicom as dicom_mod
from dosimetry.io import dicom_write
from dosimetry.io.dicom import (
    DicomFallbackWarning,
    DicomSkipWarning,
    NMUnits,
    read_ct_series,
    read_nm_image,
    scan_dicom_folder,
    series_geometry,
)
from dosimetry.io.dicom_write import (
    DicomSeriesMeta,
    NMMeta,
    uid_from_seed,
    write_ct_series,
    write_nm_spect,
)

EPS32 = float(np.finfo(np.float32).eps)
ACQ = datetime(2024, 5, 2, 10, 30, 15)
INJ = datetime(2024, 5, 1, 9, 5)


def _rotation(axis, angle):
    a = np.asarray(axis, dtype=float)
    a /= np.linalg.norm(a)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


DIRECTIONS = {
    "axial": np.eye(3),
    "oblique": _rotation((1.0, 2.0, 3.0), 0.4),
}


def _image(arr, direction="axial", spacing=(0.7, 0.9, 2.5), origin=(-120.3, 55.25, 1432.7)):
    img = sitk.GetImageFromArray(np.asarray(arr, dtype=np.float32))  # (z, y, x)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    d = DIRECTIONS[direction] if isinstance(direction, str) else np.asarray(direction)
    img.SetDirection(tuple(d.ravel()))
    return img


def _ct_array(seed=0, shape=(7, 9, 11)):
    return np.random.default_rng(seed).integers(-1024, 2500, size=shape).astype(np.float32)


def _meta(name="ct", **kw):
    base = dict(patient_id="PSEUDO01", study_uid=uid_from_seed("study", 1),
                series_uid=uid_from_seed("series", name),
                frame_of_reference_uid=uid_from_seed("for", 1),
                study_datetime=datetime(2024, 5, 2, 10, 0), acquisition_datetime=ACQ,
                series_description=f"test {name}")
    base.update(kw)
    return DicomSeriesMeta(**base)


def _nm_meta(**kw):
    base = dict(units=NMUnits.BQ_PER_ML, nuclide="Lu-177", radiopharmaceutical="DOTATATE",
                injection_datetime=INJ, injected_activity_bq=7.4e9, half_life_s=574300.0,
                frame_duration_s=1800.0, n_views=60)
    base.update(kw)
    return NMMeta(**base)


def _assert_same_geometry(a, b, tol=1e-6):
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=tol)


# ------------------------------------------------------------------------------------------------
# UIDs and file format
# ------------------------------------------------------------------------------------------------


def test_uid_from_seed_is_deterministic_valid_and_separates_parts():
    u = uid_from_seed("patient", 3, "CT")
    assert u == uid_from_seed("patient", 3, "CT")
    assert u != uid_from_seed("patient", 3, "NM")
    assert uid_from_seed("a", "b") != uid_from_seed("ab")
    assert u.startswith("2.25.") and len(u) <= 64
    assert re.fullmatch(r"2\.25\.[1-9][0-9]*", u)


def test_ct_files_are_valid_part10_and_byte_identical_on_rewrite(tmp_path):
    img = _image(_ct_array())
    a = write_ct_series(img, tmp_path / "a", _meta())
    b = write_ct_series(img, tmp_path / "b", _meta())
    assert [p.name for p in a] == [p.name for p in b]
    for pa, pb in zip(a, b, strict=True):
        assert pa.read_bytes() == pb.read_bytes()
    sops = set()
    for p in a:
        raw = p.read_bytes()
        assert raw[128:132] == b"DICM"
        ds = pydicom.dcmread(p)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == dicom_mod.CT_IMAGE_STORAGE
        assert ds.Modality == "CT" and ds.KVP == 120 and ds.RescaleType == "HU"
        sops.add(ds.SOPInstanceUID)
    assert len(sops) == len(a)
    assert not list(tmp_path.glob(".*")), "no temporary folder may be left behind"


def test_ct_write_is_atomic_on_failure(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_save = dicom_write._save

    def failing_save(ds, path):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        real_save(ds, path)

    monkeypatch.setattr(dicom_write, "_save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_ct_series(_image(_ct_array()), tmp_path / "ct", _meta())
    assert list(tmp_path.iterdir()) == []


def test_ct_rewrite_replaces_the_folder(tmp_path):
    write_ct_series(_image(_ct_array(shape=(9, 9, 11))), tmp_path / "ct", _meta())
    paths = write_ct_series(_image(_ct_array(shape=(5, 9, 11))), tmp_path / "ct", _meta())
    assert sorted(p.name for p in (tmp_path / "ct").iterdir()) == [p.name for p in paths]
    assert len(paths) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["ct"]


# ------------------------------------------------------------------------------------------------
# CT round trips and refusals
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["axial", "oblique"])
def test_ct_round_trip_keeps_hu_and_geometry(tmp_path, direction):
    img = _image(_ct_array(), direction)
    write_ct_series(img, tmp_path / "ct", _meta())
    back = read_ct_series(tmp_path / "ct")
    assert back.GetPixelID() == sitk.sitkFloat32
    # integer HU with slope 1 / intercept -1024 are stored exactly
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))
    # DS strings keep 16 characters: positions to ~1e-10 mm, cosines to ~1e-12
    _assert_same_geometry(back, img)


def test_ct_non_integer_hu_round_to_the_nearest_hu(tmp_path):
    arr = np.random.default_rng(1).uniform(-1000, 3000, size=(6, 8, 10)).astype(np.float32)
    img = _image(arr, "oblique")
    write_ct_series(img, tmp_path / "ct", _meta())
    back = sitk.GetArrayFromImage(read_ct_series(tmp_path / "ct"))
    # stored = rint(HU + 1024): error at most half a HU (plus float32 rounding of ~3000)
    assert np.max(np.abs(back - arr)) <= 0.5 + 3000 * EPS32


def test_ct_left_handed_grid_reads_back_as_the_same_physical_image(tmp_path):
    d = np.diag([1.0, 1.0, -1.0])  # slices stacked against the normal
    arr = _ct_array()
    img = _image(arr, d)
    write_ct_series(img, tmp_path / "ct", _meta())
    back = read_ct_series(tmp_path / "ct")
    np.testing.assert_allclose(back.GetDirection(), np.eye(3).ravel())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), arr[::-1])
    last = img.TransformIndexToPhysicalPoint((0, 0, arr.shape[0] - 1))
    np.testing.assert_allclose(back.GetOrigin(), last, atol=1e-6)


def test_ct_reader_agrees_with_simpleitk_gdcm(tmp_path):
    img = _image(_ct_array(), "oblique")
    write_ct_series(img, tmp_path / "ct", _meta())
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "ct")))
    ref = reader.Execute()
    ours = read_ct_series(tmp_path / "ct")
    _assert_same_geometry(ours, ref, tol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours),
                                  sitk.GetArrayFromImage(ref).astype(np.float32))


def test_ct_reader_accepts_files_and_series_info_and_sorts_by_position(tmp_path):
    img = _image(_ct_array())
    paths = write_ct_series(img, tmp_path / "ct", _meta())
    # shuffle InstanceNumber: order must come from the positions
    for i, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        ds.InstanceNumber = (i * 3) % len(paths) + 1
        ds.save_as(p)
    expected = sitk.GetArrayFromImage(img)
    a = read_ct_series(list(reversed(paths)))
    b = read_ct_series(scan_dicom_folder(tmp_path).by_modality("CT")[0])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), expected)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(b), expected)


def test_ct_missing_slice_is_refused(tmp_path):
    paths = write_ct_series(_image(_ct_array()), tmp_path / "ct", _meta())
    paths[3].unlink()
    with pytest.raises(InputError, match="missing slice") as err:
        read_ct_series(tmp_path / "ct")
    assert str(tmp_path / "ct") in str(err.value)


def test_ct_inconsistent_spacing_is_refused(tmp_path):
    paths = write_ct_series(_image(_ct_array()), tmp_path / "ct", _meta())
    ds = pydicom.dcmread(paths[3])
    pos = [float(v) for v in ds.ImagePositionPatient]
    ds.ImagePositionPatient = [pos[0], pos[1], pos[2] + 0.3]  # steps 2.8 and 2.2 mm around it
    ds.save_as(paths[3])
    with pytest.raises(InputError, match="inconsistent slice spacing"):
        read_ct_series(tmp_path / "ct")


def test_ct_spacing_within_position_rounding_is_accepted(tmp_path):
    paths = write_ct_series(_image(_ct_array()), tmp_path / "ct", _meta())
    ds = pydicom.dcmread(paths[3])
    pos = [float(v) for v in ds.ImagePositionPatient]
    ds.ImagePositionPatient = [pos[0], pos[1], pos[2] + 0.01]  # < 1 % of 2.5 mm
    ds.save_as(paths[3])
    assert read_ct_series(tmp_path / "ct").GetSize() == (11, 9, 7)


def test_ct_duplicate_position_is_refused(tmp_path):
    paths = write_ct_series(_image(_ct_array()), tmp_path / "ct", _meta())
    ds = pydicom.dcmread(paths[2])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid_from_seed("copy")
    ds.save_as(tmp_path / "ct" / "copy.dcm")
    with pytest.raises(InputError, match="duplicate slice position"):
        read_ct_series(tmp_path / "ct")


def test_ct_single_slice_and_mixed_orientation_are_refused(tmp_path):
    paths = write_ct_series(_image(_ct_array(shape=(3, 9, 11))), tmp_path / "ct", _meta())
    with pytest.raises(InputError, match="single slice"):
        read_ct_series(paths[:1])
    ds = pydicom.dcmread(paths[1])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(paths[1])
    with pytest.raises(InputError, match="ImageOrientationPatient"):
        read_ct_series(paths)


def test_ct_folder_with_two_series_is_refused(tmp_path):
    write_ct_series(_image(_ct_array()), tmp_path / "a", _meta("a"))
    write_ct_series(_image(_ct_array()), tmp_path / "b", _meta("b"))
    with pytest.raises(InputError, match="holds 2 CT series"):
        read_ct_series(tmp_path)


def test_ct_padding_value_becomes_air(tmp_path):
    arr = _ct_array()
    paths = write_ct_series(_image(arr), tmp_path / "ct", _meta())
    ds = pydicom.dcmread(paths[0])
    px = ds.pixel_array.copy()
    px[0, :3] = -2000
    ds.PixelData = px.astype("<i2").tobytes()
    ds.add_new(0x00280120, "SS", -2000)  # PixelPaddingValue
    ds.save_as(paths[0])
    back = sitk.GetArrayFromImage(read_ct_series(tmp_path / "ct"))
    assert np.all(back[0, 0, :3] == dicom_mod.CT_PADDING_HU)
    np.testing.assert_array_equal(back[0, 0, 3:], arr[0, 0, 3:])


def test_ct_writer_refuses_values_it_cannot_store(tmp_path):
    arr = _ct_array()
    arr[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        write_ct_series(_image(arr), tmp_path / "ct", _meta())
    arr[0, 0, 0] = 40000.0
    with pytest.raises(InputError, match="int16"):
        write_ct_series(_image(arr), tmp_path / "ct", _meta())
    assert not (tmp_path / "ct").exists()


# ------------------------------------------------------------------------------------------------
# NM SPECT
# ------------------------------------------------------------------------------------------------


def _activity(seed=0, shape=(12, 10, 8)):
    rng = np.random.default_rng(seed)
    a = rng.lognormal(mean=9.0, sigma=1.5, size=shape)  # Bq/mL, up to ~1e6
    a[rng.random(shape) < 0.2] = 0.0
    return a.astype(np.float32)


@pytest.mark.parametrize("direction", ["axial", "oblique"])
def test_nm_bq_per_ml_round_trip_within_quantisation(tmp_path, direction):
    arr = _activity()
    img = _image(arr, direction, spacing=(4.7952, 4.7952, 4.7952), origin=(-300.1, -250.2, 80.3))
    path = write_nm_spect(img, tmp_path / "nm" / "spect.dcm", _meta("nm"), _nm_meta())
    out = read_nm_image(path)
    assert out.units == NMUnits.BQ_PER_ML == "Bq/mL"
    _assert_same_geometry(out.image, img)
    slope = float(pydicom.dcmread(path, stop_before_pixels=True).RescaleSlope)
    assert slope == pytest.approx(float(arr.max()) / 65535, rel=1e-6)
    # stored = rint(value / slope) keeps each voxel within slope/2; the reader's float32
    # product stored × slope adds at most a few float32 ulps of the value.
    back = sitk.GetArrayFromImage(out.image)
    tol = slope / 2 + 4 * EPS32 * np.abs(arr)
    assert np.all(np.abs(back - arr) <= tol)
    assert np.all(back[arr == 0] == 0)


def test_nm_file_reads_the_same_in_simpleitk_gdcm(tmp_path):
    # GDCM is an independent NM reader: same grid from the DetectorInformationSequence and
    # SpacingBetweenSlices, same values from RescaleSlope
    arr = _activity()
    img = _image(arr, "oblique", spacing=(4.0, 4.5, 5.0))
    path = write_nm_spect(img, tmp_path / "nm.dcm", _meta("nm"), _nm_meta())
    ref = sitk.ReadImage(str(path))
    _assert_same_geometry(ref, img)
    ours = sitk.GetArrayFromImage(read_nm_image(path).image)
    slope = float(arr.max()) / 65535
    np.testing.assert_allclose(sitk.GetArrayFromImage(ref), ours, rtol=1e-6, atol=1e-6 * slope)


def test_nm_counts_round_trip_integer_and_float(tmp_path):
    counts = np.random.default_rng(3).poisson(40.0, size=(10, 8, 6)).astype(np.float32)
    img = _image(counts, "axial", spacing=(4.4, 4.4, 4.4))
    path = write_nm_spect(img, tmp_path / "c.dcm", _meta("nm"), _nm_meta(units="counts"))
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.Units == "CNTS" and float(ds.RescaleSlope) == 1.0
    assert "RealWorldValueMappingSequence" not in ds
    out = read_nm_image(path)
    assert out.units == NMUnits.COUNTS
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out.image), counts)

    smooth = (counts * 0.37).astype(np.float32)
    path = write_nm_spect(_image(smooth, spacing=(4.4, 4.4, 4.4)), tmp_path / "f.dcm",
                          _meta("nm2"), _nm_meta(units="counts"))
    back = sitk.GetArrayFromImage(read_nm_image(path).image)
    slope = float(smooth.max()) / 65535
    assert np.all(np.abs(back - smooth) <= slope / 2 + 4 * EPS32 * smooth)


def test_nm_counts_with_calibration_read_as_bq_per_ml(tmp_path):
    counts = np.random.default_rng(4).poisson(200.0, size=(8, 8, 8)).astype(np.float32)
    spacing = (4.0, 5.0, 4.5)
    img = _image(counts, spacing=spacing)
    meta = _nm_meta(units="counts", calibration_cps_per_mbq=9.5, frame_duration_s=1200.0)
    path = write_nm_spect(img, tmp_path / "c.dcm", _meta("nm"), meta)
    out = read_nm_image(path)
    assert out.units == NMUnits.BQ_PER_ML
    assert any("RealWorldValueMapping" in w for w in out.warnings)
    voxel_ml = np.prod(spacing) / 1000.0
    expected = counts / (1200.0 * 9.5e-6 * voxel_ml)
    np.testing.assert_allclose(sitk.GetArrayFromImage(out.image), expected, rtol=1e-6)


def test_nm_left_handed_grid_writes_negative_spacing_and_reads_back_physically(tmp_path):
    arr = _activity(shape=(6, 5, 4))
    d = DIRECTIONS["oblique"] @ np.diag([1.0, 1.0, -1.0])
    img = _image(arr, d, spacing=(4.0, 4.0, 4.0))
    path = write_nm_spect(img, tmp_path / "nm.dcm", _meta("nm"), _nm_meta())
    assert float(pydicom.dcmread(path, stop_before_pixels=True).SpacingBetweenSlices) == -4.0
    out = read_nm_image(path).image
    # the same voxel centres in patient space, indexed the other way along the slice axis
    for k in (0, 5):
        p = img.TransformIndexToPhysicalPoint((1, 2, k))
        q = out.TransformIndexToPhysicalPoint((1, 2, 5 - k))
        np.testing.assert_allclose(p, q, atol=1e-6)
    back = sitk.GetArrayFromImage(out)
    slope = float(arr.max()) / 65535
    assert np.all(np.abs(back[::-1] - arr) <= slope / 2 + 4 * EPS32 * arr)


def test_nm_file_carries_what_scanners_write(tmp_path):
    img = _image(_activity(), spacing=(4.8, 4.8, 4.8))
    path = write_nm_spect(img, tmp_path / "nm.dcm", _meta("nm"), _nm_meta())
    ds = pydicom.dcmread(path)
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.SOPClassUID == dicom_mod.NM_IMAGE_STORAGE
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
    assert ds.NumberOfFrames == 12 and ds.FrameIncrementPointer == 0x00540080
    assert list(ds.SliceVector) == list(range(1, 13))
    assert ds.BitsAllocated == 16 and ds.PixelRepresentation == 0
    rp = ds.RadiopharmaceuticalInformationSequence[0]
    assert float(rp.RadionuclideTotalDose) == pytest.approx(7400.0)  # MBq (NM Isotope module)
    assert rp.RadionuclideCodeSequence[0].CodeValue == "447553000"
    assert rp.RadionuclideCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert rp.RadiopharmaceuticalStartDateTime == "20240501090500"
    assert ds.RotationInformationSequence[0].ActualFrameDuration == 30000
    assert ds.pixel_array.shape == (12, 10, 8)
    again = write_nm_spect(img, tmp_path / "again.dcm", _meta("nm"), _nm_meta())
    assert again.read_bytes() == path.read_bytes()


def test_nm_meta_validates():
    assert NMMeta(nuclide="lu177").nuclide == "Lu-177"
    assert NMMeta(nuclide="131I").nuclide == "I-131"
    assert NMMeta(energy_windows=(187.2, 228.8)).energy_windows == ((187.2, 228.8),)
    with pytest.raises(InputError, match="Xx-999"):
        NMMeta(nuclide="Xx-999")
    with pytest.raises(InputError, match="frame_duration_s"):
        NMMeta(units="counts", calibration_cps_per_mbq=10.0)
    with pytest.raises(InputError, match="valid DICOM UID"):
        _meta(series_uid="1.2.abc")


def test_scan_finds_series_with_nm_header_values(tmp_path):
    write_ct_series(_image(_ct_array()), tmp_path / "CT", _meta("ct"))
    write_nm_spect(_image(_activity(), spacing=(4.8, 4.8, 4.8)), tmp_path / "NM" / "spect.dcm",
                   _meta("nm", acquisition_datetime=datetime(2024, 5, 2, 10, 5)),
                   _nm_meta(energy_windows=((187.2, 228.8), (166.9, 186.3))))
    scan = scan_dicom_folder(tmp_path)
    assert scan.skipped == ()
    assert scan.patients() == ("PSEUDO01",)
    assert [s.modality for s in scan.series] == ["NM", "CT"]  # ordered by acquisition time
    nm, = scan.by_modality("nm")
    ct, = scan.by_modality("CT")
    assert nm.is_reconstructed is True and ct.is_reconstructed is None
    assert nm.units == "BQML"
    assert nm.injection_datetime == INJ
    assert nm.injection_datetime_source == "RadiopharmaceuticalStartDateTime"
    assert nm.injected_activity_bq == pytest.approx(7.4e9)
    assert nm.injected_activity_note is None
    assert nm.frame_duration_s == pytest.approx(1800.0)
    assert nm.energy_windows == ((187.2, 228.8), (166.9, 186.3))
    assert nm.nuclide == "^177^Lutetium"
    assert nm.radiopharmaceutical == "DOTATATE"
    assert nm.radionuclide_half_life_s == pytest.approx(574300.0)
    assert nm.n_images == 12 and len(nm.files) == 1
    assert nm.real_world_value_mapping[0][0] == "Bq/ml"
    assert ct.n_images == 7 and len(ct.files) == 7
    assert ct.acquisition_datetime == ACQ
    assert ct.acquisition_datetime_source == "AcquisitionDate/Time"
    assert nm.frame_of_reference_uid == ct.frame_of_reference_uid
    assert ct.sop_class_uid == dicom_mod.CT_IMAGE_STORAGE
    line = nm.describe()
    assert "NM" in line and "12 frames" in line and "7400.0 MBq" in line
    assert "PSEUDO01" not in line
    size, spacing, _origin, _direction = series_geometry(ct)
    assert size == (11, 9, 7)
    np.testing.assert_allclose(spacing, (0.7, 0.9, 2.5))


def test_scan_skips_corrupt_files_with_a_warning_naming_each(tmp_path):
    write_ct_series(_image(_ct_array()), tmp_path / "CT", _meta("ct"))
    nm = write_nm_spect(_image(_activity()), tmp_path / "NM" / "spect.dcm", _meta("nm"),
                        _nm_meta())
    junk = tmp_path / "NM" / "IM000123"
    junk.write_bytes(np.random.default_rng(7).bytes(4096))
    cut_pixels = tmp_path / "NM" / "truncated.dcm"
    cut_pixels.write_bytes(nm.read_bytes()[:-500])
    cut_header = tmp_path / "CT" / "cut_header.dcm"
    cut_header.write_bytes((tmp_path / "CT" / "CT_0001.dcm").read_bytes()[:300])
    (tmp_path / "README.txt").write_text("exported by the scanner")
    with pytest.warns(DicomSkipWarning) as record:
        scan = scan_dicom_folder(tmp_path)
    messages = [str(w.message) for w in record]
    for bad in (junk, cut_pixels, cut_header):
        assert sum(str(bad) in m for m in messages) == 1, messages
    assert not any("README" in m for m in messages)
    skipped = dict(scan.skipped)
    assert set(skipped) == {junk, cut_pixels, cut_header, tmp_path / "README.txt"}
    assert "truncated" in skipped[cut_pixels]
    assert "not a DICOM file" in skipped[junk]
    ct, = scan.by_modality("CT")
    nm_info, = scan.by_modality("NM")
    assert ct.n_images == 7 and nm_info.files == (nm,)


def test_scan_summarises_many_skipped_files_in_one_warning(tmp_path):
    write_ct_series(_image(_ct_array()), tmp_path / "CT", _meta())
    for i in range(12):
        (tmp_path / f"junk{i:02d}").write_bytes(b"\x00" * 40 + bytes([i]) * 200)
    with pytest.warns(DicomSkipWarning, match="skipped 12 files") as record:
        scan = scan_dicom_folder(tmp_path)
    assert len(record) == 1
    assert len(scan.skipped) == 12 and len(scan.series) == 1


def test_scan_of_missing_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        scan_dicom_folder(tmp_path / "nowhere")


def test_declared_size_beyond_the_memory_limit_is_refused_before_reading_pixels(
        tmp_path, monkeypatch):
    nm = write_nm_spect(_image(_activity(shape=(32, 32, 32))), tmp_path / "nm.dcm",
                        _meta("nm"), _nm_meta())
    write_ct_series(_image(_ct_array(shape=(4, 64, 64))), tmp_path / "ct", _meta())

    def no_pixels(*_a, **_k):
        raise AssertionError("pixel data must not be read")

    monkeypatch.setattr(dicom_mod, "_pixels", no_pixels)
    monkeypatch.setenv("RPTDOSE_MAX_IMAGE_BYTES", "20000")
    with pytest.raises(InputError, match="limit"):
        read_nm_image(nm)
    with pytest.raises(InputError, match="limit"):
        read_ct_series(tmp_path / "ct")


def test_huge_declared_frames_without_the_data_are_refused(tmp_path, monkeypatch):
    nm = write_nm_spect(_image(_activity(shape=(4, 8, 8))), tmp_path / "nm.dcm", _meta("nm"),
                        _nm_meta())
    ds = pydicom.dcmread(nm)
    ds.Rows = ds.Columns = 4096
    ds.NumberOfFrames = 20000
    ds.SliceVector = list(range(1, 20001))
    ds.save_as(nm)
    monkeypatch.setattr(dicom_mod, "_pixels", lambda *a, **k: pytest.fail("read pixels"))
    with pytest.raises(InputError, match="truncated"):
        read_nm_image(nm)


def test_raw_projections_are_refused_with_a_clear_message(tmp_path):
    path = write_nm_spect(_image(_activity()), tmp_path / "p.dcm", _meta("nm"),
                          _nm_meta(units="counts"))
    ds = pydicom.dcmread(path)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "TOMO", "EMISSION"]
    ds.save_as(path)
    info, = scan_dicom_folder(tmp_path).by_modality("NM")
    assert info.is_reconstructed is False
    with pytest.raises(InputError, match=r"reconstruct it first.*rptdose recon"):
        read_nm_image(info)


def test_nm_without_spacing_between_slices_falls_back_with_a_warning(tmp_path):
    arr = _activity(shape=(5, 6, 7))
    img = _image(arr, spacing=(4.0, 4.0, 3.5))
    path = write_nm_spect(img, tmp_path / "nm.dcm", _meta("nm"), _nm_meta())
    ds = pydicom.dcmread(path)
    del ds.SpacingBetweenSlices
    ds.save_as(path)
    with pytest.warns(DicomFallbackWarning, match="SliceThickness"):
        out = read_nm_image(path)
    _assert_same_geometry(out.image, img)
    assert any("SliceThickness" in w for w in out.warnings)


def test_nm_units_that_are_not_activity_or_counts_are_refused(tmp_path):
    path = write_nm_spect(_image(_activity()), tmp_path / "n.dcm", _meta("nm"), _nm_meta())
    ds = pydicom.dcmread(path)
    ds.Units = "GML"
    del ds.RealWorldValueMappingSequence
    ds.save_as(path)
    with pytest.raises(InputError, match="GML"):
        read_nm_image(path)


def test_pet_style_per_slice_series_with_per_slice_rescale(tmp_path):
    stored = np.random.default_rng(5).integers(0, 30000, size=(6, 8, 9)).astype(np.float32)
    img = _image(stored, "oblique", spacing=(2.0, 2.0, 3.0))
    paths = write_ct_series(img, tmp_path / "pt", _meta("pt"), rescale_intercept=0.0)
    slopes = [0.5 + 0.25 * k for k in range(len(paths))]
    order = [3, 0, 5, 1, 4, 2]
    for k, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        ds.Modality = "PT"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = dicom_mod.PET_IMAGE_STORAGE
        ds.Units = "BQML"
        ds.RescaleSlope = slopes[k]
        ds.InstanceNumber = order[k] + 1
        ds.save_as(p)
    info, = scan_dicom_folder(tmp_path).by_modality("PT")
    assert info.is_reconstructed is True
    out = read_nm_image(tmp_path / "pt")
    assert out.units == NMUnits.BQ_PER_ML
    _assert_same_geometry(out.image, img)
    expected = stored * np.asarray(slopes, dtype=np.float32)[:, None, None]
    np.testing.assert_allclose(sitk.GetArrayFromImage(out.image), expected, rtol=1e-6)


def test_enhanced_multiframe_with_functional_groups(tmp_path):
    arr = _activity(shape=(5, 6, 7))
    img = _image(arr, "oblique", spacing=(3.0, 3.0, 3.0))
    path = write_nm_spect(img, tmp_path / "nm.dcm", _meta("nm"), _nm_meta())
    ds = pydicom.dcmread(path)
    det = ds.DetectorInformationSequence[0]
    ori = [float(v) for v in det.ImageOrientationPatient]
    row, col = np.array(ori[:3]), np.array(ori[3:])
    normal = np.cross(row, col)
    base = np.array([float(v) for v in det.ImagePositionPatient])
    shared = Dataset()
    po, pm, pvt = Dataset(), Dataset(), Dataset()
    po.ImageOrientationPatient = ori
    pm.PixelSpacing = [3.0, 3.0]
    pm.SliceThickness = 3.0
    pvt.RescaleSlope = ds.RescaleSlope
    pvt.RescaleIntercept = ds.RescaleIntercept
    pvt.RescaleType = "BQML"
    shared.PlaneOrientationSequence = DicomSequence([po])
    shared.PixelMeasuresSequence = DicomSequence([pm])
    shared.PixelValueTransformationSequence = DicomSequence([pvt])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for k in (4, 2, 0, 1, 3):  # frames out of order: positions decide
        fg, pp = Dataset(), Dataset()
        pp.ImagePositionPatient = [float(v) for v in base + 3.0 * k * normal]
        fg.PlanePositionSequence = DicomSequence([pp])
        per_frame.append((k, fg))
    ds.PerFrameFunctionalGroupsSequence = DicomSequence([fg for _, fg in per_frame])
    px = ds.pixel_array
    ds.PixelData = np.ascontiguousarray(px[[k for k, _ in per_frame]]).tobytes()
    del ds.DetectorInformationSequence
    del ds.RescaleSlope
    del ds.RescaleIntercept
    ds.save_as(path)
    out = read_nm_image(path)
    _assert_same_geometry(out.image, img)
    slope = float(arr.max()) / 65535
    back = sitk.GetArrayFromImage(out.image)
    assert np.all(np.abs(back - arr) <= slope / 2 + 4 * EPS32 * arr)


# ------------------------------------------------------------------------------------------------
# header value interpretation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "modality", "bq", "note"), [
    (142.45, "NM", 142.45e6, None),  # MBq, as the NM Isotope module defines
    (7.4e9, "NM", 7.4e9, "read as Bq"),  # Bq written against the NM definition
    (370.0, "PT", 370e6, "read as MBq"),  # MBq written against the PET definition
    (3.7e8, "PT", 3.7e8, None),
    (0.0, "NM", None, "no administered activity"),
])
def test_injected_activity_unit_is_inferred_from_magnitude(value, modality, bq, note):
    got, why = dicom_mod._injected_activity(value, modality)
    assert got == (pytest.approx(bq) if bq is not None else None)
    assert (why is None) if note is None else (note in why)


def test_dicom_date_time_parsing():
    assert dicom_mod._parse_datetime("20240501103000.5+0200") == datetime(2024, 5, 1, 10, 30, 0,
                                                                          500000)
    assert dicom_mod._parse_datetime("20240501") == datetime(2024, 5, 1)
    assert dicom_mod._parse_datetime("garbage") is None
    assert dicom_mod._parse_time("1030").isoformat() == "10:30:00"
    assert dicom_mod._parse_time("10:30:59.25").isoformat() == "10:30:59.250000"
    assert dicom_mod._parse_date("2024.05.01").isoformat() == "2024-05-01"


def test_injection_time_without_date_takes_the_study_date_and_says_so(tmp_path):
    path = write_nm_spect(_image(_activity()), tmp_path / "n.dcm", _meta("nm"), _nm_meta())
    ds = pydicom.dcmread(path)
    del ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartDateTime
    ds.save_as(path)
    info, = scan_dicom_folder(path).series
    assert info.injection_datetime == datetime(2024, 5, 2, 9, 5)  # study day, injection time
    assert "StudyDate" in info.injection_datetime_source
    assert "assumed" in info.injection_datetime_source


def test_rtstruct_frame_of_reference_and_dicomdir_are_handled(tmp_path):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.file_meta.MediaStorageSOPInstanceUID = uid_from_seed("rt")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.PatientID = "PSEUDO01"
    ds.StudyInstanceUID = uid_from_seed("study", 1)
    ds.SeriesInstanceUID = uid_from_seed("rtseries")
    ds.StructureSetDate, ds.StructureSetTime = "20240503", "120000"
    ref = Dataset()
    ref.FrameOfReferenceUID = uid_from_seed("for", 1)
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([ref])
    pydicom.dcmwrite(tmp_path / "rt.dcm", ds, enforce_file_format=True)
    shutil.copy(tmp_path / "rt.dcm", tmp_path / "DICOMDIR")
    scan = scan_dicom_folder(tmp_path)
    rt, = scan.series
    assert rt.modality == "RTSTRUCT" and rt.frame_of_reference_uid == uid_from_seed("for", 1)
    assert rt.acquisition_datetime == datetime(2024, 5, 3, 12, 0)
    assert rt.acquisition_datetime_source == "StructureSetDate/Time"
    assert scan.skipped == ()
    with pytest.raises(InputError, match="no image grid"):
        series_geometry(rt)


def test_files_without_preamble_are_read_but_other_bytes_are_not(tmp_path):
    paths = write_ct_series(_image(_ct_array(shape=(3, 9, 11))), tmp_path / "ct", _meta())
    raw = paths[0].read_bytes()
    # strip the 128-byte preamble, "DICM" and the file meta group: a bare dataset (ACR-NEMA style)
    ds = pydicom.dcmread(paths[0])
    bare = tmp_path / "ct" / "bare"
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    write_dataset(buf, ds)
    bare.write_bytes(buf.getvalue())
    paths[0].unlink()
    assert raw[128:132] == b"DICM"
    scan = scan_dicom_folder(tmp_path)
    assert scan.skipped == ()
    ct, = scan.series
    assert bare in ct.files
    assert read_ct_series(tmp_path / "ct").GetSize() == (11, 9, 3)
    assert os.path.getsize(bare) < len(raw)
