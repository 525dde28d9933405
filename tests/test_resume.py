"""Checkpoints and exact resume: a run stopped at any moment (SIGINT, SIGTERM, SIGKILL, a kill
while a checkpoint is written, a damaged newest checkpoint) and resumed ends bitwise equal to
an uninterrupted run of the same seed: weights, optimiser state, EMA and metrics."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ports import port_args
from tempflow.config import config_from_dict
from tempflow.training import checkpoint as ck

WORKERS = Path(__file__).parent / "workers"
ITERATIONS = 6


# ---------------------------------------------------------------------------- helpers

def make_tiny_model(path: Path) -> Path:
    from tempflow.models.shapes_model import ShapesModel, ShapesModelConfig
    from tempflow.shapes import vocabulary

    torch.manual_seed(0)
    ShapesModel(ShapesModelConfig(vocab=vocabulary(), num_layers=2, num_heads=2, head_dim=8,
                                  text_dim=16, text_layers=1)).save_pretrained(path)
    return path


def run_config(root: Path, model: Path, out: str, **run) -> dict:
    """A tiny run: 6 iterations, random branch points, EMA every step, checkpoints every 2,
    evaluation every 3 on two prompts, a reward that always varies."""
    (root / "eval.txt").write_text("a red circle\ntwo blue squares\n")
    return {
        "model": {"name": str(model), "lora": {"rank": 2, "alpha": 2}},
        "sampling": {"steps": 5, "eval_steps": 3},
        "algorithm": {"num_branches": 2, "seeds_per_prompt": 1, "clip_range": 0.2, "branch_points": 2},
        "train": {"iterations": ITERATIONS, "prompts_per_iteration": 2, "lr": 0.01, "ema_every": 1,
                  "minibatches": 2},  # 2: KL and ratio move within an iteration
        "reward": {"name": "resume_rewards:brightness"},
        "prompts": {"eval": str(root / "eval.txt")},
        "run": {"out": str(root / out), "eval_every": 3, "eval_images_per_prompt": 1, "save_every": 2,
                "keep_checkpoints": 2, "log_images_every": 3, **run},
    }


def env(**extra) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TEMPFLOW_")}
    return {**base, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKERS), **extra}


def cli(args: list[str], **extra) -> subprocess.Popen:
    # the config names the test's own reward factory, allowed explicitly (docs/security.md)
    return subprocess.Popen([sys.executable, "-m", "tempflow", "train", "--no-progress",
                             "--allow-import", "resume_rewards", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(**extra),
                            start_new_session=True)


def finish(p: subprocess.Popen) -> tuple[int, str]:
    _, err = p.communicate(timeout=600)
    return p.returncode, err


def write_config(root: Path, cfg: dict, name: str) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def metrics(run: Path) -> list[dict]:
    """Records without the keys that vary between runs (seconds, memory)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "sys/"))} for r in rows]


def final_state(run: Path) -> tuple[dict, dict]:
    path = run / "checkpoints" / ck.folder_name(ITERATIONS)
    return load_file(str(path / ck.WEIGHTS)), torch.load(path / ck.STATE, weights_only=True)


def assert_same_run(a: Path, b: Path) -> None:
    """Bitwise equal final weights, EMA, optimiser state, exported LoRA and metrics."""
    (wa, sa), (wb, sb) = final_state(a), final_state(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert any(v.abs().sum() > 0 for k, v in wa.items() if "lora_B" in k)  # training moved the weights
    oa, ob = sa["optimizer"]["state"], sb["optimizer"]["state"]
    for i in oa:
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(oa[i][k], ob[i][k]), (i, k)
    assert sa["ema_steps"] == sb["ema_steps"]
    la = load_file(str(a / "lora" / "pytorch_lora_weights.safetensors"))
    lb = load_file(str(b / "lora" / "pytorch_lora_weights.safetensors"))
    assert all(torch.equal(la[k], lb[k]) for k in la)
    lora_file = Path("lora") / "pytorch_lora_weights.safetensors"
    assert (a / lora_file).read_bytes() == (b / lora_file).read_bytes()  # metadata too, byte for byte
    assert metrics(a) == metrics(b)


def wait_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.is_file() and len(path.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.02)
    raise TimeoutError(path)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted CLI run (subprocess): (root folder, model folder, config dict)."""
    root = tmp_path_factory.mktemp("resume")
    model = make_tiny_model(root / "tiny")
    cfg = run_config(root, model, "reference")
    rc, err = finish(cli(["--config", str(write_config(root, cfg, "reference"))]))
    assert rc == 0, err
    return root, model, cfg


# ---------------------------------------------------------------------------- checkpoint files

def tiny_state(seed: int) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=g)}, {"step": seed, "t": torch.arange(3)}


def test_save_writes_verified_folders_and_keeps_the_last_k(tmp_path):
    root = tmp_path / "checkpoints"
    for it in (2, 4, 6, 8):
        tensors, state = tiny_state(it)
        path = ck.save_checkpoint(root, it, tensors, state, {"metrics_bytes": it}, keep=2)
        assert path.name == ck.folder_name(it)
    assert [i for i, _ in ck.list_checkpoints(root)] == [8, 6]
    assert not list(root.glob(".tmp-*"))
    found = ck.latest_checkpoint(root)
    assert found.iteration == 8 and found.meta["metrics_bytes"] == 8
    tensors, state = ck.load_checkpoint(found)
    assert torch.equal(tensors["w"], tiny_state(8)[0]["w"]) and state["step"] == 8


@pytest.mark.parametrize("damage", ["truncate_state", "truncate_weights", "flip_byte", "no_meta", "bad_meta"])
def test_damaged_newest_checkpoint_is_skipped_with_a_warning(tmp_path, capsys, damage):
    root = tmp_path / "checkpoints"
    for it in (2, 4):
        ck.save_checkpoint(root, it, *tiny_state(it), {}, keep=3)
    newest = root / ck.folder_name(4)
    if damage.startswith("truncate"):
        f = newest / (ck.STATE if damage == "truncate_state" else ck.WEIGHTS)
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "flip_byte":
        f = newest / ck.WEIGHTS
        data = bytearray(f.read_bytes())
        data[-5] ^= 0xFF
        f.write_bytes(bytes(data))
    elif damage == "no_meta":
        (newest / ck.META).unlink()
    else:
        (newest / ck.META).write_text("{\"iteration\": 4")
    found = ck.latest_checkpoint(root)
    assert found.iteration == 2
    err = capsys.readouterr().err
    assert "warning" in err and ck.folder_name(4) in err and len(err.strip().splitlines()) == 1


def test_a_dead_write_leaves_no_checkpoint_and_is_cleaned_up(tmp_path):
    root = tmp_path / "checkpoints"
    ck.save_checkpoint(root, 2, *tiny_state(2), {}, keep=3)
    dead = root / ".tmp-iter_000004-999999"  # what a writer killed before its rename leaves
    dead.mkdir()
    (dead / ck.WEIGHTS).write_bytes(b"partial")
    assert ck.latest_checkpoint(root).iteration == 2
    ck.save_checkpoint(root, 4, *tiny_state(4), {}, keep=3)
    assert not dead.exists()


def test_random_generator_states_round_trip():
    import numpy as np

    state = ck.rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123), np.random.seed(5), random.seed(9)
    ck.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and (a[1] == b[1]).all() and a[2] == b[2]


# ---------------------------------------------------------------------------- in-process resume

def test_sigint_saves_a_checkpoint_and_resume_is_exact(tmp_path, monkeypatch):
    """SIGINT during iteration 2's reward: the loop finishes the iteration, saves at 3 (not a
    scheduled save) and stops; the resumed run equals an uninterrupted one."""
    from tempflow.training.loop import train

    monkeypatch.syspath_prepend(str(WORKERS))
    model = make_tiny_model(tmp_path / "tiny")
    ref = train(config_from_dict(run_config(tmp_path, model, "ref")), progress=False)
    assert ref.stopped is None
    cfg = config_from_dict(run_config(tmp_path, model, "cut"))
    # reward calls: 1 = evaluation at 0, then one per iteration (+1 per evaluation)
    monkeypatch.setenv("TEMPFLOW_TEST_SIGNAL_AT", "4:SIGINT")
    before = signal.getsignal(signal.SIGINT)
    cut = train(cfg, progress=False)
    assert cut.stopped == ("signal", 3, signal.SIGINT)
    assert [i for i, _ in ck.list_checkpoints(cut.path / "checkpoints")] == [3, 2]
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    monkeypatch.delenv("TEMPFLOW_TEST_SIGNAL_AT")
    resumed = train(cfg, progress=False, resume=True)
    assert resumed.stopped is None
    assert_same_run(ref.path, resumed.path)
    assert len(resumed.history) == len(ref.history)


def test_adaptive_branch_points_resume_exactly(tmp_path, monkeypatch):
    """The adaptive branch-point policy's running reward-std statistics are saved with the
    checkpoint: 3 iterations, then resumed to 6, equal 6 uninterrupted iterations."""
    from tempflow.training.loop import train

    monkeypatch.syspath_prepend(str(WORKERS))
    model = make_tiny_model(tmp_path / "tiny")

    def cfg(name, iterations):
        c = run_config(tmp_path, model, name, save_every=3)
        c["algorithm"].update(branch_policy="adaptive", adaptive_decay=0.5, branch_points=1)
        c["train"]["iterations"] = iterations
        return config_from_dict(c)

    ref = train(cfg("ref", ITERATIONS), progress=False)
    assert train(cfg("cut", 3), progress=False).stopped is None
    resumed = train(cfg("cut", ITERATIONS), progress=False, resume=True)
    assert_same_run(ref.path, resumed.path)
    states = [[torch.load(d / "state.pt", weights_only=True)["scheme"] for _, d in
               ck.list_checkpoints(r.path / "checkpoints")] for r in (ref, resumed)]
    assert states[0] == states[1] and any(m is not None for m in states[0][0]["std_mean"])

@pytest.mark.slow
def test_resume_after_the_newest_checkpoint_was_damaged(reference, tmp_path, capsys):
    """The finished reference run with its newest checkpoint truncated: resume falls back to
    the one before (iteration 4), warns, and recomputes iterations 4-5 to the same end."""
    root, _, _ = reference
    run = tmp_path / "run"
    shutil.copytree(root / "reference", run)
    state = run / "checkpoints" / ck.folder_name(ITERATIONS) / ck.STATE
    state.write_bytes(state.read_bytes()[:100])
    rc, err = finish(cli(["--resume", str(run)]))
    assert rc == 0, err
    assert "warning" in err and "damaged" in err
    assert_same_run(root / "reference", run)


# ---------------------------------------------------------------------------- killed CLI runs

@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_matches(reference):
    """SIGKILL after a random fraction of an iteration, at three stages of the run (before the
    first checkpoint, between checkpoints, near the end); resume until finished."""
    root, model, _ = reference
    rng = random.Random(0)
    for lines in (2, 5, 9):
        name = f"kill{lines}"
        cfg_file = write_config(root, run_config(root, model, name), name)
        p = cli(["--config", str(cfg_file)])
        wait_lines(root / name / "metrics.jsonl", lines, p)
        time.sleep(rng.uniform(0, 0.6))
        os.killpg(p.pid, signal.SIGKILL)
        rc, _ = finish(p)
        assert rc == -signal.SIGKILL
        rc, err = finish(cli(["--resume", str(root / name)]))
        if not ck.list_checkpoints(root / name / "checkpoints"):  # killed before the first save
            before = (root / name / "metrics.jsonl").read_bytes()
            assert rc == 2 and "no valid checkpoint" in err and "--overwrite" in err, err
            assert (root / name / "metrics.jsonl").read_bytes() == before  # nothing was touched
            rc, err = finish(cli(["--config", str(root / name / "config.yaml"), "--overwrite"]))  # as advised
        assert rc == 0, err
        assert_same_run(root / "reference", root / name)


@pytest.mark.slow
def test_killed_between_the_last_checkpoint_and_its_lora_export(reference):
    """SIGKILL once the final checkpoint is complete but before lora/ is rewritten: lora/ holds
    the previous save's weights, and a resume (with nothing left to train) brings it up to date."""
    root, model, _ = reference
    name = "fault-saved"
    cfg_file = write_config(root, run_config(root, model, name), name)
    rc, _ = finish(cli(["--config", str(cfg_file)], TEMPFLOW_FAULT_CHECKPOINT=f"saved:{ITERATIONS}"))
    assert rc == -signal.SIGKILL
    assert [i for i, _ in ck.list_checkpoints(root / name / "checkpoints")] == [ITERATIONS, ITERATIONS - 2]
    lora_file = Path("lora") / "pytorch_lora_weights.safetensors"
    assert (root / name / lora_file).read_bytes() != (root / "reference" / lora_file).read_bytes()
    rc, err = finish(cli(["--resume", str(root / name)]))
    assert rc == 0, err
    assert_same_run(root / "reference", root / name)


@pytest.mark.slow
def test_sigterm_saves_and_exits_then_resume_matches(reference):
    root, model, _ = reference
    cfg_file = write_config(root, run_config(root, model, "term"), "term")
    rc, err = finish(cli(["--config", str(cfg_file)], TEMPFLOW_TEST_SIGNAL_AT="4:SIGTERM"))
    assert rc == 128 + signal.SIGTERM, err
    assert "SIGTERM received" in err and "--resume" in err and "Traceback" not in err
    assert [i for i, _ in ck.list_checkpoints(root / "term" / "checkpoints")] == [3, 2]
    rc, err = finish(cli(["--resume", str(root / "term")]))
    assert rc == 0, err
    assert_same_run(root / "reference", root / "term")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["weights", "state", "rename"])
def test_killed_while_writing_a_checkpoint(reference, stage):
    """SIGKILL inside the writer of checkpoint 4 (after weights.safetensors, half-way through
    state.pt, before the rename): resume continues from checkpoint 2 and matches."""
    root, model, _ = reference
    name = f"fault-{stage}"
    cfg_file = write_config(root, run_config(root, model, name), name)
    rc, _ = finish(cli(["--config", str(cfg_file)], TEMPFLOW_FAULT_CHECKPOINT=f"{stage}:4"))
    assert rc == -signal.SIGKILL
    assert [i for i, _ in ck.list_checkpoints(root / name / "checkpoints")] == [2]
    rc, err = finish(cli(["--resume", str(root / name)]))
    assert rc == 0, err
    assert_same_run(root / "reference", root / name)


@pytest.mark.slow
def test_two_processes_killed_and_resumed_match(reference):
    """2 CPU processes (accelerate launch, gloo): SIGKILL the whole launch mid-run, resume with
    2 processes, compare with an uninterrupted 2-process run."""
    root, model, _ = reference
    launcher = Path(sys.executable).parent / "accelerate"
    if not launcher.exists():
        pytest.skip("accelerate launcher not installed")
    train = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
             "--dynamo_backend", "no", "-m", "tempflow", "train", "--no-progress", "--allow-import", "resume_rewards"]

    def launch(args):  # every launch on a port of its own
        return subprocess.Popen([str(launcher), "launch", *port_args(), *train, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env(), start_new_session=True)

    for name in ("two-ref", "two-cut"):
        write_config(root, run_config(root, model, name), name)
    rc, err = finish(launch(["--config", str(root / "two-ref.yaml")]))
    assert rc == 0, err[-3000:]
    p = launch(["--config", str(root / "two-cut.yaml")])
    wait_lines(root / "two-cut" / "metrics.jsonl", 6, p)
    time.sleep(random.Random(1).uniform(0, 0.6))
    os.killpg(p.pid, signal.SIGKILL)
    finish(p)
    assert ck.list_checkpoints(root / "two-cut" / "checkpoints")
    rc, err = finish(launch(["--resume", str(root / "two-cut")]))
    assert rc == 0, err[-3000:]
    state = torch.load(root / "two-cut" / "checkpoints" / ck.folder_name(ITERATIONS) / ck.STATE,
                       weights_only=True)
    assert len(state["rng"]) == 2  # both processes' generators are saved
    assert_same_run(root / "two-ref", root / "two-cut")


def test_kl_stop_ends_the_run_with_a_checkpoint(tmp_path, monkeypatch):
    """run.kl_stop below the first iteration's KL: the run stops after iteration 1 with a
    checkpoint there and the LoRA exported, and the metrics hold that KL."""
    from tempflow.training.loop import train

    monkeypatch.syspath_prepend(str(WORKERS))
    cfg = config_from_dict(run_config(tmp_path, make_tiny_model(tmp_path / "tiny"), "kl", kl_stop=1e-30,
                                      eval_every=0))
    run = train(cfg, progress=False)
    assert run.stopped[:2] == ("kl", 1)
    assert [i for i, _ in ck.list_checkpoints(run.path / "checkpoints")] == [1]
    assert (run.path / "lora" / "pytorch_lora_weights.safetensors").is_file()
    kl = [r["train/kl"] for r in run.history if "train/kl" in r]
    assert len(kl) == 1 and kl[0] > 1e-30
