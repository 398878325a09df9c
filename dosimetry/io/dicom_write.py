"""Writing CT series and reconstructed SPECT the way scanners export them.

:func:`write_ct_series` writes one CT Image Storage file per slice (int16 with a rescale to HU);
:func:`write_nm_spect` writes one NM Image Storage multi-frame file (ImageType
``ORIGINAL\\PRIMARY\\RECON TOMO\\EMISSION``, geometry in the DetectorInformationSequence, the
isotope, energy-window and rotation information a Siemens or GE workstation writes). Files carry
a proper file meta header (Explicit VR Little Endian, MediaStorageSOPInstanceUID =
SOPInstanceUID) and read back with :mod:`dosimetry.io.dicom`, pydicom and SimpleITK/GDCM.

Outputs are deterministic: every UID comes from :func:`uid_from_seed` and no wall-clock time is
written, so the same inputs give byte-identical files. Writes are atomic: a series folder is
assembled under a temporary name and renamed into place; a single file goes through
:func:`~dosimetry.io.atomic.atomic_path`.
"""

from __future__ import annotations

import math
import os
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds

from dosimetry import units
from dosimetry.errors import InputError
from dosimetry.io.atomic import atomic_folder, atomic_path
from dosimetry.io.dicom import CT_IMAGE_STORAGE, NM_IMAGE_STORAGE, NMUnits

__all__ = [
    "NUCLIDE_CODES",
    "DicomSeriesMeta",
    "NMMeta",
    "uid_from_seed",
    "write_ct_series",
    "write_nm_spect",
]

#: Namespace of the name-based (RFC 4122 version 5) UUIDs behind :func:`uid_from_seed`.
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/rptdose/rptdose/dicom-uid")
IMPLEMENTATION_CLASS_UID = f"2.25.{uuid.uuid5(_UID_NAMESPACE, 'implementation').int}"
IMPLEMENTATION_VERSION_NAME = "RPTDOSE_010"

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_PATIENT_POSITIONS = frozenset({"HFS", "HFP", "FFS", "FFP", "HFDR", "HFDL", "FFDR", "FFDL"})


@dataclass(frozen=True)
class _Code:
    value: str
    scheme: str
    meaning: str


#: Radionuclide codes of DICOM CID 18 "Isotopes in Radiopharmaceuticals" (SNOMED CT, scheme SCT,
#: as pydicom's copy of the DICOM content-mapping resource lists them), with the photopeak
#: window a scanner sets by default (main γ line ± 10 %: Lu-177 208.4 keV, I-131 364.5 keV,
#: Tc-99m 140.5 keV, In-111 245.4 keV, I-123 159.0 keV).
NUCLIDE_CODES: dict[str, tuple[_Code, tuple[float, float] | None]] = {
    "Lu-177": (_Code("447553000", "SCT", "^177^Lutetium"), (187.2, 228.8)),
    "I-131": (_Code("1368003", "SCT", "^131^Iodine"), (327.6, 400.4)),
    "Tc-99m": (_Code("72454006", "SCT", "^99m^Technetium"), (126.45, 154.55)),
    "In-111": (_Code("56609000", "SCT", "^111^Indium"), (220.9, 269.9)),
    "I-123": (_Code("21572004", "SCT", "^123^Iodine"), (143.1, 174.9)),
    "Y-90": (_Code("14691008", "SCT", "^90^Yttrium"), None),
}


def _canonical_nuclide(name: str) -> str:
    """``'Lu-177'`` from ``'Lu177'``, ``'177Lu'``, ``'lu-177'``, ``'Tc99m'`` …"""
    t = name.strip().replace(" ", "")
    m = re.fullmatch(r"([A-Za-z]{1,2})-?(\d{1,3})(m?)", t)
    if m is not None:
        sym, mass, meta = m.group(1), m.group(2), m.group(3)
    else:
        m = re.fullmatch(r"(\d{1,3})(m?)-?([A-Za-z]{1,2})", t)
        if m is None:
            return name
        mass, meta, sym = m.group(1), m.group(2), m.group(3)
    return f"{sym.capitalize()}-{mass}{meta.lower()}"


def uid_from_seed(*parts: object) -> str:
    """A valid DICOM UID derived from ``parts``: the same parts always give the same UID.

    The UID is ``2.25.<n>`` with *n* the integer of a name-based (SHA-1, version 5) UUID of the
    parts, the form PS3.5 B.2 defines for UUID-derived UIDs (at most 44 characters).
    """
    if not parts:
        raise ValueError("uid_from_seed needs at least one part")
    name = "\x1f".join(str(p) for p in parts)
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


class PatientSex(StrEnum):
    """DICOM PatientSex values."""

    MALE = "M"
    FEMALE = "F"
    OTHER = "O"


@dataclass(frozen=True, kw_only=True)
class DicomSeriesMeta:
    """Patient, study and series identity of a series to write.

    ``patient_id`` should be a pseudonym: the writers put nothing else identifying in the files.
    UIDs must be valid DICOM UIDs (digits and dots, at most 64 characters); derive them with
    :func:`uid_from_seed`. Date-times are naive local times; None leaves the tags empty (no
    wall-clock time is ever written).
    """

    patient_id: str
    patient_name: str | None = None  # default: the patient_id
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    study_datetime: datetime | None = None
    acquisition_datetime: datetime | None = None
    series_description: str = ""
    study_description: str = ""
    series_number: int = 1
    manufacturer: str = "rptdose"
    model_name: str = "rptdose"
    patient_position: str = "HFS"
    patient_sex: PatientSex | None = None
    patient_weight_kg: float | None = None
    study_id: str = "1"

    def __post_init__(self) -> None:
        for name in ("study_uid", "series_uid", "frame_of_reference_uid"):
            v = getattr(self, name)
            if not isinstance(v, str) or len(v) > 64 or not _UID_RE.match(v):
                raise InputError(f"DicomSeriesMeta.{name}={v!r} is not a valid DICOM UID "
                                 "(digits and dots, at most 64 characters)")
        if self.study_uid == self.series_uid:
            raise InputError("DicomSeriesMeta: study_uid and series_uid must differ")
        if self.patient_position not in _PATIENT_POSITIONS:
            raise InputError(f"DicomSeriesMeta.patient_position={self.patient_position!r}; "
                             f"expected one of {', '.join(sorted(_PATIENT_POSITIONS))}")
        if len(self.patient_id) > 64 or "\\" in self.patient_id:
            raise InputError(f"DicomSeriesMeta.patient_id={self.patient_id!r}: at most 64 "
                             "characters, no backslash")
        if self.patient_weight_kg is not None and not self.patient_weight_kg > 0:
            raise InputError(f"DicomSeriesMeta.patient_weight_kg={self.patient_weight_kg} must "
                             "be > 0")
        if not 0 <= self.series_number < 2**31:
            raise InputError(f"DicomSeriesMeta.series_number={self.series_number} out of range")


@dataclass(frozen=True, kw_only=True)
class NMMeta:
    """What an NM SPECT file says about units, nuclide, administration and acquisition.

    Parameters
    ----------
    units : NMUnits
        ``Bq/mL`` (written as Units ``BQML``) or ``counts`` (``CNTS``).
    nuclide : str, optional
        ``"Lu-177"``, ``"I-131"`` (also ``Tc-99m``, ``In-111``, ``I-123``, ``Y-90``); written as
        a RadionuclideCodeSequence item of CID 18.
    injection_datetime : datetime, optional
        Radiopharmaceutical start date-time (naive local time).
    injected_activity_bq : float, optional
        Administered activity [Bq]; written in MBq, the unit the NM Isotope module defines for
        RadionuclideTotalDose (PS3.3 C.8.4.10.1.7).
    half_life_s : float, optional
        RadionuclideHalfLife [s].
    frame_duration_s : float, optional
        Acquisition duration [s]; written as ``n_views`` views of ActualFrameDuration (integer
        ms) each in the RotationInformationSequence.
    n_views : int
        Views per rotation (NumberOfFramesInRotation).
    energy_windows : tuple of (lower, upper) keV
        Energy window ranges; default the nuclide's photopeak window (±10 %).
    calibration_cps_per_mbq : float, optional
        System sensitivity; for a counts image (with ``frame_duration_s``) it is written as a
        RealWorldValueMapping from stored values to Bq/ml.
    corrections : tuple of str
        CorrectedImage values, e.g. ``("ATTN", "SCAT", "DECY")``.
    """

    units: NMUnits = NMUnits.BQ_PER_ML
    nuclide: str | None = None
    radiopharmaceutical: str | None = None
    injection_datetime: datetime | None = None
    injected_activity_bq: float | None = None
    half_life_s: float | None = None
    frame_duration_s: float | None = None
    n_views: int = 60
    energy_windows: tuple[tuple[float, float], ...] = field(default=())
    calibration_cps_per_mbq: float | None = None
    corrections: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "units", NMUnits(self.units))
        except ValueError:
            raise InputError(f"NMMeta.units={self.units!r}; expected 'Bq/mL' or 'counts'") \
                from None
        if self.nuclide is not None:
            canon = _canonical_nuclide(self.nuclide)
            if canon not in NUCLIDE_CODES:
                raise InputError(f"NMMeta.nuclide={self.nuclide!r} has no DICOM code here; "
                                 f"known: {', '.join(NUCLIDE_CODES)}")
            object.__setattr__(self, "nuclide", canon)
        windows = self.energy_windows
        if len(windows) == 2 and all(isinstance(x, (int, float)) for x in windows):
            windows = (tuple(windows),)  # one (lower, upper) pair given bare
        try:
            windows = tuple((float(lo), float(hi)) for lo, hi in windows)
        except (TypeError, ValueError):
            raise InputError(f"NMMeta.energy_windows={self.energy_windows!r}: expected "
                             "(lower, upper) keV pairs") from None
        for lo, hi in windows:
            if not 0 <= lo < hi:
                raise InputError(f"NMMeta.energy_windows: ({lo}, {hi}) keV is not a window")
        object.__setattr__(self, "energy_windows", windows)
        for name in ("injected_activity_bq", "half_life_s", "frame_duration_s",
                     "calibration_cps_per_mbq"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise InputError(f"NMMeta.{name}={v} must be a positive number")
        if self.n_views < 1:
            raise InputError(f"NMMeta.n_views={self.n_views} must be ≥ 1")
        if self.calibration_cps_per_mbq is not None and self.frame_duration_s is None:
            raise InputError("NMMeta: calibration_cps_per_mbq needs frame_duration_s to map "
                             "counts to Bq/mL")


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def _ds(x: float) -> str:
    """A float as a DICOM DS string (at most 16 characters)."""
    return format_number_as_ds(float(x)) if x != 0 else "0"


def _da(dt: datetime | None) -> str:
    return dt.strftime("%Y%m%d") if dt is not None else ""


def _tm(dt: datetime | None) -> str:
    if dt is None:
        return ""
    s = dt.strftime("%H%M%S")
    return f"{s}.{dt.microsecond:06d}" if dt.microsecond else s


def _dt(dt: datetime | None) -> str:
    return f"{_da(dt)}{_tm(dt)}" if dt is not None else ""


def _geometry(image: sitk.Image, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(row direction, column direction, slice step vector, signed step along the normal)."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{what}: need a 3D scalar image, got {image.GetDimension()}D with "
                         f"{image.GetNumberOfComponentsPerPixel()} component(s)")
    d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    row, col, ax = d[:, 0], d[:, 1], d[:, 2]
    normal = np.cross(row, col)
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-6):
        raise InputError(f"{what}: direction cosines {tuple(d.ravel().round(6))} are not "
                         "orthonormal")
    sign = float(np.sign(ax @ normal))
    sz = image.GetSpacing()[2]
    return row, col, ax * sz, sign * sz


def _orientation_letters(v: np.ndarray) -> str:
    """Patient-orientation letters of a direction (PS3.3 C.7.6.1.1.1), strongest first."""
    letters = []
    for i in np.argsort(-np.abs(v)):
        if abs(v[i]) > 1e-3:
            letters.append(("L", "P", "H")[i] if v[i] > 0 else ("R", "A", "F")[i])
    return "".join(letters[:3])


def _base_dataset(meta: DicomSeriesMeta, sop_class: str, sop_instance: str,
                  modality: str) -> Dataset:
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = sop_class
    fm.MediaStorageSOPInstanceUID = sop_instance
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    fm.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds = Dataset()
    ds.file_meta = fm
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyDate = _da(meta.study_datetime)
    ds.SeriesDate = _da(meta.acquisition_datetime)
    ds.AcquisitionDate = _da(meta.acquisition_datetime)
    ds.ContentDate = _da(meta.acquisition_datetime)
    ds.StudyTime = _tm(meta.study_datetime)
    ds.SeriesTime = _tm(meta.acquisition_datetime)
    ds.AcquisitionTime = _tm(meta.acquisition_datetime)
    ds.ContentTime = _tm(meta.acquisition_datetime)
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = meta.manufacturer
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = meta.study_description
    ds.SeriesDescription = meta.series_description
    ds.ManufacturerModelName = meta.model_name
    ds.PatientName = meta.patient_name if meta.patient_name is not None else meta.patient_id
    ds.PatientID = meta.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = meta.patient_sex.value if meta.patient_sex is not None else ""
    if meta.patient_weight_kg is not None:
        ds.PatientWeight = _ds(meta.patient_weight_kg)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "rptdose: pseudonymised PatientID, no other identifiers"
    ds.PatientPosition = meta.patient_position
    ds.StudyInstanceUID = meta.study_uid
    ds.SeriesInstanceUID = meta.series_uid
    ds.StudyID = meta.study_id
    ds.SeriesNumber = meta.series_number
    ds.FrameOfReferenceUID = meta.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    return ds


def _save(ds: Dataset, path: Path) -> None:
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def _finite_array(image: sitk.Image, what: str) -> np.ndarray:
    arr = sitk.GetArrayFromImage(image).astype(np.float64)  # (z, y, x)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{what}: image holds {int(np.sum(~np.isfinite(arr)))} non-finite "
                         "voxels (NaN/inf); DICOM stores finite numbers only")
    return arr


# ------------------------------------------------------------------------------------------------
# CT
# ------------------------------------------------------------------------------------------------


def write_ct_series(image: sitk.Image, folder: str | os.PathLike[str], meta: DicomSeriesMeta, *,
                    rescale_intercept: float = -1024.0, rescale_slope: float = 1.0,
                    kvp: float = 120.0, convolution_kernel: str | None = None) -> list[Path]:
    """Write a CT volume in HU as a CT Image Storage series, one file per slice.

    Parameters
    ----------
    image : SimpleITK.Image
        3D image in HU; geometry in mm (any orthonormal direction, also left-handed).
    folder : path
        Output folder. It is assembled under a temporary name and renamed into place; an
        existing folder of that name is replaced as a whole.
    meta : DicomSeriesMeta
        Patient, study and series identity.
    rescale_intercept, rescale_slope : float
        Stored int16 value *s* maps to HU = *s* × slope + intercept (scanners use 1 and -1024).
    kvp : float
        Tube voltage written to KVP [kV].

    Returns
    -------
    list of Path
        The files, ``CT_0001.dcm`` … in slice order (InstanceNumber).

    Raises
    ------
    InputError
        Not a 3D scalar image, non-orthonormal direction, non-finite values, or HU outside the
        int16 range the rescale allows (nothing is clipped silently).
    """
    folder = Path(folder)
    what = f"CT series for {folder}"
    row, col, step, _signed = _geometry(image, what)
    if not (math.isfinite(rescale_slope) and rescale_slope > 0):
        raise InputError(f"{what}: rescale_slope={rescale_slope} must be > 0")
    hu = _finite_array(image, what)
    stored = np.rint((hu - rescale_intercept) / rescale_slope)
    lo, hi = np.iinfo(np.int16).min, np.iinfo(np.int16).max
    if stored.min() < lo or stored.max() > hi:
        raise InputError(
            f"{what}: HU range {hu.min():g}…{hu.max():g} does not fit int16 with slope "
            f"{rescale_slope:g} and intercept {rescale_intercept:g}; choose another rescale")
    stored = stored.astype("<i2")
    nz, ny, nx = stored.shape
    sx, sy, sz = image.GetSpacing()
    origin = np.asarray(image.GetOrigin(), dtype=float)
    normal = np.cross(row, col)
    paths: list[Path] = []
    with atomic_folder(folder) as tmp:
        for k in range(nz):
            sop = uid_from_seed(meta.series_uid, "CT", k + 1)
            ds = _base_dataset(meta, CT_IMAGE_STORAGE, sop, "CT")
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.InstanceNumber = k + 1
            ds.AcquisitionNumber = 1
            ds.KVP = _ds(kvp)
            if convolution_kernel:
                ds.ConvolutionKernel = convolution_kernel
            pos = origin + k * step
            ds.ImagePositionPatient = [_ds(v) for v in pos]
            ds.ImageOrientationPatient = [_ds(v) for v in (*row, *col)]
            ds.SliceLocation = _ds(float(pos @ normal))
            ds.SliceThickness = _ds(sz)
            ds.SpacingBetweenSlices = _ds(sz)
            ds.PixelSpacing = [_ds(sy), _ds(sx)]  # (between rows, between columns)
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows = ny
            ds.Columns = nx
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1
            ds.RescaleIntercept = _ds(rescale_intercept)
            ds.RescaleSlope = _ds(rescale_slope)
            ds.RescaleType = "HU"
            ds.WindowCenter = "40"
            ds.WindowWidth = "400"
            ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
            ds["PixelData"].VR = "OW"
            name = f"CT_{k + 1:04d}.dcm"
            _save(ds, tmp / name)
            paths.append(folder / name)
    return paths


# ------------------------------------------------------------------------------------------------
# NM SPECT
# ------------------------------------------------------------------------------------------------


def _quantise_uint16(values: np.ndarray, exact_integers: bool) -> tuple[np.ndarray, float, float]:
    """(stored uint16, slope, intercept) with values ≈ stored × slope + intercept.

    Integer values within 0…65535 are stored as they are (slope 1). Otherwise the full uint16
    range spans [min(0, min), max], so the quantisation error is at most slope / 2 =
    (max − min(0, min)) / 131070 per voxel: 7.6e-6 of the image maximum.
    """
    vmin, vmax = float(values.min()), float(values.max())
    if exact_integers and vmin >= 0 and vmax <= 65535 and np.all(values == np.rint(values)):
        return values.astype("<u2"), 1.0, 0.0
    intercept = min(0.0, vmin)
    span = vmax - intercept
    slope = span / 65535.0 if span > 0 else 1.0
    # the DS text of the slope is what readers see: quantise against that value
    slope = float(_ds(slope))
    intercept = float(_ds(intercept)) if intercept != 0 else 0.0
    stored = np.rint((values - intercept) / slope)
    stored = np.clip(stored, 0, 65535)  # only rounding of the top value can exceed the range
    return stored.astype("<u2"), slope, intercept


def _code_item(code: _Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme
    item.CodeMeaning = code.meaning
    return item


def write_nm_spect(image: sitk.Image, path: str | os.PathLike[str], meta: DicomSeriesMeta,
                   nm: NMMeta) -> Path:
    """Write a reconstructed SPECT volume as one NM Image Storage multi-frame file.

    The file is what a SPECT/CT workstation exports after reconstruction: ImageType
    ``ORIGINAL\\PRIMARY\\RECON TOMO\\EMISSION``, one frame per slice (FrameIncrementPointer →
    SliceVector = 1…N), ImagePositionPatient and ImageOrientationPatient of the first slice in
    the DetectorInformationSequence, SpacingBetweenSlices signed so that slices stack along the
    normal (negative for a left-handed direction matrix), uint16 pixels (the NM Image Pixel
    module allows 8 or 16 bits) with RescaleSlope/Intercept, Units ``BQML`` or ``CNTS``, and
    the isotope, energy-window and rotation sequences.

    Parameters
    ----------
    image : SimpleITK.Image
        3D image in Bq/mL or counts (``nm.units``), geometry in mm.
    path : path
        Output file (written atomically).
    meta, nm : DicomSeriesMeta, NMMeta
        Identity; units, nuclide, administration, acquisition.

    Returns
    -------
    Path
        ``path``.

    Notes
    -----
    Bq/mL images (and non-integer counts) are stored as uint16 with slope
    (max − min(0, min)) / 65535, so each voxel is kept to within half that slope (7.6e-6 of
    the maximum). The same mapping is also written as a RealWorldValueMappingSequence item in
    Bq/ml (UCUM) for Bq/mL images; for counts images with ``nm.calibration_cps_per_mbq`` an
    item maps stored values to Bq/ml as counts / (T · S · V) with T the acquisition time, S the
    sensitivity and V the voxel volume.
    """
    path = Path(path)
    what = f"NM SPECT {path}"
    row, col, _step, signed_step = _geometry(image, what)
    values = _finite_array(image, what)
    nz, ny, nx = values.shape
    if nz < 2:
        raise InputError(f"{what}: a SPECT volume needs at least two slices, got {nz}")
    sx, sy, sz = image.GetSpacing()
    stored, slope, intercept = _quantise_uint16(values, nm.units is NMUnits.COUNTS)

    sop = uid_from_seed(meta.series_uid, "NM", 1)
    ds = _base_dataset(meta, NM_IMAGE_STORAGE, sop, "NM")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
    ds.InstanceNumber = 1
    ds.PatientOrientation = [_orientation_letters(row), _orientation_letters(col)]
    ds.ImageID = "RECON TOMO"
    ds.CountsAccumulated = None  # type 2: not meaningful for reconstructed slices
    ds.AcquisitionTerminationCondition = "TIME"
    ds.SliceThickness = _ds(sz)
    ds.SpacingBetweenSlices = _ds(signed_step)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = nz
    ds.FrameIncrementPointer = Tag(0x0054, 0x0080)  # SliceVector
    ds.Rows = ny
    ds.Columns = nx
    ds.PixelSpacing = [_ds(sy), _ds(sx)]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = _ds(intercept)
    ds.RescaleSlope = _ds(slope)
    if nm.corrections:
        ds.CorrectedImage = list(nm.corrections)
    ds.Units = "BQML" if nm.units is NMUnits.BQ_PER_ML else "CNTS"
    ds.SliceVector = list(range(1, nz + 1))
    ds.NumberOfSlices = nz
    ds.TypeOfDetectorMotion = "STEP AND SHOOT"
    ds.PatientOrientationCodeSequence = DicomSequence()
    ds.PatientGantryRelationshipCodeSequence = DicomSequence()

    # --- isotope ------------------------------------------------------------------------------
    code, default_window = NUCLIDE_CODES.get(nm.nuclide or "", (None, None))
    windows = nm.energy_windows or ((default_window,) if default_window else ())
    ew_seq = DicomSequence()
    for i, (lo, hi) in enumerate(windows):
        rng = Dataset()
        rng.EnergyWindowLowerLimit = _ds(lo)
        rng.EnergyWindowUpperLimit = _ds(hi)
        win = Dataset()
        win.EnergyWindowRangeSequence = DicomSequence([rng])
        win.EnergyWindowName = f"{nm.nuclide or 'EM'} {i + 1}" if len(windows) > 1 else \
            (nm.nuclide or "EM")
        ew_seq.append(win)
    ds.EnergyWindowInformationSequence = ew_seq
    ds.NumberOfEnergyWindows = max(1, len(windows))
    rp = Dataset()
    rp.Radiopharmaceutical = nm.radiopharmaceutical or ""
    if nm.injection_datetime is not None:
        rp.RadiopharmaceuticalStartTime = _tm(nm.injection_datetime)
        rp.RadiopharmaceuticalStartDateTime = _dt(nm.injection_datetime)
    if nm.injected_activity_bq is not None:
        rp.RadionuclideTotalDose = _ds(units.bq_to_mbq(nm.injected_activity_bq))  # MBq for NM
    if nm.half_life_s is not None:
        rp.RadionuclideHalfLife = _ds(nm.half_life_s)
    rp.RadionuclideCodeSequence = DicomSequence([_code_item(code)] if code else [])
    ds.RadiopharmaceuticalInformationSequence = DicomSequence([rp])

    # --- detector and rotation ----------------------------------------------------------------
    det = Dataset()
    det.CollimatorType = "PARA"
    det.ImagePositionPatient = [_ds(v) for v in image.GetOrigin()]
    det.ImageOrientationPatient = [_ds(v) for v in (*row, *col)]
    ds.DetectorInformationSequence = DicomSequence([det])
    ds.NumberOfDetectors = 1
    rot = Dataset()
    rot.RotationDirection = "CW"
    rot.ScanArc = _ds(360)
    rot.AngularStep = _ds(360.0 / nm.n_views)
    rot.NumberOfFramesInRotation = nm.n_views
    rot.StartAngle = "0"
    if nm.frame_duration_s is not None:  # left out rather than faked when unknown
        rot.ActualFrameDuration = round(nm.frame_duration_s * 1000.0 / nm.n_views)
    ds.RotationInformationSequence = DicomSequence([rot])
    ds.NumberOfRotations = 1

    # --- real-world values ------------------------------------------------------------------
    mapping: tuple[float, float, str] | None = None
    if nm.units is NMUnits.BQ_PER_ML:
        mapping = (slope, intercept, "stored value to activity concentration")
    elif nm.calibration_cps_per_mbq is not None:
        assert nm.frame_duration_s is not None  # checked by NMMeta
        voxel_ml = units.voxel_volume_ml((sx, sy, sz))
        cps_per_bq = units.cps_per_mbq_to_cps_per_bq(nm.calibration_cps_per_mbq)
        k = 1.0 / (nm.frame_duration_s * cps_per_bq * voxel_ml)
        mapping = (slope * k, intercept * k,
                   f"counts / ({nm.frame_duration_s:g} s x {nm.calibration_cps_per_mbq:g} cps/MBq"
                   f" x {voxel_ml:.6g} mL)")
    if mapping is not None:
        item = Dataset()
        # (0040,9216)/(0040,9211) are "US or SS" by the pixel representation: unsigned here
        item.add_new(Tag(0x0040, 0x9216), "US", 0)  # RealWorldValueFirstValueMapped
        item.add_new(Tag(0x0040, 0x9211), "US", 65535)  # RealWorldValueLastValueMapped
        item.RealWorldValueIntercept = mapping[1]
        item.RealWorldValueSlope = mapping[0]
        item.LUTExplanation = mapping[2][:64]
        item.LUTLabel = "BQML"
        unit = Dataset()
        unit.CodeValue = "Bq/ml"
        unit.CodingSchemeDesignator = "UCUM"
        unit.CodeMeaning = "Becquerels/milliliter"
        item.MeasurementUnitsCodeSequence = DicomSequence([unit])
        ds.RealWorldValueMappingSequence = DicomSequence([item])

    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    ds["PixelData"].VR = "OW"
    with atomic_path(path, suffix=".dcm") as tmp:
        _save(ds, tmp)
    return path
