"""Training pieces (patch sampling, augmentation, loss) and, marked slow, reproducibility."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from dosimetry.errors import InputError
from dosimetry.segmentation.names import BUILTIN_ORGANS
from dosimetry.segmentation.train import (
    TrainConfig,
    TrainingCase,
    _augment_intensity,
    _batches,
    _loss,
    _sample_patch,
    dice,
)


def _toy_case():
    """A 40³ case: soft tissue with one organ (a ball) of fraction 1 in it."""
    z, y, x = np.mgrid[0:40, 0:40, 0:40]
    ball = (x - 20) ** 2 + (y - 20) ** 2 + (z - 20) ** 2 < 64
    hu = np.where(ball, 60.0, 40.0).astype(np.float32)
    fr = np.zeros((len(BUILTIN_ORGANS), 40, 40, 40), np.float16)
    fr[0] = ball
    index = tuple(np.flatnonzero(f > 0.5).astype(np.int32) for f in fr)
    return TrainingCase(1, hu, fr, index, np.arange(hu.size, dtype=np.int32), (2.5, 2.5, 3.0),
                        10.0)


def test_patches_keep_fractions_and_air_padding():
    case = _toy_case()
    rng = np.random.default_rng(0)
    hu, fr, pos = _sample_patch(case, rng, (16, 24, 24), organ_centred=1.0)
    assert hu.shape == (1, 16, 24, 24) and fr.shape == (len(BUILTIN_ORGANS), 16, 24, 24)
    assert pos.shape == (3, 16, 24, 24)
    assert float(fr.min()) >= 0.0 and float(fr.sum(0).max()) <= 1.0 + 1e-5
    assert float(fr[0].sum()) > 0  # organ-centred: the ball is in the patch
    far = _sample_patch(case, np.random.default_rng(5), (32, 64, 64), organ_centred=1.0)[0]
    assert float(far.min()) == pytest.approx(-1000.0)  # outside the volume: air


def test_intensity_augmentation_changes_values_but_not_shape():
    hu = torch.full((1, 8, 8, 8), 40.0)
    out = _augment_intensity(hu, np.random.default_rng(1))
    assert out.shape == hu.shape and not torch.allclose(out, hu)
    assert abs(float(out.mean()) - 40.0) < 80.0  # scale ≤ 8 %, shift ≤ 25 HU, bias ≤ 12 HU


def test_batches_are_soft_label_distributions():
    cfg = TrainConfig(batch_size=2, patch=(16, 16, 16), channels=(4, 8, 16))
    x, y = next(_batches([_toy_case()], cfg, np.random.default_rng(2)))
    # two CT channels and three position channels; background + the organ fractions
    assert x.shape == (2, 5, 16, 16, 16)
    assert float(x[:, 2:].abs().max()) < 1.6  # positions relative to the body box
    assert y.shape == (2, len(BUILTIN_ORGANS) + 1, 16, 16, 16)
    assert torch.allclose(y.sum(dim=1), torch.ones_like(y[:, 0]), atol=1e-5)


def test_loss_is_small_for_the_right_answer():
    target = torch.zeros(1, 3, 4, 4, 4)
    target[:, 0] = 1.0
    target[0, 0, :2] = 0.0
    target[0, 1, :2] = 1.0
    good = torch.log(target.clamp_min(1e-4))
    bad = torch.log(target.flip(1).clamp_min(1e-4))
    assert _loss(good, target)[0] < 0.05 < _loss(bad, target)[0]


def test_dice_and_config_validation():
    a = np.zeros(10, bool)
    a[:4] = True
    b = np.zeros(10, bool)
    b[2:6] = True
    assert dice(a, b) == pytest.approx(0.5) and dice(a & False, b & False) == 1.0
    with pytest.raises(InputError, match="seed 95"):
        TrainConfig(seed=95)
    with pytest.raises(InputError, match="multiple of 8"):
        TrainConfig(patch=(30, 40, 40))


@pytest.mark.slow
def test_training_is_reproducible(tmp_path):
    from dosimetry.segmentation.train import train_segmentation

    cfg = TrainConfig(n_patients=1, steps_per_epoch=2, n_heldout=0, patch=(16, 24, 24))
    digests = []
    for run in ("a", "b"):
        res = train_segmentation(5, 1, tmp_path / run, config=cfg)
        digests.append(hashlib.sha256(res.weights.read_bytes()).hexdigest())
        assert res.sha256 == digests[-1]
    assert digests[0] == digests[1]
