"""Partial-volume correction of VOI activities by the geometric transfer matrix (GTM).

The reconstructed SPECT is the true activity blurred by the system's point-spread function,
so a VOI loses counts to its neighbours (spill-out) and gains counts from them (spill-in).
When each region j holds a uniform concentration c_j, the mean measured in region i is

    m_i = Σ_j W_ij c_j,      W_ij = mean over region i of (PSF ∗ 1_j)

(Rousset, Ma and Evans, J Nucl Med 1998;39:904–911, "Correction for partial volume effects in
PET: principle and validation"; the same method for SPECT dosimetry in e.g. Erlandsson et al.,
Phys Med Biol 2012, doi:10.1088/0031-9155/57/21/R119). Solving W c = m for every timepoint gives
partial-volume-corrected concentrations, and c_j·V_j the corrected VOI activities.

How W is made here (on the label map's grid, usually the CT grid):

* regions: every label of the map, plus a *remainder* region — the body (CT > −400 HU when a
  CT is given, else every unlabelled voxel) outside all labels — because activity in the rest
  of the body spills into organs too. Voxels outside the body are taken to hold no activity.
* the blur of region j's indicator is a Gaussian with, per axis,
  σ² = σ_PSF² + Δ²/12 + Δ²/6: the system resolution (FWHM/2.3548), the box of a SPECT voxel of
  size Δ (variance Δ²/12), and the linear interpolation that brought the SPECT onto the label
  grid (triangle kernel, variance Δ²/6). The Gaussian for the box and the triangle is an
  approximation (their second moments are matched); it errs at the 1 % level for organs.

Assumptions (stated in the report): uniform activity inside each region; a stationary,
Gaussian PSF of known FWHM (measure it for your camera, collimator and reconstruction — it is
not in the DICOM header); the label map is aligned with the SPECT. The sensitivity of the
corrected activities to a 10 % error in the FWHM is returned as a relative uncertainty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from dosimetry.errors import InputError

#: FWHM → σ of a Gaussian: 1/(2√(2 ln 2)).
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
#: Label used in the matrix for the remainder of the body (not a label of the map).
REMAINDER = -1
#: CT number above which a voxel is inside the body [HU] (air −1000, lung ≈ −800…−700 with
#: blur; −400 keeps lungs by their own labels and fills the body contour).
BODY_HU = -400.0


@dataclass(frozen=True)
class GeometricTransferMatrix:
    """The GTM of a label map for one PSF.

    Attributes
    ----------
    regions : tuple of int
        Region labels in matrix order (:data:`REMAINDER` for the rest of the body).
    matrix : numpy.ndarray, shape (n, n)
        W[i, j]: mean over region i of the blurred indicator of region j (dimensionless).
    volumes_ml : numpy.ndarray, shape (n,)
        Region volumes [mL].
    sigma_mm : tuple of float
        Gaussian σ per axis (x, y, z) [mm] used for the blur.
    fwhm_mm : float
        System FWHM [mm].
    """

    regions: tuple[int, ...]
    matrix: np.ndarray
    volumes_ml: np.ndarray
    sigma_mm: tuple[float, float, float]
    fwhm_mm: float

    @property
    def condition_number(self) -> float:
        """2-norm condition number of W (large: the correction amplifies noise)."""
        return float(np.linalg.cond(self.matrix))

    def correct_means(self, means: np.ndarray) -> np.ndarray:
        """True mean concentrations from measured ones: solve W c = m.

        ``means`` has shape (n,) or (n, T) (one column per timepoint), any unit; the result has
        the same shape and unit.
        """
        return np.linalg.solve(self.matrix, np.asarray(means, dtype=float))


def _region_means(values: np.ndarray, n: int, index: np.ndarray) -> np.ndarray:
    flat = index.ravel()
    sums = np.bincount(flat, weights=values.ravel(), minlength=n + 1)
    counts = np.bincount(flat, minlength=n + 1)
    return sums[1:] / np.maximum(counts[1:], 1)


def region_index(labels: sitk.Image, ct: sitk.Image | None = None, *,
                 regions: tuple[int, ...] | None = None) -> tuple[tuple[int, ...], np.ndarray]:
    """Regions and, per voxel, 1 + the region's position (0: outside every region).

    Labels missing from ``regions`` (when given) join the remainder.
    """
    lab = sitk.GetArrayViewFromImage(labels).astype(np.int64)
    present = tuple(int(v) for v in np.unique(lab) if v != 0)
    if regions is None:
        regions = present
    if ct is not None:
        hu = sitk.GetArrayViewFromImage(ct)
        if hu.shape != lab.shape:
            raise InputError(f"CT grid {hu.shape[::-1]} differs from the label grid "
                             f"{lab.shape[::-1]} (both must be on the same grid)")
        body = hu > BODY_HU
    else:
        body = np.ones(lab.shape, bool)
    index = np.zeros(lab.shape, np.int64)
    for pos, r in enumerate(regions):
        index[lab == r] = pos + 1
    remainder = body & (index == 0)
    all_regions = regions
    if remainder.any():
        all_regions = (*regions, REMAINDER)
        index[remainder] = len(all_regions)
    return all_regions, index


def gtm(labels: sitk.Image, fwhm_mm: float, *, spect_spacing_mm: tuple[float, float, float]
        | None = None, ct: sitk.Image | None = None,
        regions: tuple[int, ...] | None = None) -> GeometricTransferMatrix:
    """Build the geometric transfer matrix of a label map (see the module docstring).

    Parameters
    ----------
    labels : SimpleITK.Image
        Integer label map (0 = background), on the grid the VOI means are measured on.
    fwhm_mm : float
        Reconstructed SPECT resolution (FWHM) [mm], isotropic and stationary.
    spect_spacing_mm : (x, y, z), optional
        Voxel size of the SPECT the means were measured from [mm], when it was resampled onto
        the label grid (adds its box and interpolation blur); ``None``: measured on its own grid.
    ct : SimpleITK.Image, optional
        CT [HU] on the label grid, for the body contour of the remainder region.
    regions : tuple of int, optional
        Labels to correct (default: all in the map).
    """
    if not (math.isfinite(fwhm_mm) and 0.0 < fwhm_mm <= 50.0):
        raise InputError(f"SPECT resolution FWHM {fwhm_mm!r} mm: must be in (0, 50] mm")
    all_regions, index = region_index(labels, ct, regions=regions)
    n = len(all_regions)
    if n == 0:
        raise InputError("label map has no labelled voxel: nothing to correct")
    spacing = np.array(labels.GetSpacing(), float)  # x, y, z
    var = np.full(3, (fwhm_mm * FWHM_TO_SIGMA) ** 2)
    if spect_spacing_mm is not None:
        d = np.asarray(spect_spacing_mm, float)
        var = var + d**2 / 12.0 + d**2 / 6.0
    sigma_mm = np.sqrt(var)
    sigma_vox = (sigma_mm / spacing)[::-1]  # numpy order z, y, x

    # Work in the box of all regions plus 4σ of margin (the blur beyond is < 1e-4).
    nz = np.nonzero(index)
    pad = np.ceil(4.0 * sigma_vox).astype(int)
    lo = np.maximum(np.array([a.min() for a in nz]) - pad, 0)
    hi = np.minimum(np.array([a.max() for a in nz]) + pad + 1, index.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    idx = index[box]
    flat = idx.ravel()
    counts = np.bincount(flat, minlength=n + 1)[1:]
    w = np.empty((n, n))
    buf = np.empty(idx.shape, np.float32)
    for j in range(n):
        ndimage.gaussian_filter((idx == j + 1).astype(np.float32), sigma_vox, output=buf,
                                mode="constant", truncate=4.0)
        sums = np.bincount(flat, weights=buf.ravel(), minlength=n + 1)[1:]
        w[:, j] = sums / np.maximum(counts, 1)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return GeometricTransferMatrix(regions=all_regions, matrix=w,
                                   volumes_ml=counts * voxel_ml,
                                   sigma_mm=tuple(float(s) for s in sigma_mm),
                                   fwhm_mm=float(fwhm_mm))


@dataclass(frozen=True)
class PvcResult:
    """Partial-volume-corrected VOI activities.

    Attributes
    ----------
    regions : tuple of int
        Region labels (:data:`REMAINDER` last when present).
    measured_bq : numpy.ndarray, shape (n, T)
        Activity in each region as measured [Bq].
    corrected_bq : numpy.ndarray, shape (n, T)
        After the GTM correction [Bq] (negative values, from noise in tiny regions, are kept
        and flagged by the caller).
    relative_sigma : numpy.ndarray, shape (n,)
        Relative change of the corrected activity (mean over timepoints) when the FWHM is
        10 % larger — the sensitivity to the resolution, used as a correlated uncertainty.
    condition_number : float
    fwhm_mm : float
    sigma_mm : tuple of float
    """

    regions: tuple[int, ...]
    measured_bq: np.ndarray
    corrected_bq: np.ndarray
    relative_sigma: np.ndarray
    condition_number: float
    fwhm_mm: float
    sigma_mm: tuple[float, float, float]

    def recovery(self) -> np.ndarray:
        """Measured / corrected activity per region and timepoint (the recovery coefficient)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.corrected_bq != 0, self.measured_bq / self.corrected_bq,
                            np.nan)


def gtm_correct(labels: sitk.Image, images_bq_per_ml: list[sitk.Image], fwhm_mm: float, *,
                spect_spacing_mm: tuple[float, float, float] | None = None,
                ct: sitk.Image | None = None, fwhm_relative_sigma: float = 0.10) -> PvcResult:
    """GTM partial-volume correction of every region at every timepoint.

    Parameters
    ----------
    labels : SimpleITK.Image
        Label map on the images' grid.
    images_bq_per_ml : list of SimpleITK.Image
        Activity concentration [Bq/mL] per timepoint, on the label grid.
    fwhm_mm, spect_spacing_mm, ct
        See :func:`gtm`.
    fwhm_relative_sigma : float
        Relative uncertainty of the FWHM (default 10 %); the corrected activities are
        recomputed with FWHM·(1 + this) and the relative change is the returned σ.
    """
    for k, img in enumerate(images_bq_per_ml):
        if img.GetSize() != labels.GetSize():
            raise InputError(f"timepoint {k}: image grid {img.GetSize()} differs from the label "
                             f"grid {labels.GetSize()}")
    m0 = gtm(labels, fwhm_mm, spect_spacing_mm=spect_spacing_mm, ct=ct)
    _, index = region_index(labels, ct, regions=tuple(r for r in m0.regions if r != REMAINDER))
    means = np.stack([_region_means(sitk.GetArrayViewFromImage(img), len(m0.regions), index)
                      for img in images_bq_per_ml], axis=1)
    corrected = m0.correct_means(means)
    vol = m0.volumes_ml[:, None]
    out_sigma = np.zeros(len(m0.regions))
    if fwhm_relative_sigma > 0:
        m1 = gtm(labels, fwhm_mm * (1.0 + fwhm_relative_sigma),
                 spect_spacing_mm=spect_spacing_mm, ct=ct)
        c1 = m1.correct_means(means)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.abs(c1 / corrected - 1.0)
        out_sigma = np.nan_to_num(np.nanmean(np.where(np.isfinite(rel), rel, np.nan), axis=1),
                                  nan=0.0)
    return PvcResult(regions=m0.regions, measured_bq=means * vol, corrected_bq=corrected * vol,
                     relative_sigma=out_sigma, condition_number=m0.condition_number,
                     fwhm_mm=m0.fwhm_mm, sigma_mm=m0.sigma_mm)


def rbv_correct(image: sitk.Image, labels: sitk.Image, fwhm_mm: float, *,
                region_totals: dict[int, float] | None = None,
                body: sitk.Image | None = None) -> sitk.Image:
    """Region-based voxel-wise (RBV) partial-volume correction of an activity or TIA map.

    RBV (Thomas et al., EJNMMI 2011;38:1104–1119, doi:10.1007/s00259-011-1745-9) multiplies
    the image by ``S / (PSF ∗ S)``, where S is the piecewise-constant image of the regions'
    (GTM-corrected) mean values: spill-out is put back into each region and removed from its
    neighbours, while the voxel-wise pattern inside a region is kept.

    Parameters
    ----------
    image : SimpleITK.Image
        Values per voxel (e.g. Bq·s per voxel) on its own grid, already carrying the blur of
        the system (the blur of its voxelisation included).
    labels : SimpleITK.Image
        Label map on the same grid (0: not in a region).
    fwhm_mm : float
        System resolution FWHM [mm].
    region_totals : dict label → total, optional
        Corrected total of a region (same unit as the image summed); regions not given keep
        the image's own total. Afterwards every region's total is set to this value.
    body : SimpleITK.Image, optional
        Body mask on the same grid; unlabelled body voxels form the remainder region, and
        voxels outside it end at zero. Default: all unlabelled voxels are the remainder.

    Returns
    -------
    SimpleITK.Image
        Corrected image, float64, same grid.
    """
    arr = sitk.GetArrayFromImage(image).astype(np.float64)
    lab = sitk.GetArrayFromImage(labels).astype(np.int64)
    if arr.shape != lab.shape:
        raise InputError(f"image grid {image.GetSize()} differs from the label grid "
                         f"{labels.GetSize()}")
    inside = (sitk.GetArrayFromImage(body) > 0) if body is not None else np.ones(lab.shape, bool)
    remainder = inside & (lab == 0)
    region = np.where(lab > 0, lab, np.where(remainder, -1, 0))
    totals = dict(region_totals or {})
    synth = np.zeros_like(arr)
    for r in np.unique(region):
        if r == 0:
            continue
        m = region == r
        total = totals.get(int(r), float(arr[m].sum()))
        synth[m] = max(total, 0.0) / m.sum()
    sigma = (fwhm_mm * FWHM_TO_SIGMA / np.array(image.GetSpacing()))[::-1]
    blurred = ndimage.gaussian_filter(synth, sigma, mode="constant", truncate=4.0)
    floor = 1e-6 * float(blurred.max()) if blurred.max() > 0 else 0.0
    factor = np.where(blurred > floor, synth / np.maximum(blurred, floor), 0.0)
    out = np.maximum(arr, 0.0) * factor
    for r, total in totals.items():
        m = region == r
        s = out[m].sum()
        if s > 0:
            out[m] *= total / s
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(image)
    return img
