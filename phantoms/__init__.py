"""rptdose digital patients: anatomy, kinetics, SPECT acquisition simulation, writers, truth.

Public API
----------
make_patient(out_dir, PatientConfig(...)) -> PatientResult
    A multi-timepoint SPECT/CT study (DICOM or NIfTI) with ``study.yaml`` and ``truth/``.
make_iec(out_dir, IECConfig(...)) -> IECResult
    The IEC/NEMA body phantom with six spheres, for recovery coefficients.
make_anatomy, draw_kinetics, label_curves, simulate_spect, simulate_ct
    The array kernels behind them (no files).

Importing this package is cheap: submodules load numpy/SimpleITK/scipy only.
"""

from phantoms.acquisition import (
    ACQUISITION_DEFAULTS,
    AcquisitionSpec,
    RigidPose,
    SpectResult,
    default_acquisition,
    simulate_ct,
    simulate_spect,
)
from phantoms.anatomy import (
    TISSUES,
    Anatomy,
    AnatomyOptions,
    GridSpec,
    LesionSite,
    Tissue,
    make_anatomy,
)
from phantoms.iec import IECConfig, IECNuclide, IECResult, make_iec
from phantoms.kinetics_presets import (
    PRESETS,
    DrawnKinetics,
    ExpSum,
    KineticsPreset,
    OrganModel,
    Preset,
    draw_kinetics,
    get_preset,
    label_curves,
)
from phantoms.patient import (
    OutputFormat,
    PatientConfig,
    PatientResult,
    make_patient,
)
from phantoms.truth import GENERATOR_VERSION

__all__ = [
    "ACQUISITION_DEFAULTS",
    "GENERATOR_VERSION",
    "PRESETS",
    "TISSUES",
    "AcquisitionSpec",
    "Anatomy",
    "AnatomyOptions",
    "DrawnKinetics",
    "ExpSum",
    "GridSpec",
    "IECConfig",
    "IECNuclide",
    "IECResult",
    "KineticsPreset",
    "LesionSite",
    "OrganModel",
    "OutputFormat",
    "PatientConfig",
    "PatientResult",
    "Preset",
    "RigidPose",
    "SpectResult",
    "Tissue",
    "default_acquisition",
    "draw_kinetics",
    "get_preset",
    "label_curves",
    "make_anatomy",
    "make_iec",
    "make_patient",
    "simulate_ct",
    "simulate_spect",
]
