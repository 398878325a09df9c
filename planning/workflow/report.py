"""The dose report: built from the files the stages wrote in the work folder.

Sections: study and protocol; image QA (registration metrics and fused overlays, segmentation
overlay); time-activity curves with the chosen model and Akaike weights; the VOI table (mass,
TIA ± σ, mean dose ± σ, D2/D50/D98, BED); DVHs; dose slices (axial, coronal, sagittal, MIP)
with contours; the plan; truth check on digital patients; methods and validation; provenance.
"""

from __future__ import annotations

import json
import math
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dosimetry import __version__, units
from dosimetry.io.images import read_image
from dosimetry.study.workdir import Stage, WorkDir
from planning.workflow.report_render import Figure, Report, Section, Table, figure_png


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}"


def _num(x: Any) -> float:
    """A JSON number, NaN for null/absent (fits.json writes non-finite values as null)."""
    return float("nan") if x is None else float(x)


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _tac_figure(kin: dict[str, Any]) -> Figure:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vois = [v for v in kin["vois"] if v["success"]]
    n = max(len(vois), 1)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, v in zip(axes.ravel(), vois, strict=False):
        t_h = np.asarray(v["times_s"]) / units.HOUR
        a = np.asarray(v["activity_bq"]) / units.MBQ
        tt = np.linspace(0.0, max(t_h.max() * 1.3, 1.0), 200)
        ax.plot(t_h, a, "ko", ms=4, label="measured")
        if v["exponentials"]:
            curve = sum(c * np.exp(-k * tt * units.HOUR) for c, k in v["exponentials"])
            ax.plot(tt, np.asarray(curve) / units.MBQ, "-", lw=1.8, label=v["model"])
        weights = ", ".join(f"{m} {w:.2f}" for m, w in v["akaike_weights"].items())
        ax.set_title(f"{v['name']}: {v['model']}\nweights: {weights}", fontsize=8)
        ax.set_xlabel("time after injection [h]", fontsize=8)
        ax.set_ylabel("activity [MBq]", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return Figure("Time-activity curves", figure_png(fig),
                  "Total VOI activity per timepoint with the selected model; Akaike weights of "
                  "the candidate models the number of points allows.")


def _slices(arr: np.ndarray, centre: tuple[int, int, int]) -> list[tuple[str, np.ndarray]]:
    z, y, x = centre
    return [("axial", arr[z]), ("coronal", arr[:, y, :][::-1]),
            ("sagittal", arr[:, :, x][::-1]), ("coronal MIP", arr.max(axis=1)[::-1])]


def _dose_figure(dose: sitk.Image, ct: sitk.Image, labels: sitk.Image) -> Figure:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = sitk.GetArrayFromImage(sitk.Resample(dose, labels, sitk.Transform(), sitk.sitkLinear,
                                             0.0, sitk.sitkFloat32))
    c = sitk.GetArrayFromImage(sitk.Resample(ct, labels, sitk.Transform(), sitk.sitkLinear,
                                             -1000.0, sitk.sitkFloat32))
    lab = sitk.GetArrayViewFromImage(labels)
    hot = np.unravel_index(int(np.argmax(d)), d.shape)
    sp = labels.GetSpacing()
    fig, axes = plt.subplots(1, 4, figsize=(15, 5))
    vmax = float(np.percentile(d[d > 0], 99.5)) if np.any(d > 0) else 1.0
    for ax, (name, img), (_, ctimg), (_, limg) in zip(
            axes, _slices(d, hot), _slices(c, hot), _slices(lab, hot), strict=True):
        aspect = sp[2] / sp[0] if name != "axial" else sp[1] / sp[0]
        ax.imshow(ctimg, cmap="gray", vmin=-300, vmax=400, aspect=aspect)
        shown = np.ma.masked_less(img, 0.02 * vmax)
        im = ax.imshow(shown, cmap="jet", alpha=0.55, vmin=0, vmax=vmax, aspect=aspect)
        if name != "coronal MIP" and limg.max() > 0:
            ax.contour(limg, levels=np.unique(limg[limg > 0]) - 0.5, colors="w",
                       linewidths=0.5)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.colorbar(im, ax=axes, shrink=0.7, label="absorbed dose [Gy]")
    return Figure("Absorbed dose", figure_png(fig),
                  "Dose over the reference CT through the hottest voxel, with VOI contours "
                  "(white), and the coronal maximum-intensity projection.")


def _dvh_figure(doses: list[dict[str, Any]]) -> Figure:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for v in doses:
        ax.plot(v["dvh_dose_gy"], np.asarray(v["dvh_volume_fraction"]) * 100,
                ls="--" if v["kind"] == "lesion" else "-", label=v["name"])
    ax.set_xlabel("absorbed dose [Gy]")
    ax.set_ylabel("volume [%]")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return Figure("Dose-volume histograms", figure_png(fig),
                  "Cumulative DVH per VOI (lesions dashed).")


def _overlay_figure(wd: WorkDir, study) -> Figure | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reg = wd.root / Stage.REGISTRATION.value
    tps = [tp for tp in study.timepoints
           if (reg / f"{tp.label}_spect_bq_per_ml.nii.gz").is_file()]
    if not tps:
        return None
    fig, axes = plt.subplots(1, len(tps), figsize=(3.6 * len(tps), 4.6), squeeze=False)
    for ax, tp in zip(axes[0], tps, strict=True):
        ct = sitk.GetArrayFromImage(read_image(reg / f"{tp.label}_ct.nii.gz"))
        sp = sitk.GetArrayFromImage(read_image(reg / f"{tp.label}_spect_bq_per_ml.nii.gz"))
        y = ct.shape[1] // 2
        ax.imshow(ct[:, y, :][::-1], cmap="gray", vmin=-300, vmax=400, aspect="auto")
        s = sp[:, y, :][::-1]
        ax.imshow(np.ma.masked_less(s, 0.05 * max(float(s.max()), 1e-12)), cmap="hot",
                  alpha=0.5, aspect="auto")
        ax.set_title(f"{tp.label} (registered)", fontsize=9)
        ax.axis("off")
    return Figure("Registration overlay", figure_png(fig),
                  "Each timepoint's CT and SPECT after registration to the reference, coronal "
                  "slice through the centre: anatomy and uptake should line up across columns.")


def _flatten_qa(qa: Any) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    items = qa.get("timepoints", qa) if isinstance(qa, dict) else qa
    if isinstance(items, dict):
        items = [dict(v, timepoint=k) if isinstance(v, dict) else {"timepoint": k, "value": v}
                 for k, v in items.items()]
    for rec in items or []:
        if not isinstance(rec, dict):
            continue
        flat = {k: v for k, v in rec.items() if isinstance(v, int | float | str)}
        rows.append(tuple(f"{k}={_fmt(v) if isinstance(v, float) else v}"
                          for k, v in flat.items()))
    return rows


def build_report(wd: WorkDir, *, protocol_name: str | None, engine: str,
                 truth_dir: Path | None = None, truth_doses: dict[str, Any] | None = None,
                 input_hashes: dict[str, str] | None = None,
                 options: dict[str, Any] | None = None, date_shift_days: int = 0) -> Report:
    """Assemble the report from the work folder's stage outputs."""
    study = wd.study()
    reg = wd.root / Stage.REGISTRATION.value
    seg = wd.root / Stage.SEGMENTATION.value
    kin = _load(wd.root / Stage.KINETICS.value / "fits.json")
    dose_vois = _load(wd.root / Stage.DOSE.value / "vois.json")["vois"]
    engine_meta = _load(wd.root / Stage.DOSE.value / "engine.json") or {}
    plan = _load(wd.root / Stage.PLANNING.value / "plan.json")
    kin_by_name = {v["name"]: v for v in kin["vois"]}
    sections: list[Section] = []

    injected = study.injection_datetime + timedelta(days=date_shift_days)
    header = (("patient (pseudonym)", study.patient_id),
              ("nuclide / radiopharmaceutical", f"{study.nuclide} {study.radiopharmaceutical}"),
              ("administered activity", f"{study.administered_activity_mbq:.0f} MBq on "
                                        f"{injected:%Y-%m-%d %H:%M}"
                                        + (" (date shifted)" if date_shift_days else "")),
              ("timepoints", ", ".join(f"{tp.label}" for tp in study.timepoints)),
              ("protocol", protocol_name or "none"),
              ("dose engine", engine))

    # --- image QA -------------------------------------------------------------------------
    qa_tables, qa_figs = [], []
    qa = _load(reg / "qa.json")
    if qa is not None:
        qa_tables.append(Table("Registration QA", ("metrics",), tuple(
            (" · ".join(r),) for r in _flatten_qa(qa))))
    fig = _overlay_figure(wd, study)
    if fig is not None:
        qa_figs.append(fig)
    organs = _load(seg / "organs.json")
    if organs is not None:
        recs = organs.get("organs", organs) if isinstance(organs, dict) else organs
        if isinstance(recs, list):
            qa_tables.append(Table("Segmentation", ("VOI", "volume [mL]", "mass [g]"), tuple(
                (str(r.get("name")), _fmt(r.get("volume_ml"), 4), _fmt(r.get("mass_g"), 4))
                for r in recs)))
    sections.append(Section("Image quality assurance", (
        "Every timepoint was registered to the reference timepoint's CT; each SPECT followed "
        "its CT's transform with its total activity conserved.",), tuple(qa_tables),
        tuple(qa_figs)))

    # --- kinetics -----------------------------------------------------------------------------
    warn_lines = [f"{v['name']}: {w}" for v in kin["vois"] for w in v["warnings"]]
    intro = (f"Models chosen by AICc among those the {len(study.timepoints)} points allow, "
             "with the NUKFIT acceptance criteria (parameter CV < 50 %, |correlation| < 0.8).")
    sections.append(Section("Time-activity curves", (intro, *warn_lines[:20]), (),
                            (_tac_figure(kin),)))

    # --- VOI table and DVH ----------------------------------------------------------------------
    rows = []
    for v in dose_vois:
        k = kin_by_name.get(v["name"], {})
        tia = _num(k.get("tia_bq_s")) / (units.MBQ * units.HOUR)
        tia_s = _num(k.get("tia_sigma_bq_s")) / (units.MBQ * units.HOUR)
        rows.append((v["name"], _fmt(v["mass_g"], 4), f"{_fmt(tia, 4)} ± {_fmt(tia_s, 2)}",
                     k.get("model", "–"),
                     f"{_fmt(v['mean_dose_gy'])} ± {_fmt(v['mean_dose_sigma_gy'], 2)}",
                     _fmt(v["d2_gy"]), _fmt(v["d50_gy"]), _fmt(v["d98_gy"]),
                     _fmt(v["dose_gy_per_gbq"]), _fmt(v["bed_gy"])))
    sections.append(Section("Dosimetry per VOI", (), (Table(
        "VOIs", ("VOI", "mass [g]", "TIA [MBq·h]", "model", "mean dose [Gy]", "D2 [Gy]",
                 "D50 [Gy]", "D98 [Gy]", "Gy/GBq", "BED [Gy]"), tuple(rows),
        "± are standard (1σ) uncertainties: TIA from the fit and the calibration; dose adds "
        "the engine's statistics and its dose-conversion error in quadrature."),),
        (_dvh_figure(dose_vois),)))

    dose_path = wd.root / Stage.DOSE.value / "dose_gy.nii.gz"
    ref = study.reference_timepoint or study.timepoints[0].label
    sections.append(Section("Dose distribution", (), (), (_dose_figure(
        read_image(dose_path), read_image(reg / f"{ref}_ct.nii.gz"),
        sitk.Cast(read_image(seg / "labels.nii.gz", pixel_type=None), sitk.sitkUInt16)),)))

    # --- plan ---------------------------------------------------------------------------------
    if plan is not None:
        sections.append(_plan_section(plan))

    # --- truth check --------------------------------------------------------------------------
    if truth_dir is not None and (truth_dir / "truth.json").is_file():
        sections.append(truth_section(truth_dir, kin, dose_vois, truth_doses))

    # --- methods and provenance ---------------------------------------------------------------
    meta = ", ".join(f"{k}={v}" for k, v in engine_meta.items()
                     if isinstance(v, int | float | str) and k != "engine")
    val_paragraphs, val_tables = validation_summary(wd, engine)
    sections.append(Section("Methods and validation", (
        f"Dose engine: {engine} ({meta}).",
        *(f"Engine warning: {w}" for w in engine_meta.get("warnings", [])),
        "Dose conversion uncertainty per engine (1σ, organ means): LED 10 %, DVK 5 %, MC 2 %; "
        "DVK and deep add the photon dose from beyond their reach by a far-field point kernel "
        "of infinite soft tissue, with 10 % of that term as its uncertainty; see "
        "planning/workflow/dose_stage.py for sources.",
        *val_paragraphs,
        "Kinetics: VOI TACs on the CT grid; hybrid voxel TIA (voxel mono-exponential shape "
        "scaled to each VOI's selected fit) on the SPECT grid.",
        _pvc_sentence(kin.get("partial_volume_correction")),
        "BED: Lea–Catcheside factor of the fitted kinetics with the tissue's α/β and repair "
        "half-time (planning.tissues).",
    ), val_tables))
    prov = [("rptdose version", __version__)]
    prov += [(f"input {k}", v) for k, v in sorted((input_hashes or {}).items())]
    prov += [(f"option {k}", str(v)) for k, v in sorted((options or {}).items())]
    sections.append(Section("Provenance", (), (Table("Provenance", ("item", "value"),
                                                      tuple(prov)),)))
    return Report(f"Dosimetry report — {study.nuclide} {study.radiopharmaceutical}", header,
                  tuple(sections))


def validation_summary(wd: WorkDir, engine: str) -> tuple[tuple[str, ...], tuple[Table, ...]]:
    """What the methods section says about the validation of ``engine`` on this study.

    From ``WORKDIR/validation/validation.json`` (written by ``rptdose mc validate``): the
    reference and its statistical σ, the study engine's VOI mean-dose differences (a table),
    Bland–Altman bias and limits of agreement, and gamma pass rates. Without that file: that no
    study-specific validation was run and how to run one. A record made on another TIA map than
    the current one is flagged as out of date.
    """
    from dosimetry.errors import InputError
    from planning.workflow.validate import read_validation, tia_digest

    how = ("run 'rptdose mc validate WORKDIR' to compare the engines with a Monte Carlo "
           "reference on this study's TIA map and CT; the next report run quotes it here")
    try:
        data = read_validation(wd)
    except InputError as exc:
        return (f"Study-specific engine validation could not be read: {exc}.",), ()
    if data is None:
        return (f"No study-specific validation of the dose engine was run; {how}.",), ()
    try:
        return _validation_summary(wd, engine, data, tia_digest)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return (f"Study-specific engine validation: validation/validation.json is incomplete "
                f"({type(exc).__name__}: {exc}); re-run 'rptdose mc validate WORKDIR'.",), ()


def _validation_summary(wd: WorkDir, engine: str, data: dict[str, Any], digest
                        ) -> tuple[tuple[str, ...], tuple[Table, ...]]:
    ref = data["reference"]
    comp = data["comparison"]
    validated = list(comp["engines"])
    paras = [f"Study-specific engine validation ({str(data.get('created', ''))[:10]}, "
             "validation/validation.json): engines " + ", ".join(validated)
             + f" against {ref.get('description', ref.get('kind'))} on this study's TIA map "
             "and CT."]
    rel_v = ref.get("voxel_relative_sigma_median_in_vois")
    rel_m = ref.get("voi_mean_relative_sigma_median")
    rel_e = ref.get("voxel_relative_sigma_median_evaluated")
    if rel_v is not None:
        where = (f", {100 * rel_e:.2f} % where the gamma is evaluated"
                 if rel_e is not None else "")
        paras.append(f"Reference statistical uncertainty: median voxel σ {100 * rel_v:.2f} % in "
                     f"the VOIs{where}; median σ of the VOI means {100 * (rel_m or 0.0):.2f} %.")
    paras += [f"Validation note: {n}." for n in data.get("notes", [])]
    tia_now = wd.root / Stage.KINETICS.value / "tia_bq_s.nii.gz"
    recorded = (data.get("inputs") or {}).get("tia", {}).get("sha256_16")
    if tia_now.is_file() and recorded and digest(tia_now) != recorded:
        paras.append("Caution: the TIA map has changed since this validation was run, so its "
                     "figures describe an earlier run; re-run 'rptdose mc validate WORKDIR'.")
    if engine not in validated:
        paras.append(f"The validation did not include the {engine} engine used for this "
                     f"study; run 'rptdose mc validate WORKDIR --engines {engine}' to add it.")
        return tuple(paras), ()
    rows, diffs = [], []
    for v in comp["vois"]:
        e = v["engines"][engine]
        d = e["difference_pct"]["mean"]
        z = e.get("difference_in_reference_sigma")
        if d is not None:
            diffs.append((d, v["name"]))
        rows.append((v["name"], _fmt(v["reference"]["mean_gy"]),
                     _fmt(v["reference"].get("mean_sigma_gy"), 2), _fmt(e["mean_gy"]),
                     "–" if d is None else f"{d:+.1f} %", "–" if z is None else f"{z:+.1f}"))
    if diffs:
        lo, hi = min(diffs), max(diffs)
        med = float(np.median([abs(d) for d, _ in diffs]))
        text = (f"{engine} against the reference, VOI mean dose: median |difference| "
                f"{med:.1f} %, from {lo[0]:+.1f} % ({lo[1]}) to {hi[0]:+.1f} % ({hi[1]})")
        ba = comp["bland_altman"][engine]
        if ba.get("loa_lower_pct") is not None:
            text += (f"; Bland–Altman bias {ba['mean_difference_pct']:+.1f} %, 95 % limits of "
                     f"agreement {ba['loa_lower_pct']:+.1f} % to {ba['loa_upper_pct']:+.1f} % "
                     f"over {ba['n']} VOIs")
        paras.append(text + ".")
    gammas = comp["gamma"][engine]
    if gammas:
        rates = ", ".join(f"{g['criterion'].replace(' global', '')} "
                          f"{100 * g['pass_rate']:.1f} %" for g in gammas)
        paras.append(f"Gamma pass rates of {engine} inside the body (Low et al. 1998, "
                     f"global, low-dose threshold {100 * gammas[0]['threshold']:.0f} % of the "
                     f"maximum): {rates}.")
    table = Table(f"Validation of {engine} against the {ref.get('kind', 'reference')} "
                  "reference", ("VOI", "reference [Gy]", "σ ref [Gy]", f"{engine} [Gy]",
                                "difference", "difference / σ ref"), tuple(rows),
                  "VOI means on the CT grid as in the VOI table; σ ref: statistical σ of the "
                  "reference's VOI mean.")
    return tuple(paras), (table,)


def _plan_section(plan: dict[str, Any]) -> Section:
    paras = [f"Status: {plan.get('status', '?')}. {plan.get('message', '')}".strip()]
    if plan.get("binding_constraint"):
        paras.append(f"Binding constraint: {plan['binding_constraint']}.")
    paras += [str(n) for n in plan.get("notes", [])][:10]
    tables = []
    cycles = plan.get("cycles") or plan.get("planned_cycles") or []
    if cycles:
        cols = tuple(k for k in cycles[0] if isinstance(cycles[0][k], int | float | str))
        tables.append(Table("Planned cycles", cols, tuple(
            tuple(_fmt(c[k]) if isinstance(c[k], float) else str(c[k]) for k in cols)
            for c in cycles)))
    cons = plan.get("constraints") or []
    if cons:
        cols = tuple(k for k in cons[0] if isinstance(cons[0][k], int | float | str | bool))
        tables.append(Table("Limits and margins", cols, tuple(
            tuple(_fmt(c[k]) if isinstance(c[k], float) else str(c[k]) for k in cols)
            for c in cons)))
    return Section("Treatment plan", tuple(paras), tuple(tables))


def _pvc_sentence(pvc: dict[str, Any] | None) -> str:
    if not pvc:
        return ("Partial-volume correction: none (no SPECT resolution was given; small VOIs "
                "lose activity to spill-out).")
    return (f"Partial-volume correction: geometric transfer matrix (Rousset et al., J Nucl Med "
            f"1998;39:904) with a {pvc['fwhm_mm']:.1f} mm FWHM system resolution (Gaussian σ "
            f"{', '.join(f'{s:.1f}' for s in pvc['blur_sigma_mm'])} mm incl. SPECT voxel and "
            f"resampling), condition number {pvc['condition_number']:.1f}; voxel TIA map by "
            "region-based voxel-wise correction (Thomas et al., EJNMMI 2011;38:1104). Assumes "
            "uniform activity per VOI for the spill between VOIs; the sensitivity to a 10 % "
            "FWHM error is in the TIA σ.")


def _lesion_detection_lines(matches: dict[str, str | None], organs: dict[str, Any]
                            ) -> tuple[str, ...]:
    if not matches:
        return ()
    found = {t for t in matches.values() if t is not None}
    false_pos = sorted(o for o, t in matches.items() if t is None)
    missed = sorted(n for n in organs if n.startswith("lesion") and n not in found)
    return (f"Lesion detection: {len(found)} of {len(found) + len(missed)} true lesions found"
            + (f" (missed: {', '.join(missed)})" if missed else "")
            + f"; {len(false_pos)} false positive(s)"
            + (f" ({', '.join(false_pos)})." if false_pos else "."),)


def truth_section(truth_dir: Path, kin: dict[str, Any], dose_vois: list[dict[str, Any]],
                  truth_doses: dict[str, Any] | None = None) -> Section:
    """Per-organ TIA and dose against a digital patient's truth."""
    truth = json.loads((truth_dir / "truth.json").read_text(encoding="utf-8"))
    organs = truth.get("organs", truth.get("vois", {}))
    if isinstance(organs, list):
        organs = {o["name"]: o for o in organs}
    kin_by = {v["name"]: v for v in kin["vois"]}
    dose_by = {v["name"]: v for v in dose_vois}
    matches = (truth_doses or {}).get("lesion_matches", {})
    true_name = {ours: theirs for ours, theirs in matches.items() if theirs is not None}
    rows = []
    pairs = [(n, n) for n in organs if n in kin_by and n not in matches]
    pairs += [(ours, theirs) for ours, theirs in true_name.items() if ours in kin_by]
    for name, tname in pairs:
        t = organs.get(tname)
        if not isinstance(t, dict):
            continue
        true_tia = t.get("tia_mbq_h")
        est = _num(kin_by[name]["tia_bq_s"]) / (units.MBQ * units.HOUR)
        sig = _num(kin_by[name]["tia_sigma_bq_s"]) / (units.MBQ * units.HOUR)
        err = (est / true_tia - 1) * 100 if true_tia else float("nan")
        within = abs(est - true_tia) <= 2 * sig if true_tia else False
        true_dose = ((truth_doses or {}).get("organs", {}).get(tname, {}).get("mean_dose_gy")
                     or t.get("mean_dose_gy"))
        d = dose_by.get(name, {}).get("mean_dose_gy")
        derr = (d / true_dose - 1) * 100 if true_dose and d is not None else float("nan")
        shown = name if name == tname else f"{name} (true {tname})"
        rows.append((shown, _fmt(true_tia, 4), _fmt(est, 4), f"{err:+.1f} %",
                     "yes" if within else "no", _fmt(true_dose), _fmt(d),
                     f"{derr:+.1f} %" if math.isfinite(derr) else "–"))
    return Section("Truth check (digital patient)", (
        "The study is a digital patient: its true organ TIAs are known exactly. The error of "
        "each estimate and whether the truth lies within its 2σ interval are shown. The true "
        "dose is the dose of the true TIA map with the same engine and dose grid, so the dose "
        "error is that of the activity chain (registration, segmentation, partial volume, "
        "kinetics); the engine's own error is in the validation figures. Detected lesions "
        "are matched to the true ones by voxel overlap.",
        *_lesion_detection_lines(matches, organs)),
        (Table("Estimated against true", ("VOI", "true TIA [MBq·h]", "estimated", "error",
                                          "within 2σ", "true dose [Gy]", "dose [Gy]",
                                          "dose error"), tuple(rows)),))
