"""Make a digital patient study: anatomy → kinetics → SPECT/CT per timepoint → files.

:func:`make_patient` writes a complete multi-timepoint SPECT/CT study folder the way a scanner
export plus our manifest would look, and a ``truth/`` folder with everything that was used to
make it::

    OUT/
      study.yaml                     manifest (paths relative to OUT)
      dicom/tp1_4h/CT/CT_0001.dcm …  CT series per timepoint        (format dicom)
      dicom/tp1_4h/NM/SPECT.dcm      reconstructed SPECT (NM, one multi-frame file)
      nifti/4h_ct.nii.gz             CT in HU                       (format nifti)
      nifti/4h_spect.nii.gz          SPECT in Bq/mL or counts
      truth/truth.json               masses, volumes, TIA, kinetics, activities, transforms
      truth/labels.nii.gz            label map on the reference grid (+ labels.json table)
      truth/activity_4h.nii.gz       true activity [Bq/voxel], reference grid and pose
      truth/tia.nii.gz               true time-integrated activity [Bq·s/voxel]
      truth/transforms/4h_*.tfm      true motion (both directions; see acquisition.py)

SPECT is written in Bq/mL (DICOM Units ``BQML``) or, with ``counts``, as integer counts
(Units ``CNTS``, no RealWorldValueMapping): the calibration factor and frame duration are then
in ``study.yaml`` and ``truth.json`` only, as with many vendor exports (``rptdose ingest`` needs
``--calibration-cps-per-mbq`` for them). The reference grid and pose are those of the first
timepoint's CT. The whole folder is written
under a temporary sibling name and renamed into place at the end, so an interrupted run never
leaves a study that looks complete.

With the same configuration and seed the files are byte-identical: UIDs come from
:func:`dosimetry.io.dicom_write.uid_from_seed`, dates from a fixed base date plus seed-derived
offsets, and nothing reads the clock.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dosimetry import units
from dosimetry.errors import InputError
from dosimetry.io.atomic import atomic_folder
from dosimetry.io.images import write_image
from phantoms.acquisition import (
    AcquisitionSpec,
    RigidPose,
    SpectModel,
    default_acquisition,
    draw_deformation,
    draw_pose,
    invert_deformation,
    make_image,
    simulate_ct,
    simulate_spect,
    spect_grid,
    timepoint_transform,
)
from phantoms.anatomy import (
    LESION_LABEL_BASE,
    Anatomy,
    AnatomyOptions,
    GridSpec,
    Kind,
    make_anatomy,
)
from phantoms.kinetics_presets import (
    BLOOD_ML_PER_KG,
    DrawnKinetics,
    LabelCurves,
    Preset,
    check_conservation,
    draw_kinetics,
    get_preset,
    label_curves,
)
from phantoms.truth import (
    GENERATOR_VERSION,
    label_map_values,
    label_masses,
    voxel_weights,
    write_truth_folder,
)

#: Date all phantom studies start from; the seed adds whole days and minutes.
BASE_DATE = datetime(2024, 1, 1, 8, 0, 0)

#: Stated simplifications, written into truth.json.
SIMPLIFICATIONS: tuple[str, ...] = (
    "SPECT: image-domain model of a corrected OSEM reconstruction — stationary 3D Gaussian "
    "blur (system FWHM) plus SPECT-voxel averaging, resampled to the SPECT grid; no "
    "projection, attenuation, scatter, collimator-detector response or reconstruction is "
    "simulated.",
    "SPECT noise: independent Poisson counts per reconstructed voxel with mean "
    "sensitivity × duration × activity (real OSEM noise is correlated and not Poisson).",
    "Activity is frozen during each acquisition (no decay or redistribution over the frame); "
    "the true activity maps are at the start of the SPECT acquisition.",
    "CT: label-wise CT numbers with smooth texture, a 1 mm partial-volume blur and "
    "independent Gaussian noise; no beam hardening, streaks or metal artefacts; FOV cropped "
    "to the patient.",
    "Motion between timepoints: rigid (optionally plus a smooth deformation) of the whole "
    "patient; organs do not move relative to each other otherwise (no breathing, no bladder "
    "filling changes, no bowel motion).",
    "Activity within a label is spread by a fixed smooth texture (and a necrotic core in "
    "lesions ≥ 30 mm), the same at every time (no intra-organ kinetics).",
    "Kinetics: sums of exponentials (uptake from a whole-body pool, one or two washout "
    "components); blood and red marrow follow the pool's blood share; tissue outside the "
    "field of view is not imaged but holds activity (per gram, factor 1).",
    "Anatomy: analytic shapes (perturbed superellipsoids under a smooth deformation); no arms, "
    "clavicles, scapulae, bowel, pancreas, adrenals or vessels; heart = blood pool.",
)

ProgressFn = Callable[[str, float], None]


class OutputFormat(StrEnum):
    """How images are written."""

    DICOM = "dicom"
    NIFTI = "nifti"


_STREAMS = {"anatomy": 1, "kinetics": 2, "motion": 3, "ct": 4, "spect": 5, "misc": 6,
            "deform": 7}


def _rng(seed: int, stream: str, *more: int) -> np.random.Generator:
    """Independent generator per stage (and timepoint) from the seed."""
    return np.random.default_rng([seed, _STREAMS[stream], *more])


@dataclass(frozen=True)
class PatientConfig:
    """Everything that defines a digital patient study (see :func:`make_patient`).

    Attributes
    ----------
    preset : Preset
        Kinetics preset (nuclide, radiopharmaceutical, organ kinetics).
    timepoints_h : tuple of float
        Nominal imaging times after injection [h], strictly increasing, at least 1 h apart.
    seed : int
        Seed of everything random.
    output_format : OutputFormat
        ``dicom`` (CT series + NM SPECT per timepoint) or ``nifti``.
    n_lesions : int
        Number of lesions (0–30).
    head_neck : bool or None
        Include head and neck (salivary glands, brain); None = what the preset needs.
    counts : bool
        Write SPECT as counts with the calibration factor (else Bq/mL).
    grid : GridSpec
        CT grid (in-plane and slice spacing).
    spect_spacing_mm, spect_matrix : float, int or None
        SPECT voxel size and in-plane matrix (None: the nuclide's default, 4.7952 mm, 128).
    motion_scale : float
        Multiplies the drawn repositioning between timepoints (0 = none).
    deformation_mm : float
        Amplitude of a smooth deformation added to the motion of timepoints 2…n (0 = rigid).
    administered_activity_mbq : float or None
        Fixed administered activity; default the preset's ± 2 %.
    spect_model : SpectModel
        ``image`` (default: image-domain blur and noise) or ``projection`` (projections with
        attenuation, scatter, CDR and noise, reconstructed by ``dosimetry.reconstruction``; see
        :mod:`phantoms.projection`). Left out of :meth:`to_dict` at its default, so studies
        made before the option keep their digests, UIDs and bytes.
    """

    preset: Preset = Preset.LU177_DOTATATE
    timepoints_h: tuple[float, ...] = (4.0, 24.0, 96.0, 168.0)
    seed: int = 0
    output_format: OutputFormat = OutputFormat.DICOM
    n_lesions: int = 3
    head_neck: bool | None = None
    counts: bool = False
    grid: GridSpec = field(default_factory=GridSpec)
    spect_spacing_mm: float | None = None
    spect_matrix: int | None = 128
    motion_scale: float = 1.0
    deformation_mm: float = 0.0
    administered_activity_mbq: float | None = None
    spect_model: SpectModel = SpectModel.IMAGE

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "spect_model", SpectModel(self.spect_model))
        except ValueError:
            raise InputError(f"unknown SPECT model {self.spect_model!r}; choose "
                             f"{' or '.join(m.value for m in SpectModel)}") from None
        try:
            object.__setattr__(self, "preset", Preset(self.preset))
        except ValueError:
            raise InputError(f"unknown preset {self.preset!r}; choose one of "
                             f"{', '.join(p.value for p in Preset)}") from None
        try:
            object.__setattr__(self, "output_format", OutputFormat(self.output_format))
        except ValueError:
            raise InputError(f"unknown output format {self.output_format!r}; choose dicom or "
                             "nifti") from None
        tps = tuple(float(t) for t in self.timepoints_h)
        object.__setattr__(self, "timepoints_h", tps)
        if not tps or len(tps) > 12:
            raise InputError(f"timepoints {tps}: give 1 to 12 imaging times [h]")
        for t in tps:
            if not (math.isfinite(t) and 0.5 <= t <= 2000.0):
                raise InputError(f"timepoint {t} h is outside 0.5–2000 h after injection")
        for a, b in itertools.pairwise(tps):
            if b - a < 1.0:
                raise InputError(f"timepoints {a} h and {b} h: must increase by at least 1 h "
                                 "(separate imaging sessions)")
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**63):
            raise InputError(f"seed {self.seed!r} must be an integer in 0 … 2^63−1")
        if not (0 <= self.n_lesions <= 30):
            raise InputError(f"number of lesions {self.n_lesions} is outside 0–30")
        preset = get_preset(self.preset)
        if self.head_neck is False and preset.requires_head_neck:
            raise InputError(f"preset {self.preset.value} needs the head and neck (thyroid "
                             "remnant, salivary glands); do not switch head/neck off")
        if not (0.0 <= self.motion_scale <= 3.0):
            raise InputError(f"motion scale {self.motion_scale} is outside 0–3")
        if not (0.0 <= self.deformation_mm <= 10.0):
            raise InputError(f"deformation amplitude {self.deformation_mm} mm is outside 0–10")
        a = self.administered_activity_mbq
        if a is not None and not (math.isfinite(a) and 1.0 <= a <= 50000.0):
            raise InputError(f"administered activity {a} MBq is outside 1–50000 MBq")

    @property
    def include_head_neck(self) -> bool:
        """Whether the head and neck are in the field of view."""
        if self.head_neck is None:
            return get_preset(self.preset).requires_head_neck
        return self.head_neck

    def acquisition(self) -> AcquisitionSpec:
        """The SPECT/CT acquisition used (nuclide defaults with this config's grid)."""
        spec = default_acquisition(get_preset(self.preset).nuclide)
        kw: dict[str, Any] = {"matrix_xy": self.spect_matrix}
        if self.spect_spacing_mm is not None:
            kw["spect_spacing_mm"] = self.spect_spacing_mm
        return replace(spec, **kw)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (enums as values)."""
        d = asdict(self)
        d["preset"] = self.preset.value
        d["output_format"] = self.output_format.value
        d["timepoints_h"] = list(self.timepoints_h)
        d["head_neck"] = self.include_head_neck
        if self.spect_model is SpectModel.IMAGE:
            del d["spect_model"]  # the historical default: keep old digests
        else:
            d["spect_model"] = self.spect_model.value
        return d

    def digest(self) -> str:
        """Short hash of the configuration (part of every UID seed)."""
        import json

        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PatientResult:
    """What :func:`make_patient` wrote."""

    out_dir: Path
    manifest: Path
    study: Any  # dosimetry.study.manifest.Study
    truth: dict[str, Any]
    files: tuple[Path, ...]
    timings_s: dict[str, float]


# ============================================================================== helpers
@contextlib.contextmanager
def staged_output(out_dir: Path, overwrite: bool):
    """Yield a temporary sibling folder; on success it becomes ``out_dir`` (atomic rename).

    Raises
    ------
    InputError
        ``out_dir`` exists (non-empty) and ``overwrite`` is false, or is a file.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not out_dir.is_dir():
            raise InputError(f"{out_dir}: exists and is not a folder")
        if any(out_dir.iterdir()) and not overwrite:
            raise InputError(f"{out_dir}: folder exists and is not empty; choose another "
                             "output folder or allow overwriting")
    with atomic_folder(out_dir) as tmp:
        yield tmp


def session_label(acquisition: datetime, injection: datetime) -> str:
    """Timepoint label as :mod:`dosimetry.study.ingest` derives it: whole hours, ``"24h"``."""
    return f"{(acquisition - injection).total_seconds() / 3600.0:.0f}h"


def grid_image(size, spacing, origin, pixel=sitk.sitkFloat32) -> sitk.Image:
    """An empty image defining a grid (identity direction)."""
    img = sitk.Image([int(s) for s in size], pixel)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    return img


def _lesion_texture(anatomy: Anatomy) -> np.ndarray:
    """Heterogeneity texture with a necrotic (15 %) core in lesions of ≥ 30 mm."""
    tex = anatomy.heterogeneity.copy()
    g = anatomy.grid
    for les in anatomy.lesions:
        if les.diameter_mm < 30.0:
            continue
        sel = np.nonzero(anatomy.labels == les.label)
        if sel[0].size == 0:
            continue
        pts = [g.origin[i] + g.spacing[i] * sel[2 - i] for i in range(3)]
        cen = [float(np.mean(p)) for p in pts]
        r2 = sum((p - c) ** 2 for p, c in zip(pts, cen, strict=True))
        core = r2 < (0.45 * les.diameter_mm / 2) ** 2
        tex[tuple(s[core] for s in sel)] *= np.float32(0.15)
    return tex


# ============================================================================== main
def make_patient(out_dir: str | os.PathLike[str], config: PatientConfig = PatientConfig(), *,
                 overwrite: bool = False, progress: ProgressFn | None = None) -> PatientResult:
    """Generate a digital patient and write its study and truth to ``out_dir``.

    Parameters
    ----------
    out_dir : path
        Output folder; must not exist or be empty unless ``overwrite``.
    config : PatientConfig
    overwrite : bool
        Replace an existing folder (atomically, as a whole).
    progress : callable(stage, fraction), optional
        Called as the work proceeds (fraction of the whole, 0–1).

    Returns
    -------
    PatientResult
    """
    from dosimetry.nuclides import get_nuclide

    out_dir = Path(out_dir)
    report = progress or (lambda stage, frac: None)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    preset = get_preset(config.preset)
    nuclide = get_nuclide(preset.nuclide)
    lam = nuclide.decay_constant_per_s
    spec = config.acquisition()
    seed = config.seed
    n_tp = len(config.timepoints_h)
    head_neck = config.include_head_neck

    with staged_output(out_dir, overwrite) as tmp:
        # ------------------------------------------------------------------ anatomy
        report("anatomy", 0.0)
        t0 = time.perf_counter()
        options = AnatomyOptions(head_neck=head_neck, n_lesions=config.n_lesions,
                                 lesion_sites=preset.lesion_sites,
                                 thyroid_remnant=preset.thyroid_remnant and head_neck)
        anatomy = make_anatomy(_rng(seed, "anatomy"), options, config.grid)
        timings["anatomy"] = time.perf_counter() - t0

        # ------------------------------------------------------------------ kinetics
        report("kinetics", 0.15)
        t0 = time.perf_counter()
        kin = patient_kinetics(anatomy, preset, seed, head_neck, config.administered_activity_mbq)
        ktab, n_vox, mass_by_label, masses = kin.ktab, kin.n_vox, kin.mass_by_label, kin.masses
        label_of, weight_kg, drawn = kin.label_of, kin.weight_kg, kin.drawn
        curves, weights, a0_bq, tia_bq_s = kin.curves, kin.weights, kin.a0_bq, kin.tia_bq_s
        vox_ml = anatomy.grid.voxel_volume_ml
        labels_core = anatomy.labels[anatomy.core]
        misc = kin.misc
        timings["kinetics"] = time.perf_counter() - t0

        # ------------------------------------------------------------------ times and ids
        inj = BASE_DATE + timedelta(days=int(misc.integers(0, 365)),
                                    minutes=int(misc.integers(0, 180)))
        acq: list[datetime] = []
        for h in config.timepoints_h:
            jitter = int(misc.integers(-10, 11))
            acq.append(inj + timedelta(minutes=round(h * 60) + jitter))
        tp_labels = [session_label(a, inj) for a in acq]
        if len(set(tp_labels)) != len(tp_labels):
            raise InputError(f"timepoints {config.timepoints_h} h give repeated labels "
                             f"{tp_labels}; space them further apart")
        dicom_pid = f"RPTPHANTOM{seed:06d}"
        from dosimetry.study.ingest import pseudonymise

        patient_id = pseudonymise(dicom_pid)
        uid_base = ("rptdose-phantom", GENERATOR_VERSION, config.digest())

        # ------------------------------------------------------------------ geometry
        g = anatomy.grid
        cg = anatomy.core_grid
        hu_ref = make_image(anatomy.hu, g.spacing, g.origin)
        ct_grid = grid_image(cg.size, cg.spacing, cg.origin)
        sp_grid = spect_grid(ct_grid, spec)
        center = tuple(float(o + (n - 1) * s / 2) for o, n, s in
                       zip(cg.origin, cg.size, cg.spacing, strict=True))
        noise_hu = float(misc.uniform(*spec.ct_noise_hu))
        labels_img = make_image(labels_core.astype(np.uint16), cg.spacing, cg.origin)

        # ------------------------------------------------------------------ timepoints
        act_maps: dict[str, sitk.Image] = {}
        transforms: dict[str, dict[str, Any]] = {}
        tp_truth: list[dict[str, Any]] = []
        timepoints: list[dict[str, Any]] = []
        files: list[Path] = []
        for i, (h_nom, t_acq, label) in enumerate(zip(config.timepoints_h, acq, tp_labels,
                                                      strict=True)):
            frac0 = 0.2 + 0.65 * i / n_tp
            report(f"timepoint {label}: activity", frac0)
            t0 = time.perf_counter()
            t_s = (t_acq - inj).total_seconds()
            act_label = {n: a0_bq * c.fraction(t_s, lam) for n, c in curves.in_fov.items()}
            act = label_map_values(anatomy.labels, weights,
                                   {label_of[n]: a for n, a in act_label.items()})
            act_img = make_image(act.astype(np.float32), g.spacing, g.origin)
            core_act = act[anatomy.core].astype(np.float32)
            act_maps[label] = make_image(core_act, cg.spacing, cg.origin)
            del act
            timings[f"{label} activity"] = time.perf_counter() - t0

            # motion
            t0 = time.perf_counter()
            if i == 0:
                pose = RigidPose((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), center)
                deform = None
            else:
                pose = draw_pose(_rng(seed, "motion", i), center, config.motion_scale)
                deform = (draw_deformation(_rng(seed, "deform", i), ct_grid,
                                           config.deformation_mm)
                          if config.deformation_mm > 0 else None)
            tfm = timepoint_transform(pose, deform)
            rigid = pose.transform()
            tr_objs: dict[str, Any] = {"tp_to_ref_rigid": rigid,
                                       "ref_to_tp_rigid": rigid.GetInverse()}
            if deform is not None:
                tr_objs["tp_to_ref_deformation"] = deform
                tr_objs["ref_to_tp_deformation"] = invert_deformation(deform)
            transforms[label] = tr_objs

            report(f"timepoint {label}: CT", frac0 + 0.1 / n_tp)
            ct = simulate_ct(hu_ref, ct_grid, tfm, noise_hu, _rng(seed, "ct", i))
            timings[f"{label} CT"] = time.perf_counter() - t0
            report(f"timepoint {label}: SPECT", frac0 + 0.25 / n_tp)
            t0 = time.perf_counter()
            if config.spect_model is SpectModel.PROJECTION:
                from phantoms.projection import simulate_spect_projection

                spect = simulate_spect_projection(act_img, hu_ref, sp_grid, tfm, spec,
                                                  nuclide.name, _rng(seed, "spect", i), ct=ct)
            else:
                spect = simulate_spect(act_img, sp_grid, tfm, spec, _rng(seed, "spect", i))
            del act_img
            timings[f"{label} SPECT"] = time.perf_counter() - t0

            # write images
            report(f"timepoint {label}: writing", frac0 + 0.4 / n_tp)
            t0 = time.perf_counter()
            spect_img = spect.counts if config.counts else spect.bq_per_ml
            tp_entry = _write_timepoint(tmp, config, i, label, t_acq, inj, ct, spect_img,
                                        spec, drawn, nuclide, dicom_pid, weight_kg, uid_base,
                                        files)
            timepoints.append(tp_entry)
            timings[f"{label} write"] = time.perf_counter() - t0

            tp_truth.append(_timepoint_truth(
                i, label, h_nom, t_acq, inj, act_label, core_act, curves, a0_bq, lam, t_s,
                spect, spec, pose, deform is not None, config))
            if config.spect_model is SpectModel.PROJECTION:
                tp_truth[-1]["spect"]["projection"] = spect.recon_info

        # ------------------------------------------------------------------ manifest
        report("manifest and truth", 0.88)
        t0 = time.perf_counter()
        from dosimetry.study.manifest import Study

        source = {"generated_by": "rptdose phantom make", "preset": config.preset.value,
                  "seed": str(seed), "generator_version": GENERATOR_VERSION}
        study = Study.from_dict({
            "patient_id": patient_id, "nuclide": nuclide.name,
            "radiopharmaceutical": preset.radiopharmaceutical,
            "administered_activity_mbq": drawn.administered_activity_mbq,
            "injection_datetime": inj, "timepoints": timepoints,
            "patient_weight_kg": weight_kg, "spect_fwhm_mm": spec.fwhm_mm, "source": source,
        }, source="phantom manifest")
        manifest = study.save(tmp / "study.yaml")

        # ------------------------------------------------------------------ truth
        tia_core = label_map_values(labels_core, weights[anatomy.core],
                                    {label_of[n]: v for n, v in tia_bq_s.items()})
        tia_img = make_image(tia_core.astype(np.float32), cg.spacing, cg.origin)
        truth = _truth_document(config, preset, drawn, curves, anatomy, ktab, n_vox, masses,
                                tia_bq_s, a0_bq, lam, nuclide, weight_kg, inj, patient_id,
                                tp_truth, spec, noise_hu, cg, tp_labels)
        if config.spect_model is SpectModel.PROJECTION:
            from phantoms.projection import projection_truth

            projection_truth(truth, nuclide.name, spec)
        table = _label_table(anatomy, ktab, n_vox, mass_by_label, vox_ml)
        files += write_truth_folder(tmp / "truth", truth, table, labels_img, act_maps, tia_img,
                                    transforms)
        timings["truth"] = time.perf_counter() - t0
        report("done", 1.0)
    timings["total"] = time.perf_counter() - t_start
    rel = tuple(sorted(Path(os.path.relpath(p, tmp)) for p in files))
    return PatientResult(out_dir=out_dir, manifest=out_dir / manifest.name, study=study,
                         truth=truth, files=rel, timings_s=timings)


@dataclass(frozen=True, eq=False)
class PatientKinetics:
    """The drawn kinetics of a digital patient (see :func:`patient_kinetics`)."""

    ktab: dict[str, dict[int, Any]]
    n_vox: dict[int, int]
    mass_by_label: dict[int, float]
    masses: dict[str, float]
    name_of: dict[int, str]
    label_of: dict[str, int]
    weight_kg: float
    drawn: Any
    curves: Any
    weights: np.ndarray
    a0_bq: float
    tia_bq_s: dict[str, float]
    misc: np.random.Generator

    def tia_map(self, labels: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """True TIA per voxel (Bq·s, float64) of a label map on the anatomy's grid."""
        w = self.weights if weights is None else weights
        return label_map_values(labels, w, {self.label_of[n]: v
                                            for n, v in self.tia_bq_s.items()})


def patient_kinetics(anatomy: Anatomy, preset, seed: int, head_neck: bool,
                     administered_activity_mbq: float | None = None) -> PatientKinetics:
    """Draw the kinetics of a patient: organ masses, curves and TIA per label (in the FOV).

    The random streams are the ones :func:`make_patient` uses, so the same seed gives the same
    kinetics here and in a written study.
    """
    from dosimetry.nuclides import get_nuclide

    lam = get_nuclide(preset.nuclide).decay_constant_per_s
    ktab = _kinetics_tables(anatomy, preset)
    labels_core = anatomy.labels[anatomy.core]
    vox_ml = anatomy.grid.voxel_volume_ml
    n_vox, mass_by_label = label_masses(labels_core, ktab["density"], vox_ml)
    name_of = ktab["name"]
    masses = {name_of[lab]: m for lab, m in mass_by_label.items()}
    kinds = {name_of[lab]: ktab["kind"][lab] for lab in mass_by_label}
    factors = {name_of[lab]: ktab["factor"][lab] for lab in mass_by_label}
    misc = _rng(seed, "misc")
    fov_kg = math.fsum(masses.values()) / units.G_PER_KG
    frac = float(misc.uniform(0.64, 0.72) if head_neck else misc.uniform(0.52, 0.60))
    weight_kg = round(fov_kg / frac, 1)
    lesion_ml = {name_of[lab]: n_vox[lab] * vox_ml for lab in n_vox
                 if lab > LESION_LABEL_BASE}
    drawn = draw_kinetics(preset, _rng(seed, "kinetics"), lesion_ml, administered_activity_mbq)
    curves = label_curves(drawn, kinds, masses, factors, weight_kg, head_neck)
    worst = check_conservation(curves, lam, 60 * get_nuclide(preset.nuclide).half_life_s)
    if worst < -1e-12:  # pragma: no cover - the model conserves by construction
        raise RuntimeError(f"phantom kinetics violate activity conservation by {worst:g}")
    weights = voxel_weights(anatomy.labels, anatomy.core, _lesion_texture(anatomy))
    a0_bq = units.mbq_to_bq(drawn.administered_activity_mbq)
    label_of = {v: k for k, v in name_of.items()}
    tia_bq_s = {n: a0_bq * c.integral_s(lam) for n, c in curves.in_fov.items()}
    return PatientKinetics(ktab, n_vox, mass_by_label, masses, name_of, label_of, weight_kg,
                           drawn, curves, weights, a0_bq, tia_bq_s, misc)


# ============================================================================== pieces
def _kinetics_tables(anatomy: Anatomy, preset) -> dict[str, dict[int, Any]]:
    """Name, kinetic role, density and pool factor per label. An organ the preset gives no
    specific uptake (e.g. the stomach for Lu-177 DOTATATE) shares the pool like tissue."""
    specific = {name for name, _ in preset.organs}
    out: dict[str, dict[int, Any]] = {"name": {}, "kind": {}, "density": {}, "factor": {}}
    for t in anatomy.tissues:
        kind = t.kind
        if kind is Kind.ORGAN and t.name not in specific:
            kind = Kind.TISSUE
        out["name"][t.label] = t.name
        out["kind"][t.label] = kind.value
        out["density"][t.label] = t.density_g_per_cm3
        out["factor"][t.label] = t.pool_factor
    return out


def _write_timepoint(tmp: Path, config: PatientConfig, i: int, label: str, t_acq: datetime,
                     inj: datetime, ct: sitk.Image, spect_img: sitk.Image,
                     spec: AcquisitionSpec, drawn: DrawnKinetics, nuclide, dicom_pid: str,
                     weight_kg: float, uid_base: tuple, files: list[Path]) -> dict[str, Any]:
    """Write one timepoint's CT and SPECT; return its manifest entry (paths relative)."""
    units_str = "counts" if config.counts else "Bq/mL"
    entry: dict[str, Any] = {"label": label, "acquisition_datetime": t_acq,
                             "spect_units": units_str}
    if config.counts:
        entry["calibration_cps_per_mbq"] = spec.sensitivity_cps_per_mbq
        entry["frame_duration_s"] = spec.frame_duration_s
    if config.output_format is OutputFormat.NIFTI:
        ct_path = Path("nifti") / f"{label}_ct.nii.gz"
        sp_path = Path("nifti") / f"{label}_spect.nii.gz"
        files.append(write_image(sitk.Cast(ct, sitk.sitkInt16), tmp / ct_path))
        files.append(write_image(spect_img, tmp / sp_path))
        entry["spect"] = {"path": sp_path.as_posix(), "format": "nifti"}
        entry["ct"] = {"path": ct_path.as_posix(), "format": "nifti"}
        return entry

    from dosimetry.io.dicom import NMUnits
    from dosimetry.io.dicom_write import (
        DicomSeriesMeta,
        NMMeta,
        uid_from_seed,
        write_ct_series,
        write_nm_spect,
    )

    def uid(*parts: object) -> str:
        return uid_from_seed(*uid_base, config.seed, i, *parts)

    study_uid, for_uid = uid("study"), uid("frame-of-reference")
    folder = Path("dicom") / f"tp{i + 1}_{label}"
    common = {"patient_id": dicom_pid, "study_uid": study_uid,
              "frame_of_reference_uid": for_uid, "study_datetime": t_acq,
              "study_description": f"rptdose digital patient {config.preset.value}",
              "manufacturer": "rptdose", "model_name": "rptdose digital SPECT/CT",
              "patient_weight_kg": weight_kg}
    ct_time = t_acq + timedelta(seconds=round(spec.frame_duration_s) + 120)
    ct_meta = DicomSeriesMeta(series_uid=uid("ct"), acquisition_datetime=ct_time,
                              series_description=f"CT {config.grid.slice_mm:g} mm",
                              series_number=2, **common)
    ct_files = write_ct_series(ct, tmp / folder / "CT", ct_meta,
                               convolution_kernel="B30f")
    files.extend(ct_files)
    nm_meta = DicomSeriesMeta(series_uid=uid("nm"), acquisition_datetime=t_acq,
                              series_description=f"SPECT {nuclide.name} OSEM AC SC",
                              series_number=1, **common)
    nm = NMMeta(units=NMUnits.COUNTS if config.counts else NMUnits.BQ_PER_ML,
                nuclide=nuclide.name, radiopharmaceutical=drawn.radiopharmaceutical,
                injection_datetime=inj,
                injected_activity_bq=units.mbq_to_bq(drawn.administered_activity_mbq),
                half_life_s=nuclide.half_life_s, frame_duration_s=spec.frame_duration_s,
                n_views=spec.n_views, corrections=("ATTN", "SCAT"))
    # counts images carry no RealWorldValueMapping: like many vendor exports, the calibration
    # factor lives outside the file (study.yaml, truth.json; `rptdose ingest
    # --calibration-cps-per-mbq`)
    sp_path = folder / "NM" / "SPECT.dcm"
    files.append(write_nm_spect(spect_img, tmp / sp_path, nm_meta, nm))
    entry["spect"] = {"path": sp_path.as_posix(), "format": "dicom"}
    entry["ct"] = {"path": (folder / "CT").as_posix(), "format": "dicom",
                   "series_uid": ct_meta.series_uid}
    return entry


def _timepoint_truth(i: int, label: str, h_nom: float, t_acq: datetime, inj: datetime,
                     act_label: dict[str, float], core_act: np.ndarray, curves: LabelCurves,
                     a0_bq: float, lam: float, t_s: float, spect, spec: AcquisitionSpec,
                     pose: RigidPose, deformed: bool, config: PatientConfig) -> dict[str, Any]:
    outside = {n: a0_bq * c.fraction(t_s, lam) for n, c in curves.outside.items()}
    return {
        "index": i,
        "label": label,
        "nominal_hours": h_nom,
        "hours_after_injection": t_s / units.HOUR,
        "acquisition_datetime": t_acq.isoformat(),
        "activity_map": f"activity_{label}.nii.gz",
        "label_activity_mbq": {n: units.bq_to_mbq(a) for n, a in act_label.items()},
        "outside_fov_organ_activity_mbq": {n: units.bq_to_mbq(a) for n, a in outside.items()},
        "total_in_fov_mbq": units.bq_to_mbq(math.fsum(act_label.values())),
        "activity_map_sum_mbq": units.bq_to_mbq(float(core_act.sum(dtype=np.float64))),
        "whole_body_mbq": units.bq_to_mbq(a0_bq * curves.whole_body.fraction(t_s, lam)),
        "spect": {
            "units": "counts" if config.counts else "Bq/mL",
            "expected_total_counts": spect.expected_total,
            "total_counts": spect.counts_total,
            "activity_in_spect_grid_mbq": units.bq_to_mbq(spect.activity_in_grid_bq),
            "sensitivity_cps_per_mbq": spec.sensitivity_cps_per_mbq,
            "frame_duration_s": spec.frame_duration_s,
        },
        "transform": {
            "tp_to_ref_rigid": f"transforms/{label}_tp_to_ref_rigid.tfm",
            "ref_to_tp_rigid": f"transforms/{label}_ref_to_tp_rigid.tfm",
            "tp_to_ref_deformation": (f"transforms/{label}_tp_to_ref_deformation.nii.gz"
                                      if deformed else None),
            "ref_to_tp_deformation": (f"transforms/{label}_ref_to_tp_deformation.nii.gz"
                                      if deformed else None),
            "euler_angles_deg": list(pose.angles_deg),
            "translation_mm": list(pose.translation_mm),
            "center_mm": list(pose.center_mm),
        },
    }


def _label_table(anatomy: Anatomy, ktab, n_vox: dict[int, int], mass: dict[int, float],
                 vox_ml: float) -> list[dict[str, Any]]:
    rows = []
    for t in anatomy.tissues:
        if t.label not in n_vox:
            continue
        rows.append({"label": t.label, "name": t.name, "kind": t.kind.value,
                     "totalsegmentator": t.totalsegmentator,
                     "density_g_per_cm3": t.density_g_per_cm3,
                     "density_source": t.density_source, "hu_nominal": t.hu,
                     "voxels": n_vox[t.label], "volume_ml": n_vox[t.label] * vox_ml,
                     "mass_g": mass[t.label]})
    return rows


def _truth_document(config: PatientConfig, preset, drawn: DrawnKinetics, curves: LabelCurves,
                    anatomy: Anatomy, ktab, n_vox, masses, tia_bq_s, a0_bq: float, lam: float,
                    nuclide, weight_kg: float, inj: datetime, patient_id: str,
                    tp_truth: list[dict[str, Any]], spec: AcquisitionSpec, noise_hu: float,
                    cg, tp_labels: list[str]) -> dict[str, Any]:
    vox_ml = anatomy.grid.voxel_volume_ml
    lesions = {le.name: le for le in anatomy.lesions}
    organs: dict[str, Any] = {}
    for lab, n in sorted(n_vox.items()):
        name = ktab["name"][lab]
        kind = ktab["kind"][lab]
        entry: dict[str, Any] = {
            "label": lab, "kind": kind, "in_fov": True, "voxels": n,
            "volume_ml": n * vox_ml, "mass_g": masses[name],
            "density_g_per_cm3": ktab["density"][lab],
            "tia_mbq_h": units.bq_s_to_mbq_h(tia_bq_s[name]),
            "curve_fraction_of_a0": curves.in_fov[name].to_dict(),
        }
        if kind in ("organ", "lesion"):
            entry["kinetics"] = drawn.organ(name).to_dict()
        elif kind == "blood":
            entry["kinetics"] = "blood concentration × mass (heart = blood pool)"
        elif kind == "marrow":
            entry["kinetics"] = f"RMBLR {drawn.rmblr} × blood concentration × mass"
        elif kind == "tissue":
            entry["kinetics"] = (f"pool per weighted gram × mass × pool factor "
                                 f"{ktab['factor'][lab]}")
        if name in lesions:
            le = lesions[name]
            entry["lesion"] = {"site": le.site.value, "nominal_diameter_mm": le.diameter_mm,
                               "center_mm": list(le.center_mm)}
        organs[name] = entry
    for name, c in curves.outside.items():
        organs[name] = {"kind": "organ", "in_fov": False,
                        "tia_mbq_h": units.bq_s_to_mbq_h(a0_bq * c.integral_s(lam)),
                        "curve_fraction_of_a0": c.to_dict(),
                        "kinetics": drawn.organ(name).to_dict()}
    blood_ml = BLOOD_ML_PER_KG * weight_kg
    return {
        "generator": {"name": "rptdose.phantoms", "version": GENERATOR_VERSION,
                      "seed": config.seed, "config": config.to_dict(),
                      "config_digest": config.digest()},
        "units": {"mass": "g", "volume": "mL", "activity": "MBq", "tia": "MBq·h",
                  "activity_maps": "Bq per voxel", "tia_map": "Bq·s per voxel",
                  "time": "h after injection", "curves": "fraction of A0 (biological, "
                  "multiply by exp(-lambda t) for activity); rates per h"},
        "patient_id": patient_id,
        "nuclide": {"name": nuclide.name, "half_life_s": nuclide.half_life_s,
                    "decay_constant_per_s": lam},
        "radiopharmaceutical": drawn.radiopharmaceutical,
        "preset": config.preset.value,
        "preset_references": list(preset.references),
        "administered_activity_mbq": drawn.administered_activity_mbq,
        "injection_datetime": inj.isoformat(),
        "patient_weight_kg": weight_kg,
        "reference": {
            "timepoint": tp_labels[0],
            "description": "truth maps are on the first timepoint's CT grid, in its pose",
            "grid": {"size": list(cg.size), "spacing_mm": list(cg.spacing),
                     "origin_mm": list(cg.origin), "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]},
        },
        "labels_file": "labels.nii.gz",
        "label_table_file": "labels.json",
        "tia_map": "tia.nii.gz",
        "organs": organs,
        "whole_body": {
            "tia_mbq_h": units.bq_s_to_mbq_h(a0_bq * curves.whole_body.integral_s(lam)),
            "tau_h": curves.whole_body.integral_s(lam) / units.HOUR,
            "curve_fraction_of_a0": curves.whole_body.to_dict(),
        },
        "blood": {
            "volume_ml": blood_ml,
            "curve_fraction_of_a0_per_ml": curves.blood_per_ml.to_dict(),
            "tau_h_per_ml": curves.blood_per_ml.integral_s(lam) / units.HOUR,
            "note": "EANM blood-dose inputs: tau_blood [h/mL] = ∫ c_blood(t)/A0 dt, "
                    "tau_WB [h] = whole_body.tau_h",
        },
        "kinetics": {
            "specific_uptake_scale": drawn.specific_scale,
            "pool_components": [{"weight": c.weight, "biological_half_life_h": c.half_life_h,
                                 "blood_share": c.blood_share} for c in drawn.pool],
            "rmblr": drawn.rmblr,
            "notes": list(drawn.notes),
            "variability": asdict(preset.variability),
        },
        "acquisition": {
            "collimator": spec.collimator, "fwhm_mm": spec.fwhm_mm,
            "fwhm_source": spec.fwhm_source,
            "sensitivity_cps_per_mbq": spec.sensitivity_cps_per_mbq,
            "sensitivity_source": spec.sensitivity_source,
            "frame_duration_s": spec.frame_duration_s, "n_views": spec.n_views,
            "spect_spacing_mm": spec.spect_spacing_mm, "spect_matrix": spec.matrix_xy,
            "ct_noise_hu": noise_hu,
        },
        "transforms": {
            "direction": "tp_to_ref maps a point of the timepoint's image space to the same "
                         "anatomical point of the reference (first timepoint) space; it made "
                         "the timepoint images from the reference. ref_to_tp is its inverse: "
                         "what registration with fixed = reference, moving = timepoint "
                         "returns; sitk.Resample(tp_image, reference_image, ref_to_tp) "
                         "aligns a timepoint to the reference.",
            "composition": "with a deformation d: x_ref = R(y + d(y)) (R = *_rigid.tfm); "
                           "inverse y = D⁻¹(R⁻¹(x)), D⁻¹ numerically inverted",
        },
        "anatomy": {"body_scale_xyz": list(anatomy.body_scale), "notes": list(anatomy.notes),
                    "lesions_requested": config.n_lesions,
                    "lesions_placed": len(anatomy.lesions)},
        "timepoints": tp_truth,
        "simplifications": list(SIMPLIFICATIONS),
    }
