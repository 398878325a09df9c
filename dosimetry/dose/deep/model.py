"""The deep dose network: a learned voxel-wise correction of the DVK dose towards Monte Carlo.

Model family
    Deep dose-voxel-kernel methods learn what a homogeneous kernel convolution misses in a
    heterogeneous patient (Lee et al. 2019, "Deep-dose", IEEE TMI 38:1,
    doi:10.1109/TMI.2019.2894209 — CNN from PET/CT to MC dose; Götz et al. 2020, Z Med Phys
    30:155, doi:10.1016/j.zemedi.2019.12.003 — CNN density-dependent kernels;
    DblurDoseNet, Li et al. 2022, Med Phys 49:1216, doi:10.1002/mp.15397). Here the network is
    given the density-corrected DVK dose (Dieudonné et al. 2013) and the densities and predicts
    the natural log of the factor that turns it into the MC dose:

        D_deep = D_DVK · exp(r),   r = f_θ(features)

    so an untrained network (r = 0, the last layer starts at zero) is exactly the DVK engine,
    the output is non-negative and linear in the TIA (the features are scale-free).

Features (all invariant to the TIA's scale), per voxel
    1. x = D_DVK / M₉(D_DVK) and 2. ln(x + 10⁻³)/7, with M₉ the maximum over the 9×9×9
       neighbourhood: the local shape of the dose (gradients, where the dose comes from);
    3. a = Ñ / M₉(Ñ) and 4. ln(a + 10⁻³)/7: the same for the TIA (local vs. neighbouring
       sources);
    5. ρ (g/cm³, clipped to 0–3) and 6. ln(max(ρ, 10⁻³))/3: lung, bone, air, interfaces;
    7. (voxel size − 4 mm)/1 mm: particle ranges in voxel units.

Network
    A fully convolutional residual 3-D CNN: a 3×3×3 stem, residual blocks of dilated 3×3×3
    convolutions (dilations 1, 2, 4, 2, 1) with GELU, and a 1×1×1 head. Receptive field ±11
    voxels (33–53 mm at 3–4.8 mm), which covers the electron ranges of Lu-177 and I-131 even
    in lung (CSDA range of 0.6 MeV electrons ≈ 2.2 mm in tissue, ≈ 9 mm at 0.26 g/cm³) and the
    photon dose build-up near interfaces. It runs on any grid size (tiled for large volumes).

Device-agnostic: every function takes tensors or a ``device``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["N_FEATURES", "DoseCorrectionNet", "features", "receptive_radius"]

N_FEATURES = 7
_EPS_LOG = 1e-3


def _local_max(x: torch.Tensor, k: int = 9) -> torch.Tensor:
    return F.max_pool3d(x, kernel_size=k, stride=1, padding=k // 2)


def features(dvk: torch.Tensor, tia: torch.Tensor, density: torch.Tensor,
             spacing_mm: float | torch.Tensor) -> torch.Tensor:
    """Network input (N, 7, Z, Y, X) from DVK dose, TIA and density, each (N, 1, Z, Y, X).

    ``spacing_mm`` is the (isotropic or mean) voxel size, a float or an (N,) tensor.
    """
    dvk = dvk.clamp_min(0)
    tia = tia.clamp_min(0)
    mx = _local_max(dvk)
    x = dvk / torch.where(mx > 0, mx, torch.ones_like(mx))
    ma = _local_max(tia)
    a = tia / torch.where(ma > 0, ma, torch.ones_like(ma))
    rho = density.clamp(0.0, 3.0)
    if not torch.is_tensor(spacing_mm):
        spacing_mm = torch.full((dvk.shape[0],), float(spacing_mm), device=dvk.device)
    sp = (spacing_mm.to(dvk.dtype) - 4.0).view(-1, 1, 1, 1, 1).expand_as(dvk)
    return torch.cat([
        x, torch.log(x + _EPS_LOG) / 7.0,
        a, torch.log(a + _EPS_LOG) / 7.0,
        rho, torch.log(rho.clamp_min(1e-3)) / 3.0,
        sp,
    ], dim=1)


class _Block(nn.Module):
    def __init__(self, width: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(width, width, 3, padding=dilation, dilation=dilation)
        self.mix = nn.Conv3d(width, width, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.mix(F.gelu(self.conv(F.gelu(h))))


class DoseCorrectionNet(nn.Module):
    """Predicts r = ln(D_MC / D_DVK) per voxel from :func:`features`.

    Parameters
    ----------
    width : int
        Channels of the hidden layers.
    dilations : sequence of int
        One residual block per entry.
    """

    def __init__(self, width: int = 24, dilations: Sequence[int] = (1, 2, 4, 2, 1)) -> None:
        super().__init__()
        self.width = int(width)
        self.dilations = tuple(int(d) for d in dilations)
        self.stem = nn.Conv3d(N_FEATURES, self.width, 3, padding=1)
        self.blocks = nn.ModuleList(_Block(self.width, d) for d in self.dilations)
        self.head = nn.Conv3d(self.width, 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        h = self.stem(feats)
        for b in self.blocks:
            h = b(h)
        # bounded: the correction stays within a factor e^±3 of DVK
        return 3.0 * torch.tanh(self.head(F.gelu(h)) / 3.0)

    def config(self) -> dict[str, object]:
        """Constructor arguments (saved with the weights)."""
        return {"width": self.width, "dilations": list(self.dilations)}


def receptive_radius(dilations: Sequence[int]) -> int:
    """Voxels of context on each side that the network's output depends on."""
    return 1 + int(sum(dilations))


def to_tensor(arr: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """(Z, Y, X) array → (1, 1, Z, Y, X) float32 tensor on ``device``."""
    return torch.as_tensor(np.ascontiguousarray(arr, dtype=np.float32),
                           device=device)[None, None]
