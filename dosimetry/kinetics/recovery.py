"""Recovery coefficients (partial-volume correction) for small VOIs from a sphere calibration.

A SPECT system's recovery coefficient RC(V) = measured / true activity in a sphere of volume V is
measured with the IEC NEMA body phantom (six spheres, inner diameters 10, 13, 17, 22, 28 and
37 mm; IEC 61675-1 / NEMA NU 2) for each nuclide and reconstruction protocol. It is a property
of *your* camera and reconstruction: rptdose ships no default curve.

:class:`RecoveryCurve` interpolates RC linearly in log(volume) between calibration points and
holds it constant outside them (flagged: extrapolating an RC curve is not supported by data).
The corrected activity is A / RC. The volume uncertainty σ_V reaches the activity through the
slope of the curve: σ_RC/RC = |dRC/dV|·σ_V / RC (Gear et al., EJNMMI 2018,
doi:10.1007/s00259-018-4136-7); when the same VOI is used at every timepoint this term is fully
correlated across timepoints and scales the TIA.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dosimetry.errors import InputError

#: Inner diameters of the IEC NEMA body-phantom spheres [mm].
IEC_SPHERE_DIAMETERS_MM: tuple[float, ...] = (10.0, 13.0, 17.0, 22.0, 28.0, 37.0)


def sphere_volume_ml(diameter_mm: float) -> float:
    """Volume of a sphere [mL] from its diameter [mm]: π d³/6, 1 mL = 1000 mm³."""
    return math.pi * diameter_mm**3 / 6.0 / 1000.0


#: Volumes of the IEC spheres [mL] (0.52 … 26.5 mL).
IEC_SPHERE_VOLUMES_ML: tuple[float, ...] = tuple(sphere_volume_ml(d)
                                                 for d in IEC_SPHERE_DIAMETERS_MM)


@dataclass(frozen=True)
class RecoveryCurve:
    """Recovery coefficient as a function of VOI volume, from a sphere calibration.

    Attributes
    ----------
    volumes_ml : tuple of float
        Calibration volumes [mL], strictly increasing, > 0.
    coefficients : tuple of float
        Measured RC at those volumes, in (0, 1.5].
    source : str
        Where the calibration came from (phantom, date, protocol).
    """

    volumes_ml: tuple[float, ...]
    coefficients: tuple[float, ...]
    source: str = ""

    def __post_init__(self) -> None:
        v = np.asarray(self.volumes_ml, dtype=float)
        c = np.asarray(self.coefficients, dtype=float)
        if v.size != c.size or v.size < 2:
            raise InputError(f"recovery curve needs ≥ 2 (volume, RC) pairs of equal length, got "
                             f"{v.size} volumes and {c.size} coefficients")
        if not np.all(np.isfinite(v)) or np.any(v <= 0):
            raise InputError(f"recovery-curve volumes must be > 0 mL, got {list(v)}")
        if np.any(np.diff(v) <= 0):
            raise InputError(f"recovery-curve volumes must increase strictly, got {list(v)}")
        if not np.all(np.isfinite(c)) or np.any(c <= 0) or np.any(c > 1.5):
            raise InputError(f"recovery coefficients must lie in (0, 1.5], got {list(c)}")
        object.__setattr__(self, "volumes_ml", tuple(float(x) for x in v))
        object.__setattr__(self, "coefficients", tuple(float(x) for x in c))

    @classmethod
    def from_iec_spheres(cls, coefficients: Sequence[float], source: str = "") -> RecoveryCurve:
        """Curve from the six IEC sphere RCs, smallest sphere first."""
        return cls(IEC_SPHERE_VOLUMES_ML, tuple(coefficients), source or "IEC NEMA spheres")

    def in_range(self, volume_ml: float) -> bool:
        """True when ``volume_ml`` lies within the calibrated volumes."""
        return self.volumes_ml[0] <= volume_ml <= self.volumes_ml[-1]

    def rc(self, volume_ml: float | np.ndarray) -> float | np.ndarray:
        """RC at ``volume_ml``: linear in log(volume), constant beyond the calibrated range."""
        x = np.log(np.asarray(volume_ml, dtype=float))
        out = np.interp(x, np.log(self.volumes_ml), self.coefficients)
        return float(out) if out.ndim == 0 else out

    def slope(self, volume_ml: float) -> float:
        """dRC/dV [1/mL] of the interpolant (0 outside the calibrated range)."""
        if not self.in_range(volume_ml):
            return 0.0
        lv = np.log(self.volumes_ml)
        i = int(np.clip(np.searchsorted(lv, math.log(volume_ml)) - 1, 0, len(lv) - 2))
        d_dlogv = (self.coefficients[i + 1] - self.coefficients[i]) / (lv[i + 1] - lv[i])
        return float(d_dlogv / volume_ml)

    def relative_sigma(self, volume_ml: float, sigma_volume_ml: float) -> float:
        """σ_RC/RC from the volume's standard uncertainty (first order)."""
        if sigma_volume_ml < 0:
            raise InputError(f"volume σ must be ≥ 0 mL, got {sigma_volume_ml}")
        return abs(self.slope(volume_ml)) * sigma_volume_ml / float(self.rc(volume_ml))
