"""Far-field photon dose beyond a dose voxel kernel's edge.

A dose voxel kernel is cropped to a cube (±50 mm by default, :func:`dosimetry.dose.engines.
dose_dvk`). Electrons of Lu-177 and I-131 stop within a few millimetres, but the photons do
not: in soft tissue the 208 keV line of Lu-177 has a mean free path of about 7 cm and the
364 keV line of I-131 about 9 cm, and in an infinite medium about 80 % of the γ energy of
either nuclide is absorbed more than 50 mm from the decay (81 % Lu-177, 78 % I-131, from the
tables below).
Without it, organs with little uptake of their own (stomach, heart, muscle) read low, since
most of their dose is crossfire from distant organs.

This module adds that part back: the absorbed dose per decay in ICRU soft tissue at distance r
from a point source, D(r), for each photon emission of a nuclide, is tabulated once by our own
Monte Carlo (:func:`make_profile`; photon transport of :mod:`dosimetry.dose.mc` in a
homogeneous 1 m medium, radial shells), shipped as ``data/far_field_<nuclide>.json``, and
turned on any grid into a *far-field kernel*: D(r) at each voxel centre outside the DVK's cube
and 0 inside it (:func:`far_field_kernel`), so DVK + far field never counts a photon twice.
Convolving the TIA map with it (FFT) gives the missing dose.

Approximations (stated in the engines' metadata): the medium is infinite homogeneous soft
tissue, so photons that would leave a real patient are counted as scattered back (the far
field is overestimated near the body surface), and lung or bone along the path is ignored. No
density correction is applied to this term: at these photon energies the mass energy-absorption
coefficient of lung equals that of soft tissue and that of bone is within about 10 % (Hubbell
& Seltzer, NIST IR 5632, 1995), so the dose per unit fluence barely depends on the density.

Regenerate the tables with ``python -m dosimetry.dose.far_field`` (fixed seeds; see
:data:`PROFILE_SETTINGS`).
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dosimetry.dose.emissions import Emission, parse_emissions
from dosimetry.errors import InputError
from dosimetry.io.atomic import atomic_write_text

DATA_DIR = Path(__file__).resolve().parent / "data"
#: Emissions a far-field table exists for (electrons never reach beyond a kernel's edge).
FAR_FIELD_EMISSIONS: tuple[Emission, ...] = (Emission.GAMMA, Emission.X)
#: How the shipped tables were made (``python -m dosimetry.dose.far_field``).
PROFILE_SETTINGS: dict[str, Any] = {
    "voxel_mm": 8.0,
    "size": 121,           # roi edge in voxels: ±484 mm
    "world_margin_mm": 160.0,
    "n_decays": 2_000_000,
    "n_batches": 10,
    "seed": 17,
    "shell_mm": 8.0,
    "r_min_mm": 24.0,
    "material": "soft-tissue-icru",
}


@dataclass(frozen=True)
class FarFieldProfile:
    """Radial dose per decay of one photon emission of a nuclide in soft tissue.

    ``r_mm`` ascending, ``dose`` in mGy/(MBq·s) (Gy per decay × 1e9, the kernels' unit) at the
    shell-averaged radius, ``sigma`` its standard uncertainty.
    """

    nuclide: str
    emission: Emission
    r_mm: np.ndarray
    dose: np.ndarray
    sigma: np.ndarray
    metadata: dict[str, Any]

    def __call__(self, r_mm: np.ndarray) -> np.ndarray:
        """D(r) by log-linear interpolation of r²·D(r); 0 beyond the table's last radius."""
        r = np.asarray(r_mm, dtype=np.float64)
        y = np.log(np.maximum(self.dose * self.r_mm ** 2, 1e-300))
        out = np.exp(np.interp(r, self.r_mm, y)) / np.maximum(r, 1e-9) ** 2
        out[r > self.r_mm[-1]] = 0.0
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"nuclide": self.nuclide, "emission": self.emission.value,
                "r_mm": [round(float(v), 3) for v in self.r_mm],
                "dose_mgy_per_mbq_s": [float(f"{v:.6g}") for v in self.dose],
                "sigma_mgy_per_mbq_s": [float(f"{v:.3g}") for v in self.sigma],
                "metadata": self.metadata}


def _stem(nuclide: str) -> str:
    return "far_field_" + nuclide.lower().replace("-", "")


def profile_path(nuclide: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the far-field table of ``nuclide`` is (shipped ``data/`` folder by default)."""
    return Path(data_dir or DATA_DIR) / f"{_stem(nuclide)}.json"


@lru_cache(maxsize=8)
def _read(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise InputError(f"{path}: far-field photon table not found (make it with "
                         "'python -m dosimetry.dose.far_field')") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the far-field photon table ({exc})") from None


def load_profiles(nuclide: str, emissions: str | Iterable[Emission | str] | None = None,
                  data_dir: str | os.PathLike[str] | None = None
                  ) -> tuple[FarFieldProfile, ...]:
    """The far-field profiles of the photon emissions in ``emissions`` (default all)."""
    from dosimetry.nuclides import get_nuclide

    nuc = get_nuclide(nuclide).name
    chosen = [e for e in parse_emissions(emissions) if e in FAR_FIELD_EMISSIONS]
    if not chosen:
        return ()
    path = profile_path(nuc, data_dir)
    doc = _read(str(path))
    out = []
    for e in chosen:
        entry = doc.get("profiles", {}).get(e.value)
        if entry is None:
            raise InputError(f"{path}: no '{e.value}' profile in the far-field table")
        try:
            r = np.asarray(entry["r_mm"], dtype=np.float64)
            d = np.asarray(entry["dose_mgy_per_mbq_s"], dtype=np.float64)
            s = np.asarray(entry["sigma_mgy_per_mbq_s"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path}: invalid '{e.value}' profile ({exc})") from None
        if r.ndim != 1 or r.size < 2 or d.shape != r.shape or np.any(np.diff(r) <= 0):
            raise InputError(f"{path}: '{e.value}' profile must have ascending radii and one "
                             "dose per radius")
        extra = {k: v for k, v in entry.items()
                 if k not in ("r_mm", "dose_mgy_per_mbq_s", "sigma_mgy_per_mbq_s")}
        out.append(FarFieldProfile(nuc, e, r, d, s, {**doc.get("metadata", {}), **extra}))
    return tuple(out)


def far_field_kernel(profiles: Iterable[FarFieldProfile], spacing_xyz: Iterable[float],
                     inner_half: Iterable[int], extent: Iterable[int]) -> np.ndarray:
    """Far-field kernel (z, y, x) in mGy/(MBq·s) on a grid of ``spacing_xyz`` (mm).

    ``inner_half`` (z, y, x) is the half-size in voxels of the DVK cube it complements: the
    kernel is 0 where every |offset| ≤ inner_half and Σ D(r) at the voxel centre elsewhere.
    ``extent`` (z, y, x) is the largest offset needed in voxels (the map's size − 1): the
    kernel is (2·extent + 1) per axis, cut to the profiles' range.
    """
    profiles = tuple(profiles)
    sp = np.asarray(tuple(spacing_xyz), dtype=np.float64)[::-1]  # z, y, x
    inner = np.asarray(tuple(inner_half), dtype=np.int64)
    ext = np.asarray(tuple(extent), dtype=np.int64)
    r_max = max((float(p.r_mm[-1]) for p in profiles), default=0.0)
    half = np.minimum(ext, np.ceil(r_max / sp).astype(np.int64))
    half = np.maximum(half, 0)
    axes = [np.arange(-h, h + 1, dtype=np.float64) * s for h, s in zip(half, sp, strict=True)]
    r = np.sqrt(axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2
                + axes[2][None, None, :] ** 2)
    k = np.zeros(r.shape, dtype=np.float64)
    for p in profiles:
        k += p(r)
    idx = [np.abs(np.arange(-h, h + 1)) <= i for h, i in zip(half, inner, strict=True)]
    k[np.ix_(*idx)] = 0.0
    return k.astype(np.float32)


def far_field_dose(tia: np.ndarray, spacing_xyz: Iterable[float], nuclide: str,
                   inner_half: Iterable[int],
                   emissions: str | Iterable[Emission | str] | None = None, *,
                   data_dir: str | os.PathLike[str] | None = None,
                   workers: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The far-field photon dose (Gy, float32, the TIA map's shape) and its metadata.

    ``tia`` (z, y, x) in Bq·s per voxel; ``inner_half`` the DVK cube's half-size (voxels).
    """
    from dosimetry.dose.convolution import fft_convolve_same

    profiles = load_profiles(nuclide, emissions, data_dir)
    meta: dict[str, Any] = {"emissions": [p.emission.value for p in profiles],
                            "inner_half_voxels": [int(v) for v in inner_half]}
    if not profiles:
        meta["note"] = "no photon emission selected"
        return np.zeros(tia.shape, dtype=np.float32), meta
    ext = [n - 1 for n in tia.shape]
    k = far_field_kernel(profiles, spacing_xyz, inner_half, ext)
    dose = fft_convolve_same(np.asarray(tia, dtype=np.float32), k, workers=workers)
    dose *= np.float32(1e-9)  # mGy/(MBq·s) × Bq·s → Gy
    np.maximum(dose, 0.0, out=dose)  # FFT round-off
    meta.update({
        "kernel_shape": [int(v) for v in k.shape],
        "r_max_mm": float(max(p.r_mm[-1] for p in profiles)),
        "table": str(profile_path(profiles[0].nuclide, data_dir).name),
        "model": "photon point kernel D(r) in infinite ICRU soft tissue by our MC, outside "
                 "the DVK cube; no density correction",
    })
    return dose, meta


# ============================================================================ generation
def make_profile(nuclide: str, emission: Emission | str, *, n_decays: int | None = None,
                 seed: int | None = None, device: str = "cpu") -> FarFieldProfile:
    """Tabulate D(r) for one photon emission by our Monte Carlo (see :data:`PROFILE_SETTINGS`).

    A point source in the centre voxel of a homogeneous soft-tissue cube; the voxel doses are
    averaged over shells of ``shell_mm`` by voxel-centre radius (the shell's mean radius is
    recorded), the uncertainty from the MC batches.
    """
    from dosimetry import __version__
    from dosimetry.dose.kernels import make_kernel
    from dosimetry.dose.mc.engine import MC_PHYSICS_VERSION
    from dosimetry.nuclides import get_nuclide

    cfg = dict(PROFILE_SETTINGS)
    if n_decays is not None:
        cfg["n_decays"] = int(n_decays)
    if seed is not None:
        cfg["seed"] = int(seed)
    em = Emission(emission)
    if em not in FAR_FIELD_EMISSIONS:
        raise InputError(f"far-field profiles exist for photons only, not {em.value!r}")
    nuc = get_nuclide(nuclide).name
    kern = make_kernel(nuc, cfg["voxel_mm"], cfg["material"], cfg["size"], [em],
                       cfg["n_decays"], seed=cfg["seed"], device=device, cache=False,
                       world_margin_mm=cfg["world_margin_mm"], n_batches=cfg["n_batches"])
    a = kern.array.astype(np.float64)
    s = sitk.GetArrayFromImage(kern.sigma).astype(np.float64)
    n = a.shape[0]
    c = n // 2
    g = (np.arange(n) - c) * cfg["voxel_mm"]
    r = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
    edges = np.arange(cfg["r_min_mm"], c * cfg["voxel_mm"] + 1e-9, cfg["shell_mm"])
    rs, ds, ss = [], [], []
    for lo, hi in itertools.pairwise(edges):
        m = (r >= lo) & (r < hi)
        k = int(m.sum())
        if k == 0:
            continue
        rs.append(float(r[m].mean()))
        ds.append(float(a[m].mean()))
        # shells average symmetrised voxels, so their errors are correlated: take the mean σ
        # over √(number of distinct octant voxels) rather than over √k
        ss.append(float(s[m].mean() / math.sqrt(max(k / 48.0, 1.0))))
    rs, ds, ss = truncate_noisy(np.array(rs), np.array(ds), np.array(ss))
    meta = {"command": "python -m dosimetry.dose.far_field", "settings": cfg,
            "generator": "rptdose fast voxel Monte Carlo (dosimetry.dose.mc), make_kernel",
            "mc_physics_version": MC_PHYSICS_VERSION, "code_version": __version__,
            "unit": "mGy/(MBq·s) = 1e-9 Gy per decay",
            "photon_energy_per_decay_mev": kern.metadata.get("photon_energy_per_decay_mev"),
            "energy_balance_mev": kern.metadata.get("energy_balance_mev")}
    return FarFieldProfile(nuc, em, rs, ds, ss, meta)


#: A table ends before the first shell with no dose or a relative σ above this (where the
#: emission is absorbed: the 30 keV X-rays of I-131 within about 30 cm).
MAX_RELATIVE_SIGMA = 0.25


def truncate_noisy(r: np.ndarray, d: np.ndarray, s: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The profile up to (not including) its first empty or too noisy shell."""
    bad = ~(d > 0) | (s > MAX_RELATIVE_SIGMA * np.where(d > 0, d, 1.0))
    n = int(np.argmax(bad)) if bad.any() else d.size
    n = max(n, 2)
    return r[:n], d[:n], s[:n]


def write_profiles(nuclide: str, profiles: Iterable[FarFieldProfile],
                   data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write the table of a nuclide atomically."""
    profiles = tuple(profiles)
    path = profile_path(nuclide, data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    common = ("command", "settings", "generator", "mc_physics_version", "code_version", "unit")
    doc = {"nuclide": profiles[0].nuclide if profiles else nuclide,
           "metadata": {k: v for k, v in (profiles[0].metadata if profiles else {}).items()
                        if k in common},
           "profiles": {}}
    for p in profiles:
        entry = {k: v for k, v in p.to_dict().items()
                 if k in ("r_mm", "dose_mgy_per_mbq_s", "sigma_mgy_per_mbq_s")}
        entry.update({k: v for k, v in p.metadata.items() if k not in common})
        doc["profiles"][p.emission.value] = entry
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    _read.cache_clear()
    return path


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - data generation
    import argparse

    ap = argparse.ArgumentParser(description="Tabulate the far-field photon dose profiles.")
    ap.add_argument("--nuclide", action="append", default=None)
    ap.add_argument("--n-decays", type=int, default=None)
    ap.add_argument("-o", "--output", default=None)
    args = ap.parse_args(argv)
    for nuc in args.nuclide or ["Lu-177", "I-131"]:
        profs = [make_profile(nuc, e, n_decays=args.n_decays) for e in FAR_FIELD_EMISSIONS]
        print(write_profiles(nuc, profs, args.output))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
