"""Training and evaluation data of the SPECT denoiser (:mod:`dosimetry.enhancement`).

One *sample* is one digital patient at one time after injection, on a coarse SPECT grid:
anatomy and kinetics of :mod:`phantoms.patient` (the same random streams per seed), the true
activity at that time, its projections simulated in projection space
(:mod:`phantoms.projection`: attenuation, CDR, scatter with TEW windows) and reconstructed by
:mod:`dosimetry.reconstruction` (OSEM 4 × 10, attenuation, TEW scatter and CDR modelling):

* the **reference**: the reconstruction of the noise-free (expected) projections — the same
  algorithm, iterations and resolution as the inputs, so a network trained to reproduce it
  removes noise and does not deblur;
* the **inputs**: reconstructions of independent Poisson realisations at given count levels
  (total expected photopeak counts; the time per view is scaled to reach them).

Samples are written as ``.npz`` files (one per patient) in a folder and reused when present,
so the slow part (reconstructions) runs once. :func:`organ_bias` and :func:`iec_evaluation`
measure what the denoiser does to quantification (organ activities; IEC recovery and
background variability).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dosimetry import units
from dosimetry.errors import InputError
from phantoms.acquisition import default_acquisition, make_image, spect_grid
from phantoms.anatomy import AnatomyOptions, GridSpec, make_anatomy
from phantoms.kinetics_presets import Preset, get_preset

__all__ = [
    "HELDOUT_SEED_BASE",
    "ORGANS",
    "TRAIN_SEED_BASE",
    "DenoiseDataConfig",
    "PatientSample",
    "iec_evaluation",
    "make_samples",
    "organ_bias",
]

#: Patient seeds: training patients are TRAIN_SEED_BASE + i, held-out HELDOUT_SEED_BASE + i
#: (+ 100 per training seed), disjoint from every other seed block of the project.
TRAIN_SEED_BASE = 730000
HELDOUT_SEED_BASE = 731000
#: Organ VOIs of the quantification check (label names of :mod:`phantoms.anatomy`).
ORGANS: dict[str, tuple[str, ...]] = {"liver": ("liver",),
                                      "kidneys": ("kidney_left", "kidney_right"),
                                      "spleen": ("spleen",)}

ProgressFn = Callable[[str, float], None]


@dataclass(frozen=True)
class DenoiseDataConfig:
    """How the samples are made.

    Attributes
    ----------
    spect_spacing_mm, matrix : float, int
        SPECT grid: isotropic voxels (= projection pixels) and in-plane matrix.
    n_slices : int
        Axial slices kept, centred on the liver–kidney region.
    ct_spacing_mm : float
        Isotropic voxel size of the anatomy (fine grid).
    n_views : int
        Views over 360°.
    presets : tuple of Preset
        Kinetics presets, cycled by patient index.
    timepoints_h : tuple of float
        Times after injection, cycled by patient index.
    n_lesions : int
    """

    spect_spacing_mm: float = 9.5904
    matrix: int = 64
    n_slices: int = 48
    ct_spacing_mm: float = 4.8
    n_views: int = 60
    presets: tuple[Preset, ...] = (Preset.LU177_DOTATATE, Preset.LU177_PSMA)
    timepoints_h: tuple[float, ...] = (24.0, 96.0, 4.0, 168.0)
    n_lesions: int = 3

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["presets"] = [p.value for p in self.presets]
        d["timepoints_h"] = list(self.timepoints_h)
        return d


@dataclass(frozen=True, eq=False)
class PatientSample:
    """One patient at one time on the SPECT grid; arrays (Z, Y, X), images in Bq/mL."""

    seed: int
    preset: str
    hours: float
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    truth: np.ndarray  # true activity concentration on the SPECT grid [Bq/mL]
    labels: np.ndarray  # uint16, nearest-neighbour label map on the SPECT grid
    label_names: dict[int, str]
    reference: np.ndarray  # OSEM of the noise-free projections [Bq/mL]
    inputs: tuple[np.ndarray, ...]  # OSEM of Poisson realisations [Bq/mL]
    counts: tuple[float, ...]  # total photopeak counts of each input
    info: dict[str, Any] = field(default_factory=dict)

    def image(self, arr: np.ndarray) -> sitk.Image:
        """``arr`` as an image on the sample's grid."""
        return make_image(np.asarray(arr, np.float32), self.spacing_mm, self.origin_mm)

    def save(self, path: str | Path) -> Path:
        """Write as ``.npz`` (atomically)."""
        from dosimetry.io.atomic import atomic_path

        path = Path(path)
        meta = {"seed": self.seed, "preset": self.preset, "hours": self.hours,
                "spacing_mm": list(self.spacing_mm), "origin_mm": list(self.origin_mm),
                "label_names": {str(k): v for k, v in self.label_names.items()},
                "counts": list(self.counts), "info": self.info}
        with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fp:
            np.savez_compressed(fp, truth=self.truth.astype(np.float32),
                                labels=self.labels.astype(np.uint16),
                                reference=self.reference.astype(np.float32),
                                inputs=np.stack(self.inputs).astype(np.float32),
                                meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
        return path

    @classmethod
    def load(cls, path: str | Path) -> PatientSample:
        """Read a sample written by :meth:`save`."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                return cls(seed=int(meta["seed"]), preset=str(meta["preset"]),
                           hours=float(meta["hours"]),
                           spacing_mm=tuple(meta["spacing_mm"]),
                           origin_mm=tuple(meta["origin_mm"]), truth=z["truth"],
                           labels=z["labels"],
                           label_names={int(k): v for k, v in meta["label_names"].items()},
                           reference=z["reference"], inputs=tuple(z["inputs"]),
                           counts=tuple(float(c) for c in meta["counts"]),
                           info=dict(meta.get("info", {})))
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"{path}: not a denoiser data sample ({exc})") from None


# ============================================================================== samples
def _cropped_grid(full: sitk.Image, z_center_mm: float, n_slices: int) -> sitk.Image:
    s = full.GetSpacing()[2]
    nz = min(n_slices, full.GetSize()[2])
    z_lo = full.GetOrigin()[2]
    z_hi = z_lo + (full.GetSize()[2] - 1) * s
    k0 = math.floor((z_center_mm - z_lo) / s - (nz - 1) / 2.0 + 0.5)
    k0 = int(min(max(k0, 0), full.GetSize()[2] - nz))
    img = sitk.Image(full.GetSize()[0], full.GetSize()[1], nz, sitk.sitkFloat32)
    img.SetSpacing(full.GetSpacing())
    img.SetOrigin((full.GetOrigin()[0], full.GetOrigin()[1], min(z_lo + k0 * s, z_hi)))
    return img


def make_sample(seed: int, index: int, counts: Sequence[float], config: DenoiseDataConfig,
                *, device: str = "cpu") -> PatientSample:
    """Simulate and reconstruct one patient sample (see the module notes).

    ``index`` chooses the preset and the time (cycled); ``counts`` the count levels of the
    inputs (one Poisson realisation each, drawn from the seed).
    """
    from dosimetry.nuclides import get_nuclide
    from phantoms.patient import _rng, patient_kinetics
    from phantoms.projection import (
        activity_on_grid,
        default_projection_model,
        mu_map_on_grid,
        recon_mu_map,
        reconstruct_projections,
        scale_counts,
        simulate_projections,
    )
    from phantoms.truth import label_map_values

    preset = get_preset(config.presets[index % len(config.presets)])
    hours = config.timepoints_h[index % len(config.timepoints_h)]
    options = AnatomyOptions(head_neck=False, n_lesions=config.n_lesions,
                             lesion_sites=preset.lesion_sites, thyroid_remnant=False)
    grid_spec = GridSpec(inplane_mm=config.ct_spacing_mm, slice_mm=config.ct_spacing_mm)
    anatomy = make_anatomy(_rng(seed, "anatomy"), options, grid_spec)
    kin = patient_kinetics(anatomy, preset, seed, False)
    lam = get_nuclide(preset.nuclide).decay_constant_per_s
    t_s = units.hours_to_s(hours)
    act_label = {n: kin.a0_bq * c.fraction(t_s, lam) for n, c in kin.curves.in_fov.items()}
    act = label_map_values(anatomy.labels, kin.weights,
                           {kin.label_of[n]: a for n, a in act_label.items()})
    g = anatomy.grid
    act_img = make_image(act.astype(np.float32), g.spacing, g.origin)
    hu_img = make_image(anatomy.hu, g.spacing, g.origin)
    labels_img = make_image(anatomy.labels.astype(np.uint16), g.spacing, g.origin)
    spec = replace(default_acquisition(preset.nuclide), spect_spacing_mm=config.spect_spacing_mm,
                   matrix_xy=config.matrix, n_views=config.n_views)
    cg = anatomy.core_grid
    core = sitk.Image(list(cg.size), sitk.sitkFloat32)
    core.SetSpacing(cg.spacing)
    core.SetOrigin(cg.origin)
    full = spect_grid(core, spec)
    sel = np.isin(anatomy.labels, [kin.label_of[n] for n in ("liver", "kidney_left",
                                                               "kidney_right")
                                   if n in kin.label_of])
    zc = g.origin[2] + g.spacing[2] * float(np.nonzero(sel)[0].mean()) if sel.any() else \
        g.origin[2] + g.spacing[2] * (g.size[2] - 1) / 2.0
    grid = _cropped_grid(full, zc, config.n_slices)
    model = default_projection_model(preset.nuclide, n_views=config.n_views)
    a_grid = activity_on_grid(act_img, grid)
    mu_arr = sitk.GetArrayFromImage(mu_map_on_grid(hu_img, grid, model.photopeak_kev))
    mu = recon_mu_map(hu_img, grid, model.photopeak_kev)  # what the reconstruction uses
    expected = simulate_projections(a_grid, mu_arr, grid, spec, model, None, device=device)
    ref, _ = reconstruct_projections(expected, mu, device=device)
    rng = np.random.default_rng([seed, 8080])
    inputs = []
    for c in counts:
        noisy = scale_counts(expected, float(c), rng)
        img, _ = reconstruct_projections(noisy, mu, device=device)
        inputs.append(sitk.GetArrayFromImage(img))
    lab = sitk.Resample(labels_img, grid, sitk.Transform(3, sitk.sitkIdentity),
                        sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)
    v_ml = units.voxel_volume_ml(grid.GetSpacing())
    return PatientSample(
        seed=seed, preset=preset.preset.value,
        hours=float(hours), spacing_mm=tuple(grid.GetSpacing()),
        origin_mm=tuple(grid.GetOrigin()), truth=(a_grid / v_ml).astype(np.float32),
        labels=sitk.GetArrayFromImage(lab), label_names=dict(kin.name_of),
        reference=sitk.GetArrayFromImage(ref), inputs=tuple(inputs),
        counts=tuple(float(c) for c in counts),
        info={"expected_counts_nominal": expected.expected_total,
              "activity_in_grid_mbq": units.bq_to_mbq(float(a_grid.sum())),
              "orbit_radius_mm": float(expected.radii_mm[0])})


def make_samples(folder: str | Path, seeds: Sequence[int], counts_of: Callable[[int], list[float]],
                 config: DenoiseDataConfig = DenoiseDataConfig(), *, device: str = "cpu",
                 progress: ProgressFn | None = None) -> list[Path]:
    """Make (or reuse) one sample file per seed in ``folder``; returns their paths.

    ``counts_of(i)`` gives the count levels of the i-th patient. A ``config.json`` records the
    configuration: a folder made with another configuration, or a sample file with other count
    levels, is refused.
    """
    from dosimetry.io.atomic import atomic_write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg_path = folder / "config.json"
    want = {"config": config.to_dict()}
    if cfg_path.is_file():
        have = json.loads(cfg_path.read_text(encoding="utf-8"))
        if have != want:
            raise InputError(f"{folder}: holds samples made with another configuration; "
                             "choose another --work folder or delete it")
    else:
        atomic_write_text(cfg_path, json.dumps(want, indent=1) + "\n")
    paths = []
    for i, seed in enumerate(seeds):
        p = folder / f"sample_{seed}.npz"
        counts = [float(c) for c in counts_of(i)]
        if progress:
            progress(f"sample {seed}", i / max(len(seeds), 1))
        if p.is_file():
            with np.load(p, allow_pickle=False) as z:
                have_counts = json.loads(bytes(z["meta"]).decode())["counts"]
            if [float(c) for c in have_counts] != counts:
                raise InputError(f"{p}: made with count levels {have_counts}, not {counts}; "
                                 "choose another --work folder or delete the file")
        else:
            make_sample(int(seed), i, counts, config, device=device).save(p)
        paths.append(p)
    if progress:
        progress("all samples ready", 1.0)
    return paths


# ============================================================================== evaluation
def organ_activities(arr: np.ndarray, sample: PatientSample) -> dict[str, float]:
    """Activity [Bq] of each organ of :data:`ORGANS` in a Bq/mL array on the sample's grid."""
    v_ml = units.voxel_volume_ml(sample.spacing_mm)
    by_name = {v: k for k, v in sample.label_names.items()}
    out = {}
    for organ, names in ORGANS.items():
        labs = [by_name[n] for n in names if n in by_name]
        mask = np.isin(sample.labels, labs)
        if mask.any():
            out[organ] = float(arr[mask].sum(dtype=np.float64) * v_ml)
    return out


def organ_bias(samples: Sequence[PatientSample], denoise: Callable[[sitk.Image], sitk.Image]
               ) -> dict[str, Any]:
    """Organ activity of the denoised inputs against the inputs and the references.

    For every sample and input: A_den / A_in − 1 (what denoising changes), A_den / A_ref − 1
    and A_in / A_ref − 1 (against the noise-free reconstruction; the input's is its noise).
    Returns per organ the mean, the worst (largest magnitude) and the per-sample values [%].
    """
    rows: dict[str, dict[str, list[float]]] = {o: {"den_vs_in": [], "den_vs_ref": [],
                                                   "in_vs_ref": []} for o in ORGANS}
    per_sample = []
    for s in samples:
        a_ref = organ_activities(s.reference, s)
        for x, c in zip(s.inputs, s.counts, strict=True):
            den = sitk.GetArrayFromImage(denoise(s.image(x)))
            a_in = organ_activities(x, s)
            a_den = organ_activities(den, s)
            entry = {"seed": s.seed, "counts": c, "hours": s.hours}
            for o in a_in:
                v = {"den_vs_in": 100 * (a_den[o] / a_in[o] - 1),
                     "den_vs_ref": 100 * (a_den[o] / a_ref[o] - 1),
                     "in_vs_ref": 100 * (a_in[o] / a_ref[o] - 1)}
                for k, val in v.items():
                    rows[o][k].append(val)
                entry[o] = {k: round(val, 3) for k, val in v.items()}
            per_sample.append(entry)
    summary = {}
    for o, d in rows.items():
        if not d["den_vs_in"]:
            continue
        summary[o] = {k: {"mean_percent": round(float(np.mean(v)), 3),
                          "worst_percent": round(float(v[int(np.argmax(np.abs(v)))]), 3)}
                      for k, v in d.items()}
    return {"organs": summary, "samples": per_sample}


def iec_evaluation(denoise: Callable[[sitk.Image], sitk.Image], folder: str | Path, *,
                   background_kbq_per_ml: float = 25.0, reference_kbq_per_ml: float = 200.0,
                   spect_spacing_mm: float = 9.5904, matrix: int = 64, seed: int = 0,
                   ) -> dict[str, Any]:
    """IEC phantom (projection model, Lu-177, ratio 8) at a low count level, before and after
    denoising, and at a high count level for reference: recovery coefficients per sphere and
    NEMA background variability (:func:`phantoms.iec_metrics.iec_metrics`).

    The phantoms are written under ``folder`` (``iec_low``, ``iec_high``) and reused.
    """
    from dosimetry.io.images import read_image
    from phantoms.iec import IECConfig, make_iec
    from phantoms.iec_metrics import iec_metrics

    out: dict[str, Any] = {}
    folder = Path(folder)
    imgs = {}
    for name, bg in (("low", background_kbq_per_ml), ("high", reference_kbq_per_ml)):
        d = folder / f"iec_{name}"
        cfg = IECConfig(background_kbq_per_ml=bg, ct_spacing_mm=3.0,
                        spect_spacing_mm=spect_spacing_mm, spect_matrix=matrix, seed=seed,
                        spect_model="projection")
        if not (d / "truth" / "truth.json").is_file():
            make_iec(d, cfg, overwrite=True)
        truth = json.loads((d / "truth" / "truth.json").read_text(encoding="utf-8"))
        imgs[name] = (read_image(d / "nifti" / "spect.nii.gz"), truth)
    low, truth = imgs["low"]
    den = denoise(low)
    for key, (img, tr) in (("low_before", (low, truth)), ("low_after", (den, truth)),
                           ("high_before", imgs["high"])):
        m = iec_metrics(img, tr)
        out[key] = {"total_counts": tr["spect"]["total_counts"],
                    "background_kbq_per_ml": tr["background"]["concentration_bq_per_ml"] / 1e3,
                    "spheres": {f"{s.diameter_mm:g}mm": {
                        "rc_mean": round(s.rc_mean, 4), "rc_max": round(s.rc_max, 4),
                        "bv_percent": round(s.background_variability_percent, 2)}
                        for s in m.spheres},
                    "background_recovery": round(m.background_recovery, 4)}
    return out


# ============================================================================== the recipe
#: Count levels of the held-out inputs (total photopeak counts on the 64² grid).
HELDOUT_COUNTS: tuple[float, ...] = (3e5, 1e6)
#: Held-out patients the inference σ of the count-preserving layer was chosen on.
N_VALIDATION = 3
#: Range of the training count levels (log-uniform; two levels per patient).
TRAIN_COUNT_RANGE: tuple[float, float] = (3e5, 3e6)


def train_counts(seed: int, index: int, n_levels: int = 2) -> list[float]:
    """Count levels of training patient ``index`` (log-uniform in :data:`TRAIN_COUNT_RANGE`,
    drawn from ``seed``; rounded to 1000 counts)."""
    rng = np.random.default_rng([seed, index, 77])
    lo, hi = (math.log(v) for v in TRAIN_COUNT_RANGE)
    return [float(round(math.exp(v), -3)) for v in rng.uniform(lo, hi, n_levels)]


def build_denoiser(work: str | Path, out: str | Path, *, settings: Any = None,
                   n_patients: int = 6, n_heldout: int = 6, device: str = "cpu",
                   command: str = "", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Make the data, train the denoiser, measure it and write the weights and model card.

    Parameters
    ----------
    work : path
        Folder for the samples (``train/``, ``heldout/``, ``iec/``; reused when present).
    out : path
        Weight file (``.pt``); the model card is written beside it (``.json``).
    settings : dosimetry.enhancement.train.TrainSettings, optional
    n_patients, n_heldout : int
        Training and held-out digital patients (seeds :data:`TRAIN_SEED_BASE` + 100·seed + i
        and :data:`HELDOUT_SEED_BASE` + 100·seed + i). The first :data:`N_VALIDATION`
        held-out patients are the ones the inference σ of the count-preserving layer was
        chosen on; the figures are reported for them ("validation") and for the others
        ("test") separately.
    device : str
    command : str
        The command line to record.
    log : callable

    Returns
    -------
    dict
        The model card written.
    """
    import time

    import torch

    from dosimetry.enhancement import denoise, load_model, save_model
    from dosimetry.enhancement.train import TrainPair, TrainSettings, train_denoiser

    settings = settings or TrainSettings()
    work = Path(work)
    config = DenoiseDataConfig()
    base = 100 * settings.seed
    train_seeds = [TRAIN_SEED_BASE + base + i for i in range(n_patients)]
    held_seeds = [HELDOUT_SEED_BASE + base + i for i in range(n_heldout)]
    t0 = time.perf_counter()

    def prog(name: str) -> ProgressFn:
        return lambda step, frac: log(f"{name}: {step}") if step.startswith("sample") else None

    train_paths = make_samples(work / "train", train_seeds,
                               lambda i: train_counts(train_seeds[i], i), config,
                               device=device, progress=prog("training data"))
    held_paths = make_samples(work / "heldout", held_seeds, lambda i: list(HELDOUT_COUNTS),
                              config, device=device, progress=prog("held-out data"))
    t_data = time.perf_counter() - t0
    train = [PatientSample.load(p) for p in train_paths]
    held = [PatientSample.load(p) for p in held_paths]
    pairs = [TrainPair(x, s.reference, tuple(s.spacing_mm[::-1]), f"{s.seed}@{c:.0f}")
             for s in train for x, c in zip(s.inputs, s.counts, strict=True)]
    log(f"data: {len(train)} training patients ({len(pairs)} pairs), {len(held)} held-out, "
        f"{t_data:.0f} s")
    result = train_denoiser(pairs, settings, device=device, log=log)
    spacing = config.spect_spacing_mm
    card: dict[str, Any] = {
        "description": "residual 3-D U-Net denoiser for low-count quantitative SPECT (OSEM), "
                       "count-preserving output layer",
        "input": {"image": "OSEM reconstruction in Bq/mL (or counts), non-negative",
                  "normalisation": "divided by the mean of voxels above 10 % of the 99.9th "
                                   "percentile",
                  "grid": f"isotropic {spacing} mm (the training grid)"},
        "spacing_mm_range": [spacing, spacing],
        "training": {
            "command": command,
            "function": "phantoms.denoise_data.build_denoiser",
            "settings": settings.to_dict(),
            "data": {"config": config.to_dict(), "train_seeds": train_seeds,
                     "train_counts": [list(s.counts) for s in train],
                     "heldout_seeds": held_seeds, "heldout_counts": list(HELDOUT_COUNTS),
                     "pairs": len(pairs),
                     "description": "digital patients (phantoms.patient anatomy and kinetics) "
                                    "simulated in projection space (phantoms.projection) and "
                                    "reconstructed by dosimetry.reconstruction (OSEM 4×10, "
                                    "AC, TEW SC, CDR); input = Poisson realisation at the "
                                    "count level, target = reconstruction of the noise-free "
                                    "projections (same resolution)"},
            "epoch_losses": list(result.epoch_losses),
            "data_seconds": round(t_data, 1),
            "train_seconds": round(result.seconds, 1),
            "threads": result.threads,
            "device": device,
        },
    }
    wpath, cpath = save_model(result.net, out, card)
    sha = json.loads(Path(cpath).read_text(encoding="utf-8"))["sha256"]
    model = load_model(wpath, device=device, expected_sha256=sha)

    def run(img: sitk.Image) -> sitk.Image:
        return denoise(img, model).image

    t1 = time.perf_counter()
    bias = {"validation": organ_bias(held[:N_VALIDATION], run),
            "test": organ_bias(held[N_VALIDATION:], run) if len(held) > N_VALIDATION else None}
    for name, b in bias.items():
        if b is None:
            continue
        log(f"held-out ({name}) organ activity, denoised vs input: " + ", ".join(
            f"{o} mean {v['den_vs_in']['mean_percent']:+.2f} % worst "
            f"{v['den_vs_in']['worst_percent']:+.2f} %" for o, v in b["organs"].items()))
    iec = iec_evaluation(run, work / "iec")
    for key in ("low_before", "low_after", "high_before"):
        row = iec[key]["spheres"]
        log(f"IEC {key}: RC_mean " + " ".join(f"{k} {v['rc_mean']:.3f}" for k, v in row.items())
            + " | BV(37mm) " + f"{row['37mm']['bv_percent']:.2f} %")
    card["evaluation"] = {"organ_bias": bias, "iec": iec,
                          "seconds": round(time.perf_counter() - t1, 1),
                          "notes": "den_vs_in: what denoising changes; den_vs_ref / in_vs_ref: "
                                   "against the reconstruction of the noise-free projections"}
    card["torch_threads"] = torch.get_num_threads()
    _, cpath = save_model(result.net, wpath, card)
    log(f"wrote {wpath} and {cpath}")
    return json.loads(Path(cpath).read_text(encoding="utf-8"))
