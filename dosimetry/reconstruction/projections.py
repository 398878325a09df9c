"""Reading raw NM tomographic projections (multi-window, multi-bed DICOM, GE and Siemens).

An NM Image Storage object of a SPECT acquisition (ImageType ``…\\TOMO\\…``) holds one frame
per (energy window, detector, rotation, view); the frame's indices are in the vectors
EnergyWindowVector (0054,0010), DetectorVector (0054,0020), RotationVector (0054,0050) and
AngularViewVector (0054,0090) (PS3.3 C.8.4.9). Each bed position is one such object (GE and
Siemens write one file per bed).

Geometry, as PyTomography reads it (``pytomography.io.SPECT.dicom``), which its authors checked
against GE and Siemens reconstructions:

* **angles**: per detector ``StartAngle ± k·AngularStep`` (StartAngle from the
  DetectorInformationSequence item when present, else from the RotationInformationSequence;
  + for RotationDirection ``CC``/``CCW``, − for ``CW``); PyTomography's detector angle is that
  + 180° (:func:`~dosimetry.reconstruction.system.dicom_to_detector_angle`).
* **radii**: RadialPosition (0018,1142) of the detector (a value per view for non-circular
  orbits, one for circular), from the DetectorInformationSequence item, else the
  RotationInformationSequence item (Mediso), plus GE Xeleris' private per-view radial offsets
  (0055,1022)[0](0013,101E) when present.
* **object grid**: the detector's ImagePositionPatient (0020,0032) in the
  DetectorInformationSequence gives x, y of the first voxel and z of the top projection row;
  Siemens writes y = 0 there, in which case x and y are centred on the rotation axis and the
  table height (0018,1130) is subtracted from y; Mediso centres y. Voxels are the projection
  pixels (PixelSpacing = (between rows, between columns)); the grid is aligned with the patient
  axes (:class:`~dosimetry.reconstruction.geometry.ObjectGeometry`).
* **pixels**: each frame is flipped top-to-bottom so that array row i lies at the z of object
  slice i (lowest z first), the layout of :mod:`dosimetry.reconstruction.system`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dosimetry.errors import GeometryError, InputError
from dosimetry.reconstruction.geometry import ObjectGeometry
from dosimetry.reconstruction.windows import EnergyWindow, WindowSelection, select_windows

__all__ = ["ProjectionBed", "ProjectionSet", "read_projections"]

#: ImageType value 3 of raw tomographic acquisitions.
_TOMO = frozenset({"TOMO"})
#: Other NM ImageType value-3 terms (PS3.3 C.8.4.6.1.1), for messages.
_GATED = frozenset({"GATED TOMO"})
_RECON = frozenset({"RECON TOMO", "RECON GATED TOMO"})


# ----------------------------------------------------------------------------------- records
@dataclass(frozen=True, eq=False)
class ProjectionBed:
    """One bed position of a SPECT acquisition, as read from its DICOM file.

    Arrays are read-only. ``counts`` is (W, V, R, C) float32: energy window (order of the
    EnergyWindowInformationSequence), view (sorted by gantry angle), row (axial, row i at the z
    of object slice i, lowest z first), column (transaxial).

    Attributes
    ----------
    path : Path
    series_uid, sop_instance_uid, series_description : str
    counts : numpy.ndarray
    windows : tuple of EnergyWindow
    selection : WindowSelection
        Photopeak and adjoining scatter windows.
    angles_deg : numpy.ndarray
        (V,) DICOM gantry angle of each view [deg], ascending mod 360.
    radii_mm : numpy.ndarray
        (V,) distance of the collimator face from the rotation axis [mm].
    pixel_spacing_mm : tuple of float
        (between rows = axial, between columns = transaxial) [mm].
    matrix : tuple of int
        (rows, columns).
    geometry : ObjectGeometry
        The object grid of the bed in patient coordinates.
    manufacturer, model_name : str
    collimator : str
        CollimatorGridName (0018,1180) as written (may be ``""``).
    collimator_type : str
        CollimatorType (0018,1181), e.g. ``PARA``.
    n_detectors : int
    time_per_view_s : float or None
        ActualFrameDuration (0018,1242) of the rotation, the acquisition time of one view [s].
    rotation_direction : str
    table_height_mm, table_traverse_mm : float or None
    acquisition_datetime, series_datetime : datetime or None
    frame_of_reference_uid : str or None
    nuclide : str or None
        Canonical nuclide from the RadiopharmaceuticalInformationSequence, when recognised.
    patient_id : str
        PatientID (not shown in reprs; report only pseudonyms).
    notes : tuple of str
        What the reader did beyond plain reading (e.g. GE radial offsets applied).
    """

    path: Path
    series_uid: str
    sop_instance_uid: str
    series_description: str
    counts: np.ndarray = field(repr=False)
    windows: tuple[EnergyWindow, ...]
    selection: WindowSelection = field(repr=False)
    angles_deg: np.ndarray = field(repr=False)
    radii_mm: np.ndarray = field(repr=False)
    pixel_spacing_mm: tuple[float, float]
    matrix: tuple[int, int]
    geometry: ObjectGeometry
    manufacturer: str
    model_name: str
    collimator: str
    collimator_type: str
    n_detectors: int
    time_per_view_s: float | None
    rotation_direction: str
    table_height_mm: float | None
    table_traverse_mm: float | None
    acquisition_datetime: datetime | None
    series_datetime: datetime | None
    frame_of_reference_uid: str | None
    nuclide: str | None
    patient_id: str = field(repr=False, default="")
    notes: tuple[str, ...] = ()

    # ------------------------------------------------------------------ counts by role
    @property
    def n_views(self) -> int:
        return int(self.counts.shape[1])

    @property
    def photopeak_counts(self) -> np.ndarray:
        """(V, R, C) counts of the photopeak window."""
        return self.counts[self.selection.photopeak]

    @property
    def lower_scatter_counts(self) -> np.ndarray | None:
        """(V, R, C) counts of the lower scatter window, or None."""
        i = self.selection.lower
        return None if i is None else self.counts[i]

    @property
    def upper_scatter_counts(self) -> np.ndarray | None:
        """(V, R, C) counts of the upper scatter window, or None."""
        i = self.selection.upper
        return None if i is None else self.counts[i]

    @property
    def detector_angles_deg(self) -> np.ndarray:
        """(V,) PyTomography detector angles (gantry angle + 180, mod 360)."""
        from dosimetry.reconstruction.system import dicom_to_detector_angle

        return dicom_to_detector_angle(self.angles_deg)

    @property
    def bed_centre_z_mm(self) -> float:
        """z [mm] of the centre of the bed's axial field (the projection matrix)."""
        return self.geometry.z_of_slice((self.geometry.size[2] - 1) / 2.0)

    @property
    def acquisition_span_s(self) -> float | None:
        """Upper bound of the acquisition duration [s]: views × time per view (every view
        acquired in turn; with several heads the real duration is shorter)."""
        return None if self.time_per_view_s is None else self.n_views * self.time_per_view_s

    def describe(self) -> str:
        """One line (no patient identifiers)."""
        s = self.selection
        sc = [w.describe() for w in (s.lower_window, s.upper_window) if w is not None]
        t = f"{self.time_per_view_s:g} s/view" if self.time_per_view_s else "time/view ?"
        return (f"{self.path.name}: {self.n_views} views × {self.matrix[0]}×{self.matrix[1]}, "
                f"{self.pixel_spacing_mm[1]:g} mm, {len(self.windows)} windows (photopeak "
                f"{s.photopeak_window.describe()}; scatter {', '.join(sc) or 'none'}), "
                f"collimator {self.collimator or '?'}, {t}, bed centre z "
                f"{self.bed_centre_z_mm:.1f} mm")


@dataclass(frozen=True, eq=False)
class ProjectionSet:
    """All bed positions of one SPECT acquisition, sorted by increasing z.

    Attributes
    ----------
    beds : tuple of ProjectionBed
    selection : WindowSelection
        The window roles (the same in every bed).
    nuclide : str or None
    frame_of_reference_uid : str or None
    patient_id : str
        Not shown in reprs.
    notes : tuple of str
    """

    beds: tuple[ProjectionBed, ...]
    selection: WindowSelection = field(repr=False)
    nuclide: str | None
    frame_of_reference_uid: str | None
    patient_id: str = field(repr=False, default="")
    notes: tuple[str, ...] = ()

    @property
    def photopeak_kev(self) -> float:
        return self.selection.photopeak_kev

    @property
    def manufacturer(self) -> str:
        return self.beds[0].manufacturer

    @property
    def acquisition_datetime(self) -> datetime | None:
        """Earliest acquisition date-time of the beds."""
        times = [b.acquisition_datetime for b in self.beds if b.acquisition_datetime]
        return min(times) if times else None

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(b.path for b in self.beds)


# ----------------------------------------------------------------------------------- helpers
def _tag(kw: str) -> str:
    from pydicom.datadict import tag_for_keyword

    t = tag_for_keyword(kw)
    return f"{kw} ({t >> 16:04X},{t & 0xFFFF:04X})" if t is not None else kw


def _get(ds: Dataset | None, kw: str) -> Any:
    if ds is None:
        return None
    v = ds.get(kw)
    if v is None or (isinstance(v, (str, bytes)) and not str(v).strip()):
        return None
    return v


def _float(ds: Dataset | None, kw: str) -> float | None:
    v = _get(ds, kw)
    if v is None:
        return None
    try:
        if isinstance(v, (list, tuple)) or (hasattr(v, "__len__") and not isinstance(v, str)):
            v = next(iter(v))
        return float(v)
    except (TypeError, ValueError, IndexError):
        return None


def _floats(ds: Dataset | None, kw: str) -> list[float] | None:
    v = _get(ds, kw)
    if v is None:
        return None
    try:
        if isinstance(v, str) or not hasattr(v, "__len__"):
            return [float(v)]
        return [float(x) for x in v]
    except (TypeError, ValueError):
        return None


def _ints(ds: Dataset, kw: str) -> np.ndarray | None:
    v = ds.get(kw)
    if v is None:
        return None
    try:
        arr = np.atleast_1d(np.asarray(list(v) if hasattr(v, "__len__") else [v], dtype=np.int64))
    except (TypeError, ValueError):
        return None
    return arr


def _item(ds: Dataset, kw: str, i: int) -> Dataset | None:
    seq = ds.get(kw)
    if not seq or isinstance(seq, (str, bytes)):
        return None
    try:
        return seq[i]
    except IndexError:
        return None


def _parse_dt(d: Any, t: Any) -> datetime | None:
    ds_ = str(d or "").strip()
    if not re.fullmatch(r"\d{8}", ds_):
        return None
    try:
        day = date(int(ds_[:4]), int(ds_[4:6]), int(ds_[6:8]))
    except ValueError:
        return None
    ts = str(t or "").strip()
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?", ts)
    if not m:
        return datetime.combine(day, time())
    hh, mm, ss, frac = m.groups()
    try:
        return datetime.combine(day, time(int(hh), int(mm or 0), int(ss or 0),
                                          int((frac or "0").ljust(6, "0"))))
    except ValueError:
        return datetime.combine(day, time())


def _nuclide(ds: Dataset) -> str | None:
    from dosimetry.study.ingest import parse_dicom_nuclide

    item = _item(ds, "RadiopharmaceuticalInformationSequence", 0)
    texts = []
    code = _item(item, "RadionuclideCodeSequence", 0) if item is not None else None
    if code is not None:
        texts.append(str(code.get("CodeMeaning", "") or ""))
    texts.append(str(ds.get("Radionuclide", "") or ""))
    if item is not None:
        texts.append(str(item.get("Radiopharmaceutical", "") or ""))
    for t in texts:
        n = parse_dicom_nuclide(t) if t.strip() else None
        if n:
            return n
    return None


# ----------------------------------------------------------------------------------- one file
def _windows(ds: Dataset, where: str) -> tuple[EnergyWindow, ...]:
    seq = ds.get("EnergyWindowInformationSequence")
    if not seq or isinstance(seq, (str, bytes)):
        raise InputError(f"{where}: no {_tag('EnergyWindowInformationSequence')}; the energy "
                         "windows of the acquisition are unknown")
    out = []
    for i, item in enumerate(seq):
        rng = _item(item, "EnergyWindowRangeSequence", 0)
        lo = _float(rng, "EnergyWindowLowerLimit")
        hi = _float(rng, "EnergyWindowUpperLimit")
        if lo is None or hi is None:
            raise InputError(f"{where}: energy window {i + 1} has no "
                             f"{_tag('EnergyWindowLowerLimit')}/{_tag('EnergyWindowUpperLimit')}"
                             " in its EnergyWindowRangeSequence")
        name = str(item.get("EnergyWindowName", "") or "").strip()
        out.append(EnergyWindow(i, name, lo, hi))
    return tuple(out)


def _check_image_type(ds: Dataset, where: str) -> None:
    modality = str(ds.get("Modality", "") or "").upper()
    if modality != "NM":
        raise InputError(f"{where}: {_tag('Modality')} is {modality or 'absent'!r}, not NM raw "
                         "projections")
    itype = [str(x).strip().upper() for x in (ds.get("ImageType") or [])]
    kind = itype[2] if len(itype) >= 3 else ""
    shown = "\\".join(itype) or "absent"
    if kind in _TOMO:
        return
    if kind in _RECON:
        raise InputError(f"{where}: {_tag('ImageType')} {shown!r} is a reconstructed SPECT, not "
                         "raw projections; read it as an image (rptdose ingest)")
    if kind in _GATED:
        raise InputError(f"{where}: {_tag('ImageType')} {shown!r}: gated tomography is not "
                         "supported")
    raise InputError(f"{where}: {_tag('ImageType')} {shown!r} is not a tomographic acquisition "
                     "(value 3 must be TOMO); planar, whole-body and dynamic NM cannot be "
                     "reconstructed")


def _xeleris_offsets(ds: Dataset, n: int) -> np.ndarray | None:
    """GE Xeleris per-view radial offsets [mm] (private (0055,1022)[0](0013,101E)), as
    PyTomography applies them; None when absent or not one per frame of a window."""
    try:
        seq = ds[0x0055, 0x1022].value
        vals = np.asarray(seq[0][0x0013, 0x101E].value, dtype=np.float64)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return None
    if vals.size % 3 != 0:
        return None
    off = vals.reshape(-1, 3)[:, -1]
    return off if off.size == n else None


def _read_bed(path: Path, *, photopeak_kev: float | None,
              nuclide: str | None) -> ProjectionBed:
    where = str(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise InputError(f"{where}: not a readable DICOM file ({type(exc).__name__}: {exc})"
                         ) from None
    _check_image_type(ds, where)
    windows = _windows(ds, where)
    header_nuclide = _nuclide(ds)
    sel = select_windows(windows, photopeak_kev=photopeak_kev,
                         nuclide=nuclide or header_nuclide, where=where)

    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    n_frames = int(ds.get("NumberOfFrames") or 1)
    if rows < 2 or cols < 2 or n_frames < 2:
        raise InputError(f"{where}: {n_frames} frame(s) of {rows}×{cols}; a tomographic "
                         "acquisition has many frames of ≥ 2×2 pixels")
    if rows > 1024 or cols > 1024 or n_frames > 65536:
        raise InputError(f"{where}: {n_frames} frames of {rows}×{cols} is beyond what rptdose "
                         "reconstructs (≤ 1024² pixels, ≤ 65536 frames)")
    spacing = _floats(ds, "PixelSpacing")
    if not spacing or len(spacing) != 2 or min(spacing) <= 0:
        raise InputError(f"{where}: {_tag('PixelSpacing')} {ds.get('PixelSpacing')!r} is absent "
                         "or not two positive numbers")
    d_row, d_col = spacing

    def vector(kw: str, default: int | None) -> np.ndarray:
        v = _ints(ds, kw)
        if v is None:
            if default is None:
                raise InputError(f"{where}: no {_tag(kw)}")
            return np.full(n_frames, default, dtype=np.int64)
        if v.size != n_frames:
            raise InputError(f"{where}: {_tag(kw)} has {v.size} values for {n_frames} frames")
        return v

    if ds.get("EnergyWindowVector") is None and len(windows) > 1:
        raise InputError(f"{where}: {len(windows)} energy windows but no "
                         f"{_tag('EnergyWindowVector')} to say which frame is which")
    ew = vector("EnergyWindowVector", 1)
    det = vector("DetectorVector", 1)
    rot = vector("RotationVector", 1)
    slots = _ints(ds, "TimeSlotVector")
    if slots is not None and np.unique(slots).size > 1:
        raise InputError(f"{where}: {_tag('TimeSlotVector')} holds {np.unique(slots).size} time "
                         "slots: gated tomography is not supported")
    if np.unique(rot).size > 1:
        raise InputError(f"{where}: {_tag('RotationVector')} holds {np.unique(rot).size} "
                         "rotations; only single-rotation acquisitions are supported")
    if ew.min() < 1 or ew.max() > len(windows):
        raise InputError(f"{where}: {_tag('EnergyWindowVector')} values {ew.min()}…{ew.max()} do "
                         f"not match the {len(windows)} windows of the "
                         "EnergyWindowInformationSequence")
    rinfo = _item(ds, "RotationInformationSequence", 0)
    if rinfo is None:
        raise InputError(f"{where}: no {_tag('RotationInformationSequence')}: angles unknown")
    step = _float(rinfo, "AngularStep")
    n_rot = int(_float(rinfo, "NumberOfFramesInRotation") or 0)
    direction = str(rinfo.get("RotationDirection", "") or "").strip().upper()
    if step is None or direction not in ("CC", "CCW", "CW"):
        raise InputError(f"{where}: RotationInformationSequence lacks {_tag('AngularStep')} "
                         f"({step!r}) or a valid {_tag('RotationDirection')} ({direction!r})")
    sign = -1.0 if direction == "CW" else 1.0
    manufacturer = str(ds.get("Manufacturer", "") or "").strip()
    mediso = manufacturer.upper().startswith("MEDISO")

    views = _ints(ds, "AngularViewVector")
    if views is not None and views.size != n_frames:
        raise InputError(f"{where}: {_tag('AngularViewVector')} has {views.size} values for "
                         f"{n_frames} frames")
    if views is None:  # frames of each (window, detector) are the views in order
        views = np.zeros(n_frames, dtype=np.int64)
        for key in {(int(a), int(b)) for a, b in zip(ew, det, strict=True)}:
            idx = np.nonzero((ew == key[0]) & (det == key[1]))[0]
            views[idx] = np.arange(1, idx.size + 1)

    detectors = sorted({int(d) for d in det})
    start_rot = _float(rinfo, "StartAngle")
    angle_of: dict[tuple[int, int], float] = {}
    radius_of: dict[tuple[int, int], float] = {}
    for d in detectors:
        dinfo = _item(ds, "DetectorInformationSequence", d - 1)
        start = _float(dinfo, "StartAngle")
        if start is None:
            start = start_rot
        if start is None:
            raise InputError(f"{where}: no {_tag('StartAngle')} for detector {d}")
        radial_src = (_item(ds, "RotationInformationSequence", d - 1) if mediso else dinfo)
        radial = _floats(radial_src, "RadialPosition")
        if radial is None:
            radial = _floats(rinfo, "RadialPosition") or _floats(
                _item(ds, "RotationInformationSequence", d - 1), "RadialPosition")
        if radial is None:
            raise InputError(f"{where}: no {_tag('RadialPosition')} for detector {d}: the "
                             "orbit radius is unknown")
        for v in sorted({int(x) for x in views[det == d]}):
            angle_of[(d, v)] = start + sign * step * (v - 1)
            if len(radial) == 1:
                radius_of[(d, v)] = radial[0]
            elif v - 1 < len(radial):
                radius_of[(d, v)] = radial[v - 1]
            else:
                raise InputError(f"{where}: {_tag('RadialPosition')} of detector {d} has "
                                 f"{len(radial)} values, view {v} has none")
    keys = sorted(angle_of, key=lambda k: (k[0], k[1]))
    notes: list[str] = []
    offsets = _xeleris_offsets(ds, len(keys))
    if offsets is not None:
        for k, off in zip(keys, offsets, strict=True):
            radius_of[k] += float(off)
        notes.append(f"added GE Xeleris radial offsets (private (0055,1022)) of "
                     f"{offsets.min():.1f}…{offsets.max():.1f} mm to the radii")
    if n_rot and len(keys) != n_rot * 1 and len(keys) != n_rot * len(detectors):
        notes.append(f"{len(keys)} views found, NumberOfFramesInRotation is {n_rot}")
    order = sorted(keys, key=lambda k: (angle_of[k] % 360.0, k))
    angles = np.array([angle_of[k] % 360.0 for k in order])
    radii = np.array([radius_of[k] for k in order])
    if np.any(radii <= 0):
        raise InputError(f"{where}: {_tag('RadialPosition')} values must be > 0 mm "
                         f"(found {radii.min():g})")

    try:
        pixels = ds.pixel_array
    except Exception as exc:
        raise InputError(f"{where}: cannot decode the pixel data ({type(exc).__name__}: {exc})"
                         ) from None
    pixels = np.asarray(pixels)
    if pixels.shape != (n_frames, rows, cols):
        raise InputError(f"{where}: pixel data of shape {pixels.shape}, header says "
                         f"{n_frames}×{rows}×{cols}")
    slope = _float(ds, "RescaleSlope") or 1.0
    intercept = _float(ds, "RescaleIntercept") or 0.0
    frame_of: dict[tuple[int, int, int], int] = {}
    for f in range(n_frames):
        key = (int(ew[f]), int(det[f]), int(views[f]))
        if key in frame_of:
            raise InputError(f"{where}: frames {frame_of[key] + 1} and {f + 1} are both window "
                             f"{key[0]}, detector {key[1]}, view {key[2]}")
        frame_of[key] = f
    counts = np.zeros((len(windows), len(order), rows, cols), dtype=np.float32)
    for w in range(len(windows)):
        present = [(d, v) for (d, v) in order if (w + 1, d, v) in frame_of]
        if not present:
            continue  # a window declared but not acquired stays zero
        if len(present) != len(order):
            raise InputError(f"{where}: energy window {w + 1} has {len(present)} of "
                             f"{len(order)} views")
        idx = [frame_of[(w + 1, d, v)] for (d, v) in order]
        counts[w] = pixels[idx][:, ::-1, :].astype(np.float32) * slope + intercept
    if not np.all(np.isfinite(counts)) or counts.min() < 0:
        raise InputError(f"{where}: projection counts must be finite and ≥ 0")
    counts.setflags(write=False)
    angles.setflags(write=False)
    radii.setflags(write=False)

    dinfo0 = _item(ds, "DetectorInformationSequence", 0)
    ipp = _floats(dinfo0, "ImagePositionPatient")
    if not ipp or len(ipp) != 3:
        raise InputError(f"{where}: no {_tag('ImagePositionPatient')} in the "
                         f"{_tag('DetectorInformationSequence')}: the position of the projections "
                         "in the patient (and the CT) is unknown")
    sx, sy, sz = ipp
    table_height = _float(rinfo, "TableHeight")
    if abs(sy) < 1e-6:  # Siemens: centre on the axis and take the table height off y
        sx -= (cols - 1) / 2.0 * d_col
        sy -= (cols - 1) / 2.0 * d_col
        sy -= table_height or 0.0
        notes.append("detector ImagePositionPatient y = 0 (Siemens convention): grid centred "
                     f"on the rotation axis, table height {table_height or 0.0:g} mm taken off y")
    elif mediso:
        sy = -(cols - 1) / 2.0 * d_col
    geometry = ObjectGeometry((cols, cols, rows), (d_col, d_col, d_row),
                              (sx, sy, sz - (rows - 1) * d_row))

    frame_ms = _float(rinfo, "ActualFrameDuration")
    collimator = str(_get(dinfo0, "CollimatorGridName") or "").strip()
    ctype = str(_get(dinfo0, "CollimatorType") or "").strip().upper()
    if ctype and ctype not in ("PARA", "PARALLEL"):
        raise InputError(f"{where}: {_tag('CollimatorType')} {ctype!r}: only parallel-hole "
                         "collimators (PARA) are supported")
    return ProjectionBed(
        path=path,
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
        series_description=str(ds.get("SeriesDescription", "") or ""),
        counts=counts, windows=windows, selection=sel, angles_deg=angles, radii_mm=radii,
        pixel_spacing_mm=(d_row, d_col), matrix=(rows, cols), geometry=geometry,
        manufacturer=manufacturer,
        model_name=str(ds.get("ManufacturerModelName", "") or "").strip(),
        collimator=collimator, collimator_type=ctype, n_detectors=len(detectors),
        time_per_view_s=None if not frame_ms or frame_ms <= 0 else frame_ms / 1000.0,
        rotation_direction=direction, table_height_mm=table_height,
        table_traverse_mm=_float(rinfo, "TableTraverse"),
        acquisition_datetime=_parse_dt(ds.get("AcquisitionDate"), ds.get("AcquisitionTime")),
        series_datetime=_parse_dt(ds.get("SeriesDate"), ds.get("SeriesTime")),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "") or "") or None,
        nuclide=header_nuclide,
        patient_id=str(ds.get("PatientID", "") or ""),
        notes=tuple(notes),
    )


# ----------------------------------------------------------------------------------- public
def _files_of(source: Any) -> list[Path]:
    from dosimetry.io.dicom import SeriesInfo, scan_dicom_folder

    if isinstance(source, SeriesInfo):
        return [Path(f) for f in source.files]
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if not p.exists():
            raise InputError(f"{p}: not found")
        if p.is_file():
            return [p]
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unreadable files are listed in scan.skipped
            scan = scan_dicom_folder(p)
        raw = [s for s in scan.series if s.modality == "NM" and s.is_reconstructed is False]
        if not raw:
            nm = [s for s in scan.series if s.modality == "NM"]
            extra = f" ({len(nm)} reconstructed/other NM series)" if nm else ""
            raise InputError(f"{p}: no raw NM tomographic projections found{extra}")
        return [Path(f) for s in raw for f in s.files]
    files: list[Path] = []
    for item in source:
        files.extend(_files_of(item))
    if not files:
        raise InputError("no projection files given")
    return files


def read_projections(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | Any,
    *,
    nuclide: str | None = None,
    photopeak_kev: float | None = None,
    allow_mixed_patients: bool = False,
) -> ProjectionSet:
    """Read the raw SPECT projections of one acquisition (one file per bed position).

    Parameters
    ----------
    source : path, sequence of paths, SeriesInfo or sequence of SeriesInfo
        A projection file, a folder (every raw NM tomographic series under it is a bed), or the
        files / series of the beds.
    nuclide : str, optional
        Overrides the header's nuclide for choosing the photopeak window.
    photopeak_kev : float, optional
        Photopeak energy [keV]; overrides the nuclide's principal line.
    allow_mixed_patients : bool
        Accept beds of different PatientIDs (never wanted for one acquisition).

    Returns
    -------
    ProjectionSet
        Beds sorted by increasing z.

    Raises
    ------
    InputError
        Unreadable or non-tomographic files, missing energy windows or geometry tags, mixed
        patients, beds that disagree on windows, matrix or pixel size. Messages name the file,
        the tag and the value.
    GeometryError
        Beds with different frames of reference or orientations.
    """
    from dosimetry.study.ingest import pseudonymise

    files = sorted({Path(f).resolve() for f in _files_of(source)})
    beds = [_read_bed(f, photopeak_kev=photopeak_kev, nuclide=nuclide) for f in files]
    pids = sorted({b.patient_id for b in beds})
    if len(pids) > 1 and not allow_mixed_patients:
        listing = ", ".join(f"{b.path.name}: {pseudonymise(b.patient_id)}" for b in beds)
        raise InputError(f"projections of {len(pids)} patients given together ({listing}, as "
                         "pseudonyms of PatientID (0010,0020)); give the beds of one acquisition")
    ref = beds[0]
    for b in beds[1:]:
        if b.matrix != ref.matrix or not np.allclose(b.pixel_spacing_mm, ref.pixel_spacing_mm,
                                                     rtol=1e-4):
            raise InputError(f"{b.path}: {b.matrix[0]}×{b.matrix[1]} pixels of "
                             f"{b.pixel_spacing_mm} mm, {ref.path.name} has {ref.matrix} of "
                             f"{ref.pixel_spacing_mm} mm; beds of one acquisition must match")
        if [(w.lower_kev, w.upper_kev) for w in b.windows] != \
                [(w.lower_kev, w.upper_kev) for w in ref.windows] or \
                b.selection.photopeak != ref.selection.photopeak:
            raise InputError(f"{b.path}: energy windows "
                             f"{', '.join(w.describe() for w in b.windows)} differ from those of "
                             f"{ref.path.name} ({', '.join(w.describe() for w in ref.windows)})")
        if (b.frame_of_reference_uid and ref.frame_of_reference_uid
                and b.frame_of_reference_uid != ref.frame_of_reference_uid):
            raise GeometryError(f"{b.path}: FrameOfReferenceUID (0020,0052) "
                                f"{b.frame_of_reference_uid} differs from {ref.path.name}'s "
                                f"{ref.frame_of_reference_uid}; beds of one acquisition share it")
        if not np.allclose(b.geometry.origin_mm[:2], ref.geometry.origin_mm[:2], atol=1.0):
            raise GeometryError(f"{b.path}: transaxial position {b.geometry.origin_mm[:2]} mm "
                                f"differs from {ref.path.name}'s {ref.geometry.origin_mm[:2]} mm "
                                "by more than 1 mm; beds cannot be stitched")
    z_centres = [b.bed_centre_z_mm for b in beds]
    if len(set(np.round(z_centres, 1))) != len(beds):
        raise InputError(f"{len(beds)} projection files at bed positions "
                         f"{', '.join(f'{z:.1f}' for z in z_centres)} mm: two are at the same "
                         "position (the same bed twice, or two acquisitions)")
    beds.sort(key=lambda b: b.bed_centre_z_mm)
    nuclides = {b.nuclide for b in beds if b.nuclide}
    nuc = nuclide or (nuclides.pop() if len(nuclides) == 1 else None) or ref.selection.nuclide
    notes = [n for b in beds for n in b.notes]
    return ProjectionSet(beds=tuple(beds), selection=ref.selection, nuclide=nuc,
                         frame_of_reference_uid=ref.frame_of_reference_uid,
                         patient_id=ref.patient_id, notes=tuple(dict.fromkeys(notes)))
