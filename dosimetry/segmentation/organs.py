"""The organ table: voxels, volume, mass and mean CT number of every labelled structure.

Mass is the sum over the structure's voxels of voxel volume × mass density, with the density of
each voxel from its CT number by the Schneider et al. (2000) calibration
(:func:`dosimetry.materials.hu_to_density`, doi:10.1088/0031-9155/45/2/314: piecewise linear,
1.03 g/cm³ at 14 HU, 0.93 g/cm³ at −98 HU, lung around 0.2–0.4 g/cm³). The same calibration
feeds the dose engines, so organ masses here and in the dose report agree. Without a CT the
density of ICRU-46 soft tissue, 1.04 g/cm³ (unverified recollection), is assumed and the table
says so.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dosimetry import units
from dosimetry.io.atomic import atomic_write_text
from dosimetry.io.images import require_same_grid
from dosimetry.segmentation.labelmap import LabelMap
from dosimetry.segmentation.names import StructureKind

#: Density assumed without a CT [g/cm³] (ICRU-46 soft tissue, unverified).
DEFAULT_DENSITY_G_PER_CM3 = 1.04

DENSITY_SOURCE = ("CT number → density by Schneider, Bortfeld & Schlegel 2000, Phys Med Biol "
                  "45:459, doi:10.1088/0031-9155/45/2/314 (dosimetry.materials.hu_to_density)")


@dataclass(frozen=True)
class OrganStats:
    """One row of the organ table (internal units: mL, g, g/cm³, HU)."""

    label: int
    name: str
    kind: StructureKind
    voxels: int
    volume_ml: float
    mass_g: float
    mean_hu: float | None
    mean_density_g_per_cm3: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"label": self.label, "name": self.name, "kind": self.kind.value,
                "voxels": self.voxels, "volume_ml": self.volume_ml, "mass_g": self.mass_g,
                "mean_hu": self.mean_hu,
                "mean_density_g_per_cm3": self.mean_density_g_per_cm3}


@dataclass(frozen=True)
class OrganTable:
    """Rows per structure and how the masses were obtained."""

    rows: tuple[OrganStats, ...]
    density_source: str
    voxel_volume_ml: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``organs.json``)."""
        return {"density_source": self.density_source, "voxel_volume_ml": self.voxel_volume_ml,
                "structures": [r.to_dict() for r in self.rows]}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``organs.json`` atomically."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2,
                                                  ensure_ascii=False) + "\n")

    def __getitem__(self, name: str) -> OrganStats:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no structure {name!r}; have {[r.name for r in self.rows]}")


def organ_table(labels: LabelMap, ct: sitk.Image | None = None) -> OrganTable:
    """Voxels, volume [mL], mass [g] and mean HU of every structure of ``labels``.

    Parameters
    ----------
    labels : LabelMap
    ct : SimpleITK.Image, optional
        CT [HU] on the label map's grid; without it the density is
        :data:`DEFAULT_DENSITY_G_PER_CM3` everywhere and ``mean_hu`` is None.

    Returns
    -------
    OrganTable
        ``mass_g = Σ_voxels V_voxel[mL] · ρ(HU)[g/cm³]`` (1 mL = 1 cm³).

    Raises
    ------
    GeometryError
        The CT is not on the label map's grid.
    """
    lab = np.asarray(sitk.GetArrayViewFromImage(labels.image), dtype=np.int64).ravel()
    v_ml = units.voxel_volume_ml(labels.image.GetSpacing())
    n = max(int(lab.max()) + 1 if lab.size else 1, max((e.label for e in labels.table),
                                                        default=0) + 1)
    counts = np.bincount(lab, minlength=n)
    if ct is not None:
        require_same_grid(labels.image, ct, "label map", "CT")
        from dosimetry.materials import hu_to_density

        hu = np.asarray(sitk.GetArrayViewFromImage(ct), dtype=np.float64).ravel()
        sum_hu = np.bincount(lab, weights=hu, minlength=n)
        sum_rho = np.bincount(lab, weights=hu_to_density(hu), minlength=n)
        source = DENSITY_SOURCE
    else:
        sum_hu = None
        sum_rho = counts * DEFAULT_DENSITY_G_PER_CM3
        source = (f"no CT: uniform density {DEFAULT_DENSITY_G_PER_CM3} g/cm³ (ICRU-46 soft "
                  "tissue) assumed")
    rows = []
    for e in labels.table:
        c = int(counts[e.label])
        rows.append(OrganStats(
            label=e.label, name=e.name, kind=e.kind, voxels=c, volume_ml=c * v_ml,
            mass_g=float(sum_rho[e.label]) * v_ml,
            mean_hu=(float(sum_hu[e.label]) / c if sum_hu is not None and c else None),
            mean_density_g_per_cm3=float(sum_rho[e.label]) / c if c else 0.0))
    return OrganTable(tuple(rows), source, v_ml)
