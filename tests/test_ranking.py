"""benchmarks/ranking.py: variant configs, calibration, running and archiving, and a smoke run
(the statistics and the summary: test_ranking_summary.py)."""

import argparse
import json
import os
from pathlib import Path

import pytest

from ranking_fakes import fake_eval, write_metrics

ROOT = Path(__file__).resolve().parents[1]
PRESET = "benchmarks/ranking-preset.yaml"


# ------------------------------------------------------------------ variants

OWN_KEYS = {
    "flowgrpo": ["algorithm.scheme", "algorithm.std", "algorithm.step_weight"],  # per-prompt std: the paper's baseline
    "weighting-only": ["algorithm.scheme"],
    "tempflow-paper": ["algorithm.branch_points"],
    "tempflow": [],
    "tempflow-adaptive": ["algorithm.branch_policy"],
    "tempflow-early": ["algorithm.branch_policy"],
    "single-step": ["algorithm.scheme", "algorithm.step_weight"],
    "sde-window": ["algorithm.scheme", "algorithm.step_weight", "algorithm.window_size"],
    "flowgrpo-cps": ["algorithm.scheme", "algorithm.step_weight", "sampling.sde_type"],
    "tempflow-cps": ["sampling.sde_type"],
    "tempflow-flash": ["algorithm.step_weight"],
    "single-step-sj": ["algorithm.scheme"],  # the preset's weights are already TempFlow's
    "sde-window-sj": ["algorithm.scheme", "algorithm.window_size"],
}


def test_variants_change_only_their_own_keys_and_validate(rk, tmp_path):
    from tempflow.config import diff_configs, load_config

    assert sorted(rk.VARIANTS) == sorted(OWN_KEYS)
    preset = load_config(ROOT / PRESET)
    base = rk.load(PRESET, rk.run_sets("tempflow", 0, tmp_path, 7, []))  # validated on loading
    assert sorted(diff_configs(preset, base)) == ["run.eval_every", "run.log_images_every", "run.out", "run.save_every",
                                          "train.iterations"]
    for v, keys in OWN_KEYS.items():
        cfg = rk.load(PRESET, rk.run_sets(v, 0, tmp_path, 7, []))
        assert sorted(k for k in diff_configs(base, cfg) if k != "run.out") == keys, v
        assert set(keys) <= {o.partition("=")[0] for o in rk.VARIANTS[v]}, v
        assert cfg.run.out == str(tmp_path / v / "seed0") and cfg.run.eval_every == 0
    paper = rk.load(PRESET, rk.run_sets("tempflow-paper", 3, tmp_path, 7, ["train.lr=5e-4"]))
    a = paper.algorithm
    # Flow-GRPO's transitions: seeds x branches = group size, at every trained step
    assert a.branch_points == "all" and a.seeds_per_prompt * a.num_branches == a.group_size
    assert paper.train.seed == 3 and paper.train.lr == 5e-4 and paper.train.iterations == 7
    curve = rk.load(PRESET, rk.run_sets("flowgrpo", 0, tmp_path, 10, [], curve_evals=3, curve_images=2))
    assert curve.run.eval_every == 4 and curve.run.eval_images_per_prompt == 2  # after 4, 8 and 10
    cal = rk.load(PRESET, rk.calibration_sets("sde-window", tmp_path, 3, ["run.eval_every=5"]))
    assert cal.run.eval_every == 0 and cal.train.iterations == 3 and cal.algorithm.window_size == 3



def test_the_archived_runs_are_the_runs_the_ranking_preset_trains(rk, tmp_path):
    """Every run kept in benchmarks/results/ranking has exactly the config a ranking started now
    would give it (only its folder differs), so a later start reuses them instead of retraining,
    and a change to the ranking preset that would silently alter a ranked scheme fails here."""
    from tempflow.config import diff_configs
    from tempflow.training.run_dir import saved_config

    archive = ROOT / "benchmarks/results/ranking"
    plan = json.loads((archive / "plan.json").read_text())
    runs = sorted(archive.glob("*/seed*/config.yaml"))
    assert len(runs) >= 40  # 8 seeds of five variants, 5 of two
    for path in runs:
        variant, seed = path.parent.parent.name, int(path.parent.name.removeprefix("seed"))
        sets = rk.run_sets(variant, seed, tmp_path, plan["iterations"][variant], plan["overrides"],
                           plan["curve_evals"])
        assert diff_configs(saved_config(path.parent), rk.load(PRESET, sets)) == ["run.out"], path

# ------------------------------------------------------------------ calibration

def test_iterations_from_a_calibration(st):
    recs = [{"iteration": 1, "time/iteration": 9.0, "count/nfe": 100},
            {"iteration": 0, "time/iteration": 30.0, "count/nfe": 90},  # warm-up: left out
            {"iteration": 2, "time/iteration": 11.0, "count/nfe": 120}]
    assert st.seconds_per_iteration(recs) == (10.0, 110.0)
    assert st.seconds_per_iteration(recs[1:2]) == (30.0, 90.0)  # one iteration: nothing else to time
    assert st.iterations_for_budget(10, 10.0) == 60
    assert st.iterations_for_budget(10, 9.0) == 66  # floor(66.67)
    assert st.iterations_for_budget(1, 6.0) == 10 and st.iterations_for_budget(0.1, 60.0) == 1


def test_calibration_times_each_variant_alone_and_is_reused(rk, tmp_path, monkeypatch):
    calls = []

    def fake_run_commands(tasks, jobs):
        (label, cmd, log), = tasks
        calls.append((label, jobs, os.environ["OMP_NUM_THREADS"]))
        v = label.split()[-1]
        write_metrics(tmp_path / "calibration" / v, [20.0, 6.0, 4.0] if v == "flowgrpo" else [9.0, 3.0, 3.0],
                      nfe=1000 if v == "flowgrpo" else 600)

    monkeypatch.setattr(rk, "run_commands", fake_run_commands)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    args = argparse.Namespace(
        variants=["flowgrpo", "tempflow"], calibration_iterations=3, overrides=[], jobs=2, iterations=None,
        budget_minutes=1.0, final_eval=16, eval_steps=10, curve_evals=0, config=PRESET)
    plan = rk.plan_runs(args, tmp_path)
    assert calls == [("calibrate flowgrpo", 1, "1"), ("calibrate tempflow", 1, "1")]  # in turn, 1 thread
    assert "OMP_NUM_THREADS" not in os.environ
    assert plan["iterations"] == {"flowgrpo": 12, "tempflow": 20} and plan["mode"] == "budget"
    cal = json.loads((tmp_path / "calibration.json").read_text())
    assert cal["flowgrpo"]["s_per_iteration"] == 5.0 and cal["tempflow"]["nfe_per_iteration"] == 600
    rk.plan_runs(args, tmp_path)
    assert len(calls) == 2  # reused
    edited = tmp_path / "edited-preset.yaml"  # the same --set list on a preset whose content changed
    edited.write_text((ROOT / PRESET).read_text().replace("  lr: ", "  lr: 2.0e-3  # was ", 1))
    args.config = str(edited)
    rk.plan_runs(args, tmp_path)
    assert [c[0] for c in calls[2:]] == ["calibrate flowgrpo", "calibrate tempflow"]  # timed again
    assert json.loads((tmp_path / "calibration.json").read_text())["tempflow"]["config"]["train"]["lr"] == 2e-3
    args.iterations = 5
    assert rk.plan_runs(args, tmp_path)["iterations"] == {"flowgrpo": 5, "tempflow": 5}


def test_runs_go_seed_by_seed_each_evaluated_after_its_training_and_finished_work_is_reused(rk, tmp_path,
                                                                                          monkeypatch):
    import tempflow.utils.child_process as cp
    from tempflow.config.loading import dump_config

    started = []

    def fake_run_pool(tasks, jobs):
        (label, cmd, log), = tasks
        started.append((label, cmd[0], jobs, cmd))
        return ["eval tempflow seed 1"] if label == "eval tempflow seed 1" else []

    monkeypatch.setattr(cp, "run_pool", fake_run_pool)
    args = argparse.Namespace(variants=["flowgrpo", "tempflow"], seeds=2, overrides=[], jobs=1, final_eval=16,
                              eval_steps=10, curve_evals=0, curve_images=4, config=PRESET, half_evals=["tempflow"])
    plan = {"iterations": {"flowgrpo": 3, "tempflow": 4}}
    with pytest.raises(SystemExit, match="failed: eval tempflow seed 1$"):
        rk.run_and_evaluate(args, tmp_path, plan)
    assert [s[0] for s in started] == [
        "eval base model",
        "flowgrpo seed 0", "eval flowgrpo seed 0", "tempflow seed 0", "eval tempflow seed 0",
        "eval tempflow seed 0 at half", "flowgrpo seed 1", "eval flowgrpo seed 1", "tempflow seed 1",
        "eval tempflow seed 1"]  # its failure ends its chain: no evaluation at half after it
    assert {(s[1], s[2]) for s in started} == {("train", 1), ("eval", 1)}
    at_half = next(s for s in started if s[0] == "eval tempflow seed 0 at half")
    assert at_half[3][at_half[3].index("--checkpoint") + 1] == "2"  # 4 iterations: the checkpoint after 2
    # every run keeps that checkpoint: saved every 2 iterations, 3 kept (2, 4 and the end)
    assert rk.run_sets("tempflow", 0, tmp_path, 5, [])[:2] == ["run.save_every=2", "run.keep_checkpoints=3"]

    # finished: flowgrpo seed 0 trained and evaluated; tempflow seed 0 trained and evaluated at the end
    for v, done_eval in (("flowgrpo", True), ("tempflow", False)):
        cfg = rk.load(PRESET, rk.run_sets(v, 0, tmp_path, plan["iterations"][v], []))
        run = Path(cfg.run.out)
        (run / "checkpoints" / f"iter_{cfg.train.iterations:06d}").mkdir(parents=True)
        dump_config(cfg, run / "config.yaml")
        (run / rk.FINAL).mkdir()
        (run / rk.FINAL / "eval.json").write_text(json.dumps({"images_per_prompt": 16, "steps": 10}))
        if not done_eval:  # an evaluation at half of another checkpoint is not the one asked for
            (run / rk.HALF).mkdir()
            (run / rk.HALF / "eval.json").write_text(json.dumps({"images_per_prompt": 16, "steps": 10,
                                                                 "checkpoint": 1}))
    (tmp_path / rk.FINAL).mkdir()
    (tmp_path / rk.FINAL / "eval.json").write_text(json.dumps({"images_per_prompt": 16, "steps": 10}))
    started.clear()
    args.seeds = 1
    rk.run_and_evaluate(args, tmp_path, plan)
    assert [s[0] for s in started] == ["eval tempflow seed 0 at half"]


def test_an_archive_carries_finished_runs_into_a_fresh_folder(rk, tmp_path, monkeypatch):
    """Runs archived in one --out are restored into another and reused there: nothing is trained
    or evaluated again, the summary's numbers are the same; a restored run asked for an evaluation
    it lacks (it has no weights) is trained again."""
    import ranking_archive as ra

    import tempflow.utils.child_process as cp
    from tempflow.config.loading import dump_config

    started = []

    def fake_run_pool(tasks, jobs):  # trains and evaluates by writing what the real commands write
        (label, cmd, log), = tasks
        started.append(label)
        opts = dict(zip(cmd[1:], cmd[2:]))
        if cmd[0] == "train":
            cfg = rk.load(PRESET, [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"])
            run = Path(cfg.run.out)
            write_metrics(run, [1.0 + cfg.train.seed] * cfg.train.iterations)
            with (run / "metrics.jsonl").open("a") as f:
                f.write(json.dumps({"iteration": 1, "sys/rss_mb": 600.0}) + "\n")  # not a kept key
            dump_config(cfg, run / "config.yaml")
            (run / "checkpoints" / f"iter_{cfg.train.iterations:06d}").mkdir(parents=True)
        else:
            ev = fake_eval([(k % 2 == 0, k / 6) for k in range(6)] if "--model" in cmd else (True, 0.9))
            ev.update(images_per_prompt=int(opts["--num"]), steps=int(opts["--steps"]),
                      checkpoint=int(opts["--checkpoint"]) if "--checkpoint" in opts else None)
            for row in ev["images"]:
                row["objects"] = [{"shape": "circle", "bbox": [1, 2, 3, 4]}]  # not a kept key
            Path(opts["--out"]).mkdir(parents=True, exist_ok=True)
            (Path(opts["--out"]) / "eval.json").write_text(json.dumps(ev))
        return []

    monkeypatch.setattr(cp, "run_pool", fake_run_pool)
    arch, first, fresh = tmp_path / "archive", tmp_path / "first", tmp_path / "fresh"
    args = argparse.Namespace(variants=["flowgrpo", "tempflow"], seeds=2, overrides=[], jobs=2, final_eval=2,
                              eval_steps=10, curve_evals=0, curve_images=4, config=PRESET, half_evals=[],
                              archive=arch)
    plan = {"mode": "iterations", "iterations": {"flowgrpo": 3, "tempflow": 4}}
    (first / "plan.json").parent.mkdir()
    (first / "plan.json").write_text(json.dumps(plan))
    rk.run_and_evaluate(args, first, plan)
    assert len(started) == 1 + 2 * 2 * 2  # the base model, then 4 runs trained and evaluated
    assert json.loads((arch / "plan.json").read_text()) == plan  # with the base model's evaluation
    run = arch / "tempflow" / "seed1"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(set(r) == {"iteration", "reward/mean", "time/iteration", "count/nfe"}
                                     for r in records)
    ev = json.loads((run / "final-eval" / "eval.json").read_text())
    assert set(ev["images"][0]) == {"prompt", "category", "passed", "score"} and ev["images_per_prompt"] == 2
    assert not (run / "checkpoints").exists()

    started.clear()
    restored = ra.restore(arch, fresh)
    assert len(restored) == 4 and all((r / ra.RESTORED).is_file() for r in restored)
    rk.run_and_evaluate(args, fresh, plan)
    assert started == []  # everything reused, the base model's evaluation too
    a, b = rk.summarise(first, args.variants, 200), rk.summarise(fresh, args.variants, 200)
    for v in args.variants:
        assert a["variants"][v]["final"] == b["variants"][v]["final"]
        assert a["variants"][v]["vs_reference"] == b["variants"][v]["vs_reference"]
        assert a["variants"][v]["measured"] == b["variants"][v]["measured"]
    assert a["base"] == b["base"] and b["base"]["pass_rate"]["estimate"] == pytest.approx(0.5)

    args.half_evals, args.seeds = ["tempflow"], 1  # no weights to evaluate at half: trained again
    rk.run_and_evaluate(args, fresh, plan)
    assert started == ["tempflow seed 0", "eval tempflow seed 0", "eval tempflow seed 0 at half"]
    assert not (fresh / "tempflow" / "seed0" / ra.RESTORED).exists()
    assert (arch / "tempflow" / "seed0" / "half-eval" / "eval.json").is_file()  # archived anew
    assert ra.restore(arch, fresh) == []  # a folder that holds the runs is left alone


# ------------------------------------------------------------------ end to end

@pytest.mark.slow
def test_ranking_smoke_trains_evaluates_and_reuses(tmp_path, tiny_shapes_checkpoint):
    import subprocess
    import sys

    evals = tmp_path / "eval.txt"
    evals.write_text("a red circle\ntwo blue squares\n")
    out = tmp_path / "rk"
    args = ["--iterations", "2", "--seeds", "1", "--jobs", "2", "--final-eval", "1", "--variants", "flowgrpo",
            "tempflow", "--half-evals", "tempflow", "--bootstrap", "50", "--out", out, "--set",
            f"model.name={tiny_shapes_checkpoint}", "sampling.steps=4", "sampling.eval_steps=2",
            "train.prompts_per_iteration=1", "reward.name=toy_rewards:brightness", f"prompts.eval={evals}",
            "--archive", tmp_path / "archive"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "workers"), os.environ.get("PYTHONPATH", "")])}

    def run():
        res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ranking.py"), *map(str, args)],
                             capture_output=True, text=True, timeout=600, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        return res

    first = run()
    for label in ("flowgrpo seed 0", "eval flowgrpo seed 0", "tempflow seed 0", "eval tempflow seed 0",
                  "eval tempflow seed 0 at half", "eval base model"):
        assert f"\n{label}: " in "\n" + first.stderr, label
    half = json.loads((out / "tempflow" / "seed0" / "half-eval" / "eval.json").read_text())
    final = json.loads((out / "tempflow" / "seed0" / "final-eval" / "eval.json").read_text())
    base = json.loads((out / "final-eval" / "eval.json").read_text())
    assert half["checkpoint"] == 1 and final["checkpoint"] is None and base["target"] is None
    assert len(half["images"]) == len(final["images"]) == len(base["images"]) == 2  # 2 prompts x 1 image
    summary = json.loads((out / "summary.json").read_text())
    t = summary["variants"]["tempflow"]
    assert t["half"]["iteration"] == 1 and t["time_to_reference"]["source"] == "half and final evaluations"
    assert "At half the budget" in (out / "results.md").read_text()
    stamp = (out / "tempflow" / "seed0" / "half-eval" / "eval.json").stat().st_mtime_ns
    again = run()  # everything finished is reused
    assert again.stderr.count("reusing") == 2 and "eval " not in again.stderr
    assert (out / "tempflow" / "seed0" / "half-eval" / "eval.json").stat().st_mtime_ns == stamp
    args[args.index(out)] = out = tmp_path / "fresh"  # a fresh checkout: its runs come from the archive
    fresh = run()
    assert fresh.stderr.count("restored") == 2 and fresh.stderr.count("reusing") == 2 and "eval " not in fresh.stderr
    assert json.loads((out / "summary.json").read_text())["variants"]["tempflow"]["final"] == t["final"]
