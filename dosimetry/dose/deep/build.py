"""The recipe behind ``rptdose train dose``: MC targets → ensemble → calibration → weights.

Inputs are two patch folders made by :func:`phantoms.dose_data.make_dose_patches` from
disjoint sets of digital patients: ``train`` and ``held-out``. The held-out patients are split
by seed parity: the even ones calibrate σ, the odd ones measure the coverage and the errors
reported in the weight file's metadata. Needs torch and numpy only (no SimpleITK), so the
MC and training steps can run on a machine with an accelerator.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dosimetry.dose.deep import save_model
from dosimetry.dose.deep.data import load_patches, simulate_targets
from dosimetry.dose.deep.train import (
    SIGMA_FLOOR,
    TrainSettings,
    calibrate,
    evaluate_patches,
    train_ensemble,
)
from dosimetry.errors import InputError

__all__ = ["build_model", "finish_model"]


def build_model(train_dir: str | Path, heldout_dir: str | Path, out_path: str | Path, *,
                settings: TrainSettings | None = None, device: str = "cpu",
                n_decays: int = 2_000_000, chunk_decays: int = 100_000,
                command: str = "", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the MC targets (where missing), train, calibrate, evaluate and save the weights.

    Returns the metadata stored with the weights (training log, calibration, metrics).
    """
    settings = settings or TrainSettings()
    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    for name, folder in (("train", train_dir), ("held-out", heldout_dir)):
        t = time.perf_counter()
        n = simulate_targets(folder, n_decays, device=device, chunk_decays=chunk_decays,
                             seed=0 if name == "train" else 10_000_000)
        info[f"mc_{name}_s"] = time.perf_counter() - t
        log(f"MC targets {name}: {n} new in {info[f'mc_{name}_s']:.0f} s")
    train = load_patches(train_dir)
    held = load_patches(heldout_dir)
    _check_nuclide(train + held)

    def progress(done: int, total: int, loss: float) -> None:
        if done % 500 == 0 or done == total:
            log(f"  step {done}/{total} loss {loss:.4g}")

    members, train_log = train_ensemble(train, settings, device=device, progress=progress)
    first = next(iter(sorted(Path(train_dir).glob("target_*.npz"))))
    with np.load(first) as z:
        mc_rate, n_dec = float(z["decays_per_second"]), int(z["n_decays"])
    meta = {
        "nuclide": train[0]["nuclide"],
        "command": command,
        "settings": asdict(settings),
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "train_patches": len(train),
        "train_patient_seeds": sorted({p["row"]["patient_seed"] for p in train}),
        "spacings_mm": sorted({p["spacing"] for p in train}),
        "patch_size": int(train[0]["dvk"].shape[0]),
        "mc_decays_per_patch": n_dec,
        "mc_decays_per_second_first_patch": mc_rate,
        "training": train_log,
        "train_time_s": time.perf_counter() - t0,
        **info,
    }
    return finish_model(members, meta, held, out_path, device=device, train=train, log=log)


def _check_nuclide(patches: list[dict[str, Any]]) -> str:
    nuclides = {p["nuclide"] for p in patches}
    if len(nuclides) != 1:
        raise InputError(f"patch folders mix nuclides: {sorted(nuclides)}")
    return nuclides.pop()


def finish_model(members, meta: dict[str, Any], held: list[dict[str, Any]],
                 out_path: str | Path, *, device: str = "cpu",
                 train: list[dict[str, Any]] | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Calibrate σ on the even-seed held-out patients, measure on the odd-seed ones, save.

    Used by :func:`build_model` after training, and to re-calibrate trained members (e.g.
    trained on an accelerator) where the held-out patches are.
    """
    nuclide = _check_nuclide(held)
    cal = [p for p in held if p["row"]["patient_seed"] % 2 == 0]
    test = [p for p in held if p["row"]["patient_seed"] % 2 == 1]
    if not cal or not test:
        raise InputError("the held-out folder needs patients of even and odd seeds "
                         "(calibration and test halves)")
    alpha, alpha_voi = calibrate(members, cal, device=device)
    meta = {**meta,
            "calibration_patches": len(cal), "test_patches": len(test),
            "heldout_patient_seeds": sorted({p["row"]["patient_seed"] for p in held}),
            "alpha": alpha, "alpha_voi": alpha_voi, "beta": SIGMA_FLOOR,
            "heldout_metrics": evaluate_patches(members, test, alpha, alpha_voi,
                                                device=device)}
    if train:
        meta["train_metrics"] = evaluate_patches(members, train[:40], alpha, alpha_voi,
                                                 device=device)
    save_model(out_path, nuclide, members, alpha, SIGMA_FLOOR, meta, alpha_voi=alpha_voi)
    side = Path(out_path).with_suffix(".json")
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(side)
    log(f"saved {out_path} (α = {alpha:.3g}, α_VOI = {alpha_voi:.3g}); held-out voxel "
        f"coverage {meta['heldout_metrics']['voxel_coverage_2sigma']:.3f}")
    return meta
