"""The VLM judge's rubrics and its strict answer parsers (docs/rewards.md, "A VLM as the judge").

A rubric asks for one answer format, and only that format counts: a score line
``Score: N`` as the last non-empty line (no other line naming a score), or exactly ``yes`` /
``no``. Anything else parses to NaN, a failed sample: a judge's prose is never mined for a
number an adversarial image could steer.
"""

from __future__ import annotations

import math
import re
from typing import Any, NamedTuple


class Rubric(NamedTuple):
    """text: the question, with ``{prompt}``; answer: 'score' or 'yes_no'; scale: (min, max) or None."""

    text: str
    answer: str
    scale: tuple[float, float] | None


# The presets. Each follows a rubric used in published work; the answer-format line is ours
# (appended by format_instruction), so every preset asks for what the strict parser accepts.
PRESETS: dict[str, Rubric] = {
    # Flow-GRPO's UnifiedReward reward over SGLang (Liu et al. 2025, arXiv:2505.05470; code:
    # github.com/yifan123/flow_grpo, flow_grpo/rewards.py, unifiedreward_score_sglang, which
    # asks UnifiedReward-7b (Wang et al. 2025, arXiv:2503.05236) for caption alignment plus
    # overall image quality as one 1-5 "Final Score" and divides it by 5). Their parser takes
    # the first "Final Score: n" and scores an unparseable answer 0.0; here both are NaN.
    "alignment_quality": Rubric(
        "You are given a text caption and an image generated from that caption. Evaluate the image "
        "on two criteria:\n"
        "1. Alignment with the caption: how accurately the image depicts the objects, their "
        "attributes and their relationships as described in the caption.\n"
        "2. Overall image quality: clarity, detail, colour accuracy and aesthetic appeal.\n"
        "Give one overall rating from 1 (poor) to 5 (excellent) for both criteria together.\n"
        "Text caption: [{prompt}]",
        "score", (1.0, 5.0)),
    # VIEScore's semantic-consistency (SC) rule for text-to-image (Ku et al., ACL 2024,
    # arXiv:2312.14867; github.com/TIGER-AI-Lab/VIEScore): a 0-10 rating of how well the
    # AI-generated image follows the prompt, 0 = not at all, 10 = perfectly.
    "semantic_consistency": Rubric(
        "You are a professional digital artist evaluating an AI-generated image. Rate how well the "
        "image follows the text prompt on a scale from 0 to 10, where 0 means the image does not "
        "follow the prompt at all and 10 means it follows the prompt perfectly.\n"
        "Text prompt: {prompt}",
        "score", (0.0, 10.0)),
    # VQAScore's question (Lin et al., ECCV 2024, arXiv:2404.01291; github.com/linzhiqiu/t2v_metrics).
    # VQAScore is P("Yes") from the answer's logits; a plain chat completion gives only the
    # text, so the score here is 1 for "yes" and 0 for "no".
    "vqascore": Rubric('Does this figure show "{prompt}"? Please answer yes or no.', "yes_no", None),
}
DEFAULT_RUBRIC = "alignment_quality"
ANSWERS = ("score", "yes_no")


def format_instruction(answer: str, scale: tuple[float, float] | None) -> str:
    """The answer-format line appended to every rubric: what the parser accepts, nothing else."""
    if answer == "yes_no":
        return "Reply with exactly one word, yes or no, and nothing else."
    lo, hi = scale  # type: ignore[misc]
    return (f"Reply with exactly one line of the form\nScore: N\nwhere N is a number from {lo:g} to "
            f"{hi:g}, and nothing else.")


# ---------------------------------------------------------------------------------------------
# Strict answer parsing. re.ASCII everywhere: without it \d also matches other scripts' digits
# (float() would read "٧" as 7) and IGNORECASE folds 'ſ' to 's' and the Kelvin sign to 'k'.

_SCORE_LINE = re.compile(r"[ \t]*score[ \t]*:[ \t]*(-?[0-9]{1,6}(?:\.[0-9]{1,6})?)[ \t]*",
                         re.ASCII | re.IGNORECASE)
_SCORE_WORD = re.compile(r"score", re.ASCII | re.IGNORECASE)
_YES_NO = re.compile(r"(yes|no)\.?", re.ASCII | re.IGNORECASE)


class Parsed(NamedTuple):
    """value: the raw score (NaN when the answer is not in the format); why: the reason when NaN."""

    value: float
    why: str | None = None


def parse_score(answer: Any, scale: tuple[float, float]) -> Parsed:
    """The score of an answer in the format ``Score: N``, or NaN with the reason.

    Accepted: the last non-empty line is ``Score: N`` (label in any case; N plain ASCII
    decimal digits, optionally negative, optionally with a fraction; spaces or tabs around),
    N within ``scale``; earlier lines (a short rationale) may not contain the word "score".
    Everything else is NaN: no score line, a score line that is not last, two score lines
    (conflicting or not), "Score: 7/10", "Score: 7.", "Score: 1e1", "Score: NaN", inf,
    markdown ("**Score:** 8"), other scripts' digits, a number outside the scale, an empty
    answer. Nothing is guessed from prose."""
    if not isinstance(answer, str):
        return Parsed(math.nan, f"the answer is {type(answer).__name__}, not text")
    lines = [ln for ln in answer.splitlines() if ln.strip()]
    if not lines:
        return Parsed(math.nan, "empty answer")
    m = _SCORE_LINE.fullmatch(lines[-1])
    if m is None:
        return Parsed(math.nan, "the last line is not 'Score: N'")
    if any(_SCORE_WORD.search(ln) for ln in lines[:-1]):
        return Parsed(math.nan, "'score' appears on more than one line")
    value = float(m.group(1))
    lo, hi = scale
    if not lo <= value <= hi:
        return Parsed(math.nan, f"score {value:g} is outside the scale {lo:g}..{hi:g}")
    return Parsed(value)


def parse_yes_no(answer: Any) -> Parsed:
    """1.0 for an answer that is exactly "yes", 0.0 for "no" (any case, one optional final
    period, surrounding whitespace ignored); NaN for anything else ("Yes, it does", "yes no",
    "Answer: yes", an empty answer)."""
    if not isinstance(answer, str):
        return Parsed(math.nan, f"the answer is {type(answer).__name__}, not text")
    m = _YES_NO.fullmatch(answer.strip())
    if m is None:
        return Parsed(math.nan, "the answer is not exactly yes or no")
    return Parsed(1.0 if m.group(1).lower() == "yes" else 0.0)
