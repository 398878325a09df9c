"""Monte Carlo targets for deep-dose training patches, and loading patches for training.

The patches (inputs and DVK dose) come from :func:`phantoms.dose_data.make_dose_patches`;
:func:`simulate_targets` adds the fast-MC dose of each (``target_NNNNN.npz``: ``mc`` and
``mc_sigma`` in units of the patch's ``dvk_scale``). The transport tables are built once per
folder (``transport.pt``, with the materials and the source spectrum) so the MC can run where
only torch and numpy are installed, e.g. on a GPU machine.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dosimetry.errors import InputError

__all__ = ["load_patches", "prepare_transport", "simulate_targets"]


def _index(folder: Path) -> dict[str, Any]:
    path = folder / "index.json"
    if not path.is_file():
        raise InputError(f"{folder}: no index.json; not a deep-dose patch folder "
                         "(make one with `rptdose train dose`)")
    return json.loads(path.read_text())


def prepare_transport(folder: str | Path) -> Path:
    """Build the MC transport tables for all patches of ``folder`` → ``transport.pt``."""
    from dosimetry.dose.emissions import source_spectrum
    from dosimetry.dose.mc.tables import build_tables
    from dosimetry.materials.hu import ct_to_materials

    folder = Path(folder)
    index = _index(folder)
    materials = ct_to_materials(np.zeros((1, 1, 1)), what="probe").materials
    if [m.name for m in materials] != index["materials"]:
        raise InputError(f"{folder}: the material bins differ from this version's; "
                         "regenerate the patches")
    max_rho = np.zeros(len(materials))
    for row in index["patches"]:
        with np.load(folder / row["file"]) as z:
            mat, rho = z["material"], z["density"].astype(np.float32)
        np.maximum.at(max_rho, mat.ravel(), rho.ravel())
    spec = source_spectrum(index["nuclide"], None)
    e_max = max(spec.max_energy_mev * 1.01, 1.0)
    tables = build_tables(materials, [float(v) * 1.001 for v in max_rho], "cpu",
                          photon_max_mev=e_max, electron_max_mev=e_max)
    out = folder / "transport.pt"
    tmp = out.with_suffix(".tmp")
    torch.save({"tables": tables, "materials": materials, "spectrum": spec}, tmp)
    tmp.replace(out)
    return out


def _tables_to(tables: Any, device: torch.device) -> Any:
    changes = {f.name: getattr(tables, f.name).to(device)
               for f in dataclasses.fields(tables) if torch.is_tensor(getattr(tables, f.name))}
    return dataclasses.replace(tables, **changes)


def simulate_targets(folder: str | Path, n_decays: int, *, device: str = "cpu", seed: int = 0,
                     chunk_decays: int = 100_000, overwrite: bool = False,
                     progress: Callable[[int, int], None] | None = None) -> int:
    """Run the fast MC on every patch of ``folder`` without a target yet; returns how many.

    Each patch gets ``n_decays`` decays with seed ``seed + patch number``; the dose is
    E·J/MeV/(ρV) × ΣÑ in the patch's ``dvk_scale`` units, with its batch-method σ.
    """
    from dosimetry.dose.mc.engine import MCSettings, energy_to_dose_gy, simulate

    folder = Path(folder)
    index = _index(folder)
    rows = index["patches"]
    todo = [row for row in rows if overwrite
            or not (folder / row["file"].replace("patch_", "target_")).is_file()]
    if not todo:
        return 0
    tp = folder / "transport.pt"
    if not tp.is_file():
        prepare_transport(folder)
    blob = torch.load(tp, weights_only=False)
    dev = torch.device(device)
    tables = _tables_to(blob["tables"], dev)
    materials, spec = blob["materials"], blob["spectrum"]
    done = 0
    for i, row in enumerate(rows):
        target = folder / row["file"].replace("patch_", "target_")
        if target.is_file() and not overwrite:
            continue
        with np.load(folder / row["file"]) as z:
            mat = z["material"].astype(np.int16)
            rho = z["density"].astype(np.float32)
            tia = z["tia"].astype(np.float64)
            spacing = tuple(float(s) for s in z["spacing"])
            scale = float(z["dvk_scale"])
        settings = MCSettings(n_decays=int(n_decays), seed=int(seed) + i, device=device,
                              n_batches=10, chunk_decays=int(chunk_decays))
        tally = simulate(tia, mat, rho, materials, spacing, spec, settings, tables=tables)
        total = float(tia.sum())
        mc = energy_to_dose_gy(tally.energy_mev, rho, spacing) * total / scale
        sig = energy_to_dose_gy(tally.energy_sem_mev, rho, spacing) * total / scale
        tmp = target.with_name(target.name + ".tmp.npz")
        np.savez_compressed(tmp, mc=mc.astype(np.float32), mc_sigma=sig.astype(np.float32),
                            n_decays=np.int64(tally.n_decays),
                            decays_per_second=np.float64(tally.decays_per_second))
        tmp.replace(target)
        done += 1
        if progress is not None:
            progress(i + 1, len(rows))
    return done


def load_patches(folder: str | Path, *, require_targets: bool = True) -> list[dict[str, Any]]:
    """Patches of ``folder`` as dicts of float32 arrays (``dvk``, ``tia``, ``density``,
    ``mc``, ``mc_sigma`` when present) plus ``spacing`` (mean, mm) and the index row."""
    folder = Path(folder)
    index = _index(folder)
    out = []
    for row in index["patches"]:
        target = folder / row["file"].replace("patch_", "target_")
        if require_targets and not target.is_file():
            raise InputError(f"{target}: MC target missing; run the MC step first")
        with np.load(folder / row["file"]) as z:
            item: dict[str, Any] = {
                "dvk": z["dvk"].astype(np.float32), "tia": z["tia"].astype(np.float32),
                "density": z["density"].astype(np.float32),
                "spacing": float(np.mean(z["spacing"])), "row": row,
                "nuclide": index["nuclide"],
            }
        if target.is_file():
            with np.load(target) as t:
                item["mc"] = t["mc"].astype(np.float32)
                if "mc_sigma" in t.files:
                    item["mc_sigma"] = t["mc_sigma"].astype(np.float32)
        out.append(item)
    return out
