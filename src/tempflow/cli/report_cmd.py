"""`tempflow report RUN [RUN ...] --out report.html`: one HTML page comparing runs."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="one static HTML page comparing training runs",
                       description="Curves (training reward, held-out pass rate against iterations, "
                       "model evaluations and wall-clock), the GenEval-style table of each run, "
                       "before/after grids of the same prompts and initial noise, and the cost per "
                       "iteration, in one HTML file with every image embedded. RUN is a folder "
                       "written by `tempflow train` or by `tempflow eval --out`.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run or evaluation folders")
    p.add_argument("--out", default="report.html", help="HTML file to write (default report.html)")
    p.add_argument("--title", default=None, help="page title (default: the run names)")
    p.set_defaults(run=run)


def run(args) -> int:
    from tempflow.errors import UserError
    from tempflow.report import write_report

    if not args.out.endswith((".html", ".htm")):
        raise UserError(f"--out must name an .html file, got {args.out!r}")
    path = write_report(args.runs, args.out, args.title)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {len(args.runs)} run(s))")
    return 0
