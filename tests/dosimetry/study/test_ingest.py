"""Ingest: scanner-like DICOM exports (written with pydicom) and the real Siemens export."""

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cli.main import main
from dosimetry.errors import InputError, MissingDataError
from dosimetry.io.dicom_write import (
    DicomSeriesMeta,
    NMMeta,
    uid_from_seed,
    write_ct_series,
    write_nm_spect,
)
from dosimetry.study.images import load_image, load_spect_bq_per_ml
from dosimetry.study.ingest import ingest_dicom, parse_dicom_nuclide, pseudonymise, require_complete
from dosimetry.study.manifest import SpectUnits, load_study
from tests.realdata import extract_reference

INJ = datetime(2024, 5, 6, 9, 0)


def _ct(offset_mm=0.0):
    arr = np.full((12, 20, 20), -1000.0, np.float32)
    arr[2:10, 4:16, 4:16] = 40.0
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((2.5, 2.5, 3.0))
    img.SetOrigin((-25.0, -25.0, offset_mm))
    return img


def _spect(value=1000.0):
    arr = np.zeros((8, 10, 10), np.float32)
    arr[2:6, 3:7, 3:7] = value
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((4.8, 4.8, 4.8))
    img.SetOrigin((-24.0, -24.0, -2.0))
    return img


def write_export(root: Path, hours=(4, 24, 96), *, patient="MRN12345", units="Bq/mL",
                 with_injection=True, extra_nac=False, seed=0):
    """A multi-timepoint Lu-177 export as a SPECT/CT scanner writes it: per timepoint one CT
    series (one file per slice) and one NM RECON TOMO file sharing a frame of reference."""
    study_uid = uid_from_seed("study", patient, seed)
    for h in hours:
        t = INJ + timedelta(hours=h)
        for_uid = uid_from_seed("for", patient, seed, h)
        common = dict(patient_id=patient, study_uid=study_uid, frame_of_reference_uid=for_uid,
                      study_datetime=INJ, manufacturer="SIEMENS NM")
        write_ct_series(_ct(), root / f"tp{h}" / "ct", DicomSeriesMeta(
            series_uid=uid_from_seed("ct", patient, seed, h), acquisition_datetime=t,
            series_description="CTAC 5mm", series_number=2, **common))
        nm = NMMeta(units=units, nuclide="Lu-177", radiopharmaceutical="DOTATATE",
                    injection_datetime=INJ if with_injection else None,
                    injected_activity_bq=7.4e9 if with_injection else None,
                    half_life_s=574300.0, frame_duration_s=1800.0,
                    corrections=("ATTN", "SCAT"))
        write_nm_spect(_spect(), root / f"tp{h}" / "nm_ac.dcm", DicomSeriesMeta(
            series_uid=uid_from_seed("nm", patient, seed, h), acquisition_datetime=t,
            series_description="SPECT Lu177 [Recon - AC]", series_number=3, **common), nm)
        if extra_nac:
            nac = NMMeta(units="counts", nuclide="Lu-177", injection_datetime=INJ,
                         injected_activity_bq=7.4e9, frame_duration_s=1800.0)
            write_nm_spect(_spect(5.0), root / f"tp{h}" / "nm_nac.dcm", DicomSeriesMeta(
                series_uid=uid_from_seed("nac", patient, seed, h), acquisition_datetime=t,
                series_description="SPECT Lu177 [Recon - NAC]", series_number=4, **common), nac)
    return root


def test_complete_export_gives_valid_manifest(tmp_path):
    root = write_export(tmp_path / "export", extra_nac=True)
    (tmp_path / "export" / "broken.dcm").write_bytes(b"DICM" + bytes(range(256)) * 3)
    with pytest.warns(UserWarning, match="broken.dcm"):
        result = ingest_dicom(root, tmp_path / "out" / "study.yaml")
    study = require_complete(result)
    assert [tp.label for tp in study.timepoints] == ["4h", "24h", "96h"]
    assert study.nuclide == "Lu-177" and study.radiopharmaceutical == "DOTATATE"
    assert study.administered_activity_mbq == pytest.approx(7400.0)
    assert study.injection_datetime == INJ
    assert study.patient_id == pseudonymise("MRN12345") and "MRN12345" not in study.to_yaml()
    assert all(tp.spect_units is SpectUnits.BQ_PER_ML for tp in study.timepoints)
    # The AC reconstruction is preferred over the NAC one acquired at the same time.
    assert any("NAC" in w for w in result.warnings)
    assert all(c.spect_description.endswith("[Recon - AC]") for c in result.timepoints)
    loaded = load_study(tmp_path / "out" / "study.yaml")
    assert loaded == study
    # Images resolve from the manifest's folder: the SPECT in Bq/mL, the CT in HU.
    base = tmp_path / "out"
    spect = load_spect_bq_per_ml(loaded, "24h", base)
    assert float(sitk.GetArrayViewFromImage(spect).max()) == pytest.approx(1000.0, rel=1e-3)
    ct = load_image(loaded.timepoints[0].ct, base)
    assert ct.GetSize() == (20, 20, 12)
    assert float(sitk.GetArrayViewFromImage(ct).min()) == pytest.approx(-1000.0, abs=1.0)


def test_missing_items_are_listed_with_the_option(tmp_path):
    root = write_export(tmp_path / "export", units="counts", with_injection=False)
    result = ingest_dicom(root, tmp_path / "study.yaml")
    assert not result.success
    text = "\n".join(result.missing)
    assert "--injection-time" in text
    assert "--injected-activity-mbq" in text
    assert "--calibration-cps-per-mbq" in text
    assert not (tmp_path / "study.yaml").exists()  # nothing written for an incomplete export
    with pytest.raises(MissingDataError) as info:
        require_complete(result)
    assert len(info.value.missing) == len(result.missing)
    # Supplying the values completes it; counts are converted with the calibration.
    result = ingest_dicom(root, tmp_path / "study.yaml", injection_datetime=INJ,
                          injected_activity_mbq=7000.0, calibration_cps_per_mbq=10.0)
    study = require_complete(result)
    tp = study.timepoints[0]
    assert tp.spect_units is SpectUnits.COUNTS and tp.frame_duration_s == pytest.approx(1800.0)
    img = load_spect_bq_per_ml(study, tp, tmp_path)
    expected = 1000.0 / (1800.0 * 10.0e-6) / (4.8**3 / 1000.0)
    assert float(sitk.GetArrayViewFromImage(img).max()) == pytest.approx(expected, rel=1e-3)


def test_two_patients_refused_unless_allowed(tmp_path):
    write_export(tmp_path / "export" / "a", patient="A1")
    write_export(tmp_path / "export" / "b", patient="B2", hours=(5, 25, 97))
    with pytest.raises(InputError, match="2 patients.*--allow-mixed-patients"):
        ingest_dicom(tmp_path / "export", tmp_path / "study.yaml")


def test_no_spect_and_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no readable DICOM"):
        ingest_dicom(tmp_path / "empty", tmp_path / "s.yaml")
    write_ct_series(_ct(), tmp_path / "ctonly", DicomSeriesMeta(
        patient_id="X", study_uid=uid_from_seed(1), series_uid=uid_from_seed(2),
        frame_of_reference_uid=uid_from_seed(3), acquisition_datetime=INJ))
    with pytest.raises(InputError, match="no reconstructed SPECT"):
        ingest_dicom(tmp_path / "ctonly", tmp_path / "s.yaml")


@pytest.mark.parametrize(("text", "name"), [
    ("^177^Lutetium", "Lu-177"), ("99m Technetium", "Tc-99m"), ("Lu-177", "Lu-177"),
    ("I131", "I-131"), ("^131^Iodine", "I-131"), ("Unobtainium", None), (None, None),
])
def test_parse_dicom_nuclide(text, name):
    assert parse_dicom_nuclide(text) == name


def test_cli_ingest_reports_missing_then_succeeds(tmp_path, capsys):
    root = write_export(tmp_path / "export", with_injection=False)
    out = tmp_path / "study.yaml"
    assert main(["ingest", str(root), "-o", str(out)]) == 1
    captured = capsys.readouterr()
    assert "--injection-time" in captured.err and "Traceback" not in captured.err
    assert "NM" in captured.out and "CT" in captured.out  # the table of series found
    assert main(["ingest", str(root), "-o", str(out), "--injection-time", "2024-05-06T09:00",
                 "--injected-activity-mbq", "7400"]) == 0
    assert load_study(out).injection_datetime == INJ
    assert main(["ingest", str(root), "-o", str(out), "--injection-time", "yesterday"]) == 2


# ------------------------------------------------------------------------------ real Siemens data
@pytest.mark.realdata
def test_real_siemens_export(tmp_path, capsys):
    root = extract_reference("mgh_tc99m_maa_spectct")
    result = ingest_dicom(root, tmp_path / "study.yaml")
    modalities = sorted(r[0] for r in result.rows)
    assert modalities == ["CT", "NM", "RTSTRUCT"]
    # No injection time and counts without calibration in this export: both must be named.
    text = "\n".join(result.missing)
    assert "--injection-time" in text and "--calibration-cps-per-mbq" in text
    assert "--injected-activity-mbq" not in text  # RadionuclideTotalDose 142.45 is there
    out = tmp_path / "study.yaml"
    code = main(["ingest", str(root), "-o", str(out), "--injection-time", "2020-12-22T13:30",
                 "--calibration-cps-per-mbq", "9.0"])
    assert code == 0, capsys.readouterr().err
    study = load_study(out)
    assert study.nuclide == "Tc-99m" and study.radiopharmaceutical == "MAA"
    assert study.administered_activity_mbq == pytest.approx(142.45)
    (tp,) = study.timepoints
    assert tp.ct is not None and tp.rtstruct is not None
    assert tp.spect_units is SpectUnits.COUNTS and tp.frame_duration_s > 0
    assert main(["validate", str(out)]) == 0  # SPECT/CT overlap checked from headers
    spect = load_spect_bq_per_ml(study, tp, tmp_path)
    assert spect.GetSize() == (128, 128, 80)
    arr = sitk.GetArrayViewFromImage(spect)
    assert float(arr.min()) >= 0.0 and float(arr.sum()) > 0.0


def test_ct_with_missing_slice_refused_at_ingest(tmp_path, capsys):
    root = write_export(tmp_path / "export", hours=(24,))
    slices = sorted((root / "tp24" / "ct").iterdir())
    slices[5].unlink()  # a gap in the middle of the CT series
    out = tmp_path / "study.yaml"
    assert main(["ingest", str(root), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "missing" in err and "CT" in err and "Traceback" not in err
    assert not out.exists()
