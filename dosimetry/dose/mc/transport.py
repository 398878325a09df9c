"""Vectorised photon and electron transport through a voxel grid (torch; any device).

Pure numeric kernels: tensors in, energy scored into a flat tally tensor. Particles are processed
as batches of tensors; every loop iteration advances *all* live particles by one interaction
(photons) or one condensed-history step (electrons) and then drops the ones that are absorbed
or have left the grid. Positions are in mm in the grid's own frame (x, y, z from the corner of
voxel (0, 0, 0)); the tally is indexed like a C-ordered (z, y, x) array.

Photons — Woodcock (delta) tracking
    Free paths are sampled with the majorant attenuation coefficient μ_max(E); at each
    tentative site the interaction is real with probability μ(E, voxel)/μ_max(E) (Woodcock et
    al. 1965, ANL-7050; Coleman 1968, Nucl Sci Eng 32:76). Real
    interactions:

    * photoelectric absorption: the photon's whole energy goes to a photoelectron emitted along
      the photon's direction (the forward limit of Sauter's distribution); binding energy and
      fluorescence are not followed — the electron carries the full energy and is transported
      like any electron (below the electron cut it is deposited on the spot);
    * Compton scattering on free electrons at rest, Klein–Nishina cross section sampled exactly
      by Kahn's rejection method (Kahn 1956, Applications of Monte Carlo, AECU-3259; as given
      in Lux & Koblinger 1991, Monte Carlo Particle Transport Methods, CRC); the recoil
      electron gets E − E′ along the momentum transfer and is transported; binding effects
      (incoherent scattering function, Doppler broadening) are neglected;
    * Rayleigh scattering: energy unchanged, angle from the Thomson factor (1 + cos²θ)/2 times
      the squared atomic form factor F²(x) of the material (independent-atom approximation,
      form factors from xraylib), sampled by inverting ∫F² dx² and rejecting on (1+cos²θ)/2.

Electrons — class I condensed history in the continuous-slowing-down approximation
    Each step spends a fixed fraction of the residual CSDA range (``step_fraction``; steps
    also limited to ``max_step_mm``); the energy after the step follows exactly from the range
    table of the material (energy-loss straggling and δ-ray/bremsstrahlung production are not
    simulated). Angular deflection uses the random-hinge method (Fernández-Varea et al. 1993,
    NIM B 73:447, doi:10.1016/0168-583X(93)95827-R): the electron flies a uniform random
    fraction τ of the step, is deflected once, and flies the rest. The deflection angle
    follows a Wentzel (screened-Rutherford-shaped) distribution whose mean ⟨1 − cos θ⟩ equals
    Lewis' exact value 1 − exp(−ΔK), ΔK the number of transport mean free paths spent in the
    step (see :mod:`dosimetry.materials.electron`). The energy lost in a step is deposited at
    the hinge. When the residual range is below ``cut_mm`` the electron makes one last straight
    step of its whole residual range and deposits all its energy at a uniform random point of
    it; so does an electron that reaches the 1 keV bottom of the tables (possible in air, where
1 keV electrons still travel ~0.05 mm). The material and density of a step are those of the
voxel where it starts.

Limits of the electron model: the Wentzel shape matches only the first angular moment, so
single large-angle deflections and the lateral spread within one step are approximate (the
random hinge keeps the mean lateral displacement right for small steps; results change by
< 0.5 % at the first kernel neighbour when the step fraction is halved); no energy-loss
straggling, so track ends are sharper than in reality; screened-Rutherford transport cross
sections lose accuracy below ~10 keV (where ranges are < 3 µm) and for backscatter from high-Z
media; a step near an interface is taken entirely in the starting voxel's material.

Bookkeeping: every MeV handed to these functions ends up either in ``tally`` (deposited in a
voxel) or in ``escaped`` (left the grid), so deposited + escaped = emitted to float rounding.
As a safety net, particles still in flight after :data:`MAX_STEPS` loop iterations (which a
correct simulation never reaches) are deposited on the spot with a ``RuntimeWarning``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from dosimetry.dose.mc.tables import MIN_ENERGY_MEV, TransportTables
from dosimetry.materials.electron import ELECTRON_MASS_MEV
from dosimetry.materials.photon import HC_KEV_ANGSTROM

__all__ = [
    "Geometry",
    "Scorer",
    "isotropic_directions",
    "rotate",
    "sample_compton",
    "sample_rayleigh_cos",
    "sample_wentzel_cos",
    "transport_electrons",
    "transport_photons",
]

_TWO_PI = 2.0 * math.pi
_E_FLOOR = MIN_ENERGY_MEV * (1.0 + 1e-5)


@dataclass(frozen=True, eq=False)
class Geometry:
    """Voxel grid of a simulation.

    Attributes
    ----------
    shape_zyx : tuple of int
        (nz, ny, nx).
    spacing_xyz : tuple of float
        Voxel size (mm) along x, y, z.
    material : torch.Tensor
        (nz·ny·nx,) int64 material index per voxel, C order of the (z, y, x) array.
    density : torch.Tensor
        (nz·ny·nx,) float32 mass density (g/cm³) per voxel.
    """

    shape_zyx: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    material: torch.Tensor
    density: torch.Tensor

    @property
    def n_voxels(self) -> int:
        nz, ny, nx = self.shape_zyx
        return nz * ny * nx

    def voxel_index(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat voxel index (int64; 0 outside) and inside mask of positions (n, 3) in mm."""
        q = torch.floor(pos * self._inv_spacing).long()
        inside = ((q >= 0) & (q < self._upper)).all(dim=1)
        flat = (q * self._strides).sum(dim=1)
        flat = torch.where(inside, flat, torch.zeros_like(flat))
        return flat, inside

    def __post_init__(self) -> None:
        dev = self.material.device
        nz, ny, nx = self.shape_zyx
        sx, sy, sz = self.spacing_xyz
        object.__setattr__(self, "_inv_spacing", torch.tensor(
            [1.0 / sx, 1.0 / sy, 1.0 / sz], dtype=torch.float32, device=dev))
        object.__setattr__(self, "_upper", torch.tensor([nx, ny, nz], device=dev))
        object.__setattr__(self, "_strides", torch.tensor([1, nx, nx * ny], device=dev))


class Scorer:
    """Energy tally of one statistical batch: deposits per voxel (float64) and escaped energy.

    ``energy`` is a flat float64 tensor of the grid's size (MeV); ``escaped`` a float64 scalar
    tensor (MeV).
    """

    def __init__(self, n_voxels: int, device: torch.device) -> None:
        self.energy = torch.zeros(n_voxels, dtype=torch.float64, device=device)
        self.escaped = torch.zeros((), dtype=torch.float64, device=device)

    def deposit(self, flat: torch.Tensor, energy: torch.Tensor) -> None:
        """Add ``energy`` (n,) MeV to voxels ``flat`` (n,)."""
        if flat.numel():
            self.energy.index_add_(0, flat, energy.to(torch.float64))

    def escape(self, energy: torch.Tensor) -> None:
        """Count ``energy`` (n,) MeV as having left the grid."""
        if energy.numel():
            self.escaped += energy.to(torch.float64).sum()

    def score(self, geom: Geometry, pos: torch.Tensor, energy: torch.Tensor) -> None:
        """Deposit ``energy`` at positions ``pos`` (n, 3): in the grid, or as escaped."""
        flat, inside = geom.voxel_index(pos)
        self.split(flat, inside, energy)

    def split(self, flat: torch.Tensor, inside: torch.Tensor, energy: torch.Tensor) -> None:
        """Deposit ``energy`` where ``inside`` (at ``flat``), count the rest as escaped.

        Avoids boolean-mask gathers: outside entries add 0 to voxel 0 (``flat`` is 0 there).
        """
        if energy.numel():
            e = energy.to(torch.float64)
            zero = torch.zeros_like(e)
            self.energy.index_add_(0, flat, torch.where(inside, e, zero))
            self.escaped += torch.where(inside, zero, e).sum()


def _rand(n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device, dtype=torch.float32)


def isotropic_directions(n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """(n, 3) unit vectors uniformly distributed on the sphere."""
    cos_t = 2.0 * _rand(n, gen, device) - 1.0
    phi = _TWO_PI * _rand(n, gen, device)
    sin_t = torch.sqrt(torch.clamp(1.0 - cos_t * cos_t, min=0.0))
    return torch.stack((sin_t * torch.cos(phi), sin_t * torch.sin(phi), cos_t), dim=1)


def rotate(direction: torch.Tensor, cos_t: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Deflect unit vectors (n, 3) by polar angles θ (given cos θ) and azimuths φ (n,).

    Standard rotation formula (e.g. PENELOPE manual, Salvat 2015, eq. 1.131); directions
    within 1e-5 of ±z use the limiting form. The result is renormalised.
    """
    u, v, w = direction[:, 0], direction[:, 1], direction[:, 2]
    sin_t = torch.sqrt(torch.clamp(1.0 - cos_t * cos_t, min=0.0))
    cphi, sphi = torch.cos(phi), torch.sin(phi)
    rho2 = u * u + v * v
    near_pole = rho2 < 1e-10
    rho = torch.sqrt(torch.where(near_pole, torch.ones_like(rho2), rho2))
    nu = sin_t * (u * w * cphi - v * sphi) / rho + u * cos_t
    nv = sin_t * (v * w * cphi + u * sphi) / rho + v * cos_t
    nw = -sin_t * cphi * rho + w * cos_t
    sign_w = torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w))
    nu = torch.where(near_pole, sin_t * cphi, nu)
    nv = torch.where(near_pole, sin_t * sphi, nv)
    nw = torch.where(near_pole, sign_w * cos_t, nw)
    out = torch.stack((nu, nv, nw), dim=1)
    return out / torch.linalg.vector_norm(out, dim=1, keepdim=True)


def sample_compton(
    energy: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scattered photon energy and cos θ by Kahn's exact Klein–Nishina rejection method.

    With k = E/mc² and η = E/E′ ∈ [1, 1+2k]: with probability (1+2k)/(9+2k) draw η = 1 + 2k r
    and accept with 4(1/η − 1/η²); otherwise draw η = (1+2k)/(1 + 2k r) and accept with
    (cos²θ + 1/η)/2, cos θ = 1 − (η−1)/k. Repeats for the rejected ones until all accept.

    Parameters
    ----------
    energy : torch.Tensor
        (n,) photon energies (MeV).
    gen : torch.Generator

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        Scattered energies E′ (MeV) and cos θ, both (n,).
    """
    dev = energy.device
    k = energy / ELECTRON_MASS_MEV
    eta = torch.ones_like(energy)
    todo = torch.arange(energy.numel(), device=dev)
    while todo.numel():
        kk = k[todo]
        n = kk.numel()
        r1, r2, r3 = _rand(n, gen, dev), _rand(n, gen, dev), _rand(n, gen, dev)
        branch1 = r1 * (9.0 + 2.0 * kk) <= 1.0 + 2.0 * kk
        eta1 = 1.0 + 2.0 * kk * r2
        eta2 = (1.0 + 2.0 * kk) / (1.0 + 2.0 * kk * r2)
        cos2 = 1.0 - (eta2 - 1.0) / kk
        acc = torch.where(
            branch1,
            r3 <= 4.0 * (1.0 / eta1 - 1.0 / (eta1 * eta1)),
            2.0 * r3 <= cos2 * cos2 + 1.0 / eta2,
        )
        eta[todo[acc]] = torch.where(branch1, eta1, eta2)[acc]
        todo = todo[~acc]
    cos_t = torch.clamp(1.0 - (eta - 1.0) / k, -1.0, 1.0)
    return energy / eta, cos_t


def sample_rayleigh_cos(
    energy: torch.Tensor, material: torch.Tensor, tab: TransportTables, gen: torch.Generator
) -> torch.Tensor:
    """cos θ of coherent scattering: F²(x) by table inversion, then (1+cos²θ)/2 rejection.

    Parameters
    ----------
    energy : torch.Tensor
        (n,) photon energies (MeV).
    material : torch.Tensor
        (n,) int64 material index.
    """
    dev = energy.device
    x2max = (energy * (1e3 / HC_KEV_ANGSTROM)) ** 2
    g = tab.rayleigh_x2_grid
    i, f = g.locate(torch.log(x2max))
    flat = material * g.n + i
    cmax = tab.rayleigh_cum[flat] * (1.0 - f) + tab.rayleigh_cum[flat + 1] * f
    cos_out = torch.empty_like(energy)
    todo = torch.arange(energy.numel(), device=dev)
    cg = tab.rayleigh_inv_grid
    while todo.numel():
        n = todo.numel()
        c = _rand(n, gen, dev) * cmax[todo]
        j, h = cg.locate(c)
        fl = material[todo] * cg.n + j
        x2 = tab.rayleigh_inv[fl] * (1.0 - h) + tab.rayleigh_inv[fl + 1] * h
        cos_t = torch.clamp(1.0 - 2.0 * x2 / x2max[todo], -1.0, 1.0)
        acc = 2.0 * _rand(n, gen, dev) <= 1.0 + cos_t * cos_t
        cos_out[todo[acc]] = cos_t[acc]
        todo = todo[~acc]
    return cos_out


def sample_wentzel_cos(
    delta_k: torch.Tensor, tab: TransportTables, gen: torch.Generator
) -> torch.Tensor:
    """cos θ after a path of ``delta_k`` transport mean free paths (n,).

    Wentzel distribution p(w) = A(1+A)/(w+A)², w = (1 − cos θ)/2, with A such that
    ⟨w⟩ = (1 − e^(−ΔK))/2 (Lewis' first moment); sampled by inversion w = Aξ/(1 + A − ξ).
    """
    mean_w = 0.5 * (-torch.expm1(-delta_k.clamp(min=0.0)))
    y = torch.log(mean_w / (0.5 - mean_w))
    i, f = tab.wentzel_grid.locate(y)
    log_a = tab.wentzel_log_a[i] * (1.0 - f) + tab.wentzel_log_a[i + 1] * f
    a = torch.exp(log_a)
    xi = _rand(delta_k.numel(), gen, delta_k.device)
    w = a * xi / (1.0 + a - xi)
    return torch.clamp(1.0 - 2.0 * w, -1.0, 1.0)


#: Safety net: most transport-loop iterations before the survivors are stopped (a correct
#: simulation needs a few hundred; reaching it means a bug, and it is announced).
MAX_STEPS = 10_000


def _give_up(kind: str, n: int, energy: torch.Tensor, weight: torch.Tensor,
             flat: torch.Tensor, scorer: Scorer) -> None:
    """Deposit the energy of particles still alive after :data:`MAX_STEPS`, with a warning."""
    e = energy * weight
    scorer.deposit(flat, e)
    warnings.warn(
        f"{n} {kind}(s) still in flight after {MAX_STEPS} transport steps were stopped and "
        f"their {float(e.sum()):.4g} MeV deposited on the spot; please report this",
        RuntimeWarning,
        stacklevel=3,
    )


@dataclass
class _Secondaries:
    pos: list[torch.Tensor]
    dir: list[torch.Tensor]
    energy: list[torch.Tensor]
    weight: list[torch.Tensor]

    def add(self, pos, direction, energy, weight) -> None:
        if energy.numel():
            self.pos.append(pos)
            self.dir.append(direction)
            self.energy.append(energy)
            self.weight.append(weight)

    def cat(self, device) -> tuple[torch.Tensor, ...]:
        if not self.energy:
            z3 = torch.zeros((0, 3), device=device)
            z = torch.zeros(0, device=device)
            return z3, z3.clone(), z, z.clone()
        return (torch.cat(self.pos), torch.cat(self.dir), torch.cat(self.energy),
                torch.cat(self.weight))


def transport_photons(
    pos: torch.Tensor,
    direction: torch.Tensor,
    energy: torch.Tensor,
    weight: torch.Tensor,
    geom: Geometry,
    tab: TransportTables,
    scorer: Scorer,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Track photons until absorbed or out of the grid; return the electrons they set moving.

    Parameters
    ----------
    pos, direction : torch.Tensor
        (n, 3) start positions (mm, inside the grid) and unit directions, float32.
    energy, weight : torch.Tensor
        (n,) energies (MeV, ≤ the photon table's top) and statistical weights, float32.
    geom, tab, scorer, gen
        Grid, tables, tally and random generator.

    Returns
    -------
    tuple of torch.Tensor
        Photo- and Compton electrons: positions (m, 3), directions (m, 3), energies (m,),
        weights (m,).
    """
    dev = pos.device
    sec = _Secondaries([], [], [], [])
    low = energy < MIN_ENERGY_MEV
    if bool(low.any()):
        scorer.score(geom, pos[low], energy[low] * weight[low])
        keep = ~low
        pos, direction, energy, weight = pos[keep], direction[keep], energy[keep], weight[keep]
    pg = tab.photon_grid
    steps = 0
    while energy.numel():
        n = energy.numel()
        steps += 1
        if steps > MAX_STEPS:
            flat, _ = geom.voxel_index(pos)
            _give_up("photon", n, energy, weight, flat, scorer)
            break
        i, f = pg.locate(torch.log(energy))
        maj = tab.photon_majorant[i]
        mu_max = torch.lerp(maj[:, 0], maj[:, 1], f)
        step = -torch.log1p(-_rand(n, gen, dev)) / mu_max
        pos = pos + step.unsqueeze(1) * direction
        flat, inside = geom.voxel_index(pos)
        mat = geom.material[flat]
        rho = geom.density[flat]
        g = tab.photon_mu[mat * pg.n + i]  # (n, 6)
        mu = torch.lerp(g[:, :3], g[:, 3:], f.unsqueeze(1)) * rho.unsqueeze(1)
        r = _rand(n, gen, dev) * mu_max
        c_photo = mu[:, 0]
        c_compt = c_photo + mu[:, 1]
        c_total = c_compt + mu[:, 2]
        photo = inside & (r < c_photo)
        compt = inside & (r >= c_photo) & (r < c_compt)
        rayl = inside & (r >= c_compt) & (r < c_total)
        zero = torch.zeros_like(energy)
        scorer.escape(torch.where(inside, zero, energy * weight))

        idx = torch.nonzero(photo).squeeze(1)
        if idx.numel():
            sec.add(pos.index_select(0, idx), direction.index_select(0, idx),
                    energy.index_select(0, idx), weight.index_select(0, idx))
        idx = torch.nonzero(compt).squeeze(1)
        if idx.numel():
            e0 = energy.index_select(0, idx)
            d0 = direction.index_select(0, idx)
            e1, cos_t = sample_compton(e0, gen)
            phi = _TWO_PI * _rand(e0.numel(), gen, dev)
            d1 = rotate(d0, cos_t, phi)
            p_e = e0.unsqueeze(1) * d0 - e1.unsqueeze(1) * d1
            p_e = p_e / torch.linalg.vector_norm(p_e, dim=1, keepdim=True).clamp(min=1e-12)
            sec.add(pos.index_select(0, idx), p_e, e0 - e1, weight.index_select(0, idx))
            energy = energy.index_copy(0, idx, e1)
            direction = direction.index_copy(0, idx, d1)
        idx = torch.nonzero(rayl).squeeze(1)
        if idx.numel():
            cos_t = sample_rayleigh_cos(energy.index_select(0, idx), mat.index_select(0, idx),
                                        tab, gen)
            phi = _TWO_PI * _rand(idx.numel(), gen, dev)
            direction = direction.index_copy(
                0, idx, rotate(direction.index_select(0, idx), cos_t, phi))
        survivors = inside & ~photo
        low = survivors & (energy < MIN_ENERGY_MEV)
        if bool(low.any()):
            scorer.deposit(flat, torch.where(low, energy * weight, zero))
            survivors = survivors & ~low
        keep = torch.nonzero(survivors).squeeze(1)
        if keep.numel() == n:
            continue
        pos, direction = pos.index_select(0, keep), direction.index_select(0, keep)
        energy, weight = energy.index_select(0, keep), weight.index_select(0, keep)
    return sec.cat(dev)


def transport_electrons(
    pos: torch.Tensor,
    direction: torch.Tensor,
    energy: torch.Tensor,
    weight: torch.Tensor,
    geom: Geometry,
    tab: TransportTables,
    scorer: Scorer,
    gen: torch.Generator,
    step_fraction: float,
    cut_mm: float,
    max_step_mm: float,
) -> None:
    """Transport electrons in the CSDA with random-hinge multiple scattering until absorbed.

    Parameters
    ----------
    pos, direction : torch.Tensor
        (n, 3) start positions (mm, inside the grid) and unit directions, float32.
    energy, weight : torch.Tensor
        (n,) kinetic energies (MeV, ≤ the electron table's top) and weights, float32.
    geom, tab, scorer, gen
        Grid, tables, tally and random generator.
    step_fraction : float
        Fraction of the residual CSDA range spent per step (0 < f < 1).
    cut_mm : float
        Residual range (mm) below which the electron ends in one straight final step.
    max_step_mm : float
        Longest step (mm).
    """
    dev = pos.device
    eg, rg = tab.electron_grid, tab.range_grid
    flat, _ = geom.voxel_index(pos)
    steps = 0
    while energy.numel():
        n = energy.numel()
        steps += 1
        if steps > MAX_STEPS:
            _give_up("electron", n, energy, weight, flat, scorer)
            return
        mat = geom.material[flat]
        rho = geom.density[flat]
        i, f = eg.locate(torch.log(energy))
        g = tab.electron_by_t[mat * eg.n + i]  # (n, 4)
        log_r = torch.lerp(g[:, 0], g[:, 1], f)
        k0 = torch.lerp(g[:, 2], g[:, 3], f)
        r_gcm2 = torch.exp(log_r)
        r_mm = r_gcm2 * 10.0 / rho
        # end of track: residual range below the cut, or at the bottom of the tables (in
        # low-density voxels a 1 keV electron can still have a range above the cut)
        terminal = (r_mm <= cut_mm) | (energy <= _E_FLOOR)
        step = torch.where(terminal, r_mm, torch.clamp(step_fraction * r_mm, max=max_step_mm))
        # energy and transport-MFP count after the step, from the inverse range tables
        r_new = torch.clamp(r_gcm2 - step * rho * 0.1, min=1e-30)
        j, h = rg.locate(torch.log(r_new))
        q = tab.electron_by_r[mat * rg.n + j]
        zero = torch.zeros_like(energy)
        t_after = torch.exp(torch.lerp(q[:, 0], q[:, 1], h))
        e_new = torch.where(terminal, zero, torch.minimum(t_after, energy))
        k1 = torch.where(terminal, zero, torch.minimum(torch.lerp(q[:, 2], q[:, 3], h), k0))
        # random hinge: fly τ·s, deposit the step's loss, deflect, fly (1 − τ)·s
        tau = _rand(n, gen, dev)
        hinge = pos + (tau * step).unsqueeze(1) * direction
        flat_h, inside_h = geom.voxel_index(hinge)
        scorer.split(flat_h, inside_h, (energy - e_new) * weight)
        cos_t = sample_wentzel_cos(k0 - k1, tab, gen)
        phi = _TWO_PI * _rand(n, gen, dev)
        direction = rotate(direction, cos_t, phi)
        pos = hinge + ((1.0 - tau) * step).unsqueeze(1) * direction
        flat, inside_e = geom.voxel_index(pos)
        alive = inside_h & inside_e & ~terminal
        # energy still carried by electrons that left the grid (terminal ones carry none)
        scorer.escape(torch.where(alive, zero, e_new * weight))
        keep = torch.nonzero(alive).squeeze(1)
        if keep.numel() == n:
            energy = e_new
            continue
        pos, direction, flat = pos.index_select(0, keep), direction.index_select(0, keep), \
            flat.index_select(0, keep)
        energy, weight = e_new.index_select(0, keep), weight.index_select(0, keep)
