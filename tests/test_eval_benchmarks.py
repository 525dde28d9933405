"""The benchmarks under benchmarks/: variant configs, summaries, and tiny smoke runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmark_modules import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
WORKERS = Path(__file__).parent / "workers"  # toy_rewards: a reward that always varies


def run_script(name, *args, timeout=600):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WORKERS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *map(str, args)],
                         capture_output=True, text=True, timeout=timeout, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


TINY = ["sampling.steps=4", "sampling.eval_steps=2", "train.prompts_per_iteration=1",
        "reward.name=toy_rewards:brightness"]


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
    g = load_benchmark("gpu_sd35")
    c = g.SD35_MEDIUM
    assert c["num_attention_heads"] * c["attention_head_dim"] == c["caption_projection_dim"] == 1536
    assert c["num_layers"] == 24 and len(c["dual_attention_layers"]) == 13


# the --tiny run itself is exercised by tests/test_gpu.py::test_gpu_check_script_cpu_mode,
# which runs gpu_check.sh in its CPU mode (the same sizes) and checks these counts
