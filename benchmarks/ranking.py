"""Ranking of rollout schemes at equal training wall-clock, over seeds, with paired intervals.

    python benchmarks/ranking.py [--budget-minutes 10 | --iterations N] [--seeds 5] [--jobs 2]
        [--final-eval 16] [--curve-evals K] [--variants ...] [--set key=value ...] [--out runs/ranking]
        [--archive DIR]
    python benchmarks/ranking.py --summarise-only --out runs/ranking [--pairs A:B ...]

Every variant is the preset (``--config``, by default benchmarks/ranking-preset.yaml: TempFlow-GRPO
on the shapes world with 3 random branch points, the shipped preset as it was ranked) plus only the
overrides of VARIANTS, printed in results.md. Three phases, each reusing finished work:

1. Calibration (skipped with ``--iterations N``: equal iterations, said so in the results):
   each variant trains ``--calibration-iterations`` (3) iterations alone, one process at a time,
   with the threads a run will have (cores / jobs); seconds per iteration is the mean of
   ``time/iteration`` without the first, model evaluations per iteration the mean of
   ``count/nfe``. Each variant then trains floor(budget * 60 / s_per_iteration) iterations.
   Random branch points make an iteration's cost vary, and runs sharing the machine (--jobs 2)
   are slower than alone, so results.md also gives every run's measured training time.
   A calibration is reused only while the variant's whole config (the preset file's content and
   every --set) and its threads are unchanged.
2. Runs: variants x seeds as ``tempflow train`` child processes, ``--jobs`` at a time, seed 0 of
   every variant first (seed k of every variant draws the same prompts in every iteration); each
   run's final evaluation (phase 3) follows its training, so a ranking stopped part-way and
   started again later keeps every finished run and evaluation. In-run evaluations are off unless
   ``--curve-evals K``: one before training and one every ceil(iterations / K) iterations, the
   last at the end, with ``--curve-images`` images per prompt and the run's own seed as noise.
3. Final paired evaluation of every run (EMA weights) and of the base model with the same
   ``tempflow eval --num N --steps S --seed 0``: the same prompts and initial noise for all.
   Every run keeps its checkpoint at half the budget (floor(iterations / 2)); ``--half-evals
   VARIANT ...`` evaluates those of the variants named the same way, which is the direct test of
   "reaches the reference's final score in at most half its wall-clock".

A ranking run in parts: ``--archive DIR`` keeps every finished run's results (config, timings,
evaluations; no weights, about 0.25 MB a run) in DIR, which can be committed, and a later ranking
with the same ``--archive`` in a fresh checkout starts from them (benchmarks/ranking_archive.py).

Summary (benchmarks/ranking_summary.py) and statistics (benchmarks/ranking_stats.py): a
variant's final pass rate and dense score are means over seeds with a 95% bootstrap interval
resampling seeds and prompts within category; its difference to flowgrpo pairs seed k with
seed k and image with image, with the same bootstrap. The table is sorted by the dense-score
difference (the less noisy metric); "beats flowgrpo" says yes only when that interval lies above
zero. The intervals are per comparison; next to them, each difference's bootstrap p-value is
Holm-adjusted over the variants compared with flowgrpo (and the target test, end and half budget
together, over the variants that have both), and every pair of variants is compared directly.

Time to flowgrpo's level, the primary figure: for seed k, the target is flowgrpo seed k's final
held-out dense score, and the time is the training wall-clock at which the variant's seed k
first scores at least that, as a fraction of flowgrpo seed k's training wall-clock. Both clocks
are calibrated (iterations x the variant's calibrated seconds per iteration, the wall-clock it
takes alone), so the load on the machine while the runs trained does not move the figure; with
``--iterations`` (no calibration) they are the measured sums of ``time/iteration``. With
``--curve-evals`` the scores are the in-run evaluations (target: flowgrpo's last in-run one,
measured the same way), so the time is an upper bound at the resolution of the evaluations; an
early score at or above the target can be evaluation noise. Without them the points are the
final paired evaluation and, with ``--half-evals``, the one at half the budget; with the final
one alone a seed has reached the target "by the end" or not, nothing finer is known. Per variant: the median
over seeds, a seed that never reached counted as later than all others ("not reached" when
half or more never did), and how many seeds reached it.

Cost on a 2-core CPU (an iteration of the ranking preset about 3 s at 2 threads alone, 9.5 s in
calibration; a 16-image evaluation of the 151 held-out prompts about 4.3 min at 2 threads, 2.2 min
at 8 images): with
V variants, S seeds, budget B minutes, J = 2 jobs and N images, roughly V x 1 min of
calibration + V S B / 2 of training + (V S + 1) x 4.3 min x N / 16 of final evaluation. All 9
variants x 5 seeds at B = 10, N = 16 take about 9 + 225 + 198 min, 7 h. About 4 h: 5 seeds,
B = 5, N = 8 (9 + 113 + 99 min), or 3 seeds, B = 10, N = 8 (9 + 135 + 60 min); a 5-minute
budget is about 20 TempFlow iterations at 1 thread, far fewer than the preset's 90, so such a
ranking measures early training only. ``--curve-evals K`` adds K + 1 evaluations per run
(at 4 images, about 1.1 min each at 2 threads).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
try:
    import tempflow  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(HERE.parent / "src"))
import ranking_archive as ra  # noqa: E402
import ranking_stats as st  # noqa: E402
import ranking_summary as rs  # noqa: E402
from bench_runs import allow_own_imports, base_eval_task, preset_path, run_commands  # noqa: E402
from tempflow.utils.child_process import threads_per_job  # noqa: E402

VARIANTS = {
    "flowgrpo": ["algorithm.scheme=flow_grpo", "algorithm.std=group", "algorithm.step_weight=none"],
    "weighting-only": ["algorithm.scheme=flow_grpo", "algorithm.step_weight=tempflow"],
    # 2 seeds x 4 branches = group_size 8 at all 9 steps: Flow-GRPO's transitions per prompt
    "tempflow-paper": ["algorithm.scheme=branching", "algorithm.branch_points=all",
                       "algorithm.step_weight=tempflow"],
    "tempflow": [],  # the ranking preset: 3 random branch points
    "tempflow-adaptive": ["algorithm.branch_policy=adaptive"],
    "tempflow-early": ["algorithm.branch_policy=early"],
    "single-step": ["algorithm.scheme=single_step", "algorithm.step_weight=flash"],
    "sde-window": ["algorithm.scheme=sde_window", "algorithm.window_size=3", "algorithm.step_weight=flash"],
    "flowgrpo-cps": ["algorithm.scheme=flow_grpo", "algorithm.step_weight=none", "sampling.sde_type=cps"],
    # the screen of step weights and samplers: each scheme above with its other choice
    "tempflow-cps": ["sampling.sde_type=cps"],
    "tempflow-flash": ["algorithm.step_weight=flash"],
    "single-step-sj": ["algorithm.scheme=single_step", "algorithm.step_weight=tempflow"],
    "sde-window-sj": ["algorithm.scheme=sde_window", "algorithm.window_size=3", "algorithm.step_weight=tempflow"],
}
FINAL, HALF, REFERENCE, read_json = rs.FINAL, rs.HALF, rs.REFERENCE, rs.read_json
PRESET = "benchmarks/ranking-preset.yaml"  # the shapes preset as ranked (3 random branch points)
RUN_KEYS = ["run.save_every=0", "run.log_images_every=0"]  # calibration: no intermediate checkpoints or grids


# ---------------------------------------------------------------------------- configs

def half_iteration(iterations: int) -> int:
    """The checkpoint at half the budget: floor(iterations / 2), at most half the wall-clock."""
    return max(1, iterations // 2)


def run_sets(variant: str, seed: int, out: Path, iterations: int, extra: list[str],
             curve_evals: int = 0, curve_images: int = 4) -> list[str]:
    """The --set overrides that turn the preset into one (variant, seed) run."""
    every = math.ceil(iterations / curve_evals) if curve_evals else 0  # the last one at the end
    # a checkpoint at half the budget (and at most two more: 2h and the end), for --half-evals
    keys = [f"run.save_every={half_iteration(iterations)}", "run.keep_checkpoints=3", "run.log_images_every=0"]
    sets = [*keys, f"run.eval_every={every}", *VARIANTS[variant], *extra]
    if curve_evals:
        sets.append(f"run.eval_images_per_prompt={curve_images}")
    return sets + [f"train.seed={seed}", f"train.iterations={iterations}", f"run.out={out / variant / f'seed{seed}'}"]


def calibration_sets(variant: str, out: Path, iterations: int, extra: list[str]) -> list[str]:
    """Overwrite: a calibration of a changed preset replaces the old one in the same folder."""
    return [*RUN_KEYS, *VARIANTS[variant], *extra, "run.eval_every=0", "train.seed=0",
            f"train.iterations={iterations}", f"run.out={out / 'calibration' / variant}", "run.overwrite=true"]


def resolved(preset: str, sets: list[str]) -> dict:
    """The whole config a run of ``sets`` on the preset trains with, as JSON data (for reuse checks)."""
    from tempflow.config.loading import config_to_dict

    return json.loads(json.dumps(config_to_dict(load(preset, sets))))


def load(preset: str, sets: list[str]):
    from tempflow.config import load_config

    return load_config(preset_path(preset), sets)


def finished(cfg) -> bool:
    """The run folder holds this config and its final checkpoint, or was restored from an archive
    (results only: see run_and_evaluate)."""
    from tempflow.config import diff_configs
    from tempflow.training.run_dir import saved_config

    path = Path(cfg.run.out)
    if not (path / "config.yaml").is_file():
        return False
    # run.out: a run restored from an archive was trained in another folder
    if [k for k in diff_configs(saved_config(path), cfg) if k not in ("run.overwrite", "run.out")]:
        return False
    return (path / "checkpoints" / f"iter_{cfg.train.iterations:06d}").is_dir() or (path / ra.RESTORED).is_file()


def train_task(preset: str, sets: list[str], label: str, log: Path):
    cmd = ["train", "--config", str(preset_path(preset)), "--overwrite", "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    return label, cmd, log


@contextmanager
def threads(n: int):
    """OMP_NUM_THREADS=n for child processes started inside (run_pool reads it)."""
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        yield
    finally:
        if old is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = old


def train_records(path: Path) -> list[dict]:
    from tempflow.report.runs import load_run

    return load_run(path).train


# ---------------------------------------------------------------------------- phases

def calibrate(args, out: Path) -> dict:
    """{variant: s_per_iteration, nfe_per_iteration, ...}: each variant timed alone, in turn."""
    path, n_threads = out / "calibration.json", threads_per_job(args.jobs)
    cal = read_json(path)
    for v in args.variants:
        sets = calibration_sets(v, out, args.calibration_iterations, args.overrides)
        config = resolved(args.config, sets)  # the preset's content, not only the --set list
        if cal.get(v, {}).get("config") == config and cal[v].get("threads") == n_threads:
            print(f"{v}: reusing calibration", file=sys.stderr)
            continue
        (out / "calibration").mkdir(parents=True, exist_ok=True)
        with threads(n_threads):
            run_commands([train_task(args.config, sets, f"calibrate {v}", out / "calibration" / f"{v}.log")], 1)
        s_it, nfe = st.seconds_per_iteration(train_records(out / "calibration" / v))
        cal[v] = {"sets": sets, "config": config, "threads": n_threads, "timed_iterations": max(1, args.calibration_iterations - 1),
                  "s_per_iteration": s_it, "nfe_per_iteration": nfe}
        path.write_text(json.dumps(cal, indent=1) + "\n")
    return cal


def plan_runs(args, out: Path) -> dict:
    """plan.json: how many iterations each variant gets and why (merged with earlier launches)."""
    plan = read_json(out / "plan.json")
    if args.iterations:
        its = {v: args.iterations for v in args.variants}
        plan.update(mode="iterations", budget_minutes=None)
    else:
        cal = calibrate(args, out)
        its = {v: st.iterations_for_budget(args.budget_minutes, cal[v]["s_per_iteration"]) for v in args.variants}
        plan.update(mode="budget", budget_minutes=args.budget_minutes)
    plan.update(jobs=args.jobs, threads_per_run=threads_per_job(args.jobs), cpus=os.cpu_count(),
                final_eval=args.final_eval, eval_steps=args.eval_steps, curve_evals=args.curve_evals,
                overrides=args.overrides)
    plan["iterations"] = {**plan.get("iterations", {}), **its}
    (out / "plan.json").write_text(json.dumps(plan, indent=1) + "\n")
    return plan


def run_configs(args, out: Path, plan: dict):
    """(variant, seed, sets, config) seed by seed: seed 0 of every variant first, so a ranking
    stopped part-way holds whole seeds."""
    for seed in range(args.seeds):
        for v in args.variants:
            sets = run_sets(v, seed, out, plan["iterations"][v], args.overrides, args.curve_evals, args.curve_images)
            yield v, seed, sets, load(args.config, sets)


def eval_done(folder: Path, n: int, steps: int, checkpoint: int | None = None) -> bool:
    ev = read_json(folder / "eval.json")
    return ev.get("images_per_prompt") == n and ev.get("steps") == steps and ev.get("checkpoint") == checkpoint


def run_chains(chains: list[list[tuple[str, list[str], Path]]], jobs: int, after=None) -> None:
    """Run ``jobs`` chains at a time, the commands of a chain one after the other (a run's final
    evaluation after its training), each with cores / jobs threads, and ``after(i)`` once chain
    i has succeeded; SystemExit naming the failed commands at the end (a failed command ends its
    own chain only)."""
    from concurrent.futures import ThreadPoolExecutor

    from tempflow.utils.child_process import run_pool

    def one(i):
        for task in chains[i]:
            if run_pool([task], jobs):  # jobs only sets the threads here: one task at a time
                return [task[0]]
        if after is not None:
            after(i)
        return []

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        failed = [label for f in list(pool.map(one, range(len(chains)))) for label in f]
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


def run_and_evaluate(args, out: Path, plan: dict) -> None:
    """Train every unfinished (variant, seed) and evaluate its EMA weights with ``tempflow eval
    --num N --steps S --seed 0`` (the same prompts and initial noise for every run), and the
    base model the same way; finished runs and evaluations are reused. With ``args.archive``
    every run is archived (ranking_archive) once trained and evaluated; a run restored from an
    archive holds no weights, so it is trained again when an evaluation it lacks is asked for."""
    n, steps, chains, base_cfg = args.final_eval, args.eval_steps, [], None  # chains: (commands, run or None)
    archive = getattr(args, "archive", None)
    for v, seed, sets, cfg in run_configs(args, out, plan):
        run, base_cfg, chain = Path(cfg.run.out), base_cfg or cfg, []
        evals = [(FINAL, None)] + [(HALF, half_iteration(cfg.train.iterations))] * (v in args.half_evals)
        missing = [e for e in evals if not eval_done(run / e[0], n, steps, e[1])]
        if finished(cfg) and not ((run / ra.RESTORED).is_file() and missing):
            print(f"{v} seed {seed}: reusing {run}", file=sys.stderr)
        else:
            for folder in (FINAL, HALF):  # of an earlier training, if any
                shutil.rmtree(run / folder, ignore_errors=True)
            (run / ra.RESTORED).unlink(missing_ok=True)
            ra.remove(archive, out, run)
            chain.append(train_task(args.config, sets, f"{v} seed {seed}", out / f"{v}-seed{seed}.log"))
        trained = bool(chain)  # a new training: every evaluation of the run is redone
        for folder, ckpt in evals:
            if trained or (folder, ckpt) in missing:
                which = [] if ckpt is None else ["--checkpoint", str(ckpt)]
                chain.append((f"eval {v} seed {seed}{' at half' if which else ''}",
                              ["eval", str(run), *which, "--num", str(n), "--steps", str(steps), "--seed", "0",
                               *allow_own_imports(cfg), "--out", str(run / folder)], run / f"{folder}.log"))
        if chain:
            chains.append((chain, run))
    if base_cfg is not None and not eval_done(out / FINAL, n, steps):
        chains.insert(0, ([base_eval_task(base_cfg, n, steps, out / FINAL)], None))

    def after(i):  # the base model's evaluation archives the top-level files
        run = chains[i][1]
        if archive is None:
            return
        if run is None:
            ra.save_top(out, archive)
        else:
            ra.save_run(out, run, archive)

    run_chains([c for c, _ in chains], args.jobs, after)


def summarise(out: Path, variants: list[str], n_boot: int = 4000, pairs: list[tuple[str, str]] | None = None) -> dict:
    """summary.json's content: ranking_summary.summarise with this file's VARIANTS."""
    return rs.summarise(out, variants, VARIANTS, n_boot, pairs)


def parse_pair(text: str) -> tuple[str, str]:
    """'A:B' -> (A, B), both names of VARIANTS (the --pairs argument)."""
    a, sep, b = text.partition(":")
    if not sep or a not in VARIANTS or b not in VARIANTS or a == b:
        raise argparse.ArgumentTypeError(f"{text!r}: expected VARIANT:VARIANT, two different names of "
                                         f"{', '.join(VARIANTS)}")
    return a, b


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=PRESET, help="preset every variant starts from (default: the ranking's own, "
                    "3 random branch points; its header says why)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", type=int, default=5, help="training seeds 0..N-1 per variant")
    ap.add_argument("--budget-minutes", type=float, default=10.0, help="training wall-clock per run")
    ap.add_argument("--iterations", type=int, default=None, help="equal iterations instead (no calibration)")
    ap.add_argument("--calibration-iterations", type=int, default=3, help="timed: all but the first")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides for every run")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time, cores / jobs threads each")
    ap.add_argument("--final-eval", type=int, default=16, metavar="N", help="images per prompt, final evaluation")
    ap.add_argument("--eval-steps", type=int, default=None, help="ODE steps of it (default: the preset's)")
    ap.add_argument("--half-evals", nargs="*", default=[], choices=list(VARIANTS), metavar="VARIANT",
                    help="also evaluate these variants' checkpoints at half the budget (as the final one)")
    ap.add_argument("--curve-evals", type=int, default=0, metavar="K", help="in-run evaluations per run (0: none)")
    ap.add_argument("--curve-images", type=int, default=4, help="images per prompt of the in-run evaluations")
    ap.add_argument("--bootstrap", type=int, default=4000, help="bootstrap resamples")
    ap.add_argument("--pairs", nargs="+", type=parse_pair, default=None, metavar="A:B",
                    help="the pairwise table's comparisons A - B (default: every pair of non-reference variants)")
    ap.add_argument("--out", default="runs/ranking", help="folder for the runs and the results")
    ap.add_argument("--archive", type=Path, default=None, metavar="DIR",
                    help="keep every finished run's results (no weights) in DIR, small enough to commit, and "
                         "start from the runs already there: a ranking can go on in a fresh checkout")
    ap.add_argument("--summarise-only", action="store_true", help="only (re)write the results of existing runs")
    args = ap.parse_args(argv)
    if args.jobs < 1 or args.seeds < 1 or args.final_eval < 1 or args.calibration_iterations < 1:
        ap.error("--jobs, --seeds, --final-eval and --calibration-iterations must be at least 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.archive is not None:
        for run in ra.restore(args.archive, out):
            print(f"restored {run} from {args.archive}", file=sys.stderr)
    if not args.summarise_only:
        args.eval_steps = args.eval_steps or load(args.config, args.overrides).sampling.eval_steps
        plan = plan_runs(args, out)
        if args.archive is not None:
            ra.save_top(out, args.archive)
        run_and_evaluate(args, out, plan)
    rs.write_summary(out, args.variants, VARIANTS, args.bootstrap, args.pairs)
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.md, results-short.md, summary.json and ranking_vs_{{iterations,nfe,wallclock}}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
