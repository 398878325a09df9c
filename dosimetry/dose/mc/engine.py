"""The fast voxel Monte Carlo: decays sampled from an activity map, transported, scored.

:func:`simulate` is the numeric entry point (numpy arrays in, numpy arrays out); the image-level
engine is :func:`dosimetry.dose.engines.dose_mc`.

Sources
    Each simulated decay picks a voxel with probability ∝ its activity (or TIA) value and a
    uniform position inside it, and emits the selected radiations of the nuclide with their
    ICRP-107 yields (:mod:`dosimetry.dose.emissions`): β energies from the tabulated spectrum
    (with the energy-normalising weight), discrete IC/Auger electrons and γ/X photons, all
    isotropic. The number of particles of each line in a batch of n decays is n·y rounded at
    random (floor plus a Bernoulli draw of the fraction), which is exact in expectation;
    emissions of one decay are not correlated in position (irrelevant to the mean dose).

Transport
    See :mod:`dosimetry.dose.mc.transport` for the physics and its approximations.

Statistics
    The decays are split into ``n_batches`` equal statistical batches; the per-voxel standard
    error of the mean energy per decay is estimated from the spread of the batch means
    (batch method; Walters, Kawrakow & Rogers 2002, Med Phys 29:2745, doi:10.1118/1.1517611,
    compare it with the history-by-history method). Each batch is processed in chunks of at
    most ``chunk_decays`` decays to bound memory.

Approximations (summary; details in the transport module)
    * photoelectric: full photon energy to a forward photoelectron; no fluorescence;
    * Compton: Klein–Nishina on free electrons at rest (no binding, no Doppler broadening);
    * Rayleigh: independent-atom form factors;
    * no pair production (photons < 3 MeV), no bremsstrahlung photons (radiative losses < 0.5 %
      of the energy of 1 MeV electrons in tissue, counted as local), no δ-ray production;
    * electrons: CSDA without energy-loss straggling; Bethe collision stopping powers with
      Sternheimer–Peierls density effect at the material's nominal density;
    * multiple scattering: Lewis first moment exact, angular shape Wentzel-like, lateral
      displacement by the random hinge;
    * a step uses the material and density of the voxel where it starts (steps are at most
      ``max_step_fraction`` of the smallest voxel spacing);
    * positrons, annihilation and alphas are not simulated (refused by the source model).

Reproducibility
    The same seed, settings and inputs give bit-identical results on the CPU. On CUDA the
    order of floating-point atomic additions in the tally varies between runs; the float64
    tally keeps those differences at the 1e-16 relative level.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from dosimetry.dose.emissions import SourceSpectrum
from dosimetry.dose.mc.tables import TransportTables, build_tables
from dosimetry.dose.mc.transport import (
    Geometry,
    Scorer,
    isotropic_directions,
    transport_electrons,
    transport_photons,
)
from dosimetry.errors import InputError
from dosimetry.materials.compositions import Material
from dosimetry.units import JOULE_PER_MEV

__all__ = ["MCSettings", "MCTally", "energy_to_dose_gy", "simulate"]

#: Version of the MC physics; part of kernel cache keys (bump when results change).
MC_PHYSICS_VERSION = "1"


@dataclass(frozen=True)
class MCSettings:
    """Settings of a Monte Carlo run.

    Parameters
    ----------
    n_decays : int
        Decays to simulate (rounded up to a multiple of ``n_batches``).
    seed : int
        Seed of the torch generator; the same seed gives identical output.
    device : str
        ``"cpu"`` or ``"cuda"`` (or ``"cuda:N"``).
    n_batches : int
        Statistical batches for the uncertainty (≥ 2; 10–40 is usual).
    chunk_decays : int
        Most decays transported at once (memory bound).
    electron_step_fraction : float
        Fraction of the residual CSDA range spent per electron step.
    electron_cut_fraction : float
        Electrons whose residual range is below this fraction of the smallest voxel spacing
        end in one straight final step.
    max_step_fraction : float
        Longest electron step as a fraction of the smallest voxel spacing.
    """

    n_decays: int
    seed: int = 0
    device: str = "cpu"
    n_batches: int = 20
    chunk_decays: int = 100_000
    electron_step_fraction: float = 0.2
    electron_cut_fraction: float = 0.01
    max_step_fraction: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.n_decays, bool) or int(self.n_decays) != self.n_decays \
                or self.n_decays < 1:
            raise InputError(f"n_decays must be an integer ≥ 1, got {self.n_decays!r}")
        if not isinstance(self.n_batches, int) or self.n_batches < 2:
            raise InputError(f"n_batches must be an integer ≥ 2, got {self.n_batches!r}")
        if not isinstance(self.chunk_decays, int) or self.chunk_decays < 1:
            raise InputError(f"chunk_decays must be an integer ≥ 1, got {self.chunk_decays!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise InputError(f"seed must be an integer ≥ 0, got {self.seed!r}")
        if not isinstance(self.device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise InputError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        for name in ("electron_step_fraction", "electron_cut_fraction", "max_step_fraction"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise InputError(f"{name} must be in (0, 1), got {v!r}")

    @property
    def decays_per_batch(self) -> int:
        """Decays in each statistical batch."""
        return math.ceil(int(self.n_decays) / self.n_batches)


@dataclass(frozen=True, eq=False)
class MCTally:
    """Result of :func:`simulate`, per simulated decay.

    Attributes
    ----------
    energy_mev : numpy.ndarray
        (z, y, x) float64 mean energy deposited per decay in each voxel (MeV).
    energy_sem_mev : numpy.ndarray
        (z, y, x) float64 standard error of ``energy_mev`` (batch method).
    n_decays : int
        Decays simulated (``n_batches × decays_per_batch``).
    n_batches : int
    emitted_mev, deposited_mev, escaped_mev : float
        Totals over the run (MeV, weighted): emitted by the sources, deposited in the grid,
        carried out of the grid.
    roi_batches : numpy.ndarray or None
        (n_batches, …) energy per decay of each batch in the requested region of interest.
    elapsed_s : float
        Wall time of the transport (s), table building excluded.
    """

    energy_mev: np.ndarray
    energy_sem_mev: np.ndarray
    n_decays: int
    n_batches: int
    emitted_mev: float
    deposited_mev: float
    escaped_mev: float
    roi_batches: np.ndarray | None = None
    elapsed_s: float = 0.0
    settings: MCSettings | None = field(default=None, repr=False)

    @property
    def decays_per_second(self) -> float:
        """Throughput of the transport (decays/s)."""
        return self.n_decays / self.elapsed_s if self.elapsed_s > 0 else float("inf")


def energy_to_dose_gy(energy_mev: np.ndarray, density_gcm3: np.ndarray,
                      spacing_xyz_mm: Sequence[float]) -> np.ndarray:
    """Absorbed dose (Gy) from deposited energy (MeV) in voxels of given density and size.

    D = E · 1.602176634e-13 J/MeV / (ρ · V), V in cm³ (voxel volume mm³ × 1e-3), mass in kg;
    voxels of zero density get zero dose.
    """
    vol_cm3 = float(np.prod(spacing_xyz_mm)) * 1e-3
    mass_kg = np.asarray(density_gcm3, dtype=np.float64) * vol_cm3 * 1e-3
    out = np.zeros(np.shape(energy_mev), dtype=np.float64)
    np.divide(np.asarray(energy_mev, dtype=np.float64) * JOULE_PER_MEV, mass_kg, out=out,
              where=mass_kg > 0)
    return out


class _SourceSampler:
    """Draws primaries of a chunk of decays (device tensors)."""

    def __init__(self, spectrum: SourceSpectrum, weights: np.ndarray, geom: Geometry,
                 device: torch.device) -> None:
        self.dev = device
        self.geom = geom
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        cdf = np.cumsum(w)
        self.cdf = torch.as_tensor(cdf / cdf[-1], dtype=torch.float64, device=device)
        s = spectrum
        self.beta_yield = s.beta_yield
        self.beta_weight = s.beta_weight
        if s.beta_yield > 0:
            e, p = s.beta_energy_mev, s.beta_density_per_mev
            counts = 0.5 * np.diff(e) * (p[:-1] + p[1:])
            c = np.concatenate(([0.0], np.cumsum(counts)))
            self.b_cdf = torch.as_tensor(c / c[-1], dtype=torch.float64, device=device)
            self.b_counts = torch.as_tensor(counts / c[-1], dtype=torch.float64, device=device)
            self.b_e = torch.as_tensor(e, dtype=torch.float64, device=device)
            self.b_p = torch.as_tensor(p, dtype=torch.float64, device=device)
        self.e_lines = torch.as_tensor(s.electron_energy_mev, dtype=torch.float32, device=device)
        self.e_yield = np.asarray(s.electron_yield, dtype=np.float64)
        self.p_lines = torch.as_tensor(s.photon_energy_mev, dtype=torch.float32, device=device)
        self.p_yield = np.asarray(s.photon_yield, dtype=np.float64)

    def _counts(self, n_decays: int, yields: np.ndarray, gen: torch.Generator) -> torch.Tensor:
        mean = n_decays * yields
        base = np.floor(mean)
        u = torch.rand(yields.size, generator=gen, device=self.dev, dtype=torch.float64)
        extra = (u.cpu().numpy() < (mean - base)).astype(np.int64)
        return torch.as_tensor(base.astype(np.int64) + extra, device=self.dev)

    def positions(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """(n, 3) float32 positions (mm): voxel ∝ source weight, uniform inside it."""
        u = torch.rand(n, generator=gen, device=self.dev, dtype=torch.float64)
        flat = torch.searchsorted(self.cdf, u, right=True).clamp_(max=self.cdf.numel() - 1)
        _, ny, nx = self.geom.shape_zyx
        ix = flat % nx
        iy = (flat // nx) % ny
        iz = flat // (nx * ny)
        idx = torch.stack((ix, iy, iz), dim=1).to(torch.float64)
        frac = torch.rand((n, 3), generator=gen, device=self.dev, dtype=torch.float64)
        sp = torch.tensor(self.geom.spacing_xyz, dtype=torch.float64, device=self.dev)
        pos = (idx + frac) * sp
        # float32 rounding must not move a point onto the far face of its voxel
        pos32 = pos.to(torch.float32)
        upper = ((idx + 1.0) * sp).to(torch.float32)
        return torch.minimum(pos32, torch.nextafter(upper, torch.zeros_like(upper)))

    def beta_energies(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """(n,) float32 β energies from the piecewise-linear tabulated spectrum."""
        u = torch.rand(n, generator=gen, device=self.dev, dtype=torch.float64)
        k = (torch.searchsorted(self.b_cdf, u, right=True) - 1).clamp_(0, self.b_counts.numel() - 1)
        r = torch.zeros_like(u)
        cnt = self.b_counts[k]
        r = torch.where(cnt > 0, (u - self.b_cdf[k]) / cnt.clamp(min=1e-300), r).clamp_(0.0, 1.0)
        p0, p1 = self.b_p[k], self.b_p[k + 1]
        den = p0 + torch.sqrt(p0 * p0 + r * (p1 * p1 - p0 * p0))
        t = torch.where(den > 0, r * (p0 + p1) / den.clamp(min=1e-300), torch.zeros_like(u))
        t = t.clamp_(0.0, 1.0)
        return (self.b_e[k] + t * (self.b_e[k + 1] - self.b_e[k])).to(torch.float32)

    def sample(self, n_decays: int, gen: torch.Generator):
        """Electrons and photons of ``n_decays`` decays: (pos, dir, energy, weight) each."""
        dev = self.dev
        e_parts, w_parts = [], []
        if self.beta_yield > 0:
            nb = int(self._counts(n_decays, np.array([self.beta_yield]), gen).sum())
            e_parts.append(self.beta_energies(nb, gen))
            w_parts.append(torch.full((nb,), self.beta_weight, dtype=torch.float32, device=dev))
        if self.e_lines.numel():
            c = self._counts(n_decays, self.e_yield, gen)
            e_parts.append(torch.repeat_interleave(self.e_lines, c))
            w_parts.append(torch.ones(int(c.sum()), dtype=torch.float32, device=dev))
        electrons = None
        if e_parts:
            e = torch.cat(e_parts)
            w = torch.cat(w_parts)
            electrons = (self.positions(e.numel(), gen),
                         isotropic_directions(e.numel(), gen, dev), e, w)
        photons = None
        if self.p_lines.numel():
            c = self._counts(n_decays, self.p_yield, gen)
            e = torch.repeat_interleave(self.p_lines, c)
            photons = (self.positions(e.numel(), gen), isotropic_directions(e.numel(), gen, dev),
                       e, torch.ones_like(e))
        return electrons, photons


def simulate(
    source: np.ndarray,
    material_index: np.ndarray,
    density_gcm3: np.ndarray,
    materials: Sequence[Material],
    spacing_xyz_mm: Sequence[float],
    spectrum: SourceSpectrum,
    settings: MCSettings,
    roi: tuple[slice, slice, slice] | None = None,
    progress: Callable[[int, int], None] | None = None,
    tables: TransportTables | None = None,
) -> MCTally:
    """Monte Carlo energy deposition per decay from a source distribution in a voxel grid.

    Parameters
    ----------
    source : numpy.ndarray
        (z, y, x) non-negative source weights (activity or TIA; only relative values matter).
    material_index : numpy.ndarray
        (z, y, x) integer index into ``materials``.
    density_gcm3 : numpy.ndarray
        (z, y, x) mass density (g/cm³), > 0 where particles must interact.
    materials : sequence of Material
        Compositions.
    spacing_xyz_mm : sequence of float
        Voxel size along x, y, z (mm).
    spectrum : SourceSpectrum
        Nuclide and selected emissions (:func:`dosimetry.dose.emissions.source_spectrum`).
    settings : MCSettings
    roi : tuple of slice, optional
        (z, y, x) region whose per-batch energies are returned in ``roi_batches``.
    progress : callable, optional
        Called as ``progress(decays_done, decays_total)`` after each chunk.
    tables : TransportTables, optional
        Pre-built tables (must match ``materials`` and the densities).

    Returns
    -------
    MCTally
        Energies per decay (MeV) with standard errors and the energy balance.

    Raises
    ------
    InputError
        Shapes differ, negative or all-zero source, bad densities or material indices.
    """
    src = np.asarray(source, dtype=np.float64)
    mat = np.asarray(material_index)
    rho = np.asarray(density_gcm3, dtype=np.float32)
    if src.ndim != 3 or mat.shape != src.shape or rho.shape != src.shape:
        raise InputError(
            f"source, material_index and density must be 3-D arrays of one shape; got "
            f"{src.shape}, {mat.shape}, {rho.shape}"
        )
    if not np.all(np.isfinite(src)) or np.any(src < 0):
        raise InputError("source values must be finite and ≥ 0")
    if not src.sum() > 0:
        raise InputError("source is zero everywhere: nothing to simulate")
    if not np.all(np.isfinite(rho)) or np.any(rho < 0):
        raise InputError("densities must be finite and ≥ 0 g/cm³")
    if mat.min() < 0 or mat.max() >= len(materials):
        raise InputError(
            f"material indices must lie in 0..{len(materials) - 1}, got {mat.min()}..{mat.max()}"
        )
    spacing = tuple(float(s) for s in spacing_xyz_mm)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise InputError(f"spacing_xyz_mm must be three positive lengths, got {spacing_xyz_mm}")
    # particles need a positive density wherever they may stop; zero-density voxels are given
    # a vacuum-like density (no interactions happen in practice)
    rho = np.where(rho > 0, rho, np.float32(1e-6))
    dev = torch.device(settings.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but torch finds no CUDA device here; "
                         "use --device cpu")
    if tables is None:
        max_rho = [float(rho[mat == k].max()) if np.any(mat == k) else 0.0
                   for k in range(len(materials))]
        e_max = max(spectrum.max_energy_mev * 1.01, 0.01)
        tables = build_tables(materials, max_rho, dev, photon_max_mev=max(e_max, 1.0),
                              electron_max_mev=max(e_max, 1.0))
    if spectrum.max_energy_mev > min(tables.photon_max_mev, tables.electron_max_mev):
        raise InputError(
            f"particle energies up to {spectrum.max_energy_mev} MeV exceed the transport tables"
        )
    geom = Geometry(
        shape_zyx=tuple(int(s) for s in src.shape),
        spacing_xyz=spacing,
        material=torch.as_tensor(mat.reshape(-1).astype(np.int64), device=dev),
        density=torch.as_tensor(rho.reshape(-1), device=dev),
    )
    gen = torch.Generator(device=dev)
    gen.manual_seed(int(settings.seed))
    sampler = _SourceSampler(spectrum, src, geom, dev)
    min_sp = min(spacing)
    cut_mm = settings.electron_cut_fraction * min_sp
    max_step_mm = settings.max_step_fraction * min_sp

    n_b = settings.n_batches
    per_batch = settings.decays_per_batch
    total = n_b * per_batch
    sum_e = torch.zeros(geom.n_voxels, dtype=torch.float64, device=dev)
    sum_e2 = torch.zeros_like(sum_e)
    escaped = 0.0
    emitted = 0.0
    roi_list = []
    done = 0
    t0 = time.perf_counter()
    for _ in range(n_b):
        scorer = Scorer(geom.n_voxels, dev)
        left = per_batch
        while left > 0:
            n = min(left, settings.chunk_decays)
            left -= n
            electrons, photons = sampler.sample(n, gen)
            e_parts = []
            if photons is not None:
                emitted += float((photons[2].double() * photons[3].double()).sum())
                sec = transport_photons(*photons, geom, tables, scorer, gen)
                e_parts.append(sec)
            if electrons is not None:
                emitted += float((electrons[2].double() * electrons[3].double()).sum())
                e_parts.insert(0, electrons)
            if e_parts:
                pos, d, e, w = (torch.cat([p[k] for p in e_parts]) for k in range(4))
                transport_electrons(pos, d, e, w, geom, tables, scorer, gen,
                                    settings.electron_step_fraction, cut_mm, max_step_mm)
            done += n
            if progress is not None:
                progress(done, total)
        batch = scorer.energy / per_batch
        sum_e += batch
        sum_e2 += batch * batch
        escaped += float(scorer.escaped)
        if roi is not None:
            roi_list.append(batch.view(geom.shape_zyx)[roi].cpu().numpy().copy())
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elapsed = time.perf_counter() - t0
    mean = sum_e / n_b
    var = torch.clamp(sum_e2 / n_b - mean * mean, min=0.0) * (n_b / (n_b - 1))
    sem = torch.sqrt(var / n_b)
    deposited = float(sum_e.sum()) * per_batch
    shape = geom.shape_zyx
    return MCTally(
        energy_mev=mean.view(shape).cpu().numpy(),
        energy_sem_mev=sem.view(shape).cpu().numpy(),
        n_decays=total,
        n_batches=n_b,
        emitted_mev=emitted,
        deposited_mev=deposited,
        escaped_mev=escaped,
        roi_batches=np.stack(roi_list) if roi is not None else None,
        elapsed_s=elapsed,
        settings=settings,
    )
