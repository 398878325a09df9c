"""Label maps with their name table: which integer is which structure, organ or lesion.

A :class:`LabelMap` is an integer ``SimpleITK.Image`` (0 = background) and a :class:`LabelTable`
of :class:`LabelEntry` rows. The table is written as ``labels.json``: a JSON list of
``{"label": 1, "name": "liver", "kind": "organ"}`` objects (the same form as the digital
patients' ``truth/labels.json``). :func:`read_label_table` also reads a mapping
``{"1": "liver"}`` or ``{"1": {"name": …, "kind": …}}``, and CSV/TSV with a header holding
``label`` and ``name`` (optionally ``kind``) columns.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dosimetry.errors import GeometryError, InputError
from dosimetry.io.atomic import atomic_write_text
from dosimetry.segmentation.names import StructureKind, clean_name

#: Largest label value accepted (uint16 label maps).
MAX_LABEL = 65535
#: Kinds in tables written by others that mean "lesion" (everything else is an organ/tissue).
_LESION_KINDS = frozenset({"lesion", "tumor", "tumour", "gtv"})


@dataclass(frozen=True)
class LabelEntry:
    """One structure of a label map: integer label (≥ 1), standard name, organ or lesion."""

    label: int
    name: str
    kind: StructureKind = StructureKind.ORGAN

    def __post_init__(self) -> None:
        if not (1 <= int(self.label) <= MAX_LABEL):
            raise InputError(f"label {self.label} of {self.name!r} is outside 1–{MAX_LABEL}")
        if not self.name:
            raise InputError(f"label {self.label} has an empty name")
        object.__setattr__(self, "label", int(self.label))
        object.__setattr__(self, "kind", StructureKind(self.kind))

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"label": self.label, "name": self.name, "kind": self.kind.value}


@dataclass(frozen=True)
class LabelTable:
    """The name table of a label map; labels and names are unique."""

    entries: tuple[LabelEntry, ...]

    def __post_init__(self) -> None:
        entries = tuple(sorted(self.entries, key=lambda e: e.label))
        object.__setattr__(self, "entries", entries)
        for what, values in (("label", [e.label for e in entries]),
                             ("name", [e.name for e in entries])):
            dupes = sorted({str(v) for v in values if values.count(v) > 1})
            if dupes:
                raise InputError(f"label table repeats {what}(s) {', '.join(dupes)}")

    # ------------------------------------------------------------------------------ access
    def __iter__(self):
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def names(self) -> dict[int, str]:
        """label → name."""
        return {e.label: e.name for e in self.entries}

    def by_name(self, name: str) -> LabelEntry:
        """The entry called ``name``; :class:`KeyError` naming the known names when absent."""
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(f"no structure {name!r}; have {[e.name for e in self.entries]}")

    def get(self, label: int) -> LabelEntry | None:
        """The entry of ``label`` or None."""
        for e in self.entries:
            if e.label == label:
                return e
        return None

    def of_kind(self, kind: StructureKind | str) -> tuple[LabelEntry, ...]:
        """Entries of one kind."""
        k = StructureKind(kind)
        return tuple(e for e in self.entries if e.kind is k)

    # ------------------------------------------------------------------------------ JSON
    def to_list(self) -> list[dict[str, Any]]:
        """JSON form: a list of ``{"label", "name", "kind"}``."""
        return [e.to_dict() for e in self.entries]

    def to_json(self) -> str:
        """``labels.json`` text."""
        return json.dumps(self.to_list(), indent=2, ensure_ascii=False) + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``labels.json`` atomically."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def from_names(cls, names: Iterable[str], kinds: Mapping[str, StructureKind] | None = None
                   ) -> LabelTable:
        """Labels 1, 2, … for ``names`` in order (kinds default to organ)."""
        kinds = kinds or {}
        return cls(tuple(LabelEntry(i, n, kinds.get(n, StructureKind.ORGAN))
                         for i, n in enumerate(names, start=1)))


def _kind_of(value: Any) -> StructureKind:
    if value is None:
        return StructureKind.ORGAN
    return StructureKind.LESION if str(value).strip().lower() in _LESION_KINDS \
        else StructureKind.ORGAN


def _entry(label: Any, name: Any, kind: Any, where: str) -> LabelEntry | None:
    try:
        lab = int(str(label).strip())
    except ValueError:
        raise InputError(f"{where}: label {label!r} is not an integer") from None
    if lab == 0:
        return None  # background rows ("0: background") are allowed and ignored
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{where}: label {lab} has no name (got {name!r})")
    return LabelEntry(lab, clean_name(name), _kind_of(kind))


def parse_label_table(data: Any, where: str = "label table") -> LabelTable:
    """A :class:`LabelTable` from parsed JSON (see the module docstring for the forms).

    Names are cleaned to ``[a-z0-9_]`` (:func:`~dosimetry.segmentation.names.clean_name`);
    a ``kind`` of lesion/tumour/GTV makes a lesion, anything else (organ, tissue, blood, marrow,
    air as the digital patients write) an organ/tissue.
    """
    entries: list[LabelEntry] = []
    if isinstance(data, dict) and "labels" in data and isinstance(data["labels"], list | dict):
        data = data["labels"]
    if isinstance(data, list):
        for i, row in enumerate(data):
            if not isinstance(row, dict) or "label" not in row or "name" not in row:
                raise InputError(f"{where}: item {i} must be an object with 'label' and 'name', "
                                 f"got {row!r}")
            e = _entry(row["label"], row["name"], row.get("kind"), where)
            if e is not None:
                entries.append(e)
    elif isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, dict):
                e = _entry(key, value.get("name"), value.get("kind"), where)
            else:
                e = _entry(key, value, None, where)
            if e is not None:
                entries.append(e)
    else:
        raise InputError(f"{where}: expected a list of {{label, name, kind}} or a mapping "
                         f"label → name, got {type(data).__name__}")
    if not entries:
        raise InputError(f"{where}: no labels in the table")
    return LabelTable(tuple(entries))


def read_label_table(path: str | os.PathLike[str]) -> LabelTable:
    """Read a name table from JSON (``.json``) or CSV/TSV (``.csv``, ``.tsv``, ``.txt``).

    Raises
    ------
    InputError
        Missing file, unparseable content, a non-integer label, a duplicate label or name.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: label name table not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read label table ({exc})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not valid JSON ({exc})") from None
        return parse_label_table(data, str(path))
    dialect = "excel-tab" if ("\t" in text.splitlines()[0] if text else False) else "excel"
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    fields = {(f or "").strip().lower(): f for f in (reader.fieldnames or [])}
    if "label" not in fields or "name" not in fields:
        raise InputError(f"{path}: CSV needs a header with 'label' and 'name' columns, found "
                         f"{reader.fieldnames}")
    rows = [{"label": r[fields["label"]], "name": r[fields["name"]],
             "kind": r.get(fields["kind"]) if "kind" in fields else None} for r in reader]
    return parse_label_table(rows, str(path))


@dataclass(frozen=True)
class LabelMap:
    """An integer label image (uint16, 0 = background) and its name table.

    ``source`` says where it came from (backend, file); ``warnings`` what was done beyond the
    plain reading (labels without a name, structures outside the grid, …).
    """

    image: sitk.Image
    table: LabelTable
    source: str = ""
    warnings: tuple[str, ...] = ()

    def array(self) -> np.ndarray:
        """Labels as a (z, y, x) uint16 array (a copy)."""
        return sitk.GetArrayFromImage(self.image).astype(np.uint16)

    def mask(self, name: str) -> np.ndarray:
        """Boolean (z, y, x) mask of the structure ``name``."""
        return sitk.GetArrayViewFromImage(self.image) == self.table.by_name(name).label


def label_image(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Wrap a (z, y, x) integer array as a uint16 image on ``reference``'s grid."""
    ref_shape = tuple(reversed(reference.GetSize()))
    if array.shape != ref_shape:
        raise GeometryError(f"label array has shape {array.shape} (z, y, x), the reference grid "
                            f"{ref_shape}")
    img = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.uint16))
    img.CopyInformation(reference)
    return img


def check_labels_in_table(array: np.ndarray, table: LabelTable, where: str) -> tuple[str, ...]:
    """Warnings for labels present in ``array`` but missing from ``table`` (they are kept)."""
    present = set(np.unique(array).tolist()) - {0}
    missing = sorted(present - {e.label for e in table})
    if missing:
        return (f"{where}: label(s) {missing} have no name in the table; they are left out",)
    return ()
