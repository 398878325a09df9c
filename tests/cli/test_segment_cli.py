"""``rptdose segment``, ``rptdose train segmentation`` and ``rptdose train lesions`` through
typer's CliRunner."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from cli.segment import segment_cmd, train_lesions_cmd, train_segmentation_cmd
from dosimetry.errors import InputError
from dosimetry.study.workdir import WorkDir

app = typer.Typer()
app.command("segment")(segment_cmd)
train_app = typer.Typer()
train_app.command("segmentation")(train_segmentation_cmd)
train_app.command("lesions")(train_lesions_cmd)
app.add_typer(train_app, name="train")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from phantoms import GridSpec, PatientConfig, make_patient

    out = tmp_path_factory.mktemp("cliseg") / "study"
    return make_patient(out, PatientConfig(
        seed=21, output_format="nifti", n_lesions=2, timepoints_h=(24.0,),
        grid=GridSpec(inplane_mm=6.0, slice_mm=6.0), spect_spacing_mm=9.5904, spect_matrix=64))


def test_segment_prints_the_organ_table(study, tmp_path):
    wd = WorkDir.create(tmp_path / "wd", study.study, study.out_dir)
    truth = study.out_dir / "truth" / "labels.nii.gz"
    res = CliRunner().invoke(app, ["segment", str(wd.root), "--backend", f"masks:{truth}"])
    assert res.exit_code == 0, res.output
    assert "liver" in res.output and "mass (g)" in res.output and "lesion_1" in res.output
    assert (wd.root / "segmentation" / "labels.nii.gz").is_file()
    again = CliRunner().invoke(app, ["segment", str(wd.root), "--backend", f"masks:{truth}"])
    assert "up to date" in again.output


def test_segment_errors_are_ours(study, tmp_path):
    wd = WorkDir.create(tmp_path / "wd", study.study, study.out_dir)
    res = CliRunner().invoke(app, ["segment", str(wd.root), "--backend", "nnunet"])
    assert res.exit_code != 0 and isinstance(res.exception, InputError)
    assert "unknown segmentation backend 'nnunet'" in str(res.exception)
    res = CliRunner().invoke(app, ["segment", str(wd.root), "--lesion-method", "nnunet"])
    assert isinstance(res.exception, InputError)
    assert "lesion method 'nnunet'" in str(res.exception)
    res = CliRunner().invoke(app, ["segment", str(tmp_path / "nowhere")])
    assert isinstance(res.exception, InputError) and "not a work folder" in str(res.exception)


def test_train_commands_train_and_write_weights(monkeypatch, tmp_path):
    """Both training commands run the real training, on a tiny configuration (the defaults
    would take tens of minutes), and write weights whose checksum they print."""
    import functools
    import hashlib

    from dosimetry.segmentation import lesion_model, train

    monkeypatch.setattr(train, "TrainConfig", functools.partial(
        train.TrainConfig, n_patients=1, steps_per_epoch=2, n_heldout=0, patch=(16, 24, 24)))
    res = CliRunner().invoke(app, ["train", "segmentation", "--seed", "3", "--epochs", "1",
                                   "-o", str(tmp_path / "organs")])
    assert res.exit_code == 0, res.output
    w = tmp_path / "organs" / "organs_ct_unet.pt"
    card = json.loads((tmp_path / "organs" / "organs_ct_unet.json").read_text())
    assert card["training"]["config"]["seed"] == 3 and card["training"]["config"]["epochs"] == 1
    assert hashlib.sha256(w.read_bytes()).hexdigest() in res.output.replace("\n", "")

    monkeypatch.setattr(lesion_model, "LesionTrainConfig", functools.partial(
        lesion_model.LesionTrainConfig, n_patients=1, draws_per_patient=1, steps_per_epoch=2,
        batch_size=1, patch=(16, 16, 16), channels=(4, 8), spacing_mm=8.0))
    res = CliRunner().invoke(app, ["train", "lesions", "--seed", "2", "--epochs", "1",
                                   "-o", str(tmp_path / "lesions")])
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "lesions" / "lesions_spect_unet.json").read_text())
    assert card["training"]["config"]["seed"] == 2
    assert card["sha256"] in res.output.replace("\n", "")
