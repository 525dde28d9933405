"""Sample efficiency on the shapes world: the 2 x 2 ablation and cheaper branching, over seeds.

    python benchmarks/sample_efficiency.py [--iterations N] [--seeds 3] [--variants ...] [--jobs J]
        [--config configs/shapes-tempflow.yaml] [--set key=value ...] [--out runs/sample-efficiency]
    python benchmarks/sample_efficiency.py --summarise-only --out runs/sample-efficiency

Every variant is the preset (``--config``) plus only the overrides that define it, so the
preset's tuned values (steps, lr, KL, batch, ...) are shared by all: Flow-GRPO (no branching, no weighting), branching only, weighting
only, TempFlow-GRPO; and the cheaper branching variants, TempFlow-GRPO with r = 1 or 2 random
branch points per iteration, with all trained steps, and with each branch's ODE continuation
to sigma = 0 cut to 3 steps (``algorithm.continuation_steps``). Same number of iterations,
same prompts per iteration, and for a given seed the same prompts in every iteration (the
draw depends on the seed and iteration only). ``--jobs J`` trains J runs at a time as child
processes with cores / J threads each (or OMP_NUM_THREADS); results.md says how they shared.

Each (variant, seed) is a normal training run under ``--out/<variant>/seed<k>`` (a finished
run with the same config is reused, so an interrupted benchmark continues). Written to
``--out``: results.md (held-out pass rate and dense score at every evaluation, mean +- std
over seeds; iterations to reach the seed's base pass rate + each ``--gains``; model
evaluations, wall-clock and pass-rate gain per million evaluations; with ``--final-eval N``,
every run's last weights and the base at N images per prompt), summary.json, and
pass_rate_vs_{iterations,nfe,wallclock}.png (mean over seeds, band +- std).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_runs, when loaded from elsewhere
try:
    import tempflow  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))
from bench_runs import allow_own_imports, base_eval_task, preset_path, run_commands  # noqa: E402
from tempflow.utils.child_process import threads_per_job  # noqa: E402

ABLATION = {
    "flowgrpo": ["algorithm.scheme=flow_grpo", "algorithm.step_weight=none"],
    "branching-only": ["algorithm.scheme=branching", "algorithm.step_weight=none"],
    "weighting-only": ["algorithm.scheme=flow_grpo", "algorithm.step_weight=tempflow"],
    "tempflow": ["algorithm.scheme=branching", "algorithm.step_weight=tempflow"],
}
CHEAPER = {
    "tempflow-r1": ABLATION["tempflow"] + ["algorithm.branch_points=1"],
    "tempflow-r2": ABLATION["tempflow"] + ["algorithm.branch_points=2"],
    "tempflow-all": ABLATION["tempflow"] + ["algorithm.branch_points=all"],
    "tempflow-c3": ABLATION["tempflow"] + ["algorithm.continuation_steps=3"],
}
VARIANTS = {**ABLATION, **CHEAPER}


# ---------------------------------------------------------------------------- running

def run_sets(variant: str, seed: int, out: Path, iterations: int | None, extra: list[str]) -> list[str]:
    """The --set overrides that turn the preset into one (variant, seed) run."""
    sets = [*VARIANTS[variant], *extra, f"train.seed={seed}", f"run.out={out / variant / f'seed{seed}'}"]
    if iterations is not None:
        sets.append(f"train.iterations={iterations}")
    return sets


def run_config(preset: str, variant: str, seed: int, out: Path, iterations: int | None, extra: list[str]):
    """The TrainConfig of one (variant, seed) run."""
    from tempflow.config import load_config

    return load_config(preset_path(preset), run_sets(variant, seed, out, iterations, extra))


def finished(cfg) -> bool:
    """The run folder holds this config and its final evaluation."""
    from tempflow.config import diff_configs
    from tempflow.training.run_dir import saved_config

    path = Path(cfg.run.out)
    if not (path / "config.yaml").is_file() or not (path / "metrics.jsonl").is_file():
        return False
    if [k for k in diff_configs(saved_config(path), cfg) if k != "run.overwrite"]:  # compared, not built
        return False
    records = [json.loads(l) for l in (path / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return any(r.get("iteration") == cfg.train.iterations and "eval/pass_rate" in r for r in records)


def run_all(args) -> None:
    """Train every (variant, seed) not finished yet, ``args.jobs`` at a time."""
    out = Path(args.out)
    pending = []
    for variant in args.variants:
        for seed in range(args.seeds):
            cfg = run_config(args.config, variant, seed, out, args.iterations, args.overrides)
            if cfg.run.eval_every == 0:
                raise SystemExit("run.eval_every is 0: the benchmark needs held-out evaluations")
            if finished(cfg):
                print(f"{variant} seed {seed}: reusing {cfg.run.out}", file=sys.stderr)
            else:
                pending.append((variant, seed, cfg))
    if not pending:
        return
    launch = read_launch(out)
    for variant in {v for v, _, _ in pending}:
        launch[variant] = {"jobs": args.jobs, "threads_per_run": threads_per_job(args.jobs), "cpus": os.cpu_count()}
    (out / "launch.json").write_text(json.dumps(launch, indent=1) + "\n")
    # the costliest runs first, so the last ones to finish are short
    pending.sort(key=lambda p: p[2].algorithm.scheme != "branching" or p[2].algorithm.branch_points == "all",
                 reverse=True)
    tasks = []
    for variant, seed, _ in pending:
        cmd = ["train", "--config", str(preset_path(args.config)), "--overwrite", "--no-progress"]
        for s in run_sets(variant, seed, out, args.iterations, args.overrides):
            cmd += ["--set", s]
        tasks.append((f"{variant} seed {seed}", cmd, out / f"{variant}-seed{seed}.log"))
    run_commands(tasks, args.jobs)


def read_launch(out: Path) -> dict:
    """launch.json: {variant: {jobs, threads_per_run, cpus}} of the launch that last trained it
    (a single record without variants applies to every variant folder present)."""
    path = out / "launch.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    if "jobs" in data:
        data = {d.name: data for d in sorted(out.iterdir()) if d.is_dir() and d.name in VARIANTS}
    return data


FINAL = "final-eval"  # folder in each run (and in --out for the base model) of the --final-eval evaluations


def final_evals(args) -> None:
    """``tempflow eval`` of every finished run's last weights and of the base model with
    ``args.final_eval`` images per prompt, the same initial noise (--seed 0) for all."""
    out, n = Path(args.out), args.final_eval
    tasks, base_cfg = [], None
    for variant in args.variants:
        for seed in range(args.seeds):
            cfg = run_config(args.config, variant, seed, out, args.iterations, args.overrides)
            if not finished(cfg):
                continue
            base_cfg = base_cfg or cfg
            run = Path(cfg.run.out)
            if not final_done(run / FINAL, n):
                tasks.append((f"eval {variant} seed {seed}", ["eval", str(run), "--num", str(n), "--seed", "0",
                                                             *allow_own_imports(cfg), "--out", str(run / FINAL)],
                               run / "final-eval.log"))
    if base_cfg is not None and not final_done(out / FINAL, n):
        tasks.append(base_eval_task(base_cfg, n, base_cfg.sampling.eval_steps, out / FINAL))
    run_commands(tasks, args.jobs)


def final_done(folder: Path, n: int) -> bool:
    path = folder / "eval.json"
    return path.is_file() and json.loads(path.read_text()).get("images_per_prompt") == n


# ---------------------------------------------------------------------------- summarising

def curves(path: Path) -> dict:
    """One run's evaluations: iteration, pass rate, model evaluations and seconds spent before."""
    from tempflow.report.runs import cumulative, load_run

    run = load_run(path)
    nfe, secs = cumulative(run.train, "count/nfe"), cumulative(run.train, "time/iteration")
    ev = [e for e in run.evals if "eval/pass_rate" in e and e["iteration"] in nfe]
    return {"iteration": [e["iteration"] for e in ev], "pass_rate": [e["eval/pass_rate"] for e in ev],
            "score": [e.get("eval/score") for e in ev],
            "nfe": [nfe[e["iteration"]] for e in ev], "seconds": [secs[e["iteration"]] for e in ev],
            "nfe_per_iteration": statistics.mean(float(r["count/nfe"]) for r in run.train),
            "s_per_iteration": statistics.mean(float(r["time/iteration"]) for r in run.train)}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population std (0 for one value)."""
    return statistics.mean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def fmt(values: list[float], digits: int = 3) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def first_reaching(c: dict, target: float) -> int | None:
    """First evaluated iteration whose pass rate is >= target (None: never)."""
    return next((i for i, p in zip(c["iteration"], c["pass_rate"]) if p >= target - 1e-9), None)


def summarise(out: Path, variants: list[str], gains: list[float]) -> dict:
    """{variant: per-seed curves and the table rows} for every variant with finished runs."""
    result = {}
    for v in variants:
        seeds = sorted((out / v).glob("seed*")) if (out / v).is_dir() else []
        runs = [curves(s) for s in seeds if (s / "metrics.jsonl").is_file()]
        runs = [r for r in runs if r["iteration"]]
        if not runs:
            continue
        n = min(len(r["iteration"]) for r in runs)  # evaluations all seeds reached
        its = runs[0]["iteration"][:n]
        gain = [(r["pass_rate"][n - 1] - r["pass_rate"][0]) / (r["nfe"][n - 1] / 1e6) if r["nfe"][n - 1] else 0.0
                for r in runs]
        reach = {g: [first_reaching(r, r["pass_rate"][0] + g) for r in runs] for g in gains}
        finals = [json.loads((s / FINAL / "eval.json").read_text()) for s in seeds
                  if (s / FINAL / "eval.json").is_file()]
        result[v] = {"seeds": len(runs), "iterations": its, "runs": runs, "final": [final_row(f) for f in finals],
                     "pass_rate": [[r["pass_rate"][i] for r in runs] for i in range(n)],
                     "score": [[r["score"][i] for r in runs] for i in range(n)],
                     "nfe_per_iteration": [r["nfe_per_iteration"] for r in runs],
                     "s_per_iteration": [r["s_per_iteration"] for r in runs],
                     "gain_per_mnfe": gain, "reach": reach}
    return result


def final_row(ev: dict) -> dict:
    """An eval.json reduced to images per prompt, overall pass rate, dense score and per category."""
    summary = ev["summary"]
    return {"images_per_prompt": ev.get("images_per_prompt"), "pass_rate": summary["eval/pass_rate"],
            "score": summary["eval/score"],
            "categories": {k.split("/")[-1]: v for k, v in summary.items() if k.startswith("eval/pass_rate/")}}


def final_table(res: dict, base: dict | None) -> list[str]:
    """Markdown lines: the --final-eval table (base model first), empty when none was run."""
    rows = {v: r["final"] for v, r in res.items() if r["final"]}
    if not rows:
        return []
    first = next(iter(rows.values()))[0]
    cats = sorted(first["categories"])
    lines = ["", f"Held-out after the last iteration, {first['images_per_prompt']} images per prompt, the same "
             "initial noise for every run and the base model (`tempflow eval RUN --num "
             f"{first['images_per_prompt']} --seed 0`), mean ± std over seeds:", "",
             "| model | seeds | pass rate (overall) | dense score | " + " | ".join(cats) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(cats)]
    if base is not None:
        lines.append(f"| base | – | {base['pass_rate']:.3f} | {base['score']:.3f} | "
                     + " | ".join(f"{base['categories'][c]:.3f}" for c in cats) + " |")
    for v, fs in rows.items():
        lines.append(f"| {v} | {len(fs)} | {fmt([f['pass_rate'] for f in fs])} | {fmt([f['score'] for f in fs])} | "
                     + " | ".join(f"{statistics.mean(f['categories'][c] for f in fs):.3f}" for c in cats) + " |")
    return lines


def markdown(res: dict, gains: list[float], launch: dict | None = None, base: dict | None = None) -> str:
    """results.md: the tables (and how the runs shared the machine, from launch.json)."""
    lines = []
    its = sorted({i for v in res.values() for i in v["iterations"]})
    lines += ["Held-out pass rate (mean ± std over seeds) after each number of iterations:", "",
              "| variant | seeds | " + " | ".join(f"it {i}" for i in its) + " |",
              "|---|---:|" + "---:|" * len(its)]
    for v, r in res.items():
        cells = {i: fmt(p) for i, p in zip(r["iterations"], r["pass_rate"])}
        lines.append(f"| {v} | {r['seeds']} | " + " | ".join(cells.get(i, "–") for i in its) + " |")
    if all(x is not None for r in res.values() for row in r["score"] for x in row):
        lines += ["", "Held-out dense verifier score (fraction of each prompt's requirements met; less noisy "
                  "than the pass rate), mean ± std over seeds:", "",
                  "| variant | " + " | ".join(f"it {i}" for i in its) + " |", "|---|" + "---:|" * len(its)]
        for v, r in res.items():
            cells = {i: fmt(p) for i, p in zip(r["iterations"], r["score"])}
            lines.append(f"| {v} | " + " | ".join(cells.get(i, "–") for i in its) + " |")
    lines += ["", "Change from each seed's own first evaluation (the base model, same noise) to its last "
              "common one, mean ± std over seeds (pairing removes the seeds' different evaluation noise):", "",
              "| variant | iterations | Δ pass rate | Δ dense score |", "|---|---:|---:|---:|"]
    for v, r in res.items():
        dp = [b - a for a, b in zip(r["pass_rate"][0], r["pass_rate"][-1])]
        ds = ([b - a for a, b in zip(r["score"][0], r["score"][-1])]
              if None not in r["score"][0] + r["score"][-1] else None)
        lines.append(f"| {v} | {r['iterations'][0]} → {r['iterations'][-1]} | {fmt(dp, 3)} | "
                     f"{fmt(ds, 3) if ds else '–'} |")
    lines += ["", "Iterations until the held-out pass rate first reaches the seed's base pass rate + gain "
              "(mean ± std over the seeds that reached it; reached/seeds):", "",
              "| variant | " + " | ".join(f"+{g:.2f}" for g in gains) + " |", "|---|" + "---:|" * len(gains)]
    for v, r in res.items():
        cells = []
        for g in gains:
            hit = [x for x in r["reach"][g] if x is not None]
            cells.append(f"{fmt(hit, 0) if hit else 'not reached'} ({len(hit)}/{r['seeds']})")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    ref = res.get("flowgrpo")
    lines += ["", "Cost, and pass-rate gain per model evaluation (first to last common evaluation):", "",
              "| variant | model evals / iteration | vs flowgrpo | s / iteration | pass-rate gain per 1M model evals |",
              "|---|---:|---:|---:|---:|"]
    for v, r in res.items():
        rel = (f"{statistics.mean(r['nfe_per_iteration']) / statistics.mean(ref['nfe_per_iteration']):.2f}x"
               if ref else "–")
        lines.append(f"| {v} | {fmt(r['nfe_per_iteration'], 0)} | {rel} | {fmt(r['s_per_iteration'], 2)} | "
                     f"{fmt(r['gain_per_mnfe'], 3)} |")
    lines += final_table(res, base)
    settings: dict[tuple, list[str]] = {}
    for v in res:
        if v in (launch or {}):
            settings.setdefault(tuple(launch[v][k] for k in ("jobs", "threads_per_run", "cpus")), []).append(v)
    for (jobs, threads, cpus), names in settings.items():
        lines += ["", f"{', '.join(names)}: trained {jobs} at a time by this script, {threads} thread(s) per run "
                  f"on {cpus} cores."]
    return "\n".join(lines) + "\n"


def plot(res: dict, x: str, path: Path) -> None:
    """Mean held-out pass rate (and, when logged, dense score) over seeds against x
    (iterations, nfe, wallclock), band +- std."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = ["pass_rate"]
    if all(v is not None for r in res.values() for row in r["score"] for v in row):
        metrics.append("score")
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.4 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for i, (v, r) in enumerate(res.items()):
            n = len(r["iterations"])
            p = np.array(r[metric], float)  # [evaluations, seeds]
            if x == "iterations":
                xs = np.array(r["iterations"], float)
            else:
                key, scale = ("nfe", 1e6) if x == "nfe" else ("seconds", 60.0)
                xs = np.array([[run[key][k] for run in r["runs"]] for k in range(n)]).mean(1) / scale
            ls = "-" if v in ABLATION else "--"
            ax.plot(xs, p.mean(1), ls, marker="o", ms=3, color=f"C{i}", label=v)
            ax.fill_between(xs, p.mean(1) - p.std(1), p.mean(1) + p.std(1), color=f"C{i}", alpha=0.12)
        ax.set_xlabel({"iterations": "iteration", "nfe": "model evaluations in training (millions)",
                       "wallclock": "training wall-clock (minutes)"}[x])
        ax.set_ylabel({"pass_rate": "held-out pass rate", "score": "held-out dense verifier score"}[metric])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_summary(out: Path, variants: list[str], gains: list[float]) -> dict:
    res = summarise(out, variants, gains)
    if not res:
        raise SystemExit(f"no finished runs under {out}")
    launch = read_launch(out)
    base_eval = out / FINAL / "eval.json"
    base = final_row(json.loads(base_eval.read_text())) if base_eval.is_file() else None
    (out / "results.md").write_text(markdown(res, gains, launch, base))
    (out / "summary.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    for x in ("iterations", "nfe", "wallclock"):
        plot(res, x, out / f"pass_rate_vs_{x}.png")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/shapes-tempflow.yaml", help="preset every variant starts from")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 per variant")
    ap.add_argument("--iterations", type=int, default=None, help="iterations per run (default: the preset's)")
    ap.add_argument("--gains", type=float, nargs="+", default=[0.05, 0.10],
                    help="thresholds: the seed's base pass rate plus these")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides for every run (e.g. run.eval_every=10)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs trained at a time (each with OMP_NUM_THREADS threads if set, else cores / jobs)")
    ap.add_argument("--final-eval", type=int, default=0, metavar="N",
                    help="also evaluate each run's last weights and the base model with N images per prompt "
                         "(same noise for all; less noisy than the runs' own evaluations)")
    ap.add_argument("--out", default="runs/sample-efficiency", help="folder for the runs and the results")
    ap.add_argument("--summarise-only", action="store_true", help="only (re)write the results of finished runs")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.summarise_only:
        run_all(args)
        if args.final_eval:
            final_evals(args)
    write_summary(out, args.variants, sorted(args.gains))
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.md, summary.json and pass_rate_vs_{{iterations,nfe,wallclock}}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
