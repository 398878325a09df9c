"""Small digital patients and one registered study shared by the registration tests.

The grid is the coarse test grid of ``tests/phantoms`` (6 mm CT voxels, 9.59 mm SPECT voxels on
a 64² matrix): registration then takes seconds per timepoint on 2 cores. Seeds (21–23) are
disjoint from the learned model's training and held-out patients (≥ 1000).
"""

from __future__ import annotations

import pytest

from dosimetry.registration import RegistrationOptions, StageSettings, register_study
from dosimetry.study.workdir import WorkDir
from phantoms import GridSpec, PatientConfig, make_patient

#: The coarse test grid.
SMALL = {"grid": GridSpec(inplane_mm=6.0, slice_mm=6.0), "spect_spacing_mm": 9.5904,
         "spect_matrix": 64}


def small_config(**kw) -> PatientConfig:
    """A :class:`PatientConfig` on the small test grid (NIfTI)."""
    return PatientConfig(**{**SMALL, "output_format": "nifti", **kw})


@pytest.fixture(scope="session")
def deformed_study(tmp_path_factory):
    """3 timepoints (4, 24, 96 h), repositioning plus a 2 mm smooth deformation, 2 lesions."""
    out = tmp_path_factory.mktemp("reg") / "deformed"
    return make_patient(out, small_config(seed=21, timepoints_h=(4.0, 24.0, 96.0),
                                          n_lesions=2, deformation_mm=2.0))


@pytest.fixture(scope="session")
def registered(deformed_study, tmp_path_factory):
    """The deformed study registered with the classical chain (default options)."""
    wd = WorkDir.create(tmp_path_factory.mktemp("reg") / "work", deformed_study.study,
                        deformed_study.out_dir)
    return wd, register_study(wd)


@pytest.fixture(scope="session")
def pair_study(tmp_path_factory):
    """2 timepoints (4, 48 h), rigid repositioning and a 2 mm deformation, no lesions."""
    out = tmp_path_factory.mktemp("reg") / "pair"
    return make_patient(out, small_config(seed=22, timepoints_h=(4.0, 48.0), n_lesions=0,
                                          deformation_mm=2.0))


#: Fewer pyramid levels, iterations and samples than the defaults: a pair registers in a few
#: seconds on the 6 mm test grid, which keeps the default test suite quick. The chain is the
#: same (rigid → affine → B-spline, Mattes MI); the defaults are exercised by the slow tests
#: and the benchmark.
FAST = RegistrationOptions(
    working_spacing_mm=6.0,
    rigid=StageSettings((2, 1), (6.0, 0.0), 100, 5000),
    affine=StageSettings((1,), (0.0,), 40, 5000),
    bspline=StageSettings((1,), (0.0,), 15, 3000),
)


@pytest.fixture(scope="session")
def pair_registered(pair_study, tmp_path_factory):
    """The 2-timepoint pair registered with :data:`FAST` options."""
    wd = WorkDir.create(tmp_path_factory.mktemp("reg") / "pairwork", pair_study.study,
                        pair_study.out_dir)
    return wd, register_study(wd, options=FAST)
