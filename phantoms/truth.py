"""Ground truth of a digital patient: per-label masses and activities, the true activity and
time-integrated-activity maps, and the ``truth/`` folder.

Array kernels (:func:`label_masses`, :func:`voxel_weights`, :func:`label_map_values`) are kept
apart from the file writing (:func:`write_truth_folder`).

Conventions of ``truth/truth.json``
-----------------------------------
* Masses in g, volumes in mL, activities in MBq, time-integrated activities (TIA) in MBq·h,
  times in h after injection, concentrations as fractions of the administered activity A₀.
* Organ masses are ``Σ voxels × voxel volume × density`` of the label on the reference grid
  (the first timepoint's CT grid, reference pose) — exact by construction.
* The activity map of a timepoint holds Bq per voxel on the reference grid in the reference
  pose, at the start of that timepoint's SPECT acquisition; its sum is the sum of the label
  activities to float32 rounding.
* The TIA map holds Bq·s per voxel: each label's analytic integral
  ``A₀·Σ cⱼ/(kⱼ + λ)`` × its (time-invariant) voxel distribution.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dosimetry.io.atomic import atomic_write_text
from dosimetry.io.images import write_image

#: Version of the generator: bump when the same seed would give different phantoms.
GENERATOR_VERSION = "1.0"


def label_masses(labels_core: np.ndarray, densities: dict[int, float],
                 voxel_volume_ml: float) -> tuple[dict[int, int], dict[int, float]]:
    """Voxel counts and masses [g] of every label present (label 0 excluded).

    Parameters
    ----------
    labels_core : (Z, Y, X) integer ndarray
    densities : mapping label → density [g/cm³ = g/mL]
    voxel_volume_ml : float
    """
    counts = np.bincount(labels_core.ravel())
    n = {int(lab): int(c) for lab, c in enumerate(counts) if c and lab != 0}
    m = {lab: c * voxel_volume_ml * densities[lab] for lab, c in n.items()}
    return n, m


def voxel_weights(labels: np.ndarray, core: slice, texture: np.ndarray) -> np.ndarray:
    """Per-voxel share of its label's in-field-of-view amount (float64, padded grid).

    ``w_v = texture_v / Σ_{core voxels of the label} texture``: the weights of a label sum to 1
    over the core (the field of view); voxels of the same label in the padding continue the
    same concentration outside it. Label 0 gets 0.
    """
    tex = texture.astype(np.float64)
    sums = np.bincount(labels[core].ravel(), weights=tex[core].ravel())
    sums = np.concatenate([sums, np.zeros(int(labels.max()) + 1 - sums.size)])
    safe = np.where(sums > 0, sums, 1.0)
    w = tex / safe[labels]
    w[labels == 0] = 0.0
    w[sums[labels] == 0] = 0.0
    return w


def label_map_values(labels: np.ndarray, weights: np.ndarray, per_label: dict[int, float]
                     ) -> np.ndarray:
    """``out_v = per_label[label_v] × weights_v`` (float64); labels absent from the mapping
    get 0."""
    lut = np.zeros(int(labels.max()) + 1, dtype=np.float64)
    for lab, v in per_label.items():
        if lab < lut.size:
            lut[lab] = v
    return lut[labels] * weights


def to_jsonable(obj: Any) -> Any:
    """Numbers, tuples and numpy scalars as plain JSON types (recursively)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, Path):
        return obj.as_posix()
    return obj


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(to_jsonable(data), indent=2, ensure_ascii=False,
                                              allow_nan=False) + "\n")


def write_truth_folder(folder: Path, truth: dict[str, Any], label_table: list[dict[str, Any]],
                       labels: sitk.Image, activity_maps: dict[str, sitk.Image],
                       tia_map: sitk.Image | None,
                       transforms: dict[str, dict[str, sitk.Transform | sitk.Image]]
                       ) -> list[Path]:
    """Write ``truth/``: labels, label table, maps, transforms and ``truth.json``.

    ``transforms`` maps a timepoint label to named objects: transforms are written as ITK text
    transform files (``.tfm``), displacement fields as NIfTI vector images. ``truth.json`` is
    written last.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = [write_image(labels, folder / "labels.nii.gz"),
               write_json(folder / "labels.json", label_table)]
    for name, img in activity_maps.items():
        written.append(write_image(img, folder / f"activity_{name}.nii.gz"))
    if tia_map is not None:
        written.append(write_image(tia_map, folder / "tia.nii.gz"))
    tdir = folder / "transforms"
    for tp, objs in transforms.items():
        for key, obj in objs.items():
            if isinstance(obj, sitk.Image):
                written.append(write_image(obj, tdir / f"{tp}_{key}.nii.gz"))
            else:
                written.append(write_transform(obj, tdir / f"{tp}_{key}.tfm"))
    written.append(write_json(folder / "truth.json", truth))
    return written


def write_transform(transform: sitk.Transform, path: Path) -> Path:
    """Write a SimpleITK transform as an ITK text file, atomically."""
    from dosimetry.io.atomic import atomic_path

    with atomic_path(path, suffix=".tfm") as tmp:
        sitk.WriteTransform(transform, str(tmp))
    return path
