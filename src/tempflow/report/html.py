"""HTML pieces of the report: escaped text, tables, embedded PNGs (base64 data URIs)."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f2f2f2; }
.up { color: #1a7f37; } .down { color: #c62828; }
p.lead { font-size: 1.1em; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
.plots figure { flex: 1 1 45%; } .plots img { width: 100%; }
.pair { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: 0.85em; color: #555; max-width: 560px; }
img.grid { image-rendering: pixelated; max-width: 560px; }
.note { color: #555; font-size: 0.9em; }
"""


def esc(text) -> str:
    return html.escape(str(text))


def num(value, digits: int = 3) -> str:
    """A number for a table cell: fixed digits; '–' for missing or non-finite."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def delta(before, after) -> str:
    """Signed difference as a coloured cell body."""
    if before is None or after is None:
        return "–"
    d = after - before
    cls = "up" if d > 0 else "down" if d < 0 else ""
    return f'<span class="{cls}">{d:+.3f}</span>'


def table(header: list[str], rows: list[list[str]], raw: bool = False) -> str:
    """<table>; cells are escaped unless ``raw`` (cells already HTML)."""
    cell = (lambda c: str(c)) if raw else esc
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def img(png: bytes, alt: str, cls: str = "") -> str:
    """An <img> with the PNG embedded as a base64 data URI (the page needs no other file)."""
    data = base64.b64encode(png).decode("ascii")
    c = f' class="{cls}"' if cls else ""
    return f'<img{c} alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def img_file(path: Path, alt: str, cls: str = "grid") -> str:
    return img(Path(path).read_bytes(), alt, cls)


def figure(body: str, caption: str) -> str:
    return f"<figure>{body}<figcaption>{caption}</figcaption></figure>"


def page(title: str, sections: list[str]) -> str:
    """The whole document: one file, inline style, no scripts, no external resources."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{esc(title)}</h1>" + "\n".join(sections) + "</body></html>\n")
