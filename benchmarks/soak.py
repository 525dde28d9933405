"""Soak run: many iterations of a tiny training run, to show that memory stays flat.

    OMP_NUM_THREADS=1 python benchmarks/soak.py --iterations 400 [--max-growth 2]

Builds a tiny random shapes model (2 layers, width 16), trains it with the full loop
(evaluation every 20 iterations, checkpoints every 10, grids every 20, TensorBoard, reward
curve every 5) and prints the process's peak resident memory (``sys/peak_rss_mb`` in
metrics.jsonl, VmHWM) after iterations 1, N/4, N/2 and N, the resident memory at that point
(``sys/rss_mb``, VmRSS, when the loop records it), and the peak's growth from iteration N/4
to N in MiB and %. The first quarter is warm-up (allocator pools, caches filling); after it
the peak should stay flat. ``--max-growth PCT`` exits with status 1 if that growth exceeds
PCT %. Everything is seeded (model, prompts, noise), so the training is the same on every run;
the memory figures vary by 1-2 MiB between runs on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def tiny_model(path: Path) -> Path:
    """A randomly initialised shapes model over the full vocabulary (as in the tests)."""
    import torch

    from tempflow.models.shapes_model import ShapesModel, ShapesModelConfig
    from tempflow.shapes import vocabulary

    torch.manual_seed(0)
    ShapesModel(ShapesModelConfig(vocab=vocabulary(), num_layers=2, num_heads=2, head_dim=8,
                                  text_dim=16, text_layers=1)).save_pretrained(path)
    return path


def soak_config(model: Path, out: Path, iterations: int):
    from tempflow.config import config_from_dict

    return config_from_dict({
        "model": {"name": str(model), "lora": {"rank": 4, "alpha": 4}},
        "sampling": {"steps": 6, "eval_steps": 4},
        "algorithm": {"num_branches": 2, "seeds_per_prompt": 2, "branch_points": 2, "clip_range": 0.2},
        "train": {"iterations": iterations, "prompts_per_iteration": 2, "lr": 1e-3},
        "reward": {"name": "shapes", "kwargs": {"dense": True}},
        "run": {"out": str(out), "eval_every": 20, "eval_images_per_prompt": 1, "save_every": 10,
                "log_images_every": 20, "keep_checkpoints": 2},
    })


def rss_marks(iterations: int) -> list[int]:
    """Iterations (1-based) whose figures are printed: 1, N/4, N/2 and N."""
    return sorted({1, max(1, iterations // 4), max(1, iterations // 2), iterations})


def summary(rows: list[dict]) -> tuple[list[str], float]:
    """Printed lines and the peak RSS growth (%) from iteration N/4 to N, from metrics records."""
    peak = {r["iteration"] + 1: r["sys/peak_rss_mb"] for r in rows if "sys/peak_rss_mb" in r}
    now = {r["iteration"] + 1: r["sys/rss_mb"] for r in rows if "sys/rss_mb" in r}
    n = max(peak)
    marks = rss_marks(n)
    lines = ["peak RSS (MiB) after iteration: " + ", ".join(f"{i}: {peak[i]:.1f}" for i in marks)]
    if now:
        lines.append("RSS now (MiB) after iteration:  " + ", ".join(f"{i}: {now[i]:.1f}" for i in marks))
    q = max(1, n // 4)
    growth = peak[n] - peak[q]
    pct = 100 * growth / peak[q]
    lines.append(f"peak RSS growth from iteration {q} to {n}: {growth:+.1f} MiB ({pct:+.2f} %)")
    return lines, pct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--max-growth", type=float, default=None, metavar="PCT",
                        help="exit with status 1 if the peak RSS grows by more than PCT %% "
                             "from iteration N/4 to N")
    args = parser.parse_args()
    if args.iterations < 4:
        parser.error("--iterations must be at least 4")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # quiet optional-backend notices

    from tempflow.training.loop import train

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        run = train(soak_config(tiny_model(Path(d) / "tiny"), Path(d) / "run", args.iterations),
                    progress=False)
        seconds = time.perf_counter() - t0
        rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    lines, pct = summary(rows)
    print(f"{args.iterations} iterations in {seconds:.0f} s")
    print("\n".join(lines))
    if args.max_growth is not None and pct > args.max_growth:
        print(f"peak RSS grew by {pct:.2f} % > {args.max_growth} %", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
