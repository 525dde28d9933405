"""A before/after picture from two `tempflow eval --out` folders: the first N images of each
prompt of one category, base on the left, trained on the right (same prompts, same noise).

    python benchmarks/before_after.py out/demo/eval-base out/demo/eval-trained \
        --category color_attr --per-prompt 6 --out docs/images/before-after-color_attr.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from tempflow.utils.images import load_images, save_grid


def first_per_prompt(folder: Path, category: str, n: int) -> tuple[torch.Tensor, list[str], int]:
    """images [P * n, 3, H, W] (the first n of each of the P prompts), their prompts, and P."""
    images, prompts = load_images(folder / f"{category}.png")
    order = list(dict.fromkeys(prompts))
    keep = [i for p in order for i in [j for j, q in enumerate(prompts) if q == p][:n]]
    return images[keep], [prompts[i] for i in keep], len(order)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--category", default="color_attr")
    ap.add_argument("--per-prompt", type=int, default=6)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    a, pa, rows = first_per_prompt(args.before, args.category, args.per_prompt)
    b, pb, _ = first_per_prompt(args.after, args.category, args.per_prompt)
    if pa != pb:
        raise SystemExit("the two folders hold different prompts: evaluate both with the same prompts")
    n = args.per_prompt
    gap = torch.ones(rows, 1, *a.shape[1:])  # a white column between before and after
    tiles = torch.cat([a.view(rows, n, *a.shape[1:]), gap, b.view(rows, n, *b.shape[1:])], dim=1)
    save_grid(tiles.flatten(0, 1), args.out, nrow=2 * n + 1, prompts=None)
    print(f"wrote {args.out}: {rows} prompts of {args.category}, {n} before | {n} after")


if __name__ == "__main__":
    main()
