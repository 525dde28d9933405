"""Shapes-world renderer: image format, palette, layouts, determinism and speed."""

import importlib
import time

import numpy as np
import pytest
import torch

from tempflow.errors import UserError
from tempflow.shapes import (BACKGROUND, COLORS, SHAPES, all_prompts, parse, perturb,
                             random_prompt, render, render_batch, sample_layout)
from tempflow.shapes.grammar import position_margin, size_class_bounds
from tempflow.shapes.verify import relation_holds

R = importlib.import_module("tempflow.shapes.render")  # the package re-exports render()
PALETTE = np.array([BACKGROUND, *COLORS.values()], dtype=np.float32) / 255.0


def _palette_only(img: np.ndarray) -> bool:
    d = np.abs(img.reshape(-1, 1, 3) - PALETTE[None]).max(-1).min(-1)
    return bool(d.max() < 1e-6)


def _check_layout(prompt, objs, size):
    spec = parse(prompt)
    assert sorted(o.shape for o in objs) == sorted(s for s, _ in spec.expected())
    gap = R.min_gap(size)
    for o, want in zip(objs, spec.expected_objects()):
        assert o.shape == want.shape and (want.color is None or o.color == want.color)
        lo, hi = R.object_size_range(size, want.size)
        assert lo <= o.s <= hi and o.color in COLORS
        assert 1 <= o.x0 and o.x0 + o.s <= size - 1 and 1 <= o.y0 and o.y0 + o.s <= size - 1
    for a, b in [(a, b) for i, a in enumerate(objs) for b in objs[i + 1:]]:
        assert (a.x0 + a.s + gap <= b.x0 or b.x0 + b.s + gap <= a.x0
                or a.y0 + a.s + gap <= b.y0 or b.y0 + b.s + gap <= a.y0), (a, b)
    if spec.relation:
        a, b = objs
        assert relation_holds(spec.relation, (a.cx, a.cy), (b.cx, b.cy), size)


@pytest.mark.parametrize("size", [24, 32, 48, 64])
def test_render_format_and_palette(size):
    rng = np.random.default_rng(size)
    for _ in range(30):
        img = render(random_prompt(rng), rng, size)
        assert img.shape == (size, size, 3) and img.dtype == np.float32
        assert 0 <= img.min() and img.max() <= 1
        assert _palette_only(img)


def test_object_sizes_scale_with_canvas():
    assert R.object_size_range(32) == (8, 11)
    assert R.object_size_range(64) == (16, 22)
    assert R.object_size_range(24)[0] >= 8
    assert R.object_size_range(32, "small") == (8, 8) and R.object_size_range(32, "big") == (12, 13)
    small_max, big_min = size_class_bounds(32)
    assert R.object_size_range(32, "small")[1] < small_max < R.object_size_range(32)[1]
    assert R.object_size_range(32)[1] < big_min < R.object_size_range(32, "big")[0]
    masks = {s: R.shape_mask(s, 9) for s in SHAPES}
    assert masks["square"].all() and 0.7 < masks["circle"].mean() < 0.9
    assert 0.45 < masks["triangle"].mean() < 0.6
    assert masks["triangle"][-1].all() and masks["triangle"][0].sum() == 1  # apex up
    d, x = masks["diamond"], masks["cross"]
    assert d[4].all() and d[:, 4].all() and d[0].sum() == d[-1].sum() == 1  # corners at mid-edges
    assert x[4].all() and x[:, 4].all() and x[0].sum() == 3 and not x[0, 0]  # arms 3 px wide


@pytest.mark.parametrize("size", [20, 24, 32, 64])
def test_layouts_valid_for_every_prompt(size):
    rng = np.random.default_rng(1)
    for p in all_prompts():
        _check_layout(p, sample_layout(p, rng, size), size)


@pytest.mark.parametrize("size", [20, 24, 32, 64])
def test_grid_fallback_is_valid(size, monkeypatch):
    monkeypatch.setattr(R, "_CANDIDATES", 0)  # rejection sampling never succeeds
    rng = np.random.default_rng(0)
    for p in ["four circles", "four triangles", "three squares", "a circle left of a square",
              "a circle right of a square", "a triangle above a circle",
              "a square below a triangle", "a red circle and a blue square"]:
        objs = sample_layout(p, rng, size)
        _check_layout(p, objs, size)


def test_colours_specified_and_random():
    rng = np.random.default_rng(0)
    for _ in range(10):
        objs = sample_layout("a red circle and a blue square", rng)
        assert [(o.shape, o.color) for o in objs] == [("circle", "red"), ("square", "blue")]
    seen = {o.color for _ in range(60) for o in sample_layout("four circles", rng)}
    assert seen == set(COLORS)


def test_determinism():
    a = render_batch(["a red circle", "four squares"], np.random.default_rng(7))
    b = render_batch(["a red circle", "four squares"], np.random.default_rng(7))
    c = render_batch(["a red circle", "four squares"], np.random.default_rng(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_render_batch_matches_render():
    prompts = ["a circle", "two triangles", "a square above a circle"]
    batch = render_batch(prompts, np.random.default_rng(3), size=40)
    assert batch.shape == (3, 3, 40, 40) and batch.dtype == torch.float32
    rng = np.random.default_rng(3)
    single = np.stack([render(p, rng, 40) for p in prompts])
    assert torch.equal(batch, torch.from_numpy(single).permute(0, 3, 1, 2))
    assert render_batch([], np.random.default_rng(0)).shape == (0, 3, 32, 32)
    spec = parse("a red circle")
    assert render(spec, np.random.default_rng(0)).shape == (32, 32, 3)


def test_render_speed():
    rng = np.random.default_rng(0)
    prompts = [random_prompt(rng) for _ in range(64)]
    render_batch(prompts, rng)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        render_batch(prompts, rng)
        best = min(best, time.perf_counter() - t)
    assert best < 0.1, f"render_batch(64) took {best:.3f}s"


def test_perturb():
    rng = np.random.default_rng(0)
    x = render_batch(["a red circle", "a blue square"], rng)
    assert torch.equal(perturb(x, rng, noise_std=0.0), x)
    y = perturb(x, rng, noise_std=0.05, blur_sigma=0.7, color_shift=0.1, stray_blobs=3)
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    assert 0.02 < (y - x).abs().mean() < 0.2


def test_render_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(UserError, match="unknown word 'hexagon'"):
        render("a hexagon", rng)
    with pytest.raises(UserError, match="canvas size"):
        render("a circle", rng, size=8)
    with pytest.raises(UserError, match="list of prompts"):
        render_batch("a circle", rng)
    with pytest.raises(UserError, match="unknown shape"):
        R.shape_mask("hexagon", 5)
    assert position_margin(32) == pytest.approx(3.2)
