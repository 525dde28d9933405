"""A reward scored by a server over HTTP (``tempflow serve-reward`` or any server speaking
the wire format of :mod:`tempflow.rewards.wire`).

Connection failures, timeouts and 5xx answers are retried ``retries`` times, waiting
backoff * 2^attempt seconds in between; then a :class:`UserError` names the url and the fix.
A 4xx answer is a bad request: it fails at once with the server's message.
"""

from __future__ import annotations

import json
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


class _Retry(Exception):
    """A failure worth another try (connection, timeout, 5xx)."""


def _server_message(err: urllib.error.HTTPError) -> str:
    """The 'error' field of an error answer, else its reason phrase."""
    try:
        return str(json.loads(err.read().decode("utf-8"))["error"])
    except Exception:
        return str(err.reason)


def post_json(url: str, body: dict, timeout: float) -> dict:
    """One POST; _Retry on transient failures, UserError on a 4xx or a malformed answer."""
    data = json.dumps(body).encode("utf-8")
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        msg = _server_message(e)
        if 400 <= e.code < 500:
            raise UserError(f"reward server {url} rejected the request (HTTP {e.code}: {msg}); check "
                            f"that it speaks tempflow's wire format (docs/rewards.md)") from None
        raise _Retry(f"HTTP {e.code}: {msg}") from None
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        raise _Retry(f"{type(reason).__name__}: {reason}") from None
    except json.JSONDecodeError:
        raise UserError(f"reward server {url} answered with something that is not JSON; check the "
                        f"url (reward.kwargs.url)") from None


class RemoteReward:
    """reward(images, prompts[, metadata]) -> float32 [B], scored by the server at ``url``."""

    def __init__(self, url: str, timeout: float = 60.0, retries: int = 3, backoff: float = 1.0,
                 batch_size: int = 64):
        if not url.startswith(("http://", "https://")):
            raise UserError(f"reward.kwargs.url must start with http:// (got {url!r}), e.g. "
                            f"http://127.0.0.1:18085")
        for name, value, ok in (("timeout", timeout, timeout > 0), ("retries", retries, retries >= 0),
                                ("backoff", backoff, backoff >= 0), ("batch_size", batch_size, batch_size >= 1)):
            if not ok:
                raise UserError(f"reward.kwargs.{name} has a bad value {value!r}: timeout > 0, "
                                f"retries >= 0, backoff >= 0, batch_size >= 1")
        self.url = url.rstrip("/") + "/score" if not url.rstrip("/").endswith("/score") else url
        self.timeout, self.retries, self.backoff, self.batch_size = timeout, retries, backoff, batch_size

    def _post(self, body: dict) -> dict:
        """POST with bounded retries and exponential backoff."""
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return post_json(self.url, body, self.timeout)
            except _Retry as e:
                last = str(e)
        raise UserError(f"reward server {self.url} failed {self.retries + 1} times (last: {last}); start "
                        f"it with `tempflow serve-reward --reward NAME --port P`, or fix "
                        f"reward.kwargs.url / raise reward.kwargs.timeout ({self.timeout:g} s)")

    def __call__(self, images: Tensor, prompts: Sequence[str],
                 metadata: Sequence[dict] | None = None) -> Tensor:
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            meta = None if metadata is None else metadata[i:i + self.batch_size]
            chunk = images[i:i + self.batch_size]
            answer = self._post(encode_request(chunk, prompts[i:i + self.batch_size], meta))
            try:
                out.append(decode_scores(answer.get("scores") if isinstance(answer, dict) else None,
                                         chunk.shape[0]))
            except WireError as e:
                raise UserError(f"reward server {self.url} sent a bad answer ({e}); it must return "
                                f"{{\"scores\": [one number or null per image]}}") from None
        return torch.cat(out) if out else torch.zeros(0)


@register("remote")
def remote(url: str, timeout: float = 60.0, retries: int = 3, backoff: float = 1.0,
           batch_size: int = 64) -> Reward:
    """Score through a reward server at ``url`` (see docs/rewards.md for the wire format)."""
    return RemoteReward(url, timeout, retries, backoff, batch_size)
