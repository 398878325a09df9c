"""``rptdose recon`` through typer's CliRunner and the main entry point (one-line errors)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import typer
from typer.testing import CliRunner

from cli.recon import recon_cmd
from dosimetry.io.dicom_write import DicomSeriesMeta, write_ct_series
from tests.dosimetry.reconstruction.conftest import (
    FOR_UID,
    GE_WINDOWS,
    Acquisition,
    cylinder_ct,
    grid,
    write_projections,
)

app = typer.Typer()
app.command("recon")(recon_cmd)
app.command("other")(lambda: None)  # keep "recon" a sub-command


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A one-bed GE acquisition (flat counts) and its CT as a DICOM series, one frame of
    reference."""
    root = tmp_path_factory.mktemp("reconcli")
    g = grid(size_xy=16, slices=8, axis_xy=(0.0, 0.0), z0=0.0)
    acq = Acquisition("GE", g, n_views=12, time_per_view_s=10.0, radius_mm=120.0)
    rng = np.random.default_rng(5)
    counts = [rng.poisson(lam, (12, 8, 16)).astype(np.float32) for lam in (200.0, 20.0, 30.0)]
    write_projections(root / "NM" / "tomo.dcm", acq, counts)
    ct = cylinder_ct(g, (0.0, 0.0), 30.0, (-20.0, 60.0), spacing=(2.0, 2.0, 4.0))
    meta = DicomSeriesMeta(patient_id="SYNTH-1", study_uid="1.2.826.0.1.3680043.8.498.77301",
                           series_uid="1.2.826.0.1.3680043.8.498.77302",
                           frame_of_reference_uid=FOR_UID)
    write_ct_series(ct, root / "CT", meta)
    other = DicomSeriesMeta(patient_id="SYNTH-1", study_uid="1.2.826.0.1.3680043.8.498.77301",
                            series_uid="1.2.826.0.1.3680043.8.498.77303",
                            frame_of_reference_uid="1.2.826.0.1.3680043.8.498.77304")
    write_ct_series(ct, root / "CT_other", other)
    return root


def test_recon_writes_image_metadata_and_summary(export, tmp_path):
    out = tmp_path / "spect.nii.gz"
    res = CliRunner().invoke(app, [
        "recon", str(export / "NM"), "--ct", str(export / "CT"), "-o", str(out),
        "--calibration-cps-per-mbq", "9.5", "--iterations", "2", "--subsets", "3"])
    assert res.exit_code == 0, res.output
    assert "bed 1: tomo.dcm: 12 views × 8×16" in res.output
    assert "OSEM 2 iterations × 3 subsets, attenuation, scatter tew, collimator response" \
        in res.output
    assert "total activity in the field of view:" in res.output and "at 9.5 cps/MBq" in res.output
    img = sitk.ReadImage(str(out))
    assert img.GetSize() == (16, 16, 8)
    meta = json.loads((tmp_path / "spect.json").read_text())
    assert meta["units"] == "Bq/mL" and meta["collimator"] == "G8-MEGP"
    assert meta["iterations"] == 2 and meta["calibration_cps_per_mbq"] == 9.5
    assert meta["total_activity_mbq"] > 0
    assert meta["source"][0].endswith("tomo.dcm")


def test_recon_uncalibrated_no_psf_no_attenuation(export, tmp_path):
    out = tmp_path / "counts.mha"
    res = CliRunner().invoke(app, ["recon", str(export / "NM" / "tomo.dcm"), "--no-attenuation",
                                   "--no-psf", "--scatter", "none", "--iterations", "1",
                                   "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "no corrections" in res.output and "in counts (counts per view)" in res.output
    assert "total activity" not in res.output
    assert out.is_file() and (tmp_path / "counts.json").is_file()


def test_recon_errors_are_one_line(export, tmp_path, capsys):
    from cli.main import main

    code = main(["recon", str(export / "NM"), "-o", str(tmp_path / "x.nii.gz")])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: attenuation correction needs the CT")
    assert "\n" not in err
    code = main(["recon", str(export / "NM"), "--ct", str(export / "CT_other"),
                 "-o", str(tmp_path / "x.nii.gz")])
    assert code == 1
    err = capsys.readouterr().err
    assert "CT FrameOfReferenceUID (0020,0052)" in err and "differs from the projections'" in err
    code = main(["recon", str(export / "NM"), "--no-attenuation", "--collimator", "NOPE",
                 "-o", str(tmp_path / "x.nii.gz")])
    assert code == 1
    assert "collimator option: CollimatorGridName (0018,1180) 'NOPE'" in capsys.readouterr().err
    assert not (tmp_path / "x.nii.gz").exists()
    assert len(GE_WINDOWS) == 3
