"""Collimators and the Gaussian collimator–detector response (CDR) of parallel-hole SPECT.

Collimator data come from PyTomography's collimator table ``pytomography/data/collim.col``,
which is the collimator database of the SIMIND Monte Carlo program (Ljungberg & Strand 1989,
Comput Methods Programs Biomed 29:257, doi:10.1016/0169-2607(89)90111-9): hole diameter,
septal thickness and hole length per collimator code (``G8-MEGP``, ``SY-ME`` …). DICOM
headers name collimators by the vendor's short name (CollimatorGridName (0018,1180), e.g.
``MEGP`` on GE, ``ME``/``MELP`` on Siemens); :func:`resolve_collimator` maps those names to
table codes for the manufacturer, and fails with the list of known names otherwise.

CDR model (the one PyTomography's ``get_psfmeta_from_scanner_params`` builds): the geometric
resolution of a parallel-hole collimator at distance d from its face is
``FWHM_g(d) = D·(L_eff + d)/L_eff`` with hole diameter D and effective hole length
``L_eff = L − 2/μ_Pb(E)`` (Anger 1964, in Cherry, Sorenson & Phelps, *Physics in Nuclear
Medicine*, 4th ed. 2012, ch. 14; the 2/μ term accounts for penetration at the hole edges);
it is combined in quadrature with the intrinsic resolution R_i of the camera, scaled from
140 keV as E^−½ (Anger-camera light statistics). As Gaussian σ:
``σ(d) = √((a·d + b)² + c²)`` with a = D/L_eff/2.3548, b = D/2.3548, c = R_i(E)/2.3548.
Lead attenuation μ_Pb(E) comes from xraylib (total with coherent scattering; Schoonjans et
al. 2011, doi:10.1016/j.sab.2011.09.011): 1.03/mm at 208 keV, as NIST XCOM. (PyTomography
fits a two-term function to its NIST lead table across the K edge at 88 keV, which gives
≈ 1.7/mm at 208 keV; its slope a is 1.4 % smaller than ours for G8-MEGP, a negligible
difference in the response.) Septal penetration tails and collimator scatter are
not modelled (they matter for I-131 at 364 keV).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dosimetry.errors import DependencyError, InputError

__all__ = [
    "DEFAULT_INTRINSIC_FWHM_MM_140KEV",
    "FWHM_TO_SIGMA",
    "CollimatorSpec",
    "PSFModel",
    "collimator_table",
    "psf_model",
    "resolve_collimator",
]

#: Density of lead [g/cm³] (CRC Handbook of Chemistry and Physics).
LEAD_DENSITY_GCM3 = 11.35

#: σ = FWHM × this (Gaussian).
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))

#: Nominal intrinsic spatial resolution [mm FWHM] at 140 keV of a NaI(Tl) Anger camera with a
#: 3/8" crystal: vendor data sheets give 3.5–3.9 mm (NEMA NU 1 CFOV) for GE Discovery/Optima
#: and Siemens Symbia/Intevo cameras. A nominal value, not a measurement of the camera at hand;
#: pass the measured one where known.
DEFAULT_INTRINSIC_FWHM_MM_140KEV = 3.8

# Vendor short names (CollimatorGridName, normalised: upper case, no spaces/dashes) → table
# code. GE Discovery 670 / Optima 640 / NM 830–870 share the "870 DR" collimator family (G8-);
# LEGP exists only for Infinia (GI-). Siemens Symbia/Intevo: SY- (Intevo's "MELP", medium
# energy low penetration, is the Symbia ME collimator). Philips BrightView: PB-. Mediso AnyScan:
# MA-.
_VENDOR_NAMES: dict[str, dict[str, str]] = {
    "GE": {
        "LEHR": "G8-LEHR", "LEHRS": "G8-LHRS", "LEUHR": "G8-LUHR", "LUHR": "G8-LUHR",
        "ELEGP": "G8-ELEG", "ELEG": "G8-ELEG", "LEHS": "G8-LEHS", "MEGP": "G8-MEGP",
        "HEGP": "G8-HEGP", "LEGP": "GI-LEGP",
    },
    "SIEMENS": {
        "LEHR": "SY-LEHR", "LEAP": "SY-LEAP", "ME": "SY-ME", "MELP": "SY-ME", "HE": "SY-HE",
    },
    "PHILIPS": {
        "LEGP": "PB-LEGP", "LEHR": "PB-LEHR", "CAHR": "PB-CAHR", "MEGP": "PB-MEGP",
        "HEGP": "PB-HEGP",
    },
    "MEDISO": {
        "LEHR": "MA-LEHR", "LEGP": "MA-LEGP", "LEUHR": "MA-LEUHR", "MEGP": "MA-MEGP",
        "HEGP": "MA-HEGP",
    },
}


@dataclass(frozen=True)
class CollimatorSpec:
    """One parallel-hole collimator of the table.

    Attributes
    ----------
    code : str
        Table code, e.g. ``"G8-MEGP"``.
    hole_diameter_mm, septa_mm, hole_length_mm : float
        Geometry [mm].
    description : str
        The table's comment (e.g. ``"GE 870 DR Medium Energy"``).
    header_name : str or None
        The name the DICOM header gave, when it was resolved from one.
    """

    code: str
    hole_diameter_mm: float
    septa_mm: float
    hole_length_mm: float
    description: str
    header_name: str | None = None

    @property
    def source(self) -> str:
        """Where the numbers come from."""
        return ("PyTomography collimator table data/collim.col (SIMIND collimator database, "
                f"code {self.code})")


@dataclass(frozen=True)
class PSFModel:
    """Gaussian collimator–detector response σ(d) = √((a·d + b)² + c²), d from the collimator.

    Attributes
    ----------
    collimator : CollimatorSpec
    energy_kev : float
        Photon energy the model is built for.
    slope : float
        a, dimensionless (σ per mm of distance).
    intercept_mm : float
        b [mm].
    intrinsic_sigma_mm : float
        c [mm], intrinsic σ at ``energy_kev``.
    intrinsic_fwhm_mm_140kev : float
        The intrinsic FWHM at 140 keV it was scaled from.
    mu_lead_per_mm : float
        μ of lead at ``energy_kev`` [1/mm] used for the effective hole length.
    """

    collimator: CollimatorSpec
    energy_kev: float
    slope: float
    intercept_mm: float
    intrinsic_sigma_mm: float
    intrinsic_fwhm_mm_140kev: float
    mu_lead_per_mm: float

    def sigma_mm(self, distance_mm: float | np.ndarray) -> np.ndarray:
        """σ [mm] of the response at ``distance_mm`` from the collimator face."""
        d = np.asarray(distance_mm, dtype=np.float64)
        return np.sqrt((self.slope * d + self.intercept_mm) ** 2 + self.intrinsic_sigma_mm ** 2)

    def fwhm_mm(self, distance_mm: float | np.ndarray) -> np.ndarray:
        """FWHM [mm] of the response at ``distance_mm``."""
        return self.sigma_mm(distance_mm) / FWHM_TO_SIGMA

    def describe(self) -> str:
        """One line for reports."""
        c = self.collimator
        return (f"{c.code} ({c.description}; hole {c.hole_diameter_mm:g} mm, length "
                f"{c.hole_length_mm:g} mm) at {self.energy_kev:.1f} keV: FWHM "
                f"{float(self.fwhm_mm(0.0)):.1f} mm at the face, "
                f"{float(self.fwhm_mm(100.0)):.1f} mm at 10 cm, "
                f"{float(self.fwhm_mm(200.0)):.1f} mm at 20 cm")

    def to_dict(self) -> dict[str, object]:
        """JSON form."""
        return {"collimator": self.collimator.code, "header_name": self.collimator.header_name,
                "energy_kev": self.energy_kev, "slope": self.slope,
                "intercept_mm": self.intercept_mm, "intrinsic_sigma_mm": self.intrinsic_sigma_mm,
                "intrinsic_fwhm_mm_140kev": self.intrinsic_fwhm_mm_140kev,
                "mu_lead_per_mm": self.mu_lead_per_mm, "source": self.collimator.source}


def _pytomography_data() -> Path:
    spec = importlib.util.find_spec("pytomography")
    if spec is None or not spec.submodule_search_locations:
        raise DependencyError("SPECT reconstruction needs PyTomography: pip install "
                              "'pytomography>=3.4,<4'")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@functools.cache
def collimator_table() -> dict[str, CollimatorSpec]:
    """Every parallel-hole collimator of PyTomography's table, by code.

    Records start with ``*``: code, hole diameter, septa, length (cm), hole shape, collimator
    type (0 = parallel; fan-beam and pinhole records are left out), …, comment.
    """
    path = _pytomography_data() / "collim.col"
    out: dict[str, CollimatorSpec] = {}
    for line in path.read_text(encoding="latin-1").splitlines():
        if not line.startswith("*"):
            continue
        parts = line[1:].split()
        if len(parts) < 6:
            continue
        try:
            diam, septa, length = (float(p) for p in parts[1:4])
            col_type = int(float(parts[5]))
        except ValueError:
            continue
        if col_type != 0 or diam <= 0 or length <= 0:
            continue
        code = parts[0].upper()
        comment = " ".join(p for p in parts[13:] if p != "-9.999").strip(' "')
        out.setdefault(code, CollimatorSpec(code, diam * 10.0, septa * 10.0, length * 10.0,
                                            comment or code))
    return out


def _vendor(manufacturer: str | None) -> str | None:
    m = (manufacturer or "").upper()
    if re.search(r"\bGE\b", m) or "GENERAL ELECTRIC" in m:
        return "GE"
    for key in ("SIEMENS", "PHILIPS", "MEDISO"):
        if key in m:
            return key
    return None


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.upper())


def resolve_collimator(name: str | None, manufacturer: str | None = None,
                       where: str = "projections") -> CollimatorSpec:
    """The table entry for a collimator named in a header (or a table code).

    Parameters
    ----------
    name : str or None
        CollimatorGridName (0018,1180) as written (``"MEGP"``), or a table code
        (``"G8-MEGP"``, case-insensitive).
    manufacturer : str or None
        Manufacturer (0008,0070), to choose the vendor's table entry.
    where : str
        File name for messages.

    Raises
    ------
    InputError
        Name absent or not known for the manufacturer; the message lists the known names and
        how to choose a code or switch the response off.
    """
    table = collimator_table()
    raw = (name or "").strip()
    if raw.upper() in table:
        spec = table[raw.upper()]
        return CollimatorSpec(spec.code, spec.hole_diameter_mm, spec.septa_mm,
                              spec.hole_length_mm, spec.description, raw)
    vendor = _vendor(manufacturer)
    names = _VENDOR_NAMES.get(vendor or "", {})
    code = names.get(_normalise(raw)) if raw else None
    if code is not None and code in table:
        spec = table[code]
        return CollimatorSpec(spec.code, spec.hole_diameter_mm, spec.septa_mm,
                              spec.hole_length_mm, spec.description, raw)
    known = ", ".join(sorted(names)) if names else "none for this manufacturer"
    what = f"CollimatorGridName (0018,1180) {raw!r}" if raw else \
        "CollimatorGridName (0018,1180) is absent"
    raise InputError(
        f"{where}: {what} (manufacturer {manufacturer or 'unknown'!r}) is not a known "
        f"collimator; known header names: {known}. Give a code of PyTomography's collimator "
        "table (e.g. collimator='G8-MEGP' or --collimator G8-MEGP; list: "
        "pytomography.utils.print_collimator_parameters()) or switch the collimator response "
        "off (psf=False / --no-psf)")


@functools.cache
def _mu_lead_per_mm(energy_kev: float) -> float:
    """μ of lead [1/mm] at ``energy_kev``: xraylib total attenuation with coherent scattering
    (:func:`dosimetry.materials.photon.mass_attenuation_cm2_g`) × 11.35 g/cm³."""
    from dosimetry import units
    from dosimetry.materials.compositions import Material
    from dosimetry.materials.photon import mass_attenuation_cm2_g

    lead = Material("lead", LEAD_DENSITY_GCM3, ((82, 1.0),), None, "pure lead")
    mu_rho = float(mass_attenuation_cm2_g(lead, units.kev_to_mev(energy_kev)))
    return mu_rho * LEAD_DENSITY_GCM3 / units.CM


def psf_model(collimator: CollimatorSpec | str, energy_kev: float, *,
              intrinsic_fwhm_mm_140kev: float = DEFAULT_INTRINSIC_FWHM_MM_140KEV,
              manufacturer: str | None = None) -> PSFModel:
    """The Gaussian CDR of ``collimator`` at ``energy_kev`` (see the module notes).

    Parameters
    ----------
    collimator : CollimatorSpec or str
        Table entry, table code (``"SY-ME"``) or header name with ``manufacturer``.
    energy_kev : float
        Photopeak energy [keV], 20–1000.
    intrinsic_fwhm_mm_140kev : float
        Intrinsic resolution FWHM [mm] at 140 keV (0 switches it off).
    manufacturer : str, optional
        For header names.

    Returns
    -------
    PSFModel
    """
    spec = collimator if isinstance(collimator, CollimatorSpec) else \
        resolve_collimator(collimator, manufacturer, where="collimator")
    e = float(energy_kev)
    if not (math.isfinite(e) and 20.0 <= e <= 1000.0):
        raise InputError(f"photopeak energy {energy_kev!r} keV is outside 20–1000 keV")
    ri = float(intrinsic_fwhm_mm_140kev)
    if not (math.isfinite(ri) and 0.0 <= ri < 50.0):
        raise InputError(f"intrinsic resolution {intrinsic_fwhm_mm_140kev!r} mm FWHM is outside "
                         "0–50 mm")
    mu = _mu_lead_per_mm(e)
    l_eff = spec.hole_length_mm - 2.0 / mu
    if l_eff <= 0:
        raise InputError(f"collimator {spec.code}: effective hole length {l_eff:.2f} mm ≤ 0 at "
                         f"{e:g} keV (the collimator is transparent at this energy)")
    slope = spec.hole_diameter_mm / l_eff * FWHM_TO_SIGMA
    intercept = spec.hole_diameter_mm * FWHM_TO_SIGMA
    intrinsic = ri * (e / 140.0) ** -0.5 * FWHM_TO_SIGMA
    return PSFModel(spec, e, slope, intercept, intrinsic, ri, mu)
