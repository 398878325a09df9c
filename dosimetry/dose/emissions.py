"""Which radiations a dose calculation includes, and what one decay emits of them.

:class:`Emission` names the five kinds the engines can include: β⁻ particles (continuous
spectrum), internal-conversion (IC) and Auger electrons (discrete lines), γ rays and X-rays
(discrete lines). :func:`source_spectrum` turns a nuclide's ICRP-107 data
(:mod:`dosimetry.nuclides`) and a selection into the numbers a dose engine needs.

The beta spectrum and the energy budget
---------------------------------------
β energies are drawn from ICRP-107's tabulated spectrum (the piecewise-linear model of
:class:`dosimetry.nuclides.BetaSpectrum`), whose mean exceeds the tabulated branch mean energies
by 0.4–0.6 % for Lu-177 and I-131 (linear interpolation of a coarse grid). β particles therefore
carry the weight ``beta_weight = E_β(lines) / (Y_β · Ē_spectrum)`` (0.9961 for Lu-177) so that
the emitted energy per decay equals ICRP-107's line sum exactly while the spectral shape is
kept.

Positrons, annihilation photons and alpha particles are not simulated; a nuclide that emits
them with more than 0.1 % of its energy is refused by :func:`source_spectrum`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from dosimetry.errors import InputError
from dosimetry.nuclides import Nuclide, RadiationType, get_nuclide

__all__ = [
    "ALL_EMISSIONS",
    "Emission",
    "SourceSpectrum",
    "emissions_label",
    "parse_emissions",
    "source_spectrum",
]


class Emission(StrEnum):
    """A kind of radiation a dose engine can include (CLI: ``--emissions beta,ic,...``)."""

    BETA = "beta"
    IC = "ic"
    AUGER = "auger"
    GAMMA = "gamma"
    X = "x"


#: Every emission, in canonical order.
ALL_EMISSIONS: tuple[Emission, ...] = tuple(Emission)

_RADIATION_OF: dict[Emission, RadiationType] = {
    Emission.BETA: RadiationType.BETA_MINUS,
    Emission.IC: RadiationType.IC,
    Emission.AUGER: RadiationType.AUGER,
    Emission.GAMMA: RadiationType.GAMMA,
    Emission.X: RadiationType.XRAY,
}
_UNSUPPORTED = (RadiationType.BETA_PLUS, RadiationType.ANNIHILATION, RadiationType.ALPHA)


def parse_emissions(value: str | Iterable[Emission | str] | None) -> tuple[Emission, ...]:
    """Emissions from ``"beta,ic,auger,gamma,x"``, ``"all"``, ``"electrons"``, ``"photons"``
    or an iterable of names; returned unique, in canonical order.

    Raises
    ------
    InputError
        Empty selection or an unknown name (the message lists the valid ones).
    """
    if value is None:
        return ALL_EMISSIONS
    if isinstance(value, str):
        parts = [p.strip().lower() for p in value.replace("+", ",").split(",") if p.strip()]
    else:
        parts = [str(p).strip().lower() for p in value]
    chosen: set[Emission] = set()
    for p in parts:
        if p == "all":
            chosen.update(ALL_EMISSIONS)
        elif p in ("electrons", "electron"):
            chosen.update((Emission.BETA, Emission.IC, Emission.AUGER))
        elif p in ("photons", "photon"):
            chosen.update((Emission.GAMMA, Emission.X))
        else:
            try:
                chosen.add(Emission(p))
            except ValueError:
                valid = ", ".join(e.value for e in Emission)
                raise InputError(
                    f"unknown emission {p!r}; expected a comma-separated list of {valid} "
                    "(or all, electrons, photons)"
                ) from None
    if not chosen:
        raise InputError(f"no emission selected in {value!r}")
    return tuple(e for e in ALL_EMISSIONS if e in chosen)


def emissions_label(emissions: Iterable[Emission]) -> str:
    """Canonical comma-separated label, e.g. ``"beta,gamma,x"``."""
    return ",".join(e.value for e in parse_emissions(list(emissions)))


@dataclass(frozen=True, eq=False)
class SourceSpectrum:
    """What one decay emits of the selected radiations (energies in MeV, yields per decay).

    Attributes
    ----------
    nuclide : str
        Canonical nuclide name.
    emissions : tuple of Emission
        The selection.
    beta_yield : float
        β particles per decay (sum of ICRP-107 branch yields); 0 when β is not selected.
    beta_energy_mev, beta_density_per_mev : numpy.ndarray
        (N,) tabulated spectrum (shape only is used); empty when no β.
    beta_weight : float
        Statistical weight of each β particle (see the module docstring).
    electron_energy_mev, electron_yield : numpy.ndarray
        (Kₑ,) discrete electron lines (IC and/or Auger).
    photon_energy_mev, photon_yield : numpy.ndarray
        (Kₚ,) discrete photon lines (γ and/or X).
    """

    nuclide: str
    emissions: tuple[Emission, ...]
    beta_yield: float
    beta_energy_mev: np.ndarray
    beta_density_per_mev: np.ndarray
    beta_weight: float
    electron_energy_mev: np.ndarray
    electron_yield: np.ndarray
    photon_energy_mev: np.ndarray
    photon_yield: np.ndarray

    @property
    def beta_energy_per_decay_mev(self) -> float:
        """β energy per decay (MeV), ICRP-107 branch means × yields."""
        if self.beta_yield == 0.0:
            return 0.0
        e, p = self.beta_energy_mev, self.beta_density_per_mev
        counts = 0.5 * np.diff(e) * (p[:-1] + p[1:])
        e0, e1, p0, p1 = e[:-1], e[1:], p[:-1], p[1:]
        mean = float(np.sum((e1 - e0) / 6 * (e0 * (2 * p0 + p1) + e1 * (p0 + 2 * p1)))
                     / counts.sum())
        return self.beta_yield * mean * self.beta_weight

    @property
    def electron_energy_per_decay_mev(self) -> float:
        """Electron energy per decay (MeV): β + selected discrete electron lines."""
        return self.beta_energy_per_decay_mev + float(
            np.dot(self.electron_energy_mev, self.electron_yield)
        )

    @property
    def photon_energy_per_decay_mev(self) -> float:
        """Photon energy per decay of the selected lines (MeV)."""
        return float(np.dot(self.photon_energy_mev, self.photon_yield))

    @property
    def energy_per_decay_mev(self) -> float:
        """Total emitted energy per decay of the selection (MeV)."""
        return self.electron_energy_per_decay_mev + self.photon_energy_per_decay_mev

    @property
    def max_energy_mev(self) -> float:
        """Highest particle energy of the selection (MeV)."""
        parts = [0.0]
        for a in (self.beta_energy_mev, self.electron_energy_mev, self.photon_energy_mev):
            if a.size:
                parts.append(float(a.max()))
        return max(parts)

    def to_dict(self) -> dict[str, Any]:
        """Summary for metadata files."""
        return {
            "nuclide": self.nuclide,
            "emissions": [e.value for e in self.emissions],
            "electron_energy_per_decay_mev": self.electron_energy_per_decay_mev,
            "photon_energy_per_decay_mev": self.photon_energy_per_decay_mev,
            "beta_weight": self.beta_weight,
        }


def source_spectrum(
    nuclide: Nuclide | str, emissions: str | Iterable[Emission | str] | None = None
) -> SourceSpectrum:
    """The emission data a dose engine needs for ``nuclide`` and a selection of emissions.

    Parameters
    ----------
    nuclide : Nuclide or str
        E.g. ``"Lu-177"`` (ICRP-107, doi:10.1016/j.icrp.2008.10.004).
    emissions : str, iterable or None
        See :func:`parse_emissions`; None selects all five.

    Returns
    -------
    SourceSpectrum

    Raises
    ------
    InputError
        The nuclide emits positrons, annihilation photons or alphas (> 0.1 % of its energy),
        which the engines do not transport.
    """
    nuc = get_nuclide(nuclide) if isinstance(nuclide, str) else nuclide
    chosen = parse_emissions(emissions)
    total = sum(line.energy_per_decay_mev for line in nuc.lines)
    unsupported = sum(
        line.energy_per_decay_mev for line in nuc.lines if line.radiation in _UNSUPPORTED
    )
    if total > 0 and unsupported > 1e-3 * total:
        raise InputError(
            f"{nuc.name} emits {unsupported / total:.1%} of its energy as positrons, "
            "annihilation photons or alpha particles, which rptdose's dose engines do not "
            "transport"
        )
    empty = np.zeros(0)
    beta_yield, beta_weight = 0.0, 1.0
    be, bp = empty, empty
    if Emission.BETA in chosen:
        beta_lines = [ln for ln in nuc.lines if ln.radiation is RadiationType.BETA_MINUS]
        beta_yield = math.fsum(ln.yield_per_decay for ln in beta_lines)
        if beta_yield > 0.0:
            if nuc.beta_spectrum is None:
                raise InputError(f"{nuc.name}: ICRP-107 lists β⁻ lines but no β spectrum")
            be = np.array(nuc.beta_spectrum.energy_mev)
            bp = np.array(nuc.beta_spectrum.density_per_mev)
            e_lines = math.fsum(ln.energy_per_decay_mev for ln in beta_lines)
            beta_weight = e_lines / (beta_yield * nuc.beta_spectrum.mean_energy_mev())

    def lines(kinds: set[RadiationType]) -> tuple[np.ndarray, np.ndarray]:
        sel = [ln for ln in nuc.lines if ln.radiation in kinds and ln.yield_per_decay > 0]
        return (np.array([ln.energy_mev for ln in sel], dtype=np.float64),
                np.array([ln.yield_per_decay for ln in sel], dtype=np.float64))

    e_kinds = {_RADIATION_OF[e] for e in chosen if e in (Emission.IC, Emission.AUGER)}
    p_kinds = {_RADIATION_OF[e] for e in chosen if e in (Emission.GAMMA, Emission.X)}
    ee, ey = lines(e_kinds)
    pe, py = lines(p_kinds)
    return SourceSpectrum(nuc.name, chosen, beta_yield, be, bp, beta_weight, ee, ey, pe, py)
