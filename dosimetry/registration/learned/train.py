"""Training the learned registration model on digital-patient pairs, reproducibly.

Data: multi-timepoint studies from :func:`phantoms.make_patient` (imported at call time: the
training data generator is the one place this package reaches into ``phantoms``; importing
``dosimetry`` never needs it) on a coarse 6 mm CT grid, with the generator's rigid
repositioning between sessions and a smooth deformation of amplitude drawn per patient
(0.5–5 mm σ per component, correlation length ≈ 100 mm, :func:`phantoms.acquisition.
draw_deformation`). Every timepoint after the first gives one pair with the first as reference;
the true reference → timepoint transform ``T = D⁻¹ ∘ R⁻¹`` is read from ``truth/``.

What the network learns: the residual after a rigid pre-alignment. At inference the
pre-alignment is the classical rigid registration, which absorbs part of the deformation and
errs by ~1 mm; in training it is the true rigid part composed with a random rigid error ``E``
(σ 0.75° per axis, 1.5 mm per axis, drawn anew each epoch), ``P = R⁻¹ ∘ E``, so the network
sees a spread of residuals. Target: ``u(x) = P⁻¹(T(x)) − x`` on the model's 8 mm grid.

Loss: mean squared error of the displacement [mm²] over the reference body mask (supervised by
the known truth, which the phantoms give exactly) + 0.05 × the mean squared forward difference of
the predicted field [mm² per voxel²] (smoothness, against folding). Adam, learning rate 2e-3
halved at 60 % and 85 % of the epochs.

Reproducibility: phantom seeds are ``TRAIN_SEED_BASE + 100·seed + i`` (training) and
``HELDOUT_SEED_BASE + 100·seed + i`` (held out); the perturbations, shuffling and initial weights
come from ``seed``; torch runs with deterministic algorithms and a fixed number of threads
(restored afterwards). The same seed, epochs, torch build and CPU type give byte-identical
weights (saved through an in-memory buffer so the archive does not depend on the file name).

Held-out evaluation (written into the model card): for each held-out pair, TRE over the
reference body (registration working grid) of identity, the classical rigid stage alone, and
rigid + network, and the folding fraction of the network's field.
"""

from __future__ import annotations

import io
import json
import math
import shlex
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dosimetry.errors import InputError
from dosimetry.io.atomic import atomic_write_bytes, atomic_write_text
from dosimetry.registration import classical as cl
from dosimetry.registration import qa as rq
from dosimetry.registration.config import RegistrationOptions, TransformStage
from dosimetry.registration.learned import (
    INPUT_HU_WINDOW,
    INPUT_SPACING_MM,
    PAD_MULTIPLE,
    SHIPPED_NAME,
    LearnedRegistration,
    model_inputs,
    moving_input,
    sha256_of,
)
from dosimetry.registration.resample import jacobian_determinant
from dosimetry.registration.truth import PhantomTruth

TRAIN_SEED_BASE = 1000
HELDOUT_SEED_BASE = 5000
#: Kinetics presets cycled over the training patients (I-131 adds head and neck anatomy).
PRESETS = ("lu177-dotatate", "lu177-psma", "i131-dtc")

ProgressFn = Callable[[str, float], None]


@dataclass(frozen=True)
class TrainingConfig:
    """Everything that defines a training run (recorded in the model card)."""

    seed: int = 0
    epochs: int = 10
    n_train_patients: int = 10
    n_heldout_patients: int = 2
    deformation_mm: tuple[float, float] = (0.5, 5.0)
    ct_grid_mm: float = 6.0
    learning_rate: float = 2e-3
    smooth_weight: float = 0.05
    rigid_error_deg: float = 0.75
    rigid_error_mm: float = 1.5
    channels: tuple[int, int, int, int] = (4, 8, 16, 16)
    displacement_scale_mm: float = 10.0
    threads: int = 2
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not (isinstance(self.seed, int) and 0 <= self.seed < 10**6):
            raise InputError(f"training seed {self.seed!r} must be an integer in 0 … 999999")
        if not (1 <= self.epochs <= 1000):
            raise InputError(f"epochs {self.epochs} is outside 1–1000")
        if not (1 <= self.n_train_patients <= 99 and 1 <= self.n_heldout_patients <= 99):
            raise InputError(f"patients train={self.n_train_patients}, held-out="
                             f"{self.n_heldout_patients} must be 1–99")
        lo, hi = self.deformation_mm
        if not (0 <= lo <= hi <= 10):
            raise InputError(f"deformation range {self.deformation_mm} mm must lie in 0–10 mm")
        if not (1 <= self.threads <= 64):
            raise InputError(f"threads {self.threads} is outside 1–64")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["deformation_mm"] = list(self.deformation_mm)
        d["channels"] = list(self.channels)
        return d


@dataclass(frozen=True)
class TrainingResult:
    """What :func:`train_registration` wrote and measured."""

    weights: Path
    card: Path
    sha256: str
    metrics: dict[str, Any]
    losses: tuple[float, ...]
    time_s: float


@dataclass
class _Pair:
    patient_seed: int
    label: str
    fixed_ct: sitk.Image
    moving_ct: sitk.Image
    moving_work: sitk.Image
    grid: sitk.Image
    fixed: np.ndarray
    mask: np.ndarray
    rigid_inv: sitk.Euler3DTransform  # R⁻¹ (reference → timepoint, rigid part)
    true: sitk.Transform  # D⁻¹ ∘ R⁻¹


def _make_studies(folder: Path, seeds: list[int], cfg: TrainingConfig,
                  rng: np.random.Generator, progress: ProgressFn, frac0: float,
                  frac1: float) -> list[Path]:
    from phantoms import GridSpec, PatientConfig, make_patient

    out = []
    for i, s in enumerate(seeds):
        progress(f"digital patient {i + 1}/{len(seeds)}", frac0 + (frac1 - frac0) * i / len(seeds))
        deform = round(float(rng.uniform(*cfg.deformation_mm)), 2)
        pc = PatientConfig(preset=PRESETS[i % len(PRESETS)], seed=s, output_format="nifti",
                           n_lesions=0, grid=GridSpec(inplane_mm=cfg.ct_grid_mm,
                                                      slice_mm=cfg.ct_grid_mm),
                           spect_spacing_mm=9.5904, spect_matrix=64, deformation_mm=deform)
        res = make_patient(folder / f"p{s}", pc)
        out.append(res.out_dir)
    return out


def _pairs(study_dir: Path, seed: int) -> list[_Pair]:
    from dosimetry.study.images import load_image
    from dosimetry.study.manifest import load_study

    study = load_study(study_dir / "study.yaml")
    truth = PhantomTruth(study_dir / "truth")
    ref = study.timepoints[0]
    fixed_ct = load_image(ref.ct, study_dir)
    pairs = []
    for tp in study.timepoints[1:]:
        moving_ct = load_image(tp.ct, study_dir)
        chain = truth.ref_to_tp(tp.label)
        rigid_inv = sitk.Euler3DTransform(chain[0])
        true = truth.true_transform(ref.label, tp.label)
        inputs = model_inputs(fixed_ct, moving_ct, rigid_inv)
        pairs.append(_Pair(seed, tp.label, fixed_ct, moving_ct,
                           cl.to_working(moving_ct, INPUT_SPACING_MM, -1000.0), inputs.grid,
                           inputs.fixed, inputs.mask, rigid_inv, true))
    return pairs


def _perturbation(rng: np.random.Generator, centre, cfg: TrainingConfig) -> sitk.Euler3DTransform:
    e = sitk.Euler3DTransform()
    e.SetCenter(centre)
    ang = rng.normal(0.0, math.radians(cfg.rigid_error_deg), 3)
    tr = rng.normal(0.0, cfg.rigid_error_mm, 3)
    e.SetRotation(*(float(a) for a in ang))
    e.SetTranslation(tuple(float(t) for t in tr))
    return e


def _sample(pair: _Pair, rng: np.random.Generator, cfg: TrainingConfig
            ) -> tuple[np.ndarray, np.ndarray]:
    """Moving input through a perturbed rigid pre-alignment, and the target field (3, z, y, x)."""
    e = _perturbation(rng, cl.image_centre(pair.grid), cfg)
    pre = sitk.CompositeTransform([pair.rigid_inv, e])  # x → R⁻¹(E(x))
    inv = sitk.CompositeTransform([e.GetInverse(), pair.rigid_inv.GetInverse()])
    moving = moving_input(pair.moving_work, pair.grid, pre)
    resid = sitk.CompositeTransform([inv, pair.true])  # x → P⁻¹(T(x))
    u = rq.displacement(resid, pair.grid)  # (z, y, x, 3) physical = index axes (identity dir)
    d = np.asarray(pair.grid.GetDirection(), float).reshape(3, 3)
    u = u @ d  # physical → index-axis components
    return moving, np.moveaxis(u, -1, 0).astype(np.float32)


def _evaluate(model: LearnedRegistration, pairs: list[_Pair], options: RegistrationOptions
              ) -> dict[str, Any]:
    """Held-out TRE: identity, classical rigid, rigid + network (registration working grid)."""
    rows = []
    for p in pairs:
        fw, fm = cl.prepare_ct(p.fixed_ct, options)
        mw, mm = cl.prepare_ct(p.moving_ct, options)
        reg = cl.register_pair(fw, mw, fm, mm, options, (TransformStage.RIGID,))
        disp = model.predict(p.fixed_ct, p.moving_ct, reg.linear)
        m = sitk.GetArrayViewFromImage(fm) > 0
        d_true = rq.displacement(p.true, fw)
        t_id = rq.tre_from_displacements(np.zeros_like(d_true), d_true, m)
        t_rigid = rq.tre_from_displacements(rq.displacement(reg.linear, fw), d_true, m)
        t_learn = rq.tre_from_displacements(
            rq.displacement(cl.compose(reg.linear, disp), fw), d_true, m)
        jac = rq.jacobian_stats(jacobian_determinant(disp, fw), fm)
        rows.append({"patient_seed": p.patient_seed, "timepoint": p.label,
                     "tre_identity_mean_mm": t_id.mean_mm, "tre_rigid_mean_mm": t_rigid.mean_mm,
                     "tre_rigid_max_mm": t_rigid.max_mm, "tre_learned_mean_mm": t_learn.mean_mm,
                     "tre_learned_max_mm": t_learn.max_mm,
                     "jacobian_min": jac.min, "folding_fraction": jac.fraction_nonpositive})

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in rows]))

    return {"pairs": len(rows), "tre_identity_mean_mm": mean("tre_identity_mean_mm"),
            "tre_rigid_mean_mm": mean("tre_rigid_mean_mm"),
            "tre_learned_mean_mm": mean("tre_learned_mean_mm"),
            "tre_rigid_max_mm": float(max(r["tre_rigid_max_mm"] for r in rows)),
            "tre_learned_max_mm": float(max(r["tre_learned_max_mm"] for r in rows)),
            "pairs_improved": int(sum(r["tre_learned_mean_mm"] < r["tre_rigid_mean_mm"]
                                      for r in rows)),
            "folding_fraction_max": float(max(r["folding_fraction"] for r in rows)),
            "per_pair": rows}


def train_registration(seed: int = 0, epochs: int = 10, out: str | Path | None = None, *,
                       config: TrainingConfig | None = None,
                       progress: ProgressFn | None = None, work_dir: str | Path | None = None
                       ) -> TrainingResult:
    """Train the learned registration model and write its weights and model card.

    Parameters
    ----------
    seed : int
        Seed of everything random (phantoms, perturbations, shuffling, initial weights).
    epochs : int
        Passes over the training pairs.
    out : path, optional
        Weight file to write (``.pt``); the model card goes beside it as ``.json``. Default
        ``regunet_v1.pt`` in the current folder.
    config : TrainingConfig, optional
        Other settings (its ``seed``/``epochs`` are replaced by the arguments).
    progress : callable(message, fraction), optional
    work_dir : path, optional
        Where the digital patients are written (default a temporary folder, removed after).

    Returns
    -------
    TrainingResult
    """
    import torch

    from dosimetry.registration.learned.network import (
        RegUNet,
        crop,
        n_parameters,
        pad_to_multiple,
        smoothness,
    )

    t_start = time.perf_counter()
    cfg = config or TrainingConfig()
    cfg = TrainingConfig(**{**cfg.to_dict(), "seed": seed, "epochs": epochs,
                            "deformation_mm": tuple(cfg.deformation_mm),
                            "channels": tuple(cfg.channels)})
    report = progress or (lambda msg, frac: None)
    out_path = Path(out) if out is not None else Path(f"{SHIPPED_NAME}.pt")
    if out_path.suffix != ".pt":
        raise InputError(f"{out_path}: weight file must end in .pt")
    rng = np.random.default_rng([cfg.seed, 20240613])
    train_seeds = [TRAIN_SEED_BASE + 100 * cfg.seed + i for i in range(cfg.n_train_patients)]
    held_seeds = [HELDOUT_SEED_BASE + 100 * cfg.seed + i for i in range(cfg.n_heldout_patients)]

    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    try:
        with tempfile.TemporaryDirectory(prefix="rptdose-regtrain-",
                                         dir=work_dir) as tmp:
            tmpdir = Path(tmp)
            train_dirs = _make_studies(tmpdir, train_seeds, cfg, rng, report, 0.0, 0.2)
            held_dirs = _make_studies(tmpdir, held_seeds, cfg, rng, report, 0.2, 0.25)
            report("preparing pairs", 0.25)
            train_pairs = [p for d, s in zip(train_dirs, train_seeds, strict=True)
                           for p in _pairs(d, s)]
            held_pairs = [p for d, s in zip(held_dirs, held_seeds, strict=True)
                          for p in _pairs(d, s)]

            torch.manual_seed(cfg.seed)
            device = torch.device(cfg.device)
            net = RegUNet(cfg.channels, cfg.displacement_scale_mm).to(device)
            opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
            milestones = [max(1, int(0.6 * cfg.epochs)), max(1, int(0.85 * cfg.epochs))]
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.5)
            losses: list[float] = []
            t_train = time.perf_counter()
            for epoch in range(cfg.epochs):
                order = rng.permutation(len(train_pairs))
                total = 0.0
                net.train()
                for j in order:
                    pair = train_pairs[int(j)]
                    moving, target = _sample(pair, rng, cfg)
                    f = torch.from_numpy(pair.fixed)[None, None].to(device)
                    m = torch.from_numpy(moving)[None, None].to(device)
                    t = torch.from_numpy(target)[None].to(device)
                    mask = torch.from_numpy(pair.mask)[None, None].to(device)
                    f, size = pad_to_multiple(f, PAD_MULTIPLE)
                    m, _ = pad_to_multiple(m, PAD_MULTIPLE)
                    pred = crop(net(f, m), size)
                    err = ((pred - t) ** 2).sum(dim=1, keepdim=True)
                    data = (err * mask).sum() / mask.sum().clamp(min=1)
                    loss = data + cfg.smooth_weight * smoothness(pred)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += float(loss.detach())
                sched.step()
                losses.append(total / len(train_pairs))
                report(f"epoch {epoch + 1}/{cfg.epochs}: loss {losses[-1]:.3f} mm²",
                       0.25 + 0.65 * (epoch + 1) / cfg.epochs)
            train_time = time.perf_counter() - t_train

            net.eval()
            buf = io.BytesIO()
            state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
            torch.save(state, buf)
            atomic_write_bytes(out_path, buf.getvalue())
            sha = sha256_of(out_path)
            card = _card(cfg, out_path, sha, n_parameters(net), train_seeds, held_seeds,
                         len(train_pairs), losses, train_time)
            report("held-out evaluation", 0.9)
            model = LearnedRegistration(net, card, out_path, sha, device)
            metrics = _evaluate(model, held_pairs, RegistrationOptions())
            card["metrics"] = {"held_out": metrics}
            card["training"]["total_time_s"] = round(time.perf_counter() - t_start, 1)
            card_path = out_path.with_suffix(".json")
            atomic_write_text(card_path, json.dumps(card, indent=2) + "\n")
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)
    report("done", 1.0)
    return TrainingResult(weights=out_path, card=card_path, sha256=sha, metrics=metrics,
                          losses=tuple(losses), time_s=time.perf_counter() - t_start)


def _card(cfg: TrainingConfig, path: Path, sha: str, n_params: int, train_seeds: list[int],
          held_seeds: list[int], n_pairs: int, losses: list[float], train_time: float
          ) -> dict[str, Any]:
    import torch

    cmd = (f"rptdose train registration --seed {cfg.seed} --epochs {cfg.epochs} "
           f"-o {shlex.quote(path.name)}")
    return {
        "name": path.stem,
        "file": path.name,
        "sha256": sha,
        "size_bytes": path.stat().st_size,
        "task": "deformable CT-CT registration residual after rigid pre-alignment",
        "architecture": {"type": "RegUNet (VoxelMorph-style 3D U-Net, half-resolution "
                                 "displacement head, trilinear upsampling)",
                         "channels": list(cfg.channels),
                         "displacement_scale_mm": cfg.displacement_scale_mm,
                         "parameters": n_params,
                         "reference": "Balakrishnan et al. 2019, doi:10.1109/TMI.2019.2897538"},
        "input": {"spacing_mm": INPUT_SPACING_MM, "hu_window": list(INPUT_HU_WINDOW),
                  "channels": ["reference CT", "moving CT after the rigid pre-alignment"],
                  "scaling": "HU clipped to the window, divided by 1000",
                  "pad_multiple": PAD_MULTIPLE},
        "output": "displacement u [mm] on the 8 mm grid over the reference CT, components "
                  "along the grid's index axes; T(x) = R(x + u(x)) maps reference to moving "
                  "points",
        "pre_alignment": "classical rigid registration (Mattes MI, rptdose defaults)",
        "training": {
            "command": cmd,
            "function": f"dosimetry.registration.train_registration(seed={cfg.seed}, "
                        f"epochs={cfg.epochs}, out={str(path.name)!r})",
            "config": cfg.to_dict(),
            "data": {"generator": "phantoms.make_patient (NIfTI, 4 timepoints 4/24/96/168 h, "
                                  "first timepoint = reference)",
                     "presets": list(PRESETS),
                     "ct_grid_mm": cfg.ct_grid_mm,
                     "train_patient_seeds": train_seeds,
                     "heldout_patient_seeds": held_seeds,
                     "train_pairs": n_pairs,
                     "deformation_mm_range": list(cfg.deformation_mm),
                     "rigid_pre_alignment_error": {"deg_sigma": cfg.rigid_error_deg,
                                                   "mm_sigma": cfg.rigid_error_mm}},
            "loss": f"masked displacement MSE [mm²] + {cfg.smooth_weight} × smoothness",
            "optimizer": f"Adam lr {cfg.learning_rate}, halved at 60 % and 85 % of epochs",
            "final_loss_mm2": losses[-1] if losses else None,
            "loss_per_epoch": [round(v, 4) for v in losses],
            "train_time_s": round(train_time, 1),
            "torch_version": torch.__version__,
            "threads": cfg.threads,
            "device": cfg.device,
            "deterministic": True,
        },
        "limitations": "trained on digital patients only (analytic anatomy, smooth random "
                       "deformation, no breathing or bowel/bladder changes); not validated on "
                       "patient data; intended to improve on rigid-only alignment.",
    }
