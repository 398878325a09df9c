"""Energy windows: which is the photopeak, which are its scatter windows, and the TEW estimate.

Triple-energy-window (TEW) scatter estimate (Ogawa, Harata, Ichihara, Kubo & Hashimoto 1991,
"A practical method for position-dependent Compton-scatter correction in single photon emission
CT", IEEE Trans Med Imaging 10:408–412, doi:10.1109/42.97591): the scatter spectrum under the
photopeak window is taken as the trapezoid whose sides are the count densities (counts per keV)
in two narrow windows adjoining the photopeak window, so per projection pixel

    S = (C_lower / w_lower + C_upper / w_upper) · w_peak / 2

with C the counts and w the widths [keV] of the lower and upper scatter windows and of the
photopeak window. The estimate is an expectation of the scatter in the photopeak window and
enters the reconstruction as the additive term.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dosimetry.errors import InputError

__all__ = [
    "EnergyWindow",
    "WindowSelection",
    "principal_photopeak_kev",
    "select_windows",
    "tew_scatter",
]

#: A scatter window counts as adjoining the photopeak window when the gap between them is at
#: most this fraction of the photopeak energy (GE writes 186.31/187.2 keV and 228.8/229.63 keV;
#: vendors leave ≤ 1 % gaps).
ADJACENT_GAP_FRACTION = 0.05


@dataclass(frozen=True)
class EnergyWindow:
    """One energy window of an acquisition.

    Attributes
    ----------
    index : int
        Position in the EnergyWindowInformationSequence (0-based); EnergyWindowVector values are
        ``index + 1``.
    name : str
        EnergyWindowName (0054,0018), or ``""``.
    lower_kev, upper_kev : float
        Window limits [keV].
    """

    index: int
    name: str
    lower_kev: float
    upper_kev: float

    def __post_init__(self) -> None:
        lo, hi = float(self.lower_kev), float(self.upper_kev)
        if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo < hi):
            raise InputError(f"energy window {self.index + 1} ({self.name or 'unnamed'}): limits "
                             f"{self.lower_kev:g}–{self.upper_kev:g} keV are not 0 ≤ lower < upper")
        object.__setattr__(self, "lower_kev", lo)
        object.__setattr__(self, "upper_kev", hi)

    @property
    def width_kev(self) -> float:
        """Width [keV]."""
        return self.upper_kev - self.lower_kev

    @property
    def centre_kev(self) -> float:
        """Centre [keV]."""
        return 0.5 * (self.lower_kev + self.upper_kev)

    def contains(self, energy_kev: float) -> bool:
        """True when ``energy_kev`` lies within the window (limits included)."""
        return self.lower_kev <= energy_kev <= self.upper_kev

    def describe(self) -> str:
        """``'187.2–228.8 keV (Lu177_EM)'``."""
        name = f" ({self.name})" if self.name else ""
        return f"{self.lower_kev:g}–{self.upper_kev:g} keV{name}"

    def to_dict(self) -> dict[str, object]:
        """JSON form."""
        return {"index": self.index, "name": self.name, "lower_kev": self.lower_kev,
                "upper_kev": self.upper_kev}


@dataclass(frozen=True)
class WindowSelection:
    """The photopeak window and its adjoining scatter windows (indices into ``windows``)."""

    windows: tuple[EnergyWindow, ...]
    photopeak_kev: float
    photopeak: int
    lower: int | None
    upper: int | None
    #: How the photopeak energy was found (``"given"``, ``"nuclide Lu-177 from the header"``…).
    photopeak_source: str
    #: The nuclide the photopeak energy came from, when it came from one.
    nuclide: str | None = None

    @property
    def photopeak_window(self) -> EnergyWindow:
        return self.windows[self.photopeak]

    @property
    def lower_window(self) -> EnergyWindow | None:
        return None if self.lower is None else self.windows[self.lower]

    @property
    def upper_window(self) -> EnergyWindow | None:
        return None if self.upper is None else self.windows[self.upper]


def tew_scatter(lower_counts: np.ndarray, upper_counts: np.ndarray | None,
                width_lower_kev: float, width_upper_kev: float | None,
                width_peak_kev: float) -> np.ndarray:
    """TEW scatter estimate in the photopeak window (Ogawa et al. 1991, see module notes).

    ``S = (C_l / w_l + C_u / w_u) · w_p / 2``; with ``upper_counts`` None the upper window is
    taken to hold no scatter (the form Ogawa et al. use when the upper window is empty), i.e.
    ``S = C_l / w_l · w_p / 2``.

    Parameters
    ----------
    lower_counts, upper_counts : ndarray
        Counts in the lower and upper scatter windows (same shape; any layout).
    width_lower_kev, width_upper_kev, width_peak_kev : float
        Window widths [keV], > 0.

    Returns
    -------
    ndarray
        float32 scatter estimate, shape of the inputs.
    """
    for name, w in (("lower", width_lower_kev), ("peak", width_peak_kev)):
        if not (math.isfinite(float(w)) and float(w) > 0):
            raise InputError(f"TEW: {name} window width {w!r} keV must be > 0")
    lower = np.asarray(lower_counts, dtype=np.float64)
    density = lower / float(width_lower_kev)
    if upper_counts is not None:
        if width_upper_kev is None or not float(width_upper_kev) > 0:
            raise InputError(f"TEW: upper window width {width_upper_kev!r} keV must be > 0")
        upper = np.asarray(upper_counts, dtype=np.float64)
        if upper.shape != lower.shape:
            raise InputError(f"TEW: lower {lower.shape} and upper {upper.shape} window counts "
                             "differ in shape")
        density = density + upper / float(width_upper_kev)
    return (density * (float(width_peak_kev) / 2.0)).astype(np.float32)


def principal_photopeak_kev(nuclide: str) -> float:
    """Energy [keV] of the photon line of highest yield above 50 keV (ICRP-107): Lu-177
    208.4 keV, I-131 364.5 keV, Tc-99m 140.5 keV."""
    from dosimetry.nuclides import get_nuclide

    nuc = get_nuclide(nuclide)
    lines = nuc.photon_lines(min_yield=0.01, min_energy_mev=0.05)
    if not lines:
        raise InputError(f"nuclide {nuc.name} has no photon line above 50 keV with ≥ 1 % yield "
                         "to image")
    best = max(lines, key=lambda line: line.yield_per_decay)
    return best.energy_mev * 1000.0


_NAME_NUCLIDE = re.compile(r"([A-Za-z]{1,2})[\s_\-]?(\d{2,3}m?)")


def _nuclide_from_names(windows: Sequence[EnergyWindow]) -> str | None:
    from dosimetry.errors import NuclideError
    from dosimetry.nuclides import get_nuclide

    found = set()
    for w in windows:
        for sym, mass in _NAME_NUCLIDE.findall(w.name or ""):
            try:
                found.add(get_nuclide(f"{sym}-{mass}").name)
            except NuclideError:
                continue
    return found.pop() if len(found) == 1 else None


def select_windows(windows: Sequence[EnergyWindow], *, photopeak_kev: float | None = None,
                   nuclide: str | None = None, where: str = "projections") -> WindowSelection:
    """Find the photopeak window and the scatter windows adjoining it.

    The photopeak energy is ``photopeak_kev`` when given, else the principal line
    (:func:`principal_photopeak_kev`) of ``nuclide``, else of a nuclide named in the window
    names (GE writes ``Lu177_EM``). The photopeak window is the one containing that energy
    (the narrowest-centred when several do); the lower (upper) scatter window is the one ending
    (starting) nearest the photopeak window's lower (upper) limit within a gap of
    :data:`ADJACENT_GAP_FRACTION` × the energy, or None.

    Raises
    ------
    InputError
        No windows, no photopeak energy to be found, or no window containing it; the message
        lists the windows.
    """
    wins = tuple(windows)
    listing = "; ".join(f"{w.index + 1}: {w.describe()}" for w in wins) or "none"
    if not wins:
        raise InputError(f"{where}: no energy windows (EnergyWindowInformationSequence "
                         "(0054,0012) is empty)")
    nuc: str | None = None
    if photopeak_kev is not None:
        energy = float(photopeak_kev)
        source = "given"
    else:
        nuc = nuclide
        how = "given nuclide"
        if nuc is None:
            nuc = _nuclide_from_names(wins)
            how = "nuclide named in the window names"
        if nuc is None:
            raise InputError(
                f"{where}: cannot tell which energy window is the photopeak (no nuclide in the "
                f"header or window names; windows {listing}); give the nuclide (nuclide='Lu-177',"
                " --nuclide) or the photopeak energy (photopeak_kev=208.4)")
        energy = principal_photopeak_kev(nuc)
        from dosimetry.nuclides import get_nuclide

        nuc = get_nuclide(nuc).name
        source = f"{how}: {nuc} line {energy:.1f} keV"
    holding = [w for w in wins if w.contains(energy)]
    if not holding:
        raise InputError(f"{where}: no energy window contains the photopeak {energy:.1f} keV "
                         f"(windows {listing})")
    peak = min(holding, key=lambda w: (abs(w.centre_kev - energy), w.width_kev))
    gap = ADJACENT_GAP_FRACTION * energy
    lower = [w for w in wins if w is not peak and w.upper_kev <= peak.lower_kev + 1e-6
             and peak.lower_kev - w.upper_kev <= gap]
    upper = [w for w in wins if w is not peak and w.lower_kev >= peak.upper_kev - 1e-6
             and w.lower_kev - peak.upper_kev <= gap]
    lo = max(lower, key=lambda w: w.upper_kev) if lower else None
    hi = min(upper, key=lambda w: w.lower_kev) if upper else None
    return WindowSelection(wins, energy, peak.index, None if lo is None else lo.index,
                           None if hi is None else hi.index, source,
                           None if photopeak_kev is not None else nuc)
