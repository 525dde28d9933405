"""Shapes-world grammar: vocabulary, parsing, prompt space and the fixed prompt lists."""

import itertools

import numpy as np
import pytest

from tempflow.errors import UserError
from tempflow.shapes import (BACKGROUND, CATEGORIES, COLORS, SHAPES, SIZES, ObjectSpec,
                             SceneSpec, all_prompts, category_of, load_prompts, make_split,
                             parse, prompts_of, random_prompt, scene_key, vocabulary)
from tempflow.shapes.grammar import PROMPT_DIR
from tempflow.shapes.make_prompt_lists import render_file, split_prompts


def test_constants():
    assert CATEGORIES == ("single_object", "two_object", "counting", "colors", "position",
                          "color_attr")
    assert SHAPES == ("circle", "square", "triangle", "diamond", "cross")
    assert len(COLORS) == 7 and SIZES == ("small", "big")
    entries = [np.array(c, float) for c in [BACKGROUND, *COLORS.values()]]
    for c in entries:
        assert c.shape == (3,) and 0 <= c.min() and c.max() <= 255
    assert min(np.linalg.norm(a - b) for a, b in itertools.combinations(entries, 2)) >= 200


def test_vocabulary():
    v = vocabulary()
    assert v == sorted(set(v))
    for w in ["a", "and", "above", "below", "left", "right", "of", "one", "two", "three",
              "four", "circles", "squares", "triangles", "diamonds", "crosses", "small", "big",
              *SHAPES, *COLORS]:
        assert w in v
    assert {w for p in all_prompts() for w in p.split()} == set(v)
    v.append("mutated")
    assert "mutated" not in vocabulary()


def test_prompt_space():
    ps = all_prompts()
    sizes = {c: len(prompts_of(c)) for c in CATEGORIES}
    # sizes: none / small / big; counting: 1-4, no colour or one of 7; position: 20 ordered
    # pairs of different shapes x 4 relations uncoloured, and coloured pairs that differ in
    # shape or colour; colour binding: any two shapes, two different colours
    assert sizes == {"single_object": 5 * 3, "two_object": 20 * 9, "counting": 4 * 5 * 8,
                     "colors": 5 * 7 * 3, "position": 20 * 4 + (20 * 49 + 5 * 42) * 4,
                     "color_attr": 25 * 42}
    assert len(ps) >= 2000
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
    ("a small circle", SceneSpec("single_object", (ObjectSpec("circle", None, 1, "small"),))),
    ("a big red cross", SceneSpec("colors", (ObjectSpec("cross", "red", 1, "big"),))),
    ("a small diamond and a big square",
     SceneSpec("two_object", (ObjectSpec("diamond", None, 1, "small"),
                              ObjectSpec("square", None, 1, "big")))),
    ("a red circle above a blue circle",
     SceneSpec("position", (ObjectSpec("circle", "red"), ObjectSpec("circle", "blue")), "above")),
    ("a white cross left of a white diamond",
     SceneSpec("position", (ObjectSpec("cross", "white"), ObjectSpec("diamond", "white")),
               "left of")),
    ("a red circle and a green circle",
     SceneSpec("color_attr", (ObjectSpec("circle", "red"), ObjectSpec("circle", "green")))),
    ("four crosses", SceneSpec("counting", (ObjectSpec("cross", None, 4),))),
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
    with pytest.raises(UserError, match="'huge'"):
        parse("a huge circle")


@pytest.mark.parametrize("bad", [
    "", "   ", "a", "circle", "a circle and", "two circle", "one circles", "circles two",
    "a circle and a circle", "a red circle and a red square", "a red circle and a square",
    "a red circle left of a square", "a circle left a square", "a circle of a square",
    "a circle and a square and a triangle", "a a circle", "a circle circle", "two circles red",
    "two red blue circles", "one red circles",
    # v2: sizes only with single objects, colours and uncoloured pairs; counts take none;
    # same-shape pairs need two colours; a colour binding needs two colours
    "two small circles", "a small red circle and a blue square", "a small circle left of a square",
    "a red circle left of a red circle", "a circle left of a circle", "a red circle and a red circle",
    "a small big circle", "a red small circle", "a circle and a small circle", "one crosss",
    "two cross",
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
    train, heldout, unseen = (load_prompts(s) for s in ("train", "heldout", "unseen"))
    for rows in (train, heldout, unseen):
        assert all(parse(p).category == c for p, c in rows)
        assert len({p for p, _ in rows}) == len(rows)
    tp, hp, up = ({p for p, _ in rows} for rows in (train, heldout, unseen))
    assert not tp & hp and not tp & up and not hp & up
    assert tp | hp | up == set(all_prompts())
    assert {w for p in tp for w in p.split()} == set(vocabulary())  # every word in train
    assert len(heldout) >= 150 and len(up) >= 0.4 * len(all_prompts())
    for c in CATEGORIES:  # at least 15 held out per category
        assert sum(k == c for _, k in heldout) >= 15
    for rows, names in ((train, tp), (heldout, hp), (unseen, up)):
        for p, c in rows:  # both phrasings of a position scene are in the same list
            if c == "position":
                spec = parse(p)
                a, b = spec.objects
                mirror = {"left of": "right of", "right of": "left of", "above": "below",
                          "below": "above"}[spec.relation]
                assert f"{b.text()} {mirror} {a.text()}" in names


def test_make_split_is_seeded_and_covers_the_grammar():
    a, b, c = make_split(0), make_split(0), make_split(1)
    assert a == b and a.heldout != c.heldout
    assert (a.train, a.heldout) == (load_prompts("train"), load_prompts("heldout"))
    for s in (a, c):
        lists = [{p for p, _ in rows} for rows in s.as_dict().values()]
        assert sum(map(len, lists)) == len(all_prompts()) == len(set.union(*lists))
    small = make_split(3, heldout_per_category=4, train_fraction=0.9)
    assert sum(c == "two_object" for _, c in small.heldout) == 4
    assert len(small.unseen) < len(a.unseen)
    assert scene_key("a circle left of a square") == scene_key("a square right of a circle")
    with pytest.raises(UserError, match="train_fraction"):
        make_split(0, train_fraction=0)
    with pytest.raises(UserError, match="heldout_per_category"):
        make_split(0, heldout_per_category=0)


def test_prompt_files_are_current():
    train, heldout = split_prompts()
    assert (PROMPT_DIR / "train.txt").read_text() == render_file(train, "train", 0)
    assert (PROMPT_DIR / "heldout.txt").read_text() == render_file(heldout, "heldout", 0)
    assert load_prompts("train") == train and load_prompts("heldout") == heldout


def test_unknown_split():
    with pytest.raises(UserError, match="unknown prompt split 'test'.*train, heldout, unseen"):
        load_prompts("test")
