"""``rptdose mc validate``: the dose engines against a Monte Carlo reference on one study.

Reads a work folder whose dose stage has run (the study's voxel TIA map, its reference CT, the
label map on the TIA grid and the VOIs of the dose stage), computes each engine's dose with
:func:`dosimetry.dose.engines.compute_dose` exactly as the dose stage does, computes (or reads)
a reference dose, and compares them with :func:`dosimetry.dose.validation.compare_doses`.

References
    ``mc``
        Our fast voxel Monte Carlo with ``mc_decays`` decays (default
        :data:`DEFAULT_REFERENCE_DECAYS`) and its statistical σ map.
    ``gate``
        GATE 10 through :func:`dosimetry.dose.gate.dose_gate` (needs ``opengate`` and the
        Geant4 data; without them it fails at once, saying what to install:
        :class:`~dosimetry.errors.DependencyError` or
        :class:`~dosimetry.dose.gate.g4data.G4DataMissingError`).
    ``reference_dose=PATH``
        A dose image (Gy) computed elsewhere (e.g. a GATE run exported and run on another
        machine), with an optional σ image; it must lie on the TIA grid, or is resampled onto it
        (linear) with a warning. ``reference`` then only says what the file holds.

VOI statistics are taken as the dose stage takes them: over the segmentation's label map on its
own (CT) grid, with every dose resampled onto it (linear), so small lesions keep their shape and
the figures match the report's. Voxel differences and gamma are evaluated on the TIA (dose) grid
inside the body: the CT denser than 0.1 g/cm³ on that grid
(:func:`dosimetry.dose.validation.body_mask_from_ct`).

Outputs, written together (one folder swapped in atomically) into ``WORKDIR/validation/``:
``validation.json`` (see :meth:`WorkdirValidation.to_dict`), ``validation.html`` (self-contained,
figures embedded), ``figures/*.png``, ``reference_dose_gy.nii.gz`` (+ ``reference_sigma_gy.nii.gz``
when the reference has a σ) and ``diff_<engine>_gy.nii.gz`` (engine − reference, Gy). The dose
report's methods section reads ``validation.json`` (:func:`read_validation`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dosimetry import __version__
from dosimetry.dose.validation import (
    DoseValidation,
    body_mask_from_ct,
    compare_doses,
)
from dosimetry.errors import GeometryError, InputError, MissingDataError
from dosimetry.io.atomic import atomic_folder, atomic_write_bytes, atomic_write_text
from dosimetry.io.images import overlap_fraction, read_image, require_same_grid, write_image
from dosimetry.study.workdir import Stage, WorkDir
from planning.workflow.report_render import (
    Figure,
    Report,
    Section,
    Table,
    figure_png,
    write_html,
)

__all__ = [
    "DEFAULT_ENGINES",
    "DEFAULT_REFERENCE_DECAYS",
    "SCHEMA_VERSION",
    "VALIDATION_DIR",
    "VALIDATION_JSON",
    "ReferenceKind",
    "WorkdirValidation",
    "read_validation",
    "tia_digest",
    "validate_workdir",
    "validation_json_path",
]

#: Version of the ``validation.json`` layout (the comparison inside has its own).
SCHEMA_VERSION = 1
VALIDATION_DIR = "validation"
VALIDATION_JSON = "validation.json"
VALIDATION_HTML = "validation.html"
#: Engines validated by default.
DEFAULT_ENGINES = ("deep", "dvk", "led")
#: Decays of the fast-MC reference: the count of bench/bench_deep.py's reference. Measured on a
#: whole Lu-177 digital patient on 9.6 mm voxels at 10⁵ decays and scaled by 1/√N: the median
#: σ of the VOI means is 0.4 % (well below the 2–10 % engine differences being judged), the
#: median voxel σ where the gamma is evaluated 6 % (≈ 16 % on 4.8 mm voxels). So the default
#: validates VOI doses; a voxel-level (2 %/2 mm) validation wants voxel σ ≲ 2 %, i.e. about 8×
#: (9.6 mm) to 60× (4.8 mm voxels) more decays: a GPU run. About 5 min at 1.7·10⁴ decays/s on
#: 2 CPU cores. Every run states the σ it reached (and notes when the voxel σ exceeds 2 %).
DEFAULT_REFERENCE_DECAYS = 5_000_000
#: Decays of the mc engine as a candidate when the study's dose stage did not record its own.
DEFAULT_ENGINE_MC_DECAYS = 2_000_000
#: Above this median relative σ of the reference in the gamma-evaluated voxels, the run says
#: that its noise limits the voxel comparison: noise of the size of the 2 % criterion alone
#: fails a fair share of the voxels at 2 %/2 mm.
NOISY_VOXEL_RELATIVE_SIGMA = 0.02
#: VOI means whose reference σ exceeds this are listed: a 2σ band of 2 % is the resolution at
#: which engine differences of a few % can still be told apart.
NOISY_VOI_RELATIVE_SIGMA = 0.01
#: A reference dose file must cover at least this fraction of the TIA grid's extent.
MIN_REFERENCE_OVERLAP = 0.95

Progress = Callable[[str, float, float], None]


class ReferenceKind(StrEnum):
    """What the reference dose is."""

    MC = "mc"
    GATE = "gate"


def validation_json_path(workdir: str | os.PathLike[str] | WorkDir) -> Path:
    """``WORKDIR/validation/validation.json``."""
    root = workdir.root if isinstance(workdir, WorkDir) else Path(workdir)
    return root / VALIDATION_DIR / VALIDATION_JSON


def tia_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 (first 16 hex digits) of a file: identifies the TIA map a validation used."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class WorkdirValidation:
    """A study's dose-engine validation, as written to ``WORKDIR/validation/``.

    Attributes
    ----------
    workdir : Path
    folder : Path
        ``WORKDIR/validation``.
    comparison : DoseValidation
        The comparison (images included).
    reference : ReferenceKind
    reference_info : dict
        How the reference was made: source (computed or file), decays, seed, time, σ reached,
        engine metadata, warnings.
    engine_info : dict of str to dict
        Per engine: options, time, warnings, metadata.
    study : dict
        Pseudonym, nuclide, the study's dose engine (from ``dose/engine.json``).
    inputs : dict
        The work-folder files used, with the TIA map's digest.
    files : dict of str to str
        Written files, relative to ``folder``.
    notes : tuple of str
        Caveats (noisy reference, resampled reference, …), also in the JSON and HTML.
    created : str
        ISO time (UTC).
    """

    workdir: Path
    folder: Path
    comparison: DoseValidation
    reference: ReferenceKind
    reference_info: dict[str, Any]
    engine_info: dict[str, dict[str, Any]]
    study: dict[str, Any]
    inputs: dict[str, Any]
    files: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    created: str = ""

    @property
    def json_path(self) -> Path:
        """``validation.json``."""
        return self.folder / VALIDATION_JSON

    @property
    def html_path(self) -> Path:
        """``validation.html``."""
        return self.folder / VALIDATION_HTML

    def to_dict(self) -> dict[str, Any]:
        """The content of ``validation.json``.

        Keys: ``schema_version``, ``kind``, ``rptdose_version``, ``created``, ``study``
        (patient pseudonym, nuclide, ``dose_engine`` of the study), ``inputs`` (files and the
        TIA map's ``sha256_16``), ``reference`` (``kind``, ``source``, ``file``, ``n_decays``,
        ``seed``, ``time_s``, ``voxel_relative_sigma_median_in_vois``,
        ``voi_mean_relative_sigma_median``, ``metadata``, ``warnings``), ``engines`` (per engine:
        ``options``, ``time_s``, ``warnings``, ``metadata``), ``comparison``
        (:meth:`DoseValidation.to_dict`: per-VOI statistics and differences with DVHs, voxel
        differences, gamma, Bland–Altman), ``notes`` and ``files``.
        """
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "rptdose dose-engine validation",
            "rptdose_version": __version__,
            "created": self.created,
            "study": self.study,
            "inputs": self.inputs,
            "reference": {"kind": self.reference.value, **self.reference_info},
            "engines": self.engine_info,
            "comparison": self.comparison.to_dict(),
            "notes": list(self.notes),
            "files": self.files,
        }


def read_validation(workdir: str | os.PathLike[str] | WorkDir) -> dict[str, Any] | None:
    """``validation.json`` of a work folder, or None when no validation was run.

    Raises
    ------
    InputError
        When the file exists but is not valid JSON or has an unknown ``schema_version``.
    """
    path = validation_json_path(workdir)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable validation record ({exc})") from None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        version = data.get("schema_version") if isinstance(data, dict) else None
        raise InputError(f"{path}: schema_version {version!r}, this rptdose reads "
                         f"{SCHEMA_VERSION}; re-run 'rptdose mc validate WORKDIR'")
    return data


# ----------------------------------------------------------------------------------- inputs
def _require(path: Path, what: str, how: str) -> Path:
    if not path.is_file():
        raise MissingDataError(f"{path}: missing ({what}); {how}", missing=[str(path)])
    return path


#: Engines that can be validated (GATE is a reference: ``reference="gate"``).
CANDIDATE_ENGINES = ("led", "dvk", "deep", "mc")


def _parse_engines(engines: str | Sequence[str]) -> tuple[str, ...]:
    items = engines.split(",") if isinstance(engines, str) else list(engines)
    names = [str(e).strip().lower() for e in items if str(e).strip()]
    valid = set(CANDIDATE_ENGINES)
    bad = [e for e in names if e not in valid]
    if bad or not names:
        raise InputError(f"engines {engines!r}: give a comma-separated selection of "
                         f"{', '.join(sorted(valid))}")
    return tuple(dict.fromkeys(names))


def _engine_options(engine: str, *, device: str, seed: int, mc_decays: int) -> dict[str, Any]:
    """The options the dose stage passes to ``engine`` (planning/workflow/dose_stage.py)."""
    if engine == "mc":
        return {"n_decays": int(mc_decays), "seed": int(seed), "device": device}
    if engine == "deep":
        return {"device": device, "seed": int(seed)}
    return {}


def _scalar_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-friendly scalar (and short dict) entries of an engine's metadata."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if isinstance(v, bool | int | str) or (isinstance(v, float) and math.isfinite(v)):
            out[k] = v
        elif isinstance(v, dict) and all(isinstance(x, bool | int | float | str | None)
                                         for x in v.values()):
            out[k] = {kk: (vv if not isinstance(vv, float) or math.isfinite(vv) else None)
                      for kk, vv in v.items()}
    return out


def _nonnegative(img: sitk.Image) -> sitk.Image:
    """The dose with FFT round-off below 0 set to 0 (as the dose stage does)."""
    arr = sitk.GetArrayFromImage(img)
    if arr.min() >= 0:
        return img
    out = sitk.GetImageFromArray(np.maximum(arr, 0.0).astype(np.float32))
    out.CopyInformation(img)
    return out


def _read_reference_file(path: Path, tia: sitk.Image, what: str,
                         notes: list[str]) -> sitk.Image:
    """A dose (or σ) image from ``path`` on the TIA grid: checked, resampled with a warning."""
    img = read_image(path)  # InputError naming the file when missing or unreadable
    arr = sitk.GetArrayViewFromImage(img)
    if not np.isfinite(arr).all():
        raise InputError(f"{path}: the {what} has {int(np.count_nonzero(~np.isfinite(arr)))} "
                         "voxels that are not finite (NaN or inf)")
    if arr.min() < 0:
        raise InputError(f"{path}: the {what} has negative values (min {float(arr.min()):.4g} "
                         "Gy); give the dose in Gy")
    try:
        require_same_grid(img, tia, f"{path}", "the TIA map")
        return img
    except GeometryError as exc:
        mismatch = str(exc)
    cover = overlap_fraction(tia, img)
    if cover < MIN_REFERENCE_OVERLAP:
        raise GeometryError(
            f"{path}: the {what} covers {100 * cover:.0f} % of the TIA grid's extent (at least "
            f"{100 * MIN_REFERENCE_OVERLAP:.0f} % needed); compute it on the TIA map "
            "kinetics/tia_bq_s.nii.gz's grid")
    msg = (f"{path}: the {what} is not on the TIA grid ({mismatch}); resampled onto it "
           "(linear interpolation)")
    warnings.warn(msg, UserWarning, stacklevel=3)
    notes.append(msg)
    return sitk.Resample(sitk.Cast(img, sitk.sitkFloat32), tia, sitk.Transform(),
                         sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def _gate_reference(tia: sitk.Image, nuclide: str, ct: sitk.Image, *, n_decays: int, seed: int,
                    options: Mapping[str, Any], progress: Callable[[int, int], None]):
    """The GATE dose; without opengate or its Geant4 data the bridge fails with instructions.

    :func:`dosimetry.dose.gate.dose_gate` checks both before doing anything, so a validation
    against GATE fails fast, before any engine runs.
    """
    from dosimetry.dose.gate import dose_gate

    opts = {k: v for k, v in options.items() if v is not None}
    opts.setdefault("progress", progress)
    return dose_gate(tia, nuclide, ct, n_decays=int(n_decays), seed=int(seed), **opts)


# ----------------------------------------------------------------------------------- main
def validate_workdir(
    workdir: str | os.PathLike[str],
    reference: ReferenceKind | str = ReferenceKind.MC,
    engines: str | Sequence[str] = DEFAULT_ENGINES,
    *,
    reference_dose: str | os.PathLike[str] | None = None,
    reference_sigma: str | os.PathLike[str] | None = None,
    mc_decays: int = DEFAULT_REFERENCE_DECAYS,
    seed: int = 0,
    device: str = "cpu",
    gate_options: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> WorkdirValidation:
    """Validate the dose engines on a study's work folder against a reference dose.

    Parameters
    ----------
    workdir : path
        A work folder whose dose stage has run (``rptdose run`` / ``rptdose demo``).
    reference : {"mc", "gate"}
        The reference: the fast MC or GATE, computed here; with ``reference_dose``, what that
        file holds.
    engines : str or sequence of str
        Engines to validate: ``"deep,dvk,led"`` or a sequence of led, dvk, deep, mc. An ``mc``
        candidate uses the study's MC decays (or 2·10⁶) and, against an mc reference, seed + 1
        (an independent run: its differences are the MC's own noise).
    reference_dose : path, optional
        Dose image (Gy) computed elsewhere, used as the reference instead of computing one.
    reference_sigma : path, optional
        Its standard uncertainty image (1σ, Gy), when known.
    mc_decays : int
        Decays of the computed reference (fast MC or GATE); default
        :data:`DEFAULT_REFERENCE_DECAYS`.
    seed : int
        Seed of the reference (and of the engines' kernels, as in the dose stage).
    device : str
        ``cpu`` or ``cuda`` for the MC and the deep engine.
    gate_options : mapping, optional
        Passed to ``dose_gate`` (e.g. ``threads``, ``g4_data``).
    progress : callable, optional
        ``progress(step, done, total)``; steps ``"reference"``, each engine, ``"compare"``,
        ``"write"``.

    Returns
    -------
    WorkdirValidation

    Raises
    ------
    InputError
        Not a work folder; a file of the kinetics or dose stage missing
        (:class:`~dosimetry.errors.MissingDataError` naming it); bad engines or reference;
        a reference file missing, unreadable, non-finite or negative; GATE not installed.
    GeometryError
        A reference file that does not cover the TIA grid.
    """
    from dosimetry.dose.engines import compute_dose
    from planning.workflow.dose_stage import reference_label

    notify: Progress = progress or (lambda step, done, total: None)
    wd = WorkDir.open(workdir)
    try:
        ref_kind = ReferenceKind(str(reference).lower())
    except ValueError:
        raise InputError(f"reference {reference!r}: expected mc or gate (or a dose file with "
                         "reference_dose)") from None
    names = _parse_engines(engines)
    if not (isinstance(mc_decays, int) and mc_decays > 0):
        raise InputError(f"mc_decays must be a positive integer, got {mc_decays!r}")

    study = wd.study()
    kin = wd.root / Stage.KINETICS.value
    dose_dir = wd.root / Stage.DOSE.value
    ref_tp = reference_label(study)
    run_hint = "run 'rptdose run STUDY.yaml -o WORKDIR' (through the dose stage) first"
    tia_path = _require(kin / "tia_bq_s.nii.gz", "the kinetics stage's TIA map", run_hint)
    labels_path = _require(wd.root / Stage.SEGMENTATION.value / "labels.nii.gz",
                           "the segmentation's label map", run_hint)
    ct_path = _require(wd.root / Stage.REGISTRATION.value / f"{ref_tp}_ct.nii.gz",
                       "the reference CT", run_hint)
    vois_path = _require(dose_dir / "vois.json", "the dose stage has not run", run_hint)
    engine_path = _require(dose_dir / "engine.json", "the dose stage has not run", run_hint)
    try:
        study_engine_meta = json.loads(engine_path.read_text(encoding="utf-8"))
        dose_vois = json.loads(vois_path.read_text(encoding="utf-8"))["vois"]
        voi_names = {int(v["label"]): str(v["name"]) for v in dose_vois}
        voi_kinds = {str(v["name"]): str(v.get("kind", "")) for v in dose_vois}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{dose_dir}: unreadable dose-stage record ({exc}); re-run the dose "
                         "stage") from None
    if not voi_names:
        raise InputError(f"{vois_path}: the dose stage reported no VOI; nothing to validate")
    study_engine = str(study_engine_meta.get("engine", "")) or None

    tia = read_image(tia_path)
    ct = read_image(ct_path)
    labels = sitk.Cast(read_image(labels_path, pixel_type=None), sitk.sitkUInt16)
    notes: list[str] = []

    # --- the reference ------------------------------------------------------------------------
    # Computed first: a GATE that cannot run here fails before minutes of engine work.
    ref_info: dict[str, Any] = {}
    ref_sigma_img: sitk.Image | None = None
    t0 = time.perf_counter()
    notify("reference", 0, 1)
    if reference_dose is not None:
        rpath = Path(reference_dose)
        ref_img = _read_reference_file(rpath, tia, "reference dose", notes)
        if reference_sigma is not None:
            ref_sigma_img = _read_reference_file(Path(reference_sigma), tia, "reference σ",
                                                 notes)
        ref_info.update({"source": "file", "file": str(rpath),
                         "sigma_file": str(reference_sigma) if reference_sigma else None,
                         "n_decays": None, "seed": None, "metadata": {}, "warnings": []})
        description = f"a {ref_kind.value} dose read from {rpath.name}"
    else:
        if reference_sigma is not None:
            raise InputError("reference_sigma is only used with reference_dose")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if ref_kind is ReferenceKind.GATE:
                result = _gate_reference(
                    tia, study.nuclide, ct, n_decays=mc_decays, seed=seed,
                    options=gate_options or {},
                    progress=lambda done, total: notify("reference", done, total))
            else:
                result = compute_dose(
                    "mc", tia, study.nuclide, ct, n_decays=mc_decays, seed=seed, device=device,
                    progress=lambda done, total: notify("reference", done, total))
        ref_img = _nonnegative(result.dose)
        ref_sigma_img = result.uncertainty
        ref_info.update({"source": "computed", "file": None, "sigma_file": None,
                         "n_decays": int(mc_decays), "seed": int(seed),
                         "metadata": _scalar_metadata(result.metadata),
                         "warnings": list(dict.fromkeys(str(w.message) for w in caught))})
        what = ("GATE 10 (Geant4)" if ref_kind is ReferenceKind.GATE
                else "the fast voxel Monte Carlo")
        description = f"{what} with {mc_decays:.3g} decays, seed {seed}"
    ref_info["description"] = description
    ref_info["time_s"] = time.perf_counter() - t0
    notify("reference", 1, 1)

    # --- the engines ----------------------------------------------------------------------------
    engine_mc_decays = int(study_engine_meta.get("n_decays") or DEFAULT_ENGINE_MC_DECAYS)
    doses: dict[str, sitk.Image] = {}
    engine_info: dict[str, dict[str, Any]] = {}
    for name in names:
        notify(name, 0, 1)
        e_seed = seed + 1 if (name == "mc" and ref_kind is ReferenceKind.MC
                              and reference_dose is None) else seed
        opts = _engine_options(name, device=device, seed=e_seed, mc_decays=engine_mc_decays)
        t1 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = compute_dose(name, tia, study.nuclide, ct, **opts)
        doses[name] = _nonnegative(res.dose)
        engine_info[name] = {
            "options": {k: v for k, v in opts.items() if k != "progress"},
            "time_s": time.perf_counter() - t1,
            "warnings": list(dict.fromkeys(str(w.message) for w in caught)),
            "metadata": _scalar_metadata(res.metadata),
        }
        notify(name, 1, 1)

    # --- the comparison -------------------------------------------------------------------------
    body = body_mask_from_ct(ct, tia)
    notify("compare", 0, 1)
    comparison = compare_doses(
        ref_img, doses, labels, voi_names, reference_sigma=ref_sigma_img, body_mask=body,
        reference_name=ref_kind.value,
        progress=lambda done, total: notify("compare", done, total))
    comparison = replace(comparison, body_definition="CT denser than 0.1 g/cm³ on the TIA grid")
    rel_voxel = comparison.reference_voxel_relative_sigma_median()
    rel_mean = comparison.reference_mean_relative_sigma_median()
    rel_eval = comparison.reference_relative_sigma_evaluated
    ref_info["voxel_relative_sigma_median_in_vois"] = rel_voxel
    ref_info["voi_mean_relative_sigma_median"] = rel_mean
    ref_info["voxel_relative_sigma_median_evaluated"] = rel_eval
    if not comparison.has_reference_sigma:
        notes.append("the reference has no σ map: differences cannot be judged against its "
                     "noise")
    else:
        if rel_eval is not None and rel_eval > NOISY_VOXEL_RELATIVE_SIGMA:
            notes.append(
                f"the reference is noisy at the voxel level: median σ {100 * rel_eval:.1f} % "
                "in the voxels the gamma evaluates, so voxel differences and the pass rates "
                "(2 %/2 mm above all) measure its noise as much as the engines' error; raise "
                "mc_decays for a voxel-level validation")
        noisy = sorted(((v.reference_mean_relative_sigma, v.name) for v in comparison.vois
                        if (v.reference_mean_relative_sigma or 0.0) > NOISY_VOI_RELATIVE_SIGMA),
                       reverse=True)
        if noisy:
            listed = ", ".join(f"{n} {100 * r:.1f} %" for r, n in noisy[:6])
            more = f" and {len(noisy) - 6} more" if len(noisy) > 6 else ""
            notes.append(f"reference VOI means with σ above {100 * NOISY_VOI_RELATIVE_SIGMA:.0f}"
                         f" %: {listed}{more}; differences there below 2σ are not significant")
    notify("compare", 1, 1)

    # --- write ----------------------------------------------------------------------------------
    notify("write", 0, 1)
    out_dir = wd.root / VALIDATION_DIR
    study_info = {"patient_id": study.patient_id, "nuclide": study.nuclide,
                  "dose_engine": study_engine,
                  "voi_kinds": voi_kinds}
    inputs = {"tia": {"file": str(tia_path.relative_to(wd.root)),
                      "sha256_16": tia_digest(tia_path)},
              "ct": str(ct_path.relative_to(wd.root)),
              "labels": str(labels_path.relative_to(wd.root)),
              "vois": str(vois_path.relative_to(wd.root))}
    figures = _figures(comparison, ref_img, ct, body, voi_kinds)
    files: dict[str, Any] = {
        "json": VALIDATION_JSON, "html": VALIDATION_HTML,
        "reference_dose": "reference_dose_gy.nii.gz",
        "reference_sigma": "reference_sigma_gy.nii.gz" if ref_sigma_img is not None else None,
        "differences_gy": {n: f"diff_{n}_gy.nii.gz" for n in comparison.engines},
        "figures": {key: f"figures/{key}.png" for key, _ in figures},
    }
    created = datetime.now(UTC).isoformat(timespec="seconds")
    result_obj = WorkdirValidation(
        workdir=wd.root, folder=out_dir, comparison=comparison, reference=ref_kind,
        reference_info=ref_info, engine_info=engine_info, study=study_info, inputs=inputs,
        files=files, notes=tuple(notes), created=created)
    with atomic_folder(out_dir) as tmp:
        write_image(ref_img, tmp / files["reference_dose"])
        if ref_sigma_img is not None:
            write_image(ref_sigma_img, tmp / files["reference_sigma"])
        for n in comparison.engines:
            write_image(comparison.difference_gy[n], tmp / files["differences_gy"][n])
        for key, fig in figures:
            atomic_write_bytes(tmp / files["figures"][key], fig.png)
        write_html(_html_report(result_obj, [f for _, f in figures]), tmp / VALIDATION_HTML)
        # The record last: whoever sees validation.json sees the complete set.
        atomic_write_text(tmp / VALIDATION_JSON,
                          json.dumps(result_obj.to_dict(), indent=2, allow_nan=False) + "\n")
    notify("write", 1, 1)
    return result_obj


# ----------------------------------------------------------------------------------- figures
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figures(c: DoseValidation, ref: sitk.Image, ct: sitk.Image, body: sitk.Image,
             kinds: Mapping[str, str]) -> list[tuple[str, Figure]]:
    return [("voi_differences", _bar_figure(c)), ("dvh", _dvh_figure(c, kinds)),
            ("bland_altman", _ba_figure(c)),
            ("difference_slices", _slice_figure(c, ref, ct, body))]


def _bar_figure(c: DoseValidation) -> Figure:
    plt = _pyplot()
    vois = c.vois
    n_e = max(len(c.engines), 1)
    fig, ax = plt.subplots(figsize=(min(16.0, max(6.0, 0.22 * len(vois) * n_e + 2)), 4.2))
    x = np.arange(len(vois))
    width = 0.8 / n_e
    diffs = {e: np.array([np.nan if (d := v.difference_pct(e)["mean"]) is None else d
                          for v in vois]) for e in c.engines}
    finite = np.abs(np.concatenate([d[np.isfinite(d)] for d in diffs.values()] or [[0.0]]))
    # An outlier VOI (e.g. air-filled) must not flatten the rest: the axis covers the bulk,
    # bars beyond it are cut and carry their value.
    lim = max(10.0, 1.25 * float(np.percentile(finite, 90))) if finite.size else 10.0
    for i, e in enumerate(c.engines):
        xs = x + (i - (n_e - 1) / 2) * width
        ax.bar(xs, np.clip(diffs[e], -lim, lim), width, label=e)
        for xi, d in zip(xs, diffs[e], strict=True):
            if np.isfinite(d) and abs(d) > lim:
                ax.text(xi, np.sign(d) * lim, f"{d:+.0f}", fontsize=6, rotation=90,
                        ha="center", va="top" if d > 0 else "bottom")
    sig = [v.reference_mean_relative_sigma for v in vois]
    if any(s is not None for s in sig):
        two = np.array([200.0 * s if s is not None else np.nan for s in sig])
        ax.errorbar(x, np.zeros(len(vois)), yerr=np.minimum(two, lim), fmt="none", ecolor="k",
                    capsize=3, lw=1, label="reference ±2σ (VOI mean)")
    ax.set_ylim(-lim, lim)
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set_xticks(x, [v.name for v in vois], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("mean dose difference [% of reference]")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return Figure("VOI mean-dose differences", figure_png(fig),
                  "Difference of each engine's VOI mean dose from the reference, in % of the "
                  "reference; black bars: ±2σ of the reference's own VOI mean (statistics). "
                  "Bars beyond the axis are cut and labelled with their value.")


#: DVH panels shown (the figure stays readable); every VOI's DVH is in validation.json.
_DVH_PANELS = 12
#: Order of VOI kinds in the DVH figure: what dosimetry is about comes first.
_KIND_ORDER = {"lesion": 0, "organ": 1, "marrow": 2}


def _dvh_figure(c: DoseValidation, kinds: Mapping[str, str]) -> Figure:
    plt = _pyplot()
    ranked = sorted(c.vois, key=lambda v: (_KIND_ORDER.get(kinds.get(v.name, ""), 3),
                                           -v.reference.mean_gy))
    vois = sorted(ranked[:_DVH_PANELS], key=lambda v: v.label)
    n = max(len(vois), 1)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.7 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, v in zip(axes.ravel(), vois, strict=False):
        levels = np.asarray(v.dvh_dose_gy)
        ax.plot(levels, 100 * np.asarray(v.dvh_volume_fraction["reference"]), "k-", lw=2,
                label=f"reference ({c.reference_name})")
        for e in c.engines:
            ax.plot(levels, 100 * np.asarray(v.dvh_volume_fraction[e]), "--", lw=1.2, label=e)
        ax.set_title(v.name, fontsize=8)
        ax.set_xlabel("dose [Gy]", fontsize=7)
        ax.set_ylabel("volume [%]", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    axes.ravel()[0].legend(fontsize=6)
    # Fixed spacing: tight_layout on a grid of panels costs seconds and savefig trims anyway.
    fig.subplots_adjust(hspace=0.55, wspace=0.3)
    more = (f" ({len(vois)} of {len(c.vois)} VOIs: lesions, organs and marrow first, then by "
            "dose; all are in validation.json)" if len(c.vois) > len(vois) else "")
    return Figure("Dose-volume histograms", figure_png(fig),
                  f"Cumulative DVH per VOI, reference (solid) and engines (dashed){more}.")


def _ba_figure(c: DoseValidation) -> Figure:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, e in enumerate(c.engines):
        ba = c.bland_altman[e]
        col = colours[i % len(colours)]
        ax.plot(ba.means_gy, ba.differences_pct, "o", color=col, ms=4, label=e)
        if ba.mean_difference_pct is not None:
            ax.axhline(ba.mean_difference_pct, color=col, lw=1)
        if ba.loa_lower_pct is not None and ba.loa_upper_pct is not None:
            for lim in (ba.loa_lower_pct, ba.loa_upper_pct):
                ax.axhline(lim, color=col, lw=0.8, ls="--")
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("mean of engine and reference VOI dose [Gy]")
    ax.set_ylabel("difference [% of reference]")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return Figure("Bland–Altman", figure_png(fig),
                  "VOI mean-dose differences against the mean of the two methods (Bland & "
                  "Altman 1986); solid: bias, dashed: 95 % limits of agreement (±1.96 SD).")


def _slice_figure(c: DoseValidation, ref: sitk.Image, ct: sitk.Image, body: sitk.Image
                  ) -> Figure:
    from dosimetry.dose.engines import resample_ct_to

    plt = _pyplot()
    inside = sitk.GetArrayFromImage(body) != 0
    # Outside the body the MC scores a few photon hits in air voxels of almost no mass: huge,
    # meaningless doses. The slices go through the body's maximum and show the body only.
    r = np.where(inside, sitk.GetArrayFromImage(ref), np.nan)
    ct_on, _ = resample_ct_to(ct, ref)
    hu = sitk.GetArrayFromImage(ct_on)
    z, y, _x = np.unravel_index(int(np.nanargmax(r)), r.shape)
    sp = ref.GetSpacing()
    top = float(np.nanpercentile(r, 99.9)) or 1.0
    panels = [("reference dose [Gy]", r, "hot", 0.0, top)]
    diffs = {e: np.where(inside, sitk.GetArrayFromImage(c.difference_pct[e]), np.nan)
             for e in c.engines}
    evaluated = inside & (np.nan_to_num(r) >= c.gamma_threshold * c.normalisation_gy)
    lim = max((float(np.percentile(np.abs(d[evaluated]), 99.5)) for d in diffs.values()
               if evaluated.any()), default=1.0)
    lim = max(lim, 1.0)
    panels += [(f"{e} − reference [% of max]", d, "RdBu_r", -lim, lim) for e, d in diffs.items()]
    fig, axes = plt.subplots(2, len(panels), figsize=(3.4 * len(panels), 6.4), squeeze=False)
    for j, (title, arr, cmap, lo, hi) in enumerate(panels):
        for i, (name, img, under, aspect) in enumerate((
                ("axial", arr[z], hu[z], sp[1] / sp[0]),
                ("coronal", arr[:, y, :][::-1], hu[:, y, :][::-1], sp[2] / sp[0]))):
            ax = axes[i, j]
            ax.imshow(under, cmap="gray", vmin=-300, vmax=400, aspect=aspect)
            shown = np.ma.masked_invalid(img)
            if cmap == "hot":
                shown = np.ma.masked_less(shown, 0.02 * hi)
            im = ax.imshow(shown, cmap=cmap, vmin=lo, vmax=hi, alpha=0.75, aspect=aspect)
            ax.set_title(f"{title}\n{name}", fontsize=8)
            ax.axis("off")
            if i == 1:
                fig.colorbar(im, ax=ax, orientation="horizontal", fraction=0.05, pad=0.04)
    fig.tight_layout()
    return Figure("Dose difference", figure_png(fig),
                  "Reference dose and each engine's difference from it in % of the maximum "
                  "reference dose in the body, axial and coronal slices through that maximum "
                  "(body only; colour scales to the 99.9th and 99.5th percentiles).")


# ----------------------------------------------------------------------------------- HTML
def _f(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:.{digits}g}"


def _p(x: float | None, digits: int = 1) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:+.{digits}f}"


def _html_report(v: WorkdirValidation, figures: list[Figure]) -> Report:
    c = v.comparison
    ri = v.reference_info
    header = (("patient (pseudonym)", str(v.study.get("patient_id"))),
              ("nuclide", str(v.study.get("nuclide"))),
              ("reference", ri.get("description", v.reference.value)),
              ("engines validated", ", ".join(c.engines)),
              ("engine of the study's dose stage", str(v.study.get("dose_engine") or "–")),
              ("created (UTC)", v.created))
    rel_v = ri.get("voxel_relative_sigma_median_in_vois")
    rel_m = ri.get("voi_mean_relative_sigma_median")
    rel_e = ri.get("voxel_relative_sigma_median_evaluated")
    noise = ("Reference statistical uncertainty: median voxel relative σ in the VOIs "
             f"{_f(None if rel_v is None else 100 * rel_v, 2)} %, in the gamma-evaluated voxels "
             f"{_f(None if rel_e is None else 100 * rel_e, 2)} %; median relative σ of the VOI "
             f"means {_f(None if rel_m is None else 100 * rel_m, 2)} %."
             if c.has_reference_sigma else "The reference has no σ map.")
    raised: dict[str, list[str]] = {}  # each warning once, with the runs that raised it
    for name, info in [("reference", ri), *v.engine_info.items()]:
        for w in info.get("warnings", []):
            raised.setdefault(w, []).append(name)
    ref_sec = Section("Reference", (
        f"Reference: {ri.get('description')} (computed in {ri.get('time_s', 0):.0f} s).",
        noise, *(f"Note: {n}" for n in v.notes),
        *(f"Warning ({', '.join(names)}): {w}" for w, names in raised.items())))

    cols = ["VOI", "voxels", f"{c.reference_name} [Gy]", "σ ref [%]"]
    for e in c.engines:
        cols += [f"{e} [Gy]", f"{e} Δ [%]"]
    rows = []
    for voi in c.vois:
        rel = voi.reference_mean_relative_sigma
        row = [voi.name, str(voi.n_voxels), _f(voi.reference.mean_gy),
               _f(None if rel is None else 100 * rel, 2)]
        for e in c.engines:
            row += [_f(voi.engines[e].mean_gy), _p(voi.difference_pct(e)["mean"])]
        rows.append(tuple(row))
    dvh_rows = []
    for voi in c.vois:
        for e in c.engines:
            d = voi.difference_pct(e)
            z = voi.difference_in_reference_sigma(e)
            dvh_rows.append((voi.name, e, _p(d["d2"]), _p(d["d50"]), _p(d["d98"]),
                             _f(z, 2) if z is not None else "–"))
    voi_sec = Section("VOI doses", (
        "Mean dose per VOI (label map on the CT grid, doses resampled onto it) and the "
        "difference from the reference in % of the "
        "reference; σ ref is the statistical σ of the reference's VOI mean.",),
        (Table("Mean dose", tuple(cols), tuple(rows)),
         Table("D2, D50, D98 differences [%] and mean difference in reference σ",
               ("VOI", "engine", "ΔD2", "ΔD50", "ΔD98", "Δmean/σ_ref"), tuple(dvh_rows))),
        tuple(f for f in figures if f.title in ("VOI mean-dose differences",
                                                "Dose-volume histograms")))

    g_rows = []
    for e in c.engines:
        rates = [f"{100 * g.pass_rate:.1f} % ({g.n_evaluated} vox)" for g in c.gamma[e]]
        vd = c.voxel_differences[e]
        g_rows.append((e, *rates, _p(vd.mean_pct, 2), _f(vd.rms_pct), _f(vd.p95_abs_pct)))
    g_cols = ("engine", *(f"γ {g.criterion}" for g in c.gamma[c.engines[0]]),
              "mean Δ [%max]", "RMS Δ [%max]", "P95 |Δ| [%max]")
    vox_sec = Section("Voxel comparison", (
        f"Inside the body ({c.body_definition}, {c.body_voxels} voxels); gamma index of Low et "
        "al. 1998 (doi:10.1118/1.598248), global, normalised to the maximum reference dose in "
        f"the body ({_f(c.normalisation_gy)} Gy), low-dose threshold "
        f"{100 * c.gamma_threshold:.0f} %; voxel differences in % of that maximum.",),
        (Table("Gamma pass rates and voxel differences", g_cols, tuple(g_rows)),),
        tuple(f for f in figures if f.title == "Dose difference"))

    ba_rows = []
    for e in c.engines:
        ba = c.bland_altman[e]
        ba_rows.append((e, str(ba.n), _p(ba.mean_difference_pct, 2), _f(ba.sd_pct),
                        _p(ba.loa_lower_pct, 2), _p(ba.loa_upper_pct, 2)))
    ba_sec = Section("Bland–Altman", (
        "Agreement of the VOI mean doses over the VOIs (Bland & Altman 1986, "
        "doi:10.1016/S0140-6736(86)90837-8): bias and 95 % limits of agreement of the "
        "differences in % of the reference.",),
        (Table("Bland–Altman", ("engine", "VOIs", "bias [%]", "SD [%]", "LoA low [%]",
                                "LoA high [%]"), tuple(ba_rows)),),
        tuple(f for f in figures if f.title == "Bland–Altman"))
    timing = tuple((e, f"{info['time_s']:.1f} s") for e, info in v.engine_info.items())
    prov = Section("Provenance", (), (Table("Run", ("item", "value"), (
        ("rptdose version", __version__), ("TIA map", v.inputs["tia"]["file"]),
        ("TIA map SHA-256 (16)", v.inputs["tia"]["sha256_16"]),
        ("reference time", f"{ri.get('time_s', 0):.1f} s"), *timing)),),)
    return Report(f"Dose-engine validation — {v.study.get('nuclide')}", header,
                  (ref_sec, voi_sec, vox_sec, ba_sec, prov))
