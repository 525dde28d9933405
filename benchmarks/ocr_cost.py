"""Seconds per image of the OCR reward (PP-OCR on onnxruntime, CPU) on rendered text.

    OMP_NUM_THREADS=1 python benchmarks/ocr_cost.py [--batch 32] [--sizes 512 256] [--threads 1]
                                                    [--det-side 736] [--repeats 1]

Draws ``--batch`` images per size: black text on a light background (the texts of the
shipped ocr-test prompts, one or two lines, random position and font size, seeded), scores
them once to warm up (the first call loads the models), then ``--repeats`` times, and prints
the median seconds per image and the mean reward (near 1: the text is clean). ``--threads``
is the reward's ``threads`` argument (onnxruntime threads; 0 = onnxruntime's default, all
cores); ``--det-side`` its ``det_side``. Needs ``pip install 'tempflow[ocr]'``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

try:
    import tempflow  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tempflow.rewards import build_reward, score
from tempflow.rewards.ocr import quoted_text

PROMPTS = Path(__file__).resolve().parents[1] / "src" / "tempflow" / "assets" / "prompts" / "ocr-test.txt"


def render_batch(prompts: list[str], size: int, seed: int) -> torch.Tensor:
    """[B, 3, size, size] in [0, 1]: each prompt's quoted text, split into at most two lines."""
    from PIL import Image, ImageDraw, ImageFont

    rng = random.Random(seed)
    out = []
    for prompt in prompts:
        words = quoted_text(prompt).split()
        lines = [" ".join(words)] if len(words) < 3 else [" ".join(words[:2]), " ".join(words[2:])]
        font_size = int(size * rng.uniform(0.08, 0.12))
        font = ImageFont.load_default(size=font_size)
        shade = rng.randint(225, 255)
        img = Image.new("RGB", (size, size), (shade, shade, rng.randint(200, 255)))
        draw = ImageDraw.Draw(img)
        x, y = rng.randint(5, size // 8), rng.randint(size // 8, size // 2)
        for k, line in enumerate(lines):
            draw.text((x, y + int(k * font_size * 1.5)), line, fill=(rng.randint(0, 60),) * 3, font=font)
        out.append(torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255)
    return torch.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 256])
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads (0: its default)")
    ap.add_argument("--det-side", type=int, default=736, help="the reward's det_side")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    lines = PROMPTS.read_text(encoding="utf-8").splitlines()
    prompts = [lines[i % len(lines)] for i in range(args.batch)]
    t0 = time.perf_counter()
    reward = build_reward("ocr", threads=args.threads or None, det_side=args.det_side)
    print(f"reward 'ocr' (threads={args.threads or 'onnxruntime default'}, det_side={args.det_side}), "
          f"built in {time.perf_counter() - t0:.2f} s; batch of {args.batch}")
    for size in args.sizes:
        images = render_batch(prompts, size, seed=size)
        t0 = time.perf_counter()
        score(reward, images[:1], prompts[:1])                     # warm-up (first call per size)
        warm = time.perf_counter() - t0
        times, values = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            values = score(reward, images, prompts)
            times.append(time.perf_counter() - t0)
        per_image = statistics.median(times) / args.batch
        print(f"{size}x{size}: {per_image:.3f} s/image ({statistics.median(times):.1f} s per batch; "
              f"first image {warm:.2f} s), mean reward {values.nanmean().item():.3f}, "
              f"min {values.min().item():.3f}")


if __name__ == "__main__":
    main()
