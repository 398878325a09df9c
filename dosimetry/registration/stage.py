"""The registration stage of the pipeline: every timepoint onto the reference frame.

:func:`register_study` reads the work folder's manifest, registers each timepoint's CT to the
reference timepoint's CT (classical rigid → affine → B-spline, or rigid + the learned model),
carries each SPECT along with its CT's transform (same frame of reference in a hybrid SPECT/CT)
with its total activity conserved, checks the result, and writes into
``WORKDIR/registration/``::

    <label>_ct.nii.gz                      CT on the reference CT grid [HU, int16]
    <label>_spect_bq_per_ml.nii.gz          activity concentration on the reference CT grid [Bq/mL]
    <label>_spect_bq_per_ml_spectgrid.nii.gz   … on the reference SPECT grid [Bq/mL]
    transforms/<label>.tfm                  reference point → timepoint point (ITK text)
    qa.json                                 per-timepoint QA (see TimepointQA)
    done.json                               written last (WorkDir.mark_done)

The dose grid downstream is expected to be the reference SPECT grid (SPECT voxel size, reference
frame), hence the ``_spectgrid`` images; the CT-grid images serve segmentation and display.

A timepoint without CT is registered SPECT-to-SPECT (rigid only), with a warning. A timepoint
whose registration fails a QA check raises :class:`RegistrationError` naming it and the reason;
nothing is marked done.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dosimetry.errors import GeometryError, InputError, MissingDataError
from dosimetry.io.atomic import atomic_folder, atomic_path, atomic_write_text
from dosimetry.io.images import write_image
from dosimetry.registration import classical as cl
from dosimetry.registration import qa as rq
from dosimetry.registration.config import RegistrationMethod, RegistrationOptions, TransformStage
from dosimetry.registration.errors import RegistrationError
from dosimetry.registration.resample import (
    ActivityCheck,
    affine_of,
    dense_deformable,
    field_grid,
    jacobian_determinant,
    resample_activity,
    resample_image,
    resample_labels,
)
from dosimetry.registration.result import (
    LabelDice,
    RegistrationResult,
    TimepointQA,
    TimepointRegistration,
)
from dosimetry.registration.truth import PhantomTruth, find_truth
from dosimetry.study.images import image_bounds, load_image, load_spect_bq_per_ml
from dosimetry.study.manifest import MIN_SPECT_CT_OVERLAP, Study, Timepoint
from dosimetry.study.workdir import Stage, WorkDir, file_fingerprint, fingerprint

#: Bump when the same inputs and options would give different outputs.
STAGE_VERSION = "1"

#: Node spacing of the sampled deformation, in working voxels (see ``_register_timepoint``).
FIELD_SPACING_FACTOR = 2.0

#: Value of CT voxels outside the moving CT's field of view [HU] (air).
CT_OUTSIDE_HU = -1000.0

ProgressFn = Callable[[str, float], None]


def output_paths(folder: Path, label: str) -> dict[str, Path]:
    """The files the stage writes for timepoint ``label``."""
    return {"ct": folder / f"{label}_ct.nii.gz",
            "spect": folder / f"{label}_spect_bq_per_ml.nii.gz",
            "spectgrid": folder / f"{label}_spect_bq_per_ml_spectgrid.nii.gz",
            "transform": folder / "transforms" / f"{label}.tfm"}


def write_transform(transform: sitk.Transform, path: Path) -> Path:
    """Write an ITK text transform atomically."""
    with atomic_path(path, suffix=".tfm") as tmp:
        sitk.WriteTransform(transform, str(tmp))
    return path


def read_transform(path: str | Path) -> sitk.Transform:
    """Read a transform written by this stage (reference point → timepoint point)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: transform file not found")
    try:
        return sitk.ReadTransform(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read transform ({str(exc).splitlines()[-1]})") from None


def choose_reference(study: Study, reference: str | None) -> str:
    """The reference label: the argument, else the manifest's, else the first timepoint."""
    label = reference or study.reference_timepoint or study.timepoints[0].label
    study.timepoint(label)  # InputError naming the labels when unknown
    return label


def _image_paths(study: Study) -> list[str]:
    paths = []
    if study.labels is not None:
        paths.append(str(study.labels.path))
    for tp in study.timepoints:
        for ref in (tp.spect, tp.ct, tp.labels):
            if ref is not None:
                paths.append(str(ref.path))
    return paths


def stage_fingerprint(study: Study, reference: str, options: RegistrationOptions,
                      model: dict[str, Any] | None) -> str:
    """Fingerprint of everything the stage's outputs depend on."""
    files = []
    for p in _image_paths(study):
        try:
            files.append(file_fingerprint(p))
        except OSError:
            files.append({"path": p, "missing": True})
    return fingerprint("registration", STAGE_VERSION, study.to_dict(), files, reference,
                       options.to_dict(), model)


def check_spect_ct_overlap(study: Study, base_dir: Path) -> None:
    """Every timepoint's SPECT must overlap its CT (headers only).

    Raises
    ------
    RegistrationError
        Naming the timepoint, the overlap and both boxes.
    """
    for tp in study.timepoints:
        if tp.ct is None:
            continue
        s_lo, s_hi = image_bounds(tp.spect, base_dir)
        c_lo, c_hi = image_bounds(tp.ct, base_dir)
        inter = np.clip(np.minimum(s_hi, c_hi) - np.maximum(s_lo, c_lo), 0, None)
        vol = float(np.prod(np.subtract(c_hi, c_lo)))
        frac = float(np.prod(inter)) / vol if vol > 0 else 0.0
        if frac < MIN_SPECT_CT_OVERLAP:
            box = " ".join(f"[{a:.0f}, {b:.0f}]" for a, b in zip(s_lo, s_hi, strict=True))
            cbox = " ".join(f"[{a:.0f}, {b:.0f}]" for a, b in zip(c_lo, c_hi, strict=True))
            raise RegistrationError(tp.label, f"its SPECT and CT do not overlap in patient space "
                                              f"({frac:.0%} of the CT box lies inside the SPECT "
                                              f"box, at least {MIN_SPECT_CT_OVERLAP:.0%} needed;"
                                              f" SPECT x/y/z {box} mm, CT {cbox} mm)")


# ============================================================================== labels
class _Labels:
    """Where Dice comes from: manifest label maps, or the phantom truth."""

    def __init__(self, study: Study, reference: str, ref_ct: sitk.Image,
                 truth: PhantomTruth | None) -> None:
        self.study = study
        self.truth = truth
        self.ref_ct = ref_ct
        manifest_ref = study.reference_timepoint or study.timepoints[0].label
        self.ref: sitk.Image | None = None
        self.source: str | None = None
        self.names: dict[int, str] = {}
        ref_tp = study.timepoint(reference)
        ref_ref = ref_tp.labels or (study.labels if reference == manifest_ref else None)
        if ref_ref is not None:
            self.ref = resample_labels(load_image(ref_ref, "/"), ref_ct, None)
            self.source = "manifest"
        elif truth is not None:
            self.ref = truth.labels_in(reference, ref_ct)
            self.source = "phantom truth"
            self.names = truth.label_names
        self.volumes = rq.label_volumes_ml(self.ref) if self.ref is not None else {}

    def moving(self, tp: Timepoint, moving_ct: sitk.Image | None) -> sitk.Image | None:
        if self.source == "manifest":
            return None if tp.labels is None else load_image(tp.labels, "/")
        if self.source == "phantom truth" and moving_ct is not None and self.truth is not None:
            return self.truth.labels_in(tp.label, moving_ct)
        return None

    def dice(self, moving_labels: sitk.Image, transform: sitk.Transform,
             true_transform: sitk.Transform | None) -> tuple[LabelDice, ...]:
        assert self.ref is not None
        reg = rq.dice_per_label(self.ref, resample_labels(moving_labels, self.ref_ct, transform))
        ident = rq.dice_per_label(self.ref, resample_labels(moving_labels, self.ref_ct,
                                                            sitk.Euler3DTransform()))
        true = (rq.dice_per_label(self.ref, resample_labels(moving_labels, self.ref_ct,
                                                            true_transform))
                if true_transform is not None else {})
        return tuple(LabelDice(label=lab, name=self.names.get(lab, f"label {lab}"),
                               volume_ml=self.volumes.get(lab, 0.0), dice=d,
                               dice_identity=ident.get(lab), dice_true_transform=true.get(lab))
                     for lab, d in sorted(reg.items()))


# ============================================================================== main
def register_study(workdir: WorkDir, reference: str | None = None,
                   method: RegistrationMethod | str = RegistrationMethod.CLASSICAL,
                   force: bool = False, progress: ProgressFn | None = None, *,
                   options: RegistrationOptions | None = None,
                   weights: str | Path | None = None,
                   expected_sha256: str | None = None) -> RegistrationResult:
    """Register every timepoint of the work folder's study to the reference timepoint.

    Parameters
    ----------
    workdir : WorkDir
    reference : str, optional
        Reference timepoint label; default the manifest's ``reference_timepoint``, else the
        first timepoint.
    method : {"classical", "learned"}
        ``learned``: classical rigid pre-alignment, then the 3D U-Net displacement field.
    force : bool
        Recompute even when the stage is up to date.
    progress : callable(message, fraction), optional
    options : RegistrationOptions, optional
        Defaults of :class:`RegistrationOptions` (``method`` overrides its method).
    weights, expected_sha256 : optional
        Learned model weights other than the shipped ones, with their SHA-256 (required then).

    Returns
    -------
    RegistrationResult

    Raises
    ------
    RegistrationError
        A timepoint's SPECT does not overlap its CT, or its registration fails QA.
    MissingDataError
        The reference timepoint has no CT.
    InputError
        Unknown reference label, unreadable images, weights failing their checksum.
    """
    t_start = time.perf_counter()
    report = progress or (lambda msg, frac: None)
    study = workdir.study()
    options = (options or RegistrationOptions()).with_method(method)
    ref_label = choose_reference(study, reference)
    ref_tp = study.timepoint(ref_label)
    if ref_tp.ct is None:
        raise MissingDataError(f"reference timepoint {ref_label!r} has no CT; registration needs "
                               "a reference CT (choose another with --reference-timepoint)",
                               missing=[f"timepoints[{ref_label}].ct"])
    model = None
    model_info = None
    if options.method is RegistrationMethod.LEARNED:
        from dosimetry.registration.learned import load_model

        model = load_model(weights, expected_sha256=expected_sha256, device=options.device)
        model_info = model.info()
    fp = stage_fingerprint(study, ref_label, options, model_info)
    folder = workdir.stage_dir(Stage.REGISTRATION)
    qa_path = folder / "qa.json"
    if not force and workdir.is_done(Stage.REGISTRATION, fp) and qa_path.is_file():
        try:
            data = json.loads(qa_path.read_text(encoding="utf-8"))
            return RegistrationResult.from_dict(data, folder, qa_path, skipped=True)
        except (OSError, KeyError, ValueError, TypeError):
            pass  # unreadable QA: recompute
    workdir.invalidate(Stage.REGISTRATION)
    check_spect_ct_overlap(study, workdir.root)

    report(f"reference {ref_label}: loading", 0.0)
    base = Path("/")  # the work folder's manifest holds absolute paths
    ref_ct = load_image(ref_tp.ct, base)
    ref_spect = load_spect_bq_per_ml(study, ref_tp, base)
    fixed_work, fixed_mask = cl.prepare_ct(ref_ct, options)
    if not np.any(sitk.GetArrayViewFromImage(fixed_mask)):
        raise RegistrationError(ref_label, f"the reference CT has no voxel above "
                                           f"{options.body_threshold_hu:g} HU (no body found)")
    truth = find_truth(study)
    labels = _Labels(study, ref_label, ref_ct, truth)

    n = len(study.timepoints)
    # Everything is written into a private sibling folder that replaces the stage folder only
    # once every timepoint has passed QA: a failure leaves the previous outputs untouched (and
    # not marked done), never a mixture of old and new files.
    with atomic_folder(folder) as tmp:
        entries: list[TimepointRegistration] = []
        for i, tp in enumerate(study.timepoints):
            def sub(msg: str, f: float, i: int = i, label: str = tp.label) -> None:
                report(f"{label}: {msg}", (i + min(max(f, 0.0), 1.0)) / n)

            paths = output_paths(tmp, tp.label)
            if tp.label == ref_label:
                entry = _reference_entry(tp, ref_ct, ref_spect, paths, sub)
            else:
                entry = _register_timepoint(study, tp, ref_label, ref_ct, ref_spect, fixed_work,
                                            fixed_mask, options, model, truth, labels, paths,
                                            sub)
            entries.append(entry)
        report("writing QA", 1.0)
        staged = RegistrationResult(
            success=True,
            message=f"{n - 1} timepoint(s) registered to {ref_label!r} "
                    f"({options.method.value})",
            reference=ref_label, method=options.method, folder=tmp, qa_path=tmp / "qa.json",
            timepoints=tuple(entries), fingerprint=fp, options=options, skipped=False,
            truth=str(truth.folder) if truth is not None else None,
            time_s=time.perf_counter() - t_start, model=model_info)
        document = staged.to_dict()
        atomic_write_text(tmp / "qa.json", json.dumps(document, indent=2, allow_nan=False)
                          + "\n")
    result = RegistrationResult.from_dict(document, folder, qa_path)
    workdir.mark_done(Stage.REGISTRATION, fp, reference=ref_label, method=options.method.value)
    return result


def _write_ct(ct: sitk.Image, path: Path) -> None:
    arr = np.rint(sitk.GetArrayViewFromImage(ct))
    np.clip(arr, -32768, 32767, out=arr)
    img = sitk.GetImageFromArray(arr.astype(np.int16))
    img.CopyInformation(ct)
    write_image(img, path)


def _reference_entry(tp: Timepoint, ref_ct: sitk.Image, ref_spect: sitk.Image,
                     paths: dict[str, Path], progress: ProgressFn) -> TimepointRegistration:
    t0 = time.perf_counter()
    progress("reference: writing", 0.5)
    identity = sitk.Euler3DTransform()
    on_ct, chk_ct = resample_activity(ref_spect, ref_ct, identity, grid_name="ct")
    on_spect, chk_sp = resample_activity(ref_spect, ref_spect, identity, grid_name="spect")
    _write_ct(ref_ct, paths["ct"])
    write_image(on_ct, paths["spect"])
    write_image(on_spect, paths["spectgrid"])
    write_transform(identity, paths["transform"])
    qa = TimepointQA(label=tp.label, is_reference=True, registered_with="none",
                     method="identity", activity=(chk_ct, chk_sp),
                     time_s=time.perf_counter() - t0)
    return TimepointRegistration(label=tp.label, transform=paths["transform"], ct=paths["ct"],
                                 spect_bq_per_ml=paths["spect"],
                                 spect_bq_per_ml_spectgrid=paths["spectgrid"], qa=qa)


def _register_timepoint(study: Study, tp: Timepoint, ref_label: str, ref_ct: sitk.Image,
                        ref_spect: sitk.Image, fixed_work: sitk.Image, fixed_mask: sitk.Image,
                        options: RegistrationOptions, model, truth: PhantomTruth | None,
                        labels: _Labels, paths: dict[str, Path], progress: ProgressFn
                        ) -> TimepointRegistration:
    t0 = time.perf_counter()
    base = Path("/")
    spect = load_spect_bq_per_ml(study, tp, base)
    moving_ct = load_image(tp.ct, base) if tp.ct is not None else None
    caught: list[str] = []
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        if moving_ct is not None:
            progress("preparing CT", 0.0)
            moving_work, moving_mask = cl.prepare_ct(moving_ct, options)
            stages = (options.stages if options.method is RegistrationMethod.CLASSICAL
                      else (TransformStage.RIGID,))
            try:
                pair = cl.register_pair(fixed_work, moving_work, fixed_mask, moving_mask,
                                        options, stages,
                                        lambda m, f: progress(m, 0.05 + 0.6 * f))
            except (GeometryError, RuntimeError) as exc:
                raise RegistrationError(tp.label, str(exc)) from exc
            registered_with = "ct"
            fw, fm = fixed_work, fixed_mask
        else:
            warnings.warn(f"timepoint {tp.label!r} has no CT: registered SPECT-to-SPECT "
                          "(rigid only) to the reference SPECT", stacklevel=2)
            progress("SPECT-to-SPECT rigid", 0.05)
            fw, fm = cl.prepare_spect(ref_spect, options)
            moving_work, moving_mask = cl.prepare_spect(spect, options)
            try:
                pair = cl.register_pair(fw, moving_work, fm, moving_mask, options,
                                        (TransformStage.RIGID,))
            except (GeometryError, RuntimeError) as exc:
                raise RegistrationError(tp.label, str(exc)) from exc
            registered_with = "spect"
        linear = pair.linear
        deformable = pair.deformable
        if model is not None and moving_ct is not None:
            progress("learned displacement", 0.65)
            deformable = model.predict(ref_ct, moving_ct, linear)
        transform = cl.compose(linear, deformable)
        caught = [str(w.message) for w in rec]
    for msg in caught:
        warnings.warn(f"timepoint {tp.label!r}: {msg}", stacklevel=2)

    progress("QA", 0.7)
    # The deformable part sampled once as a displacement field: QA and resampling use it. A
    # B-spline with control points 100 mm apart (the default) varies over centimetres, so linear
    # interpolation between nodes twice the working spacing apart errs by well under 0.1 mm
    # (h²/8 × |u''|), at an eighth of the cost of sampling it on the working grid.
    fast_def = (dense_deformable(deformable, field_grid(fw, FIELD_SPACING_FACTOR
                                                        * options.working_spacing_mm))
                if deformable is not None else None)
    fast = cl.compose(linear, fast_def)
    det_a = float(np.linalg.det(affine_of(linear)[0]))
    det_b = jacobian_determinant(fast_def, fw) if fast_def is not None else None
    metric_before = cl.metric_value(fw, moving_work, fm, pair.initial, options)
    metric_after = cl.metric_value(fw, moving_work, fm, fast, options)
    jac = rq.jacobian_stats(det_b * det_a if det_b is not None else det_a, fm)
    body_before = rq.body_dice(fm, moving_mask, pair.initial)
    body_after = rq.body_dice(fm, moving_mask, fast)
    disp = rq.displacement(fast, fw)
    max_disp = rq.max_displacement_mm(disp, pair.initial, fw, fm)
    true_tf = truth.true_transform(ref_label, tp.label) if truth is not None else None
    tre_before = tre_rigid = tre = None
    if true_tf is not None:
        m = sitk.GetArrayViewFromImage(fm) > 0
        d_true = rq.displacement(true_tf, fw)
        tre_before = rq.tre_from_displacements(np.zeros_like(d_true), d_true, m)
        tre_rigid = rq.tre_from_displacements(rq.displacement(pair.rigid, fw), d_true, m)
        tre = rq.tre_from_displacements(disp, d_true, m)
        del d_true
    del disp
    dice: tuple[LabelDice, ...] = ()
    if labels.source is not None:
        moving_labels = labels.moving(tp, moving_ct)
        if moving_labels is not None:
            dice = labels.dice(moving_labels, fast, true_tf)

    progress("resampling", 0.8)

    def jac_on(grid: sitk.Image) -> sitk.Image | float:
        if det_b is None:
            return det_a
        return resample_image(det_b, grid, None, 1.0) * det_a

    checks: list[ActivityCheck] = []
    on_ct, chk = resample_activity(spect, ref_ct, linear, fast_def, jac_on(ref_ct), "ct")
    checks.append(chk)
    on_sp, chk = resample_activity(spect, ref_spect, linear, fast_def, jac_on(ref_spect),
                                   "spect")
    checks.append(chk)
    qa = TimepointQA(
        label=tp.label, is_reference=False, registered_with=registered_with,
        method=options.method.value, stages=tuple(s.to_dict() for s in pair.stages),
        metric_before=metric_before, metric_after=metric_after, jacobian=jac,
        body_dice_before=body_before, body_dice_after=body_after, max_displacement_mm=max_disp,
        activity=tuple(checks), dice=dice, dice_source=labels.source if dice else None,
        tre_before=tre_before, tre_rigid=tre_rigid, tre=tre, time_s=0.0,
        warnings=tuple(caught))
    rq.check_timepoint(tp.label, thresholds=options.qa, metric_before=metric_before,
                       metric_after=metric_after, body_dice_after=body_after,
                       max_disp_mm=max_disp,
                       jacobian=jac,
                       activity_changes_raw={c.grid: c.relative_change_raw for c in checks})

    progress("writing", 0.9)
    ct_path = None
    if moving_ct is not None:
        _write_ct(resample_image(moving_ct, ref_ct, fast, CT_OUTSIDE_HU), paths["ct"])
        ct_path = paths["ct"]
    write_image(on_ct, paths["spect"])
    write_image(on_sp, paths["spectgrid"])
    write_transform(transform, paths["transform"])
    qa = replace(qa, time_s=time.perf_counter() - t0)
    return TimepointRegistration(label=tp.label, transform=paths["transform"], ct=ct_path,
                                 spect_bq_per_ml=paths["spect"],
                                 spect_bq_per_ml_spectgrid=paths["spectgrid"], qa=qa)
