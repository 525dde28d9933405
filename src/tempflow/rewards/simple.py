"""Simple image statistics as rewards, for quick experiments (no model, no prompt).

``jpeg_compressibility`` / ``jpeg_incompressibility`` follow DDPO (Black et al. 2023): the
size in kB of the image saved as a quality-95 JPEG, negated for compressibility.
``brightness`` is the mean luminance and ``contrast`` its standard deviation (RMS contrast),
luminance being ITU-R BT.601 luma Y = 0.299 R + 0.587 G + 0.114 B, in [0, 1].
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from tempflow.rewards.registry import Reward, register

LUMA = (0.299, 0.587, 0.114)


def to_uint8(images: Tensor) -> np.ndarray:
    """[B, 3, H, W] in [0, 1] -> uint8 [B, H, W, 3] (rounded, clipped)."""
    x = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def jpeg_sizes_kb(images: Tensor, quality: int = 95) -> Tensor:
    """JPEG file size in kB (1000 bytes) of each image: float32 [B]."""
    from PIL import Image

    sizes = []
    for arr in to_uint8(images):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32)


def luminance(images: Tensor) -> Tensor:
    """[B, 3, H, W] -> luma [B, H, W] in [0, 1]."""
    w = torch.tensor(LUMA, dtype=torch.float32, device=images.device)
    return torch.einsum("bchw,c->bhw", images.float().clamp(0, 1), w)


@register("jpeg_compressibility")
def jpeg_compressibility(quality: int = 95) -> Reward:
    """-(JPEG size in kB): higher for images that compress well."""
    def reward(images: Tensor, prompts: Sequence[str], metadata=None) -> Tensor:
        return -jpeg_sizes_kb(images, quality)
    return reward


@register("jpeg_incompressibility")
def jpeg_incompressibility(quality: int = 95) -> Reward:
    """JPEG size in kB: higher for detailed, hard-to-compress images."""
    def reward(images: Tensor, prompts: Sequence[str], metadata=None) -> Tensor:
        return jpeg_sizes_kb(images, quality)
    return reward


@register("brightness")
def brightness(target: float | None = None) -> Reward:
    """Mean luma in [0, 1]; with ``target``, -|mean luma - target| (closest to target is best)."""
    def reward(images: Tensor, prompts: Sequence[str], metadata=None) -> Tensor:
        mean = luminance(images).mean(dim=(1, 2)).cpu()
        return mean if target is None else -(mean - target).abs()
    return reward


@register("contrast")
def contrast() -> Reward:
    """RMS contrast: the standard deviation of luma over the image, in [0, 0.5]."""
    def reward(images: Tensor, prompts: Sequence[str], metadata=None) -> Tensor:
        return luminance(images).flatten(1).std(dim=1, unbiased=False).cpu()
    return reward
