"""The summarising half of benchmarks/ranking.py: read every finished run of a ranking folder and
write results.md, summary.json and the plots (statistics in ranking_stats, text and plots in
ranking_report)."""

from __future__ import annotations

import json
from pathlib import Path

import ranking_report as rr
import ranking_stats as st

REFERENCE = "flowgrpo"
FINAL = "final-eval"  # in each run folder, and in the ranking folder for the base model
HALF = "half-eval"  # in each run folder: its checkpoint at half the budget (--half-evals)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def load_seed(path: Path) -> dict | None:
    """One run: training totals, in-run evaluation curve and the final paired eval.json."""
    from tempflow.report.runs import cumulative, load_run

    run = load_run(path)
    if not run.train:
        return None
    secs, nfe = cumulative(run.train, "time/iteration"), cumulative(run.train, "count/nfe")
    curve = [{"iteration": e["iteration"], "seconds": secs[e["iteration"]], "nfe": nfe[e["iteration"]],
              "pass_rate": e["eval/pass_rate"], "score": e.get("eval/score")}
             for e in run.evals if "eval/pass_rate" in e and e["iteration"] in secs]
    n = len(run.train)
    final, half = read_json(path / FINAL / "eval.json") or None, read_json(path / HALF / "eval.json") or None
    if half:  # the checkpoint at half the budget (eval.json records which)
        h = half["checkpoint"]
        half = {"iteration": h, "seconds": secs[h], "nfe": nfe[h], "eval": half}
    return {"iterations": n, "seconds": secs[max(secs)], "nfe": nfe[max(nfe)],
            "s_per_iteration": secs[max(secs)] / n, "nfe_per_iteration": nfe[max(nfe)] / n, "curve": curve,
            "final": final, "half": half}


def summarise(out: Path, variants: list[str], overrides: dict[str, list[str]], n_boot: int = 4000,
              pairs: list[tuple[str, str]] | None = None) -> dict:
    """summary.json's content: per variant its runs' totals and curves, its final and half-budget
    levels with intervals, its paired difference to REFERENCE and its time to REFERENCE's level,
    and the pairwise differences (``pairs``, default every pair of non-reference variants);
    ``overrides`` maps each variant to its --set list (shown in results.md)."""
    plan, cal = read_json(out / "plan.json"), read_json(out / "calibration.json")
    runs = {}
    for v in variants:
        seeds = {int(d.name[4:]): load_seed(d) for d in sorted((out / v).glob("seed*")) if d.name[4:].isdigit()}
        if seeds := {k: r for k, r in seeds.items() if r is not None}:
            runs[v] = seeds
    finals = {v: {k: r["final"] for k, r in rs.items() if r["final"]} for v, rs in runs.items()}
    res = {}
    for v, rs in runs.items():
        row = {"overrides": overrides.get(v, []), "seeds": sorted(rs), "iterations": plan.get("iterations", {}).get(v),
               "calibration": {k: cal[v][k] for k in ("s_per_iteration", "nfe_per_iteration", "threads")}
               if v in cal else None,
               "measured": {x: sum(r[x] for r in rs.values()) / len(rs)
                            for x in ("iterations", "seconds", "s_per_iteration", "nfe_per_iteration")},
               "curves": {k: r["curve"] for k, r in rs.items()}}
        if finals[v]:
            evs = list(finals[v].values())
            row["final"] = {m: st.level(evs, m, n_boot) for m in st.ROW_KEY}
            if finals.get(REFERENCE):
                row["vs_reference"] = {m: st.paired_difference(finals[v], finals[REFERENCE], m, n_boot)
                                       for m in st.ROW_KEY}
        halves = {k: r["half"] for k, r in rs.items() if r["half"]}
        if halves:
            h_evals = {k: h["eval"] for k, h in halves.items()}
            row["half"] = {"seeds": sorted(halves),
                           "iteration": sum(h["iteration"] for h in halves.values()) / len(halves),
                           "seconds": sum(h["seconds"] for h in halves.values()) / len(halves),
                           **{m: st.level(list(h_evals.values()), m, n_boot) for m in st.ROW_KEY}}
            if finals.get(REFERENCE):
                row["half"]["vs_reference_end"] = {
                    m: st.paired_difference(h_evals, finals[REFERENCE], m, n_boot) for m in st.ROW_KEY}
        if REFERENCE in runs:
            clock = "calibrated" if v in cal and REFERENCE in cal else "measured"
            if clock == "calibrated":
                t = st.time_to_reference(st.calibrated_clock(rs, cal[v]["s_per_iteration"]),
                                         st.calibrated_clock(runs[REFERENCE], cal[REFERENCE]["s_per_iteration"]))
            else:
                t = st.time_to_reference(rs, runs[REFERENCE])
            row["time_to_reference"] = t and {**t, "clock": clock}
        res[v] = row
    adjust_for_multiplicity(res)
    base = read_json(out / FINAL / "eval.json")
    one = next((f for fs in finals.values() for f in fs.values()), base)
    plan = {**plan, "final_eval": one.get("images_per_prompt"), "eval_steps": one.get("steps")} if one else plan
    return {"plan": plan, "variants": res, "pairwise": pairwise(finals, res, n_boot, pairs),
            "base": {m: st.level([base], m, n_boot) for m in st.ROW_KEY} if base else None}


def adjust_for_multiplicity(res: dict) -> None:
    """Holm-adjust, in place, the family of dense-score comparisons with REFERENCE at the end
    (``vs_reference.score.p_holm``) and the family of target tests (``target``): a variant meets
    the target when both its end and its half-budget dense differences are above zero, an
    intersection of two tests whose p-value is the larger of the two; Holm then runs over the
    variants that have both."""
    ends = {v: r["vs_reference"]["score"] for v, r in res.items() if v != REFERENCE and r.get("vs_reference")}
    for v, adj in st.holm({v: d["p"] for v, d in ends.items()}).items():
        ends[v]["p_holm"] = adj
    both = {v: (ends[v], r["half"]["vs_reference_end"]["score"]) for v, r in res.items()
            if v in ends and (r.get("half") or {}).get("vs_reference_end")}
    p = {v: max(e["p"], h["p"]) for v, (e, h) in both.items()}
    for v, adj in st.holm(p).items():
        e, h = both[v]
        res[v]["target"] = {"p": p[v], "p_holm": adj, "met": st.verdict(e) == st.verdict(h) == "yes",
                            "met_holm": st.holm_verdict(e, adj) == st.holm_verdict(h, adj) == "yes",
                            "family": len(p)}


def pairwise(finals: dict[str, dict[int, dict]], res: dict, n_boot: int,
             pairs: list[tuple[str, str]] | None = None) -> list[dict]:
    """The paired final difference a - b (common seeds, image against image) in both metrics of
    each (a, b) in ``pairs`` (default: every pair of non-reference variants, the higher
    dense-score gain first), with the dense-score p-values Holm-adjusted over the pairs."""
    if pairs is None:
        order = [v for v in rr.by_gain(res) if v != REFERENCE]
        pairs = [(a, b) for i, a in enumerate(order) for b in order[i + 1:]]
    out = []
    for a, b in pairs:
        if finals.get(a) and finals.get(b):
            d = {m: st.paired_difference(finals[a], finals[b], m, n_boot) for m in st.ROW_KEY}
            if d["score"] is not None:
                out.append({"a": a, "b": b, **d})
    for k, adj in st.holm({i: q["score"]["p"] for i, q in enumerate(out)}).items():
        out[k]["score"]["p_holm"] = adj
    return out


def write_summary(out: Path, variants: list[str], overrides: dict[str, list[str]], n_boot: int = 4000,
                  pairs: list[tuple[str, str]] | None = None) -> dict:
    """results.md, results-short.md (the README's table), summary.json and the three
    ranking_vs_*.png plots in ``out``."""
    summary = summarise(out, variants, overrides, n_boot, pairs)
    if not summary["variants"]:
        raise SystemExit(f"no finished runs under {out}")
    (out / "results.md").write_text(rr.markdown(summary, REFERENCE))
    (out / "results-short.md").write_text(rr.short_table(summary, REFERENCE))
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    for x in ("iterations", "nfe", "wallclock"):
        rr.plot(summary, x, out / f"ranking_vs_{x}.png")
    return summary
