"""Shapes-world grammar: vocabulary, parsing, prompt space and the fixed prompt lists."""

import itertools

import numpy as np
import pytest

from tempflow.errors import UserError
from tempflow.shapes import (BACKGROUND, CATEGORIES, COLORS, SHAPES, ObjectSpec, SceneSpec,
                             all_prompts, category_of, load_prompts, parse, prompts_of,
                             random_prompt, vocabulary)
from tempflow.shapes.grammar import PROMPT_DIR
from tempflow.shapes.make_prompt_lists import render_file, split_prompts


def test_constants():
    assert CATEGORIES == ("single_object", "two_object", "counting", "colors", "position",
                          "color_attr")
    assert SHAPES == ("circle", "square", "triangle")
    assert len(COLORS) == 6
    entries = [np.array(c, float) for c in [BACKGROUND, *COLORS.values()]]
    for c in entries:
        assert c.shape == (3,) and 0 <= c.min() and c.max() <= 255
    assert min(np.linalg.norm(a - b) for a, b in itertools.combinations(entries, 2)) >= 200


def test_vocabulary():
    v = vocabulary()
    assert v == sorted(set(v))
    for w in ["a", "and", "above", "below", "left", "right", "of", "one", "two", "three",
              "four", "circles", "squares", "triangles", *SHAPES, *COLORS]:
        assert w in v
    assert {w for p in all_prompts() for w in p.split()} == set(v)
    v.append("mutated")
    assert "mutated" not in vocabulary()


def test_prompt_space():
    ps = all_prompts()
    sizes = {c: len(prompts_of(c)) for c in CATEGORIES}
    assert sizes == {"single_object": 3, "two_object": 6, "counting": 12 * 7, "colors": 18,
                     "position": 24, "color_attr": 180}  # counting: no colour or one of 6
    assert ps == all_prompts() and len(ps) == len(set(ps)) == sum(sizes.values())
    for c in CATEGORIES:
        for p in prompts_of(c):
            spec = parse(p)
            assert spec.category == c == category_of(p)
            assert spec.prompt() == p  # round trip


@pytest.mark.parametrize("prompt,spec", [
    ("a circle", SceneSpec("single_object", (ObjectSpec("circle"),))),
    ("a circle and a square",
     SceneSpec("two_object", (ObjectSpec("circle"), ObjectSpec("square")))),
    ("one triangle", SceneSpec("counting", (ObjectSpec("triangle", None, 1),))),
    ("four squares", SceneSpec("counting", (ObjectSpec("square", None, 4),))),
    ("two red circles", SceneSpec("counting", (ObjectSpec("circle", "red", 2),))),
    ("one blue triangle", SceneSpec("counting", (ObjectSpec("triangle", "blue", 1),))),
    ("a red circle", SceneSpec("colors", (ObjectSpec("circle", "red"),))),
    ("a circle left of a square",
     SceneSpec("position", (ObjectSpec("circle"), ObjectSpec("square")), "left of")),
    ("a triangle below a circle",
     SceneSpec("position", (ObjectSpec("triangle"), ObjectSpec("circle")), "below")),
    ("a red circle and a blue square",
     SceneSpec("color_attr", (ObjectSpec("circle", "red"), ObjectSpec("square", "blue")))),
])
def test_parse_examples(prompt, spec):
    assert parse(prompt) == spec
    assert parse(spec) is spec


def test_parse_expected_and_normalisation():
    assert parse("three circles").expected() == [("circle", None)] * 3
    assert parse("three circles").n_objects == 3
    assert parse("a red circle and a blue square").expected() == [("circle", "red"),
                                                                  ("square", "blue")]
    assert parse("  A Red   Circle. ") == parse("a red circle")


def test_unknown_word_names_the_word():
    with pytest.raises(UserError, match=r"unknown word 'hexagon' in prompt 'a hexagon'") as e:
        parse("a hexagon")
    assert "a, above, and" in str(e.value) and "use one of these words" in str(e.value)
    with pytest.raises(UserError, match="'five'"):
        parse("five circles")


@pytest.mark.parametrize("bad", [
    "", "   ", "a", "circle", "a circle and", "two circle", "one circles", "circles two",
    "a circle and a circle", "a red circle and a red square", "a red circle and a square",
    "a red circle left of a square", "a circle left a square", "a circle of a square",
    "a circle and a square and a triangle", "a a circle", "a circle circle", "two circles red",
    "two red blue circles", "one red circles",
])
def test_bad_grammar_raises_user_error(bad):
    with pytest.raises(UserError):
        parse(bad)


def test_parse_rejects_non_strings():
    with pytest.raises(UserError, match="string"):
        parse(3)


def test_random_prompt():
    rng = np.random.default_rng(0)
    for c in CATEGORIES:
        for _ in range(20):
            assert random_prompt(rng, c) in prompts_of(c)
    cats = [category_of(random_prompt(rng)) for _ in range(1200)]
    assert set(cats) == set(CATEGORIES)
    assert min(cats.count(c) for c in CATEGORIES) > 120  # category uniform
    a = [random_prompt(np.random.default_rng(5)) for _ in range(3)]
    assert a == [random_prompt(np.random.default_rng(5)) for _ in range(3)]
    with pytest.raises(UserError, match="unknown category"):
        random_prompt(rng, "shapes")


def test_prompt_lists():
    train, heldout = load_prompts("train"), load_prompts("heldout")
    for rows in (train, heldout):
        assert all(parse(p).category == c for p, c in rows)
        assert len({p for p, _ in rows}) == len(rows)
    tp, hp = {p for p, _ in train}, {p for p, _ in heldout}
    assert not tp & hp
    assert {w for p in tp for w in p.split()} == set(vocabulary())  # every word in train
    assert {c for _, c in train} == {c for _, c in heldout} == set(CATEGORIES)
    for c in CATEGORIES:  # every category held out, never more than 10, most kept for train
        n_held = sum(k == c for _, k in heldout)
        assert 1 <= n_held <= 10 and n_held < sum(k == c for _, k in train)
    mirror = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    for p, c in heldout:
        if c == "position":  # both phrasings of a held-out scene are held out
            spec = parse(p)
            a, b = spec.objects
            assert f"a {b.shape} {mirror[spec.relation]} a {a.shape}" in hp


def test_prompt_files_are_current():
    train, heldout = split_prompts()
    assert (PROMPT_DIR / "train.txt").read_text() == render_file(train, "train", 0)
    assert (PROMPT_DIR / "heldout.txt").read_text() == render_file(heldout, "heldout", 0)
    assert load_prompts("train") == train and load_prompts("heldout") == heldout


def test_unknown_split():
    with pytest.raises(UserError, match="unknown prompt split 'test'"):
        load_prompts("test")
