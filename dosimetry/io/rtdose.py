"""DICOM RT Dose: absorbed-dose maps out to treatment-planning and review systems, and back.

:func:`write_rtdose` writes a 3D dose map (Gy) as one RT Dose Storage file (PS3.3 A.18): a
multi-frame grid whose frames are placed by GridFrameOffsetVector along the slice normal, uint32
pixels scaled by DoseGridScaling, DoseUnits ``GY``, DoseType ``PHYSICAL`` (or ``ERROR`` for a
σ map) and DoseSummationType ``PLAN``. A radiopharmaceutical therapy has no RT Plan object, so
no ReferencedRTPlanSequence is written; planning systems that require one (the standard makes it
conditional on the summation type) should import the NIfTI map instead. The frame of reference
is the CT's, so the dose overlays the images it was computed on.

:func:`read_rtdose` reads such a file (ours or a planning system's) back into a
``SimpleITK.Image`` in Gy.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset

from dosimetry.errors import InputError
from dosimetry.io.atomic import atomic_path
from dosimetry.io.dicom_write import DicomSeriesMeta, _base_dataset, _ds, _geometry, uid_from_seed
from dosimetry.io.images import check_allocation

RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"

#: uint32 full scale used for the dose grid; DoseGridScaling = max dose / this.
_FULL_SCALE = np.float64(2**32 - 1)


def write_rtdose(dose_gy: sitk.Image, path: str | os.PathLike[str], meta: DicomSeriesMeta, *,
                 dose_type: str = "PHYSICAL", comment: str = "") -> Path:
    """Write a dose map [Gy] as a DICOM RT Dose file (atomically) and return its path.

    Parameters
    ----------
    dose_gy : SimpleITK.Image
        3D absorbed dose [Gy] (negative values are refused: dose is non-negative).
    path : path
        Output ``.dcm`` file.
    meta : DicomSeriesMeta
        Identity; use the CT's patient, study and frame of reference so the dose overlays it.
    dose_type : {"PHYSICAL", "ERROR"}
        ``ERROR`` for a map of the dose's standard uncertainty.
    comment : str
        DoseComment (e.g. engine and nuclide), at most 64 characters.

    Notes
    -----
    Quantisation: values are stored as round(D / s) with s = max(D) / (2³² − 1), so each voxel is
    kept within s/2, i.e. 1.2e-10 of the maximum dose.
    """
    path = Path(path)
    what = f"RT Dose {path}"
    if dose_type not in ("PHYSICAL", "ERROR"):
        raise InputError(f"{what}: dose_type {dose_type!r}; expected PHYSICAL or ERROR")
    row, col, _step, signed = _geometry(dose_gy, what)
    arr = sitk.GetArrayFromImage(dose_gy).astype(np.float64)  # (z, y, x)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{what}: dose map holds NaN or infinite values")
    if arr.min() < 0:
        raise InputError(f"{what}: dose map holds negative values (min {arr.min():.3g} Gy)")
    peak = float(arr.max())
    # DoseGridScaling is a DS (at most 16 characters): round it to 10 significant digits first
    # and quantise with the rounded value, so the file decodes to what was intended.
    # Raised by 1e-8 first so that rounding (≤ 5e-11 relative) cannot leave it below
    # peak / full scale, which would push the peak past the uint32 range.
    scaling = float(f"{peak / _FULL_SCALE * (1.0 + 1e-8):.10g}") if peak > 0 else 1.0
    pixels = np.rint(arr / scaling).astype(np.uint32)

    sop = uid_from_seed("rtdose", meta.series_uid)
    ds = _base_dataset(meta, RT_DOSE_STORAGE, sop, "RTDOSE")
    nz, ny, nx = arr.shape
    origin = np.asarray(dose_gy.GetOrigin(), dtype=float)
    ds.ImagePositionPatient = [_ds(v) for v in origin]
    ds.ImageOrientationPatient = [_ds(v) for v in (*row, *col)]
    sx, sy, _ = dose_gy.GetSpacing()
    ds.PixelSpacing = [_ds(sy), _ds(sx)]  # row spacing, column spacing
    ds.SliceThickness = _ds(abs(signed))
    # Offsets along the normal of the first frame's plane (PS3.3 C.8.8.3.2, relative form).
    ds.GridFrameOffsetVector = [_ds(k * signed) for k in range(nz)]
    ds.FrameIncrementPointer = pydicom.tag.Tag(0x3004, 0x000C)
    ds.NumberOfFrames = nz
    ds.Rows, ds.Columns = ny, nx
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 32
    ds.BitsStored = 32
    ds.HighBit = 31
    ds.PixelRepresentation = 0
    ds.DoseUnits = "GY"
    ds.DoseType = dose_type
    ds.DoseSummationType = "PLAN"
    ds.DoseGridScaling = f"{scaling:.10g}"
    if comment:
        ds.DoseComment = comment[:64]
    ds.InstanceNumber = 1
    ds.PixelData = pixels.tobytes()
    with atomic_path(path, suffix=".dcm") as tmp:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    return path


def read_rtdose(path: str | os.PathLike[str]) -> sitk.Image:
    """Read a DICOM RT Dose file into a float32 ``SimpleITK.Image`` [Gy].

    Raises
    ------
    InputError
        Not an RT Dose object, dose units other than Gy, uneven frame offsets, too large.
    """
    path = Path(path)
    try:
        ds: Dataset = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises many types on damaged files
        raise InputError(f"{path}: cannot read DICOM ({type(exc).__name__}: {exc})") from None
    if ds.get("SOPClassUID") != RT_DOSE_STORAGE:
        raise InputError(f"{path}: SOPClassUID {ds.get('SOPClassUID')} is not RT Dose Storage")
    if str(ds.get("DoseUnits", "")).upper() != "GY":
        raise InputError(f"{path}: DoseUnits {ds.get('DoseUnits')!r}; only GY is supported")
    nz = int(ds.get("NumberOfFrames", 1))
    ny, nx = int(ds.Rows), int(ds.Columns)
    check_allocation(nz * ny * nx, 8, str(path))
    offsets = np.asarray([float(v) for v in ds.GridFrameOffsetVector], dtype=float) \
        if nz > 1 else np.zeros(1)
    if len(offsets) != nz:
        raise InputError(f"{path}: GridFrameOffsetVector has {len(offsets)} values for "
                         f"{nz} frames")
    if nz > 1:
        steps = np.diff(offsets)
        if not np.allclose(steps, steps[0], rtol=1e-3, atol=1e-3) or steps[0] == 0:
            raise InputError(f"{path}: uneven or zero frame offsets {offsets[:5]}…")
        if offsets[0] != 0:
            # Absolute form (PS3.3 C.8.8.3.2): offsets are z positions; make them relative.
            offsets = offsets - offsets[0]
    row_col = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=float)
    row, col = row_col[:3], row_col[3:]
    normal = np.cross(row, col)
    step = float(offsets[1] - offsets[0]) if nz > 1 else float(ds.get("SliceThickness", 1.0))
    arr = ds.pixel_array.reshape(nz, ny, nx).astype(np.float64) * float(ds.DoseGridScaling)
    if step < 0:  # frames run against the normal: flip so the image axis follows the normal
        arr = arr[::-1]
        origin = np.asarray([float(v) for v in ds.ImagePositionPatient]) + normal * step * (nz - 1)
        step = -step
    else:
        origin = np.asarray([float(v) for v in ds.ImagePositionPatient])
    img = sitk.GetImageFromArray(arr.astype(np.float32))
    dy, dx = (float(v) for v in ds.PixelSpacing)
    img.SetSpacing((dx, dy, step))
    img.SetOrigin(tuple(origin))
    img.SetDirection(tuple(np.column_stack([row, col, normal]).ravel()))
    return img
