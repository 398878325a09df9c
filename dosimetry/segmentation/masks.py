"""Importing segmentations made elsewhere: NIfTI/MHD label maps, DICOM RTSTRUCT, DICOM SEG.

:func:`import_masks` looks at what a path is and calls the right reader; every result is a
:class:`~dosimetry.segmentation.labelmap.LabelMap` on the given reference grid.

* **Label map image** (``.nii.gz``, ``.nii``, ``.mha``, ``.mhd``, ``.nrrd``): integer labels with a
  name table found, in this order, at ``names=``, beside the image as ``<stem>.json`` /
  ``<stem>.csv`` / ``<stem>.tsv``, or as ``labels.json`` / ``labels.csv`` in the same folder
  (the digital patients' ``truth/labels.json`` is found that way). The map is resampled onto the
  reference grid by nearest neighbour when its grid differs (announced in ``warnings``).
* **DICOM**: a file or a folder; an RTSTRUCT is rasterised
  (:func:`~dosimetry.segmentation.rtstruct.rtstruct_to_labelmap`), a SEG mapped frame by frame
  (:func:`~dosimetry.segmentation.seg.read_seg`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dosimetry.errors import InputError
from dosimetry.io.images import IMAGE_SUFFIXES, read_image
from dosimetry.segmentation.labelmap import (
    LabelMap,
    LabelTable,
    check_labels_in_table,
    label_image,
    read_label_table,
)

_TABLE_SUFFIXES = (".json", ".csv", ".tsv")


def _is_image(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(IMAGE_SUFFIXES)


def _stem(path: Path) -> str:
    name = path.name
    for s in IMAGE_SUFFIXES:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return path.stem


def find_name_table(image_path: str | os.PathLike[str]) -> Path | None:
    """The name table beside a label image (see the module docstring), or None."""
    p = Path(image_path)
    for cand in ([p.parent / f"{_stem(p)}{s}" for s in _TABLE_SUFFIXES]
                 + [p.parent / f"labels{s}" for s in _TABLE_SUFFIXES]):
        if cand.is_file():
            return cand
    return None


def read_label_image(path: str | os.PathLike[str], reference: sitk.Image | None = None,
                     names: str | os.PathLike[str] | LabelTable | None = None) -> LabelMap:
    """Read an integer label image and its name table; resample onto ``reference`` if given.

    Raises
    ------
    InputError
        No name table found, non-integer or negative voxel values, no labelled voxel.
    """
    p = Path(path)
    if isinstance(names, LabelTable):
        table = names
    else:
        tpath = Path(names) if names is not None else find_name_table(p)
        if tpath is None:
            raise InputError(f"{p}: no name table for the labels; put {_stem(p)}.json or "
                             "labels.json (a list of {label, name, kind}) or a CSV with label,"
                             "name columns beside it, or pass it explicitly")
        table = read_label_table(tpath)
    img = read_image(p, pixel_type=None)
    arr = sitk.GetArrayViewFromImage(img)
    if not np.issubdtype(arr.dtype, np.integer):
        f = np.asarray(arr, dtype=np.float64)
        bad = ~np.isfinite(f) | (f != np.round(f))
        if bad.any():
            raise InputError(f"{p}: label image holds non-integer values (e.g. "
                             f"{f[bad].ravel()[0]!r})")
    arr_i = np.asarray(arr, dtype=np.int64)
    if arr_i.size and arr_i.min() < 0:
        raise InputError(f"{p}: label image holds a negative label {int(arr_i.min())}")
    notes = list(check_labels_in_table(arr_i, table, str(p)))
    known = np.array([e.label for e in table], dtype=np.int64)
    arr_i = np.where(np.isin(arr_i, known), arr_i, 0)
    lab_img = sitk.GetImageFromArray(arr_i.astype(np.uint16))
    lab_img.CopyInformation(img)
    if reference is not None and not _same_grid(lab_img, reference):
        notes.append(f"{p.name}: label grid differs from the reference grid; resampled by "
                     "nearest neighbour")
        lab_img = sitk.Resample(lab_img, reference, sitk.Transform(3, sitk.sitkIdentity),
                                sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)
    out = sitk.GetArrayViewFromImage(lab_img)
    present = set(np.unique(out).tolist()) - {0}
    if not present:
        raise InputError(f"{p}: no labelled voxel{' on the reference grid' if reference else ''}")
    absent = [e.name for e in table if e.label not in present]
    if absent:
        notes.append(f"{p.name}: structures {absent} of the name table have no voxel")
    kept = LabelTable(tuple(e for e in table if e.label in present))
    ref = reference if reference is not None else lab_img
    return LabelMap(label_image(np.asarray(out), ref), kept, source=f"labels {p.name}",
                    warnings=tuple(notes))


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6))


def _dicom_kind(path: Path) -> str | None:
    """'RTSTRUCT', 'SEG' or None for a DICOM file or a folder holding one of them."""
    import pydicom

    if path.is_file():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[
                "Modality", "SOPClassUID"])
        except Exception:  # not DICOM
            return None
        mod = str(ds.get("Modality", "")).upper()
        return mod if mod in ("RTSTRUCT", "SEG") else None
    from dosimetry.io.dicom import scan_dicom_folder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scan = scan_dicom_folder(path)
    kinds = {s.modality.upper() for s in scan.series} & {"RTSTRUCT", "SEG"}
    if len(kinds) > 1:
        raise InputError(f"{path}: holds both RTSTRUCT and SEG; give the file to use")
    return kinds.pop() if kinds else None


def import_masks(path: str | os.PathLike[str], reference: sitk.Image, *,
                 names: str | os.PathLike[str] | None = None,
                 rois: Sequence[str] | None = None,
                 frame_of_reference_uid: str | None = None) -> LabelMap:
    """Import a segmentation made elsewhere onto ``reference``'s grid.

    Parameters
    ----------
    path : path
        Label image (with a name table), an RTSTRUCT or SEG file, or a folder holding one.
    reference : SimpleITK.Image
        The grid of the result (the reference CT).
    names : path, optional
        Name table of a label image (JSON or CSV).
    rois : sequence of str, optional
        RTSTRUCT ROIs to take (default all).
    frame_of_reference_uid : str, optional
        Of the reference image; RTSTRUCT/SEG in another frame are refused.

    Raises
    ------
    InputError
        Path missing, of an unknown kind, or holding nothing usable.
    """
    from dosimetry.segmentation.rtstruct import rtstruct_to_labelmap
    from dosimetry.segmentation.seg import read_seg

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: masks file or folder not found")
    if _is_image(p):
        return read_label_image(p, reference, names)
    kind = _dicom_kind(p)
    if kind == "RTSTRUCT":
        return rtstruct_to_labelmap(p, reference, rois=rois,
                                    frame_of_reference_uid=frame_of_reference_uid)
    if kind == "SEG":
        return read_seg(p, reference, frame_of_reference_uid=frame_of_reference_uid)
    raise InputError(f"{p}: not a label image ({', '.join(IMAGE_SUFFIXES)}), RTSTRUCT or SEG")
