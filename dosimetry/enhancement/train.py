"""Seeded training of the SPECT denoiser on (low-count, reference) reconstruction pairs.

The data are given as arrays (the recipe that makes them from digital patients lives in
:mod:`phantoms.denoise_data`; this package imports nothing outside :mod:`dosimetry`). Each
pair is a low-count OSEM reconstruction and its reference — the reconstruction of the same
patient's noise-free projections with the same algorithm and iterations, so that the target
has the input's resolution and the network learns to remove noise, not to deblur.

Training: random crops of ``patch``³ voxels (70 % centred on the body, voxels above 10 % of the
image scale; 30 % anywhere), heavy augmentation (the 48 flips/axis permutations, a random
intensity factor 0.5–2 applied to input and target alike), Adam with a cosine learning-rate
schedule, loss = mean squared error of the normalised images (both divided by the input
image's scale) after the count-preserving layer (with its training σ). Everything random
comes from ``seed`` (numpy generator for the crops, torch generator for the weights); with
the same seed, thread count and torch version the weights are identical bit for bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from dosimetry.enhancement.model import (
    DenoiserConfig,
    DenoiseUNet,
    build_denoiser,
    denoise_tensor,
    image_scale,
)
from dosimetry.errors import InputError

__all__ = ["TrainPair", "TrainResult", "TrainSettings", "train_denoiser"]


@dataclass(frozen=True, eq=False)
class TrainPair:
    """One training example: input and target (Z, Y, X) float32 arrays on the same grid.

    ``spacing_zyx_mm`` is the voxel size; ``tag`` names the source (patient seed, count level).
    """

    inp: np.ndarray
    target: np.ndarray
    spacing_zyx_mm: tuple[float, float, float]
    tag: str = ""

    def __post_init__(self) -> None:
        if self.inp.shape != self.target.shape or self.inp.ndim != 3:
            raise InputError(f"training pair {self.tag!r}: input {self.inp.shape} and target "
                             f"{self.target.shape} must be the same 3-D shape")


@dataclass(frozen=True)
class TrainSettings:
    """Training hyper-parameters (recorded in the model card)."""

    seed: int = 0
    epochs: int = 12
    steps_per_epoch: int = 40
    batch_size: int = 4
    patch: int = 32
    learning_rate: float = 2e-3
    body_fraction: float = 0.7
    config: DenoiserConfig = field(default_factory=DenoiserConfig)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.steps_per_epoch < 1 or self.batch_size < 1:
            raise InputError(f"training needs ≥ 1 epoch, step and sample (got {self.epochs}, "
                             f"{self.steps_per_epoch}, {self.batch_size})")
        if self.patch % self.config.divisor or self.patch < 8:
            raise InputError(f"patch {self.patch} must be ≥ 8 and a multiple of "
                             f"{self.config.divisor}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["config"] = self.config.to_dict()
        return d


@dataclass(frozen=True, eq=False)
class TrainResult:
    """The trained network and its training record."""

    net: DenoiseUNet
    epoch_losses: tuple[float, ...]
    seconds: float
    threads: int
    settings: TrainSettings


def _augment(a: np.ndarray, b: np.ndarray, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray]:
    perm = tuple(int(p) for p in rng.permutation(3))
    flips = rng.integers(0, 2, size=3)
    a = a.transpose(perm)
    b = b.transpose(perm)
    axes = tuple(i for i in range(3) if flips[i])
    if axes:
        a = np.flip(a, axes)
        b = np.flip(b, axes)
    return np.ascontiguousarray(a), np.ascontiguousarray(b)


def _crop(pair: TrainPair, scale: float, patch: int, body_fraction: float,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x, t = pair.inp, pair.target
    pads = [(0, max(0, patch - n)) for n in x.shape]
    if any(p[1] for p in pads):
        x = np.pad(x, pads)
        t = np.pad(t, pads)
    shape = np.asarray(x.shape)
    if rng.random() < body_fraction:
        idx = np.flatnonzero(x > 0.1 * scale)
        c = np.unravel_index(idx[rng.integers(idx.size)], x.shape) if idx.size else \
            tuple(int(rng.integers(n)) for n in shape)
        lo = np.clip(np.asarray(c) - patch // 2, 0, shape - patch)
    else:
        lo = np.array([int(rng.integers(0, n - patch + 1)) for n in shape])
    sl = tuple(slice(int(a), int(a) + patch) for a in lo)
    return x[sl], t[sl]


def train_denoiser(pairs: Sequence[TrainPair], settings: TrainSettings = TrainSettings(), *,
                   device: str = "cpu", log: Callable[[str], None] = print) -> TrainResult:
    """Train a :class:`~dosimetry.enhancement.model.DenoiseUNet` (see the module notes).

    Parameters
    ----------
    pairs : sequence of TrainPair
    settings : TrainSettings
    device : str
        Torch device (training runs unchanged on CUDA).
    log : callable
        Receives one line per epoch.

    Returns
    -------
    TrainResult
    """
    if not pairs:
        raise InputError("no training pairs")
    t0 = time.perf_counter()
    rng = np.random.default_rng([settings.seed, 4242])
    torch.manual_seed(settings.seed)
    net = build_denoiser(settings.config, device, seed=settings.seed)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=settings.learning_rate)
    total = settings.epochs * settings.steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.5 * (1.0 + math.cos(math.pi * min(k, total) / total)))
    scales = []
    for p in pairs:
        with torch.no_grad():
            scales.append(float(image_scale(torch.from_numpy(
                np.ascontiguousarray(p.inp, np.float32))[None, None])))
    losses: list[float] = []
    for epoch in range(settings.epochs):
        acc = 0.0
        for _ in range(settings.steps_per_epoch):
            xs, ts, ss, sps = [], [], [], []
            for _b in range(settings.batch_size):
                k = int(rng.integers(len(pairs)))
                x, t = _crop(pairs[k], scales[k], settings.patch, settings.body_fraction, rng)
                x, t = _augment(x, t, rng)
                f = float(np.exp(rng.uniform(math.log(0.5), math.log(2.0))))
                xs.append(x * f)
                ts.append(t * f)
                ss.append(scales[k] * f)
                sps.append(pairs[k].spacing_zyx_mm)
            x_t = torch.from_numpy(np.stack(xs)[:, None].astype(np.float32)).to(device)
            t_t = torch.from_numpy(np.stack(ts)[:, None].astype(np.float32)).to(device)
            s_t = torch.tensor(ss, dtype=torch.float32, device=device).reshape(-1, 1, 1, 1, 1)
            # isotropic augmentation: one voxel size for the batch (the pairs share it)
            sp = tuple(float(np.mean([s[i] for s in sps])) for i in range(3))
            y = denoise_tensor(net, x_t, sp, scale=s_t,
                               sigma_mm=settings.config.train_preserve_sigma_mm)
            loss = torch.mean(((y - t_t) / s_t) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            acc += float(loss.detach())
        losses.append(acc / settings.steps_per_epoch)
        log(f"epoch {epoch + 1}/{settings.epochs}: loss {losses[-1]:.5f} "
            f"({time.perf_counter() - t0:.0f} s)")
    net.eval()
    return TrainResult(net=net, epoch_losses=tuple(round(v, 6) for v in losses),
                       seconds=time.perf_counter() - t0, threads=torch.get_num_threads(),
                       settings=settings)
