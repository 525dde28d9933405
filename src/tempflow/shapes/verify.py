"""Verify that an image shows what a shapes-world prompt asks for, from pixels alone.

Strict: a shape is recognised only as a clean instance, anything else is a "blob", and every
object counts, blobs and off-palette ones included.

1. Pixels (segment.py): the image is rounded to 8 bit first (a float image and its PNG get
   the same verdict), a global colour cast is undone, and each pixel is labelled with a
   palette colour (nearest background->colour line, at least half covered), as off-palette
   (bright but far from every colour) or as background.
2. Objects: 8-connected components per label; those under :func:`min_area` px are noise
   (stray specks). A component's enclosed regions are holes: one holding any background,
   off-palette pixel or other object makes it a blob; one holding only noise specks is
   filled (a speck on an object does not spoil it).
3. Shape (classify.py): the filled mask is fitted with every shape's ideal mask; the shape
   is recognised only if the box is near 1:1, the fit is good and clearly better than the
   runner-up and no block of pixels is missing or extra, else "blob". The centroid (for
   positions) is the soft-coverage centroid.
4. Check against the prompt: match found objects to the expected ones (best assignment),
   GenEval-style ``passed`` (exactly the expected objects: right shape, colour and size
   class, no blob or other extra object, and the relation for position prompts) and a dense
   ``score`` in [0, 1] that is 1.0 exactly when ``passed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from tempflow.errors import UserError
from tempflow.shapes import segment as seg
from tempflow.shapes.classify import classify_shape, decide, shape_scores
from tempflow.shapes.render import shape_mask
from tempflow.shapes.grammar import (ObjectSpec, SceneSpec, object_size_range, parse,
                                     position_margin, size_class_bounds)

__all__ = ["Detection", "VerifyResult", "check", "classify_shape", "detect", "detect_batch",
           "from_layout", "min_area", "relation_holds", "verify", "verify_batch"]

OFF_PALETTE = seg.OFF_PALETTE
# partial-credit weights for one expected object matched to one found object (sum 10, plus
# W_SIZE when the prompt gives the object a size)
W_PRESENT, W_SHAPE, W_COLOR, W_SIZE = 2, 5, 3, 2
W_RELATION = 0.2  # share of a position prompt's score given to the relation
RING = 2  # px of background around a component whose coverage counts towards it


@dataclass
class Detection:
    shape: str  # circle / square / triangle / diamond / cross / blob
    color: str  # a palette colour or "off-palette"
    cx: float  # centroid, pixel-index units (column)
    cy: float  # (row; grows downwards)
    area: int
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    features: dict = field(default_factory=dict)  # shape_scores() of the component
    # the box side (px) estimated two ways (fitted box, area), which decides small / big
    sides: tuple[float, float] | None = None

    @property
    def side(self) -> float:
        """The box side: the mean of ``sides``, else the bounding box's larger side."""
        if self.sides is not None:
            return sum(self.sides) / 2
        return max(self.bbox[2] - self.bbox[0], self.bbox[3] - self.bbox[1])


@dataclass
class VerifyResult:
    passed: bool
    score: float
    details: dict = field(default_factory=dict)


def min_area(size: int) -> int:
    """Smallest component kept as an object: 20% of the smallest object box (13 px at 32 px,
    where the smallest objects, 8 px triangles, cover 32 px)."""
    return round(0.2 * object_size_range(size)[0] ** 2)


def relation_holds(relation: str, a: tuple[float, float], b: tuple[float, float],
                   size: int) -> bool:
    """Dominant-axis rule: "A left of B" iff dx = xB - xA > margin and dx > |dy| (and the
    mirror images for right of / above / below; y grows downwards)."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    main, other = {"left of": (dx, dy), "right of": (-dx, dy),
                   "above": (dy, dx), "below": (-dy, dx)}[relation]
    return bool(main > position_margin(size) and main > abs(other))


def detect(img: np.ndarray) -> list[Detection]:
    """Objects in one 8-bit image (float64 [H, W, 3], values 0..255; see
    :func:`segment.quantize`), largest first."""
    h, w = img.shape[:2]
    img = seg.uncast(img)
    lab, alpha = seg.label_pixels(img)
    keep = min_area(w)
    comps = []  # (label, sy, sx, mask)
    owner = np.zeros((h, w), dtype=np.int64)  # 1 + index of the kept component, else 0
    for k in np.unique(lab):
        if k < 0:
            continue
        for sy, sx, m in seg.components(lab == k):
            if m.sum() >= keep:
                comps.append((int(k), sy, sx, m))
                owner[sy, sx][m] = len(comps)
    spare = (lab >= 0) & (owner == 0)  # noise specks (any colour, off-palette too)
    found = []
    for i, (k, sy, sx, m) in enumerate(comps, 1):
        holes = seg.enclosed(m)
        inner_own = owner[sy, sx][holes]
        dark = (img[sy, sx][holes] - seg.BG).max(-1) <= seg.DARK
        hole = bool((dark | (inner_own > 0)).any())
        filled = m | holes
        f = shape_scores(filled, _window(spare, sy, sx))
        f["hole"] = hole
        shape = decide(f, hole)
        # soft-coverage centroid and mass: the component plus a 2 px ring of background pixels
        y0, x0 = max(sy.start - RING, 0), max(sx.start - RING, 0)
        y1, x1 = min(sy.stop + RING, h), min(sx.stop + RING, w)
        own = owner[y0:y1, x0:x1] == i
        if k == seg.OFF:
            soft = own.astype(np.float64)
        else:  # blur moves coverage across the edge but keeps its sum
            ring = _grow(_grow(own)) & (lab[y0:y1, x0:x1] < 0)
            a = alpha[y0:y1, x0:x1, k]
            soft = np.where(own, np.clip(a, 0.0, 1.5), np.where(ring, np.clip(a, -0.5, 1.0), 0.0))
        yy, xx = np.mgrid[y0:y1, x0:x1]
        mass = max(float(soft.sum()), 1e-6)
        color = OFF_PALETTE if k == seg.OFF else seg.COLOR_NAMES[k]
        found.append(Detection(shape, color, float((soft * xx).sum() / mass),
                               float((soft * yy).sum() / mass), int(m.sum()),
                               (sx.start, sy.start, sx.stop, sy.stop), f,
                               None if shape == "blob" else
                               (float(f["side"]), side_from_area(shape, mass))))
    found.sort(key=lambda d: -d.area)
    return found


def _window(a: np.ndarray, sy: slice, sx: slice, pad: int = 2) -> np.ndarray:
    """a[sy, sx] grown by ``pad`` px on every side (zeros beyond the image)."""
    h, w = a.shape
    out = np.zeros((sy.stop - sy.start + 2 * pad, sx.stop - sx.start + 2 * pad), dtype=a.dtype)
    y0, x0 = max(sy.start - pad, 0), max(sx.start - pad, 0)
    y1, x1 = min(sy.stop + pad, h), min(sx.stop + pad, w)
    out[y0 - sy.start + pad: y1 - sy.start + pad, x0 - sx.start + pad: x1 - sx.start + pad] = \
        a[y0:y1, x0:x1]
    return out


@lru_cache(maxsize=None)
def _areas(shape: str) -> np.ndarray:
    """Pixel count of the rendered shape at box sides 0..127."""
    return np.array([0] + [shape_mask(shape, s).sum() for s in range(1, 128)], dtype=np.float64)


def side_from_area(shape: str, area: float) -> float:
    """Box side (px) whose rendered ``shape`` has the pixel count nearest ``area`` (a soft
    coverage sum, which blur leaves unchanged, unlike the bounding box)."""
    return float(np.abs(_areas(shape) - area).argmin())


def _grow(m: np.ndarray) -> np.ndarray:
    """Binary dilation by a 3 x 3 square."""
    p, (h, w) = np.pad(m, 1), m.shape
    return np.any([p[i:i + h, j:j + w] for i in range(3) for j in range(3)], 0)


def _size_ok(want: str | None, got: Detection, size: int) -> bool:
    """Size class by box side: small <= small_max, big >= big_min (size_class_bounds). The
    side is measured two ways, each exact on a clean render but fooled by blur in its own
    cases (a blurred-away triangle corner shrinks the box; 8 and 9 px diamonds have about
    the same area); either may place the object in its class."""
    if want is None:
        return True
    small_max, big_min = size_class_bounds(size)
    lo, hi = got.sides if got.sides is not None else (got.side, got.side)
    return min(lo, hi) <= small_max if want == "small" else max(lo, hi) >= big_min


def _credit(want: ObjectSpec, got: Detection, size: int) -> int:
    color_ok = got.color == want.color or (want.color is None and got.color != OFF_PALETTE)
    return (W_PRESENT + W_SHAPE * (got.shape == want.shape) + W_COLOR * color_ok
            + (W_SIZE * _size_ok(want.size, got, size) if want.size else 0))


def _full(want: ObjectSpec) -> int:
    return W_PRESENT + W_SHAPE + W_COLOR + (W_SIZE if want.size else 0)


def _best_assignment(expected, found, size) -> tuple[int, list[int | None]]:
    """Max total credit matching of expected objects (<= 4) to found ones (subset DP)."""
    n = len(expected)
    full = (1 << n) - 1
    top = sum(_full(e) for e in expected)
    dp = {0: (0, [None] * n)}
    for fi, f in enumerate(found):
        new = dict(dp)
        for mask, (val, assign) in dp.items():
            for e in range(n):
                if not mask >> e & 1:
                    cand = val + _credit(expected[e], f, size)
                    key = mask | (1 << e)
                    if key not in new or new[key][0] < cand:
                        a = list(assign)
                        a[e] = fi
                        new[key] = (cand, a)
        dp = new
        if full in dp and dp[full][0] == top:
            break
    return max(dp.values(), key=lambda t: t[0])


def check(spec: SceneSpec | str, found: list[Detection], size: int) -> VerifyResult:
    """Judge detected objects against a prompt (no pixels needed; also used as ground truth)."""
    spec = parse(spec)
    expected = spec.expected_objects()
    n = len(expected)
    top = sum(_full(e) for e in expected)
    total, assign = _best_assignment(expected, found, size)
    extra = max(0, len(found) - n)
    missing = sum(a is None for a in assign)
    obj_score = total / top * n / (n + extra)
    exact = extra == 0 and total == top
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
    wrong = [f"{found[a].color} {found[a].shape} ({found[a].side:g} px) for {e.text()[2:]}"
             for e, a in zip(expected, assign)
             if a is not None and _credit(e, found[a], size) < _full(e)]
    blobs = sum(d.shape == "blob" for d in found)
    summary = (f"found {len(found)} object(s): "
               + (", ".join(f"{d.color} {d.shape}@({d.cx:.1f},{d.cy:.1f})" for d in found)
                  or "none")
               + f"; expected {n}; missing {missing}; extra {extra}"
               + (f"; blobs {blobs}" if blobs else "")
               + (f"; mismatched: {'; '.join(wrong)}" if wrong else "")
               + (f"; relation '{spec.relation}' {'holds' if rel_ok else 'fails'}"
                  if rel_ok is not None else ""))
    details = {"category": spec.category, "expected": spec.expected(),
               "found": [{k: v for k, v in vars(d).items() if k != "features"} for d in found],
               "assignment": assign, "blobs": blobs,
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
    """Detections from ground-truth objects (anything with shape, color, cx, cy and
    optionally x0, y0, s; e.g. the :class:`~tempflow.shapes.render.PlacedObject` list of
    :func:`sample_layout`)."""
    out = []
    for o in objects:
        s, x0, y0 = int(getattr(o, "s", 0)), int(getattr(o, "x0", 0)), int(getattr(o, "y0", 0))
        out.append(Detection(o.shape, o.color, float(o.cx), float(o.cy), s * s,
                             (x0, y0, x0 + s, y0 + s), sides=(float(s), float(s))))
    return out


def detect_batch(images: torch.Tensor) -> list[list[Detection]]:
    """Objects in each image of a batch [B, 3, H, W] in [0, 1] (see :func:`detect`)."""
    return [detect(img) for img in seg.quantize(images)]


def verify(image, prompt: str) -> VerifyResult:
    """Check one image (numpy [H, W, 3] or torch [3, H, W], floats in [0, 1]) against a prompt."""
    spec = parse(prompt)
    x = _to_batch(image)
    return check(spec, detect_batch(x)[0], x.shape[-1])


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
    specs = [parse(p) for p in prompts]
    size = images.shape[-1]
    results = [check(s, d, size) for s, d in zip(specs, detect_batch(images))]
    return (torch.tensor([r.passed for r in results], dtype=torch.bool),
            torch.tensor([r.score for r in results], dtype=torch.float32))
