"""OCR reward (text rendering): 1 - normalised edit distance between the prompt's quoted text and the text an OCR model reads.

Flow-GRPO's text-rendering task: the prompt names the text to render in quotes
(``A sign that says "OPEN 24 HOURS"``); the image is read by PP-OCR (the ONNX detection,
angle and recognition models bundled in the ``rapidocr_onnxruntime`` 1.4 wheel, so it runs
offline on the CPU) and the reward is

    1 - min(levenshtein(target, read), len(target)) / max(len(target), 1)    in [0, 1]

on both texts after :func:`normalise` (NFKC; case folded unless ``case_sensitive``; all
whitespace removed, or with ``ignore_spaces=False`` collapsed to single spaces).

- Target (:func:`quoted_text`): the parts in double quotes (``"``, ``“``, ``”``, ``„``,
  ``‟``, ``＂``, all alike, paired in order), joined with one space in prompt order. Only
  when the prompt has no double quote at all, single-quoted parts (``'``, ``‘``, ``’``) count,
  where the opening quote does not follow and the closing one does not precede a letter or
  digit (so the apostrophes in ``Don't`` or ``cats'`` delimit nothing). Empty parts are
  dropped. A prompt with an odd number of double quotes, no quoted part, or only empty ones
  has no target: that sample scores NaN (a failed sample) and one ``tempflow: warning:`` line
  per distinct prompt says why.
- Read text (:func:`reading_order`): the detected boxes whose recognition confidence is at
  least ``min_confidence``, joined with one space in reading order: lines top to bottom (a
  box joins a line when its vertical centre is within half a box height of the line's), boxes
  left to right within a line. Nothing detected reads as "" (reward 0 for a non-empty target).
- Cost: detection dominates. It runs on the image with its shorter side scaled up to
  ``det_side`` (736, PP-OCR's default; larger images are left as they are), so 256 and 512
  pixel images cost about the same; ``det_side`` = the image size skips the upscaling.
  benchmarks/ocr_cost.py measures it.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from tempflow.errors import UserError
from tempflow.rewards.registry import Reward, register
from tempflow.rewards.simple import to_uint8

DOUBLE_QUOTES = '"\u201c\u201d\u201e\u201f\uff02'         # " “ ” „ ‟ ＂
SINGLE_QUOTED = re.compile(r"(?<!\w)['\u2018\u2019](.+?)['\u2018\u2019](?!\w)", re.DOTALL)
INSTALL = "pip install 'tempflow[ocr]'"
MAX_WARNINGS = 100                                         # distinct prompts warned about


class NoQuotedText(ValueError):
    """A prompt that names no text to render; the message says why."""


def quoted_text(prompt: str) -> str:
    """The text a prompt asks to render (its quoted parts, rules above); NoQuotedText if none."""
    marks = [i for i, c in enumerate(prompt) if c in DOUBLE_QUOTES]
    if marks:
        if len(marks) % 2:
            raise NoQuotedText(f"has an unbalanced double quote ({len(marks)} double quotes)")
        parts = [prompt[a + 1:b] for a, b in zip(marks[::2], marks[1::2])]
    else:
        parts = SINGLE_QUOTED.findall(prompt)
        if not parts:
            raise NoQuotedText("has no quoted text to render")
    parts = [" ".join(p.split()) for p in parts]
    parts = [p for p in parts if p]
    if not parts:
        raise NoQuotedText("has only empty quoted text")
    return " ".join(parts)


def normalise(text: str, case_sensitive: bool = False, ignore_spaces: bool = True) -> str:
    """NFKC; casefold unless case_sensitive; whitespace removed (ignore_spaces) or collapsed."""
    text = unicodedata.normalize("NFKC", text)
    if not case_sensitive:
        text = text.casefold()
    return "".join(text.split()) if ignore_spaces else " ".join(text.split())


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert, delete, substitute a code point: cost 1 each).

    One numpy row per character of the longer string: substitutions and deletions are
    elementwise, insertions a running minimum, so long texts cost O(len(a)) numpy calls."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    codes = np.fromiter(map(ord, b), dtype=np.int64, count=len(b))
    idx = np.arange(len(b) + 1, dtype=np.int64)
    row = idx.copy()
    step = np.empty_like(row)
    for i, ch in enumerate(a, start=1):
        step[0] = i
        np.minimum(row[1:] + 1, row[:-1] + (codes != ord(ch)), out=step[1:])
        row = np.minimum.accumulate(step - idx) + idx
    return int(row[-1])


def text_reward(target: str, read: str, case_sensitive: bool = False, ignore_spaces: bool = True) -> float:
    """1 - min(edit distance, len(target)) / max(len(target), 1) of the normalised texts, in [0, 1]."""
    t = normalise(target, case_sensitive, ignore_spaces)
    r = normalise(read, case_sensitive, ignore_spaces)
    n = max(len(t), 1)
    return 1.0 - min(edit_distance(t, r), n) / n


def reading_order(results: Sequence[tuple[Sequence[Sequence[float]], str]]) -> str:
    """Texts of (box, text) pairs (box: corner points [x, y]) joined in reading order with spaces."""
    items = []
    for box, text in results:
        ys = [float(p[1]) for p in box]
        items.append(((min(ys) + max(ys)) / 2, max(max(ys) - min(ys), 1.0),
                      min(float(p[0]) for p in box), text))
    items.sort(key=lambda t: (t[0], t[2]))
    lines: list[list[tuple[float, float, float, str]]] = []
    for item in items:
        if lines:
            cy, h = lines[-1][0][0], lines[-1][0][1]
            if abs(item[0] - cy) <= 0.5 * min(item[1], h):
                lines[-1].append(item)
                continue
        lines.append([item])
    words = [t for line in lines for (_, _, _, t) in sorted(line, key=lambda t: t[2])]
    return " ".join(w for w in words if w)


_ENGINES: dict[tuple[int | None, int], object] = {}
_ENGINE_LOCK = threading.Lock()
_WARNED: set[str] = set()


def _engine(threads: int | None, det_side: int = 736):
    """One PP-OCR engine per process, thread count and det_side (keeps every box: we filter)."""
    key = (threads, det_side)
    with _ENGINE_LOCK:
        if key not in _ENGINES:
            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError as e:
                raise UserError(f"reward 'ocr' needs rapidocr_onnxruntime (PP-OCR on onnxruntime), which "
                                f"is not importable ({e}); install it with {INSTALL} (Python 3.10-3.12)") from None
            n = -1 if threads is None else threads
            _ENGINES[key] = RapidOCR(text_score=0.0, intra_op_num_threads=n, inter_op_num_threads=n,
                                     det_limit_side_len=det_side, det_limit_type="min")
        return _ENGINES[key]


def _warn_once(prompt: str, why: str) -> None:
    from tempflow.training.checkpoint import warn

    if prompt in _WARNED or len(_WARNED) > MAX_WARNINGS:
        return
    _WARNED.add(prompt)
    if len(_WARNED) > MAX_WARNINGS:
        warn(f"OCR reward: more than {MAX_WARNINGS} prompts without text to render; no more warnings")
        return
    shown = prompt if len(prompt) <= 120 else prompt[:117] + "..."
    warn(f"OCR reward: prompt {shown!r} {why}; its samples score NaN (failed). Put the text to "
         f"render in double quotes, e.g. a sign that says \"OPEN\"")


def read_text(engine, image: np.ndarray, min_confidence: float) -> str:
    """The text PP-OCR reads in one uint8 RGB [H, W, 3] image, in reading order ("" if none)."""
    result, _ = engine(np.ascontiguousarray(image[:, :, ::-1]))   # the engine takes BGR arrays
    if not result:
        return ""
    return reading_order([(r[0], r[1]) for r in result if float(r[2]) >= min_confidence])


@register("ocr")
def ocr(case_sensitive: bool = False, ignore_spaces: bool = True, min_confidence: float = 0.5,
        threads: int | None = None, det_side: int = 736) -> Reward:
    """1 - normalised edit distance between the prompt's quoted text and PP-OCR's reading, in [0, 1]."""
    if not isinstance(case_sensitive, bool):
        raise UserError(f"reward 'ocr': case_sensitive must be true or false, not {case_sensitive!r}")
    if not isinstance(ignore_spaces, bool):
        raise UserError(f"reward 'ocr': ignore_spaces must be true or false, not {ignore_spaces!r}")
    if isinstance(min_confidence, bool) or not isinstance(min_confidence, (int, float)) \
            or not 0.0 <= min_confidence <= 1.0:
        raise UserError(f"reward 'ocr': min_confidence must be a number in [0, 1] (0.5: PP-OCR's "
                        f"default), not {min_confidence!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UserError(f"reward 'ocr': threads must be a positive integer or null (onnxruntime's "
                        f"default: all cores), not {threads!r}")
    if isinstance(det_side, bool) or not isinstance(det_side, int) or not 32 <= det_side <= 4096:
        raise UserError(f"reward 'ocr': det_side must be an integer in [32, 4096] (736: PP-OCR's "
                        f"default; your image size, e.g. 512, is faster), not {det_side!r}")
    engine = _engine(threads, det_side)

    def reward(images: Tensor, prompts: Sequence[str], metadata=None) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise UserError(f"reward 'ocr' takes images [B, 3, H, W], not {list(images.shape)}")
        if len(prompts) != images.shape[0]:
            raise UserError(f"reward 'ocr' got {len(prompts)} prompts for {images.shape[0]} images "
                            f"(give one prompt per image)")
        out = torch.full((images.shape[0],), float("nan"), dtype=torch.float32)
        pixels = None
        for i, prompt in enumerate(prompts):
            try:
                target = quoted_text(prompt)
            except NoQuotedText as e:
                _warn_once(prompt, str(e))
                continue
            if pixels is None:
                pixels = to_uint8(images)
            read = read_text(engine, pixels[i], float(min_confidence))
            out[i] = text_reward(target, read, case_sensitive, ignore_spaces)
        return out

    return reward
