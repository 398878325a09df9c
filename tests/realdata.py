"""Real reference data for tests: ``../shared/reference/real/<name>.tar.xz`` beside the repository.

:func:`extract_reference` unpacks an archive once into ``.cache/reference/<name>/`` under the
repository root (git-ignored) and returns the extracted data folder. It extracts into a
temporary folder and renames it into place, so an interrupted extraction never leaves a
half-filled cache that a later run would trust; concurrent test workers each extract and the
first rename wins. A test that needs an archive that is not there is skipped with the path in
the reason. Tests that use it are marked ``@pytest.mark.realdata``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest

#: Repository root: the parent of ``tests/``.
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Where the archives live: ``<repo>/../shared/reference/real``.
REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference" / "real"
#: Where they are extracted.
CACHE_DIR = REPO_ROOT / ".cache" / "reference"


def reference_archive(name: str) -> Path:
    """Path of the archive ``<name>.tar.xz`` (whether or not it exists)."""
    return REFERENCE_DIR / f"{name}.tar.xz"


def extract_reference(name: str) -> Path:
    """Extract ``<name>.tar.xz`` once and return the extracted data folder.

    When the archive holds a single top-level folder (as ours do), that folder is returned;
    otherwise the extraction folder itself. Calls ``pytest.skip`` when the archive is absent.
    """
    archive = reference_archive(name)
    if not archive.is_file():
        pytest.skip(f"real reference data not available: {archive} not found")
    target = CACHE_DIR / name
    if not target.is_dir():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".part", dir=CACHE_DIR))
        try:
            with tarfile.open(archive, "r:xz") as tar:
                tar.extractall(tmp, filter="data")  # refuses absolute paths, links out, devices
            try:
                os.rename(tmp, target)
            except OSError:
                if not target.is_dir():  # not a lost race with another worker: a real failure
                    raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(tmp)
    entries = [p for p in target.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return target
