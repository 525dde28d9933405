"""Pixels -> labelled components for the shapes-world verifier (see verify.py).

Everything works on the 8-bit image (:func:`quantize`, the rounding PNG files use), so a
float image and its PNG get the same labels. Per pixel, in 8-bit units:

- the background estimate: the mean of the pixels near the palette background (within 51 of
  it per channel, when they are at least a quarter of the image), clipped to +-38 from it;
  the image is shifted by the difference (a global colour cast is undone);
- colour k's *coverage* alpha_k: the pixel's projection onto the line from the background to
  colour k (0 on the background, 1 on the colour);
- label k (a palette colour) if alpha_k >= 0.5 (the half-coverage level of a blurred edge is
  the edge itself) and the pixel lies within ``UNKNOWN_DIST`` of that line, the closest such
  line winning;
- label ``OFF`` (off-palette) if no colour qualifies but some channel is at least half-way
  from the background to full intensity (>= 128 on a 20 background): clearly not background,
  clearly not a palette colour (orange, pink, purple ...);
- else background (-1).
"""

from __future__ import annotations

import numpy as np
import torch

from tempflow.shapes.grammar import BACKGROUND, COLORS

try:  # scipy is optional: a pure-numpy labeller is the fallback
    from scipy import ndimage as _ndi
except ImportError:  # pragma: no cover
    _ndi = None

COLOR_NAMES = tuple(COLORS)
OFF_PALETTE = "off-palette"  # colour name of objects in no palette colour
OFF = len(COLOR_NAMES)  # its label
BG = np.array(BACKGROUND, dtype=np.float64)
_DIRS = np.array([COLORS[c] for c in COLOR_NAMES], dtype=np.float64) - BG  # [K, 3]
_DIR2 = (_DIRS * _DIRS).sum(1)  # [K]
UNKNOWN_DIST = 0.25 * 255  # distance from a colour line; colours are >= 215 apart
BRIGHT = 0.5 * float(_DIRS.max())  # channel excess over the background of an OFF pixel
DARK = 0.35 * float(_DIRS.max())  # no channel excess above this: background-like
_NEAR_BG, _MAX_CAST = 51.0, 38.0
EIGHT = np.ones((3, 3), dtype=bool)
FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)


def quantize(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] floats in [0, 1] -> float64 [B, H, W, 3] of 8-bit values 0..255, rounded
    exactly as PNG export rounds (NaN -> 0, so a diverged image has no objects)."""
    x = torch.nan_to_num(images.detach().float().cpu(), nan=0.0, posinf=1.0, neginf=0.0)
    q = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return q.permute(0, 2, 3, 1).numpy().astype(np.float64)


def uncast(img: np.ndarray) -> np.ndarray:
    """Undo a global colour cast: shift so the background pixels average the palette's."""
    near = (np.abs(img - BG) <= _NEAR_BG).all(-1)
    if near.mean() < 0.25:
        return img
    shift = np.clip(img[near].mean(0) - BG, -_MAX_CAST, _MAX_CAST)
    return img - shift


def coverage(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(alpha [H, W, K], squared distance from each colour line [H, W, K]) of an uncast
    8-bit image [H, W, 3]."""
    rel = img - BG
    alpha = rel @ _DIRS.T / _DIR2
    resid2 = (rel * rel).sum(-1, keepdims=True) - alpha ** 2 * _DIR2
    return alpha, np.maximum(resid2, 0.0)


def label_pixels(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels int [H, W]: -1 background, k colour, OFF off-palette; alpha [H, W, K])."""
    alpha, resid2 = coverage(img)
    cand = np.where((alpha >= 0.5) & (resid2 <= UNKNOWN_DIST ** 2), resid2, np.inf)
    best = cand.argmin(-1)
    colored = np.isfinite(cand.min(-1))
    bright = (img - BG).max(-1) >= BRIGHT
    lab = np.where(colored, best, np.where(bright, OFF, -1))
    return lab.astype(np.int64), alpha


def label(mask: np.ndarray, structure: np.ndarray = EIGHT) -> np.ndarray:
    """Connected components of a boolean mask: int [H, W], 0 outside, 1..n (scipy.ndimage
    when installed, else a pure-numpy min-label propagation)."""
    if _ndi is not None:
        return _ndi.label(mask, structure=structure)[0]
    h, w = mask.shape
    big = h * w + 1
    lab = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), big)
    offs = [(i, j) for i in range(3) for j in range(3) if structure[i, j]]
    while True:
        p = np.pad(lab, 1, constant_values=big)
        m = np.where(mask, np.min([p[i:i + h, j:j + w] for i, j in offs], axis=0), big)
        if np.array_equal(m, lab):
            break
        lab = m
    return np.where(mask, np.unique(lab, return_inverse=True)[1].reshape(h, w) + 1, 0)


def components(mask: np.ndarray):
    """Yield (slice_y, slice_x, component mask in its box) per 8-connected component."""
    lab = label(mask)
    for k in range(1, int(lab.max()) + 1):
        ys, xs = np.nonzero(lab == k)
        if ys.size:
            sy, sx = slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)
            yield sy, sx, lab[sy, sx] == k


def enclosed(mask: np.ndarray) -> np.ndarray:
    """Pixels of a box not in ``mask`` and not 4-connected to the box's border (holes)."""
    pad = np.pad(~mask, 1, constant_values=True)
    lab = label(pad, FOUR)
    outside = lab == lab[0, 0]
    return ~mask & ~outside[1:-1, 1:-1]
