"""``dose_gate``: GATE 10 as a dose engine with the same interface as our other engines.

The TIA map (Bq·s per voxel) and CT go through :func:`dosimetry.dose.gate.bridge.export_simulation`;
the simulation runs in a child process (:func:`~dosimetry.dose.gate.bridge.run_simulation`), or,
with ``jobs > 1``, as that many runs with independent seeds on Dask
(:func:`dosimetry.dose.mc.split.run_jobs`), merged per decay with their statistical
uncertainty. Nothing runs before the Geant4 data are found: without them the call fails at once
with the installation instructions (:class:`~dosimetry.dose.gate.g4data.G4DataMissingError`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dosimetry.dose.emissions import parse_emissions
from dosimetry.dose.gate.bridge import (
    GateSettings,
    export_simulation,
    gate_provenance,
    read_run,
    run_simulation,
)
from dosimetry.dose.gate.g4data import G4Data, find_g4_data, opengate_data_folder
from dosimetry.errors import DependencyError

__all__ = ["dose_gate", "uniform_ct_like"]

#: HU of the uniform phantom used when no CT is given (inside the soft-tissue bin, 19–80 HU,
#: of Schneider et al. 2000; the same medium our other engines assume without a CT).
UNIFORM_SOFT_TISSUE_HU = 40.0


def uniform_ct_like(image: sitk.Image, hu: float = UNIFORM_SOFT_TISSUE_HU) -> sitk.Image:
    """A CT of constant ``hu`` on ``image``'s grid (for dose without a CT)."""
    ct = sitk.Image(image.GetSize(), sitk.sitkFloat32)
    ct.CopyInformation(image)
    return ct + float(hu)


def _gate_job(job, shared: dict[str, Any]):
    """One seed-split GATE run (executed on a Dask worker): run, read back, per-decay tally."""
    from dosimetry.dose.mc.split import PartialTally

    folder = Path(shared["folder"])
    out = folder / f"job_{job.index:03d}"
    data = G4Data({k: Path(v) for k, v in shared["g4_paths"].items()}, shared["g4_origin"])
    run_simulation(folder, out, g4_data=data, seed=job.seed, decays=job.n_decays)
    run = read_run(folder, out)
    return PartialTally(
        mean=sitk.GetArrayFromImage(run.dose_per_decay).astype(np.float64),
        sem=sitk.GetArrayFromImage(run.sem_per_decay).astype(np.float64),
        n_decays=round(run.result["decays_simulated"]),
        job=job,
        metadata={"events": run.result["events"], "elapsed_s": run.result["elapsed_s"],
                  "output": str(out)},
    )


def dose_gate(
    tia: sitk.Image,
    nuclide: str,
    ct: sitk.Image | None = None,
    *,
    n_decays: int = 1_000_000,
    seed: int = 0,
    threads: int = 1,
    source_mode: str = "ion",
    emissions=None,
    dose_grid: str = "tia",
    g4_data: str | os.PathLike | G4Data | None = None,
    work_dir: str | os.PathLike | None = None,
    jobs: int = 1,
    scheduler: str | None = None,
    n_workers: int | None = None,
    allow_partial: bool = False,
    progress: Callable[[int, int], None] | None = None,
    on_line: Callable[[str], None] | None = None,
) -> Any:
    """Absorbed dose by GATE 10 for a TIA map, as a :class:`~dosimetry.dose.engines.DoseResult`.

    Parameters
    ----------
    tia : SimpleITK.Image
        Decays per voxel (Bq·s).
    nuclide : str
    ct : SimpleITK.Image, optional
        CT in HU; without it a uniform soft-tissue phantom on the TIA grid.
    n_decays, seed, threads, source_mode, dose_grid
        See :class:`~dosimetry.dose.gate.bridge.GateSettings`. With ``jobs > 1`` the decays
        are split over the jobs, each with its own seed derived from ``seed``.
    emissions : optional
        Emission selection (spectrum mode only).
    g4_data : path, optional
        Folder with the Geant4 data sets (else searched, see :mod:`~dosimetry.dose.gate.g4data`).
    work_dir : path, optional
        Where the simulation folder and the runs' outputs are kept (default: a new temporary
        folder, kept, whose path is in the metadata).
    jobs, scheduler, n_workers
        Seed-split runs on Dask (LocalCluster by default, or the scheduler at ``scheduler``,
        which must see ``work_dir`` under the same path).
    allow_partial : bool
        When jobs fail for good, return the merge of the others with ``complete: False`` in
        the metadata (default: raise :class:`~dosimetry.dose.mc.split.IncompleteRunError`).
    progress : callable, optional
        ``progress(jobs_done, jobs_total)``.
    on_line : callable, optional
        Receives GATE's log lines (single run).

    Returns
    -------
    DoseResult
        Engine ``gate``; dose (Gy) and its statistical standard uncertainty (Gy) on the TIA
        map's grid (``dose_grid="tia"``) or the CT's.

    Raises
    ------
    DependencyError
        opengate is not installed.
    G4DataMissingError
        No Geant4 data (message says how to install them, and about ``--export``).
    GateRunError
        A run failed (with the end of its log).
    """
    from dosimetry.dose.engines import DoseEngine, DoseResult

    if opengate_data_folder() is None:
        raise DependencyError("GATE is not installed: install the optional extra with "
                              "`pip install 'rptdose[gate]'` (opengate 10)")
    data = g4_data if isinstance(g4_data, G4Data) else find_g4_data(g4_data)
    settings = GateSettings(n_decays=int(n_decays), threads=int(threads), seed=int(seed),
                            source_mode=source_mode, dose_grid=dose_grid)
    no_ct = ct is None
    if no_ct:
        ct = uniform_ct_like(tia)
    root = (Path(work_dir) if work_dir is not None
            else Path(tempfile.mkdtemp(prefix="rptdose-gate-")))
    folder = export_simulation(tia, ct, nuclide, root / "simulation", settings, emissions)
    like = tia if settings.dose_grid.value == "tia" else None
    total = float(np.asarray(sitk.GetArrayViewFromImage(tia), dtype=np.float64).clip(0).sum())
    meta: dict[str, Any] = {"gate": gate_provenance(folder), "g4_data": data.to_dict(),
                            "simulation_folder": str(folder), "total_tia_bq_s": total,
                            "density": "uniform soft tissue (no CT)" if no_ct else
                            "CT, Schneider et al. 2000 materials"}
    if int(jobs) <= 1:
        out = run_simulation(folder, folder / "output", g4_data=data, on_line=on_line)
        run = read_run(folder, out, like=like)
        if progress is not None:
            progress(1, 1)
        meta.update({"n_decays": run.result["decays_simulated"], "events": run.result["events"],
                     "seed": run.result["seed"], "threads": run.result["threads"],
                     "transport_time_s": run.result["elapsed_s"], "jobs": 1, "complete": True})
        dose, sigma = run.dose, run.sigma
    else:
        from dosimetry.dose.mc.split import run_jobs, split_decays

        job_list = split_decays(settings.n_decays, int(jobs), settings.seed)
        shared = {"folder": str(folder.resolve()), "g4_origin": data.origin,
                  "g4_paths": {k: str(v) for k, v in data.paths.items()}}
        merged = run_jobs(_gate_job, job_list, scheduler=scheduler, n_workers=n_workers,
                          progress=progress, shared=shared, allow_partial=allow_partial,
                          name="gate")
        ref = read_run(folder, folder / f"job_{merged.jobs_done[0]:03d}", like=like).dose
        dose = sitk.GetImageFromArray((merged.mean * total).astype(np.float32))
        dose.CopyInformation(ref)
        sigma = sitk.GetImageFromArray((merged.sem * total).astype(np.float32))
        sigma.CopyInformation(ref)
        meta.update({"n_decays": merged.n_decays, "seed": settings.seed, "jobs": int(jobs),
                     "threads": settings.threads, "complete": merged.complete,
                     "jobs_done": list(merged.jobs_done), "failures": merged.metadata["failures"],
                     "job_seeds": [j.seed for j in job_list]})
    return DoseResult(dose, sigma, DoseEngine.GATE, meta["gate"]["nuclide"],
                      parse_emissions(emissions), meta)
