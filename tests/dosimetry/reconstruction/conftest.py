"""Synthetic SPECT acquisitions written as GE- and Siemens-style DICOM, for the reader and the
end-to-end reconstruction tests.

The tag layouts follow what the two vendors write (and what PyTomography reads):

* **GE** (Discovery/Optima, Xeleris export): one detector entry, 60 views over 360°, StartAngle
  and a single RadialPosition in the RotationInformationSequence, the detector's
  ImagePositionPatient holding x, y of the first voxel and z of the top row, CollimatorGridName
  ``MEGP``, windows named ``Lu177_EM``/``sc4_SC``/``sc3_SC`` in that order.
* **Siemens** (Symbia/Intevo): two detectors (DetectorVector 1/2), each with its StartAngle and a
  per-view RadialPosition list (non-circular orbit) in its DetectorInformationSequence item,
  rotation ``CW``, ImagePositionPatient y = 0 with the table height carrying the y offset,
  CollimatorGridName ``ME``, the nuclide in the RadionuclideCodeSequence.

Projection counts come from the reconstruction's own system model
(:func:`dosimetry.reconstruction.forward_project`), so a reconstruction of these files tests the
reader's geometry (angles, radii, row order, object position) against the writer's DICOM
conventions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

from dosimetry.reconstruction.geometry import ObjectGeometry

NM_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
FOR_UID = "1.2.826.0.1.3680043.8.498.77001"
STUDY_UID = "1.2.826.0.1.3680043.8.498.77002"

#: Lu-177 windows as the GE export of the reference data writes them (name, lower, upper keV).
GE_WINDOWS = (("Lu177_EM", 187.2, 228.8), ("sc4_SC", 229.63, 251.16), ("sc3_SC", 166.89, 186.31))
SIEMENS_WINDOWS = (("EM", 187.56, 229.24), ("SC1", 166.72, 187.56), ("SC2", 229.24, 250.08))


@dataclass(frozen=True)
class Acquisition:
    """A synthetic acquisition: vendor layout, object grid, views, windows."""

    vendor: str  # "GE" or "SIEMENS"
    geometry: ObjectGeometry
    n_views: int = 60
    time_per_view_s: float = 20.0
    radius_mm: float = 200.0
    collimator: str = "MEGP"
    patient_id: str = "SYNTH-1"
    series_uid: str = "1.2.826.0.1.3680043.8.498.77010"
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "TOMO", "EMISSION")
    windows: tuple[tuple[str, float, float], ...] = GE_WINDOWS
    frame_of_reference_uid: str = FOR_UID
    extra: dict = field(default_factory=dict)

    @property
    def n_detectors(self) -> int:
        return 2 if self.vendor == "SIEMENS" else 1

    def views(self) -> list[tuple[int, int, float, float]]:
        """(detector, view, gantry angle [deg], radius [mm]) in file order."""
        out = []
        step = 360.0 / self.n_views
        if self.vendor == "SIEMENS":
            per = self.n_views // 2
            for d, start in ((1, 0.0), (2, 180.0)):
                for v in range(1, per + 1):
                    a = (start - step * (v - 1)) % 360.0  # CW
                    r = self.radius_mm + 15.0 * abs(np.sin(np.radians(a)))  # body contour
                    out.append((d, v, a, float(r)))
        else:
            for v in range(1, self.n_views + 1):
                out.append((1, v, (180.0 + step * (v - 1)) % 360.0, self.radius_mm))  # CC
        return out


def detector_angles(acq: Acquisition) -> np.ndarray:
    return np.array([(a + 180.0) % 360.0 for _, _, a, _ in acq.views()])


def view_radii(acq: Acquisition) -> np.ndarray:
    return np.array([r for *_, r in acq.views()])


def write_projections(path: Path, acq: Acquisition, window_counts: list[np.ndarray]) -> Path:
    """Write ``window_counts`` (one (V, R, C) array per window of ``acq.windows``, views in
    :meth:`Acquisition.views` order, row i at object slice i) as an NM TOMO file."""
    g = acq.geometry
    cols, _, rows = g.size
    d_col, _, d_row = g.spacing_mm
    x0, y0, z0 = g.origin_mm
    views = acq.views()
    frames, ewv, dv, rv, avv = [], [], [], [], []
    for w, counts in enumerate(window_counts):
        for i, (d, v, _, _) in enumerate(views):
            frames.append(np.rint(counts[i][::-1, :]).astype(np.uint16))
            ewv.append(w + 1)
            dv.append(d)
            rv.append(1)
            avv.append(v)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = NM_STORAGE
    meta.MediaStorageSOPInstanceUID = acq.series_uid + ".1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = NM_STORAGE
    ds.SOPInstanceUID = acq.series_uid + ".1"
    ds.Modality = "NM"
    ds.ImageType = list(acq.image_type)
    ds.PatientID = acq.patient_id
    ds.PatientName = "Synthetic^Patient"
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = acq.series_uid
    ds.SeriesNumber = 3
    ds.SeriesDescription = f"synthetic {acq.vendor} tomo"
    ds.FrameOfReferenceUID = acq.frame_of_reference_uid
    ds.AcquisitionDate = "20240501"
    ds.AcquisitionTime = "101500"
    ds.SeriesDate = "20240501"
    ds.SeriesTime = "101500"
    ds.Manufacturer = "GE MEDICAL SYSTEMS" if acq.vendor == "GE" else "SIEMENS NM"
    ds.ManufacturerModelName = "Tandem_Discovery_670_Pro" if acq.vendor == "GE" else "Symbia T6"
    ds.Rows, ds.Columns = rows, cols
    ds.NumberOfFrames = len(frames)
    ds.PixelSpacing = [f"{d_row:.6f}", f"{d_col:.6f}"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.FrameIncrementPointer = [0x00540010, 0x00540020, 0x00540050, 0x00540090]
    ds.EnergyWindowVector = ewv
    ds.NumberOfEnergyWindows = len(acq.windows)
    ewis = []
    for name, lo, hi in acq.windows:
        item = Dataset()
        rng = Dataset()
        rng.EnergyWindowLowerLimit = f"{lo:g}"
        rng.EnergyWindowUpperLimit = f"{hi:g}"
        item.EnergyWindowRangeSequence = DicomSequence([rng])
        item.EnergyWindowName = name
        ewis.append(item)
    ds.EnergyWindowInformationSequence = DicomSequence(ewis)
    ds.DetectorVector = dv
    ds.NumberOfDetectors = acq.n_detectors
    ds.RotationVector = rv
    ds.NumberOfRotations = 1
    ds.AngularViewVector = avv
    step = 360.0 / acq.n_views
    if acq.vendor == "SIEMENS":
        half = (cols - 1) / 2.0 * d_col
        ipp = [x0 + half, 0.0, z0 + (rows - 1) * d_row]
        table_height = -(y0 + half)
    else:
        ipp = [x0, y0, z0 + (rows - 1) * d_row]
        table_height = 143.4
    dets = []
    for d in range(1, acq.n_detectors + 1):
        item = Dataset()
        item.ImagePositionPatient = [f"{v:.4f}" for v in ipp]
        item.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        item.CollimatorGridName = acq.collimator
        item.CollimatorType = "PARA"
        if acq.vendor == "SIEMENS":
            item.StartAngle = 0.0 if d == 1 else 180.0
            item.RadialPosition = [f"{r:.2f}" for dd, _, _, r in views if dd == d]
        dets.append(item)
    ds.DetectorInformationSequence = DicomSequence(dets)
    rot = Dataset()
    rot.TableHeight = f"{table_height:.3f}"
    rot.TableTraverse = "1500"
    rot.RotationDirection = "CW" if acq.vendor == "SIEMENS" else "CC"
    rot.ScanArc = 360 if acq.vendor == "GE" else 180
    rot.AngularStep = f"{step:g}"
    rot.ActualFrameDuration = round(acq.time_per_view_s * 1000)
    rot.NumberOfFramesInRotation = acq.n_views // acq.n_detectors
    if acq.vendor == "GE":
        rot.StartAngle = 180.0
        rot.RadialPosition = f"{acq.radius_mm:.1f}"
    ds.RotationInformationSequence = DicomSequence([rot])
    rp = Dataset()
    if acq.vendor == "SIEMENS":
        code = Dataset()
        code.CodeValue = "C-145A4"
        code.CodingSchemeDesignator = "SRT"
        code.CodeMeaning = "^177^Lutetium"
        rp.RadionuclideCodeSequence = DicomSequence([code])
    ds.RadiopharmaceuticalInformationSequence = DicomSequence([rp])
    for k, v in acq.extra.items():
        if v is None:
            if k in ds:
                delattr(ds, k)
        else:
            setattr(ds, k, v)
    ds.PixelData = np.stack(frames).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def grid(size_xy: int = 48, slices: int = 24, spacing: float = 4.4196,
         axis_xy: tuple[float, float] = (6.0, -20.0), z0: float = -50.0) -> ObjectGeometry:
    """An object grid with its rotation axis at ``axis_xy``."""
    half = (size_xy - 1) / 2.0 * spacing
    return ObjectGeometry((size_xy, size_xy, slices), (spacing, spacing, spacing),
                          (axis_xy[0] - half, axis_xy[1] - half, z0))


def ball(geom: ObjectGeometry, centre_mm: tuple[float, float, float], radius_mm: float,
         value: float = 1.0) -> np.ndarray:
    """(z, y, x) array: ``value`` inside a ball (voxel centres), 0 elsewhere."""
    nz, ny, nx = geom.shape_zyx
    dx, dy, dz = geom.spacing_mm
    z = geom.origin_mm[2] + dz * np.arange(nz)
    y = geom.origin_mm[1] + dy * np.arange(ny)
    x = geom.origin_mm[0] + dx * np.arange(nx)
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    r2 = (xx - centre_mm[0]) ** 2 + (yy - centre_mm[1]) ** 2 + (zz - centre_mm[2]) ** 2
    return np.where(r2 <= radius_mm ** 2, value, 0.0).astype(np.float32)


def cylinder_ct(geom: ObjectGeometry, axis_xy: tuple[float, float], radius_mm: float,
                z_range: tuple[float, float], spacing=(2.0, 2.0, 3.0)) -> sitk.Image:
    """A CT (HU) of a water cylinder (0 HU) in air along z, on a finer grid covering ``geom``."""
    lo = np.array(geom.origin_mm) - 10.0
    hi = np.array(geom.origin_mm) + np.array(geom.spacing_mm) * (np.array(geom.size) - 1) + 10.0
    lo[2], hi[2] = z_range
    size = [int(np.ceil((h - low) / s)) + 1 for low, h, s in zip(lo, hi, spacing, strict=True)]
    x = lo[0] + spacing[0] * np.arange(size[0])
    y = lo[1] + spacing[1] * np.arange(size[1])
    yy, xx = np.meshgrid(y, x, indexing="ij")
    inside = (xx - axis_xy[0]) ** 2 + (yy - axis_xy[1]) ** 2 <= radius_mm ** 2
    sl = np.where(inside, 0.0, -1000.0).astype(np.float32)
    arr = np.repeat(sl[None], size[2], axis=0)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(tuple(float(v) for v in lo))
    return img


@pytest.fixture(scope="session")
def pyt():
    """PyTomography imported once (slow import) through our clean session."""
    from dosimetry.reconstruction.system import pytomography_session

    with pytomography_session("cpu") as pt:
        yield pt


def read_back(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path)
