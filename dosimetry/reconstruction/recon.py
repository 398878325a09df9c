"""Quantitative SPECT reconstruction of raw projections: :func:`reconstruct`.

Per bed position: photopeak counts; TEW scatter estimate from the adjoining windows (Ogawa et
al. 1991, doi:10.1109/42.97591) as the additive term; μ map from the CT at the photopeak energy
(:mod:`dosimetry.reconstruction.attenuation`); the collimator–detector response of the
collimator named in the header (:mod:`dosimetry.reconstruction.collimator`); OSEM through
PyTomography (:mod:`dosimetry.reconstruction.system`). Beds are stitched
(:mod:`dosimetry.reconstruction.stitch`).

Axial field of view: a camera's detector covers fewer rows than the projection matrix (GE
Discovery 670: a 40 cm field in a 128 × 4.42 mm = 566 mm matrix). Rows outside hold (almost)
no counts, and OSEM would force the activity there to zero. Each bed is therefore reconstructed
only over the rows of its axial field (:func:`axial_field_rows`) and the other slices of its
grid are zero and marked invalid for stitching.

Units and calibration
---------------------
The reconstruction is in counts per view: a voxel value f projects to f counts in one view in
air (the system model has unit sensitivity). With the planar sensitivity S [cps/MBq] of the
camera for the photopeak window and the acquisition time per view t [s] (ActualFrameDuration),
the activity concentration is

    c [Bq/mL] = f · 10⁶ / (S · t · V)        (V the voxel volume [mL])

:func:`counts_to_bq_per_ml`. It is the mean activity over the acquisition, i.e. at its mid-time.
Decay during the acquisition is not corrected: the mean over a span T differs from the activity
at its start by ≈ λT/2, ≤ 0.1 % for Lu-177 (T½ 6.65 d) and I-131 (8.02 d) over ≤ 30 min; the
bound is given in the result's notes. Beds are converted (or, uncalibrated, normalised to the
first bed's time per view) before stitching, so beds of different durations stitch correctly;
the decay between beds is likewise not corrected. Dead time is not corrected.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dosimetry import units
from dosimetry.errors import InputError
from dosimetry.reconstruction.collimator import (
    DEFAULT_INTRINSIC_FWHM_MM_140KEV,
    PSFModel,
    psf_model,
    resolve_collimator,
)
from dosimetry.reconstruction.projections import ProjectionSet, read_projections
from dosimetry.reconstruction.stitch import StitchMethod, stitch_beds
from dosimetry.reconstruction.system import ProgressCallback, default_subsets, reconstruct_arrays
from dosimetry.reconstruction.windows import EnergyWindow, tew_scatter

__all__ = [
    "AXIAL_FIELD_THRESHOLD",
    "BedInfo",
    "FileRecon",
    "ReconResult",
    "ReconSettings",
    "ReconUnits",
    "ScatterMethod",
    "axial_field_rows",
    "counts_to_bq_per_ml",
    "reconstruct",
    "reconstruct_to_file",
]

#: A projection row belongs to the detector's axial field when its counts (all windows, all
#: views) reach this fraction of the busiest row; the field is the run from the first to the
#: last such row. Rows beyond the detector edge hold ~0.1 % of an interior row (stray and
#: scattered photons), partly covered edge rows a few per cent.
AXIAL_FIELD_THRESHOLD = 0.02


class ScatterMethod(StrEnum):
    """Scatter estimate used as the additive term."""

    TEW = "tew"
    NONE = "none"


class ReconUnits(StrEnum):
    """What the voxels of a reconstruction hold."""

    COUNTS = "counts"  # counts per view (see the module notes)
    BQ_PER_ML = "Bq/mL"


@dataclass(frozen=True)
class BedInfo:
    """What was done with one bed position."""

    file: str
    series_uid: str
    bed_centre_z_mm: float
    rows_used: tuple[int, int]
    slices_z_mm: tuple[float, float]
    time_per_view_s: float | None
    seconds: float
    photopeak_counts: float
    scatter_counts: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "series_uid": self.series_uid,
                "bed_centre_z_mm": self.bed_centre_z_mm, "rows_used": list(self.rows_used),
                "slices_z_mm": list(self.slices_z_mm), "time_per_view_s": self.time_per_view_s,
                "seconds": self.seconds, "photopeak_counts": self.photopeak_counts,
                "scatter_counts": self.scatter_counts}


@dataclass(frozen=True, eq=False)
class ReconResult:
    """A reconstructed SPECT and how it was made.

    Attributes
    ----------
    image : SimpleITK.Image
        float32, in ``units``, in the patient coordinates of the acquisition (its frame of
        reference, the CT's), identity direction, voxel = projection pixel.
    units : ReconUnits
    iterations, subsets : int
    photopeak_window, lower_window, upper_window : EnergyWindow or None
    photopeak_kev : float
    nuclide : str or None
    scatter : ScatterMethod
    attenuation : bool
    psf : PSFModel or None
    calibration_cps_per_mbq : float or None
    time_per_view_s : float or None
        Of the first bed; an uncalibrated image is in counts per view of this duration.
    device : str
    seconds : float
        Total wall time (reading excluded).
    beds : tuple of BedInfo
    stitching : str
    frame_of_reference_uid : str or None
    acquisition_datetime : datetime or None
    notes : tuple of str
        Fallbacks and approximations taken (also issued as warnings where they are fallbacks).
    """

    image: sitk.Image
    units: ReconUnits
    iterations: int
    subsets: int
    photopeak_window: EnergyWindow
    lower_window: EnergyWindow | None
    upper_window: EnergyWindow | None
    photopeak_kev: float
    nuclide: str | None
    scatter: ScatterMethod
    attenuation: bool
    psf: PSFModel | None
    calibration_cps_per_mbq: float | None
    time_per_view_s: float | None
    device: str
    seconds: float
    beds: tuple[BedInfo, ...]
    stitching: str
    frame_of_reference_uid: str | None
    acquisition_datetime: datetime | None
    notes: tuple[str, ...] = field(default=())

    @property
    def voxel_volume_ml(self) -> float:
        return units.voxel_volume_ml(self.image.GetSpacing())

    def total_activity_mbq(self) -> float | None:
        """Activity in the reconstructed field of view [MBq], when calibrated."""
        if self.units is not ReconUnits.BQ_PER_ML:
            return None
        total = float(sitk.GetArrayViewFromImage(self.image).sum(dtype=np.float64))
        return units.bq_to_mbq(total * self.voxel_volume_ml)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready metadata (no voxels)."""
        def win(w: EnergyWindow | None) -> dict[str, object] | None:
            return None if w is None else w.to_dict()

        return {
            "units": self.units.value, "iterations": self.iterations, "subsets": self.subsets,
            "photopeak_window": win(self.photopeak_window),
            "lower_scatter_window": win(self.lower_window),
            "upper_scatter_window": win(self.upper_window),
            "photopeak_kev": self.photopeak_kev, "nuclide": self.nuclide,
            "scatter": self.scatter.value, "attenuation": self.attenuation,
            "psf": None if self.psf is None else self.psf.to_dict(),
            "collimator": None if self.psf is None else self.psf.collimator.code,
            "calibration_cps_per_mbq": self.calibration_cps_per_mbq,
            "time_per_view_s": self.time_per_view_s, "device": self.device,
            "seconds": self.seconds, "beds": [b.to_dict() for b in self.beds],
            "stitching": self.stitching, "frame_of_reference_uid": self.frame_of_reference_uid,
            "acquisition_datetime": None if self.acquisition_datetime is None
            else self.acquisition_datetime.isoformat(),
            "size": list(self.image.GetSize()), "spacing_mm": list(self.image.GetSpacing()),
            "origin_mm": list(self.image.GetOrigin()),
            "total_activity_mbq": self.total_activity_mbq(),
            "system_model": "PyTomography SPECTSystemMatrix (rotate-and-sum), OSEM on "
                            "PoissonLogLikelihood; doi:10.1016/j.softx.2023.101586",
            "notes": list(self.notes),
        }


def counts_to_bq_per_ml(counts: np.ndarray | float, calibration_cps_per_mbq: float,
                        time_per_view_s: float, voxel_volume_ml: float) -> np.ndarray:
    """Activity concentration [Bq/mL] of reconstructed counts per view.

    ``c = f · 10⁶ / (S · t · V)`` with S the sensitivity [cps/MBq], t the time per view [s] and
    V the voxel volume [mL] (module notes).
    """
    s = float(calibration_cps_per_mbq)
    t = float(time_per_view_s)
    v = float(voxel_volume_ml)
    for name, x in (("calibration_cps_per_mbq", s), ("time per view [s]", t),
                    ("voxel volume [mL]", v)):
        if not (math.isfinite(x) and x > 0):
            raise InputError(f"{name} must be finite and > 0, got {x!r}")
    return np.asarray(counts, dtype=np.float64) * (units.MBQ / (s * t * v))


def axial_field_rows(counts: np.ndarray, threshold: float = AXIAL_FIELD_THRESHOLD
                     ) -> tuple[int, int]:
    """First and last projection row (inclusive) of the detector's axial field of view.

    Parameters
    ----------
    counts : (..., R, C) ndarray
        Projection counts (e.g. all windows and views of a bed); rows are axial.
    threshold : float
        Fraction of the busiest row's counts a row must reach.

    Returns
    -------
    (int, int)
        The run from the first to the last row above the threshold, shrunk by one row at each
        end where it stops short of the matrix edge (a partly covered edge row has a lower,
        unmodelled sensitivity); the whole matrix when every row qualifies or none does.
    """
    arr = np.asarray(counts, dtype=np.float64)
    rows = arr.reshape(-1, arr.shape[-2], arr.shape[-1]).sum(axis=(0, 2))
    n = rows.size
    peak = rows.max() if n else 0.0
    if peak <= 0:
        return 0, n - 1
    above = np.nonzero(rows >= threshold * peak)[0]
    first, last = int(above[0]), int(above[-1])
    if first > 0:
        first += 1
    if last < n - 1:
        last -= 1
    if last - first < 1:
        return 0, n - 1
    return first, last


def _decay_note(nuclide: str | None, span_s: float | None) -> str | None:
    if nuclide is None or span_s is None:
        return None
    try:
        from dosimetry.nuclides import get_nuclide

        lam = get_nuclide(nuclide).decay_constant_per_s
    except InputError:
        return None
    rel = 1.0 - (1.0 - math.exp(-lam * span_s)) / (lam * span_s)
    return (f"decay during the acquisition not corrected: the image is the mean activity over "
            f"the acquisition (≤ {span_s:.0f} s), ≤ {100 * rel:.2g} % below the activity at its "
            f"start ({nuclide})")


def _check_ct(ct: Any, projections: ProjectionSet) -> tuple[sitk.Image, str]:
    """The CT as an image in HU; a path is read (and its frame of reference checked)."""
    from dosimetry.errors import GeometryError
    from dosimetry.io.dicom import SeriesInfo

    if isinstance(ct, sitk.Image):
        return ct, "CT"
    if isinstance(ct, SeriesInfo):
        from dosimetry.io.dicom import read_ct_series

        if projections.frame_of_reference_uid and ct.frame_of_reference_uid and \
                ct.frame_of_reference_uid != projections.frame_of_reference_uid:
            raise GeometryError(
                f"CT series {ct.series_description or ct.series_uid!r}: FrameOfReferenceUID "
                f"(0020,0052) {ct.frame_of_reference_uid} differs from the projections' "
                f"{projections.frame_of_reference_uid}")
        return read_ct_series(ct), f"CT {ct.series_description or ct.series_uid}"
    if isinstance(ct, (str, os.PathLike)):
        import warnings

        from dosimetry.io.dicom import read_ct_series, scan_dicom_folder
        from dosimetry.io.images import IMAGE_SUFFIXES, read_image

        path = os.fspath(ct)
        if any(path.lower().endswith(s) for s in IMAGE_SUFFIXES):
            return read_image(path), os.path.basename(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # other files in the folder are not our concern
            scan = scan_dicom_folder(path) if os.path.isdir(path) else None
        if scan is not None:
            cts = scan.by_modality("CT")
            if len(cts) == 1 and projections.frame_of_reference_uid and \
                    cts[0].frame_of_reference_uid and \
                    cts[0].frame_of_reference_uid != projections.frame_of_reference_uid:
                raise GeometryError(
                    f"{path}: CT FrameOfReferenceUID (0020,0052) "
                    f"{cts[0].frame_of_reference_uid} differs from the projections' "
                    f"{projections.frame_of_reference_uid}; the CT is not in the SPECT's "
                    "coordinates (register it first, or give the CT of the same SPECT/CT)")
            if len(cts) == 1:
                return read_ct_series(cts[0]), os.path.basename(path.rstrip("/"))
        return read_ct_series(path), os.path.basename(path.rstrip("/"))
    raise InputError(f"ct must be a SimpleITK image, a CT series, a CT folder or an image file, "
                     f"got {type(ct).__name__}")


def reconstruct(
    projections: ProjectionSet | str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    ct: sitk.Image | str | os.PathLike[str] | Any | None,
    *,
    iterations: int = 4,
    subsets: int | None = None,
    calibration_cps_per_mbq: float | None = None,
    scatter: ScatterMethod | str = ScatterMethod.TEW,
    psf: bool = True,
    attenuation: bool = True,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
    collimator: str | None = None,
    intrinsic_fwhm_mm_140kev: float = DEFAULT_INTRINSIC_FWHM_MM_140KEV,
    nuclide: str | None = None,
    photopeak_kev: float | None = None,
    stitching: StitchMethod | str = StitchMethod.MIDPOINT,
) -> ReconResult:
    """Reconstruct raw SPECT projections (all bed positions) into one quantitative image.

    Parameters
    ----------
    projections : ProjectionSet, path or paths
        From :func:`~dosimetry.reconstruction.projections.read_projections`, or what it reads.
    ct : SimpleITK.Image, path, SeriesInfo or None
        CT in HU in the projections' frame of reference: an image, a CT DICOM folder or series
        (whose FrameOfReferenceUID is checked against the projections'), or a NIfTI/MHD file.
        Needed for attenuation correction; None only with ``attenuation=False``.
    iterations : int
        OSEM iterations.
    subsets : int, optional
        OSEM subsets; default :func:`~dosimetry.reconstruction.system.default_subsets`
        (10 for 60 views).
    calibration_cps_per_mbq : float, optional
        Planar sensitivity of the camera in the photopeak window [cps/MBq]; gives Bq/mL
        (module notes). None: counts per view.
    scatter : ``"tew"`` or ``"none"``
        Scatter estimate (TEW needs the lower scatter window; a missing upper window is taken
        as empty, as announced).
    psf : bool
        Model the collimator–detector response of the header's collimator.
    attenuation : bool
        Model attenuation (needs ``ct``).
    device : str
        ``"cpu"`` or ``"cuda"``.
    progress : callable, optional
        ``progress(step, fraction)`` over the whole reconstruction.
    collimator : str, optional
        Collimator table code overriding the header (``"G8-MEGP"``, ``"SY-ME"`` …).
    intrinsic_fwhm_mm_140kev : float
        Intrinsic resolution of the camera at 140 keV [mm FWHM].
    nuclide, photopeak_kev : optional
        Used when reading from paths, to pick the photopeak window.
    stitching : ``"midpoint"`` or ``"linear"``
        Overlap handling between beds (:mod:`dosimetry.reconstruction.stitch`).

    Returns
    -------
    ReconResult

    Raises
    ------
    InputError
        Unreadable projections, unknown collimator (with ``psf``), missing CT (with
        ``attenuation``), missing scatter windows (with TEW), missing time per view (with a
        calibration), bad numbers.
    GeometryError
        CT not overlapping the SPECT field or of another frame of reference.
    """
    import warnings

    t0 = time.perf_counter()
    try:
        scatter = ScatterMethod(str(scatter).lower())
    except ValueError:
        raise InputError(f"scatter {scatter!r}: use 'tew' or 'none'") from None
    if not isinstance(projections, ProjectionSet):
        projections = read_projections(projections, nuclide=nuclide, photopeak_kev=photopeak_kev)
    beds = projections.beds
    sel = projections.selection
    notes: list[str] = list(projections.notes)
    n_views = beds[0].n_views
    subsets = default_subsets(n_views) if subsets is None else int(subsets)
    if calibration_cps_per_mbq is not None and not (
            math.isfinite(float(calibration_cps_per_mbq)) and calibration_cps_per_mbq > 0):
        raise InputError(f"calibration_cps_per_mbq must be > 0, got {calibration_cps_per_mbq!r}")
    if calibration_cps_per_mbq is not None:
        for b in beds:
            if b.time_per_view_s is None:
                raise InputError(f"{b.path}: no ActualFrameDuration (0018,1242) in the "
                                 "RotationInformationSequence; the time per view is needed to "
                                 "calibrate to Bq/mL")
    if attenuation and ct is None:
        raise InputError("attenuation correction needs the CT of the SPECT/CT (ct=…, --ct); "
                         "or switch it off (attenuation=False, --no-attenuation)")
    if scatter is ScatterMethod.TEW and sel.lower is None:
        wins = "; ".join(w.describe() for w in sel.windows)
        raise InputError(f"{beds[0].path}: TEW scatter correction needs a scatter window just "
                         f"below the photopeak {sel.photopeak_window.describe()} (windows: "
                         f"{wins}); use scatter='none' (--scatter none)")
    if scatter is ScatterMethod.TEW and sel.upper is None:
        msg = (f"no scatter window just above the photopeak {sel.photopeak_window.describe()}: "
               "TEW with the upper window taken as empty")
        warnings.warn(msg, stacklevel=2)
        notes.append(msg)

    psf_m: PSFModel | None = None
    if psf:
        spec = resolve_collimator(collimator or beds[0].collimator, beds[0].manufacturer,
                                  where=str(beds[0].path) if collimator is None
                                  else "collimator option")
        psf_m = psf_model(spec, sel.photopeak_kev,
                          intrinsic_fwhm_mm_140kev=intrinsic_fwhm_mm_140kev)
    ct_img = None
    ct_name = "CT"
    smoothed = None
    if attenuation:
        from dosimetry.reconstruction.attenuation import smooth_ct_for

        ct_img, ct_name = _check_ct(ct, projections)
        smoothed = smooth_ct_for(ct_img, beds[0].geometry.spacing_mm)

    def bed_progress(i: int) -> ProgressCallback:
        def cb(step: str, frac: float) -> None:
            if progress is not None:
                progress(f"bed {i + 1}/{len(beds)}: {step}", (i + frac) / len(beds))
        return cb

    images: list[sitk.Image] = []
    valid: list[tuple[int, int]] = []
    infos: list[BedInfo] = []
    t_ref = beds[0].time_per_view_s
    for i, bed in enumerate(beds):
        tb = time.perf_counter()
        first, last = axial_field_rows(bed.counts)
        grid = bed.geometry.with_slices(first, last)
        pk = bed.photopeak_counts[:, first:last + 1]
        add = None
        if scatter is ScatterMethod.TEW:
            lw, uw = sel.lower_window, sel.upper_window
            up = bed.upper_scatter_counts
            add = tew_scatter(bed.lower_scatter_counts[:, first:last + 1],  # type: ignore[index]
                              None if up is None else up[:, first:last + 1], lw.width_kev,
                              None if uw is None else uw.width_kev,
                              sel.photopeak_window.width_kev)
        mu = None
        if attenuation:
            from dosimetry.reconstruction.attenuation import mu_map_from_ct

            mm = mu_map_from_ct(ct_img, sel.photopeak_kev, grid, smoothed=smoothed,
                                what=ct_name)
            mu = mm.image
            for n in mm.notes:
                notes.append(f"bed {i + 1}: {n}")
        rec = reconstruct_arrays(pk, bed.detector_angles_deg, bed.radii_mm,
                                 bed.pixel_spacing_mm, origin_mm=grid.origin_mm, mu_map=mu,
                                 additive=add, psf=psf_m, iterations=iterations,
                                 subsets=subsets, device=device, progress=bed_progress(i))
        arr = np.zeros(bed.geometry.shape_zyx, dtype=np.float32)
        arr[first:last + 1] = sitk.GetArrayViewFromImage(rec.image)
        if calibration_cps_per_mbq is not None:
            arr = counts_to_bq_per_ml(arr, calibration_cps_per_mbq, bed.time_per_view_s,
                                      bed.geometry.voxel_volume_ml).astype(np.float32)
        elif bed.time_per_view_s and t_ref and abs(bed.time_per_view_s - t_ref) > 1e-9:
            arr *= np.float32(t_ref / bed.time_per_view_s)
            notes.append(f"bed {i + 1}: {bed.time_per_view_s:g} s per view, scaled to the first "
                         f"bed's {t_ref:g} s")
        images.append(bed.geometry.image(arr))
        valid.append((first, last))
        infos.append(BedInfo(
            file=bed.path.name, series_uid=bed.series_uid,
            bed_centre_z_mm=bed.bed_centre_z_mm,
            rows_used=(first, last),
            slices_z_mm=(bed.geometry.z_of_slice(first), bed.geometry.z_of_slice(last)),
            time_per_view_s=bed.time_per_view_s, seconds=time.perf_counter() - tb,
            photopeak_counts=float(pk.sum(dtype=np.float64)),
            scatter_counts=None if add is None else float(add.sum(dtype=np.float64))))
    st = stitch_beds(images, valid, stitching)
    notes.extend(st.notes)
    decay = _decay_note(projections.nuclide, beds[0].acquisition_span_s)
    if decay:
        notes.append(decay)
    if progress is not None:
        progress("done", 1.0)
    return ReconResult(
        image=st.image,
        units=ReconUnits.BQ_PER_ML if calibration_cps_per_mbq is not None else ReconUnits.COUNTS,
        iterations=int(iterations), subsets=subsets, photopeak_window=sel.photopeak_window,
        lower_window=sel.lower_window if scatter is ScatterMethod.TEW else None,
        upper_window=sel.upper_window if scatter is ScatterMethod.TEW else None,
        photopeak_kev=sel.photopeak_kev, nuclide=projections.nuclide, scatter=scatter,
        attenuation=bool(attenuation), psf=psf_m,
        calibration_cps_per_mbq=None if calibration_cps_per_mbq is None
        else float(calibration_cps_per_mbq),
        time_per_view_s=t_ref, device=str(device), seconds=time.perf_counter() - t0,
        beds=tuple(infos), stitching=st.description,
        frame_of_reference_uid=projections.frame_of_reference_uid,
        acquisition_datetime=projections.acquisition_datetime,
        notes=tuple(dict.fromkeys(notes)))



@dataclass(frozen=True)
class ReconSettings:
    """Reconstruction settings of :func:`reconstruct_to_file` (those of :func:`reconstruct`)."""

    iterations: int = 4
    subsets: int | None = None
    scatter: ScatterMethod = ScatterMethod.TEW
    psf: bool = True
    attenuation: bool = True
    collimator: str | None = None
    intrinsic_fwhm_mm_140kev: float = DEFAULT_INTRINSIC_FWHM_MM_140KEV
    stitching: StitchMethod = StitchMethod.MIDPOINT
    device: str = "cpu"

    def key(self) -> dict[str, Any]:
        """What determines the result (the device does not)."""
        return {"iterations": self.iterations, "subsets": self.subsets,
                "scatter": str(self.scatter), "psf": self.psf, "attenuation": self.attenuation,
                "collimator": self.collimator,
                "intrinsic_fwhm_mm_140kev": self.intrinsic_fwhm_mm_140kev,
                "stitching": str(self.stitching)}


@dataclass(frozen=True)
class FileRecon:
    """Outcome of :func:`reconstruct_to_file`: where the image and its JSON sidecar are, whether
    an existing result was reused, the units, the time per view [s], the sum of the image and
    the sidecar's content."""

    image_path: Path
    metadata_path: Path
    reused: bool
    units: ReconUnits
    time_per_view_s: float | None
    total_counts: float
    metadata: dict[str, Any]


def reconstruct_to_file(projections: Any, ct: Any, output: str | os.PathLike[str],
                        settings: ReconSettings | None = None, *, source_key: Any = None,
                        nuclide: str | None = None,
                        progress: ProgressCallback | None = None) -> FileRecon:
    """Reconstruct projections (counts per view) and write the image and a ``.json`` sidecar
    beside it, both atomically; when the sidecar shows the same ``source_key`` and settings,
    the existing image is reused instead.

    Parameters
    ----------
    projections, ct :
        As :func:`reconstruct` takes them (paths, series, images).
    output : path
        Image file (``.nii.gz`` …).
    settings : ReconSettings, optional
    source_key : JSON-serialisable, optional
        Identifies the inputs (e.g. the series UIDs); needed for reuse.
    nuclide : str, optional
    progress : callable, optional

    Returns
    -------
    FileRecon
    """
    import json

    from dosimetry.io.atomic import atomic_write_text
    from dosimetry.io.images import write_image

    st = settings or ReconSettings()
    out = Path(output)
    name = out.name
    stem = name[:-7] if name.endswith(".nii.gz") else out.stem
    meta_path = out.with_name(stem + ".json")
    key = {"source": source_key, "settings": st.key()}
    if source_key is not None and out.is_file() and meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict) and old.get("ingest_key") == json.loads(json.dumps(key)):
            return FileRecon(out, meta_path, True, ReconUnits(old.get("units", "counts")),
                             old.get("time_per_view_s"), float(old.get("total_counts", 0.0)),
                             old)
    res = reconstruct(projections, ct if st.attenuation else None, iterations=st.iterations,
                      subsets=st.subsets, scatter=st.scatter, psf=st.psf,
                      attenuation=st.attenuation, device=st.device, progress=progress,
                      collimator=st.collimator,
                      intrinsic_fwhm_mm_140kev=st.intrinsic_fwhm_mm_140kev, nuclide=nuclide,
                      stitching=st.stitching)
    write_image(res.image, out)
    meta = res.to_dict()
    total = float(sitk.GetArrayViewFromImage(res.image).sum(dtype=np.float64))
    meta.update({"ingest_key": key, "total_counts": total})
    atomic_write_text(meta_path, json.dumps(meta, indent=2, default=str) + "\n")
    return FileRecon(out, meta_path, False, res.units, res.time_per_view_s, total, meta)
