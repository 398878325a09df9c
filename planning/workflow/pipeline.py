"""``rptdose run``: from a study manifest to a dose report, stage by stage, resumable.

register → segment → kinetics → dose → plan → report. Every stage writes into its folder of the
work folder and records ``done.json`` with the fingerprint of its inputs last
(:mod:`dosimetry.study.workdir`): a re-run skips stages whose fingerprint is unchanged, a crash
resumes at the first unfinished stage, ``force`` redoes a stage (and everything after it).
A failing stage raises :class:`StageError` naming the stage; earlier stages' results stay.

Exports (``WORKDIR/report/``): ``report.html``, ``report.pdf``, ``results.json`` (the
:class:`planning.results.DosimetryResults` schema, with the plan), ``vois.csv``,
``dose.nii.gz``, ``dose_rtdose.dcm`` (DICOM RT Dose on the reference CT's frame of reference),
``labels.nii.gz`` with ``labels.json`` and ``labels_rtstruct.dcm`` (RT Structure Set),
``truth_check.json`` for digital patients. Privacy: exports carry the study's pseudonym and no
other identifier unless ``keep_identifiers``; ``date_shift_days`` shifts every exported date.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import SimpleITK as sitk
from pydantic import BaseModel, ConfigDict, Field

from dosimetry import __version__, units
from dosimetry.errors import RptdoseError
from dosimetry.io.atomic import atomic_write_text
from dosimetry.io.images import read_image, write_image
from dosimetry.study.manifest import load_study
from dosimetry.study.workdir import Stage, WorkDir, file_fingerprint, fingerprint

#: Stages in order.
ORDER = (Stage.REGISTRATION, Stage.SEGMENTATION, Stage.KINETICS, Stage.DOSE, Stage.PLANNING,
         Stage.REPORT)


class StageError(RptdoseError):
    """A pipeline stage failed; the message names the stage and the reason."""


class PipelineOptions(BaseModel):
    """Options of ``rptdose run`` (each stage's fingerprint includes the options it uses)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dose_engine: str = Field(default="dvk", pattern="^(led|dvk|mc|deep|gate)$")
    segmenter: str = "builtin"
    registration_method: str = Field(default="classical", pattern="^(classical|learned)$")
    reference_timepoint: str | None = None
    protocol: str | None = None
    cycles_done: int | None = Field(default=None, ge=1)
    confidence: float | None = Field(default=None, gt=0.5, lt=1.0)
    calibration_relative_sigma: float = Field(default=0.05, ge=0.0, lt=1.0)
    #: Reconstructed SPECT resolution FWHM [mm] for the partial-volume correction (GTM);
    #: None: the study manifest's ``spect_fwhm_mm``, and no correction when that is absent.
    pvc_fwhm_mm: float | None = Field(default=None, gt=0.0, le=50.0)
    mc_decays: int = Field(default=2_000_000, gt=0)
    seed: int = 0
    device: str = "cpu"
    truth_dir: Path | None = None
    force: tuple[Stage, ...] = ()
    #: Put the CT's patient name, ID and study UID into DICOM exports (default: pseudonym).
    keep_identifiers: bool = False
    #: Days added to every date in the exports and the report (consistent date shifting).
    date_shift_days: int = Field(default=0, ge=-36500, le=36500)


@dataclass
class PipelineResult:
    """What a run did: stages run or skipped, their times, and the main outputs."""

    workdir: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    report_html: Path | None = None
    report_pdf: Path | None = None
    results_json: Path | None = None


def _study_hash(wd: WorkDir) -> str:
    study = wd.study()
    files = [file_fingerprint(tp.spect.path) for tp in study.timepoints]
    files += [file_fingerprint(tp.ct.path) for tp in study.timepoints if tp.ct is not None]
    return fingerprint(study.to_dict(), files)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def run_pipeline(manifest: str | Path, workdir: str | Path, options: PipelineOptions,
                 progress: Callable[[str, str], None] | None = None) -> PipelineResult:
    """Run every stage of the pipeline (see the module docstring).

    ``progress(stage, state)`` is called with state ``"start"``, ``"skip"`` or ``"done"``.
    """
    manifest = Path(manifest)
    study = load_study(manifest)
    wd = WorkDir.create(workdir, study, manifest.resolve().parent)
    res = PipelineResult(workdir=wd.root)
    notify = progress or (lambda stage, state: None)
    forced_from = min((ORDER.index(s) for s in options.force), default=len(ORDER))
    upstream = _study_hash(wd)

    stage_options: dict[Stage, dict[str, Any]] = {
        Stage.REGISTRATION: {"method": options.registration_method,
                             "reference": options.reference_timepoint},
        Stage.SEGMENTATION: {"backend": options.segmenter},
        Stage.KINETICS: {"calibration": options.calibration_relative_sigma,
                         "pvc_fwhm_mm": _pvc_fwhm(options, study)},
        Stage.DOSE: {"engine": options.dose_engine, "decays": options.mc_decays,
                     "seed": options.seed},
        Stage.PLANNING: {"protocol": options.protocol, "cycles_done": options.cycles_done,
                         "confidence": options.confidence,
                         "date_shift_days": options.date_shift_days},
        Stage.REPORT: {"truth": str(options.truth_dir), "version": __version__,
                       "keep_identifiers": options.keep_identifiers,
                       "date_shift_days": options.date_shift_days,
                       "validation": validation_fingerprint(wd)},
    }
    for i, stage in enumerate(ORDER):
        fp = fingerprint(stage.value, upstream, stage_options[stage])
        if i < forced_from and wd.is_done(stage, fp):
            res.skipped.append(stage.value)
            notify(stage.value, "skip")
            upstream = fp
            continue
        notify(stage.value, "start")
        t0 = time.perf_counter()
        try:
            _run_stage(stage, wd, options)
        except RptdoseError as exc:
            raise StageError(f"stage {stage.value} failed: {exc}") from exc
        except Exception as exc:  # keep the stage name with whatever broke
            raise StageError(f"stage {stage.value} failed: {type(exc).__name__}: {exc}") \
                from exc
        res.seconds[stage.value] = time.perf_counter() - t0
        wd.mark_done(stage, fp, seconds=round(res.seconds[stage.value], 2))
        res.ran.append(stage.value)
        notify(stage.value, "done")
        upstream = fp
    rep = wd.root / Stage.REPORT.value
    res.report_html, res.report_pdf = rep / "report.html", rep / "report.pdf"
    res.results_json = rep / "results.json"
    return res


def validation_fingerprint(wd: WorkDir) -> dict[str, Any] | None:
    """Identity of ``validation/validation.json`` (``rptdose mc validate``), None when absent.

    Part of the report stage's inputs: the report quotes the validation in its methods
    section, so a new or re-run validation makes the next run redo the report.
    """
    from planning.workflow.validate import validation_json_path

    path = validation_json_path(wd)
    return file_fingerprint(path) if path.is_file() else None


def _pvc_fwhm(o: PipelineOptions, study) -> float | None:
    """FWHM for the partial-volume correction: the option, else the manifest's, else none."""
    return o.pvc_fwhm_mm if o.pvc_fwhm_mm is not None else study.spect_fwhm_mm


def _run_stage(stage: Stage, wd: WorkDir, o: PipelineOptions) -> None:
    if stage is Stage.REGISTRATION:
        from dosimetry.registration import register_study

        register_study(wd, reference=o.reference_timepoint, method=o.registration_method,
                       force=True)
    elif stage is Stage.SEGMENTATION:
        from dosimetry.segmentation import segment_study

        segment_study(wd, backend=o.segmenter, force=True, device=o.device)
    elif stage is Stage.KINETICS:
        from planning.workflow.kinetics_stage import run_kinetics

        run_kinetics(wd, calibration_relative_sigma=o.calibration_relative_sigma,
                     device=o.device, pvc_fwhm_mm=_pvc_fwhm(o, wd.study()))
    elif stage is Stage.DOSE:
        from planning.workflow.dose_stage import run_dose
        from planning.workflow.kinetics_stage import load_kinetics

        run_dose(wd, load_kinetics(wd), engine=o.dose_engine, device=o.device,
                 mc_decays=o.mc_decays, seed=o.seed)
    elif stage is Stage.PLANNING:
        _run_planning(wd, o)
    elif stage is Stage.REPORT:
        _run_report(wd, o)


# ----------------------------------------------------------------------------------- planning
def dosimetry_results(wd: WorkDir, engine: str, date_shift_days: int = 0):
    """The stages' outputs as :class:`planning.results.DosimetryResults` (RESULTS.json)."""
    from planning.results import DosimetryResults
    from planning.workflow.kinetics_stage import load_kinetics

    study = wd.study()
    kin = {v.name: v for v in load_kinetics(wd)}
    dose = json.loads((wd.root / Stage.DOSE.value / "vois.json").read_text(encoding="utf-8"))
    a0_bq = study.administered_activity_bq
    vois = []
    for d in dose["vois"]:
        k = kin[d["name"]]
        if not k.success or not k.tia_bq_s > 0:
            continue  # not fitted (no activity, failed fit): in fits.json and the report only
        exps = [{"amplitude": c / a0_bq, "rate_per_h": r * units.HOUR}
                for c, r in k.exponentials]
        t_eff_h = None
        if not exps and k.tia_bq_s > 0 and max(k.activity_bq) > 0:
            # Trapezoid model: the mono-exponential with the same TIA from the first sample.
            t_eff_h = math.log(2) * k.tia_bq_s / max(k.activity_bq) / units.HOUR
        rel_dose = d["mean_dose_sigma_gy"] / d["mean_dose_gy"] if d["mean_dose_gy"] else 0.0
        vois.append({
            "name": d["name"], "kind": "lesion" if d["kind"] == "lesion" else "organ",
            "mass_g": d["mass_g"] if d["mass_g"] > 0 else None,
            "mean_dose_gy": d["mean_dose_gy"], "mean_dose_sigma_gy": d["mean_dose_sigma_gy"],
            "dose_gy_per_gbq": d["dose_gy_per_gbq"],
            "dose_gy_per_gbq_sigma": d["dose_gy_per_gbq"] * rel_dose,
            "tia_mbq_h": max(k.tia_bq_s, 0.0) / (units.MBQ * units.HOUR),
            "tia_sigma_mbq_h": (k.tia_sigma_bq_s / (units.MBQ * units.HOUR)
                                if math.isfinite(k.tia_sigma_bq_s) else None),
            "kinetics": {"model": k.model, "exponentials": exps,
                         "effective_half_life_h": t_eff_h},
            "engine": engine, "bed_gy": d["bed_gy"], "d2_gy": d["d2_gy"],
            "d50_gy": d["d50_gy"], "d98_gy": d["d98_gy"]})
    return DosimetryResults.model_validate({
        "patient_id": study.patient_id, "nuclide": study.nuclide,
        "radiopharmaceutical": study.radiopharmaceutical, "cycle_number": 1,
        "administered_activity_mbq": study.administered_activity_mbq,
        "administration_date": (study.injection_datetime
                                + timedelta(days=date_shift_days)).date(),
        "patient_weight_kg": study.patient_weight_kg, "vois": vois,
        "source": {"rptdose": __version__, "engine": engine}})


def default_protocol_for(study) -> str | None:
    """Built-in protocol that matches the study's nuclide and radiopharmaceutical, if any."""
    pharm = study.radiopharmaceutical.upper()
    if study.nuclide == "Lu-177" and ("DOTA" in pharm or "TATE" in pharm or "TOC" in pharm):
        return "lu177-dotatate"
    if study.nuclide == "Lu-177" and "PSMA" in pharm:
        return "lu177-psma"
    return None


def _run_planning(wd: WorkDir, o: PipelineOptions) -> None:
    from planning.planner import plan_from_results
    from planning.protocols import default_protocol

    out = wd.stage_dir(Stage.PLANNING)
    results = dosimetry_results(wd, o.dose_engine, o.date_shift_days)
    name = o.protocol or default_protocol_for(wd.study())
    plan = None
    if name is not None:
        plan = plan_from_results(results, default_protocol(name), cycles_done=o.cycles_done,
                                 confidence=o.confidence)
        atomic_write_text(out / "plan.json", json.dumps(plan.model_dump(mode="json"),
                                                        indent=2) + "\n")
    elif (out / "plan.json").exists():
        (out / "plan.json").unlink()
    data = results.model_dump(mode="json")
    data["plan"] = None if plan is None else plan.model_dump(mode="json")
    atomic_write_text(out / "results.json", json.dumps(data, indent=2) + "\n")


# ----------------------------------------------------------------------------------- report
def _run_report(wd: WorkDir, o: PipelineOptions) -> None:
    from dosimetry.io.dicom_write import DicomSeriesMeta, uid_from_seed
    from dosimetry.io.rtdose import write_rtdose
    from planning.workflow.dose_stage import reference_label
    from planning.workflow.report import build_report
    from planning.workflow.report_render import write_html, write_pdf

    study = wd.study()
    out = wd.stage_dir(Stage.REPORT)
    dose_dir = wd.root / Stage.DOSE.value
    seg = wd.root / Stage.SEGMENTATION.value
    plan_dir = wd.root / Stage.PLANNING.value

    shutil.copyfile(plan_dir / "results.json", out / ".results.json.part")
    (out / ".results.json.part").replace(out / "results.json")
    dose = read_image(dose_dir / "dose_gy.nii.gz")
    write_image(dose, out / "dose.nii.gz")
    write_image(read_image(seg / "labels.nii.gz", pixel_type=None), out / "labels.nii.gz")
    atomic_write_text(out / "labels.json", (seg / "labels.json").read_text(encoding="utf-8"))

    # DICOM RT Dose on the reference CT's frame of reference when the CT came as DICOM.
    # Privacy: by default the exports carry the pseudonym only (no name, birth date or
    # scanner IDs; a new study UID; dates shifted by --date-shift-days); --keep-identifiers
    # copies the CT's patient name, ID and study UID so a TPS files the dose with the patient.
    ref = reference_label(study)
    tp = study.timepoint(ref)
    for_uid = uid_from_seed("frame-of-reference", study.patient_id, ref)
    pid, pname = study.patient_id, study.patient_id
    study_uid = uid_from_seed("study", study.patient_id)
    if tp.ct is not None and str(tp.ct.format) == "dicom":
        from dosimetry.study.images import dicom_series_of

        info = dicom_series_of(tp.ct, Path("/"), ("CT",))
        for_uid = info.frame_of_reference_uid or for_uid
        if o.keep_identifiers:
            pid, pname, study_uid = info.patient_id, info.patient_name or pid, info.study_uid
    shift = timedelta(days=o.date_shift_days)
    meta = DicomSeriesMeta(
        patient_id=pid, patient_name=pname, study_uid=study_uid,
        series_uid=uid_from_seed("rtdose", study.patient_id, o.dose_engine),
        frame_of_reference_uid=for_uid, series_description=f"rptdose {o.dose_engine}",
        study_datetime=study.injection_datetime + shift,
        manufacturer="rptdose", model_name=f"rptdose {__version__}")
    write_rtdose(dose, out / "dose_rtdose.dcm", meta,
                 comment=f"{study.nuclide} {o.dose_engine} rptdose {__version__}")

    # The contours as an RT Structure Set on the same frame of reference.
    from dosimetry.segmentation.contours import labelmap_rois
    from dosimetry.segmentation.rtstruct import write_rtstruct
    from planning.workflow.kinetics_stage import read_label_table

    labels_img = sitk.Cast(read_image(seg / "labels.nii.gz", pixel_type=None), sitk.sitkUInt16)
    table = read_label_table(seg / "labels.json")
    names = {k: v[0] for k, v in table.items() if v[0] != "body"}
    write_rtstruct(out / "labels_rtstruct.dcm", labelmap_rois(labels_img, names),
                   frame_of_reference_uid=for_uid, patient_id=pid, study_uid=study_uid,
                   series_uid=uid_from_seed("rtstruct", study.patient_id),
                   interpreted_types=["GTV" if table[k][1] == "lesion" else "ORGAN"
                                      for k in sorted(names)])

    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    buf = io.StringIO()
    cols = ["name", "kind", "mass_g", "tia_mbq_h", "tia_sigma_mbq_h", "mean_dose_gy",
            "mean_dose_sigma_gy", "d2_gy", "d50_gy", "d98_gy", "dose_gy_per_gbq", "bed_gy"]
    w = csv.writer(buf)
    w.writerow(cols)
    for v in results["vois"]:
        w.writerow([v.get(c, "") if v.get(c) is not None else "" for c in cols])
    atomic_write_text(out / "vois.csv", buf.getvalue())

    truth_doses = None
    if o.truth_dir is not None and (Path(o.truth_dir) / "tia.nii.gz").is_file():
        from planning.workflow.truth_check import true_doses

        # MC on the truth would double the run time; its organ means agree with DVK's to the
        # DVK's validated accuracy, so the truth check uses DVK after an MC run.
        truth_engine = o.dose_engine if o.dose_engine in ("led", "dvk") else "dvk"
        truth_doses = true_doses(Path(o.truth_dir), engine=truth_engine, nuclide=study.nuclide,
                                 ct=read_image(wd.root / Stage.REGISTRATION.value
                                               / f"{ref}_ct.nii.gz"),
                                 dose_grid=dose, out_json=out / "truth_check.json",
                                 pipeline_labels=(labels_img, table))
    hashes = {f"{tp.label} SPECT": _hash_ref(tp.spect.path) for tp in study.timepoints}
    report = build_report(wd, protocol_name=(results.get("plan") or {}).get("protocol")
                          or o.protocol or default_protocol_for(study),
                          engine=o.dose_engine, truth_dir=o.truth_dir, truth_doses=truth_doses,
                          input_hashes=hashes, date_shift_days=o.date_shift_days,
                          options=o.model_dump(mode="json", exclude={"force", "truth_dir"}))
    write_html(report, out / "report.html")
    write_pdf(report, out / "report.pdf")


def _hash_ref(path: Path) -> str:
    p = Path(path)
    if p.is_file():
        return _sha256(p)
    return fingerprint(file_fingerprint(p))[:16]
