"""Soak run: many iterations of a tiny training run, to show that memory stays flat.

    python benchmarks/soak.py --iterations 200

Builds a tiny random shapes model (2 layers, width 16), trains it with the full loop
(evaluation every 20 iterations, checkpoints every 10, grids, TensorBoard, reward curve) and
prints the process's peak resident memory (``sys/peak_rss_mb`` in metrics.jsonl) at the
start and the end of the run.
"""

from __future__ import annotations

import argparse
import json
import os
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # quiet optional-backend notices

    from tempflow.training.loop import train

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        run = train(soak_config(tiny_model(Path(d) / "tiny"), Path(d) / "run", args.iterations),
                    progress=False)
        seconds = time.perf_counter() - t0
        rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    rss = {r["iteration"]: r["sys/peak_rss_mb"] for r in rows if "sys/peak_rss_mb" in r}
    last = max(rss)
    marks = sorted({0, min(9, last), last // 4, last // 2, last})
    print(f"{args.iterations} iterations in {seconds:.0f} s")
    print("peak RSS (MiB) after iteration: " + ", ".join(f"{i + 1}: {rss[i]:.1f}" for i in marks))
    print(f"start {rss[0]:.1f} MiB, end {rss[last]:.1f} MiB, growth after iteration 10: "
          f"{rss[last] - rss[min(9, last)]:.1f} MiB")


if __name__ == "__main__":
    main()
