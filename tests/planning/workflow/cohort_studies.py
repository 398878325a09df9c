"""Small studies and study functions for the cohort tests.

The study functions run in Dask worker processes, so they live at module level here (workers
import them by name). :func:`checked_study` does the pipeline's first steps for real — read and
validate the manifest, check its images from their headers, make the work folder — and writes a
``results.json`` whose dose is a closed form of the manifest (``DOSE_GY_PER_GBQ`` × activity),
so a test can tell which study's numbers landed where.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dosimetry.study.manifest import Study, check_study_files, load_study
from dosimetry.study.workdir import WorkDir
from planning.results import DosimetryResults
from planning.workflow.pipeline import PipelineOptions

#: Dose coefficient written by :func:`checked_study` [Gy/GBq].
DOSE_GY_PER_GBQ = 0.5
#: Patient ids starting with this make :func:`crashing_study` raise a RuntimeError.
CRASH_PREFIX = "CRASH"


def write_study(folder: Path, patient_id: str, activity_mbq: float,
                manifest_name: str = "study.yaml") -> Path:
    """A 2-timepoint Lu-177 study of 8³ voxel NIfTI images in ``folder``; returns the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    arr = np.ones((8, 8, 8), dtype=np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((4.0, 4.0, 4.0))
    sitk.WriteImage(img, str(folder / "spect.nii.gz"))
    sitk.WriteImage(sitk.Cast(img * -1000.0, sitk.sitkInt16), str(folder / "ct.nii.gz"))
    inj = datetime(2024, 5, 1, 9, 0)
    study = Study(patient_id=patient_id, nuclide="Lu-177", radiopharmaceutical="DOTATATE",
                  administered_activity_mbq=activity_mbq, injection_datetime=inj,
                  timepoints=[{"label": f"{h}h", "acquisition_datetime": inj + timedelta(hours=h),
                               "spect": "spect.nii.gz", "spect_units": "Bq/mL",
                               "ct": "ct.nii.gz"} for h in (4, 24)])
    return study.save(folder / manifest_name)


def checked_study(manifest: Path, workdir: Path, options: PipelineOptions) -> Path:
    """Validate the study and its images, make the work folder, write ``report/results.json``."""
    study = load_study(manifest)
    check_study_files(study, manifest.parent)
    wd = WorkDir.create(workdir, study, manifest.parent)
    a_gbq = study.administered_activity_mbq / 1000.0
    results = DosimetryResults.model_validate({
        "patient_id": study.patient_id, "nuclide": study.nuclide,
        "radiopharmaceutical": study.radiopharmaceutical, "cycle_number": 1,
        "administered_activity_mbq": study.administered_activity_mbq,
        "vois": [{"name": "kidney_left", "kind": "organ", "mean_dose_gy": DOSE_GY_PER_GBQ * a_gbq,
                  "mean_dose_sigma_gy": 0.1 * DOSE_GY_PER_GBQ * a_gbq,
                  "dose_gy_per_gbq": DOSE_GY_PER_GBQ,
                  "kinetics": {"model": "mono", "effective_half_life_h": 50.0},
                  "engine": options.dose_engine}]})
    return results.save(wd.root / "report" / "results.json")


def crashing_study(manifest: Path, workdir: Path, options: PipelineOptions) -> Path:
    """:func:`checked_study`, except that patients named ``CRASH…`` raise a RuntimeError."""
    study = load_study(manifest)
    if study.patient_id.startswith(CRASH_PREFIX):
        raise RuntimeError(f"{study.patient_id}: worker ran out of luck")
    return checked_study(manifest, workdir, options)
