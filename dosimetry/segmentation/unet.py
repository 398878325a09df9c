"""A small 3D U-Net (torch) for the built-in organ (CT) and lesion (SPECT) models.

Architecture (Ronneberger et al. 2015, doi:10.1007/978-3-319-24574-4_28; 3D form Çiçek et al.
2016, doi:10.1007/978-3-319-46723-8_49): ``len(channels)`` resolution levels, each two 3×3×3
convolutions with batch normalisation and leaky ReLU; 2×2×2 max pooling down, 2×2×2 transposed
convolutions up, skip connections by concatenation, a 1×1×1 convolution to the class logits.
Input sizes must be multiples of ``2 ** (len(channels) - 1)`` (see :func:`pad_to_multiple`).

Batch normalisation rather than instance/group normalisation: inference runs on the whole
volume while training sees patches, and the running statistics of batch norm do not depend on
the extent of the input the way per-image statistics do.

CPU speed: tensors are kept in ``channels_last_3d`` memory format. oneDNN's 3D convolution
backward pass is ~10× faster in that format, but only when the incoming gradient is in it too,
and autograd hands some gradients over in the default format; :func:`_keep_channels_last`
converts them on the way back. The forward result does not depend on the memory format.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_CL = torch.channels_last_3d


@dataclass(frozen=True)
class UNetConfig:
    """Shape of a :class:`UNet3D`: input channels, classes and channels per level."""

    in_channels: int = 2
    n_classes: int = 10
    channels: tuple[int, ...] = (8, 16, 32, 64)

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if self.in_channels < 1 or self.n_classes < 2 or len(self.channels) < 2 \
                or min(self.channels) < 1:
            raise ValueError(f"invalid U-Net configuration {self}")

    @property
    def divisor(self) -> int:
        """Input sizes must be multiples of this."""
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        """From :meth:`to_dict`'s form."""
        return cls(int(d["in_channels"]), int(d["n_classes"]), tuple(d["channels"]))


def _keep_channels_last(t: torch.Tensor) -> torch.Tensor:
    """Identity; when ``t`` takes part in a backward pass its gradient is made channels-last."""
    if t.requires_grad:
        t.register_hook(lambda g: g.contiguous(memory_format=_CL))
    return t


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(c_in, c_out, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm3d(c_out)
        self.conv2 = nn.Conv3d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm3d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.norm1(_keep_channels_last(self.conv1(x))), 0.01)
        return F.leaky_relu(self.norm2(_keep_channels_last(self.conv2(x))), 0.01)


class UNet3D(nn.Module):
    """3D U-Net returning class logits of shape (N, n_classes, Z, Y, X) for (N, C, Z, Y, X)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        self.down = nn.ModuleList()
        c = config.in_channels
        for co in ch:
            self.down.append(_Block(c, co))
            c = co
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for co in reversed(ch[:-1]):
            self.up.append(nn.ConvTranspose3d(c, co, 2, stride=2))
            self.dec.append(_Block(2 * co, co))
            c = co
        self.head = nn.Conv3d(c, config.n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=_CL)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = F.max_pool3d(x, 2)
        for up, dec in zip(self.up, self.dec, strict=True):
            x = _keep_channels_last(up(x))
            x = dec(torch.cat([x, skips.pop()], dim=1))
        return _keep_channels_last(self.head(x))


def build_unet(config: UNetConfig, device: str | torch.device = "cpu") -> UNet3D:
    """A :class:`UNet3D` in channels-last format on ``device``."""
    return UNet3D(config).to(device=device, memory_format=_CL)


def pad_to_multiple(shape: tuple[int, ...], divisor: int) -> tuple[tuple[int, int], ...]:
    """Padding (before, after) per axis that makes every size a multiple of ``divisor``."""
    out = []
    for n in shape:
        extra = (-n) % divisor
        out.append((extra // 2, extra - extra // 2))
    return tuple(out)
