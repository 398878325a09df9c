"""The study manifest: what a multi-timepoint SPECT/CT dosimetry study is made of.

A :class:`Study` names the (pseudonymised) patient, the nuclide and radiopharmaceutical, the
administered activity and injection time, and one :class:`Timepoint` per imaging session with its
SPECT, CT and optional contours. It round-trips through YAML and JSON; paths are stored relative
to the manifest's folder so a study folder can be moved as a whole.

Validation is in one place: the pydantic models check values and order (activity > 0, known units,
acquisitions after injection and strictly increasing, calibration present for count images);
:func:`check_study_files` checks what needs the files (existence, SPECT/CT overlap in patient
space) from image headers only.

Units at this edge follow what a physicist writes: MBq for activity, cps/MBq for sensitivity,
seconds for frame duration, ISO 8601 date-times (naive local scanner time, or with a UTC offset).
Properties give the internal units (Bq, s).
"""

from __future__ import annotations

import math
import os
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from dosimetry import units
from dosimetry.errors import GeometryError, InputError
from dosimetry.io import models as model_io

#: Version of the manifest layout written by this release.
SCHEMA_VERSION = 1

#: Minimum fraction of the CT's bounding box that the SPECT must cover for a timepoint to pass.
#: A SPECT/CT pair from one scanner covers most of the same axial range; 10 % is far below that
#: and only rejects pairs that are plainly from different positions or frames of reference.
MIN_SPECT_CT_OVERLAP = 0.10


class SpectUnits(StrEnum):
    """What the SPECT voxel values are."""

    BQ_PER_ML = "Bq/mL"
    COUNTS = "counts"


class ImageFormat(StrEnum):
    """How an image reference is stored on disk."""

    DICOM = "dicom"
    NIFTI = "nifti"
    METAIMAGE = "metaimage"
    NRRD = "nrrd"


def guess_format(path: Path) -> ImageFormat:
    """Image format from a path: folders and ``.dcm``/``.ima`` files are DICOM."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return ImageFormat.NIFTI
    if name.endswith((".mhd", ".mha")):
        return ImageFormat.METAIMAGE
    if name.endswith(".nrrd"):
        return ImageFormat.NRRD
    return ImageFormat.DICOM


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class ImageRef(_Model):
    """A reference to an image on disk.

    ``path`` is a NIfTI/MHD/NRRD file, a DICOM file, or a folder of DICOM files; with a folder that
    holds several series, ``series_uid`` picks one. A plain string in YAML is read as ``path``.
    """

    path: Path
    format: ImageFormat | None = None
    series_uid: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str | os.PathLike):
            return {"path": data}
        return data

    @model_validator(mode="after")
    def _fill_format(self) -> Self:
        if self.format is None:
            object.__setattr__(self, "format", guess_format(self.path))
        return self

    def resolve(self, base_dir: Path) -> Path:
        """Absolute path, relative paths taken from ``base_dir`` (the manifest's folder)."""
        path = self.path if self.path.is_absolute() else (Path(base_dir) / self.path)
        # normpath: "out/../export" must resolve even before "out" exists.
        return Path(os.path.normpath(path))


class Timepoint(_Model):
    """One imaging session after the administration."""

    label: str = Field(min_length=1, description="Short name, e.g. '24h' or 'tp2'.")
    acquisition_datetime: datetime = Field(description="Start of the SPECT acquisition.")
    spect: ImageRef
    spect_units: SpectUnits
    calibration_cps_per_mbq: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="System sensitivity; required when spect_units is counts."
    )
    frame_duration_s: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="Acquisition duration the counts were collected over [s]."
    )
    ct: ImageRef | None = None
    labels: ImageRef | None = Field(default=None, description="Label map on this timepoint.")
    rtstruct: ImageRef | None = Field(
        default=None, description="DICOM RTSTRUCT for this timepoint."
    )

    @model_validator(mode="after")
    def _counts_need_calibration(self) -> Self:
        if self.spect_units is SpectUnits.COUNTS:
            missing = [
                name
                for name in ("calibration_cps_per_mbq", "frame_duration_s")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(
                    f"timepoint {self.label!r} has SPECT in counts but no "
                    f"{' and no '.join(missing)}"
                )
        return self

    @property
    def calibration_cps_per_bq(self) -> float | None:
        """Sensitivity in counts per second per Bq (internal units)."""
        c = self.calibration_cps_per_mbq
        return None if c is None else units.cps_per_mbq_to_cps_per_bq(c)


class Study(_Model):
    """A multi-timepoint quantitative SPECT/CT study of one patient and one administration."""

    schema_version: int = SCHEMA_VERSION
    patient_id: str = Field(min_length=1, description="Pseudonymised patient identifier.")
    nuclide: str = Field(description="ICRP-107 nuclide name, e.g. 'Lu-177'.")
    radiopharmaceutical: str = Field(min_length=1)
    administered_activity_mbq: float = Field(gt=0, description="Administered activity [MBq].")
    injection_datetime: datetime
    timepoints: tuple[Timepoint, ...] = Field(min_length=1)
    patient_weight_kg: Annotated[float, Field(gt=0)] | None = None
    spect_fwhm_mm: Annotated[float, Field(gt=0, le=50)] | None = Field(
        default=None, description="Reconstructed SPECT resolution FWHM [mm] of the camera, "
        "collimator and reconstruction used (from a point-source or IEC measurement); enables "
        "the partial-volume correction of VOI activities.")
    labels: ImageRef | None = Field(
        default=None, description="Label map on the reference timepoint's CT grid."
    )
    reference_timepoint: str | None = Field(
        default=None, description="Label of the timepoint all others are registered to."
    )
    source: dict[str, str] = Field(
        default_factory=dict, description="Provenance: how the manifest was made."
    )

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {v} is not supported (this release reads {SCHEMA_VERSION})"
            )
        return v

    @field_validator("nuclide")
    @classmethod
    def _known_nuclide(cls, v: str) -> str:
        from dosimetry.nuclides import get_nuclide

        return get_nuclide(v).name

    @field_validator("administered_activity_mbq")
    @classmethod
    def _finite_activity(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"administered activity must be finite, got {v}")
        return v

    @model_validator(mode="after")
    def _times_in_order(self) -> Self:
        inj = self.injection_datetime
        labels = [tp.label for tp in self.timepoints]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"timepoint labels must be unique; repeated: {', '.join(dupes)}")
        if any(
            (tp.acquisition_datetime.tzinfo is None) != (inj.tzinfo is None)
            for tp in self.timepoints
        ):
            raise ValueError(
                "injection_datetime and acquisition datetimes must all carry a UTC "
                "offset or all be naive local times"
            )
        prev: Timepoint | None = None
        for tp in self.timepoints:
            if tp.acquisition_datetime <= inj:
                raise ValueError(
                    f"timepoint {tp.label!r}: acquisition {tp.acquisition_datetime.isoformat()} "
                    f"is not after the injection {inj.isoformat()}"
                )
            if prev is not None and tp.acquisition_datetime <= prev.acquisition_datetime:
                raise ValueError(
                    f"timepoint {tp.label!r}: acquisition {tp.acquisition_datetime.isoformat()} "
                    f"is not after timepoint {prev.label!r} "
                    f"({prev.acquisition_datetime.isoformat()}); timepoints must be strictly "
                    "increasing in time"
                )
            prev = tp
        if self.reference_timepoint is not None and self.reference_timepoint not in labels:
            raise ValueError(
                f"reference_timepoint {self.reference_timepoint!r} is not one of {labels}"
            )
        return self

    # ----------------------------------------------------------------------------- derived values
    @property
    def administered_activity_bq(self) -> float:
        """Administered activity [Bq]."""
        return units.mbq_to_bq(self.administered_activity_mbq)

    def times_after_injection_s(self) -> list[float]:
        """Time of each acquisition after injection [s], in timepoint order."""
        return [
            (tp.acquisition_datetime - self.injection_datetime).total_seconds()
            for tp in self.timepoints
        ]

    def timepoint(self, label: str) -> Timepoint:
        """The timepoint called ``label``."""
        for tp in self.timepoints:
            if tp.label == label:
                return tp
        raise InputError(
            f"study has no timepoint {label!r}; it has "
            f"{', '.join(tp.label for tp in self.timepoints)}"
        )

    # ----------------------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (paths as strings, enums as values, datetimes ISO 8601)."""
        return self.model_dump(mode="json", exclude_none=True)

    def to_yaml(self) -> str:
        """YAML text of the manifest."""
        return model_io.dump_text(self, ".yaml", exclude_none=True)

    def to_json(self) -> str:
        """JSON text of the manifest."""
        return model_io.dump_text(self, ".json", exclude_none=True)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the manifest atomically as YAML (``.yaml``/``.yml``) or JSON (``.json``)."""
        return model_io.save(self, path, "study manifest", exclude_none=True)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> Study:
        """Validate a dict; errors become one :class:`InputError` naming ``source`` and field."""
        return model_io.validate(cls, data, source, "study manifest")


def load_study(path: str | os.PathLike[str]) -> Study:
    """Read and validate a manifest (YAML or JSON, chosen by suffix; YAML by safe loading).

    Raises
    ------
    InputError
        The file is missing, not parseable, or fails validation; the message names the file,
        the field and the value.
    """
    data = model_io.read_mapping(path, "study manifest")
    return Study.from_dict(data, source=str(path))


def check_study_files(study: Study, base_dir: str | os.PathLike[str]) -> list[str]:
    """Check what needs the files: every referenced image exists and each SPECT overlaps its CT.

    Only headers are read. Returns the list of warnings (e.g. a timepoint without CT).

    Raises
    ------
    InputError
        A referenced file or folder does not exist or cannot be read.
    GeometryError
        A timepoint's SPECT and CT do not overlap in patient space.
    """
    from dosimetry.study.images import image_bounds

    base = Path(base_dir)
    warnings_out: list[str] = []
    refs: list[tuple[str, ImageRef]] = []
    if study.labels is not None:
        refs.append(("labels", study.labels))
    for tp in study.timepoints:
        for field in ("spect", "ct", "labels", "rtstruct"):
            ref = getattr(tp, field)
            if ref is not None:
                refs.append((f"timepoints[{tp.label}].{field}", ref))
        if tp.ct is None:
            warnings_out.append(
                f"timepoint {tp.label!r} has no CT: a uniform-density body will "
                "be assumed downstream"
            )
    for field, ref in refs:
        p = ref.resolve(base)
        if not p.exists():
            raise InputError(f"{field}: file not found: {p}")
    for tp in study.timepoints:
        if tp.ct is None:
            continue
        spect_lo, spect_hi = image_bounds(tp.spect, base)
        ct_lo, ct_hi = image_bounds(tp.ct, base)
        inter = [
            max(0.0, min(a, b) - max(c, d))
            for a, b, c, d in zip(spect_hi, ct_hi, spect_lo, ct_lo, strict=True)
        ]
        ct_vol = math.prod(h - lo for h, lo in zip(ct_hi, ct_lo, strict=True))
        frac = math.prod(inter) / ct_vol if ct_vol > 0 else 0.0
        if frac < MIN_SPECT_CT_OVERLAP:
            raise GeometryError(
                f"timepoint {tp.label!r}: SPECT {tp.spect.resolve(base)} and CT "
                f"{tp.ct.resolve(base)} do not overlap in patient space (only {frac:.0%} of the "
                f"CT box lies inside the SPECT box; SPECT x/y/z {_fmt_box(spect_lo, spect_hi)} mm, "
                f"CT {_fmt_box(ct_lo, ct_hi)} mm)"
            )
    return warnings_out


def _fmt_box(lo, hi) -> str:
    return " ".join(f"[{a:.0f}, {b:.0f}]" for a, b in zip(lo, hi, strict=True))
