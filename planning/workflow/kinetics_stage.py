"""Kinetics stage: VOI time-activity curves, fits with model selection, and the voxel TIA map.

Reads the registered SPECT images (every timepoint on the reference frame) and the label map,
and writes into ``WORKDIR/kinetics/``:

``fits.json``
    per VOI: TAC (s, Bq), chosen model, parameters, TIA ± σ (fit and calibration terms),
    extrapolated fraction, Akaike weights and every warning;
``tia_bq_s.nii.gz``
    hybrid voxel TIA map [Bq·s per voxel] on the reference SPECT grid — voxel-wise
    mono-exponential shape scaled inside every VOI to that VOI's selected fit
    (:func:`dosimetry.kinetics.hybrid_tia_map`); the dose engines start from it;
``labels_spectgrid.nii.gz``
    the label map on the SPECT grid (nearest neighbour) used for that scaling.

VOI TACs are measured on the CT grid (the label map's own grid, with the SPECT resampled onto
it), so small organs keep their true shape; the TIA map is on the coarser SPECT grid, where the
dose is computed.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dosimetry.io.atomic import atomic_write_text
from dosimetry.io.images import read_image, write_image
from dosimetry.study.workdir import Stage, WorkDir

#: Relative standard uncertainty of the SPECT calibration factor, fully correlated over
#: timepoints. 5 % is the order the EANM guidance gives for a well-calibrated system
#: (Gear et al. 2018, doi:10.1007/s00259-018-4136-7); override in PipelineOptions.
DEFAULT_CALIBRATION_RELATIVE_SIGMA = 0.05


@dataclass(frozen=True)
class VoiKinetics:
    """Kinetics of one VOI as the later stages need them (internal units)."""

    label: int
    name: str
    kind: str
    volume_ml: float
    times_s: tuple[float, ...]
    activity_bq: tuple[float, ...]
    model: str
    tia_bq_s: float
    tia_sigma_bq_s: float
    exponentials: tuple[tuple[float, float], ...]  # (c_bq, k_per_s): A(t) = Σ c e^(−k t)
    extrapolated_fraction: float
    akaike_weights: dict[str, float]
    success: bool
    message: str
    warnings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON form (lists for tuples; non-finite numbers as null, JSON has no NaN)."""
        d = dict(self.__dict__)
        d["exponentials"] = [list(e) for e in self.exponentials]
        for key in ("tia_bq_s", "tia_sigma_bq_s", "extrapolated_fraction"):
            if not math.isfinite(d[key]):
                d[key] = None
        return d


def fit_exponentials(fit) -> tuple[tuple[float, float], ...]:
    """(c [Bq], k [1/s]) terms of a fitted sum-of-exponentials model; () for the trapezoid."""
    from dosimetry.kinetics.models import MODELS, ParamKind

    spec = MODELS.get(str(fit.model))
    if spec is None or not fit.params:
        return ()
    theta = np.array([fit.params[f"{n}_bq" if k is ParamKind.AMPLITUDE else f"{n}_per_s"]
                      for n, k in zip(spec.param_names, spec.kinds, strict=True)])
    c, k, _, _ = spec.terms(theta)
    return tuple((float(ci), float(ki)) for ci, ki in zip(c, k, strict=True))


def read_label_table(path: Path) -> dict[int, tuple[str, str]]:
    """``labels.json`` → {label: (name, kind)}; accepts a list of records or an id→name map."""
    data = json.loads(path.read_text(encoding="utf-8"))
    table: dict[int, tuple[str, str]] = {}
    items = data.get("labels", data) if isinstance(data, dict) else data
    if isinstance(items, dict):
        for key, value in items.items():
            if isinstance(value, dict):
                table[int(key)] = (str(value["name"]), str(value.get("kind", "organ")))
            else:
                table[int(key)] = (str(value), "lesion" if str(value).startswith("lesion")
                                   else "organ")
    else:
        for rec in items:
            label = int(rec.get("label", rec.get("id")))
            table[label] = (str(rec["name"]), str(rec.get("kind", "organ")))
    return table


def run_kinetics(wd: WorkDir, *, calibration_relative_sigma: float =
                 DEFAULT_CALIBRATION_RELATIVE_SIGMA, device: str = "cpu",
                 exclude: tuple[str, ...] = ("body",),
                 pvc_fwhm_mm: float | None = None) -> list[VoiKinetics]:
    """Fit every VOI and make the TIA map; see the module docstring for what is written.

    With ``pvc_fwhm_mm`` (the reconstructed SPECT resolution), VOI activities are corrected
    for partial volume by the geometric transfer matrix before fitting
    (:mod:`dosimetry.kinetics.gtm`); the correction's sensitivity to a 10 % error in the FWHM
    enters the TIA uncertainty as a correlated term, and the recovery per VOI and timepoint is
    recorded in ``fits.json``.
    """
    from dosimetry.kinetics import fit_tac, hybrid_tia_map, tia_uncertainty, voi_tacs
    from dosimetry.nuclides import get_nuclide

    study = wd.study()
    reg = wd.root / Stage.REGISTRATION.value
    seg = wd.root / Stage.SEGMENTATION.value
    out = wd.stage_dir(Stage.KINETICS)
    times = study.times_after_injection_s()
    lam = get_nuclide(study.nuclide).decay_constant_per_s

    labels_ct = sitk.Cast(read_image(seg / "labels.nii.gz", pixel_type=None), sitk.sitkUInt16)
    table = read_label_table(seg / "labels.json")
    names = {k: v[0] for k, v in table.items()}
    spect_ct = [read_image(reg / f"{tp.label}_spect_bq_per_ml.nii.gz") for tp in study.timepoints]
    tacs = voi_tacs(labels_ct, spect_ct, times, image_unit="Bq/mL", names=names)
    pvc_record, pvc_sigma = None, {}
    tac_list = list(tacs.tacs)
    if pvc_fwhm_mm is not None:
        tac_list, pvc_sigma, pvc_record = _partial_volume_correct(
            wd, tac_list, labels_ct, spect_ct, pvc_fwhm_mm, exclude)

    vois: list[VoiKinetics] = []
    fits = {}
    for tac in tac_list:
        if tac.name in exclude:
            continue
        if not any(a > 0 for a in tac.total_bq):
            # A VOI without activity (e.g. an air-filled trachea): nothing to fit; recorded as
            # a failed fit with TIA 0 so later stages skip it and the report says why.
            vois.append(VoiKinetics(
                label=tac.label, name=tac.name,
                kind=table.get(tac.label, (tac.name, "organ"))[1],
                volume_ml=float(tac.volume_ml), times_s=tuple(tac.times_s),
                activity_bq=tuple(float(a) for a in tac.total_bq), model="none", tia_bq_s=0.0,
                tia_sigma_bq_s=float("nan"), exponentials=(), extrapolated_fraction=float("nan"),
                akaike_weights={}, success=False, message="no activity in the VOI at any "
                "timepoint: not fitted", warnings=("no activity: not fitted",)))
            continue
        curve = replace(tac, total_bq=tuple(max(float(a), 0.0) for a in tac.total_bq)).curve()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit = fit_tac(curve, lam)
        notes = tuple(dict.fromkeys([*fit.warnings, *(str(w.message) for w in caught)]))
        sigma = float("nan")
        if fit.success:
            unc = tia_uncertainty(fit, calibration_relative_sigma=calibration_relative_sigma,
                                  recovery_relative_sigma=pvc_sigma.get(tac.label, 0.0))
            sigma = float(unc.sigma_bq_s)
            fits[tac.label] = fit
        vois.append(VoiKinetics(
            label=tac.label, name=tac.name, kind=table.get(tac.label, (tac.name, "organ"))[1],
            volume_ml=float(tac.volume_ml), times_s=tuple(tac.times_s),
            activity_bq=tuple(tac.total_bq), model=str(fit.model),
            tia_bq_s=float(fit.tia_bq_s), tia_sigma_bq_s=sigma,
            exponentials=fit_exponentials(fit) if fit.success else (),
            extrapolated_fraction=float(fit.extrapolated_fraction),
            akaike_weights={str(k): float(v) for k, v in fit.akaike_weights.items()
                            if math.isfinite(v)},
            success=bool(fit.success), message=fit.message, warnings=notes))

    # Voxel TIA on the reference SPECT grid, scaled inside each VOI to its fit.
    spect_grid = [read_image(reg / f"{tp.label}_spect_bq_per_ml_spectgrid.nii.gz")
                  for tp in study.timepoints]
    labels_sg = sitk.Resample(labels_ct, spect_grid[0], sitk.Transform(),
                              sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)
    keep = np.isin(sitk.GetArrayViewFromImage(labels_sg), list(fits))
    lab_arr = np.where(keep, sitk.GetArrayViewFromImage(labels_sg), 0).astype(np.uint16)
    labels_used = sitk.GetImageFromArray(lab_arr)
    labels_used.CopyInformation(labels_sg)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        hybrid = hybrid_tia_map(spect_grid, times, lam, labels_used, voi_fits=fits,
                                image_unit="Bq/mL", device=device)
    tia_map = hybrid.image
    if pvc_record is not None:
        # Voxel map: region-based voxel-wise correction, so that the activity spilled out of
        # each VOI is not also left in its neighbours (it would add cross-dose).
        from dosimetry.kinetics.gtm import BODY_HU, rbv_correct

        ref = study.reference_timepoint or study.timepoints[0].label
        ct_sg = sitk.Resample(read_image(reg / f"{ref}_ct.nii.gz"), labels_sg, sitk.Transform(),
                              sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
        totals = {int(v.label): float(v.tia_bq_s) for v in vois if v.label in fits}
        tia_map = rbv_correct(hybrid.image, labels_used, pvc_fwhm_mm, region_totals=totals,
                              body=ct_sg > BODY_HU)
        pvc_record["voxel_map"] = ("region-based voxel-wise correction (Thomas et al. 2011, "
                                   "doi:10.1007/s00259-011-1745-9), VOI totals = fitted TIA")
    write_image(sitk.Cast(tia_map, sitk.sitkFloat32), out / "tia_bq_s.nii.gz")
    write_image(labels_used, out / "labels_spectgrid.nii.gz")
    record = {"nuclide": study.nuclide, "decay_constant_per_s": lam,
              "calibration_relative_sigma": calibration_relative_sigma,
              "partial_volume_correction": pvc_record,
              "voxel_map": hybrid.summary(), "voxel_map_warnings": list(hybrid.warnings),
              "vois": [v.to_dict() for v in vois]}
    atomic_write_text(out / "fits.json",
                      json.dumps(record, indent=2, default=float, allow_nan=False) + "\n")
    return vois


def _partial_volume_correct(wd: WorkDir, tacs: list, labels_ct: sitk.Image,
                            spect_ct: list[sitk.Image], fwhm_mm: float,
                            exclude: tuple[str, ...]) -> tuple[list, dict[int, float], dict]:
    """GTM-corrected TACs, the per-label relative σ of the correction, and its record."""
    from dosimetry.kinetics.gtm import REMAINDER, gtm_correct

    study = wd.study()
    reg = wd.root / Stage.REGISTRATION.value
    ref = study.reference_timepoint or study.timepoints[0].label
    ct_path = reg / f"{ref}_ct.nii.gz"
    ct = read_image(ct_path) if ct_path.exists() else None
    if ct is not None and ct.GetSize() != labels_ct.GetSize():
        ct = None
    spect_spacing = read_image(
        reg / f"{study.timepoints[0].label}_spect_bq_per_ml_spectgrid.nii.gz").GetSpacing()
    # Excluded labels (the body outline) are not regions of their own: they join the remainder.
    lab = sitk.GetArrayViewFromImage(labels_ct)
    excluded = {t.label for t in tacs if t.name in exclude}
    if excluded:
        arr = np.where(np.isin(lab, list(excluded)), 0, lab).astype(np.uint16)
        kept = sitk.GetImageFromArray(arr)
        kept.CopyInformation(labels_ct)
        labels_ct = kept
    res = gtm_correct(labels_ct, spect_ct, fwhm_mm, spect_spacing_mm=spect_spacing, ct=ct)
    pos = {r: i for i, r in enumerate(res.regions)}
    out, sigma, per_voi = [], {}, []
    rc = res.recovery()
    for tac in tacs:
        i = pos.get(tac.label)
        if i is None:
            out.append(tac)
            continue
        # A negative corrected activity is noise in a region that holds almost none: zero.
        clipped = [k for k, v in enumerate(res.corrected_bq[i]) if v < 0]
        total = tuple(max(float(v), 0.0) for v in res.corrected_bq[i])
        out.append(replace(tac, total_bq=total,
                           mean_bq_per_ml=tuple(v / tac.volume_ml for v in total),
                           recovery_coefficient=float(np.nanmean(rc[i]))))
        sigma[tac.label] = float(res.relative_sigma[i])
        per_voi.append({"label": tac.label, "name": tac.name,
                        "recovery": [float(v) for v in rc[i]],
                        "relative_sigma": float(res.relative_sigma[i]),
                        "clipped_to_zero_at": [tacs[0].times_s[k] for k in clipped]})
    record = {"method": "geometric transfer matrix (Rousset et al. 1998)",
              "fwhm_mm": res.fwhm_mm, "blur_sigma_mm": list(res.sigma_mm),
              "condition_number": res.condition_number,
              "remainder_region": REMAINDER in res.regions, "vois": per_voi}
    return out, sigma, record


def load_kinetics(wd: WorkDir) -> list[VoiKinetics]:
    """The VOI kinetics a finished kinetics stage wrote."""
    data = json.loads((wd.root / Stage.KINETICS.value / "fits.json").read_text(encoding="utf-8"))
    out = []
    for d in data["vois"]:
        d = dict(d)
        d["times_s"] = tuple(d["times_s"])
        d["activity_bq"] = tuple(d["activity_bq"])
        d["exponentials"] = tuple(tuple(e) for e in d["exponentials"])
        d["warnings"] = tuple(d["warnings"])
        for key in ("tia_bq_s", "tia_sigma_bq_s", "extrapolated_fraction"):
            d[key] = math.nan if d[key] is None else float(d[key])
        out.append(VoiKinetics(**d))
    return out
