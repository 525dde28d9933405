"""The distributed engines on 2 CPU processes over gloo: FSDP2 == 1 process, two launchers
with --num_machines 2 on 127.0.0.1 == 1 process, an FSDP2 run killed and resumed from its
sharded checkpoint == an uninterrupted one; launch settings an engine cannot honour fail before
the model loads; reward placement and the spreading of remote reward requests over servers.
(DDP == 1 process: tests/test_train_e2e.py::test_two_processes_equal_one.)"""

import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml

from ports import free_port, port_args
from tempflow.training import checkpoint as ck
from test_resume import env, finish, make_tiny_model, metrics, run_config, wait_lines

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).parent / "workers" / "one_iteration.py"
LAUNCHER = Path(sys.executable).parent / "accelerate"
FSDP = ["--config_file", str(ROOT / "configs" / "accelerate" / "fsdp.yaml"), "--num_processes", "2"]
COMMON = ["--mixed_precision", "no", "--dynamo_backend", "no"]
KILLED_RUN = 4  # iterations of the killed-and-resumed run
needs_launcher = pytest.mark.skipif(not LAUNCHER.exists(), reason="accelerate launcher not installed")


def _one_process(root: Path, lora: dict | None):
    """One iteration in one process: (config path, its result)."""
    cfg = {"model": {"name": str(make_tiny_model(root / "tiny")), "lora": lora},
           "sampling": {"steps": 6, "eval_steps": 6},
           "algorithm": {"num_branches": 2, "seeds_per_prompt": 2, "clip_range": 0.2, "branch_points": "all",
                         "std": "batch", "beta": 0.01},
           "train": {"iterations": 1, "prompts_per_iteration": 2, "lr": 1e-2},
           "reward": {"name": "toy_rewards:brightness"},
           "run": {"out": str(root / "run")}}
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, str(WORKER), str(path), str(root / "one.pt")],
                         capture_output=True, text=True, timeout=900, env=env())
    assert res.returncode == 0, res.stderr[-3000:]
    return path, torch.load(root / "one.pt")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    return _one_process(tmp_path_factory.mktemp("dist"), {"rank": 4, "alpha": 4})


def assert_matches(a: dict, b: dict) -> None:
    """Same rewards and advantages; the same gradient and update up to reduction order."""
    assert a["world"] == 1 and b["world"] == 2
    torch.testing.assert_close(a["rewards"], b["rewards"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a["advantages"], b["advantages"], atol=2e-3, rtol=1e-3)
    assert any(not torch.equal(p, q) for p, q in zip(a["params"], a["initial"]))  # an update happened
    assert any(g.abs().sum() > 0 for g in a["grads"])
    for g, h in zip(a["grads"], b["grads"] or a["grads"]):  # DeepSpeed keeps no .grad
        torch.testing.assert_close(g, h, atol=1e-6, rtol=1e-3)
    for p, q in zip(a["params"], b["params"]):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-3)


def assert_launch_matches(a: dict, launch: list[str], cfg: Path, out: Path, engine: str) -> None:
    """One iteration under ``accelerate launch`` with ``launch``: the engine it reports is
    ``engine`` and its result matches the one-process result ``a``."""
    res = subprocess.run([str(LAUNCHER), "launch", *launch, *port_args(), *COMMON, str(WORKER), str(cfg), str(out)],
                         capture_output=True, text=True, timeout=900, env=env())
    assert res.returncode == 0, res.stderr[-3000:]
    b = torch.load(out)
    assert b["engine"] == engine
    assert_matches(a, b)


@pytest.mark.slow
@needs_launcher
def test_fsdp2_two_processes_equal_one(one_process):
    cfg, a = one_process
    assert_launch_matches(a, FSDP, cfg, cfg.parent / "fsdp.pt", "fsdp")


@pytest.mark.slow
@needs_launcher
def test_ddp_gradient_accumulation_equals_one_backward(one_process):
    """train.grad_accumulation=2 under DDP (no gradient sync on the first micro-batch) makes
    the same update as one process with one backward per minibatch."""
    cfg, a = one_process
    acc = cfg.parent / "cfg-acc.yaml"
    data = yaml.safe_load(cfg.read_text())
    data["train"]["grad_accumulation"] = 2
    acc.write_text(yaml.safe_dump(data))
    assert_launch_matches(a, ["--multi_gpu", "--num_processes", "2"], acc, cfg.parent / "ddp-acc.pt", "ddp")


@pytest.mark.slow
@needs_launcher
def test_fsdp2_full_fine_tuning_two_processes_equal_one(tmp_path):
    """Full fine-tuning (model.lora: null) sharded by FSDP2: every weight, the frozen reference
    copy and the EMA are sharded, and the update equals one process's."""
    cfg, a = _one_process(tmp_path, None)
    assert_launch_matches(a, FSDP, cfg, tmp_path / "fsdp-full.pt", "fsdp")


@pytest.mark.slow
@needs_launcher
def test_two_machines_on_localhost_equal_one(one_process):
    """Two launchers, --num_machines 2 (one process each), meeting at 127.0.0.1."""
    cfg, a = one_process
    out, port = cfg.parent / "nodes.pt", str(free_port())
    procs = [subprocess.Popen([str(LAUNCHER), "launch", "--multi_gpu", "--num_machines", "2",
                               "--num_processes", "2", "--machine_rank", str(rank),
                               "--main_process_ip", "127.0.0.1", "--main_process_port", port, *COMMON,
                               str(WORKER), str(cfg), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                              start_new_session=True) for rank in (0, 1)]
    for p in procs:
        rc, err = finish(p)
        assert rc == 0, err[-3000:]
    b = torch.load(out)
    assert b["engine"] == "ddp"
    assert_matches(a, b)


def _final_shards(run: Path) -> dict:
    """The trainable weights, optimiser state and EMA of the last checkpoint, read from its shards."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    folder = run / "checkpoints" / f"iter_{KILLED_RUN:06d}"
    assert not (folder / "weights.safetensors").exists() and json.loads((folder / "meta.json").read_text())["world"] == 2
    dcp_to_torch_save(str(folder / "shards"), str(run / "final.pt"))
    return torch.load(run / "final.pt", weights_only=False)


def _flatten(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    else:
        out[prefix] = value
    return out


@pytest.mark.slow
@needs_launcher
def test_fsdp2_killed_and_resumed_from_shards_matches(tmp_path):
    model = make_tiny_model(tmp_path / "tiny")
    train = [*FSDP, *COMMON, "-m", "tempflow", "train", "--no-progress", "--allow-import", "resume_rewards"]

    def launch(args, **extra):  # every launch on a port of its own
        return subprocess.Popen([str(LAUNCHER), "launch", *port_args(), *train, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env(**extra), start_new_session=True)

    for name in ("ref", "cut"):
        cfg = run_config(tmp_path, model, name)
        cfg["train"]["iterations"] = KILLED_RUN
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    rc, err = finish(launch(["--config", str(tmp_path / "ref.yaml")]))
    assert rc == 0, err[-3000:]
    # SIGKILL of the whole launch once iteration 3 is logged; should the kill come late, the
    # main process kills itself while checkpoint 4's shards are written, before its rename
    p = launch(["--config", str(tmp_path / "cut.yaml")], TEMPFLOW_FAULT_CHECKPOINT=f"rename:{KILLED_RUN}")
    try:
        wait_lines(tmp_path / "cut" / "metrics.jsonl", 4, p, timeout=900)  # eval 0 + iterations 1..3
    except AssertionError:
        pass  # the launch already died at the fault
    os.killpg(p.pid, signal.SIGKILL)
    finish(p)
    assert [i for i, _ in ck.list_checkpoints(tmp_path / "cut" / "checkpoints")] == [2]
    assert (tmp_path / "cut" / "checkpoints" / "iter_000002" / "shards").is_dir()
    rc, err = finish(launch(["--resume", str(tmp_path / "cut")]))
    assert rc == 0, err[-3000:]
    a, b = _flatten("", _final_shards(tmp_path / "ref"), {}), _flatten("", _final_shards(tmp_path / "cut"), {})
    assert a.keys() == b.keys() and any(".ema." in k for k in a) and any("exp_avg" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k], k
    lora = Path("lora") / "pytorch_lora_weights.safetensors"
    assert (tmp_path / "ref" / lora).read_bytes() == (tmp_path / "cut" / lora).read_bytes()
    assert metrics(tmp_path / "ref") == metrics(tmp_path / "cut")
    records = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert {"sys/peak_rss_mb/rank0", "sys/peak_rss_mb/rank1", "time/collectives"} <= set(records[1])


# ---------------------------------------------------------------------------- launch settings

def _cfg(**sections):
    from tempflow.config import config_from_dict
    return config_from_dict(sections)


@pytest.mark.parametrize("launch, sections, words", [
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, {}, ["fsdp_version: 1", "FSDP2"]),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
      "ACCELERATE_GRADIENT_CLIPPING": "1.0"}, {"train": {"ema_every": 4}},
     ["zero_stage: 3", "train.ema_every=4"]),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
      "ACCELERATE_GRADIENT_CLIPPING": "1.0"}, {"train": {"grad_clip": 0.5}},
     ["gradient_clipping: 1.0", "train.grad_clip=0.5"]),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
      "ACCELERATE_GRADIENT_CLIPPING": "1.0"}, {"model": {"lora": None}, "train": {"ema_every": 0},
                                              "algorithm": {"beta": 0.01}},
     ["zero_stage: 3", "model.lora=null"]),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "ACCELERATE_MIXED_PRECISION": "bf16"},
     {"model": {"dtype": "bfloat16"}}, ["mixed_precision: bf16", "model.dtype=bfloat16"]),
])
def test_engine_conflicts_name_both_settings(monkeypatch, launch, sections, words):
    from tempflow.errors import UserError
    from tempflow.training.engine import check_engine, launch_engine

    for k, v in launch.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(UserError) as e:
        check_engine(_cfg(**sections), launch_engine(2), cuda=True)
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def test_supported_launches_pass(monkeypatch):
    from tempflow.training.engine import check_engine, launch_engine

    check_engine(_cfg(), launch_engine(2), cuda=False)          # DDP
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    assert launch_engine(2).name == "fsdp"
    check_engine(_cfg(), launch_engine(2), cuda=False)
    for k, v in {"ACCELERATE_USE_FSDP": "false", "ACCELERATE_USE_DEEPSPEED": "true",
                 "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2", "ACCELERATE_GRADIENT_CLIPPING": "1.0"}.items():
        monkeypatch.setenv(k, v)
    check_engine(_cfg(), launch_engine(2), cuda=True)


def test_impossible_engine_fails_before_the_model_loads(tmp_path):
    """`tempflow train` under an FSDP1 launch: exit 2, one line, and the model (whose weights
    file is garbage here) is never opened."""
    model = make_tiny_model(tmp_path / "tiny")
    (model / "model.safetensors").write_bytes(b"not weights")
    cfg = run_config(tmp_path, model, "run")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, "-m", "tempflow", "train", "--config", str(tmp_path / "c.yaml"),
                          "--allow-import", "resume_rewards"], capture_output=True, text=True, timeout=300,
                         env=env(ACCELERATE_USE_FSDP="true", FSDP_VERSION="1"))
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "fsdp_version: 1" in lines[0] and "model.safetensors" not in lines[0], lines


# ---------------------------------------------------------------------------- rewards

def test_reward_device_moves_images_before_scoring():
    from tempflow.training.scoring import decode_and_score

    class Model:
        def decode_images(self, x):
            return x.float()

    seen = []

    def reward(images, prompts):
        seen.append(images.device.type)
        return torch.zeros(images.shape[0])

    decode_and_score(Model(), {"r": reward}, torch.rand(2, 3, 4, 4), ["a", "b"])
    decode_and_score(Model(), {"r": reward}, torch.rand(2, 3, 4, 4), ["a", "b"], device="meta")
    assert seen[0] == "cpu" and seen[1] == "meta"
    with pytest.raises(Exception, match="reward.device"):
        _cfg(reward={"device": "gpu0"})


class _Stub(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.calls.append(len(body["prompts"]))
        out = json.dumps({"scores": [float(self.server.index)] * len(body["prompts"])}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("rank", ["0", "1"])
def test_remote_reward_spreads_batches_over_servers(monkeypatch, rank):
    from tempflow.rewards.remote import RemoteReward

    servers = []
    for i in range(2):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
        srv.calls, srv.index = [], i
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    try:
        monkeypatch.setenv("RANK", rank)
        urls = [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]
        reward = RemoteReward(urls, batch_size=2, retries=0)
        scores = reward(torch.rand(7, 3, 8, 8), [f"p{i}" for i in range(7)])
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()
    first = int(rank)  # batch k goes to server (rank + k) % 2
    expect = torch.tensor([float((first + k // 2) % 2) for k in range(7)])
    assert torch.equal(scores, expect)
    assert servers[first].calls == [2, 2] and sorted(servers[1 - first].calls) == [1, 2]
