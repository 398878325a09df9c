"""Materials: elemental composition by mass, density, mean excitation energy.

A :class:`Material` is the description of a medium that both our fast Monte Carlo and the GATE
bridge consume: mass fractions by atomic number, a nominal mass density (g/cm³) and the mean
excitation energy I used in the electron stopping power.

Named materials (:class:`MaterialName`) and their sources
--------------------------------------------------------
================== ======== ===================================================================
name               ρ g/cm³  composition (source)
================== ======== ===================================================================
water              1.000    H₂O, NIST ESTAR/XCOM; I = 75.0 eV (ICRU-37)
air                0.00120  dry air near sea level, NIST ESTAR (C, N, O, Ar); I = 85.7 eV
lung               0.26     ICRU-46 adult lung, healthy inflated (= Schneider's lung bin)
adipose            0.95     ICRU-44 adipose tissue (NIST "Adipose tissue (ICRU-44)")
soft-tissue-icru   1.00     ICRU four-component soft tissue (H, C, N, O), NIST ESTAR, the
                            ICRU-37 "tissue, soft (ICRU four-component)"; I = 74.9 eV
soft-tissue-icrp   1.03     ICRP soft tissue (13 elements), NIST ESTAR "Tissue, soft (ICRP)";
                            I = 72.3 eV
cortical-bone      1.92     ICRU-46 adult cortical bone (= Schneider's densest bone bin)
================== ======== ===================================================================

The ICRU four-component soft tissue is the one of the ICRU-37 stopping-power tables (ρ = 1.00);
it is *not* the ICRU-44 "soft tissue" (ρ = 1.06, ten elements).

Mean excitation energies
------------------------
Where a material does not carry a tabulated I-value it is computed by the Bragg additivity rule
of ICRU Report 37 (1984, doi:10.1093/jicru/os19.2.Report37):
``ln I = Σ wᵢ (Z/A)ᵢ ln Iᵢ / Σ wᵢ (Z/A)ᵢ``, with the condensed-phase atomic values recommended
for compounds by Seltzer & Berger (1982, Int J Appl Radiat Isot 33:1189,
doi:10.1016/0020-708X(82)90244-7) for H, C, N, O (19.2, 81, 82, 106 eV) and the elemental
ICRU-37 values for the other elements. For water this rule gives 75.3 eV against the tabulated
75.0 eV.

References
----------
ICRU Report 44 (1989), Tissue substitutes in radiation dosimetry and measurement.
ICRU Report 46 (1992), Photon, electron, proton and neutron interaction data for body tissues.
NIST ESTAR material compositions: https://physics.nist.gov/cgi-bin/Star/compos.pl
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from dosimetry.errors import InputError

__all__ = [
    "ELEMENT_SYMBOLS",
    "Material",
    "MaterialName",
    "atomic_weight",
    "get_material",
    "named_materials",
]

#: Element symbols by atomic number (index 0 unused).
ELEMENT_SYMBOLS: tuple[str, ...] = (
    "",
    *"H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As "
    "Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd "
    "Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi".split(),
)
_Z_BY_SYMBOL = {s: z for z, s in enumerate(ELEMENT_SYMBOLS) if s}

# Elemental mean excitation energies (eV), ICRU Report 37 (1984), the values NIST ESTAR uses.
_I_ELEMENT_EV: dict[int, float] = {
    1: 19.2, 2: 41.8, 6: 78.0, 7: 82.0, 8: 95.0, 9: 115.0, 11: 149.0, 12: 156.0, 13: 166.0,
    14: 173.0, 15: 173.0, 16: 180.0, 17: 174.0, 18: 188.0, 19: 190.0, 20: 191.0, 22: 233.0,
    26: 286.0, 29: 322.0, 30: 330.0, 47: 470.0, 50: 488.0, 53: 491.0, 56: 491.0, 74: 727.0,
    82: 823.0,
}
# Atomic I-values for use in compounds (condensed phase), Seltzer & Berger 1982 / ICRU-37.
_I_IN_COMPOUND_EV: dict[int, float] = {1: 19.2, 6: 81.0, 7: 82.0, 8: 106.0}


@functools.cache
def atomic_weight(z: int) -> float:
    """Standard atomic weight of element ``z`` (g/mol), from xraylib's table."""
    import xraylib

    return float(xraylib.AtomicWeight(int(z)))


class MaterialName(StrEnum):
    """Named materials (see the module docstring for compositions and sources)."""

    WATER = "water"
    AIR = "air"
    LUNG = "lung"
    ADIPOSE = "adipose"
    SOFT_TISSUE_ICRU = "soft-tissue-icru"
    SOFT_TISSUE_ICRP = "soft-tissue-icrp"
    CORTICAL_BONE = "cortical-bone"


def _z_of(element: int | str) -> int:
    if isinstance(element, str):
        z = _Z_BY_SYMBOL.get(element.strip().capitalize())
        if z is None:
            raise InputError(f"unknown element symbol {element!r} in material composition")
        return z
    z = int(element)
    if not 1 <= z < len(ELEMENT_SYMBOLS):
        raise InputError(f"atomic number {element!r} out of range 1..{len(ELEMENT_SYMBOLS) - 1}")
    return z


@dataclass(frozen=True)
class Material:
    """A homogeneous medium: elemental mass fractions, density, mean excitation energy.

    Parameters
    ----------
    name : str
        Identifier (used in tables, file names and the GATE bridge).
    density_gcm3 : float
        Nominal mass density (g/cm³), > 0. Voxel-wise densities from CT override it.
    composition : tuple of (int, float)
        ``(Z, mass fraction)`` pairs. Fractions must be ≥ 0 and sum to 1 within 1 %; they are
        renormalised to sum to 1 exactly (published tables are rounded to 0.1 %) and stored
        sorted by Z with zero fractions removed. Element symbols are accepted for Z.
    mean_excitation_ev : float or None
        Tabulated mean excitation energy I (eV); None computes it by Bragg additivity (see
        :meth:`mean_excitation_energy_ev`).
    source : str
        Where the composition comes from (citation).
    """

    name: str
    density_gcm3: float
    composition: tuple[tuple[int, float], ...]
    mean_excitation_ev: float | None = None
    source: str = ""

    def __post_init__(self) -> None:
        rho = float(self.density_gcm3)
        if not math.isfinite(rho) or rho <= 0.0:
            raise InputError(f"material {self.name!r}: density_gcm3 must be > 0, got {rho!r}")
        object.__setattr__(self, "density_gcm3", rho)
        pairs: dict[int, float] = {}
        for element, fraction in self.composition:
            z = _z_of(element)
            f = float(fraction)
            if not math.isfinite(f) or f < 0.0:
                raise InputError(
                    f"material {self.name!r}: mass fraction of {ELEMENT_SYMBOLS[z]} must be "
                    f"≥ 0, got {fraction!r}"
                )
            pairs[z] = pairs.get(z, 0.0) + f
        total = math.fsum(pairs.values())
        if not abs(total - 1.0) <= 0.01:
            raise InputError(
                f"material {self.name!r}: mass fractions sum to {total:.6g}, expected 1 (±1 %)"
            )
        comp = tuple((z, f / total) for z, f in sorted(pairs.items()) if f > 0.0)
        object.__setattr__(self, "composition", comp)
        if self.mean_excitation_ev is not None:
            i_ev = float(self.mean_excitation_ev)
            if not math.isfinite(i_ev) or i_ev <= 0.0:
                raise InputError(
                    f"material {self.name!r}: mean_excitation_ev must be > 0, got {i_ev!r}"
                )
            object.__setattr__(self, "mean_excitation_ev", i_ev)

    @property
    def atomic_numbers(self) -> tuple[int, ...]:
        """Atomic numbers present, ascending."""
        return tuple(z for z, _ in self.composition)

    @property
    def mass_fractions(self) -> tuple[float, ...]:
        """Mass fractions in the order of :attr:`atomic_numbers`; they sum to 1."""
        return tuple(f for _, f in self.composition)

    def z_over_a(self) -> float:
        """Mean ⟨Z/A⟩ = Σ wᵢ Zᵢ/Aᵢ (mol/g): electrons per gram divided by Avogadro's number."""
        return math.fsum(f * z / atomic_weight(z) for z, f in self.composition)

    def mean_excitation_energy_ev(self) -> float:
        """Mean excitation energy I (eV): tabulated, or ICRU-37 Bragg additivity.

        Bragg additivity: ``ln I = Σ wᵢ(Z/A)ᵢ ln Iᵢ / Σ wᵢ(Z/A)ᵢ`` with condensed-phase values
        for H, C, N, O (Seltzer & Berger 1982, doi:10.1016/0020-708X(82)90244-7) and elemental
        ICRU-37 values otherwise.
        """
        if self.mean_excitation_ev is not None:
            return self.mean_excitation_ev
        num = den = 0.0
        for z, f in self.composition:
            i_ev = _I_IN_COMPOUND_EV.get(z, _I_ELEMENT_EV.get(z))
            if i_ev is None:
                # Rough rule for elements absent from our table (ICRU-37 §2.3: I ≈ 10 eV·Z for
                # Z > 13, within ~15 %); only metal-implant bins reach here.
                i_ev = 10.0 * z
            w = f * z / atomic_weight(z)
            num += w * math.log(i_ev)
            den += w
        return math.exp(num / den)

    def with_density(self, density_gcm3: float) -> Material:
        """The same composition at another nominal density."""
        return Material(self.name, density_gcm3, self.composition, self.mean_excitation_ev,
                        self.source)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (the form the GATE bridge reads)."""
        return {
            "name": self.name,
            "density_gcm3": self.density_gcm3,
            "composition": {ELEMENT_SYMBOLS[z]: f for z, f in self.composition},
            "mean_excitation_ev": self.mean_excitation_energy_ev(),
            "source": self.source,
        }


_NIST = "NIST ESTAR composition table (https://physics.nist.gov/cgi-bin/Star/compos.pl)"
_ICRU46 = "ICRU Report 46 (1992), as used by Schneider et al. 2000 (doi:10.1088/0031-9155/45/2/314)"


@functools.cache
def named_materials() -> dict[MaterialName, Material]:
    """Every named material, by :class:`MaterialName` (see the module docstring)."""
    return {
        MaterialName.WATER: Material(
            "water", 1.0, ((1, 0.111894), (8, 0.888106)), 75.0, f"{_NIST}; I from ICRU-37"
        ),
        MaterialName.AIR: Material(
            "air",
            1.20479e-3,
            ((6, 0.000124), (7, 0.755268), (8, 0.231781), (18, 0.012827)),
            85.7,
            f"{_NIST}: air, dry (near sea level)",
        ),
        MaterialName.LUNG: Material(
            "lung",
            0.26,
            ((1, 0.103), (6, 0.105), (7, 0.031), (8, 0.749), (11, 0.002), (15, 0.002),
             (16, 0.003), (17, 0.003), (19, 0.002)),
            None,
            f"{_ICRU46}: lung, healthy, inflated",
        ),
        MaterialName.ADIPOSE: Material(
            "adipose",
            0.95,
            ((1, 0.114), (6, 0.598), (7, 0.007), (8, 0.278), (11, 0.001), (16, 0.001),
             (17, 0.001)),
            None,
            f"{_NIST}: adipose tissue (ICRU-44)",
        ),
        MaterialName.SOFT_TISSUE_ICRU: Material(
            "soft-tissue-icru",
            1.0,
            ((1, 0.101172), (6, 0.111000), (7, 0.026000), (8, 0.761828)),
            74.9,
            f"{_NIST}: tissue, soft (ICRU four-component), ICRU-37",
        ),
        MaterialName.SOFT_TISSUE_ICRP: Material(
            "soft-tissue-icrp",
            1.03,
            ((1, 0.104472), (6, 0.232190), (7, 0.024880), (8, 0.630238), (11, 0.001130),
             (12, 0.000130), (15, 0.001330), (16, 0.001990), (17, 0.001340), (19, 0.001990),
             (20, 0.000230), (26, 0.000050), (30, 0.000030)),
            72.3,
            f"{_NIST}: tissue, soft (ICRP)",
        ),
        MaterialName.CORTICAL_BONE: Material(
            "cortical-bone",
            1.92,
            ((1, 0.034), (6, 0.155), (7, 0.042), (8, 0.435), (11, 0.001), (12, 0.002),
             (15, 0.103), (16, 0.003), (20, 0.225)),
            None,
            f"{_ICRU46}: cortical bone (adult)",
        ),
    }


def get_material(name: MaterialName | str) -> Material:
    """The named material ``name`` (e.g. ``"soft-tissue-icru"``).

    Raises
    ------
    InputError
        Unknown name; the message lists the known ones.
    """
    try:
        key = MaterialName(str(name).strip().lower())
    except ValueError:
        known = ", ".join(m.value for m in MaterialName)
        raise InputError(f"unknown material {name!r}; expected one of {known}") from None
    return named_materials()[key]
