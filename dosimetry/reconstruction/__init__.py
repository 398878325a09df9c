"""Quantitative SPECT reconstruction from raw projections (PyTomography system model, OSEM).

Public API
----------
read_projections(source, nuclide=None, photopeak_kev=None) -> ProjectionSet
    Raw NM tomographic projections (multi-window, multi-bed DICOM; GE and Siemens layouts):
    counts per window, angles, radii, geometry (:mod:`.projections`).
reconstruct(projections, ct, *, iterations=4, subsets=None, calibration_cps_per_mbq=None,
            scatter="tew", psf=True, attenuation=True, device="cpu", progress=None) -> ReconResult
    Attenuation (CT → μ), TEW scatter, collimator–detector response, OSEM, bed stitching;
    image in counts per view or Bq/mL in the acquisition's patient coordinates (:mod:`.recon`).
reconstruct_arrays(projections, angles_deg, radii_mm, pixel_spacing_mm, *, origin_mm=None,
                   mu_map=None, additive=None, psf=None, iterations=4, subsets=None,
                   device="cpu", progress=None) -> ArrayReconstruction
    The same reconstruction from plain arrays (one bed), for simulated projections
    (:mod:`.system`); :func:`forward_project` is its system model forward.
psf_model(collimator, energy_kev, intrinsic_fwhm_mm_140kev=3.8) -> PSFModel
    Gaussian collimator–detector response from PyTomography's collimator table
    (:mod:`.collimator`).
mu_map_from_ct(ct, energy_kev, grid) -> MuMap
    CT (HU) → μ [1/mm] at the photopeak on the object grid (:mod:`.attenuation`).
tew_scatter(lower, upper, w_lower_kev, w_upper_kev, w_peak_kev) -> ndarray
    Triple-energy-window scatter estimate (:mod:`.windows`).
stitch_beds(images, valid_slices, method="midpoint") -> StitchResult
    Multi-bed stitching (:mod:`.stitch`).
reconstruct_to_file(projections, ct, output, settings) -> FileRecon
    Reconstruct and write image + JSON sidecar atomically, reusing an up-to-date result
    (used by ``rptdose ingest --reconstruct-projections``).

Importing this package is cheap: torch and PyTomography are imported by the functions that
reconstruct.
"""

from dosimetry.reconstruction.attenuation import MuMap, mu_map_from_ct, mu_per_mm_of_hu
from dosimetry.reconstruction.collimator import (
    DEFAULT_INTRINSIC_FWHM_MM_140KEV,
    CollimatorSpec,
    PSFModel,
    collimator_table,
    psf_model,
    resolve_collimator,
)
from dosimetry.reconstruction.geometry import ObjectGeometry
from dosimetry.reconstruction.projections import ProjectionBed, ProjectionSet, read_projections
from dosimetry.reconstruction.recon import (
    BedInfo,
    FileRecon,
    ReconResult,
    ReconSettings,
    ReconUnits,
    ScatterMethod,
    axial_field_rows,
    counts_to_bq_per_ml,
    reconstruct,
    reconstruct_to_file,
)
from dosimetry.reconstruction.stitch import StitchMethod, StitchResult, stitch_beds
from dosimetry.reconstruction.system import (
    ArrayReconstruction,
    default_subsets,
    dicom_to_detector_angle,
    forward_project,
    reconstruct_arrays,
)
from dosimetry.reconstruction.windows import (
    EnergyWindow,
    WindowSelection,
    principal_photopeak_kev,
    select_windows,
    tew_scatter,
)

__all__ = [
    "DEFAULT_INTRINSIC_FWHM_MM_140KEV",
    "ArrayReconstruction",
    "BedInfo",
    "CollimatorSpec",
    "EnergyWindow",
    "FileRecon",
    "MuMap",
    "ObjectGeometry",
    "PSFModel",
    "ProjectionBed",
    "ProjectionSet",
    "ReconResult",
    "ReconSettings",
    "ReconUnits",
    "ScatterMethod",
    "StitchMethod",
    "StitchResult",
    "WindowSelection",
    "axial_field_rows",
    "collimator_table",
    "counts_to_bq_per_ml",
    "default_subsets",
    "dicom_to_detector_angle",
    "forward_project",
    "mu_map_from_ct",
    "mu_per_mm_of_hu",
    "principal_photopeak_kev",
    "psf_model",
    "read_projections",
    "reconstruct",
    "reconstruct_arrays",
    "reconstruct_to_file",
    "resolve_collimator",
    "select_windows",
    "stitch_beds",
    "tew_scatter",
]
