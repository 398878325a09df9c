"""File handling of typed models (study manifest, RESULTS.json, protocols, plans): read YAML/JSON
safely, write atomically, and turn pydantic validation errors into one
:class:`~dosimetry.errors.InputError` naming the file, the field and the value."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from dosimetry.errors import InputError
from dosimetry.io.atomic import atomic_write_text

M = TypeVar("M", bound=BaseModel)


def validation_message(exc: ValidationError, source: str, what: str) -> str:
    """``source: invalid <what>: field: problem (value: …); …``."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(x) for x in err.get("loc", ())) or "(top level)"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        value = err.get("input")
        shown = ""
        if err.get("type") != "missing" and not isinstance(value, dict | list | tuple):
            shown = f" (value: {value!r})"
        parts.append(f"{loc}: {msg}{shown}")
    return f"{source}: invalid {what}: " + "; ".join(parts)


def validate(model: type[M], data: Any, source: str, what: str) -> M:
    """Validate ``data`` as ``model``; errors become one InputError."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: a {what} must be a mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InputError(validation_message(exc, source, what)) from None


def read_mapping(path: str | os.PathLike[str], what: str) -> Any:
    """Parse a YAML (safe loader) or JSON file chosen by suffix."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read {what} ({exc})") from None
    is_json = path.suffix.lower() == ".json"
    try:
        return json.loads(text) if is_json else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not valid {'JSON' if is_json else 'YAML'} "
                         f"({' '.join(str(exc).split())})") from None


def dump_text(model: BaseModel, suffix: str, exclude_none: bool = False) -> str:
    """JSON or YAML text of a model (``mode="json"`` values)."""
    data = model.model_dump(mode="json", exclude_none=exclude_none)
    if suffix == ".json":
        return json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def save(model: BaseModel, path: str | os.PathLike[str], what: str,
         exclude_none: bool = False) -> Path:
    """Write ``model`` atomically as JSON (``.json``) or YAML (``.yaml``/``.yml``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise InputError(f"{path}: a {what} must end in .json, .yaml or .yml, not {suffix!r}")
    text = dump_text(model, ".json" if suffix == ".json" else ".yaml", exclude_none)
    return atomic_write_text(path, text)
