"""Projection-space SPECT simulation: activity and μ map → projections → our reconstruction.

:mod:`phantoms.acquisition` models a reconstructed SPECT in the image domain (a stationary
blur and independent Poisson noise per voxel). This module simulates the acquisition itself
and reconstructs it with the same code a patient study goes through
(:mod:`dosimetry.reconstruction`), so the images have OSEM's resolution, its correlated noise,
its partial-volume and its convergence behaviour, and the corrections (attenuation, scatter,
collimator-detector response) are exercised on data with known truth.

Model (per timepoint)
---------------------
1. **Object.** The true activity [Bq/voxel] is brought onto the SPECT grid (the object grid of
   the reconstruction; isotropic voxels of the projection pixel size): concentration smoothed
   by the SPECT-voxel averaging (Gaussian of variance (s² − f²)/12 per axis, s the SPECT and f
   the fine voxel size), resampled through the timepoint → reference transform, times the
   voxel volume. The μ map at the photopeak energy comes from the noise-free CT (HU) of the
   phantom, by the reconstruction package's conversion
   (:func:`dosimetry.reconstruction.attenuation.mu_per_mm_of_hu`: HU → density and Schneider
   composition bin, Schneider et al. 2000, doi:10.1088/0031-9155/45/2/314; μ = ρ·(μ/ρ)(E)
   with xraylib cross sections, total with coherent scattering).
2. **Primary projections** by PyTomography's SPECT system matrix
   (:class:`pytomography.projectors.SPECT.SPECTSystemMatrix`: rotate-and-sum, Polson et al.
   2023, doi:10.1016/j.softx.2023.101586) with its attenuation transform and its Gaussian
   collimator-detector response (CDR), built by the reconstruction package
   (:func:`dosimetry.reconstruction.system.forward_project`, the operator its OSEM inverts):
   σ(d) = √((a·d + b)² + c²) from the collimator's hole diameter and length in PyTomography's
   SIMIND collimator table (:func:`dosimetry.reconstruction.collimator.psf_model`; effective
   hole length L − 2/μ_Pb) and the intrinsic resolution scaled from 140 keV as E^−½. Circular
   orbit of radius: the body's largest distance from the rotation axis plus
   :attr:`ProjectionModel.orbit_margin_mm`. The object→projection factor is 1 in air (the CDR
   kernels are normalised), so the expected primary counts per view are ``S·t_view·(H·A)``
   with S the system sensitivity [cps/Bq] and t_view the time per view (frame duration /
   views).
3. **Scatter in the photopeak window**: a scaled, blurred primary estimate,
   ``s = k·G_σ ⊗ p`` per view (p the primary projection, G_σ a 2-D Gaussian of FWHM
   :attr:`ProjectionModel.scatter_fwhm_mm` in the detector plane, k the scatter-to-primary
   ratio :attr:`ProjectionModel.scatter_to_primary`). A stated simplification: real scatter
   depends on depth and on the object's shape; this model has the right magnitude and
   smoothness, not its spatial detail.
4. **TEW windows.** The scatter spectrum is taken as linear across the photopeak window (the
   triple-energy-window assumption; Ogawa et al. 1991, IEEE TMI 10:408,
   doi:10.1109/42.97591): with scatter densities per keV ``s_lo`` and ``s_hi = r·s_lo`` at the
   window's lower and upper edges, the photopeak scatter is ``(s_lo + s_hi)·W/2`` and the
   lower (upper) adjacent window of width w_lo (w_hi) records ``s_lo·w_lo`` (``s_hi·w_hi``);
   no primary photon falls in them (ideal energy resolution). The TEW estimate
   ``(C_lo/w_lo + C_hi/w_hi)·W/2`` is then unbiased by construction, so the scatter
   correction of the reconstruction removes the simulated scatter on average.
5. **Poisson noise**: every projection bin of the three windows is drawn independently from
   Poisson(S·t_view·expected) with the given generator (none: the noise-free expectations).
6. **Reconstruction** with :func:`dosimetry.reconstruction.system.reconstruct_arrays` (OSEM
   4 × 10 with attenuation, the TEW estimate of :func:`dosimetry.reconstruction.windows.
   tew_scatter` as additive term, and CDR modelling): the μ map the reconstruction gets is
   built from the *acquired* CT of the timepoint (with its noise) by
   :func:`dosimetry.reconstruction.attenuation.mu_map_from_ct`, as for a measured study.
   Output :func:`dosimetry.reconstruction.recon.counts_to_bq_per_ml` (counts per view /
   (S·t_view·V)) = Bq/mL on the SPECT grid.

The same system model generates and inverts the primary projections (no model mismatch in
the projector: an "inverse crime" for resolution studies); the mismatches are in the μ map
(noisy CT), the scatter (a noisy TEW estimate of the simulated scatter) and the noise.

Stated simplifications: no septal penetration or collimator scatter (I-131 at 364 keV has
both), depth-independent scatter kernel, ideal energy resolution (no primary in the side
windows), no dead time, no decay during the acquisition, one bed position, circular orbit.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import SimpleITK as sitk

from dosimetry import units
from dosimetry.errors import InputError
from phantoms.acquisition import AcquisitionSpec, SpectResult

__all__ = [
    "PROJECTION_DEFAULTS",
    "ProjectionData",
    "ProjectionModel",
    "ProjectionSpectResult",
    "activity_on_grid",
    "default_projection_model",
    "forward_project",
    "mu_map_on_grid",
    "orbit_radius_mm",
    "reconstruct_projections",
    "simulate_projections",
    "simulate_spect_projection",
]

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
MM_PER_CM = 10.0


@dataclass(frozen=True)
class ProjectionModel:
    """Camera, windows, scatter model and reconstruction settings of the projection simulation.

    Attributes
    ----------
    nuclide : str
        ``Lu-177`` or ``I-131``.
    photopeak_kev : float
        Photopeak energy [keV] (ICRP-107 line: Lu-177 208.366, I-131 364.489).
    collimator_code : str
        Code in PyTomography's SIMIND collimator table (``data/collim.col``, read by
        :mod:`dosimetry.reconstruction.collimator`): ``SY-ME`` (Siemens Symbia medium energy:
        hole 2.94 mm, septa 1.14 mm, length 40.64 mm) for Lu-177, ``SY-HE`` (high energy:
        4.0 mm, 2.0 mm, 59.7 mm) for I-131.
    intrinsic_fwhm_140kev_mm : float
        Intrinsic resolution of the camera at 140 keV [mm] (3.8 mm, the reconstruction
        package's nominal NaI(Tl) value), scaled as E^−½.
    peak_window_kev, lower_window_kev, upper_window_kev : tuple of float
        Energy windows [keV] (low edge, high edge); lower and upper adjoin the photopeak.
    scatter_to_primary : float
        k, photopeak scatter counts per primary count (see the module notes).
    scatter_fwhm_mm : float
        FWHM of the scatter kernel in the detector plane [mm].
    upper_to_lower_scatter : float
        r, scatter density per keV at the photopeak window's upper edge over its lower edge.
    n_views : int
        Views over 360° (60 or 120 are usual; any 8–256).
    orbit_margin_mm : float
        Detector clearance beyond the body's largest distance from the axis [mm].
    iterations, subsets : int
        OSEM settings of the reconstruction.
    source : str
        Where the numbers come from.
    """

    nuclide: str
    photopeak_kev: float
    collimator_code: str
    intrinsic_fwhm_140kev_mm: float
    peak_window_kev: tuple[float, float]
    lower_window_kev: tuple[float, float]
    upper_window_kev: tuple[float, float]
    scatter_to_primary: float
    scatter_fwhm_mm: float
    upper_to_lower_scatter: float
    n_views: int = 60
    orbit_margin_mm: float = 30.0
    iterations: int = 4
    subsets: int = 10
    source: str = ""

    def __post_init__(self) -> None:
        lo, hi = self.peak_window_kev
        if not (0 < lo < self.photopeak_kev < hi):
            raise InputError(f"photopeak window {self.peak_window_kev} keV does not contain "
                             f"the photopeak {self.photopeak_kev} keV")
        for name in ("lower_window_kev", "upper_window_kev"):
            a, b = getattr(self, name)
            if not (0 < a < b):
                raise InputError(f"{name} {getattr(self, name)} keV: need 0 < low < high")
        if not (8 <= self.n_views <= 256):
            raise InputError(f"number of views {self.n_views} is outside 8–256")
        if not (0.0 <= self.scatter_to_primary <= 3.0):
            raise InputError(f"scatter-to-primary ratio {self.scatter_to_primary} is outside 0–3")
        if not (0.0 <= self.upper_to_lower_scatter <= 1.0):
            raise InputError(f"upper/lower scatter density ratio {self.upper_to_lower_scatter} "
                             "is outside 0–1")
        if not (self.scatter_fwhm_mm > 0 and self.orbit_margin_mm >= 0):
            raise InputError(f"scatter FWHM {self.scatter_fwhm_mm} mm must be > 0 and orbit "
                             f"margin {self.orbit_margin_mm} mm ≥ 0")
        if not (1 <= self.iterations <= 100 and 1 <= self.subsets <= self.n_views):
            raise InputError(f"OSEM {self.iterations} iterations × {self.subsets} subsets: need "
                             f"1–100 iterations and 1–{self.n_views} subsets")

    @property
    def peak_width_kev(self) -> float:
        return self.peak_window_kev[1] - self.peak_window_kev[0]

    @property
    def lower_width_kev(self) -> float:
        return self.lower_window_kev[1] - self.lower_window_kev[0]

    @property
    def upper_width_kev(self) -> float:
        return self.upper_window_kev[1] - self.upper_window_kev[0]

    def angles_deg(self) -> np.ndarray:
        """(n_views,) detector angles [deg], evenly over 360° starting at 0."""
        return np.arange(self.n_views, dtype=np.float64) * (360.0 / self.n_views)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        from dataclasses import asdict

        d = asdict(self)
        for k in ("peak_window_kev", "lower_window_kev", "upper_window_kev"):
            d[k] = list(d[k])
        return d


#: Defaults per nuclide. Windows: Lu-177 20 % at 208 keV with two adjacent 10 % windows (the
#: MIRD Pamphlet 26 recommendation, Ljungberg et al. 2016, J Nucl Med 57:151,
#: doi:10.2967/jnumed.115.159012); I-131 20 % at 364 keV with adjacent 6 % windows (MIRD
#: Pamphlet 24, Dewaraja et al. 2012, J Nucl Med 53:1310, doi:10.2967/jnumed.111.100123).
#: Scatter: k (0.35 Lu-177, 0.5 I-131), r (0.25, 0.5) and the 60 mm kernel FWHM are assumed
#: typical values for an abdomen (unverified; I-131's higher k stands in for downscatter of the
#: 637/723 keV lines).
PROJECTION_DEFAULTS: dict[str, ProjectionModel] = {
    "Lu-177": ProjectionModel(
        nuclide="Lu-177", photopeak_kev=208.366, collimator_code="SY-ME",
        intrinsic_fwhm_140kev_mm=3.8, peak_window_kev=(187.2, 228.8),
        lower_window_kev=(166.4, 187.2), upper_window_kev=(228.8, 249.6),
        scatter_to_primary=0.35, scatter_fwhm_mm=60.0, upper_to_lower_scatter=0.25,
        source="collimator SY-ME from PyTomography/SIMIND collim.col; windows MIRD 26 "
               "(doi:10.2967/jnumed.115.159012); scatter k, r, FWHM assumed (unverified)"),
    "I-131": ProjectionModel(
        nuclide="I-131", photopeak_kev=364.489, collimator_code="SY-HE",
        intrinsic_fwhm_140kev_mm=3.8, peak_window_kev=(327.6, 400.4),
        lower_window_kev=(305.8, 327.6), upper_window_kev=(400.4, 422.2),
        scatter_to_primary=0.5, scatter_fwhm_mm=60.0, upper_to_lower_scatter=0.5,
        source="collimator SY-HE from PyTomography/SIMIND collim.col; windows MIRD 24 "
               "(doi:10.2967/jnumed.111.100123); scatter k, r, FWHM assumed (unverified)"),
}


def default_projection_model(nuclide: str, **overrides: Any) -> ProjectionModel:
    """The default :class:`ProjectionModel` of ``nuclide``, with ``overrides`` replaced."""
    from dosimetry.nuclides import get_nuclide

    name = get_nuclide(nuclide).name
    try:
        model = PROJECTION_DEFAULTS[name]
    except KeyError:
        raise InputError(f"no projection-SPECT defaults for nuclide {name!r}; known: "
                         f"{', '.join(PROJECTION_DEFAULTS)}") from None
    return replace(model, **overrides) if overrides else model


@dataclass(frozen=True, eq=False)
class ProjectionData:
    """Simulated projections of one acquisition (three energy windows).

    Arrays are (views, rows, cols) float32 = (angle, axial z, transaxial detector bin), the
    layout of a DICOM NM tomographic acquisition; counts are whole numbers unless noise-free.

    Attributes
    ----------
    photopeak, lower, upper : numpy.ndarray
        Counts in the photopeak and the adjacent lower/upper windows.
    expected_primary, expected_scatter : numpy.ndarray
        Noise-free photopeak primary and scatter counts.
    angles_deg, radii_mm : numpy.ndarray
        (views,) detector angles and distances from the rotation axis.
    pixel_mm : float
        Projection pixel size (= object voxel size).
    time_per_view_s : float
    sensitivity_cps_per_bq : float
    model : ProjectionModel
    grid : SimpleITK.Image
        The object (SPECT) grid the projections were made from.
    """

    photopeak: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    expected_primary: np.ndarray
    expected_scatter: np.ndarray
    angles_deg: np.ndarray
    radii_mm: np.ndarray
    pixel_mm: float
    time_per_view_s: float
    sensitivity_cps_per_bq: float
    model: ProjectionModel
    grid: sitk.Image
    noisy: bool = True

    @property
    def counts_total(self) -> float:
        return float(self.photopeak.sum(dtype=np.float64))

    @property
    def expected_total(self) -> float:
        return float(self.expected_primary.sum(dtype=np.float64)
                     + self.expected_scatter.sum(dtype=np.float64))


@dataclass(frozen=True, eq=False)
class ProjectionSpectResult(SpectResult):
    """A :class:`~phantoms.acquisition.SpectResult` made in projection space.

    ``counts`` is the reconstruction in counts-equivalent units (Bq/mL × S·T·V, not whole
    numbers), ``expected`` the true activity on the SPECT grid × S·T (no blur, no noise),
    ``expected_total`` and ``counts_total`` the photopeak projection totals (primary + scatter).
    """

    projections: ProjectionData | None = None
    recon_info: dict[str, Any] = field(default_factory=dict)


# ============================================================================== projector
def psf_for(model: ProjectionModel) -> Any:
    """The reconstruction package's Gaussian CDR (:class:`dosimetry.reconstruction.collimator.
    PSFModel`) for the model's collimator and photopeak."""
    from dosimetry.reconstruction.collimator import psf_model

    return psf_model(model.collimator_code, model.photopeak_kev,
                     intrinsic_fwhm_mm_140kev=model.intrinsic_fwhm_140kev_mm)


def forward_project(activity_zyx: np.ndarray, mu_zyx_per_mm: np.ndarray | None,
                    spacing_mm: float, angles_deg: np.ndarray, radii_mm: np.ndarray,
                    model: ProjectionModel, *, cdr: bool = True,
                    device: str = "cpu") -> np.ndarray:
    """Primary photopeak projections of an activity map (PyTomography's system matrix).

    Calls :func:`dosimetry.reconstruction.system.forward_project`, which builds PyTomography's
    ``SPECTSystemMatrix`` with its attenuation and CDR transforms (evaluated with cached
    attenuation factors and banded PSF matrices, equal to PyTomography's to float precision):
    the same system model the reconstruction inverts.

    Parameters
    ----------
    activity_zyx : (Z, N, N) ndarray
        Activity per voxel (any unit U) on an isotropic grid.
    mu_zyx_per_mm : (Z, N, N) ndarray or None
        Linear attenuation coefficient at the photopeak [1/mm]; None: no attenuation.
    spacing_mm : float
        Voxel size = projection pixel size [mm].
    angles_deg, radii_mm : (V,) ndarray
        Detector angles (PyTomography convention) and distances from the axis [mm].
    model : ProjectionModel
        Collimator and energy (CDR).
    cdr : bool
        Model the collimator-detector response.
    device : str
        Torch device.

    Returns
    -------
    (V, Z, N) float32 ndarray
        Primary projections (views, rows = axial with row i at slice i, cols = transaxial) in
        U: 1 U in air sums to 1 U over a view.
    """
    from dosimetry.reconstruction.system import forward_project as project

    act = np.asarray(activity_zyx, dtype=np.float32)
    if act.ndim != 3 or act.shape[1] != act.shape[2]:
        raise InputError(f"activity array {act.shape}: need (Z, N, N), a square in-plane "
                         "matrix")
    mu = None if mu_zyx_per_mm is None else np.asarray(mu_zyx_per_mm, np.float32)
    return project(act, np.asarray(angles_deg, float), np.asarray(radii_mm, float),
                   float(spacing_mm), mu_map=mu, psf=psf_for(model) if cdr else None,
                   device=device)


# ============================================================================== object grid
def activity_on_grid(activity_ref: sitk.Image, grid: sitk.Image,
                     tp_to_ref: sitk.Transform | None = None) -> np.ndarray:
    """True activity [Bq per voxel] on the SPECT grid, (Z, Y, X) float64.

    The concentration is smoothed by the SPECT-voxel averaging (Gaussian with variance
    (s² − f²)/12 per axis), resampled linearly through ``tp_to_ref`` (identity if None) and
    multiplied by the SPECT voxel volume.
    """
    from scipy import ndimage

    tfm = tp_to_ref or sitk.Transform(3, sitk.sitkIdentity)
    v_fine_ml = units.voxel_volume_ml(activity_ref.GetSpacing())
    arr = sitk.GetArrayFromImage(activity_ref).astype(np.float32) * np.float32(1.0 / v_fine_ml)
    s = np.asarray(grid.GetSpacing(), float)
    f = np.asarray(activity_ref.GetSpacing(), float)
    sig_vox = [math.sqrt(max(si ** 2 - fi ** 2, 0.0) / 12.0) / fi
               for si, fi in zip(s[::-1], f[::-1], strict=True)]
    if any(sv > 0 for sv in sig_vox):
        arr = ndimage.gaussian_filter(arr, sig_vox, mode="constant", cval=0.0, truncate=3.5)
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(activity_ref)
    on_grid = sitk.Resample(img, grid, tfm, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    c = sitk.GetArrayFromImage(on_grid).astype(np.float64)
    np.maximum(c, 0.0, out=c)
    return c * units.voxel_volume_ml(grid.GetSpacing())


def mu_map_on_grid(hu: sitk.Image, grid: sitk.Image, energy_kev: float,
                   tp_to_ref: sitk.Transform | None = None) -> sitk.Image:
    """Linear attenuation coefficient [1/mm] at ``energy_kev`` on ``grid`` from a CT in HU.

    The CT is averaged down to the grid (Gaussian of variance (s² − f²)/12, linear resampling
    through ``tp_to_ref``, air outside) and converted by the reconstruction package's
    :func:`dosimetry.reconstruction.attenuation.mu_per_mm_of_hu` (Schneider et al. 2000
    density and composition bins, doi:10.1088/0031-9155/45/2/314; μ = ρ·(μ/ρ)(E) with
    xraylib, with coherent): the same conversion the reconstruction applies to a CT, here
    with the phantom's pose transform.
    """
    from scipy import ndimage

    from dosimetry.reconstruction.attenuation import mu_per_mm_of_hu

    tfm = tp_to_ref or sitk.Transform(3, sitk.sitkIdentity)
    arr = sitk.GetArrayFromImage(hu).astype(np.float32)
    s = np.asarray(grid.GetSpacing(), float)
    f = np.asarray(hu.GetSpacing(), float)
    sig_vox = [math.sqrt(max(si ** 2 - fi ** 2, 0.0) / 12.0) / fi
               for si, fi in zip(s[::-1], f[::-1], strict=True)]
    if any(sv > 0 for sv in sig_vox):
        arr = ndimage.gaussian_filter(arr, sig_vox, mode="nearest", truncate=3.5)
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(hu)
    g = sitk.Image(grid.GetSize(), sitk.sitkFloat32)
    g.CopyInformation(grid)
    on_grid = sitk.Resample(img, g, tfm, sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    out = sitk.GetImageFromArray(mu_per_mm_of_hu(sitk.GetArrayFromImage(on_grid), energy_kev))
    out.CopyInformation(grid)
    return out


def orbit_radius_mm(mu_zyx_per_mm: np.ndarray, spacing_mm: float, margin_mm: float,
                    threshold_per_mm: float = 0.002) -> float:
    """Radius of a circular orbit clearing the body: largest in-plane distance from the axis
    (the grid centre) of a voxel with μ above ``threshold_per_mm`` (≈ 1/5 of water), plus
    ``margin_mm``, rounded up to 1 mm."""
    body = np.asarray(mu_zyx_per_mm) > threshold_per_mm
    _, ny, nx = body.shape
    proj = body.any(axis=0)
    yy, xx = np.nonzero(proj)
    if yy.size == 0:
        r = 0.0
    else:
        dy = (yy - (ny - 1) / 2.0) * spacing_mm
        dx = (xx - (nx - 1) / 2.0) * spacing_mm
        r = float(np.sqrt(dx * dx + dy * dy).max()) + spacing_mm / 2.0
    return float(math.ceil(r + margin_mm))


# ============================================================================== simulation
def _check_grid(grid: sitk.Image) -> float:
    sp = grid.GetSpacing()
    if not np.allclose(sp, sp[0], rtol=1e-6):
        raise InputError(f"SPECT grid spacing {sp} mm: projection simulation needs isotropic "
                         "voxels")
    if grid.GetSize()[0] != grid.GetSize()[1]:
        raise InputError(f"SPECT grid size {grid.GetSize()}: need a square in-plane matrix")
    if not np.allclose(grid.GetDirection(), np.eye(3).ravel()):
        raise InputError("SPECT grid direction must be the identity for the simulation")
    return float(sp[0])


def simulate_projections(activity_bq: np.ndarray, mu_per_mm: np.ndarray, grid: sitk.Image,
                         spec: AcquisitionSpec, model: ProjectionModel,
                         rng: np.random.Generator | None, *, device: str = "cpu"
                         ) -> ProjectionData:
    """Expected and (with ``rng``) Poisson projections in three windows.

    Parameters
    ----------
    activity_bq : (Z, Y, X) ndarray
        True activity [Bq per voxel] on ``grid``.
    mu_per_mm : (Z, Y, X) ndarray
        μ map [1/mm] at the photopeak on ``grid`` (the truth the photons see).
    grid : SimpleITK.Image
        Object grid (isotropic, square in-plane, identity direction).
    spec : AcquisitionSpec
        Sensitivity [cps/MBq] and frame duration [s] (time per view = duration / views).
    model : ProjectionModel
    rng : numpy.random.Generator or None
        None gives the noise-free expectations as "counts".
    device : str

    Returns
    -------
    ProjectionData
    """
    from scipy import ndimage

    s = _check_grid(grid)
    act = np.asarray(activity_bq, np.float64)
    mu = np.asarray(mu_per_mm, np.float32)
    if act.shape != mu.shape or act.shape != sitk.GetArrayViewFromImage(grid).shape:
        raise InputError(f"activity {act.shape} and μ map {mu.shape} must be on the grid "
                         f"{sitk.GetArrayViewFromImage(grid).shape}")
    angles = model.angles_deg()
    radius = orbit_radius_mm(mu, s, model.orbit_margin_mm)
    radii = np.full(angles.shape, radius)
    t_view = spec.frame_duration_s / model.n_views
    sens = spec.sensitivity_cps_per_bq
    scale = sens * t_view
    primary = forward_project(act, mu, s, angles, radii, model, device=device)
    primary = primary.astype(np.float64) * scale
    sig_pix = model.scatter_fwhm_mm * FWHM_TO_SIGMA / s
    scatter = model.scatter_to_primary * ndimage.gaussian_filter(
        primary, (0.0, sig_pix, sig_pix), mode="constant", cval=0.0, truncate=4.0)
    peak_c, lower_c, upper_c = _windows(primary, scatter, model, rng)
    empty = sitk.Image(grid.GetSize(), sitk.sitkFloat32)
    empty.CopyInformation(grid)
    return ProjectionData(photopeak=peak_c, lower=lower_c, upper=upper_c,
                          expected_primary=primary.astype(np.float32),
                          expected_scatter=scatter.astype(np.float32), angles_deg=angles,
                          radii_mm=radii, pixel_mm=s, time_per_view_s=t_view,
                          sensitivity_cps_per_bq=sens, model=model, grid=empty,
                          noisy=rng is not None)


def scale_counts(data: ProjectionData, total_counts: float, rng: np.random.Generator | None
                 ) -> ProjectionData:
    """The same acquisition at another count level.

    The time per view is scaled so that the photopeak window expects ``total_counts``
    (primary + scatter); the three windows are drawn again from Poisson with ``rng`` (None:
    noise-free expectations). Used to make several noise realisations and count levels of
    one patient from one forward projection.
    """
    if not (math.isfinite(total_counts) and total_counts > 0):
        raise InputError(f"total counts {total_counts!r} must be > 0")
    f = total_counts / data.expected_total
    m = data.model
    primary = data.expected_primary.astype(np.float64) * f
    scatter = data.expected_scatter.astype(np.float64) * f
    peak, lower, upper = _windows(primary, scatter, m, rng)
    return replace(data, photopeak=peak, lower=lower, upper=upper,
                   expected_primary=primary.astype(np.float32),
                   expected_scatter=scatter.astype(np.float32),
                   time_per_view_s=data.time_per_view_s * f, noisy=rng is not None)


def _windows(primary: np.ndarray, scatter: np.ndarray, model: ProjectionModel,
             rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Photopeak, lower and upper window counts from the expected primary and scatter (the
    trapezoidal scatter spectrum of the module notes); Poisson draws with ``rng``."""
    r = model.upper_to_lower_scatter
    s_lo = 2.0 * scatter / (model.peak_width_kev * (1.0 + r))  # counts per keV at the low edge
    expected = (primary + scatter, s_lo * model.lower_width_kev,
                r * s_lo * model.upper_width_kev)
    if rng is None:
        return tuple(x.astype(np.float32) for x in expected)  # type: ignore[return-value]
    return tuple(rng.poisson(x).astype(np.float32) for x in expected)  # type: ignore[return-value]


# ============================================================================== reconstruction
def reconstruct_projections(data: ProjectionData, mu_per_mm: sitk.Image | None, *,
                            scatter: bool = True, iterations: int | None = None,
                            subsets: int | None = None, device: str = "cpu"
                            ) -> tuple[sitk.Image, Any]:
    """Reconstruct simulated projections with :mod:`dosimetry.reconstruction` → Bq/mL.

    Parameters
    ----------
    data : ProjectionData
    mu_per_mm : SimpleITK.Image or None
        μ map [1/mm] on ``data.grid`` for attenuation correction (None: no correction).
    scatter : bool
        TEW scatter correction from the lower and upper windows.
    iterations, subsets : int, optional
        OSEM settings; default those of ``data.model``.
    device : str

    Returns
    -------
    (SimpleITK.Image, ArrayReconstruction)
        Activity concentration [Bq/mL] on the SPECT grid (float32), and the reconstruction
        record (counts per view; iterations, corrections, timing).
    """
    from dosimetry.reconstruction.recon import counts_to_bq_per_ml
    from dosimetry.reconstruction.system import reconstruct_arrays

    m = data.model
    additive = tew_scatter(data) if scatter else None
    rec = reconstruct_arrays(
        data.photopeak, data.angles_deg, data.radii_mm, data.pixel_mm,
        origin_mm=data.grid.GetOrigin(), mu_map=mu_per_mm, additive=additive,
        psf=psf_for(m), iterations=iterations or m.iterations, subsets=subsets or m.subsets,
        device=device)
    arr = counts_to_bq_per_ml(sitk.GetArrayFromImage(rec.image),
                              data.sensitivity_cps_per_bq * units.MBQ,  # cps/MBq
                              data.time_per_view_s,
                              units.voxel_volume_ml(data.grid.GetSpacing()))
    img = sitk.GetImageFromArray(arr.astype(np.float32))
    img.CopyInformation(data.grid)
    return img, rec


def tew_scatter(data: ProjectionData) -> np.ndarray:
    """TEW scatter estimate in the photopeak window (V, R, C), by the reconstruction package
    (:func:`dosimetry.reconstruction.windows.tew_scatter`, Ogawa et al. 1991)."""
    from dosimetry.reconstruction.windows import tew_scatter as tew

    m = data.model
    return tew(data.lower, data.upper, m.lower_width_kev, m.upper_width_kev, m.peak_width_kev)


def recon_mu_map(ct: sitk.Image, grid: sitk.Image, energy_kev: float,
                 notes: list[str] | None = None) -> sitk.Image:
    """μ map [1/mm] for the reconstruction from the acquired CT (HU) on the SPECT grid, made
    by the reconstruction package (:func:`dosimetry.reconstruction.attenuation.
    mu_map_from_ct`) as for a measured study.

    The phantoms' SPECT grid may reach a slice beyond the CT (the CT is cropped to the
    patient); the reconstruction package then extends the μ map from the nearest slice and
    warns. Here that warning is collected into ``notes`` (written to the truth document)
    instead of being raised at every timepoint; other warnings pass.
    """
    from dosimetry.reconstruction.attenuation import AttenuationFallbackWarning, mu_map_from_ct
    from dosimetry.reconstruction.geometry import ObjectGeometry

    geom = ObjectGeometry.from_image(grid, "SPECT grid")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AttenuationFallbackWarning)
        mm = mu_map_from_ct(ct, energy_kev, geom, what="simulated CT")
    for w in caught:
        if not issubclass(w.category, AttenuationFallbackWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if notes is not None:
        notes.extend(mm.notes)
    return mm.image


# ============================================================================== one timepoint
#: Stated simplifications of the projection model (written to truth.json instead of the
#: image-domain ones).
PROJECTION_SIMPLIFICATIONS: tuple[str, ...] = (
    "SPECT: projection-space simulation (phantoms.projection) with PyTomography's "
    "rotate-and-sum system matrix: attenuation (μ at the photopeak from the noise-free CT via "
    "Schneider 2000 bins and xraylib) and a Gaussian depth-dependent collimator-detector "
    "response (PyTomography/SIMIND collimator table), circular orbit; no septal penetration or "
    "collimator scatter; photopeak scatter = scaled, blurred primary projection with a "
    "trapezoidal spectrum for the TEW side windows; ideal energy resolution; reconstructed by "
    "dosimetry.reconstruction (OSEM with attenuation from the acquired CT, TEW scatter and "
    "CDR modelling).",
    "SPECT noise: independent Poisson counts per projection bin in each energy window; the "
    "image noise is what OSEM makes of it (correlated, not Poisson).",
)


def simulate_spect_projection(activity_ref: sitk.Image, hu_ref: sitk.Image, grid: sitk.Image,
                              tp_to_ref: sitk.Transform | None, spec: AcquisitionSpec,
                              nuclide: str, rng: np.random.Generator | None, *,
                              ct: sitk.Image | None = None,
                              model: ProjectionModel | None = None,
                              device: str = "cpu") -> ProjectionSpectResult:
    """Quantitative SPECT of one timepoint simulated in projection space and reconstructed.

    Parameters
    ----------
    activity_ref : SimpleITK.Image
        True activity [Bq per voxel] in the reference pose (fine grid).
    hu_ref : SimpleITK.Image
        Noise-free CT [HU] in the reference pose (the μ map the photons see).
    grid : SimpleITK.Image
        SPECT grid (isotropic, square in-plane, identity direction): object and detector grid.
    tp_to_ref : SimpleITK.Transform or None
        Timepoint → reference transform (None: identity).
    spec : AcquisitionSpec
        Sensitivity, frame duration and number of views.
    nuclide : str
    rng : numpy.random.Generator or None
        Poisson noise generator; None gives the noise-free (expected) projections.
    ct : SimpleITK.Image, optional
        The acquired CT of the timepoint [HU] for attenuation correction (default: ``hu_ref``
        moved into the timepoint pose).
    model : ProjectionModel, optional
        Default :func:`default_projection_model` with ``spec.n_views`` views.
    device : str
        Torch device of the projector and the reconstruction.

    Returns
    -------
    ProjectionSpectResult
    """
    model = model or default_projection_model(nuclide, n_views=spec.n_views)
    tfm = tp_to_ref or sitk.Transform(3, sitk.sitkIdentity)
    act = activity_on_grid(activity_ref, grid, tfm)
    mu_true = sitk.GetArrayFromImage(mu_map_on_grid(hu_ref, grid, model.photopeak_kev, tfm))
    data = simulate_projections(act, mu_true, grid, spec, model, rng, device=device)
    if ct is None:
        ct = sitk.Resample(hu_ref, grid, tfm, sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    notes: list[str] = []
    mu_rec = recon_mu_map(ct, grid, model.photopeak_kev, notes)
    bq, rec = reconstruct_projections(data, mu_rec, device=device)
    st = spec.sensitivity_cps_per_bq * spec.frame_duration_s
    v_ml = units.voxel_volume_ml(grid.GetSpacing())

    def wrap(x: np.ndarray) -> sitk.Image:
        img = sitk.GetImageFromArray(np.asarray(x, np.float32))
        img.CopyInformation(grid)
        return img

    counts = sitk.GetArrayFromImage(bq).astype(np.float64) * (st * v_ml)
    info = {"model": "projection", **model.to_dict(), "psf": psf_for(model).describe(),
            "orbit_radius_mm": float(data.radii_mm[0]), "time_per_view_s": data.time_per_view_s,
            "expected_primary_counts": float(data.expected_primary.sum(dtype=np.float64)),
            "expected_scatter_counts": float(data.expected_scatter.sum(dtype=np.float64)),
            "photopeak_counts": data.counts_total,
            "lower_window_counts": float(data.lower.sum(dtype=np.float64)),
            "upper_window_counts": float(data.upper.sum(dtype=np.float64)),
            "reconstruction": {"algorithm": "OSEM", "iterations": rec.iterations,
                               "subsets": rec.subsets, "corrections": list(rec.corrections)},
            "notes": notes}
    return ProjectionSpectResult(
        counts=wrap(counts), expected=wrap(act * st), bq_per_ml=bq,
        expected_total=data.expected_total, counts_total=round(data.counts_total),
        activity_in_grid_bq=float(act.sum()), projections=data, recon_info=info)


def projection_truth(truth: dict[str, Any], nuclide: str, spec: AcquisitionSpec) -> None:
    """Record the projection model in a phantom's truth document (in place)."""
    model = default_projection_model(nuclide, n_views=spec.n_views)
    acq = truth.get("acquisition", truth.get("spect"))
    if isinstance(acq, dict):
        acq["spect_model"] = "projection"
        acq["projection"] = {**model.to_dict(), "psf": psf_for(model).describe()}
    simp = [s for s in truth.get("simplifications", []) if not s.startswith("SPECT")]
    truth["simplifications"] = [*PROJECTION_SIMPLIFICATIONS, *simp]
