"""Monte Carlo scale-out and the GATE bridge: split fast-MC runs on Dask, GATE export/build.

Prints, in one run:

* the fast MC on a digital-patient-like phantom (Lu-177, 64×64×48 voxels of 4.8 mm, soft
  tissue with a lung slab and a bone block; activity in a liver-like ellipsoid and two
  lesions): one run in this process (the baseline), then the same decays split into 4 seeded
  jobs on a LocalCluster of 2 worker processes (1 torch thread each), merged. Figures: wall
  time, decays/s, speed-up against the baseline, and the merged/single ratio of the median
  relative σ in the active voxels (≈ 1 when the merge combines uncertainties correctly);
* the GATE bridge without Geant4 data: time to export the simulation folder (207 materials,
  images, program) and to build the opengate Simulation from it, for the same phantom.

A real GATE run needs the Geant4 data sets; where they exist (``rptdose mc g4-data``), the run
time per 10⁶ decays is printed too.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np


def _phantom():
    import SimpleITK as sitk

    nz, ny, nx = 48, 64, 64
    z, y, x = np.ogrid[:nz, :ny, :nx]
    hu = np.full((nz, ny, nx), 40.0, np.float32)
    hu[:, :, :14] = -750.0                                        # lung slab
    hu[10:40, 40:52, 44:56] = 700.0                               # bone block
    liver = ((x - 30) / 14.0) ** 2 + ((y - 30) / 12.0) ** 2 + ((z - 24) / 10.0) ** 2 <= 1
    tia = np.where(liver, 2e10, 0.0)
    for cz, cy, cx, r, k in ((24, 30, 18, 3, 8.0), (30, 46, 50, 2, 10.0)):
        tia = np.where((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= r * r, k * 2e10, tia)
    ct = sitk.GetImageFromArray(hu)
    ct.SetSpacing((4.8, 4.8, 4.8))
    tia_img = sitk.GetImageFromArray(tia.astype(np.float32))
    tia_img.CopyInformation(ct)
    return tia_img, ct


def _median_rel_sigma(result) -> float:
    import SimpleITK as sitk

    d = sitk.GetArrayFromImage(result.dose)
    s = sitk.GetArrayFromImage(result.uncertainty)
    m = d > 0.2 * d.max()
    return float(np.median(s[m] / d[m]))


def _bench_split(quick: bool) -> None:
    import torch

    from dosimetry.dose.engines import dose_mc
    from dosimetry.dose.mc.split import dose_mc_split

    torch.set_num_threads(1)
    tia, ct = _phantom()
    n = 200_000 if quick else 1_000_000
    t0 = time.perf_counter()
    single = dose_mc(tia, "Lu-177", ct, n_decays=n, seed=1)
    t_single = time.perf_counter() - t0
    t0 = time.perf_counter()
    split = dose_mc_split(tia, "Lu-177", ct, n_decays=n, n_jobs=4, seed=1, n_workers=2)
    t_split = time.perf_counter() - t0
    s1, s2 = _median_rel_sigma(single), _median_rel_sigma(split)
    print(f"fast MC, Lu-177, {n:.0e} decays, 64×64×48 × 4.8 mm, 1 torch thread per process:")
    print(f"  one run in-process (baseline): {t_single:7.1f} s  {n / t_single:9.0f} decays/s  "
          f"median σ/D {100 * s1:.2f} %")
    print(f"  4 jobs on 2 Dask workers     : {t_split:7.1f} s  {n / t_split:9.0f} decays/s  "
          f"median σ/D {100 * s2:.2f} %")
    print(f"  speed-up {t_single / t_split:.2f}× (2 workers; cluster start included); merged/"
          f"single σ ratio {s2 / s1:.3f}; complete={split.metadata['complete']}")


def _bench_gate(quick: bool) -> None:
    from dosimetry.dose.gate.bridge import GateSettings, build_exported, export_simulation
    from dosimetry.dose.gate.g4data import G4DataMissingError, find_g4_data, opengate_data_folder

    if opengate_data_folder() is None:
        print("GATE: opengate is not installed (pip install 'rptdose[gate]'); skipped")
        return
    tia, ct = _phantom()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "sim"
        t0 = time.perf_counter()
        export_simulation(tia, ct, "Lu-177", folder, GateSettings(n_decays=1_000_000, threads=2))
        t_export = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, parts = build_exported(folder)
        t_build = time.perf_counter() - t0
        print(f"GATE bridge (no run): export {t_export:.2f} s, build the opengate Simulation "
              f"{t_build:.2f} s ({len(parts['ct'].voxel_materials)} materials, "
              f"{parts['plan']['sources'][0]['n_per_thread']} primaries per thread)")
        try:
            data = find_g4_data()
        except G4DataMissingError:
            print("GATE run: Geant4 data sets not installed here; no run time to report")
            return
        from dosimetry.dose.gate.bridge import run_simulation

        n = 20_000 if quick else 100_000
        t0 = time.perf_counter()
        run_simulation(folder, g4_data=data, decays=n, threads=2)
        dt = time.perf_counter() - t0
        print(f"GATE run: {n} Lu-177 ion decays on 2 threads in {dt:.1f} s "
              f"({n / dt:.0f} decays/s, process start included)")


def run(quick: bool = False) -> None:
    _bench_split(quick)
    _bench_gate(quick)
