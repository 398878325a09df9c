"""Registration options: every parameter declared once, with its default, unit and reason.

All lengths in mm. The defaults are tuned on digital patients (``phantoms``) so that a
4-timepoint study registers in seconds per timepoint on 2 CPU cores (see
``bench/bench_registration.py`` for the figures).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from typing import Any, Self

from dosimetry.errors import InputError


class RegistrationMethod(StrEnum):
    """How the deformable part is found.

    ``classical``: SimpleITK rigid → affine → B-spline (Mattes mutual information).
    ``learned``: classical rigid pre-alignment, then the shipped 3D U-Net predicts the residual
    displacement field.
    """

    CLASSICAL = "classical"
    LEARNED = "learned"


class TransformStage(StrEnum):
    """One stage of the classical chain, applied in this order."""

    RIGID = "rigid"
    AFFINE = "affine"
    BSPLINE = "bspline"


@dataclass(frozen=True)
class StageSettings:
    """Optimisation settings of one classical stage.

    Attributes
    ----------
    shrink_factors : tuple of int
        Pyramid levels (coarse → fine), integer down-sampling of the working grid.
    smoothing_sigmas_mm : tuple of float
        Gaussian smoothing per level [mm], same length as ``shrink_factors``.
    iterations : int
        Optimiser iterations per level.
    samples : int
        Metric samples per level (random positions inside the body mask, fixed seed). The
        sampling percentage given to ITK is ``samples / (voxels at the level × mask fraction)``,
        so the cost does not grow with the CT resolution.
    """

    shrink_factors: tuple[int, ...]
    smoothing_sigmas_mm: tuple[float, ...]
    iterations: int
    samples: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "shrink_factors", tuple(int(s) for s in self.shrink_factors))
        object.__setattr__(self, "smoothing_sigmas_mm",
                           tuple(float(s) for s in self.smoothing_sigmas_mm))
        if not self.shrink_factors or any(s < 1 for s in self.shrink_factors):
            raise InputError(f"shrink factors {self.shrink_factors} must be integers ≥ 1")
        if len(self.smoothing_sigmas_mm) != len(self.shrink_factors):
            raise InputError(f"smoothing sigmas {self.smoothing_sigmas_mm} mm and shrink factors "
                             f"{self.shrink_factors} must have the same number of levels")
        if any(s < 0 or not math.isfinite(s) for s in self.smoothing_sigmas_mm):
            raise InputError(f"smoothing sigmas {self.smoothing_sigmas_mm} mm must be ≥ 0")
        if not (1 <= self.iterations <= 10000):
            raise InputError(f"iterations {self.iterations} is outside 1–10000")
        if not (100 <= self.samples <= 10_000_000):
            raise InputError(f"metric samples {self.samples} is outside 100–10⁷")


@dataclass(frozen=True)
class QAThresholds:
    """Limits beyond which a timepoint's registration is refused (:class:`RegistrationError`).

    Attributes
    ----------
    max_folding_fraction : float
        Largest fraction of body voxels with Jacobian determinant ≤ 0. A physical deformation
        never folds; 0.1 % tolerates a few edge voxels of a B-spline extrapolated outside the
        body.
    min_body_dice : float
        Smallest Dice between the reference body mask and the registered moving body mask (the
        TRE proxy when no truth exists). Repositioning errors of ≤ 1 cm leave Dice ≥ 0.9 even
        unregistered; below 0.85 the outlines disagree by more than any plausible residual.
    max_displacement_mm : float
        Largest displacement inside the body after the initial centring. Repositioning between
        sessions is a few cm at most; 150 mm means the optimiser ran away.
    max_metric_worsening : float
        Tolerated relative worsening of the Mattes MI from the initial to the final transform
        (noise of the sampled metric: two sets of random samples differ by ~0.5 %).
    max_raw_activity_change : float
        Largest relative change of the in-field-of-view total activity by resampling *before*
        the conservation correction. Interpolation alone changes it by well under 1 %; a larger
        change means the activity sits on the field-of-view edge or the Jacobian is wrong, and
        the correction would hide it. Larger changes are refused.
    """

    max_folding_fraction: float = 1e-3
    min_body_dice: float = 0.85
    max_displacement_mm: float = 150.0
    max_metric_worsening: float = 0.02
    max_raw_activity_change: float = 0.10

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not (math.isfinite(v) and v >= 0):
                raise InputError(f"QA threshold {f.name}={v} must be finite and ≥ 0")
        if self.min_body_dice > 1:
            raise InputError(f"QA threshold min_body_dice={self.min_body_dice} must be ≤ 1")


def _default_rigid() -> StageSettings:
    return StageSettings((4, 2, 1), (8.0, 4.0, 0.0), 200, 20000)


def _default_affine() -> StageSettings:
    return StageSettings((2, 1), (4.0, 0.0), 100, 20000)


def _default_bspline() -> StageSettings:
    return StageSettings((1,), (0.0,), 30, 5000)


@dataclass(frozen=True)
class RegistrationOptions:
    """Everything that defines how a study is registered.

    Attributes
    ----------
    method : RegistrationMethod
    stages : tuple of TransformStage
        Classical stages to run, in chain order (rigid is always first). With ``learned`` only
        the rigid stage runs before the network.
    working_spacing_mm : float
        Isotropic spacing of the grid the CTs are resampled to (with anti-alias smoothing)
        before registration [mm]; a coarser native axis keeps its spacing.
    body_threshold_hu : float
        CT number above which a voxel is body (the metric mask) [HU].
    hu_window : tuple of float
        CT numbers are clipped to this window before the metric [HU], so that metal and air
        outliers do not waste histogram bins.
    histogram_bins : int
        Mattes mutual information joint-histogram bins.
    seed : int
        Seed of the metric's random sampling (same seed → same transforms).
    rigid, affine, bspline : StageSettings
    bspline_mesh_spacing_mm : float
        Control-point spacing of the B-spline grid [mm]. Inter-session soft-tissue deformation
        varies over ~10 cm; 100 mm resolves that without fitting noise. The cost of one metric
        evaluation grows with samples × control points (ITK's dense B-spline Jacobian), which is
        why the B-spline stage runs one level with few samples.
    device : str
        Torch device of the learned model (``cpu``, ``cuda``, ``cuda:1`` …).
    qa : QAThresholds
    """

    method: RegistrationMethod = RegistrationMethod.CLASSICAL
    stages: tuple[TransformStage, ...] = (TransformStage.RIGID, TransformStage.AFFINE,
                                          TransformStage.BSPLINE)
    working_spacing_mm: float = 4.0
    body_threshold_hu: float = -400.0
    hu_window: tuple[float, float] = (-1000.0, 1500.0)
    histogram_bins: int = 32
    seed: int = 20240613
    rigid: StageSettings = field(default_factory=_default_rigid)
    affine: StageSettings = field(default_factory=_default_affine)
    bspline: StageSettings = field(default_factory=_default_bspline)
    bspline_mesh_spacing_mm: float = 100.0
    device: str = "cpu"
    qa: QAThresholds = field(default_factory=QAThresholds)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "method", RegistrationMethod(self.method))
        except ValueError:
            raise InputError(f"registration method {self.method!r} is not one of "
                             f"{', '.join(m.value for m in RegistrationMethod)}") from None
        try:
            stages = tuple(TransformStage(s) for s in self.stages)
        except ValueError:
            raise InputError(f"registration stages {self.stages!r}: each must be one of "
                             f"{', '.join(s.value for s in TransformStage)}") from None
        order = list(TransformStage)
        if not stages or stages[0] is not TransformStage.RIGID:
            raise InputError(f"registration stages {[s.value for s in stages]} must start "
                             "with rigid")
        if [order.index(s) for s in stages] != sorted({order.index(s) for s in stages}):
            raise InputError(f"registration stages {[s.value for s in stages]} must be "
                             "distinct and in the order rigid, affine, bspline")
        object.__setattr__(self, "stages", stages)
        if not (0.5 <= self.working_spacing_mm <= 20.0):
            raise InputError(f"working spacing {self.working_spacing_mm} mm is outside 0.5–20 mm")
        lo, hi = (float(v) for v in self.hu_window)
        if not (lo < hi):
            raise InputError(f"HU window {self.hu_window} must be (low, high) with low < high")
        object.__setattr__(self, "hu_window", (lo, hi))
        if not (lo < self.body_threshold_hu < hi):
            raise InputError(f"body threshold {self.body_threshold_hu} HU must lie inside the "
                             f"HU window {self.hu_window}")
        if not (8 <= self.histogram_bins <= 256):
            raise InputError(f"histogram bins {self.histogram_bins} is outside 8–256")
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**31):
            raise InputError(f"seed {self.seed!r} must be an integer in 0 … 2^31−1 (ITK seed)")
        if not (20.0 <= self.bspline_mesh_spacing_mm <= 500.0):
            raise InputError(f"B-spline mesh spacing {self.bspline_mesh_spacing_mm} mm is "
                             "outside 20–500 mm")
        if not isinstance(self.device, str) or not self.device:
            raise InputError(f"device {self.device!r} must be a torch device name such as 'cpu'")

    def with_method(self, method: RegistrationMethod | str) -> Self:
        """A copy with another method."""
        return replace(self, method=RegistrationMethod(method))

    def to_dict(self) -> dict[str, Any]:
        """JSON form (enums as values, tuples as lists)."""
        d = asdict(self)
        d["method"] = self.method.value
        d["stages"] = [s.value for s in self.stages]
        return _lists(d)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegistrationOptions:
        """Inverse of :meth:`to_dict`; unknown keys are refused."""
        if not isinstance(data, dict):
            raise InputError(f"registration options must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown registration option(s): {', '.join(unknown)}")
        kw = dict(data)
        for name in ("rigid", "affine", "bspline"):
            if name in kw and isinstance(kw[name], dict):
                kw[name] = StageSettings(**kw[name])
        if "qa" in kw and isinstance(kw["qa"], dict):
            kw["qa"] = QAThresholds(**kw["qa"])
        for name in ("stages", "hu_window"):
            if name in kw:
                kw[name] = tuple(kw[name])
        try:
            return cls(**kw)
        except TypeError as exc:
            raise InputError(f"invalid registration options: {exc}") from None


def _lists(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _lists(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_lists(v) for v in obj]
    return obj
