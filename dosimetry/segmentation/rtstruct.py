"""DICOM RT Structure Sets: reading contours and rasterising them onto an image grid.

An RTSTRUCT (PS3.3 A.19) holds, per ROI, closed planar polygons in patient coordinates (mm,
LPS): ``ROIContourSequence[i].ContourSequence[j].ContourData`` = x₁ y₁ z₁ x₂ y₂ z₂ …. The names
are in ``StructureSetROISequence`` (``ROIName`` by ``ROINumber``) and the type in
``RTROIObservationsSequence`` (``RTROIInterpretedType``: ORGAN, GTV, PTV, EXTERNAL …).

Rasterisation (:func:`rasterise_roi`)
-------------------------------------
All contours of an ROI that lie on one plane are filled together by the **even–odd rule**: a
voxel centre is inside when a ray from it crosses the polygons an odd number of times. A contour
inside another is thus a hole, two separate contours are two islands, and an island inside a hole
is filled again — what treatment-planning systems do with the "holes as inner contours"
convention.

* When the contour planes are slices of the target grid (normal parallel to the grid's third
  direction, each plane within 1 % of a slice spacing from a slice centre), every contour is
  filled straight into its slice; a voxel is inside when its centre is.
* Otherwise (oblique planes, planes between slices, a grid coarser or finer along the normal)
  the contours are filled on an auxiliary grid whose slices are the contour planes (in-plane
  spacing half the target's finest, at most 1 mm); each plane's mask becomes a signed distance
  map, which is interpolated linearly onto the target grid (shape-based interpolation: between
  two contour planes the boundary moves smoothly from one contour to the next), and a target
  voxel is inside where the interpolated distance is negative. The first and last contours
  stand for slabs half a contour spacing thick on either side of their plane.

:func:`contour_volume_ml` gives the volume the contours themselves describe (shoelace polygon
areas, holes subtracted by their nesting depth, times the contour spacing), which the
rasterised volumes are checked against.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from dosimetry.errors import GeometryError, InputError
from dosimetry.segmentation.labelmap import LabelEntry, LabelMap, LabelTable, label_image
from dosimetry.segmentation.names import StructureKind, guess_kind, standard_name

RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"

#: A contour plane within this fraction of a slice spacing from a slice centre is on that slice.
PLANE_TOLERANCE = 0.01
#: Normals whose dot product exceeds this are parallel.
PARALLEL_COS = 1.0 - 1e-4


class RTStructWarning(UserWarning):
    """Something in an RTSTRUCT was left out or interpreted (said in the message)."""


@dataclass(frozen=True)
class Roi:
    """One ROI: its number, name as written, our standard name, kind and closed contours.

    ``contours`` holds (N, 3) float64 arrays of points [mm, patient LPS], one per closed planar
    contour; ``interpreted_type`` is RTROIInterpretedType (may be empty).
    """

    number: int
    name: str
    standard_name: str
    kind: StructureKind
    interpreted_type: str
    contours: tuple[np.ndarray, ...]

    @property
    def n_points(self) -> int:
        """Total number of contour points."""
        return int(sum(c.shape[0] for c in self.contours))


@dataclass(frozen=True)
class StructureSet:
    """What :func:`read_rtstruct` found in a file."""

    path: Path
    label: str
    frame_of_reference_uid: str | None
    referenced_series_uid: str | None
    rois: tuple[Roi, ...]
    warnings: tuple[str, ...] = ()

    @property
    def roi_names(self) -> tuple[str, ...]:
        """ROI names as written in the file."""
        return tuple(r.name for r in self.rois)

    def roi(self, name: str) -> Roi:
        """The ROI called ``name`` (as written, or our standard name); :class:`InputError`
        listing the ROIs when absent."""
        for r in self.rois:
            if r.name == name:
                return r
        for r in self.rois:
            if r.standard_name == name or r.name.lower() == name.lower():
                return r
        raise InputError(f"{self.path}: no ROI {name!r}; the structure set has "
                         f"{', '.join(repr(n) for n in self.roi_names)}")


# ================================================================================== reading
def find_rtstruct(path: str | os.PathLike[str]) -> Path:
    """The RTSTRUCT file at ``path`` (a file, or a folder holding exactly one)."""
    from dosimetry.io.dicom import find_object_file

    return find_object_file(path, "RTSTRUCT")


def read_rtstruct(path: str | os.PathLike[str]) -> StructureSet:
    """Read the ROIs and their closed planar contours from an RTSTRUCT file (or folder).

    Contours that are not ``CLOSED_PLANAR`` (POINT, OPEN_PLANAR …), have fewer than three
    points or whose ``ContourData`` length disagrees with ``NumberOfContourPoints`` are left
    out and listed in ``warnings`` (and issued as :class:`RTStructWarning`).

    Raises
    ------
    InputError
        Not a readable DICOM file, not an RTSTRUCT, or no ROI in it.
    """
    p = find_rtstruct(path)
    from dosimetry.io.dicom import read_dataset

    ds = read_dataset(p)
    sop = str(ds.get("SOPClassUID", ""))
    if sop != RTSTRUCT_STORAGE and str(ds.get("Modality", "")).upper() != "RTSTRUCT":
        raise InputError(f"{p}: not an RT Structure Set (SOPClassUID {sop or '-'}, Modality "
                         f"{ds.get('Modality', '-')})")
    names: dict[int, str] = {}
    for_uid = None
    for item in ds.get("StructureSetROISequence", []):
        names[int(item.ROINumber)] = str(item.get("ROIName", f"ROI {item.ROINumber}"))
        for_uid = for_uid or (str(item.ReferencedFrameOfReferenceUID)
                              if "ReferencedFrameOfReferenceUID" in item else None)
    types = {int(o.ReferencedROINumber): str(o.get("RTROIInterpretedType", "") or "")
             for o in ds.get("RTROIObservationsSequence", []) if "ReferencedROINumber" in o}
    ref_series = None
    for fr in ds.get("ReferencedFrameOfReferenceSequence", []):
        for_uid = for_uid or str(fr.get("FrameOfReferenceUID", "")) or None
        for st in fr.get("RTReferencedStudySequence", []):
            for se in st.get("RTReferencedSeriesSequence", []):
                ref_series = ref_series or str(se.get("SeriesInstanceUID", "")) or None
    notes: list[str] = []
    rois: list[Roi] = []
    for rc in ds.get("ROIContourSequence", []):
        num = int(rc.ReferencedROINumber)
        name = names.get(num, f"ROI {num}")
        contours: list[np.ndarray] = []
        skipped: dict[str, int] = {}
        for c in rc.get("ContourSequence", []):
            gtype = str(c.get("ContourGeometricType", "CLOSED_PLANAR")).upper()
            data = np.asarray([float(v) for v in c.get("ContourData", [])], dtype=np.float64)
            n_decl = c.get("NumberOfContourPoints")
            why = None
            if gtype != "CLOSED_PLANAR":
                why = f"{gtype} contour"
            elif data.size % 3 or data.size < 9:
                why = "contour with fewer than 3 points"
            elif n_decl is not None and int(n_decl) * 3 != data.size:
                why = "NumberOfContourPoints disagreeing with ContourData"
            elif not np.all(np.isfinite(data)):
                why = "contour with non-finite coordinates"
            if why is not None:
                skipped[why] = skipped.get(why, 0) + 1
                continue
            contours.append(data.reshape(-1, 3))
        for why, n in skipped.items():
            notes.append(f"{p.name}: ROI {name!r}: left out {n} {why}(s)")
        itype = types.get(num, "")
        rois.append(Roi(num, name, standard_name(name), guess_kind(name, itype), itype,
                        tuple(contours)))
    for n in notes:
        warnings.warn(n, RTStructWarning, stacklevel=2)
    if not rois:
        raise InputError(f"{p}: the structure set holds no ROI contours")
    return StructureSet(p, str(ds.get("StructureSetLabel", "") or ""), for_uid, ref_series,
                        tuple(rois), tuple(notes))


# ================================================================================== geometry
def polygon_area_mm2(points_2d: np.ndarray) -> float:
    """Area [mm²] of a simple polygon (N, 2) by the shoelace formula (absolute value)."""
    x, y = points_2d[:, 0], points_2d[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def contour_normal(points: np.ndarray) -> np.ndarray:
    """Unit normal of a planar polygon (N, 3) by Newell's method (sign follows the winding)."""
    p = points
    q = np.roll(points, -1, axis=0)
    n = np.array([np.sum((p[:, 1] - q[:, 1]) * (p[:, 2] + q[:, 2])),
                  np.sum((p[:, 2] - q[:, 2]) * (p[:, 0] + q[:, 0])),
                  np.sum((p[:, 0] - q[:, 0]) * (p[:, 1] + q[:, 1]))])
    norm = np.linalg.norm(n)
    if norm < 1e-12:
        return np.array([0.0, 0.0, 0.0])
    return n / norm


def _plane_frame(rois: Iterable[Roi], reference: sitk.Image) -> np.ndarray:
    """3×3 orthonormal frame (columns u, v, n) with n the contours' common plane normal.

    u and v are the grid's row and column axes projected onto the contour plane (exactly them
    when the planes are the grid's slices).
    """
    d = np.asarray(reference.GetDirection(), dtype=float).reshape(3, 3)
    normals = [contour_normal(c) for r in rois for c in r.contours]
    normals = [n for n in normals if np.linalg.norm(n) > 0]
    if not normals:
        return d
    n0 = normals[0]
    # orient all the same way and average, weighting nothing (contours wind either way)
    acc = np.sum([n if np.dot(n, n0) >= 0 else -n for n in normals], axis=0)
    n = acc / np.linalg.norm(acc)
    for m in normals:
        if abs(float(np.dot(m, n))) < PARALLEL_COS:
            raise GeometryError("RTSTRUCT contours do not lie on parallel planes (normals "
                                f"{np.round(n, 4)} and {np.round(m, 4)}); cannot rasterise")
    u = d[:, 0] - np.dot(d[:, 0], n) * n
    if np.linalg.norm(u) < 1e-6:
        u = d[:, 1] - np.dot(d[:, 1], n) * n
    u /= np.linalg.norm(u)
    v = np.cross(n, u)
    return np.stack([u, v, n], axis=1)


def fill_polygons(polygons: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Even–odd fill of polygons given in continuous pixel index (x = column, y = row).

    Parameters
    ----------
    polygons : sequence of (N, 2) float arrays
        Vertices (x, y) in pixel-index units; pixel (i, j) has its centre at x = i, y = j.
    shape : (rows, cols)

    Returns
    -------
    (rows, cols) bool ndarray
        True where the pixel centre is inside by the even–odd rule over all polygons together.

    Notes
    -----
    Scan-line algorithm: each edge crosses the rows whose centre line ``y = j`` lies in its
    half-open y-range ``[min, max)`` (so a vertex on a row is counted once and horizontal edges
    never); a crossing at ``x`` toggles every pixel with centre ``i > x``. The parity of the
    toggles, accumulated along the row, is the even–odd inside test.
    """
    rows, cols = shape
    toggles = np.zeros((rows, cols + 1), dtype=np.int32)
    for poly in polygons:
        if poly.shape[0] < 3:
            continue
        x0, y0 = poly[:, 0], poly[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        ylo, yhi = np.minimum(y0, y1), np.maximum(y0, y1)
        j0 = np.clip(np.ceil(ylo), 0, rows).astype(np.int64)
        j1 = np.clip(np.ceil(yhi), 0, rows).astype(np.int64)  # exclusive
        n = j1 - j0
        keep = n > 0
        if not keep.any():
            continue
        e = np.repeat(np.flatnonzero(keep), n[keep])
        start = np.repeat(j0[keep], n[keep])
        offs = np.arange(e.size) - np.repeat(np.cumsum(n[keep]) - n[keep], n[keep])
        j = start + offs
        xc = x0[e] + (j - y0[e]) * (x1[e] - x0[e]) / (y1[e] - y0[e])
        k = np.clip(np.floor(xc).astype(np.int64) + 1, 0, cols)
        np.add.at(toggles, (j, k), 1)
    return (np.cumsum(toggles[:, :cols], axis=1) & 1).astype(bool)


def _nesting_signs(polys2d: list[np.ndarray]) -> list[int]:
    """+1 for contours at even nesting depth (islands), −1 at odd depth (holes)."""
    signs = []
    for i, p in enumerate(polys2d):
        depth = 0
        pt = p[0]
        for k, q in enumerate(polys2d):
            if k != i and _point_in_polygon(pt, q):
                depth += 1
        signs.append(-1 if depth % 2 else 1)
    return signs


def _point_in_polygon(pt: np.ndarray, poly: np.ndarray) -> bool:
    x, y = pt
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    cross = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xc = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return bool(np.sum(cross & (xc > x)) % 2)


def _planes(roi: Roi, frame: np.ndarray) -> dict[float, list[np.ndarray]]:
    """Contours in plane coordinates (u, v) grouped by plane offset along n (mm, 1 µm)."""
    out: dict[float, list[np.ndarray]] = {}
    for c in roi.contours:
        local = c @ frame  # (N, 3): u, v, n
        d = round(float(np.mean(local[:, 2])), 2)
        out.setdefault(d, []).append(local[:, :2])
    return out


def contour_spacing_mm(rois: Iterable[Roi], frame: np.ndarray | None = None) -> float | None:
    """Spacing [mm] of the contour planes: the median gap between distinct planes (planes
    closer than 0.05 mm are one plane); None for a single plane."""
    f = np.eye(3) if frame is None else frame
    ds = sorted({round(d, 2) for r in rois for d in _planes(r, f)})
    gaps = np.diff(ds)
    gaps = gaps[gaps > 0.05]
    return float(np.median(gaps)) if gaps.size else None


def contour_volume_ml(roi: Roi, spacing_mm: float | None = None) -> float:
    """Volume [mL] the contours describe: Σ over planes of the even–odd polygon area × spacing.

    Each contour's area is its shoelace area, counted negative when it lies inside an odd number
    of the plane's other contours (a hole). ``spacing_mm`` defaults to the ROI's own contour
    spacing (:func:`contour_spacing_mm`).
    """
    frame = np.eye(3)
    if roi.contours:
        n = np.mean([contour_normal(c) * np.sign(contour_normal(c) @ contour_normal(
            roi.contours[0]) or 1.0) for c in roi.contours], axis=0)
        if np.linalg.norm(n) > 0:
            n /= np.linalg.norm(n)
            u = np.cross([0.0, 1.0, 0.0], n) if abs(n[1]) < 0.9 else np.cross([1.0, 0, 0], n)
            u /= np.linalg.norm(u)
            frame = np.stack([u, np.cross(n, u), n], axis=1)
    sp = spacing_mm if spacing_mm is not None else contour_spacing_mm([roi], frame)
    if sp is None:
        raise InputError(f"ROI {roi.name!r}: a single contour plane has no thickness; give the "
                         "slice spacing")
    total = 0.0
    for polys in _planes(roi, frame).values():
        signs = _nesting_signs(polys)
        total += sum(s * polygon_area_mm2(p) for s, p in zip(signs, polys, strict=True))
    return total * sp * 1e-3


# ================================================================================== rasterise
def _on_slices(roi: Roi, reference: sitk.Image) -> list[tuple[int, list[np.ndarray]]] | None:
    """Per contour plane, (slice index, polygons in continuous (x, y) index) when every point of
    every contour lies within :data:`PLANE_TOLERANCE` slice spacings of one slice centre."""
    d = np.asarray(reference.GetDirection(), dtype=float).reshape(3, 3)
    origin = np.asarray(reference.GetOrigin())
    sp = np.asarray(reference.GetSpacing())
    by_slice: dict[int, list[np.ndarray]] = {}
    for c in roi.contours:
        ci = ((c - origin) @ d) / sp  # continuous index (x, y, z)
        k = round(float(np.mean(ci[:, 2])))
        if np.max(np.abs(ci[:, 2] - k)) > PLANE_TOLERANCE:
            return None
        by_slice.setdefault(k, []).append(ci[:, :2])
    return sorted(by_slice.items())


def rasterise_roi(roi: Roi, reference: sitk.Image, *, spacing_mm: float | None = None
                  ) -> np.ndarray:
    """Boolean mask (z, y, x) of ``roi`` on ``reference``'s grid (see the module docstring).

    Parameters
    ----------
    roi : Roi
    reference : SimpleITK.Image
        Target grid (any direction).
    spacing_mm : float, optional
        Contour spacing (slab thickness) for the auxiliary-grid path; default the ROI's own
        plane spacing, or the grid's spacing along the normal for a single-plane ROI.
    """
    shape = tuple(reversed(reference.GetSize()))
    mask = np.zeros(shape, dtype=bool)
    if not roi.contours:
        return mask
    on = _on_slices(roi, reference)
    if on is not None:
        for k, polys in on:
            if 0 <= k < shape[0]:
                mask[k] = fill_polygons(polys, shape[1:])
        return mask
    frame = _plane_frame([roi], reference)
    return _rasterise_via_aux(roi, _planes(roi, frame), frame, reference, spacing_mm)


def _rasterise_via_aux(roi: Roi, planes: dict[float, list[np.ndarray]], frame: np.ndarray,
                       reference: sitk.Image, spacing_mm: float | None) -> np.ndarray:
    offs = sorted(planes)
    ref_d = np.asarray(reference.GetDirection(), dtype=float).reshape(3, 3)
    ref_sp = np.asarray(reference.GetSpacing())
    if spacing_mm is None:
        spacing_mm = contour_spacing_mm([roi], frame)
    if spacing_mm is None:  # one plane: the grid's extent along the normal
        spacing_mm = float(np.abs(ref_d.T @ frame[:, 2]) @ ref_sp)
    dz = float(spacing_mm)
    n_sl = round((offs[-1] - offs[0]) / dz) + 1
    if n_sl > 20000:
        raise GeometryError(f"ROI {roi.name!r}: contour planes span {offs[-1] - offs[0]:.0f} mm "
                            f"at {dz} mm spacing; refusing to build {n_sl} slices")
    pts = np.concatenate([p for ps in planes.values() for p in ps])
    step = min(float(ref_sp.min()) / 2.0, 1.0)
    lo = pts.min(axis=0) - 2 * step
    hi = pts.max(axis=0) + 2 * step
    nu, nv = (np.ceil((hi - lo) / step).astype(int) + 1).tolist()
    masks = np.zeros((n_sl, nv, nu), dtype=bool)
    off_lattice = 0
    for off, polys in planes.items():
        k = round((off - offs[0]) / dz)
        off_lattice += abs((off - offs[0]) / dz - k) > 0.1
        masks[k] ^= fill_polygons([(p - lo) / step for p in polys], (nv, nu))
    if off_lattice:
        warnings.warn(f"ROI {roi.name!r}: {off_lattice} contour plane(s) lie more than 0.1 "
                      f"spacing off the {dz:.3g} mm lattice of the others; each was put on the "
                      "nearest plane", RTStructWarning, stacklevel=3)
    # shape-based interpolation (Raya & Udupa 1990, IEEE TMI 9:32, doi:10.1109/42.52980): the
    # signed distance to each plane's contour [mm, negative inside] is interpolated linearly
    # and the structure is where it is negative, so between two planes the boundary moves
    # smoothly from one contour to the next instead of jumping at the midpoint
    far = float((nu + nv) * step)
    sdf = np.full(masks.shape, far, dtype=np.float32)
    for k in range(n_sl):
        m = masks[k]
        if m.any():
            sdf[k] = ((ndimage.distance_transform_edt(~m) - ndimage.distance_transform_edt(m))
                      * step).astype(np.float32)
    img = sitk.GetImageFromArray(sdf)
    img.SetSpacing((step, step, dz))
    img.SetDirection(frame.ravel().tolist())
    img.SetOrigin((lo[0] * frame[:, 0] + lo[1] * frame[:, 1] + offs[0] * frame[:, 2]).tolist())
    out = sitk.Resample(img, reference, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear,
                        far, sitk.sitkFloat32)
    # within half a contour spacing beyond the first and last plane the interpolator keeps the
    # end plane's values (a contour stands for a slab one spacing thick), and nothing further
    res = sitk.GetArrayViewFromImage(out) < 0.0
    return np.array(res)


def rtstruct_to_labelmap(source: str | os.PathLike[str] | StructureSet, reference: sitk.Image,
                         *, rois: Sequence[str] | None = None,
                         frame_of_reference_uid: str | None = None) -> LabelMap:
    """Rasterise the ROIs of an RTSTRUCT into one label map on ``reference``'s grid.

    Parameters
    ----------
    source : path or StructureSet
        RTSTRUCT file, folder with one, or what :func:`read_rtstruct` returned.
    reference : SimpleITK.Image
        Target grid (usually the CT the contours were drawn on).
    rois : sequence of str, optional
        ROI names to take (as written or standard); default all with contours.
    frame_of_reference_uid : str, optional
        The reference image's FrameOfReferenceUID; a structure set in another frame is refused.

    Returns
    -------
    LabelMap
        Labels 1…n in ROI order, names standardised (:func:`~dosimetry.segmentation.names.
        standard_name`), kinds guessed. Where ROIs overlap, lesions win over organs and smaller
        organs over larger ones (a tumour inside the lung is the tumour, not lung); overlaps and
        ROIs without any voxel on the grid are listed in ``warnings``.

    Raises
    ------
    InputError
        A requested ROI is not there (the message lists the ROIs), or none is left.
    GeometryError
        Frames of reference differ; non-parallel contour planes.
    """
    ss = source if isinstance(source, StructureSet) else read_rtstruct(source)
    if (frame_of_reference_uid and ss.frame_of_reference_uid
            and frame_of_reference_uid != ss.frame_of_reference_uid):
        raise GeometryError(f"{ss.path}: structure set is in frame of reference "
                            f"{ss.frame_of_reference_uid}, the image in {frame_of_reference_uid}")
    chosen = [ss.roi(n) for n in rois] if rois is not None else [r for r in ss.rois
                                                                   if r.contours]
    if not chosen:
        raise InputError(f"{ss.path}: no ROI with closed planar contours (ROIs: "
                         f"{', '.join(ss.roi_names)})")
    notes = list(ss.warnings)
    masks: list[tuple[Roi, np.ndarray]] = []
    for r in chosen:
        m = rasterise_roi(r, reference)
        if not m.any():
            notes.append(f"ROI {r.name!r} has no voxel on the image grid; left out")
            continue
        masks.append((r, m))
    if not masks:
        raise InputError(f"{ss.path}: none of the ROIs {[r.name for r in chosen]} covers a voxel "
                         "of the image grid (wrong image or frame of reference?)")
    return _paint(masks, reference, f"RTSTRUCT {ss.path.name}", notes)


def _paint(masks: list[tuple[Roi, np.ndarray]], reference: sitk.Image, source: str,
           notes: list[str]) -> LabelMap:
    names_used: dict[str, int] = {}
    entries: list[LabelEntry] = []
    for i, (r, _) in enumerate(masks, start=1):
        name = r.standard_name
        if name in names_used:
            names_used[name] += 1
            name = f"{name}_{names_used[name]}"
        else:
            names_used[name] = 1
        entries.append(LabelEntry(i, name, r.kind))
    order = sorted(range(len(masks)), key=lambda i: (masks[i][0].kind is StructureKind.LESION,
                                                     -int(masks[i][1].sum())))
    lab = np.zeros(masks[0][1].shape, dtype=np.uint16)
    for i in order:
        m = masks[i][1]
        taken = lab[m]
        over = taken[taken > 0]
        if over.size:
            for other in np.unique(over):
                notes.append(f"{entries[i].name} overlaps {entries[int(other) - 1].name} in "
                             f"{int(np.sum(over == other))} voxels; {entries[i].name} kept there")
        lab[m] = i + 1
    present = set(np.unique(lab).tolist())
    for e in entries:
        if e.label not in present:
            notes.append(f"{e.name} is wholly covered by other structures")
    return LabelMap(label_image(lab, reference), LabelTable(tuple(entries)), source=source,
                    warnings=tuple(notes))


def voxel_volume_ml(reference: sitk.Image) -> float:
    """Volume of one voxel of ``reference`` [mL]."""
    return math.prod(reference.GetSpacing()) * 1e-3


# ================================================================================== writing
def write_rtstruct(path: str | os.PathLike[str], rois: Sequence[tuple[str, Sequence[np.ndarray]]],
                   *, frame_of_reference_uid: str, patient_id: str = "ANONYMOUS",
                   study_uid: str | None = None, series_uid: str | None = None,
                   interpreted_types: Sequence[str] | None = None,
                   referenced_series_uid: str | None = None) -> Path:
    """Write an RT Structure Set of closed planar contours, atomically.

    Parameters
    ----------
    path : path
        Output file.
    rois : sequence of (name, contours)
        Each contour an (N, 3) array of points [mm, patient LPS] on one plane.
    frame_of_reference_uid : str
        Frame of reference of the image the contours belong to.
    interpreted_types : sequence of str, optional
        RTROIInterpretedType per ROI (default ``ORGAN``).

    Notes
    -----
    Enough of the RT Structure Set IOD (PS3.3 A.19) for readers (ours, pydicom, most
    viewers): patient/study/series identity, StructureSetROISequence, ROIContourSequence with
    CLOSED_PLANAR contours, RTROIObservationsSequence. UIDs default to ones derived from the
    content, so the same input gives the same file. Used for test fixtures and exports.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DSeq
    from pydicom.uid import ExplicitVRLittleEndian

    from dosimetry.io.dicom_write import uid_from_seed

    digest = "|".join(f"{n}:{sum(float(np.sum(c)) for c in cs):.6f}" for n, cs in rois)
    study_uid = study_uid or uid_from_seed("rtstruct-study", digest)
    series_uid = series_uid or uid_from_seed("rtstruct-series", digest)
    sop_uid = uid_from_seed("rtstruct-sop", digest, series_uid)
    types = list(interpreted_types) if interpreted_types is not None else ["ORGAN"] * len(rois)
    if len(types) != len(rois):
        raise InputError(f"write_rtstruct: {len(types)} interpreted types for {len(rois)} ROIs")
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = RTSTRUCT_STORAGE
    fm.MediaStorageSOPInstanceUID = sop_uid
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID = RTSTRUCT_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "RTSTRUCT"
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 200
    ds.Manufacturer = "rptdose"
    ds.StructureSetLabel = "RPTDOSE"
    ds.StructureSetDate = ""
    ds.StructureSetTime = ""
    fr = Dataset()
    fr.FrameOfReferenceUID = frame_of_reference_uid
    if referenced_series_uid:
        st = Dataset()
        st.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management
        st.ReferencedSOPInstanceUID = study_uid
        se = Dataset()
        se.SeriesInstanceUID = referenced_series_uid
        se.ContourImageSequence = DSeq([])
        st.RTReferencedSeriesSequence = DSeq([se])
        fr.RTReferencedStudySequence = DSeq([st])
    ds.ReferencedFrameOfReferenceSequence = DSeq([fr])
    ss_rois, contours_seq, observations = [], [], []
    for i, ((name, cs), itype) in enumerate(zip(rois, types, strict=True), start=1):
        r = Dataset()
        r.ROINumber = i
        r.ReferencedFrameOfReferenceUID = frame_of_reference_uid
        r.ROIName = name
        r.ROIGenerationAlgorithm = "AUTOMATIC"
        ss_rois.append(r)
        rc = Dataset()
        rc.ReferencedROINumber = i
        rc.ROIDisplayColor = [255, 0, 0]
        items = []
        for c in cs:
            pts = np.asarray(c, dtype=np.float64)
            if pts.ndim != 2 or pts.shape[1] != 3 or pts.shape[0] < 3:
                raise InputError(f"write_rtstruct: ROI {name!r}: a contour must be (N ≥ 3, 3) "
                                 f"points, got shape {pts.shape}")
            it = Dataset()
            it.ContourGeometricType = "CLOSED_PLANAR"
            it.NumberOfContourPoints = pts.shape[0]
            it.ContourData = [f"{v:.10g}" for v in pts.ravel()]  # ≤ 16 characters (DS)
            items.append(it)
        rc.ContourSequence = DSeq(items)
        contours_seq.append(rc)
        ob = Dataset()
        ob.ObservationNumber = i
        ob.ReferencedROINumber = i
        ob.RTROIInterpretedType = itype
        ob.ROIInterpreter = ""
        observations.append(ob)
    ds.StructureSetROISequence = DSeq(ss_rois)
    ds.ROIContourSequence = DSeq(contours_seq)
    ds.RTROIObservationsSequence = DSeq(observations)
    out = Path(path)
    from dosimetry.io.atomic import atomic_path

    with atomic_path(out, suffix=".dcm") as tmp:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    return out
