"""SPECT/CT acquisition simulation: patient motion, CT noise, quantitative SPECT with the
system resolution, partial-volume effects and Poisson noise.

Array and image kernels only (no files).

What is simulated and what is simplified
----------------------------------------
* **Motion.** Each timepoint has the patient in a different pose: a rigid transform (a few mm
  and degrees; the first timepoint is the reference pose, identity), optionally composed with
  a mild smooth deformation. Transforms are generated in the *timepoint → reference*
  direction (a point of the timepoint's image space is mapped to the same anatomical point in
  the reference space): the timepoint images are the reference-pose images resampled through
  it. Its inverse (*reference → timepoint*) is what an image registration with the reference
  as fixed and the timepoint as moving image returns, and what
  ``sitk.Resample(timepoint_image, reference_image, T_ref_to_tp)`` needs to bring a timepoint
  onto the reference grid.
* **CT** per timepoint: the reference CT numbers resampled into the timepoint pose (linear
  interpolation), plus independent Gaussian noise (σ drawn per patient, 10–20 HU), rounded
  to integers as a scanner stores them.
* **SPECT**: image-domain model of a quantitative, attenuation- and scatter-corrected OSEM
  reconstruction. The true activity concentration is blurred with a stationary 3D Gaussian
  of the system's reconstructed resolution (FWHM per nuclide/collimator in
  :data:`ACQUISITION_DEFAULTS`) combined with the averaging over a SPECT voxel (a box of the
  SPECT voxel size, approximated by a Gaussian of equal variance s²/12 less what the CT voxel
  already averages), then resampled onto the SPECT grid in the timepoint pose. This gives
  the partial-volume effects (spill-out of small objects, spill-in from neighbours) of the
  reconstructed image. Expected counts are ``μ = S·T·A_voxel`` (S sensitivity [cps/Bq], T
  acquisition duration [s], A the blurred activity in the voxel [Bq]); counts are drawn
  independently from Poisson(μ) per voxel; Bq/mL images are ``counts / (S·T·V_voxel)``.

Simplifications (also written to ``truth.json``): no projection, attenuation, scatter or
collimator-detector response modelling and no reconstruction (image-domain blur instead);
stationary (depth-independent) resolution; independent Poisson noise per reconstructed voxel
(OSEM noise is spatially correlated and not Poisson); activity frozen during the acquisition
(no decay or redistribution over the frame); no dead time; the CT has no beam hardening,
streaks or metal artefacts; the CT field of view is cropped to the patient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import SimpleITK as sitk

from dosimetry import units
from dosimetry.errors import InputError

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


class SpectModel(StrEnum):
    """How the SPECT of a phantom is simulated.

    ``image``: the image-domain model of this module (blur + Poisson per voxel; fast).
    ``projection``: projections with attenuation, scatter (TEW windows), collimator-detector
    response and Poisson noise, reconstructed by :mod:`dosimetry.reconstruction`
    (:mod:`phantoms.projection`; minutes per timepoint).
    """

    IMAGE = "image"
    PROJECTION = "projection"


@dataclass(frozen=True)
class AcquisitionSpec:
    """How a SPECT/CT timepoint is acquired and reconstructed.

    Attributes
    ----------
    collimator : str
    fwhm_mm : float
        Reconstructed system resolution (FWHM) [mm], stationary.
    sensitivity_cps_per_mbq : float
        Count rate in the reconstructed image per MBq in the field of view.
    frame_duration_s : float
        Acquisition duration [s] (time per view × views).
    n_views : int
    spect_spacing_mm : float
        Isotropic SPECT voxel size [mm].
    matrix_xy : int or None
        SPECT in-plane matrix; None chooses the smallest multiple of 8 covering the CT.
    ct_noise_hu : tuple of float
        Range of the CT noise standard deviation drawn per patient [HU].
    """

    collimator: str
    fwhm_mm: float
    sensitivity_cps_per_mbq: float
    frame_duration_s: float = 1200.0
    n_views: int = 60
    spect_spacing_mm: float = 4.7952
    matrix_xy: int | None = 128
    ct_noise_hu: tuple[float, float] = (10.0, 20.0)
    fwhm_source: str = ""
    sensitivity_source: str = ""

    def __post_init__(self) -> None:
        if not (1.0 <= self.fwhm_mm <= 40.0):
            raise InputError(f"SPECT FWHM {self.fwhm_mm} mm is outside 1–40 mm")
        if not (self.sensitivity_cps_per_mbq > 0 and self.frame_duration_s > 0):
            raise InputError(f"sensitivity {self.sensitivity_cps_per_mbq} cps/MBq and frame "
                             f"duration {self.frame_duration_s} s must be > 0")
        if not (2.0 <= self.spect_spacing_mm <= 20.0):
            raise InputError(f"SPECT voxel size {self.spect_spacing_mm} mm is outside 2–20 mm")
        if self.matrix_xy is not None and not (16 <= self.matrix_xy <= 512):
            raise InputError(f"SPECT matrix {self.matrix_xy} is outside 16–512")
        lo, hi = self.ct_noise_hu
        if not (0 <= lo <= hi <= 200):
            raise InputError(f"CT noise range {self.ct_noise_hu} HU is invalid")

    @property
    def sensitivity_cps_per_bq(self) -> float:
        return units.cps_per_mbq_to_cps_per_bq(self.sensitivity_cps_per_mbq)


#: Default acquisition per nuclide. FWHM: reconstructed resolution of OSEM with resolution
#: recovery at typical body depths, Lu-177 208 keV with a medium-energy collimator ≈ 11 mm,
#: I-131 364 keV with a high-energy collimator ≈ 14 mm (unverified: typical vendor system
#: resolutions at 10 cm are ~10–12 mm and ~13–15 mm). Sensitivity: Lu-177 5.67 cps/MBq
#: measured for SPECT/CT in EJNMMI Res 2018, doi:10.1186/s13550-018-0459-4 (abstract read);
#: I-131 HEGP 4 cps/MBq (unverified). 60 views × 20 s = 1200 s per bed position.
ACQUISITION_DEFAULTS: dict[str, AcquisitionSpec] = {
    "Lu-177": AcquisitionSpec(
        collimator="MEGP", fwhm_mm=11.0, sensitivity_cps_per_mbq=5.67,
        fwhm_source="typical MEGP/MELP reconstructed resolution (unverified)",
        sensitivity_source="EJNMMI Res 2018, doi:10.1186/s13550-018-0459-4 (5.67 cps/MBq "
                           "SPECT/CT)"),
    "I-131": AcquisitionSpec(
        collimator="HEGP", fwhm_mm=14.0, sensitivity_cps_per_mbq=4.0,
        fwhm_source="typical HEGP reconstructed resolution (unverified)",
        sensitivity_source="typical HEGP sensitivity at 364 keV (unverified)"),
}


def default_acquisition(nuclide: str) -> AcquisitionSpec:
    """The default :class:`AcquisitionSpec` of ``nuclide`` (``Lu-177`` or ``I-131``)."""
    try:
        return ACQUISITION_DEFAULTS[nuclide]
    except KeyError:
        raise InputError(f"no SPECT acquisition defaults for nuclide {nuclide!r}; known: "
                         f"{', '.join(ACQUISITION_DEFAULTS)}") from None


# ============================================================================== motion
@dataclass(frozen=True)
class RigidPose:
    """A rigid pose change: ITK Euler3D angles [deg] about ``center_mm`` and a translation.

    Used as the *timepoint → reference* transform (see the module docstring); ITK's
    Euler3DTransform applies ``R = Rz·Rx·Ry`` about the centre, then the translation.
    """

    angles_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    center_mm: tuple[float, float, float]

    def transform(self) -> sitk.Euler3DTransform:
        """The pose as a SimpleITK transform (timepoint → reference points)."""
        t = sitk.Euler3DTransform()
        t.SetCenter(self.center_mm)
        t.SetRotation(*(math.radians(a) for a in self.angles_deg))
        t.SetTranslation(self.translation_mm)
        return t

    @property
    def is_identity(self) -> bool:
        return all(v == 0 for v in (*self.angles_deg, *self.translation_mm))


def draw_pose(rng: np.random.Generator, center_mm, scale: float = 1.0) -> RigidPose:
    """A plausible repositioning error between two SPECT/CT sessions.

    Rotations N(0, σ) with σ = 1° about x (pitch) and y (yaw), 2° about z (roll), clipped to
    2.5° / 2.5° / 4°; translations N(0, 4 mm) in x and y, N(0, 6 mm) in z, clipped to 10 and
    12 mm. ``scale`` multiplies all of them (0 gives identity).
    """
    ang = rng.normal(0.0, [1.0, 1.0, 2.0]) * scale
    ang = np.clip(ang, [-2.5, -2.5, -4.0], [2.5, 2.5, 4.0])
    tr = rng.normal(0.0, [4.0, 4.0, 6.0]) * scale
    tr = np.clip(tr, [-10.0, -10.0, -12.0], [10.0, 10.0, 12.0])
    return RigidPose(tuple(round(float(a), 4) for a in ang),
                     tuple(round(float(t), 3) for t in tr),
                     tuple(float(c) for c in center_mm))


def draw_deformation(rng: np.random.Generator, reference: sitk.Image, amplitude_mm: float,
                     step_mm: float = 25.0) -> sitk.Image:
    """A smooth random displacement field [mm] over ``reference``'s extent (vector image,
    float64, on a coarse grid of ``step_mm`` with a 2-node margin), σ = ``amplitude_mm``
    per component, correlation length ≈ 100 mm."""
    from phantoms.anatomy import smooth_field

    lo = np.asarray(reference.GetOrigin(), float)
    extent = (np.asarray(reference.GetSize()) - 1) * np.asarray(reference.GetSpacing())
    n = np.ceil(extent / step_mm).astype(int) + 5
    shape = (int(n[2]), int(n[1]), int(n[0]))
    comps = [amplitude_mm * smooth_field(shape, (step_mm,) * 3, 100.0, rng).astype(np.float64)
             for _ in range(3)]
    arr = np.stack(comps, axis=-1)
    img = sitk.GetImageFromArray(arr, isVector=True)
    img.SetSpacing((step_mm,) * 3)
    img.SetOrigin(tuple(lo - 2 * step_mm))
    return img


def timepoint_transform(pose: RigidPose, deformation: sitk.Image | None) -> sitk.Transform:
    """Timepoint → reference transform: ``x_ref = R(y + d(y))`` (d the deformation)."""
    rigid = pose.transform()
    if deformation is None:
        return rigid
    disp = sitk.DisplacementFieldTransform(sitk.Image(deformation))
    return sitk.CompositeTransform([rigid, disp])


def invert_deformation(deformation: sitk.Image) -> sitk.Image:
    """Numerical inverse of a displacement field (ITK fixed-point iteration)."""
    return sitk.InvertDisplacementField(deformation, maximumNumberOfIterations=40,
                                        maxErrorToleranceThreshold=0.01,
                                        meanErrorToleranceThreshold=0.0001,
                                        enforceBoundaryCondition=True)


# ============================================================================== grids
def make_image(arr: np.ndarray, spacing, origin) -> sitk.Image:
    """Wrap a (z, y, x) array as an image with identity direction."""
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    return img


def spect_grid(ct_core: sitk.Image, spec: AcquisitionSpec) -> sitk.Image:
    """An empty float32 image defining the SPECT grid: isotropic ``spec.spect_spacing_mm``,
    centred in-plane on the CT, covering the CT's axial range."""
    s = spec.spect_spacing_mm
    size = np.asarray(ct_core.GetSize())
    sp = np.asarray(ct_core.GetSpacing())
    lo = np.asarray(ct_core.GetOrigin()) - sp / 2
    extent = size * sp
    center = lo + extent / 2
    if spec.matrix_xy is None:
        nxy = int(math.ceil(max(extent[0], extent[1]) / s / 8.0) * 8)
    else:
        nxy = spec.matrix_xy
    nz = math.ceil(extent[2] / s)
    origin = (center[0] - (nxy - 1) * s / 2, center[1] - (nxy - 1) * s / 2, lo[2] + s / 2)
    img = sitk.Image(nxy, nxy, nz, sitk.sitkFloat32)
    img.SetSpacing((s, s, s))
    img.SetOrigin(tuple(float(v) for v in origin))
    return img


# ============================================================================== CT
def simulate_ct(hu_ref: sitk.Image, ct_grid: sitk.Image, tp_to_ref: sitk.Transform,
                noise_hu: float, rng: np.random.Generator) -> sitk.Image:
    """CT of one timepoint [HU]: reference CT in the timepoint pose + Gaussian noise.

    Parameters
    ----------
    hu_ref : SimpleITK.Image
        Noise-free CT numbers in the reference pose (padded grid).
    ct_grid : SimpleITK.Image
        Defines the output grid.
    tp_to_ref : SimpleITK.Transform
    noise_hu : float
        Noise standard deviation [HU].

    Returns
    -------
    SimpleITK.Image
        float32 holding integers in −1024 … 3071 (what a 12-bit CT stores).
    """
    moved = sitk.Resample(hu_ref, ct_grid, tp_to_ref, sitk.sitkLinear, -1000.0,
                          sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(moved)
    arr += np.float32(noise_hu) * rng.standard_normal(arr.shape, dtype=np.float32)
    np.rint(arr, out=arr)
    np.clip(arr, -1024.0, 3071.0, out=arr)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(ct_grid)
    return out


# ============================================================================== SPECT
@dataclass(frozen=True)
class SpectResult:
    """One simulated SPECT: counts, expected counts and Bq/mL on the SPECT grid."""

    counts: sitk.Image  # float32 holding integers
    expected: sitk.Image  # float32 expected counts μ
    bq_per_ml: sitk.Image  # counts / (S·T·V)
    expected_total: float  # Σ μ (float64)
    counts_total: int
    activity_in_grid_bq: float  # Σ of the blurred activity over the SPECT grid


def blur_sigma_mm(spec: AcquisitionSpec, fine_spacing) -> tuple[float, float, float]:
    """Per-axis σ [mm] of the combined system blur and SPECT-voxel averaging (see module)."""
    base = (spec.fwhm_mm * FWHM_TO_SIGMA) ** 2
    s2 = spec.spect_spacing_mm ** 2
    return tuple(math.sqrt(base + max(s2 - float(f) ** 2, 0.0) / 12.0) for f in fine_spacing)


def simulate_spect(activity_ref: sitk.Image, grid: sitk.Image, tp_to_ref: sitk.Transform,
                   spec: AcquisitionSpec, rng: np.random.Generator) -> SpectResult:
    """Quantitative SPECT of one timepoint.

    Parameters
    ----------
    activity_ref : SimpleITK.Image
        True activity [Bq per voxel] in the reference pose (fine CT grid, padded).
    grid : SimpleITK.Image
        The SPECT grid (see :func:`spect_grid`).
    tp_to_ref : SimpleITK.Transform
        Timepoint → reference transform.
    spec : AcquisitionSpec
    rng : numpy.random.Generator

    Returns
    -------
    SpectResult
    """
    v_fine_ml = units.voxel_volume_ml(activity_ref.GetSpacing())
    conc = sitk.Cast(activity_ref, sitk.sitkFloat32) * (1.0 / v_fine_ml)  # Bq/mL
    sig = blur_sigma_mm(spec, activity_ref.GetSpacing())
    arr = sitk.GetArrayFromImage(conc)
    from scipy import ndimage

    sig_vox = [s / sp for s, sp in zip(sig[::-1], activity_ref.GetSpacing()[::-1], strict=True)]
    blurred = ndimage.gaussian_filter(arr, sig_vox, mode="constant", cval=0.0, truncate=3.5)
    bimg = sitk.GetImageFromArray(blurred)
    bimg.CopyInformation(conc)
    on_grid = sitk.Resample(bimg, grid, tp_to_ref, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    c = sitk.GetArrayFromImage(on_grid).astype(np.float64)
    np.maximum(c, 0.0, out=c)
    v_ml = units.voxel_volume_ml(grid.GetSpacing())
    a_vox = c * v_ml  # Bq per SPECT voxel
    mu = a_vox * (spec.sensitivity_cps_per_bq * spec.frame_duration_s)
    counts = rng.poisson(mu)
    scale = 1.0 / (spec.sensitivity_cps_per_bq * spec.frame_duration_s * v_ml)
    bq = (counts * scale).astype(np.float32)

    def wrap(x: np.ndarray) -> sitk.Image:
        img = sitk.GetImageFromArray(x.astype(np.float32))
        img.CopyInformation(grid)
        return img

    return SpectResult(counts=wrap(counts), expected=wrap(mu), bq_per_ml=wrap(bq),
                       expected_total=float(mu.sum()), counts_total=int(counts.sum()),
                       activity_in_grid_bq=float(a_vox.sum()))
