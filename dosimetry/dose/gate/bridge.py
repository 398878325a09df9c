"""The GATE bridge: our CT and TIA map → a GATE 10 simulation folder → dose images in Gy.

Data path
    1. :func:`export_simulation` writes a self-contained folder: ``ct.mhd`` (HU clipped to the
       material table's range, identity direction), ``source.mhd`` (the TIA map, Bq·s per
       voxel, identity direction, negatives set to 0), ``simulation.json`` (geometry of the
       three grids, materials, source, physics, run settings, provenance), ``rptdose_gate.py``
       (:mod:`dosimetry.dose.gate.simulation`, the program that builds and runs it with
       opengate only) and ``README.txt``. The same folder is what ``--export`` hands to a
       machine with GATE and its data.
    2. :func:`run_simulation` runs ``rptdose_gate.py`` in a fresh Python process (Geant4 can be
       initialised once per process, and a missing data file aborts the process) with
       ``GATEONRTD=1`` and the ``G4…DATA`` variables that
       :func:`~dosimetry.dose.gate.g4data.find_g4_data` located, so opengate never
       downloads anything; its log goes to ``gate.log``.
    3. :func:`read_run` reads the normalised images back as ``SimpleITK.Image`` on the TIA
       map's original grid (orientation restored) and checks that GATE's dose grid landed where
       the TIA map is (origin within 1 µm).

Alignment
    GATE's ``ImageVolume`` ignores an image's direction cosines, and opengate's voxel source is
    placed from origin, size and spacing only (opengate issue #421). Both images are therefore
    reoriented to the identity direction first (a pure axis permutation/flip,
    ``SimpleITK.DICOMOrient`` to LPS; exact, no interpolation); oblique images are refused.
    The source and the dose actor are translated by centre(grid) − centre(CT) relative to the
    CT (GATE centres attached objects on the CT); the dose grid's origin in GATE's output must
    equal the TIA map's, which :func:`read_run` checks.

Materials
    The CT is clipped to [−1000, 1600] HU and mapped to materials by the HU intervals of
    :func:`dosimetry.materials.hu.material_table` (Schneider et al. 2000 compositions, split so
    that the calibration density varies by at most ``density_tolerance_gcm3`` within an
    interval, 0.01 g/cm³ by default: 207 materials, density within ±0.5 % in soft tissue) — the
    table our own Monte Carlo uses voxel by voxel, so both engines see one patient.

Normalisation
    See :func:`dosimetry.dose.gate.simulation.normalise`: GATE's dose over the run divided by
    the decays simulated (``n`` per thread × threads) gives Gy per decay; × Σ TIA (Bq·s) gives
    the patient's dose in Gy. Split runs (``jobs > 1``) are merged per decay with
    :func:`dosimetry.dose.mc.split.merge_partials`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dosimetry import __version__
from dosimetry.dose.emissions import ALL_EMISSIONS, parse_emissions, source_spectrum
from dosimetry.dose.gate import simulation as gsim
from dosimetry.dose.gate.g4data import G4Data, find_g4_data, gate_environment
from dosimetry.errors import DependencyError, GeometryError, InputError, RptdoseError
from dosimetry.io.atomic import atomic_folder
from dosimetry.io.images import overlap_fraction, read_image
from dosimetry.materials.compositions import ELEMENT_SYMBOLS
from dosimetry.materials.hu import HU_RANGE, SCHNEIDER_SOURCE, material_table
from dosimetry.nuclides import get_nuclide

__all__ = [
    "DoseGrid",
    "GateRun",
    "GateRunError",
    "GateSettings",
    "SourceMode",
    "export_simulation",
    "import_opengate",
    "read_run",
    "run_simulation",
    "simulation_config",
]

SCRIPT_NAME = "rptdose_gate.py"
#: Physics list: Geant4's most accurate standard EM constructor at the β/γ energies of Lu-177
#: and I-131 (see :mod:`dosimetry.dose.gate.simulation`).
DEFAULT_PHYSICS_LIST = "G4EmStandardPhysics_option4"


class SourceMode(StrEnum):
    """How the nuclide is emitted in GATE."""

    ION = "ion"            #: ions at rest decayed by Geant4 (G4RadioactiveDecay, ENSDF)
    SPECTRUM = "spectrum"  #: ICRP-107 β spectrum + discrete electron and photon lines


class DoseGrid(StrEnum):
    """Where GATE scores the dose."""

    TIA = "tia"  #: the TIA map's (SPECT) grid, as our other engines
    CT = "ct"    #: the CT grid


class GateRunError(RptdoseError):
    """A GATE run failed; the message carries the end of its log."""


@dataclass(frozen=True)
class GateSettings:
    """Settings of a GATE dose simulation (each declared and checked here once).

    Parameters
    ----------
    n_decays : int
        Decays to simulate (over all threads; rounded up to a multiple of ``threads``).
    threads : int
        Geant4 worker threads (primaries are given per thread; this is accounted for).
    seed : int
        Random seed (MixMaxRng); the same seed and thread count reproduce a run.
    source_mode : SourceMode
        ``ion`` (complete decay physics; reference) or ``spectrum`` (ICRP-107 radiations).
    physics_list : str
        Geant4 physics list (default G4EmStandardPhysics_option4).
    cut_in_ct_mm, cut_in_world_mm : float
        Production cuts (range) in the CT and in the world air.
    dose_grid : DoseGrid
        Score on the TIA map's grid (default) or on the CT's.
    density_tolerance_gcm3 : float
        Largest density span within one material interval.
    """

    n_decays: int = 1_000_000
    threads: int = 1
    seed: int = 0
    source_mode: SourceMode = SourceMode.ION
    physics_list: str = DEFAULT_PHYSICS_LIST
    cut_in_ct_mm: float = 0.1
    cut_in_world_mm: float = 1000.0
    dose_grid: DoseGrid = DoseGrid.TIA
    density_tolerance_gcm3: float = 0.01

    def __post_init__(self) -> None:
        for name, low in (("n_decays", 1), ("threads", 1), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < low:
                raise InputError(f"GATE {name} must be an integer ≥ {low}, got {v!r}")
        try:
            object.__setattr__(self, "source_mode", SourceMode(str(self.source_mode).lower()))
        except ValueError:
            raise InputError(f"GATE source mode must be 'ion' or 'spectrum', got "
                             f"{self.source_mode!r}") from None
        try:
            object.__setattr__(self, "dose_grid", DoseGrid(str(self.dose_grid).lower()))
        except ValueError:
            raise InputError(f"GATE dose grid must be 'tia' or 'ct', got "
                             f"{self.dose_grid!r}") from None
        for name in ("cut_in_ct_mm", "cut_in_world_mm", "density_tolerance_gcm3"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise InputError(f"GATE {name} must be > 0, got {v!r}")
        if not isinstance(self.physics_list, str) or not self.physics_list.strip():
            raise InputError(f"GATE physics_list must be a name, got {self.physics_list!r}")
        if self.n_decays / self.threads > gsim.MAX_PRIMARIES_PER_THREAD:
            raise InputError(f"{self.n_decays} decays on {self.threads} threads exceed Geant4's "
                             f"{gsim.MAX_PRIMARIES_PER_THREAD} primaries per thread; use more "
                             "threads or jobs")


# --------------------------------------------------------------------------- opengate import
def import_opengate():
    """Import opengate without its Geant4-data check (which downloads when data are absent).

    Sets ``GATEONRTD=1`` in this process first. Building a simulation needs no data; running
    one happens in a subprocess with the data paths set (:func:`run_simulation`).

    Raises
    ------
    DependencyError
        opengate is not installed (``pip install 'rptdose[gate]'``).
    """
    os.environ.setdefault("GATEONRTD", "1")
    try:
        with warnings.catch_warnings():
            # opengate 10.1 uses importlib.resources.open_text at import (deprecated in 3.11):
            # third-party noise, not ours to act on
            warnings.simplefilter("ignore", DeprecationWarning)
            import opengate
    except ImportError as exc:
        raise DependencyError(
            "GATE is not installed: install the optional extra with "
            f"`pip install 'rptdose[gate]'` (opengate 10) [{exc}]") from None
    return opengate


# --------------------------------------------------------------------------- geometry helpers
def _orientation(img: sitk.Image) -> str:
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(img.GetDirection())


def to_identity_direction(img: sitk.Image, what: str) -> sitk.Image:
    """``img`` with identity direction cosines, by an exact axis permutation/flip.

    Raises
    ------
    GeometryError
        The image is oblique (its axes are not the patient axes up to sign and order).
    """
    d = np.asarray(img.GetDirection(), dtype=float).reshape(3, 3)
    if np.allclose(d, np.eye(3), atol=1e-6):
        return img
    if not np.allclose(np.abs(d).round(), np.abs(d), atol=1e-4):
        raise GeometryError(
            f"{what}: oblique direction cosines {tuple(round(x, 4) for x in d.ravel())}; GATE's "
            "image volumes need axis-aligned images — resample onto an axis-aligned grid first")
    out = sitk.DICOMOrient(img, "LPS")
    if not np.allclose(np.asarray(out.GetDirection()).reshape(3, 3), np.eye(3), atol=1e-6):
        raise GeometryError(f"{what}: could not reorient to identity direction")
    return out


def _grid_block(img: sitk.Image) -> dict[str, list]:
    return {"size": [int(n) for n in img.GetSize()],
            "spacing_mm": [float(s) for s in img.GetSpacing()],
            "origin_mm": [float(o) for o in img.GetOrigin()]}


def _nuclide_z_a(name: str) -> tuple[int, int]:
    nuc = get_nuclide(name)
    symbol, _, mass = nuc.name.partition("-")
    if not mass.isdigit():
        raise InputError(f"{nuc.name}: ion sources need a ground-state nuclide (no isomers)")
    return ELEMENT_SYMBOLS.index(symbol), int(mass)


def _spectra(nuclide: str, emissions) -> list[dict[str, Any]]:
    """Spectrum-mode sources from the same ICRP-107 data as our engines."""
    spec = source_spectrum(nuclide, emissions)
    out: list[dict[str, Any]] = []
    if spec.beta_yield > 0:
        e, p = spec.beta_energy_mev, spec.beta_density_per_mev
        # bin probabilities of the piecewise-linear density; GATE samples uniformly in a bin
        w = 0.5 * np.diff(e) * (p[:-1] + p[1:])
        mean_hist = float(np.sum(w * 0.5 * (e[:-1] + e[1:])) / w.sum())
        # as many β particles per decay as carry ICRP-107's β energy per decay (the binned
        # spectrum's mean differs from the line means by < 1 %)
        per_decay = spec.beta_energy_per_decay_mev / mean_hist
        out.append({"name": "beta", "particle": "e-", "kind": "histogram",
                    "bin_edges_mev": e.tolist(), "weights": (w / w.sum()).tolist(),
                    "particles_per_decay": per_decay,
                    "energy_per_decay_mev": spec.beta_energy_per_decay_mev})
    for name, particle, energies, yields in (
            ("electron_lines", "e-", spec.electron_energy_mev, spec.electron_yield),
            ("photon_lines", "gamma", spec.photon_energy_mev, spec.photon_yield)):
        if energies.size and yields.sum() > 0:
            total = float(yields.sum())
            out.append({"name": name, "particle": particle, "kind": "discrete",
                        "energies_mev": energies.tolist(), "weights": (yields / total).tolist(),
                        "particles_per_decay": total,
                        "energy_per_decay_mev": float(np.dot(energies, yields))})
    if not out:
        raise InputError(f"{nuclide}: the selected emissions emit nothing")
    return out


def _materials(tolerance: float) -> list[dict[str, Any]]:
    rows = material_table(tolerance)
    out = []
    for k, r in enumerate(rows):
        hi = r.hu_max if k < len(rows) - 1 else r.hu_max + 1.0  # [lo, hi): include 1600 HU
        out.append({
            "name": f"rpt_{r.material.name}",
            "hu_min": r.hu_min, "hu_max": hi,
            "density_gcm3": r.material.density_gcm3,
            "elements": [ELEMENT_SYMBOLS[z] for z in r.material.atomic_numbers],
            "mass_fractions": list(r.material.mass_fractions),
        })
    return out


# --------------------------------------------------------------------------- export
def simulation_config(tia: sitk.Image, ct: sitk.Image, nuclide: str, settings: GateSettings,
                      emissions=None) -> dict[str, Any]:
    """The ``simulation.json`` content for identity-direction ``tia`` and ``ct`` images."""
    canonical = get_nuclide(nuclide).name
    chosen = parse_emissions(emissions)
    tia_arr = sitk.GetArrayViewFromImage(tia)
    total = float(np.asarray(tia_arr, dtype=np.float64).sum())
    cfg: dict[str, Any] = {
        "format": gsim.FORMAT,
        "format_version": gsim.FORMAT_VERSION,
        "nuclide": canonical,
        "source_mode": settings.source_mode.value,
        "ct": {"file": "ct.mhd", **_grid_block(ct), "hu_range": list(HU_RANGE)},
        "source": {"file": "source.mhd", **_grid_block(tia), "total_tia_bq_s": total,
                   "units": "Bq·s per voxel (decays); GATE uses the relative distribution"},
        "dose_grid": {**_grid_block(tia if settings.dose_grid is DoseGrid.TIA else ct),
                      "like": settings.dose_grid.value},
        "materials": _materials(settings.density_tolerance_gcm3),
        "materials_source": SCHNEIDER_SOURCE,
        "world_material": "G4_AIR",
        "physics": {"physics_list": settings.physics_list,
                    "cut_in_ct_mm": float(settings.cut_in_ct_mm),
                    "cut_in_world_mm": float(settings.cut_in_world_mm)},
        "run": {"decays": int(settings.n_decays), "threads": int(settings.threads),
                "seed": int(settings.seed)},
        "provenance": {"written_by": f"rptdose {__version__}",
                       "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "settings": {k: (v.value if isinstance(v, StrEnum) else v)
                                    for k, v in asdict(settings).items()}},
    }
    if settings.source_mode is SourceMode.ION:
        if set(chosen) != set(ALL_EMISSIONS):
            raise InputError("GATE ion sources emit every radiation of the decay; select "
                             "emissions with --source spectrum")
        z, a = _nuclide_z_a(canonical)
        cfg["ion"] = {"Z": z, "A": a}
    else:
        cfg["emissions"] = [e.value for e in chosen]
        cfg["spectra"] = _spectra(canonical, chosen)
    gsim.check_config(cfg)
    return cfg


_README = """rptdose GATE simulation ({nuclide}, {mode} source, {decays} decays, {threads} threads)

Needs: Python ≥ 3.10 with opengate 10 (`pip install opengate`) and its Geant4 data sets
(`opengate_download_data` on a machine with internet access).

Run:      python {script} [--output DIR] [--seed S] [--decays N] [--threads T]
Outputs:  DIR (default ./output): GATE's dose_*.mhd and stats.txt, then
          dose_gy.mhd / dose_sigma_gy.mhd        absorbed dose (Gy) for the TIA map and its 1σ
          dose_per_decay_gy.mhd / *_sem_gy.mhd   the same per decay
          result.json                            events, decays, timing (written last)
Back in rptdose: `rptdose mc validate WORKDIR --reference-dose DIR/dose_gy.mhd` or
`rptdose mc gate-read THIS_FOLDER DIR -o OUT` restores the TIA map's original orientation.

Files: simulation.json (geometry, materials, source, physics, run), ct.mhd (HU, identity
direction, clipped to {hu0:g}..{hu1:g} HU), source.mhd (TIA, Bq·s per voxel),
{script} (builds the simulation with opengate; self-contained).
"""


def export_simulation(tia: sitk.Image, ct: sitk.Image, nuclide: str, folder: str | os.PathLike,
                      settings: GateSettings | None = None, emissions=None) -> Path:
    """Write a self-contained GATE simulation folder (atomically) and return its path.

    Parameters
    ----------
    tia : SimpleITK.Image
        Time-integrated activity, Bq·s per voxel (decays per voxel), any axis-aligned direction.
    ct : SimpleITK.Image
        CT in HU covering the TIA map.
    nuclide : str
        ``"Lu-177"``, ``"I-131"``, …
    folder : path
        Output folder (replaced as a whole when the export succeeds).
    settings : GateSettings, optional
    emissions : optional
        Emission selection (spectrum mode only).

    Raises
    ------
    InputError, GeometryError
        Empty or invalid TIA, CT without overlap, oblique images.
    """
    from dosimetry.dose.engines import _check_tia

    settings = settings or GateSettings()
    arr = np.asarray(_check_tia(tia), dtype=np.float32)
    if not float(arr.sum(dtype=np.float64)) > 0:
        raise InputError("the TIA map is zero everywhere: nothing to simulate")
    if not isinstance(ct, sitk.Image) or ct.GetDimension() != 3:
        raise InputError("the CT must be a 3-D image in HU")
    tia_clean = sitk.GetImageFromArray(arr)
    tia_clean.CopyInformation(tia)
    tia_id = to_identity_direction(tia_clean, "TIA map")
    ct_id = to_identity_direction(ct, "CT")
    inside = overlap_fraction(tia_id, ct_id)
    if inside <= 0:
        raise GeometryError("the CT does not overlap the TIA map; check both images' origins")
    if inside < 0.999:
        warnings.warn(f"{100 * (1 - inside):.1f} % of the TIA map's volume lies outside the CT: "
                      "GATE scores no dose there and activity there decays in air",
                      stacklevel=2)
    hu = sitk.Clamp(sitk.Cast(ct_id, sitk.sitkFloat32), sitk.sitkFloat32,
                    float(HU_RANGE[0]), float(HU_RANGE[1]))
    cfg = simulation_config(tia_id, hu, nuclide, settings, emissions)
    cfg["source"]["original_orientation"] = _orientation(tia)
    cfg["source"]["original_origin_mm"] = [float(o) for o in tia.GetOrigin()]
    script = Path(gsim.__file__).read_text(encoding="utf-8")
    with atomic_folder(folder) as tmp:
        sitk.WriteImage(hu, str(tmp / "ct.mhd"))
        sitk.WriteImage(tia_id, str(tmp / "source.mhd"))
        (tmp / "simulation.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")
        (tmp / SCRIPT_NAME).write_text(script, encoding="utf-8")
        (tmp / "README.txt").write_text(_README.format(
            nuclide=cfg["nuclide"], mode=cfg["source_mode"], decays=settings.n_decays,
            threads=settings.threads, script=SCRIPT_NAME, hu0=HU_RANGE[0], hu1=HU_RANGE[1]),
            encoding="utf-8")
    return Path(folder)


def build_exported(folder: str | os.PathLike, output_dir: str | os.PathLike | None = None,
                   **overrides: Any):
    """Build (not run) the opengate simulation of an exported folder, in this process.

    Needs opengate but no Geant4 data; for inspection and tests. Returns ``(sim, parts)`` as
    :func:`dosimetry.dose.gate.simulation.build_simulation`.
    """
    import_opengate()
    folder = Path(folder)
    try:
        cfg = gsim.load_config(folder)
        return gsim.build_simulation(cfg, folder, output_dir or folder / "output", **overrides)
    except gsim.SimulationConfigError as exc:
        raise InputError(str(exc)) from None


# --------------------------------------------------------------------------- run & read back
@dataclass(frozen=True, eq=False)
class GateRun:
    """A finished GATE run read back on the TIA map's grid.

    Attributes
    ----------
    dose_per_decay, sem_per_decay : SimpleITK.Image
        Gy per decay and its standard error.
    dose, sigma : SimpleITK.Image
        Gy for the TIA map (× Σ TIA) and its standard (1σ) statistical uncertainty.
    result : dict
        ``result.json`` of the run (events, decays, seed, threads, timing).
    """

    dose_per_decay: sitk.Image
    sem_per_decay: sitk.Image
    dose: sitk.Image
    sigma: sitk.Image
    result: dict[str, Any]


def run_simulation(folder: str | os.PathLike, output_dir: str | os.PathLike | None = None, *,
                   g4_data: str | os.PathLike | G4Data | None = None, seed: int | None = None,
                   decays: int | None = None, threads: int | None = None,
                   timeout_s: float | None = None,
                   on_line: Callable[[str], None] | None = None) -> Path:
    """Run an exported simulation in a child Python process; return its output folder.

    Raises
    ------
    G4DataMissingError
        Before starting, when no Geant4 data are found (message says how to install them).
    DependencyError
        opengate is not installed.
    GateRunError
        The run failed or produced no ``result.json``; the message has the end of the log.
    """
    folder = Path(folder).resolve()
    if not (folder / SCRIPT_NAME).is_file() or not (folder / "simulation.json").is_file():
        raise InputError(f"{folder}: not an exported GATE simulation (no {SCRIPT_NAME} or "
                         "simulation.json)")
    from dosimetry.dose.gate.g4data import opengate_data_folder

    if opengate_data_folder() is None:
        raise DependencyError("GATE is not installed: install the optional extra with "
                              "`pip install 'rptdose[gate]'` (opengate 10)")
    data = g4_data if isinstance(g4_data, G4Data) else find_g4_data(g4_data)
    out = Path(output_dir).resolve() if output_dir else folder / "output"
    out.mkdir(parents=True, exist_ok=True)
    (out / gsim.RESULT_FILE).unlink(missing_ok=True)
    cmd = [sys.executable, str(folder / SCRIPT_NAME), "--folder", str(folder),
           "--output", str(out)]
    for flag, value in (("--seed", seed), ("--decays", decays), ("--threads", threads)):
        if value is not None:
            cmd += [flag, str(int(value))]
    log_path = out / "gate.log"
    env = gate_environment(data)
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env, cwd=str(out), text=True, bufsize=1)
        t0 = time.monotonic()
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if on_line is not None:
                on_line(line.rstrip("\n"))
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                proc.kill()
                break
        rc = proc.wait()
    if rc != 0 or not (out / gsim.RESULT_FILE).is_file():
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        why = (f"exit status {rc}" if rc >= 0 else f"killed by signal {-rc}")
        raise GateRunError(f"the GATE run in {folder} failed ({why}); log {log_path}, last "
                           "lines:\n  " + "\n  ".join(tail))
    return out


def _restore(img: sitk.Image, cfg: dict[str, Any]) -> sitk.Image:
    orient = cfg["source"].get("original_orientation")
    if orient and orient != _orientation(img):
        img = sitk.DICOMOrient(img, orient)
    return img


def read_run(folder: str | os.PathLike, output_dir: str | os.PathLike | None = None,
             like: sitk.Image | None = None) -> GateRun:
    """Read a finished run's normalised images back, on the TIA map's original grid.

    Parameters
    ----------
    folder : path
        The exported simulation folder (``simulation.json``).
    output_dir : path, optional
        The run's output folder (default ``folder/output``).
    like : SimpleITK.Image, optional
        The original TIA map; when given, the images get its exact geometry (after checking
        that GATE's grid matches it).

    Raises
    ------
    InputError
        Missing or unfinished run (no ``result.json``), inconsistent files.
    GeometryError
        GATE's dose grid is not where the TIA map is (misalignment).
    """
    folder = Path(folder)
    out = Path(output_dir) if output_dir else folder / "output"
    try:
        cfg = gsim.load_config(folder)
    except gsim.SimulationConfigError as exc:
        raise InputError(str(exc)) from None
    res_path = out / gsim.RESULT_FILE
    if not res_path.is_file():
        raise InputError(f"{out}: no {gsim.RESULT_FILE}; the GATE run did not finish")
    result = json.loads(res_path.read_text(encoding="utf-8"))
    images = {k: read_image(out / v) for k, v in result["files"].items()}
    grid = cfg["dose_grid"]
    ref = images["dose_gy"]
    if list(ref.GetSize()) != grid["size"] or not np.allclose(ref.GetSpacing(),
                                                              grid["spacing_mm"], atol=1e-4):
        raise GeometryError(f"{out}: GATE's dose grid {ref.GetSize()} × {ref.GetSpacing()} mm is "
                            f"not the planned {grid['size']} × {grid['spacing_mm']} mm")
    if not np.allclose(ref.GetOrigin(), grid["origin_mm"], atol=1e-3):
        raise GeometryError(f"{out}: GATE's dose origin {ref.GetOrigin()} mm is not the planned "
                            f"{tuple(grid['origin_mm'])} mm: the dose would be misaligned")
    restored = {}
    for k, img in images.items():
        img = sitk.Cast(img, sitk.sitkFloat32)
        if grid.get("like") == DoseGrid.TIA.value:
            img = _restore(img, cfg)
            if like is not None:
                if img.GetSize() != like.GetSize() or not np.allclose(
                        img.GetOrigin(), like.GetOrigin(), atol=1e-3):
                    raise GeometryError(f"{out}: GATE's dose does not match the TIA map's grid")
                img.CopyInformation(like)
        restored[k] = img
    return GateRun(restored["dose_per_decay_gy"], restored["dose_per_decay_sem_gy"],
                   restored["dose_gy"], restored["dose_sigma_gy"], result)


def gate_provenance(folder: str | os.PathLike) -> dict[str, Any]:
    """Settings and provenance of an exported folder (for metadata)."""
    cfg = gsim.load_config(folder)
    keep = ("nuclide", "source_mode", "physics", "run", "materials_source", "emissions")
    out = {k: cfg[k] for k in keep if k in cfg}
    out["n_materials"] = len(cfg["materials"])
    return out
