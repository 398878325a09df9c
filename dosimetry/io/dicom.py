"""Reading DICOM as it leaves the scanner: folder scans, CT series and NM/PET SPECT volumes.

:func:`scan_dicom_folder` reads headers only (no pixel data) and groups every file under a folder
by patient, study and series into :class:`SeriesInfo` records; files that are not readable DICOM
are listed in :attr:`DicomScan.skipped` and announced with a :class:`DicomSkipWarning`, never as a
pydicom traceback. :func:`read_ct_series` and :func:`read_nm_image` build ``SimpleITK.Image``
volumes (float32, geometry in mm in the DICOM patient coordinate system, LPS) after checking the
geometry from the headers and the memory the volume needs (:func:`~dosimetry.io.images.
check_allocation`) before any pixel data is read.

Conventions (PS3.3 C.7.6.2, Image Plane module): ``ImageOrientationPatient`` holds the row
direction (the direction of increasing column index, our x axis) then the column direction (our
y axis); the slice axis is their cross product, the normal. Slices are ordered by their
``ImagePositionPatient`` projected on the normal (never by InstanceNumber) and the returned image
has the normal as its third direction column with a positive spacing. ``PixelSpacing`` is
(spacing between rows, spacing between columns) = (y, x). numpy arrays taken from the returned
images are indexed (z, y, x).

Reconstructed NM (NM Image Storage, one multi-frame file) keeps its geometry in the first
``DetectorInformationSequence`` item; frame *k* (the slice ``SliceVector[k]``) lies at
``ImagePositionPatient + (SliceVector[k] − 1) · SpacingBetweenSlices · normal``. The sign of
``SpacingBetweenSlices`` gives the stacking direction (NM Reconstruction module, PS3.3:
positive stacks the slices along the normal); Siemens Symbia files use a positive value, which the
real-data tests confirm by the SPECT overlapping its CT in patient space.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, time
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dosimetry import units
from dosimetry.errors import InputError
from dosimetry.io.images import check_allocation

__all__ = [
    "CT_IMAGE_STORAGE",
    "CT_PADDING_HU",
    "NM_IMAGE_STORAGE",
    "DicomFallbackWarning",
    "DicomScan",
    "DicomSkipWarning",
    "NMImage",
    "NMUnits",
    "SeriesInfo",
    "read_ct_series",
    "read_nm_image",
    "scan_dicom_folder",
    "series_geometry",
]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

#: HU given to CT voxels that the file marks as padding (``PixelPaddingValue``, PS3.3
#: C.7.5.1.1.2: outside the reconstructed field of view). Around a patient on a SPECT/CT couch
#: that is air, -1000 HU by the definition of the Hounsfield scale; the GE files we meet write
#: -2000 raw (-3024 HU), which would otherwise reach the CT-to-density conversion.
CT_PADDING_HU = -1000.0

#: More skipped files than this are summarised in one warning instead of one warning each.
MAX_SKIP_WARNINGS = 10

# Suffixes of files met in scanner exports that are never DICOM (reports, viewers, indexes).
# Such a file without the DICM marker is listed in DicomScan.skipped without a warning.
_NON_DICOM_SUFFIXES = frozenset({
    ".txt", ".md", ".rst", ".pdf", ".xml", ".json", ".html", ".htm", ".csv", ".tsv", ".ini",
    ".log", ".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".nii", ".gz", ".zip",
    ".tar", ".xz", ".mhd", ".mha", ".raw", ".zraw", ".nrrd", ".yaml", ".yml", ".py", ".exe",
    ".dll", ".db", ".inf", ".cfg", ".js", ".css", ".sh", ".bat",
})

# NM image type value 3 (PS3.3 NM Image module): reconstructed slices vs raw acquisitions.
_NM_RECONSTRUCTED = frozenset({"RECON TOMO", "RECON GATED TOMO"})
_NM_RAW = frozenset({"STATIC", "DYNAMIC", "GATED", "WHOLE BODY", "TOMO", "GATED TOMO"})

# NM multi-frame index vectors (PS3.3 C.8.4.9), keyword by tag.
_NM_VECTORS = {
    0x00540010: "EnergyWindowVector", 0x00540020: "DetectorVector", 0x00540030: "PhaseVector",
    0x00540050: "RotationVector", 0x00540060: "RRIntervalVector", 0x00540070: "TimeSlotVector",
    0x00540080: "SliceVector", 0x00540090: "AngularViewVector", 0x00540100: "TimeSliceVector",
}

# PET/NM Units (0054,1001) values that mean counts (as opposed to activity or SUV).
_COUNT_UNITS = frozenset({"CNTS", "PROPCNTS", "NONE"})

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class NMUnits(StrEnum):
    """What the voxels of an NM/PET image hold after reading."""

    BQ_PER_ML = "Bq/mL"
    COUNTS = "counts"


class DicomSkipWarning(UserWarning):
    """A file under a scanned folder is not readable DICOM and was left out (path in message)."""


class DicomFallbackWarning(UserWarning):
    """A reader had to fall back on a less reliable header field (said in the message)."""


# ------------------------------------------------------------------------------------------------
# records
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SeriesInfo:
    """One DICOM series as found by :func:`scan_dicom_folder` (headers only).

    Values are as the files give them, converted to internal units where a unit is named
    (``injected_activity_bq`` in Bq, ``frame_duration_s`` in s, energies in keV as DICOM writes
    them). Date-times are naive local times as DICOM records them. Fields that only NM/PET
    series carry are None (or empty) for other modalities.
    """

    patient_id: str
    patient_name: str | None
    study_uid: str
    series_uid: str
    modality: str
    series_description: str
    sop_class_uid: str
    frame_of_reference_uid: str | None
    #: From AcquisitionDate/Time, else SeriesDate/Time, else ContentDate/Time (else, for
    #: RTSTRUCT, StructureSetDate/Time); the earliest over the series' files.
    acquisition_datetime: datetime | None
    #: The tags ``acquisition_datetime`` came from, e.g. ``"AcquisitionDate/Time"``.
    acquisition_datetime_source: str | None
    files: tuple[Path, ...]
    #: Slices (one file each) or frames (multi-frame files), summed over files.
    n_images: int
    image_type: tuple[str, ...] = ()
    manufacturer: str | None = None
    series_number: int | None = None
    # --- NM / PT ---------------------------------------------------------------------------
    #: True for reconstructed slices (NM RECON TOMO, PET), False for raw acquisitions (NM
    #: TOMO projections, STATIC, WHOLE BODY, DYNAMIC, GATED), None when not NM/PT or unknown.
    is_reconstructed: bool | None = None
    #: Raw (0054,1001) Units, e.g. ``"BQML"``, ``"CNTS"``; None when absent.
    units: str | None = None
    radiopharmaceutical: str | None = None
    #: As found: RadionuclideCodeSequence CodeMeaning (``"^177^Lutetium"``) or the text of
    #: (0018,0030) Radionuclide.
    nuclide: str | None = None
    radionuclide_half_life_s: float | None = None
    injection_datetime: datetime | None = None
    #: Where ``injection_datetime`` came from; says when the date was assumed.
    injection_datetime_source: str | None = None
    injected_activity_bq: float | None = None
    #: Set when the unit of RadionuclideTotalDose had to be inferred against the standard,
    #: or the value was unusable (e.g. 0).
    injected_activity_note: str | None = None
    #: Acquisition duration [s]: for tomography the time per view × views per rotation
    #: (summed over rotations), i.e. the time each detector head acquired; else the
    #: ActualFrameDuration of the frame.
    frame_duration_s: float | None = None
    rescale_slope: float | None = None
    rescale_intercept: float | None = None
    #: (units code value or meaning, slope, intercept) per RealWorldValueMappingSequence item.
    real_world_value_mapping: tuple[tuple[str, float, float], ...] = ()
    patient_weight_kg: float | None = None
    #: (lower, upper) [keV] of each energy window range, in file order.
    energy_windows: tuple[tuple[float, float], ...] = ()

    def describe(self) -> str:
        """One line for a table (no patient identifiers)."""
        when = self.acquisition_datetime.strftime("%Y-%m-%d %H:%M") if self.acquisition_datetime \
            else "date ?"
        what = "frames" if self.modality in ("NM", "PT") and len(self.files) == 1 else "images"
        parts = [f"{self.modality:<8}", when, repr(self.series_description or "-"),
                 f"{self.n_images} {what}"]
        if self.modality in ("NM", "PT"):
            if self.is_reconstructed is not None:
                parts.append("reconstructed" if self.is_reconstructed else "raw projections")
            parts.append(f"units {self.units or '-'}")
            if self.nuclide:
                parts.append(self.nuclide)
            if self.injected_activity_bq is not None:
                parts.append(f"{units.bq_to_mbq(self.injected_activity_bq):.1f} MBq")
            if self.frame_duration_s is not None:
                parts.append(f"{self.frame_duration_s:.0f} s")
            if self.energy_windows:
                parts.append(", ".join(f"{lo:g}-{hi:g} keV" for lo, hi in self.energy_windows))
        if self.manufacturer:
            parts.append(self.manufacturer)
        return "  ".join(parts)


@dataclass(frozen=True)
class DicomScan:
    """What :func:`scan_dicom_folder` found under ``root``."""

    root: Path
    series: tuple[SeriesInfo, ...]
    #: (path, reason) of every file that was left out.
    skipped: tuple[tuple[Path, str], ...]

    def patients(self) -> tuple[str, ...]:
        """Distinct PatientIDs, sorted (an absent PatientID counts as ``""``)."""
        return tuple(sorted({s.patient_id for s in self.series}))

    def by_modality(self, modality: str) -> tuple[SeriesInfo, ...]:
        """The series of one modality (``"CT"``, ``"NM"``, …; case-insensitive)."""
        m = modality.upper()
        return tuple(s for s in self.series if s.modality.upper() == m)

    def find(self, series_uid: str) -> SeriesInfo:
        """The series with this SeriesInstanceUID; :class:`InputError` when absent."""
        for s in self.series:
            if s.series_uid == series_uid:
                return s
        raise InputError(f"{self.root}: no series with SeriesInstanceUID {series_uid}")


@dataclass(frozen=True)
class NMImage:
    """A reconstructed NM/PET volume in the unit ``units``.

    ``image`` is float32 with geometry in mm; ``units`` is ``"Bq/mL"`` (activity
    concentration) or ``"counts"`` (after RescaleSlope/Intercept); ``warnings`` lists what the
    reader did beyond the plain reading (a unit mapping applied, a fallback taken).
    """

    image: sitk.Image
    units: NMUnits
    info: SeriesInfo
    warnings: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------------------
# small value helpers (never raise on odd values: a header field that cannot be read is absent)
# ------------------------------------------------------------------------------------------------


def _first(v: Any) -> Any:
    if isinstance(v, (MultiValue, list, tuple)):
        return v[0] if len(v) else None
    return v


def _str(ds: Dataset | None, keyword: str) -> str | None:
    if ds is None:
        return None
    v = ds.get(keyword)
    if v is None:
        return None
    if isinstance(v, (MultiValue, list, tuple)):
        v = "\\".join(str(x) for x in v)
    s = str(v).strip()
    return s or None


def _num(ds: Dataset | None, keyword: str) -> float | None:
    if ds is None:
        return None
    v = _first(ds.get(keyword))
    if v is None or v == "":
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _nums(ds: Dataset | None, keyword: str, n: int) -> tuple[float, ...] | None:
    if ds is None:
        return None
    v = ds.get(keyword)
    if v is None or isinstance(v, (str, bytes)):
        return None
    try:
        vals = tuple(float(x) for x in (v if isinstance(v, (MultiValue, list, tuple)) else [v]))
    except (TypeError, ValueError):
        return None
    if len(vals) != n or not all(math.isfinite(x) for x in vals):
        return None
    return vals


def _item(ds: Dataset | None, keyword: str, index: int = 0) -> Dataset | None:
    if ds is None:
        return None
    seq = ds.get(keyword)
    if not seq or isinstance(seq, (str, bytes)):
        return None
    try:
        return seq[index] if len(seq) > index else None
    except TypeError:
        return None


def _int(ds: Dataset | None, keyword: str) -> int | None:
    x = _num(ds, keyword)
    return int(x) if x is not None else None


def _parse_date(v: Any) -> date | None:
    s = str(v or "").strip().replace(".", "").replace("-", "")
    if len(s) < 8 or not s[:8].isdigit():
        return None
    try:
        return date(int(s[:4]), int(s[4:6]), int(s[6:8]))
    except ValueError:
        return None


def _parse_time(v: Any) -> time | None:
    s = str(v or "").strip().replace(":", "")
    if not s:
        return None
    main, _, frac = s.partition(".")
    if not main.isdigit() or len(main) < 2 or len(main) % 2:
        return None
    hh = int(main[0:2])
    mm = int(main[2:4]) if len(main) >= 4 else 0
    ss = int(main[4:6]) if len(main) >= 6 else 0
    us = int((frac + "000000")[:6]) if frac.isdigit() else 0
    try:
        return time(hh, mm, min(ss, 59), us)  # a leap second (60) is read as 59
    except ValueError:
        return None


def _parse_datetime(v: Any) -> datetime | None:
    """DICOM DT (``YYYYMMDDHHMMSS.FFFFFF&ZZXX``) as a naive local time; the offset is dropped."""
    s = str(v or "").strip()
    if not s:
        return None
    m = re.search(r"[+-]\d{4}$", s)
    if m is not None and m.start() >= 8:
        s = s[: m.start()]
    d = _parse_date(s[:8])
    if d is None:
        return None
    t = _parse_time(s[8:]) if len(s) > 8 else time(0, 0)
    if t is None:
        return None
    return datetime.combine(d, t)


def _date_time(ds: Dataset, date_kw: str, time_kw: str) -> datetime | None:
    d = _parse_date(ds.get(date_kw))
    t = _parse_time(ds.get(time_kw))
    if d is None or t is None:
        return None
    return datetime.combine(d, t)


# ------------------------------------------------------------------------------------------------
# scanning
# ------------------------------------------------------------------------------------------------


_ACQ_SOURCES = (
    ("AcquisitionDate", "AcquisitionTime", "AcquisitionDate/Time"),
    ("SeriesDate", "SeriesTime", "SeriesDate/Time"),
    ("ContentDate", "ContentTime", "ContentDate/Time"),
    ("StructureSetDate", "StructureSetTime", "StructureSetDate/Time"),
)


def _acquisition(ds: Dataset) -> tuple[int, datetime | None, str | None]:
    """(rank of the source, date-time, source) – lower rank is the preferred source."""
    dt = _parse_datetime(ds.get("AcquisitionDateTime"))
    if dt is not None:
        return 0, dt, "AcquisitionDateTime"
    for rank, (dkw, tkw, name) in enumerate(_ACQ_SOURCES):
        dt = _date_time(ds, dkw, tkw)
        if dt is not None:
            return rank, dt, name
    return len(_ACQ_SOURCES), None, None


def _n_frames(ds: Dataset) -> int:
    n = _int(ds, "NumberOfFrames")
    return n if n is not None and n > 0 else 1


def _injected_activity(value: float | None, modality: str) -> tuple[float | None, str | None]:
    """RadionuclideTotalDose → Bq and a note when the unit had to be inferred.

    PS3.3 defines the unit per module: MBq in the NM Isotope module (C.8.4.10.1.7), Bq in the
    PET Isotope module (C.8.9.2). Vendors do not always follow it, so the magnitude decides:
    1e5 separates them in both directions, since no administered activity is below 0.1 MBq
    (1e5 Bq) or above 100 GBq (1e5 MBq).
    """
    if value is None:
        return None, None
    if value <= 0:
        return None, f"RadionuclideTotalDose is {value:g}: no administered activity recorded"
    threshold = 1e5
    if modality == "PT":
        if value < threshold:
            return units.mbq_to_bq(value), (
                f"RadionuclideTotalDose {value:g} read as MBq: the PET Isotope module defines Bq, "
                f"but {value:g} Bq is below any administered activity")
        return value, None
    if value >= threshold:
        return value, (
            f"RadionuclideTotalDose {value:g} read as Bq: the NM Isotope module defines MBq, "
            f"but {value:g} MBq is above any administered activity")
    return units.mbq_to_bq(value), None


def _frame_duration_s(ds: Dataset) -> float | None:
    rotations = ds.get("RotationInformationSequence")
    total_ms = 0.0
    found = False
    if rotations and not isinstance(rotations, (str, bytes)):
        for rot in rotations:
            per_view = _num(rot, "ActualFrameDuration")
            views = _num(rot, "NumberOfFramesInRotation")
            if per_view is not None and views is not None and per_view > 0 and views > 0:
                total_ms += per_view * views
                found = True
    if found:
        return total_ms / 1000.0
    ms = _num(ds, "ActualFrameDuration")
    if ms is None or ms <= 0:
        phase = _item(ds, "PhaseInformationSequence")
        ms = _num(phase, "ActualFrameDuration")
    return ms / 1000.0 if ms is not None and ms > 0 else None


def _rescale(ds: Dataset) -> tuple[float | None, float | None]:
    slope, intercept = _num(ds, "RescaleSlope"), _num(ds, "RescaleIntercept")
    if slope is None:
        shared = _item(ds, "SharedFunctionalGroupsSequence")
        pvt = _item(shared, "PixelValueTransformationSequence")
        slope, intercept = _num(pvt, "RescaleSlope"), _num(pvt, "RescaleIntercept")
    return slope, intercept


def _rwvm_items(ds: Dataset) -> list[Dataset]:
    seq = ds.get("RealWorldValueMappingSequence")
    if not seq:
        shared = _item(ds, "SharedFunctionalGroupsSequence")
        seq = shared.get("RealWorldValueMappingSequence") if shared is not None else None
    if not seq or isinstance(seq, (str, bytes)):
        return []
    return list(seq)


def _rwvm(ds: Dataset) -> tuple[tuple[str, float, float], ...]:
    out = []
    for item in _rwvm_items(ds):
        slope = _num(item, "RealWorldValueSlope")
        if slope is None:
            continue  # a LUT-data mapping; not used here
        intercept = _num(item, "RealWorldValueIntercept") or 0.0
        code = _item(item, "MeasurementUnitsCodeSequence")
        name = _str(code, "CodeValue") or _str(code, "CodeMeaning") or \
            _str(item, "LUTLabel") or "?"
        out.append((name, slope, intercept))
    return tuple(out)


def _energy_windows(ds: Dataset) -> tuple[tuple[float, float], ...]:
    out = []
    seq = ds.get("EnergyWindowInformationSequence")
    if not seq or isinstance(seq, (str, bytes)):
        return ()
    for win in seq:
        ranges = win.get("EnergyWindowRangeSequence")
        if not ranges or isinstance(ranges, (str, bytes)):
            continue
        for r in ranges:
            lo, hi = _num(r, "EnergyWindowLowerLimit"), _num(r, "EnergyWindowUpperLimit")
            if lo is not None and hi is not None:
                out.append((lo, hi))
    return tuple(out)


def _is_reconstructed(ds: Dataset, modality: str) -> bool | None:
    if modality == "PT":
        return True
    if modality != "NM":
        return None
    raw = ds.get("ImageType")
    itype = [str(x).strip().upper() for x in _as_list(raw)] if raw else []
    if len(itype) >= 3:
        if itype[2] in _NM_RECONSTRUCTED:
            return True
        if itype[2] in _NM_RAW:
            return False
    pointers = _frame_pointers(ds)
    if 0x00540080 in pointers and 0x00540090 not in pointers:
        return True
    if 0x00540090 in pointers:
        return False
    return None


def _frame_pointers(ds: Dataset) -> list[int]:
    v = ds.get("FrameIncrementPointer")
    if v is None:
        return []
    if isinstance(v, (MultiValue, list, tuple)):
        return [int(x) for x in v]
    return [int(v)]


@dataclass
class _SeriesAccumulator:
    header: Dataset
    files: list[tuple[int, Path]]
    n_images: int
    acq: tuple[int, datetime | None, str | None]


def _looks_like_raw_dataset(head: bytes) -> bool:
    """A DICOM dataset written without preamble starts with a group 0002 or 0008 element tag."""
    return len(head) >= 8 and head[1] == 0 and head[0] in (0x02, 0x08) and head[3] == 0


def _read_header(path: Path) -> tuple[Dataset | None, str | None, bool]:
    """(header, reason, quiet): the header without pixel data, or why the file was left out.

    ``quiet`` marks files that are plainly not DICOM (a README, a dot-file) and need no warning;
    ``(None, None, True)`` is a file to ignore altogether (DICOMDIR).
    """
    if path.name.upper() == "DICOMDIR":
        return None, None, True
    try:
        size = path.stat().st_size
        with path.open("rb") as fp:
            head = fp.read(132)
            has_magic = head[128:132] == b"DICM"
            if not has_magic:
                if path.name.startswith(".") or path.suffix.lower() in _NON_DICOM_SUFFIXES:
                    return None, "not a DICOM file", True
                if not _looks_like_raw_dataset(head):
                    return None, "not a DICOM file (no DICM marker, no DICOM data element)", False
            fp.seek(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=not has_magic)
                end_of_header = fp.tell()
                reason = _header_problem(ds, size, end_of_header)
    except OSError as exc:
        return None, f"cannot read the file ({exc.strerror or type(exc).__name__})", False
    except Exception as exc:  # pydicom raises many kinds on damaged files; report, never crash
        msg = str(exc).strip().splitlines()
        return None, f"unreadable DICOM ({type(exc).__name__}: {msg[0] if msg else ''})", False
    if reason is not None:
        quiet = reason.startswith("DICOM media directory")
        return None, reason, quiet
    return ds, None, False


def _header_problem(ds: Dataset, size: int, end_of_header: int) -> str | None:
    """Why a parsed header cannot be used (None when it can); accesses values, so may warn."""
    sop_class = _str(ds, "SOPClassUID") or _str(getattr(ds, "file_meta", None),
                                                 "MediaStorageSOPClassUID")
    if sop_class == _MEDIA_STORAGE_DIRECTORY:
        return "DICOM media directory (DICOMDIR), not a series"
    series_uid, study_uid = _str(ds, "SeriesInstanceUID"), _str(ds, "StudyInstanceUID")
    if not series_uid or not study_uid or not _UID_RE.match(series_uid):
        return "not a usable DICOM object (no valid Study/SeriesInstanceUID)"
    if not _str(ds, "Modality"):
        return "DICOM object without Modality"
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    if rows is None or cols is None:
        return None  # no image (RTSTRUCT, SR, …)
    ts = _str(getattr(ds, "file_meta", None), "TransferSyntaxUID")
    if ts is not None and (UID(ts).is_compressed or ts == DeflatedExplicitVRLittleEndian):
        return None  # the length of compressed pixel data says nothing about truncation
    if end_of_header >= size:
        return "image header without pixel data (file ends before PixelData)"
    bits = _int(ds, "BitsAllocated") or 16
    spp = _int(ds, "SamplesPerPixel") or 1
    need = math.ceil(rows * cols * _n_frames(ds) * spp * bits / 8)
    have = size - end_of_header - 8  # at least an 8-byte element header precedes the value
    if have < need:
        return (f"truncated: pixel data needs {need} bytes, the file holds at most "
                f"{max(have, 0)}")
    return None


def _walk(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames))
    return out


def scan_dicom_folder(root: str | os.PathLike[str]) -> DicomScan:
    """Scan a folder tree (or one file) and group its DICOM files into series, headers only.

    Parameters
    ----------
    root : path
        Folder exported from a scanner (any nesting) or a single DICOM file. Hidden folders and
        DICOMDIR indexes are ignored.

    Returns
    -------
    DicomScan
        Series sorted by patient, study, acquisition time and modality. Files that are not
        readable DICOM (random bytes, truncated pixel data, damaged headers) are listed in
        ``skipped`` with the reason; each is announced with a :class:`DicomSkipWarning` naming
        its path (one summary warning when there are more than :data:`MAX_SKIP_WARNINGS`),
        except plainly non-DICOM files such as ``README.txt``, which are only listed.

    Raises
    ------
    InputError
        ``root`` does not exist.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: folder or file not found")
    return _scan_paths(root, _walk(root))


def _scan_paths(root: Path, paths: Iterable[Path], *, warn: bool = True,
                keep: dict[Path, Dataset] | None = None) -> DicomScan:
    groups: dict[tuple[str, str, str], _SeriesAccumulator] = {}
    skipped: list[tuple[Path, str]] = []
    loud: list[tuple[Path, str]] = []
    for path in paths:
        ds, reason, quiet = _read_header(path)
        if ds is not None and keep is not None:
            keep[path] = ds
        if ds is None:
            if reason is not None:
                skipped.append((path, reason))
                if not quiet:
                    loud.append((path, reason))
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                key = (_str(ds, "PatientID") or "", _str(ds, "StudyInstanceUID") or "",
                       _str(ds, "SeriesInstanceUID") or "")
                inst = _int(ds, "InstanceNumber")
                acq = _acquisition(ds)
                frames = _n_frames(ds) if _int(ds, "Rows") is not None else 1
        except Exception as exc:  # a value pydicom cannot convert
            reason = f"unreadable DICOM header value ({type(exc).__name__}: {exc})"
            skipped.append((path, reason))
            loud.append((path, reason))
            continue
        acc = groups.get(key)
        entry = (inst if inst is not None else 0, path)
        if acc is None:
            groups[key] = _SeriesAccumulator(ds, [entry], frames, acq)
        else:
            acc.files.append(entry)
            acc.n_images += frames
            if (acq[0], acq[1] or datetime.max) < (acc.acq[0], acc.acq[1] or datetime.max):
                acc.acq = acq

    series = []
    for (patient_id, study_uid, series_uid), acc in groups.items():
        files = tuple(p for _, p in sorted(acc.files, key=lambda e: (e[0], str(e[1]))))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                info = _series_info(acc.header, patient_id, study_uid, series_uid, files,
                                    acc.n_images, acc.acq)
        except Exception as exc:
            for p in files:
                reason = f"unreadable DICOM header value ({type(exc).__name__}: {exc})"
                skipped.append((p, reason))
                loud.append((p, reason))
            continue
        series.append(info)
    series.sort(key=lambda s: (s.patient_id, s.study_uid, s.acquisition_datetime or datetime.min,
                               s.modality, s.series_uid))
    if warn:
        _warn_skipped(loud)
    return DicomScan(root=root, series=tuple(series), skipped=tuple(skipped))


def _warn_skipped(loud: Sequence[tuple[Path, str]]) -> None:
    if len(loud) > MAX_SKIP_WARNINGS:
        first = "; ".join(f"{p}: {why}" for p, why in loud[:3])
        warnings.warn(f"skipped {len(loud)} files that are not readable DICOM (first: {first}; "
                      "all are listed in DicomScan.skipped)", DicomSkipWarning, stacklevel=4)
        return
    for p, why in loud:
        warnings.warn(f"skipped {p}: {why}", DicomSkipWarning, stacklevel=4)


def _series_info(ds: Dataset, patient_id: str, study_uid: str, series_uid: str,
                 files: tuple[Path, ...], n_images: int,
                 acq: tuple[int, datetime | None, str | None]) -> SeriesInfo:
    modality = (_str(ds, "Modality") or "OT").upper()
    sop_class = _str(ds, "SOPClassUID") or _str(getattr(ds, "file_meta", None),
                                                "MediaStorageSOPClassUID") or ""
    for_uid = _str(ds, "FrameOfReferenceUID")
    if for_uid is None:  # RTSTRUCT keeps it in the referenced frame of reference
        ref = _item(ds, "ReferencedFrameOfReferenceSequence")
        for_uid = _str(ref, "FrameOfReferenceUID")
    raw_type = ds.get("ImageType")
    image_type = tuple(str(x).strip() for x in raw_type) if isinstance(
        raw_type, (MultiValue, list, tuple)) else ((str(raw_type).strip(),) if raw_type else ())
    slope, intercept = _rescale(ds)
    nm = modality in ("NM", "PT")
    fields: dict[str, Any] = {}
    if nm:
        rp = _item(ds, "RadiopharmaceuticalInformationSequence")
        code = _item(rp, "RadionuclideCodeSequence")
        nuclide = _str(code, "CodeMeaning") or _str(rp, "Radionuclide") or \
            _str(ds, "Radionuclide")
        pharm = _str(rp, "Radiopharmaceutical") or \
            _str(_item(rp, "RadiopharmaceuticalCodeSequence"), "CodeMeaning") or \
            _str(ds, "Radiopharmaceutical")
        inj = _parse_datetime(rp.get("RadiopharmaceuticalStartDateTime")) \
            if rp is not None else None
        inj_source = "RadiopharmaceuticalStartDateTime" if inj is not None else None
        if inj is None and rp is not None:
            t = _parse_time(rp.get("RadiopharmaceuticalStartTime"))
            for dkw in ("StudyDate", "SeriesDate", "AcquisitionDate"):
                d = _parse_date(ds.get(dkw))
                if t is not None and d is not None:
                    inj = datetime.combine(d, t)
                    inj_source = (f"{dkw} + RadiopharmaceuticalStartTime (the date is assumed: "
                                  "the time-only tag does not say on which day)")
                    break
        activity, note = _injected_activity(_num(rp, "RadionuclideTotalDose"), modality)
        half_life = _num(rp, "RadionuclideHalfLife")
        fields = dict(
            is_reconstructed=_is_reconstructed(ds, modality),
            units=_str(ds, "Units"),
            radiopharmaceutical=pharm,
            nuclide=nuclide,
            radionuclide_half_life_s=half_life if half_life and half_life > 0 else None,
            injection_datetime=inj,
            injection_datetime_source=inj_source,
            injected_activity_bq=activity,
            injected_activity_note=note,
            frame_duration_s=_frame_duration_s(ds),
            real_world_value_mapping=_rwvm(ds),
            energy_windows=_energy_windows(ds),
        )
    weight = _num(ds, "PatientWeight")
    return SeriesInfo(
        patient_id=patient_id,
        patient_name=_str(ds, "PatientName"),
        study_uid=study_uid,
        series_uid=series_uid,
        modality=modality,
        series_description=_str(ds, "SeriesDescription") or "",
        sop_class_uid=sop_class,
        frame_of_reference_uid=for_uid,
        acquisition_datetime=acq[1],
        acquisition_datetime_source=acq[2],
        files=files,
        n_images=n_images,
        image_type=image_type,
        manufacturer=_str(ds, "Manufacturer"),
        series_number=_int(ds, "SeriesNumber"),
        rescale_slope=slope,
        rescale_intercept=intercept,
        patient_weight_kg=weight if weight and weight > 0 else None,
        **fields,
    )


# ------------------------------------------------------------------------------------------------
# slice geometry
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plane:
    """One 2D image of a volume: where it lies and how to turn its stored values into numbers."""

    path: Path
    frame: int | None  # index in a multi-frame file; None for a single-frame file
    position: np.ndarray  # (3,) mm, centre of the first transmitted pixel
    orientation: np.ndarray  # (6,) row then column direction cosines
    pixel_spacing: tuple[float, float]  # (between rows, between columns) = (y, x) mm
    rows: int
    columns: int
    slope: float = 1.0
    intercept: float = 0.0
    padding: tuple[float, float] | None = None  # stored-value range marked as padding


@dataclass(frozen=True)
class _Stack:
    planes: tuple[_Plane, ...]  # ordered along the normal
    size: tuple[int, int, int]  # (x, y, z)
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # row-major 3×3, columns = row dir, column dir, normal


#: Spacing tolerance between consecutive slices: 1 % of the median step (over 100 slices a 1 %
#: error would displace the last slice by a whole voxel), but never less than 0.011 mm, the
#: largest difference two positions written with two decimals (a common scanner rounding) can
#: show on a perfectly regular grid.
SPACING_REL_TOL = 0.01
SPACING_ABS_TOL_MM = 0.011
#: A step above this multiple of the median step is a gap: slices are missing.
GAP_FACTOR = 1.5
#: In-plane offset allowed between slice positions (gantry tilt or shifted slices beyond it are
#: refused): small against any voxel, larger than position rounding.
LATERAL_TOL_MM = 0.05


def _orthonormal(orientation: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row, col = orientation[:3].astype(float), orientation[3:].astype(float)
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    if abs(nr - 1) > 1e-3 or abs(nc - 1) > 1e-3 or abs(float(row @ col)) > 1e-3:
        raise InputError(f"{what}: ImageOrientationPatient {tuple(orientation.round(6))} is not "
                         "two orthogonal unit vectors")
    row = row / nr
    col = col - (col @ row) * row
    col = col / np.linalg.norm(col)
    return row, col, np.cross(row, col)


def _plane_name(p: _Plane) -> str:
    return p.path.name + (f" frame {p.frame + 1}" if p.frame is not None else "")


def _stack(planes: Sequence[_Plane], what: str) -> _Stack:
    """Order planes along their normal and check they form one regular grid."""
    if len(planes) < 2:
        raise InputError(f"{what}: holds a single slice; a 3D volume needs at least two")
    p0 = planes[0]
    for p in planes[1:]:
        if (p.rows, p.columns) != (p0.rows, p0.columns):
            raise InputError(f"{what}: slices differ in size ({p0.rows}×{p0.columns} in "
                             f"{p0.path.name}, {p.rows}×{p.columns} in {p.path.name})")
        if np.max(np.abs(p.orientation - p0.orientation)) > 1e-4:
            raise InputError(f"{what}: slices differ in ImageOrientationPatient "
                             f"({p0.path.name} vs {p.path.name}); a mixed or reformatted series")
        if not np.allclose(p.pixel_spacing, p0.pixel_spacing, rtol=1e-4, atol=1e-6):
            raise InputError(f"{what}: slices differ in PixelSpacing ({p0.pixel_spacing} in "
                             f"{p0.path.name}, {p.pixel_spacing} in {p.path.name})")
    row, col, normal = _orthonormal(p0.orientation, what)
    pos = np.array([p.position for p in planes], dtype=float)
    d = pos @ normal
    order = np.argsort(d, kind="stable")
    d, pos = d[order], pos[order]
    ordered = tuple(planes[i] for i in order)
    lateral = (pos - pos[0]) - np.outer(d - d[0], normal)
    worst = float(np.max(np.linalg.norm(lateral, axis=1)))
    if worst > LATERAL_TOL_MM:
        raise InputError(
            f"{what}: slice positions do not lie along the slice normal (offset up to "
            f"{worst:.3f} mm; gantry tilt or shifted slices); resample it to an orthogonal grid")
    steps = np.diff(d)
    positive = steps[steps > 1e-3]
    median = float(np.median(positive)) if positive.size else 0.0
    dup_tol = max(1e-3, 0.01 * median)
    for i in np.flatnonzero(steps < dup_tol):
        a, b = _plane_name(ordered[i]), _plane_name(ordered[i + 1])
        raise InputError(
            f"{what}: duplicate slice position {d[i]:.3f} mm along the normal ({a} and {b}); "
            "the series mixes two acquisitions or holds a copy")
    gaps = np.flatnonzero(steps > GAP_FACTOR * median)
    if gaps.size:
        i = int(gaps[0])
        n_missing = max(1, round(steps[i] / median) - 1)
        raise InputError(
            f"{what}: missing slice(s): gap of {steps[i]:.3f} mm between positions {d[i]:.3f} and "
            f"{d[i + 1]:.3f} mm along the normal where the usual step is {median:.3f} mm "
            f"(about {n_missing} slice(s) missing{'' if gaps.size == 1 else ', and more gaps'})")
    tol = max(SPACING_REL_TOL * median, SPACING_ABS_TOL_MM)
    if float(np.max(np.abs(steps - median))) > tol:
        raise InputError(
            f"{what}: inconsistent slice spacing: steps from {steps.min():.4f} to "
            f"{steps.max():.4f} mm (median {median:.4f} mm), more than the {tol:.3f} mm "
            "tolerance (1 % of the step); one regular grid cannot represent it")
    dz = float((d[-1] - d[0]) / (len(d) - 1))
    direction = np.column_stack([row, col, normal])
    return _Stack(
        planes=ordered,
        size=(p0.columns, p0.rows, len(ordered)),
        spacing=(float(p0.pixel_spacing[1]), float(p0.pixel_spacing[0]), dz),
        origin=tuple(float(x) for x in pos[0]),
        direction=tuple(float(x) for x in direction.ravel()),
    )


def _padding(ds: Dataset) -> tuple[float, float] | None:
    pad = _num(ds, "PixelPaddingValue")
    if pad is None:
        return None
    limit = _num(ds, "PixelPaddingRangeLimit")
    if limit is None:
        return (pad, pad)
    return (min(pad, limit), max(pad, limit))


def _single_frame_plane(path: Path, ds: Dataset, what: str, *, padding: bool = False) -> _Plane:
    pos = _nums(ds, "ImagePositionPatient", 3)
    ori = _nums(ds, "ImageOrientationPatient", 6)
    ps = _nums(ds, "PixelSpacing", 2)
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    for name, val in (("ImagePositionPatient", pos), ("ImageOrientationPatient", ori),
                      ("PixelSpacing", ps), ("Rows", rows), ("Columns", cols)):
        if val is None:
            raise InputError(f"{what}: {path}: {name} is missing or unreadable; the slice cannot "
                             "be placed in space")
    assert pos is not None and ori is not None and ps is not None
    assert rows is not None and cols is not None
    if min(ps) <= 0:
        raise InputError(f"{what}: {path}: PixelSpacing {ps} is not positive")
    slope = _num(ds, "RescaleSlope")
    intercept = _num(ds, "RescaleIntercept")
    return _Plane(path=path, frame=None, position=np.array(pos), orientation=np.array(ori),
                  pixel_spacing=(ps[0], ps[1]), rows=rows, columns=cols,
                  slope=1.0 if slope is None else slope,
                  intercept=0.0 if intercept is None else intercept,
                  padding=_padding(ds) if padding else None)


def _enhanced_planes(path: Path, ds: Dataset, what: str) -> list[_Plane]:
    """Planes of an enhanced multi-frame object (functional groups, PS3.3 C.7.6.16)."""
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    if rows is None or cols is None:
        raise InputError(f"{what}: {path}: Rows/Columns missing")
    top_slope, top_intercept = _num(ds, "RescaleSlope"), _num(ds, "RescaleIntercept")
    planes = []
    for i, fg in enumerate(per_frame):
        def get(seq_kw: str, kw: str, n: int | None = None, fg: Dataset = fg) -> Any:
            for group in (fg, shared):
                item = _item(group, seq_kw)
                v = _nums(item, kw, n) if n is not None else _num(item, kw)
                if v is not None:
                    return v
            return None

        pos = get("PlanePositionSequence", "ImagePositionPatient", 3)
        ori = get("PlaneOrientationSequence", "ImageOrientationPatient", 6)
        ps = get("PixelMeasuresSequence", "PixelSpacing", 2)
        if pos is None or ori is None or ps is None:
            raise InputError(f"{what}: {path}: frame {i + 1} has no plane position, orientation "
                             "or pixel spacing in its functional groups")
        slope = get("PixelValueTransformationSequence", "RescaleSlope")
        intercept = get("PixelValueTransformationSequence", "RescaleIntercept")
        slope = slope if slope is not None else (top_slope if top_slope is not None else 1.0)
        intercept = intercept if intercept is not None else (top_intercept or 0.0)
        planes.append(_Plane(path=path, frame=i, position=np.array(pos),
                             orientation=np.array(ori), pixel_spacing=(ps[0], ps[1]), rows=rows,
                             columns=cols, slope=slope, intercept=intercept))
    if len(planes) != _n_frames(ds):
        raise InputError(f"{what}: {path}: {len(planes)} per-frame functional groups for "
                         f"{_n_frames(ds)} frames")
    return planes


def _nm_multiframe_planes(path: Path, ds: Dataset, what: str,
                          notes: list[str]) -> list[_Plane]:
    """Planes of a reconstructed NM multi-frame file (one frame per slice)."""
    n = _n_frames(ds)
    detector = _item(ds, "DetectorInformationSequence")
    pos = _nums(detector, "ImagePositionPatient", 3)
    ori = _nums(detector, "ImageOrientationPatient", 6)
    if pos is None or ori is None:
        pos = pos or _nums(ds, "ImagePositionPatient", 3)
        ori = ori or _nums(ds, "ImageOrientationPatient", 6)
    if pos is None or ori is None:
        raise InputError(f"{what}: {path}: no ImagePositionPatient/ImageOrientationPatient (in "
                         "DetectorInformationSequence or top level); the SPECT cannot be placed "
                         "in space")
    ps = _nums(ds, "PixelSpacing", 2)
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    if ps is None or rows is None or cols is None or min(ps) <= 0:
        raise InputError(f"{what}: {path}: PixelSpacing/Rows/Columns missing or invalid")
    step = _num(ds, "SpacingBetweenSlices")
    if step is None or step == 0:
        thickness = _num(ds, "SliceThickness")
        if thickness is None or thickness <= 0:
            raise InputError(f"{what}: {path}: neither SpacingBetweenSlices nor SliceThickness "
                             "gives the distance between slices")
        step = thickness
        notes.append(f"{path.name}: SpacingBetweenSlices absent; slices taken {thickness:g} mm "
                     "apart (SliceThickness) and stacked along the normal")
    # Index vectors: refuse frames that are not one slice each (several windows, gates, …).
    for tag in _frame_pointers(ds):
        kw = _NM_VECTORS.get(tag)
        if kw is None or kw == "SliceVector":
            continue
        vals = ds.get(kw)
        if vals is not None and len(set(int(v) for v in _as_list(vals))) > 1:
            raise InputError(f"{what}: {path}: frames vary in {kw} ({len(set(_as_list(vals)))} "
                             "values); only one slice per frame (a single energy window, no "
                             "gates or time slots) can be read as one volume")
    slice_index = list(range(n))
    sv = ds.get("SliceVector")
    if sv is not None:
        vals = [int(v) for v in _as_list(sv)]
        if sorted(vals) == list(range(1, n + 1)):
            slice_index = [v - 1 for v in vals]
        else:
            notes.append(f"{path.name}: SliceVector is not the slices 1..{n} once each; frames "
                         "taken in file order")
    _row, _col, normal = _orthonormal(np.array(ori), f"{what}: {path}")
    base = np.array(pos)
    slope = _num(ds, "RescaleSlope")
    intercept = _num(ds, "RescaleIntercept")
    return [_Plane(path=path, frame=i, position=base + slice_index[i] * step * normal,
                   orientation=np.array(ori), pixel_spacing=(ps[0], ps[1]), rows=rows,
                   columns=cols, slope=1.0 if slope is None else slope,
                   intercept=0.0 if intercept is None else intercept) for i in range(n)]


def _as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, (MultiValue, list, tuple)) else [v]


def _headers(files: Sequence[Path], what: str,
             known: dict[Path, Dataset] | None = None) -> list[tuple[Path, Dataset]]:
    out = []
    for p in files:
        if known is not None and Path(p) in known:
            out.append((Path(p), known[Path(p)]))
            continue
        ds, reason, _quiet = _read_header(Path(p))
        if ds is None:
            raise InputError(f"{what}: {p}: {reason or 'not a DICOM image'}")
        out.append((Path(p), ds))
    return out


def _planes_for(headers: list[tuple[Path, Dataset]], what: str, notes: list[str],
                *, padding: bool = False) -> list[_Plane]:
    if len(headers) == 1:
        path, ds = headers[0]
        if "PerFrameFunctionalGroupsSequence" in ds:
            return _enhanced_planes(path, ds, what)
        if _n_frames(ds) > 1:
            return _nm_multiframe_planes(path, ds, what, notes)
    if any(_n_frames(ds) > 1 for _, ds in headers):
        raise InputError(f"{what}: holds {len(headers)} multi-frame files; read them one file at "
                         "a time")
    return [_single_frame_plane(p, ds, what, padding=padding) for p, ds in headers]


def _what(info: SeriesInfo | None, files: Sequence[Path]) -> str:
    folder = Path(files[0]).parent if files else Path(".")
    if info is None:
        return f"DICOM series in {folder}"
    desc = f" {info.series_description!r}" if info.series_description else ""
    return f"{info.modality} series{desc} in {folder}"


def series_geometry(info: SeriesInfo) -> tuple[tuple[int, int, int], tuple[float, float, float],
                                               tuple[float, float, float], tuple[float, ...]]:
    """Grid of an image series from its headers only: (size, spacing, origin, direction).

    Size is (x, y, z) voxels, spacing mm, origin mm (centre of the first voxel), direction a
    row-major 3×3 tuple, as the image :func:`read_ct_series` / :func:`read_nm_image` would
    return. Raises :class:`InputError` for series without an image grid (RTSTRUCT, SR, …).
    """
    what = _what(info, info.files)
    headers = _headers(info.files, what)
    if _int(headers[0][1], "Rows") is None:
        raise InputError(f"{what}: {info.modality} objects hold no image grid")
    st = _stack(_planes_for(headers, what, []), what)
    return st.size, st.spacing, st.origin, st.direction


# ------------------------------------------------------------------------------------------------
# pixels
# ------------------------------------------------------------------------------------------------


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Give a dataset read without file meta (no preamble) the transfer syntax it was read in."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    ts = (ImplicitVRLittleEndian if implicit else
          ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    if meta is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts


def _pixels(path: Path, what: str) -> np.ndarray:
    ds: Dataset | None = None
    try:
        ds = pydicom.dcmread(path, force=True)
        _ensure_transfer_syntax(ds)
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many kinds on damaged or undecodable data
        ts = _str(getattr(ds, "file_meta", None), "TransferSyntaxUID")
        hint = (f" (transfer syntax {UID(ts).name}; decompress it, e.g. with gdcmconv --raw, or "
                "install a pydicom decoder such as pylibjpeg)") if ts and UID(ts).is_compressed \
            else ""
        raise InputError(f"{what}: {path}: cannot read pixel data "
                         f"({type(exc).__name__}: {exc}){hint}") from None
    if (_int(ds, "SamplesPerPixel") or 1) != 1:
        raise InputError(f"{what}: {path}: colour image ({ds.get('PhotometricInterpretation')}); "
                         "a greyscale image is needed")
    return arr


def _build(stack: _Stack, what: str, *, stored_bytes: int = 0) -> sitk.Image:
    """Read the planes' pixels into a float32 image (z, y, x) with the stack's geometry."""
    nx, ny, nz = stack.size
    check_allocation(nx * ny * nz, 4 + stored_bytes, what)
    vol = np.empty((nz, ny, nx), dtype=np.float32)
    cache: dict[Path, np.ndarray] = {}
    for k, plane in enumerate(stack.planes):
        if plane.frame is None:
            arr = _pixels(plane.path, what)
            if arr.ndim != 2:
                raise InputError(f"{what}: {plane.path}: expected one frame, pixel data has shape "
                                 f"{arr.shape}")
        else:
            frames = cache.get(plane.path)
            if frames is None:
                frames = _pixels(plane.path, what)
                if frames.ndim == 2:
                    frames = frames[None]
                cache = {plane.path: frames}
            if plane.frame >= frames.shape[0]:
                raise InputError(f"{what}: {plane.path}: frame {plane.frame + 1} missing from "
                                 f"the pixel data ({frames.shape[0]} frames)")
            arr = frames[plane.frame]
        if arr.shape != (ny, nx):
            raise InputError(f"{what}: {plane.path}: pixel data is {arr.shape}, the header "
                             f"declares {ny}×{nx}")
        out = arr.astype(np.float32) * np.float32(plane.slope) + np.float32(plane.intercept)
        if plane.padding is not None:
            lo, hi = plane.padding
            out[(arr >= lo) & (arr <= hi)] = CT_PADDING_HU
        vol[k] = out
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing(stack.spacing)
    img.SetOrigin(stack.origin)
    img.SetDirection(stack.direction)
    return img


# ------------------------------------------------------------------------------------------------
# public readers
# ------------------------------------------------------------------------------------------------


def _resolve(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | SeriesInfo,
             modalities: tuple[str, ...], kind: str, known: dict[Path, Dataset],
             ) -> tuple[SeriesInfo, tuple[Path, ...]]:
    """The one series of ``modalities`` that ``source`` designates, with its files.

    Headers read on the way are left in ``known`` so they are not parsed twice.
    """
    if isinstance(source, SeriesInfo):
        return source, source.files
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise InputError(f"{path}: not found")
        if not path.is_dir():
            scan = _scan_paths(path, [path], warn=False, keep=known)
            if scan.skipped:
                raise InputError(f"{path}: {scan.skipped[0][1]}")
        else:
            scan = _scan_paths(path, _walk(path), keep=known)
        where = str(path)
    else:
        paths = [Path(p) for p in source]
        if not paths:
            raise InputError(f"no files given for the {kind}")
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise InputError(f"{missing[0]}: file not found")
        scan = _scan_paths(paths[0].parent, paths, warn=False, keep=known)
        if scan.skipped:
            p, why = scan.skipped[0]
            raise InputError(f"{p}: {why}")
        where = str(paths[0].parent)
    found = [s for s in scan.series if s.modality in modalities]
    if not found:
        others = ", ".join(sorted({s.modality for s in scan.series})) or "none"
        raise InputError(f"{where}: no {'/'.join(modalities)} series found (modalities there: "
                         f"{others})")
    if len(found) > 1:
        names = "; ".join(f"{s.series_description or '-'} ({s.series_uid})" for s in found)
        raise InputError(f"{where}: holds {len(found)} {'/'.join(modalities)} series ({names}); "
                         "pass the files or SeriesInfo of one")
    return found[0], found[0].files


def read_ct_series(
    files_or_folder: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | SeriesInfo,
) -> sitk.Image:
    """Read a CT series (one file per slice) as a float32 image in HU.

    Parameters
    ----------
    files_or_folder : path, sequence of paths or SeriesInfo
        A folder holding exactly one CT series (other modalities are ignored), the slice files,
        or a series found by :func:`scan_dicom_folder`.

    Returns
    -------
    SimpleITK.Image
        HU (stored value × RescaleSlope + RescaleIntercept, per slice), spacing (x, y, z) mm,
        origin at the centre of the first voxel of the lowest slice along the normal, direction
        columns (row direction, column direction, normal). Voxels marked by PixelPaddingValue
        are set to :data:`CT_PADDING_HU`.

    Raises
    ------
    InputError
        No or several CT series; a single slice; slices that differ in size, orientation or
        pixel spacing; duplicate positions; missing slices (a step above
        :data:`GAP_FACTOR` × the median step); steps that differ by more than 1 % of the step
        (:data:`SPACING_REL_TOL`); slices off the normal (gantry tilt); a volume larger than
        the memory limit; unreadable pixel data. Messages name the series folder and the file.
    """
    known: dict[Path, Dataset] = {}
    info, files = _resolve(files_or_folder, ("CT",), "CT series", known)
    what = _what(info, files)
    if info.modality != "CT":
        raise InputError(f"{what}: is {info.modality}, not CT")
    headers = _headers(files, what, known)
    known.clear()
    notes: list[str] = []
    planes = _planes_for(headers, what, notes, padding=True)
    stack = _stack(planes, what)
    for n in notes:
        warnings.warn(f"{what}: {n}", DicomFallbackWarning, stacklevel=2)
    return _build(stack, what)


def _is_bq_per_ml_code(name: str) -> bool:
    t = name.lower().replace(" ", "")
    return t in ("bq/ml", "bq/cm3", "bqml", "becquerels/milliliter", "becquerel/milliliter")


def read_nm_image(
    path_or_series: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | SeriesInfo,
) -> NMImage:
    """Read a reconstructed SPECT (NM) or PET volume.

    Supports the NM multi-frame object scanners write for reconstructed SPECT (NM Image Storage,
    ImageType ``…\\RECON TOMO\\…``, one frame per slice), enhanced multi-frame objects (per-frame
    functional groups) and one-file-per-slice series (PET style).

    Parameters
    ----------
    path_or_series : path, sequence of paths or SeriesInfo
        A file, a folder holding exactly one NM/PT series, the files of one series, or a series
        from :func:`scan_dicom_folder`.

    Returns
    -------
    NMImage
        ``units`` is ``Bq/mL`` when the file says so — Units ``BQML`` (stored × RescaleSlope +
        RescaleIntercept), or a RealWorldValueMappingSequence item in Bq/ml (applied to the
        stored values, and said in ``warnings``) — else ``counts`` (stored × RescaleSlope +
        RescaleIntercept; NM without Units holds counts).

    Raises
    ------
    InputError
        Raw projections (not reconstructed), units that are neither activity nor counts
        (e.g. SUV), several energy windows or gates in one file, the geometry errors of
        :func:`read_ct_series`, a volume beyond the memory limit.
    """
    known: dict[Path, Dataset] = {}
    info, files = _resolve(path_or_series, ("NM", "PT"), "NM/PET image", known)
    what = _what(info, files)
    if info.modality not in ("NM", "PT"):
        raise InputError(f"{what}: is {info.modality}, not NM or PT")
    if info.is_reconstructed is False:
        kind = info.image_type[2] if len(info.image_type) >= 3 else "raw"
        windows = f", {len(info.energy_windows)} energy windows" if info.energy_windows else ""
        raise InputError(
            f"{what}: holds raw acquisition data (ImageType {kind}, {info.n_images} frames"
            f"{windows}), not a reconstructed SPECT; reconstruct it first with 'rptdose recon' "
            "(or 'rptdose ingest --reconstruct-projections')")
    unit_code = (info.units or "").upper()
    headers = _headers(files, what, known)
    known.clear()
    notes: list[str] = []
    planes = _planes_for(headers, what, notes)
    stack = _stack(planes, what)
    stored_bytes = 2 if planes[0].frame is not None else 0
    for n in notes:
        warnings.warn(f"{what}: {n}", DicomFallbackWarning, stacklevel=2)

    info_notes = list(notes)
    if unit_code == "BQML":
        img = _build(stack, what, stored_bytes=stored_bytes)
        return NMImage(image=img, units=NMUnits.BQ_PER_ML, info=info, warnings=tuple(info_notes))
    rwvm = [m for m in info.real_world_value_mapping if _is_bq_per_ml_code(m[0])]
    if rwvm and unit_code in ("", *_COUNT_UNITS):
        # the mapping applies to stored values; per-slice series carry one per file
        per_file = {path: next((m for m in _rwvm(ds) if _is_bq_per_ml_code(m[0])), None)
                    for path, ds in headers}
        lacking = [path for path, m in per_file.items() if m is None]
        if lacking:
            raise InputError(f"{what}: {lacking[0]} has no RealWorldValueMapping to Bq/ml while "
                             "other files of the series have one")
        raw = tuple(replace(p, slope=per_file[p.path][1], intercept=per_file[p.path][2])
                    for p in stack.planes)
        img = _build(replace(stack, planes=raw), what, stored_bytes=stored_bytes)
        name, slope, intercept = rwvm[0]
        info_notes.append(f"applied RealWorldValueMapping to {name} (slope {slope:g}, intercept "
                          f"{intercept:g}) to the stored values: image in Bq/mL")
        return NMImage(image=img, units=NMUnits.BQ_PER_ML, info=info, warnings=tuple(info_notes))
    if unit_code and unit_code not in _COUNT_UNITS:
        raise InputError(f"{what}: Units {info.units!r} is neither activity concentration (BQML) "
                         "nor counts (CNTS); rptdose needs one of them")
    if info.modality == "PT" and not unit_code:
        raise InputError(f"{what}: PET image without Units (0054,1001); its values cannot be "
                         "interpreted")
    img = _build(stack, what, stored_bytes=stored_bytes)
    return NMImage(image=img, units=NMUnits.COUNTS, info=info, warnings=tuple(info_notes))


def read_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Read one DICOM file with pixel data; :class:`InputError` naming the file if unreadable."""
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})"
                         ) from None


def find_object_file(path: str | os.PathLike[str], modality: str) -> Path:
    """The one file of ``modality`` (e.g. RTSTRUCT, SEG) at ``path``: the file itself, or the
    only such file in a folder tree; :class:`InputError` when none or several are there."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise InputError(f"{p}: {modality} file or folder not found")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # other files in the folder are not our concern here
        scan = scan_dicom_folder(p)
    found = [f for s in scan.by_modality(modality) for f in s.files]
    if not found:
        raise InputError(f"{p}: no {modality} file in the folder")
    if len(found) > 1:
        raise InputError(f"{p}: {len(found)} {modality} files "
                         f"({', '.join(f.name for f in found)}); give the file to use")
    return found[0]
