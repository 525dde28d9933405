"""The report's sections, each a function of the runs returning an HTML fragment."""

from __future__ import annotations

import json

from tempflow.report import html as H
from tempflow.report import plots
from tempflow.report.runs import RunData

PHASES = ("time/sample", "time/decode", "time/reward", "time/advantages", "time/train", "time/iteration")
COUNTS = ("count/nfe", "count/nfe_grad", "count/decodes", "count/reward_calls")


def _mean(records: list[dict], key: str) -> float | None:
    vals = [float(r[key]) for r in records if key in r]
    return sum(vals) / len(vals) if vals else None


def _pass(record: dict | None) -> float | None:
    return None if record is None or "eval/pass_rate" not in record else record["eval/pass_rate"]


def _plain_delta(before, after) -> str:
    return "–" if before is None or after is None else f"{after - before:+.3f}"


def overview(runs: list[RunData]) -> str:
    """One row per run: algorithm, iterations, held-out pass rate first / last / best, cost."""
    rows = []
    for r in runs:
        first, last = (r.evals[0], r.evals[-1]) if r.evals else (None, None)
        passes = [e["eval/pass_rate"] for e in r.evals if "eval/pass_rate" in e]
        total_s = sum(float(t.get("time/iteration", 0.0)) for t in r.train)
        rows.append([H.esc(r.name), H.esc(r.algorithm), H.num(len(r.train)),
                     H.num(_pass(first)), H.num(_pass(last)), _plain_delta(_pass(first), _pass(last)),
                     H.num(max(passes) if passes else None),
                     H.num(_mean(r.train, "count/nfe"), 0), H.num(_mean(r.train, "time/iteration"), 2),
                     H.num(total_s / 60, 1) if r.train else "–"])
    head = ["run", "algorithm", "iterations", "pass rate (first eval)", "pass rate (last eval)",
            "change (see the paired section for its interval)",
            "best", "model evals / iteration", "s / iteration", "training minutes"]
    return ("<h2>Overview</h2>" + H.table(head, rows, raw=True)
            + '<p class="note">Held-out pass rate: GenEval-style (mean over categories) of deterministic '
            "ODE samples with the EMA weights, as logged by the run's evaluations.</p>")


def config_diff(runs: list[RunData]) -> str:
    """Config values that differ between the runs (nothing when there is one run)."""
    from tempflow.config import diff_configs

    cfgs = [r for r in runs if r.config is not None]
    if len(cfgs) < 2:
        return ""
    keys: list[str] = []
    for r in cfgs[1:]:
        keys += [k for k in diff_configs(cfgs[0].config, r.config) if k not in keys and k != "run.out"]

    def get(cfg: dict, key: str):
        for part in key.split("."):
            cfg = cfg.get(part) if isinstance(cfg, dict) else None
        return json.dumps(cfg)

    rows = [[k] + [get(r.config, k) for r in cfgs] for k in keys]
    body = H.table(["config key"] + [r.name for r in cfgs], rows) if rows else "<p>The configs are equal.</p>"
    return "<h2>Config differences</h2>" + body


def curves(runs: list[RunData]) -> str:
    """Training reward and held-out pass rate against iterations, model evaluations, wall-clock."""
    figs = []
    if any(r.train for r in runs):
        figs.append(H.figure(H.img(plots.reward_curves(runs), "training reward"),
                             "Training reward per iteration (faint: raw batch mean; solid: moving average)."))
    if any("eval/pass_rate" in e for r in runs for e in r.evals):
        for x, cap in (("iteration", "against iterations"),
                       ("nfe", "against model evaluations spent in training (count/nfe, CFG counts 2)"),
                       ("time", "against training wall-clock (time/iteration; evaluations excluded)")):
            figs.append(H.figure(H.img(plots.eval_curves(runs, x), f"pass rate {cap}"),
                                 f"Held-out pass rate {cap}."))
    if any("eval/delta/pass_rate" in e for r in runs for e in r.evals):
        figs.insert(0, H.figure(H.img(plots.delta_curves(runs), "paired change"),
                                "Held-out pass rate change against the run's first evaluation, "
                                "paired (same prompts and noise), with its 95% interval band."))
    if not figs:
        return ""
    return '<h2>Curves</h2><div class="plots">' + "".join(figs) + "</div>"


def _categories(record: dict) -> list[str]:
    return sorted(k.split("/", 2)[2] for k in record if k.startswith("eval/pass_rate/"))


def geneval_tables(runs: list[RunData]) -> str:
    """Per run: pass rate per category at the first and last evaluation, and every eval.json."""
    parts = ["<h2>GenEval-style tables</h2>"]
    for r in runs:
        evals = [e for e in r.evals if "eval/pass_rate" in e]
        if evals:
            first, last = evals[0], evals[-1]
            rows = [[c, H.num(first.get(f"eval/pass_rate/{c}")), H.num(last.get(f"eval/pass_rate/{c}")),
                     H.delta(first.get(f"eval/pass_rate/{c}"), last.get(f"eval/pass_rate/{c}"))]
                    for c in _categories(last)]
            rows.append(["<b>overall</b>", H.num(_pass(first)), H.num(_pass(last)), H.delta(_pass(first), _pass(last))])
            if "eval/reward" in last:
                rows.append(["reward (mean)", H.num(first.get("eval/reward")), H.num(last["eval/reward"]),
                             H.delta(first.get("eval/reward"), last["eval/reward"])])
            parts.append(f"<h3>{H.esc(r.name)} ({H.esc(r.algorithm)}): training evaluations</h3>"
                         + H.table(["category", f"iteration {first['iteration']}",
                                    f"iteration {last['iteration']}", "change"], rows, raw=True))
        for folder, data in r.evals_json:
            parts.append(_eval_json_table(r, folder, data))
    return "".join(parts) if len(parts) > 1 else ""


def _eval_json_table(run: RunData, folder, data: dict) -> str:
    """The table of one eval.json written by `tempflow eval --out`."""
    what = f"{data.get('model')}" + (f" + LoRA {data['lora']}" if data.get("lora") else "")
    how = (f"{data.get('images_per_prompt')} images per prompt, {data.get('steps')} ODE steps, "
           f"CFG {data.get('guidance_scale')}, seed {data.get('seed')}")
    rows = [[c, H.num(v["pass_rate"]), H.num(v["score"]), H.num(v["n"])]
            for c, v in (data.get("table") or {}).items()]
    reward = (data.get("summary") or {}).get("eval/reward")
    if reward is not None:
        rows.append([f"reward {data.get('reward')} (mean)", H.num(reward), "", ""])
    return (f"<h3>{H.esc(run.name)}: {H.esc(folder.name)}/eval.json</h3>"
            f'<p class="note">{H.esc(what)} on {H.esc(data.get("prompts", "?"))}: {H.esc(how)}.</p>'
            + H.table(["category", "pass rate", "dense score", "images"], rows))


def cost(runs: list[RunData]) -> str:
    """Mean seconds per phase and model evaluations / decodes / reward calls per iteration."""
    rows = [[r.name] + [H.num(_mean(r.train, k), 3) for k in PHASES]
            + [H.num(_mean(r.train, k), 0) for k in COUNTS] for r in runs if r.train]
    if not rows:
        return ""
    head = ["run"] + [f"{k[5:]} s" for k in PHASES] + ["model evals", "with gradient", "decodes", "reward calls"]
    return ("<h2>Cost per iteration</h2>" + H.table(head, rows, raw=True)
            + '<p class="note">Means over the logged iterations (metrics.jsonl). A CFG model call '
            "counts 2 model evaluations.</p>")


def grids(runs: list[RunData]) -> str:
    """Before / after: the first and last evaluation grid of each run (same prompts, same
    initial noise), and the category grids of each eval.json folder."""
    parts = ["<h2>Samples before and after</h2>"]
    for r in runs:
        if len(r.eval_grids) >= 1:
            its = sorted(r.eval_grids)
            pick = [its[0], its[-1]] if len(its) > 1 else its
            figs = [H.figure(H.img_file(r.eval_grids[i], f"{r.name} iteration {i}"),
                             f"{H.esc(r.name)}, iteration {i}") for i in pick]
            parts.append(f"<h3>{H.esc(r.name)} ({H.esc(r.algorithm)})</h3>" + _prompts_note(r.eval_grids[its[-1]])
                         + f'<div class="pair">{"".join(figs)}</div>')
        for folder, _ in r.evals_json:
            figs = [H.figure(H.img_file(g, f"{r.name} {g.stem}"), H.esc(g.stem))
                    for g in sorted(folder.glob("*.png"))]
            if figs:
                parts.append(f"<h3>{H.esc(r.name)}: {H.esc(folder.name)}</h3>"
                             f'<div class="pair">{"".join(figs)}</div>')
    return "".join(parts) if len(parts) > 1 else ""


def _prompts_note(grid) -> str:
    """The grid's prompts from its .json sidecar, in order, without repeats."""
    side = grid.with_suffix(".json")
    prompts = json.loads(side.read_text()).get("prompts") if side.is_file() else None
    if not prompts:
        return ""
    unique = list(dict.fromkeys(prompts))
    return (f'<p class="note">Deterministic ODE samples of the same prompts from the same initial '
            f'noise in both grids, row by row: {H.esc("; ".join(unique))}.</p>')
