"""Photon interaction cross sections of materials, from xraylib.

Mass cross sections (cm²/g) for photoelectric absorption, incoherent (Compton) and coherent
(Rayleigh) scattering are the mass-fraction-weighted sums of xraylib's elemental values
(``CS_Photo``, ``CS_Compt``, ``CS_Rayl``; Schoonjans et al. 2011, Spectrochim Acta B 66:776,
doi:10.1016/j.sab.2011.09.011), whose tables end at 800 keV. Above 800 keV (up to the 3 MeV
limit of this module) the Compton cross section follows the Klein–Nishina total cross section
(Klein & Nishina 1929, Z Phys 52:853, doi:10.1007/BF01366453) scaled to xraylib's value at
800 keV, and the photoelectric and Rayleigh cross sections are extrapolated as power laws
fitted between 700 and 800 keV (both are < 0.5 % of μ there in tissue). Pair production is
not included: zero below 1.022 MeV, < 3 % of μ at 3 MeV in water.

Rayleigh angular sampling uses the atomic form factors ``FF_Rayl(Z, x)`` with
``x = sin(θ/2)/λ`` (Å⁻¹), combined for a material as ``F²(x) = Σᵢ (wᵢ/Aᵢ) Fᵢ(x)²`` (per gram,
independent-atom approximation).

xraylib is imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from dosimetry.errors import InputError
from dosimetry.materials.compositions import Material, atomic_weight

__all__ = [
    "HC_KEV_ANGSTROM",
    "PhotonCrossSections",
    "mass_attenuation_cm2_g",
    "photon_cross_sections",
    "rayleigh_form_factor_squared",
]

#: h·c in keV·Å (CODATA 2018: 12.398419843320026 keV·Å).
HC_KEV_ANGSTROM = 12.398419843320026


@dataclass(frozen=True, eq=False)
class PhotonCrossSections:
    """Mass cross sections (cm²/g) of one material on an energy grid.

    Attributes
    ----------
    energy_mev : numpy.ndarray
        (N,) photon energies (MeV).
    photo_cm2_g, compton_cm2_g, rayleigh_cm2_g : numpy.ndarray
        (N,) photoelectric, incoherent and coherent mass cross sections (cm²/g).
    """

    energy_mev: np.ndarray
    photo_cm2_g: np.ndarray
    compton_cm2_g: np.ndarray
    rayleigh_cm2_g: np.ndarray

    @property
    def total_cm2_g(self) -> np.ndarray:
        """(N,) total mass attenuation coefficient μ/ρ with coherent scattering (cm²/g)."""
        return self.photo_cm2_g + self.compton_cm2_g + self.rayleigh_cm2_g


#: Highest energy of xraylib's cross-section tables (MeV).
XRAYLIB_MAX_MEV = 0.8
#: Highest photon energy this module serves (MeV).
MAX_PHOTON_MEV = 3.0


def _check_energies(energy_mev) -> np.ndarray:
    e = np.atleast_1d(np.asarray(energy_mev, dtype=np.float64))
    if (e.ndim != 1 or not np.all(np.isfinite(e)) or np.any(e < 1e-3)
            or np.any(e > MAX_PHOTON_MEV)):
        raise InputError(
            f"photon energies must be finite and within 1 keV … {MAX_PHOTON_MEV:g} MeV, got "
            f"{e.min() if e.size else '[]'} … {e.max() if e.size else '[]'} MeV"
        )
    return e


def klein_nishina_cm2(energy_mev) -> np.ndarray:
    """Klein–Nishina total cross section per free electron (cm²) at photon energy E (MeV)."""
    from dosimetry.materials.electron import ELECTRON_MASS_MEV, R_E_CM

    k = np.asarray(energy_mev, dtype=np.float64) / ELECTRON_MASS_MEV
    l2 = np.log1p(2.0 * k)
    return 2.0 * np.pi * R_E_CM**2 * (
        (1.0 + k) / k**2 * (2.0 * (1.0 + k) / (1.0 + 2.0 * k) - l2 / k)
        + l2 / (2.0 * k) - (1.0 + 3.0 * k) / (1.0 + 2.0 * k) ** 2
    )


@functools.cache
def _cross_sections_cached(
    composition: tuple[tuple[int, float], ...], energies: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import xraylib_np

    z = np.array([zz for zz, _ in composition], dtype=np.int64)
    w = np.array([f for _, f in composition], dtype=np.float64)
    e = np.asarray(energies, dtype=np.float64)
    low = e <= XRAYLIB_MAX_MEV
    e_kev = np.concatenate((e[low] * 1e3, [700.0, 1e3 * XRAYLIB_MAX_MEV]))
    photo_l = w @ xraylib_np.CS_Photo(z, e_kev)
    compt_l = w @ xraylib_np.CS_Compt(z, e_kev)
    rayl_l = w @ xraylib_np.CS_Rayl(z, e_kev)
    photo, compt, rayl = (np.empty_like(e) for _ in range(3))
    photo[low], compt[low], rayl[low] = photo_l[:-2], compt_l[:-2], rayl_l[:-2]
    high = ~low
    if high.any():
        eh = e[high]
        for out, tab in ((photo, photo_l), (rayl, rayl_l)):
            slope = np.log(tab[-1] / tab[-2]) / np.log(800.0 / 700.0)
            out[high] = tab[-1] * (eh / XRAYLIB_MAX_MEV) ** slope
        compt[high] = compt_l[-1] * klein_nishina_cm2(eh) / klein_nishina_cm2(XRAYLIB_MAX_MEV)
    for a in (photo, compt, rayl):
        a.setflags(write=False)
    return photo, compt, rayl


def photon_cross_sections(material: Material, energy_mev) -> PhotonCrossSections:
    """Photoelectric, Compton and Rayleigh mass cross sections of ``material``.

    Parameters
    ----------
    material : Material
        Composition (density is irrelevant for mass cross sections).
    energy_mev : array_like
        Photon energies (MeV), 1 keV … 100 MeV.

    Returns
    -------
    PhotonCrossSections
    """
    e = _check_energies(energy_mev)
    photo, compt, rayl = _cross_sections_cached(material.composition, tuple(e.tolist()))
    return PhotonCrossSections(e, photo, compt, rayl)


def mass_attenuation_cm2_g(material: Material, energy_mev) -> np.ndarray:
    """Total mass attenuation coefficient μ/ρ with coherent scattering (cm²/g), shape of input.

    Comparable with the "total attenuation with coherent scattering" column of NIST XCOM
    (Berger et al., XCOM: Photon Cross Sections Database, NIST SRD 8,
    doi:10.18434/T48G6X).
    """
    shape = np.shape(energy_mev)
    return photon_cross_sections(material, energy_mev).total_cm2_g.reshape(shape)


def rayleigh_form_factor_squared(material: Material, x_inv_angstrom) -> np.ndarray:
    """Material form factor squared per gram, ``Σᵢ (wᵢ/Aᵢ) Fᵢ(x)²`` (mol/g).

    Parameters
    ----------
    material : Material
    x_inv_angstrom : array_like
        Momentum transfer variable ``x = sin(θ/2)/λ`` (Å⁻¹), ≥ 0, 1-D.

    Returns
    -------
    numpy.ndarray
        Same length as ``x``. Its ratio to the value at x = 0 is the angular factor of the
        coherent cross section (independent-atom model).
    """
    import xraylib_np

    x = np.atleast_1d(np.asarray(x_inv_angstrom, dtype=np.float64))
    z = np.array(material.atomic_numbers, dtype=np.int64)
    w = np.array([f / atomic_weight(zz) for zz, f in material.composition])
    ff = xraylib_np.FF_Rayl(z, x)
    return w @ (ff * ff)
