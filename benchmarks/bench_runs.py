"""What the multi-run benchmarks share: the preset's path, running ``tempflow`` child
processes, and evaluating the base model as their runs are evaluated."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import tempflow  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))
from tempflow.utils.child_process import run_pool  # noqa: E402


def preset_path(preset: str) -> Path:
    return Path(preset) if Path(preset).is_absolute() else ROOT / preset


def run_commands(tasks: list[tuple[str, list[str], Path]], jobs: int) -> None:
    """:func:`run_pool`, then SystemExit naming the failed commands."""
    failed = run_pool(tasks, jobs)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


def allow_own_imports(cfg) -> list[str]:
    """--allow-import for reward factories this benchmark put into a run's config (from --set)."""
    from tempflow.config.trust import factory_paths
    paths = factory_paths({"name": cfg.reward.name, "components": [vars(c) for c in cfg.reward.components]})
    return [a for m in sorted({p.partition(":")[0].strip() for _, p in paths}) for a in ("--allow-import", m)]


def base_reward_flags(cfg) -> list[str]:
    """--reward (and --reward-set, --allow-import) for the base model's evaluation, so it is
    scored with the runs' reward as their own evaluations are (they read it from their config).
    A weighted reward cannot be named on the command line: the base then gets none, and prompts
    of the shapes world are still scored by the verifier."""
    r = cfg.reward
    if r.components:
        return []
    flags = ["--reward", r.name, *allow_own_imports(cfg)]
    for key, value in r.kwargs.items():  # JSON is YAML, which --reward-set reads
        flags += ["--reward-set", f"{key}={json.dumps(value)}"]
    return flags


def base_eval_task(cfg, n: int, steps: int, folder: Path) -> tuple[str, list[str], Path]:
    """The run_commands task that evaluates the base model of ``cfg`` as its runs are evaluated:
    its held-out prompts, sampler and reward, ``n`` images per prompt, seed 0, into ``folder``."""
    s = cfg.sampling
    return ("eval base model", ["eval", "--model", cfg.model.name, "--prompts", cfg.prompts.eval,
                                "--steps", str(steps), "--shift", str(s.shift),
                                "--cfg", str(s.guidance_scale if s.use_cfg else 1.0), "--num", str(n),
                                "--seed", "0", *base_reward_flags(cfg), "--out", str(folder)],
            folder.parent / "final-eval-base.log")
