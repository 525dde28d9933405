"""Paired differences of screened variants against a reference variant's runs, seed by seed.

A screen trains a variant outside the ranking (for example the winning layout with another step
sampler) with the same ``train.seed`` values, iterations and evaluation as a ranked variant, and
asks whether it differs. Each folder holds ``seed<k>/final-eval/eval.json`` (a ranking's run
folders and archive both do); seed k is paired with seed k, image with image, and the interval is
the ranking's bootstrap over seeds and prompts (benchmarks/ranking_stats.py)::

    python benchmarks/screen_summary.py benchmarks/results/ranking/tempflow-paper \\
        paper-cps=runs/screen/paper-cps paper-flash=runs/screen/paper-flash

prints one Markdown row per variant: its seeds, and the pass-rate and dense-score differences
with 95% intervals and two-sided bootstrap p-values (per comparison, not corrected).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ranking_archive as ra  # noqa: E402
import ranking_stats as st  # noqa: E402
import ranking_summary as rs  # noqa: E402


def evaluated_runs(folder: Path) -> dict[int, Path]:
    """{seed: run folder} of folder/seed<k> with a final evaluation; SystemExit naming the folder
    when there is none."""
    runs = {int(p.parent.parent.name.removeprefix("seed")): p.parent.parent
            for p in sorted(folder.glob(f"seed*/{rs.FINAL}/eval.json"))}
    if not runs:
        raise SystemExit(f"{folder}: no seed*/{rs.FINAL}/eval.json; give a ranking variant's folder")
    return runs


def final_evals(folder: Path) -> dict[int, dict]:
    """{seed: eval.json} of folder/seed<k>/final-eval."""
    return {k: rs.read_json(run / rs.FINAL / "eval.json") for k, run in evaluated_runs(folder).items()}


def keep(name: str, folder: Path, archive: Path) -> Path:
    """Copy folder's seed runs into archive/name as the ranking's archive keeps runs (config,
    metrics and evaluations cut to what the statistics read; no weights); returns archive/name."""
    for run in evaluated_runs(folder).values():
        ra.save_run(folder, run, archive / name)
    return archive / name


def parse_variant(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=FOLDER")
    return name, Path(path)


def rows(reference: dict[int, dict], variants: dict[str, dict[int, dict]], n_boot: int = 4000) -> list[dict]:
    """One row per variant: {name, seeds, pass_rate: diff, score: diff} (variant - reference)."""
    out = []
    for name, evals in variants.items():
        diffs = {m: st.paired_difference(evals, reference, m, n_boot) for m in st.ROW_KEY}
        if diffs["score"] is None:
            raise SystemExit(f"{name}: no seed in common with the reference")
        out.append({"name": name, "seeds": diffs["score"]["common_seeds"], **diffs})
    return out


def table(rows_: list[dict], reference: str) -> str:
    def cell(d):
        return f"{d['estimate']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] (p = {d['p']:.3f})"

    lines = [f"| variant | seeds | Δ pass rate vs {reference} | Δ dense score vs {reference} |", "|---|---|---:|---:|"]
    for r in rows_:
        lines.append(f"| {r['name']} | {', '.join(map(str, r['seeds']))} | {cell(r['pass_rate'])} | {cell(r['score'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reference", type=Path, help="the reference variant's folder (seed<k>/final-eval)")
    ap.add_argument("variants", nargs="+", type=parse_variant, help="NAME=FOLDER, the same layout")
    ap.add_argument("--n-boot", type=int, default=4000)
    ap.add_argument("--archive", type=Path, default=None,
                    help="first keep each variant's runs in ARCHIVE/NAME (committable, about 0.3 MB a run)")
    args = ap.parse_args(argv)
    ref = final_evals(args.reference)
    folders = {n: keep(n, p, args.archive) if args.archive else p for n, p in args.variants}
    result = rows(ref, {n: final_evals(p) for n, p in folders.items()}, args.n_boot)
    print(table(result, args.reference.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
