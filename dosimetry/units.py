"""Units: the one internal system and the conversions at the edges.

Internal units (see DESIGN.md): length mm, time s, activity Bq, energy MeV, absorbed dose Gy,
mass g, density g/cm³. Anything else (MBq, h, keV, GBq, MBq·h, Bq/mL, cps/MBq) is converted here
and only at I/O, CLI and report boundaries. Names that carry a non-internal unit say so
(``activity_mbq``, ``half_life_h``).

All factors are exact SI definitions (BIPM SI Brochure, 9th ed., 2019) except the electron-volt,
whose value in joules is exact since the 2019 SI redefinition.
"""

from __future__ import annotations

from typing import Final

# --- time -------------------------------------------------------------------------------------
SECOND: Final = 1.0
MINUTE: Final = 60.0
HOUR: Final = 3600.0
DAY: Final = 86400.0
YEAR: Final = 365.25 * DAY  # Julian year, the convention of ICRP-107 half-lives in "y"

# --- activity ---------------------------------------------------------------------------------
BQ: Final = 1.0
KBQ: Final = 1e3
MBQ: Final = 1e6
GBQ: Final = 1e9
MCI: Final = 3.7e7  # 1 mCi = 3.7e7 Bq exactly (definition of the curie)

# --- energy -----------------------------------------------------------------------------------
MEV: Final = 1.0
KEV: Final = 1e-3
EV: Final = 1e-6
JOULE_PER_MEV: Final = 1.602176634e-13  # exact: e = 1.602176634e-19 C

# --- length, volume, mass ---------------------------------------------------------------------
MM: Final = 1.0
CM: Final = 10.0
ML_PER_MM3: Final = 1e-3  # 1 mL = 1 cm³ = 1000 mm³
G_PER_KG: Final = 1e3

# --- dose -------------------------------------------------------------------------------------
GY: Final = 1.0
MGY: Final = 1e-3


def mbq_to_bq(x):
    """MBq → Bq."""
    return x * MBQ


def bq_to_mbq(x):
    """Bq → MBq."""
    return x / MBQ


def gbq_to_bq(x):
    """GBq → Bq."""
    return x * GBQ


def hours_to_s(x):
    """h → s."""
    return x * HOUR


def s_to_hours(x):
    """s → h."""
    return x / HOUR


def kev_to_mev(x):
    """keV → MeV."""
    return x * KEV


def mev_to_kev(x):
    """MeV → keV."""
    return x / KEV


def mbq_h_to_bq_s(x):
    """Time-integrated activity MBq·h → Bq·s."""
    return x * MBQ * HOUR


def bq_s_to_mbq_h(x):
    """Time-integrated activity Bq·s → MBq·h."""
    return x / (MBQ * HOUR)


def mev_to_joule(x):
    """MeV → J."""
    return x * JOULE_PER_MEV


def bq_per_ml_to_bq_per_mm3(x):
    """Activity concentration Bq/mL → Bq/mm³."""
    return x * ML_PER_MM3


def voxel_volume_ml(spacing_mm) -> float:
    """Volume of one voxel in mL from its spacing (mm, any order)."""
    v = 1.0
    for s in spacing_mm:
        v *= float(s)
    return v * ML_PER_MM3


def cps_per_mbq_to_cps_per_bq(x):
    """Sensitivity cps/MBq → cps/Bq."""
    return x / MBQ
