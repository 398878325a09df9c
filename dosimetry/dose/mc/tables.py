"""Interaction tables of the voxel Monte Carlo, built from materials and moved to a device.

Everything the transport kernels look up per particle and step is tabulated here once per
simulation, on uniform grids so that a lookup is one multiply, a floor and a gather:

photons (grid uniform in ln E, 1 keV … ``photon_max_mev``)
    photoelectric, Compton and Rayleigh attenuation per unit density, μ/ρ/10 (mm⁻¹ per g/cm³),
    per material, from :mod:`dosimetry.materials.photon` (xraylib); the Woodcock majorant
    max over materials of μ/ρ · ρ_max (mm⁻¹), ρ_max being the largest voxel density of the
    material in the grid. Values are interpolated linearly between nodes; since the majorant is
    ≥ every material's μ at each node it stays ≥ after interpolation.
Rayleigh angular sampling
    per material, the inverse of the cumulative ∫F²(x) d(x²) on a uniform grid of the cumulative
    fraction (see :func:`~dosimetry.materials.photon.rayleigh_form_factor_squared`).
electrons (grid uniform in ln T, 1 keV … ``electron_max_mev``)
    ln of the CSDA range (g/cm²) and the transport-MFP count K(T), and the inverse range
    ln T(ln R) with K(ln R) on a common uniform ln R grid, from
    :mod:`dosimetry.materials.electron`; stored as rows [fᵢ, fᵢ₊₁, gᵢ, gᵢ₊₁] so that one
    gather serves an interpolation of two quantities.
multiple scattering
    the inverse of the mean ⟨w⟩ = ⟨(1 − cos θ)/2⟩ of the Wentzel distribution
    p(w) = A(1+A)/(w+A)² in its screening parameter A, as ln A on a uniform grid of
    y = ln(⟨w⟩/(½ − ⟨w⟩)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dosimetry.materials.compositions import Material
from dosimetry.materials.electron import electron_tables
from dosimetry.materials.photon import (
    HC_KEV_ANGSTROM,
    photon_cross_sections,
    rayleigh_form_factor_squared,
)

__all__ = ["TransportTables", "UniformGrid", "build_tables", "wentzel_mean_w"]

#: Lowest energy transported (MeV); below it particles deposit locally.
MIN_ENERGY_MEV = 1e-3


@dataclass(frozen=True)
class UniformGrid:
    """A grid uniform in some variable u: nodes u₀ + i·du, i = 0 … n−1."""

    u0: float
    du: float
    n: int

    def locate(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower node index (int64) and fraction in [0, 1] of ``u`` (clamped to the grid)."""
        f = ((u - self.u0) / self.du).clamp_(0.0, self.n - 1.000001)
        i = f.floor()
        return i.long(), f - i


@dataclass(frozen=True, eq=False)
class TransportTables:
    """Device tables of one simulation (see the module docstring). Shapes: M materials."""

    n_materials: int
    photon_grid: UniformGrid  # in ln E
    photon_mu: torch.Tensor  # (M·N, 6) μ/ρ/10 photo, Compton, Rayleigh at Eᵢ then Eᵢ₊₁
    photon_majorant: torch.Tensor  # (N, 2) mm⁻¹ at Eᵢ, Eᵢ₊₁
    rayleigh_x2_grid: UniformGrid  # in ln x² (x in Å⁻¹), node 0 replaced by x² = 0
    rayleigh_cum: torch.Tensor  # (M·L,) cumulative ∫F² dx², normalised to 1 at the end
    rayleigh_inv_grid: UniformGrid  # in cumulative fraction c ∈ [0, 1]
    rayleigh_inv: torch.Tensor  # (M·C,) x² at c
    electron_grid: UniformGrid  # in ln T
    electron_by_t: torch.Tensor  # (M·N, 4) ln R(Tᵢ), ln R(Tᵢ₊₁), K(Tᵢ), K(Tᵢ₊₁) (R in g/cm²)
    range_grid: UniformGrid  # in ln R
    electron_by_r: torch.Tensor  # (M·NR, 4) ln T(Rⱼ), ln T(Rⱼ₊₁), K(Rⱼ), K(Rⱼ₊₁)
    wentzel_grid: UniformGrid  # in y
    wentzel_log_a: torch.Tensor  # (NW,)
    photon_max_mev: float
    electron_max_mev: float


def wentzel_mean_w(a: np.ndarray) -> np.ndarray:
    """Mean of w = (1 − cos θ)/2 under p(w) = A(1+A)/(w+A)², w ∈ [0, 1].

    ⟨w⟩ = A(1+A)[ln(1 + 1/A) − 1/(1+A)]; → 0 as A → 0 (no deflection), → ½ as A → ∞
    (isotropic).
    """
    a = np.asarray(a, dtype=np.float64)
    small = a < 1e3
    out = np.empty_like(a)
    aa = a[small]
    out[small] = aa * (1.0 + aa) * (np.log1p(1.0 / aa) - 1.0 / (1.0 + aa))
    # large A: series 1/2 − 1/(6A) + 1/(12A²) … avoids cancellation
    ab = a[~small]
    out[~small] = 0.5 - 1.0 / (6.0 * ab) + 1.0 / (12.0 * ab * ab)
    return out


def _wentzel_inverse(n: int = 4001) -> tuple[UniformGrid, np.ndarray]:
    log_a = np.linspace(math.log(1e-12), math.log(1e10), 20001)
    w = wentzel_mean_w(np.exp(log_a))
    y = np.log(w / (0.5 - w))
    ok = np.isfinite(y)
    y, log_a = y[ok], log_a[ok]
    grid = UniformGrid(float(y[0]), float((y[-1] - y[0]) / (n - 1)), n)
    y_nodes = grid.u0 + grid.du * np.arange(n)
    return grid, np.interp(y_nodes, y, log_a)


def _pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(M, N) tables a, b → (M·N, 4) rows [aᵢ, aᵢ₊₁, bᵢ, bᵢ₊₁] (last node repeated)."""
    a1 = np.concatenate((a[:, 1:], a[:, -1:]), axis=1)
    b1 = np.concatenate((b[:, 1:], b[:, -1:]), axis=1)
    return np.stack((a, a1, b, b1), axis=2).reshape(-1, 4)


def build_tables(
    materials: Sequence[Material],
    max_density_gcm3: Sequence[float],
    device: torch.device | str = "cpu",
    photon_max_mev: float = 3.0,
    electron_max_mev: float = 3.0,
    n_photon: int = 1500,
    n_electron: int = 1000,
) -> TransportTables:
    """Build the transport tables for ``materials`` on ``device`` (float32).

    Parameters
    ----------
    materials : sequence of Material
        Material ``m`` of the voxel grid is ``materials[m]``.
    max_density_gcm3 : sequence of float
        Largest voxel density of each material in the grid (g/cm³), for the majorant; 0 for a
        material absent from the grid.
    device : torch.device or str
    photon_max_mev, electron_max_mev : float
        Upper ends of the grids (MeV); must cover the source and secondary energies.
    n_photon, n_electron : int
        Grid sizes.
    """
    dev = torch.device(device)
    m_count = len(materials)
    f32 = torch.float32

    # photons
    pg = UniformGrid(math.log(MIN_ENERGY_MEV),
                     (math.log(photon_max_mev) - math.log(MIN_ENERGY_MEV)) / (n_photon - 1),
                     n_photon)
    e_ph = np.exp(pg.u0 + pg.du * np.arange(n_photon))
    e_ph[-1] = photon_max_mev
    mu = np.zeros((m_count, n_photon, 3))
    for k, mat in enumerate(materials):
        xs = photon_cross_sections(mat, e_ph)
        mu[k, :, 0] = xs.photo_cm2_g / 10.0
        mu[k, :, 1] = xs.compton_cm2_g / 10.0
        mu[k, :, 2] = xs.rayleigh_cm2_g / 10.0
    rho_max = np.asarray(max_density_gcm3, dtype=np.float64).reshape(m_count, 1)
    majorant = (mu.sum(axis=2) * rho_max).max(axis=0) * (1.0 + 1e-5)

    # Rayleigh: cumulative of F² in x² on a log grid (node 0 → x² = 0)
    n_l = 600
    x2_max = (photon_max_mev * 1e3 / HC_KEV_ANGSTROM) ** 2 * 1.0001
    rg = UniformGrid(math.log(1e-6), (math.log(x2_max) - math.log(1e-6)) / (n_l - 1), n_l)
    x2 = np.exp(rg.u0 + rg.du * np.arange(n_l))
    x2[0] = 0.0
    n_c = 2048
    cg = UniformGrid(0.0, 1.0 / (n_c - 1), n_c)
    cum = np.zeros((m_count, n_l))
    inv = np.zeros((m_count, n_c))
    for k, mat in enumerate(materials):
        f2 = rayleigh_form_factor_squared(mat, np.sqrt(x2))
        c = np.concatenate(([0.0], np.cumsum(0.5 * np.diff(x2) * (f2[1:] + f2[:-1]))))
        c /= c[-1]
        cum[k] = c
        # strictly increasing for the inversion (F² > 0 everywhere, but guard rounding)
        c_inc = np.maximum.accumulate(c + np.arange(n_l) * 1e-15)
        inv[k] = np.interp(np.linspace(0.0, c_inc[-1], n_c), c_inc, x2)

    # electrons
    eg = UniformGrid(math.log(MIN_ENERGY_MEV),
                     (math.log(electron_max_mev) - math.log(MIN_ENERGY_MEV)) / (n_electron - 1),
                     n_electron)
    t_el = np.exp(eg.u0 + eg.du * np.arange(n_electron))
    log_r = np.zeros((m_count, n_electron))
    kk = np.zeros((m_count, n_electron))
    for k, mat in enumerate(materials):
        tab = electron_tables(mat, t_el)
        log_r[k] = np.log(tab.range_gcm2)
        kk[k] = tab.transport_mfp_count
    n_r = 2000
    lr_lo, lr_hi = float(log_r[:, 0].min()), float(log_r[:, -1].max())
    rgrid = UniformGrid(lr_lo, (lr_hi - lr_lo) / (n_r - 1), n_r)
    lr_nodes = rgrid.u0 + rgrid.du * np.arange(n_r)
    log_t = np.stack([np.interp(lr_nodes, log_r[k], np.log(t_el)) for k in range(m_count)])
    k_of_r = np.stack([np.interp(lr_nodes, log_r[k], kk[k]) for k in range(m_count)])

    wg, wla = _wentzel_inverse()

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), dtype=f32, device=dev)

    return TransportTables(
        n_materials=m_count,
        photon_grid=pg,
        photon_mu=t(np.concatenate((mu, np.concatenate((mu[:, 1:], mu[:, -1:]), axis=1)),
                                   axis=2).reshape(m_count * n_photon, 6)),
        photon_majorant=t(np.stack((majorant, np.append(majorant[1:], majorant[-1])), axis=1)),
        rayleigh_x2_grid=rg,
        rayleigh_cum=t(cum.reshape(-1)),
        rayleigh_inv_grid=cg,
        rayleigh_inv=t(inv.reshape(-1)),
        electron_grid=eg,
        electron_by_t=t(_pairs(log_r, kk)),
        range_grid=rgrid,
        electron_by_r=t(_pairs(log_t, k_of_r)),
        wentzel_grid=wg,
        wentzel_log_a=t(wla),
        photon_max_mev=float(photon_max_mev),
        electron_max_mev=float(electron_max_mev),
    )
