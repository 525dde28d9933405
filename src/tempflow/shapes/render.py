"""Render shapes-world prompts: hard-edged palette shapes on a plain background.

Objects are axis-aligned in an s x s box (circle of diameter s, square of side s, triangle
with apex up, base s and height s, diamond with its corners at the box's edge midpoints,
cross (plus sign) with arms s/3 wide), s drawn from :func:`object_size_range` (7-11 px at
32 px, 7-8 px "small", 12-13 px "big", scaled with the canvas). Boxes keep :func:`min_gap` px between them and 1 px (scaled) from
the border, so connected components separate the objects. Layouts are sampled by vectorised
rejection (64 candidates at a time, 256 for four objects, shrinking the size range on failure) with a grid
fallback, so a valid prompt never fails to render.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from tempflow.errors import UserError
from tempflow.shapes.grammar import (BACKGROUND, COLORS, SHAPES, SceneSpec, object_size_range,
                                     parse, position_margin)

_COLOR_NAMES = tuple(COLORS)
_PALETTE = np.array([COLORS[c] for c in _COLOR_NAMES], dtype=np.float32) / 255.0
_BG = np.array(BACKGROUND, dtype=np.float32) / 255.0
_CANDIDATES = 64


def min_gap(size: int) -> int:
    return max(2, round(2 * size / 32))


def _border(size: int) -> int:
    return max(1, round(size / 32))


def lattice_step(size: int) -> int:
    """Spacing of the lattice that object boxes are placed on: 4 px at 32 px."""
    return max(1, round(4 * size / 32))


@lru_cache(maxsize=None)
def shape_mask(shape: str, s: int) -> np.ndarray:
    """Boolean [s, s] mask of a shape in its box (pixel centres at i + 0.5)."""
    c = (np.arange(s) + 0.5)
    yy, xx = np.meshgrid(c, c, indexing="ij")
    if shape == "square":
        m = np.ones((s, s), dtype=bool)
    elif shape == "circle":
        m = (xx - s / 2) ** 2 + (yy - s / 2) ** 2 <= (s / 2) ** 2
    elif shape == "triangle":
        m = np.abs(xx - s / 2) <= yy / 2 + 1e-9
    elif shape == "diamond":
        m = np.abs(xx - s / 2) + np.abs(yy - s / 2) <= s / 2 + 1e-9
    elif shape == "cross":
        m = (np.abs(xx - s / 2) <= s / 6 + 1e-9) | (np.abs(yy - s / 2) <= s / 6 + 1e-9)
    else:
        raise UserError(f"unknown shape {shape!r}: use one of {', '.join(SHAPES)}")
    m.setflags(write=False)
    return m


@lru_cache(maxsize=None)
def _centroid_table(hi: int) -> np.ndarray:
    """[n_shapes, hi + 1, 2] (cx, cy) of each mask's pixel indices inside its box."""
    t = np.zeros((len(SHAPES), hi + 1, 2))
    for k, shape in enumerate(SHAPES):
        for s in range(3, hi + 1):  # objects are at least 7 px; a 1-2 px cross is empty
            ys, xs = np.nonzero(shape_mask(shape, s))
            t[k, s] = xs.mean(), ys.mean()
    return t


@dataclass(frozen=True)
class PlacedObject:
    """One drawn object: box top-left (x0, y0), box side s, and its mask centroid."""

    shape: str
    color: str
    x0: int
    y0: int
    s: int
    cx: float
    cy: float


def _relation_ok(rel: str, ax, ay, bx, by, main_min: float, ratio: float):
    dx, dy = bx - ax, by - ay
    main, other = {"left of": (dx, dy), "right of": (-dx, dy),
                   "above": (dy, dx), "below": (-dy, dx)}[rel]
    return (main >= main_min) & (np.abs(other) <= ratio * main)


def _grid_layout(n: int, size: int, lows: list[int], relation: str | None):
    """Fallback placement on a 2 x 2 grid, each object at the smallest size of its range."""
    cols = 2
    cw, ch = size // cols, size // 2
    cells = [(c, r) for r in range(2) for c in range(cols)]  # (col, row)
    if relation in ("above", "below"):
        cells = [(0, 0), (0, 1)]
    if relation in ("below", "right of"):
        cells = cells[1::-1]
    return [(c * cw + (cw - lo) // 2, r * ch + (ch - lo) // 2, lo)
            for (c, r), lo in zip(cells[:n], lows)]


def sample_layout(spec: SceneSpec | str, rng: np.random.Generator,
                  size: int = 32) -> list[PlacedObject]:
    """Random non-touching placement and colours for a scene (the ground truth of a render)."""
    spec = parse(spec)
    if not 20 <= size <= 512:
        raise UserError(f"canvas size {size} is out of range: use 20..512 px (24-64 tested)")
    expected = spec.expected_objects()
    n = len(expected)
    colors = [o.color if o.color is not None else
              _COLOR_NAMES[int(rng.integers(len(_COLOR_NAMES)))] for o in expected]
    shape_idx = np.array([SHAPES.index(o.shape) for o in expected])
    ranges = np.array([object_size_range(size, o.size) for o in expected])  # [n, 2]
    lo, hi = ranges[:, 0], ranges[:, 1]
    gap, border = min_gap(size), _border(size)
    step = lattice_step(size)
    table = _centroid_table(int(hi.max()))
    margin = position_margin(size)
    boxes = None
    for shrink in range(int((hi - lo).max()) + 1):
        top = np.maximum(lo, hi - shrink)
        k_cand = _CANDIDATES << max(0, 2 * (n - 3))  # 64 (up to 3 objects), 256 (4)
        s = rng.integers(lo, top + 1, size=(k_cand, n))
        # box corners on a lattice of `step` px: few distinct layouts, which a small
        # generator learns far faster than continuous placement
        x = border + step * rng.integers(0, (size - border - s - border) // step + 1)
        y = border + step * rng.integers(0, (size - border - s - border) // step + 1)
        ok = np.ones(k_cand, dtype=bool)
        xe, ye = x + s + gap, y + s + gap  # box ends plus the gap
        for i in range(n):
            for j in range(i + 1, n):
                ok &= ((xe[:, i] <= x[:, j]) | (xe[:, j] <= x[:, i])
                       | (ye[:, i] <= y[:, j]) | (ye[:, j] <= y[:, i]))
        if spec.relation is not None:
            cen = table[shape_idx[None, :], s]  # [K, n, 2]
            cx, cy = x + cen[..., 0], y + cen[..., 1]
            ok &= _relation_ok(spec.relation, cx[:, 0], cy[:, 0], cx[:, 1], cy[:, 1],
                               margin + 2.0, 0.6)
        hits = np.flatnonzero(ok)
        if hits.size:
            k = hits[0]
            boxes = [(int(x[k, i]), int(y[k, i]), int(s[k, i])) for i in range(n)]
            break
    if boxes is None:
        boxes = _grid_layout(n, size, [int(v) for v in lo], spec.relation)
    out = []
    for o, color, (x0, y0, s0) in zip(expected, colors, boxes):
        cx, cy = table[SHAPES.index(o.shape), s0]
        out.append(PlacedObject(o.shape, color, x0, y0, s0, float(x0 + cx), float(y0 + cy)))
    return out


def draw(objects: list[PlacedObject], size: int = 32) -> np.ndarray:
    """Draw placed objects: float32 [size, size, 3] in [0, 1]."""
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = _BG
    for o in objects:
        img[o.y0:o.y0 + o.s, o.x0:o.x0 + o.s][shape_mask(o.shape, o.s)] = \
            _PALETTE[_COLOR_NAMES.index(o.color)]
    return img


def render(prompt: str | SceneSpec, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """Render one prompt: float32 [size, size, 3] in [0, 1]; unspecified colours are random."""
    return draw(sample_layout(prompt, rng, size), size)


def render_batch(prompts: list[str], rng: np.random.Generator, size: int = 32) -> torch.Tensor:
    """Render prompts: float32 [B, 3, size, size] in [0, 1]."""
    if isinstance(prompts, str):
        raise UserError("render_batch takes a list of prompts, got one string: wrap it in "
                        "a list")
    arr = np.stack([render(p, rng, size) for p in prompts]) if len(prompts) else \
        np.zeros((0, size, size, 3), dtype=np.float32)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(np.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = images.shape[1]
    x = torch.nn.functional.pad(images, (r, r, r, r), mode="replicate")
    x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def perturb(images: torch.Tensor, rng: np.random.Generator, noise_std: float = 0.05,
            blur_sigma: float = 0.0, color_shift: float = 0.0,
            stray_blobs: int = 0) -> torch.Tensor:
    """Degrade rendered images [B, 3, H, W] the way a small generator might: Gaussian blur
    (soft edges), per-image colour shift (uniform in +-color_shift per channel), small stray
    palette-coloured blobs (1-2 px squares) and Gaussian pixel noise; clipped to [0, 1]."""
    x = images.float().clone()
    b, c, h, w = x.shape
    for i in range(b):
        for _ in range(stray_blobs):
            r = int(rng.integers(1, 3))
            y0, x0 = int(rng.integers(0, h - r + 1)), int(rng.integers(0, w - r + 1))
            col = torch.from_numpy(_PALETTE[int(rng.integers(len(_PALETTE)))])
            x[i, :, y0:y0 + r, x0:x0 + r] = col.view(3, 1, 1)
    if blur_sigma > 0:
        x = _gaussian_blur(x, blur_sigma)
    if color_shift > 0:
        x = x + torch.from_numpy(rng.uniform(-color_shift, color_shift, (b, c, 1, 1))).float()
    if noise_std > 0:
        x = x + noise_std * torch.from_numpy(rng.standard_normal(x.shape)).float()
    return x.clamp(0.0, 1.0)
