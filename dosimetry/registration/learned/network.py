"""The learned registration network: a small VoxelMorph-style 3D U-Net (torch).

Balakrishnan et al., "VoxelMorph: a learning framework for deformable medical image
registration", IEEE TMI 38 (2019) 1788, doi:10.1109/TMI.2019.2897538: a U-Net takes the fixed
and the moving image as two channels and outputs a dense displacement field; a spatial
transformer warps the moving image with it. Ours is smaller and predicts the field at half the
input resolution, upsampled trilinearly: inter-session deformations vary over ~10 cm, far
coarser than the 8 mm input voxels. The first convolution has stride 2, so every feature map
is at 16 mm or coarser: 3D convolutions (and above all their backward pass) are slow on a CPU,
and this keeps training to minutes on 2 cores.

Tensors are (batch, channel, z, y, x); displacement channels are the physical x, y, z
components in mm (identity direction cosines of the working grid are handled by the caller).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1),
                         nn.LeakyReLU(0.2, inplace=True))


class RegUNet(nn.Module):
    """Fixed + moving (2 channels) → displacement [mm] (3 channels, same spatial size).

    Parameters
    ----------
    channels : tuple of int
        Feature channels at full, 1/2, 1/4 and 1/8 resolution.
    displacement_scale_mm : float
        The head's output is multiplied by this (keeps the raw outputs of order 1).

    Notes
    -----
    Input sizes must be multiples of 8 (three stride-2 levels); :func:`pad_to_multiple` pads.
    The head is initialised to zero, so an untrained network returns the identity.
    """

    def __init__(self, channels: tuple[int, int, int, int] = (8, 16, 32, 32),
                 displacement_scale_mm: float = 10.0) -> None:
        super().__init__()
        c0, c1, c2, c3 = channels
        self.channels = tuple(channels)
        self.displacement_scale_mm = float(displacement_scale_mm)
        self.enc0 = _block(2, c0, stride=2)  # 1/2
        self.enc1 = _block(c0, c1)  # 1/2
        self.enc2 = _block(c1, c2, stride=2)  # 1/4
        self.enc3 = _block(c2, c3, stride=2)  # 1/8
        self.bottom = _block(c3, c3)
        self.dec2 = _block(c3 + c2, c2)  # 1/4
        self.dec1 = _block(c2 + c1, c1)  # 1/2
        self.head = nn.Conv3d(c1, 3, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        x1 = self.enc1(self.enc0(torch.cat([fixed, moving], dim=1)))
        x2 = self.enc2(x1)
        x3 = self.bottom(self.enc3(x2))
        y2 = self.dec2(torch.cat([F.interpolate(x3, size=x2.shape[2:], mode="trilinear",
                                                align_corners=False), x2], dim=1))
        y1 = self.dec1(torch.cat([F.interpolate(y2, size=x1.shape[2:], mode="trilinear",
                                                align_corners=False), x1], dim=1))
        coarse = self.head(y1) * self.displacement_scale_mm
        return F.interpolate(coarse, size=fixed.shape[2:], mode="trilinear", align_corners=False)


def pad_to_multiple(x: torch.Tensor, multiple: int = 8, value: float = -1.0
                    ) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Pad (at the high end of z, y, x) to multiples of ``multiple``; returns the original
    spatial size for :func:`crop`."""
    size = tuple(int(s) for s in x.shape[2:])
    pad = []
    for s in reversed(size):
        pad += [0, (-s) % multiple]
    return F.pad(x, pad, value=value), size  # type: ignore[return-value]


def crop(x: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`."""
    return x[:, :, : size[0], : size[1], : size[2]]


def warp(moving: torch.Tensor, disp_mm: torch.Tensor, spacing_mm: tuple[float, float, float],
         padding_value: float = -1.0) -> torch.Tensor:
    """Moving image sampled at ``x + u(x)`` (spatial transformer, trilinear).

    Parameters
    ----------
    moving : (B, C, Z, Y, X) tensor
    disp_mm : (B, 3, Z, Y, X) tensor
        Displacement [mm], channels x, y, z.
    spacing_mm : (sx, sy, sz)
        Voxel spacing of the grid (identity direction) [mm].
    """
    _, _, nz, ny, nx = moving.shape
    dev, dt = moving.device, moving.dtype
    zz, yy, xx = torch.meshgrid(torch.arange(nz, device=dev, dtype=dt),
                                torch.arange(ny, device=dev, dtype=dt),
                                torch.arange(nx, device=dev, dtype=dt), indexing="ij")
    sx, sy, sz = spacing_mm
    px = xx + disp_mm[:, 0] / sx
    py = yy + disp_mm[:, 1] / sy
    pz = zz + disp_mm[:, 2] / sz
    # normalise to [-1, 1] with align_corners=True (voxel centres at the ends)
    gx = 2 * px / max(nx - 1, 1) - 1
    gy = 2 * py / max(ny - 1, 1) - 1
    gz = 2 * pz / max(nz - 1, 1) - 1
    grid = torch.stack([gx, gy, gz], dim=-1)
    shifted = moving - padding_value
    out = F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=True)
    return out + padding_value


def smoothness(disp: torch.Tensor) -> torch.Tensor:
    """Mean squared forward difference of the displacement (per voxel², any units)."""
    dz = disp[:, :, 1:] - disp[:, :, :-1]
    dy = disp[:, :, :, 1:] - disp[:, :, :, :-1]
    dx = disp[:, :, :, :, 1:] - disp[:, :, :, :, :-1]
    return (dz.pow(2).mean() + dy.pow(2).mean() + dx.pow(2).mean()) / 3.0


def n_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
