"""The learned registration: the shipped weights load only with their checksum, the network
runs on CPU, the stage runs with it, and training is reproducible from the model card."""

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from dosimetry.errors import InputError
from dosimetry.registration import qa as rq
from dosimetry.registration import register_study
from dosimetry.registration.classical import prepare_ct, register_pair
from dosimetry.registration.config import TransformStage
from dosimetry.registration.learned import (
    SHIPPED_CARD,
    SHIPPED_SHA256,
    SHIPPED_WEIGHTS,
    build_network,
    load_model,
    model_inputs,
    sha256_of,
)
from dosimetry.registration.truth import PhantomTruth
from dosimetry.study.images import load_image
from dosimetry.study.workdir import WorkDir

from .conftest import FAST


def test_shipped_weights_match_the_recorded_checksum():
    assert SHIPPED_WEIGHTS.is_file() and SHIPPED_CARD.is_file()
    card = json.loads(SHIPPED_CARD.read_text())
    assert sha256_of(SHIPPED_WEIGHTS) == SHIPPED_SHA256 == card["sha256"]
    # "a small file": a few MB at most
    assert SHIPPED_WEIGHTS.stat().st_size == card["size_bytes"] < 4 * 2**20
    # the card says how to reproduce it and what it achieved
    assert card["training"]["command"].startswith("rptdose train registration --seed ")
    assert card["training"]["config"]["seed"] == 0
    assert card["training"]["data"]["train_patient_seeds"]
    held = card["metrics"]["held_out"]
    assert held["pairs"] >= 3 and np.isfinite(held["tre_learned_mean_mm"])
    model = load_model()
    assert model.sha256 == SHIPPED_SHA256
    assert model.info()["sha256"] == SHIPPED_SHA256


def test_weights_with_another_checksum_are_refused(tmp_path):
    with pytest.raises(InputError, match="does not match the recorded"):
        load_model(expected_sha256="0" * 64)
    # a tampered copy (one byte changed) is refused against the checksum in its card
    pt, card = tmp_path / "m.pt", tmp_path / "m.json"
    shutil.copy(SHIPPED_WEIGHTS, pt)
    shutil.copy(SHIPPED_CARD, card)
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pt.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"m\.pt: SHA-256 .* does not match"):
        load_model(pt)
    card.unlink()
    with pytest.raises(InputError, match="model card of m.pt not found"):
        load_model(pt)


def test_untrained_network_is_the_identity():
    """The displacement head starts at zero (VoxelMorph-style residual), so an untrained
    network predicts no displacement."""
    net = build_network({"architecture": {"channels": [4, 8, 16, 16]}})
    f = torch.zeros(1, 1, 16, 16, 24)
    assert torch.count_nonzero(net(f, f)) == 0


def test_learned_prediction_improves_on_rigid(pair_study):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = load_model(device="cpu")
    study = pair_study.study
    fixed = load_image(study.timepoints[0].ct, pair_study.out_dir)
    moving = load_image(study.timepoints[1].ct, pair_study.out_dir)
    fw, fm = prepare_ct(fixed, FAST)
    mw, mm = prepare_ct(moving, FAST)
    rigid = register_pair(fw, mw, fm, mm, FAST, (TransformStage.RIGID,))
    field = model.predict(fixed, moving, rigid.linear)
    disp = sitk.GetArrayViewFromImage(field.GetDisplacementField())
    inputs = model_inputs(fixed, moving, rigid.linear)
    assert disp.shape[:3] == inputs.fixed.shape and np.isfinite(disp).all()
    true = PhantomTruth(pair_study.out_dir / "truth").true_transform("4h", "48h")
    mask = sitk.GetArrayViewFromImage(fm) > 0
    d_true = rq.displacement(true, fw)
    tre_rigid = rq.tre_from_displacements(rq.displacement(rigid.linear, fw), d_true, mask)
    tre_learned = rq.tre_from_displacements(
        rq.displacement(sitk.CompositeTransform([rigid.linear, field]), fw), d_true, mask)
    # The network predicts a smooth residual of a few mm; it must not make the rigid result
    # worse by more than a millimetre on this unseen patient (its held-out figures are in the
    # model card; whether it beats rigid there is reported, not assumed).
    assert tre_learned.mean_mm < tre_rigid.mean_mm + 1.0
    det = rq.jacobian_stats(sitk.DisplacementFieldJacobianDeterminant(
        sitk.TransformToDisplacementField(field, sitk.sitkVectorFloat64, fw.GetSize(),
                                          fw.GetOrigin(), fw.GetSpacing(), fw.GetDirection()),
        True), fm)
    assert det.fraction_nonpositive == 0.0


def test_register_study_with_the_learned_method(pair_study, tmp_path):
    wd = WorkDir.create(tmp_path / "w", pair_study.study, pair_study.out_dir)
    res = register_study(wd, method="learned", options=FAST)
    q = res.timepoint("48h").qa
    assert res.method.value == "learned" and q.method == "learned"
    assert res.model["sha256"] == SHIPPED_SHA256
    assert [s["stage"] for s in q.stages] == ["rigid"]
    assert q.tre.mean_mm < 9.59  # below one SPECT voxel of the test grid
    assert q.jacobian.fraction_nonpositive == 0.0
    assert all(abs(a.relative_change_raw) < 0.01 for a in q.activity)
    assert json.loads(res.qa_path.read_text())["model"]["sha256"] == SHIPPED_SHA256


@pytest.mark.slow
def test_training_writes_weights_and_card_that_load(tmp_path):
    from dosimetry.registration.learned.train import TrainingConfig, train_registration

    cfg = TrainingConfig(n_train_patients=1, n_heldout_patients=1)
    res = train_registration(seed=3, epochs=1, out=tmp_path / "tiny.pt", config=cfg,
                             work_dir=tmp_path)
    card = json.loads(res.card.read_text())
    assert card["sha256"] == res.sha256 == sha256_of(res.weights)
    assert card["training"]["command"] == ("rptdose train registration --seed 3 --epochs 1 "
                                           "-o tiny.pt")
    assert card["training"]["data"]["train_patient_seeds"] == [1300]
    assert card["metrics"]["held_out"]["pairs"] == 3
    assert len(res.losses) == 1 and np.isfinite(res.losses[0])
    model = load_model(res.weights)  # checksum from the card
    assert model.sha256 == res.sha256
    # the phantoms were written under work_dir and removed afterwards
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("rptdose-regtrain-")]
