"""Treatment protocols and organ limits with cited defaults (pydantic, YAML/JSON round trip).

Built-in protocols (:func:`default_protocol`):

=================  ==========================================================================
lu177-dotatate     4 × 7.4 GBq every 8 weeks (NETTER-1, Strosberg et al., N Engl J Med
                   2017;376:125, doi:10.1056/NEJMoa1607427). Limits: kidney BED ≤ 40 Gy
                   cumulative (28 Gy with risk factors; Bodei et al., EJNMMI 2008;35:1847,
                   doi:10.1007/s00259-008-0778-1, DOI unverified); red marrow (or blood) absorbed
                   dose ≤ 2 Gy cumulative (the 2 Gy marrow limit of radioiodine practice,
                   Lassmann et al. 2008, adopted for PRRT: unverified for Lu-177).
lu177-psma         6 × 7.4 GBq every 6 weeks (VISION, Sartor et al., N Engl J Med
                   2021;385:1091, doi:10.1056/NEJMoa2107322). Same kidney and marrow limits
                   (the kidney BED limit comes from PRRT and is applied to PSMA by convention);
                   salivary glands EQD2 ≤ 25 Gy *advisory* (reported, not enforced): the
                   QUANTEC mean-parotid constraint for external-beam therapy (Deasy et al.,
                   IJROBP 2010;76:S58, doi:10.1016/j.ijrobp.2009.06.090, unverified), not
                   validated for RPT.
i131-dtc           one administration; blood dose ≤ 2 Gy (EANM SOP, Lassmann et al., EJNMMI
                   2008, PMID 18491092); whole-body retention at 48 h ≤ 2.96 GBq (80 mCi) with
                   diffuse lung metastases (Benua et al. 1962) — off unless enabled
                   (:meth:`Protocol.with_enforced`).
i131-benign        one administration to a target thyroid dose (Marinelli formula; EANM
                   guideline, Stokkel et al., EJNMMI 2010;37:2218,
                   doi:10.1007/s00259-010-1536-8). Default target 150 Gy (unverified: set it).
=================  ==========================================================================

Per-cycle activity bounds are project defaults where no trial defines them (said in ``notes``):
the lower bound 3.7 GBq is the reduced activity of NETTER-1's dose modification (unverified),
the upper bound 2 × standard is ours, not a trial's.
"""

from __future__ import annotations

import math
import os
from enum import StrEnum
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dosimetry.errors import InputError
from dosimetry.io import models as _io
from planning.iodine import BLOOD_LIMIT_GY, LUNG_RETENTION_LIMIT_GBQ
from planning.tissues import TissueName

__all__ = [
    "LimitQuantity",
    "LimitScope",
    "Objective",
    "OrganLimit",
    "Protocol",
    "ProtocolName",
    "default_protocol",
    "load_protocol",
]

SCHEMA_VERSION = 1


class ProtocolName(StrEnum):
    """Built-in protocols."""

    LU177_DOTATATE = "lu177-dotatate"
    LU177_PSMA = "lu177-psma"
    I131_DTC = "i131-dtc"
    I131_BENIGN = "i131-benign"


class Objective(StrEnum):
    """What the plan maximises (or, for ``target-dose``, reaches)."""

    MIN_LESION_BED = "min-lesion-bed"  # the lowest total BED over lesions
    MEAN_LESION_BED = "mean-lesion-bed"  # mass-weighted mean (arithmetic without masses)
    TOTAL_ACTIVITY = "total-activity"  # administered activity (e.g. I-131 MTA)
    TARGET_DOSE = "target-dose"  # the activity that reaches a target absorbed dose


class LimitQuantity(StrEnum):
    """The quantity a limit bounds."""

    DOSE = "dose"  # absorbed dose [Gy]
    BED = "bed"  # biologically effective dose [Gy]
    EQD2 = "eqd2"  # equivalent dose in 2-Gy fractions [Gy]
    RETAINED_ACTIVITY_48H = "retained-activity-48h"  # whole-body activity at 48 h [GBq]

    @property
    def unit(self) -> str:
        """Display unit."""
        return "GBq" if self is LimitQuantity.RETAINED_ACTIVITY_48H else "Gy"


class LimitScope(StrEnum):
    """Whether a limit bounds the sum over all cycles or each administration."""

    CUMULATIVE = "cumulative"
    PER_CYCLE = "per-cycle"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class OrganLimit(_Model):
    """A limit on one quantity in the VOIs of some tissues.

    Attributes
    ----------
    tissues : tuple of str
        Tissue names (:class:`~planning.tissues.TissueName` values) whose VOIs the limit applies
        to, each VOI separately (left and right kidney are each held to the kidney limit).
    quantity : LimitQuantity
    scope : LimitScope
    value : float
        The limit, in Gy (dose, BED, EQD2) or GBq (retained activity); > 0.
    enforced : bool
        False: the limit is reported (margin, probability) but does not constrain the plan.
    source, verified, note : str, bool, str
        Citation, whether it was checked for this release, remarks.
    """

    tissues: tuple[str, ...] = Field(min_length=1)
    quantity: LimitQuantity
    scope: LimitScope = LimitScope.CUMULATIVE
    value: float = Field(gt=0)
    enforced: bool = True
    source: str = ""
    verified: bool = False
    note: str = ""

    @field_validator("value")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"limit must be finite, got {v}")
        return v

    @property
    def unit(self) -> str:
        """Gy or GBq."""
        return self.quantity.unit

    @property
    def label(self) -> str:
        """Short description, e.g. ``kidney BED ≤ 40 Gy (cumulative)``."""
        q = {"dose": "dose", "bed": "BED", "eqd2": "EQD2",
             "retained-activity-48h": "retention at 48 h"}[self.quantity.value]
        return (f"{'/'.join(self.tissues)} {q} ≤ {self.value:g} {self.unit} "
                f"({self.scope.value})")


class Protocol(_Model):
    """A treatment protocol: cycles, activity bounds, organ limits and the objective.

    Activities are in GBq (the unit protocols are written in), intervals in weeks.
    """

    schema_version: int = SCHEMA_VERSION
    name: str = Field(min_length=1)
    title: str = ""
    nuclide: str = Field(min_length=1)
    radiopharmaceutical: str = Field(min_length=1)
    objective: Objective = Objective.MIN_LESION_BED
    n_cycles: int = Field(ge=1, le=50)
    standard_activity_gbq: float = Field(gt=0)
    min_activity_gbq: float = Field(ge=0)
    max_activity_gbq: float = Field(gt=0)
    interval_weeks: float = Field(ge=0)
    limits: tuple[OrganLimit, ...] = ()
    target_dose_gy: float | None = Field(default=None, gt=0)
    target_tissue: str | None = None
    references: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"schema_version {v} is not supported (this release reads "
                             f"{SCHEMA_VERSION})")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        for name in ("standard_activity_gbq", "max_activity_gbq", "interval_weeks"):
            v = getattr(self, name)
            if not math.isfinite(v):
                raise ValueError(f"{name} must be finite, got {v}")
        if self.min_activity_gbq > self.max_activity_gbq:
            raise ValueError(f"min_activity_gbq {self.min_activity_gbq} exceeds "
                             f"max_activity_gbq {self.max_activity_gbq}")
        if self.objective is Objective.TARGET_DOSE and (self.target_dose_gy is None
                                                       or self.target_tissue is None):
            raise ValueError("objective target-dose needs target_dose_gy and target_tissue")
        return self

    @property
    def interval_s(self) -> float:
        """Interval between cycles [s]."""
        return self.interval_weeks * 7 * 86400.0

    # -- edits (return new protocols) --------------------------------------------------------
    def with_limit_value(self, tissue: str, quantity: LimitQuantity | str, value: float,
                         scope: LimitScope | str = LimitScope.CUMULATIVE) -> Protocol:
        """Replace the value of the limit on ``tissue``/``quantity``/``scope`` (add if absent)."""
        q, s = LimitQuantity(quantity), LimitScope(scope)
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"{tissue} {q.value} limit must be finite and > 0, got {value}")
        limits, found = [], False
        for lim in self.limits:
            if tissue in lim.tissues and lim.quantity is q and lim.scope is s:
                lim = lim.model_copy(update={"value": float(value), "source": "user-supplied",
                                             "verified": False, "enforced": True})
                found = True
            limits.append(lim)
        if not found:
            limits.append(OrganLimit(tissues=(tissue,), quantity=q, scope=s, value=float(value),
                                     source="user-supplied"))
        return self.model_copy(update={"limits": tuple(limits)})

    def with_enforced(self, tissue: str, quantity: LimitQuantity | str,
                      enforced: bool = True) -> Protocol:
        """Switch enforcement of the limits on ``tissue``/``quantity``."""
        q = LimitQuantity(quantity)
        hits = [lim for lim in self.limits if tissue in lim.tissues and lim.quantity is q]
        if not hits:
            raise InputError(f"protocol {self.name!r} has no {q.value} limit on {tissue!r}")
        limits = tuple(lim.model_copy(update={"enforced": enforced})
                       if lim in hits else lim for lim in self.limits)
        return self.model_copy(update={"limits": limits})

    def with_updates(self, **changes) -> Protocol:
        """A validated copy with fields replaced (errors name the field and value)."""
        data = self.model_dump()
        data.update({k: v for k, v in changes.items() if v is not None})
        return _io.validate(Protocol, data, f"protocol {self.name!r}", "protocol")

    # -- files -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically as JSON or YAML (by suffix)."""
        return _io.save(self, path, "protocol")

    @classmethod
    def from_dict(cls, data, source: str = "<dict>") -> Protocol:
        """Validate a mapping; errors name ``source``, the field and the value."""
        return _io.validate(cls, data, source, "protocol")


def load_protocol(path: str | os.PathLike[str]) -> Protocol:
    """Read a protocol file (YAML by safe loading, or JSON)."""
    return Protocol.from_dict(_io.read_mapping(path, "protocol"), source=str(path))


# ----------------------------------------------------------------------------------- defaults
_BODEI = ("Bodei et al., EJNMMI 2008;35:1847 (doi:10.1007/s00259-008-0778-1, DOI unverified): "
          "kidney BED 40 Gy without, 28 Gy with risk factors")
_MARROW = ("2 Gy red-marrow limit of radioiodine practice (EANM SOP, Lassmann et al. 2008, "
           "PMID 18491092) adopted for Lu-177 (unverified for Lu-177)")
_BOUNDS = ("per-cycle bounds: 3.7 GBq lower (NETTER-1 reduced activity, unverified), "
           "2 × standard upper (project default, not from a trial)")


def _kidney(value: float = 40.0) -> OrganLimit:
    return OrganLimit(tissues=(TissueName.KIDNEY,), quantity=LimitQuantity.BED, value=value,
                      source=_BODEI, verified=True,
                      note="use 28 Gy with risk factors (hypertension, diabetes, prior "
                           "nephrotoxic chemotherapy)")


def _marrow() -> OrganLimit:
    return OrganLimit(tissues=(TissueName.RED_MARROW, TissueName.BLOOD),
                      quantity=LimitQuantity.DOSE, value=2.0, source=_MARROW, verified=False)


def default_protocol(name: ProtocolName | str) -> Protocol:
    """The built-in protocol ``name`` (module table)."""
    try:
        key = ProtocolName(str(name).strip().lower())
    except ValueError:
        raise InputError(f"protocol {name!r} is not known; choose one of "
                         f"{', '.join(p.value for p in ProtocolName)}") from None
    if key is ProtocolName.LU177_DOTATATE:
        return Protocol(
            name=key, title="[177Lu]Lu-DOTATATE (NETTER-1 schedule)", nuclide="Lu-177",
            radiopharmaceutical="DOTATATE", n_cycles=4, standard_activity_gbq=7.4,
            min_activity_gbq=3.7, max_activity_gbq=14.8, interval_weeks=8.0,
            limits=(_kidney(), _marrow()),
            references=("Strosberg et al., N Engl J Med 2017;376:125, "
                        "doi:10.1056/NEJMoa1607427", _BODEI),
            notes=(_BOUNDS,))
    if key is ProtocolName.LU177_PSMA:
        salivary = OrganLimit(
            tissues=(TissueName.SALIVARY_GLAND,), quantity=LimitQuantity.EQD2, value=25.0,
            enforced=False, verified=False,
            source="QUANTEC mean-parotid constraint for external-beam RT (Deasy et al., IJROBP "
                   "2010;76:S58, doi:10.1016/j.ijrobp.2009.06.090, unverified)",
            note="advisory: an EBRT constraint, not validated for RPT")
        return Protocol(
            name=key, title="[177Lu]Lu-PSMA-617 (VISION schedule)", nuclide="Lu-177",
            radiopharmaceutical="PSMA-617", n_cycles=6, standard_activity_gbq=7.4,
            min_activity_gbq=3.7, max_activity_gbq=14.8, interval_weeks=6.0,
            limits=(_kidney(), _marrow(), salivary),
            references=("Sartor et al., N Engl J Med 2021;385:1091, "
                        "doi:10.1056/NEJMoa2107322", _BODEI),
            notes=(_BOUNDS, "the kidney BED limit comes from PRRT (Bodei 2008) and is "
                            "applied to PSMA by convention"))
    if key is ProtocolName.I131_DTC:
        return Protocol(
            name=key, title="Na[131I]I, differentiated thyroid cancer (blood-dose limited)",
            nuclide="I-131", radiopharmaceutical="NaI", objective=Objective.MIN_LESION_BED,
            n_cycles=1, standard_activity_gbq=3.7, min_activity_gbq=1.1, max_activity_gbq=50.0,
            interval_weeks=0.0,
            limits=(
                OrganLimit(tissues=(TissueName.BLOOD, TissueName.RED_MARROW),
                           quantity=LimitQuantity.DOSE, scope=LimitScope.PER_CYCLE,
                           value=BLOOD_LIMIT_GY, verified=True,
                           source="EANM SOP, Lassmann et al., EJNMMI 2008 (PMID 18491092)"),
                OrganLimit(tissues=(TissueName.WHOLE_BODY,),
                           quantity=LimitQuantity.RETAINED_ACTIVITY_48H,
                           scope=LimitScope.PER_CYCLE, value=LUNG_RETENTION_LIMIT_GBQ,
                           enforced=False, verified=False,
                           source="Benua et al., Am J Roentgenol 1962;87:171 (unverified)",
                           note="80 mCi at 48 h; enforce with diffuse lung metastases"),
            ),
            references=("Lassmann et al., EJNMMI 2008, PMID 18491092",),
            notes=("without lesion VOIs the plan is the maximum tolerable activity (MTA)",
                   "activity bounds 1.1–50 GBq are project defaults"))
    return Protocol(
        name=key, title="Na[131I]I, benign thyroid disease (Marinelli)", nuclide="I-131",
        radiopharmaceutical="NaI", objective=Objective.TARGET_DOSE, n_cycles=1,
        standard_activity_gbq=0.4, min_activity_gbq=0.0, max_activity_gbq=2.0,
        interval_weeks=0.0, target_dose_gy=150.0, target_tissue=TissueName.THYROID,
        references=("Stokkel et al., EJNMMI 2010;37:2218, doi:10.1007/s00259-010-1536-8",
                    "Hänscheid et al., EJNMMI 2013;40:1126, doi:10.1007/s00259-013-2387-x "
                    "(DOI unverified)"),
        notes=("target dose 150 Gy is a placeholder (unverified): set the intended dose",
               "activity bounds 0–2 GBq are project defaults"))
