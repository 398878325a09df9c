"""Segmentation: organ-model inference time and Dice, lesion detection, RTSTRUCT on real data.

* Inference time of the built-in organ model on a 256 × 256 × 200 CT (target < 30 s on 2 cores),
  with the time per step (resampling down, network, resampling the probabilities up).
* Dice per organ on held-out digital patients (seeds never used in training).
* Lesion detection on digital patients of the three presets: sensitivity for lesions ≥ 2 cm
  (volume-equivalent diameter) and false positives per study, for the trained lesion model
  (the stage's default) and for the threshold / region-growing detector with the organs from
  the built-in model (the fallback as the pipeline runs it) and with the true organs.
* RTSTRUCT rasterisation on the real export ``mgh_tc99m_maa_spectct`` when present: rasterised
  vs contour volumes of Lung and Tumor on the CT and SPECT grids.

Prints figures; never passes or fails on time. The organ model is the shipped one, or the one in
the folder named by the environment variable ``RPTDOSE_ORGAN_WEIGHTS`` (e.g. the output of
``rptdose train segmentation -o DIR``); without either, the parts that need it are skipped.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def _organ_weights() -> str | None:
    """Folder of the organ model to measure (None = the shipped one); '' when there is none."""
    from dosimetry.segmentation.builtin import ORGAN_MODEL, WEIGHTS_DIR

    env = os.environ.get("RPTDOSE_ORGAN_WEIGHTS")
    if env:
        return env
    return None if (WEIGHTS_DIR / f"{ORGAN_MODEL}.json").is_file() else ""


def _ct_256(seed: int = 900_007) -> sitk.Image:
    """A digital-patient CT resampled onto 256 × 256 × 200 voxels (1.8 × 1.8 × 3.5 mm)."""
    from dosimetry.segmentation.train import make_heldout_case

    case = make_heldout_case(seed)
    ref = sitk.Image([256, 256, 200], sitk.sitkFloat32)
    ref.SetSpacing((1.8, 1.8, 3.5))
    c = np.asarray(case.ct.TransformContinuousIndexToPhysicalPoint(
        [(n - 1) / 2 for n in case.ct.GetSize()]))
    ref.SetOrigin((c - np.array([255 * 1.8, 255 * 1.8, 199 * 3.5]) / 2).tolist())
    return sitk.Resample(case.ct, ref, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear,
                         -1000.0, sitk.sitkFloat32)


def _inference(repeats: int) -> None:
    import torch

    from dosimetry.segmentation.builtin import ORGAN_MODEL, load_model, segment_organs

    torch.set_num_threads(2)  # the target is stated for 2 cores
    ct = _ct_256()
    t0 = time.perf_counter()
    model = load_model(ORGAN_MODEL, _organ_weights(), device="cpu")
    t_load = time.perf_counter() - t0
    print(f"\norgan model inference, CT {ct.GetSize()} ({math.prod(ct.GetSize()) / 1e6:.1f} M "
          f"voxels), torch threads {torch.get_num_threads()}; model load + checksum "
          f"{t_load:.2f} s")
    for i in range(repeats):
        t0 = time.perf_counter()
        pred = segment_organs(ct, "cpu", model=model)
        wall = time.perf_counter() - t0
        steps = ", ".join(f"{k} {v:.2f} s" for k, v in pred.timings_s.items() if k != "load")
        print(f"  run {i + 1}: {wall:.2f} s (working grid {pred.working_size}; {steps})")


def _dice(n: int) -> None:
    from dosimetry.segmentation.train import HELDOUT_SEEDS, evaluate_heldout

    t0 = time.perf_counter()
    res = evaluate_heldout(HELDOUT_SEEDS[:n], weights_dir=_organ_weights())
    print(f"\nDice on {n} held-out digital patients (CT 2.5 × 2.5 × 3 mm), "
          f"{time.perf_counter() - t0:.0f} s")
    organs = list(res["mean"])
    print(f"  {'organ':<16} {'mean':>6} {'min':>6}   per patient")
    for o in organs:
        per = " ".join(f"{c['dice'][o]:.3f}" for c in res["per_case"])
        print(f"  {o:<16} {res['mean'][o]:6.3f} {res['min'][o]:6.3f}   {per}")


def _truth(study_dir: Path):
    from dosimetry.segmentation.labelmap import LabelMap, label_image, parse_label_table

    rows = json.loads((study_dir / "truth" / "labels.json").read_text())
    lab = sitk.ReadImage(str(study_dir / "truth" / "labels.nii.gz"))
    arr = sitk.GetArrayFromImage(lab)
    organ_rows = [r for r in rows if r["kind"] != "lesion"]
    keep = np.isin(arr, [r["label"] for r in organ_rows])
    organs = LabelMap(label_image(np.where(keep, arr, 0), lab), parse_label_table(organ_rows))
    lesions = {r["label"]: r["name"] for r in rows if r["kind"] == "lesion"}
    big = {r["label"] for r in rows if r["kind"] == "lesion"
           and (6 * r["volume_ml"] * 1e3 / math.pi) ** (1 / 3) >= 20.0}
    return organs, arr, lesions, big


def _lesions(cases: list[tuple[str, int]]) -> None:
    from dosimetry.segmentation.builtin import segment_organs
    from dosimetry.segmentation.grid import resample_to
    from dosimetry.segmentation.lesion_model import detect_lesions_model
    from dosimetry.segmentation.lesions import detect_lesions, score_detection
    from dosimetry.study.images import load_image, load_spect_bq_per_ml
    from phantoms import GridSpec, PatientConfig, make_patient

    print("\nlesion detection (one timepoint at 24 h, CT 4 mm, SPECT 4.8 mm, 6 lesions of "
          "10–50 mm drawn per study)")
    weights = _organ_weights()
    totals = {"model": [0, 0, 0], "threshold, builtin organs": [0, 0, 0],
              "threshold, true organs": [0, 0, 0]}
    if weights == "":
        del totals["threshold, builtin organs"]
    with tempfile.TemporaryDirectory() as tmp:
        for preset, seed in cases:
            out = Path(tmp) / f"{preset}_{seed}"
            make_patient(out, PatientConfig(preset=preset, seed=seed, output_format="nifti",
                                            n_lesions=6, timepoints_h=(24.0,),
                                            grid=GridSpec(inplane_mm=4.0, slice_mm=4.0)))
            from dosimetry.study.manifest import load_study

            study = load_study(out / "study.yaml")
            tp = study.timepoints[0]
            ct = load_image(tp.ct, out)
            spect = resample_to(load_spect_bq_per_ml(study, tp, out), ct, smooth=False)
            truth_organs, truth, lesions, big = _truth(out)
            runs = [("model", None), ("threshold, true organs", truth_organs)]
            if weights != "":
                runs.insert(1, ("threshold, builtin organs",
                                segment_organs(ct, weights_dir=weights).labels))
            line = []
            for name, organs in runs:
                t0 = time.perf_counter()
                res = detect_lesions_model(spect, ct) if organs is None else \
                    detect_lesions(spect, organs, ct)
                dt = time.perf_counter() - t0
                sc = score_detection(res.labels, truth, lesions, counted=big)
                totals[name][0] += sc.n_found
                totals[name][1] += sc.n_true
                totals[name][2] += sc.false_positives
                line.append(f"{name}: {sc.n_found}/{sc.n_true} found, "
                            f"{sc.false_positives} FP ({dt:.1f} s)")
            print(f"  {preset:<15} seed {seed}: " + "; ".join(line))
    n = len(cases)
    for name, (found, true, fp) in totals.items():
        sens = found / true if true else float("nan")
        print(f"  {name}: sensitivity (≥ 2 cm) {found}/{true} = {sens:.2f}, "
              f"false positives {fp} in {n} studies = {fp / n:.2f} per study")


def _rtstruct() -> None:
    from tests.realdata import REFERENCE_DIR

    if not (REFERENCE_DIR / "mgh_tc99m_maa_spectct.tar.xz").is_file():
        print("\nRTSTRUCT real data: archive not found, skipped")
        return
    import pytest  # extract_reference skips through pytest; only the extraction is used

    from dosimetry.io.dicom import read_ct_series, read_nm_image, scan_dicom_folder
    from dosimetry.segmentation.rtstruct import contour_volume_ml, rasterise_roi, read_rtstruct
    from tests.realdata import extract_reference

    try:
        root = extract_reference("mgh_tc99m_maa_spectct")
    except pytest.skip.Exception:  # pragma: no cover
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ct = read_ct_series(list(scan_dicom_folder(root / "CT").series[0].files))
        nm = read_nm_image(scan_dicom_folder(root / "NM").series[0]).image
    ss = read_rtstruct(root / "RTSTRUCT")
    print(f"\nRTSTRUCT real data ({len(ss.rois)} ROIs: {', '.join(ss.roi_names)})")
    for name in ("Lung", "Tumor"):
        roi = ss.roi(name)
        want = contour_volume_ml(roi)
        parts = [f"contours {want:8.2f} mL"]
        for grid_name, grid in (("CT", ct), ("SPECT", nm)):
            t0 = time.perf_counter()
            got = float(rasterise_roi(roi, grid).sum()) * math.prod(grid.GetSpacing()) * 1e-3
            parts.append(f"{grid_name} {got:8.2f} mL ({100 * (got / want - 1):+.2f} %, "
                         f"{time.perf_counter() - t0:.2f} s)")
        print(f"  {name:<6} " + "; ".join(parts))
    # the built-in model (trained on digital patients only) on this real chest CT: its two
    # lungs against the clinical Lung contour
    from dosimetry.segmentation.builtin import segment_organs
    from dosimetry.segmentation.train import dice

    if _organ_weights() == "":
        return
    t0 = time.perf_counter()
    pred = segment_organs(ct, weights_dir=_organ_weights())
    arr = sitk.GetArrayViewFromImage(pred.labels.image)
    lungs = np.isin(arr, [pred.labels.table.by_name("lung_left").label,
                          pred.labels.table.by_name("lung_right").label])
    ref = rasterise_roi(ss.roi("Lung"), ct)
    v = math.prod(ct.GetSpacing()) * 1e-3
    print(f"  built-in model on the real CT ({time.perf_counter() - t0:.1f} s): lungs "
          f"{lungs.sum() * v:.0f} mL vs contour {ref.sum() * v:.0f} mL, Dice "
          f"{dice(lungs, ref):.3f}")


def run(quick: bool = False) -> None:
    if _organ_weights() == "":
        print("\norgan model: no weights installed and RPTDOSE_ORGAN_WEIGHTS not set; inference "
              "time and Dice skipped")
    else:
        print(f"\norgan model weights: {_organ_weights() or 'shipped'}")
        _inference(1 if quick else 3)
        _dice(2 if quick else 6)
    cases = [("lu177-dotatate", 3), ("i131-dtc", 4)] if quick else [
        (p, s) for p in ("lu177-dotatate", "lu177-psma", "i131-dtc") for s in (31, 32, 33)]
    _lesions(cases)
    _rtstruct()


if __name__ == "__main__":  # pragma: no cover
    run()
