"""Nuclear decay data for any radionuclide of ICRP Publication 107.

Half-lives, discrete emissions (energies and yields per decay) and beta spectra are read from the
``icrp107-database`` package (OpenGATE collaboration), a JSON transcription of the electronic
files that accompany

    ICRP, 2008. Nuclear Decay Data for Dosimetric Calculations. ICRP Publication 107.
    Ann. ICRP 38(3). doi:10.1016/j.icrp.2008.10.004

Everything is returned in the internal units of rptdose: energies in MeV, yields per nuclear
transformation (decay; not per cent), half-lives in s.

How the database is read
------------------------
* One JSON file per nuclide, ``icrp107/<name>.json``; the file holds a JSON *string* that itself
  encodes the record (double-encoded), with keys ``name``, ``half_life``, ``time_unit`` and
  ``emissions``.
* ``time_unit`` is one of ``us, ms, s, m, h, d, y`` (ICRP-107 index convention: ``m`` is the
  minute). The database and ICRP-107's index do not define the year; we use the Julian year
  (365.25 d, :data:`dosimetry.units.YEAR`), the project-wide convention. The tropical year
  (365.2422 d) would differ by 2·10⁻⁵ relative, which matters to no therapy nuclide (all have
  half-lives given in h or d).
* ``emissions`` maps an ICRP-107 radiation type to ``[energy_MeV, yield_per_decay]`` pairs:
  ``beta-``/``beta+`` (energy = mean energy of the branch), ``IE`` (internal-conversion
  electrons), ``auger``, ``gamma``, ``X``, ``annihilation``, ``alpha``, ``alpha recoil``,
  ``neutron``, ``fission`` and ``betaD`` (delayed betas from the fission fragments of the 28
  spontaneously fissioning nuclides). ``betaD`` is listed here as :attr:`RadiationType.BETA_MINUS`
  (they are electrons with a continuous spectrum, and the database's beta spectrum of those
  nuclides is theirs); alpha recoil, neutrons and fission fragments are
  :attr:`RadiationType.OTHER`.
* ``b-spectra`` is the *total* beta spectrum of the nuclide, tabulated as ``[E_MeV,
  electrons per MeV per decay]`` on a fixed grid ending at the highest endpoint energy. It sums
  all branches, β⁻ and β⁺ together (e.g. for Cu-64 it integrates to the sum of both yields);
  per-branch spectra are not in the database. See :class:`BetaSpectrum` for how it is
  interpolated.
* The database carries no decay-chain (progeny) information, so :attr:`Nuclide.daughters` is
  empty for every nuclide read from it.

Nothing is read at import: the data are loaded on first use and cached.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from typing import Any

import numpy as np

from dosimetry import units
from dosimetry.errors import DependencyError, InputError, NuclideError

__all__ = [
    "ICRP107_SOURCE",
    "BetaSpectrum",
    "EmissionLine",
    "Nuclide",
    "RadiationType",
    "available_nuclides",
    "get_nuclide",
    "normalise_nuclide_name",
]

ICRP107_SOURCE = "ICRP Publication 107 (doi:10.1016/j.icrp.2008.10.004) via icrp107-database"
"""Provenance string written with every nuclide record (see :meth:`Nuclide.to_dict`)."""

_DATA_PACKAGE = "icrp107_database"
_DATA_FOLDER = "icrp107"


class RadiationType(StrEnum):
    """Kind of radiation emitted in a nuclear transformation.

    Values are the lower-case strings used in results files. The ICRP-107 codes map as:
    ``beta-`` and ``betaD`` → ``beta-``, ``beta+`` → ``beta+``, ``IE`` → ``ic``,
    ``auger`` → ``auger``, ``gamma`` → ``gamma``, ``X`` → ``x``, ``annihilation`` →
    ``annihilation``, ``alpha`` → ``alpha``; ``alpha recoil``, ``neutron``, ``fission`` →
    ``other``.
    """

    BETA_MINUS = "beta-"
    BETA_PLUS = "beta+"
    IC = "ic"
    AUGER = "auger"
    GAMMA = "gamma"
    XRAY = "x"
    ALPHA = "alpha"
    ANNIHILATION = "annihilation"
    OTHER = "other"

    @property
    def is_electron(self) -> bool:
        """True for electrons and positrons: β⁻, β⁺, internal conversion and Auger."""
        return self in _ELECTRON_TYPES

    @property
    def is_photon(self) -> bool:
        """True for photons: gamma rays, X-rays and annihilation photons."""
        return self in _PHOTON_TYPES


_ELECTRON_TYPES = frozenset(
    {RadiationType.BETA_MINUS, RadiationType.BETA_PLUS, RadiationType.IC, RadiationType.AUGER}
)
_PHOTON_TYPES = frozenset({RadiationType.GAMMA, RadiationType.XRAY, RadiationType.ANNIHILATION})

# ICRP-107 emission keys of icrp107-database → our radiation types. "b-spectra" is the beta
# spectrum, handled apart.
_ICRP107_TYPES: dict[str, RadiationType] = {
    "alpha": RadiationType.ALPHA,
    "beta-": RadiationType.BETA_MINUS,
    "betaD": RadiationType.BETA_MINUS,
    "beta+": RadiationType.BETA_PLUS,
    "gamma": RadiationType.GAMMA,
    "X": RadiationType.XRAY,
    "annihilation": RadiationType.ANNIHILATION,
    "auger": RadiationType.AUGER,
    "IE": RadiationType.IC,
    "alpha recoil": RadiationType.OTHER,
    "neutron": RadiationType.OTHER,
    "fission": RadiationType.OTHER,
}
_SPECTRUM_KEY = "b-spectra"

# ICRP-107 half-life units → seconds.
_TIME_UNITS_S: dict[str, float] = {
    "us": 1e-6 * units.SECOND,
    "ms": 1e-3 * units.SECOND,
    "s": units.SECOND,
    "m": units.MINUTE,
    "h": units.HOUR,
    "d": units.DAY,
    "y": units.YEAR,
}


def _as_radiation_type(value: RadiationType | str) -> RadiationType:
    try:
        return RadiationType(value)
    except ValueError:
        valid = ", ".join(repr(t.value) for t in RadiationType)
        raise InputError(f"unknown radiation type {value!r}; expected one of {valid}") from None


def _check_finite_non_negative(value: float, what: str) -> float:
    x = float(value)
    if not math.isfinite(x) or x < 0.0:
        raise InputError(f"{what} must be a finite number ≥ 0, got {value!r}")
    return x


@dataclass(frozen=True)
class EmissionLine:
    """One discrete emission of a nuclide.

    Parameters
    ----------
    radiation : RadiationType
        Kind of radiation.
    energy_mev : float
        Energy of the emission (MeV). For β⁻/β⁺ branches this is the *mean* kinetic energy of
        the branch, as tabulated by ICRP-107, so that ``energy_mev * yield_per_decay`` is the
        energy the branch emits per decay.
    yield_per_decay : float
        Number emitted per nuclear transformation (a fraction, not per cent; can exceed 1 for
        X-rays and Auger electrons).

    References
    ----------
    ICRP Publication 107, Ann. ICRP 38(3), 2008, doi:10.1016/j.icrp.2008.10.004.
    """

    radiation: RadiationType
    energy_mev: float
    yield_per_decay: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "radiation", _as_radiation_type(self.radiation))
        object.__setattr__(
            self, "energy_mev", _check_finite_non_negative(self.energy_mev, "energy_mev")
        )
        object.__setattr__(
            self,
            "yield_per_decay",
            _check_finite_non_negative(self.yield_per_decay, "yield_per_decay"),
        )

    @property
    def energy_per_decay_mev(self) -> float:
        """Energy emitted by this line per decay, ``energy_mev × yield_per_decay`` (MeV)."""
        return self.energy_mev * self.yield_per_decay

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"radiation", "energy_mev", "yield_per_decay"}``."""
        return {
            "radiation": self.radiation.value,
            "energy_mev": self.energy_mev,
            "yield_per_decay": self.yield_per_decay,
        }


@dataclass(frozen=True, eq=False, repr=False)
class BetaSpectrum:
    """Tabulated beta-particle energy spectrum, as emitted per decay.

    The density is taken as piecewise linear in energy between the tabulated points; every
    method (integrals and sampling) uses that one model, so the sample mean of :meth:`sample`
    converges to :meth:`mean_energy_mev` exactly.

    ICRP-107 tabulates the spectrum to 4 significant figures on a fixed energy grid whose steps
    reach ~0.05 MeV near the endpoint. With linear interpolation, :meth:`energy_per_decay_mev`
    exceeds the sum of the tabulated branch mean energies × yields by 0–0.8 % for every nuclide
    of the database but N-16 (−2.2 %) (Lu-177 +0.56 %, I-131 +0.41 %, Y-90 +0.18 %), and
    :meth:`yield_per_decay` differs from the sum of branch yields by at most 0.32 % (N-16
    −0.51 %; Lu-177 +0.17 %): the
    discrete lines are the reference for energy budgets, the spectrum is for shapes (e.g.
    sampling source energies in Monte Carlo).

    Parameters
    ----------
    energy_mev : numpy.ndarray
        Kinetic energies of the grid points (MeV), shape (N,), N ≥ 2, strictly increasing, ≥ 0.
    density_per_mev : numpy.ndarray
        Emitted beta particles per MeV per decay at those energies, shape (N,), ≥ 0, with a
        positive integral.

    Notes
    -----
    The arrays are copied to read-only float64 arrays. Two spectra are equal when their arrays
    are equal element by element.

    References
    ----------
    ICRP Publication 107, Ann. ICRP 38(3), 2008, doi:10.1016/j.icrp.2008.10.004 (file
    ICRP-07.BET, transcribed by icrp107-database).
    """

    energy_mev: np.ndarray
    density_per_mev: np.ndarray

    def __post_init__(self) -> None:
        energy = np.array(self.energy_mev, dtype=np.float64, copy=True)
        density = np.array(self.density_per_mev, dtype=np.float64, copy=True)
        if energy.ndim != 1 or energy.shape != density.shape or energy.size < 2:
            raise InputError(
                "beta spectrum needs two 1-D arrays of equal length ≥ 2; got energy_mev shape "
                f"{energy.shape} and density_per_mev shape {density.shape}"
            )
        if not (np.all(np.isfinite(energy)) and np.all(np.isfinite(density))):
            raise InputError("beta spectrum energy_mev and density_per_mev must be finite")
        steps = np.diff(energy)
        if energy[0] < 0.0 or np.any(steps <= 0.0):
            k = int(np.argmin(steps)) if np.any(steps <= 0.0) else 0
            raise InputError(
                "beta spectrum energy_mev must be ≥ 0 and strictly increasing; got "
                f"{energy[k]!r} followed by {energy[k + 1]!r}"
            )
        if np.any(density < 0.0):
            k = int(np.argmin(density))
            raise InputError(
                f"beta spectrum density_per_mev must be ≥ 0; got {density[k]!r} at "
                f"{energy[k]!r} MeV"
            )
        if not np.sum(steps * (density[:-1] + density[1:])) > 0.0:
            raise InputError("beta spectrum density_per_mev integrates to zero")
        energy.setflags(write=False)
        density.setflags(write=False)
        object.__setattr__(self, "energy_mev", energy)
        object.__setattr__(self, "density_per_mev", density)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BetaSpectrum):
            return NotImplemented
        return bool(
            np.array_equal(self.energy_mev, other.energy_mev)
            and np.array_equal(self.density_per_mev, other.density_per_mev)
        )

    def __hash__(self) -> int:
        return hash((self.energy_mev.tobytes(), self.density_per_mev.tobytes()))

    def __repr__(self) -> str:
        return (
            f"BetaSpectrum(<{self.energy_mev.size} points, {self.energy_mev[0]:g}–"
            f"{self.energy_mev[-1]:g} MeV, mean {self.mean_energy_mev():.6g} MeV>)"
        )

    def _bin_counts(self) -> np.ndarray:
        """Particles per decay in each interval between grid points, shape (N−1,)."""
        e, p = self.energy_mev, self.density_per_mev
        return 0.5 * np.diff(e) * (p[:-1] + p[1:])

    def yield_per_decay(self) -> float:
        """Beta particles emitted per decay, ∫p(E) dE.

        Returns
        -------
        float
            Particles per decay (all branches together).
        """
        return float(np.sum(self._bin_counts()))

    def energy_per_decay_mev(self) -> float:
        """Beta kinetic energy emitted per decay, ∫E·p(E) dE (MeV).

        Exact integral of the piecewise-linear density: on [E₀, E₁] with densities p₀, p₁ the
        contribution is (E₁−E₀)/6 · [E₀(2p₀+p₁) + E₁(p₀+2p₁)].
        """
        e, p = self.energy_mev, self.density_per_mev
        e0, e1, p0, p1 = e[:-1], e[1:], p[:-1], p[1:]
        return float(np.sum((e1 - e0) / 6.0 * (e0 * (2.0 * p0 + p1) + e1 * (p0 + 2.0 * p1))))

    def mean_energy_mev(self) -> float:
        """Mean kinetic energy of the emitted beta particles, ∫E·p dE / ∫p dE (MeV)."""
        return self.energy_per_decay_mev() / self.yield_per_decay()

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw beta kinetic energies from the spectrum by inverse-CDF sampling.

        The interval is chosen from the cumulative counts, then the energy inside it by inverting
        the quadratic CDF of the linear density there, so samples follow the piecewise-linear
        density exactly.

        Parameters
        ----------
        n : int
            Number of energies to draw, ≥ 0.
        rng : numpy.random.Generator
            Source of randomness; the same generator state gives the same energies.

        Returns
        -------
        numpy.ndarray
            Energies (MeV), float64, shape (n,), within [energy_mev[0], energy_mev[-1]].
        """
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise InputError(f"number of samples n must be an integer ≥ 0, got {n!r}")
        if not isinstance(rng, np.random.Generator):
            raise InputError(
                f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {rng!r}"
            )
        e, p = self.energy_mev, self.density_per_mev
        counts = self._bin_counts()
        cdf = np.concatenate(([0.0], np.cumsum(counts)))
        u = rng.random(int(n)) * cdf[-1]
        k = np.clip(np.searchsorted(cdf, u, side="right") - 1, 0, counts.size - 1)
        # fraction r of the interval's count below the sampled energy
        r = np.zeros_like(u)
        np.divide(u - cdf[k], counts[k], out=r, where=counts[k] > 0.0)
        r = np.clip(r, 0.0, 1.0)
        p0, p1 = p[k], p[k + 1]
        # Solve p0·t + (p1−p0)·t²/2 = r·(p0+p1)/2 for t ∈ [0, 1] (rationalised, no cancellation).
        num = r * (p0 + p1)
        den = p0 + np.sqrt(p0 * p0 + r * (p1 * p1 - p0 * p0))
        t = np.zeros_like(u)
        np.divide(num, den, out=t, where=den > 0.0)
        t = np.clip(t, 0.0, 1.0)
        return e[k] + t * (e[k + 1] - e[k])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"energy_mev": [...], "density_per_mev": [...]}``."""
        return {
            "energy_mev": self.energy_mev.tolist(),
            "density_per_mev": self.density_per_mev.tolist(),
        }


@dataclass(frozen=True, repr=False)
class Nuclide:
    """Decay data of one radionuclide.

    Parameters
    ----------
    name : str
        Canonical name, e.g. ``"Lu-177"``, ``"I-131"``, ``"Tc-99m"``.
    half_life_s : float
        Physical half-life (s), > 0.
    lines : tuple of EmissionLine
        Every discrete emission, beta branches included (with their mean energies).
    beta_spectrum : BetaSpectrum or None
        Total beta spectrum (all branches, β⁻ and β⁺ together), or None when the nuclide emits
        no betas.
    daughters : tuple of (str, float)
        Radioactive progeny and branching fractions, when known. ICRP-107 as transcribed by
        icrp107-database carries no progeny, so this is empty for nuclides from
        :func:`get_nuclide`.

    References
    ----------
    ICRP Publication 107, Ann. ICRP 38(3), 2008, doi:10.1016/j.icrp.2008.10.004.
    """

    name: str
    half_life_s: float
    lines: tuple[EmissionLine, ...]
    beta_spectrum: BetaSpectrum | None = None
    daughters: tuple[tuple[str, float], ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise InputError(f"nuclide name must be a non-empty string, got {self.name!r}")
        t = float(self.half_life_s)
        if not math.isfinite(t) or t <= 0.0:
            raise InputError(f"half_life_s of {self.name} must be finite and > 0, got {t!r}")
        object.__setattr__(self, "half_life_s", t)
        lines = tuple(self.lines)
        for line in lines:
            if not isinstance(line, EmissionLine):
                raise InputError(f"lines of {self.name} must be EmissionLine, got {line!r}")
        object.__setattr__(self, "lines", lines)
        if self.beta_spectrum is not None and not isinstance(self.beta_spectrum, BetaSpectrum):
            raise InputError(
                f"beta_spectrum of {self.name} must be a BetaSpectrum or None, "
                f"got {type(self.beta_spectrum).__name__}"
            )
        daughters = tuple((str(d), float(b)) for d, b in self.daughters)
        for d, b in daughters:
            if not (0.0 <= b <= 1.0):
                raise InputError(
                    f"branching fraction of {self.name} → {d} must be in [0, 1], got {b!r}"
                )
        object.__setattr__(self, "daughters", daughters)

    def __repr__(self) -> str:
        spectrum = "yes" if self.beta_spectrum is not None else "no"
        return (
            f"Nuclide(name={self.name!r}, half_life_s={self.half_life_s!r}, "
            f"<{len(self.lines)} lines>, beta_spectrum={spectrum})"
        )

    @property
    def decay_constant_per_s(self) -> float:
        """Decay constant λ = ln 2 / T½ (s⁻¹)."""
        return math.log(2.0) / self.half_life_s

    def energy_per_decay_mev(
        self, radiation: RadiationType | str | Iterable[RadiationType | str]
    ) -> float:
        """Energy emitted per decay by one or several radiation types (MeV).

        Sum over the discrete lines of ``energy_mev × yield_per_decay``; for beta branches the
        energy is the branch mean energy, so this is the ICRP-107 mean energy per decay.

        Parameters
        ----------
        radiation : RadiationType, str or iterable of them
            One type (``RadiationType.GAMMA`` or ``"gamma"``) or several.

        Returns
        -------
        float
            Energy per decay (MeV); 0 when the nuclide has no line of those types.
        """
        if isinstance(radiation, str):
            wanted = {_as_radiation_type(radiation)}
        else:
            wanted = {_as_radiation_type(r) for r in radiation}
        return math.fsum(
            line.energy_per_decay_mev for line in self.lines if line.radiation in wanted
        )

    @property
    def electron_energy_mev_per_decay(self) -> float:
        """Energy of β⁻, β⁺, internal-conversion and Auger electrons per decay (MeV)."""
        return self.energy_per_decay_mev(_ELECTRON_TYPES)

    @property
    def photon_energy_mev_per_decay(self) -> float:
        """Energy of gamma rays, X-rays and annihilation photons per decay (MeV)."""
        return self.energy_per_decay_mev(_PHOTON_TYPES)

    def photon_lines(
        self, min_yield: float = 0.0, min_energy_mev: float = 0.0
    ) -> tuple[EmissionLine, ...]:
        """Photon lines (gamma, X, annihilation) at or above a yield and an energy.

        Parameters
        ----------
        min_yield : float
            Smallest yield per decay kept (fraction, not per cent), ≥ 0.
        min_energy_mev : float
            Smallest energy kept (MeV), ≥ 0.

        Returns
        -------
        tuple of EmissionLine
            Sorted by increasing energy.
        """
        y_min = _check_finite_non_negative(min_yield, "min_yield")
        e_min = _check_finite_non_negative(min_energy_mev, "min_energy_mev")
        kept = [
            line
            for line in self.lines
            if line.radiation.is_photon
            and line.yield_per_decay >= y_min
            and line.energy_mev >= e_min
        ]
        return tuple(sorted(kept, key=lambda line: line.energy_mev))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary of the decay data.

        Returns
        -------
        dict
            Keys ``name``, ``half_life_s``, ``decay_constant_per_s``,
            ``electron_energy_mev_per_decay``, ``photon_energy_mev_per_decay``,
            ``energy_per_decay_mev_by_type`` (every :class:`RadiationType` value → MeV per decay),
            ``lines`` (list of ``{"radiation", "energy_mev", "yield_per_decay"}``), ``daughters``
            (list of ``{"name", "branching_fraction"}``) and ``source``. The beta spectrum is not
            included (see :meth:`BetaSpectrum.to_dict`).
        """
        return {
            "name": self.name,
            "half_life_s": self.half_life_s,
            "decay_constant_per_s": self.decay_constant_per_s,
            "electron_energy_mev_per_decay": self.electron_energy_mev_per_decay,
            "photon_energy_mev_per_decay": self.photon_energy_mev_per_decay,
            "energy_per_decay_mev_by_type": {
                t.value: self.energy_per_decay_mev(t) for t in RadiationType
            },
            "lines": [line.to_dict() for line in self.lines],
            "daughters": [{"name": d, "branching_fraction": b} for d, b in self.daughters],
            "source": ICRP107_SOURCE,
        }


# --- names ------------------------------------------------------------------------------------

_ELEMENTS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se "
    "Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb "
    "Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm "
    "Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
).split()
_ELEMENT_BY_LOWER = {s.lower(): s for s in _ELEMENTS}

_SEPARATORS = re.compile(r"[\s_\-‐‑‒–—]+")  # whitespace, underscore, hyphen and dash variants
_SYMBOL_FIRST = re.compile(r"([A-Za-z]{1,2})(\d{1,3})([mMnN]?)")
_MASS_FIRST = re.compile(r"(\d{1,3})([A-Za-z]{1,3})")


def _canonical(symbol: str, mass: str, state: str) -> str | None:
    element = _ELEMENT_BY_LOWER.get(symbol.lower())
    if element is None or int(mass) == 0:
        return None
    return f"{element}-{int(mass)}{state.lower()}"


def normalise_nuclide_name(name: str) -> str:
    """Canonical ICRP-107 spelling of a nuclide name.

    Accepts the element symbol before or after the mass number, in any case, with or without
    separators (space, ``-``, ``_``), and a metastable-state letter ``m`` (or ``n`` for the
    second isomer, as ICRP-107 writes e.g. ``Ir-192n``) after the mass number.

    Parameters
    ----------
    name : str
        E.g. ``"Lu-177"``, ``"Lu177"``, ``"177Lu"``, ``"lu-177"``, ``" 177-Lu "``,
        ``"Tc99m"``, ``"99mTc"``, ``"131I"``.

    Returns
    -------
    str
        ``"<Symbol>-<A>[m|n]"``, e.g. ``"Lu-177"``, ``"Tc-99m"``. Whether ICRP-107 lists the
        nuclide is not checked here (see :func:`get_nuclide`).

    Raises
    ------
    NuclideError
        When ``name`` is not a string or cannot be read as a nuclide name; the message quotes it.

    Notes
    -----
    In the mass-first form a letter ``m``/``n`` right after the mass number is read as the
    isomeric state only when the rest is not itself an element symbol: ``"95Nb"`` is Nb-95,
    not B-95n.
    """
    if not isinstance(name, str):
        raise NuclideError(f"nuclide name must be a string, got {name!r}")
    compact = _SEPARATORS.sub("", name)
    if m := _SYMBOL_FIRST.fullmatch(compact):
        canonical = _canonical(m.group(1), m.group(2), m.group(3))
        if canonical is not None:
            return canonical
        symbol = m.group(1)
        raise NuclideError(
            f"cannot read {name!r} as a nuclide name: {symbol!r} is not a chemical element symbol"
        )
    if m := _MASS_FIRST.fullmatch(compact):
        mass, letters = m.group(1), m.group(2)
        canonical = _canonical(letters, mass, "")
        if canonical is None and len(letters) > 1 and letters[0] in "mMnN":
            canonical = _canonical(letters[1:], mass, letters[0])
        if canonical is not None:
            return canonical
    raise NuclideError(
        f"cannot read {name!r} as a nuclide name; expected e.g. 'Lu-177', '177Lu', 'Tc-99m' "
        "or '99mTc'"
    )


# --- database access --------------------------------------------------------------------------


def _data_folder():
    try:
        return resources.files(_DATA_PACKAGE) / _DATA_FOLDER
    except ModuleNotFoundError:
        raise DependencyError(
            "nuclide data need the 'icrp107-database' package (ICRP-107 decay data); install it "
            "with: pip install 'icrp107-database>=0.0.3'"
        ) from None


def _sort_key(name: str) -> tuple[str, int, str]:
    symbol, rest = name.split("-", 1)
    digits = rest.rstrip("mn")
    return (symbol, int(digits), rest[len(digits) :])


@functools.cache
def available_nuclides() -> tuple[str, ...]:
    """Names of every nuclide in ICRP-107 (1252 in icrp107-database 0.0.3).

    Returns
    -------
    tuple of str
        Canonical names, sorted by element symbol, mass number, then isomeric state.
    """
    names = [
        entry.name[: -len(".json")]
        for entry in _data_folder().iterdir()
        if entry.name.endswith(".json")
    ]
    return tuple(sorted(names, key=_sort_key))


def _read_record(name: str) -> dict[str, Any]:
    """Decoded JSON record of one nuclide (the files are double-encoded JSON)."""
    path = _data_folder() / f"{name}.json"
    record: Any = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(record, str):
        record = json.loads(record)
    if not isinstance(record, dict):
        raise NuclideError(f"ICRP-107 file {path}: expected a JSON object, got {type(record)}")
    missing = [k for k in ("name", "half_life", "time_unit", "emissions") if k not in record]
    if missing:
        raise NuclideError(f"ICRP-107 file {path}: missing field(s) {', '.join(missing)}")
    return record


@functools.cache
def _load_nuclide(name: str) -> Nuclide:
    """Build the :class:`Nuclide` of a canonical name known to be in the database."""
    record = _read_record(name)
    where = f"ICRP-107 record {name}"
    unit = record["time_unit"]
    if unit not in _TIME_UNITS_S:
        raise NuclideError(
            f"{where}: half-life unit {unit!r} not understood; expected one of "
            f"{', '.join(_TIME_UNITS_S)}"
        )
    half_life_s = float(record["half_life"]) * _TIME_UNITS_S[unit]

    emissions: dict[str, Any] = record["emissions"]
    unknown = sorted(set(emissions) - set(_ICRP107_TYPES) - {_SPECTRUM_KEY})
    if unknown:
        raise NuclideError(f"{where}: unknown emission type(s) {unknown}")
    lines: list[EmissionLine] = []
    for key, radiation in _ICRP107_TYPES.items():
        pairs = sorted((float(e), float(y)) for e, y in emissions.get(key) or ())
        lines.extend(EmissionLine(radiation, e, y) for e, y in pairs)

    spectrum = None
    table = emissions.get(_SPECTRUM_KEY) or []
    if table:
        grid = np.asarray(table, dtype=np.float64)
        if grid.ndim != 2 or grid.shape[1] != 2:
            raise NuclideError(f"{where}: beta spectrum is not a list of [E, p] pairs")
        spectrum = BetaSpectrum(energy_mev=grid[:, 0], density_per_mev=grid[:, 1])

    return Nuclide(
        name=str(record["name"]),
        half_life_s=half_life_s,
        lines=tuple(lines),
        beta_spectrum=spectrum,
        daughters=(),
    )


@functools.cache
def _available_set() -> frozenset[str]:
    return frozenset(available_nuclides())


def _suggestions(text: str, n: int = 5) -> list[str]:
    """Close ICRP-107 names: isotopes of the same element nearest in mass, then difflib's."""
    names = available_nuclides()
    found: list[str] = []
    if (m := re.fullmatch(r"([A-Z][a-z]?)-(\d+)[mn]?", text)) is not None:
        symbol, mass = m.group(1), int(m.group(2))
        same = [x for x in names if x.split("-", 1)[0] == symbol]
        same.sort(key=lambda x: (abs(_sort_key(x)[1] - mass), _sort_key(x)))
        found.extend(same[:3])
    by_lower = {x.lower(): x for x in names}
    for c in difflib.get_close_matches(text.lower(), list(by_lower), n=n, cutoff=0.6):
        if by_lower[c] not in found:
            found.append(by_lower[c])
    return found[:n]


@functools.lru_cache(maxsize=512)
def get_nuclide(name: str) -> Nuclide:
    """Decay data of a nuclide from ICRP-107.

    Parameters
    ----------
    name : str
        Any spelling accepted by :func:`normalise_nuclide_name` (``"Lu-177"``, ``"177Lu"``,
        ``"tc99m"`` …).

    Returns
    -------
    Nuclide
        The same (cached) object for every spelling of one nuclide.

    Raises
    ------
    NuclideError
        When the name cannot be read or ICRP-107 does not list the nuclide; the message quotes
        the name and suggests close names.
    DependencyError
        When the icrp107-database package is not installed.

    References
    ----------
    ICRP Publication 107, Ann. ICRP 38(3), 2008, doi:10.1016/j.icrp.2008.10.004.
    """
    try:
        canonical = normalise_nuclide_name(name)
    except NuclideError as exc:
        close = _suggestions(name.strip()) if isinstance(name, str) else []
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise NuclideError(f"{exc}{hint}") from None
    if canonical not in _available_set():
        close = _suggestions(canonical)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        shown = repr(name) if name == canonical else f"{name!r} (read as {canonical})"
        raise NuclideError(f"nuclide {shown} is not in ICRP-107{hint}")
    return _load_nuclide(canonical)
