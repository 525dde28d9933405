"""The reward server's wire format: JSON with PNG images in, floats out.

Request  ``POST /score``::

    {"images": ["<base64 PNG>", ...], "prompts": ["a red circle", ...], "metadata": [{...}, ...]}

``metadata`` is optional (null or one object per image). Images are 8-bit RGB PNGs, all the
same size. Response 200: ``{"scores": [0.83, null, ...]}``, one per image, null for a sample
that could not be scored. Errors: 4xx / 5xx with ``{"error": "<one line>"}``.
``GET /health`` answers ``{"status": "ok", "reward": "<name>"}``.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from tempflow.rewards.simple import to_uint8


class WireError(ValueError):
    """A request that does not follow the wire format (the server answers 400)."""


def encode_images(images: Tensor) -> list[str]:
    """[B, 3, H, W] in [0, 1] -> B base64 strings of 8-bit RGB PNGs."""
    from PIL import Image

    out = []
    for arr in to_uint8(images):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


def decode_images(items: Sequence[str]) -> Tensor:
    """B base64 PNG / JPEG strings -> float32 [B, 3, H, W] in [0, 1]; WireError when bad."""
    from PIL import Image

    arrays = []
    for i, item in enumerate(items):
        try:
            with Image.open(io.BytesIO(base64.b64decode(item, validate=True))) as im:
                arrays.append(np.asarray(im.convert("RGB")))
        except Exception as e:
            raise WireError(f"images[{i}] is not a base64-encoded PNG ({type(e).__name__})") from None
    if len({a.shape for a in arrays}) > 1:
        raise WireError(f"images must all have the same size, got {sorted({a.shape[:2] for a in arrays})}")
    if not arrays:
        return torch.zeros(0, 3, 1, 1)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def encode_request(images: Tensor, prompts: Sequence[str], metadata: Sequence[dict] | None) -> dict:
    """The JSON body of a /score request."""
    return {"images": encode_images(images), "prompts": list(prompts),
            "metadata": None if metadata is None else list(metadata)}


def decode_request(body: Any) -> tuple[Tensor, list[str], list[dict] | None]:
    """Check and decode a /score body -> (images [B, 3, H, W], prompts, metadata or None)."""
    if not isinstance(body, dict):
        raise WireError("the body must be a JSON object with 'images' and 'prompts'")
    unknown = set(body) - {"images", "prompts", "metadata"}
    if unknown:
        raise WireError(f"unknown field(s) {sorted(unknown)}: a request has images, prompts, metadata")
    images, prompts, metadata = body.get("images"), body.get("prompts"), body.get("metadata")
    if not isinstance(images, list) or not all(isinstance(x, str) for x in images):
        raise WireError("'images' must be a list of base64 PNG strings")
    if not isinstance(prompts, list) or not all(isinstance(x, str) for x in prompts):
        raise WireError("'prompts' must be a list of strings")
    if len(prompts) != len(images):
        raise WireError(f"{len(images)} images but {len(prompts)} prompts: send one prompt per image")
    if metadata is not None and (not isinstance(metadata, list) or len(metadata) != len(images)
                                 or not all(isinstance(m, dict) for m in metadata)):
        raise WireError("'metadata' must be null or a list of one JSON object per image")
    return decode_images(images), prompts, metadata


def encode_scores(values: Tensor) -> list[float | None]:
    """float [B] -> JSON list, NaN / inf as null (JSON has no NaN)."""
    return [float(v) if math.isfinite(v) else None for v in values.tolist()]


def decode_scores(items: Any, expected: int) -> Tensor:
    """A response's 'scores' -> float32 [B] (null -> NaN); WireError on a wrong count or type."""
    if not isinstance(items, list) or len(items) != expected:
        n = len(items) if isinstance(items, list) else type(items).__name__
        raise WireError(f"expected {expected} scores, got {n}")
    if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in items):
        raise WireError("scores must be numbers or null")
    return torch.tensor([float("nan") if v is None else float(v) for v in items], dtype=torch.float32)
