"""Shapes-world verifier: exact unit tests (rates on renders: test_shapes_verify_strict.py)."""

import numpy as np
import pytest
import torch

from tempflow.errors import UserError
from tempflow.shapes import (PlacedObject, all_prompts, parse, perturb, random_prompt, render,
                             verify, verify_batch)
from tempflow.shapes.render import draw, shape_mask
from tempflow.shapes.verify import classify_shape, relation_holds


def obj(shape, color, x0, y0, s=9):
    ys, xs = np.nonzero(shape_mask(shape, s))
    return PlacedObject(shape, color, x0, y0, s, x0 + xs.mean(), y0 + ys.mean())


def scene(*objs, size=32):
    return draw(list(objs), size)


@pytest.mark.parametrize("size", [24, 32, 64])
def test_every_prompt_verifies_when_rendered(size):
    """Every 12th prompt of the grammar (a different twelfth per size), rendered."""
    rng = np.random.default_rng(size)
    prompts = all_prompts()[size % 12::12]
    images = torch.from_numpy(np.stack([render(p, rng, size) for p in prompts]))
    passed, score = verify_batch(images.permute(0, 3, 1, 2), prompts)
    assert passed.all(), [p for p, ok in zip(prompts, passed) if not ok]
    assert (score == 1).all()


def test_colors_partial_credit_order():
    img = scene(obj("circle", "red", 10, 10))
    assert verify(img, "a red circle").passed and verify(img, "a red circle").score == 1.0
    wrong_colour = verify(img, "a blue circle")
    wrong_shape = verify(img, "a red square")
    empty = verify(scene(), "a red circle")
    assert not wrong_colour.passed and not wrong_shape.passed and not empty.passed
    assert 1.0 > wrong_colour.score > wrong_shape.score > empty.score == 0.0
    # per object: present 0.2 + right shape 0.5 + right (or unspecified) colour 0.3
    assert wrong_colour.score == pytest.approx(0.7) and wrong_shape.score == pytest.approx(0.5)
    assert verify(img, "a circle").passed and verify(img, "one circle").passed
    assert not verify(img, "two circles").passed


def test_counting():
    img = scene(obj("circle", "red", 2, 2), obj("circle", "blue", 18, 2),
                obj("circle", "green", 2, 18))
    assert verify(img, "three circles").passed
    two, four = verify(img, "two circles"), verify(img, "four circles")
    assert not two.passed and two.score == pytest.approx(2 / 3)  # one extra
    assert not four.passed and four.score == pytest.approx(3 / 4)  # one missing
    assert not verify(img, "three squares").passed
    assert two.details["extra"] == 1 and four.details["missing"] == 1
    mixed = scene(obj("circle", "red", 2, 2), obj("circle", "blue", 18, 2),
                  obj("square", "green", 2, 18))
    assert not verify(mixed, "three circles").passed
    assert verify(mixed, "three circles").score == pytest.approx((10 + 10 + 5) / 30)


def test_counting_with_colour():
    img = scene(obj("circle", "red", 2, 2), obj("circle", "red", 18, 2),
                obj("circle", "red", 2, 18))
    assert verify(img, "three red circles").passed and verify(img, "three circles").passed
    blue = verify(img, "three blue circles")
    assert not blue.passed and blue.score == pytest.approx(0.7)
    img[18:27, 2:11] = scene(obj("circle", "green", 2, 18))[18:27, 2:11]
    r = verify(img, "three red circles")
    assert not r.passed and r.score == pytest.approx(27 / 30)


def test_extra_object_fails():
    img = scene(obj("circle", "red", 2, 2), obj("square", "blue", 18, 18))
    r = verify(img, "a circle")
    assert not r.passed and r.score == pytest.approx(0.5)
    assert verify(img, "a circle and a square").passed
    assert verify(img, "a square and a circle").passed
    assert verify(img, "a red circle and a blue square").passed
    swapped = verify(img, "a blue circle and a red square")  # colours bound to shapes
    assert not swapped.passed and 0.5 < swapped.score < 1.0


@pytest.mark.parametrize("a_xy,b_xy,holds", [
    ((2, 12), (20, 12), "left of"),
    ((20, 12), (2, 12), "right of"),
    ((12, 2), (12, 20), "above"),
    ((12, 20), (12, 2), "below"),
    ((2, 8), (20, 14), "left of"),    # diagonal: the dominant axis decides
    ((8, 2), (14, 20), "above"),
])
def test_each_relation(a_xy, b_xy, holds):
    img = scene(obj("circle", "red", *a_xy), obj("square", "blue", *b_xy))
    for rel in ("left of", "right of", "above", "below"):
        r = verify(img, f"a circle {rel} a square")
        assert r.passed == (rel == holds), (rel, r.details["summary"])
        assert r.score == (1.0 if rel == holds else pytest.approx(0.8))
        assert r.details["relation_ok"] == (rel == holds)
    mirror = {"left of": "right of", "right of": "left of", "above": "below",
              "below": "above"}[holds]
    assert verify(img, f"a square {mirror} a circle").passed


def test_relation_rule():
    assert relation_holds("left of", (10, 10), (14, 10), 32)      # dx 4 > margin 3.2
    assert not relation_holds("left of", (10, 10), (13, 10), 32)  # dx 3 < margin
    assert not relation_holds("left of", (10, 10), (20, 21), 32)  # |dy| > dx
    assert relation_holds("below", (10, 20), (10, 5), 32)


def test_robust_to_strays_but_not_to_off_palette():
    img = scene(obj("square", "yellow", 10, 10))
    img[2, 2] = img[28, 29] = img[29, 29] = np.array([235, 20, 20]) / 255  # tiny red specks
    assert verify(img, "a yellow square").passed
    for rgb in [(245, 140, 20), (235, 110, 160), (128, 20, 235)]:  # orange, pink, purple
        off = scene()
        off[10:19, 10:19] = np.array(rgb) / 255
        r = verify(off, "a square")
        assert not r.passed  # an object in no palette colour counts but satisfies nothing
        assert [d["color"] for d in r.details["found"]] == ["off-palette"]
    dim = scene()  # dark off-palette colours are background
    dim[10:19, 10:19] = np.array([60, 40, 90]) / 255
    assert verify(dim, "a square").details["found"] == []


def test_shapes_are_told_apart():
    for shape in ("circle", "square", "triangle", "diamond", "cross"):
        for s in (7, 9, 11, 16, 22):
            size = 32 if s < 16 else 64
            r = verify(scene(obj(shape, "green", 4, 4, s), size=size), f"a {shape}")
            assert r.passed, (shape, s, r.details["summary"])
    bar = scene()
    bar[10:13, 5:20] = np.array([20, 20, 235]) / 255  # long thin bar: not a known shape
    assert verify(bar, "a blue square").details["found"][0]["shape"] == "blob"
    flipped = scene()
    flipped[4:13, 4:13][shape_mask("triangle", 9)[::-1]] = np.array([20, 235, 20]) / 255
    assert not verify(flipped, "a triangle").passed  # upside-down triangles are not in the world
    assert classify_shape(shape_mask("square", 9)) == "square"
    assert classify_shape(shape_mask("triangle", 9)[::-1]) == "blob"


def test_input_formats_and_errors():
    img = scene(obj("triangle", "magenta", 10, 10))
    t_chw = torch.from_numpy(img).permute(2, 0, 1)
    for x in (img, t_chw, torch.from_numpy(img), (img * 255).round().astype(np.uint8),
              img.transpose(2, 0, 1)):
        assert verify(x, "a magenta triangle").passed
    bad = torch.full((3, 32, 32), float("nan"))
    assert not verify(bad, "a circle").passed
    with pytest.raises(UserError, match="verify expects one image"):
        verify(np.zeros((32, 32)), "a circle")
    with pytest.raises(UserError, match="unknown word 'hexagon'"):
        verify(img, "a hexagon")
    with pytest.raises(UserError, match="2 images but 1 prompt"):
        verify_batch(torch.zeros(2, 3, 32, 32), ["a circle"])
    with pytest.raises(UserError, match=r"\[B, 3, H, W\]"):
        verify_batch(torch.zeros(3, 32, 32), ["a circle"] * 3)
    r = verify(img, "a circle")
    assert {"found", "summary", "expected", "missing", "extra"} <= set(r.details)
    assert r.details["found"][0]["shape"] == "triangle"


def test_score_bounds_and_pass_iff_one_on_random_pairs():
    rng = np.random.default_rng(9)
    prompts = [random_prompt(rng) for _ in range(200)]
    images = perturb(torch.stack([torch.from_numpy(render(p, rng)).permute(2, 0, 1)
                                  for p in prompts]), rng, noise_std=0.1, blur_sigma=0.8)
    others = [random_prompt(rng) for _ in prompts]
    passed, score = verify_batch(images, others)
    assert ((score >= 0) & (score <= 1)).all() and torch.equal(score == 1.0, passed)
    assert parse(others[0]) == parse(others[0])  # parse is cached but stable


def test_numpy_labeller_matches_scipy(monkeypatch):
    from tempflow.shapes import segment as S
    rng = np.random.default_rng(0)
    masks = [rng.random((20, 24)) < 0.3 for _ in range(5)]
    with_scipy = [[(sy, sx, m.sum()) for sy, sx, m in S.components(m)] for m in masks]
    holes_scipy = [S.enclosed(m) for m in masks]
    monkeypatch.setattr(S, "_ndi", None)
    without = [[(sy, sx, m.sum()) for sy, sx, m in S.components(m)] for m in masks]
    assert sorted(map(str, with_scipy)) == sorted(map(str, without))
    assert all(np.array_equal(a, S.enclosed(m)) for a, m in zip(holes_scipy, masks))
    img = scene(obj("circle", "red", 2, 2), obj("square", "blue", 18, 18))
    assert verify(img, "a red circle and a blue square").passed
    ring = scene(obj("circle", "red", 10, 10, 11))
    ring[14:17, 14:17] = np.array([20, 20, 20]) / 255
    assert not verify(ring, "a red circle").passed  # a hole makes a blob, without scipy too
