"""Materials: compositions, CT (HU) → density and composition, photon and electron data.

* :mod:`~dosimetry.materials.compositions` — :class:`Material` and the named materials;
* :mod:`~dosimetry.materials.hu` — Schneider et al. 2000 HU tables and their export;
* :mod:`~dosimetry.materials.photon` — photon cross sections from xraylib;
* :mod:`~dosimetry.materials.electron` — electron stopping powers, ranges, transport cross
  sections.

Importing is cheap: xraylib is loaded on first use.
"""

from dosimetry.materials.compositions import Material, MaterialName, get_material, named_materials
from dosimetry.materials.hu import (
    HU_RANGE,
    CTMaterialMap,
    HUClipWarning,
    MaterialTableRow,
    ct_to_materials,
    hu_to_density,
    material_table,
    schneider_bins,
    write_material_table,
)

__all__ = [
    "HU_RANGE",
    "CTMaterialMap",
    "HUClipWarning",
    "Material",
    "MaterialName",
    "MaterialTableRow",
    "ct_to_materials",
    "get_material",
    "hu_to_density",
    "material_table",
    "named_materials",
    "schneider_bins",
    "write_material_table",
]
