"""Verify that an image shows what a shapes-world prompt asks for, from pixels alone.

1. Segment (:func:`segment_batch`): a pixel takes the colour whose background->colour line
   it lies closest to if it is at least half covered by it; off-palette pixels (farther
   than ``UNKNOWN_DIST`` from every line) and weakly covered ones are background.
2. Connected components (8-connected) per colour; components smaller than
   :func:`min_area` px are dropped as noise (stray blobs).
3. Each component's shape (:func:`classify_shape`) from its half-coverage mask (fill ratio,
   vertical centroid offset) and from blur-invariant moments of its soft coverage;
   anything unlike a circle, square or apex-up triangle is a "blob". The centroid (used
   for positions) is the soft-coverage centroid.
4. Check against the prompt: match found objects to the expected ones (best assignment),
   GenEval-style ``passed`` (exact object set, and the relation for position prompts) and a
   dense ``score`` in [0, 1] that is 1.0 exactly when ``passed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from tempflow.errors import UserError
from tempflow.shapes.grammar import (BACKGROUND, COLORS, SceneSpec, object_size_range, parse,
                                     position_margin)

try:  # scipy is optional: a pure-numpy labeller is the fallback
    from scipy import ndimage as _ndi
except ImportError:  # pragma: no cover
    _ndi = None

_COLOR_NAMES = tuple(COLORS)
# index 0 = background, 1.. = colours
_TABLE = torch.tensor([BACKGROUND] + [COLORS[c] for c in _COLOR_NAMES],
                      dtype=torch.float32) / 255.0
_TABLE_NP = _TABLE.numpy().astype(np.float64)
UNKNOWN_DIST = 0.25  # distance from a colour line, RGB in [0, 1]; colours are >= 0.84 apart
_EIGHT = np.ones((3, 3), dtype=bool)
# partial-credit weights for one expected object matched to one found object (sum 10)
W_PRESENT, W_SHAPE, W_COLOR = 2, 5, 3
W_RELATION = 0.2  # share of a position prompt's score given to the relation
RING = 2  # px around a component whose soft coverage counts towards its moments


@dataclass
class Detection:
    shape: str  # circle / square / triangle / blob
    color: str
    cx: float  # centroid, pixel-index units (column)
    cy: float  # (row; grows downwards)
    area: int
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    features: dict = field(default_factory=dict)  # shape_features() of the component


@dataclass
class VerifyResult:
    passed: bool
    score: float
    details: dict = field(default_factory=dict)


def min_area(size: int) -> int:
    """Smallest component kept as an object: 20% of the smallest object box (10 px at 32 px,
    where the smallest object, a 7 px triangle, covers 25 px)."""
    return round(0.2 * object_size_range(size)[0] ** 2)


def relation_holds(relation: str, a: tuple[float, float], b: tuple[float, float],
                   size: int) -> bool:
    """Dominant-axis rule: "A left of B" iff dx = xB - xA > margin and dx > |dy| (and the
    mirror images for right of / above / below; y grows downwards)."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    main, other = {"left of": (dx, dy), "right of": (-dx, dy),
                   "above": (dy, dx), "below": (-dy, dx)}[relation]
    return bool(main > position_margin(size) and main > abs(other))


def _prep(images: torch.Tensor) -> torch.Tensor:
    """float32 CPU copy; NaN -> 0, +-inf clipped (a diverged model gets no objects)."""
    return torch.nan_to_num(images.detach().float().cpu(), nan=0.0, posinf=2.0, neginf=-1.0)


def segment_batch(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [0, 1] -> int8 [B, H, W]: -1 background/unknown, k = colour index.

    Each colour k defines the line from the background to it; a pixel's coverage alpha_k is
    its projection onto that line. A pixel belongs to the colour whose line it is closest
    to, provided it is at least half covered (alpha >= 0.5: the half-coverage level of a
    blurred edge is the edge itself) and within ``UNKNOWN_DIST`` of the line (else it is
    off-palette and counts as background)."""
    x = _prep(images) - _TABLE[0].view(1, 3, 1, 1)
    d = _TABLE[1:] - _TABLE[0]  # [K, 3]
    alpha = torch.einsum("bchw,kc->bkhw", x, d) / (d * d).sum(1).view(1, -1, 1, 1)
    resid2 = (x * x).sum(1, keepdim=True) - alpha ** 2 * (d * d).sum(1).view(1, -1, 1, 1)
    resid2 = torch.where(alpha >= 0.5, resid2, torch.full_like(resid2, float("inf")))
    best, idx = resid2.min(1)
    idx = torch.where(best <= UNKNOWN_DIST ** 2, idx, torch.full_like(idx, -1))
    return idx.to(torch.int8).numpy()


def _components(mask: np.ndarray):
    """Yield (slice_y, slice_x, component mask in its box) for each 8-connected component
    (scipy.ndimage when installed, else a pure-numpy min-label propagation)."""
    if _ndi is not None:
        lab, _ = _ndi.label(mask, structure=_EIGHT)
    else:
        h, w = mask.shape
        big = h * w + 1
        lab = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), big)
        while True:
            p = np.pad(lab, 1, constant_values=big)
            m = np.where(mask, np.min([p[i:i + h, j:j + w] for i in range(3)
                                       for j in range(3)], axis=0), big)
            if np.array_equal(m, lab):
                break
            lab = m
        lab = np.where(mask, np.unique(lab, return_inverse=True)[1].reshape(h, w) + 1, 0)
    for k in range(1, int(lab.max()) + 1):
        ys, xs = np.nonzero(lab == k)
        if ys.size:
            sy, sx = slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)
            yield sy, sx, lab[sy, sx] == k


def shape_features(hard: np.ndarray, soft: np.ndarray) -> dict[str, float]:
    """Scale-free features of one component: from its half-coverage mask cropped to its box
    (``hard``): fill ratio (square 1, circle ~0.79, triangle ~0.53), share of the 4 box
    corner pixels set (square 1, else 0), vertical centroid offset ``yoff`` in box heights
    (apex-up triangle ~+0.15, else 0) and aspect; from its soft
    coverage (``soft``, any window around it), moments that Gaussian blur leaves unchanged:
    ``skew_y`` = mu03 / area^2.5 (triangle ~-0.022, else 0), ``c4`` = (mu40 + mu04 - 6 mu22)
    / area^3 (square -1/60, circle ~0.003) and the second-moment elongation."""
    h, w = hard.shape
    rows = np.nonzero(hard)[0]
    area = float(soft.sum())
    ys, xs = np.mgrid[: soft.shape[0], : soft.shape[1]]
    x = xs - (soft * xs).sum() / area
    y = ys - (soft * ys).sum() / area
    x2, y2 = x * x, y * y
    m20, m02, m11 = (soft * x2).sum(), (soft * y2).sum(), (soft * x * y).sum()
    return {
        "fill": float(hard.sum() / (h * w)),
        "corners": float(hard[[0, 0, -1, -1], [0, -1, 0, -1]].mean()),
        "yoff": float((rows.mean() - (h - 1) / 2) / h),
        "aspect": w / h,
        "skew_y": float((soft * y2 * y).sum() / area ** 2.5),
        "c4": float((soft * (x2 * x2 + y2 * y2 - 6 * x2 * y2)).sum() / area ** 3),
        "elong": float(np.hypot(m20 - m02, 2 * m11) / max(m20 + m02, 1e-9)),
    }


def classify_shape(f: dict[str, float]) -> str:
    """circle / square / triangle (apex up) from :func:`shape_features`, else "blob".

    Evidence sums, ~0 for the other shapes: triangle = yoff / 0.13 + skew_y / -0.022 (~2 for
    a triangle; > 0.8 wins), then square (vs circle) = (fill - 0.79) / 0.21 + (c4 - 0.003) /
    -0.0197 + corners (~3 for a square, <= 0.55 for a clean circle; > 1 wins). Blobs: aspect
    outside [0.5, 2], fill < 0.35, elongation > 0.5, or an upside-down triangle (< -0.8)."""
    if not 0.5 <= f["aspect"] <= 2.0 or f["fill"] < 0.35 or f["elong"] > 0.5:
        return "blob"
    tri = f["yoff"] / 0.13 + f["skew_y"] / -0.022
    if tri > 0.8:
        return "triangle"
    if tri < -0.8:
        return "blob"
    sq = (f["fill"] - 0.79) / 0.21 + (f["c4"] - 0.003) / -0.0197 + f["corners"]
    return "square" if sq > 1.0 else "circle"


def _coverage(img: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel coverage of colour k (projection onto the background->colour line) and
    whether the pixel is such a mixture at all (small distance from that line)."""
    d, rel = _TABLE_NP[k + 1] - _TABLE_NP[0], img - _TABLE_NP[0]
    alpha = rel @ d / float(d @ d)
    return alpha, np.linalg.norm(rel - alpha[..., None] * d, axis=-1) < UNKNOWN_DIST


def detect(seg: np.ndarray, img: np.ndarray | None = None) -> list[Detection]:
    """Objects in one segmentation map [H, W] (from :func:`segment_batch`), largest first.
    With the image [H, W, 3] the shape and centroid use soft coverage (robust to blur)."""
    h, w = seg.shape
    keep = min_area(w)
    found = []
    for k in np.unique(seg):
        if k < 0:
            continue
        if img is not None:
            alpha, mixed = _coverage(img, int(k))
            base = float(np.median(alpha[seg < 0])) if (seg < 0).any() else 0.0
            alpha = (alpha - base) / max(1.0 - base, 0.5)
        for sy, sx, m in _components(seg == k):
            area = int(m.sum())
            if area < keep:
                continue
            y0, x0 = max(sy.start - RING, 0), max(sx.start - RING, 0)
            y1, x1 = min(sy.stop + RING, h), min(sx.stop + RING, w)
            own = np.zeros((y1 - y0, x1 - x0), dtype=bool)
            own[sy.start - y0: sy.stop - y0, sx.start - x0: sx.stop - x0] = m
            ring = _dilate(own, RING) & (seg[y0:y1, x0:x1] < 0)
            if img is None:
                soft = own.astype(np.float64)
            else:
                a = alpha[y0:y1, x0:x1]
                soft = np.where(own, np.clip(a, 0, 1.5),
                                np.where(ring & mixed[y0:y1, x0:x1], np.clip(a, -0.5, 1), 0.0))
            yy, xx = np.mgrid[y0:y1, x0:x1]
            mass = max(float(soft.sum()), 1e-6)
            f = shape_features(m, soft)
            found.append(Detection(classify_shape(f), _COLOR_NAMES[int(k)],
                                   float((soft * xx).sum() / mass),
                                   float((soft * yy).sum() / mass),
                                   area, (sx.start, sy.start, sx.stop, sy.stop), f))
    found.sort(key=lambda d: -d.area)
    return found


def _dilate(m: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation by a (2r+1)^2 square."""
    p, (h, w) = np.pad(m, r), m.shape
    return np.any([p[i:i + h, j:j + w] for i in range(2 * r + 1) for j in range(2 * r + 1)], 0)


def _credit(want: tuple[str, str | None], got: Detection) -> int:
    shape, color = want
    return W_PRESENT + W_SHAPE * (got.shape == shape) + W_COLOR * (color is None or
                                                                   got.color == color)


def _best_assignment(expected, found) -> tuple[int, list[int | None]]:
    """Max total credit matching of expected objects (<= 4) to found ones (subset DP)."""
    n = len(expected)
    full = (1 << n) - 1
    dp = {0: (0, [None] * n)}
    for fi, f in enumerate(found):
        new = dict(dp)
        for mask, (val, assign) in dp.items():
            for e in range(n):
                if not mask >> e & 1:
                    cand = val + _credit(expected[e], f)
                    key = mask | (1 << e)
                    if key not in new or new[key][0] < cand:
                        a = list(assign)
                        a[e] = fi
                        new[key] = (cand, a)
        dp = new
        if full in dp and dp[full][0] == 10 * n:
            break
    return max(dp.values(), key=lambda t: t[0])


def check(spec: SceneSpec | str, found: list[Detection], size: int) -> VerifyResult:
    """Judge detected objects against a prompt (no pixels needed; also used as ground truth)."""
    spec = parse(spec)
    expected = spec.expected()
    n = len(expected)
    total, assign = _best_assignment(expected, found)
    extra = max(0, len(found) - n)
    missing = sum(a is None for a in assign)
    obj_score = total / (10 * n) * n / (n + extra)
    exact = extra == 0 and total == 10 * n
    rel_ok = None
    if spec.relation is not None:
        a, b = assign
        rel_ok = a is not None and b is not None and relation_holds(
            spec.relation, (found[a].cx, found[a].cy), (found[b].cx, found[b].cy), size)
        score = (1 - W_RELATION) * obj_score + W_RELATION * rel_ok
    else:
        score = obj_score
    passed = bool(exact and rel_ok is not False)
    score = 1.0 if passed else float(min(max(score, 0.0), 0.999))
    wrong = [f"{found[a].color} {found[a].shape} for {c or 'any'} {s}"
             for (s, c), a in zip(expected, assign)
             if a is not None and _credit((s, c), found[a]) < 10]
    summary = (f"found {len(found)} object(s): "
               + (", ".join(f"{d.color} {d.shape}@({d.cx:.1f},{d.cy:.1f})" for d in found)
                  or "none")
               + f"; expected {n}; missing {missing}; extra {extra}"
               + (f"; mismatched: {'; '.join(wrong)}" if wrong else "")
               + (f"; relation '{spec.relation}' {'holds' if rel_ok else 'fails'}"
                  if rel_ok is not None else ""))
    details = {"category": spec.category, "expected": expected,
               "found": [{k: v for k, v in vars(d).items() if k != "features"} for d in found],
               "assignment": assign,
               "missing": missing, "extra": extra, "relation_ok": rel_ok, "summary": summary}
    return VerifyResult(passed, score, details)


def _to_batch(image) -> torch.Tensor:
    """numpy [H, W, 3] or torch [3, H, W] (either layout accepted) -> torch [1, 3, H, W]."""
    is_torch = isinstance(image, torch.Tensor)
    x = image if is_torch else torch.from_numpy(np.ascontiguousarray(image))
    if x.ndim != 3 or 3 not in (x.shape[0], x.shape[-1]):
        raise UserError(f"verify expects one image [H, W, 3] or [3, H, W], got shape "
                        f"{tuple(x.shape)}: pass a single RGB image (use verify_batch for "
                        "batches)")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    channels_last = x.shape[-1] == 3 and (x.shape[0] != 3 or not is_torch)
    if channels_last:
        x = x.permute(2, 0, 1)
    return x[None].float()


def from_layout(objects) -> list[Detection]:
    """Detections from ground-truth objects (anything with shape, color, cx, cy; e.g. the
    :class:`~tempflow.shapes.render.PlacedObject` list of :func:`sample_layout`)."""
    return [Detection(o.shape, o.color, float(o.cx), float(o.cy), int(getattr(o, "s", 0)) ** 2,
                      (0, 0, 0, 0)) for o in objects]


def _verify(images: torch.Tensor, specs: list[SceneSpec]) -> list[VerifyResult]:
    segs = segment_batch(images)
    pix = _prep(images).permute(0, 2, 3, 1).numpy().astype(np.float64)
    return [check(spec, detect(seg, img), seg.shape[1])
            for spec, seg, img in zip(specs, segs, pix)]


def verify(image, prompt: str) -> VerifyResult:
    """Check one image (numpy [H, W, 3] or torch [3, H, W], floats in [0, 1]) against a prompt."""
    return _verify(_to_batch(image), [parse(prompt)])[0]


def verify_batch(images: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """images [B, 3, H, W] in [0, 1] -> (passed bool [B], score float32 [B])."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise UserError(f"verify_batch expects a tensor [B, 3, H, W], got "
                        f"{getattr(images, 'shape', type(images).__name__)}: stack the "
                        "images channel-first")
    if isinstance(prompts, str) or len(prompts) != images.shape[0]:
        raise UserError(f"verify_batch got {images.shape[0]} images but "
                        f"{1 if isinstance(prompts, str) else len(prompts)} prompt(s): "
                        "pass one prompt per image as a list")
    results = _verify(images, [parse(p) for p in prompts])
    return (torch.tensor([r.passed for r in results], dtype=torch.bool),
            torch.tensor([r.score for r in results], dtype=torch.float32))
