"""``rptdose kernel make`` and ``rptdose dose`` through typer's CliRunner.

The commands are mounted on a small app exactly as ``cli/main.py`` mounts them.
"""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import typer
from typer.testing import CliRunner

from cli.dose import dose_cmd, kernel_app, parse_voxel_mm
from dosimetry.errors import InputError


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("RPTDOSE_CACHE_DIR", str(tmp_path / "cache"))
    a = typer.Typer(pretty_exceptions_enable=False)
    a.add_typer(kernel_app, name="kernel")
    a.command("dose")(dose_cmd)
    return a


def _write(path, arr, spacing=(4.8, 4.8, 4.8)):
    img = sitk.GetImageFromArray(np.asarray(arr, dtype=np.float32))
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return path


@pytest.mark.mc
def test_kernel_make(app, tmp_path):
    out = tmp_path / "k.nii.gz"
    r = CliRunner().invoke(app, ["kernel", "make", "--nuclide", "Lu-177", "--voxel-mm", "4.8",
                                 "--material", "soft-tissue-icru", "--size", "5",
                                 "--emissions", "beta,ic,auger", "--decays", "5000",
                                 "-o", str(out), "--seed", "3", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "centre" in r.output and "5000 decays" in r.output
    meta = json.loads((tmp_path / "k.json").read_text())
    assert meta["voxel_mm"] == [4.8, 4.8, 4.8] and meta["seed"] == 3
    assert meta["emissions"] == ["beta", "ic", "auger"]
    assert sitk.ReadImage(str(out)).GetSize() == (5, 5, 5)
    assert (tmp_path / "k.sigma.nii.gz").is_file()


@pytest.mark.mc
@pytest.mark.parametrize("engine", ["led", "dvk", "mc"])
def test_dose_engines_write_maps(app, tmp_path, engine):
    tia = np.zeros((10, 10, 10))
    tia[4:6, 4:6, 4:6] = 1.0  # MBq·h per voxel
    tia_path = _write(tmp_path / "tia.nii.gz", tia)
    ct_path = _write(tmp_path / "ct.nii.gz", np.zeros((10, 10, 10)))
    out = tmp_path / f"dose_{engine}.nii.gz"
    args = ["dose", str(tia_path), "--ct", str(ct_path), "--nuclide", "Lu-177", "--engine",
            engine, "-o", str(out), "--decays", "4000", "--tia-unit", "mbq-h",
            "--emissions", "beta", "--seed", "1"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    dose = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    meta = json.loads((tmp_path / f"dose_{engine}.json").read_text())
    assert meta["engine"] == engine and meta["tia_unit"] == "mbq-h"
    # 8 MBq·h = 2.88e10 decays were converted from MBq·h to Bq·s
    assert meta["total_tia_bq_s"] == pytest.approx(8 * 3.6e9, rel=1e-6)
    assert dose.max() > 0
    assert (tmp_path / f"dose_{engine}.sigma.nii.gz").is_file() == (engine == "mc")


def test_dose_far_field_switch(app, tmp_path):
    """dvk adds the far-field photon dose by default (recorded in the sidecar) and leaves it
    out with --no-far-field: beyond the kernel's cube the dose is then zero."""
    from dosimetry.dose.kernels import Kernel, write_kernel

    arr = np.zeros((3, 3, 3), dtype=np.float32)
    arr[1, 1, 1] = 1.0
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((4.8, 4.8, 4.8))
    kpath = write_kernel(Kernel(img, None, {"nuclide": "Lu-177", "emissions": ["gamma"]}),
                         tmp_path / "k.nii.gz")
    tia = np.zeros((15, 15, 15))
    tia[7, 7, 7] = 1e9
    tia_path = _write(tmp_path / "tia.nii.gz", tia)
    doses = {}
    for flag in ("--far-field", "--no-far-field"):
        out = tmp_path / f"d{flag}.nii.gz"
        r = CliRunner().invoke(app, ["dose", str(tia_path), "--nuclide", "Lu-177", "--engine",
                                     "dvk", "--kernel", str(kpath), "-o", str(out), flag])
        assert r.exit_code == 0, r.output
        doses[flag] = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
        meta = json.loads(out.with_name(f"d{flag}.json").read_text())
        assert (meta["far_field"] is None) == (flag == "--no-far-field")
    assert doses["--far-field"][7, 7, 0] > 0
    assert abs(doses["--no-far-field"][7, 7, 0]) < 1e-6 * doses["--no-far-field"].max()


def test_dose_errors_are_library_errors(app, tmp_path):
    r = CliRunner().invoke(app, ["dose", str(tmp_path / "missing.nii.gz"), "--nuclide",
                                 "Lu-177", "-o", str(tmp_path / "d.nii.gz")])
    # CliRunner hands back the exception that cli/main.py turns into one line, exit 1
    assert isinstance(r.exception, InputError)
    assert "image file not found" in str(r.exception)
    r = CliRunner().invoke(app, ["dose", "x.nii.gz", "--nuclide", "Lu-177", "-o", "d.nii.gz",
                                 "--engine", "geant"])
    assert r.exit_code == 2  # usage error from typer: invalid choice


def test_parse_voxel_mm():
    assert parse_voxel_mm("4.8") == (4.8, 4.8, 4.8)
    assert parse_voxel_mm("4,4,5") == (4.0, 4.0, 5.0)
    with pytest.raises(InputError, match="--voxel-mm 'a'"):
        parse_voxel_mm("a")
    with pytest.raises(InputError, match="three sizes > 0"):
        parse_voxel_mm("1,2")


def test_dose_deep_engine_writes_dose_sigma_and_record(app, tmp_path):
    tia = np.full((14, 14, 14), 1e5)
    tia[5:9, 5:9, 5:9] = 1e9
    hu = np.zeros((14, 14, 14))
    hu[:, :, :4] = -800.0
    tia_path = _write(tmp_path / "tia.nii.gz", tia)
    ct_path = _write(tmp_path / "ct.nii.gz", hu)
    out = tmp_path / "dose_deep.nii.gz"
    r = CliRunner().invoke(app, ["dose", str(tia_path), "--ct", str(ct_path), "--nuclide",
                                 "Lu-177", "--engine", "deep", "-o", str(out), "--decays",
                                 "100000"])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "dose_deep.json").read_text())
    assert meta["engine"] == "deep" and meta["model"]["sha256"]
    sig = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "dose_deep.sigma.nii.gz")))
    dose = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    hot = dose > 0.5 * dose.max()
    rel = sig[hot] / dose[hot]
    # a model σ: at least α·1 % (the floor), well below the dose itself
    assert rel.min() >= 0.999 * meta["model"]["alpha"] * 0.01 and rel.max() < 0.5
    r = CliRunner().invoke(app, ["dose", str(tia_path), "--nuclide", "Lu-177", "--engine",
                                 "deep", "-o", str(tmp_path / "x.nii.gz"), "--weights",
                                 str(tmp_path / "none.pt")])
    assert r.exit_code != 0
    assert "none.pt" in str(r.exception) + r.output
