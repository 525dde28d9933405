"""The reward server's wire format: JSON with PNG images in, floats out.

Request  ``POST /score``::

    {"images": ["<base64 PNG>", ...], "prompts": ["a red circle", ...], "metadata": [{...}, ...]}

``metadata`` is optional (null or one object per image). Images are 8-bit RGB PNGs (JPEG is
accepted too), all the same size. Response 200: ``{"scores": [0.83, null, ...]}``, one per
image, null for a sample that could not be scored. Errors: 4xx / 5xx with
``{"error": "<one line>"}``. ``GET /health`` answers ``{"status": "ok", "reward": "<name>"}``.

Decoding is defensive: every image's header (format, width, height) is read and checked
against the limits before any pixel is decoded, so a small file that claims a huge size costs
nothing. Over a limit: :class:`LimitError` (the server answers 413); otherwise malformed:
:class:`WireError` (400).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from tempflow.rewards.simple import to_uint8

FORMATS = ("PNG", "JPEG")  # what Image.open may try; anything else is refused unread


class WireError(ValueError):
    """A request that does not follow the wire format (the server answers 400)."""


class LimitError(WireError):
    """A request over one of the server's limits (the server answers 413)."""


def encode_images(images: Tensor) -> list[str]:
    """[B, 3, H, W] in [0, 1] -> B base64 strings of 8-bit RGB PNGs."""
    from PIL import Image

    out = []
    for arr in to_uint8(images):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


def _open_header(data: bytes, i: int, max_pixels: int | None):
    """A lazily opened PIL image (header read, no pixels decoded) after the format and size checks."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:
        raise LimitError(f"images[{i}] is over PIL's decompression-bomb limit of "
                         f"{2 * Image.MAX_IMAGE_PIXELS} pixels (--max-pixels)") from None
    except Exception as e:
        raise WireError(f"images[{i}] is not a PNG or JPEG image ({type(e).__name__})") from None
    w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        im.close()
        raise LimitError(f"images[{i}] is {w}x{h} = {w * h} pixels, over the server's limit of "
                         f"{max_pixels} pixels per image (--max-pixels)")
    return im


def decode_images_uint8(items: Sequence[str], max_pixels: int | None = None) -> Tensor:
    """B base64 PNG / JPEG strings -> uint8 [B, 3, H, W]; WireError / LimitError when bad.

    Two passes: all headers are checked (format, pixels <= ``max_pixels``, one size) before
    the first image is decoded, so memory is at most B x max_pixels x 3 bytes plus the input."""
    raw = []
    for i, item in enumerate(items):
        try:
            raw.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError):
            raise WireError(f"images[{i}] is not valid base64 (truncated or not an image string)") from None
    sizes = []
    for i, data in enumerate(raw):
        with _open_header(data, i, max_pixels) as im:
            sizes.append(im.size)
    if len(set(sizes)) > 1:
        raise WireError(f"images must all have the same size, got {sorted(set(sizes))} (width, height)")
    if not raw:
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
    w, h = sizes[0]
    out = torch.empty(len(raw), 3, h, w, dtype=torch.uint8)
    view = out.numpy()  # shares memory with out
    for i in range(len(raw)):
        data, raw[i] = raw[i], b""  # drop each file once decoded
        try:
            with _open_header(data, i, max_pixels) as im:
                arr = np.asarray(im.convert("RGB"))
        except WireError:
            raise
        except Exception as e:  # truncated or corrupt pixel data
            raise WireError(f"images[{i}] cannot be decoded ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})") from None
        view[i] = arr.transpose(2, 0, 1)
    return out


def decode_images(items: Sequence[str], max_pixels: int | None = None) -> Tensor:
    """B base64 PNG / JPEG strings -> float32 [B, 3, H, W] in [0, 1]; WireError when bad."""
    out = decode_images_uint8(items, max_pixels)
    return out.float() / 255.0 if out.shape[0] else torch.zeros(0, 3, 1, 1)


def encode_request(images: Tensor, prompts: Sequence[str], metadata: Sequence[dict] | None) -> dict:
    """The JSON body of a /score request."""
    return {"images": encode_images(images), "prompts": list(prompts),
            "metadata": None if metadata is None else list(metadata)}


def decode_request(body: Any, max_images: int | None = None,
                   max_pixels: int | None = None) -> tuple[Tensor, list[str], list[dict] | None]:
    """Check and decode a /score body -> (images uint8 [B, 3, H, W], prompts, metadata or None).

    The structure and the image count (<= ``max_images``) are checked before any image is
    decoded; the images are checked as :func:`decode_images_uint8` does."""
    if not isinstance(body, dict):
        raise WireError("the body must be a JSON object with 'images' and 'prompts'")
    unknown = set(body) - {"images", "prompts", "metadata"}
    if unknown:
        raise WireError(f"unknown field(s) {sorted(unknown)}: a request has images, prompts, metadata")
    images, prompts, metadata = body.get("images"), body.get("prompts"), body.get("metadata")
    if not isinstance(images, list) or not all(isinstance(x, str) for x in images):
        raise WireError("'images' must be a list of base64 PNG strings")
    if max_images is not None and len(images) > max_images:
        raise LimitError(f"{len(images)} images in one request, over the server's limit of {max_images} "
                         f"(--max-images): lower reward.kwargs.batch_size")
    if not isinstance(prompts, list) or not all(isinstance(x, str) for x in prompts):
        raise WireError("'prompts' must be a list of strings")
    if len(prompts) != len(images):
        raise WireError(f"{len(images)} images but {len(prompts)} prompts: send one prompt per image")
    if metadata is not None and (not isinstance(metadata, list) or len(metadata) != len(images)
                                 or not all(isinstance(m, dict) for m in metadata)):
        raise WireError("'metadata' must be null or a list of one JSON object per image")
    return decode_images_uint8(images, max_pixels), prompts, metadata


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
