"""CLIP through transformers for learned rewards: loading (cached), preprocessing on the
device, and L2-normalised image / text embeddings.

Preprocessing follows ``CLIPImageProcessor`` (Radford et al. 2021): resize the shortest edge
to ``size`` (bicubic, antialiased), centre-crop to ``crop``, then (x - mean) / std with the
processor's own constants. It runs on the images' device instead of through PIL, so a batch
of decoded images never leaves the GPU; tests compare it with the processor's output.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from tempflow.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CACHE: dict[tuple, Any] = {}
_LOCK = threading.Lock()


def cached(key: tuple, build: Callable[[], Any]) -> Any:
    """``build()`` once per ``key`` for the life of the process (thread-safe)."""
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = build()
        return _CACHE[key]


def resolve_dtype(dtype: str) -> torch.dtype:
    """'float32' | 'bfloat16' | 'float16' -> torch dtype; UserError naming the kwarg otherwise."""
    if dtype not in DTYPES:
        raise UserError(f"reward.kwargs.dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
    return DTYPES[dtype]


@dataclass(frozen=True)
class PixelSpec:
    """What a CLIP image processor does: shortest edge ``size``, centre crop (h, w), mean, std."""

    size: int
    crop: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @staticmethod
    def of(image_processor) -> "PixelSpec":
        """Read the constants of a transformers CLIP image processor."""
        size = image_processor.size
        short = size["shortest_edge"] if "shortest_edge" in size else min(size["height"], size["width"])
        crop = image_processor.crop_size if image_processor.do_center_crop else {"height": short, "width": short}
        return PixelSpec(int(short), (int(crop["height"]), int(crop["width"])),
                         tuple(image_processor.image_mean), tuple(image_processor.image_std))


def resized_hw(h: int, w: int, short_edge: int) -> tuple[int, int]:
    """(height, width) with the shortest edge at ``short_edge``, the long edge rounded down
    (transformers' ``get_resize_output_image_size`` with default_to_square=False)."""
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(short_edge * long / short)
    return (new_long, short_edge) if w <= h else (short_edge, new_long)


def clip_pixels(images: Tensor, spec: PixelSpec) -> Tensor:
    """images [B, 3, H, W] in [0, 1] -> pixel_values [B, 3, crop_h, crop_w], normalised."""
    x = images.float()
    h, w = resized_hw(x.shape[-2], x.shape[-1], spec.size)
    if (h, w) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    x = x.clamp(0, 1)  # bicubic overshoot; the processor's 8-bit round trip clips too
    ch, cw = spec.crop
    top, left = (h - ch) // 2, (w - cw) // 2
    x = x[..., top:top + ch, left:left + cw]
    mean = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _features(out) -> Tensor:
    """transformers >= 5 returns a model output (projected features in pooler_output)."""
    return out if isinstance(out, Tensor) else out.pooler_output


class ClipBackbone:
    """A CLIPModel and its processor, loaded once per (model, processor, device, dtype).

    model / processor: hub ids or local folders (``save_pretrained`` output); processor
    defaults to the model's own. The model runs in eval mode under no_grad."""

    def __init__(self, model: str, processor: str | None = None, dtype: str = "float32",
                 device: str | None = None):
        self.model_id, self.processor_id = model, processor or model
        self.dtype, self.device = resolve_dtype(dtype), device

    def load(self, device: torch.device | str):
        """(CLIPModel, CLIPProcessor) on ``device`` (cached across rewards and calls)."""
        dev = torch.device(self.device or device)
        key = ("clip", self.model_id, self.processor_id, str(dev), self.dtype)
        return cached(key, lambda: self._build(dev))

    def _build(self, device: torch.device):
        from transformers import CLIPModel, CLIPProcessor

        try:
            model = CLIPModel.from_pretrained(self.model_id, dtype=self.dtype)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load the CLIP model {self.model_id!r} ({str(e).splitlines()[0]}): "
                            f"give a hub id or a folder written by save_pretrained in reward.kwargs.model") from None
        try:
            processor = CLIPProcessor.from_pretrained(self.processor_id)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load the CLIP processor {self.processor_id!r} ({str(e).splitlines()[0]}): "
                            f"give a hub id or folder with preprocessor and tokenizer files in "
                            f"reward.kwargs.processor") from None
        return model.requires_grad_(False).eval().to(device), processor

    @torch.no_grad()
    def image_embeds(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] in [0, 1] -> unit-norm embeddings float32 [B, D]."""
        model, processor = self.load(images.device)
        pixels = clip_pixels(images.to(model.device), PixelSpec.of(processor.image_processor))
        e = _features(model.get_image_features(pixel_values=pixels.to(self.dtype))).float()
        return e / e.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def text_embeds(self, prompts: Sequence[str], device: torch.device | str) -> Tensor:
        """B prompts -> unit-norm embeddings float32 [B, D] (tokens truncated to the model's length)."""
        model, processor = self.load(device)
        max_len = model.config.text_config.max_position_embeddings
        tok = processor.tokenizer(list(prompts), padding=True, truncation=True, max_length=max_len,
                                  return_tensors="pt").to(model.device)
        e = _features(model.get_text_features(input_ids=tok.input_ids,
                                              attention_mask=tok.attention_mask)).float()
        return e / e.norm(dim=-1, keepdim=True)

    def logit_scale(self, device: torch.device | str) -> float:
        """exp(logit_scale) of the loaded model (CLIP's learned temperature, 100 when trained)."""
        return float(self.load(device)[0].logit_scale.exp())


def in_batches(fn: Callable[[Tensor, list[str]], Tensor], images: Tensor, prompts: Sequence[str],
               batch_size: int) -> Tensor:
    """fn over slices of at most ``batch_size`` samples, concatenated: float32 [B] on the CPU."""
    if batch_size < 1:
        raise UserError(f"reward.kwargs.batch_size must be >= 1 (got {batch_size})")
    outs = [fn(images[i:i + batch_size], list(prompts[i:i + batch_size]))
            for i in range(0, images.shape[0], batch_size)]
    return torch.cat(outs).float().cpu() if outs else torch.zeros(0)
