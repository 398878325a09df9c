"""The segmentation stage of the pipeline: organs on the reference CT, lesions on the SPECT.

:func:`segment_study` reads the work folder's manifest, segments the organs on the reference
timepoint's CT (the manifest's ``reference_timepoint``, else the first timepoint) with the chosen
backend, detects lesions on that timepoint's SPECT, and writes into ``WORKDIR/segmentation/``:

* ``labels.nii.gz`` — uint16 labels on the reference CT grid: organs 1…n, lesions from
  :data:`LESION_LABEL_BASE` + 1 (101, 102, … as in the digital patients' truth). A lesion inside
  an organ is carved out of it.
* ``labels.json`` — the name table (``[{"label", "name", "kind"}]``, kind organ | lesion).
* ``organs.json`` — per structure: voxels, volume (mL), mass (g, from the CT by the Schneider
  HU→density calibration), mean HU; plus the lesion detection record.
* ``done.json`` — written last (:meth:`~dosimetry.study.workdir.WorkDir.mark_done`) with the
  fingerprint of the inputs; a later call with the same inputs returns the stored result.

Backends: ``builtin`` (our CT U-Net), ``totalsegmentator`` (optional, see
:mod:`~dosimetry.segmentation.totalseg`), ``masks:PATH`` (label image with name table, RTSTRUCT or
SEG; ``masks`` alone takes the manifest's labels or the reference timepoint's labels/RTSTRUCT).

Lesions are detected on the reference SPECT on the CT grid: the registration stage's
``registration/<label>_spect_bq_per_ml.nii.gz`` when it exists, else the timepoint's own SPECT
resampled onto the CT grid (a fallback that is announced). The lesion method is
``LesionOptions.method``: the threshold / region-growing detector
(:mod:`~dosimetry.segmentation.lesions`) by default, or the trained lesion model
(:mod:`~dosimetry.segmentation.lesion_model`), which falls back, announced, to the detector
when its weights are not installed (:func:`find_lesions`).
Imported masks that already hold lesions are used as they are.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dosimetry.errors import InputError, MissingDataError
from dosimetry.io.atomic import atomic_write_text
from dosimetry.io.images import read_image, require_same_grid, write_image
from dosimetry.segmentation.labelmap import (
    LabelEntry,
    LabelMap,
    LabelTable,
    label_image,
    read_label_table,
)
from dosimetry.segmentation.lesions import (
    LesionMethod,
    LesionOptions,
    LesionResult,
    detect_lesions,
)
from dosimetry.segmentation.names import StructureKind
from dosimetry.segmentation.organs import OrganTable, organ_table
from dosimetry.study.workdir import Stage, WorkDir, file_fingerprint, fingerprint

#: Lesion labels start above this value.
LESION_LABEL_BASE = 100
#: Version of this stage's method; part of the fingerprint, so results of an older method are
#: recomputed.
STAGE_VERSION = 2

ProgressFn = Callable[[str, float], None]

FALLBACK_SPECT = "own SPECT resampled to the CT grid (registration has not run)"


class SegmentationFallbackWarning(UserWarning):
    """The stage used a fallback (said in the message)."""


class Backend(StrEnum):
    """Where the organ contours come from."""

    BUILTIN = "builtin"
    TOTALSEGMENTATOR = "totalsegmentator"
    MASKS = "masks"


@dataclass(frozen=True)
class BackendSpec:
    """A parsed ``--backend`` value: the backend and, for masks, the path (None = manifest)."""

    backend: Backend
    path: Path | None = None

    @classmethod
    def parse(cls, text: str) -> BackendSpec:
        """``builtin``, ``totalsegmentator``, ``masks`` or ``masks:PATH``."""
        t = text.strip()
        head, sep, rest = t.partition(":")
        try:
            b = Backend(head.lower())
        except ValueError:
            raise InputError(f"unknown segmentation backend {text!r}; choose builtin, "
                             "totalsegmentator or masks:PATH") from None
        if b is not Backend.MASKS and sep:
            raise InputError(f"backend {text!r}: only masks takes a path (masks:PATH)")
        if b is Backend.MASKS and sep and not rest:
            raise InputError(f"backend {text!r}: give the path after 'masks:'")
        return cls(b, Path(rest).expanduser() if rest else None)

    def __str__(self) -> str:
        return self.backend.value + (f":{self.path}" if self.path is not None else "")


@dataclass(frozen=True)
class SegmentationResult:
    """What :func:`segment_study` produced (or found up to date).

    ``success`` is False only when the stage ran but produced no organ (then ``message`` says
    why); errors raise. ``reused`` is True when the outputs were up to date and not recomputed.
    """

    success: bool
    message: str
    labels_path: Path
    table: LabelTable
    organs: OrganTable
    backend: str
    reference_timepoint: str
    lesion_source: str
    lesions: tuple[dict[str, Any], ...] = ()
    reused: bool = False
    warnings: tuple[str, ...] = ()
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def labels_json(self) -> Path:
        """Path of ``labels.json``."""
        return self.labels_path.parent / "labels.json"

    @property
    def organs_json(self) -> Path:
        """Path of ``organs.json``."""
        return self.labels_path.parent / "organs.json"


def _reference(study) -> str:
    return study.reference_timepoint or study.timepoints[0].label


def _masks_source(spec: BackendSpec, study, tp) -> Path:
    if spec.path is not None:
        return spec.path
    for ref in (study.labels, tp.labels, tp.rtstruct):
        if ref is not None:
            return Path(ref.path)
    raise MissingDataError(
        "backend 'masks' without a path needs labels or an RTSTRUCT in the manifest, and it has "
        "none", missing=[f"masks:PATH, or labels / timepoints[{tp.label}].rtstruct in the "
                         "manifest"])


def _organ_labels(spec: BackendSpec, ct: sitk.Image, study, tp, device: str,
                  report: ProgressFn) -> LabelMap:
    if spec.backend is Backend.BUILTIN:
        from dosimetry.segmentation.builtin import segment_organs

        return segment_organs(ct, device,
                              progress=lambda s, f: report(f"organs: {s}", 0.05 + 0.45 * f)
                              ).labels
    if spec.backend is Backend.TOTALSEGMENTATOR:
        from dosimetry.segmentation.totalseg import segment_totalseg

        return segment_totalseg(ct, device)
    from dosimetry.segmentation.masks import import_masks

    return import_masks(_masks_source(spec, study, tp), ct)


def _spect_on_ct(workdir: WorkDir, study, tp, ct: sitk.Image) -> tuple[sitk.Image, str, Any]:
    """The reference SPECT [Bq/mL] on the CT grid, where it came from, and its fingerprint."""
    reg = workdir.root / Stage.REGISTRATION.value / f"{tp.label}_spect_bq_per_ml.nii.gz"
    if reg.is_file():
        img = read_image(reg)
        require_same_grid(img, ct, str(reg), "reference CT")
        return img, f"registration output {reg.name}", file_fingerprint(reg)
    from dosimetry.segmentation.grid import resample_to
    from dosimetry.study.images import load_spect_bq_per_ml

    spect = load_spect_bq_per_ml(study, tp, workdir.root)
    return (resample_to(spect, ct, smooth=False), FALLBACK_SPECT,
            file_fingerprint(tp.spect.resolve(workdir.root)))


def _lesion_weights_card() -> Path | None:
    """The shipped lesion model's card, or None when its weights are not installed."""
    from dosimetry.segmentation.builtin import WEIGHTS_DIR
    from dosimetry.segmentation.lesion_model import LESION_MODEL

    card = WEIGHTS_DIR / f"{LESION_MODEL}.json"
    return card if card.is_file() else None


def find_lesions(spect: sitk.Image, organs: LabelMap, ct: sitk.Image, options: LesionOptions,
                 device: str = "cpu") -> LesionResult:
    """Lesions on ``spect`` (on ``ct``'s grid) by ``options.method``.

    ``model`` runs the shipped lesion U-Net; without its weights the threshold /
    region-growing detector runs instead and a :class:`SegmentationFallbackWarning` says so
    (also recorded in the result's warnings). Weights that fail their checksum are an error,
    never a silent fallback.

    Parameters
    ----------
    spect : SimpleITK.Image
        Activity concentration [Bq/mL] on the CT grid.
    organs : LabelMap
        Organ labels (the threshold detector's backgrounds and exclusions).
    ct : SimpleITK.Image
        CT [HU].
    options : LesionOptions
    device : str
        Torch device for the model.

    Returns
    -------
    LesionResult
        Lesion labels 1…n on ``spect``'s grid; ``method`` says which method ran.
    """
    if options.method is LesionMethod.MODEL:
        if _lesion_weights_card() is not None:
            from dosimetry.segmentation.lesion_model import detect_lesions_model

            return detect_lesions_model(spect, ct, min_volume_ml=options.min_volume_ml,
                                        device=device)
        msg = ("the lesion model's weights are not installed; lesions were found by the "
               "threshold / region-growing detector instead")
        warnings.warn(msg, SegmentationFallbackWarning, stacklevel=2)
        res = detect_lesions(spect, organs, ct, options)
        return LesionResult(res.labels, res.lesions, res.method,
                            res.body_background_bq_per_ml, res.rejected, (*res.warnings, msg))
    return detect_lesions(spect, organs, ct, options)


def combine(organs: LabelMap, lesions: LesionResult | LabelMap | None,
            reference: sitk.Image) -> LabelMap:
    """One label map: organs renumbered 1…n, lesions from :data:`LESION_LABEL_BASE` + 1
    painted over them."""
    org = sitk.GetArrayViewFromImage(organs.image)
    organ_entries = [e for e in organs.table if e.kind is StructureKind.ORGAN]
    lesion_entries = [e for e in organs.table if e.kind is StructureKind.LESION]
    n_org = len(organ_entries)
    base = max(LESION_LABEL_BASE, n_org)
    out = np.zeros(org.shape, dtype=np.uint16)
    entries: list[LabelEntry] = []
    for i, e in enumerate(organ_entries, start=1):
        out[org == e.label] = i
        entries.append(LabelEntry(i, e.name, StructureKind.ORGAN))
    k = 0
    for e in lesion_entries:  # lesions given with the masks
        k += 1
        out[org == e.label] = base + k
        entries.append(LabelEntry(base + k, e.name, StructureKind.LESION))
    if isinstance(lesions, LesionResult):
        les = sitk.GetArrayViewFromImage(lesions.labels)
        for lesion in lesions.lesions:
            k += 1
            out[les == lesion.label] = base + k
            entries.append(LabelEntry(base + k, f"lesion_{k}", StructureKind.LESION))
    present = set(np.unique(out).tolist())
    entries = [e for e in entries if e.label in present]
    return LabelMap(label_image(out, reference), LabelTable(tuple(entries)),
                    source=organs.source, warnings=organs.warnings)


def segment_study(workdir: WorkDir, backend: str = "builtin", force: bool = False,
                  progress: ProgressFn | None = None, device: str = "cpu", *,
                  detect: bool = True,
                  lesion_options: LesionOptions | None = None) -> SegmentationResult:
    """Run (or reuse) the segmentation stage of a work folder.

    Parameters
    ----------
    workdir : WorkDir
    backend : str
        ``builtin``, ``totalsegmentator``, ``masks`` or ``masks:PATH``.
    force : bool
        Recompute even when the outputs are up to date.
    progress : callable(step, fraction), optional
    device : str
        Torch device for the model backends.
    detect : bool
        Detect lesions on the SPECT (unless the imported masks hold lesions).
    lesion_options : LesionOptions, optional

    Returns
    -------
    SegmentationResult

    Raises
    ------
    InputError
        Unknown backend, unreadable masks.
    MissingDataError
        The reference timepoint has no CT; ``masks`` without a path and none in the manifest.
    DependencyError
        totalsegmentator backend without TotalSegmentator.
    """
    report = progress or (lambda step, frac: None)
    lesion_options = lesion_options if lesion_options is not None else LesionOptions()
    spec = BackendSpec.parse(backend)
    study = workdir.study()
    ref_label = _reference(study)
    tp = study.timepoint(ref_label)
    if tp.ct is None:
        raise MissingDataError(f"timepoint {ref_label!r} (the reference) has no CT: organs are "
                               "segmented on the reference CT", missing=[
                                   f"timepoints[{ref_label}].ct in the manifest"])
    out_dir = workdir.stage_dir(Stage.SEGMENTATION)
    labels_path = out_dir / "labels.nii.gz"
    ct_path = tp.ct.resolve(workdir.root)
    reg_spect = workdir.root / Stage.REGISTRATION.value / f"{ref_label}_spect_bq_per_ml.nii.gz"
    parts: dict[str, Any] = {
        "version": STAGE_VERSION, "backend": str(spec), "reference": ref_label,
        "ct": file_fingerprint(ct_path), "detect": detect,
        "lesion_options": lesion_options.__dict__,
        "spect": file_fingerprint(reg_spect) if reg_spect.is_file()
        else file_fingerprint(tp.spect.resolve(workdir.root)),
    }
    if spec.backend is Backend.BUILTIN:
        from dosimetry.segmentation.builtin import ORGAN_MODEL, WEIGHTS_DIR

        card = WEIGHTS_DIR / f"{ORGAN_MODEL}.json"
        parts["model"] = file_fingerprint(card) if card.is_file() else "missing"
    if detect and lesion_options.method is LesionMethod.MODEL:
        lcard = _lesion_weights_card()
        parts["lesion_model"] = file_fingerprint(lcard) if lcard is not None else "missing"
    if spec.backend is Backend.MASKS:
        src = _masks_source(spec, study, tp)
        if not src.exists():
            raise InputError(f"{src}: masks file or folder not found")
        parts["masks"] = file_fingerprint(src)
    fp = fingerprint(parts)
    if not force and workdir.is_done(Stage.SEGMENTATION, fp) and labels_path.is_file():
        report("up to date", 1.0)
        return _load_result(out_dir, spec, ref_label)

    workdir.invalidate(Stage.SEGMENTATION)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    report("reading the reference CT", 0.0)
    from dosimetry.study.images import load_image

    ct = load_image(tp.ct, workdir.root)
    times["read"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    organs = _organ_labels(spec, ct, study, tp, device, report)
    times["organs"] = time.perf_counter() - t0
    notes = list(organs.warnings)

    lesion_res: LesionResult | None = None
    lesion_source = "none"
    if any(e.kind is StructureKind.LESION for e in organs.table):
        lesion_source = f"imported with the masks ({organs.source})"
    elif detect:
        t0 = time.perf_counter()
        report("lesions: reading the SPECT", 0.55)
        spect, lesion_source, _ = _spect_on_ct(workdir, study, tp, ct)
        if lesion_source == FALLBACK_SPECT:
            msg = (f"registration has not run: lesions are detected on timepoint "
                   f"{ref_label!r}'s own SPECT resampled onto its CT grid")
            notes.append(msg)
            warnings.warn(msg, SegmentationFallbackWarning, stacklevel=2)
        report("lesions: detecting", 0.65)
        lesion_res = find_lesions(spect, organs, ct, lesion_options, device)
        notes += list(lesion_res.warnings)
        times["lesions"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report("writing", 0.9)
    final = combine(organs, lesion_res, ct)
    table = organ_table(final, ct)
    write_image(final.image, labels_path)
    final.table.save(out_dir / "labels.json")
    doc = table.to_dict()
    doc["backend"] = str(spec)
    doc["source"] = final.source
    doc["reference_timepoint"] = ref_label
    doc["lesion_detection"] = {
        "source": lesion_source,
        "method": lesion_res.method if lesion_res else None,
        "options": lesion_options.__dict__ if lesion_res else None,
        "body_background_bq_per_ml": lesion_res.body_background_bq_per_ml if lesion_res
        else None,
        "lesions": _lesion_records(lesion_res, final),
        "rejected": list(lesion_res.rejected) if lesion_res else [],
    }
    doc["warnings"] = notes
    atomic_write_text(out_dir / "organs.json", json.dumps(doc, indent=2, ensure_ascii=False,
                                                          default=float) + "\n")
    times["write"] = time.perf_counter() - t0
    n_org = len(final.table.of_kind(StructureKind.ORGAN))
    n_les = len(final.table.of_kind(StructureKind.LESION))
    workdir.mark_done(Stage.SEGMENTATION, fp, backend=str(spec), organs=n_org, lesions=n_les)
    report("done", 1.0)
    ok = n_org > 0
    return SegmentationResult(
        success=ok, message=f"{n_org} organ(s), {n_les} lesion(s)" if ok else
        "the backend found no organ on the reference CT",
        labels_path=labels_path, table=final.table, organs=table, backend=str(spec),
        reference_timepoint=ref_label, lesion_source=lesion_source,
        lesions=tuple(_lesion_records(lesion_res, final)), warnings=tuple(notes),
        timings_s=times)


def _lesion_records(res: LesionResult | None, final: LabelMap) -> list[dict[str, Any]]:
    if res is None:
        return []
    names = [e for e in final.table.of_kind(StructureKind.LESION)]
    out = []
    for lesion, entry in zip(res.lesions, names[-len(res.lesions):] if res.lesions else [],
                             strict=False):
        d = lesion.to_dict()
        d["label"] = entry.label
        d["name"] = entry.name
        out.append(d)
    return out


def _load_result(out_dir: Path, spec: BackendSpec, ref_label: str) -> SegmentationResult:
    from dosimetry.segmentation.organs import OrganStats

    doc = json.loads((out_dir / "organs.json").read_text(encoding="utf-8"))
    table = read_label_table(out_dir / "labels.json")
    rows = tuple(OrganStats(r["label"], r["name"], StructureKind(r["kind"]), r["voxels"],
                            r["volume_ml"], r["mass_g"], r["mean_hu"],
                            r["mean_density_g_per_cm3"]) for r in doc["structures"])
    organs = OrganTable(rows, doc["density_source"], doc["voxel_volume_ml"])
    det = doc.get("lesion_detection", {})
    return SegmentationResult(
        success=bool(table.of_kind(StructureKind.ORGAN)), message="up to date",
        labels_path=out_dir / "labels.nii.gz", table=table, organs=organs,
        backend=doc.get("backend", str(spec)), reference_timepoint=ref_label,
        lesion_source=det.get("source", ""), lesions=tuple(det.get("lesions", [])),
        reused=True, warnings=tuple(doc.get("warnings", [])))
