"""DICOM reading on real scanner exports (``../shared/reference/real``; skipped when absent).

* ``mgh_tc99m_maa_spectct``: Siemens Symbia T6, Tc-99m MAA, one time point: CT (78 slices),
  reconstructed SPECT (one NM multi-frame file, 80 frames, counts) and an RTSTRUCT, all in one
  frame of reference.
* ``ge_lu177_projections_ct``: GE Discovery 670, Lu-177: two raw-projection NM files (6 energy
  windows × 60 views each) and a CT of 303 slices (GE writes PixelPaddingValue -2000).
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from dosimetry.errors import InputError
from dosimetry.io.dicom import (
    CT_PADDING_HU,
    NMUnits,
    read_ct_series,
    read_nm_image,
    scan_dicom_folder,
    series_geometry,
)
from dosimetry.io.images import physical_bounds
from tests.realdata import extract_reference

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def mgh():
    root = extract_reference("mgh_tc99m_maa_spectct")
    return root, scan_dicom_folder(root)


@pytest.fixture(scope="module")
def ge():
    root = extract_reference("ge_lu177_projections_ct")
    return root, scan_dicom_folder(root)


def test_mgh_scan_finds_ct_nm_and_rtstruct_in_one_frame_of_reference(mgh):
    _root, scan = mgh
    assert sorted(s.modality for s in scan.series) == ["CT", "NM", "RTSTRUCT"]
    assert [p.name for p, _ in scan.skipped] == ["README.txt"]  # listed, not warned about
    assert len(scan.patients()) == 1
    assert len({s.frame_of_reference_uid for s in scan.series}) == 1
    ct, = scan.by_modality("CT")
    nm, = scan.by_modality("NM")
    assert ct.n_images == 78 and len(ct.files) == 78
    assert nm.n_images == 80 and len(nm.files) == 1
    assert nm.is_reconstructed is True
    assert nm.units is None  # Siemens writes no Units: the frames hold counts
    assert nm.injection_datetime is None
    # 142.45 is MBq, the unit the NM Isotope module defines: no note needed
    assert nm.injected_activity_bq == pytest.approx(142.45e6)
    assert nm.injected_activity_note is None
    assert nm.nuclide == "99m Technetium"
    assert nm.radiopharmaceutical == "MAA"
    assert nm.energy_windows == ((pytest.approx(129.3242), pytest.approx(150.2957)),)
    # 64 views per head of 30.001 s (RotationInformationSequence)
    assert nm.frame_duration_s == pytest.approx(64 * 30.001)
    assert nm.patient_weight_kg == pytest.approx(74.6)
    assert nm.acquisition_datetime_source == "AcquisitionDate/Time"
    assert nm.acquisition_datetime.isoformat() == "2020-12-22T14:24:40.062000"


def test_mgh_ct_and_spect_overlap_in_patient_space(mgh):
    _root, scan = mgh
    ct_info, = scan.by_modality("CT")
    nm_info, = scan.by_modality("NM")
    ct = read_ct_series(ct_info)
    assert ct.GetSize() == (512, 512, 78)
    np.testing.assert_allclose(ct.GetSpacing(), (0.9765625, 0.9765625, 5.0), rtol=1e-6)
    hu = sitk.GetArrayViewFromImage(ct)
    assert -1100 < float(hu.min()) and float(hu.max()) < 3100
    assert float(np.median(hu)) < -500  # mostly air around the patient

    nm = read_nm_image(nm_info)
    assert nm.units == NMUnits.COUNTS
    img = nm.image
    assert img.GetSize() == (128, 128, 80)
    np.testing.assert_allclose(img.GetSpacing(), (4.7952,) * 3, rtol=1e-4)
    counts = sitk.GetArrayViewFromImage(img)
    assert float(counts.min()) >= 0 and float(counts.sum()) > 0
    assert series_geometry(nm_info)[0] == img.GetSize()

    # Frames stack along +normal (Siemens): the SPECT spans z 1425…1814 mm, the CT 1424…1814.
    # Stacked the other way the SPECT would lie at z ≈ 1049…1437 and miss most of the CT.
    ct_lo, ct_hi = physical_bounds(ct)
    nm_lo, nm_hi = physical_bounds(img)
    overlap = min(ct_hi[2], nm_hi[2]) - max(ct_lo[2], nm_lo[2])
    assert overlap / (ct_hi[2] - ct_lo[2]) > 0.95
    # and the counts sit inside the patient: the count-weighted centre lies within the CT box
    z, y, x = np.nonzero(counts > 0.1 * float(counts.max()))
    w = counts[z, y, x]
    idx = [float(np.average(a, weights=w)) for a in (x, y, z)]
    centre = np.array(img.TransformContinuousIndexToPhysicalPoint(idx))
    assert np.all(centre > ct_lo) and np.all(centre < ct_hi)


def test_mgh_ct_agrees_with_simpleitk_gdcm(mgh):
    _root, scan = mgh
    ct_info, = scan.by_modality("CT")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in ct_info.files])
    ref = reader.Execute()
    ours = read_ct_series(ct_info)
    if ref.GetDirection()[8] < 0:  # GDCM keeps the file order; ours is along +normal
        ref = sitk.Flip(ref, (False, False, True), flipAboutOrigin=False)
    np.testing.assert_allclose(ours.GetOrigin(), ref.GetOrigin(), atol=1e-3)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(ours),
                                  sitk.GetArrayViewFromImage(ref).astype(np.float32))


def test_mgh_spect_agrees_with_simpleitk_gdcm(mgh):
    _root, scan = mgh
    nm_info, = scan.by_modality("NM")
    ref = sitk.ReadImage(str(nm_info.files[0]))
    ours = read_nm_image(nm_info).image
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(ours, get)(), getattr(ref, get)(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(ours),
                                  sitk.GetArrayViewFromImage(ref).astype(np.float32))


def test_ge_projections_are_recognised_and_refused(ge):
    _root, scan = ge
    nms = scan.by_modality("NM")
    assert len(nms) == 2  # two bed positions, one series each
    for nm in nms:
        assert nm.is_reconstructed is False
        assert nm.n_images == 360
        assert len(nm.energy_windows) == 6
        assert (187.2, 228.8) in nm.energy_windows  # the Lu-177 208 keV photopeak window
        assert nm.frame_duration_s == pytest.approx(60 * 25.0)
        assert nm.injected_activity_bq is None  # RadionuclideTotalDose 0
        assert "no administered activity" in nm.injected_activity_note
        assert nm.acquisition_datetime is None  # dates are blank in this export
        with pytest.raises(InputError, match=r"raw acquisition data.*reconstruct it first"):
            read_nm_image(nm)
    assert "raw projections" in nms[0].describe()


def test_ge_ct_reads_with_padding_as_air(ge):
    root, scan = ge
    ct_info, = scan.by_modality("CT")
    assert ct_info.n_images == 303
    ct = read_ct_series(root / "CT")
    assert ct.GetSize() == (512, 512, 303)
    np.testing.assert_allclose(ct.GetSpacing(), (0.976562, 0.976562, 2.5), rtol=1e-6)
    np.testing.assert_allclose(ct.GetOrigin()[2], -378.0)  # lowest slice first along +z
    hu = sitk.GetArrayViewFromImage(ct)
    # GE marks the corners outside the 500 mm reconstruction circle with PixelPaddingValue
    # -2000 (-3024 HU after the rescale); they are read as air, nothing below -1024 HU is left
    assert np.all(hu[:, 0, 0] == CT_PADDING_HU) and np.all(hu[:, -1, -1] == CT_PADDING_HU)
    assert float(hu.min()) >= -1024.0
    assert float(hu.max()) > 1000  # bone
