"""A small HTTP server (standard library) that serves any reward over the wire format of
:mod:`tempflow.rewards.wire`, bounded in memory, threads' time and concurrency.

Contract (docs/rewards.md, "Remote rewards"):

- ``GET /health``: 200 ``{"status": "ok", "reward": name}`` once the reward has scored a test
  batch (one gray image, ``ready_prompt``); before that 503 ``{"status": "loading"}``, and
  503 ``{"status": "failed", "error": ...}`` if the test batch raised. Never needs a token.
- ``POST /score``: 401 without the bearer token (when one is set), 411 without a
  Content-Length, 413 over ``max_mb`` / ``max_images`` / ``max_pixels`` (checked before any
  pixel is decoded), 503 + Retry-After while not ready or when ``max_concurrent`` requests
  are already being read, decoded or scored (at once: no queue), 400 for a malformed body,
  408 for a body not read within ``read_timeout``, 422 when the reward raises a
  :class:`UserError` (the caller's mistake, its message passed on), 500 when it crashes
  otherwise, else 200 ``{"scores": [...], "errors": [...]}``.

Memory is bounded by about max_concurrent x (2 x max_mb + max_images x max_pixels x 3 B)
plus one float batch (max_images x max_pixels x 12 B) being scored: the reward runs under a
lock, one batch at a time. Every connection must deliver its headers and body within
``read_timeout`` seconds (a watchdog shuts it down otherwise), so slow clients cannot hold
threads.
"""

from __future__ import annotations

import hmac
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Sequence

import torch

from tempflow.errors import UserError
from tempflow.rewards.registry import Reward, score
from tempflow.rewards.robust import score_or_nan
from tempflow.rewards.wire import LimitError, WireError, decode_request, encode_scores

READY_PROMPT = "a red circle"  # parses in the shapes world and means something to CLIP-like rewards
READY_SIZE = 64                # the test batch: one gray READY_SIZE x READY_SIZE image
DRAIN_MAX = 1 << 30            # a rejected body up to this size is read and dropped (no reset)


@dataclass(frozen=True)
class Limits:
    """The server's bounds; each is a flag of `tempflow serve-reward` (named in its errors)."""

    max_pixels: int = 2 ** 21       # --max-pixels: width x height of one image (2048 x 1024)
    max_images: int = 64            # --max-images: images in one request (the client's batch_size)
    max_mb: float = 256.0           # --max-mb: request body, 1 MB = 1e6 bytes
    max_concurrent: int = 2         # --max-concurrent: requests read / decoded / scored at once
    read_timeout: float = 30.0      # --read-timeout: seconds to receive one request
    retry_after: int = 1            # Retry-After (s) of a busy answer

    def check(self) -> None:
        """UserError naming the flag of a value out of range."""
        for flag, ok in (("--max-pixels", self.max_pixels >= 1), ("--max-images", self.max_images >= 1),
                         ("--max-mb", self.max_mb > 0), ("--max-concurrent", self.max_concurrent >= 1),
                         ("--read-timeout", self.read_timeout > 0)):
            if not ok:
                raise UserError(f"{flag} must be positive (got {getattr(self, flag[2:].replace('-', '_'))})")


class _Watchdog:
    """One thread that shuts down connections still being read after their deadline."""

    def __init__(self, tick: float):
        self._deadlines: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._tick = tick
        threading.Thread(target=self._run, daemon=True, name="tempflow-reward-watchdog").start()

    def arm(self, sock: socket.socket, seconds: float) -> None:
        with self._lock:
            self._deadlines[sock] = time.monotonic() + seconds

    def disarm(self, sock: socket.socket) -> None:
        with self._lock:
            self._deadlines.pop(sock, None)

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._tick):
            now = time.monotonic()
            with self._lock:
                late = [s for s, t in self._deadlines.items() if t <= now]
                for s in late:
                    del self._deadlines[s]
            for s in late:
                try:
                    s.shutdown(socket.SHUT_RDWR)  # the reading thread sees EOF and ends
                except OSError:
                    pass


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


class RewardServer(ThreadingHTTPServer):
    """A bound server (port 0: a free port, see ``server_address``); call serve_forever().

    The test batch runs in a background thread from construction; ``wait_ready()`` waits
    for it and returns "ok" or "failed" ("loading" on a timeout)."""

    request_queue_size = 1024  # listen backlog: a burst of connections waits, it is not reset
    daemon_threads = True

    def __init__(self, reward: Reward, name: str, host: str = "127.0.0.1", port: int = 0,
                 limits: Limits = Limits(), token: str | None = None,
                 ready_prompt: str = READY_PROMPT, ready_metadata: dict | None = None):
        limits.check()
        self.reward, self.name, self.limits, self.token = reward, name, limits, token
        self.slots = threading.BoundedSemaphore(limits.max_concurrent)
        self.score_lock = threading.Lock()
        self.status, self.error = "loading", ""
        self._ready = threading.Event()
        if ":" in host:  # an IPv6 address such as ::1
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)
        self.watchdog = _Watchdog(tick=min(0.1, limits.read_timeout / 4))
        threading.Thread(target=self._ready_check, args=(ready_prompt, ready_metadata), daemon=True,
                         name="tempflow-reward-ready").start()

    def _ready_check(self, prompt: str, metadata: dict | None) -> None:
        """Score one gray image; any exception (a UserError too) marks the server failed."""
        try:
            with self.score_lock:
                score(self.reward, torch.full((1, 3, READY_SIZE, READY_SIZE), 0.5), [prompt],
                      None if metadata is None else [metadata])
            self.status = "ok"
        except Exception as e:
            self.error = (f"the reward {self.name!r} failed its test batch (one gray {READY_SIZE}x"
                          f"{READY_SIZE} image, prompt {prompt!r}): {_first_line(e)}")
            self.status = "failed"
        finally:
            self._ready.set()

    def wait_ready(self, timeout: float | None = None) -> str:
        """Block until the test batch is done (or ``timeout`` s); the status."""
        self._ready.wait(timeout)
        return self.status

    def server_close(self) -> None:
        self.watchdog.stop()
        super().server_close()

    def handle_error(self, request, client_address) -> None:
        """A client that went away (reset, cut off by the watchdog) is no error worth printing."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server_version = "tempflow-reward/1"
    server: RewardServer

    def setup(self) -> None:
        self.timeout = self.server.limits.read_timeout  # each recv / send on this connection
        super().setup()
        self.server.watchdog.arm(self.connection, self.server.limits.read_timeout)

    def finish(self) -> None:
        self.server.watchdog.disarm(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, fmt, *args) -> None:  # quiet: the trainer logs what matters
        pass

    def _send(self, code: int, payload: dict, headers: Sequence[tuple[str, str]] = ()) -> None:
        data = json.dumps(payload).encode("utf-8")
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers:
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client went away
            self.close_connection = True

    def _length(self) -> int | None:
        try:
            n = int(self.headers.get("Content-Length") or -1)
        except ValueError:
            return None
        return n if n >= 0 else None

    def _reject(self, code: int, error: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        """Answer an error without reading the body into memory: it is read and dropped first
        (closing with unread data would reset the connection before the client sees the answer)."""
        left = self._length() or 0
        if left <= DRAIN_MAX:
            try:
                while left > 0:
                    chunk = self.rfile.read(min(left, 1 << 16))
                    if not chunk:
                        break
                    left -= len(chunk)
            except OSError:
                pass
        self._send(code, {"error": error}, headers)

    def do_GET(self) -> None:
        self.server.watchdog.disarm(self.connection)
        if self.path.rstrip("/") != "/health":
            return self._send(404, {"error": f"no such path {self.path}: use POST /score or GET /health"})
        srv = self.server
        if srv.status == "ok":
            self._send(200, {"status": "ok", "reward": srv.name})
        elif srv.status == "loading":
            self._send(503, {"status": "loading", "reward": srv.name}, [("Retry-After", "2")])
        else:
            self._send(503, {"status": "failed", "reward": srv.name, "error": srv.error})

    def _authorized(self) -> bool:
        given = self.headers.get("Authorization") or ""
        expected = f"Bearer {self.server.token}"
        return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))

    def do_POST(self) -> None:
        srv, lim = self.server, self.server.limits
        if self.path.rstrip("/") != "/score":
            return self._reject(404, f"no such path {self.path}: POST images and prompts to /score")
        if srv.token is not None and not self._authorized():
            return self._reject(401, "missing or wrong token: send 'Authorization: Bearer <token>' "
                                     "(reward.kwargs.token_env names the variable holding it)",
                                [("WWW-Authenticate", "Bearer")])
        length = self._length()
        if length is None:
            self.close_connection = True
            return self._send(411, {"error": "send a Content-Length header with the JSON body"})
        if length > lim.max_mb * 1e6:
            return self._reject(413, f"body of {length / 1e6:.1f} MB is over the server's limit of "
                                     f"{lim.max_mb:g} MB (--max-mb): lower reward.kwargs.batch_size")
        if srv.status == "loading":
            return self._reject(503, f"the reward {srv.name!r} is still loading: wait until GET /health "
                                     f"answers ok", [("Retry-After", "2")])
        if srv.status == "failed":
            return self._reject(503, srv.error)
        if not srv.slots.acquire(blocking=False):
            return self._reject(503, f"busy: {lim.max_concurrent} requests are being scored "
                                     f"(--max-concurrent); retry later",
                                [("Retry-After", str(lim.retry_after))])
        try:
            self._score(length)
        finally:
            srv.slots.release()

    def _read_body(self, length: int) -> bytearray | None:
        """The body, or None when it ended early or the watchdog cut it (over --read-timeout)."""
        buf = bytearray(length)
        view, pos = memoryview(buf), 0
        try:
            while pos < length:
                n = self.rfile.readinto(view[pos:])
                if not n:
                    return None
                pos += n
        except OSError:
            return None
        finally:
            view.release()
        return buf

    def _score(self, length: int) -> None:
        srv, lim = self.server, self.server.limits
        body = self._read_body(length)
        srv.watchdog.disarm(self.connection)
        if body is None:
            self.close_connection = True
            return self._send(408, {"error": f"the body did not arrive within {lim.read_timeout:g} s "
                                             f"(--read-timeout) or ended early"})
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):
            return self._send(400, {"error": "the body is not JSON: send {\"images\": [...], \"prompts\": [...]}"})
        del body
        try:
            images, prompts, metadata = decode_request(parsed, lim.max_images, lim.max_pixels)
        except LimitError as e:
            return self._send(413, {"error": str(e)})
        except WireError as e:
            return self._send(400, {"error": str(e)})
        del parsed
        try:
            with srv.score_lock:
                scored = score_or_nan(srv.reward, images.float().div_(255.0), prompts, metadata)
        except UserError as e:  # the reward refused this request: the caller's mistake
            return self._send(422, {"error": f"the reward {srv.name!r} rejected the request: {e}"})
        except Exception as e:  # the reward (or the server) is broken
            return self._send(500, {"error": f"the reward {srv.name!r} failed: {_first_line(e)}"})
        self._send(200, {"scores": encode_scores(scored.values), "errors": scored.errors})


def make_server(reward: Reward, name: str, host: str = "127.0.0.1", port: int = 0,
                limits: Limits = Limits(), token: str | None = None,
                ready_prompt: str = READY_PROMPT, ready_metadata: dict | None = None) -> RewardServer:
    """A bound :class:`RewardServer`; its test batch starts at once, call serve_forever()."""
    return RewardServer(reward, name, host, port, limits, token, ready_prompt, ready_metadata)
