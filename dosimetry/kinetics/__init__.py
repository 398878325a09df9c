"""Kinetics: time-activity curves → fitted models → time-integrated activity (TIA) ± σ.

Internal units throughout: s, Bq, Bq·s, 1/s.

* :func:`fit_tac` — fit a :class:`TimeActivityCurve` with AICc model selection among
  mono-exponential, mono-exponential with uptake, bi- and tri-exponential models (NUKFIT
  acceptance criteria), or the trapezoid with a physical-decay tail; returns a
  :class:`KineticFit`.
* :func:`monte_carlo_tia`, :func:`tia_uncertainty` — TIA uncertainty by resampling and the
  EANM budget (fit, calibration, recovery).
* :func:`hanscheid_tia`, :func:`madsen_tia` — single-timepoint TIA with the method's error over
  a population of effective half-lives (:func:`population_half_life`).
* :func:`voxel_tia_map`, :func:`hybrid_tia_map` — voxel TIA images (torch, any device).
* :func:`voi_tacs` — VOI TACs from a label map and activity images, with optional recovery
  correction (:class:`RecoveryCurve`).
* :func:`read_tac_csv` — TACs from CSV; :func:`plot_fits` — data and fits to an image file.
"""

from dosimetry.kinetics.fit import (
    DEFAULT_RELATIVE_SIGMA,
    PARAMETRIC_MODELS,
    AcceptanceCriteria,
    FallbackWarning,
    KineticFit,
    ModelCandidate,
    ModelName,
    TimeActivityCurve,
    fit_model,
    fit_tac,
)
from dosimetry.kinetics.imaging import ImageUnit
from dosimetry.kinetics.io import read_tac_csv
from dosimetry.kinetics.models import MODELS, ModelSpec, TrapezoidHead
from dosimetry.kinetics.recovery import (
    IEC_SPHERE_DIAMETERS_MM,
    IEC_SPHERE_VOLUMES_ML,
    RecoveryCurve,
)
from dosimetry.kinetics.single_timepoint import (
    POPULATION_HALF_LIVES,
    PopulationHalfLife,
    SingleTimepointTia,
    StpMethod,
    hanscheid_ratio,
    hanscheid_tia,
    madsen_tia,
    population_half_life,
    single_timepoint_tia,
)
from dosimetry.kinetics.uncertainty import (
    MonteCarloTia,
    TiaUncertainty,
    counting_relative_sigma,
    monte_carlo_tia,
    tia_sigma_from_covariance,
    tia_uncertainty,
    timepoint_sigma,
)
from dosimetry.kinetics.voi import VoiTac, VoiTacResult, voi_tacs

# The voxel code needs torch; it is imported on first use so that importing the package (and
# the ``rptdose tac`` command) stays cheap.
_LAZY = {
    "VoxelMethod": "dosimetry.kinetics.voxel",
    "VoxelTiaResult": "dosimetry.kinetics.voxel",
    "hybrid_tia_map": "dosimetry.kinetics.voxel",
    "voxel_tia_map": "dosimetry.kinetics.voxel",
    "VoxelStatus": "dosimetry.kinetics.voxel_kernel",
    "mono_exponential_tia": "dosimetry.kinetics.voxel_kernel",
    "plot_fits": "dosimetry.kinetics.plot",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "DEFAULT_RELATIVE_SIGMA",
    "IEC_SPHERE_DIAMETERS_MM",
    "IEC_SPHERE_VOLUMES_ML",
    "MODELS",
    "PARAMETRIC_MODELS",
    "POPULATION_HALF_LIVES",
    "AcceptanceCriteria",
    "FallbackWarning",
    "ImageUnit",
    "KineticFit",
    "ModelCandidate",
    "ModelName",
    "ModelSpec",
    "MonteCarloTia",
    "PopulationHalfLife",
    "RecoveryCurve",
    "SingleTimepointTia",
    "StpMethod",
    "TiaUncertainty",
    "TimeActivityCurve",
    "TrapezoidHead",
    "VoiTac",
    "VoiTacResult",
    "VoxelMethod",
    "VoxelStatus",
    "VoxelTiaResult",
    "counting_relative_sigma",
    "fit_model",
    "fit_tac",
    "hanscheid_ratio",
    "hanscheid_tia",
    "hybrid_tia_map",
    "madsen_tia",
    "mono_exponential_tia",
    "monte_carlo_tia",
    "plot_fits",
    "population_half_life",
    "read_tac_csv",
    "single_timepoint_tia",
    "tia_sigma_from_covariance",
    "tia_uncertainty",
    "timepoint_sigma",
    "voi_tacs",
    "voxel_tia_map",
]
