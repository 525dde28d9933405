"""Remote rewards: a server on 127.0.0.1 and the client, the wire format, bad requests,
a server that is down or slow, and `tempflow serve-reward` end to end."""

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch

from ports import free_port
from tempflow.errors import UserError
from tempflow.rewards import build_reward, register, score
from tempflow.rewards.server import make_server
from tempflow.rewards.wire import decode_images, encode_images

PROMPTS = ["a red circle", "two blue squares", "three green triangles"]


def _images(n=3, seed=0):
    return torch.rand(n, 3, 16, 20, generator=torch.Generator().manual_seed(seed))


def _quantised(x):
    return (x * 255).round() / 255


@register("test_metadata_echo")
def _metadata_echo():
    """Scores each sample with metadata['value'] (NaN when absent); raises on 'boom' prompts."""
    def reward(images, prompts, metadata=None):
        if any(p == "boom" for p in prompts):
            raise RuntimeError("cannot score 'boom'")
        if metadata is None:
            return images.mean(dim=(1, 2, 3))
        return torch.tensor([float(m.get("value", "nan")) for m in metadata])
    return reward


@pytest.fixture
def serve():
    """serve(reward_name, handler_reward=None, server_kwargs=None, **kwargs) -> base url of a
    server running in a thread, after its test batch passed (unless wait=False)."""
    servers = []

    def start(name, handler_reward=None, server_kwargs=None, wait=True, **kwargs):
        server = make_server(handler_reward or build_reward(name, **kwargs), name, "127.0.0.1", 0,
                             **(server_kwargs or {}))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        if wait:
            assert server.wait_ready(30) == "ok", server.error
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def _post(url, data: bytes, path="/score"):
    req = urllib.request.Request(url + path, data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_png_round_trip_is_8_bit_exact():
    x = _images()
    assert torch.equal(decode_images(encode_images(x)), _quantised(x))


def test_remote_scores_equal_local_scores(serve):
    url = serve("brightness")
    x = _images(5)
    remote = build_reward("remote", url=url, batch_size=2)
    local = build_reward("brightness")
    assert torch.allclose(score(remote, x, PROMPTS + PROMPTS[:2]), score(local, _quantised(x), PROMPTS + PROMPTS[:2]),
                          atol=1e-6)
    with urllib.request.urlopen(url + "/health", timeout=5) as r:
        assert json.loads(r.read()) == {"status": "ok", "reward": "brightness"}


def test_shapes_reward_through_the_server(serve):
    import numpy as np

    from tempflow.shapes import render_batch

    url = serve("shapes", dense=False)
    x = render_batch(PROMPTS, np.random.default_rng(0))       # correct images: pass
    got = score(build_reward("remote", url=url), x, PROMPTS)
    assert got.tolist() == [1.0, 1.0, 1.0]
    assert score(build_reward("remote", url=url), x, PROMPTS[::-1]).tolist() == [0.0, 1.0, 0.0]


def test_metadata_and_failed_samples_travel(serve):
    url = serve("test_metadata_echo")
    remote = build_reward("remote", url=url)
    x = _images(3)
    got = score(remote, x, PROMPTS, [{"value": 1.5}, {}, {"value": -2}])
    assert got[0] == 1.5 and torch.isnan(got[1]) and got[2] == -2
    # a batch that raises is scored per sample by the server: only 'boom' is NaN
    got = score(remote, x, ["a", "boom", "c"])
    assert torch.isnan(got[1]) and torch.isfinite(got[[0, 2]]).all()


@pytest.mark.parametrize("body, code, words", [
    (b"not json", 400, "not JSON"),
    (json.dumps({"images": [], "prompts": ["a"]}).encode(), 400, "0 images but 1 prompts"),
    (json.dumps({"images": ["%%%"], "prompts": ["a"]}).encode(), 400, "images[0] is not valid base64"),
    (json.dumps({"prompts": ["a"]}).encode(), 400, "'images' must be a list"),
    (json.dumps({"images": [], "prompts": [], "extra": 1}).encode(), 400, "unknown field"),
    (json.dumps({"images": encode_images(_images(1)), "prompts": ["a"], "metadata": [1]}).encode(),
     400, "'metadata' must be null"),
])
def test_bad_requests_get_4xx_with_a_message(serve, body, code, words):
    url = serve("brightness")
    status, answer = _post(url, body)
    assert status == code and words in answer["error"]


def test_unknown_path_and_mixed_sizes(serve):
    url = serve("brightness")
    status, answer = _post(url, b"{}", path="/nope")
    assert status == 404 and "/score" in answer["error"]
    mixed = encode_images(_images(1)) + encode_images(torch.rand(1, 3, 8, 8))
    status, answer = _post(url, json.dumps({"images": mixed, "prompts": ["a", "b"]}).encode())
    assert status == 400 and "same size" in answer["error"]


def test_server_down_gives_user_error_after_bounded_retries():
    url = f"http://127.0.0.1:{free_port()}"
    remote = build_reward("remote", url=url, retries=2, backoff=0.05, timeout=1)
    t0 = time.perf_counter()
    with pytest.raises(UserError) as err:
        score(remote, _images(1), PROMPTS[:1])
    assert time.perf_counter() - t0 < 5  # 3 tries, sleeps 0.05 + 0.1
    msg = str(err.value)
    assert url in msg and "3 times" in msg and "tempflow serve-reward" in msg and "\n" not in msg


def test_slow_server_times_out_then_user_error(serve):
    @register("test_sleepy")
    def _sleepy():
        def reward(images, prompts, metadata=None):
            time.sleep(1.0)
            return torch.zeros(images.shape[0])
        return reward

    url = serve("test_sleepy")
    remote = build_reward("remote", url=url, retries=1, backoff=0.0, timeout=0.2)
    with pytest.raises(UserError, match="raise reward.kwargs.timeout"):
        score(remote, _images(1), PROMPTS[:1])


def test_transient_server_error_is_retried(serve, monkeypatch):
    import tempflow.rewards.server as server_module

    real, calls = server_module.score_or_nan, {"n": 0}

    def crash_once(*args):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA error: an illegal memory access")  # the server answers 500
        return real(*args)

    url = serve("brightness")
    monkeypatch.setattr(server_module, "score_or_nan", crash_once)
    got = score(build_reward("remote", url=url, retries=2, backoff=0.01), _images(2), PROMPTS[:2])
    assert got.shape == (2,) and calls["n"] == 2


def test_reward_user_error_is_422_shown_at_once(serve):
    calls = {"n": 0}

    def strict(images, prompts, metadata=None):
        calls["n"] += 1
        if "elephant" in prompts[0]:
            raise UserError("cannot parse prompt 'a purple elephant': unknown word 'elephant'")
        return torch.ones(images.shape[0])

    url = serve("strict", handler_reward=strict)
    status, answer = _post(url, json.dumps({"images": encode_images(_images(1)),
                                             "prompts": ["a purple elephant"]}).encode())
    assert status == 422 and "unknown word 'elephant'" in answer["error"]
    remote = build_reward("remote", url=url, retries=3, backoff=5.0)
    t0, n0 = time.perf_counter(), calls["n"]
    with pytest.raises(UserError, match="could not score this batch: .*unknown word 'elephant'"):
        score(remote, _images(1), ["a purple elephant"])
    assert time.perf_counter() - t0 < 2 and calls["n"] == n0 + 1  # no retry, no backoff


def test_client_rejects_bad_settings():
    with pytest.raises(UserError, match="http://"):
        build_reward("remote", url="127.0.0.1:80")
    with pytest.raises(UserError, match="retries"):
        build_reward("remote", url="http://127.0.0.1:1", retries=-1)


def test_trainer_stops_with_user_error_when_the_server_is_down(tiny_shapes_checkpoint, tmp_path):
    from tempflow.config import config_from_dict
    from tempflow.training.trainer import Trainer

    cfg = config_from_dict({
        "model": {"name": str(tiny_shapes_checkpoint), "lora": {"rank": 2, "alpha": 2}},
        "sampling": {"steps": 4}, "algorithm": {"num_branches": 2, "seeds_per_prompt": 1,
                                                 "branch_points": [0]},
        "train": {"prompts_per_iteration": 2},
        "reward": {"name": "remote", "kwargs": {"url": f"http://127.0.0.1:{free_port()}", "retries": 1,
                                                 "backoff": 0.01}, "score_chunks": 2},
        "run": {"out": str(tmp_path / "run")}})
    tr = Trainer(cfg)
    before = [p.detach().clone() for p in tr.model.trainable_parameters()]
    with pytest.raises(UserError, match="reward server http://127.0.0.1"):
        tr.iteration(0)
    assert all(torch.equal(a, b) for a, b in zip(before, tr.model.trainable_parameters()))


@pytest.mark.slow
def test_serve_reward_command(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "tempflow", "serve-reward", "--reward", "brightness",
                             "--port", "0", "--set", "target=0.6"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving reward 'brightness' on http://127.0.0.1:" in line, proc.stderr.read()
        url = line.split(" on ")[1].split(" ")[0]
        assert "ready" in proc.stdout.readline()
        x = torch.full((2, 3, 8, 8), 0.6)  # 153 / 255: exact in a PNG
        x[1] = 1.0
        got = score(build_reward("remote", url=url), x, ["a", "b"])
        assert got.tolist() == pytest.approx([0.0, -0.4], abs=1e-6)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    bad = subprocess.run([sys.executable, "-m", "tempflow", "serve-reward", "--reward", "brightness",
                          "--port", "0", "--set", "nope=1"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "does not take these arguments" in bad.stderr
    assert "Traceback" not in bad.stderr
