"""``rptdose denoise`` and ``rptdose train denoiser`` through typer's CliRunner."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import typer
from typer.testing import CliRunner

from cli.denoise import denoise_cmd, train_denoiser_cmd
from dosimetry.errors import InputError
from dosimetry.io.images import read_image, write_image

app = typer.Typer()
app.command("denoise")(denoise_cmd)
train_app = typer.Typer()
train_app.command("denoiser")(train_denoiser_cmd)
app.add_typer(train_app, name="train")


def test_denoise_writes_an_image_with_the_same_total(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.poisson(np.full((20, 24, 24), 30.0)).astype(np.float32) * 1e3
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((9.5904,) * 3)
    img.SetOrigin((1.0, 2.0, 3.0))
    src = write_image(img, tmp_path / "spect.nii.gz")
    dst = tmp_path / "out" / "denoised.nii.gz"
    res = CliRunner().invoke(app, ["denoise", str(src), "-o", str(dst), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    out = read_image(dst)
    assert out.GetOrigin() == img.GetOrigin() and out.GetSize() == img.GetSize()
    got = sitk.GetArrayFromImage(out).sum(dtype=np.float64)
    assert got == pytest.approx(arr.sum(dtype=np.float64), rel=1e-5)
    assert "wrote" in res.output and "sha256" in res.output


def test_denoise_errors_are_ours(tmp_path):
    res = CliRunner().invoke(app, ["denoise", str(tmp_path / "none.nii.gz"), "-o",
                                   str(tmp_path / "o.nii.gz")])
    assert isinstance(res.exception, InputError) and "image file not found" in str(
        res.exception)
    img = sitk.GetImageFromArray(np.ones((8, 8, 8), np.float32))
    src = write_image(img, tmp_path / "s.nii.gz")
    res = CliRunner().invoke(app, ["denoise", str(src), "-o", str(tmp_path / "o.nii.gz"),
                                   "--weights", str(tmp_path / "mine.pt")])
    assert isinstance(res.exception, InputError) and "denoiser weights not found" in str(
        res.exception)
    res = CliRunner().invoke(app, ["denoise", str(src)])
    assert res.exit_code == 2  # -o is required


def test_train_denoiser_passes_its_options_and_records_the_command(monkeypatch, tmp_path):
    """The command is a thin layer over phantoms.denoise_data.build_denoiser (the real recipe
    takes ~20 min; its determinism is tested in tests/dosimetry/enhancement)."""
    import phantoms.denoise_data as dd

    seen = {}

    def fake(work, out, *, settings, n_patients, n_heldout, device, command, log):
        seen.update(work=work, out=out, settings=settings, n=n_patients, h=n_heldout,
                    device=device, command=command)
        log("training …")
        return {"sha256": "ab" * 32, "evaluation": {"organ_bias": {"validation": {}, "test": {
            "organs": {"liver": {"den_vs_in": {"mean_percent": -0.5, "worst_percent": -1.0}}}}}}}

    monkeypatch.setattr(dd, "build_denoiser", fake)
    res = CliRunner().invoke(app, ["train", "denoiser", "--seed", "2", "--epochs", "3",
                                   "--patients", "4", "--heldout-patients", "2", "--work",
                                   str(tmp_path / "w"), "-o", str(tmp_path / "d.pt")])
    assert res.exit_code == 0, res.output
    assert seen["settings"].seed == 2 and seen["settings"].epochs == 3
    assert seen["n"] == 4 and seen["h"] == 2 and seen["device"] == "cpu"
    assert seen["command"].startswith("rptdose train denoiser --seed 2 --epochs 3")
    assert "liver -0.50 %" in res.output and "abababababab" in res.output
