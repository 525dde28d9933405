"""The report's lead: paired before/after comparisons with 95% intervals (tempflow.paired).

For a training run: its first and last held-out evaluations (evals/eval_NNNNN.json, same
prompts and initial noise). For evaluation folders (`tempflow eval --out`): the first folder
given is "before" and every later one with the same prompts, images per prompt, sampler and
seed is compared with it.
"""

from __future__ import annotations

import json

from tempflow.report import html as H
from tempflow.report.runs import RunData


def _table(by_metric: dict, before: str, after: str) -> str:
    rows = []
    for c in by_metric["pass_rate"]:
        cells = [f"<b>{c}</b>" if c == "overall" else H.esc(c)]
        for m in ("pass_rate", "score"):
            d = by_metric[m][c]
            sign = "up" if d.lo > 0 else "down" if d.hi < 0 else ""
            cells += [H.num(d.before), H.num(d.after),
                      f'<span class="{sign}">{d.delta:+.3f}</span>', f"{d.lo:+.3f} to {d.hi:+.3f}"]
        rows.append(cells)
    head = ["category", f"pass rate {before}", after, "change", "95% CI",
            f"dense score {before}", after, "change", "95% CI"]
    return H.table(head, rows, raw=True)


def _headline(by_metric: dict, what: str) -> str:
    o = by_metric["pass_rate"]["overall"]
    verdict = ("an improvement" if o.lo > 0 else "a decline" if o.hi < 0
               else "no change distinguishable from noise")
    return (f'<p class="lead">{H.esc(what)}: held-out GenEval overall {o.before:.3f} &rarr; '
            f"{o.after:.3f} (<b>{o.delta:+.3f}</b>, paired 95% interval {o.lo:+.3f} to {o.hi:+.3f}, "
            f"{o.n_prompts} prompts): {verdict}.</p>")


def paired(runs: list[RunData]) -> str:
    from tempflow.cli.compare_cmd import PAIRING_KEYS
    from tempflow.paired import compare

    parts = []
    for r in runs:
        files = sorted((r.path / "evals").glob("eval_*.json"))
        if len(files) >= 2:
            a, b = (json.loads(f.read_text()) for f in (files[0], files[-1]))
            by = {m: compare(a, b, m) for m in ("pass_rate", "score")}
            what = f"{r.name}, iteration {a['iteration']} to {b['iteration']}"
            parts.append(f"<h3>{H.esc(what)}</h3>" + _headline(by, what)
                         + _table(by, f"it {a['iteration']}", f"it {b['iteration']}"))
    evals = [(r, folder, data) for r in runs for folder, data in r.evals_json
             if data.get("table") is not None]
    if len(evals) >= 2:
        r0, f0, base = evals[0]
        for r, folder, data in evals[1:]:
            if any(base.get(k) != data.get(k) for k in PAIRING_KEYS):
                continue  # not the same prompts, noise and sampler: not paired
            by = {m: compare(base, data, m) for m in ("pass_rate", "score")}
            what = f"{folder.name} against {f0.name}"
            parts.append(f"<h3>{H.esc(what)}</h3>" + _headline(by, what)
                         + _table(by, f0.name, folder.name))
    if not parts:
        return ""
    return ("<h2>Before and after, paired</h2>" + "".join(parts)
            + '<p class="note">Each image after training starts from the same initial noise as the '
            "one before, so the change is measured image by image. Intervals: paired bootstrap over "
            "prompts within each category (4000 resamples). Overall: mean over categories, as "
            "GenEval reports it.</p>")
