"""IEC/NEMA body phantom with six fillable spheres, for recovery-coefficient calibration.

Geometry (interior, mm; NEMA NU 2 / IEC 61675-1 body phantom as commonly described —
dimensions recalled, unverified against the standard):

* cross-section: a half circle of radius 147 mm (anterior, −y) on a 294 × 77 mm rectangle
  whose two posterior corners are quarter circles of radius 77 mm (flat side on the couch);
  interior length 180 mm along z; 3 mm PMMA wall. Interior volume ≈ 9.7 L.
* six spheres of inner diameter 10, 13, 17, 22, 28, 37 mm (1 mm wall), centres on a circle of
  radius 57.2 mm about the phantom axis in the transverse plane 70 mm from the lid;
* a cylindrical lung insert of 51 mm diameter on the axis, low density (≈ 0.3 g/cm³), no
  activity.

Spheres hold ``ratio`` × the background concentration; the truth gives the nominal sphere
volumes (π d³/6), the voxelised volumes, the true concentrations and activities. Voxels on a
boundary get their exact partial occupancy (4×4×4 supersampling) in the activity map, so the
activity in the map differs from the nominal only by that sampling (≲ 0.5 % for the 10 mm
sphere on a 2 mm grid).

The SPECT is simulated with :func:`phantoms.acquisition.simulate_spect` (same resolution,
partial-volume and Poisson model as the digital patients), in one pose (no motion).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dosimetry import units
from dosimetry.errors import InputError
from dosimetry.io.images import write_image
from phantoms.acquisition import (
    AcquisitionSpec,
    SpectModel,
    default_acquisition,
    make_image,
    simulate_ct,
    simulate_spect,
    spect_grid,
)
from phantoms.patient import (
    BASE_DATE,
    SIMPLIFICATIONS,
    OutputFormat,
    ProgressFn,
    grid_image,
    session_label,
    staged_output,
)
from phantoms.truth import GENERATOR_VERSION, write_json

#: Inner sphere diameters [mm] of the IEC body phantom.
SPHERE_DIAMETERS_MM: tuple[float, ...] = (10.0, 13.0, 17.0, 22.0, 28.0, 37.0)
SPHERE_WALL_MM = 1.0
SPHERE_RING_RADIUS_MM = 57.2
SPHERE_PLANE_FROM_LID_MM = 70.0
BODY_RADIUS_MM = 147.0
BODY_CORNER_RADIUS_MM = 77.0
BODY_LENGTH_MM = 180.0
BODY_WALL_MM = 3.0
LUNG_INSERT_DIAMETER_MM = 51.0

_LABELS = {"background": 1, "lung_insert": 2, "wall": 3}
_SPHERE_LABEL0 = 11  # sphere_10mm = 11, … sphere_37mm = 16

#: CT numbers [HU] and densities [g/cm³]: water 0 HU / 1.00; PMMA ≈ 120 HU / 1.19 (ICRU-46,
#: unverified); lung insert (polystyrene beads in water) ≈ −700 HU / 0.30 (unverified).
_HU = {"water": 0.0, "pmma": 120.0, "lung": -700.0, "air": -1000.0}


class IECNuclide(StrEnum):
    """Nuclides the IEC phantom can be filled with."""

    LU177 = "Lu-177"
    I131 = "I-131"


@dataclass(frozen=True)
class IECConfig:
    """Filling and acquisition of the IEC phantom.

    Attributes
    ----------
    ratio : float
        Sphere-to-background concentration ratio (≥ 1).
    background_kbq_per_ml : float
        Background concentration at the acquisition [kBq/mL].
    nuclide : IECNuclide
    seed : int
    output_format : OutputFormat
    counts : bool
        SPECT as counts with the calibration (else Bq/mL).
    ct_spacing_mm : float
        Isotropic CT voxel size [mm].
    spect_spacing_mm, spect_matrix : float or None, int or None
        SPECT grid (default the nuclide's 4.7952 mm, 128).
    spect_model : SpectModel
        ``image`` (default) or ``projection`` (simulated projections reconstructed by
        ``dosimetry.reconstruction``; :mod:`phantoms.projection`).
    """

    ratio: float = 8.0
    background_kbq_per_ml: float = 50.0
    nuclide: IECNuclide = IECNuclide.LU177
    seed: int = 0
    output_format: OutputFormat = OutputFormat.NIFTI
    counts: bool = False
    ct_spacing_mm: float = 2.0
    spect_spacing_mm: float | None = None
    spect_matrix: int | None = 128
    spect_model: SpectModel = SpectModel.IMAGE

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "spect_model", SpectModel(self.spect_model))
        except ValueError:
            raise InputError(f"unknown SPECT model {self.spect_model!r}; choose "
                             f"{' or '.join(m.value for m in SpectModel)}") from None
        try:
            object.__setattr__(self, "nuclide", IECNuclide(_canonical(self.nuclide)))
        except ValueError:
            raise InputError(f"IEC phantom nuclide {self.nuclide!r} is not supported; choose "
                             f"{' or '.join(n.value for n in IECNuclide)}") from None
        try:
            object.__setattr__(self, "output_format", OutputFormat(self.output_format))
        except ValueError:
            raise InputError(f"unknown output format {self.output_format!r}; choose nifti or "
                             "dicom") from None
        if not (math.isfinite(self.ratio) and 1.0 <= self.ratio <= 100.0):
            raise InputError(f"sphere-to-background ratio {self.ratio} is outside 1–100")
        if not (math.isfinite(self.background_kbq_per_ml)
                and 0.01 <= self.background_kbq_per_ml <= 5000.0):
            raise InputError(f"background concentration {self.background_kbq_per_ml} kBq/mL "
                             "is outside 0.01–5000 kBq/mL")
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**63):
            raise InputError(f"seed {self.seed!r} must be an integer in 0 … 2^63−1")
        if not (0.5 <= self.ct_spacing_mm <= 6.0):
            raise InputError(f"CT voxel size {self.ct_spacing_mm} mm is outside 0.5–6 mm")

    def acquisition(self) -> AcquisitionSpec:
        spec = default_acquisition(self.nuclide.value)
        kw: dict[str, Any] = {"matrix_xy": self.spect_matrix}
        if self.spect_spacing_mm is not None:
            kw["spect_spacing_mm"] = self.spect_spacing_mm
        return replace(spec, **kw)


def _canonical(name: object) -> str:
    t = str(name).strip().replace(" ", "").lower()
    return {"lu-177": "Lu-177", "lu177": "Lu-177", "177lu": "Lu-177", "i-131": "I-131",
            "i131": "I-131", "131i": "I-131"}.get(t, str(name))


@dataclass(frozen=True)
class IECResult:
    """What :func:`make_iec` wrote."""

    out_dir: Path
    truth: dict[str, Any]
    files: tuple[Path, ...]
    timings_s: dict[str, float]


# ============================================================================== geometry
def sphere_centers_mm() -> list[tuple[float, float, float]]:
    """Centres of the six spheres (phantom frame: axis at x = y = 0, interior z 0…180,
    lid at z = 180)."""
    z = BODY_LENGTH_MM - SPHERE_PLANE_FROM_LID_MM
    out = []
    for k in range(len(SPHERE_DIAMETERS_MM)):
        a = math.radians(30.0 + 60.0 * k)
        out.append((SPHERE_RING_RADIUS_MM * math.cos(a), -SPHERE_RING_RADIUS_MM * math.sin(a),
                    z))
    return out


def _inside_body(x, y, z, grow: float = 0.0):
    """Interior of the body (grown by ``grow`` mm for the outer wall surface)."""
    r = BODY_RADIUS_MM + grow
    rc = BODY_CORNER_RADIUS_MM + grow
    half_flat = BODY_RADIUS_MM - BODY_CORNER_RADIUS_MM  # 70 mm
    upper = (y <= 0) & (x * x + y * y <= r * r)
    yy = np.clip(y, 0.0, rc)
    lower = (y > 0) & (y <= rc) & (np.abs(x) <= half_flat + np.sqrt(np.maximum(rc * rc - yy * yy,
                                                                                0.0)))
    along = (z >= -grow) & (z <= BODY_LENGTH_MM + grow)
    return (upper | lower) & along


def body_interior_volume_ml() -> float:
    """Analytic interior volume [mL]: half disc + rectangle with two rounded corners."""
    r, rc = BODY_RADIUS_MM, BODY_CORNER_RADIUS_MM
    half = math.pi * r * r / 2
    lower = 2 * ((r - rc) * rc + math.pi * rc * rc / 4)
    return (half + lower) * BODY_LENGTH_MM * units.ML_PER_MM3


def occupancy(inside, axes: tuple[np.ndarray, np.ndarray, np.ndarray], spacing,
              n_sub: int = 4) -> np.ndarray:
    """Fraction of each voxel inside a region (float64, (Z, Y, X)).

    ``inside(x, y, z)`` is a vectorised predicate in mm. Voxels whose centre and 8 corners
    agree are taken as wholly in or out; the others are supersampled ``n_sub``³.
    """
    xs, ys, zs = axes
    sx, sy, sz = spacing
    z3, y3, x3 = np.meshgrid(zs, ys, xs, indexing="ij")
    centre = inside(x3, y3, z3)
    agree = np.ones_like(centre)
    for dz in (-0.5, 0.5):
        for dy in (-0.5, 0.5):
            for dx in (-0.5, 0.5):
                agree &= inside(x3 + dx * sx, y3 + dy * sy, z3 + dz * sz) == centre
    frac = centre.astype(np.float64)
    mixed = np.nonzero(~agree)
    if mixed[0].size:
        off = (np.arange(n_sub) + 0.5) / n_sub - 0.5
        acc = np.zeros(mixed[0].size)
        px, py, pz = x3[mixed], y3[mixed], z3[mixed]
        for oz in off:
            for oy in off:
                for ox in off:
                    acc += inside(px + ox * sx, py + oy * sy, pz + oz * sz)
        frac[mixed] = acc / n_sub ** 3
    return frac


def _sphere_fn(c, r):
    def f(x, y, z):
        return (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= r * r
    return f


def _boxed_occupancy(center, radius: float, axes, spacing) -> np.ndarray:
    """Occupancy of a sphere, computed only in its bounding box."""
    shape = (axes[2].size, axes[1].size, axes[0].size)
    out = np.zeros(shape)
    sl = []
    for ax, c, s in zip(axes, center, spacing, strict=True):
        lo = int(np.searchsorted(ax, c - radius - s))
        hi = int(np.searchsorted(ax, c + radius + s, side="right"))
        sl.append(slice(lo, hi))
    sub = tuple(ax[s] for ax, s in zip(axes, sl, strict=True))
    out[sl[2], sl[1], sl[0]] = occupancy(_sphere_fn(center, radius), sub, spacing)
    return out


def _lung_fn(x, y, z):
    r = LUNG_INSERT_DIAMETER_MM / 2
    return (x * x + y * y <= r * r) & (z >= 0) & (z <= BODY_LENGTH_MM)


# ============================================================================== main
def make_iec(out_dir: str | os.PathLike[str], config: IECConfig = IECConfig(), *,
             overwrite: bool = False, progress: ProgressFn | None = None) -> IECResult:
    """Generate the IEC body phantom (CT, SPECT, truth) in ``out_dir``.

    Parameters
    ----------
    out_dir : path
        Output folder (must not exist or be empty unless ``overwrite``).
    config : IECConfig
    overwrite : bool
    progress : callable(stage, fraction), optional

    Returns
    -------
    IECResult
    """
    from dosimetry.nuclides import get_nuclide

    out_dir = Path(out_dir)
    report = progress or (lambda stage, frac: None)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    nuclide = get_nuclide(config.nuclide.value)
    spec = config.acquisition()
    rng = np.random.default_rng([config.seed, 101])

    with staged_output(out_dir, overwrite) as tmp:
        report("geometry", 0.0)
        t0 = time.perf_counter()
        s = config.ct_spacing_mm
        # phantom frame → scanner frame: axis at x = 0, y = 0; interior z 0…180 mm
        xs = np.arange(-176.0, 176.0 + 1e-9, s)
        ys = np.arange(-160.0, 92.0 + 1e-9, s)
        zs = np.arange(-14.0, BODY_LENGTH_MM + 14.0 + 1e-9, s)
        axes = (xs, ys, zs)
        spacing = (s, s, s)
        origin = (float(xs[0]), float(ys[0]), float(zs[0]))
        vox_ml = units.voxel_volume_ml(spacing)
        f_in = occupancy(_inside_body, axes, spacing)
        f_out = occupancy(lambda x, y, z: _inside_body(x, y, z, BODY_WALL_MM), axes, spacing)
        f_lung = occupancy(_lung_fn, axes, spacing)
        centers = sphere_centers_mm()
        f_inner, f_outer = [], []
        for d, c in zip(SPHERE_DIAMETERS_MM, centers, strict=True):
            f_inner.append(_boxed_occupancy(c, d / 2, axes, spacing))
            f_outer.append(_boxed_occupancy(c, d / 2 + SPHERE_WALL_MM, axes, spacing))
        timings["geometry"] = time.perf_counter() - t0

        # ------------------------------------------------------------------ truth maps
        report("activity", 0.3)
        c_bg = config.background_kbq_per_ml * 1e3  # Bq/mL
        c_sp = c_bg * config.ratio
        f_bg = np.clip(f_in - f_lung - sum(f_outer), 0.0, 1.0)
        act = c_bg * vox_ml * f_bg
        for fi in f_inner:
            act = act + c_sp * vox_ml * fi
        labels = np.zeros(f_in.shape, np.uint16)
        labels[f_out >= 0.5] = _LABELS["wall"]
        labels[f_in >= 0.5] = _LABELS["background"]
        labels[f_lung >= 0.5] = _LABELS["lung_insert"]
        for k, fo in enumerate(f_outer):
            labels[(fo >= 0.5) & (labels != 0)] = _LABELS["wall"]
            labels[f_inner[k] >= 0.5] = _SPHERE_LABEL0 + k
        hu = (f_out - f_in) * _HU["pmma"] + (1 - f_out) * _HU["air"] + f_bg * _HU["water"]
        hu += f_lung * _HU["lung"]
        for fi, fo in zip(f_inner, f_outer, strict=True):
            hu += (fo - fi) * _HU["pmma"] + fi * _HU["water"]
        hu = hu.astype(np.float32)
        act_img = make_image(act.astype(np.float32), spacing, origin)
        hu_img = make_image(hu, spacing, origin)
        ct_grid = grid_image((xs.size, ys.size, zs.size), spacing, origin)
        sp_grid = spect_grid(ct_grid, spec)
        identity = sitk.Transform(3, sitk.sitkIdentity)

        report("CT", 0.45)
        t0 = time.perf_counter()
        noise = float(rng.uniform(*spec.ct_noise_hu))
        ct = simulate_ct(hu_img, ct_grid, identity, noise, rng)
        timings["CT"] = time.perf_counter() - t0
        report("SPECT", 0.55)
        t0 = time.perf_counter()
        if config.spect_model is SpectModel.PROJECTION:
            from phantoms.projection import simulate_spect_projection

            spect = simulate_spect_projection(act_img, hu_img, sp_grid, identity, spec,
                                              nuclide.name, rng, ct=ct)
        else:
            spect = simulate_spect(act_img, sp_grid, identity, spec, rng)
        timings["SPECT"] = time.perf_counter() - t0

        # ------------------------------------------------------------------ write
        report("writing", 0.7)
        t0 = time.perf_counter()
        acq = BASE_DATE + timedelta(days=int(rng.integers(0, 365)),
                                    minutes=int(rng.integers(0, 480)))
        ref_time = acq - timedelta(hours=1)
        total_bq = float(act.sum())
        a_ref_mbq = round(units.bq_to_mbq(total_bq) * math.exp(nuclide.decay_constant_per_s
                                                                 * 3600.0), 1)
        files = _write_images(tmp, config, spec, nuclide, ct, spect, acq, ref_time, a_ref_mbq)
        labels_img = make_image(labels, spacing, origin)
        files.append(write_image(labels_img, tmp / "truth" / "labels.nii.gz"))
        files.append(write_image(act_img, tmp / "truth" / "activity.nii.gz"))
        spheres = []
        for k, (d, c) in enumerate(zip(SPHERE_DIAMETERS_MM, centers, strict=True)):
            v_nom = math.pi * d ** 3 / 6 * units.ML_PER_MM3
            v_vox = float(f_inner[k].sum()) * vox_ml
            spheres.append({
                "name": f"sphere_{d:g}mm", "label": _SPHERE_LABEL0 + k,
                "inner_diameter_mm": d, "wall_mm": SPHERE_WALL_MM,
                "center_mm": list(c),
                "volume_ml": v_nom, "voxelised_volume_ml": v_vox,
                "label_volume_ml": float((labels == _SPHERE_LABEL0 + k).sum()) * vox_ml,
                "concentration_bq_per_ml": c_sp,
                "activity_mbq": units.bq_to_mbq(c_sp * v_nom),
                "activity_in_map_mbq": units.bq_to_mbq(c_sp * v_vox),
            })
        v_body = body_interior_volume_ml()
        v_lung = math.pi * (LUNG_INSERT_DIAMETER_MM / 2) ** 2 * BODY_LENGTH_MM * units.ML_PER_MM3
        v_outer = sum(math.pi * (d + 2 * SPHERE_WALL_MM) ** 3 / 6 * units.ML_PER_MM3
                      for d in SPHERE_DIAMETERS_MM)
        truth = {
            "generator": {"name": "rptdose.phantoms.iec", "version": GENERATOR_VERSION,
                          "seed": config.seed},
            "geometry_source": "NEMA NU 2 / IEC 61675-1 body phantom as commonly described "
                               "(dimensions unverified against the standard)",
            "nuclide": nuclide.name,
            "acquisition_datetime": acq.isoformat(),
            "activity_reference_datetime": ref_time.isoformat(),
            "concentrations_at": "start of the SPECT acquisition",
            "ratio": config.ratio,
            "background": {"label": _LABELS["background"], "concentration_bq_per_ml": c_bg,
                           "volume_ml": v_body - v_lung - v_outer,
                           "voxelised_volume_ml": float(f_bg.sum()) * vox_ml},
            "lung_insert": {"label": _LABELS["lung_insert"], "diameter_mm":
                            LUNG_INSERT_DIAMETER_MM, "volume_ml": v_lung,
                            "concentration_bq_per_ml": 0.0},
            "wall": {"label": _LABELS["wall"], "material": "PMMA", "thickness_mm":
                     BODY_WALL_MM},
            "body_interior_volume_ml": v_body,
            "spheres": spheres,
            "total_activity_in_map_mbq": units.bq_to_mbq(total_bq),
            "total_activity_at_reference_mbq": a_ref_mbq,
            "spect": {
                "units": "counts" if config.counts else "Bq/mL",
                "fwhm_mm": spec.fwhm_mm, "collimator": spec.collimator,
                "sensitivity_cps_per_mbq": spec.sensitivity_cps_per_mbq,
                "frame_duration_s": spec.frame_duration_s,
                "spacing_mm": spec.spect_spacing_mm, "matrix": spec.matrix_xy,
                "expected_total_counts": spect.expected_total,
                "total_counts": spect.counts_total,
            },
            "ct_noise_hu": noise,
            "files": {"labels": "labels.nii.gz", "activity": "activity.nii.gz (Bq per voxel)"},
            "simplifications": [s for s in SIMPLIFICATIONS if s.startswith(("SPECT", "Activity "
                                                                             "is frozen"))]
            + ["Sphere and body walls are cold; the lung insert holds no activity."],
        }
        if config.spect_model is SpectModel.PROJECTION:
            from phantoms.projection import projection_truth

            projection_truth(truth, nuclide.name, spec)
            truth["spect"]["projection"] = spect.recon_info
        files.append(write_json(tmp / "truth" / "truth.json", truth))
        timings["write"] = time.perf_counter() - t0
        report("done", 1.0)
        rel = tuple(sorted(Path(os.path.relpath(p, tmp)) for p in files))
    timings["total"] = time.perf_counter() - t_all
    return IECResult(out_dir=out_dir, truth=truth, files=rel, timings_s=timings)


def _write_images(tmp: Path, config: IECConfig, spec: AcquisitionSpec, nuclide, ct: sitk.Image,
                  spect, acq: datetime, ref_time: datetime, a_ref_mbq: float) -> list[Path]:
    """CT and SPECT (DICOM or NIfTI) plus a one-timepoint ``study.yaml``."""
    from dosimetry.study.ingest import pseudonymise
    from dosimetry.study.manifest import Study

    img = spect.counts if config.counts else spect.bq_per_ml
    files: list[Path] = []
    label = session_label(acq, ref_time)
    entry: dict[str, Any] = {"label": label, "acquisition_datetime": acq,
                             "spect_units": "counts" if config.counts else "Bq/mL"}
    if config.counts:
        entry["calibration_cps_per_mbq"] = spec.sensitivity_cps_per_mbq
        entry["frame_duration_s"] = spec.frame_duration_s
    dicom_pid = f"RPTIEC{config.seed:06d}"
    if config.output_format is OutputFormat.NIFTI:
        files.append(write_image(sitk.Cast(ct, sitk.sitkInt16), tmp / "nifti" / "ct.nii.gz"))
        files.append(write_image(img, tmp / "nifti" / "spect.nii.gz"))
        entry["ct"] = {"path": "nifti/ct.nii.gz", "format": "nifti"}
        entry["spect"] = {"path": "nifti/spect.nii.gz", "format": "nifti"}
    else:
        from dosimetry.io.dicom import NMUnits
        from dosimetry.io.dicom_write import (
            DicomSeriesMeta,
            NMMeta,
            uid_from_seed,
            write_ct_series,
            write_nm_spect,
        )

        base = ("rptdose-iec", GENERATOR_VERSION, config.seed, config.ratio,
                config.background_kbq_per_ml, config.nuclide.value, config.counts,
                config.ct_spacing_mm, spec.spect_spacing_mm, spec.matrix_xy)
        common = {"patient_id": dicom_pid, "study_uid": uid_from_seed(*base, "study"),
                  "frame_of_reference_uid": uid_from_seed(*base, "for"),
                  "study_datetime": acq, "study_description": "IEC body phantom"}
        ct_meta = DicomSeriesMeta(series_uid=uid_from_seed(*base, "ct"),
                                  acquisition_datetime=acq + timedelta(minutes=25),
                                  series_description="CT IEC", series_number=2, **common)
        files += write_ct_series(ct, tmp / "dicom" / "CT", ct_meta)
        nm_meta = DicomSeriesMeta(series_uid=uid_from_seed(*base, "nm"),
                                  acquisition_datetime=acq,
                                  series_description=f"SPECT {nuclide.name} IEC",
                                  series_number=1, **common)
        nm = NMMeta(units=NMUnits.COUNTS if config.counts else NMUnits.BQ_PER_ML,
                    nuclide=nuclide.name, radiopharmaceutical="IEC phantom fill",
                    injection_datetime=ref_time,
                    injected_activity_bq=units.mbq_to_bq(a_ref_mbq),
                    half_life_s=nuclide.half_life_s, frame_duration_s=spec.frame_duration_s,
                    n_views=spec.n_views, corrections=("ATTN", "SCAT"))
        files.append(write_nm_spect(img, tmp / "dicom" / "NM" / "SPECT.dcm", nm_meta, nm))
        entry["ct"] = {"path": "dicom/CT", "format": "dicom",
                       "series_uid": ct_meta.series_uid}
        entry["spect"] = {"path": "dicom/NM/SPECT.dcm", "format": "dicom"}
    study = Study.from_dict({
        "patient_id": pseudonymise(dicom_pid), "nuclide": nuclide.name,
        "radiopharmaceutical": "IEC phantom fill", "administered_activity_mbq": a_ref_mbq,
        "injection_datetime": ref_time, "timepoints": [entry],
        "source": {"generated_by": "rptdose phantom iec", "seed": str(config.seed),
                   "generator_version": GENERATOR_VERSION},
    }, source="IEC phantom manifest")
    files.append(study.save(tmp / "study.yaml"))
    return files
