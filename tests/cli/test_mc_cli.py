"""``rptdose mc gate``, ``gate-read`` and ``g4-data`` through the real entry point."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from cli.main import main
from dosimetry.dose.gate import simulation as gsim
from dosimetry.dose.gate.g4data import DATASETS, ENV_VAR


@pytest.fixture
def no_g4(monkeypatch, tmp_path):
    """No Geant4 data anywhere, whatever this machine has (opengate itself stays importable)."""
    for var in [*DATASETS, ENV_VAR]:
        monkeypatch.delenv(var, raising=False)
    import dosimetry.dose.gate.g4data as g4

    monkeypatch.setattr(g4, "opengate_data_folder", lambda: tmp_path / "no-geant4-data")


@pytest.fixture
def images(tmp_path):
    ct = sitk.Image(16, 16, 16, sitk.sitkFloat32) + 40.0
    ct.SetSpacing((3.0, 3.0, 3.0))
    arr = np.zeros((8, 8, 8), np.float32)
    arr[3:5, 3:5, 3:5] = 1e8
    tia = sitk.GetImageFromArray(arr)
    tia.SetSpacing((6.0, 6.0, 6.0))
    tia.SetOrigin((1.5, 1.5, 1.5))
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(tia, str(tmp_path / "tia.nii.gz"))
    return tmp_path / "tia.nii.gz", tmp_path / "ct.nii.gz"


def test_gate_export_needs_no_geant4_data(images, tmp_path, no_g4, capsys):
    tia, ct = images
    rc = main(["mc", "gate", str(tia), "--ct", str(ct), "--nuclide", "I-131", "--export",
               str(tmp_path / "exp"), "--threads", "2", "--decays", "5000", "--source",
               "spectrum", "--emissions", "beta,gamma"])
    assert rc == 0, capsys.readouterr()
    cfg = json.loads((tmp_path / "exp" / "simulation.json").read_text())
    assert cfg["nuclide"] == "I-131" and cfg["source_mode"] == "spectrum"
    assert cfg["emissions"] == ["beta", "gamma"]
    assert cfg["run"]["threads"] == 2
    assert "rptdose_gate.py" in capsys.readouterr().out


def test_gate_run_without_data_fails_cleanly(images, tmp_path, no_g4, capsys):
    tia, ct = images
    rc = main(["mc", "gate", str(tia), "--ct", str(ct), "--nuclide", "Lu-177", "-o",
               str(tmp_path / "out")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # with opengate installed (make test installs it) the missing piece is the data
    assert ("Geant4 data" in err and "--export" in err) or "GATE is not installed" in err
    assert not (tmp_path / "out" / "dose_gy.nii.gz").exists()


def test_gate_options_are_checked(images, tmp_path, capsys):
    tia, ct = images
    assert main(["mc", "gate", str(tia), "--ct", str(ct), "--nuclide", "Lu-177"]) == 1
    assert "--export" in capsys.readouterr().err
    assert main(["mc", "gate", str(tia), "--ct", str(ct), "--nuclide", "Lu-177", "-o",
                 str(tmp_path / "o"), "--export", str(tmp_path / "e")]) == 1
    assert "not both" in capsys.readouterr().err
    assert main(["mc", "gate", str(tmp_path / "missing.nii.gz"), "--ct", str(ct),
                 "--nuclide", "Lu-177", "--export", str(tmp_path / "e")]) == 1
    assert "missing.nii.gz" in capsys.readouterr().err


def test_g4_data_command(tmp_path, no_g4, capsys):
    assert main(["mc", "g4-data"]) == 1
    assert "opengate_download_data" in capsys.readouterr().err
    for name in ("G4EMLOW8.8", "PhotonEvaporation6.1.2", "RadioactiveDecay6.1.2",
                 "G4ENSDFSTATE3.0", "G4PARTICLEXS4.2"):
        (tmp_path / "g4" / name).mkdir(parents=True)
        (tmp_path / "g4" / name / "x").write_text("x")
    assert main(["mc", "g4-data", "--g4-data", str(tmp_path / "g4")]) == 0
    assert "G4LEDATA" in capsys.readouterr().out


def test_gate_read_back(images, tmp_path, capsys):
    """An exported run finished elsewhere is read back as Gy on the TIA map's grid."""
    tia, ct = images
    assert main(["mc", "gate", str(tia), "--ct", str(ct), "--nuclide", "Lu-177", "--export",
                 str(tmp_path / "exp"), "--decays", "1000"]) == 0
    folder = tmp_path / "exp"
    cfg = gsim.load_config(folder)
    src = sitk.ReadImage(str(folder / "source.mhd"))
    run_dir = folder / "output"
    run_dir.mkdir()
    raw = np.full(sitk.GetArrayViewFromImage(src).shape, 1e-12)   # Gy over the run
    for name, arr in (("dose_dose.mhd", raw), ("dose_dose_uncertainty.mhd", raw * 0 + 0.1)):
        img = sitk.GetImageFromArray(arr.astype(np.float32))
        img.CopyInformation(src)
        sitk.WriteImage(img, str(run_dir / name))
    plan = {"threads": 1, "seed": 0, "decays": 1000,
            "sources": gsim.planned_sources(cfg, 1000, 1)}
    gsim.finish_run(cfg, plan, 1000, run_dir / "dose_dose.mhd",
                    run_dir / "dose_dose_uncertainty.mhd", run_dir)
    assert main(["mc", "gate-read", str(folder), "--like", str(tia), "-o",
                 str(tmp_path / "back")]) == 0, capsys.readouterr()
    dose = sitk.ReadImage(str(tmp_path / "back" / "dose_gy.nii.gz"))
    like = sitk.ReadImage(str(tia))
    assert dose.GetOrigin() == like.GetOrigin() and dose.GetSize() == like.GetSize()
    # 1e-12 Gy / 1000 decays × Σ TIA (8 voxels × 1e8 Bq·s) = 8e-7 Gy
    assert float(sitk.GetArrayViewFromImage(dose).mean()) == pytest.approx(8e-7, rel=1e-5)


@pytest.mark.mc
def test_mc_run_split_jobs(images, tmp_path, capsys):
    """``rptdose mc run``: the fast MC split into seeded jobs and merged (in-process here)."""
    tia, ct = images
    out = tmp_path / "mc"
    assert main(["mc", "run", str(tia), "--ct", str(ct), "--nuclide", "Lu-177", "-o", str(out),
                 "--decays", "20000", "--jobs", "2", "--scheduler", "serial"]) == 0, \
        capsys.readouterr()
    meta = json.loads((out / "dose.json").read_text())
    assert meta["engine"] == "mc" and meta["complete"] is True
    assert meta["n_jobs"] == 2 and meta["n_decays"] >= 20000
    dose = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "dose_gy.nii.gz")))
    sigma = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "dose_sigma_gy.nii.gz")))
    hot = dose > 0.5 * dose.max()
    # 2·10⁴ decays over 8 source voxels: ≈ 2.5·10³ per voxel, a few % statistical σ there
    assert np.all(sigma[hot] < 0.1 * dose[hot])
