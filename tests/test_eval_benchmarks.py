"""The benchmarks under benchmarks/: variant configs, summaries, and tiny smoke runs."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKERS = Path(__file__).parent / "workers"  # toy_rewards: a reward that always varies


def bench(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name, *args, timeout=600):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WORKERS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *map(str, args)],
                         capture_output=True, text=True, timeout=timeout, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


TINY = ["sampling.steps=4", "sampling.eval_steps=2", "train.prompts_per_iteration=1",
        "reward.name=toy_rewards:brightness"]


# ------------------------------------------------------------------ sample_efficiency

def test_variants_change_only_their_own_keys(tmp_path):
    from tempflow.config import diff_configs, load_config

    se = bench("sample_efficiency")
    preset = load_config(ROOT / "configs/shapes-tempflow.yaml")
    flow = se.run_config("configs/shapes-tempflow.yaml", "flowgrpo", 0, tmp_path, None, [])
    temp = se.run_config("configs/shapes-tempflow.yaml", "tempflow", 0, tmp_path, None, [])
    r1 = se.run_config("configs/shapes-tempflow.yaml", "tempflow-r1", 2, tmp_path, 7, [])
    assert diff_configs(flow, temp) == ["algorithm.scheme", "algorithm.step_weight", "run.out"]
    assert diff_configs(preset, temp) == ["run.out"]  # the preset is TempFlow-GRPO
    assert sorted(diff_configs(temp, r1)) == ["algorithm.branch_points", "run.out", "train.iterations", "train.seed"]
    assert r1.train.iterations == 7 and r1.train.seed == 2 and r1.run.out == str(tmp_path / "tempflow-r1" / "seed2")


def fake_seed_run(path, passes, nfe=100, secs=2.0):
    """metrics.jsonl with evaluations every iteration (pass rates ``passes``)."""
    path.mkdir(parents=True)
    lines = []
    for it, p in enumerate(passes):
        lines.append({"iteration": it, "eval/pass_rate": p})
        if it < len(passes) - 1:
            lines.append({"iteration": it, "reward/mean": 0.5, "count/nfe": nfe, "time/iteration": secs})
    (path / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))


def test_summary_means_thresholds_and_gain_per_nfe(tmp_path):
    se = bench("sample_efficiency")
    fake_seed_run(tmp_path / "flowgrpo" / "seed0", [0.4, 0.42, 0.46], nfe=100)
    fake_seed_run(tmp_path / "flowgrpo" / "seed1", [0.5, 0.5, 0.5], nfe=100)
    fake_seed_run(tmp_path / "tempflow" / "seed0", [0.4, 0.5, 0.6], nfe=150)
    res = se.summarise(tmp_path, ["flowgrpo", "tempflow", "weighting-only"], [0.05, 0.1])
    assert list(res) == ["flowgrpo", "tempflow"]  # no runs: no row
    f, t = res["flowgrpo"], res["tempflow"]
    assert f["pass_rate"][2] == [0.46, 0.5] and f["iterations"] == [0, 1, 2]
    assert f["reach"][0.05] == [2, None] and t["reach"][0.1] == [1]
    assert t["gain_per_mnfe"] == [pytest.approx(0.2 / 300e-6)]
    text = se.markdown(res, [0.05, 0.1])
    assert "| flowgrpo | 2 | 0.450 ± 0.050 | 0.460 ± 0.040 | 0.480 ± 0.020 |" in text
    assert "| tempflow | 150 ± 0 | 1.50x |" in text
    assert "2 ± 0 (1/2)" in text and "not reached (0/2)" in text
    # a launch record without variants covers every variant folder present
    (tmp_path / "launch.json").write_text(json.dumps({"jobs": 2, "threads_per_run": 1, "cpus": 2}))
    launch = se.read_launch(tmp_path)
    assert sorted(launch) == ["flowgrpo", "tempflow"] and launch["tempflow"]["jobs"] == 2
    assert "flowgrpo, tempflow: trained 2 at a time by this script, 1 thread(s) per run on 2 cores" in \
        se.markdown(res, [0.05, 0.1], launch)


@pytest.mark.slow
def test_sample_efficiency_smoke(tmp_path, tiny_shapes_checkpoint):
    out = tmp_path / "se"
    evals = tmp_path / "eval.txt"  # a short held-out list: 5 runs evaluate it 3 times each, plus final evals
    evals.write_text("a red circle\ntwo blue squares\na green triangle left of a red square\n")
    args = ["--seeds", "2", "--iterations", "2", "--variants", "flowgrpo", "tempflow-r1", "--out", out,
            "--set", f"model.name={tiny_shapes_checkpoint}", *TINY, f"prompts.eval={evals}", "run.eval_every=1",
            "run.eval_images_per_prompt=1", "run.log_images_every=0"]
    res = run_script("sample_efficiency", *args, "--jobs", "2")  # child `tempflow train` processes
    assert json.loads((out / "launch.json").read_text())["tempflow-r1"]["jobs"] == 2
    assert "flowgrpo, tempflow-r1: trained 2 at a time by this script, 1 thread(s) per run" in res.stdout
    for name in ("results.md", "summary.json", "pass_rate_vs_iterations.png", "pass_rate_vs_nfe.png",
                 "pass_rate_vs_wallclock.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["flowgrpo"]["seeds"] == 2 and summary["flowgrpo"]["iterations"] == [0, 1, 2]
    assert yaml.safe_load((out / "tempflow-r1/seed1/config.yaml").read_text())["algorithm"]["branch_points"] == 1
    # r = 1 random branch point costs fewer model evaluations than Flow-GRPO's full trajectories here
    assert summary["tempflow-r1"]["nfe_per_iteration"][0] < summary["flowgrpo"]["nfe_per_iteration"][0]
    assert "| flowgrpo | 2 |" in res.stdout
    again = run_script("sample_efficiency", *args)  # finished runs are reused, not retrained
    assert again.stderr.count("reusing") == 4
    # one more seed, one run at a time (--jobs 1): only it is new
    third = run_script("sample_efficiency", "--seeds", "3", "--iterations", "2", "--variants", "tempflow-r1",
                       "--final-eval", "2", *args[7:])
    assert third.stderr.count("reusing") == 2 and "tempflow-r1 seed 2:" in third.stderr
    assert json.loads((out / "summary.json").read_text())["tempflow-r1"]["seeds"] == 3
    assert "tempflow-r1: trained 1 at a time by this script, 1 thread(s) per run" in third.stdout
    assert "Held-out dense verifier score" in third.stdout
    # --final-eval: every run's last weights and the base model, same noise, 2 images per prompt
    base = json.loads((out / "final-eval" / "eval.json").read_text())
    assert base["images_per_prompt"] == 2 and base["target"] is None
    runs = [json.loads((out / f"tempflow-r1/seed{k}/final-eval/eval.json").read_text()) for k in range(3)]
    assert all(r["images_per_prompt"] == 2 and len(r["images"]) == len(base["images"]) for r in runs)
    rows = json.loads((out / "summary.json").read_text())["tempflow-r1"]["final"]
    assert [r["pass_rate"] for r in rows] == [r["summary"]["eval/pass_rate"] for r in runs]
    assert f"| base | – | {base['summary']['eval/pass_rate']:.3f} |" in third.stdout
    assert "| tempflow-r1 | 3 |" in third.stdout.split("Held-out after the last iteration")[1]  # the verifier's score is logged by these runs


# ------------------------------------------------------------------ throughput

@pytest.mark.slow
def test_throughput_smoke_shared_forward_saves_k_fold(tmp_path, tiny_shapes_checkpoint):
    out = tmp_path / "t.json"
    res = run_script("throughput", "--variants", "tempflow", "tempflow-naive", "--iterations", "1",
                     "--warmup", "0", "--json", out, "--set", f"model.name={tiny_shapes_checkpoint}", *TINY,
                     "algorithm.branch_points=all")
    rows = {r["variant"]: r for r in json.loads(out.read_text())}
    assert "| tempflow-naive |" in res.stdout
    k = yaml.safe_load((ROOT / "configs/shapes-tempflow.yaml").read_text())["algorithm"]["num_branches"]
    shared, naive = rows["tempflow"], rows["tempflow-naive"]
    # same rollouts; training forwards with gradient: one per start state vs one per branch
    assert shared["time/sample"] > 0 and shared["count/nfe_grad"] > 0
    assert naive["count/nfe_grad"] == k * shared["count/nfe_grad"]
    for r in rows.values():
        assert r["probe/forward_grad"] > 0 and r["probe/backward"] > 0 and r["probe/optimizer"] > 0
        assert 0 < r["model_share"] <= 1 and r["peak_mb"] > 0 and r["samples_per_s"] > 0


# ------------------------------------------------------------------ gpu_sd35

def test_sd35_medium_dims_match_the_public_config():
    g = bench("gpu_sd35")
    c = g.SD35_MEDIUM
    assert c["num_attention_heads"] * c["attention_head_dim"] == c["caption_projection_dim"] == 1536
    assert c["num_layers"] == 24 and len(c["dual_attention_layers"]) == 13


# the --tiny run itself is exercised by tests/test_gpu.py::test_gpu_check_script_cpu_mode,
# which runs gpu_check.sh in its CPU mode (the same sizes) and checks these counts
