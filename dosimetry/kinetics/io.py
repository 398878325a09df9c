"""Reading time-activity curves from CSV, with validation at the boundary.

Format: a header row, then one sample per row. Columns (case-insensitive, any order):

=============  ========  =======================================================
column         required  meaning
=============  ========  =======================================================
``time_h``     yes       time after injection [h]
``activity_mbq`` yes     activity [MBq]
``sigma_mbq``  no        standard uncertainty of the activity [MBq]
``voi``        no        VOI name; rows are grouped by it (one curve per VOI)
=============  ========  =======================================================

Values are converted to internal units (s, Bq) here and nowhere else.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from dosimetry import units
from dosimetry.errors import InputError
from dosimetry.kinetics.fit import TimeActivityCurve

REQUIRED_COLUMNS = ("time_h", "activity_mbq")
OPTIONAL_COLUMNS = ("sigma_mbq", "voi")
MAX_CSV_BYTES = 50 * 2**20  # a TAC table is small; refuse anything absurd before reading it


def _number(text: str, where: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{where}: {column} {text!r} is not a number") from None
    return value


def read_tac_csv(path: str | os.PathLike[str]) -> dict[str, TimeActivityCurve]:
    """Read one or more time-activity curves from a CSV file.

    Parameters
    ----------
    path : path
        CSV file with the columns described in the module docstring.

    Returns
    -------
    dict of str → TimeActivityCurve
        One curve per VOI, in order of first appearance; a file without a ``voi`` column gives
        one curve named after the file stem.

    Raises
    ------
    InputError
        Missing or unreadable file, missing column, unknown column, non-numeric value (row and
        column named), empty VOI name, or a curve that fails validation (fewer than 2 points,
        duplicate times, NaN or negative activity, negative time — VOI and value named).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    size = p.stat().st_size
    if size > MAX_CSV_BYTES:
        raise InputError(f"{p}: {size} bytes is too large for a TAC table "
                         f"(limit {MAX_CSV_BYTES} bytes)")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read ({exc})") from None
    rows = list(csv.reader(line for line in text.splitlines() if line.strip()))
    if not rows:
        raise InputError(f"{p}: empty file")
    header = [h.strip().lower() for h in rows[0]]
    for col in REQUIRED_COLUMNS:
        if col not in header:
            raise InputError(f"{p}: missing column {col!r} (header: {', '.join(header)})")
    unknown = [h for h in header if h not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        raise InputError(f"{p}: unknown column(s) {unknown}; expected "
                         f"{', '.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}")
    if len(set(header)) != len(header):
        raise InputError(f"{p}: duplicate column names in header {header}")
    col = {name: header.index(name) for name in header}
    has_sigma = "sigma_mbq" in col
    groups: dict[str, tuple[list[float], list[float], list[float]]] = {}
    default_voi = p.stem
    for lineno, row in enumerate(rows[1:], start=2):
        where = f"{p}, row {lineno}"
        if len(row) != len(header):
            raise InputError(f"{where}: {len(row)} fields, header has {len(header)}")
        cells = [c.strip() for c in row]
        voi = cells[col["voi"]] if "voi" in col else default_voi
        if not voi:
            raise InputError(f"{where}: empty voi name")
        t_h = _number(cells[col["time_h"]], where, "time_h")
        a = _number(cells[col["activity_mbq"]], where, "activity_mbq")
        s = _number(cells[col["sigma_mbq"]], where, "sigma_mbq") if has_sigma else math.nan
        g = groups.setdefault(voi, ([], [], []))
        g[0].append(units.hours_to_s(t_h))
        g[1].append(units.mbq_to_bq(a))
        g[2].append(units.mbq_to_bq(s))
    if not groups:
        raise InputError(f"{p}: header only, no data rows")
    return {voi: TimeActivityCurve(tuple(t), tuple(a), tuple(s) if has_sigma else None,
                                   voi=voi, source=str(p))
            for voi, (t, a, s) in groups.items()}
