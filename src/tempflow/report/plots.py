"""The report's plots (matplotlib, Agg): PNG bytes, one figure per question.

Each plot function frees its figure's reference cycles when it returns (:func:`frees_cycles`):
closed matplotlib figures are cycles that otherwise wait for a full garbage collection."""

from __future__ import annotations

import io

from tempflow.report.runs import RunData, cumulative
from tempflow.utils.memory import frees_cycles


def _figure():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.grid(alpha=0.3)
    return plt, fig, ax


def _png(plt, fig, ax) -> bytes:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` values (fewer at the start)."""
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i + 1 - window):i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


@frees_cycles
def reward_curves(runs: list[RunData], window: int = 10) -> bytes:
    """Training reward (batch mean) per iteration, raw (faint) and smoothed, one colour per run."""
    plt, fig, ax = _figure()
    for i, run in enumerate(r for r in runs if r.train):
        its = [r["iteration"] for r in run.train]
        vals = [r["reward/mean"] for r in run.train]
        color = f"C{i}"
        ax.plot(its, vals, color=color, alpha=0.25, lw=0.8)
        ax.plot(its, smooth(vals, window), color=color, label=f"{run.name} ({run.algorithm})")
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"train reward (mean, {window}-iteration average)")
    return _png(plt, fig, ax)


@frees_cycles
def eval_curves(runs: list[RunData], x: str = "iteration", metric: str = "eval/pass_rate") -> bytes:
    """Held-out ``metric`` at each evaluation against x: 'iteration', 'nfe' (model evaluations
    spent in training so far, count/nfe) or 'time' (training wall-clock so far, time/iteration)."""
    plt, fig, ax = _figure()
    key = {"nfe": "count/nfe", "time": "time/iteration"}.get(x)
    for i, run in enumerate(runs):
        pts = [r for r in run.evals if metric in r]
        if not pts:
            continue
        if key is None:
            xs = [r["iteration"] for r in pts]
        else:
            cum = cumulative(run.train, key)
            pts = [r for r in pts if r["iteration"] in cum]
            xs = [cum[r["iteration"]] / (1e6 if x == "nfe" else 60.0) for r in pts]
        ax.plot(xs, [r[metric] for r in pts], "o-", color=f"C{i}", label=f"{run.name} ({run.algorithm})")
    ax.set_xlabel({"iteration": "iteration", "nfe": "model evaluations in training (millions)",
                   "time": "training wall-clock (minutes)"}[x])
    ax.set_ylabel("held-out pass rate" if metric == "eval/pass_rate" else f"held-out {metric[5:]}")
    return _png(plt, fig, ax)


@frees_cycles
def delta_curves(runs: list[RunData], metric: str = "pass_rate") -> bytes:
    """Paired change of the held-out ``metric`` against each run's first evaluation, with the
    95% bootstrap interval as a band (eval/delta/<metric>, _lo, _hi from the run's logs)."""
    plt, fig, ax = _figure()
    key = f"eval/delta/{metric}"
    for i, run in enumerate(runs):
        pts = [r for r in run.evals if key in r]
        if not pts:
            continue
        first = next(r["iteration"] for r in run.evals if "eval/pass_rate" in r)
        its = [first] + [r["iteration"] for r in pts]
        mid, lo, hi = ([0.0] + [r[key + s] for r in pts] for s in ("", "_lo", "_hi"))
        ax.fill_between(its, lo, hi, color=f"C{i}", alpha=0.2)
        ax.plot(its, mid, "o-", color=f"C{i}", label=f"{run.name} ({run.algorithm})")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"held-out {metric.replace('_', ' ')} change (paired, 95% band)")
    return _png(plt, fig, ax)
