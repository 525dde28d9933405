"""results.md and the plots of benchmarks/ranking.py, from its summary (see that module)."""

from __future__ import annotations

from pathlib import Path

import ranking_stats as st


def interval(x: dict | None, signed: bool = False) -> str:
    if not x:
        return "–"
    f = "+.3f" if signed else ".3f"
    return f"{x['estimate']:{f}} [{x['lo']:{f}}, {x['hi']:{f}}]"


def reach_text(t: dict | None) -> str:
    if not t:
        return "–"
    tally = f"({t['reached']}/{t['seeds']} seeds)"
    if t["median"] is None:
        return f"not reached {tally}"
    return f"by the end {tally}" if t["source"] == "final evaluation" else f"{t['median']:.2f} {tally}"


def p_text(p: float | None) -> str:
    return "–" if p is None else f"{p:.3f}" if p >= 0.001 else "<0.001"


def gain(row: dict) -> float:
    d = (row.get("vs_reference") or {}).get("score")
    return d["estimate"] if d else float("-inf")


def by_gain(res: dict) -> list[str]:
    """The variants of a summary, the largest dense-score gain over the reference first."""
    return sorted(res, key=lambda v: (-gain(res[v]), v))


def per_iteration(r: dict, key: str) -> float:
    """s_per_iteration or nfe_per_iteration: the calibration's, else the runs' own mean."""
    return (r["calibration"] or r["measured"])[key]


def markdown(summary: dict, ref: str = "flowgrpo") -> str:
    plan, res = summary["plan"], summary["variants"]
    n = plan.get("final_eval", "N")
    if plan.get("mode") == "budget":
        how = (f"Equal training wall-clock: {plan['budget_minutes']:g} minutes per run, iterations = "
               "floor(budget / calibrated seconds per iteration).")
    elif plan.get("mode") == "iterations":
        how = "Equal iterations (`--iterations`), not equal wall-clock: no calibration was run."
    else:
        how = "No plan.json: iteration counts unknown."
    lines = [how, "", f"Final held-out evaluation of every run and the base model at {n} images per prompt, "
             f"the same initial noise (`tempflow eval --num {n} --steps {plan.get('eval_steps', 'S')} --seed 0`). "
             "Intervals are 95% bootstrap intervals over seeds and prompts within category; Δ pairs each seed "
             f"with {ref}'s same seed. Sorted by Δ dense score.", "",
             f"| variant | overrides | iterations | s/it | model evals/it | train min | pass rate | dense score | "
             f"Δ dense vs {ref} | Δ pass vs {ref} | beats {ref} | Holm p | time to {ref}'s final "
             "dense score |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for v, r in ((v, res[v]) for v in by_gain(res)):
        m, fin, d = r["measured"], r.get("final", {}), r.get("vs_reference") or {}
        s_it, nfe = per_iteration(r, "s_per_iteration"), per_iteration(r, "nfe_per_iteration")
        over = " ".join(f"`{o}`" for o in r["overrides"]) or "(the ranking preset)"
        lines.append(f"| {v} | {over} | {r['iterations'] or round(m['iterations'])} | {s_it:.2f} | {nfe:.0f} | "
                     f"{m['seconds'] / 60:.1f} | {interval(fin.get('pass_rate'))} | {interval(fin.get('score'))} | "
                     f"{interval(d.get('score'), True)} | {interval(d.get('pass_rate'), True)} | "
                     f"{st.verdict(d.get('score')) if v != ref else '–'} | "
                     f"{p_text((d.get('score') or {}).get('p_holm'))} | "
                     f"{reach_text(r.get('time_to_reference'))} |")
    if summary["base"]:
        b = summary["base"]
        lines += ["", f"Base model: pass rate {interval(b['pass_rate'])}, dense score {interval(b['score'])} "
                  "(interval over prompts only)."]
    lines += ["", "Columns: *s/it* and *model evals/it* from the calibration (each variant alone; the runs' own "
              "mean when none); *train min*: measured training wall-clock per run, mean over seeds (evaluations "
              "excluded; runs sharing the machine are slower than calibrated); *pass rate*, *dense score*: final "
              "held-out means over seeds; *Δ*: paired difference to the reference; *beats*: yes only when the Δ "
              f"dense interval lies above zero (per comparison); *Holm p*: the two-sided bootstrap p-value of "
              f"that difference, Holm-adjusted over the variants compared with {ref} (below 0.05: the gain "
              f"holds with a family-wise error rate of 5%); *time to {ref}'s final dense score*: median over seeds of "
              f"the fraction of {ref}'s training wall-clock (calibrated: iterations x calibrated s/it, on "
              f"both sides, when there is a calibration) at which the seed first scored {ref}'s "
              "final dense score (in-run evaluations; or, with --half-evals, its checkpoint at half the budget and its "
              "end), or only whether it did by the end (final evaluation)."]
    halves = {v: r["half"] for v, r in res.items() if r.get("half")}
    if halves:
        lines += ["", f"At half the budget (each run's checkpoint after floor(iterations / 2) iterations, evaluated "
                  f"as the final ones; Δ pairs it with {ref}'s same seed at the end of {ref}'s full budget; "
                  f"*reaches* says yes only when that Δ dense interval lies above zero):", "",
                  f"| variant | seeds | iteration | train min | pass rate | dense score | Δ dense vs {ref}'s end | "
                  f"Δ pass vs {ref}'s end | reaches {ref}'s end in half the budget | target p (Holm) | "
                  "meets the target (Holm) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|"]
        for v, h in halves.items():
            d, t = h.get("vs_reference_end") or {}, res[v].get("target")
            lines.append(f"| {v} | {len(h['seeds'])} | {h['iteration']:g} | {h['seconds'] / 60:.1f} | "
                         f"{interval(h['pass_rate'])} | {interval(h['score'])} | {interval(d.get('score'), True)} | "
                         f"{interval(d.get('pass_rate'), True)} | {st.verdict(d.get('score'))} | "
                         f"{p_text(t and t['p_holm'])} | {('yes' if t['met_holm'] else 'no') if t else '–'} |")
        fam = next((r["target"]["family"] for r in res.values() if r.get("target")), 0)
        lines += ["", f"*Target p (Holm)*: the target holds for a variant when its end and its half-budget dense "
                  f"differences are both above zero; its p-value is the larger of the two tests' p-values, "
                  f"Holm-adjusted over the {fam} variants that have both. *Meets the target (Holm)*: both "
                  "differences positive and that adjusted p below 0.05."]
    if summary.get("pairwise"):
        lines += ["", "Pairwise at the end (variant minus against; each pair on the seeds both have, image "
                  "against image; *Holm p* adjusted over the pairs of this table):", "",
                  "| variant | against | seeds | Δ dense | Δ pass | p | Holm p |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {q['a']} | {q['b']} | {q['score']['seeds']} | {interval(q['score'], True)} | "
                  f"{interval(q['pass_rate'], True)} | {p_text(q['score']['p'])} | {p_text(q['score']['p_holm'])} |"
                  for q in summary["pairwise"]]
    cal = {v: r["calibration"] for v, r in res.items() if r["calibration"]}
    if cal:
        lines += ["", "Calibration (each variant alone, one process at a time):", "",
                  "| variant | threads | s/it | model evals/it | measured s/it in the runs |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {v} | {c['threads']} | {c['s_per_iteration']:.2f} | {c['nfe_per_iteration']:.0f} | "
                  f"{res[v]['measured']['s_per_iteration']:.2f} |" for v, c in cal.items()]
    if "jobs" in plan:
        lines += ["", f"Runs: {plan['jobs']} at a time, {plan['threads_per_run']} thread(s) each on {plan['cpus']} "
                  f"cores; extra overrides: {' '.join(plan['overrides']) or 'none'}."]
    return "\n".join(lines) + "\n"


def short_table(summary: dict, ref: str = "flowgrpo") -> str:
    """The README's table (results-short.md): one row a variant, the columns that rank it."""
    res = summary["variants"]
    lines = [f"| variant | seeds | iterations | model evals/it | pass rate | dense score | Δ dense vs {ref} | "
             f"Δ pass vs {ref} | at half the budget: Δ dense vs {ref}'s end | time to {ref}'s final dense score |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for v, r in ((v, res[v]) for v in by_gain(res)):
        m, fin, d = r["measured"], r.get("final", {}), r.get("vs_reference") or {}
        nfe = per_iteration(r, "nfe_per_iteration")
        half = (r.get("half") or {}).get("vs_reference_end") or {}
        lines.append(f"| {v} | {len(r['seeds'])} | {r['iterations'] or round(m['iterations'])} | {nfe:.0f} | "
                     f"{interval(fin.get('pass_rate'))} | {interval(fin.get('score'))} | "
                     f"{interval(d.get('score'), True) if v != ref else '–'} | "
                     f"{interval(d.get('pass_rate'), True) if v != ref else '–'} | "
                     f"{interval(half.get('score'), True)} | {reach_text(r.get('time_to_reference'))} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, x: str, path: Path) -> None:
    """Dense score and pass rate against x: in-run curves (mean over seeds) where they exist, and
    the paired evaluations (mean, 95% interval) at the runs' end and, with --half-evals, at half
    the budget. Wall-clock is calibrated (iterations x the variant's seconds per iteration alone,
    as the time-to-reference column) where the variant has a calibration, else measured; the base
    model is a dashed line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    key = {"iterations": "iteration", "nfe": "nfe", "wallclock": "seconds"}[x]
    scale = {"iterations": 1.0, "nfe": 1e6, "wallclock": 60.0}[x]
    fig, axes = plt.subplots(1, 2, figsize=(12.8, 4))
    for ax, metric in zip(axes, ("score", "pass_rate")):
        for i, (v, r) in enumerate(summary["variants"].items()):
            cal = (r.get("calibration") or {}).get("s_per_iteration")

            def at_x(p):  # p: {"iteration", "seconds", "nfe"}
                return p["iteration"] * cal if x == "wallclock" and cal else p[key]

            curves = [c for c in r["curves"].values() if c]
            n = min((len(c) for c in curves), default=0)
            if n and all(p[metric] is not None for c in curves for p in c[:n]):
                xs = np.mean([[at_x(p) for p in c[:n]] for c in curves], axis=0) / scale
                ax.plot(xs, np.mean([[p[metric] for p in c[:n]] for c in curves], axis=0), "-", color=f"C{i}",
                        marker="o", ms=3)
            m, h = r["measured"], r.get("half")
            points = [(r.get("final"), {"iteration": m["iterations"], "seconds": m["seconds"],
                                        "nfe": m["iterations"] * m["nfe_per_iteration"]})]
            if h:  # the checkpoint at half the budget, evaluated as the final one
                points.append((h, {"iteration": h["iteration"], "seconds": h["seconds"],
                                   "nfe": h["iteration"] * m["nfe_per_iteration"]}))
            for ev, at in points:
                if ev:
                    f = ev[metric]
                    ax.errorbar([at_x(at) / scale], [f["estimate"]], capsize=3, fmt="s", color=f"C{i}",
                                yerr=[[f["estimate"] - f["lo"]], [f["hi"] - f["estimate"]]])
            ax.plot([], [], "s-", color=f"C{i}", label=v)
        if summary.get("base"):
            ax.axhline(summary["base"][metric]["estimate"], color="grey", ls="--", lw=1, label="base model")
        ax.set_xlabel({"iterations": "iteration", "nfe": "model evaluations in training (millions)",
                       "wallclock": "training wall-clock (minutes; calibrated: iterations x s/it alone)"}[x])
        ax.set_ylabel(f"held-out {'dense score' if metric == 'score' else 'pass rate'}")
        ax.set_title("lines: in-run evaluations; squares: paired evaluations (end, half budget)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
