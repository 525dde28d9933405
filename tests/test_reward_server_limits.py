"""The reward server under hostile or heavy load: limits checked before decoding, bounded
concurrency (503 + Retry-After), a listen backlog for bursts, slow clients cut off,
readiness of /health, the shared token, and the load-test script kept runnable."""

import base64
import http.client
import io
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tempflow.cli.main import main as cli
from tempflow.errors import UserError
from tempflow.rewards import build_reward, score
from tempflow.rewards.server import Limits, make_server
from tempflow.rewards.wire import encode_images

ROOT = Path(__file__).resolve().parents[1]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _image_file(mode: str, size: tuple, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bomb_png() -> str:
    """A black 8000 x 8000 PNG: about 10 kB that would decode to 192 MB of RGB."""
    return _b64(_image_file("1", (8000, 8000), "PNG"))


@pytest.fixture
def serve():
    """serve(reward, wait=True, **server_kwargs) -> (server, port), served from a thread."""
    servers = []

    def start(reward, wait=True, **kwargs):
        server = make_server(reward, "test", "127.0.0.1", 0, **kwargs)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        if wait:
            assert server.wait_ready(30) == "ok", server.error
        return server, server.server_address[1]

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def _mean(images, prompts, metadata=None):
    return images.mean(dim=(1, 2, 3))


def _request(port, method="POST", path="/score", body: bytes | dict | None = None, headers=None,
             timeout=20):
    """(status, JSON answer, headers) of one request."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}"), dict(resp.getheaders())
    finally:
        conn.close()


def _batch(n=1):
    return torch.rand(n, 3, 8, 8), ["a red circle"] * n


def _valid(n=1, side=8):
    return {"images": encode_images(torch.rand(n, 3, side, side)), "prompts": ["a red circle"] * n}


def test_huge_dimensions_are_refused_before_decoding(serve, bomb_png):
    server, port = serve(_mean, limits=Limits(max_pixels=4096))
    status, answer, _ = _request(port, body={"images": [bomb_png], "prompts": ["a"]})
    assert status == 413 and "8000x8000" in answer["error"] and "--max-pixels" in answer["error"]
    # a JPEG over the limit, behind a valid image: the headers are checked before any decoding
    jpeg = _b64(_image_file("L", (100, 100), "JPEG"))
    status, answer, _ = _request(port, body={"images": encode_images(torch.rand(1, 3, 8, 8)) + [jpeg],
                                             "prompts": ["a", "b"]})
    assert status == 413 and "images[1] is 100x100" in answer["error"]


@pytest.mark.parametrize("make, words", [
    (lambda: _b64(_image_file("RGB", (8, 8), "GIF")), "not a PNG or JPEG"),
    (lambda: _b64(_image_file("RGB", (8, 8), "BMP")), "not a PNG or JPEG"),
    (lambda: _b64(b"hello, not an image"), "not a PNG or JPEG"),
    (lambda: encode_images(torch.rand(1, 3, 8, 8))[0][:-3], "not valid base64"),
    (lambda: _b64(base64.b64decode(encode_images(torch.rand(1, 3, 64, 64))[0])[:200]), "cannot be decoded"),
])
def test_non_images_and_truncated_data_are_400(serve, make, words):
    _, port = serve(_mean)
    status, answer, _ = _request(port, body={"images": [make()], "prompts": ["a"]})
    assert status == 400 and words in answer["error"]


def test_too_many_images_and_too_many_bytes(serve):
    _, port = serve(_mean, limits=Limits(max_images=2, max_mb=0.02))
    status, answer, _ = _request(port, body=_valid(3))
    assert status == 413 and "--max-images" in answer["error"]
    big = _valid(1)
    big["prompts"] = ["x" * 30_000]
    status, answer, _ = _request(port, body=big)
    assert status == 413 and "--max-mb" in answer["error"]
    # a declared length far over the limit is answered at once, without waiting for the body
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n")
        assert b" 413 " in s.recv(4096).split(b"\r\n")[0]
    status, answer, _ = _request(port, body=_valid(2))  # within the limits: scored
    assert status == 200 and len(answer["scores"]) == 2


def test_busy_server_answers_503_at_once_and_clients_get_through(serve):
    gate, entered = threading.Event(), threading.Event()

    def slow(images, prompts, metadata=None):
        if prompts[0] == "block":
            entered.set()
            gate.wait(20)
        return images.mean(dim=(1, 2, 3))

    _, port = serve(slow, limits=Limits(max_concurrent=1))
    body = _valid(1)
    held = threading.Thread(target=_request, args=(port,), kwargs={"body": {**body, "prompts": ["block"]}})
    held.start()
    assert entered.wait(10)
    t0 = time.perf_counter()
    status, answer, headers = _request(port, body=body)
    assert status == 503 and "--max-concurrent" in answer["error"] and headers["Retry-After"] == "1"
    assert time.perf_counter() - t0 < 1.0
    threading.Timer(0.5, gate.set).start()
    remote = build_reward("remote", url=f"http://127.0.0.1:{port}", retries=5, backoff=0.05)
    got = score(remote, torch.rand(2, 3, 8, 8), ["a", "b"])  # waits out the 503s
    assert got.shape == (2,) and torch.isfinite(got).all()
    held.join(10)


def test_a_burst_of_150_requests_is_answered_without_resets(serve):
    _, port = serve(_mean, limits=Limits(max_concurrent=4))
    body = json.dumps(_valid(1)).encode()
    gate, out = threading.Barrier(150), []

    def one():
        gate.wait()
        try:
            out.append(_request(port, body=body, timeout=60)[0])
        except Exception as e:
            out.append(type(e).__name__)

    threads = [threading.Thread(target=one) for _ in range(150)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert len(out) == 150 and set(out) <= {200, 503} and 200 in out, sorted(map(str, out))


def test_slow_clients_are_cut_off(serve):
    server, port = serve(_mean, limits=Limits(max_concurrent=1, read_timeout=0.5))
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"images\": [")
        answer = s.recv(4096)  # half a body, then silence
    assert time.perf_counter() - t0 < 5 and (answer == b"" or b" 408 " in answer.split(b"\r\n")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /sco")  # headers trickling in: cut off as well
        assert s.recv(4096) == b""
    assert time.perf_counter() - t0 < 8
    status, _, _ = _request(port, body=_valid(1))  # the slot is free again
    assert status == 200


def test_health_waits_for_the_test_batch():
    loaded, seen = threading.Event(), []

    def lazy(images, prompts, metadata=None):
        seen.append((tuple(images.shape), list(prompts), metadata))
        loaded.wait(20)
        return images.mean(dim=(1, 2, 3))

    server = make_server(lazy, "lazy", ready_prompt="two blue squares", ready_metadata={"tag": "counting"})
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        status, answer, headers = _request(port, "GET", "/health")
        assert (status, answer["status"]) == (503, "loading") and "Retry-After" in headers
        status, answer, _ = _request(port, body=_valid(1))
        assert status == 503 and "loading" in answer["error"]
        url = f"http://127.0.0.1:{port}"
        with pytest.raises(UserError, match="stayed busy or loading .* reward.kwargs.max_wait"):
            score(build_reward("remote", url=url, retries=5, backoff=0.01, max_wait=0.3), *_batch())
        got = []  # a client with no retries waits out the loading (Retry-After), within max_wait
        waiting = threading.Thread(target=lambda: got.append(score(build_reward(
            "remote", url=url, retries=0, backoff=0.01), *_batch())))
        waiting.start()
        time.sleep(0.3)
        loaded.set()
        assert server.wait_ready(10) == "ok"
        waiting.join(20)
        assert got and got[0].shape == (1,)
        assert _request(port, "GET", "/health")[:2] == (200, {"status": "ok", "reward": "lazy"})
        assert seen[0] == ((1, 3, 64, 64), ["two blue squares"], [{"tag": "counting"}])
    finally:
        server.shutdown()
        server.server_close()


def test_a_reward_that_cannot_load_is_never_healthy(serve):
    def broken(images, prompts, metadata=None):
        raise UserError("cannot load the CLIP model 'nope/nope' (404): give a hub id or a local folder")

    server, port = serve(broken, wait=False)
    assert server.wait_ready(10) == "failed"
    status, answer, _ = _request(port, "GET", "/health")
    assert status == 503 and answer["status"] == "failed" and "cannot load the CLIP model" in answer["error"]
    status, answer, _ = _request(port, body=_valid(1))
    assert status == 503 and "failed its test batch" in answer["error"]


def test_token_required_accepted_and_wrong(serve, monkeypatch):
    _, port = serve(_mean, token="s3cret-token")
    url = f"http://127.0.0.1:{port}"
    assert _request(port, "GET", "/health")[0] == 200  # /health stays open
    status, answer, headers = _request(port, body=_valid(1))
    assert status == 401 and "token" in answer["error"] and headers["WWW-Authenticate"] == "Bearer"
    assert _request(port, body=_valid(1), headers={"Authorization": "Bearer wrong"})[0] == 401
    with pytest.raises(UserError, match="HTTP 401.*token_env"):
        score(build_reward("remote", url=url, retries=3, backoff=5.0), torch.rand(1, 3, 8, 8), ["a"])
    monkeypatch.setenv("MY_REWARD_TOKEN", "s3cret-token")
    got = score(build_reward("remote", url=url, token_env="MY_REWARD_TOKEN"), torch.rand(2, 3, 8, 8), ["a", "b"])
    assert got.shape == (2,)
    monkeypatch.delenv("MY_REWARD_TOKEN")
    with pytest.raises(UserError, match="MY_REWARD_TOKEN"):
        build_reward("remote", url=url, token_env="MY_REWARD_TOKEN")


def test_cli_refuses_a_public_address_without_a_token(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("TEMPFLOW_REWARD_TOKEN", raising=False)
    base = ["serve-reward", "--reward", "brightness", "--port", "0"]
    assert cli(base + ["--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--token-file" in err and err.startswith("tempflow serve-reward: error:")
    empty = tmp_path / "token"
    empty.write_text("\n")
    assert cli(base + ["--host", "0.0.0.0", "--token-file", str(empty)]) == 2
    assert "must hold one token" in capsys.readouterr().err
    assert cli(base + ["--max-concurrent", "0"]) == 2
    assert "--max-concurrent must be positive" in capsys.readouterr().err
    assert cli(base + ["--ready-metadata", "[1]"]) == 2
    assert "--ready-metadata must be a JSON object" in capsys.readouterr().err


def test_cli_exits_2_when_the_test_batch_fails(capsys):
    code = cli(["serve-reward", "--reward", "shapes", "--port", "0", "--ready-prompt", "a purple elephant"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "failed its test batch" in err
    assert "--ready-prompt" in err and "Traceback" not in err


def test_cli_defaults_are_the_servers():
    from dataclasses import asdict

    from tempflow.cli.serve_reward_cmd import DEFAULTS, READY_PROMPT
    from tempflow.rewards.server import READY_PROMPT as SERVER_PROMPT

    limits = asdict(Limits())
    assert all(limits[k] == v for k, v in DEFAULTS.items()) and READY_PROMPT == SERVER_PROMPT


@pytest.mark.slow  # a subprocess server: about 30 s on a shared 2-core CPU
def test_load_test_script_runs():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "reward_server_load.py"),
                          "--requests", "12", "--hostile", "1", "--images", "1", "--size", "8"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "connections reset or failed: 0" in out.stdout and "{'scored': 12}" in out.stdout
    assert "VmHWM" in out.stdout
