"""Truth check on a digital patient: organ TIA and dose from the true TIA map.

A digital patient's ``truth/`` folder holds the true TIA map (``tia.nii.gz``, Bq·s per voxel on
the reference CT grid and pose) and its label map. The true dose of each organ is computed here
from that map with the **same engine on the same dose grid** as the pipeline used, so that the
difference between the pipeline's dose and this one is the error of the activity chain —
registration, segmentation, partial volume, kinetics — and not of the dose engine, whose own
error against Monte Carlo is measured separately (``make bench``, validation section).

The true TIA map is brought onto the dose (SPECT) grid by smoothing the concentration with a
Gaussian of σ = Δ/2.3548 per axis (anti-aliasing before a coarser grid) and linear
resampling, then rescaled so that the total TIA is unchanged. VOI means are taken on the truth
label map with the dose resampled linearly onto it, as the dose stage does.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dosimetry.io.atomic import atomic_write_text
from dosimetry.io.images import read_image

FWHM_TO_SIGMA = 1.0 / 2.3548200450309493


def _to_grid(tia: sitk.Image, grid: sitk.Image) -> sitk.Image:
    """TIA [Bq·s/voxel] onto a coarser grid, total conserved."""
    voxel_ml = float(np.prod(tia.GetSpacing())) / 1000.0
    conc = sitk.Cast(tia, sitk.sitkFloat32) / voxel_ml
    sigma = [s * FWHM_TO_SIGMA for s in grid.GetSpacing()]
    conc = sitk.SmoothingRecursiveGaussian(conc, sigma)
    out = sitk.Resample(conc, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    arr = np.maximum(sitk.GetArrayFromImage(out), 0.0) * (float(np.prod(grid.GetSpacing()))
                                                          / 1000.0)
    total_in = float(np.sum(sitk.GetArrayViewFromImage(tia), dtype=np.float64))
    total_out = float(arr.sum(dtype=np.float64))
    if total_out > 0:
        arr *= total_in / total_out
    img = sitk.GetImageFromArray(arr.astype(np.float32))
    img.CopyInformation(grid)
    return img


def true_doses(truth_dir: Path, *, engine: str, nuclide: str, ct: sitk.Image,
               dose_grid: sitk.Image, out_json: Path | None = None) -> dict[str, Any]:
    """Per truth label: true TIA [MBq·h] and the dose [Gy] of the true TIA map.

    Parameters
    ----------
    truth_dir : Path
        The digital patient's ``truth/`` folder.
    engine, nuclide : str
        Dose engine and nuclide as the pipeline ran them.
    ct : SimpleITK.Image
        Reference CT [HU] (density for the engines that use it).
    dose_grid : SimpleITK.Image
        An image on the pipeline's dose grid (values unused).
    out_json : Path, optional
        Where to write the result (atomically).
    """
    from dosimetry.dose.engines import compute_dose

    tia = read_image(truth_dir / "tia.nii.gz")
    labels = sitk.Cast(read_image(truth_dir / "labels.nii.gz", pixel_type=None),
                       sitk.sitkUInt16)
    table = json.loads((truth_dir / "labels.json").read_text(encoding="utf-8"))
    tia_grid = _to_grid(tia, dose_grid)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        dose = compute_dose(engine, tia_grid, nuclide, ct).dose
    dose_arr = sitk.GetArrayFromImage(sitk.Resample(dose, labels, sitk.Transform(),
                                                    sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    lab = sitk.GetArrayFromImage(labels)
    tia_arr = sitk.GetArrayFromImage(tia)
    n = int(lab.max()) + 1
    counts = np.bincount(lab.ravel(), minlength=n)
    dose_sum = np.bincount(lab.ravel(), weights=dose_arr.ravel(), minlength=n)
    tia_sum = np.bincount(lab.ravel(), weights=tia_arr.ravel().astype(np.float64), minlength=n)
    organs = {}
    for rec in table:
        k = int(rec["label"])
        if k < n and counts[k]:
            organs[rec["name"]] = {"label": k, "tia_mbq_h": float(tia_sum[k] / 3.6e9),
                                   "mean_dose_gy": float(dose_sum[k] / counts[k])}
    result = {"engine": engine, "method": "same engine and dose grid as the pipeline, applied "
              "to the true TIA map (see planning/workflow/truth_check.py)", "organs": organs}
    if out_json is not None:
        atomic_write_text(out_json, json.dumps(result, indent=2) + "\n")
    return result
