"""A stand-in OpenAI-compatible chat endpoint for the VLM-judge reward tests."""

import base64
import io
import json
import random
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "test/judge-vl"


class FakeJudge:
    """A minimal /v1/chat/completions on 127.0.0.1 (port 0) in a thread.

    Every request's shape is checked (model, one user message, an image_url part holding a
    PNG data URL of the expected size, a text part); a bad one gets 400 and is listed in
    ``problems``. ``answer(text) -> content`` gives the reply; ``script`` (a list consumed in
    order) holds actions taken instead: an int status, (status, headers), "reset" (an abortive
    close), or ("finish", content, reason)."""

    def __init__(self, size=(20, 16), answer=None, delay=0.0):
        self.size, self.delay = size, delay
        self.answer = answer or (lambda text: "Score: 5")
        self.script: list = []
        self.requests: list[dict] = []
        self.problems: list[str] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.handling = threading.local()  # per server thread: is its request still counted?
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                judge._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda *a: None  # quiet about the connections it resets
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def _check(self, body: dict) -> tuple[str, str]:
        """(text, data URL) of a well-formed request; AssertionError naming what is wrong."""
        from PIL import Image

        assert body.get("model") == MODEL, f"model {body.get('model')!r}"
        assert body.get("temperature") == 0 and isinstance(body.get("max_tokens"), int)
        (message,) = body["messages"]
        assert message["role"] == "user"
        parts = {p["type"]: p for p in message["content"]}
        assert set(parts) == {"image_url", "text"} and len(message["content"]) == 2
        url = parts["image_url"]["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1], validate=True))) as im:
            assert im.format == "PNG" and im.size == self.size, (im.format, im.size)
        return parts["text"]["text"], url

    def _handle(self, h: BaseHTTPRequestHandler):
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.handling.counted = True
        try:
            body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
            if h.path != "/v1/chat/completions":
                return self._send(h, 404, {"error": {"message": f"no route {h.path}"}})
            try:
                text, url = self._check(body)
            except (AssertionError, KeyError, TypeError, ValueError) as e:
                self.problems.append(repr(e))
                return self._send(h, 400, {"error": {"message": f"bad request: {e!r}"}})
            with self.lock:
                self.requests.append({"text": text, "url": url, "auth": h.headers.get("Authorization"),
                                      "body": body})
                action = self.script.pop(0) if self.script else None
            if self.delay:
                time.sleep(self.delay * random.uniform(0.5, 1.0))  # every answer takes a while
            if action == "reset":
                h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                h.connection.close()
                h.close_connection = True
                return
            if isinstance(action, int):
                return self._send(h, action, {"error": {"message": f"scripted {action}", "code": action}})
            if isinstance(action, tuple) and action[0] == "finish":
                return self._completion(h, action[1], action[2])
            if isinstance(action, tuple):
                status, headers = action
                return self._send(h, status, {"error": {"message": f"scripted {status}"}}, headers)
            if action is not None:                  # raw 200 body
                return self._send(h, 200, action)
            try:
                content = self.answer(text)
            except Exception as e:
                self.problems.append(f"answer: {e!r}")
                return self._send(h, 500, {"error": {"message": f"stand-in failed: {e!r}"}})
            return self._completion(h, content, "stop")
        finally:
            self._answered()

    def _answered(self):
        """The request stops counting as in flight once its answer is ready: before the answer
        is written, since the client may send its next request as soon as it has read it."""
        if getattr(self.handling, "counted", False):
            self.handling.counted = False
            with self.lock:
                self.in_flight -= 1

    def _completion(self, h, content, finish):
        self._send(h, 200, {"id": "x", "object": "chat.completion", "model": MODEL,
                            "choices": [{"index": 0, "finish_reason": finish,
                                         "message": {"role": "assistant", "content": content}}]})

    def _send(self, h, status, payload, headers=None):
        self._answered()
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)


def by_prompt(answers: dict):
    """answer(text): the answer for the prompt that appears in the rubric text."""
    def answer(text):
        (hit,) = [a for p, a in answers.items() if p in text]   # the tests' prompts do not contain each other
        return hit
    return answer
