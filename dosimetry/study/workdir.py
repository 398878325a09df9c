"""The work folder: where every stage of a study's processing reads and writes its files.

One folder per study run. Each stage owns a sub-folder and records, when it finishes, a small
``done.json`` with the fingerprint of its inputs; a stage is up to date when that marker exists
and its fingerprint matches the inputs now. This is what lets any stage be re-run alone and a
crashed run resume from the last finished stage: a stage that crashed has no marker.

Layout::

    WORKDIR/
      study.yaml                 the manifest (copied in, image paths made absolute)
      registration/              every timepoint on the reference CT grid
        <label>_ct.nii.gz  <label>_spect_bq_per_ml.nii.gz  transforms/<label>.tfm  qa.json
      segmentation/              labels.nii.gz  labels.json  organs.json
      kinetics/  dose/  planning/  report/
      <stage>/done.json          {"stage", "fingerprint", "finished"}
      validation/                ``rptdose mc validate``: engines against an MC reference
                                 (validation.json, validation.html, figures, difference maps);
                                 not a stage — the report quotes it when present
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from dosimetry.errors import InputError
from dosimetry.io.atomic import atomic_write_text
from dosimetry.study.manifest import Study, load_study


class Stage(StrEnum):
    """Processing stages, in pipeline order."""

    REGISTRATION = "registration"
    SEGMENTATION = "segmentation"
    KINETICS = "kinetics"
    DOSE = "dose"
    PLANNING = "planning"
    REPORT = "report"


MANIFEST_NAME = "study.yaml"
DONE_NAME = "done.json"


def fingerprint(*parts: Any) -> str:
    """SHA-256 of the JSON form of ``parts`` (options, upstream fingerprints, file stats)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Cheap identity of a file or folder: path, size and modification time (of every file)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        return {"path": str(p), "files": [(str(f.relative_to(p)), f.stat().st_size,
                                           f.stat().st_mtime_ns) for f in files]}
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


@dataclass(frozen=True)
class WorkDir:
    """A study's work folder (see the module docstring for the layout)."""

    root: Path

    @classmethod
    def create(cls, root: str | os.PathLike[str], study: Study,
               manifest_dir: str | os.PathLike[str]) -> WorkDir:
        """Make (or reuse) ``root`` and write ``study.yaml`` in it with absolute image paths."""
        wd = cls(Path(root))
        wd.root.mkdir(parents=True, exist_ok=True)
        base = Path(manifest_dir).resolve()
        absolute = _absolute_paths(study, base)
        target = wd.manifest_path
        if not target.exists() or load_study(target) != absolute:
            absolute.save(target)
        return wd

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> WorkDir:
        """An existing work folder; :class:`InputError` when it has no manifest."""
        wd = cls(Path(root))
        if not wd.manifest_path.is_file():
            raise InputError(f"{wd.root}: not a work folder (no {MANIFEST_NAME}); create it with "
                             "'rptdose run STUDY.yaml -o WORKDIR'")
        return wd

    @property
    def manifest_path(self) -> Path:
        """The work folder's copy of the manifest."""
        return self.root / MANIFEST_NAME

    def study(self) -> Study:
        """The manifest (image paths absolute)."""
        return load_study(self.manifest_path)

    def stage_dir(self, stage: Stage | str) -> Path:
        """The folder of ``stage`` (created)."""
        d = self.root / Stage(stage).value
        d.mkdir(parents=True, exist_ok=True)
        return d

    def is_done(self, stage: Stage | str, fp: str) -> bool:
        """True when ``stage`` finished with inputs of fingerprint ``fp``."""
        marker = self.root / Stage(stage).value / DONE_NAME
        if not marker.is_file():
            return False
        try:
            return json.loads(marker.read_text(encoding="utf-8")).get("fingerprint") == fp
        except (OSError, json.JSONDecodeError):
            return False

    def mark_done(self, stage: Stage | str, fp: str, **info: Any) -> None:
        """Record that ``stage`` finished with inputs ``fp`` (written last, atomically)."""
        record = {"stage": Stage(stage).value, "fingerprint": fp,
                  "finished": datetime.now(UTC).isoformat(timespec="seconds"), **info}
        atomic_write_text(self.stage_dir(stage) / DONE_NAME,
                          json.dumps(record, indent=2, default=str) + "\n")

    def invalidate(self, stage: Stage | str) -> None:
        """Forget that ``stage`` finished (its outputs stay until overwritten)."""
        marker = self.root / Stage(stage).value / DONE_NAME
        marker.unlink(missing_ok=True)


def _absolute_paths(study: Study, base: Path) -> Study:
    data = study.to_dict()

    def fix(ref: dict[str, Any] | None) -> None:
        if ref is not None:
            p = Path(ref["path"])
            ref["path"] = str(p if p.is_absolute() else Path(os.path.normpath(base / p)))

    fix(data.get("labels"))
    for tp in data["timepoints"]:
        for key in ("spect", "ct", "labels", "rtstruct"):
            fix(tp.get(key))
    return Study.from_dict(data, source=f"manifest from {base}")
