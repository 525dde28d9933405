"""A ranking's results, small enough to commit, so that a ranking run in parts can go on in
a fresh checkout (``ranking.py --archive DIR``).

The archive mirrors ``--out`` with only what the summary reads:

    DIR/plan.json, DIR/calibration.json       as in --out
    DIR/final-eval/eval.json                  the base model's final evaluation
    DIR/VARIANT/seedK/config.yaml             the run's config
    DIR/VARIANT/seedK/metrics.jsonl           each record cut to METRIC_KEYS
    DIR/VARIANT/seedK/final-eval/eval.json    (and half-eval/): image rows cut to IMAGE_KEYS

A run is archived when its training and evaluations have finished. :func:`restore` copies an
archive into ``--out`` without replacing anything there, and marks each restored run with
RESTORED: ranking.py reuses such a run while its config and evaluations are the ones asked for
(it holds no weights, so a missing evaluation means training it again).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

RESTORED = "restored-from-archive"
TOP_FILES = ("plan.json", "calibration.json", "final-eval/eval.json")
RUN_EVALS = ("final-eval/eval.json", "half-eval/eval.json")
# what ranking.load_seed and ranking_stats read from metrics.jsonl ("reward/mean" marks a training record)
METRIC_KEYS = ("iteration", "reward/mean", "time/iteration", "count/nfe", "eval/pass_rate", "eval/score")
IMAGE_KEYS = ("prompt", "category", "passed", "score")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def cut_eval(ev: dict) -> dict:
    """eval.json with each image row reduced to IMAGE_KEYS (everything else kept)."""
    return {**ev, "images": [{k: r.get(k) for k in IMAGE_KEYS} for r in ev.get("images", [])]}


def cut_metrics(text: str) -> str:
    """metrics.jsonl with each record reduced to METRIC_KEYS; records with none of them dropped."""
    out = []
    for line in text.splitlines():
        if line.strip():
            rec = {k: v for k, v in json.loads(line).items() if k in METRIC_KEYS}
            if set(rec) - {"iteration"}:
                out.append(json.dumps(rec))
    return "".join(line + "\n" for line in out)


def save_top(out: Path, archive: Path) -> None:
    """Copy plan.json, calibration.json and the base model's final evaluation (where present)."""
    for name in TOP_FILES:
        src = out / name
        if src.is_file():
            data = json.loads(src.read_text())
            _write(archive / name, json.dumps(cut_eval(data) if name.endswith("eval.json") else data, indent=1) + "\n")


def save_run(out: Path, run: Path, archive: Path) -> Path:
    """Archive one finished run folder (under ``out``); returns its archive folder."""
    dest = archive / run.relative_to(out)
    _write(dest / "config.yaml", (run / "config.yaml").read_text())
    _write(dest / "metrics.jsonl", cut_metrics((run / "metrics.jsonl").read_text()))
    for name in RUN_EVALS:
        if (run / name).is_file():
            _write(dest / name, json.dumps(cut_eval(json.loads((run / name).read_text()))) + "\n")
        elif (dest / name).is_file():  # an evaluation of an earlier training of this run
            (dest / name).unlink()
    return dest


def archived_runs(archive: Path) -> list[Path]:
    """VARIANT/seedK folders of the archive (relative paths)."""
    return sorted(p.parent.relative_to(archive) for p in archive.glob("*/seed*/config.yaml"))


def restore(archive: Path, out: Path) -> list[Path]:
    """Copy the archive into ``out`` where ``out`` lacks it; returns the run folders restored.
    A run folder already holding a config.yaml is left alone (a local run is newer)."""
    if not archive.is_dir():
        return []
    for name in TOP_FILES:
        if (archive / name).is_file() and not (out / name).exists():
            _write(out / name, (archive / name).read_text())
    restored = []
    for rel in archived_runs(archive):
        run = out / rel
        if (run / "config.yaml").exists():
            continue
        for name in ("config.yaml", "metrics.jsonl", *RUN_EVALS):
            if (archive / rel / name).is_file():
                _write(run / name, (archive / rel / name).read_text())
        (run / RESTORED).write_text(f"copied from {archive / rel}: results only, no weights\n")
        restored.append(run)
    return restored


def remove(archive: Path | None, out: Path, run: Path) -> None:
    """Forget a run's archived results (it is being trained again)."""
    if archive is not None and (archive / run.relative_to(out)).is_dir():
        shutil.rmtree(archive / run.relative_to(out))
