"""Image grids: write them with a JSON sidecar, read them back as tiles.

A grid written by :func:`save_grid` stores each image at an integer nearest-neighbour
scale with a padding border; the sidecar ``<name>.json`` records the layout (and the
prompts), so :func:`load_images` recovers the exact original pixels.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from tempflow.errors import UserError


def make_grid(images: Tensor, nrow: int | None = None, pad: int = 2, scale: int = 1,
              pad_value: int = 128) -> np.ndarray:
    """images float [B, 3, H, W] in [0, 1] -> uint8 [rows*(H*scale+pad)+pad, ..., 3]."""
    b, _, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    if scale > 1:
        arr = arr.repeat(scale, axis=1).repeat(scale, axis=2)
    th, tw = h * scale, w * scale
    grid = np.full((rows * (th + pad) + pad, nrow * (tw + pad) + pad, 3), pad_value, np.uint8)
    for i in range(b):
        r, c = divmod(i, nrow)
        y, x = pad + r * (th + pad), pad + c * (tw + pad)
        grid[y:y + th, x:x + tw] = arr[i]
    return grid


#: the keys of a grid's .json sidecar (how a sidecar written here is recognised)
SIDECAR_KEYS = {"num", "nrow", "pad", "scale", "height", "width", "prompts", "left"}


def row_labels(prompts: Sequence[str], nrow: int) -> list[str]:
    """One label per grid row: the row's distinct prompts in order, joined by " / "."""
    out = []
    for start in range(0, len(prompts), nrow):
        row = list(dict.fromkeys(prompts[start:start + nrow]))
        out.append(" / ".join(row))
    return out


def _label_rows(grid: np.ndarray, labels: list[str], pitch: int, pad: int) -> tuple[np.ndarray, int]:
    """The grid with a white margin on its left holding each row's label, vertically centred
    on the row: (uint8 [H, left + W, 3], left)."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = max((probe.textlength(t, font=font) for t in labels), default=0)
    left = int(math.ceil(width)) + 8
    canvas = Image.new("RGB", (left + grid.shape[1], grid.shape[0]), (255, 255, 255))
    canvas.paste(Image.fromarray(grid), (left, 0))
    draw = ImageDraw.Draw(canvas)
    for r, text in enumerate(labels):
        y = pad + r * pitch + (pitch - pad) // 2
        draw.text((4, y), text, fill=(0, 0, 0), font=font, anchor="lm")
    return np.asarray(canvas), left


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None, pad: int = 2,
              scale: int = 4, prompts: Sequence[str] | None = None) -> Path:
    """Write a PNG grid and its layout sidecar (``path`` with suffix .json). With ``prompts``
    (one per image) each row is labelled on the left with its prompt(s)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    b, _, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    grid, left = make_grid(images, nrow, pad, scale), 0
    if prompts is not None and len(prompts) == b and b:
        grid, left = _label_rows(grid, row_labels(list(prompts), nrow), h * scale + pad, pad)
    Image.fromarray(grid).save(path)
    meta = {"num": b, "nrow": nrow, "pad": pad, "scale": scale, "height": h, "width": w,
            "prompts": list(prompts) if prompts is not None else None, "left": left}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    return path


#: the largest image read from a file, in pixels (checked from the header, before decoding)
MAX_PIXELS = 64 * 1024 * 1024


def _read_png(path: Path) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"image {str(path)!r} not found (check the path)")
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise UserError(f"image {str(path)!r} is {im.width} x {im.height} pixels, over the "
                                f"limit of {MAX_PIXELS} pixels; give a smaller image")
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError, SyntaxError) as e:
        raise UserError(f"image {str(path)!r} is not a readable image ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]}); give a PNG or JPEG") from None


def load_images(path: str | Path) -> tuple[Tensor, list[str] | None]:
    """Read an image or a grid written by :func:`save_grid`.

    Returns (images float32 [B, 3, H, W] in [0, 1], prompts from the sidecar or None).
    A plain image without sidecar is one image (B = 1).
    """
    path = Path(path)
    arr = _read_png(path)
    side = path.with_suffix(".json")
    if not side.is_file():
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255.0, None
    try:
        m = json.loads(side.read_text())
        tiles = []
        th, tw = m["height"] * m["scale"], m["width"] * m["scale"]
        for i in range(m["num"]):
            r, c = divmod(i, m["nrow"])
            y = m["pad"] + r * (th + m["pad"])
            x = int(m.get("left", 0)) + m["pad"] + c * (tw + m["pad"])
            tile = arr[y:y + th:m["scale"], x:x + tw:m["scale"]]
            if tile.shape[:2] != (m["height"], m["width"]):
                raise ValueError("grid smaller than its layout")
            tiles.append(tile)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{side}: grid layout does not match {path} ({e}); re-create the grid "
                        f"or delete the .json to treat the file as one image") from None
    images = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float() / 255.0
    return images, m.get("prompts")
