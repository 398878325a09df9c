"""RESULTS.json: the per-VOI dosimetry result of one therapy cycle, the input of planning.

The dosimetry pipeline writes one :class:`DosimetryResults` per imaged cycle; ``rptdose plan``
reads it. The layout is documented field by field in ``planning/RESULTS_SCHEMA.md``; in short::

    schema_version            1
    patient_id                pseudonym (never the DICOM PatientID)
    nuclide                   ICRP-107 name, e.g. "Lu-177"
    radiopharmaceutical       e.g. "DOTATATE"
    cycle_number              the cycle this dosimetry is from (1-based); for a tracer, the
                              therapy cycle it prepares
    administration            therapy (default) | tracer (pre-therapeutic, not a cycle)
    administered_activity_mbq activity of that administration [MBq]
    administration_date       optional ISO date
    patient_weight_kg         optional [kg]
    vois[]                    one entry per organ or lesion:
        name, kind (organ|lesion), tissue (optional parameter-set name), mass_g,
        mean_dose_gy, mean_dose_sigma_gy      this cycle's absorbed dose ± σ [Gy]
        dose_gy_per_gbq, dose_gy_per_gbq_sigma the dose coefficient used to plan [Gy/GBq]
        tia_mbq_h, tia_sigma_mbq_h             time-integrated activity ± σ [MBq·h]
        kinetics: model, effective_half_life_h,
                  exponentials[] {amplitude, rate_per_h}  A(t)/A₀ = Σ c_i e^(−k_i t)
        engine                                 dose engine used
    history[]                 the other delivered cycles:
        cycle_number, administered_activity_mbq, administration_date,
        vois[] {name, dose_gy, dose_sigma_gy, bed_gy (optional)}
    source                    provenance (free strings)

Kinetic amplitudes are fractions of the administered activity (so that whole-body retention
at 48 h can be read off for the I-131 lung rule); only their shape matters for BED.

Validation is in the models: names unique, σ ≥ 0, finite values, history cycle numbers unique
and different from ``cycle_number``, history VOI names known. Load/save are atomic and every
error names the file, the field and the value.
"""

from __future__ import annotations

import math
import os
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dosimetry import units
from dosimetry.errors import InputError
from dosimetry.io import models as _io
from planning.radiobiology import DoseRateShape
from planning.tissues import TissueParameters, get_tissue, tissue_for_voi

__all__ = [
    "SCHEMA_VERSION",
    "AdministrationKind",
    "DeliveredCycle",
    "DeliveredVoiDose",
    "DosimetryResults",
    "Exponential",
    "KineticsSummary",
    "VoiKind",
    "VoiResult",
    "load_results",
]

#: Layout version written by this release.
SCHEMA_VERSION = 1

NonNeg = Annotated[float, Field(ge=0)]
Pos = Annotated[float, Field(gt=0)]


class AdministrationKind(StrEnum):
    """What the imaged administration of a result was."""

    THERAPY = "therapy"  # a therapy cycle: counts as delivered
    TRACER = "tracer"  # pre-therapeutic tracer (e.g. 74 MBq I-131): not a therapy cycle


class VoiKind(StrEnum):
    """Organ (at risk) or lesion (target)."""

    ORGAN = "organ"
    LESION = "lesion"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    @model_validator(mode="after")
    def _all_finite(self) -> Self:
        for name, value in self:
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        return self


class Exponential(_Model):
    """One term c·e^(−k t) of a fitted time-activity curve (A(t)/A₀, t in h)."""

    amplitude: float = Field(description="c: fraction of the administered activity (< 0: uptake).")
    rate_per_h: Pos = Field(description="k [1/h], physical decay included.")


class KineticsSummary(_Model):
    """The chosen kinetic model of a VOI, reduced to what planning needs."""

    model: str = Field(min_length=1, description="Chosen model, e.g. 'mono', 'biexp'.")
    effective_half_life_h: Pos | None = Field(
        default=None, description="Effective half-life [h] (mono-exponential equivalent).")
    exponentials: tuple[Exponential, ...] = Field(
        default=(), description="Terms of A(t)/A₀ = Σ c_i e^(−k_i t); empty for trapezoid "
                                "models (then effective_half_life_h is used).")

    @model_validator(mode="after")
    def _has_shape(self) -> Self:
        if not self.exponentials and self.effective_half_life_h is None:
            raise ValueError("kinetics needs exponentials or effective_half_life_h")
        if self.exponentials:
            # Raises InputError (a ValueError) naming the bad terms when not a physical shape.
            self.dose_rate_shape()
        return self

    def dose_rate_shape(self) -> DoseRateShape:
        """Dose-rate shape for BED: the exponentials, else mono-exponential with T_eff."""
        if self.exponentials:
            return DoseRateShape.from_exponentials(
                [e.amplitude for e in self.exponentials],
                [e.rate_per_h / units.HOUR for e in self.exponentials])
        assert self.effective_half_life_h is not None
        return DoseRateShape.mono(units.hours_to_s(self.effective_half_life_h))

    def retention_fraction(self, t_h: float) -> float | None:
        """A(t)/A₀ at ``t_h`` [h] from the exponentials (None without them)."""
        if not self.exponentials:
            return None
        return float(sum(e.amplitude * math.exp(-e.rate_per_h * t_h)
                         for e in self.exponentials))


class VoiResult(_Model):
    """Dosimetry of one VOI in this cycle."""

    name: str = Field(min_length=1)
    kind: VoiKind
    tissue: str | None = Field(default=None, description="Tissue parameter set; default from "
                                                         "the name (lesions: tumour).")
    mass_g: Pos | None = None
    mean_dose_gy: NonNeg
    mean_dose_sigma_gy: NonNeg = 0.0
    dose_gy_per_gbq: NonNeg
    dose_gy_per_gbq_sigma: NonNeg = 0.0
    tia_mbq_h: NonNeg | None = None
    tia_sigma_mbq_h: NonNeg | None = None
    kinetics: KineticsSummary
    engine: str = Field(default="unknown", min_length=1)
    bed_gy: NonNeg | None = Field(default=None, description="BED of this cycle [Gy].")
    d2_gy: NonNeg | None = Field(default=None, description="Near-maximum dose D2 [Gy].")
    d50_gy: NonNeg | None = Field(default=None, description="Median dose D50 [Gy].")
    d98_gy: NonNeg | None = Field(default=None, description="Near-minimum dose D98 [Gy].")

    @field_validator("tissue")
    @classmethod
    def _known_tissue(cls, v: str | None) -> str | None:
        return None if v is None else get_tissue(v).name

    def tissue_parameters(self) -> tuple[TissueParameters, bool]:
        """(parameters, matched): the explicit tissue, else guessed from the name."""
        if self.tissue is not None:
            return get_tissue(self.tissue), True
        return tissue_for_voi(self.name, self.kind is VoiKind.LESION)


class DeliveredVoiDose(_Model):
    """Dose a VOI received in a delivered cycle."""

    name: str = Field(min_length=1)
    dose_gy: NonNeg
    dose_sigma_gy: NonNeg = 0.0
    bed_gy: NonNeg | None = Field(default=None, description="BED of that cycle; computed with "
                                                            "this cycle's kinetics when absent.")


class DeliveredCycle(_Model):
    """A delivered cycle other than the one of this result."""

    cycle_number: int = Field(ge=1)
    administered_activity_mbq: Pos
    administration_date: date | None = None
    vois: tuple[DeliveredVoiDose, ...] = Field(
        default=(), description="Per-VOI doses; a VOI missing here is estimated from its "
                                "dose_gy_per_gbq × activity (announced).")

    @model_validator(mode="after")
    def _unique(self) -> Self:
        names = [v.name for v in self.vois]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"cycle {self.cycle_number}: VOI names repeated: {dupes}")
        return self


class DosimetryResults(_Model):
    """Per-VOI dosimetry of one therapy cycle with the history of delivered cycles.

    See the module docstring and ``planning/RESULTS_SCHEMA.md``.
    """

    schema_version: int = SCHEMA_VERSION
    patient_id: str = Field(min_length=1, description="Pseudonym.")
    nuclide: str = Field(min_length=1)
    radiopharmaceutical: str = Field(min_length=1)
    cycle_number: int = Field(ge=1)
    administration: AdministrationKind = AdministrationKind.THERAPY
    administered_activity_mbq: Pos
    administration_date: date | None = None
    patient_weight_kg: Pos | None = None
    vois: tuple[VoiResult, ...] = Field(min_length=1)
    history: tuple[DeliveredCycle, ...] = ()
    source: dict[str, str] = Field(default_factory=dict)
    plan: dict[str, Any] | None = Field(
        default=None, description="The plan the pipeline made from these results (PlanResult "
                                  "as JSON); ignored when planning reads the file.")

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"schema_version {v} is not supported (this release reads "
                             f"{SCHEMA_VERSION})")
        return v

    @field_validator("nuclide")
    @classmethod
    def _known_nuclide(cls, v: str) -> str:
        from dosimetry.nuclides import get_nuclide

        return get_nuclide(v).name

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [v.name for v in self.vois]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"VOI names must be unique; repeated: {dupes}")
        cycles = [c.cycle_number for c in self.history]
        if self.cycle_number in cycles:
            raise ValueError(f"history repeats cycle {self.cycle_number}, the cycle of this "
                             "result (history lists the other delivered cycles)")
        rep = sorted({c for c in cycles if cycles.count(c) > 1})
        if rep:
            raise ValueError(f"history cycle numbers repeated: {rep}")
        known = set(names)
        for c in self.history:
            for v in c.vois:
                if v.name not in known:
                    raise ValueError(f"history cycle {c.cycle_number}: VOI {v.name!r} is not "
                                     f"one of the result's VOIs {sorted(known)}")
        return self

    # -- derived -----------------------------------------------------------------------------
    @property
    def administered_activity_gbq(self) -> float:
        """Activity of this cycle [GBq]."""
        return self.administered_activity_mbq * units.MBQ / units.GBQ

    @property
    def is_tracer(self) -> bool:
        """True when this result is from a pre-therapeutic tracer administration."""
        return self.administration is AdministrationKind.TRACER

    @property
    def delivered_cycle_numbers(self) -> tuple[int, ...]:
        """Therapy cycles recorded as delivered (this one unless a tracer, and the history)."""
        own = [] if self.is_tracer else [self.cycle_number]
        return tuple(sorted([*own, *(c.cycle_number for c in self.history)]))

    def voi(self, name: str) -> VoiResult:
        """The VOI called ``name``."""
        for v in self.vois:
            if v.name == name:
                return v
        raise InputError(f"no VOI {name!r}; the result has {', '.join(v.name for v in self.vois)}")

    # -- files -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict."""
        return self.model_dump(mode="json")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically as JSON (``.json``) or YAML."""
        return _io.save(self, path, "dosimetry result")

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> DosimetryResults:
        """Validate a mapping; errors name ``source``, the field and the value."""
        return _io.validate(cls, data, source, "dosimetry result")


def load_results(path: str | os.PathLike[str]) -> DosimetryResults:
    """Read and validate a RESULTS.json (or YAML) file.

    Raises
    ------
    InputError
        Missing, unparsable or invalid; the message names the file, the field and the value.
    """
    return DosimetryResults.from_dict(_io.read_mapping(path, "dosimetry result"),
                                      source=str(path))
