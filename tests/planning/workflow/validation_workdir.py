"""A small digital-patient work folder whose dose stage has run, for the validation tests.

As in ``test_stages.py``: a patient made without motion (so the identity is its exact
registration) with its true label map as the segmentation, then the real kinetics and dose
stages. Coarse grids keep it to seconds: CT 6 mm, SPECT 64² × 9.59 mm (the DVK kernel of that
voxel size is made once per cache), three timepoints, one lesion.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import SimpleITK as sitk

from dosimetry.io.images import read_image, write_image
from dosimetry.study.images import load_image, load_spect_bq_per_ml
from dosimetry.study.manifest import load_study
from dosimetry.study.workdir import Stage, WorkDir
from phantoms import GridSpec, PatientConfig, make_patient


def make_patient_workdir(root: Path, *, seed: int = 5) -> WorkDir:
    """Patient, registration and segmentation outputs; no kinetics or dose yet."""
    cfg = PatientConfig(grid=GridSpec(inplane_mm=6.0, slice_mm=6.0), spect_spacing_mm=9.5904,
                        spect_matrix=64, output_format="nifti", motion_scale=0.0, seed=seed,
                        n_lesions=1, timepoints_h=(4.0, 24.0, 96.0))
    make_patient(root / "patient", cfg)
    study = load_study(root / "patient" / "study.yaml")
    wd = WorkDir.create(root / "work", study, root / "patient")
    study = wd.study()
    reg, seg = wd.stage_dir(Stage.REGISTRATION), wd.stage_dir(Stage.SEGMENTATION)
    ct_ref = load_image(study.timepoints[0].ct, "/")
    for tp in study.timepoints:
        spect = load_spect_bq_per_ml(study, tp, "/")
        write_image(load_image(tp.ct, "/"), reg / f"{tp.label}_ct.nii.gz")
        write_image(sitk.Resample(spect, ct_ref, sitk.Transform(), sitk.sitkLinear, 0.0),
                    reg / f"{tp.label}_spect_bq_per_ml.nii.gz")
        write_image(spect, reg / f"{tp.label}_spect_bq_per_ml_spectgrid.nii.gz")
    write_image(read_image(root / "patient/truth/labels.nii.gz", pixel_type=None),
                seg / "labels.nii.gz")
    shutil.copy(root / "patient/truth/labels.json", seg / "labels.json")
    return wd


def make_validation_workdir(root: Path, *, dose_engine: str = "dvk", seed: int = 5) -> WorkDir:
    """:func:`make_patient_workdir`, then the kinetics and dose stages (``dose_engine``)."""
    from planning.workflow.dose_stage import run_dose
    from planning.workflow.kinetics_stage import run_kinetics

    wd = make_patient_workdir(root, seed=seed)
    run_dose(wd, run_kinetics(wd), engine=dose_engine)
    return wd
