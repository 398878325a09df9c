"""A GATE 10 absorbed-dose simulation of a radiopharmaceutical distribution in a CT.

This file is self-contained on purpose: rptdose copies it, unchanged, into every exported
simulation folder (``rptdose mc gate … --export DIR``) as ``rptdose_gate.py``, so it imports
only the standard library, numpy, SimpleITK and opengate (the last inside functions). It reads
``simulation.json`` (written by :mod:`dosimetry.dose.gate.bridge`) and the images next to it:

* ``ct.mhd`` — the CT in HU, identity direction, clipped to the material table's range;
* ``source.mhd`` — the time-integrated activity (Bq·s per voxel), identity direction,
  negatives set to 0; GATE uses it as a relative distribution;

and writes into an output folder ``dose_edep.mhd``, ``dose_dose.mhd``,
``dose_dose_uncertainty.mhd`` … (GATE's DoseActor), ``stats.txt``, then the normalised results
``dose_per_decay_gy.mhd``, ``dose_per_decay_sem_gy.mhd``, ``dose_gy.mhd``, ``dose_sigma_gy.mhd``
and ``result.json`` (last: its presence means the run finished).

Run it with the Geant4 data installed: ``python rptdose_gate.py [--output DIR] [--seed S]
[--decays N] [--threads T]``.

Simulation
    * Geometry: the CT as a GATE ``ImageVolume`` in a box of air; HU → materials by the
      intervals and compositions in ``simulation.json`` (rptdose's Schneider et al. 2000
      table, doi:10.1088/0031-9155/45/2/314, the one its own Monte Carlo uses), each interval a
      material of the calibration density at its centre.
    * Source: a ``VoxelSource`` attached to the CT, translated so the activity image sits where
      it is in physical space (centre(source) − centre(CT); both have identity direction).
      ``ion`` mode emits the nuclide as an ion at rest that Geant4's radioactive decay
      (G4RadioactiveDecay, ENSDF data) decays, with its β, conversion and Auger electrons,
      γ and X rays and daughters' decays. ``spectrum`` mode emits ICRP-107 radiations
      (doi:10.1016/j.icrp.2008.10.004) as independent particles: β⁻ from the tabulated
      spectrum, discrete electron lines, discrete photon lines — the same data as rptdose's
      engines — each source with ``decays × yield`` particles.
    * Physics: ``G4EmStandardPhysics_option4`` — Geant4's most accurate EM constructor below
      1 MeV (Livermore/Penelope-based photon models, Goudsmit–Saunderson multiple scattering
      for electrons; Arce et al. 2021, Med Phys 48:19, doi:10.1002/mp.14226); radioactive
      decay switched on for ion sources. Production cuts 0.1 mm in the CT (electrons of
      ≈ 85 keV in water; far below the 2–5 mm voxels scored) and 1 m in the world air.
    * Scoring: ``DoseActor`` on the dose grid (the source grid by default) with dose, edep
      and their relative statistical uncertainties (history by history, events as histories);
      a ``SimulationStatisticsActor`` counts the events.

Normalisation (:func:`normalise`)
    GATE's dose image is the dose summed over all simulated events (Gy). ``n`` primaries per
    source are per *thread*, so the simulated decays are ``n × threads`` (ion mode: one event
    = one decay, taken from the statistics actor; spectrum mode: each event is one particle,
    the decays are the configured number). Dose per decay = dose / decays; for the patient,
    × Σ TIA (Bq·s = decays). The relative uncertainty becomes an absolute standard error.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

FORMAT = "rptdose-gate-simulation"
FORMAT_VERSION = 1
#: Most primaries of one source in one thread (Geant4 event IDs are 32-bit; opengate 10.1
#: refuses more than 2³¹−1 primaries per run).
MAX_PRIMARIES_PER_THREAD = 2**31 - 1
RESULT_FILE = "result.json"
DOSE_ACTOR_NAME = "dose"


class SimulationConfigError(ValueError):
    """simulation.json is missing, unreadable or inconsistent."""


# --------------------------------------------------------------------------- configuration
def load_config(folder: str | Path) -> dict:
    """Read and check ``simulation.json`` from ``folder``."""
    path = Path(folder) / "simulation.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SimulationConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise SimulationConfigError(f"{path}: not valid JSON ({exc})") from None
    check_config(cfg, str(path))
    return cfg


def _need(cfg: dict, key: str, where: str, kind: type | tuple) -> object:
    if key not in cfg:
        raise SimulationConfigError(f"{where}: missing field {key!r}")
    value = cfg[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise SimulationConfigError(f"{where}: field {key!r} has the wrong type ({value!r})")
    return value


def check_config(cfg: dict, where: str = "simulation.json") -> None:
    """Check the fields the simulation needs (raises :class:`SimulationConfigError`)."""
    if cfg.get("format") != FORMAT:
        raise SimulationConfigError(f"{where}: 'format' is {cfg.get('format')!r}, not {FORMAT!r}")
    if cfg.get("format_version") != FORMAT_VERSION:
        raise SimulationConfigError(f"{where}: 'format_version' {cfg.get('format_version')!r} is "
                                    f"not {FORMAT_VERSION} (written by another rptdose version)")
    mode = _need(cfg, "source_mode", where, str)
    if mode not in ("ion", "spectrum"):
        raise SimulationConfigError(f"{where}: source_mode {mode!r} is not 'ion' or 'spectrum'")
    for key in ("ct", "source", "dose_grid"):
        block = _need(cfg, key, where, dict)
        for k in ("size", "spacing_mm", "origin_mm"):
            v = _need(block, k, f"{where} [{key}]", list)
            if len(v) != 3:
                raise SimulationConfigError(f"{where} [{key}]: {k} must have 3 values, got {v}")
        if min(block["spacing_mm"]) <= 0 or min(block["size"]) < 1:
            raise SimulationConfigError(f"{where} [{key}]: non-positive size or spacing")
    _need(cfg["ct"], "file", f"{where} [ct]", str)
    _need(cfg["source"], "file", f"{where} [source]", str)
    total = _need(cfg["source"], "total_tia_bq_s", f"{where} [source]", (int, float))
    if not total > 0:
        raise SimulationConfigError(f"{where} [source]: total_tia_bq_s must be > 0, got {total}")
    mats = _need(cfg, "materials", where, list)
    if not mats:
        raise SimulationConfigError(f"{where}: 'materials' is empty")
    for k, m in enumerate(mats):
        for f in ("name", "hu_min", "hu_max", "density_gcm3", "elements", "mass_fractions"):
            if f not in m:
                raise SimulationConfigError(f"{where}: materials[{k}] lacks {f!r}")
        if len(m["elements"]) != len(m["mass_fractions"]) or not m["hu_max"] > m["hu_min"]:
            raise SimulationConfigError(f"{where}: materials[{k}] ({m['name']}) is inconsistent")
    run = _need(cfg, "run", where, dict)
    for k in ("decays", "threads", "seed"):
        v = _need(run, k, f"{where} [run]", int)
        if v < (0 if k == "seed" else 1):
            raise SimulationConfigError(f"{where} [run]: {k} must be ≥ 1, got {v}")
    if mode == "ion":
        ion = _need(cfg, "ion", where, dict)
        _need(ion, "Z", f"{where} [ion]", int)
        _need(ion, "A", f"{where} [ion]", int)
    else:
        sources = _need(cfg, "spectra", where, list)
        if not sources:
            raise SimulationConfigError(f"{where}: spectrum mode needs 'spectra'")
        for s in sources:
            if s.get("particle") not in ("e-", "gamma"):
                raise SimulationConfigError(f"{where}: spectra: bad particle {s.get('particle')!r}")
            if s.get("kind") not in ("histogram", "discrete"):
                raise SimulationConfigError(f"{where}: spectra: bad kind {s.get('kind')!r}")
            if not s.get("particles_per_decay", 0) > 0:
                raise SimulationConfigError(f"{where}: spectra {s.get('name')!r}: "
                                            "particles_per_decay must be > 0")
    phys = _need(cfg, "physics", where, dict)
    _need(phys, "physics_list", f"{where} [physics]", str)
    for k in ("cut_in_ct_mm", "cut_in_world_mm"):
        v = _need(phys, k, f"{where} [physics]", (int, float))
        if not v > 0:
            raise SimulationConfigError(f"{where} [physics]: {k} must be > 0, got {v}")


def grid_centre_mm(block: dict) -> list[float]:
    """Physical centre (mm) of an identity-direction grid described by size/spacing/origin.

    The origin is the centre of the first voxel, so the centre is origin + (size − 1)/2·spacing.
    """
    return [o + (n - 1) * s / 2.0 for o, n, s in
            zip(block["origin_mm"], block["size"], block["spacing_mm"], strict=True)]


def relative_translation_mm(block: dict, ct: dict) -> list[float]:
    """Where ``block``'s grid centre sits relative to the CT's centre (mm).

    GATE places the CT image volume centred on its mother's origin and attaches sources and
    actors to it centred on it: this translation puts them where they are in physical space.
    """
    c1, c0 = grid_centre_mm(block), grid_centre_mm(ct)
    return [a - b for a, b in zip(c1, c0, strict=True)]


def geant4_seed(seed: int) -> int:
    """The seed given to Geant4 for our ``seed`` (≥ 0): seed + 1, since Geant4 refuses 0."""
    return int(seed) + 1


def primaries_per_thread(particles: float, threads: int) -> int:
    """Primaries per thread for ``particles`` in total (rounded up, at least 1)."""
    n = max(1, math.ceil(particles / threads - 1e-9))
    if n > MAX_PRIMARIES_PER_THREAD:
        raise SimulationConfigError(
            f"{n} primaries per thread exceed Geant4's limit of {MAX_PRIMARIES_PER_THREAD}; "
            "use more threads or split the run into jobs (rptdose mc gate --jobs)")
    return n


def planned_sources(cfg: dict, decays: int, threads: int) -> list[dict]:
    """The sources of a run: name, particle, primaries per thread, and decays they represent.

    Ion mode: one source of ``decays`` ions. Spectrum mode: one source per spectrum with
    ``decays × particles_per_decay`` particles; ``decays_represented`` is what its actual
    (rounded) count stands for.
    """
    if cfg["source_mode"] == "ion":
        n = primaries_per_thread(decays, threads)
        return [{"name": "ion", "particle": f"ion {cfg['ion']['Z']} {cfg['ion']['A']}",
                 "n_per_thread": n, "decays_represented": n * threads}]
    out = []
    for s in cfg["spectra"]:
        n = primaries_per_thread(decays * s["particles_per_decay"], threads)
        out.append({"name": s["name"], "particle": s["particle"], "n_per_thread": n,
                    "decays_represented": n * threads / s["particles_per_decay"]})
    return out


# --------------------------------------------------------------------------- building
def build_simulation(cfg: dict, folder: str | Path, output_dir: str | Path, *,
                     seed: int | None = None, decays: int | None = None,
                     threads: int | None = None):
    """Build (not run) the opengate Simulation described by ``cfg``.

    Returns ``(sim, parts)`` where ``parts`` holds the CT volume, the sources, the dose and
    statistics actors and the run plan (threads, seed, decays, sources), for checks.
    """
    import opengate as gate

    folder = Path(folder).resolve()
    output_dir = Path(output_dir).resolve()
    u = gate.g4_units
    run = cfg["run"]
    seed = int(run["seed"] if seed is None else seed)
    decays = int(run["decays"] if decays is None else decays)
    threads = int(run["threads"] if threads is None else threads)
    if decays < 1 or threads < 1 or seed < 0:
        raise SimulationConfigError(f"decays ({decays}) and threads ({threads}) must be ≥ 1, "
                                    f"seed ({seed}) ≥ 0")

    sim = gate.Simulation()
    sim.output_dir = str(output_dir)
    sim.number_of_threads = threads
    sim.random_seed = geant4_seed(seed)
    sim.random_engine = "MixMaxRng"
    sim.progress_bar = False
    sim.check_volumes_overlap = False

    # world: air, large enough for the CT box with a margin
    ct_cfg = cfg["ct"]
    extent = [n * s for n, s in zip(ct_cfg["size"], ct_cfg["spacing_mm"], strict=True)]
    sim.world.size = [(e + 200.0) * u.mm for e in extent]
    sim.world.material = cfg.get("world_material", "G4_AIR")

    # materials: one per HU interval, by element mass fractions and density
    db = sim.volume_manager.material_database
    intervals = []
    for m in cfg["materials"]:
        db.add_material_weights(m["name"], list(m["elements"]),
                                [float(f) for f in m["mass_fractions"]],
                                float(m["density_gcm3"]) * u.g_cm3)
        intervals.append([float(m["hu_min"]), float(m["hu_max"]), m["name"]])

    ct = sim.add_volume("Image", "ct")
    ct.image = str(folder / ct_cfg["file"])
    ct.material = cfg.get("world_material", "G4_AIR")
    ct.voxel_materials = intervals
    ct.translation = [0.0, 0.0, 0.0]

    phys = cfg["physics"]
    sim.physics_manager.physics_list_name = phys["physics_list"]
    sim.physics_manager.set_production_cut("world", "all", float(phys["cut_in_world_mm"]) * u.mm)
    sim.physics_manager.set_production_cut("ct", "all", float(phys["cut_in_ct_mm"]) * u.mm)
    if cfg["source_mode"] == "ion":
        sim.physics_manager.enable_decay = True

    src_cfg = cfg["source"]
    src_translation = [t * u.mm for t in relative_translation_mm(src_cfg, ct_cfg)]
    plan = planned_sources(cfg, decays, threads)
    sources = []
    spectra = {s["name"]: s for s in cfg.get("spectra", [])}
    for p in plan:
        src = sim.add_source("VoxelSource", f"source_{p['name']}")
        src.attached_to = "ct"
        src.image = str(folder / src_cfg["file"])
        src.position.translation = src_translation
        src.direction.type = "iso"
        src.particle = p["particle"]
        src.n = p["n_per_thread"]
        if cfg["source_mode"] == "ion":
            src.energy.mono = 0
        else:
            s = spectra[p["name"]]
            if s["kind"] == "histogram":
                src.energy.type = "spectrum_histogram"
                src.energy.spectrum_energy_bin_edges = [e * u.MeV for e in s["bin_edges_mev"]]
                src.energy.spectrum_weights = [float(w) for w in s["weights"]]
            else:
                src.energy.type = "spectrum_discrete"
                src.energy.spectrum_energies = [e * u.MeV for e in s["energies_mev"]]
                src.energy.spectrum_weights = [float(w) for w in s["weights"]]
        sources.append(src)

    grid = cfg["dose_grid"]
    dose = sim.add_actor("DoseActor", DOSE_ACTOR_NAME)
    dose.attached_to = "ct"
    dose.size = [int(n) for n in grid["size"]]
    dose.spacing = [s * u.mm for s in grid["spacing_mm"]]
    dose.translation = [t * u.mm for t in relative_translation_mm(grid, ct_cfg)]
    dose.output_coordinate_system = "attached_to_image"
    dose.hit_type = "random"
    dose.output_filename = "dose.mhd"
    dose.dose.active = True
    dose.dose_uncertainty.active = True
    dose.edep_uncertainty.active = True

    stats = sim.add_actor("SimulationStatisticsActor", "stats")
    stats.output_filename = "stats.txt"

    parts = {"ct": ct, "sources": sources, "dose": dose, "stats": stats,
             "plan": {"threads": threads, "seed": seed, "decays": decays, "sources": plan}}
    return sim, parts


# --------------------------------------------------------------------------- normalisation
def decays_simulated(cfg: dict, plan: dict, events: int) -> float:
    """Decays a finished run stands for: ion mode = events; spectrum mode = configured decays.

    In spectrum mode each source's rounded particle count represents slightly different
    numbers of decays (``decays_represented``, within one particle per thread of the request);
    their particle-weighted mean is used.
    """
    if cfg["source_mode"] == "ion":
        return float(events)
    srcs = plan["sources"]
    w = sum(s["n_per_thread"] for s in srcs)
    return sum(s["decays_represented"] * s["n_per_thread"] for s in srcs) / w


def normalise(dose_sum_gy, relative_uncertainty, decays: float, total_tia_bq_s: float):
    """Dose per decay and per TIA, with standard errors, from GATE's summed dose.

    Parameters
    ----------
    dose_sum_gy : numpy.ndarray
        Dose summed over the run (Gy), as the DoseActor writes it.
    relative_uncertainty : numpy.ndarray
        DoseActor's relative standard error of that dose (0 where no dose).
    decays : float
        Decays the run simulated (:func:`decays_simulated`).
    total_tia_bq_s : float
        Σ of the TIA map (Bq·s), i.e. the number of decays in the patient.

    Returns
    -------
    tuple of numpy.ndarray
        ``(dose_per_decay_gy, sem_per_decay_gy, dose_gy, sigma_gy)``.
    """
    import numpy as np

    if not decays > 0:
        raise SimulationConfigError(f"decays must be > 0 to normalise, got {decays}")
    per_decay = np.asarray(dose_sum_gy, dtype=np.float64) / float(decays)
    sem = np.abs(np.asarray(relative_uncertainty, dtype=np.float64)) * per_decay
    return per_decay, sem, per_decay * total_tia_bq_s, sem * total_tia_bq_s


def _write(arr, like, path: Path) -> None:
    """Write ``arr`` with ``like``'s geometry as MetaImage, data file first, header last."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr.astype("float32"))
    img.CopyInformation(like)
    tmp = path.parent / f".{path.stem}.part"
    tmp.mkdir(exist_ok=True)
    sitk.WriteImage(img, str(tmp / path.name))
    (tmp / path.with_suffix(".raw").name).replace(path.with_suffix(".raw"))
    (tmp / path.name).replace(path)
    tmp.rmdir()


def finish_run(cfg: dict, plan: dict, events: int, dose_path: str | Path,
               uncertainty_path: str | Path, out: str | Path, elapsed_s: float = 0.0,
               opengate_version: str = "unknown") -> dict:
    """Normalise a finished run's DoseActor images and write them and ``result.json``.

    Parameters
    ----------
    cfg : dict
        The simulation configuration.
    plan : dict
        The run plan of :func:`build_simulation` (threads, seed, decays, sources).
    events : int
        Events the statistics actor counted.
    dose_path, uncertainty_path : path
        GATE's summed dose (Gy) and its relative uncertainty images.
    out : path
        Output folder.
    """
    import numpy as np
    import SimpleITK as sitk

    out = Path(out)
    n_dec = decays_simulated(cfg, plan, events)
    dose_img = sitk.ReadImage(str(dose_path))
    unc_img = sitk.ReadImage(str(uncertainty_path))
    total = float(cfg["source"]["total_tia_bq_s"])
    per_decay, sem, dose_gy, sigma_gy = normalise(sitk.GetArrayFromImage(dose_img),
                                                  sitk.GetArrayFromImage(unc_img), n_dec, total)
    files = {"dose_per_decay_gy": "dose_per_decay_gy.mhd",
             "dose_per_decay_sem_gy": "dose_per_decay_sem_gy.mhd",
             "dose_gy": "dose_gy.mhd", "dose_sigma_gy": "dose_sigma_gy.mhd"}
    for key, arr in (("dose_per_decay_gy", per_decay), ("dose_per_decay_sem_gy", sem),
                     ("dose_gy", dose_gy), ("dose_sigma_gy", sigma_gy)):
        _write(arr, dose_img, out / files[key])
    result = {
        "format": FORMAT + "-result",
        "format_version": FORMAT_VERSION,
        "nuclide": cfg.get("nuclide"),
        "source_mode": cfg["source_mode"],
        "events": int(events),
        "decays_simulated": n_dec,
        "threads": plan["threads"],
        "seed": plan["seed"],
        "geant4_seed": geant4_seed(plan["seed"]),
        "decays_requested": plan["decays"],
        "sources": plan["sources"],
        "total_tia_bq_s": total,
        "elapsed_s": float(elapsed_s),
        "dose_origin_mm": list(dose_img.GetOrigin()),
        "dose_spacing_mm": list(dose_img.GetSpacing()),
        "dose_size": list(dose_img.GetSize()),
        "dose_sum_gy_max": float(np.max(sitk.GetArrayViewFromImage(dose_img))),
        "opengate_version": opengate_version,
        "files": files,
    }
    tmp = out / f".{RESULT_FILE}.part"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out / RESULT_FILE)
    return result


def run(folder: str | Path, output_dir: str | Path | None = None, *, seed: int | None = None,
        decays: int | None = None, threads: int | None = None) -> dict:
    """Build and run the simulation in this process, normalise, and write ``result.json``.

    Geant4 can be initialised once per process: call this from a fresh interpreter (the
    command line below, or a subprocess).
    """
    folder = Path(folder).resolve()
    cfg = load_config(folder)
    out = Path(output_dir).resolve() if output_dir else folder / "output"
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT_FILE).unlink(missing_ok=True)
    sim, parts = build_simulation(cfg, folder, out, seed=seed, decays=decays, threads=threads)
    t0 = time.perf_counter()
    sim.run(start_new_process=False)
    elapsed = time.perf_counter() - t0

    import opengate

    return finish_run(cfg, parts["plan"], int(parts["stats"].counts.events),
                      parts["dose"].dose.get_output_path(),
                      parts["dose"].dose_uncertainty.get_output_path(), out, elapsed,
                      getattr(opengate, "__version__", "unknown"))


def check(folder: str | Path, **overrides) -> dict:
    """Build the simulation without running it (no Geant4 data needed) and return the plan."""
    folder = Path(folder).resolve()
    cfg = load_config(folder)
    _, parts = build_simulation(cfg, folder, folder / "output", **overrides)
    return parts["plan"]


def main(argv: list[str] | None = None) -> int:
    """Command line: run the simulation of the folder this file is in (or ``--folder``)."""
    p = argparse.ArgumentParser(description="Run an rptdose GATE dose simulation.")
    p.add_argument("--folder", default=str(Path(__file__).resolve().parent),
                   help="folder with simulation.json (default: this file's folder)")
    p.add_argument("--output", default=None, help="output folder (default FOLDER/output)")
    p.add_argument("--seed", type=int, default=None, help="override the seed")
    p.add_argument("--decays", type=int, default=None, help="override the number of decays")
    p.add_argument("--threads", type=int, default=None, help="override the thread count")
    p.add_argument("--check", action="store_true",
                   help="build the simulation without running it (needs no Geant4 data when "
                        "GATEONRTD=1 is set) and print the run plan")
    a = p.parse_args(argv)
    try:
        if a.check:
            print(json.dumps(check(a.folder, seed=a.seed, decays=a.decays, threads=a.threads)))
            return 0
        result = run(a.folder, a.output, seed=a.seed, decays=a.decays, threads=a.threads)
    except SimulationConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: result[k] for k in ("events", "decays_simulated", "elapsed_s")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
