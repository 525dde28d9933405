"""A small HTTP server (standard library) that serves any reward over the wire format of
:mod:`tempflow.rewards.wire`. One request is scored at a time; /health answers meanwhile."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tempflow.rewards.registry import Reward
from tempflow.rewards.robust import score_or_nan
from tempflow.rewards.wire import WireError, decode_request, encode_scores

MAX_BODY_MB = 512


def make_handler(reward: Reward, name: str, max_body_mb: float = MAX_BODY_MB) -> type:
    """A request handler class bound to ``reward`` (scored under a lock, one batch at a time)."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        server_version = "tempflow-reward/1"

        def _send(self, code: int, payload: dict) -> None:
            data = json.dumps(payload).encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt, *args) -> None:  # quiet: the trainer logs what matters
            pass

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/health":
                self._send(200, {"status": "ok", "reward": name})
            else:
                self._send(404, {"error": f"no such path {self.path}: use POST /score or GET /health"})

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/score":
                self._send(404, {"error": f"no such path {self.path}: POST images and prompts to /score"})
                return
            try:
                length = int(self.headers.get("Content-Length") or -1)
            except ValueError:
                length = -1
            if length < 0:
                self._send(411, {"error": "send a Content-Length header with the JSON body"})
                return
            if length > max_body_mb * 1e6:
                self._send(413, {"error": f"body of {length / 1e6:.0f} MB is over {max_body_mb:g} MB: "
                                          f"send fewer images per request"})
                return
            try:
                body = json.loads(self.rfile.read(length).decode("utf-8"))
                images, prompts, metadata = decode_request(body)
            except (UnicodeDecodeError, json.JSONDecodeError):
                self._send(400, {"error": "the body is not JSON: send {\"images\": [...], \"prompts\": [...]}"})
                return
            except WireError as e:
                self._send(400, {"error": str(e)})
                return
            try:
                with lock:
                    scored = score_or_nan(reward, images, prompts, metadata)
            except Exception as e:  # the reward itself is broken (e.g. a UserError)
                self._send(500, {"error": f"the reward {name!r} failed: {type(e).__name__}: {e}"})
                return
            self._send(200, {"scores": encode_scores(scored.values), "errors": scored.errors})

    return Handler


def make_server(reward: Reward, name: str, host: str = "127.0.0.1", port: int = 0,
                max_body_mb: float = MAX_BODY_MB) -> ThreadingHTTPServer:
    """A bound server (port 0: a free port, see ``server.server_address``); call serve_forever()."""
    server = ThreadingHTTPServer((host, port), make_handler(reward, name, max_body_mb))
    server.daemon_threads = True
    return server
