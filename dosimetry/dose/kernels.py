"""Dose voxel kernels (voxel S-values): made by our Monte Carlo, cached, read and written.

A dose voxel kernel K is the mean absorbed dose in each voxel of a homogeneous medium per
decay in the centre voxel (source uniformly distributed in it), in mGy/(MBq·s) (MIRD
Pamphlet 17, Bolch et al. 1999, J Nucl Med 40:11S). Convolving a TIA map (Bq·s per voxel)
with it gives the dose map (:func:`dosimetry.dose.engines.dose_dvk`).

:func:`make_kernel` simulates the decays with :func:`dosimetry.dose.mc.engine.simulate` in a
homogeneous world that extends beyond the kernel (so that photons scattered back from outside
are counted, as in an infinite medium), crops the kernel, and — by default — averages it over
the symmetries of the voxel grid (reflections, and axis permutations for equal spacings), which
reduces the variance without bias. The statistical uncertainty is estimated by the batch method
on the symmetrised batches.

Kernels are images: size (n, n, n) odd, spacing = voxel size, origin such that the centre voxel
sits at (0, 0, 0) mm, identity direction. Metadata travel in a JSON sidecar ``<stem>.json``
beside ``<stem>.nii.gz``, and the standard uncertainty (mGy/(MBq·s)) in ``<stem>.sigma.nii.gz``.

Cache
-----
Kernels are cached per (nuclide, voxel size, material, emissions, MC physics version) in
``<cache root>/kernels`` where the cache root is the ``cache_dir`` argument, else the
``RPTDOSE_CACHE_DIR`` environment variable, else ``~/.cache/rptdose``. A cached kernel is
reused when it is at least as large and made with at least as many decays as asked; it is
cropped to the size asked. Files are written atomically.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dosimetry.dose.emissions import Emission, emissions_label, parse_emissions, source_spectrum
from dosimetry.errors import InputError
from dosimetry.io.atomic import atomic_write_text
from dosimetry.io.images import read_image, write_image
from dosimetry.materials.compositions import Material, get_material
from dosimetry.nuclides import get_nuclide
from dosimetry.units import JOULE_PER_MEV

__all__ = [
    "KERNEL_UNIT",
    "Kernel",
    "kernel_cache_dir",
    "make_kernel",
    "read_kernel",
    "read_octant_table",
    "symmetrize",
    "write_kernel",
]

#: Unit of kernel values.
KERNEL_UNIT = "mGy/(MBq·s)"
#: Gy per decay → mGy/(MBq·s): 1e6 decays per MBq·s, 1e3 mGy per Gy.
_GY_PER_DECAY_TO_KERNEL = 1e9


@dataclass(frozen=True, eq=False)
class Kernel:
    """A dose voxel kernel with its uncertainty and generation metadata.

    Attributes
    ----------
    image : SimpleITK.Image
        Kernel values (mGy/(MBq·s)), float32, centred on the source voxel.
    sigma : SimpleITK.Image or None
        Standard uncertainty of the values (mGy/(MBq·s)), same grid.
    metadata : dict
        Nuclide, voxel size, material, emissions, decays, seed, code version, uncertainty at
        the centre, … (the JSON sidecar).
    """

    image: sitk.Image
    sigma: sitk.Image | None
    metadata: dict[str, Any]

    @property
    def array(self) -> np.ndarray:
        """(z, y, x) float64 kernel values (mGy/(MBq·s))."""
        return sitk.GetArrayFromImage(self.image).astype(np.float64)

    def crop(self, size: int) -> Kernel:
        """The central ``size``³ part (size odd, ≤ the kernel's)."""
        n = self.image.GetSize()[0]
        if size == n:
            return self
        if size > n or size % 2 == 0:
            raise InputError(f"cannot crop a {n}³ kernel to {size}³ (odd and ≤ {n} needed)")
        lo = (n - size) // 2
        img = self.image[lo:lo + size, lo:lo + size, lo:lo + size]
        sig = self.sigma[lo:lo + size, lo:lo + size, lo:lo + size] if self.sigma else None
        return Kernel(img, sig, {**self.metadata, "size": size})


def _voxel_tuple(voxel_mm: float | Sequence[float]) -> tuple[float, float, float]:
    if isinstance(voxel_mm, int | float):
        v = (float(voxel_mm),) * 3
    else:
        v = tuple(float(x) for x in voxel_mm)
    if len(v) != 3 or not all(math.isfinite(x) and x > 0 for x in v):
        raise InputError(f"voxel size must be one or three lengths > 0 mm, got {voxel_mm!r}")
    return v  # type: ignore[return-value]


def symmetrize(array: np.ndarray, spacing_xyz: Sequence[float]) -> np.ndarray:
    """Average a centred (z, y, x) array over the symmetries of its voxel grid.

    Reflections of each axis always; permutations of axes whose spacings agree to 1e-6
    relative (all 48 cube symmetries for isotropic voxels).
    """
    a = np.asarray(array, dtype=np.float64)
    sp_zyx = tuple(spacing_xyz)[::-1]
    perms = [p for p in itertools.permutations(range(3))
             if all(math.isclose(sp_zyx[p[k]], sp_zyx[k], rel_tol=1e-6) for k in range(3))
             and all(a.shape[p[k]] == a.shape[k] for k in range(3))]
    acc = np.zeros_like(a)
    count = 0
    for p in perms:
        t = np.transpose(a, p)
        for flips in itertools.product((False, True), repeat=3):
            axes = tuple(k for k in range(3) if flips[k])
            acc += np.flip(t, axis=axes) if axes else t
            count += 1
    return acc / count


def _centred_image(values: np.ndarray, voxel: tuple[float, float, float]) -> sitk.Image:
    img = sitk.GetImageFromArray(values.astype(np.float32))
    img.SetSpacing(voxel)
    n = values.shape
    img.SetOrigin(tuple(-(n[2 - k] // 2) * voxel[k] for k in range(3)))
    return img


def kernel_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Folder of cached kernels: ``<root>/kernels`` (see the module docstring)."""
    if cache_dir is not None:
        root = Path(cache_dir)
    elif os.environ.get("RPTDOSE_CACHE_DIR"):
        root = Path(os.environ["RPTDOSE_CACHE_DIR"])
    else:
        root = Path.home() / ".cache" / "rptdose"
    return root / "kernels"


def _cache_stem(nuclide: str, voxel: tuple[float, float, float], material: Material,
                emissions: tuple[Emission, ...]) -> str:
    from dosimetry.dose.mc.engine import MC_PHYSICS_VERSION

    key = json.dumps([nuclide, [round(v, 4) for v in voxel], material.to_dict(),
                      emissions_label(emissions), MC_PHYSICS_VERSION], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    vox = "x".join(f"{v:g}" for v in voxel)
    return f"{nuclide}_{vox}mm_{material.name}_{'+'.join(e.value for e in emissions)}_{digest}"


def _sidecar(path: Path) -> Path:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd"):
        if name.endswith(suffix):
            return path.with_name(name[: -len(suffix)] + ".json")
    return path.with_name(name + ".json")


def _sigma_path(path: Path) -> Path:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd"):
        if name.endswith(suffix):
            return path.with_name(name[: -len(suffix)] + ".sigma" + suffix)
    return path.with_name(name + ".sigma")


def write_kernel(kernel: Kernel, path: str | os.PathLike[str]) -> Path:
    """Write the kernel image, its uncertainty image and its JSON sidecar (atomically each).

    ``kernel.nii.gz`` → ``kernel.nii.gz``, ``kernel.sigma.nii.gz``, ``kernel.json``.
    """
    path = Path(path)
    if kernel.sigma is not None:
        write_image(kernel.sigma, _sigma_path(path))
    write_image(kernel.image, path)
    atomic_write_text(_sidecar(path), json.dumps(kernel.metadata, indent=1, sort_keys=True))
    return path


def read_kernel(path: str | os.PathLike[str]) -> Kernel:
    """Read a kernel written by :func:`write_kernel` (sidecar and sigma optional)."""
    path = Path(path)
    img = read_image(path)
    size = img.GetSize()
    if len(set(size)) != 1 or size[0] % 2 == 0:
        raise InputError(f"{path}: a kernel must be n×n×n with n odd, got size {size}")
    meta: dict[str, Any] = {}
    side = _sidecar(path)
    if side.is_file():
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(f"{side}: not valid JSON ({exc.msg})") from None
    sig_path = _sigma_path(path)
    sigma = read_image(sig_path) if sig_path.is_file() else None
    return Kernel(img, sigma, meta)


def read_octant_table(path: str | os.PathLike[str], voxel_mm: float) -> sitk.Image:
    """Read a one-octant voxel S-value table (``i j k S`` lines) into a full kernel image.

    The format of the Lanconelli et al. 2012 database (Phys Med Biol 57:517,
    doi:10.1088/0031-9155/57/2/517): a title line, a header line, then tab-separated
    ``i, j, k, S`` for i, j, k = 0 … n, latin-1 text. The octant is mirrored into a
    (2n+1)³ kernel (i → x, j → y, k → z), values unchanged (mGy/(MBq·s)).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="latin-1")
    except OSError as exc:
        raise InputError(f"{path}: cannot read voxel S-value table ({exc.strerror})") from None
    rows = []
    for ln in text.splitlines():
        parts = re.split(r"[\t ,;]+", ln.strip())
        if len(parts) >= 4 and all(re.fullmatch(r"-?\d+", p) for p in parts[:3]):
            try:
                rows.append((int(parts[0]), int(parts[1]), int(parts[2]), float(parts[3])))
            except ValueError:
                raise InputError(f"{path}: cannot read value in line {ln!r}") from None
    if not rows:
        raise InputError(f"{path}: no 'i j k S' rows found")
    n = max(max(r[:3]) for r in rows)
    octant = np.full((n + 1,) * 3, np.nan)
    for i, j, k, s in rows:
        octant[i, j, k] = s
    if np.isnan(octant).any():
        raise InputError(f"{path}: the octant table is incomplete (expected all of 0..{n}³)")
    idx = np.abs(np.arange(-n, n + 1))
    full_ijk = octant[np.ix_(idx, idx, idx)]  # axes (i, j, k) = (x, y, z)
    return _centred_image(np.transpose(full_ijk, (2, 1, 0)), (float(voxel_mm),) * 3)


def _find_cached(folder: Path, stem: str, size: int, n_decays: int) -> Path | None:
    best = None
    for side in sorted(folder.glob(f"{stem}_s*_n*.json")):
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        img = side.with_name(side.name[: -len(".json")] + ".nii.gz")
        if img.is_file() and meta.get("size", 0) >= size and meta.get("n_decays", 0) >= n_decays:
            rank = (meta["n_decays"], -meta["size"])
            if best is None or rank > best[0]:
                best = (rank, img)
    return None if best is None else best[1]


def make_kernel(
    nuclide: str,
    voxel_mm: float | Sequence[float],
    material: Material | str = "soft-tissue-icru",
    size: int = 11,
    emissions: str | Iterable[Emission | str] | None = None,
    n_decays: int = 1_000_000,
    seed: int = 0,
    device: str = "cpu",
    *,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    world_margin_mm: float | None = None,
    symmetric: bool = True,
    n_batches: int = 20,
    progress: Callable[[int, int], None] | None = None,
) -> Kernel:
    """Make (or fetch from the cache) a dose voxel kernel by Monte Carlo.

    Parameters
    ----------
    nuclide : str
        E.g. ``"Lu-177"``.
    voxel_mm : float or (float, float, float)
        Voxel size (mm), isotropic or (x, y, z).
    material : Material or str
        Homogeneous medium (default ICRU four-component soft tissue, ρ = 1.00 g/cm³).
    size : int
        Kernel edge in voxels (odd, ≥ 3).
    emissions : str or iterable, optional
        Radiations included (default all: β, IC, Auger, γ, X).
    n_decays : int
        Decays simulated.
    seed : int
        Seed of the simulation.
    device : str
        ``"cpu"`` or ``"cuda"``.
    cache : bool
        Look up and store the kernel in the cache folder.
    cache_dir : path, optional
        Cache root (see the module docstring).
    world_margin_mm : float, optional
        Homogeneous medium simulated beyond the kernel on each side (mm). Default: 100 mm
        when photons are included (backscatter from an effectively infinite medium), else the
        CSDA range of the most energetic electron.
    symmetric : bool
        Average over the grid's symmetries (see :func:`symmetrize`).
    n_batches : int
        Statistical batches.
    progress : callable, optional
        ``progress(done, total)`` during the simulation.

    Returns
    -------
    Kernel
        ``image`` in mGy/(MBq·s), ``sigma``, and ``metadata`` (also the JSON sidecar).
    """
    from dosimetry import __version__
    from dosimetry.dose.mc.engine import MC_PHYSICS_VERSION, MCSettings, simulate
    from dosimetry.materials.electron import csda_range_gcm2

    nuc = get_nuclide(nuclide)
    voxel = _voxel_tuple(voxel_mm)
    mat = get_material(material) if isinstance(material, str) else material
    chosen = parse_emissions(emissions)
    if isinstance(size, bool) or not isinstance(size, int) or size < 3 or size % 2 == 0:
        raise InputError(f"kernel size must be an odd integer ≥ 3, got {size!r}")
    if isinstance(n_decays, bool) or not isinstance(n_decays, int) or n_decays < n_batches:
        raise InputError(f"n_decays must be an integer ≥ {n_batches}, got {n_decays!r}")

    folder = kernel_cache_dir(cache_dir)
    stem = _cache_stem(nuc.name, voxel, mat, chosen)
    if cache and folder.is_dir():
        hit = _find_cached(folder, stem, size, n_decays)
        if hit is not None:
            return read_kernel(hit).crop(size)

    spectrum = source_spectrum(nuc, chosen)
    has_photons = spectrum.photon_yield.size > 0
    if world_margin_mm is None:
        if has_photons:
            world_margin_mm = 100.0
        else:
            e_max = max(spectrum.max_energy_mev, 1e-3 * 1.001)
            world_margin_mm = float(csda_range_gcm2(mat, max(e_max, 1.001e-3))) * 10.0 \
                / mat.density_gcm3
    if not world_margin_mm >= 0:
        raise InputError(f"world_margin_mm must be ≥ 0, got {world_margin_mm!r}")
    margin = [math.ceil(world_margin_mm / v) for v in voxel[::-1]]  # z, y, x
    shape = tuple(size + 2 * m for m in margin)
    src = np.zeros(shape)
    c = tuple(s // 2 for s in shape)
    src[c] = 1.0
    mat_idx = np.zeros(shape, dtype=np.int16)
    rho = np.full(shape, mat.density_gcm3, dtype=np.float32)
    roi = tuple(slice(m, m + size) for m in margin)
    settings = MCSettings(n_decays=int(n_decays), seed=int(seed), device=device,
                          n_batches=n_batches)
    tally = simulate(src, mat_idx, rho, [mat], voxel, spectrum, settings, roi=roi,
                     progress=progress)
    mass_kg = mat.density_gcm3 * float(np.prod(voxel)) * 1e-3 * 1e-3
    to_kernel = JOULE_PER_MEV / mass_kg * _GY_PER_DECAY_TO_KERNEL
    batches = tally.roi_batches * to_kernel
    if symmetric:
        batches = np.stack([symmetrize(b, voxel) for b in batches])
    mean = batches.mean(axis=0)
    sem = batches.std(axis=0, ddof=1) / math.sqrt(batches.shape[0])
    centre = (size // 2,) * 3
    meta = {
        "nuclide": nuc.name,
        "voxel_mm": list(voxel),
        "size": size,
        "material": mat.to_dict(),
        "emissions": [e.value for e in chosen],
        "n_decays": tally.n_decays,
        "n_batches": tally.n_batches,
        "seed": int(seed),
        "device": str(device),
        "symmetrized": bool(symmetric),
        "world_margin_mm": float(world_margin_mm),
        "unit": KERNEL_UNIT,
        "centre_value": float(mean[centre]),
        "centre_relative_uncertainty": float(sem[centre] / mean[centre]) if mean[centre] else None,
        "electron_energy_per_decay_mev": spectrum.electron_energy_per_decay_mev,
        "photon_energy_per_decay_mev": spectrum.photon_energy_per_decay_mev,
        "energy_balance_mev": {"emitted": tally.emitted_mev, "deposited": tally.deposited_mev,
                               "escaped": tally.escaped_mev},
        "code_version": __version__,
        "mc_physics_version": MC_PHYSICS_VERSION,
        "generator": "rptdose fast voxel Monte Carlo (dosimetry.dose.mc)",
    }
    kernel = Kernel(_centred_image(mean, voxel), _centred_image(sem, voxel), meta)
    if cache:
        target = folder / f"{stem}_s{size}_n{tally.n_decays}.nii.gz"
        try:
            write_kernel(kernel, target)
        except OSError as exc:
            warnings.warn(f"kernel not cached: cannot write {target} ({exc.strerror})",
                          UserWarning, stacklevel=2)
    return kernel
