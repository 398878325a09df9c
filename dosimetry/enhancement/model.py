"""The denoising network and its count-preserving output layer (torch kernels, no files).

Network: a shallow residual 3-D U-Net (Ronneberger et al. 2015,
doi:10.1007/978-3-319-24574-4_28; 3-D form Çiçek et al. 2016,
doi:10.1007/978-3-319-46723-8_49) without normalisation layers (the intensity scale must pass
through unchanged), predicting a residual on the normalised image (residual learning as in
DnCNN, Zhang et al. 2017, doi:10.1109/TIP.2017.2662206). ``len(channels)`` levels, two 3×3×3
convolutions with leaky ReLU per level, 2×2×2 average pooling down, trilinear upsampling and a
1×1×1 convolution up, skip connections by concatenation.

Count preservation by construction (:func:`preserve_counts`): the raw output y is clipped at 0
and multiplied by the ratio of Gaussian-smoothed input and output, ``y·(G_σ⊗x + ε)/(G_σ⊗y + ε)``,
so the network can only move counts over distances of about σ (it cannot create or remove
activity at the scale of an organ); a final factor makes the image total equal to the input's
total exactly (to float rounding). The same layer runs in training and in inference.

Input normalisation: the image is divided by its scale ``s`` = mean of the voxels above 10 % of
the 99.9th percentile (the body's typical concentration); the network never sees absolute
units, so it is indifferent to the count level's calibration.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_CL = torch.channels_last_3d


@dataclass(frozen=True)
class DenoiserConfig:
    """Shape of a :class:`DenoiseUNet` and of its count-preserving layer.

    Attributes
    ----------
    channels : tuple of int
        Feature channels per resolution level (input sizes must be multiples of
        ``2 ** (len(channels) − 1)``; :func:`denoise_tensor` pads).
    preserve_sigma_mm : float
        σ [mm] of the Gaussian of the count-preserving layer in inference.
    train_preserve_sigma_mm : float
        σ [mm] of that layer during training.

    Notes
    -----
    The two σ differ on purpose. Trained with the tighter layer (6 mm) the network learned
    structures at the voxel scale that slip through it and moved more activity out of hot
    organs (validation patients: kidneys −2.5 %, spleen −3.4 % on average, worst −5.9 %);
    trained with 15 mm it learns a smooth denoised image, and the 6 mm layer in inference
    then ties its local means to the input's (validation: every organ within 1.5 %), at the
    price of part of the noise reduction (NEMA background variability of the 37 mm ROIs −27 %
    instead of −51 % with 15 mm). Figures: ``weights/README.md``.
    """

    channels: tuple[int, ...] = (8, 16, 32)
    preserve_sigma_mm: float = 6.0
    train_preserve_sigma_mm: float = 15.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if len(self.channels) < 1 or min(self.channels) < 1:
            raise ValueError(f"invalid denoiser channels {self.channels}")
        for name in ("preserve_sigma_mm", "train_preserve_sigma_mm"):
            v = getattr(self, name)
            if not (1.0 <= v <= 200.0):
                raise ValueError(f"{name} {v} is outside 1–200 mm")

    @property
    def divisor(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DenoiserConfig:
        return cls(tuple(d["channels"]), float(d["preserve_sigma_mm"]),
                   float(d.get("train_preserve_sigma_mm", d["preserve_sigma_mm"])))


def _keep_channels_last(t: torch.Tensor) -> torch.Tensor:
    """Identity; makes the gradient channels-last on the way back (oneDNN's 3-D convolution
    backward is much faster in that format on CPU; see dosimetry.segmentation.unet)."""
    if t.requires_grad:
        t.register_hook(lambda g: g.contiguous(memory_format=_CL))
    return t


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(c_in, c_out, 3, padding=1)
        self.conv2 = nn.Conv3d(c_out, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(_keep_channels_last(self.conv1(x)), 0.1)
        return F.leaky_relu(_keep_channels_last(self.conv2(x)), 0.1)


class DenoiseUNet(nn.Module):
    """Residual U-Net: ``(N, 1, Z, Y, X)`` normalised image → same shape, ``x + f(x)``."""

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        self.down = nn.ModuleList()
        c = 1
        for co in ch:
            self.down.append(_Block(c, co))
            c = co
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for co in reversed(ch[:-1]):
            self.up.append(nn.Conv3d(c, co, 1))
            self.dec.append(_Block(2 * co, co))
            c = co
        self.head = nn.Conv3d(c, 1, 1)
        nn.init.zeros_(self.head.weight)  # starts as the identity map
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp = x
        x = x.contiguous(memory_format=_CL)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = F.avg_pool3d(x, 2)
        for up, dec in zip(self.up, self.dec, strict=True):
            x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
            x = _keep_channels_last(up(x))
            x = dec(torch.cat([x, skips.pop()], dim=1))
        return inp + self.head(x).contiguous()


def build_denoiser(config: DenoiserConfig, device: str | torch.device = "cpu",
                   seed: int | None = None) -> DenoiseUNet:
    """A :class:`DenoiseUNet` on ``device`` (weights drawn with ``seed`` when given)."""
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = DenoiseUNet(config)
    else:
        net = DenoiseUNet(config)
    return net.to(device=device, memory_format=_CL)


# ============================================================================== kernels
def gaussian_smooth(x: torch.Tensor, sigma_vox: tuple[float, float, float]) -> torch.Tensor:
    """Separable Gaussian of ``(N, 1, Z, Y, X)`` with zero padding; σ per axis (z, y, x) in
    voxels; kernel truncated at 3σ."""
    out = x
    for axis, s in enumerate(sigma_vox):
        if s <= 0:
            continue
        r = max(1, math.ceil(3.0 * s))
        t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-0.5 * (t / s) ** 2)
        k = k / k.sum()
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = 2 * r + 1
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = r
        pad[2 * (2 - axis) + 1] = r
        out = F.conv3d(F.pad(out, pad), k.reshape(shape))
    return out


def preserve_counts(x: torch.Tensor, y: torch.Tensor, sigma_vox: tuple[float, float, float],
                    eps_rel: float = 1e-3) -> torch.Tensor:
    """Count-preserving output layer (see the module notes).

    Parameters
    ----------
    x, y : (N, 1, Z, Y, X) tensors
        Network input and raw output (same units, x ≥ 0).
    sigma_vox : (σz, σy, σx)
        Gaussian σ [voxels] of the local count preservation.
    eps_rel : float
        ε = eps_rel × the mean of x per sample (keeps the ratio finite where both vanish).

    Returns
    -------
    (N, 1, Z, Y, X) tensor
        Non-negative, with the sum of each sample equal to that of ``x``.
    """
    y = torch.clamp(y, min=0.0)
    eps = eps_rel * x.mean(dim=(1, 2, 3, 4), keepdim=True) + 1e-12
    gx = gaussian_smooth(x, sigma_vox)
    gy = gaussian_smooth(y, sigma_vox)
    y = y * (gx + eps) / (gy + eps)
    tx = x.sum(dim=(1, 2, 3, 4), keepdim=True)
    ty = y.sum(dim=(1, 2, 3, 4), keepdim=True)
    return y * (tx / torch.clamp(ty, min=1e-30))


def image_scale(x: torch.Tensor) -> torch.Tensor:
    """Per-sample normalisation scale of ``(N, 1, Z, Y, X)``: mean of the voxels above 10 % of
    the 99.9th percentile (1.0 for an empty sample). Shape (N, 1, 1, 1, 1)."""
    n = x.shape[0]
    flat = x.reshape(n, -1)
    q = torch.quantile(flat.float(), 0.999, dim=1, keepdim=True).to(x.dtype)
    mask = flat > 0.1 * q
    s = (flat * mask).sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp(min=1)
    s = torch.where(s > 0, s, torch.ones_like(s))
    return s.reshape(n, 1, 1, 1, 1)


def denoise_tensor(net: DenoiseUNet, x: torch.Tensor, spacing_zyx_mm: tuple[float, float, float],
                   scale: torch.Tensor | None = None, sigma_mm: float | None = None
                   ) -> torch.Tensor:
    """Normalise, run the network, preserve counts, restore the scale.

    ``x`` is ``(N, 1, Z, Y, X)`` (non-negative; any unit). It is zero-padded to multiples of
    the network's divisor for the network and cropped back before the count-preserving layer,
    so the totals are those of ``x``. ``scale`` (N, 1, 1, 1, 1) overrides :func:`image_scale`
    (training crops use their whole image's scale); ``sigma_mm`` the count-preserving σ
    (default the configuration's inference σ). Gradients flow in training mode.
    """
    x = torch.clamp(x, min=0.0)
    s = image_scale(x) if scale is None else scale
    xn = x / s
    d = net.config.divisor
    shape = xn.shape[2:]
    pad = []
    for n in reversed(shape):
        pad += [0, (-n) % d]
    y = net(F.pad(xn, pad) if any(pad) else xn)
    y = y[:, :, :shape[0], :shape[1], :shape[2]]
    sig_mm = net.config.preserve_sigma_mm if sigma_mm is None else float(sigma_mm)
    sig = tuple(sig_mm / sp for sp in spacing_zyx_mm)
    return preserve_counts(xn, y, sig) * s
