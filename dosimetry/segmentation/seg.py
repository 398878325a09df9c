"""DICOM Segmentation objects (SEG): reading binary/fractional segments onto an image grid, and
a writer for test fixtures and export.

A SEG (PS3.3 A.51, C.8.20) is one multi-frame file. Each frame is one plane of one segment; which
segment and where are per frame in ``PerFrameFunctionalGroupsSequence``:
``SegmentIdentificationSequence[0].ReferencedSegmentNumber`` and
``PlanePositionSequence[0].ImagePositionPatient``; orientation and pixel spacing are usually
shared (``SharedFunctionalGroupsSequence``: ``PlaneOrientationSequence``,
``PixelMeasuresSequence``) and may be per frame. BINARY segmentations store 1 bit per pixel;
FRACTIONAL ones 8 bits scaled to ``MaximumFractionalValue`` (a voxel is in the segment when its
fraction is ≥ 0.5).

:func:`read_seg` places every frame on the SEG's own plane stack (frames are matched to planes
by their position along the normal, never by their order) and resamples each segment onto the
target grid: by nearest neighbour when the target is as fine or finer in every direction (exact
for grids that share voxel faces), otherwise by linear interpolation of the 0/1 mask with a 0.5
threshold, which keeps the volume about unbiased.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dosimetry.errors import GeometryError, InputError
from dosimetry.io.atomic import atomic_path
from dosimetry.io.images import check_allocation
from dosimetry.segmentation.labelmap import LabelEntry, LabelMap, LabelTable, label_image
from dosimetry.segmentation.names import StructureKind, guess_kind, standard_name

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"

#: SNOMED CT codes used in SegmentedPropertyCategory/Type (DICOM CID 7150/7151).
_CAT_TISSUE = ("85756007", "SCT", "Tissue")
_CAT_ANATOMY = ("123037004", "SCT", "Anatomical Structure")
_CAT_ALTERED = ("49755003", "SCT", "Morphologically Altered Structure")
_TYPE_NEOPLASM = ("108369006", "SCT", "Neoplasm")
_TYPE_ORGAN = ("113343008", "SCT", "Organ")


@dataclass(frozen=True)
class Segment:
    """One segment as described in the SEG: number, label, our name and kind."""

    number: int
    label: str
    standard_name: str
    kind: StructureKind


@dataclass(frozen=True)
class SegInfo:
    """The segments of a SEG file and its frame of reference."""

    path: Path
    segments: tuple[Segment, ...]
    frame_of_reference_uid: str | None
    segmentation_type: str


def find_seg(path: str | os.PathLike[str]) -> Path:
    """The SEG file at ``path`` (a file, or a folder holding exactly one)."""
    from dosimetry.io.dicom import find_object_file

    return find_object_file(path, "SEG")


def _segment_kind(item, label: str) -> StructureKind:
    for key in ("SegmentedPropertyCategoryCodeSequence", "SegmentedPropertyTypeCodeSequence"):
        for code in item.get(key, []):
            value = str(code.get("CodeValue", ""))
            meaning = str(code.get("CodeMeaning", ""))
            if value in (_CAT_ALTERED[0], _TYPE_NEOPLASM[0]) or \
                    guess_kind(meaning) is StructureKind.LESION:
                return StructureKind.LESION
    return guess_kind(label)


def _segments(ds, path: Path) -> tuple[Segment, ...]:
    segs = []
    for item in ds.get("SegmentSequence", []):
        num = int(item.SegmentNumber)
        label = str(item.get("SegmentLabel", "") or f"segment_{num}")
        segs.append(Segment(num, label, standard_name(label), _segment_kind(item, label)))
    if not segs:
        raise InputError(f"{path}: SEG has an empty SegmentSequence")
    return tuple(segs)


def _functional(ds, frame_item, seq: str, attr: str):
    """An attribute from a per-frame functional group, else from the shared one."""
    for src in (frame_item, (ds.get("SharedFunctionalGroupsSequence") or [None])[0]):
        if src is None or seq not in src or not src.get(seq):
            continue
        item = src.get(seq)[0]
        if attr in item:
            return item.get(attr)
    return None


def read_seg_info(path: str | os.PathLike[str]) -> SegInfo:
    """Segments of a SEG (without pixel data)."""
    import pydicom

    p = find_seg(path)
    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
    except Exception as exc:  # damaged files raise many kinds
        raise InputError(f"{p}: not a readable DICOM file ({type(exc).__name__}: {exc})"
                         ) from None
    _check_is_seg(ds, p)
    return SegInfo(p, _segments(ds, p), str(ds.get("FrameOfReferenceUID", "")) or None,
                   str(ds.get("SegmentationType", "BINARY")).upper())


def _check_is_seg(ds, p: Path) -> None:
    sop = str(ds.get("SOPClassUID", ""))
    if sop != SEG_STORAGE and str(ds.get("Modality", "")).upper() != "SEG":
        raise InputError(f"{p}: not a DICOM Segmentation (SOPClassUID {sop or '-'}, Modality "
                         f"{ds.get('Modality', '-')})")


def read_seg(path: str | os.PathLike[str], reference: sitk.Image | None = None, *,
             frame_of_reference_uid: str | None = None) -> LabelMap:
    """Read a DICOM SEG into a label map on ``reference``'s grid (or the SEG's own planes).

    Parameters
    ----------
    path : path
        SEG file or a folder holding one.
    reference : SimpleITK.Image, optional
        Target grid; default the SEG's own plane stack.
    frame_of_reference_uid : str, optional
        The reference image's FrameOfReferenceUID; a SEG in another frame is refused.

    Returns
    -------
    LabelMap
        Label *i* = the *i*-th segment in SegmentSequence order, names standardised. Where
        segments overlap, lesions win over organs and smaller segments over larger ones (listed
        in ``warnings``).

    Raises
    ------
    InputError
        Not a SEG, frames without segment number or position, unsupported pixel layout.
    GeometryError
        Frames that do not form parallel planes with one in-plane grid; another frame of
        reference.
    """
    p = find_seg(path)
    from dosimetry.io.dicom import read_dataset

    ds = read_dataset(p)
    _check_is_seg(ds, p)
    segments = _segments(ds, p)
    for_uid = str(ds.get("FrameOfReferenceUID", "")) or None
    if frame_of_reference_uid and for_uid and frame_of_reference_uid != for_uid:
        raise GeometryError(f"{p}: SEG is in frame of reference {for_uid}, the image in "
                            f"{frame_of_reference_uid}")
    rows, cols = int(ds.Rows), int(ds.Columns)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    check_allocation(rows * cols * n_frames, 1, str(p))
    seg_type = str(ds.get("SegmentationType", "BINARY")).upper()
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != n_frames:
        have = 0 if per_frame is None else len(per_frame)
        raise InputError(f"{p}: PerFrameFunctionalGroupsSequence has {have} items for "
                         f"{n_frames} frames")
    try:
        pix = np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom: missing handler, bad length …
        raise InputError(f"{p}: cannot decode SEG pixel data ({type(exc).__name__}: {exc})"
                         ) from None
    pix = pix.reshape(n_frames, rows, cols)
    if seg_type == "FRACTIONAL":
        vmax = float(ds.get("MaximumFractionalValue", 255) or 255)
        pix = pix.astype(np.float32) >= 0.5 * vmax
    else:
        pix = pix.astype(bool)

    # ---- geometry per frame
    orient, spacing, pos, seg_no = [], [], [], []
    for i, item in enumerate(per_frame):
        o = _functional(ds, item, "PlaneOrientationSequence", "ImageOrientationPatient")
        s = _functional(ds, item, "PixelMeasuresSequence", "PixelSpacing")
        ipp = _functional(ds, item, "PlanePositionSequence", "ImagePositionPatient")
        sid = _functional(ds, item, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
        if o is None or s is None or ipp is None or sid is None:
            raise InputError(f"{p}: frame {i + 1} lacks its orientation, pixel spacing, position "
                             "or segment number")
        orient.append([float(v) for v in o])
        spacing.append([float(v) for v in s])
        pos.append([float(v) for v in ipp])
        seg_no.append(int(sid))
    orient_a = np.asarray(orient)
    if not np.allclose(orient_a, orient_a[0], atol=1e-4) or \
            not np.allclose(spacing, spacing[0], atol=1e-4):
        raise GeometryError(f"{p}: frames have different orientations or pixel spacings; only "
                            "stacks of parallel planes on one in-plane grid are supported")
    row_dir, col_dir = orient_a[0, :3], orient_a[0, 3:]
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)
    dy, dx = spacing[0]  # PixelSpacing = (between rows, between columns)
    pos_a = np.asarray(pos)
    d = pos_a @ normal
    base = pos_a[int(np.argmin(d))]
    inplane = (pos_a - base) - np.outer((pos_a - base) @ normal, normal)
    if np.abs(inplane).max() > 0.01 * min(dx, dy):
        raise GeometryError(f"{p}: frame positions are not on one stack (in-plane offsets up to "
                            f"{np.abs(inplane).max():.3f} mm)")
    sbs = _functional(ds, per_frame[0], "PixelMeasuresSequence", "SpacingBetweenSlices")
    thick = _functional(ds, per_frame[0], "PixelMeasuresSequence", "SliceThickness")
    uniq = np.unique(np.round(d - d.min(), 3))
    gaps = np.diff(uniq)
    if sbs is not None and float(sbs) > 0:
        dz = float(sbs)
    elif gaps.size:
        dz = float(gaps.min())
    elif thick is not None and float(thick) > 0:
        dz = float(thick)
    else:
        dz = 1.0
    k = np.rint((d - d.min()) / dz).astype(int)
    if np.any(np.abs((d - d.min()) / dz - k) > 0.05):
        raise GeometryError(f"{p}: frame positions are not on a regular {dz:g} mm stack")
    nk = int(k.max()) + 1
    check_allocation(rows * cols * nk, 1, f"{p} plane stack")

    native = sitk.Image([cols, rows, nk], sitk.sitkUInt8)
    native.SetSpacing((dx, dy, dz))
    native.SetDirection(np.stack([row_dir, col_dir, normal], axis=1).ravel().tolist())
    native.SetOrigin(base.tolist())
    target = reference if reference is not None else native
    same_grid = reference is None or _same_grid(native, reference)
    # onto a grid at least as fine in every direction nearest neighbour is exact; onto a coarser
    # or rotated one the 0/1 mask is interpolated linearly and thresholded at 0.5
    finer = (not same_grid and np.allclose(native.GetDirection(), target.GetDirection(),
                                           atol=1e-6)
             and all(t <= n + 1e-6 for t, n in zip(target.GetSpacing(), native.GetSpacing(),
                                                   strict=True)))

    masks: list[tuple[Segment, np.ndarray]] = []
    notes: list[str] = []
    known = {s.number for s in segments}
    unknown = sorted(set(seg_no) - known)
    if unknown:
        notes.append(f"{p.name}: frames refer to segment number(s) {unknown} that "
                     "SegmentSequence does not describe; left out")
    seg_no_a = np.asarray(seg_no)
    for seg in segments:
        frames = np.flatnonzero(seg_no_a == seg.number)
        vol = np.zeros((nk, rows, cols), dtype=np.uint8)
        for f in frames:
            vol[k[f]] |= pix[f]
        img = sitk.GetImageFromArray(vol)
        img.CopyInformation(native)
        if same_grid:
            m = sitk.GetArrayFromImage(img).astype(bool)
        elif finer:
            r = sitk.Resample(img, target, sitk.Transform(3, sitk.sitkIdentity),
                              sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
            m = sitk.GetArrayViewFromImage(r) > 0
        else:
            r = sitk.Resample(sitk.Cast(img, sitk.sitkFloat32), target,
                              sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear, 0.0,
                              sitk.sitkFloat32)
            m = sitk.GetArrayViewFromImage(r) >= 0.5
        if not m.any():
            notes.append(f"segment {seg.label!r} has no voxel on the image grid; left out")
            continue
        masks.append((seg, np.asarray(m)))
    if not masks:
        raise InputError(f"{p}: no segment covers a voxel of the image grid")
    return _paint_segments(masks, target, f"SEG {p.name}", notes)


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6))


def _paint_segments(masks: list[tuple[Segment, np.ndarray]], reference: sitk.Image,
                    source: str, notes: list[str]) -> LabelMap:
    entries = []
    used: dict[str, int] = {}
    for i, (s, _) in enumerate(masks, start=1):
        name = s.standard_name
        used[name] = used.get(name, 0) + 1
        entries.append(LabelEntry(i, name if used[name] == 1 else f"{name}_{used[name]}",
                                  s.kind))
    order = sorted(range(len(masks)), key=lambda i: (masks[i][0].kind is StructureKind.LESION,
                                                     -int(masks[i][1].sum())))
    lab = np.zeros(masks[0][1].shape, dtype=np.uint16)
    for i in order:
        m = masks[i][1]
        over = lab[m]
        over = over[over > 0]
        for other in np.unique(over):
            notes.append(f"{entries[i].name} overlaps {entries[int(other) - 1].name} in "
                         f"{int(np.sum(over == other))} voxels; {entries[i].name} kept there")
        lab[m] = i + 1
    return LabelMap(label_image(lab, reference), LabelTable(tuple(entries)), source=source,
                    warnings=tuple(notes))


# ================================================================================== writing
def _code(ds_cls, code: tuple[str, str, str]):
    item = ds_cls()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
    return item


def write_seg(labels: LabelMap, path: str | os.PathLike[str], *,
              patient_id: str = "ANONYMOUS", study_uid: str | None = None,
              series_uid: str | None = None, frame_of_reference_uid: str | None = None,
              referenced_series_uid: str | None = None,
              names: Mapping[int, str] | None = None,
              only_nonempty_frames: bool = True,
              frame_order: Sequence[int] | None = None) -> Path:
    """Write a label map as a BINARY DICOM SEG (one segment per label), atomically.

    Frames are written segment by segment, slice by slice, only where the segment has voxels
    (``only_nonempty_frames``), each with its own ImagePositionPatient; ``frame_order`` may
    permute them (tests use it to check that readers map frames by position, not order).
    UIDs default to ones derived from the content (:func:`~dosimetry.io.dicom_write.
    uid_from_seed`), so the same input gives the same file.

    Returns
    -------
    Path
        ``path``.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.pixels import pack_bits
    from pydicom.sequence import Sequence as DSeq
    from pydicom.uid import ExplicitVRLittleEndian

    from dosimetry.io.dicom_write import uid_from_seed

    img = labels.image
    arr = sitk.GetArrayViewFromImage(img)
    size = img.GetSize()
    sp = img.GetSpacing()
    d = np.asarray(img.GetDirection(), dtype=float).reshape(3, 3)
    digest = f"{size}{sp}{img.GetOrigin()}{int(np.asarray(arr, dtype=np.int64).sum())}"
    study_uid = study_uid or uid_from_seed("seg-study", digest)
    series_uid = series_uid or uid_from_seed("seg-series", digest)
    for_uid = frame_of_reference_uid or uid_from_seed("seg-for", digest)
    sop_uid = uid_from_seed("seg-sop", digest, series_uid)
    names = dict(names) if names is not None else labels.table.names()

    frames: list[tuple[int, int]] = []  # (segment number, slice index)
    entries = [e for e in labels.table if e.label in names]
    for n, e in enumerate(entries, start=1):
        for z in range(size[2]):
            if not only_nonempty_frames or np.any(arr[z] == e.label):
                frames.append((n, z))
    if not frames:
        raise InputError("write_seg: the label map has no labelled voxel")
    if frame_order is not None:
        if sorted(frame_order) != list(range(len(frames))):
            raise InputError(f"write_seg: frame_order must permute 0…{len(frames) - 1}")
        frames = [frames[i] for i in frame_order]

    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = SEG_STORAGE
    fm.MediaStorageSOPInstanceUID = sop_uid
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID = SEG_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "SEG"
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = for_uid
    ds.SeriesNumber = 300
    ds.InstanceNumber = 1
    ds.Manufacturer = "rptdose"
    ds.SeriesDescription = "rptdose segmentation"
    ds.ContentLabel = "RPTDOSE"
    ds.ContentDescription = labels.source[:64]
    ds.ContentCreatorName = ""
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SegmentationType = "BINARY"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 1
    ds.BitsStored = 1
    ds.HighBit = 0
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "00"
    ds.Rows, ds.Columns = size[1], size[0]
    ds.NumberOfFrames = len(frames)
    if referenced_series_uid:
        ref = Dataset()
        ref.SeriesInstanceUID = referenced_series_uid
        ref.ReferencedInstanceSequence = DSeq([])
        ds.ReferencedSeriesSequence = DSeq([ref])

    segs = []
    for n, e in enumerate(entries, start=1):
        s = Dataset()
        s.SegmentNumber = n
        s.SegmentLabel = names[e.label][:64]
        s.SegmentAlgorithmType = "AUTOMATIC"
        s.SegmentAlgorithmName = "rptdose"
        lesion = e.kind is StructureKind.LESION
        s.SegmentedPropertyCategoryCodeSequence = DSeq([_code(
            Dataset, _CAT_ALTERED if lesion else _CAT_ANATOMY)])
        s.SegmentedPropertyTypeCodeSequence = DSeq([_code(
            Dataset, _TYPE_NEOPLASM if lesion else _TYPE_ORGAN)])
        segs.append(s)
    ds.SegmentSequence = DSeq(segs)

    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing = [f"{sp[1]:.6g}", f"{sp[0]:.6g}"]
    pm.SliceThickness = f"{sp[2]:.6g}"
    pm.SpacingBetweenSlices = f"{sp[2]:.6g}"
    shared.PixelMeasuresSequence = DSeq([pm])
    po = Dataset()
    po.ImageOrientationPatient = [f"{v:.8f}" for v in (*d[:, 0], *d[:, 1])]
    shared.PlaneOrientationSequence = DSeq([po])
    ds.SharedFunctionalGroupsSequence = DSeq([shared])

    per = []
    bits = np.zeros((len(frames), size[1], size[0]), dtype=np.uint8)
    for i, (n, z) in enumerate(frames):
        f = Dataset()
        fc = Dataset()
        fc.DimensionIndexValues = [n, z + 1]
        f.FrameContentSequence = DSeq([fc])
        pp = Dataset()
        ipp = img.TransformIndexToPhysicalPoint((0, 0, z))
        pp.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
        f.PlanePositionSequence = DSeq([pp])
        si = Dataset()
        si.ReferencedSegmentNumber = n
        f.SegmentIdentificationSequence = DSeq([si])
        per.append(f)
        bits[i] = arr[z] == entries[n - 1].label
    ds.PerFrameFunctionalGroupsSequence = DSeq(per)
    ds.PixelData = pack_bits(bits.ravel())

    out = Path(path)
    with atomic_path(out, suffix=".dcm") as tmp:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    return out
