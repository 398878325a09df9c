"""A report as data (sections of paragraphs, tables and figures) rendered to HTML and to PDF.

Both renderings come from one :class:`Report`, so they carry the same content. Figures are
rendered once to PNG; the HTML embeds them (base64, one self-contained file) and the PDF places
them on pages of their own. Tables longer than a page continue on the next.
"""

from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from dosimetry.io.atomic import atomic_path, atomic_write_text

#: Rows of a table per PDF page.
_ROWS_PER_PAGE = 28


@dataclass(frozen=True)
class Table:
    """A table: title, column headers, rows of text cells, and an optional note."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    note: str = ""


@dataclass(frozen=True)
class Figure:
    """A rendered figure (PNG bytes) with its caption."""

    title: str
    png: bytes
    caption: str = ""


@dataclass(frozen=True)
class Section:
    """A report section."""

    title: str
    paragraphs: tuple[str, ...] = ()
    tables: tuple[Table, ...] = ()
    figures: tuple[Figure, ...] = ()


@dataclass(frozen=True)
class Report:
    """A whole report: title, header lines (patient pseudonym, study, protocol) and sections."""

    title: str
    header: tuple[tuple[str, str], ...]
    sections: tuple[Section, ...] = field(default=())


def figure_png(fig, dpi: int = 110) -> bytes:
    """PNG bytes of a matplotlib figure (closed afterwards)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


_CSS = """
body{font-family:Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{font-size:1.6em;border-bottom:2px solid #345}h2{font-size:1.25em;margin-top:1.6em;color:#345}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #bbb;padding:.25em .5em;text-align:right}
th{background:#eef}td:first-child,th:first-child{text-align:left}
.header td{text-align:left;border:none;padding:.1em .8em .1em 0}
figure{margin:1em 0}figcaption{font-size:.85em;color:#555}img{max-width:100%}
.note{font-size:.85em;color:#555}
"""


def render_html(report: Report) -> str:
    """Self-contained HTML of the report."""
    e = html.escape
    out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
           f"<title>{e(report.title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{e(report.title)}</h1><table class='header'>"]
    out += [f"<tr><td><b>{e(k)}</b></td><td>{e(v)}</td></tr>" for k, v in report.header]
    out.append("</table>")
    for sec in report.sections:
        out.append(f"<h2>{e(sec.title)}</h2>")
        out += [f"<p>{e(p)}</p>" for p in sec.paragraphs]
        for t in sec.tables:
            out.append(f"<h3>{e(t.title)}</h3><table><tr>"
                       + "".join(f"<th>{e(c)}</th>" for c in t.columns) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in t.rows]
            out.append("</table>")
            if t.note:
                out.append(f"<p class='note'>{e(t.note)}</p>")
        for f in sec.figures:
            data = base64.b64encode(f.png).decode("ascii")
            out.append(f"<figure><img alt='{e(f.title)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption><b>{e(f.title)}</b> {e(f.caption)}</figcaption></figure>")
    out.append("</body></html>\n")
    return "\n".join(out)


def write_html(report: Report, path: str | os.PathLike[str]) -> Path:
    """Write the HTML report atomically."""
    return atomic_write_text(path, render_html(report))


def _text_page(pdf, lines: list[tuple[str, str]]) -> None:
    """One A4 page of text lines; style 'h1', 'h2', 'p', 'note', 'mono'."""
    import textwrap

    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(8.27, 11.69))
    y = 0.95
    for style, text in lines:
        size = {"h1": 16, "h2": 13, "p": 9.5, "note": 8, "mono": 8}[style]
        width = {"h1": 70, "h2": 85, "p": 110, "note": 125, "mono": 125}[style]
        for chunk in textwrap.wrap(text, width) or [""]:
            fig.text(0.06, y, chunk, fontsize=size, va="top",
                     family="monospace" if style == "mono" else "sans-serif",
                     weight="bold" if style in ("h1", "h2") else "normal",
                     color="#555" if style == "note" else "#222")
            y -= size / 11.69 / 72 * 1.5
        y -= 0.006
    pdf.savefig(fig)
    plt.close(fig)


def _table_page(pdf, title: str, table: Table, rows) -> None:
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(8.27, 11.69))
    fig.text(0.06, 0.96, title, fontsize=12, weight="bold", va="top")
    ax = fig.add_axes((0.04, 0.08, 0.92, 0.84))
    ax.axis("off")
    tab = ax.table(cellText=[list(r) for r in rows] or [[""] * len(table.columns)],
                   colLabels=list(table.columns), loc="upper center", cellLoc="right")
    tab.auto_set_font_size(False)
    tab.set_fontsize(7 if len(table.columns) > 7 else 8)
    tab.scale(1.0, 1.25)
    if table.note:
        fig.text(0.06, 0.05, table.note, fontsize=7.5, color="#555", wrap=True)
    pdf.savefig(fig)
    plt.close(fig)


def _figure_page(pdf, fig_item: Figure) -> None:
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    img = mpimg.imread(io.BytesIO(fig_item.png), format="png")
    fig = plt.figure(figsize=(8.27, 11.69))
    fig.text(0.06, 0.96, fig_item.title, fontsize=12, weight="bold", va="top")
    ax = fig.add_axes((0.05, 0.12, 0.9, 0.8))
    ax.imshow(img)
    ax.axis("off")
    if fig_item.caption:
        fig.text(0.06, 0.08, fig_item.caption, fontsize=8, color="#555", wrap=True)
    pdf.savefig(fig)
    plt.close(fig)


def write_pdf(report: Report, path: str | os.PathLike[str]) -> Path:
    """Write the PDF report atomically (A4 pages: text, tables, figures)."""
    from matplotlib.backends.backend_pdf import PdfPages

    with atomic_path(path, suffix=".pdf") as tmp:
        with PdfPages(tmp, metadata={"Title": report.title, "Creator": "rptdose"}) as pdf:
            lines = [("h1", report.title)] + [("p", f"{k}: {v}") for k, v in report.header]
            for sec in report.sections:
                lines.append(("h2", sec.title))
                lines += [("p", p) for p in sec.paragraphs]
                if len(lines) > 40:
                    _text_page(pdf, lines)
                    lines = []
            if lines:
                _text_page(pdf, lines)
            for sec in report.sections:
                for t in sec.tables:
                    for start in range(0, max(len(t.rows), 1), _ROWS_PER_PAGE):
                        part = t.rows[start:start + _ROWS_PER_PAGE]
                        title = f"{sec.title} — {t.title}" + (" (cont.)" if start else "")
                        _table_page(pdf, title, t, part)
                for f in sec.figures:
                    _figure_page(pdf, f)
    return Path(path)
