"""Where the Geant4 data sets are, without importing ``opengate`` and without downloading.

GATE 10 (``opengate``) needs the Geant4 data sets (cross sections, nuclear levels, decay data).
On ``import opengate`` the package checks that 12 folders exist under
``site-packages/opengate_core/geant4_data/`` and, when one is missing, downloads them from CERN
(≈ 2 GB) — offline the import itself fails after ≈ 40 s. rptdose never lets that happen
silently: it finds pre-installed data itself, sets ``GATEONRTD=1`` (opengate's switch that skips
the check and the download) and passes the ``G4…DATA`` variables explicitly to the process that
runs Geant4. Where no data are found, :func:`find_g4_data` raises
:class:`G4DataMissingError` whose message says how to install them.

Search order (the first complete set wins):

1. the folder given explicitly (``--g4-data DIR``);
2. the folder in the environment variable ``RPTDOSE_G4_DATA``;
3. opengate's own data folder ``opengate_core/geant4_data`` (located without importing
   ``opengate_core``, whose import would trigger the download);
4. ``G4…DATA`` variables already set in the environment (e.g. a Geant4 installation's
   ``geant4.sh``).

A folder holds the data sets as sub-folders named as Geant4 ships them (``G4EMLOW8.8``,
``PhotonEvaporation6.1.2``, …; the layout of ``opengate_download_data``). A data set counts as
present only if its folder is non-empty (opengate checks the names only).

The data sets needed for our simulations (electromagnetic physics, radioactive decay,
nuclear de-excitation) are :data:`REQUIRED`; the others are passed on when present. The
versions opengate was built against are read from its ``g4DataSetup.py`` (text, not import);
a different version is reported as a warning, since Geant4 refuses or misreads data of
another release.
"""

from __future__ import annotations

import importlib.util
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dosimetry.errors import MissingDataError

__all__ = [
    "DATASETS",
    "ENV_VAR",
    "REQUIRED",
    "G4Data",
    "G4DataMissingError",
    "expected_versions",
    "find_g4_data",
    "gate_environment",
    "opengate_data_folder",
]

#: Environment variable naming a folder with the Geant4 data sets.
ENV_VAR = "RPTDOSE_G4_DATA"

#: Geant4 environment variable → folder-name prefix of the data set (Geant4 11 naming).
DATASETS: dict[str, str] = {
    "G4LEDATA": "G4EMLOW",
    "G4LEVELGAMMADATA": "PhotonEvaporation",
    "G4RADIOACTIVEDATA": "RadioactiveDecay",
    "G4ENSDFSTATEDATA": "G4ENSDFSTATE",
    "G4PARTICLEXSDATA": "G4PARTICLEXS",
    "G4NEUTRONHPDATA": "G4NDL",
    "G4PIIDATA": "G4PII",
    "G4REALSURFACEDATA": "RealSurface",
    "G4SAIDXSDATA": "G4SAIDDATA",
    "G4ABLADATA": "G4ABLA",
    "G4INCLDATA": "G4INCL",
    "G4CHANNELINGDATA": "G4CHANNELING",
    "G4PARTICLEHPDATA": "G4TENDL",
}

#: Data sets without which our simulations cannot run: the nuclide table is read when the run
#: manager is created (G4ENSDFSTATEDATA, a missing file aborts the process), nuclear levels by
#: physics construction (G4LEVELGAMMADATA), decay data by radioactive decay
#: (G4RADIOACTIVEDATA), low-energy EM data by the EM physics at BeamOn (G4LEDATA) and particle
#: cross sections by the process tables (G4PARTICLEXSDATA). See opengate 10.1.1 behaviour noted
#: in the GATE bridge documentation.
REQUIRED: tuple[str, ...] = ("G4LEDATA", "G4LEVELGAMMADATA", "G4RADIOACTIVEDATA",
                             "G4ENSDFSTATEDATA", "G4PARTICLEXSDATA")

_HOW_TO = (
    "How to install them (≈ 2 GB, once):\n"
    "  (a) on a machine with internet, `pip install opengate` and run `opengate_download_data`; "
    "copy the folder it fills (`python -c \"import opengate_core, pathlib; "
    "print(pathlib.Path(opengate_core.__file__).parent / 'geant4_data')\"`) here and pass it "
    f"with --g4-data DIR or the environment variable {ENV_VAR}=DIR;\n"
    "  (b) or extract the Geant4 data tarballs (https://geant4.web.cern.ch/download, the "
    "release opengate was built with) into one folder and pass it the same way;\n"
    "  (c) or source a Geant4 installation's geant4.sh so that G4LEDATA, G4LEVELGAMMADATA, "
    "G4RADIOACTIVEDATA, G4ENSDFSTATEDATA and G4PARTICLEXSDATA are set.\n"
    "Alternatively write a self-contained simulation with `rptdose mc gate … --export DIR` and "
    "run it where GATE and its data exist."
)


class G4DataMissingError(MissingDataError):
    """The Geant4 data sets GATE needs were not found; the message says how to install them."""


@dataclass(frozen=True)
class G4Data:
    """A complete-enough set of Geant4 data folders.

    Attributes
    ----------
    paths : dict
        Geant4 environment variable → data-set folder.
    origin : str
        Where it was found (for messages and provenance).
    version_mismatch : tuple of str
        Data sets whose folder version differs from what opengate expects.
    """

    paths: Mapping[str, Path]
    origin: str
    version_mismatch: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, object]:
        """JSON-ready description."""
        return {"origin": self.origin, "paths": {k: str(v) for k, v in self.paths.items()},
                "version_mismatch": list(self.version_mismatch)}


def opengate_data_folder() -> Path | None:
    """opengate's data folder (``…/opengate_core/geant4_data``), or None if not installed.

    Located with :func:`importlib.util.find_spec`, which does not import ``opengate_core``.
    """
    try:
        spec = importlib.util.find_spec("opengate_core")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "geant4_data"


def expected_versions() -> dict[str, str]:
    """Data-set folder names opengate was built against (env var → folder name), if known.

    Read from the text of ``opengate_core/g4DataSetup.py``; empty when opengate is absent or
    the file does not have the expected form.
    """
    folder = opengate_data_folder()
    if folder is None:
        return {}
    setup = folder.parent / "g4DataSetup.py"
    try:
        text = setup.read_text(encoding="utf-8")
    except OSError:
        return {}
    found = re.findall(r'"(G4[A-Z]+DATA)"\s*:\s*data_location\s*/\s*"([^"]+)"', text)
    return dict(found)


def _nonempty_dir(path: Path) -> bool:
    try:
        return path.is_dir() and any(path.iterdir())
    except OSError:
        return False


def _scan_folder(folder: Path) -> dict[str, Path]:
    """Data sets found as sub-folders of ``folder`` (env var → path), newest name per set."""
    out: dict[str, Path] = {}
    try:
        children = sorted(p for p in folder.iterdir() if p.is_dir())
    except OSError:
        return out
    for var, prefix in DATASETS.items():
        # G4EMLOW8.8, G4EMLOW-8.8 and G4EMLOW.8.8 are all seen in the wild
        pat = re.compile(rf"^{re.escape(prefix)}[-.]?\d")
        hits = [p for p in children if pat.match(p.name) and _nonempty_dir(p)]
        if hits:
            out[var] = hits[-1]
    return out


def _from_environment(env: Mapping[str, str]) -> dict[str, Path]:
    out = {}
    for var in DATASETS:
        value = env.get(var)
        if value and _nonempty_dir(Path(value)):
            out[var] = Path(value)
    return out


def _mismatch(paths: Mapping[str, Path]) -> tuple[str, ...]:
    expected = expected_versions()
    return tuple(f"{var}: found {p.name}, opengate expects {expected[var]}"
                 for var, p in paths.items() if var in expected and p.name != expected[var])


def find_g4_data(explicit: str | os.PathLike[str] | None = None,
                 env: Mapping[str, str] | None = None) -> G4Data:
    """Locate the Geant4 data sets (see the module docstring for the search order).

    Parameters
    ----------
    explicit : path, optional
        A folder given by the user (``--g4-data``). When given it must be complete: no
        fallback to other places (the user asked for this one).
    env : mapping, optional
        Environment to read (default ``os.environ``).

    Returns
    -------
    G4Data

    Raises
    ------
    G4DataMissingError
        No complete set was found; the message lists the places searched, what each lacked,
        and how to install the data.
    """
    env = os.environ if env is None else env
    tried: list[str] = []

    def verdict(paths: dict[str, Path], origin: str) -> G4Data | None:
        missing = [v for v in REQUIRED if v not in paths]
        if not missing:
            mism = _mismatch(paths)
            if mism:
                warnings.warn("Geant4 data versions differ from those opengate was built "
                              "against (Geant4 may refuse them): " + "; ".join(mism),
                              stacklevel=3)
            return G4Data(dict(paths), origin, mism)
        names = ", ".join(f"{v} ({DATASETS[v]}*)" for v in missing)
        tried.append(f"{origin}: missing {names}")
        return None

    if explicit is not None:
        folder = Path(explicit).expanduser()
        if not folder.is_dir():
            raise G4DataMissingError(f"--g4-data {folder}: no such folder.\n{_HOW_TO}",
                                     missing=list(REQUIRED))
        found = verdict(_scan_folder(folder), f"--g4-data {folder}")
        if found is None:
            raise G4DataMissingError("Geant4 data incomplete: " + tried[-1] + f".\n{_HOW_TO}",
                                     missing=list(REQUIRED))
        return found
    candidates: list[tuple[Path, str]] = []
    if env.get(ENV_VAR):
        candidates.append((Path(env[ENV_VAR]).expanduser(), f"{ENV_VAR}={env[ENV_VAR]}"))
    og = opengate_data_folder()
    if og is not None:
        candidates.append((og, f"opengate's data folder {og}"))
    else:
        tried.append("opengate's data folder: opengate is not installed")
    for folder, origin in candidates:
        if not folder.is_dir():
            tried.append(f"{origin}: no such folder")
            continue
        found = verdict(_scan_folder(folder), origin)
        if found is not None:
            return found
    found = verdict(_from_environment(env), "G4…DATA environment variables")
    if found is not None:
        return found
    raise G4DataMissingError(
        "the Geant4 data sets that GATE needs were not found. Searched:\n  - "
        + "\n  - ".join(tried) + f"\n{_HOW_TO}",
        missing=list(REQUIRED),
    )


def gate_environment(data: G4Data | None, base: Mapping[str, str] | None = None
                     ) -> dict[str, str]:
    """Environment for a process that imports opengate: no download check, explicit data paths.

    ``GATEONRTD=1`` makes ``import opengate`` skip its data check (and so any download) and
    keep the ``G4…DATA`` variables we set instead of overwriting them with its own folder.
    ``data=None`` gives an environment for building a simulation without running it.
    """
    out = dict(os.environ if base is None else base)
    out["GATEONRTD"] = "1"
    if data is not None:
        for var, path in data.paths.items():
            out[var] = str(path)
    return out
