"""CT numbers (HU) → mass density and elemental composition (Schneider et al. 2000).

Schneider, Bortfeld & Schlegel (2000), "Correlation between CT numbers and tissue parameters
needed for Monte Carlo simulations of clinical dose distributions", Phys Med Biol 45:459–478,
doi:10.1088/0031-9155/45/2/314.

* **Density**: piecewise-linear interpolation through the calibration points of the Schneider
  table as distributed with GATE (HU, g/cm³): (−1000, 0.00121), (−98, 0.93), (−97, 0.930486),
  (14, 1.03), (23, 1.031), (100, 1.1199), (101, 1.0762), (1600, 1.9642). The jumps at −98/−97
  and 100/101 separate the air–lung–adipose, soft-tissue and bone calibration lines of the paper.
* **Composition**: the 24 HU bins of Schneider et al.'s Table 6 (air, lung, five adipose–
  soft-tissue mixtures, soft tissue, connective tissue, fifteen marrow–bone mixtures), each a
  :class:`~dosimetry.materials.compositions.Material`. The densest bin is ICRU-46 cortical bone.
* **Range**: [−1000, 1600] HU. CT numbers outside are clipped to the range, with one warning
  (:class:`HUClipWarning`) giving the number of clipped voxels. Values above 1600 HU (metal,
  contrast, dental amalgam) are outside what the paper parametrises; they become the densest
  bone.

The same table feeds our Monte Carlo (voxel-wise density, bin composition) and, through
:func:`material_table`, the GATE bridge (which needs discrete materials: bins are split into HU
sub-ranges whose density span is at most a tolerance), so both engines see one patient.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dosimetry.errors import InputError
from dosimetry.io.atomic import atomic_write_text
from dosimetry.materials.compositions import Material

__all__ = [
    "HU_RANGE",
    "SCHNEIDER_DENSITY_POINTS",
    "CTMaterialMap",
    "HUBin",
    "HUClipWarning",
    "MaterialTableRow",
    "ct_to_materials",
    "hu_to_bin_index",
    "hu_to_density",
    "material_table",
    "schneider_bins",
    "write_material_table",
]

SCHNEIDER_SOURCE = "Schneider, Bortfeld & Schlegel 2000, Phys Med Biol 45:459, " \
                   "doi:10.1088/0031-9155/45/2/314"

#: HU → density calibration points (HU, g/cm³); linear in between.
SCHNEIDER_DENSITY_POINTS: tuple[tuple[float, float], ...] = (
    (-1000.0, 1.21e-3),
    (-98.0, 0.93),
    (-97.0, 0.930486),
    (14.0, 1.03),
    (23.0, 1.031),
    (100.0, 1.1199),
    (101.0, 1.0762),
    (1600.0, 1.9642),
)

#: CT-number range covered by the table (HU); values outside are clipped.
HU_RANGE: tuple[float, float] = (-1000.0, 1600.0)

# Schneider et al. 2000, Table 6: lower HU edge, name, mass fractions (%) of
# H C N O Na Mg P S Cl Ar K Ca. Each bin runs to the next bin's lower edge; the last to 1600.
_ELEMENTS_Z = (1, 6, 7, 8, 11, 12, 15, 16, 17, 18, 19, 20)
_BINS_PERCENT: tuple[tuple[float, str, tuple[float, ...]], ...] = (
    (-1000, "air", (0, 0, 75.5, 23.2, 0, 0, 0, 0, 0, 1.3, 0, 0)),
    (-950, "lung", (10.3, 10.5, 3.1, 74.9, 0.2, 0, 0.2, 0.3, 0.3, 0, 0.2, 0)),
    (-120, "adipose-1", (11.6, 68.1, 0.2, 19.8, 0.1, 0, 0, 0.1, 0.1, 0, 0, 0)),
    (-82, "adipose-2", (11.3, 56.7, 0.9, 30.8, 0.1, 0, 0, 0.1, 0.1, 0, 0, 0)),
    (-52, "adipose-3", (11.0, 45.8, 1.5, 41.1, 0.1, 0, 0.1, 0.2, 0.2, 0, 0, 0)),
    (-22, "adipose-4", (10.8, 35.6, 2.2, 50.9, 0, 0, 0.1, 0.2, 0.2, 0, 0, 0)),
    (8, "adipose-5", (10.6, 28.4, 2.6, 57.8, 0, 0, 0.1, 0.2, 0.2, 0, 0.1, 0)),
    (19, "soft-tissue", (10.3, 13.4, 3.0, 72.3, 0.2, 0, 0.2, 0.2, 0.2, 0, 0.2, 0)),
    (80, "connective-tissue", (9.4, 20.7, 6.2, 62.2, 0.6, 0, 0, 0.6, 0.3, 0, 0, 0)),
    (120, "marrow-bone-01", (9.5, 45.5, 2.5, 35.5, 0.1, 0, 2.1, 0.1, 0.1, 0, 0.1, 4.5)),
    (200, "marrow-bone-02", (8.9, 42.3, 2.7, 36.3, 0.1, 0, 3.0, 0.1, 0.1, 0, 0.1, 6.4)),
    (300, "marrow-bone-03", (8.2, 39.1, 2.9, 37.2, 0.1, 0, 3.9, 0.1, 0.1, 0, 0.1, 8.3)),
    (400, "marrow-bone-04", (7.6, 36.1, 3.0, 38.0, 0.1, 0.1, 4.7, 0.2, 0.1, 0, 0, 10.1)),
    (500, "marrow-bone-05", (7.1, 33.5, 3.2, 38.7, 0.1, 0.1, 5.4, 0.2, 0, 0, 0, 11.7)),
    (600, "marrow-bone-06", (6.6, 31.0, 3.3, 39.4, 0.1, 0.1, 6.1, 0.2, 0, 0, 0, 13.2)),
    (700, "marrow-bone-07", (6.1, 28.7, 3.5, 40.0, 0.1, 0.1, 6.7, 0.2, 0, 0, 0, 14.6)),
    (800, "marrow-bone-08", (5.6, 26.5, 3.6, 40.5, 0.1, 0.2, 7.3, 0.3, 0, 0, 0, 15.9)),
    (900, "marrow-bone-09", (5.2, 24.6, 3.7, 41.1, 0.1, 0.2, 7.8, 0.3, 0, 0, 0, 17.0)),
    (1000, "marrow-bone-10", (4.9, 22.7, 3.8, 41.6, 0.1, 0.2, 8.3, 0.3, 0, 0, 0, 18.1)),
    (1100, "marrow-bone-11", (4.5, 21.0, 3.9, 42.0, 0.1, 0.2, 8.8, 0.3, 0, 0, 0, 19.2)),
    (1200, "marrow-bone-12", (4.2, 19.4, 4.0, 42.5, 0.1, 0.2, 9.2, 0.3, 0, 0, 0, 20.1)),
    (1300, "marrow-bone-13", (3.9, 17.9, 4.1, 42.9, 0.1, 0.2, 9.6, 0.3, 0, 0, 0, 21.0)),
    (1400, "marrow-bone-14", (3.6, 16.5, 4.2, 43.2, 0.1, 0.2, 10.0, 0.3, 0, 0, 0, 21.9)),
    (1500, "marrow-bone-15", (3.4, 15.5, 4.2, 43.5, 0.1, 0.2, 10.3, 0.3, 0, 0, 0, 22.5)),
)


class HUClipWarning(UserWarning):
    """CT numbers outside the Schneider table range were clipped to it."""


@dataclass(frozen=True)
class HUBin:
    """One composition bin of the HU table: ``hu_min ≤ HU < hu_max`` (the last bin is closed).

    ``material.density_gcm3`` is the calibration density at the bin's centre; voxel densities
    follow :func:`hu_to_density` within the bin.
    """

    hu_min: float
    hu_max: float
    material: Material


def hu_to_density(hu: np.ndarray | float) -> np.ndarray:
    """Mass density (g/cm³) from CT numbers by the Schneider calibration.

    Parameters
    ----------
    hu : array_like
        CT numbers (HU), any shape. Values outside :data:`HU_RANGE` take the density of the
        nearest end (no warning here; see :func:`ct_to_materials`).

    Returns
    -------
    numpy.ndarray
        Density (g/cm³), float64, same shape.
    """
    pts = np.asarray(SCHNEIDER_DENSITY_POINTS, dtype=np.float64)
    return np.interp(np.asarray(hu, dtype=np.float64), pts[:, 0], pts[:, 1])


@functools.cache
def schneider_bins() -> tuple[HUBin, ...]:
    """The 24 composition bins of Schneider et al. 2000 (Table 6), ascending in HU."""
    edges = [b[0] for b in _BINS_PERCENT] + [HU_RANGE[1]]
    bins = []
    for k, (lo, name, percent) in enumerate(_BINS_PERCENT):
        hi = edges[k + 1]
        comp = tuple((z, p / 100.0) for z, p in zip(_ELEMENTS_Z, percent, strict=True) if p > 0)
        rho = float(hu_to_density(0.5 * (lo + hi)))
        bins.append(HUBin(float(lo), float(hi),
                          Material(name, rho, comp, None, f"{SCHNEIDER_SOURCE}, Table 6")))
    return tuple(bins)


def hu_to_bin_index(hu: np.ndarray) -> np.ndarray:
    """Index into :func:`schneider_bins` of each CT number (clipped to the table range).

    Returns
    -------
    numpy.ndarray
        int16, same shape as ``hu``.
    """
    lower = np.array([b.hu_min for b in schneider_bins()])
    idx = np.searchsorted(lower, np.asarray(hu, dtype=np.float64), side="right") - 1
    return np.clip(idx, 0, lower.size - 1).astype(np.int16)


@dataclass(frozen=True, eq=False)
class CTMaterialMap:
    """A CT converted to materials.

    Attributes
    ----------
    material_index : numpy.ndarray
        (z, y, x) int16 index into ``materials``.
    density_gcm3 : numpy.ndarray
        (z, y, x) float32 voxel mass density (g/cm³).
    materials : tuple of Material
        The composition bins (nominal densities at bin centres).
    n_clipped_low, n_clipped_high : int
        Voxels below / above :data:`HU_RANGE` that were clipped.
    """

    material_index: np.ndarray
    density_gcm3: np.ndarray
    materials: tuple[Material, ...]
    n_clipped_low: int
    n_clipped_high: int


def ct_to_materials(hu: np.ndarray, what: str = "CT") -> CTMaterialMap:
    """Convert CT numbers to material bins and voxel densities (Schneider et al. 2000).

    Parameters
    ----------
    hu : numpy.ndarray
        CT numbers (HU), (z, y, x).
    what : str
        Name of the image for messages (e.g. the file name).

    Returns
    -------
    CTMaterialMap

    Warns
    -----
    HUClipWarning
        When voxels fall outside :data:`HU_RANGE`; the message counts them.

    Raises
    ------
    InputError
        When ``hu`` holds non-finite values.
    """
    hu = np.asarray(hu, dtype=np.float64)
    if not np.all(np.isfinite(hu)):
        n_bad = int(np.size(hu) - np.count_nonzero(np.isfinite(hu)))
        raise InputError(f"{what}: {n_bad} voxels are not finite (NaN or inf)")
    lo, hi = HU_RANGE
    n_low = int(np.count_nonzero(hu < lo))
    n_high = int(np.count_nonzero(hu > hi))
    if n_low or n_high:
        warnings.warn(
            f"{what}: {n_low} voxels below {lo:g} HU and {n_high} above {hi:g} HU (of "
            f"{hu.size}) were clipped to the Schneider 2000 table range [{lo:g}, {hi:g}] HU",
            HUClipWarning,
            stacklevel=2,
        )
        hu = np.clip(hu, lo, hi)
    return CTMaterialMap(
        material_index=hu_to_bin_index(hu),
        density_gcm3=hu_to_density(hu).astype(np.float32),
        materials=tuple(b.material for b in schneider_bins()),
        n_clipped_low=n_low,
        n_clipped_high=n_high,
    )


@dataclass(frozen=True)
class MaterialTableRow:
    """One row of the exported HU → material table: ``hu_min ≤ HU < hu_max``.

    ``material.density_gcm3`` is the density assigned to the whole row (the calibration density
    at the row's HU midpoint); ``density_min_gcm3``/``density_max_gcm3`` give the span the
    calibration covers within the row.
    """

    hu_min: float
    hu_max: float
    density_min_gcm3: float
    density_max_gcm3: float
    material: Material

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready row."""
        return {
            "hu_min": self.hu_min,
            "hu_max": self.hu_max,
            "density_gcm3": self.material.density_gcm3,
            "density_min_gcm3": self.density_min_gcm3,
            "density_max_gcm3": self.density_max_gcm3,
            **{k: v for k, v in self.material.to_dict().items() if k != "density_gcm3"},
        }


def material_table(density_tolerance_gcm3: float | None = None) -> tuple[MaterialTableRow, ...]:
    """The HU → (density, composition) table as discrete rows, for engines that need them.

    Parameters
    ----------
    density_tolerance_gcm3 : float or None
        None: one row per composition bin. A value > 0: bins are split into equal HU sub-ranges
        until the calibration density varies by at most this much within a row (what GATE's
        ``HounsfieldUnit_to_material`` does with its density tolerance).

    Returns
    -------
    tuple of MaterialTableRow
        Contiguous rows covering :data:`HU_RANGE`, ascending.
    """
    if density_tolerance_gcm3 is not None and not density_tolerance_gcm3 > 0:
        raise InputError(f"density_tolerance_gcm3 must be > 0, got {density_tolerance_gcm3!r}")
    rows = []
    for b in schneider_bins():
        n_sub = 1
        if density_tolerance_gcm3 is not None:
            hu_fine = np.linspace(b.hu_min, b.hu_max, 2001)
            rho = hu_to_density(hu_fine)
            # the calibration is piecewise linear: the span is ≤ max |slope| × width
            span = float(rho.max() - rho.min())
            n_sub = max(1, int(np.ceil(span / density_tolerance_gcm3 - 1e-12)))
        edges = np.linspace(b.hu_min, b.hu_max, n_sub + 1)
        for k in range(n_sub):
            lo, hi = float(edges[k]), float(edges[k + 1])
            rho = hu_to_density(np.linspace(lo, hi, 257))
            mid = float(hu_to_density(0.5 * (lo + hi)))
            name = b.material.name if n_sub == 1 else f"{b.material.name}-{k:02d}"
            mat = Material(name, mid, b.material.composition, None, b.material.source)
            rows.append(MaterialTableRow(lo, hi, float(rho.min()), float(rho.max()), mat))
    return tuple(rows)


def write_material_table(
    path: str | os.PathLike[str], density_tolerance_gcm3: float | None = None
) -> Path:
    """Write :func:`material_table` as JSON (atomically) and return the path.

    The file holds ``{"source", "hu_range", "density_points", "rows": [...]}``.
    """
    rows = material_table(density_tolerance_gcm3)
    doc = {
        "source": SCHNEIDER_SOURCE,
        "hu_range": list(HU_RANGE),
        "density_points": [list(p) for p in SCHNEIDER_DENSITY_POINTS],
        "density_tolerance_gcm3": density_tolerance_gcm3,
        "rows": [r.to_dict() for r in rows],
    }
    return atomic_write_text(path, json.dumps(doc, indent=1))
