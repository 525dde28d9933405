"""The shapes world's words, prompt grammar and prompt lists.

Six GenEval categories (see docs/shapes.md)::

    single_object  a circle / a small circle / a big circle
    two_object     a circle and a big square            (two different shapes)
    counting       one triangle / two circles ... four crosses / two red circles
    colors         a red circle / a small red circle
    position       a circle left of a square / a red circle above a blue circle
    color_attr     a red circle and a blue square / a red circle and a white circle

Sizes ("small", "big") go with single_object, colors and two_object prompts only. Position
prompts colour both objects or neither; their objects differ in shape or in colour.
Colour-binding (color_attr) objects differ in colour. The prompt space is finite:
:func:`all_prompts` lists it (6,350 prompts) and :func:`parse` accepts exactly it (case,
surrounding spaces and a trailing full stop are ignored).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from tempflow.errors import UserError

CATEGORIES: tuple[str, ...] = (
    "single_object", "two_object", "counting", "colors", "position", "color_attr",
)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
# The corners of the RGB cube pulled in to 20/235 (black is the background): every pair of
# colours (and the background) is at least 215/255 apart in RGB, so nearest-palette
# segmentation survives noise and blur.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (235, 20, 20),
    "green": (20, 235, 20),
    "blue": (20, 20, 235),
    "yellow": (235, 235, 20),
    "cyan": (20, 235, 235),
    "magenta": (235, 20, 235),
    "white": (235, 235, 235),
}
BACKGROUND: tuple[int, int, int] = (20, 20, 20)
NUMBERS: dict[str, int] = {"one": 1, "two": 2, "three": 3, "four": 4}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
SIZES: tuple[str, ...] = ("small", "big")
SIZED_CATEGORIES: tuple[str, ...] = ("single_object", "two_object", "colors")
PLURALS: dict[str, str] = {s: s + ("es" if s.endswith("s") else "s") for s in SHAPES}
_SINGULAR = {p: s for s, p in PLURALS.items()}
_NUMBER_WORDS = {v: k for k, v in NUMBERS.items()}
_FORMS = ("'a circle', 'a small circle', 'a circle and a big square', 'two circles', "
          "'a red circle', 'a circle left of a square', 'a red circle above a blue circle', "
          "'a red circle and a blue square'")
PROMPT_DIR = Path(__file__).resolve().parent / "prompts"
SPLITS = ("train", "heldout", "unseen")


def object_size_range(size: int, size_word: str | None = None) -> tuple[int, int]:
    """Side (px) of an object's box at canvas ``size``, scaled from 32 px and at least 8:
    8-11 px with no size word, 8 px "small", 12-13 px "big". (Below 8 px a circle and a
    cross differ in only 4 of 49 pixels.)"""
    lo, hi = {None: (8, 11), "small": (8, 8), "big": (12, 13)}[size_word]
    lo_px = max(8, round(lo * size / 32))
    return lo_px, max(lo_px, round(hi * size / 32))


def size_class_bounds(size: int) -> tuple[float, float]:
    """(small_max, big_min): an object whose box side is <= small_max px is small and one
    whose side is >= big_min px is big: half a pixel beyond the "small" and "big" ranges of
    :func:`object_size_range` (8.5 and 11.5 px at 32 px; 8.5 and 8.5 at 24 px, where small
    objects are 8 px like unmarked ones and big ones 9-10 px)."""
    return object_size_range(size, "small")[1] + 0.5, object_size_range(size, "big")[0] - 0.5


def position_margin(size: int) -> float:
    """Centroid displacement (px) a relation needs along its axis: 10% of the canvas width.
    "A left of B" holds iff dx = xB - xA > margin and dx > |dy| (dominant axis); likewise
    right of / above / below, with y growing downwards."""
    return 0.1 * size


@dataclass(frozen=True)
class ObjectSpec:
    """``count`` objects of one shape; ``color`` None means any colour, ``size`` None any
    size ("small" or "big" otherwise)."""

    shape: str
    color: str | None = None
    count: int = 1
    size: str | None = None

    def text(self) -> str:
        return " ".join(w for w in ("a", self.size, self.color, self.shape) if w)


@dataclass(frozen=True)
class SceneSpec:
    """What a prompt asks for. ``relation`` (position only) relates objects[0] to objects[1]."""

    category: str
    objects: tuple[ObjectSpec, ...]
    relation: str | None = None

    def expected(self) -> list[tuple[str, str | None]]:
        """The exact object set as (shape, colour-or-None), one entry per object."""
        return [(o.shape, o.color) for o in self.objects for _ in range(o.count)]

    def expected_objects(self) -> list[ObjectSpec]:
        """The exact object set, one ObjectSpec (count 1, with its size word) per object."""
        return [ObjectSpec(o.shape, o.color, 1, o.size) for o in self.objects
                for _ in range(o.count)]

    @property
    def n_objects(self) -> int:
        return sum(o.count for o in self.objects)

    def prompt(self) -> str:
        """The canonical prompt text (inverse of :func:`parse`)."""
        if self.category == "counting":
            o = self.objects[0]
            noun = o.shape if o.count == 1 else PLURALS[o.shape]
            color = f"{o.color} " if o.color else ""
            return f"{_NUMBER_WORDS[o.count]} {color}{noun}"
        a = self.objects[0].text()
        if self.category in ("single_object", "colors"):
            return a
        b = self.objects[1].text()
        joiner = "and" if self.relation is None else self.relation
        return f"{a} {joiner} {b}"


@lru_cache(maxsize=None)
def _vocab() -> tuple[str, ...]:
    return tuple(sorted({w for p in all_prompts() for w in p.split()}))


def vocabulary() -> list[str]:
    """Every word the grammar can produce, sorted."""
    return list(_vocab())


def _fail(prompt: str, why: str) -> UserError:
    return UserError(f"cannot parse prompt {prompt!r}: {why} (the shapes world accepts "
                     f"prompts of the forms {_FORMS})")


def _noun_phrase(prompt: str, toks: list[str], i: int) -> tuple[ObjectSpec, int]:
    """Parse ``a [size] [colour] shape`` starting at token i."""
    if i >= len(toks) or toks[i] != "a":
        got = repr(toks[i]) if i < len(toks) else "the end of the prompt"
        raise _fail(prompt, f"expected 'a' at word {i + 1}, got {got}")
    i += 1
    size = color = None
    if i < len(toks) and toks[i] in SIZES:
        size, i = toks[i], i + 1
    if i < len(toks) and toks[i] in COLORS:
        color, i = toks[i], i + 1
    if i >= len(toks) or toks[i] not in SHAPES:
        got = repr(toks[i]) if i < len(toks) else "the end of the prompt"
        hint = " (plural nouns go with a number: 'two circles')" if i < len(toks) and \
            toks[i] in _SINGULAR else ""
        raise _fail(prompt, f"expected a shape ({', '.join(SHAPES)}) at word {i + 1}, "
                            f"got {got}{hint}")
    return ObjectSpec(toks[i], color, 1, size), i + 1


@lru_cache(maxsize=4096)
def _parse_cached(text: str, prompt: str) -> SceneSpec:
    toks = text.split()
    if not toks:
        raise UserError(f"empty prompt {prompt!r}: write a shapes-world prompt such as "
                        "'a red circle'")
    for w in toks:
        if w not in _vocab():
            raise UserError(f"unknown word {w!r} in prompt {prompt!r}: the shapes world "
                            f"knows: {', '.join(_vocab())} (use one of these words)")
    if toks[0] in NUMBERS:
        return _parse_count(prompt, toks)
    a, i = _noun_phrase(prompt, toks, 0)
    if i == len(toks):
        return SceneSpec("colors" if a.color else "single_object", (a,))
    rest = " ".join(toks[i:])
    relation = next((r for r in RELATIONS if rest.startswith(r + " ")), None)
    if toks[i] != "and" and relation is None:
        raise _fail(prompt, f"expected 'and' or a relation ({', '.join(RELATIONS)}) "
                            f"after {' '.join(toks[:i])!r}, got {toks[i]!r}")
    j = i + (1 if relation is None else len(relation.split()))
    b, k = _noun_phrase(prompt, toks, j)
    if k != len(toks):
        raise _fail(prompt, f"unexpected words after the second object: "
                            f"{' '.join(toks[k:])!r}")
    if (a.color is None) != (b.color is None):
        raise _fail(prompt, "give both objects a colour or neither")
    if a.color is None and a.shape == b.shape:
        raise _fail(prompt, f"two objects without colours must be different shapes (for "
                            f"several {PLURALS[a.shape]} use a count such as "
                            f"'two {PLURALS[a.shape]}')")
    if a.color is not None and a.color == b.color and (relation is None or a.shape == b.shape):
        raise _fail(prompt, "the two objects must have different colours" if relation is None
                    else "two objects of one shape must have different colours")
    category = ("position" if relation is not None
                else "color_attr" if a.color is not None else "two_object")
    if category not in SIZED_CATEGORIES and (a.size or b.size):
        raise _fail(prompt, f"sizes ({', '.join(SIZES)}) go with single objects and "
                            f"uncoloured pairs only, e.g. 'a small circle and a big square'")
    return SceneSpec(category, (a, b), relation)


def _parse_count(prompt: str, toks: list[str]) -> SceneSpec:
    n = NUMBERS[toks[0]]
    if any(t in SIZES for t in toks):
        raise _fail(prompt, f"counts take no size: write e.g. '{toks[0]} circles'")
    color = toks[1] if len(toks) == 3 and toks[1] in COLORS else None
    if len(toks) != (3 if color else 2):
        raise _fail(prompt, f"a count is followed by one noun and optionally a colour, e.g. "
                            f"'{toks[0]} {'circle' if n == 1 else 'circles'}' or "
                            f"'{toks[0]} red {'circle' if n == 1 else 'circles'}'")
    noun = toks[-1]
    shape = noun if noun in SHAPES else _SINGULAR.get(noun)
    if shape is None:
        raise _fail(prompt, f"expected a shape after {toks[0]!r}, got {noun!r}")
    want = shape if n == 1 else PLURALS[shape]
    if noun != want:
        raise _fail(prompt, f"write '{toks[0]} {want}'")
    return SceneSpec("counting", (ObjectSpec(shape, color, n),))


def parse(prompt: str) -> SceneSpec:
    """Parse a shapes-world prompt; raises UserError on unknown words or bad grammar."""
    if isinstance(prompt, SceneSpec):
        return prompt
    if not isinstance(prompt, str):
        raise UserError(f"prompt must be a string, got {type(prompt).__name__}: pass text "
                        "such as 'a red circle'")
    text = " ".join(prompt.strip().lower().rstrip(".").split())
    return _parse_cached(text, prompt)


def category_of(prompt: str) -> str:
    return parse(prompt).category


@lru_cache(maxsize=None)
def _prompts_by_category() -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {c: [] for c in CATEGORIES}
    sized = [""] + [z + " " for z in SIZES]
    pairs = [(a, b) for a in SHAPES for b in SHAPES if a != b]
    out["single_object"] = [f"a {z}{s}" for s in SHAPES for z in sized]
    out["two_object"] = [f"a {za}{a} and a {zb}{b}" for a, b in pairs for za in sized
                         for zb in sized]
    out["counting"] = [f"{w} {c}{s if n == 1 else PLURALS[s]}"
                       for c in [""] + [c + " " for c in COLORS]
                       for s in SHAPES for w, n in NUMBERS.items()]
    out["colors"] = [f"a {z}{c} {s}" for s in SHAPES for c in COLORS for z in sized]
    out["position"] = [f"a {a} {r} a {b}" for a, b in pairs for r in RELATIONS] + [
        f"a {c1} {a} {r} a {c2} {b}" for a in SHAPES for b in SHAPES for c1 in COLORS
        for c2 in COLORS if a != b or c1 != c2 for r in RELATIONS]
    out["color_attr"] = [f"a {c1} {a} and a {c2} {b}" for a in SHAPES for b in SHAPES
                         for c1 in COLORS for c2 in COLORS if c1 != c2]
    return {c: tuple(v) for c, v in out.items()}


def all_prompts() -> list[str]:
    """The full finite prompt space, in a fixed order (category, then shapes, colours)."""
    return [p for c in CATEGORIES for p in _prompts_by_category()[c]]


def prompts_of(category: str) -> list[str]:
    _check_category(category)
    return list(_prompts_by_category()[category])


def _check_category(category: str) -> None:
    if category not in CATEGORIES:
        raise UserError(f"unknown category {category!r}: use one of {', '.join(CATEGORIES)}")


def random_prompt(rng: np.random.Generator, category: str | None = None) -> str:
    """A uniformly random prompt: category uniform (unless given), then prompt uniform."""
    if category is None:
        category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
    _check_category(category)
    options = _prompts_by_category()[category]
    return options[int(rng.integers(len(options)))]


@lru_cache(maxsize=None)
def _load(split: str) -> tuple[tuple[str, str], ...]:
    path = PROMPT_DIR / f"{split}.txt"
    if not path.is_file():
        raise UserError(f"prompt list {path} is missing: regenerate it with "
                        "'python -m tempflow.shapes.make_prompt_lists'")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        cat, _, prompt = line.partition("\t")
        if not prompt or parse(prompt).category != cat:
            raise UserError(f"{path}:{n}: expected 'category<TAB>prompt' with a matching "
                            f"category, got {line!r}; regenerate with "
                            "'python -m tempflow.shapes.make_prompt_lists'")
        rows.append((prompt, cat))
    return tuple(rows)


def load_prompts(split: str) -> list[tuple[str, str]]:
    """The shipped prompt list of a split as [(prompt, category)]: "train", "heldout", or
    "unseen" (every prompt of the grammar in neither list)."""
    if split not in SPLITS:
        raise UserError(f"unknown prompt split {split!r}: use one of {', '.join(SPLITS)}")
    if split == "unseen":
        used = {p for name in ("train", "heldout") for p, _ in _load(name)}
        return [(p, category_of(p)) for p in all_prompts() if p not in used]
    return list(_load(split))
