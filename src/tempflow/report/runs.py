"""Reading what a report shows: a training run folder, or an evaluation folder (eval.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tempflow.errors import UserError


@dataclass
class RunData:
    """One report column.

    train: the per-iteration records of metrics.jsonl (those with reward/mean); evals: the
    evaluation records (eval/pass_rate or eval/reward); eval_grids: grids/eval_NNNNN.png by
    iteration; evals_json: (folder, content) of every eval.json in or under the folder.
    """

    name: str
    path: Path
    config: dict | None = None
    train: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    eval_grids: dict[int, Path] = field(default_factory=dict)
    evals_json: list[tuple[Path, dict]] = field(default_factory=list)

    @property
    def algorithm(self) -> str:
        """TempFlow-GRPO / Flow-GRPO / one of the single-ingredient ablations, from the config."""
        if self.config is None:
            return "evaluation"
        from tempflow.schemes import describe_algorithm

        return describe_algorithm(self.config.get("algorithm", {}))


def _read_jsonl(path: Path) -> list[dict]:
    """Records of a metrics.jsonl; a truncated last line (a run still writing) is skipped."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i + 1 < len(lines):
                raise UserError(f"{path}: record {i + 1} is not JSON; repair or delete that line") from None
    return out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); re-create it with `tempflow eval --out`") from None


def load_run(path: str | Path, name: str | None = None) -> RunData:
    """A run folder (config.yaml, metrics.jsonl, grids/) or an evaluation folder (eval.json)."""
    import yaml

    p = Path(path).expanduser()
    if not p.is_dir():
        raise UserError(f"{str(path)!r} is not a folder: give run folders written by `tempflow train` "
                        f"or evaluation folders written by `tempflow eval --out`")
    run = RunData(name or p.name, p)
    evals_json = sorted(p.glob("eval.json")) + sorted(p.glob("*/eval.json"))
    run.evals_json = [(f.parent, _read_json(f)) for f in evals_json]
    metrics = p / "metrics.jsonl"
    if (p / "config.yaml").is_file():
        run.config = yaml.safe_load((p / "config.yaml").read_text())
    if metrics.is_file():
        records = _read_jsonl(metrics)
        run.train = [r for r in records if "reward/mean" in r]
        run.evals = [r for r in records if "eval/pass_rate" in r or "eval/reward" in r]
    for g in sorted((p / "grids").glob("eval_*.png")):
        try:
            run.eval_grids[int(g.stem.split("_")[1])] = g
        except (IndexError, ValueError):
            continue
    if run.config is None and not metrics.is_file() and not run.evals_json:
        raise UserError(f"{str(path)!r} holds no metrics.jsonl, config.yaml or eval.json: give run "
                        f"folders written by `tempflow train` or folders written by `tempflow eval --out`")
    return run


def load_runs(paths: list[str]) -> list[RunData]:
    """Runs named by folder; a name used twice gets its parent folder prepended."""
    names = [Path(p).expanduser().resolve().name for p in paths]
    out = []
    for p, n in zip(paths, names):
        if names.count(n) > 1:
            r = Path(p).expanduser().resolve()
            n = f"{r.parent.name}/{r.name}"
        out.append(load_run(p, n))
    return out


def cumulative(train: list[dict], key: str) -> dict[int, float]:
    """{iteration i: sum of ``key`` over training iterations < i}: the cost spent before the
    evaluation logged at iteration i (evaluations after i iterations carry iteration = i)."""
    total, out = 0.0, {0: 0.0}
    for r in sorted(train, key=lambda r: r["iteration"]):
        total += float(r.get(key, 0.0))
        out[r["iteration"] + 1] = total
    return out
