"""A reward scored by a server over HTTP (``tempflow serve-reward`` or any server speaking
the wire format of :mod:`tempflow.rewards.wire`).

A server that answers 503 with Retry-After (busy or still loading) is waited for: after its
Retry-After, growing as backoff * 2^k, at most RETRY_AFTER_CAP s a time, ``max_wait`` s in
all. Other 5xx answers, 408, connection failures and timeouts are retried ``retries`` times
after backoff * 2^attempt seconds. Every wait gets up to 25% jitter. Then a
:class:`UserError` names the url and the fix. Any other 4xx is the caller's mistake (a bad
request, a missing token, a request over the server's limits, or a prompt the reward
rejects: 422): it fails at once with the server's message, without retrying.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import time
import urllib.error
import urllib.request
from typing import Sequence

import torch
from torch import Tensor

from tempflow.errors import UserError
from tempflow.rewards.registry import Reward, register
from tempflow.rewards.wire import WireError, decode_scores, encode_request

RETRY_AFTER_CAP = 30.0  # seconds: a server cannot make the client wait longer per try


class _Retry(Exception):
    """A failure worth another try (connection, timeout, 5xx); ``retry_after`` in seconds or None."""

    def __init__(self, message: str, retry_after: float | None = None, http: bool = False):
        super().__init__(message)
        self.retry_after, self.http = retry_after, http


def _server_message(err: urllib.error.HTTPError) -> str:
    """The 'error' field of an error answer, else its reason phrase."""
    try:
        return str(json.loads(err.read().decode("utf-8"))["error"])
    except Exception:
        return str(err.reason)


def _retry_after(err: urllib.error.HTTPError) -> float | None:
    """The Retry-After header in seconds (an HTTP date is ignored), capped."""
    try:
        return min(max(float(err.headers.get("Retry-After", "")), 0.0), RETRY_AFTER_CAP)
    except (TypeError, ValueError):
        return None


def _client_error(url: str, code: int, msg: str) -> UserError:
    """The UserError for a 4xx answer, with the fix that fits the code."""
    if code == 401:
        fix = "set reward.kwargs.token_env to the name of an environment variable holding the server's token"
    elif code == 413:
        fix = "lower reward.kwargs.batch_size or the image size, or raise the server's limit"
    elif code == 422:
        return UserError(f"reward server {url} could not score this batch: {msg}")
    else:
        fix = "check that it speaks tempflow's wire format (docs/rewards.md)"
    return UserError(f"reward server {url} rejected the request (HTTP {code}: {msg}); {fix}")


def post_json(url: str, body: dict, timeout: float, headers: dict | None = None) -> dict:
    """One POST; _Retry on transient failures, UserError on a 4xx or a malformed answer."""
    data = json.dumps(body).encode("utf-8")
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        msg = _server_message(e)
        if 400 <= e.code < 500 and e.code != 408:
            raise _client_error(url, e.code, msg) from None
        raise _Retry(f"HTTP {e.code}: {msg}", _retry_after(e), http=True) from None
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError,
            http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise _Retry(f"{type(reason).__name__}: {reason}") from None
    except json.JSONDecodeError:
        raise UserError(f"reward server {url} answered with something that is not JSON; check the "
                        f"url (reward.kwargs.url)") from None


class Waits:
    """How long a client waits before its next try: an answer with Retry-After (busy, loading,
    rate-limited) is waited out, growing, capped at RETRY_AFTER_CAP, for max_wait s in all;
    any other transient failure is retried ``retries`` times after backoff * 2^k s; every wait
    gets up to 25% jitter so that many clients do not come back at once."""

    def __init__(self, retries: int, backoff: float, max_wait: float):
        self.retries, self.backoff, self.max_wait = retries, backoff, max_wait
        self.failures = self.busy = 0
        self.waited = 0.0

    def next(self, err: "_Retry") -> float | None:
        """Seconds to wait after ``err``, or None when the tries are spent."""
        if err.retry_after is not None and self.waited < self.max_wait:
            wait = min(max(err.retry_after, self.backoff * 2 ** self.busy), RETRY_AFTER_CAP,
                       self.max_wait - self.waited)
            self.busy += 1
        else:
            self.failures += 1
            if self.failures > self.retries:
                return None
            wait = self.backoff * 2 ** (self.failures - 1)
        wait *= random.uniform(1.0, 1.25)
        self.waited += wait
        return wait


def _score_url(url: str) -> str:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise UserError(f"reward.kwargs.url must start with http:// (got {url!r}), e.g. "
                        f"http://127.0.0.1:18085 (or a list of such urls)")
    return url.rstrip("/") + "/score" if not url.rstrip("/").endswith("/score") else url


class RemoteReward:
    """reward(images, prompts[, metadata]) -> float32 [B], scored by the server at ``url``.

    ``url`` may be a list of servers: the batches of ``batch_size`` images are spread over them
    round-robin and sent at the same time, each process starting at its own server (its rank
    modulo the number of servers), so N training processes share M servers evenly.
    ``token_env`` names an environment variable holding the server's token (sent as
    ``Authorization: Bearer``), so the secret never enters a run's config. ``max_wait``:
    seconds to wait in all for a busy or loading server (503 with Retry-After)."""

    def __init__(self, url: str | Sequence[str], timeout: float = 60.0, retries: int = 3, backoff: float = 1.0,
                 batch_size: int = 64, token_env: str | None = None, max_wait: float = 600.0):
        self.urls = [_score_url(u) for u in ([url] if isinstance(url, str) else list(url))]
        if not self.urls:
            raise UserError("reward.kwargs.url is an empty list; give at least one server url")
        for name, value, ok in (("timeout", timeout, timeout > 0), ("retries", retries, retries >= 0),
                                ("backoff", backoff, backoff >= 0), ("batch_size", batch_size, batch_size >= 1),
                                ("max_wait", max_wait, max_wait >= 0)):
            if not ok:
                raise UserError(f"reward.kwargs.{name} has a bad value {value!r}: timeout > 0, "
                                f"retries >= 0, backoff >= 0, batch_size >= 1, max_wait >= 0")
        self.headers = {}
        if token_env is not None:
            token = os.environ.get(str(token_env), "").strip()
            if not token:
                raise UserError(f"reward.kwargs.token_env names the environment variable {token_env!r}, "
                                f"which is not set: export it with the reward server's token")
            self.headers["Authorization"] = f"Bearer {token}"
        self.url = self.urls[0]
        self.first = int(os.environ.get("RANK", "0") or 0) % len(self.urls)  # this process's first server
        self.timeout, self.retries, self.backoff, self.batch_size = timeout, retries, backoff, batch_size
        self.max_wait = max_wait

    def _post(self, body: dict, url: str | None = None) -> dict:
        """POST; wait out a busy server, retry other transient failures (module docstring)."""
        waits, url = Waits(self.retries, self.backoff, self.max_wait), url or self.url
        while True:
            try:
                return post_json(url, body, self.timeout, self.headers)
            except _Retry as e:
                last = e
            wait = waits.next(last)
            if wait is None:
                break
            time.sleep(wait)
        waited = waits.waited
        if last.retry_after is not None:
            raise UserError(f"reward server {url} stayed busy or loading for {waited:.0f} s (last: "
                            f"{last}); check GET /health on it, or raise reward.kwargs.max_wait")
        if last.http:
            raise UserError(f"reward server {url} failed {self.retries + 1} times (last: {last}); "
                            f"check GET /health on it, or raise reward.kwargs.retries")
        raise UserError(f"reward server {url} failed {self.retries + 1} times (last: {last}); start "
                        f"it with `tempflow serve-reward --reward NAME --port P`, or fix "
                        f"reward.kwargs.url / raise reward.kwargs.timeout ({self.timeout:g} s)")

    def __call__(self, images: Tensor, prompts: Sequence[str],
                 metadata: Sequence[dict] | None = None) -> Tensor:
        starts = list(range(0, images.shape[0], self.batch_size))

        def one(k: int) -> Tensor:
            i, url = starts[k], self.urls[(self.first + k) % len(self.urls)]
            meta = None if metadata is None else metadata[i:i + self.batch_size]
            chunk = images[i:i + self.batch_size]
            answer = self._post(encode_request(chunk, prompts[i:i + self.batch_size], meta), url)
            try:
                return decode_scores(answer.get("scores") if isinstance(answer, dict) else None, chunk.shape[0])
            except WireError as e:
                raise UserError(f"reward server {url} sent a bad answer ({e}); it must return "
                                f"{{\"scores\": [one number or null per image]}}") from None

        if len(self.urls) == 1 or len(starts) <= 1:
            out = [one(k) for k in range(len(starts))]
        else:
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(min(len(self.urls), len(starts))) as pool:
                out = list(pool.map(one, range(len(starts))))
        return torch.cat(out) if out else torch.zeros(0)


@register("remote")
def remote(url: str | list[str], timeout: float = 60.0, retries: int = 3, backoff: float = 1.0,
           batch_size: int = 64, token_env: str | None = None, max_wait: float = 600.0) -> Reward:
    """Score through a reward server at ``url``, or spread over a list of servers (see
    docs/rewards.md for the wire format)."""
    return RemoteReward(url, timeout, retries, backoff, batch_size, token_env, max_wait)
