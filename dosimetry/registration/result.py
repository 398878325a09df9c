"""Result objects of the registration stage (JSON round-trip through ``qa.json``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dosimetry.registration.config import RegistrationMethod, RegistrationOptions
from dosimetry.registration.qa import JacobianStats, TREStats
from dosimetry.registration.resample import ActivityCheck

#: Labels smaller than this are left out of the mean Dice: at CT voxel sizes of a few mm a
#: 1 mL lesion is a handful of voxels and its Dice says more about the grid than the
#: registration. Their Dice is still reported.
DICE_MIN_VOLUME_ML = 20.0


@dataclass(frozen=True)
class LabelDice:
    """Dice of one propagated label."""

    label: int
    name: str
    volume_ml: float
    dice: float
    dice_identity: float | None = None
    dice_true_transform: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "name": self.name, "volume_ml": self.volume_ml,
                "dice": self.dice, "dice_identity": self.dice_identity,
                "dice_true_transform": self.dice_true_transform}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelDice:
        return cls(**d)


@dataclass(frozen=True)
class TimepointQA:
    """Quality figures of one timepoint's registration.

    Attributes
    ----------
    label : str
    is_reference : bool
    registered_with : str
        ``ct`` (CT–CT), ``spect`` (SPECT–SPECT rigid, no CT), or ``none`` (reference).
    method : str
    stages : tuple of dict
        Per classical stage: metric before/after, iterations, stop condition, time.
    metric_before, metric_after : float or None
        Mattes MI (lower is better) at the starting and the final transform, same samples.
    jacobian : JacobianStats or None
    body_dice_before, body_dice_after : float or None
        Dice of the reference body mask and the moving one, unregistered and registered.
    max_displacement_mm : float or None
    activity : tuple of ActivityCheck
    dice : tuple of LabelDice
    dice_source : str or None
        ``manifest`` or ``phantom truth``.
    tre_before, tre_rigid, tre : TREStats or None
        Against the true transform (digital patients): unregistered, after the rigid stage, and
        final.
    time_s : float
    warnings : tuple of str
    """

    label: str
    is_reference: bool
    registered_with: str
    method: str
    stages: tuple[dict[str, Any], ...] = ()
    metric_before: float | None = None
    metric_after: float | None = None
    jacobian: JacobianStats | None = None
    body_dice_before: float | None = None
    body_dice_after: float | None = None
    max_displacement_mm: float | None = None
    activity: tuple[ActivityCheck, ...] = ()
    dice: tuple[LabelDice, ...] = ()
    dice_source: str | None = None
    tre_before: TREStats | None = None
    tre_rigid: TREStats | None = None
    tre: TREStats | None = None
    time_s: float = 0.0
    warnings: tuple[str, ...] = ()

    @property
    def dice_mean(self) -> float | None:
        """Mean Dice over labels of at least :data:`DICE_MIN_VOLUME_ML`."""
        vals = [d.dice for d in self.dice if d.volume_ml >= DICE_MIN_VOLUME_ML]
        return float(sum(vals) / len(vals)) if vals else None

    @property
    def dice_min(self) -> float | None:
        """Smallest Dice over labels of at least :data:`DICE_MIN_VOLUME_ML`."""
        vals = [d.dice for d in self.dice if d.volume_ml >= DICE_MIN_VOLUME_ML]
        return float(min(vals)) if vals else None

    def activity_on(self, grid: str) -> ActivityCheck | None:
        """The activity check of ``grid`` (``ct`` or ``spect``)."""
        for a in self.activity:
            if a.grid == grid:
                return a
        return None

    def to_dict(self) -> dict[str, Any]:
        return _clean({
            "label": self.label, "is_reference": self.is_reference,
            "registered_with": self.registered_with, "method": self.method,
            "stages": list(self.stages), "metric_before": self.metric_before,
            "metric_after": self.metric_after,
            "jacobian": self.jacobian.to_dict() if self.jacobian else None,
            "body_dice_before": self.body_dice_before, "body_dice_after": self.body_dice_after,
            "max_displacement_mm": self.max_displacement_mm,
            "activity": [a.to_dict() for a in self.activity],
            "dice": [d.to_dict() for d in self.dice], "dice_source": self.dice_source,
            "dice_mean": self.dice_mean, "dice_min": self.dice_min,
            "dice_min_volume_ml": DICE_MIN_VOLUME_ML,
            "tre_before": self.tre_before.to_dict() if self.tre_before else None,
            "tre_rigid": self.tre_rigid.to_dict() if self.tre_rigid else None,
            "tre": self.tre.to_dict() if self.tre else None,
            "time_s": self.time_s, "warnings": list(self.warnings),
        })

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TimepointQA:
        def opt(key, klass):
            return klass.from_dict(d[key]) if d.get(key) else None

        return cls(label=d["label"], is_reference=d["is_reference"],
                   registered_with=d["registered_with"], method=d["method"],
                   stages=tuple(d.get("stages", ())), metric_before=d.get("metric_before"),
                   metric_after=d.get("metric_after"), jacobian=opt("jacobian", JacobianStats),
                   body_dice_before=d.get("body_dice_before"),
                   body_dice_after=d.get("body_dice_after"),
                   max_displacement_mm=d.get("max_displacement_mm"),
                   activity=tuple(ActivityCheck.from_dict(a) for a in d.get("activity", ())),
                   dice=tuple(LabelDice.from_dict(x) for x in d.get("dice", ())),
                   dice_source=d.get("dice_source"), tre_before=opt("tre_before", TREStats),
                   tre_rigid=opt("tre_rigid", TREStats), tre=opt("tre", TREStats),
                   time_s=d.get("time_s", 0.0), warnings=tuple(d.get("warnings", ())))


@dataclass(frozen=True)
class TimepointRegistration:
    """Files written for one timepoint (absolute paths) and its QA.

    ``ct`` is None for a timepoint without CT.
    """

    label: str
    transform: Path
    ct: Path | None
    spect_bq_per_ml: Path
    spect_bq_per_ml_spectgrid: Path
    qa: TimepointQA

    def to_dict(self, base: Path) -> dict[str, Any]:
        def rel(p: Path | None) -> str | None:
            return None if p is None else Path(p).relative_to(base).as_posix()

        return {"label": self.label, "transform": rel(self.transform), "ct": rel(self.ct),
                "spect_bq_per_ml": rel(self.spect_bq_per_ml),
                "spect_bq_per_ml_spectgrid": rel(self.spect_bq_per_ml_spectgrid),
                "qa": self.qa.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: Path) -> TimepointRegistration:
        def ab(p: str | None) -> Path | None:
            return None if p is None else base / p

        return cls(label=d["label"], transform=base / d["transform"], ct=ab(d.get("ct")),
                   spect_bq_per_ml=base / d["spect_bq_per_ml"],
                   spect_bq_per_ml_spectgrid=base / d["spect_bq_per_ml_spectgrid"],
                   qa=TimepointQA.from_dict(d["qa"]))


@dataclass(frozen=True)
class RegistrationResult:
    """What :func:`register_study` produced.

    Attributes
    ----------
    success : bool
        Always True for a returned result (failures raise :class:`RegistrationError`).
    message : str
    reference : str
        Label of the reference timepoint.
    method : RegistrationMethod
    folder : Path
        The stage folder.
    qa_path : Path
    timepoints : tuple of TimepointRegistration
        In study order, the reference included.
    fingerprint : str
    skipped : bool
        True when the stage was up to date and nothing was recomputed.
    options : RegistrationOptions
    truth : str or None
        Folder of the phantom truth used for TRE/Dice, if any.
    time_s : float
    model : dict or None
        Learned model: weights file name and SHA-256.
    """

    success: bool
    message: str
    reference: str
    method: RegistrationMethod
    folder: Path
    qa_path: Path
    timepoints: tuple[TimepointRegistration, ...]
    fingerprint: str
    options: RegistrationOptions
    skipped: bool = False
    truth: str | None = None
    time_s: float = 0.0
    model: dict[str, Any] | None = field(default=None)

    def timepoint(self, label: str) -> TimepointRegistration:
        """The entry of timepoint ``label``."""
        for tp in self.timepoints:
            if tp.label == label:
                return tp
        raise KeyError(f"no timepoint {label!r} in the registration result; it has "
                       f"{', '.join(t.label for t in self.timepoints)}")

    def to_dict(self) -> dict[str, Any]:
        return _clean({
            "success": self.success, "message": self.message, "reference": self.reference,
            "method": self.method.value, "fingerprint": self.fingerprint,
            "options": self.options.to_dict(), "truth": self.truth, "time_s": self.time_s,
            "model": self.model,
            "timepoints": [t.to_dict(self.folder) for t in self.timepoints],
        })

    @classmethod
    def from_dict(cls, d: dict[str, Any], folder: Path, qa_path: Path,
                  skipped: bool = False) -> RegistrationResult:
        return cls(success=d["success"], message=d["message"], reference=d["reference"],
                   method=RegistrationMethod(d["method"]), folder=folder, qa_path=qa_path,
                   timepoints=tuple(TimepointRegistration.from_dict(t, folder)
                                    for t in d["timepoints"]),
                   fingerprint=d["fingerprint"],
                   options=RegistrationOptions.from_dict(d["options"]), skipped=skipped,
                   truth=d.get("truth"), time_s=d.get("time_s", 0.0), model=d.get("model"))


def _clean(obj: Any) -> Any:
    """NaN/inf → None so the JSON is standard."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
