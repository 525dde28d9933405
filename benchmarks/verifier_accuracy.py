"""How well the shapes-world verifier agrees with the renderer.

    python benchmarks/verifier_accuracy.py --n 2000 --seed 0 [--size 32]

For n random prompts (category uniform, then prompt uniform) it renders one image each and
reports, per image condition (clean / noisy / degraded, plus "harsh", outside the design range):

- own:       pass rate of verify(image, its own prompt)        (target >= 99.5% on clean,
             noisy and degraded images together)
- negative:  pass rate against a random *other* prompt that the drawn scene does not
             satisfy (checked symbolically on the ground-truth layout) (target <= 0.1%)
- any-other: pass rate against any random other prompt, and how often the ground truth
             itself satisfies that prompt ("a red circle" image vs "a circle")

plus blobs per image, the pooled clean + noisy + degraded rates, whether the 8-bit PNG of
every degraded image gets the same verdict, mean scores and render / verify timings for a
batch of 64.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

try:
    import tempflow  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tempflow.shapes import CATEGORIES, parse, perturb, random_prompt, verify_batch
from tempflow.shapes.render import draw, render_batch, sample_layout
from tempflow.shapes.verify import check, detect_batch, from_layout

CONDITIONS = {
    "clean": {},
    "noisy": {"noise_std": 0.05, "blur_sigma": 0.5},
    "degraded": {"noise_std": 0.05, "blur_sigma": 0.7, "color_shift": 0.08, "stray_blobs": 3},
    # beyond the design range, to show where the verifier starts to miss (no target)
    "harsh": {"noise_std": 0.08, "blur_sigma": 0.9, "color_shift": 0.1, "stray_blobs": 3},
}


def other_prompt(rng, prompt, truth, size, unsatisfied):
    """A random prompt != prompt; with unsatisfied, one the true scene does not satisfy."""
    while True:
        q = random_prompt(rng)
        if q != prompt and not (unsatisfied and check(parse(q), truth, size).passed):
            return q


def per_category(passed: torch.Tensor, cats: list[str]) -> str:
    parts = []
    for c in CATEGORIES:
        idx = [i for i, k in enumerate(cats) if k == c]
        if idx:
            parts.append(f"{c} {100 * passed[idx].float().mean():.1f}% (n={len(idx)})")
    return ", ".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="shapes-world verifier accuracy")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=32)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    size = args.size
    prompts = [random_prompt(rng) for _ in range(args.n)]
    layouts = [sample_layout(p, rng, size) for p in prompts]
    truths = [from_layout(lay) for lay in layouts]
    clean = torch.from_numpy(np.stack([draw(lay, size) for lay in layouts])).permute(0, 3, 1, 2)
    negatives = [other_prompt(rng, p, t, size, True) for p, t in zip(prompts, truths)]
    others = [other_prompt(rng, p, t, size, False) for p, t in zip(prompts, truths)]
    others_true = np.mean([check(parse(q), t, size).passed for q, t in zip(others, truths)])
    cats = [parse(p).category for p in prompts]
    neg_cats = [parse(q).category for q in negatives]
    print(f"shapes-world verifier, n={args.n} images, seed={args.seed}, size={size}px")
    bad_score = 0
    pooled_own, pooled_neg = [], []
    for name, kw in CONDITIONS.items():
        images = perturb(clean, rng, **kw) if kw else clean
        found = detect_batch(images)
        r_own = [check(parse(p), f, size) for p, f in zip(prompts, found)]
        r_neg = [check(parse(q), f, size) for q, f in zip(negatives, found)]
        r_any = [check(parse(q), f, size) for q, f in zip(others, found)]
        p_own, s_own = (torch.tensor([r.passed for r in r_own]),
                        torch.tensor([r.score for r in r_own]))
        p_neg, s_neg = (torch.tensor([r.passed for r in r_neg]),
                        torch.tensor([r.score for r in r_neg]))
        p_any = torch.tensor([r.passed for r in r_any])
        if name != "harsh":
            pooled_own.append(p_own)
            pooled_neg.append(p_neg)
        if name == "degraded":
            png = (images.clamp(0, 1) * 255).round().to(torch.uint8).float() / 255
            same = sum(check(parse(p), f, size).passed == r.passed
                       for p, f, r in zip(prompts, detect_batch(png), r_own))
        for p, s in ((p_own, s_own), (p_neg, s_neg)):
            bad_score += int(((s == 1.0) != p).sum())
        print(f"\n[{name}] {kw or 'rendered images as they are'}")
        print(f"  own prompt      pass {100 * p_own.float().mean():6.2f}%  "
              f"mean score {s_own.mean():.3f}")
        print(f"    per category: {per_category(p_own, cats)}")
        print(f"  negative prompt pass {100 * p_neg.float().mean():6.2f}%  "
              f"mean score {s_neg.mean():.3f}")
        print(f"    per category: {per_category(p_neg, neg_cats)}")
        print(f"  any other prompt pass {100 * p_any.float().mean():6.2f}% "
              f"(ground truth satisfies {100 * others_true:.2f}% of these)")
        print(f"  blobs per image {np.mean([r.details['blobs'] for r in r_own]):.4f}")
    own, neg = torch.cat(pooled_own), torch.cat(pooled_neg)
    print(f"\nclean + noisy + degraded ({len(own)} images): own pass "
          f"{100 * own.float().mean():.2f}%, negative pass {100 * neg.float().mean():.3f}% "
          f"({int(neg.sum())} of {len(neg)})")
    print(f"degraded images, float vs 8-bit PNG verdict: {same} of {len(prompts)} the same")
    print(f"\nscore == 1.0 exactly when passed: {'yes' if bad_score == 0 else f'NO ({bad_score})'}")
    batch = [random_prompt(rng) for _ in range(64)]
    t0 = time.perf_counter()
    for _ in range(20):
        imgs = render_batch(batch, rng, size)
    t1 = time.perf_counter()
    for _ in range(5):
        verify_batch(imgs, batch)
    t2 = time.perf_counter()
    print(f"render_batch(64) {1000 * (t1 - t0) / 20:.1f} ms, "
          f"verify_batch(64) {1000 * (t2 - t1) / 5:.1f} ms (1 CPU thread)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
