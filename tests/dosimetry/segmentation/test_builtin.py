"""The built-in organ model with the committed weights: checksum, held-out Dice, geometry."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from dosimetry.errors import InputError
from dosimetry.segmentation import builtin
from dosimetry.segmentation.builtin import (
    INPUT_CHANNELS,
    ORGAN_MODEL,
    SHIPPED_SHA256,
    WEIGHTS_DIR,
    ModelCard,
    WeightsChecksumError,
    body_box,
    coord_channels,
    load_model,
    model_inputs,
    segment_organs,
    sha256_file,
)
from dosimetry.segmentation.lesion_model import LESION_MODEL
from dosimetry.segmentation.names import BUILTIN_ORGANS
from dosimetry.segmentation.train import HELDOUT_SEEDS, dice, make_heldout_case

#: The target for these organs: held-out Dice 0.90, less 0.02 for one patient against a mean
#: over several. The committed model does not reach it yet for the liver, kidneys and spleen
#: (weights/README.md); :func:`test_heldout_patient_dice_target` records that.
TARGET_DICE = {"liver": 0.88, "kidney_left": 0.88, "kidney_right": 0.88, "spleen": 0.88,
               "lung_left": 0.88, "lung_right": 0.88}
#: What the committed model reaches on held-out patient HELDOUT_SEEDS[0] (model card: liver
#: 0.83, spleen 0.80, kidneys 0.74 / 0.63, lungs 0.94 / 0.95, bladder 0.80, stomach 0.73,
#: heart 0.73), less 0.05: a regression check of these weights, not the target.
MIN_DICE = {"liver": 0.78, "kidney_left": 0.68, "kidney_right": 0.58, "spleen": 0.74,
            "lung_left": 0.88, "lung_right": 0.90, "urinary_bladder": 0.75, "stomach": 0.67,
            "heart": 0.68}

#: These tests run when the organ model's weights are installed.
needs_organ_weights = pytest.mark.skipif(
    not (WEIGHTS_DIR / f"{ORGAN_MODEL}.json").is_file(),
    reason="built-in organ model weights not installed (dosimetry/segmentation/weights/"
           "organs_ct_unet.json absent; see weights/README.md)")


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def heldout():
    return make_heldout_case(HELDOUT_SEEDS[0])


@needs_organ_weights
def test_shipped_weights_are_small_and_match_their_card():
    card = ModelCard.read(WEIGHTS_DIR / f"{ORGAN_MODEL}.json")
    path = WEIGHTS_DIR / card.weights_file
    assert path.stat().st_size < 5 * 2**20
    assert sha256_file(path) == card.sha256 == SHIPPED_SHA256[card.weights_file]
    assert card.classes == ("background", *BUILTIN_ORGANS)
    assert card.training["command"].startswith("rptdose train segmentation --seed ")
    assert set(card.evaluation["dice_mean"]) == set(BUILTIN_ORGANS)


def test_tampered_weights_are_refused(tmp_path, monkeypatch):
    # the shipped lesion model's files (same loader and checks as the organ model)
    folder = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, folder)
    w = folder / f"{LESION_MODEL}.pt"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight (inside the tensor data)
    w.write_bytes(bytes(data))
    with pytest.raises(WeightsChecksumError, match="does not match the recorded"):
        load_model(LESION_MODEL, weights_dir=folder)
    # rewriting the card does not help when the folder is the shipped one: the checksum
    # recorded in the code is compared
    card = json.loads((folder / f"{LESION_MODEL}.json").read_text())
    card["sha256"] = sha256_file(w)
    (folder / f"{LESION_MODEL}.json").write_text(json.dumps(card))
    load_model(LESION_MODEL, weights_dir=folder)  # a user-trained folder: its card is trusted
    monkeypatch.setattr(builtin, "WEIGHTS_DIR", folder)
    with pytest.raises(WeightsChecksumError):
        load_model(LESION_MODEL)


def test_missing_card_and_bad_device(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="model card not found"):
        load_model(weights_dir=tmp_path)
    monkeypatch.setattr(builtin, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(InputError, match=r"not installed \(train it with 'rptdose train"):
        load_model()
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            load_model(device="cuda")


@pytest.fixture(scope="module")
def heldout_dice(model, heldout):
    pred = segment_organs(heldout.ct, model=model)
    lab = pred.labels
    assert lab.image.GetSize() == heldout.ct.GetSize()
    assert lab.image.GetDirection() == heldout.ct.GetDirection()
    assert lab.image.GetOrigin() == heldout.ct.GetOrigin()
    p = sitk.GetArrayViewFromImage(lab.image)
    t = sitk.GetArrayViewFromImage(heldout.truth)
    return {name: dice(p == k, t == k) for k, name in enumerate(model.card.classes) if k}


@needs_organ_weights
def test_heldout_patient_dice(heldout_dice):
    got = heldout_dice
    low = {n: round(d, 3) for n, d in got.items() if d < MIN_DICE.get(n, 0.0)}
    assert not low, (low, got)


@needs_organ_weights
@pytest.mark.xfail(strict=True, reason="the committed organ model misses the 0.90 target for "
                   "liver, kidneys and spleen (weights/README.md)")
def test_heldout_patient_dice_target(heldout_dice):
    got = heldout_dice
    low = {n: round(d, 3) for n, d in got.items() if d < TARGET_DICE.get(n, 0.0)}
    assert not low, (low, got)


@needs_organ_weights
def test_voxel_order_does_not_matter(model, heldout):
    # the same patient stored with x and y reversed (direction −1, −1, 1): the model works on
    # an L-P-S grid, so the labels are the same anatomy
    ct = heldout.ct
    arr = sitk.GetArrayFromImage(ct)[:, ::-1, ::-1]
    flipped = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    flipped.SetSpacing(ct.GetSpacing())
    size = np.array(ct.GetSize())
    far = ct.TransformIndexToPhysicalPoint([int(size[0] - 1), int(size[1] - 1), 0])
    flipped.SetOrigin((far[0], far[1], ct.GetOrigin()[2]))
    flipped.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    # a copy: a view would outlive the temporary image it looks into
    a = sitk.GetArrayFromImage(segment_organs(ct, model=model).labels.image)
    b = sitk.GetArrayFromImage(segment_organs(flipped, model=model).labels.image)[:, ::-1, ::-1]
    liver = BUILTIN_ORGANS.index("liver") + 1
    kl = BUILTIN_ORGANS.index("kidney_left") + 1
    assert dice(a == liver, b == liver) > 0.97
    assert dice(a == kl, b == kl) > 0.9


def test_position_channels_follow_the_body_box():
    hu = np.full((20, 30, 40), -1000.0, np.float32)
    hu[4:16, 10:20, 5:35] = 40.0
    box = body_box(hu, margin=0)
    c = coord_channels(hu.shape, box)
    assert c.shape == (3, 12, 10, 30)
    # (S, P, L) order; each spans exactly ±(n − 1)/n over the box, centre 0
    for ax, n in enumerate((12, 10, 30)):
        line = np.moveaxis(c[ax], ax, 0)[:, 0, 0]
        assert line[0] == pytest.approx(-(n - 1) / n) and line[-1] == pytest.approx((n - 1) / n)
        assert np.all(np.diff(line) > 0)
    # the same values from explicit (z, y, x) indices, as the training patches compute them
    pts = np.stack(np.meshgrid(np.arange(4, 16), np.arange(10, 20), np.arange(5, 35),
                               indexing="ij"), axis=-1)
    assert np.allclose(coord_channels(hu.shape, box, pts), c)
    x = model_inputs(hu, box, 5)
    assert x.shape == (5, 12, 10, 30) and np.allclose(x[2:], c)
    assert model_inputs(hu, box, 2).shape == (2, 12, 10, 30)
    with pytest.raises(InputError, match="expects 4 input channels"):
        model_inputs(hu, box, 4)


def _tiny_model(folder, in_channels, listed):
    from dosimetry.segmentation.unet import UNetConfig, build_unet

    ucfg = UNetConfig(in_channels=in_channels, n_classes=len(BUILTIN_ORGANS) + 1,
                      channels=(2, 4))
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(build_unet(ucfg).state_dict(), folder / f"{ORGAN_MODEL}.pt")
    card = ModelCard(name=ORGAN_MODEL, weights_file=f"{ORGAN_MODEL}.pt",
                     sha256=sha256_file(folder / f"{ORGAN_MODEL}.pt"),
                     architecture=ucfg.to_dict(), classes=("background", *BUILTIN_ORGANS),
                     spacing_mm=12.0, input={"channels": list(listed)})
    (folder / f"{ORGAN_MODEL}.json").write_text(json.dumps(card.to_dict()))
    return folder


def test_card_input_channels_are_checked(tmp_path):
    ct = sitk.GetImageFromArray(np.full((10, 16, 16), 40.0, np.float32))
    ct.SetSpacing((6.0, 6.0, 6.0))
    # a card whose channel list disagrees with its architecture is refused
    bad = _tiny_model(tmp_path / "bad", 5, INPUT_CHANNELS[2])
    with pytest.raises(InputError, match="lists 2 input channels but its architecture has "
                                         "in_channels 5"):
        load_model(weights_dir=bad)
    # an input convention this code does not know is refused when run
    odd = _tiny_model(tmp_path / "odd", 4, ["a", "b", "c", "d"])
    with pytest.raises(InputError, match="expects 4 input channels"):
        segment_organs(ct, weights_dir=odd)
    # both known conventions run (the model's in_channels decides which inputs it gets)
    for n in (2, 5):
        ok = _tiny_model(tmp_path / f"ok{n}", n, INPUT_CHANNELS[n])
        pred = segment_organs(ct, weights_dir=ok)
        assert pred.labels.image.GetSize() == ct.GetSize()
