"""GenEval and other heavy rewards through the pickle-over-HTTP reward servers in common use,
with a restricted unpickler.

The protocol is the one of Flow-GRPO's client and its server (sources read for it:
yifan123/flow_grpo ``flow_grpo/rewards.py`` ``geneval_score`` / ``deqa_score_remote``, and
yifan123/reward-server ``app_geneval.py``, ``reward_server/gen_eval.py``, ``gunicorn.conf.py``):

- request: ``POST <url>`` (the server's route is ``/``; gunicorn binds 127.0.0.1:18085 for
  GenEval, 18086 for DeQA), body ``pickle.dumps({"images": [JPEG bytes, ...],
  "meta_datas": [GenEval metadata dict per image], "only_strict": bool})``.
- answer 200: ``pickle.dumps({"scores": [...], "rewards": [...], "strict_rewards": [...],
  "group_rewards": {tag: [...]}, "group_strict_rewards": {tag: [...]}})``, one value per image in
  the lists: ``scores`` partial credit (1 - |count error| / count, averaged over the clauses;
  1.0 is right, negative when far too many objects), ``strict_rewards`` 1.0 / 0.0 with exact
  counts, ``rewards`` 1.0 / 0.0 as GenEval's own ``correct`` (always 0.0 when ``only_strict``).
  The DeQA server answers ``{"outputs": [...]}`` to ``{"images": [...]}``.
- answer 500: the server's traceback as text.

Answers are unpickled by :func:`safe_loads`, which builds plain data only (dict, list, tuple,
set, str, bytes, int, float, bool, None) plus numpy numbers and numeric arrays rebuilt by our
own code from their raw bytes (numpy is never imported or called): any other object in an
answer is refused before it is created. The requests are pickled here, from plain data.
"""

from __future__ import annotations

import http.client
import io
import math
import pickle
import random
import socket
import time
import urllib.error
import urllib.request
from typing import Any, Sequence

import torch
from torch import Tensor

from tempflow.errors import UserError
from tempflow.rewards.registry import Reward, register
from tempflow.rewards.remote import RETRY_AFTER_CAP, _Retry, _retry_after
from tempflow.utils.safe_pickle import ForbiddenObject, MalformedPickle, _short, safe_loads  # noqa: F401  (API)

GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
GENEVAL_FIELDS = ("scores", "rewards", "strict_rewards")  # per-image lists of the GenEval server
MAX_ANSWER_BYTES = 64 * 2 ** 20
DEFAULT_URL = "http://127.0.0.1:18085"  # reward-server's gunicorn.conf.py for GenEval


# --- the client ----------------------------------------------------------------------------

def _value(x: Any) -> float:
    """One per-image entry as a float; NaN when it is not a finite number."""
    if isinstance(x, list) and len(x) == 1:  # a 0-d or 1-element numpy array
        x = x[0]
    if isinstance(x, (bool, int, float)):
        try:
            v = float(x)
        except OverflowError:
            return float("nan")
        return v if math.isfinite(v) else float("nan")
    return float("nan")


def _error_text(err: urllib.error.HTTPError) -> str:
    """The last line of an error answer (the exception of the server's traceback)."""
    try:
        lines = [ln.strip() for ln in err.read(65536).decode("utf-8", "replace").splitlines() if ln.strip()]
    except Exception:
        lines = []
    text = lines[-1] if lines else str(err.reason)
    return text if len(text) <= 200 else text[:197] + "..."


def _check_geneval_metadata(meta: Any, prompt: str) -> None:
    """UserError when ``meta`` would crash or fool the GenEval server (gen_eval.py reads
    'tag', 'prompt', 'include' [{class, count >= 1, color?, position?}], 'exclude')."""
    where = f"the metadata of prompt {prompt[:60]!r}"
    fix = "fix the prompt file (GenEval's evaluation_metadata.jsonl format)"
    if not isinstance(meta, dict):
        raise UserError(f"{where} is a {type(meta).__name__}, not an object; {fix}")
    if meta.get("tag") not in GENEVAL_TAGS:
        raise UserError(f"{where}: 'tag' is {_short(meta.get('tag'))}, not one of GenEval's "
                        f"{', '.join(GENEVAL_TAGS)}; {fix}")
    for key in ("include", "exclude"):
        clauses = meta.get(key, [])
        if not isinstance(clauses, list):
            raise UserError(f"{where}: {key!r} must be a list of {{\"class\", \"count\"}} objects; {fix}")
        for j, c in enumerate(clauses):
            if not (isinstance(c, dict) and isinstance(c.get("class"), str)
                    and type(c.get("count")) is int and c["count"] >= 1):
                raise UserError(f"{where}: {key}[{j}] needs a 'class' name and a 'count' >= 1; {fix}")


class GenEvalRemote:
    """reward(images, prompts, metadata) -> float32 [B]: the answer's ``field`` per image from
    a Flow-GRPO-style reward server at ``url`` (NaN where an entry is not a finite number).

    ``verify(images, prompts, metadata) -> (values, passed)``: one pass giving the reward and
    GenEval's per-image pass (``pass_field``: 1.0 / 0.0, NaN if unusable), for the eval table."""

    def __init__(self, url: str = DEFAULT_URL, field: str = "scores", only_strict: bool | None = None,
                 pass_field: str = "rewards", timeout: float = 120.0, retries: int = 3,
                 backoff: float = 1.0, batch_size: int = 64, jpeg_quality: int = 75):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise UserError(f"reward.kwargs.url must start with http:// (got {url!r}), e.g. {DEFAULT_URL}")
        if not isinstance(field, str) or not field:
            raise UserError(f"reward.kwargs.field must name a list in the server's answer, e.g. "
                            f"{', '.join(GENEVAL_FIELDS)} (GenEval) or outputs (DeQA); got {field!r}")
        if pass_field not in ("rewards", "strict_rewards"):
            raise UserError(f"reward.kwargs.pass_field must be 'rewards' (GenEval's pass) or "
                            f"'strict_rewards' (exact counts); got {pass_field!r}")
        if only_strict is not None and not isinstance(only_strict, bool):
            raise UserError(f"reward.kwargs.only_strict must be true, false or null; got {only_strict!r}")
        if only_strict and field == "rewards":
            raise UserError("reward.kwargs.only_strict is true, so the server answers 0 for every "
                            "'rewards' entry; set only_strict to false (or leave it unset) for field rewards")
        for name, value, ok in (("timeout", timeout, timeout > 0), ("retries", retries, retries >= 0),
                                ("backoff", backoff, backoff >= 0), ("batch_size", batch_size, batch_size >= 1),
                                ("jpeg_quality", jpeg_quality, 1 <= jpeg_quality <= 95)):
            if not ok:
                raise UserError(f"reward.kwargs.{name} has a bad value {value!r}: timeout > 0, retries "
                                f">= 0, backoff >= 0, batch_size >= 1, 1 <= jpeg_quality <= 95")
        self.url, self.field, self.pass_field = url, field, pass_field
        self.only_strict = (field != "rewards") if only_strict is None else only_strict
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.batch_size, self.jpeg_quality = int(batch_size), int(jpeg_quality)
        self.needs_metadata = field in GENEVAL_FIELDS
        if not self.needs_metadata:
            self.verify = None  # no GenEval pass / fail from other servers

    # one request -----------------------------------------------------------------------

    def _post_once(self, data: bytes) -> bytes:
        req = urllib.request.Request(self.url, data=data, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                body = resp.read(MAX_ANSWER_BYTES + 1)
        except urllib.error.HTTPError as e:
            msg = _error_text(e)
            if 400 <= e.code < 500 and e.code != 408:
                fix = ("lower reward.kwargs.batch_size" if e.code == 413 else
                       "check reward.kwargs.url: it must point at the server's root (POST /)")
                raise UserError(f"reward server {self.url} rejected the request (HTTP {e.code}: "
                                f"{msg}); {fix}") from None
            raise _Retry(f"HTTP {e.code}: {msg}", _retry_after(e), http=True) from None
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError,
                http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            raise _Retry(f"{type(reason).__name__}: {reason}") from None
        if len(body) > MAX_ANSWER_BYTES:
            raise UserError(f"reward server {self.url} answered with more than "
                            f"{MAX_ANSWER_BYTES // 2 ** 20} MB; check reward.kwargs.url")
        return body

    def _post(self, data: bytes) -> bytes:
        """POST with retries: 5xx, 408 and connection failures are tried ``retries`` more times
        after backoff * 2^k s (at least a 503's Retry-After), with up to 25% jitter."""
        for attempt in range(self.retries + 1):
            try:
                return self._post_once(data)
            except _Retry as e:
                last = e
            if attempt < self.retries:
                wait = self.backoff * 2 ** attempt
                if last.retry_after is not None:
                    wait = max(wait, last.retry_after)
                time.sleep(min(wait, RETRY_AFTER_CAP) * random.uniform(1.0, 1.25))
        if last.http:
            fix = "check the server's log, or raise reward.kwargs.retries"
        else:
            fix = (f"start the GenEval server there (yifan123/reward-server: gunicorn "
                   f"\"app_geneval:create_app()\"), or fix reward.kwargs.url / raise "
                   f"reward.kwargs.timeout ({self.timeout:g} s)")
        raise UserError(f"reward server {self.url} failed {self.retries + 1} times (last: {last}); {fix}")

    def _answer(self, body: bytes) -> dict:
        try:
            answer = safe_loads(body)
        except ForbiddenObject as e:
            raise UserError(f"reward server {self.url} answered with a forbidden object ({e}) in its "
                            f"pickle; tempflow unpickles plain data and numpy numbers only: point "
                            f"reward.kwargs.url at a server you trust that returns lists of floats") from None
        except MalformedPickle as e:
            raise UserError(f"reward server {self.url} answered with something that is not a pickle "
                            f"({e}); check reward.kwargs.url") from None
        if not isinstance(answer, dict):
            raise UserError(f"reward server {self.url} answered a {type(answer).__name__}, not a dict; "
                            f"check reward.kwargs.url")
        return answer

    def _encode(self, images: Tensor) -> list[bytes]:
        from PIL import Image

        arr = (images.detach().float() * 255).round().clamp(0, 255).to(torch.uint8).cpu()
        out = []
        for img in arr.permute(0, 2, 3, 1).numpy():
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=self.jpeg_quality)
            out.append(buf.getvalue())
        return out

    def _request(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[dict] | None,
                 only_strict: bool, fields: Sequence[str]) -> dict[str, Tensor]:
        """field -> float32 [B] (NaN where unusable) over batches of ``batch_size`` images."""
        n = images.shape[0]
        if len(prompts) != n or (metadata is not None and len(metadata) != n):
            raise ValueError(f"{n} images, {len(prompts)} prompts and "
                             f"{'no' if metadata is None else len(metadata)} metadata")
        if self.needs_metadata:
            if metadata is None:
                raise UserError(f"reward geneval_remote (field {self.field!r}) needs GenEval metadata "
                                f"per prompt: give the prompts as a metadata JSONL file (one object "
                                f"with \"prompt\", \"tag\", \"include\" per line, docs/rewards.md)")
            for m, p in zip(metadata, prompts):
                _check_geneval_metadata(m, p)
        out: dict[str, list[float]] = {f: [] for f in fields}
        for i in range(0, n, self.batch_size):
            chunk = images[i:i + self.batch_size]
            body: dict[str, Any] = {"images": self._encode(chunk), "only_strict": bool(only_strict)}
            if metadata is not None:
                body["meta_datas"] = [{**m, "prompt": m.get("prompt", p)} if isinstance(m, dict) else m
                                      for m, p in zip(metadata[i:i + self.batch_size],
                                                      prompts[i:i + self.batch_size])]
            answer = self._answer(self._post(pickle.dumps(body, protocol=4)))
            for f in fields:
                values = answer.get(f)
                if not isinstance(values, (list, tuple)):
                    keys = ", ".join(repr(k) for k in list(answer)[:8] if isinstance(k, str)) or "none"
                    raise UserError(f"reward server {self.url} answered without a {f!r} list (its keys: "
                                    f"{keys}); set reward.kwargs.field to one of them, or check the url")
                if len(values) != chunk.shape[0]:
                    raise UserError(f"reward server {self.url} answered {len(values)} {f!r} for "
                                    f"{chunk.shape[0]} images; check that it is a GenEval reward server")
                out[f] += [_value(v) for v in values]
        return {f: torch.tensor(v, dtype=torch.float32) for f, v in out.items()}

    def __call__(self, images: Tensor, prompts: Sequence[str],
                 metadata: Sequence[dict] | None = None) -> Tensor:
        return self._request(images, prompts, metadata, self.only_strict, (self.field,))[self.field]

    def verify(self, images: Tensor, prompts: Sequence[str],
               metadata: Sequence[dict] | None = None) -> tuple[Tensor, Tensor]:
        """(values float32 [B], passed float32 [B] of 1.0 / 0.0) from one pass over the server;
        a sample whose value or pass is unusable is NaN in both."""
        only_strict = self.only_strict and self.pass_field == "strict_rewards"
        fields = tuple(dict.fromkeys((self.field, self.pass_field)))
        got = self._request(images, prompts, metadata, only_strict, fields)
        values, passed = got[self.field], got[self.pass_field]
        passed = torch.where((passed == 0) | (passed == 1), passed, torch.full_like(passed, float("nan")))
        bad = ~torch.isfinite(values) | ~torch.isfinite(passed)
        nan = torch.full_like(values, float("nan"))
        return torch.where(bad, nan, values), torch.where(bad, nan, passed)


@register("geneval_remote")
def geneval_remote(url: str = DEFAULT_URL, field: str = "scores", only_strict: bool | None = None,
                   pass_field: str = "rewards", timeout: float = 120.0, retries: int = 3,
                   backoff: float = 1.0, batch_size: int = 64, jpeg_quality: int = 75) -> Reward:
    """GenEval (or another reward) from a Flow-GRPO-style pickle-over-HTTP server at ``url``."""
    return GenEvalRemote(url, field, only_strict, pass_field, timeout, retries, backoff,
                         batch_size, jpeg_quality)


__all__ = ["GENEVAL_TAGS", "ForbiddenObject", "GenEvalRemote", "MalformedPickle", "safe_loads"]
