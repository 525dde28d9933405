"""`tempflow train` end to end on a tiny model, and 2 processes == 1 process."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ports import port_args

WORKER = Path(__file__).parent / "workers" / "one_iteration.py"


def tiny_config(tmp_path, ckpt, **algorithm):
    evals = tmp_path / "eval.txt"  # a short held-out list: the run evaluates it 3 times
    evals.write_text("a red circle\ntwo blue squares\na green triangle left of a red square\n")
    cfg = {
        "model": {"name": str(ckpt), "lora": {"rank": 4, "alpha": 4}},
        "sampling": {"steps": 6, "eval_steps": 6},
        "algorithm": {"num_branches": 2, "seeds_per_prompt": 2, "group_size": 4, "clip_range": 0.2,
                      "branch_points": "all",
                      **algorithm},
        "train": {"iterations": 2, "prompts_per_iteration": 2, "lr": 1e-2},
        "reward": {"name": "shapes", "kwargs": {"dense": True}},
        "prompts": {"eval": str(evals)},
        "run": {"out": str(tmp_path / "run"), "eval_every": 1, "eval_images_per_prompt": 1,
                "save_every": 1, "log_images_every": 1},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("branching", [True, False])
def test_train_command_end_to_end(tmp_path, tiny_shapes_checkpoint, branching):
    cfg = tiny_config(tmp_path, tiny_shapes_checkpoint, branching=branching, weighting=branching)
    res = subprocess.run([sys.executable, "-m", "tempflow", "train", "--config", str(cfg),
                          "--no-progress"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "reward_curve.png", "lora/pytorch_lora_weights.safetensors"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    assert (run / "grids" / "train_00002.png").is_file() and (run / "grids" / "eval_00002.png").is_file()
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    iters = [r for r in records if "reward/mean" in r]
    evals = [r for r in records if "eval/pass_rate" in r]
    assert len(iters) == 2 and [r["iteration"] for r in evals] == [0, 1, 2]
    for key in ("count/nfe", "count/nfe_grad", "count/decodes", "count/reward_calls", "time/sample",
                "time/train", "frac_reward_zero_std"):
        assert key in iters[0], key
    t, k, seeds = 6, 2, 4
    if branching:  # algorithm.md section 5: T + K * sum_j (T - 1 - j) per seed, CFG doubles
        assert iters[0]["count/decodes"] == seeds * k * 5
        sample_nfe = 2 * seeds * (t + k * sum(5 - j for j in range(5)))
    else:
        assert iters[0]["count/decodes"] == 2 * 4
        sample_nfe = 2 * 2 * 4 * t
    assert iters[0]["count/nfe"] >= sample_nfe
    # the saved LoRA loads for sampling
    out = tmp_path / "s.png"
    res = subprocess.run([sys.executable, "-m", "tempflow", "sample", "--model", str(tiny_shapes_checkpoint),
                          "--lora", str(run / "lora"), "--prompt", "a red circle", "--num", "2",
                          "--steps", "2", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["branching", "flow_grpo", "single_step"])  # sde_window: flow_grpo's code path
def test_two_processes_equal_one(tmp_path, tiny_shapes_checkpoint, scheme):
    if shutil.which("accelerate") is None and not (Path(sys.executable).parent / "accelerate").exists():
        pytest.skip("accelerate launcher not installed")
    cfg = tiny_config(tmp_path, tiny_shapes_checkpoint, scheme=scheme, std="batch", beta=0.01)
    # a reward that always varies, so the update is never empty (tests/workers is on the
    # worker's import path)
    data = yaml.safe_load(cfg.read_text())
    data["reward"] = {"name": "toy_rewards:brightness", "kwargs": {}}
    cfg.write_text(yaml.safe_dump(data))
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    env_cmd = [sys.executable, str(WORKER), str(cfg)]
    res = subprocess.run(env_cmd + [str(one)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    launcher = str(Path(sys.executable).parent / "accelerate")
    res = subprocess.run([launcher, "launch", *port_args(), "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no",
                          str(WORKER), str(cfg), str(two)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = torch.load(one), torch.load(two)
    assert a["world"] == 1 and b["world"] == 2 and b["engine"] == "ddp"
    # equal up to float error: batch composition differs between the layouts, and matmuls
    # round differently for different batch sizes (about 1e-5 here)
    torch.testing.assert_close(a["rewards"], b["rewards"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a["advantages"], b["advantages"], atol=2e-3, rtol=1e-3)
    assert any(not torch.equal(p, q) for p, q in zip(a["params"], a["initial"]))  # an update happened
    for g, h in zip(a["grads"], b["grads"]):
        torch.testing.assert_close(g, h, atol=1e-6, rtol=1e-3)
    assert any(g.abs().sum() > 0 for g in a["grads"])
    for p, q in zip(a["params"], b["params"]):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-3)


def test_short_continuations_save_exactly_their_model_calls(tmp_path, tiny_shapes_checkpoint):
    from tempflow.config import config_from_dict
    from tempflow.training.trainer import Trainer

    def nfe(cap):
        cfg = config_from_dict({
            "model": {"name": str(tiny_shapes_checkpoint), "lora": {"rank": 2, "alpha": 2}},
            "sampling": {"steps": 4, "eval_steps": 4},
            "algorithm": {"num_branches": 2, "seeds_per_prompt": 1, "branch_points": "all",
                          "continuation_steps": cap},
            "train": {"iterations": 1, "prompts_per_iteration": 3},
            "run": {"out": str(tmp_path / "run")}})
        return Trainer(cfg).iteration(0)["count/nfe"]

    # T = 4, branch points 0, 1, 2: continuations of 3, 2, 1 steps, or 1, 1, 1 with a cap of 1;
    # 3 seeds x K = 2 branches, CFG doubles
    assert nfe(None) - nfe(1) == 2 * 3 * 2 * ((3 + 2 + 1) - (1 + 1 + 1))
