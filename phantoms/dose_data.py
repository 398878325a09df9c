"""Training and validation patches for the deep dose engine, cut from digital patients.

Each patch is a cube of ``patch_size``³ voxels on an isotropic grid of one of the training
voxel sizes (3.0–4.8 mm), cut from a digital patient (:mod:`phantoms.anatomy` and the kinetics
of :func:`phantoms.patient.patient_kinetics`):

* CT numbers, linearly resampled from the phantom's CT grid (as the pipeline resamples a CT
  onto the SPECT grid), with the Schneider material bins and densities
  (:func:`dosimetry.materials.hu.ct_to_materials`);
* the true time-integrated activity (TIA) of the patient, resampled conserving the amount
  (concentration × new voxel volume); with probability ``blur_probability`` it is blurred by a
  Gaussian of 6–12 mm FWHM first, since TIA maps from SPECT are smooth (partial volume);
* the dose by DVK convolution with density correction
  (:func:`dosimetry.dose.engines.dose_dvk`), the input the network corrects.

Heterogeneities: lung, ribs, spine and pelvis (cortical bone and marrow) come with the anatomy;
lesions are placed in liver, bone, lymph nodes and lung; with probability
``air_probability`` a patch also gets one or two gas pockets (−1000 HU, no activity) of
6–20 mm radius in soft tissue, as bowel or stomach gas. Patch centres are drawn half from the
activity (hot organs and lesions) and half from lung and bone voxels near activity, so that the
interfaces where DVK is wrong are well represented.

The Monte Carlo target is added by :func:`dosimetry.dose.deep.data.simulate_targets` (any
torch device), so that the expensive part can run on an accelerator.

Simplifications: the patch is its own world (activity outside the patch is ignored by both the
DVK input and the MC target, consistently); the CT has no noise.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dosimetry.errors import InputError

__all__ = ["DosePatchConfig", "make_dose_patches", "patient_dose_inputs"]

#: Voxel sizes (mm) of the training grids; clinical Lu-177/I-131 SPECT uses 3.9–4.8 mm.
TRAINING_SPACINGS_MM: tuple[float, ...] = (3.0, 3.6, 4.2, 4.42, 4.8)
#: Presets per nuclide used to draw patients (alternating by seed).
PRESETS_BY_NUCLIDE: dict[str, tuple[str, ...]] = {
    "Lu-177": ("lu177-dotatate", "lu177-psma"),
    "I-131": ("i131-dtc",),
}


@dataclass(frozen=True)
class DosePatchConfig:
    """What :func:`make_dose_patches` generates."""

    nuclide: str = "Lu-177"
    patient_seeds: tuple[int, ...] = tuple(range(700000, 700024))
    spacings_mm: tuple[float, ...] = TRAINING_SPACINGS_MM
    patches_per_patient: int = 6
    patch_size: int = 32
    n_lesions: int = 4
    air_probability: float = 0.35
    blur_probability: float = 0.5
    #: Decays of a DVK kernel not yet in the cache.
    kernel_decays: int = 2_000_000
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if canonical_nuclide(self.nuclide) not in PRESETS_BY_NUCLIDE:
            raise InputError(f"deep dose training data: nuclide {self.nuclide!r} is not "
                             f"supported; use one of {', '.join(PRESETS_BY_NUCLIDE)}")
        if not 16 <= self.patch_size <= 96:
            raise InputError(f"patch_size {self.patch_size} is outside 16–96 voxels")
        if not self.patient_seeds or self.patches_per_patient < 1:
            raise InputError("at least one patient seed and one patch per patient are needed")
        for s in self.spacings_mm:
            if not 1.0 <= s <= 8.0:
                raise InputError(f"training voxel size {s} mm is outside 1–8 mm")


def canonical_nuclide(name: str) -> str:
    """``Lu177``/``177Lu``/``lu-177`` → ``Lu-177`` (ICRP-107 name)."""
    from dosimetry.nuclides import get_nuclide

    try:
        return get_nuclide(name).name
    except Exception as exc:
        raise InputError(f"unknown nuclide {name!r}: {exc}") from None


def _isotropic_grid(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    size = image.GetSize()
    sp = image.GetSpacing()
    extent = [n * s for n, s in zip(size, sp, strict=True)]
    n_new = [max(math.floor(e / spacing_mm), 1) for e in extent]
    # centred on the same physical box
    origin = [o - s / 2 + (e - n * spacing_mm) / 2 + spacing_mm / 2
              for o, s, e, n in zip(image.GetOrigin(), sp, extent, n_new, strict=True)]
    ref = sitk.Image(n_new, sitk.sitkFloat32)
    ref.SetSpacing((spacing_mm,) * 3)
    ref.SetOrigin(origin)
    return ref


def patient_dose_inputs(seed: int, nuclide: str, spacing_mm: float, *, n_lesions: int = 4,
                        blur_fwhm_mm: float = 0.0, with_labels: bool = False
                        ) -> dict[str, Any]:
    """CT (HU) and true TIA (Bq·s per voxel) of a digital patient on an isotropic grid.

    Parameters
    ----------
    seed : int
        Patient seed (anatomy and kinetics streams as in :func:`phantoms.patient.make_patient`).
    nuclide : str
        ``Lu-177`` (DOTATATE for even seeds, PSMA-617 for odd) or ``I-131`` (DTC).
    spacing_mm : float
        Isotropic voxel size of the output grid.
    n_lesions : int
        Lesions placed in liver, bone, lymph nodes and lung.
    blur_fwhm_mm : float
        Gaussian blur of the TIA concentration before resampling (0: none).
    with_labels : bool
        Also return the label map (nearest neighbour) and the label names.

    Returns
    -------
    dict
        ``ct`` (SimpleITK HU image), ``tia`` (Bq·s per voxel), ``preset``, and with
        ``with_labels`` ``labels`` (image) and ``names`` (label → name).
    """
    from phantoms.anatomy import AnatomyOptions, GridSpec, LesionSite, make_anatomy
    from phantoms.kinetics_presets import get_preset
    from phantoms.patient import _rng, patient_kinetics

    nuc = canonical_nuclide(nuclide)
    presets = PRESETS_BY_NUCLIDE.get(nuc)
    if presets is None:
        raise InputError(f"no digital-patient preset for {nuclide!r}")
    preset = get_preset(presets[seed % len(presets)])
    head_neck = bool(preset.requires_head_neck)
    options = AnatomyOptions(
        head_neck=head_neck, n_lesions=n_lesions,
        lesion_sites=(LesionSite.LIVER, LesionSite.BONE, LesionSite.LYMPH_NODE,
                      LesionSite.LUNG),
        thyroid_remnant=preset.thyroid_remnant and head_neck)
    anatomy = make_anatomy(_rng(seed, "anatomy"), options, GridSpec())
    kin = patient_kinetics(anatomy, preset, seed, head_neck)
    core = anatomy.core
    cg = anatomy.core_grid
    tia_fine = kin.tia_map(anatomy.labels)[core]
    conc = (tia_fine / cg.voxel_volume_ml).astype(np.float32)
    conc_img = sitk.GetImageFromArray(conc)
    conc_img.SetSpacing(cg.spacing)
    conc_img.SetOrigin(cg.origin)
    if blur_fwhm_mm > 0:
        conc_img = sitk.SmoothingRecursiveGaussian(conc_img, blur_fwhm_mm / 2.3548)
    hu_img = sitk.GetImageFromArray(anatomy.hu[core].astype(np.float32))
    hu_img.CopyInformation(conc_img)
    ref = _isotropic_grid(hu_img, spacing_mm)
    ct = sitk.Resample(hu_img, ref, sitk.Transform(), sitk.sitkLinear, -1000.0,
                       sitk.sitkFloat32)
    conc_new = sitk.Resample(conc_img, ref, sitk.Transform(), sitk.sitkLinear, 0.0,
                             sitk.sitkFloat32)
    arr = np.clip(sitk.GetArrayFromImage(conc_new), 0, None) * (spacing_mm ** 3 * 1e-3)
    tia = sitk.GetImageFromArray(arr.astype(np.float32))
    tia.CopyInformation(ref)
    out: dict[str, Any] = {"ct": ct, "tia": tia, "preset": preset.preset.value}
    if with_labels:
        lab = sitk.GetImageFromArray(anatomy.labels[core].astype(np.uint16))
        lab.CopyInformation(hu_img)
        out["labels"] = sitk.Resample(lab, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                      sitk.sitkUInt16)
        out["names"] = dict(kin.name_of)
    return out


def _draw_centres(rng: np.random.Generator, tia: np.ndarray, rho: np.ndarray, n: int,
                  half: int) -> list[tuple[int, int, int]]:
    from scipy import ndimage

    shape = np.array(tia.shape)
    inner = np.zeros(tia.shape, dtype=bool)
    inner[half // 2:-(half // 2) or None, half // 2:-(half // 2) or None,
          half // 2:-(half // 2) or None] = True
    w_hot = np.where(inner, np.clip(tia, 0.0, None), 0.0).astype(np.float64).ravel()
    near = np.clip(ndimage.uniform_filter(tia.astype(np.float64), size=7), 0.0, None)
    hetero = (rho < 0.6) & (rho > 0.1) | (rho > 1.15)
    w_het = np.where(inner & hetero, near, 0.0).astype(np.float64).ravel()
    centres = []
    for i in range(n):
        w = w_het if (i % 2 == 1 and w_het.sum() > 0) else w_hot
        if not w.sum() > 0:
            w = inner.ravel().astype(np.float64)
        idx = int(rng.choice(w.size, p=w / w.sum()))
        c = np.array(np.unravel_index(idx, tuple(shape)))
        c = c + rng.integers(-half // 4, half // 4 + 1, size=3)
        centres.append(tuple(int(v) for v in c))
    return centres


def _crop(arr: np.ndarray, centre, size: int, fill: float) -> np.ndarray:
    out = np.full((size,) * 3, fill, dtype=arr.dtype)
    lo = [c - size // 2 for c in centre]
    src = tuple(slice(max(lo_i, 0), min(lo_i + size, n)) for lo_i, n in
                zip(lo, arr.shape, strict=True))
    dst = tuple(slice(s.start - lo_i, s.stop - lo_i) for s, lo_i in zip(src, lo, strict=True))
    out[dst] = arr[src]
    return out


def _add_air(rng: np.random.Generator, hu: np.ndarray, tia: np.ndarray, spacing: float) -> int:
    """Put 1–2 gas pockets into soft tissue of the patch (in place); returns how many."""
    soft = (hu > -200) & (hu < 200)
    idx = np.flatnonzero(soft)
    if idx.size < 50:
        return 0
    zz, yy, xx = np.indices(hu.shape, dtype=np.float32)
    n = int(rng.integers(1, 3))
    for _ in range(n):
        c = np.unravel_index(int(rng.choice(idx)), hu.shape)
        r = rng.uniform(6.0, 20.0, size=3) / spacing
        inside = (((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2
                  + ((xx - c[2]) / r[2]) ** 2) <= 1.0
        hu[inside] = -1000.0
        tia[inside] = 0.0
    return n


def _materials(hu: np.ndarray):
    from dosimetry.materials.hu import HUClipWarning, ct_to_materials

    # the phantom's air lies a little below −1000 HU; clipping it to the table is harmless
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HUClipWarning)
        return ct_to_materials(hu, what="phantom CT")


def make_dose_patches(out_dir: str | os.PathLike[str], config: DosePatchConfig = DosePatchConfig(),
                      *, progress: Callable[[int, int], None] | None = None,
                      cache_dir: str | None = None) -> Path:
    """Write training patches (inputs and DVK dose; no MC target yet) to ``out_dir``.

    Files: ``patch_NNNNN.npz`` with ``material`` (uint8), ``density`` (float32, g/cm³),
    ``hu`` (int16), ``tia`` (float16, Bq·s per voxel), ``dvk`` (float16, in units of
    ``dvk_scale`` Gy), ``spacing`` (mm), and ``index.json`` (config, materials, one row per
    patch). TIA values are scaled so that a patch's maximum is 1 Bq·s and rounded to float16
    before the DVK dose is computed, so inputs and targets see the same source exactly (dose is
    linear in the TIA).

    Returns
    -------
    Path
        ``out_dir``.
    """
    from dosimetry.dose.engines import dose_dvk

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    nuc = canonical_nuclide(config.nuclide)
    rng = np.random.default_rng([config.seed, 7301])
    size = config.patch_size
    rows: list[dict[str, Any]] = []
    materials = None
    total = len(config.patient_seeds) * config.patches_per_patient
    k = 0
    for p_i, pseed in enumerate(config.patient_seeds):
        spacing = float(config.spacings_mm[p_i % len(config.spacings_mm)])
        blur = float(rng.uniform(6.0, 12.0)) if rng.random() < config.blur_probability else 0.0
        inputs = patient_dose_inputs(pseed, nuc, spacing, n_lesions=config.n_lesions,
                                     blur_fwhm_mm=blur)
        hu_full = sitk.GetArrayFromImage(inputs["ct"])
        tia_full = sitk.GetArrayFromImage(inputs["tia"]).astype(np.float64)
        rho_full = _materials(hu_full).density_gcm3
        centres = _draw_centres(rng, tia_full, rho_full, config.patches_per_patient, size)
        for c in centres:
            hu = _crop(hu_full, c, size, -1000.0)
            tia = _crop(tia_full, c, size, 0.0)
            n_air = _add_air(rng, hu, tia, spacing) if rng.random() < config.air_probability \
                else 0
            if not tia.max() > 0:
                continue
            tia = (tia / tia.max()).astype(np.float16)
            hu16 = np.round(hu).astype(np.int16)
            cmap = _materials(hu16.astype(np.float64))
            materials = cmap.materials
            tia_img = sitk.GetImageFromArray(tia.astype(np.float32))
            tia_img.SetSpacing((spacing,) * 3)
            ct_img = sitk.GetImageFromArray(hu16.astype(np.float32))
            ct_img.SetSpacing((spacing,) * 3)
            dvk = dose_dvk(tia_img, nuc, ct_img, cache_dir=cache_dir,
                           kernel_decays=config.kernel_decays)
            dvk_arr = sitk.GetArrayFromImage(dvk.dose).astype(np.float64)
            dvk_scale = float(dvk_arr.max()) or 1.0
            name = f"patch_{k:05d}.npz"
            np.savez_compressed(
                out / name, material=cmap.material_index.astype(np.uint8),
                density=cmap.density_gcm3.astype(np.float32), hu=hu16, tia=tia,
                dvk=(dvk_arr / dvk_scale).astype(np.float16), dvk_scale=np.float64(dvk_scale),
                spacing=np.array([spacing] * 3))
            rows.append({"file": name, "patient_seed": int(pseed), "spacing_mm": spacing,
                         "centre_zyx": [int(v) for v in c], "air_pockets": n_air,
                         "tia_blur_fwhm_mm": blur, "preset": inputs["preset"]})
            k += 1
            if progress is not None:
                progress(k, total)
    if materials is None:
        raise InputError("no patch with activity was generated; check the configuration")
    index = {"config": {**asdict(config), "nuclide": nuc}, "nuclide": nuc,
             "materials": [m.name for m in materials], "patches": rows}
    tmp = out / "index.json.tmp"
    tmp.write_text(json.dumps(index, indent=1))
    tmp.replace(out / "index.json")
    return out


def spacing_sequence(values: Sequence[float]) -> tuple[float, ...]:
    """Validated tuple of voxel sizes (mm)."""
    vals = tuple(float(v) for v in values)
    if not vals:
        raise InputError("at least one voxel size is needed")
    return vals
