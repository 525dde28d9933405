"""`tempflow report`: one static HTML page comparing training runs and evaluations.

    from tempflow.report import write_report
    write_report(["runs/shapes-tempflow", "runs/shapes-flowgrpo"], "report.html")
"""

from __future__ import annotations

import datetime
from pathlib import Path

from tempflow.report import html, paired_section, sections
from tempflow.report.runs import RunData, load_run, load_runs

__all__ = ["RunData", "build_report", "load_run", "load_runs", "write_report"]


def build_report(paths: list[str], title: str | None = None) -> str:
    """The HTML document for the runs (or evaluation folders) at ``paths``."""
    runs = load_runs(paths)
    title = title or "tempflow report: " + ", ".join(r.name for r in runs)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    intro = (f'<p class="note">Written {stamp} by <code>tempflow report</code> from '
             + ", ".join(f"<code>{html.esc(r.path)}</code>" for r in runs) + ".</p>")
    body = [intro, paired_section.paired(runs), sections.overview(runs), sections.curves(runs), sections.geneval_tables(runs),
            sections.grids(runs), sections.cost(runs), sections.config_diff(runs)]
    return html.page(title, [b for b in body if b])


def write_report(paths: list[str], out: str | Path, title: str | None = None) -> Path:
    """Write :func:`build_report` to ``out`` (parent folders are created)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_report(paths, title), encoding="utf-8")
    return out
