"""Shape of one component: a clean instance of a known shape, or a "blob".

The component's half-coverage mask (cropped to its box, holes filled by the caller where they
hold only noise specks) is compared with the ideal mask of every shape, drawn the way the
renderer draws (pixel centres inside the shape) in a square box fitted to the component's
box: side max(w, h) + {-1, -0.5, 0, 0.5, 1} px, centre the box centre + {-0.5 .. 0.5} px in
quarter steps (125 fits per shape). Per shape the best intersection-over-union counts. The
component is that shape only if all of these hold (else it is a blob):

- aspect: |w - h| <= max(1, round(0.08 max(w, h))) px (1 px up to 18 px: a 10 x 8 box is no
  square); a triangle may be 2 px flatter (blur takes its one-pixel apex);
- match: the best IoU >= ``MIN_IOU`` and >= ``MIN_MARGIN`` above the runner-up shape's;
- no defect: the best fit's missing pixels (notches, bites) hold no solid k x k block and
  its extra pixels (bumps, spurs) no (k + 1) x (k + 1) block, k = max(2, round(side / 6.5))
  (2 px for objects up to 13 px): pixelation and blur move the edge by about one pixel,
  never by a block (a bump the size of a 2 x 2 noise speck is let pass).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from tempflow.shapes.grammar import SHAPES

MIN_IOU = 0.82
MIN_MARGIN = 0.05
_PAD = 2
_SIDES = (-0.5, -0.25, 0.0, 0.25, 0.5)
_SHIFTS = (-0.5, -0.25, 0.0, 0.25, 0.5)
_EPS = 1e-9


def inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether (u, v) in box units ([0, 1]^2, v down) lies in the shape (as render draws)."""
    box = (u >= -_EPS) & (u <= 1 + _EPS) & (v >= -_EPS) & (v <= 1 + _EPS)
    if shape == "square":
        m = box
    elif shape == "circle":
        m = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25 + _EPS
    elif shape == "triangle":
        m = np.abs(u - 0.5) <= v / 2 + _EPS
    elif shape == "diamond":
        m = np.abs(u - 0.5) + np.abs(v - 0.5) <= 0.5 + _EPS
    elif shape == "cross":
        m = (np.abs(u - 0.5) <= 1 / 6 + _EPS) | (np.abs(v - 0.5) <= 1 / 6 + _EPS)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)
    return m & box


@lru_cache(maxsize=1024)
def templates(h: int, w: int) -> np.ndarray:
    """bool [n_shapes, n_fits, h + 4, w + 4]: every shape at every fit, in a frame of the
    component's box padded by 2 px."""
    side0 = max(h, w)
    cy0, cx0 = _PAD + h / 2, _PAD + w / 2
    yy, xx = np.mgrid[: h + 2 * _PAD, : w + 2 * _PAD] + 0.5
    out = np.zeros((len(SHAPES), len(_SIDES) * len(_SHIFTS) ** 2, h + 2 * _PAD, w + 2 * _PAD),
                   dtype=bool)
    for i, shape in enumerate(SHAPES):
        f = 0
        for ds in _SIDES:
            side = side0 + ds
            for oy in _SHIFTS:
                for ox in _SHIFTS:
                    u = (xx - (cx0 + ox - side / 2)) / side
                    v = (yy - (cy0 + oy - side / 2)) / side
                    out[i, f] = inside(shape, u, v)
                    f += 1
    out.setflags(write=False)
    return out


def _has_block(m: np.ndarray, k: int) -> bool:
    """Whether a boolean mask contains a solid k x k block."""
    h, w = m.shape
    if h < k or w < k:
        return False
    acc = np.ones((h - k + 1, w - k + 1), dtype=bool)
    for i in range(k):
        for j in range(k):
            acc &= m[i:i + h - k + 1, j:j + w - k + 1]
    return bool(acc.any())


def frame(mask: np.ndarray) -> np.ndarray:
    """A box-cropped mask [h, w] in the [h + 4, w + 4] frame the templates use."""
    h, w = mask.shape
    out = np.zeros((h + 2 * _PAD, w + 2 * _PAD), dtype=bool)
    out[_PAD:_PAD + h, _PAD:_PAD + w] = mask
    return out


def _score_box(mask: np.ndarray, spare: np.ndarray, y0: int, y1: int, x0: int,
               x1: int) -> dict:
    """Fit every shape in the box rows y0:y1, columns x0:x1 of ``mask`` (the whole mask
    still counts: pixels outside the box are extra)."""
    h, w = y1 - y0, x1 - x0
    side = max(h, w)
    t = templates(h, w)
    m = frame(mask)[y0:y1 + 2 * _PAD, x0:x1 + 2 * _PAD]
    sp = spare[y0:y1 + 2 * _PAD, x0:x1 + 2 * _PAD]
    tm = (t & m).sum((2, 3))
    inter = tm + (t & sp & ~m).sum((2, 3))
    union = t.sum((2, 3)) + int(mask.sum()) - tm
    iou = inter / np.maximum(union, 1)  # [shapes, fits]
    best_fit = iou.argmax(1)
    per_shape = iou[np.arange(len(SHAPES)), best_fit]
    order = np.argsort(-per_shape)
    b, r = int(order[0]), int(order[1])
    fit = t[b, best_fit[b]]
    k = max(2, round(side / 6.5))
    defect = _has_block(fit & ~m & ~sp, k) or _has_block(m & ~fit, k + 1)
    return {"iou": {s: round(float(v), 4) for s, v in zip(SHAPES, per_shape)},
            "best": SHAPES[b], "margin": float(per_shape[b] - per_shape[r]),
            "aspect_ok": _aspect_ok(SHAPES[b], h, w), "defect": bool(defect), "side": side}


def _aspect_ok(shape: str, h: int, w: int) -> bool:
    """Box near 1:1: |w - h| <= max(1, round(0.08 side)) px (1 px up to 18 px); a triangle
    may be up to 2 px flatter than that (blur takes its one-pixel apex)."""
    tol = max(1, round(0.08 * max(h, w)))
    return -tol <= w - h <= tol + (2 if shape == "triangle" else 0)


def _trims(mask: np.ndarray):
    """Boxes with a thin spur cut off: 1 or 2 edge rows (columns) of <= 2 px on one side."""
    h, w = mask.shape
    rows, cols = mask.sum(1), mask.sum(0)
    for n in (1, 2):
        if rows[:n].max() <= 2 and h - n >= 3:
            yield n, h, 0, w
        if rows[h - n:].max() <= 2 and h - n >= 3:
            yield 0, h - n, 0, w
        if cols[:n].max() <= 2 and w - n >= 3:
            yield 0, h, n, w
        if cols[w - n:].max() <= 2 and w - n >= 3:
            yield 0, h, 0, w - n


def shape_scores(mask: np.ndarray, spare: np.ndarray | None = None) -> dict:
    """Fit every shape to a component's mask (cropped to its box): the best IoU per shape,
    the aspect check and the defect check of the best fit (see the module docstring).

    ``spare`` ([h + 4, w + 4], the template frame) marks noise-speck pixels of other colours:
    where a fit covers them they count as the object's (a speck on an object does not bite a
    notch into it); elsewhere they are ignored. When the box does not give a clean fit, boxes
    with a thin spur (a fused noise speck, at most 2 rows of <= 2 px) cut off are tried too;
    the spur's pixels still count as extra."""
    h, w = mask.shape
    if spare is None:
        spare = np.zeros((h + 2 * _PAD, w + 2 * _PAD), dtype=bool)
    best = _score_box(mask, spare, 0, h, 0, w)
    if decide(best) == "blob":
        for box in _trims(mask):
            cand = _score_box(mask, spare, *box)
            if decide(cand) != "blob":
                return cand
    return best


def decide(scores: dict, hole: bool = False) -> str:
    """The shape name from :func:`shape_scores`, or "blob" unless every check passes."""
    best = scores["best"]
    clean = (scores["aspect_ok"] and not hole and not scores["defect"]
             and scores["iou"][best] >= MIN_IOU and scores["margin"] >= MIN_MARGIN)
    return best if clean else "blob"


def classify_shape(mask: np.ndarray) -> str:
    """circle / square / triangle / diamond / cross, or "blob", of a boolean mask of one
    object (any box around it; background holes make it a blob)."""
    from tempflow.shapes.segment import enclosed

    mask = np.asarray(mask, dtype=bool)
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return "blob"
    crop = mask[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
    return decide(shape_scores(crop), hole=bool(enclosed(crop).any()))
