"""The statistics of benchmarks/ranking.py: pure functions on eval.json contents and metrics.

Held-out metrics are GenEval-style: per prompt the mean over its images, per category the
mean over its prompts, overall the mean over categories. Intervals come from one bootstrap
that resamples both sources of variation that a ranking has:

- training seeds, with replacement (seed k of a variant is paired with seed k of the
  reference: with the same ``train.seed`` both draw the same prompts in every iteration);
- held-out prompts within each category (clusters: a prompt's images move together), the same
  prompt resample for every seed and both sides of a difference, as in tempflow.paired.

A difference whose rows are all equal (identical evaluations, or all-pass against all-fail)
has a degenerate interval: every resample gives the same number.

A ranking makes several comparisons with one reference, so a per-comparison interval above zero
overstates the evidence. Each difference also carries a two-sided bootstrap p-value of "no
difference" (``p``), and ``holm`` adjusts a family of them (Holm 1979, step-down): a comparison
whose adjusted p is below 0.05 holds with a family-wise error rate of 5%.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

ROW_KEY = {"pass_rate": "passed", "score": "score"}  # metric -> per-image field of eval.json


def prompt_means(ev: dict, metric: str) -> dict[str, dict[str, float]]:
    """{category: {prompt: mean of the metric over its scored images}} of one eval.json
    (images not scored, None or NaN, are left out; a prompt without scored images too)."""
    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in ev["images"]:
        v = row.get(ROW_KEY[metric])
        if v is not None and math.isfinite(float(v)):
            acc[row["category"]][row["prompt"]].append(float(v))
    return {c: {p: float(np.mean(v)) for p, v in ps.items()} for c, ps in sorted(acc.items())}


def seed_matrix(evals: list[dict], metric: str) -> dict[str, np.ndarray]:
    """{category: [seeds, prompts] per-prompt means}, over the prompts scored in every eval."""
    tables = [prompt_means(ev, metric) for ev in evals]
    cats = sorted(set.intersection(*(set(t) for t in tables)))
    out = {}
    for c in cats:
        prompts = [p for p in tables[0][c] if all(p in t[c] for t in tables)]
        if prompts:
            out[c] = np.array([[t[c][p] for p in prompts] for t in tables], dtype=float)
    return out


def cluster_bootstrap(mats: dict[str, np.ndarray], n_boot: int = 4000, seed: int = 0,
                      p_value: bool = False) -> dict:
    """Mean over categories of the [seeds, prompts] means, and its 95% bootstrap interval:
    seeds resampled with replacement (the same draw for every category), prompts resampled
    within each category. Returns {estimate, lo, hi, seeds, prompts}, and with ``p_value`` also
    p = min(1, 2 (1 + min(#{boot <= 0}, #{boot >= 0})) / (n_boot + 1)), the two-sided bootstrap
    p-value of a zero mean (below 0.05 about when the 95% interval excludes zero)."""
    if not mats:
        raise ValueError("no category has a prompt scored in every evaluation")
    n_seeds = next(iter(mats.values())).shape[0]
    rng = np.random.default_rng(seed)
    s_idx = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    boot = np.zeros(n_boot)
    for m in mats.values():
        p_idx = rng.integers(0, m.shape[1], size=(n_boot, m.shape[1]))
        boot += m[s_idx[:, :, None], p_idx[:, None, :]].mean(axis=(1, 2))
    boot /= len(mats)
    est = float(np.mean([m.mean() for m in mats.values()]))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    # float rounding of equal resamples must not put the estimate outside its own interval
    lo, hi = (est, est) if np.ptp(boot) < 1e-12 else (float(lo), float(hi))
    out = {"estimate": est, "lo": lo, "hi": hi, "seeds": n_seeds,
           "prompts": int(sum(m.shape[1] for m in mats.values()))}
    if p_value:
        tail = min(int((boot <= 1e-12).sum()), int((boot >= -1e-12).sum()))
        out["p"] = min(1.0, 2 * (1 + tail) / (n_boot + 1))
    return out


def level(evals: list[dict], metric: str, n_boot: int = 4000) -> dict:
    """A variant's final held-out metric: mean over its seeds, 95% interval (seeds x prompts)."""
    return cluster_bootstrap(seed_matrix(evals, metric), n_boot)


def paired_difference(variant: dict[int, dict], reference: dict[int, dict], metric: str,
                      n_boot: int = 4000) -> dict | None:
    """variant - reference over the seeds both have ({seed: eval.json}), seed k against seed k,
    image rows against the same rows (same prompts, same noise). None without a common seed."""
    common = sorted(set(variant) & set(reference))
    if not common:
        return None
    both = seed_matrix([variant[k] for k in common] + [reference[k] for k in common], metric)
    n = len(common)
    diff = {c: m[:n] - m[n:] for c, m in both.items()}
    return {**cluster_bootstrap(diff, n_boot, p_value=True), "common_seeds": common}


def holm(p: dict) -> dict:
    """Holm's step-down adjusted p-values of a family of m tests: sorted ascending,
    p~_(i) = max over j <= i of min(1, (m - j + 1) p_(j)) (i, j from 1)."""
    out, running = {}, 0.0
    for j, k in enumerate(sorted(p, key=lambda k: (p[k], k))):
        running = max(running, min(1.0, (len(p) - j) * p[k]))
        out[k] = running
    return out


def holm_verdict(diff: dict | None, adjusted_p: float | None, alpha: float = 0.05) -> str:
    """'yes' only when the gain is positive and its Holm-adjusted p-value is below alpha."""
    if diff is None or adjusted_p is None:
        return "–"
    return "yes" if diff["estimate"] > 0 and adjusted_p < alpha else "no"


def verdict(diff: dict | None) -> str:
    """'yes' only when the whole 95% interval of the gain lies above zero."""
    if diff is None:
        return "–"
    if diff["lo"] > 0:
        return "yes"
    return "no (worse)" if diff["hi"] < 0 else "no"


# ---------------------------------------------------------------------------- wall-clock

def seconds_per_iteration(train_records: list[dict], skip: int = 1) -> tuple[float, float]:
    """(mean time/iteration, mean count/nfe) of a calibration run's training records, the first
    ``skip`` iterations left out (warm-up) unless nothing would be left."""
    recs = sorted(train_records, key=lambda r: r["iteration"])
    timed = recs[skip:] or recs
    if not timed:
        raise ValueError("the calibration run logged no iteration")
    return (float(np.mean([r["time/iteration"] for r in timed])),
            float(np.mean([r["count/nfe"] for r in timed])))


def iterations_for_budget(budget_minutes: float, s_per_iteration: float) -> int:
    """floor(budget / seconds per iteration), at least 1."""
    return max(1, math.floor(budget_minutes * 60 / s_per_iteration + 1e-9))


def calibrated_clock(seeds: dict[int, dict], s_per_iteration: float) -> dict[int, dict]:
    """The runs of load_seed with every "seconds" replaced by iterations x the calibrated seconds
    per iteration: the training wall-clock the variant takes alone, which the load on the machine
    while the runs trained (two at a time, evaluations, other work) does not move."""
    def at(x: dict) -> dict:
        return {**x, "seconds": x["iteration"] * s_per_iteration}

    return {k: {**r, "seconds": r["iterations"] * s_per_iteration, "curve": [at(c) for c in r["curve"]],
                "half": r["half"] and at(r["half"])} for k, r in seeds.items()}


def first_reaching(points: list[tuple[float, float]], target: float) -> float | None:
    """Seconds of the first (seconds, score) point whose score is >= target; None: never."""
    return next((t for t, s in sorted(points) if s >= target - 1e-9), None)


def median_censored(times: list[float | None]) -> float | None:
    """Median over seeds, a seed that never reached counted as later than every other
    (None: the median itself was not reached)."""
    if not times:
        return None
    vals = sorted(t if t is not None else math.inf for t in times)
    n = len(vals)
    med = vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2
    return None if math.isinf(med) else float(med)


def time_to_reference(runs: dict[int, dict], ref: dict[int, dict]) -> dict | None:
    """When a variant first reaches the reference's final held-out dense score, per common seed.

    runs, ref: {seed: {"seconds": training wall-clock, "curve": [{"seconds", "score"}, ...] of the
    in-run evaluations, "final": final eval.json or None}}. With curves on both sides the target
    of seed k is the reference's last in-run score and the points are the variant's in-run
    evaluations; otherwise (final evaluations on both sides) the one point is the variant's final
    score at its training wall-clock. Returns the source, per seed the fraction of the reference's
    training wall-clock at which the variant first scored the target (None: never), their
    censored median and how many seeds reached it; None without comparable seeds.
    """
    common = sorted(set(runs) & set(ref))
    curves = all(r[k]["curve"] and r[k]["curve"][-1]["score"] is not None for r in (runs, ref) for k in common)
    if not common or not (curves or all(runs[k]["final"] and ref[k]["final"] for k in common)):
        return None
    fractions = []
    for k in common:
        if curves:
            target = ref[k]["curve"][-1]["score"]
            points = [(c["seconds"], c["score"]) for c in runs[k]["curve"]]
        else:
            target = ref[k]["final"]["summary"]["eval/score"]
            points = [(runs[k]["seconds"], runs[k]["final"]["summary"]["eval/score"])]
            if h := runs[k].get("half"):
                points.append((h["seconds"], h["eval"]["summary"]["eval/score"]))
        t = first_reaching(points, target)
        fractions.append(None if t is None else t / ref[k]["seconds"])
    halves = not curves and any(runs[k].get("half") for k in common)
    source = "in-run evaluations" if curves else "half and final evaluations" if halves else "final evaluation"
    return {"source": source, "fractions": fractions,
            "median": median_censored(fractions), "reached": sum(f is not None for f in fractions),
            "seeds": len(common)}
