"""Dose engines on a time-integrated activity (TIA) map and a CT: LED, DVK and Monte Carlo.

Inputs are ``SimpleITK.Image``: the TIA map in Bq·s per voxel (the number of decays in each
voxel) and, optionally, a CT in HU. A CT on another grid is resampled onto the TIA grid
(linear interpolation, −1000 HU outside the CT). Every engine returns a :class:`DoseResult`
whose dose map (Gy) has the TIA map's geometry.

LED — local energy deposition
    D = Ñ · E_local / m_voxel: each voxel keeps the energy its decays emit as electrons
    (β, IC, Auger of the selection), and as photons too when ``include_photons`` is set. The
    mass is ρ·V with ρ from the CT (Schneider calibration) or a uniform density.

DVK — dose voxel kernel convolution
    D = (Ñ ⊛ K) · 1e-9 with K in mGy/(MBq·s) made for the grid's voxel size
    (:func:`dosimetry.dose.kernels.make_kernel`, cached) in ICRU soft tissue. With a CT, the
    density correction D·ρ_kernel/ρ_voxel (the kernel's energy deposited in a voxel of another
    mass; Dieudonné et al. 2013, J Nucl Med 54:236, doi:10.2967/jnumed.112.105825) is applied.
    Its limits: it is exact only where the energy deposited per voxel does not depend on the
    density (local electrons in uniform regions); it ignores the change of particle ranges
    and photon attenuation with density (lung, bone) and is wrong at interfaces, where it
    overestimates the dose to low-density voxels next to active tissue (energy that would have
    crossed into them is counted against their small mass). Voxels of density ≤ 0.01 g/cm³
    (air) get the uncorrected dose. The kernel is cropped to a cube (±50 mm by default); the
    photon dose beyond it — in an infinite medium about 80 % of the γ energy of Lu-177 and
    of I-131 is absorbed farther than 50 mm — is added by convolution with a
    far-field photon point kernel tabulated by our MC (:mod:`dosimetry.dose.far_field`;
    ``far_field=False`` leaves it out). That term assumes infinite homogeneous soft tissue, so
    it overestimates the dose near the body surface, where real photons escape.

MC — the fast voxel Monte Carlo
    Decays sampled from the TIA map and transported through the CT materials
    (:mod:`dosimetry.dose.mc`); D per voxel with its statistical standard uncertainty.

DEEP — DVK corrected by a CNN ensemble trained on the fast MC
    D = D_DVK · exp(r) averaged over the ensemble (:mod:`dosimetry.dose.deep`), plus the
    far-field photon dose from sources beyond the networks' context (15 voxels; the crossfire
    from nearer sources is part of what they learnt from MC), with a per-voxel model
    uncertainty σ = α·√(s² + (β·D)²) (s: the members' spread; α, β calibrated
    on held-out digital patients against the MC); for the mean over an organ, α_VOI (in the
    metadata) replaces α, the voxels' errors being correlated. Trained on isotropic grids of
    3.0–4.8 mm; outside 2.5–6 mm or with anisotropic voxels (> 15 %) it warns, since that is
    extrapolation. The σ is a model error, correlated between voxels (not a statistical one).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

import numpy as np
import SimpleITK as sitk

from dosimetry.dose.emissions import (
    Emission,
    SourceSpectrum,
    parse_emissions,
    source_spectrum,
)
from dosimetry.dose.kernels import Kernel, make_kernel
from dosimetry.errors import GeometryError, InputError
from dosimetry.io.images import overlap_fraction, require_same_grid
from dosimetry.materials.compositions import Material, get_material
from dosimetry.units import JOULE_PER_MEV

__all__ = [
    "DoseEngine",
    "DoseResult",
    "compute_dose",
    "dose_deep",
    "dose_dvk",
    "dose_led",
    "dose_mc",
    "resample_ct_to",
]

#: mGy/(MBq·s) × Bq·s → Gy: 1e-3 Gy/mGy × 1e-6 MBq/Bq.
_KERNEL_TO_GY_PER_BQ_S = 1e-9
#: Default medium where no CT is given.
DEFAULT_MATERIAL = "soft-tissue-icru"


class DoseEngine(StrEnum):
    """Dose calculation method."""

    LED = "led"
    DVK = "dvk"
    MC = "mc"
    DEEP = "deep"
    GATE = "gate"


@dataclass(frozen=True, eq=False)
class DoseResult:
    """Absorbed-dose map from an engine.

    Attributes
    ----------
    dose : SimpleITK.Image
        Absorbed dose (Gy), float32, on the TIA map's grid.
    uncertainty : SimpleITK.Image or None
        Standard (1σ) statistical uncertainty of the dose (Gy) where the engine estimates one
        (MC), else None.
    engine : DoseEngine
    nuclide : str
    emissions : tuple of Emission
    metadata : dict
        Engine details: decays, kernel, density correction, timing, energy balance, …
    """

    dose: sitk.Image
    uncertainty: sitk.Image | None
    engine: DoseEngine
    nuclide: str
    emissions: tuple[Emission, ...]
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no voxel data)."""
        arr = sitk.GetArrayViewFromImage(self.dose)
        return {
            "engine": self.engine.value,
            "nuclide": self.nuclide,
            "emissions": [e.value for e in self.emissions],
            "dose_max_gy": float(arr.max()) if arr.size else 0.0,
            **self.metadata,
        }


def _check_tia(tia: sitk.Image) -> np.ndarray:
    """The TIA voxels as a float32 or float64 (z, y, x) array; negatives set to 0 (warned)."""
    if not isinstance(tia, sitk.Image) or tia.GetDimension() != 3:
        raise InputError("the TIA map must be a 3-D SimpleITK image (Bq·s per voxel)")
    arr = sitk.GetArrayViewFromImage(tia)
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        n_bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise InputError(f"TIA map: {n_bad} voxels are not finite (NaN or inf)")
    if arr.min() < 0:
        neg = arr < 0
        warnings.warn(
            f"TIA map: {int(neg.sum())} negative voxels (min {arr.min():.4g} Bq·s) set to 0",
            UserWarning,
            stacklevel=3,
        )
        arr = np.where(neg, 0, arr)
    return arr


def resample_ct_to(ct: sitk.Image, reference: sitk.Image) -> tuple[sitk.Image, bool]:
    """The CT on ``reference``'s grid (linear interpolation, −1000 HU outside).

    Returns the CT unchanged when the grids already agree, and whether it was resampled.

    Raises
    ------
    GeometryError
        When the CT does not overlap the reference at all.
    """
    try:
        require_same_grid(ct, reference, "CT", "TIA map")
        return ct, False
    except GeometryError:
        pass
    if overlap_fraction(reference, ct) <= 0.0:
        raise GeometryError("the CT does not overlap the TIA map; check both images' origins")
    out = sitk.Resample(sitk.Cast(ct, sitk.sitkFloat32), reference, sitk.Transform(),
                        sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    return out, True


def _density_map(tia: sitk.Image, ct: sitk.Image | None, density_gcm3: float | None
                 ) -> tuple[np.ndarray, dict[str, Any], Any]:
    """Voxel densities (g/cm³) on the TIA grid, metadata, and the CT material map (or None)."""
    from dosimetry.materials.hu import ct_to_materials

    meta: dict[str, Any] = {}
    if ct is None:
        rho = float(density_gcm3 if density_gcm3 is not None
                    else get_material(DEFAULT_MATERIAL).density_gcm3)
        if not rho > 0:
            raise InputError(f"density_gcm3 must be > 0, got {density_gcm3!r}")
        meta["density"] = f"uniform {rho:g} g/cm³ (no CT)"
        shape = sitk.GetArrayViewFromImage(tia).shape
        return np.full(shape, rho), meta, None
    ct_on, resampled = resample_ct_to(ct, tia)
    meta["ct_resampled"] = resampled
    meta["density"] = "CT, Schneider et al. 2000 calibration"
    cmap = ct_to_materials(sitk.GetArrayFromImage(ct_on), what="CT")
    meta["ct_clipped_voxels"] = cmap.n_clipped_low + cmap.n_clipped_high
    return cmap.density_gcm3.astype(np.float64), meta, cmap


def _to_image(arr: np.ndarray, like: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(np.asarray(arr, dtype=np.float32))
    img.CopyInformation(like)
    return img


def dose_led(
    tia: sitk.Image,
    nuclide: str,
    ct: sitk.Image | None = None,
    *,
    emissions: str | Iterable[Emission | str] | None = None,
    include_photons: bool = False,
    density_gcm3: float | None = None,
) -> DoseResult:
    """Local energy deposition dose.

    Parameters
    ----------
    tia : SimpleITK.Image
        Decays per voxel (Bq·s).
    nuclide : str
    ct : SimpleITK.Image, optional
        CT (HU) for the voxel masses; otherwise ``density_gcm3`` (default 1.00 g/cm³).
    emissions : optional
        Selection (default all); photons count only with ``include_photons``.
    include_photons : bool
        Deposit the selected photon energy locally too (an upper bound of the photon dose).
    density_gcm3 : float, optional
        Uniform density when no CT is given.

    Returns
    -------
    DoseResult
        Dose (Gy); no uncertainty (deterministic).
    """
    arr = _check_tia(tia)
    spec = source_spectrum(nuclide, emissions)
    e_local = spec.electron_energy_per_decay_mev
    if include_photons:
        e_local += spec.photon_energy_per_decay_mev
    rho, meta, _ = _density_map(tia, ct, density_gcm3)
    vol_cm3 = float(np.prod(tia.GetSpacing())) * 1e-3
    mass_kg = rho * vol_cm3 * 1e-3
    dose = np.zeros(arr.shape, dtype=np.float64)
    np.divide(arr * (e_local * JOULE_PER_MEV), mass_kg, out=dose, where=mass_kg > 0)
    meta.update({
        "energy_per_decay_mev": e_local,
        "include_photons": bool(include_photons),
        "total_tia_bq_s": float(arr.sum(dtype=np.float64)),
    })
    return DoseResult(_to_image(dose, tia), None, DoseEngine.LED, spec.nuclide, spec.emissions,
                      meta)


def _default_kernel_size(spacing: tuple[float, ...], radius_mm: float = 50.0) -> int:
    n = 2 * math.ceil(radius_mm / min(spacing)) + 1
    return int(min(max(n, 11), 51))


def dose_dvk(
    tia: sitk.Image,
    nuclide: str,
    ct: sitk.Image | None = None,
    *,
    emissions: str | Iterable[Emission | str] | None = None,
    kernel: Kernel | sitk.Image | None = None,
    kernel_size: int | None = None,
    kernel_decays: int = 2_000_000,
    density_correction: bool = True,
    far_field: bool = True,
    seed: int = 0,
    device: str = "cpu",
    cache_dir: str | None = None,
    workers: int | None = None,
) -> DoseResult:
    """Dose by convolution of the TIA map with a dose voxel kernel.

    Parameters
    ----------
    tia : SimpleITK.Image
        Decays per voxel (Bq·s).
    nuclide : str
    ct : SimpleITK.Image, optional
        CT (HU); enables the density correction.
    emissions : optional
        Selection for a kernel made here (default all).
    kernel : Kernel or SimpleITK.Image, optional
        A kernel (mGy/(MBq·s)) whose spacing equals the TIA map's; default: made (or taken
        from the cache) for this voxel size in ICRU soft tissue.
    kernel_size : int, optional
        Edge of the kernel made here (odd); default covers ±50 mm (11 … 51 voxels).
    kernel_decays : int
        Decays for a kernel made here.
    density_correction : bool
        Scale by ρ_kernel/ρ_voxel where a CT is given (see the module docstring).
    far_field : bool
        Add the photon dose beyond the kernel's cube (:mod:`dosimetry.dose.far_field`), for
        the photon emissions of the kernel; needs a kernel whose metadata name its nuclide and
        emissions (ours do), else it is skipped and the metadata say so.
    seed, device, cache_dir
        Passed to :func:`~dosimetry.dose.kernels.make_kernel`.
    workers : int, optional
        FFT threads.

    Returns
    -------
    DoseResult
        Dose (Gy); no uncertainty map (the kernel's own statistical uncertainty is in the
        metadata).
    """
    from dosimetry.dose.convolution import fft_convolve_same

    arr = _check_tia(tia)
    chosen = parse_emissions(emissions)
    spacing = tuple(float(s) for s in tia.GetSpacing())
    t0 = time.perf_counter()
    if kernel is None:
        size = kernel_size or _default_kernel_size(spacing)
        kernel = make_kernel(nuclide, spacing, DEFAULT_MATERIAL, size, chosen, kernel_decays,
                             seed=seed, device=device, cache_dir=cache_dir)
    if isinstance(kernel, sitk.Image):
        kernel = Kernel(kernel, None, {})
    if not np.allclose(kernel.image.GetSpacing(), spacing, rtol=1e-4, atol=1e-4):
        raise GeometryError(
            f"kernel voxel size {tuple(round(s, 4) for s in kernel.image.GetSpacing())} mm "
            f"differs from the TIA map's {tuple(round(s, 4) for s in spacing)} mm"
        )
    t_kernel = time.perf_counter() - t0
    k_arr = kernel.array
    t1 = time.perf_counter()
    dose = fft_convolve_same(arr, k_arr, workers=workers)
    dose *= np.float32(_KERNEL_TO_GY_PER_BQ_S)
    t_conv = time.perf_counter() - t1
    meta: dict[str, Any] = {
        "kernel": {k: v for k, v in kernel.metadata.items() if k != "energy_balance_mev"},
        "kernel_size": int(k_arr.shape[0]),
        "kernel_time_s": t_kernel,
        "convolution_time_s": t_conv,
        "total_tia_bq_s": float(arr.sum(dtype=np.float64)),
    }
    if ct is not None and density_correction:
        rho, dmeta, _ = _density_map(tia, ct, None)
        meta.update(dmeta)
        mat = kernel.metadata.get("material") or {}
        rho_k = float(mat.get("density_gcm3", get_material(DEFAULT_MATERIAL).density_gcm3))
        ratio = np.where(rho > 0.01, rho_k / np.maximum(rho, 0.01), 1.0)
        dose *= ratio.astype(np.float32)
        meta["density_correction"] = (
            f"dose × {rho_k:g} g/cm³ / ρ_voxel (Dieudonné et al. 2013, "
            "doi:10.2967/jnumed.112.105825); voxels ≤ 0.01 g/cm³ uncorrected"
        )
    else:
        meta["density_correction"] = None
    nuc = kernel.metadata.get("nuclide", nuclide)
    em = parse_emissions(kernel.metadata.get("emissions", chosen))
    meta["far_field"] = None
    if far_field:
        if "nuclide" in kernel.metadata and "emissions" in kernel.metadata:
            t2 = time.perf_counter()
            tail, fmeta = _far_field(arr, spacing, str(nuc), em,
                                     [int(n) // 2 for n in k_arr.shape], workers)
            dose += tail
            fmeta["time_s"] = time.perf_counter() - t2
            meta["far_field"] = fmeta
        else:
            meta["far_field"] = {"note": "not added: the kernel's metadata do not name its "
                                         "nuclide and emissions"}
    return DoseResult(_to_image(dose, tia), None, DoseEngine.DVK, str(nuc), em, meta)


def _far_field(arr: np.ndarray, spacing_xyz: tuple[float, ...], nuclide: str,
               emissions: Iterable[Emission], inner: Iterable[int],
               workers: int | None) -> tuple[np.ndarray, dict[str, Any]]:
    """Photon dose (Gy) from sources beyond the cube of half-size ``inner`` (z, y, x voxels)
    (:mod:`dosimetry.dose.far_field`) and its metadata."""
    from dosimetry.dose.far_field import far_field_dose

    inner = [int(n) for n in inner]
    tail, meta = far_field_dose(np.asarray(arr, dtype=np.float32), spacing_xyz, nuclide, inner,
                                emissions, workers=workers)
    return tail, meta


class _MCInputs(NamedTuple):
    """The arrays of a Monte Carlo dose run, prepared from the images by :func:`_mc_inputs`."""

    source: np.ndarray  # (z, y, x) float64 TIA (Bq·s per voxel), negatives set to 0
    total_tia_bq_s: float  # its sum: decays in the patient, scales the dose per decay
    spectrum: SourceSpectrum
    spacing: tuple[float, float, float]  # voxel size x, y, z (mm)
    material_index: np.ndarray  # (z, y, x) int index into ``materials``
    density: np.ndarray  # (z, y, x) float32 g/cm³
    materials: tuple[Material, ...]
    metadata: dict[str, Any]  # how the densities were obtained


def _mc_inputs(tia: sitk.Image, nuclide: str, ct: sitk.Image | None,
               emissions: str | Iterable[Emission | str] | None,
               material: Material | str) -> _MCInputs:
    """Check the TIA map and make the source, material and density arrays of an MC dose run.

    Shared by :func:`dose_mc` and :func:`dosimetry.dose.mc.split.dose_mc_split`, so that both see
    the same patient. With a CT: Schneider materials and densities on the TIA grid
    (:func:`_density_map`); without: a homogeneous grid of ``material``.
    """
    arr = np.asarray(_check_tia(tia), dtype=np.float64)
    total = float(arr.sum())
    if not total > 0:
        raise InputError("the TIA map is zero everywhere: no decays to simulate")
    spec: SourceSpectrum = source_spectrum(nuclide, emissions)
    sx, sy, sz = (float(s) for s in tia.GetSpacing())
    if ct is None:
        mat = get_material(material) if isinstance(material, str) else material
        rho = np.full(arr.shape, mat.density_gcm3, dtype=np.float32)
        mat_idx = np.zeros(arr.shape, dtype=np.int16)
        materials: tuple[Material, ...] = (mat,)
        meta: dict[str, Any] = {"density": f"uniform {mat.name} {mat.density_gcm3:g} g/cm³"}
    else:
        rho64, meta, cmap = _density_map(tia, ct, None)
        rho = rho64.astype(np.float32)
        mat_idx = cmap.material_index
        materials = tuple(cmap.materials)
    return _MCInputs(arr, total, spec, (sx, sy, sz), mat_idx, rho, materials, meta)


def dose_mc(
    tia: sitk.Image,
    nuclide: str,
    ct: sitk.Image | None = None,
    *,
    emissions: str | Iterable[Emission | str] | None = None,
    n_decays: int = 1_000_000,
    seed: int = 0,
    device: str = "cpu",
    n_batches: int = 20,
    material: Material | str = DEFAULT_MATERIAL,
    progress: Callable[[int, int], None] | None = None,
) -> DoseResult:
    """Dose by the fast voxel Monte Carlo with the decays distributed as the TIA map.

    Parameters
    ----------
    tia : SimpleITK.Image
        Decays per voxel (Bq·s); only its shape matters for sampling, its sum scales the dose.
    nuclide : str
    ct : SimpleITK.Image, optional
        CT (HU) → Schneider materials and densities; without it the grid is homogeneous
        ``material``.
    emissions : optional
        Selection (default all).
    n_decays : int
        Decays simulated.
    seed, device, n_batches
        See :class:`dosimetry.dose.mc.engine.MCSettings`.
    material : Material or str
        Medium when no CT is given.
    progress : callable, optional
        ``progress(done, total)``.

    Returns
    -------
    DoseResult
        Dose (Gy) and its statistical standard uncertainty (Gy).
    """
    from dosimetry.dose.mc.engine import MCSettings, energy_to_dose_gy, simulate

    p = _mc_inputs(tia, nuclide, ct, emissions, material)
    arr, total, spec, spacing, rho = p.source, p.total_tia_bq_s, p.spectrum, p.spacing, p.density
    meta = p.metadata
    settings = MCSettings(n_decays=int(n_decays), seed=int(seed), device=device,
                          n_batches=n_batches)
    tally = simulate(arr, p.material_index, rho, p.materials, spacing, spec, settings,
                     progress=progress)
    dose = energy_to_dose_gy(tally.energy_mev, rho, spacing) * total
    sigma = energy_to_dose_gy(tally.energy_sem_mev, rho, spacing) * total
    meta.update({
        "n_decays": tally.n_decays,
        "n_batches": tally.n_batches,
        "seed": int(seed),
        "device": str(device),
        "total_tia_bq_s": total,
        "transport_time_s": tally.elapsed_s,
        "decays_per_second": tally.decays_per_second,
        "energy_balance_mev_per_decay": {
            "emitted": tally.emitted_mev / tally.n_decays,
            "deposited": tally.deposited_mev / tally.n_decays,
            "escaped": tally.escaped_mev / tally.n_decays,
        },
    })
    return DoseResult(_to_image(dose, tia), _to_image(sigma, tia), DoseEngine.MC, spec.nuclide,
                      spec.emissions, meta)


def dose_deep(
    tia: sitk.Image,
    nuclide: str,
    ct: sitk.Image | None = None,
    *,
    weights: str | None = None,
    device: str = "cpu",
    tile: int = 192,
    emissions: str | Iterable[Emission | str] | None = None,
    seed: int = 0,
    kernel_decays: int = 2_000_000,
    cache_dir: str | None = None,
    far_field: bool = True,
) -> DoseResult:
    """Dose by the deep engine: DVK with density correction, corrected by the CNN ensemble.

    Parameters
    ----------
    tia : SimpleITK.Image
        Decays per voxel (Bq·s).
    nuclide : str
        Lu-177 or I-131 (the nuclides with shipped weights).
    ct : SimpleITK.Image, optional
        CT (HU); without it the patient is taken as uniform soft tissue.
    weights : path, optional
        Weight file (default: the shipped one for the nuclide).
    device : str
        ``cpu``, ``cuda`` or ``cuda:N`` for the network.
    tile : int
        Edge (voxels) of the blocks the volume is processed in; the result does not depend on
        it (each block gets the network's full context of 15 voxels, recomputed where blocks
        meet, so fewer blocks are faster: a 99×76×175 patient took 45 s as four 96-voxel
        blocks and 32 s as one). Memory grows with it: the network added 0.3 GB of peak
        memory for one block of 1.3 M voxels, so about 2 GB for a full 192³ block.
    emissions : optional
        Must be all radiations (the networks were trained on the full emission spectrum).
    seed, kernel_decays, cache_dir
        For a DVK kernel not cached yet.
    far_field : bool
        Add the photon dose beyond the DVK cube after the network (as :func:`dose_dvk`).

    Returns
    -------
    DoseResult
        Dose (Gy) and the calibrated model uncertainty (1σ, Gy).
    """
    import torch

    from dosimetry.dose.deep import load_model
    from dosimetry.dose.deep.model import receptive_radius
    from dosimetry.dose.deep.train import predict_patch

    if emissions not in (None, "all") and set(parse_emissions(emissions)) != set(Emission):
        raise InputError("the deep engine is trained on all emissions; use --engine dvk or mc "
                         "for a selection of radiations")
    if not isinstance(tile, int) or tile < 16:
        raise InputError(f"tile must be an integer ≥ 16 voxels, got {tile!r}")
    model = load_model(nuclide, weights, device=device)
    spacing = tuple(float(s) for s in tia.GetSpacing())
    mean_sp = float(np.mean(spacing))
    if max(spacing) / min(spacing) > 1.15:
        warnings.warn(f"deep engine: voxels {spacing} mm are anisotropic; the networks were "
                      "trained on isotropic voxels (mean size used)", UserWarning, stacklevel=2)
    if not 2.5 <= mean_sp <= 6.0:
        warnings.warn(f"deep engine: voxel size {mean_sp:.2f} mm is outside the trained "
                      "3.0–4.8 mm range (extrapolation)", UserWarning, stacklevel=2)
    t0 = time.perf_counter()
    dvk = dose_dvk(tia, nuclide, ct, seed=seed, kernel_decays=kernel_decays,
                   cache_dir=cache_dir, far_field=False)
    t_dvk = time.perf_counter() - t0
    arr = np.asarray(_check_tia(tia), dtype=np.float32)
    if ct is not None:
        rho, dmeta, _ = _density_map(tia, ct, None)
    else:
        rho, dmeta, _ = _density_map(tia, None, None)
    d_arr = sitk.GetArrayFromImage(dvk.dose).astype(np.float32)
    np.maximum(d_arr, 0.0, out=d_arr)
    # scale-free network: work in units of the maximum (float32 range), rescale at the end
    scale = float(d_arr.max()) or 1.0
    a_scale = float(arr.max()) or 1.0
    margin = receptive_radius(model.members[0].dilations) + 4  # + the features' 9³ max-pool
    mean_out = np.zeros_like(d_arr)
    std_out = np.zeros_like(d_arr)
    dev = torch.device(device)
    t1 = time.perf_counter()
    shape = d_arr.shape
    for z0 in range(0, shape[0], tile):
        for y0 in range(0, shape[1], tile):
            for x0 in range(0, shape[2], tile):
                core = tuple(slice(o, min(o + tile, n)) for o, n in zip((z0, y0, x0), shape,
                                                                        strict=True))
                outer = tuple(slice(max(c.start - margin, 0), min(c.stop + margin, n))
                              for c, n in zip(core, shape, strict=True))
                inner = tuple(slice(c.start - o.start, c.stop - o.start)
                              for c, o in zip(core, outer, strict=True))

                def tens(a: np.ndarray, sl=outer) -> torch.Tensor:
                    return torch.as_tensor(np.ascontiguousarray(a[sl]), device=dev)[None, None]

                m, s = predict_patch(model.members, tens(d_arr / scale), tens(arr / a_scale),
                                     tens(rho.astype(np.float32)), mean_sp)
                mean_out[core] = m[0, 0].cpu().numpy()[inner]
                std_out[core] = s[0, 0].cpu().numpy()[inner]
    t_net = time.perf_counter() - t1
    mean_out *= scale
    std_out *= scale
    fmeta: dict[str, Any] | None = None
    if far_field:
        # The networks were trained against MC on patches that included the photon crossfire
        # from every source within their context (``margin`` voxels), beyond the DVK cube
        # too: they learnt that part. The far field is therefore added for sources beyond
        # the larger of the kernel's cube and that context (measured on the I-131 held-out
        # patient: adding it from the kernel's edge counted about 4 % of the dose of organs
        # without uptake twice).
        t2 = time.perf_counter()
        inner = max(int(dvk.metadata["kernel_size"]) // 2, margin)
        tail, fmeta = _far_field(arr, spacing, dvk.nuclide, dvk.emissions, (inner,) * 3, None)
        mean_out += tail
        fmeta["time_s"] = time.perf_counter() - t2
    sigma = model.alpha * np.sqrt(std_out.astype(np.float64) ** 2
                                  + (model.beta * mean_out.astype(np.float64)) ** 2)
    meta: dict[str, Any] = {
        **dmeta,
        "model": {"path": model.path, "sha256": model.sha256, "members": len(model.members),
                  "alpha": model.alpha, "beta": model.beta, "alpha_voi": model.alpha_voi,
                  "trained": model.metadata.get("command", "")},
        "device": str(device),
        "dvk_time_s": t_dvk,
        "network_time_s": t_net,
        "kernel": dvk.metadata.get("kernel"),
        "far_field": fmeta,
        "total_tia_bq_s": float(arr.sum(dtype=np.float64)),
        "uncertainty": "model error (1σ), calibrated on held-out MC; correlated between voxels",
    }
    return DoseResult(_to_image(mean_out, tia), _to_image(sigma, tia), DoseEngine.DEEP,
                      dvk.nuclide, dvk.emissions, meta)


def compute_dose(
    engine: DoseEngine | str,
    tia: sitk.Image,
    nuclide: str,
    ct: sitk.Image | None = None,
    **options: Any,
) -> DoseResult:
    """Run the named engine (``"led"``, ``"dvk"``, ``"mc"``, ``"deep"`` or ``"gate"``)."""
    try:
        eng = DoseEngine(str(engine).lower())
    except ValueError:
        valid = ", ".join(e.value for e in DoseEngine)
        raise InputError(f"unknown dose engine {engine!r}; expected one of {valid}") from None
    if eng is DoseEngine.GATE:  # opengate is optional: imported only when asked for
        from dosimetry.dose.gate.engine import dose_gate

        return dose_gate(tia, nuclide, ct, **options)
    fn = {DoseEngine.LED: dose_led, DoseEngine.DVK: dose_dvk, DoseEngine.MC: dose_mc,
          DoseEngine.DEEP: dose_deep}[eng]
    return fn(tia, nuclide, ct, **options)
