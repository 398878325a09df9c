"""Loading the images a study manifest refers to, in internal units.

:func:`load_image` turns an :class:`~dosimetry.study.manifest.ImageRef` into a ``SimpleITK.Image``
whatever its format (NIfTI/MHD/NRRD file, DICOM file or folder). :func:`load_spect_bq_per_ml`
returns a timepoint's SPECT as activity concentration in Bq/mL, converting counts with the
calibration factor and frame duration given in the manifest.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dosimetry import units
from dosimetry.errors import InputError
from dosimetry.io.images import read_image
from dosimetry.study.manifest import ImageFormat, ImageRef, SpectUnits, Study, Timepoint


def dicom_series_of(ref: ImageRef, base_dir: Path, modality: tuple[str, ...]):
    """The one DICOM series a reference points to (by series UID when several are there)."""
    from dosimetry.io.dicom import scan_dicom_folder

    path = ref.resolve(base_dir)
    scan = scan_dicom_folder(path)
    series = [s for s in scan.series if s.modality in modality]
    if ref.series_uid is not None:
        series = [s for s in series if s.series_uid == ref.series_uid]
    if not series:
        want = f"series {ref.series_uid}" if ref.series_uid else f"a {'/'.join(modality)} series"
        raise InputError(f"{path}: no DICOM {want} found there")
    if len(series) > 1:
        uids = ", ".join(s.series_uid for s in series)
        raise InputError(
            f"{path}: holds {len(series)} {'/'.join(modality)} series ({uids}); "
            "set series_uid in the manifest to pick one"
        )
    return series[0]


def image_bounds(
    ref: ImageRef, base_dir: str | os.PathLike[str]
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Axis-aligned bounding box (mm, x/y/z, outer voxel faces) of an image, from headers only."""
    base = Path(base_dir)
    path = ref.resolve(base)
    if ref.format is ImageFormat.DICOM:
        from dosimetry.io.dicom import series_geometry

        info = dicom_series_of(ref, base, ("CT", "NM", "PT", "MR"))
        size, spacing, origin, direction = series_geometry(info)
    else:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise InputError(f"{path}: cannot read image header ({exc})") from None
        size, spacing = reader.GetSize(), reader.GetSpacing()
        origin, direction = reader.GetOrigin(), reader.GetDirection()
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    corners = []
    for corner in np.ndindex(2, 2, 2):
        idx = np.where(np.array(corner) == 1, np.array(size) - 0.5, -0.5)
        corners.append(np.asarray(origin) + d @ (idx * np.asarray(spacing)))
    c = np.asarray(corners)
    lo, hi = c.min(axis=0), c.max(axis=0)
    return (float(lo[0]), float(lo[1]), float(lo[2])), (float(hi[0]), float(hi[1]), float(hi[2]))


def load_image(ref: ImageRef, base_dir: str | os.PathLike[str]) -> sitk.Image:
    """Read the image a reference points to as float32 ``SimpleITK.Image``.

    DICOM CT gives HU; DICOM NM gives what the file stores (Bq/mL or counts, see
    :func:`load_spect_bq_per_ml` for activity).
    """
    base = Path(base_dir)
    if ref.format is not ImageFormat.DICOM:
        return read_image(ref.resolve(base))
    from dosimetry.io.dicom import read_ct_series, read_nm_image

    info = dicom_series_of(ref, base, ("CT", "NM", "PT"))
    if info.modality == "CT":
        return read_ct_series(list(info.files))
    return read_nm_image(info).image


def load_spect_bq_per_ml(
    study: Study, timepoint: Timepoint | str, base_dir: str | os.PathLike[str]
) -> sitk.Image:
    """A timepoint's SPECT as activity concentration [Bq/mL] at the acquisition time.

    Counts are converted as ``C / (t_frame · S) / V_voxel`` with ``S`` the calibration factor
    [cps/Bq], ``t_frame`` the frame duration [s] and ``V_voxel`` the voxel volume [mL]: the
    calibration is taken to relate the count rate of the reconstructed image to the activity in
    the field of view at acquisition (no decay correction over the frame, which for Lu-177 and
    I-131 and frames under an hour is below 0.5 %).
    """
    tp = study.timepoint(timepoint) if isinstance(timepoint, str) else timepoint
    img = load_image(tp.spect, base_dir)
    if tp.spect_units is SpectUnits.BQ_PER_ML:
        return img
    # The model validator guarantees both values are present for count images.
    assert tp.calibration_cps_per_bq is not None and tp.frame_duration_s is not None
    voxel_ml = units.voxel_volume_ml(img.GetSpacing())
    scale = 1.0 / (tp.frame_duration_s * tp.calibration_cps_per_bq * voxel_ml)
    arr = sitk.GetArrayViewFromImage(img).astype(np.float32) * np.float32(scale)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out
