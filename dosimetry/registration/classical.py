"""Classical intensity-based registration of one image pair: rigid → affine → B-spline.

Kernels on ``SimpleITK.Image`` pairs (no files). The fixed image is the reference timepoint, the
moving image another timepoint; the transform returned maps a point of the *fixed* (reference)
physical space to the corresponding point of the *moving* space, which is what
``sitk.Resample(moving, fixed_grid, transform)`` needs to bring the moving image onto the
reference grid.

Method
------
* Both images are resampled to an isotropic working grid (``working_spacing_mm``, Gaussian
  anti-alias smoothing with σ = 0.4 × the new spacing) and CT numbers are clipped to a HU window.
* The metric is Mattes mutual information (Mattes et al. 2003, doi:10.1109/TMI.2002.803111)
  with random sample positions inside a body mask of the fixed image (HU threshold, largest
  connected component, holes filled slice by slice, dilated by one voxel so the skin edge
  counts). The sampling seed is fixed: the same inputs and seed give the same transform (for a
  given number of ITK threads).
* Rigid (Euler 3D about the fixed image centre) and affine stages use regular-step gradient
  descent with parameter scales from physical shifts; the B-spline stage (cubic, control points
  every ``bspline_mesh_spacing_mm``) uses L-BFGS-B. Each stage runs a multi-resolution pyramid
  (shrink factors, smoothing in mm).
* The chain is ``T(x) = A(B(x))``: the B-spline ``B`` is applied to the fixed point first, then
  the linear part ``A`` (the affine stage refines the rigid one in place, so ``A`` is a single
  :class:`SimpleITK.AffineTransform`, or the Euler transform without an affine stage).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from dosimetry.errors import GeometryError
from dosimetry.io.images import overlap_fraction
from dosimetry.registration.config import (
    RegistrationOptions,
    StageSettings,
    TransformStage,
)

#: Anti-alias σ as a fraction of the working spacing when down-sampling (σ ≈ 0.4 Δ keeps the
#: Nyquist-frequency response below ~20 % while blurring structures larger than 2 Δ little).
ANTIALIAS_SIGMA_FRACTION = 0.4

#: Below this overlap of the bounding boxes the pair is first centred on the body centroids.
CENTRING_OVERLAP = 0.5

ProgressFn = Callable[[str, float], None]


@dataclass(frozen=True)
class StageReport:
    """What one classical stage did.

    Attributes
    ----------
    stage : str
    metric_initial, metric_final : float
        Optimiser metric (Mattes MI, lower is better) at the start and end of the finest level.
    iterations : int
        Iterations of the finest level.
    stop_condition : str
    time_s : float
    n_parameters : int
    """

    stage: str
    metric_initial: float
    metric_final: float
    iterations: int
    stop_condition: str
    time_s: float
    n_parameters: int

    def to_dict(self) -> dict[str, object]:
        return {"stage": self.stage, "metric_initial": _finite(self.metric_initial),
                "metric_final": _finite(self.metric_final), "iterations": self.iterations,
                "stop_condition": self.stop_condition, "time_s": round(self.time_s, 3),
                "n_parameters": self.n_parameters}


@dataclass(frozen=True)
class PairRegistration:
    """The transform between one image pair and how it was found.

    Attributes
    ----------
    transform : SimpleITK.Transform
        Fixed (reference) physical point [mm] → moving physical point [mm]; a composite of
        ``linear`` applied last and ``deformable`` (if any) applied first.
    linear : SimpleITK.Transform
        The linear part ``A`` (Euler3D or Affine).
    rigid : SimpleITK.Euler3DTransform
        The result of the rigid stage alone.
    deformable : SimpleITK.Transform or None
        The deformable part ``B`` (B-spline or displacement field), applied before ``A``.
    stages : tuple of StageReport
    initial : SimpleITK.Transform
        The starting transform (identity about the image centre, or a centroid alignment).
    fixed_work, moving_work : SimpleITK.Image
        The prepared working images (float32, windowed) the metric compared.
    fixed_mask, moving_mask : SimpleITK.Image
        Body masks (uint8) on the working grids.
    """

    transform: sitk.Transform
    linear: sitk.Transform
    rigid: sitk.Euler3DTransform
    deformable: sitk.Transform | None
    stages: tuple[StageReport, ...]
    initial: sitk.Transform
    fixed_work: sitk.Image
    moving_work: sitk.Image
    fixed_mask: sitk.Image
    moving_mask: sitk.Image


# ============================================================================== preparation
def working_grid(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """An empty float32 image covering ``image``'s box with isotropic ``spacing_mm`` (an axis
    whose native spacing is coarser keeps it) and the same direction cosines."""
    sp_in = np.asarray(image.GetSpacing(), float)
    sp = np.maximum(sp_in, float(spacing_mm))
    size_in = np.asarray(image.GetSize(), float)
    extent = size_in * sp_in
    size = np.maximum(1, np.round(extent / sp)).astype(int)
    d = np.asarray(image.GetDirection(), float).reshape(3, 3)
    # keep the outer faces of the box: first voxel centre half a new voxel inside the old face
    lo_face = np.asarray(image.GetOrigin(), float) - d @ (sp_in / 2)
    origin = lo_face + d @ (sp / 2)
    out = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    out.SetSpacing(tuple(float(s) for s in sp))
    out.SetOrigin(tuple(float(o) for o in origin))
    out.SetDirection(image.GetDirection())
    return out


def to_working(image: sitk.Image, spacing_mm: float, default: float) -> sitk.Image:
    """``image`` smoothed (anti-alias) and resampled onto :func:`working_grid` (float32).

    Parameters
    ----------
    image : SimpleITK.Image
    spacing_mm : float
        Working spacing [mm].
    default : float
        Value outside the image (−1000 HU for CT, 0 for activity).
    """
    grid = working_grid(image, spacing_mm)
    img = sitk.Cast(image, sitk.sitkFloat32)
    sp_in = np.asarray(image.GetSpacing(), float)
    sp_out = np.asarray(grid.GetSpacing(), float)
    sig = ANTIALIAS_SIGMA_FRACTION * np.sqrt(np.maximum(sp_out**2 - sp_in**2, 0.0))
    if np.any(sig > 0.1 * sp_in):
        arr = sitk.GetArrayViewFromImage(img)
        sig_vox = (sig / sp_in)[::-1]  # (z, y, x)
        sm = ndimage.gaussian_filter(arr.astype(np.float32), sig_vox, mode="nearest",
                                     truncate=3.0)
        tmp = sitk.GetImageFromArray(sm)
        tmp.CopyInformation(img)
        img = tmp
    return sitk.Resample(img, grid, sitk.Transform(), sitk.sitkLinear, float(default),
                         sitk.sitkFloat32)


def window(image: sitk.Image, lo: float, hi: float) -> sitk.Image:
    """Clip intensities to ``[lo, hi]`` (float32, geometry kept)."""
    return sitk.Clamp(sitk.Cast(image, sitk.sitkFloat32), sitk.sitkFloat32, float(lo), float(hi))


def body_mask(ct: sitk.Image, threshold_hu: float = -400.0, dilate_voxels: int = 1
              ) -> sitk.Image:
    """Body mask (uint8) of a CT: above ``threshold_hu``, largest connected component, holes
    (lungs, bowel gas) filled slice by slice, dilated by ``dilate_voxels``.

    Returns an all-zero mask when nothing is above the threshold.
    """
    arr = sitk.GetArrayViewFromImage(ct) > threshold_hu  # (z, y, x)
    return _wrap_mask(_body_from_binary(arr, dilate_voxels), ct)


def activity_mask(spect: sitk.Image, fraction: float = 0.02, dilate_voxels: int = 2
                  ) -> sitk.Image:
    """Mask (uint8) of a SPECT: above ``fraction`` of the 99.9th percentile, largest component,
    filled and dilated (used for SPECT-only registration)."""
    arr = sitk.GetArrayViewFromImage(spect)
    pos = arr[arr > 0]
    if pos.size == 0:
        return _wrap_mask(np.zeros(arr.shape, bool), spect)
    thr = fraction * float(np.percentile(pos, 99.9))
    return _wrap_mask(_body_from_binary(arr > thr, dilate_voxels), spect)


def _body_from_binary(binary: np.ndarray, dilate_voxels: int) -> np.ndarray:
    if not binary.any():
        return binary
    lab, n = ndimage.label(binary)
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        binary = lab == int(np.argmax(sizes))
    filled = np.empty_like(binary)
    for z in range(binary.shape[0]):
        filled[z] = ndimage.binary_fill_holes(binary[z])
    if dilate_voxels > 0:
        filled = ndimage.binary_dilation(filled, iterations=int(dilate_voxels))
    return filled


def _wrap_mask(mask: np.ndarray, like: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.CopyInformation(like)
    return img


def image_centre(image: sitk.Image) -> tuple[float, float, float]:
    """Physical centre [mm] of an image's voxel grid."""
    idx = [(s - 1) / 2.0 for s in image.GetSize()]
    return tuple(float(v) for v in image.TransformContinuousIndexToPhysicalPoint(idx))


def mask_centroid(mask: sitk.Image) -> np.ndarray:
    """Physical centroid [mm] of a binary mask (x, y, z)."""
    idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    if idx.size == 0:
        return np.asarray(image_centre(mask))
    c = idx.mean(axis=0)[::-1]  # (x, y, z) index
    return np.asarray(mask.TransformContinuousIndexToPhysicalPoint(c.tolist()))


def initial_transform(fixed: sitk.Image, moving: sitk.Image, fixed_mask: sitk.Image,
                      moving_mask: sitk.Image) -> sitk.Euler3DTransform:
    """Identity about the fixed image centre, or a centroid alignment when the boxes overlap
    by less than :data:`CENTRING_OVERLAP` (announced with a warning)."""
    t = sitk.Euler3DTransform()
    t.SetCenter(image_centre(fixed))
    if overlap_fraction(fixed, moving) < CENTRING_OVERLAP:
        shift = mask_centroid(moving_mask) - mask_centroid(fixed_mask)
        warnings.warn(f"the images overlap by {overlap_fraction(fixed, moving):.0%} of the "
                      f"reference box only; starting from a body-centroid alignment (shift "
                      f"{np.round(shift, 1).tolist()} mm)", stacklevel=2)
        t.SetTranslation(tuple(float(s) for s in shift))
    return t


# ============================================================================== optimisation
def _sampling_percentages(fixed: sitk.Image, mask: sitk.Image, settings: StageSettings
                          ) -> list[float]:
    frac = float(np.count_nonzero(sitk.GetArrayViewFromImage(mask))) / max(
        1, int(np.prod(mask.GetSize())))
    frac = max(frac, 1e-3)
    out = []
    for s in settings.shrink_factors:
        n = math.prod(max(1, math.ceil(v / s)) for v in fixed.GetSize())
        out.append(float(min(1.0, settings.samples / (n * frac))))
    return out


def _method(fixed: sitk.Image, mask: sitk.Image, settings: StageSettings,
            options: RegistrationOptions) -> sitk.ImageRegistrationMethod:
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(options.histogram_bins)
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentagePerLevel(_sampling_percentages(fixed, mask, settings),
                                          options.seed)
    r.SetMetricFixedMask(mask)
    # The metric sees 10³–10⁴ samples of a ~10⁶-voxel image: image gradients computed at the
    # samples (central differences) cost less than a gradient filter over the whole image.
    r.MetricUseFixedImageGradientFilterOff()
    r.MetricUseMovingImageGradientFilterOff()
    r.SetInterpolator(sitk.sitkLinear)
    r.SetShrinkFactorsPerLevel(list(settings.shrink_factors))
    r.SetSmoothingSigmasPerLevel(list(settings.smoothing_sigmas_mm))
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return r


class _Tracker:
    """Collects the metric at the first and last iteration of the finest level."""

    def __init__(self, method: sitk.ImageRegistrationMethod, n_levels: int,
                 progress: ProgressFn | None, label: str) -> None:
        self.m = method
        self.n_levels = n_levels
        self.level = -1
        self.first = math.nan
        self.last = math.nan
        self.iterations = 0
        self.progress = progress
        self.label = label

    def on_level(self) -> None:
        self.level += 1
        self.first = math.nan
        self.iterations = 0
        if self.progress is not None:
            self.progress(f"{self.label} level {self.level + 1}/{self.n_levels}",
                          self.level / self.n_levels)

    def on_iteration(self) -> None:
        v = self.m.GetMetricValue()
        if math.isnan(self.first):
            self.first = v
        self.last = v
        self.iterations += 1

    def attach(self) -> None:
        self.m.AddCommand(sitk.sitkMultiResolutionIterationEvent, self.on_level)
        self.m.AddCommand(sitk.sitkIterationEvent, self.on_iteration)


def _run(method: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image,
         stage: str, settings: StageSettings, progress: ProgressFn | None
         ) -> tuple[sitk.Transform, StageReport]:
    tracker = _Tracker(method, len(settings.shrink_factors), progress, stage)
    tracker.attach()
    t0 = time.perf_counter()
    try:
        out = method.Execute(fixed, moving)
    except RuntimeError as exc:
        msg = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise GeometryError(f"{stage} registration could not run: "
                            f"{msg[-1] if msg else exc}") from None
    report = StageReport(stage=stage, metric_initial=float(tracker.first),
                         metric_final=float(method.GetMetricValue()),
                         iterations=tracker.iterations,
                         stop_condition=method.GetOptimizerStopConditionDescription(),
                         time_s=time.perf_counter() - t0,
                         n_parameters=int(out.GetNumberOfParameters()))
    return out, report


def _unwrap(tf: sitk.Transform) -> sitk.Transform:
    """The single transform inside a one-element composite (what ``inPlace=False`` returns)."""
    if tf.GetName() == "CompositeTransform":
        comp = sitk.CompositeTransform(tf)
        if comp.GetNumberOfTransforms() == 1:
            return comp.GetNthTransform(0).Downcast()
    return tf.Downcast()


def register_rigid(fixed: sitk.Image, moving: sitk.Image, mask: sitk.Image,
                   initial: sitk.Euler3DTransform, options: RegistrationOptions,
                   progress: ProgressFn | None = None
                   ) -> tuple[sitk.Euler3DTransform, StageReport]:
    """Rigid (6 parameters) stage: Euler 3D about the fixed image centre."""
    s = options.rigid
    r = _method(fixed, mask, s, options)
    r.SetOptimizerAsRegularStepGradientDescent(learningRate=4.0, minStep=0.01,
                                               numberOfIterations=s.iterations,
                                               relaxationFactor=0.6,
                                               gradientMagnitudeTolerance=1e-8)
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetInitialTransform(sitk.Euler3DTransform(initial), inPlace=False)
    out, rep = _run(r, fixed, moving, TransformStage.RIGID.value, s, progress)
    return sitk.Euler3DTransform(_unwrap(out)), rep


def register_affine(fixed: sitk.Image, moving: sitk.Image, mask: sitk.Image,
                    rigid: sitk.Transform, options: RegistrationOptions,
                    progress: ProgressFn | None = None
                    ) -> tuple[sitk.AffineTransform, StageReport]:
    """Affine (12 parameters) stage, started from the rigid result."""
    s = options.affine
    start = sitk.AffineTransform(3)
    lin = sitk.Euler3DTransform(rigid) if rigid.GetName() == "Euler3DTransform" else None
    if lin is not None:
        start.SetMatrix(lin.GetMatrix())
        start.SetTranslation(lin.GetTranslation())
        start.SetCenter(lin.GetCenter())
    else:
        start = sitk.AffineTransform(rigid)
    r = _method(fixed, mask, s, options)
    r.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=0.01,
                                               numberOfIterations=s.iterations,
                                               relaxationFactor=0.6,
                                               gradientMagnitudeTolerance=1e-8)
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetInitialTransform(start, inPlace=False)
    out, rep = _run(r, fixed, moving, TransformStage.AFFINE.value, s, progress)
    return sitk.AffineTransform(_unwrap(out)), rep


def bspline_mesh(fixed: sitk.Image, spacing_mm: float) -> list[int]:
    """B-spline mesh size (control-point intervals per axis) for a control-point spacing."""
    extent = [(n - 1) * s for n, s in zip(fixed.GetSize(), fixed.GetSpacing(), strict=True)]
    return [max(1, round(e / spacing_mm)) for e in extent]


def register_bspline(fixed: sitk.Image, moving: sitk.Image, mask: sitk.Image,
                     linear: sitk.Transform, options: RegistrationOptions,
                     progress: ProgressFn | None = None
                     ) -> tuple[sitk.BSplineTransform, StageReport]:
    """Deformable stage: cubic B-spline on the fixed working grid, composed before ``linear``."""
    s = options.bspline
    start = sitk.BSplineTransformInitializer(fixed, bspline_mesh(fixed,
                                                                 options.bspline_mesh_spacing_mm),
                                             order=3)
    r = _method(fixed, mask, s, options)
    r.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=s.iterations,
                           maximumNumberOfCorrections=5,
                           maximumNumberOfFunctionEvaluations=2 * s.iterations,
                           costFunctionConvergenceFactor=1e7)
    r.SetMovingInitialTransform(linear)
    r.SetInitialTransform(start, inPlace=False)
    out, rep = _run(r, fixed, moving, TransformStage.BSPLINE.value, s, progress)
    return sitk.BSplineTransform(_unwrap(out)), rep


def compose(linear: sitk.Transform, deformable: sitk.Transform | None) -> sitk.Transform:
    """``T(x) = linear(deformable(x))`` as one transform (a composite when deformable)."""
    if deformable is None:
        return linear.Downcast()
    return sitk.CompositeTransform([linear, deformable])


def prepare_ct(ct: sitk.Image, options: RegistrationOptions) -> tuple[sitk.Image, sitk.Image]:
    """Working image (windowed, float32) and body mask of a CT."""
    lo, hi = options.hu_window
    work = window(to_working(ct, options.working_spacing_mm, lo), lo, hi)
    return work, body_mask(work, options.body_threshold_hu)


def prepare_spect(spect: sitk.Image, options: RegistrationOptions
                  ) -> tuple[sitk.Image, sitk.Image]:
    """Working image and activity mask of a SPECT (values clipped to [0, 99.9th percentile])."""
    work = to_working(spect, options.working_spacing_mm, 0.0)
    arr = sitk.GetArrayViewFromImage(work)
    pos = arr[arr > 0]
    hi = float(np.percentile(pos, 99.9)) if pos.size else 1.0
    work = window(work, 0.0, max(hi, 1e-12))
    return work, activity_mask(work)


def register_pair(fixed_work: sitk.Image, moving_work: sitk.Image, fixed_mask: sitk.Image,
                  moving_mask: sitk.Image, options: RegistrationOptions,
                  stages: tuple[TransformStage, ...] | None = None,
                  progress: ProgressFn | None = None) -> PairRegistration:
    """Run the classical chain on prepared working images (see :func:`prepare_ct`).

    Parameters
    ----------
    fixed_work, moving_work : SimpleITK.Image
        Prepared images (float32).
    fixed_mask, moving_mask : SimpleITK.Image
        Metric masks (uint8) on the working grids; the moving mask only serves the centroid
        start and QA.
    options : RegistrationOptions
    stages : tuple of TransformStage, optional
        Default ``options.stages``.
    progress : callable(message, fraction), optional

    Raises
    ------
    GeometryError
        The fixed mask is empty or ITK could not evaluate the metric (e.g. no overlap).
    """
    stages = tuple(options.stages if stages is None else stages)
    if not np.any(sitk.GetArrayViewFromImage(fixed_mask)):
        raise GeometryError("the reference image has no voxel inside the body/activity mask")
    if not np.any(sitk.GetArrayViewFromImage(moving_mask)):
        raise GeometryError("the moving image has no voxel inside the body/activity mask")
    init = initial_transform(fixed_work, moving_work, fixed_mask, moving_mask)
    reports: list[StageReport] = []
    n = len(stages)

    def sub(i: int) -> ProgressFn | None:
        if progress is None:
            return None
        return lambda msg, f: progress(msg, (i + f) / n)

    linear, rep = register_rigid(fixed_work, moving_work, fixed_mask, init, options, sub(0))
    linear_tf: sitk.Transform = linear
    reports.append(rep)
    deformable = None
    for i, st in enumerate(stages[1:], start=1):
        if st is TransformStage.AFFINE:
            linear_tf, rep = register_affine(fixed_work, moving_work, fixed_mask, linear_tf,
                                             options, sub(i))
        elif st is TransformStage.BSPLINE:
            deformable, rep = register_bspline(fixed_work, moving_work, fixed_mask, linear_tf,
                                               options, sub(i))
        reports.append(rep)
    if progress is not None:
        progress("done", 1.0)
    return PairRegistration(transform=compose(linear_tf, deformable), linear=linear_tf,
                            rigid=linear, deformable=deformable, stages=tuple(reports),
                            initial=init,
                            fixed_work=fixed_work, moving_work=moving_work,
                            fixed_mask=fixed_mask, moving_mask=moving_mask)


def register_ct_pair(fixed_ct: sitk.Image, moving_ct: sitk.Image,
                     options: RegistrationOptions | None = None,
                     stages: tuple[TransformStage, ...] | None = None,
                     progress: ProgressFn | None = None) -> PairRegistration:
    """Register a moving CT to a fixed (reference) CT [HU] with the classical chain.

    Returns
    -------
    PairRegistration
        ``transform`` maps reference points to moving points [mm].
    """
    options = options or RegistrationOptions()
    fw, fm = prepare_ct(fixed_ct, options)
    mw, mm = prepare_ct(moving_ct, options)
    return register_pair(fw, mw, fm, mm, options, stages, progress)


def register_spect_pair(fixed_spect: sitk.Image, moving_spect: sitk.Image,
                        options: RegistrationOptions | None = None,
                        progress: ProgressFn | None = None) -> PairRegistration:
    """Rigid SPECT-to-SPECT registration (activity concentration images, any units).

    Used when a timepoint has no CT. The activity distribution changes between timepoints, so
    only the rigid stage is run; mutual information tolerates the changing contrast.
    """
    options = options or RegistrationOptions()
    fw, fm = prepare_spect(fixed_spect, options)
    mw, mm = prepare_spect(moving_spect, options)
    return register_pair(fw, mw, fm, mm, options, (TransformStage.RIGID,), progress)


def metric_value(fixed_work: sitk.Image, moving_work: sitk.Image, mask: sitk.Image,
                 transform: sitk.Transform, options: RegistrationOptions) -> float:
    """Mattes MI (lower is better) of the pair under ``transform`` on the full-resolution
    working grid with the stage's seeded samples (the same sample set for every transform)."""
    s = StageSettings((1,), (0.0,), 1, options.bspline.samples)
    r = _method(fixed_work, mask, s, options)
    r.SetMovingInitialTransform(transform)
    r.SetInitialTransform(sitk.TranslationTransform(3))
    return float(r.MetricEvaluate(fixed_work, moving_work))


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None
