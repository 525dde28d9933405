"""Stable Diffusion 3 / 3.5 behind :class:`~tempflow.models.base.FlowModel`.

Wraps a diffusers ``StableDiffusion3Pipeline``. Only the MMDiT transformer is trained (LoRA via
:mod:`tempflow.models.lora`, or all of it); text encoders and VAE are frozen, in eval mode.
Conventions (algorithm.md section 1): sigma = 1 is noise; the transformer gets
timestep = 1000 * sigma, one value per sample; it predicts v = eps - x0.

A FLUX adapter follows the same pattern: its own encode / _forward (packing latents inside
_forward) / decode, the same lora helpers, nothing changed in samplers or the base class.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from tempflow.errors import UserError
from tempflow.models.base import Conditioning, FlowModel
from tempflow.models.lora import (LoraSpec, TransformerAdapterMixin, attach_lora, has_lora,
                                  lora_parameters)

_HINT = ("pass a local diffusers folder of SD3 / SD3.5 (one containing model_index.json, e.g. "
         "made by StableDiffusion3Pipeline.save_pretrained or huggingface-cli download) or a "
         "hub id such as stabilityai/stable-diffusion-3.5-medium")


def _looks_local(path: str) -> bool:
    return path.startswith(("/", ".", "~")) or os.path.exists(path) or "\\" in path


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    """Newer diffusers renamed from_pretrained's ``torch_dtype`` to ``dtype`` (old name warns)."""
    try:
        from diffusers.utils import deprecation_utils
    except ImportError:
        return {"torch_dtype": dtype}
    # diffusers >= 0.36 resolves the new keyword (and has this helper); older ones need torch_dtype
    return {"dtype": dtype} if hasattr(deprecation_utils, "_resolve_dtype") else {"torch_dtype": dtype}


#: the libraries a pipeline's model_index.json may name its components from
SAFE_LIBRARIES = ("diffusers", "transformers", None)


def check_model_index(path: Path) -> None:
    """UserError unless every component of ``path``/model_index.json comes from diffusers or
    transformers: diffusers imports the library a downloaded folder names (older versions
    import any name), and an import runs code."""
    import json

    try:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
        entries = {k: v for k, v in index.items() if not k.startswith("_")}
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"{str(path)!r}: model_index.json is unreadable ({type(e).__name__}); {_HINT}") from None
    for key, value in entries.items():
        library = value[0] if isinstance(value, list) and value else None
        if library not in SAFE_LIBRARIES:
            raise UserError(f"{str(path)!r}: model_index.json names component {key!r} from library "
                            f"{library!r}; tempflow loads components from diffusers and transformers only "
                            f"(importing another library would run its code)")


class SD3Model(TransformerAdapterMixin, FlowModel):
    """SD3 / SD3.5 flow model. Latents [16, res/8, res/8] for the real model.

    Args:
        pipe: a ``StableDiffusion3Pipeline`` (already on its device / dtype).
        resolution: image side in pixels; must be a multiple of vae_scale_factor * patch_size.
        lora: attach a fresh LoRA with this spec (None: no LoRA -> full fine-tuning).
        max_sequence_length: T5 tokens; prompt embeddings are [B, 77 + this, 4096] for SD3.
    """

    def __init__(self, pipe, resolution: int = 512, lora: LoraSpec | None = None,
                 max_sequence_length: int = 256) -> None:
        super().__init__()
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.resolution = int(resolution)
        self.max_sequence_length = int(max_sequence_length)
        self.device = self.transformer.device
        self.dtype = self.transformer.dtype
        multiple = pipe.vae_scale_factor * self.transformer.config.patch_size
        if self.resolution <= 0 or self.resolution % multiple:
            raise UserError(f"resolution must be a positive multiple of {multiple} for this model, "
                            f"got {resolution}")
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3", "vae"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.requires_grad_(False)
                module.eval()
        self.transformer.eval()
        if lora is not None:
            attach_lora(self.transformer, lora)
        elif has_lora(self.transformer):        # e.g. pipe.load_lora_weights(...) beforehand
            self.transformer.requires_grad_(False)
            for p in lora_parameters(self.transformer):
                p.requires_grad_(True)
        else:
            self.transformer.requires_grad_(True)
        self._lora_in_float32()
        self._negative: Conditioning | None = None

    def add_lora(self, spec: LoraSpec) -> None:
        """Attach a fresh LoRA (float32 weights on a bf16 / fp16 base, see _lora_in_float32)."""
        super().add_lora(spec)
        self._lora_in_float32()

    def _lora_in_float32(self) -> None:
        """Keep LoRA weights in float32 whatever the base's dtype (peft casts the layer input to
        them and the sum back to the base's dtype). In fp16 AdamW's eps = 1e-8 rounds to 0, so
        the all-zero first gradient of lora_A (B = 0) gives 0 / 0 = NaN after one step; in bf16
        updates below the weights' 2^-8 resolution are lost."""
        for p in lora_parameters(self.transformer):
            if p.dtype != torch.float32:
                p.data = p.data.float()

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, resolution: int = 512,
                        dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                        lora: LoraSpec | None = None, max_sequence_length: int = 256) -> "SD3Model":
        """Load a StableDiffusion3Pipeline (SD3 or SD3.5) from a local folder or hub id.

        A local path that does not exist, is not a diffusers folder, or fails to load gives
        UserError naming the path and the fix.
        """
        from diffusers import StableDiffusion3Pipeline

        name = str(path_or_hub_id)
        local = _looks_local(name)
        if local:
            path = Path(name).expanduser()
            if not path.is_dir():
                raise UserError(f"model folder {name!r} does not exist; {_HINT}")
            if not (path / "model_index.json").is_file():
                raise UserError(f"{name!r} is not a diffusers model folder (no model_index.json); {_HINT}")
            check_model_index(path)
            name = str(path)
        try:
            # safetensors only: a pickled .bin in a downloaded folder is never unpickled
            pipe = StableDiffusion3Pipeline.from_pretrained(name, use_safetensors=True, **_dtype_kwarg(dtype))
        except Exception as e:
            if local:
                raise UserError(f"could not load an SD3 pipeline from {name!r} ({type(e).__name__}: "
                                f"{e}); {_HINT}") from e
            if isinstance(e, OSError):
                raise UserError(f"could not load {name!r} from the Hugging Face hub ({e}); check the "
                                f"id, your network and login, or {_HINT}") from e
            raise
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device)
        return cls(pipe, resolution=resolution, lora=lora, max_sequence_length=max_sequence_length)

    # ------------------------------------------------------------------ FlowModel
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(in_channels, resolution / vae_scale_factor, same): (16, 64, 64) for SD3 at 512 px."""
        side = self.resolution // self.pipe.vae_scale_factor
        return (self.transformer.config.in_channels, side, side)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """B prompts -> prompt_embeds [B, L, D] and pooled_prompt_embeds [B, P] on self.device.

        All three encoders see the same prompt; L = CLIP length + max_sequence_length.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ValueError("encode_prompts needs at least one prompt")
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=prompts, prompt_3=prompts, device=self.device,
            do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length)
        return Conditioning({"prompt_embeds": embeds, "pooled_prompt_embeds": pooled})

    def encode_negative(self, n: int) -> Conditioning:
        """The empty prompt "" (what the diffusers pipeline uses for CFG), encoded once, batch n."""
        if self._negative is None:
            self._negative = self.encode_prompts([""])
        return self._negative.repeat_interleave(n)

    def _forward(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        """x: [B, C, H, W] (model dtype), sigma: [B] float32 -> velocity [B, C, H, W] (model dtype)."""
        t = cond.tensors
        return self.transformer(
            hidden_states=x,
            encoder_hidden_states=t["prompt_embeds"].to(self.dtype),
            pooled_projections=t["pooled_prompt_embeds"].to(self.dtype),
            timestep=(1000.0 * sigma).to(x.device, torch.float32),
            return_dict=False)[0]

    def decode(self, x: Tensor) -> Tensor:
        """Latents [B, C, h, w] -> images float32 [B, 3, h * f, w * f] in [0, 1].

        Gradient mode is the caller's (wrap in no_grad for rollouts).
        """
        vae = self.pipe.vae
        latents = x.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(latents, return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)
