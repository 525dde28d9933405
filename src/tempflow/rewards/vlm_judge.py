"""A vision-language-model judge: any OpenAI-compatible chat endpoint scores image-prompt pairs with a rubric.

Each sample is one conversation, ``POST {base_url}/v1/chat/completions``, with the image as a
``data:image/png;base64,...`` URL in an ``image_url`` content part and the rubric (the prompt
filled in, the answer format appended) in a ``text`` part. Chat endpoints take one
conversation per request, so a batch is sent as concurrent requests from a bounded thread
pool (``concurrency``); the server (vLLM, SGLang) batches them on its side.

Transport follows :mod:`tempflow.rewards.remote` (its retry helpers are reused): 429 / 503
with Retry-After are waited out (``max_wait`` s in all), 5xx, 408, 429 without Retry-After,
connection failures and timeouts are retried ``retries`` times after backoff * 2^attempt s
(+ up to 25% jitter); any other 4xx stops at once with a :class:`UserError` quoting the
server's message. A sample whose request still fails is NaN; when every sample of a call
fails that way the endpoint is down or wrong, and a UserError says so.

The answer is parsed strictly (:func:`parse_score`, :func:`parse_yes_no`). The judged images
come from the policy being trained, so the judge's text is an adversary's channel: an image
can carry rendered text that the judge echoes. A parser that takes "the first number in the
prose" rewards whatever makes the judge say a big number anywhere; this one accepts only the
format the rubric asks for and makes everything else a failed sample (NaN), counted in
``VLMJudge.counts`` and listed in ``VLMJudge.last_errors``, never a guessed score.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import socket
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import torch
from torch import Tensor

from tempflow.errors import UserError
from tempflow.rewards.registry import register
from tempflow.rewards.remote import Waits, _Retry, _retry_after
from tempflow.rewards.vlm_rubrics import (ANSWERS, DEFAULT_RUBRIC, PRESETS, Parsed,  # noqa: F401  (API)
                                          Rubric, format_instruction, parse_score, parse_yes_no)
from tempflow.rewards.wire import encode_images

log = logging.getLogger("tempflow.rewards")

MAX_RESPONSE_BYTES = 4_000_000  # a chat completion of max_tokens tokens is far smaller
MAX_CONCURRENCY = 256


# ---------------------------------------------------------------------------------------------
# Transport


class _Failed(Exception):
    """A sample whose request failed for good (retries or max_wait spent, or a malformed completion)."""

    def __init__(self, message: str, busy: bool = False):
        super().__init__(message)
        self.busy = busy


class _Stopped(Exception):
    """Another request of the call raised a UserError; this one gave up early."""


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _error_message(err: urllib.error.HTTPError) -> str:
    """The server's message from an error answer: OpenAI's {"error": {"message"}}, vLLM's
    {"message"}, FastAPI's {"detail"}, else the body's text or the reason phrase; one line."""
    try:
        raw = err.read(64_000).decode("utf-8", "replace")
    except Exception:
        raw = ""
    try:
        body = json.loads(raw)
    except ValueError:
        return _one_line(raw) if raw.strip() else str(err.reason)
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict) and inner.get("message"):
            return _one_line(inner["message"])
        for key in ("error", "message", "detail"):
            if isinstance(body.get(key), str) and body[key]:
                return _one_line(body[key])
    return _one_line(raw)


def _content(answer: Any) -> tuple[Any, str | None]:
    """(message content, finish_reason) of a chat completion; _Failed when it is not one."""
    try:
        choice = answer["choices"][0]
        return choice["message"].get("content"), choice.get("finish_reason")
    except (TypeError, KeyError, IndexError, AttributeError):
        raise _Failed("the endpoint's answer is not a chat completion (no choices[0].message)") from None


class VLMJudge:
    """reward(images, prompts[, metadata]) -> float32 [B] in [0, 1], NaN where the judge's answer
    was not in the rubric's format or its request failed for good.

    ``counts`` (cumulative): requests sent (retries included), samples answered, unparseable
    answers, samples whose request failed; ``last_errors``: one line per failed sample of the
    last call, e.g. ``sample 3: unparseable answer ('I'd say 8'): the last line is not 'Score: N'``."""

    def __init__(self, base_url: str, model: str, rubric: str = DEFAULT_RUBRIC,
                 scale: Sequence[float] | None = None, answer: str | None = None,
                 api_key_env: str | None = None, timeout: float = 60.0, retries: int = 3,
                 backoff: float = 1.0, concurrency: int = 16, max_tokens: int = 64,
                 temperature: float = 0.0, max_wait: float = 600.0):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise UserError(f"reward.kwargs.base_url must start with http:// or https:// (got {base_url!r}), "
                            f"e.g. http://127.0.0.1:8000 for `vllm serve MODEL --port 8000`")
        if not isinstance(model, str) or not model.strip():
            raise UserError("reward.kwargs.model must name the model the endpoint serves "
                            "(e.g. Qwen/Qwen2.5-VL-7B-Instruct; GET <base_url>/v1/models lists them)")

        def ok(value, test, integer=False) -> bool:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return False
            return (not integer or value == int(value)) and math.isfinite(value) and test(value)

        checks = (("timeout", timeout, ok(timeout, lambda v: v > 0)),
                  ("retries", retries, ok(retries, lambda v: v >= 0, True)),
                  ("backoff", backoff, ok(backoff, lambda v: v >= 0)),
                  ("concurrency", concurrency, ok(concurrency, lambda v: 1 <= v <= MAX_CONCURRENCY, True)),
                  ("max_tokens", max_tokens, ok(max_tokens, lambda v: v >= 1, True)),
                  ("temperature", temperature, ok(temperature, lambda v: 0 <= v <= 2)),
                  ("max_wait", max_wait, ok(max_wait, lambda v: v >= 0)))
        for name, value, good in checks:
            if not good:
                raise UserError(f"reward.kwargs.{name} has a bad value {value!r}: timeout > 0, retries >= 0, "
                                f"backoff >= 0, 1 <= concurrency <= {MAX_CONCURRENCY}, max_tokens >= 1, "
                                f"0 <= temperature <= 2, max_wait >= 0")
        self.rubric = self._rubric(rubric, scale, answer)
        self.headers = {"Content-Type": "application/json"}
        if api_key_env is not None:
            key = os.environ.get(str(api_key_env), "").strip()
            if not key:
                raise UserError(f"reward.kwargs.api_key_env names the environment variable {api_key_env!r}, "
                                f"which is not set: export it with the endpoint's API key")
            if any(c in key for c in "\r\n") or not key.isprintable():
                raise UserError(f"the environment variable {api_key_env!r} (reward.kwargs.api_key_env) holds "
                                f"a key with control characters: set it to the key alone")
            self.headers["Authorization"] = f"Bearer {key}"
        base = base_url.rstrip("/")
        base = base[:-3] if base.endswith("/v1") else base   # both http://h:8000 and .../v1 work
        self.base_url, self.url = base, base + "/v1/chat/completions"
        self.model = model
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.concurrency, self.max_tokens, self.temperature = int(concurrency), int(max_tokens), float(temperature)
        self.max_wait = float(max_wait)
        self.counts = {"requests": 0, "answered": 0, "unparseable": 0, "failed": 0}
        self.last_errors: list[str] = []
        self._lock = threading.Lock()

    @staticmethod
    def _rubric(rubric: str, scale: Sequence[float] | None, answer: str | None) -> Rubric:
        """The rubric of a preset name or of custom text with {prompt}, with its scale checked."""
        if not isinstance(rubric, str) or not rubric.strip():
            raise UserError(f"reward.kwargs.rubric must be a preset ({', '.join(PRESETS)}) or text with "
                            f"{{prompt}} where the prompt goes")
        if rubric in PRESETS:
            preset = PRESETS[rubric]
            text, kind, default_scale = preset.text, answer or preset.answer, preset.scale
            if kind != preset.answer:
                raise UserError(f"reward.kwargs.answer is {answer!r}, but the preset {rubric!r} asks for "
                                f"{preset.answer!r}: drop answer, or write a custom rubric")
        elif "{prompt}" not in rubric:
            raise UserError(f"reward.kwargs.rubric {_one_line(rubric, 60)!r} is neither a preset "
                            f"({', '.join(PRESETS)}) nor text with {{prompt}} where the prompt goes")
        else:
            text, kind, default_scale = rubric, answer or "score", None
        if kind not in ANSWERS:
            raise UserError(f"reward.kwargs.answer must be one of {', '.join(ANSWERS)} (got {kind!r})")
        if kind == "yes_no":
            if scale is not None:
                raise UserError("reward.kwargs.scale does not apply to a yes/no rubric (yes = 1, no = 0): drop it")
            return Rubric(text, kind, None)
        if scale is None:
            scale = default_scale
        if scale is None:
            raise UserError("a custom rubric needs reward.kwargs.scale: [min, max], the range its "
                            "score is asked for in (e.g. [1, 10])")
        try:
            lo, hi = (float(v) for v in scale)
        except (TypeError, ValueError):
            raise UserError(f"reward.kwargs.scale must be two numbers [min, max] (got {scale!r})") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise UserError(f"reward.kwargs.scale must be two finite numbers with min < max (got {list(scale)!r})")
        return Rubric(text, kind, (lo, hi))

    def question(self, prompt: str) -> str:
        """The text part of a request: the rubric with the prompt in, then the answer format."""
        return (self.rubric.text.replace("{prompt}", prompt) + "\n\n"
                + format_instruction(self.rubric.answer, self.rubric.scale))

    def body(self, image_b64: str, prompt: str) -> dict:
        """The JSON body of one chat-completions request."""
        return {"model": self.model, "max_tokens": self.max_tokens, "temperature": self.temperature,
                "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64," + image_b64}},
                    {"type": "text", "text": self.question(prompt)}]}]}

    def parse(self, answer: Any) -> Parsed:
        """The raw score of one answer (NaN and the reason when not in the format)."""
        if self.rubric.answer == "yes_no":
            return parse_yes_no(answer)
        return parse_score(answer, self.rubric.scale)  # type: ignore[arg-type]

    def normalise(self, value: float) -> float:
        """A raw score -> [0, 1] by the scale (yes / no are already 1 / 0)."""
        if self.rubric.scale is None:
            return value
        lo, hi = self.rubric.scale
        return (value - lo) / (hi - lo)

    # -- transport -----------------------------------------------------------------------------

    def _post_once(self, data: bytes) -> Any:
        """One POST; _Retry on a transient failure, UserError on another 4xx, _Failed on a non-JSON answer."""
        with self._lock:
            self.counts["requests"] += 1
        req = urllib.request.Request(self.url, data=data, method="POST", headers=self.headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as e:
            msg = _error_message(e)
            if 400 <= e.code < 500 and e.code not in (408, 429):
                raise self._client_error(e.code, msg) from None
            raise _Retry(f"HTTP {e.code}: {msg}", _retry_after(e), http=True) from None
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError,
                http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            raise _Retry(f"{type(reason).__name__}: {reason}") from None
        if len(raw) > MAX_RESPONSE_BYTES:
            raise _Failed(f"the endpoint's answer is over {MAX_RESPONSE_BYTES} bytes")
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise _Failed("the endpoint answered with something that is not JSON") from None

    def _client_error(self, code: int, msg: str) -> UserError:
        if code in (401, 403):
            fix = ("set reward.kwargs.api_key_env to the name of an environment variable holding the "
                   "endpoint's API key")
        elif code == 404:
            fix = (f"check reward.kwargs.base_url (the server's root; {self.base_url}/v1/models should "
                   f"answer) and reward.kwargs.model ({self.model!r})")
        elif code == 413:
            fix = "the image or the request is over the endpoint's limit: generate smaller images"
        else:
            fix = ("check reward.kwargs.model (does it take images?), max_tokens and the server's context "
                   "length")
        return UserError(f"vlm_judge endpoint {self.url} rejected the request (HTTP {code}: {msg}); {fix}")

    def _request(self, data: bytes, stop: threading.Event) -> Any:
        """POST with the retry policy of tempflow.rewards.remote (module docstring); the decoded
        JSON answer, or _Failed once the retries or max_wait are spent."""
        waits = Waits(self.retries, self.backoff, self.max_wait)
        while True:
            if stop.is_set():
                raise _Stopped()
            try:
                return self._post_once(data)
            except _Retry as e:
                last = e
            pause = waits.next(last)
            if pause is None:
                break
            if stop.wait(pause):
                raise _Stopped()
        waited = waits.waited
        if last.retry_after is not None:
            raise _Failed(f"stayed busy for {waited:.0f} s (last: {last})", busy=True)
        raise _Failed(f"failed {self.retries + 1} times (last: {last})")

    def _judge(self, image: Tensor, prompt: str, stop: threading.Event, fatal: list) -> Parsed:
        """One sample: encode, ask, parse. _Failed for a transport failure, Parsed(NaN) for an
        unparseable answer; a UserError is put in ``fatal`` and stops the call's other requests."""
        if stop.is_set():
            raise _Stopped()
        data = json.dumps(self.body(encode_images(image[None])[0], prompt)).encode("utf-8")
        try:
            answer = self._request(data, stop)
        except UserError as e:
            fatal.append(e)
            stop.set()
            raise
        content, finish = _content(answer)
        if finish == "length":
            return Parsed(math.nan, f"the answer was cut at max_tokens ({self.max_tokens})")
        parsed = self.parse(content)
        if parsed.why is not None:
            shown = _one_line(content, 80) if isinstance(content, str) else content
            return Parsed(math.nan, f"unparseable answer ({shown!r}): {parsed.why}")
        return parsed

    def __call__(self, images: Tensor, prompts: Sequence[str],
                 metadata: Sequence[dict] | None = None) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {list(images.shape)}")
        n = images.shape[0]
        if len(prompts) != n:
            raise ValueError(f"{n} images but {len(prompts)} prompts")
        images = images.detach().cpu()
        values = [math.nan] * n
        errors: list[str] = []
        failed: list[_Failed] = []
        unparseable = 0
        stop, fatal = threading.Event(), []
        pool = ThreadPoolExecutor(min(self.concurrency, max(n, 1)), thread_name_prefix="tempflow-vlm-judge")
        try:
            futures = [pool.submit(self._judge, images[i], str(prompts[i]), stop, fatal) for i in range(n)]
            for i, fut in enumerate(futures):  # in order: sample i's result lands at i
                try:
                    parsed = fut.result()
                except _Stopped:
                    raise fatal[0] from None  # another sample's request hit a client error
                except _Failed as e:
                    failed.append(e)
                    errors.append(f"sample {i}: request {e}")
                    continue
                if parsed.why is not None:
                    unparseable += 1
                    errors.append(f"sample {i}: {parsed.why}")
                else:
                    values[i] = self.normalise(parsed.value)
        except BaseException:
            stop.set()  # a UserError (or an interrupt): the other requests give up at once
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        with self._lock:
            self.counts["answered"] += n - len(failed)
            self.counts["unparseable"] += unparseable
            self.counts["failed"] += len(failed)
        self.last_errors = errors
        if n and len(failed) == n:
            last = failed[-1]
            if last.busy:
                raise UserError(f"vlm_judge endpoint {self.url} {last}; raise reward.kwargs.max_wait or "
                                f"lower concurrency")
            raise UserError(f"vlm_judge endpoint {self.url} failed every sample (last: {last}); start it "
                            f"(e.g. `vllm serve MODEL --port 8000`), or fix reward.kwargs.base_url / raise "
                            f"reward.kwargs.timeout ({self.timeout:g} s)")
        if errors:
            log.warning("vlm_judge: %d of %d samples not scored (NaN): %d unparseable, %d failed requests; "
                        "e.g. %s", len(errors), n, unparseable, len(failed), errors[0])
        return torch.tensor(values, dtype=torch.float32)


@register("vlm_judge")
def vlm_judge(base_url: str, model: str, rubric: str = DEFAULT_RUBRIC, scale: Sequence[float] | None = None,
              answer: str | None = None, api_key_env: str | None = None, timeout: float = 60.0,
              retries: int = 3, backoff: float = 1.0, concurrency: int = 16, max_tokens: int = 64,
              temperature: float = 0.0, max_wait: float = 600.0) -> VLMJudge:
    """Score image-prompt pairs by asking a VLM behind an OpenAI-compatible chat endpoint
    (see docs/rewards.md): ``rubric`` a preset name or text with {prompt}, the score mapped
    from ``scale`` to [0, 1]; the API key from the environment variable ``api_key_env``."""
    return VLMJudge(base_url, model, rubric, scale, answer, api_key_env, timeout, retries, backoff,
                    concurrency, max_tokens, temperature, max_wait)
