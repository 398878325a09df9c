"""Radiobiological parameter sets of tissues: α/β and the repair half-time of sublethal damage.

Each :class:`TissueParameters` carries its source and whether the value was checked against
that source (``verified``). Unverified values are the ones the field uses in practice but whose
primary publication was not checked for this release: read them as defaults to confirm, not as
reference data.

==================  ======  ============  ========================================================
tissue              α/β Gy  T_rep h       source
==================  ======  ============  ========================================================
kidney              2.6     2.8           PyTheranostics defaults; literature origin Barone et al.
                                          2005 / Wessels et al. 2008 (unverified citation)
red-marrow          10      0.5           values common in RPT/RIT BED work; primary source not
                                          checked (unverified)
blood               10      0.5           surrogate of red marrow (same values)
salivary-gland      3       2.5           no tissue-specific value verified: generic
                                          late-responding normal tissue (MIRDcalc defaults)
liver               2.5     1.5           values common in SIRT/RPT BED work (unverified)
tumour              10      1.5           generic tumour, MIRDcalc defaults (unverified)
normal-tissue       3       2.5           generic late-responding normal tissue, MIRDcalc defaults
                                          (unverified)
==================  ======  ============  ========================================================

Spleen, lung, thyroid and whole body fall back to ``normal-tissue`` values (said in ``note``).
Repair is mono-exponential with half-time T_rep (rate μ = ln 2 / T_rep), as in Dale 1985
(Br J Radiol 58:515, doi:10.1259/0007-1285-58-690-515) and MIRD Pamphlet 20 (Wessels et al.,
J Nucl Med 2008;49:1884).
"""

from __future__ import annotations

import math
import re
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dosimetry import units
from dosimetry.errors import InputError

__all__ = [
    "TISSUES",
    "TissueName",
    "TissueParameters",
    "get_tissue",
    "tissue_for_voi",
]


class TissueName(StrEnum):
    """Built-in tissue parameter sets."""

    KIDNEY = "kidney"
    RED_MARROW = "red-marrow"
    BLOOD = "blood"
    SALIVARY_GLAND = "salivary-gland"
    LIVER = "liver"
    SPLEEN = "spleen"
    LUNG = "lung"
    THYROID = "thyroid"
    WHOLE_BODY = "whole-body"
    TUMOUR = "tumour"
    NORMAL_TISSUE = "normal-tissue"


class TissueParameters(BaseModel):
    """Linear-quadratic parameters of one tissue.

    Attributes
    ----------
    name : str
        Tissue name (a :class:`TissueName` value for the built-ins).
    alpha_beta_gy : float
        α/β ratio [Gy], > 0.
    repair_half_time_h : float
        Half-time of mono-exponential repair of sublethal damage [h], > 0.
    source : str
        Where the values come from.
    verified : bool
        Whether the values were checked against ``source`` for this release.
    note : str
        Anything a user should know (fallbacks, surrogates).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    alpha_beta_gy: float = Field(gt=0, description="α/β [Gy].")
    repair_half_time_h: float = Field(gt=0, description="Repair half-time T_rep [h].")
    source: str = ""
    verified: bool = False
    note: str = ""

    @field_validator("alpha_beta_gy", "repair_half_time_h")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"must be finite, got {v}")
        return v

    @property
    def repair_half_time_s(self) -> float:
        """Repair half-time [s]."""
        return units.hours_to_s(self.repair_half_time_h)

    @property
    def repair_rate_per_s(self) -> float:
        """Repair rate μ = ln 2 / T_rep [1/s]."""
        return math.log(2.0) / self.repair_half_time_s

    def with_values(self, alpha_beta_gy: float | None = None,
                    repair_half_time_h: float | None = None) -> TissueParameters:
        """A copy with α/β and/or T_rep replaced (the source then says "user")."""
        if alpha_beta_gy is None and repair_half_time_h is None:
            return self
        data = self.model_dump()
        if alpha_beta_gy is not None:
            data["alpha_beta_gy"] = alpha_beta_gy
        if repair_half_time_h is not None:
            data["repair_half_time_h"] = repair_half_time_h
        data["source"] = "user-supplied"
        data["verified"] = False
        try:
            return TissueParameters.model_validate(data)
        except ValueError as exc:
            raise InputError(f"tissue {self.name!r}: invalid parameters "
                             f"(alpha_beta_gy={alpha_beta_gy!r}, "
                             f"repair_half_time_h={repair_half_time_h!r}): {exc}") from None


_MIRDCALC = "MIRDcalc generic defaults (physics.md; unverified)"
_GENERIC_NOTE = "no tissue-specific value: generic late-responding normal tissue"

#: The built-in parameter sets, keyed by :class:`TissueName`.
TISSUES: dict[str, TissueParameters] = {
    t.name: t
    for t in (
        TissueParameters(
            name=TissueName.KIDNEY, alpha_beta_gy=2.6, repair_half_time_h=2.8,
            source="PyTheranostics defaults; literature origin Barone et al. 2005 / Wessels "
                   "et al. 2008 (citation unverified); animal range of α/β 1.5–3 Gy (Cancer "
                   "Biother Radiopharm 2004;19:378)",
            verified=False),
        TissueParameters(
            name=TissueName.RED_MARROW, alpha_beta_gy=10.0, repair_half_time_h=0.5,
            source="values common in RPT/RIT BED work; primary source not checked",
            verified=False),
        TissueParameters(
            name=TissueName.BLOOD, alpha_beta_gy=10.0, repair_half_time_h=0.5,
            source="surrogate of red marrow (same values, unverified)", verified=False,
            note="blood absorbed dose is the surrogate of red-marrow dose (EANM SOP, Lassmann "
                 "et al. 2008)"),
        TissueParameters(
            name=TissueName.SALIVARY_GLAND, alpha_beta_gy=3.0, repair_half_time_h=2.5,
            source=_MIRDCALC, verified=False, note=_GENERIC_NOTE),
        TissueParameters(
            name=TissueName.LIVER, alpha_beta_gy=2.5, repair_half_time_h=1.5,
            source="values common in SIRT/RPT BED work; primary source not checked",
            verified=False),
        TissueParameters(
            name=TissueName.SPLEEN, alpha_beta_gy=3.0, repair_half_time_h=2.5,
            source=_MIRDCALC, verified=False, note=_GENERIC_NOTE),
        TissueParameters(
            name=TissueName.LUNG, alpha_beta_gy=3.0, repair_half_time_h=2.5,
            source=_MIRDCALC, verified=False, note=_GENERIC_NOTE),
        TissueParameters(
            name=TissueName.THYROID, alpha_beta_gy=3.0, repair_half_time_h=2.5,
            source=_MIRDCALC, verified=False, note=_GENERIC_NOTE),
        TissueParameters(
            name=TissueName.WHOLE_BODY, alpha_beta_gy=3.0, repair_half_time_h=2.5,
            source=_MIRDCALC, verified=False, note=_GENERIC_NOTE),
        TissueParameters(
            name=TissueName.TUMOUR, alpha_beta_gy=10.0, repair_half_time_h=1.5,
            source=_MIRDCALC, verified=False),
        TissueParameters(
            name=TissueName.NORMAL_TISSUE, alpha_beta_gy=3.0, repair_half_time_h=2.5,
            source=_MIRDCALC, verified=False),
    )
}


def get_tissue(name: str) -> TissueParameters:
    """The built-in parameter set called ``name`` (case and ``_``/space insensitive).

    Raises
    ------
    InputError
        ``name`` is not a built-in tissue; the message lists the known ones.
    """
    key = re.sub(r"[\s_]+", "-", str(name).strip().lower())
    aliases = {"kidneys": "kidney", "tumor": "tumour", "lesion": "tumour",
               "marrow": "red-marrow", "bone-marrow": "red-marrow",
               "salivary": "salivary-gland", "parotid": "salivary-gland"}
    key = aliases.get(key, key)
    if key not in TISSUES:
        raise InputError(f"tissue {name!r} is not known; choose one of {', '.join(TISSUES)}")
    return TISSUES[key]


_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"kidney|renal", TissueName.KIDNEY),
    (r"marrow", TissueName.RED_MARROW),
    (r"blood", TissueName.BLOOD),
    (r"parotid|submandibular|sublingual|salivary", TissueName.SALIVARY_GLAND),
    (r"liver|hepat", TissueName.LIVER),
    (r"spleen", TissueName.SPLEEN),
    (r"lung", TissueName.LUNG),
    (r"thyroid", TissueName.THYROID),
    (r"whole[\s_-]*body|total[\s_-]*body|^wb$|^body$", TissueName.WHOLE_BODY),
)


def tissue_for_voi(voi_name: str, lesion: bool) -> tuple[TissueParameters, bool]:
    """Guess the tissue parameter set of a VOI from its name.

    Lesions are ``tumour``; organs are matched by name (``kidney_left`` → kidney, ``parotid`` →
    salivary-gland, ``bone marrow`` → red-marrow, ``blood`` → blood, ...).

    Returns
    -------
    tissue : TissueParameters
    matched : bool
        False when nothing matched and the generic ``normal-tissue`` set was used (callers
        announce that fallback).
    """
    if lesion:
        return TISSUES[TissueName.TUMOUR], True
    name = voi_name.strip().lower()
    for pattern, tissue in _PATTERNS:
        if re.search(pattern, name):
            return TISSUES[tissue], True
    return TISSUES[TissueName.NORMAL_TISSUE], False
