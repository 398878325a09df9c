"""Deep dose engine against DVK and the fast MC on held-out digital patients, in one run.

For each nuclide (Lu-177 DOTATATE and I-131 DTC patients whose seeds were never used in
training, 990001…), on an isotropic 4.42 mm grid with the true TIA blurred by 8 mm FWHM (as a
TIA map from SPECT is):

* reference: the fast MC with ``REF_DECAYS`` decays (its own statistical σ is printed);
* per-organ mean dose of deep and DVK against the reference (liver, spleen, kidneys, lungs,
  bone = vertebrae, ribs, sacrum, hips and red marrow; thyroid remnant; lesions), with the
  deep engine's organ σ (model and far-field terms, as the dose stage combines them) and
  whether the error lies within 2σ (its calibration on whole patients),
  and both engines without their far-field photon term (:mod:`dosimetry.dose.far_field`),
  to show what it adds;
* voxel gamma pass rates (3 %/3 mm and 2 %/2 mm, global, 10 % threshold) inside the body
  (density > 0.1 g/cm³), deep and DVK against the reference — with the reference's own noise
  floor: the same gamma of an independent MC run of equal statistics against the reference;
* times: DVK, deep (CPU, 2 threads) and the MC, and the MC time needed for a 2 % (1σ)
  statistical uncertainty in the median kidney voxel, scaled from the reference run
  (σ ∝ 1/√N), as a ratio to the deep engine's time.
"""

from __future__ import annotations

import time

import numpy as np

from phantoms.anatomy import LESION_LABEL_BASE

#: Decays of the reference MC run (per nuclide; a whole patient ran at 1·10⁴ decays/s on a
#: loaded 2-core machine, Lu-177); --quick uses a tenth.
REF_DECAYS = 5_000_000
PATIENTS = {"Lu-177": 990002, "I-131": 990003}
ORGANS = {
    "liver": ("liver",), "spleen": ("spleen",), "kidneys": ("kidney_left", "kidney_right"),
    "lungs": ("lung_left", "lung_right"),
    "bone": ("vertebrae", "ribs", "sacrum", "hip_left", "hip_right", "red_marrow"),
    "thyroid": ("thyroid_gland",),
}


def _masks(labels: np.ndarray, names: dict[int, str]) -> dict[str, np.ndarray]:
    by_name = {v: k for k, v in names.items()}
    out = {}
    for organ, parts in ORGANS.items():
        labs = [by_name[p] for p in parts if p in by_name]
        if labs:
            m = np.isin(labels, labs)
            if m.sum() >= 8:
                out[organ] = m
    les = [k for k in names if k > LESION_LABEL_BASE]
    if les:
        out["lesions"] = np.isin(labels, les)
    return out


def _one(nuclide: str, seed: int, decays: int) -> None:
    import SimpleITK as sitk
    import torch

    from dosimetry.dose.engines import dose_deep, dose_dvk, dose_mc
    from dosimetry.dose.gamma import gamma_index
    from dosimetry.materials.hu import ct_to_materials
    from phantoms.dose_data import patient_dose_inputs

    torch.set_num_threads(2)
    inp = patient_dose_inputs(seed, nuclide, 4.42, n_lesions=4, blur_fwhm_mm=8.0,
                              with_labels=True)
    tia, ct = inp["tia"], inp["ct"]
    labels = sitk.GetArrayFromImage(inp["labels"])
    masks = _masks(labels, inp["names"])
    rho = ct_to_materials(sitk.GetArrayFromImage(ct), what="CT").density_gcm3
    body = rho > 0.1
    spacing = tia.GetSpacing()
    print(f"\n### {nuclide} — held-out patient {seed} ({inp['preset']}), grid "
          f"{'×'.join(map(str, tia.GetSize()))} at 4.42 mm")
    dose_dvk(tia, nuclide, ct)  # kernel into the cache, so timings are of the engines alone
    t0 = time.perf_counter()
    dvk = dose_dvk(tia, nuclide, ct)
    t_dvk = time.perf_counter() - t0
    t0 = time.perf_counter()
    deep = dose_deep(tia, nuclide, ct)
    t_deep = time.perf_counter() - t0
    ref = dose_mc(tia, nuclide, ct, n_decays=decays, seed=1)
    t_mc = ref.metadata["transport_time_s"]
    half = dose_mc(tia, nuclide, ct, n_decays=decays, seed=2)
    r = sitk.GetArrayFromImage(ref.dose).astype(np.float64)
    r_sig = sitk.GetArrayFromImage(ref.uncertainty).astype(np.float64)
    arrs = {"deep": sitk.GetArrayFromImage(deep.dose).astype(np.float64),
            "dvk": sitk.GetArrayFromImage(dvk.dose).astype(np.float64)}
    # the far-field terms are additive: DVK's from beyond its kernel cube, deep's from beyond
    # the networks' context (recorded in its metadata)
    from dosimetry.dose.far_field import far_field_dose
    from planning.workflow.dose_stage import FAR_FIELD_RELATIVE_SIGMA

    near = sitk.GetArrayFromImage(dose_dvk(tia, nuclide, ct, far_field=False).dose)
    tail = arrs["dvk"] - near
    tail_deep, _ = far_field_dose(sitk.GetArrayFromImage(tia), spacing, nuclide,
                                  deep.metadata["far_field"]["inner_half_voxels"])
    d_sig = sitk.GetArrayFromImage(deep.uncertainty).astype(np.float64)
    print(f"reference MC: {decays:.3g} decays, {t_mc:.0f} s "
          f"({ref.metadata['decays_per_second']:.3g} decays/s)")
    print(f"far field: {dvk.metadata['far_field']['time_s']:.2f} s")
    print("| VOI | MC (Gy) | MC σ | deep | deep σ | within 2σ | DVK | deep, no far field | "
          "DVK, no far field |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, m in masks.items():
        mc_mean = r[m].mean()
        mc_s = np.sqrt((r_sig[m] ** 2).sum()) / m.sum() / mc_mean
        e_deep = arrs["deep"][m].mean() / mc_mean - 1
        e_dvk = arrs["dvk"][m].mean() / mc_mean - 1
        # organ-mean σ: the mean voxel σ rescaled to the organ-level calibration (α_VOI/α)
        model = deep.metadata["model"]
        s_deep = (d_sig[m].mean() / arrs["deep"][m].mean()) * model["alpha_voi"] / model["alpha"]
        # the far-field term's own uncertainty, as the dose stage adds it (10 % of the term)
        s_ff = FAR_FIELD_RELATIVE_SIGMA * tail_deep[m].mean() / arrs["deep"][m].mean()
        s_deep = float(np.hypot(s_deep, s_ff))
        ok = abs(e_deep) <= 2 * np.hypot(s_deep, mc_s)
        e_deep0 = (arrs["deep"][m] - tail_deep[m]).mean() / mc_mean - 1
        e_dvk0 = (arrs["dvk"][m] - tail[m]).mean() / mc_mean - 1
        print(f"| {name} | {mc_mean:.4g} | {100 * mc_s:.2f} % | {100 * e_deep:+.1f} % | "
              f"{100 * s_deep:.1f} % | {'yes' if ok else 'no'} | {100 * e_dvk:+.1f} % | "
              f"{100 * e_deep0:+.1f} % | {100 * e_dvk0:+.1f} % |")
    sp = tuple(float(s) for s in spacing)
    for crit, dta in ((0.03, 3.0), (0.02, 2.0)):
        rates = {}
        for name, a in (*arrs.items(), ("MC (independent run)",
                                        sitk.GetArrayFromImage(half.dose))):
            g = gamma_index(r, np.asarray(a, dtype=np.float64), sp, dose_criterion=crit,
                            dta_mm=dta, mask=body)
            rates[name] = g.pass_rate
        print(f"gamma {100 * crit:.0f} %/{dta:.0f} mm (body, ≥ 10 % of max): "
              + ", ".join(f"{k} {100 * v:.1f} %" for k, v in rates.items()))
    if "kidneys" in masks:
        km = masks["kidneys"] & (r > 0)
        rel = float(np.median(r_sig[km] / r[km]))
        n_2 = decays * (rel / 0.02) ** 2
        t_2 = n_2 / ref.metadata["decays_per_second"]
        print(f"median kidney voxel σ of the reference: {100 * rel:.2f} %; MC for 2 %: "
              f"{n_2:.3g} decays ≈ {t_2:.0f} s")
        print(f"times: DVK {t_dvk:.2f} s, deep {t_deep:.2f} s (network "
              f"{deep.metadata['network_time_s']:.2f} s), MC to 2 % in kidneys {t_2:.0f} s → "
              f"deep is {t_2 / t_deep:.0f}× faster than that MC, DVK {t_2 / t_dvk:.0f}×")


def run(quick: bool = False) -> None:
    decays = REF_DECAYS // 10 if quick else REF_DECAYS
    for nuclide, seed in PATIENTS.items():
        _one(nuclide, seed, decays)
