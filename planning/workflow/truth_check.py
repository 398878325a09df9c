"""Truth check on a digital patient: organ TIA and dose from the true TIA map.

A digital patient's ``truth/`` folder holds the true TIA map (``tia.nii.gz``, Bq·s per voxel on
the reference CT grid and pose) and its label map. The true dose of each organ is computed here
from that map with the **same engine on the same dose grid** as the pipeline used, so that the
difference between the pipeline's dose and this one is the error of the activity chain —
registration, segmentation, partial volume, kinetics — and not of the dose engine, whose own
error against Monte Carlo is measured separately (``make bench``, validation section).

The true TIA map is brought onto the dose (SPECT) grid by giving each fine voxel's TIA to the
coarse voxel that contains its centre (activity conserved locally, no blur). VOI means are
taken on the truth label map with the dose resampled linearly onto it, as the dose stage does.
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


def _to_grid(tia: sitk.Image, grid: sitk.Image) -> sitk.Image:
    """TIA [Bq·s/voxel] onto a coarser grid: each fine voxel's TIA goes to the coarse voxel
    that contains its centre (local and total conservation, no blur beyond one coarse voxel).
    Fine voxels whose centre falls outside the coarse grid are dropped."""
    arr = sitk.GetArrayFromImage(tia).astype(np.float64)  # z, y, x
    idx = np.indices(arr.shape[::-1], dtype=np.float64).reshape(3, -1)  # x, y, z fastest z
    # Physical points of the fine voxel centres, then continuous indices on the coarse grid.
    d_f = np.array(tia.GetDirection()).reshape(3, 3) * np.array(tia.GetSpacing())
    pts = np.array(tia.GetOrigin())[:, None] + d_f @ idx
    d_c = np.array(grid.GetDirection()).reshape(3, 3) * np.array(grid.GetSpacing())
    cidx = np.rint(np.linalg.solve(d_c, pts - np.array(grid.GetOrigin())[:, None])).astype(
        np.int64)
    gsize = np.array(grid.GetSize())[:, None]
    inside = np.all((cidx >= 0) & (cidx < gsize), axis=0)
    flat_c = np.ravel_multi_index((cidx[2][inside], cidx[1][inside], cidx[0][inside]),
                                  tuple(int(n) for n in grid.GetSize()[::-1]))
    # idx enumerates (x, y, z) with x slowest; the matching values are arr transposed.
    values = np.transpose(arr, (2, 1, 0)).reshape(-1)[inside]
    out = np.bincount(flat_c, weights=values, minlength=int(np.prod(gsize)))
    img = sitk.GetImageFromArray(out.reshape(tuple(int(n) for n in grid.GetSize()[::-1]))
                                 .astype(np.float32))
    img.CopyInformation(grid)
    return img


def true_doses(truth_dir: Path, *, engine: str, nuclide: str, ct: sitk.Image,
               dose_grid: sitk.Image, out_json: Path | None = None,
               pipeline_labels: tuple[sitk.Image, dict[int, tuple[str, str]]] | None = None,
               **engine_options: Any) -> dict[str, Any]:
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
    pipeline_labels : (label image, {label: (name, kind)}), optional
        The pipeline's label map: its lesions are matched to the true ones by overlap
        (``lesion_matches`` in the result).
    **engine_options
        Passed to the engine (e.g. ``n_decays``, ``seed`` for ``"mc"``).
    """
    from dosimetry.dose.engines import compute_dose

    tia = read_image(truth_dir / "tia.nii.gz")
    labels = sitk.Cast(read_image(truth_dir / "labels.nii.gz", pixel_type=None),
                       sitk.sitkUInt16)
    table = json.loads((truth_dir / "labels.json").read_text(encoding="utf-8"))
    tia_grid = _to_grid(tia, dose_grid)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        dose = compute_dose(engine, tia_grid, nuclide, ct, **engine_options).dose
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
    if pipeline_labels is not None:
        result["lesion_matches"] = match_lesions(*pipeline_labels, truth_dir)
    if out_json is not None:
        atomic_write_text(out_json, json.dumps(result, indent=2) + "\n")
    return result


def match_lesions(labels: sitk.Image, table: dict[int, tuple[str, str]], truth_dir: Path
                  ) -> dict[str, str | None]:
    """Pipeline lesion name → the true lesion it overlaps most (None: a false positive).

    Detected lesions are numbered in detection order, not as the digital patient numbers
    them, so they are matched by voxel overlap on the reference grid (both label maps are on
    it; if the grids differ, the pipeline's labels are resampled, nearest neighbour).
    """
    truth_labels = sitk.Cast(read_image(truth_dir / "labels.nii.gz", pixel_type=None),
                             sitk.sitkUInt16)
    records = json.loads((truth_dir / "labels.json").read_text(encoding="utf-8"))
    true_lesions = {int(r["label"]): r["name"] for r in records
                    if r.get("kind") == "lesion" or str(r["name"]).startswith("lesion")}
    if labels.GetSize() != truth_labels.GetSize():
        labels = sitk.Resample(labels, truth_labels, sitk.Transform(),
                               sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)
    ours = sitk.GetArrayFromImage(labels)
    theirs = sitk.GetArrayFromImage(truth_labels)
    out: dict[str, str | None] = {}
    for label, (name, kind) in table.items():
        if kind != "lesion":
            continue
        hit = theirs[ours == label]
        hit = hit[np.isin(hit, list(true_lesions))]
        if hit.size == 0:
            out[name] = None
        else:
            vals, counts = np.unique(hit, return_counts=True)
            out[name] = true_lesions[int(vals[np.argmax(counts)])]
    return out
