"""Dose engines: DVK convolution speed against scipy, and Monte Carlo throughput.

Prints, in one run:

* DVK: :func:`dosimetry.dose.convolution.fft_convolve_same` (the DVK engine's convolution) and
  the whole :func:`dosimetry.dose.engines.dose_dvk` call on a 256×256×200 TIA map, against
  ``scipy.signal.fftconvolve(tia, kernel, mode="same")`` with the same 11³ kernel — for a
  body-like TIA map (zero outside the body, the usual case) and for one that is non-zero
  everywhere (the worst case for our padding), in float64 (as TIA maps usually arrive) and
  float32;
* MC: decays/s of the fast Monte Carlo on the CPU with 2 torch threads, Lu-177 and I-131 (all
  emissions), uniform source in a 100 g soft-tissue sphere inside a 30 cm soft-tissue cube
  (4.8 mm voxels), and the relative standard uncertainty reached per 10⁶ decays for the mean
  dose to the sphere and for a typical (median) voxel of it.
"""

from __future__ import annotations

import math
import time

import numpy as np


def _best(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _body_tia(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    nz, ny, nx = shape
    z, y, x = np.ogrid[:nz, :ny, :nx]
    body = ((x - nx / 2) / (0.42 * nx)) ** 2 + ((y - ny / 2) / (0.30 * ny)) ** 2 <= 1.0
    body = body & (z >= 8) & (z < nz - 8)
    tia = np.where(body, rng.gamma(2.0, 5e8, shape), 0.0)
    for cz, cy, cx, r in ((100, 110, 90, 12), (90, 140, 170, 8), (120, 120, 128, 20)):
        blob = (z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= r * r
        tia = np.where(blob, tia * 20.0, tia)
    return tia


def _bench_dvk(quick: bool) -> None:
    import scipy.signal
    import SimpleITK as sitk

    from dosimetry.dose.convolution import fft_convolve_same
    from dosimetry.dose.engines import dose_dvk
    from dosimetry.dose.kernels import make_kernel

    shape = (200, 256, 256)
    spacing = 4.8
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    kernel = make_kernel("Lu-177", spacing, "soft-tissue-icru", 11, "all",
                         100_000 if quick else 1_000_000, seed=0)
    print(f"kernel: Lu-177 11³, {spacing} mm, all emissions, "
          f"{kernel.metadata['n_decays']} decays ({time.perf_counter() - t0:.1f} s, cached "
          "after the first run)")
    k64 = kernel.array
    k32 = k64.astype(np.float32)
    repeat = 2 if quick else 3
    for label, tia in (("body-like TIA (zero outside)", _body_tia(shape, rng)),
                       ("TIA non-zero everywhere", rng.gamma(2.0, 5e8, shape))):
        print(f"DVK 256×256×200, {label}:")
        t_ref64, ref = _best(lambda t=tia: scipy.signal.fftconvolve(t, k64, mode="same"),
                             repeat)
        t32 = tia.astype(np.float32)
        t_ref32, _ = _best(lambda t=t32: scipy.signal.fftconvolve(t, k32, mode="same"), repeat)
        t_ours, ours = _best(lambda t=tia: fft_convolve_same(t, k64), repeat)
        img = sitk.GetImageFromArray(tia)
        img.SetSpacing((spacing,) * 3)
        t_engine, _ = _best(lambda i=img: dose_dvk(i, "Lu-177", kernel=kernel), repeat)
        err = float(np.abs(ours - ref).max() / np.abs(ref).max())
        print(f"  scipy.signal.fftconvolve float64 {t_ref64:6.3f} s | float32 {t_ref32:6.3f} s")
        print(f"  rptdose fft_convolve_same        {t_ours:6.3f} s → {t_ref64 / t_ours:4.1f}× "
              f"vs float64, {t_ref32 / t_ours:4.1f}× vs float32 (max rel. diff {err:.1e})")
        print(f"  dose_dvk (whole engine call)     {t_engine:6.3f} s → "
              f"{t_ref64 / t_engine:4.1f}× vs float64, {t_ref32 / t_engine:4.1f}× vs float32")


def _bench_mc(quick: bool) -> None:
    import torch

    from dosimetry.dose.emissions import source_spectrum
    from dosimetry.dose.mc.engine import MCSettings, simulate
    from dosimetry.materials import get_material

    torch.set_num_threads(2)
    soft = get_material("soft-tissue-icru")
    h = 4.8
    n = 64  # 30.7 cm cube
    c = (np.arange(n) - (n - 1) / 2) * h
    zz, yy, xx = np.meshgrid(c, c, c, indexing="ij")
    radius = (3 * 100.0 / (4 * math.pi * soft.density_gcm3)) ** (1 / 3) * 10.0  # mm, 100 g
    sphere = xx**2 + yy**2 + zz**2 <= radius**2
    idx = np.zeros(sphere.shape, dtype=np.int16)
    rho = np.full(sphere.shape, soft.density_gcm3, dtype=np.float32)
    lo = np.argwhere(sphere).min(0)
    hi = np.argwhere(sphere).max(0) + 1
    roi = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    mask = sphere[roi]
    mass_g = sphere.sum() * h**3 * 1e-3 * soft.density_gcm3
    n_decays = 200_000 if quick else 1_000_000
    print(f"MC: 100 g soft-tissue sphere (r = {radius:.1f} mm, {sphere.sum()} voxels of "
          f"{h} mm, {mass_g:.1f} g) in a {n * h / 10:.1f} cm cube; CPU, "
          f"{torch.get_num_threads()} torch threads; {n_decays} decays, 20 batches")
    for nuclide in ("Lu-177", "I-131"):
        spec = source_spectrum(nuclide, "all")
        tally = simulate(sphere.astype(float), idx, rho, [soft], (h, h, h), spec,
                         MCSettings(n_decays=n_decays, seed=1, n_batches=20), roi=roi)
        organ = tally.roi_batches[:, mask].sum(axis=1)
        rel_organ = organ.std(ddof=1) / math.sqrt(organ.size) / organ.mean()
        vox = tally.energy_mev[sphere]
        rel_vox = np.median(tally.energy_sem_mev[sphere] / vox)
        scale = math.sqrt(tally.n_decays / 1e6)
        print(f"  {nuclide}: {tally.decays_per_second:9.0f} decays/s; per 10⁶ decays: organ "
              f"mean dose ±{100 * rel_organ * scale:.3f} %, median voxel "
              f"±{100 * rel_vox * scale:.2f} %; escaped "
              f"{tally.escaped_mev / tally.emitted_mev:.1%} of the emitted energy")


def run(quick: bool = False) -> None:
    """Print DVK and MC figures (``quick``: smaller kernel statistics and MC runs)."""
    import os

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"(1-min load average {load:.1f} on {os.cpu_count()} CPUs: timings scale with it)")
    _bench_dvk(quick)
    _bench_mc(quick)
