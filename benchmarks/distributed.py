"""Memory and time per process of `tempflow train` under DDP and FSDP2 on this machine (the
measured rows of docs/distributed.md), and the computed needs of large models on 8 GPUs.

    python benchmarks/distributed.py measure --model shapes --iterations 2   # launches 2 runs
    python benchmarks/distributed.py computed                                # the computed table
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = {"ddp": ["--multi_gpu", "--num_processes", "2"],
          "fsdp2": ["--config_file", str(ROOT / "configs/accelerate/fsdp.yaml"), "--num_processes", "2"]}


def measure(model: str, iterations: int, lora: bool) -> None:
    for engine, flags in LAUNCH.items():
        with tempfile.TemporaryDirectory() as tmp:
            cfg = {"model": {"name": model, "lora": {"rank": 4, "alpha": 4} if lora else None},
                   "sampling": {"steps": 6}, "algorithm": {"num_branches": 2, "seeds_per_prompt": 2,
                                                           "branch_points": 2, "beta": 0.01},
                   "train": {"iterations": iterations, "prompts_per_iteration": 2, "minibatches": 2},
                   "run": {"out": f"{tmp}/run", "eval_every": 0, "save_every": 0, "log_images_every": 0}}
            Path(tmp, "c.yaml").write_text(yaml.safe_dump(cfg))
            cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", *flags, "--mixed_precision", "no",
                   "--dynamo_backend", "no", "-m", "tempflow", "train", "--config", f"{tmp}/c.yaml", "--no-progress"]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                sys.exit(res.stderr[-3000:])
            rows = [json.loads(l) for l in Path(tmp, "run", "metrics.jsonl").read_text().splitlines()]
            rows = [r for r in rows if "reward/mean" in r]
            steps = sum(2 - r.get("train/skipped_steps", 0) for r in rows)
            peak = [max(r[f"sys/peak_rss_mb/rank{k}"] for r in rows) for k in (0, 1)]
            train = sum(r["time/train"] for r in rows)
            print(json.dumps({"engine": engine, "model": model, "lora": lora, "iterations": len(rows),
                              "peak_rss_mb": peak, "s_per_optimizer_step": round(train / max(steps, 1), 3),
                              "s_per_iteration": round(sum(r["time/iteration"] for r in rows) / len(rows), 2),
                              "s_collectives_per_iteration": round(sum(r["time/collectives"] for r in rows) / len(rows), 3)}),
                  flush=True)


GB = 1e9
# (transformer parameters, LoRA parameters at rank 64 on the attention projections): SD3.5-Medium
# (MMDiT-X, 24 blocks, width 1536) and FLUX.1-dev (19 double + 38 single blocks, width 3072)
MODELS = {"SD3.5-Medium": (2.5e9, 24 * 8 * 64 * (1536 + 1536)),
          "FLUX.1-dev (12B)": (12.0e9, (19 * 8 + 38 * 3) * 64 * (3072 + 3072))}


def computed(gpus: int = 8) -> None:
    """GB per GPU of weights + gradients + AdamW state + EMA + frozen reference, no activations.
    Full fine-tuning: float32 trained weights, gradients, Adam m and v (16 B) + float32 EMA (4 B)
    + bfloat16 frozen reference (2 B). LoRA: bfloat16 base (2 B) + the LoRA at 20 B/param."""
    print("| model | training | DDP | ZeRO-2 | ZeRO-3 | FSDP2 |")
    print("|---|---|---|---|---|---|")
    for name, (n, lora_n) in MODELS.items():
        full = {"DDP": 22 * n, "ZeRO-2": (4 + 4 + 2) * n + 12 * n / gpus,
                "ZeRO-3": 16 * n / gpus, "FSDP2": 22 * n / gpus}  # ZeRO-3: no EMA, beta = 0 (refused)
        lo = {"DDP": 2 * n + 20 * lora_n, "ZeRO-2": 2 * n + 8 * lora_n + 12 * lora_n / gpus,
              "ZeRO-3": (2 * n + 16 * lora_n) / gpus, "FSDP2": (2 * n + 20 * lora_n) / gpus}
        for label, need in (("full FT", full), (f"LoRA r64 ({lora_n / 1e6:.0f}M)", lo)):
            cells = [f"{need[k] / GB:.1f}" + ("" if need[k] / GB < 70 else " (no)") for k in need]
            print(f"| {name} | {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--model", default="shapes")
    m.add_argument("--iterations", type=int, default=2)
    m.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    sub.add_parser("computed")
    a = p.parse_args()
    measure(a.model, a.iterations, not a.full) if a.cmd == "measure" else computed()
