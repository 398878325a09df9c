"""Electron slowing-down and elastic-scattering data of materials, from their composition.

Collision stopping power
------------------------
Bethe formula for electrons with the Rohrlich–Carlson exchange term, as in ICRU Report 37
(1984, doi:10.1093/jicru/os19.2.Report37, eq. 2.2–2.4)::

    S_col/ρ = 2π r_e² m c² N_A ⟨Z/A⟩ / β² · [ ln(τ²(τ+2) / (2 (I/mc²)²)) + F⁻(τ) − δ ]
    F⁻(τ)  = 1 − β² + [τ²/8 − (2τ+1) ln 2] / (τ+1)²

with τ = T/mc², I from :meth:`Material.mean_excitation_energy_ev`, and δ the density-effect
correction by the general formula of Sternheimer & Peierls (1971, Phys Rev B 3:3681,
doi:10.1103/PhysRevB.3.3681) evaluated at the material's nominal density. For water this gives
4.115 MeV cm²/g at 100 keV (NIST ESTAR 4.115). The Bethe theory loses accuracy below ~10 keV
(shell corrections are neglected); that only affects the last few µm of a track.

Radiative stopping power is neglected: bremsstrahlung carries away < 0.5 % of the energy of a
1 MeV electron in soft tissue (ICRU-37 radiation yield of water at 1 MeV: 0.37 %), and that
energy is counted as deposited along the track.

CSDA range
----------
R(T) = ∫ dT'/S(T') (g/cm²), integrated on a fine log-energy grid; below 1 keV the stopping
power is extrapolated as a power law. Scaled to a voxel of density ρ: R/ρ.

Elastic scattering (transport cross section)
--------------------------------------------
First transport cross section σ₁ = ∫(1 − cos θ) dσ of the screened Rutherford cross section
with Molière's screening parameter (Molière 1947, Z Naturforsch 2a:133; as used by Berger
1963, Methods Comput Phys 1:135) η = ¼ (α Z^{1/3} mc / (0.885 p))² (1.13 + 3.76 (αZ/β)²),
electrons of the atom counted by Z(Z+1), and the leading Mott correction of McKinley &
Feshbach (1948, Phys Rev 74:1759, doi:10.1103/PhysRev.74.1759), factor 1 − β² sin²(θ/2)::

    σ₁ = 2π Z(Z+1) r_e² (mc²/(pcβ))² { ln(1 + 1/η) − 1/(1+η)
                                        − β²/2 [2 − 2a ln(1 + 2/a) + 2a/(2+a)] },  a = 2η

(the πβαZ term of McKinley–Feshbach is neglected: < 0.5 % of σ₁ for Z ≤ 20). The mean number
of transport mean free paths K(T) = ∫ (σ₁/m) / (S/ρ) dT' along the CSDA path is density
independent and gives Lewis' (1950, Phys Rev 78:526, doi:10.1103/PhysRev.78.526) exact first
angular moment over any path segment: ⟨cos θ⟩ = exp(−ΔK).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dosimetry.errors import InputError
from dosimetry.materials.compositions import Material, atomic_weight

__all__ = [
    "ELECTRON_MASS_MEV",
    "ElectronTables",
    "collision_stopping_power",
    "csda_range_gcm2",
    "density_effect",
    "electron_tables",
    "transport_cross_section_cm2_g",
]

#: Electron rest energy m c² (MeV), CODATA 2018.
ELECTRON_MASS_MEV = 0.51099895000
#: Classical electron radius (cm), CODATA 2018.
R_E_CM = 2.8179403262e-13
#: Avogadro constant (1/mol), exact (SI 2019).
N_A = 6.02214076e23
#: Fine-structure constant, CODATA 2018.
ALPHA = 7.2973525693e-3
#: 2π r_e² m c² N_A (MeV cm²/mol).
_BETHE_K = 2.0 * math.pi * R_E_CM**2 * ELECTRON_MASS_MEV * N_A


def _kinematics(t_mev: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tau = t_mev / ELECTRON_MASS_MEV
    gamma = tau + 1.0
    beta2 = 1.0 - 1.0 / (gamma * gamma)
    pc = np.sqrt(t_mev * (t_mev + 2.0 * ELECTRON_MASS_MEV))  # MeV
    return tau, beta2, pc


def density_effect(material: Material, t_mev, density_gcm3: float | None = None) -> np.ndarray:
    """Sternheimer–Peierls (1971) density-effect correction δ for electrons of energy T.

    Parameters
    ----------
    material : Material
    t_mev : array_like
        Kinetic energies (MeV).
    density_gcm3 : float, optional
        Density at which δ is evaluated; default the material's nominal density.

    Returns
    -------
    numpy.ndarray
        δ (dimensionless), same shape as ``t_mev``.

    Notes
    -----
    General formula of doi:10.1103/PhysRevB.3.3681: with X = log₁₀(βγ),
    C̄ = 1 + 2 ln(I/ħω_p), ħω_p = 28.816 eV √(ρ⟨Z/A⟩):
    δ = 0 for X < X₀; 2 ln10 X − C̄ + a (X₁ − X)³ for X₀ ≤ X < X₁; 2 ln10 X − C̄ above,
    a = (C̄ − 2 ln10 X₀)/(X₁ − X₀)³; X₀, X₁ by the rules for condensed media and gases.
    """
    rho = material.density_gcm3 if density_gcm3 is None else float(density_gcm3)
    t = np.asarray(t_mev, dtype=np.float64)
    i_ev = material.mean_excitation_energy_ev()
    plasma_ev = 28.816 * math.sqrt(rho * material.z_over_a())
    cbar = 1.0 + 2.0 * math.log(i_ev / plasma_ev)
    if rho > 0.01:  # condensed media
        if i_ev < 100.0:
            x0, x1 = (0.2, 2.0) if cbar < 3.681 else (0.326 * cbar - 1.0, 2.0)
        else:
            x0, x1 = (0.2, 3.0) if cbar < 5.215 else (0.326 * cbar - 1.5, 3.0)
    else:  # gases
        table = ((10.0, 1.6, 4.0), (10.5, 1.7, 4.0), (11.0, 1.8, 4.0), (11.5, 1.9, 4.0),
                 (12.25, 2.0, 4.0), (13.804, 2.0, 5.0))
        for c_max, xa, xb in table:
            if cbar < c_max:
                x0, x1 = xa, xb
                break
        else:
            x0, x1 = 0.326 * cbar - 2.5, 5.0
    a = (cbar - 2.0 * math.log(10.0) * x0) / (x1 - x0) ** 3
    pc = _kinematics(t)[2]
    x = np.log10(np.maximum(pc / ELECTRON_MASS_MEV, 1e-30))
    two_ln10_x = 2.0 * math.log(10.0) * x
    delta = np.where(
        x < x0, 0.0, np.where(x < x1, two_ln10_x - cbar + a * (x1 - x) ** 3, two_ln10_x - cbar)
    )
    return np.maximum(delta, 0.0)


def collision_stopping_power(
    material: Material, t_mev, density_gcm3: float | None = None
) -> np.ndarray:
    """Mass collision stopping power of electrons (MeV cm²/g), Bethe–Rohrlich–Carlson.

    Parameters
    ----------
    material : Material
    t_mev : array_like
        Kinetic energies (MeV), > 0; accurate from ~10 keV up (see module docstring).
    density_gcm3 : float, optional
        Density for the density effect; default the nominal one.

    Returns
    -------
    numpy.ndarray
        S_col/ρ (MeV cm²/g), same shape as ``t_mev``.
    """
    t = np.asarray(t_mev, dtype=np.float64)
    if np.any(~np.isfinite(t)) or np.any(t <= 0.0):
        raise InputError("electron kinetic energies must be finite and > 0 MeV")
    tau, beta2, _ = _kinematics(t)
    i_rel = material.mean_excitation_energy_ev() * 1e-6 / ELECTRON_MASS_MEV
    f_minus = 1.0 - beta2 + (tau * tau / 8.0 - (2.0 * tau + 1.0) * math.log(2.0)) / (tau + 1) ** 2
    bracket = (np.log(tau * tau * (tau + 2.0) / (2.0 * i_rel * i_rel)) + f_minus
               - density_effect(material, t, density_gcm3))
    return _BETHE_K * material.z_over_a() / beta2 * bracket


def _range_on_grid(material: Material, t_grid: np.ndarray) -> np.ndarray:
    """CSDA range (g/cm²) at each point of an ascending log-spaced grid (trapezoid in ln T)."""
    s = collision_stopping_power(material, t_grid)
    # below the grid: S ≈ S₀ (T/T₀)^(−p) → ∫₀^T₀ dT/S = T₀ / (S₀ (1+p))
    p = -math.log(s[1] / s[0]) / math.log(t_grid[1] / t_grid[0])
    r0 = t_grid[0] / (s[0] * (1.0 + max(p, 0.0)))
    f = t_grid / s  # dT/S = (T/S) d ln T
    dln = np.diff(np.log(t_grid))
    return r0 + np.concatenate(([0.0], np.cumsum(0.5 * dln * (f[1:] + f[:-1]))))


def csda_range_gcm2(material: Material, t_mev) -> np.ndarray:
    """CSDA range (g/cm²) of electrons of kinetic energy T in ``material``.

    Divide by the density (g/cm³) for cm. Water: 1.43e-2 g/cm² at 100 keV (ESTAR 1.431e-2).
    """
    t = np.asarray(t_mev, dtype=np.float64)
    if np.any(~np.isfinite(t)) or np.any(t < 1e-3) or np.any(t > 100.0):
        raise InputError("electron energies for the CSDA range must lie in 1 keV … 100 MeV")
    grid = np.geomspace(1e-3, max(float(t.max()) * 1.0001, 2e-3), 4001)
    r = _range_on_grid(material, grid)
    return np.exp(np.interp(np.log(t), np.log(grid), np.log(r)))


def transport_cross_section_cm2_g(material: Material, t_mev) -> np.ndarray:
    """First transport mass cross section σ₁/m = 1/(ρλ₁) of electrons (cm²/g).

    Screened Rutherford with Molière screening and the McKinley–Feshbach β² correction (see the
    module docstring).
    """
    t = np.asarray(t_mev, dtype=np.float64)
    _, beta2, pc = _kinematics(t)
    mc_over_p = ELECTRON_MASS_MEV / pc
    total = np.zeros_like(t)
    for z, w in material.composition:
        eta = (0.25 * (ALPHA * z ** (1.0 / 3.0) * mc_over_p / 0.885) ** 2
               * (1.13 + 3.76 * (ALPHA * z) ** 2 / beta2))
        a = 2.0 * eta
        core = np.log1p(1.0 / eta) - 1.0 / (1.0 + eta)
        mott = 0.5 * beta2 * (2.0 - 2.0 * a * np.log1p(2.0 / a) + 2.0 * a / (2.0 + a))
        k = z * (z + 1.0) * R_E_CM**2 * (ELECTRON_MASS_MEV / pc) ** 2 / beta2
        sigma1 = 2.0 * math.pi * k * (core - mott)  # cm² per atom
        total += w * N_A / atomic_weight(z) * sigma1
    return total


@dataclass(frozen=True, eq=False)
class ElectronTables:
    """Electron data of one material on a log-energy grid.

    Attributes
    ----------
    energy_mev : numpy.ndarray
        (N,) kinetic energies (MeV), log-spaced.
    stopping_power : numpy.ndarray
        (N,) S_col/ρ (MeV cm²/g).
    range_gcm2 : numpy.ndarray
        (N,) CSDA range (g/cm²).
    transport_mfp_count : numpy.ndarray
        (N,) K(T): transport mean free paths along the CSDA path from the lowest grid energy
        up to T (dimensionless, density independent).
    """

    energy_mev: np.ndarray
    stopping_power: np.ndarray
    range_gcm2: np.ndarray
    transport_mfp_count: np.ndarray


def electron_tables(material: Material, energy_mev: np.ndarray) -> ElectronTables:
    """Stopping power, CSDA range and transport-MFP count of ``material`` on a log grid.

    Parameters
    ----------
    material : Material
    energy_mev : numpy.ndarray
        (N,) ascending, log-spaced energies (MeV) from ≥ 1 keV.
    """
    t = np.asarray(energy_mev, dtype=np.float64)
    if t.ndim != 1 or t.size < 3 or np.any(np.diff(t) <= 0) or t[0] < 1e-3:
        raise InputError("electron table energies must be ascending, ≥ 1 keV, at least 3")
    s = collision_stopping_power(material, t)
    r = _range_on_grid(material, t)
    g = transport_cross_section_cm2_g(material, t) / s * t  # dK/d ln T
    dln = np.diff(np.log(t))
    k = np.concatenate(([0.0], np.cumsum(0.5 * dln * (g[1:] + g[:-1]))))
    return ElectronTables(t, s, r, k)
