"""Paired comparison of two evaluations on the same prompts and the same initial noise.

Two models evaluated with the same prompt list, images per prompt, sampler and seed start
every image from the same noise (:func:`tempflow.evaluation.sample_eval_images`), so their
difference is measured image by image. The GenEval overall is the mean over categories of
each category's pass rate; its change is

    delta = 1/C sum_c ( 1/N_c sum_{i in c} (b_i - a_i) )

and its 95% interval comes from a paired cluster bootstrap: prompts are resampled with
replacement within each category (a prompt's images move together, since they share the
prompt and are correlated), the same resample for both models.

Inputs are the per-image rows of eval.json (``prompt``, ``category``, ``passed``, ``score``)
or :class:`~tempflow.evaluation.EvalResult` objects.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from tempflow.errors import UserError

METRICS = ("pass_rate", "score")
_ROW_KEY = {"pass_rate": "passed", "score": "score"}  # metric -> eval.json image field


@dataclass(frozen=True)
class Delta:
    """One row of a paired comparison: the two means, their difference and its 95% interval."""

    before: float
    after: float
    delta: float
    lo: float
    hi: float
    n_prompts: int

    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def text(self, digits: int = 3) -> str:
        f = f"{{:.{digits}f}}"
        return (f"{f.format(self.before)} -> {f.format(self.after)} "
                f"({self.delta:+.{digits}f}, 95% CI {self.lo:+.{digits}f} to {self.hi:+.{digits}f})")


def rows_of(result) -> list[dict]:
    """Per-image rows (prompt, category, passed, score) of an EvalResult or eval.json dict."""
    if isinstance(result, dict):
        return result["images"]
    return [{"prompt": p, "category": c, "passed": bool(result.passed[i]),
             "score": float(result.score[i])} for i, (p, c) in
            enumerate(zip(result.prompts, result.categories))]


def _per_prompt(rows_a: list[dict], rows_b: list[dict], metric: str):
    """{category: (mean_a [P], mean_b [P])} per prompt, over image pairs scored in both."""
    if len(rows_a) != len(rows_b):
        raise UserError(f"the two evaluations have {len(rows_a)} and {len(rows_b)} images: a "
                        "paired comparison needs the same prompts, images per prompt and seed")
    acc: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(lambda: [[], []]))
    for i, (a, b) in enumerate(zip(rows_a, rows_b)):
        if a["prompt"] != b["prompt"] or a["category"] != b["category"]:
            raise UserError(f"image {i}: prompt {a['prompt']!r} against {b['prompt']!r}: a paired "
                            "comparison needs both evaluations on the same prompt list, in order")
        va, vb = a.get(_ROW_KEY[metric]), b.get(_ROW_KEY[metric])
        if va is None or vb is None or not (np.isfinite(float(va)) and np.isfinite(float(vb))):
            continue  # a sample not scored in either evaluation
        pair = acc[a["category"]][a["prompt"]]
        pair[0].append(float(va))
        pair[1].append(float(vb))
    return {c: (np.array([np.mean(v[0]) for v in ps.values()]),
                np.array([np.mean(v[1]) for v in ps.values()])) for c, ps in sorted(acc.items())}


def compare(before, after, metric: str = "pass_rate", n_boot: int = 4000,
            seed: int = 0) -> dict[str, Delta]:
    """Paired comparison ``after`` - ``before`` per category and ``overall`` (mean over
    categories, GenEval's convention). Each argument: an EvalResult or an eval.json dict."""
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    per = _per_prompt(rows_of(before), rows_of(after), metric)
    if not per:
        raise UserError("the two evaluations have no image scored in both")
    rng = np.random.default_rng(seed)
    out: dict[str, Delta] = {}
    boot = []
    for cat, (a, b) in per.items():
        d = b - a
        idx = rng.integers(0, len(d), size=(n_boot, len(d)))
        bd = d[idx].mean(axis=1)  # [n_boot]
        boot.append(bd)
        lo, hi = np.percentile(bd, [2.5, 97.5])
        out[cat] = Delta(float(a.mean()), float(b.mean()), float(d.mean()), float(lo), float(hi),
                         len(d))
    overall = np.mean(boot, axis=0)
    lo, hi = np.percentile(overall, [2.5, 97.5])
    out["overall"] = Delta(float(np.mean([r.before for r in out.values()])),
                           float(np.mean([r.after for r in out.values()])),
                           float(np.mean([r.delta for r in out.values()])), float(lo), float(hi),
                           sum(r.n_prompts for r in out.values()))
    return out


def format_comparison(by_metric: dict[str, dict[str, Delta]], before: str = "base",
                      after: str = "trained") -> str:
    """A text table: per category, each metric's before -> after, change and 95% interval."""
    cats = list(next(iter(by_metric.values())))
    lines = [f"{'category':<14} " + "   ".join(
        f"{m + ' ' + before:>15} {after:>8} {'change':>7} {'95% CI':>17}" for m in by_metric)]
    for c in cats:
        cells = []
        for m, rows in by_metric.items():
            r = rows[c]
            cells.append(f"{r.before:>15.3f} {r.after:>8.3f} {r.delta:>+7.3f} "
                         f"{f'{r.lo:+.3f}..{r.hi:+.3f}':>17}")
        lines.append(f"{c:<14} " + "   ".join(cells))
    return "\n".join(lines)
