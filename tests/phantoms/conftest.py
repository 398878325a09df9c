"""Shared small-grid phantoms for the tests (kept small so the whole set stays fast)."""

from __future__ import annotations

import pytest

from phantoms import GridSpec, PatientConfig, make_patient

#: A coarse grid: 6 mm CT voxels, 9.59 mm SPECT voxels on a 64² matrix (covers the CT FOV).
SMALL = {"grid": GridSpec(inplane_mm=6.0, slice_mm=6.0), "spect_spacing_mm": 9.5904,
         "spect_matrix": 64}


def small_config(**kw) -> PatientConfig:
    """A :class:`PatientConfig` on the small test grid."""
    return PatientConfig(**{**SMALL, **kw})


@pytest.fixture(scope="session")
def nifti_study(tmp_path_factory):
    """A 4-timepoint Lu-177 DOTATATE study in NIfTI with lesions and mild deformation."""
    out = tmp_path_factory.mktemp("phantom") / "study"
    cfg = small_config(seed=11, output_format="nifti", n_lesions=4, deformation_mm=2.0)
    return make_patient(out, cfg)


@pytest.fixture(scope="session")
def counts_study(tmp_path_factory):
    """A 3-timepoint I-131 study in NIfTI with SPECT in counts."""
    out = tmp_path_factory.mktemp("phantom") / "counts"
    cfg = small_config(seed=5, preset="i131-dtc", output_format="nifti", counts=True,
                       timepoints_h=(6.0, 48.0, 144.0), n_lesions=2)
    return make_patient(out, cfg)
