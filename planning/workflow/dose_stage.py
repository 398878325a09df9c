"""Dose stage: TIA map × engine → dose map, then per-VOI dose statistics and BED.

Writes into ``WORKDIR/dose/``: ``dose_gy.nii.gz`` (SPECT grid), ``dose_sigma_gy.nii.gz`` when
the engine estimates a statistical uncertainty, ``engine.json`` (engine metadata) and
``vois.json`` (per VOI: mass, mean dose ± σ, D2/D50/D98, dose per GBq, BED, DVH).

VOI statistics are taken on the label map's CT grid: the dose is resampled onto it (linear),
so a VOI is averaged over its own voxels, not over coarse SPECT voxels it only partly fills.

Uncertainty of a VOI mean dose (standard, 1σ), three terms in quadrature:

* TIA: the kinetics stage's σ (fit + calibration) — the dose is proportional to the TIA of the
  source, and for organs the self-dose dominates;
* engine statistics: from the engine's σ map (MC), combined over the VOI's SPECT-grid voxels
  as independent, √(Σσ²)/N; for the deep engine its model σ instead, as the mean voxel σ
  rescaled to the organ-mean calibration (α_VOI/α), plus the 2 % of the MC it reproduces;
* dose conversion: a relative term per engine for the method's own error against full
  transport — LED 10 %, DVK 5 %, MC 2 % (values for organs in soft tissue; LED and single-
  kernel DVK errors of 7–10 % against MC are reported by Lee et al. 2019,
  doi:10.1038/s41598-019-46620-y, and the SNMMI dosimetry challenge, JNM 2024;65:1166; the
  density-corrected DVK and our MC terms are our estimates, to be replaced by the cross-engine
  validation figures);
* far field (DVK and deep): 10 % of the VOI's mean far-field photon dose
  (:data:`FAR_FIELD_RELATIVE_SIGMA`, :mod:`dosimetry.dose.far_field`), the error of its
  infinite-soft-tissue kernel. Measured by ``python -m bench deep`` against our MC: the term
  is 6–25 % of the dose of organs away from the uptake and was off by 2–16 % of itself (I-131
  kidneys +4.1 % of their dose with a 25 % term; Lu-177 bone −1.7 % with 6 %). It is
  correlated between voxels, so it is not reduced by averaging over the VOI.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import SimpleITK as sitk

from dosimetry.io.atomic import atomic_write_text
from dosimetry.io.images import read_image, write_image
from dosimetry.study.workdir import Stage, WorkDir
from planning.workflow.kinetics_stage import VoiKinetics

#: Relative standard uncertainty of the dose-conversion method for organ means (see module).
DOSE_CONVERSION_RELATIVE_SIGMA = {"led": 0.10, "dvk": 0.05, "mc": 0.02, "deep": 0.02,
                                  "gate": 0.02}
#: Relative standard uncertainty of the far-field photon term of DVK and deep (see module).
FAR_FIELD_RELATIVE_SIGMA = 0.10


def far_field_on(result, tia: sitk.Image, like: sitk.Image) -> np.ndarray | None:
    """The far-field photon dose (Gy) the engine added, resampled onto ``like``'s grid, or
    None when it added none (LED, MC, GATE, or ``far_field=False``)."""
    from dosimetry.dose.far_field import far_field_dose

    ff = result.metadata.get("far_field") if isinstance(result.metadata, dict) else None
    if not isinstance(ff, dict) or "inner_half_voxels" not in ff or not ff.get("emissions"):
        return None
    tail, _ = far_field_dose(sitk.GetArrayFromImage(tia), tia.GetSpacing(), result.nuclide,
                             ff["inner_half_voxels"], ff["emissions"])
    img = sitk.GetImageFromArray(tail)
    img.CopyInformation(tia)
    return sitk.GetArrayFromImage(sitk.Resample(img, like, sitk.Transform(), sitk.sitkLinear,
                                                0.0, sitk.sitkFloat32))


@dataclass(frozen=True)
class VoiDose:
    """Dose of one VOI (Gy, g)."""

    label: int
    name: str
    kind: str
    mass_g: float
    mean_dose_gy: float
    mean_dose_sigma_gy: float
    sigma_components_relative: dict[str, float]
    d2_gy: float
    d50_gy: float
    d98_gy: float
    dose_gy_per_gbq: float
    bed_gy: float | None
    tissue: str
    g_factor: float | None
    dvh_dose_gy: tuple[float, ...]
    dvh_volume_fraction: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def reference_label(study) -> str:
    """The timepoint all others are registered to: the manifest's choice, else the first."""
    return study.reference_timepoint or study.timepoints[0].label


def _dvh(values: np.ndarray, n: int = 100) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Cumulative DVH: fraction of the VOI receiving at least each dose level."""
    if values.size == 0:
        return (), ()
    top = float(values.max())
    levels = np.linspace(0.0, top, n) if top > 0 else np.zeros(1)
    sorted_v = np.sort(values)
    frac = 1.0 - np.searchsorted(sorted_v, levels, side="left") / values.size
    return tuple(float(x) for x in levels), tuple(float(x) for x in frac)


def run_dose(wd: WorkDir, vois: list[VoiKinetics], *, engine: str = "dvk", device: str = "cpu",
             mc_decays: int = 2_000_000, seed: int = 0, progress=None) -> list[VoiDose]:
    """Compute the dose map and the VOI statistics (see the module docstring)."""
    from dosimetry.dose.engines import compute_dose
    from dosimetry.materials.hu import hu_to_density
    from planning.radiobiology import DoseRateShape, bed
    from planning.tissues import tissue_for_voi

    study = wd.study()
    reg = wd.root / Stage.REGISTRATION.value
    seg = wd.root / Stage.SEGMENTATION.value
    kin = wd.root / Stage.KINETICS.value
    out = wd.stage_dir(Stage.DOSE)
    ref = reference_label(study)

    tia = read_image(kin / "tia_bq_s.nii.gz")
    ct = read_image(reg / f"{ref}_ct.nii.gz")
    options: dict[str, Any] = {}
    if engine == "mc":
        options = {"n_decays": int(mc_decays), "seed": int(seed), "device": device}
        if progress is not None:
            options["progress"] = progress
    elif engine == "deep":
        options = {"device": device, "seed": int(seed)}
    elif engine == "gate":
        # GATE finds its Geant4 data itself ($RPTDOSE_G4_DATA, opengate's folder, G4…DATA)
        # and fails with instructions when they are absent; its simulation folder is kept.
        options = {"n_decays": int(mc_decays), "seed": int(seed), "work_dir": out / "gate"}
        if progress is not None:
            options["progress"] = progress
    # The engines announce fallbacks (e.g. HU clipped to the calibration range) as warnings:
    # they are recorded with the engine's metadata and shown in the report.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = compute_dose(engine, tia, study.nuclide, ct, **options)
    engine_warnings = list(dict.fromkeys(str(w.message) for w in caught))
    # FFT convolution leaves round-off of either sign (|x| ~ 1e-7 of the maximum) where there
    # is no dose; absorbed dose is non-negative, so those are set to 0.
    dose_arr = np.maximum(sitk.GetArrayFromImage(result.dose), 0.0).astype(np.float32)
    dose_img = sitk.GetImageFromArray(dose_arr)
    dose_img.CopyInformation(result.dose)
    result = replace(result, dose=dose_img)
    write_image(result.dose, out / "dose_gy.nii.gz")
    if result.uncertainty is not None:
        write_image(result.uncertainty, out / "dose_sigma_gy.nii.gz")
    atomic_write_text(out / "engine.json", json.dumps(
        {**result.to_dict(), "warnings": engine_warnings}, indent=2, default=str) + "\n")

    labels_ct = sitk.Cast(read_image(seg / "labels.nii.gz", pixel_type=None), sitk.sitkUInt16)
    lab = sitk.GetArrayViewFromImage(labels_ct)
    dose_ct = sitk.GetArrayFromImage(sitk.Resample(result.dose, labels_ct, sitk.Transform(),
                                                   sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    ct_on_labels = sitk.Resample(ct, labels_ct, sitk.Transform(), sitk.sitkLinear, -1000.0,
                                 sitk.sitkFloat32)
    density = hu_to_density(sitk.GetArrayViewFromImage(ct_on_labels))
    voxel_ml = float(np.prod(labels_ct.GetSpacing())) / 1000.0
    # A view needs its image alive: keep the image in a name (a view of a temporary dangles).
    labels_sg_img = sitk.Cast(read_image(kin / "labels_spectgrid.nii.gz", pixel_type=None),
                              sitk.sitkUInt16)
    lab_sg = sitk.GetArrayViewFromImage(labels_sg_img)
    sigma_sg = (sitk.GetArrayViewFromImage(result.uncertainty)
                if result.uncertainty is not None else None)
    activity_gbq = study.administered_activity_mbq / 1000.0
    conv = DOSE_CONVERSION_RELATIVE_SIGMA.get(str(result.engine), 0.05)
    far_ct = far_field_on(result, tia, labels_ct)

    doses: list[VoiDose] = []
    for v in vois:
        mask = lab == v.label
        values = dose_ct[mask]
        if values.size == 0:
            continue
        mean = float(values.mean())
        mass = float(density[mask].sum() * voxel_ml)
        rel_tia = (v.tia_sigma_bq_s / v.tia_bq_s) if v.success and v.tia_bq_s > 0 else 0.0
        rel_stat = rel_model = 0.0
        if sigma_sg is not None and mean > 0:
            m_sg = lab_sg == v.label
            if m_sg.any() and str(result.engine) == "deep":
                # model error, correlated between voxels: the mean voxel σ, rescaled from the
                # voxel calibration (α) to the organ-mean one (α_VOI)
                model = result.metadata.get("model", {})
                scale = model.get("alpha_voi", model.get("alpha", 1.0)) / model.get("alpha", 1.0)
                rel_model = float(np.mean(sigma_sg[m_sg])) * scale / mean
            elif m_sg.any():
                rel_stat = float(np.sqrt(np.sum(sigma_sg[m_sg] ** 2)) / m_sg.sum()) / mean
        comps = {"tia": rel_tia, "engine_statistics": rel_stat, "dose_conversion": conv}
        if str(result.engine) == "deep":
            comps["deep_model"] = rel_model
        if far_ct is not None and mean > 0:
            comps["far_field"] = FAR_FIELD_RELATIVE_SIGMA * float(far_ct[mask].mean()) / mean
        rel = float(np.sqrt(sum(c * c for c in comps.values())))
        tissue, _matched = tissue_for_voi(v.name, v.kind == "lesion")
        g = b = None
        if v.exponentials:
            c, k = zip(*v.exponentials, strict=True)
            shape = DoseRateShape.from_exponentials(c, k)
            g = float(shape.g_factor(tissue.repair_half_time_h * 3600.0))
            b = float(bed(mean, g, tissue.alpha_beta_gy))
        levels, frac = _dvh(values)
        doses.append(VoiDose(
            label=v.label, name=v.name, kind=v.kind, mass_g=mass, mean_dose_gy=mean,
            mean_dose_sigma_gy=rel * mean, sigma_components_relative=comps,
            d2_gy=float(np.percentile(values, 98)), d50_gy=float(np.percentile(values, 50)),
            d98_gy=float(np.percentile(values, 2)), dose_gy_per_gbq=mean / activity_gbq,
            bed_gy=b, tissue=str(tissue.name), g_factor=g, dvh_dose_gy=levels,
            dvh_volume_fraction=frac))
    atomic_write_text(out / "vois.json", json.dumps({
        "engine": str(result.engine), "nuclide": study.nuclide,
        "vois": [d.to_dict() for d in doses]}, indent=2) + "\n")
    return doses
