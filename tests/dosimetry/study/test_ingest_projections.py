"""Ingest of an export holding raw SPECT projections (two GE bed positions) and their CT."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest
import SimpleITK as sitk

from cli.main import main
from dosimetry.errors import InputError
from dosimetry.io.dicom_write import DicomSeriesMeta, write_ct_series
from dosimetry.reconstruction import ReconSettings
from dosimetry.study.images import load_spect_bq_per_ml
from dosimetry.study.ingest import ingest_dicom, require_complete
from dosimetry.study.manifest import ImageFormat, SpectUnits
from tests.dosimetry.reconstruction.conftest import (
    FOR_UID,
    Acquisition,
    cylinder_ct,
    grid,
    write_projections,
)

INJ = datetime(2024, 4, 30, 10, 15)  # the projections are acquired 2024-05-01 10:15: 24 h


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("ingestproj") / "export"
    full = grid(size_xy=24, slices=18, axis_xy=(0.0, 0.0), z0=0.0)
    rng = np.random.default_rng(11)
    for k, (first, uid) in enumerate(((0, "1.2.826.0.1.3680043.8.498.77401"),
                                      (6, "1.2.826.0.1.3680043.8.498.77402"))):
        acq = Acquisition("GE", full.with_slices(first, first + 11), n_views=24,
                          time_per_view_s=20.0, radius_mm=120.0, series_uid=uid)
        counts = [rng.poisson(lam, (24, 12, 24)).astype(np.float32) for lam in (80, 8, 12)]
        write_projections(root / "nm" / f"bed{k + 1}.dcm", acq, counts)
    ct = cylinder_ct(full, (0.0, 0.0), 40.0, (-20.0, 100.0), spacing=(2.0, 2.0, 4.0))
    write_ct_series(ct, root / "ct", DicomSeriesMeta(
        patient_id="SYNTH-1", study_uid="1.2.826.0.1.3680043.8.498.77403",
        series_uid="1.2.826.0.1.3680043.8.498.77404", frame_of_reference_uid=FOR_UID,
        acquisition_datetime=datetime(2024, 5, 1, 10, 5), series_description="CTAC"))
    return root


def test_projections_reported_without_the_option(export, tmp_path):
    with pytest.raises(InputError, match=r"no reconstructed SPECT \(NM\) series found; found "
                                         r"raw projections \(2 series\): reconstruct them with "
                                         r"--reconstruct-projections"):
        ingest_dicom(export, tmp_path / "study.yaml")


def test_projections_reconstructed_into_the_study(export, tmp_path, capsys):
    manifest = tmp_path / "study" / "study.yaml"
    res = ingest_dicom(export, manifest, injection_datetime=INJ, injected_activity_mbq=7400.0,
                       nuclide="Lu-177", calibration_cps_per_mbq=10.0,
                       reconstruct_projections=True, recon_settings=ReconSettings())
    study = require_complete(res)
    (tp,) = study.timepoints
    assert tp.label == "24h"
    assert tp.spect.format is ImageFormat.NIFTI
    assert tp.spect.path.parts[0] == "recon" and tp.spect.path.name.startswith(
        "spect_20240501-1015_")
    assert tp.spect_units is SpectUnits.COUNTS
    assert tp.frame_duration_s == 20.0  # counts per view: the time per view
    assert tp.ct is not None and tp.ct.format is ImageFormat.DICOM
    assert any("(2 bed(s)) reconstructed with CT 'CTAC'" in w for w in res.warnings)
    img = load_spect_bq_per_ml(study, tp, manifest.parent)
    assert img.GetSize() == (24, 24, 18)  # both beds stitched
    # Bq/mL = counts per view × 10⁶ / (S [cps/MBq] · t_view · V): the same numbers as the
    # reconstruction's own calibration formula
    from dosimetry.reconstruction import counts_to_bq_per_ml

    counts = sitk.GetArrayFromImage(sitk.ReadImage(str(manifest.parent / tp.spect.path)))
    np.testing.assert_allclose(
        sitk.GetArrayViewFromImage(img),
        counts_to_bq_per_ml(counts, 10.0, 20.0, 4.4196 ** 3 / 1000.0), rtol=1e-5)
    sidecar = (manifest.parent / tp.spect.path).with_name(
        tp.spect.path.name.replace(".nii.gz", ".json"))
    assert sidecar.is_file()

    # again through the CLI (the same inputs and default settings): the image is reused
    capsys.readouterr()
    code = main(["ingest", str(export), "-o", str(manifest), "--injection-time",
                 INJ.isoformat(), "--injected-activity-mbq", "7400", "--nuclide", "Lu-177",
                 "--calibration-cps-per-mbq", "10", "--reconstruct-projections"])
    assert code == 0
    assert "(2 bed(s)) reused with CT 'CTAC'" in capsys.readouterr().err
    # other settings: reconstructed anew
    again = ingest_dicom(export, manifest, injection_datetime=INJ, injected_activity_mbq=7400.0,
                         nuclide="Lu-177", calibration_cps_per_mbq=10.0,
                         reconstruct_projections=True,
                         recon_settings=ReconSettings(iterations=1, psf=False))
    assert any("(2 bed(s)) reconstructed with CT" in w for w in again.warnings)
    assert require_complete(again).timepoints[0].spect == tp.spect


def test_projections_without_their_ct(export, tmp_path):
    import shutil

    only_nm = tmp_path / "nm_only"
    shutil.copytree(export / "nm", only_nm / "nm")
    with pytest.raises(InputError, match=r"could not be reconstructed: raw projections .* no CT "
                                         r"with their frame of reference"):
        ingest_dicom(only_nm, tmp_path / "study.yaml", reconstruct_projections=True)
