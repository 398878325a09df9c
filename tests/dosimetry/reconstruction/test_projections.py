"""Reading raw NM projections: GE and Siemens tag layouts, geometry, and the errors."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from dosimetry.errors import GeometryError, InputError
from dosimetry.reconstruction.projections import read_projections
from tests.dosimetry.reconstruction.conftest import (
    SIEMENS_WINDOWS,
    Acquisition,
    grid,
    write_projections,
)


def _counts(acq: Acquisition, seed: int = 0) -> list[np.ndarray]:
    """Distinguishable counts per window: window w, view i, row r, column c hold a code."""
    g = acq.geometry
    v = acq.n_views
    out = []
    for w in range(len(acq.windows)):
        arr = np.zeros((v, g.size[2], g.size[0]), dtype=np.float32)
        arr += (w + 1) * 1000 + np.arange(v)[:, None, None] * 10
        arr[:, :, 0] += np.arange(g.size[2])[None, :] % 7  # row marker in column 0
        out.append(arr)
    return out


def test_ge_layout(tmp_path):
    g = grid(size_xy=16, slices=12)
    acq = Acquisition("GE", g, n_views=60, time_per_view_s=25.0, radius_mm=253.7)
    counts = _counts(acq)
    path = write_projections(tmp_path / "bed1.dcm", acq, counts)
    ps = read_projections(path)
    (bed,) = ps.beds
    assert ps.nuclide == "Lu-177"  # from the window name Lu177_EM
    assert [w.name for w in bed.windows] == ["Lu177_EM", "sc4_SC", "sc3_SC"]
    assert (bed.selection.photopeak, bed.selection.lower, bed.selection.upper) == (0, 2, 1)
    assert bed.counts.shape == (3, 60, 12, 16)
    assert not bed.counts.flags.writeable
    # views sorted by gantry angle; GE CC from 180°: view 31 (0°) comes first
    np.testing.assert_allclose(bed.angles_deg, np.arange(60) * 6.0)
    np.testing.assert_allclose(bed.detector_angles_deg, (np.arange(60) * 6.0 + 180) % 360)
    assert bed.photopeak_counts[0, 0, 1] == 1000 + 30 * 10  # window 1, file view index 30
    # rows: our row i is the DICOM row R-1-i (lowest z first); column 0 carries row % 7
    np.testing.assert_array_equal(bed.photopeak_counts[5, :, 0] - bed.photopeak_counts[5, :, 1],
                                  np.arange(12) % 7)
    np.testing.assert_allclose(bed.radii_mm, 253.7)
    assert bed.time_per_view_s == 25.0
    assert bed.collimator == "MEGP" and bed.n_detectors == 1
    # ImagePositionPatient gives x, y of voxel 0 and z of the top row
    assert bed.geometry.size == g.size
    np.testing.assert_allclose(bed.geometry.origin_mm, g.origin_mm, atol=1e-3)
    np.testing.assert_allclose(bed.geometry.spacing_mm, g.spacing_mm)
    assert bed.acquisition_datetime.isoformat() == "2024-05-01T10:15:00"
    assert bed.frame_of_reference_uid == acq.frame_of_reference_uid
    assert "SYNTH" not in repr(bed)  # no patient ID in reprs


def test_siemens_layout_two_detectors_noncircular(tmp_path):
    g = grid(size_xy=16, slices=10, axis_xy=(0.0, -35.0))
    acq = Acquisition("SIEMENS", g, n_views=60, collimator="ME", windows=SIEMENS_WINDOWS)
    path = write_projections(tmp_path / "siemens.dcm", acq, _counts(acq))
    bed = read_projections(path).beds[0]
    assert bed.nuclide == "Lu-177"  # RadionuclideCodeSequence ^177^Lutetium
    assert bed.n_detectors == 2
    assert bed.selection.photopeak_window.name == "EM"
    # detector 1 from 0° and detector 2 from 180°, clockwise, 6° steps: all of 0…354°
    np.testing.assert_allclose(bed.angles_deg, np.arange(60) * 6.0)
    expected_r = 200.0 + 15.0 * np.abs(np.sin(np.radians(np.arange(60) * 6.0)))
    np.testing.assert_allclose(bed.radii_mm, expected_r, atol=0.006)
    # ImagePositionPatient y = 0: centred on the axis, table height taken off y
    np.testing.assert_allclose(bed.geometry.origin_mm, g.origin_mm, atol=1e-3)
    assert bed.geometry.rotation_axis_mm == pytest.approx((0.0, -35.0), abs=1e-3)
    assert any("Siemens convention" in n for n in bed.notes)


def test_two_beds_sorted_by_z_and_folder_scan(tmp_path):
    lo = grid(size_xy=16, slices=12, z0=-100.0)
    hi = grid(size_xy=16, slices=12, z0=-100.0 + 8 * 4.4196)
    a1 = Acquisition("GE", hi, series_uid="1.2.826.0.1.3680043.8.498.77021")
    a2 = Acquisition("GE", lo, series_uid="1.2.826.0.1.3680043.8.498.77022")
    write_projections(tmp_path / "nm" / "b1.dcm", a1, _counts(a1))
    write_projections(tmp_path / "nm" / "b2.dcm", a2, _counts(a2))
    ps = read_projections(tmp_path)
    assert [b.path.name for b in ps.beds] == ["b2.dcm", "b1.dcm"]
    assert ps.beds[1].bed_centre_z_mm - ps.beds[0].bed_centre_z_mm == pytest.approx(8 * 4.4196)


def _with(acq: Acquisition, **extra) -> Acquisition:
    from dataclasses import replace

    return replace(acq, extra=extra)


def test_reader_errors_name_file_tag_value(tmp_path):
    g = grid(size_xy=8, slices=6)
    base = Acquisition("GE", g, n_views=12)
    counts = _counts(base)

    from dataclasses import replace

    static = replace(base, image_type=("ORIGINAL", "PRIMARY", "STATIC", "EMISSION"))
    p = write_projections(tmp_path / "static.dcm", static, counts)
    with pytest.raises(InputError, match=r"static.dcm: ImageType \(0008,0008\) "
                                         r"'ORIGINAL\\\\PRIMARY\\\\STATIC\\\\EMISSION' is not a "
                                         r"tomographic acquisition"):
        read_projections(p)

    recon = replace(base, image_type=("ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"))
    p = write_projections(tmp_path / "recon.dcm", recon, counts)
    with pytest.raises(InputError, match=r"recon.dcm: .* is a reconstructed SPECT"):
        read_projections(p)

    p = write_projections(tmp_path / "nowin.dcm", _with(base, EnergyWindowInformationSequence=None),
                          counts)
    with pytest.raises(InputError, match=r"nowin.dcm: no EnergyWindowInformationSequence "
                                         r"\(0054,0012\); the energy windows .* unknown"):
        read_projections(p)

    p = write_projections(tmp_path / "novec.dcm", _with(base, EnergyWindowVector=None), counts)
    with pytest.raises(InputError, match=r"3 energy windows but no EnergyWindowVector "
                                         r"\(0054,0010\)"):
        read_projections(p)

    gated = _with(base, TimeSlotVector=[1, 2] * (len(counts) * 12 // 2))
    p = write_projections(tmp_path / "gated.dcm", gated, counts)
    with pytest.raises(InputError, match=r"gated.dcm: TimeSlotVector \(0054,0070\) holds 2 "
                                         r"time slots"):
        read_projections(p)


def test_missing_geometry_and_mixed_patients(tmp_path):
    g = grid(size_xy=8, slices=6)
    acq = Acquisition("GE", g, n_views=12)
    counts = _counts(acq)
    p = write_projections(tmp_path / "noipp.dcm", acq, counts)
    ds = pydicom.dcmread(p)
    del ds.DetectorInformationSequence[0].ImagePositionPatient
    ds.save_as(p)
    with pytest.raises(InputError, match=r"noipp.dcm: no ImagePositionPatient \(0020,0032\) in "
                                         r"the DetectorInformationSequence"):
        read_projections(p)

    from dataclasses import replace

    g2 = grid(size_xy=8, slices=6, z0=0.0)
    a = write_projections(tmp_path / "mix" / "a.dcm", acq, counts)
    b = write_projections(tmp_path / "mix" / "b.dcm",
                          replace(acq, geometry=g2, patient_id="OTHER-2",
                                  series_uid="1.2.826.0.1.3680043.8.498.77031"), counts)
    with pytest.raises(InputError, match=r"projections of 2 patients given together \(a.dcm: P"):
        read_projections([a, b])
    assert len(read_projections([a, b], allow_mixed_patients=True).beds) == 2

    c = write_projections(tmp_path / "for" / "c.dcm",
                          replace(acq, geometry=g2, frame_of_reference_uid="1.2.3.4",
                                  series_uid="1.2.826.0.1.3680043.8.498.77032"), counts)
    with pytest.raises(GeometryError, match=r"a.dcm: FrameOfReferenceUID \(0020,0052\) .* differs "
                                            r"from c.dcm.s 1.2.3.4"):
        read_projections([a, c])


def test_not_nm_and_no_projections(tmp_path):
    ds = Dataset()
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.EnergyWindowInformationSequence = DicomSequence([])
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4.5"
    p = tmp_path / "ct.dcm"
    ds.save_as(p, enforce_file_format=True)
    with pytest.raises(InputError, match=r"ct.dcm: Modality \(0008,0060\) is 'CT', not NM"):
        read_projections(p)
    with pytest.raises(InputError, match=r"no raw NM tomographic projections found"):
        read_projections(tmp_path)
