"""FLUX.1 (dev, schnell) behind :class:`~tempflow.models.base.FlowModel`.

Wraps a diffusers ``FluxPipeline``. Latents are the VAE grid [16, res/8, res/8]; the transformer
sees them packed into 2x2 patches, [B, (h/2)(w/2), 64] tokens with (0, row, col) position ids,
and returns packed velocities, unpacked here. The transformer takes timestep = sigma (the
pipeline passes t / 1000) and predicts v = eps - x0, the project's convention.

Guidance: FLUX.1-dev is guidance-distilled: ``guidance`` (3.5 by default) is an input of every
call, not CFG. True CFG with a negative prompt is the ``guidance_scale`` of
:meth:`FlowModel.velocity` (off at 1, as in the pipeline; ``negative_prompt`` is its negative),
exactly the pipeline's ``true_cfg_scale``. Prompts go through CLIP (pooled [B, 768]) and T5
(tokens [B, max_sequence_length, 4096]).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tempflow.models.base import Conditioning, FlowModel
from tempflow.models.diffusers_adapter import DiffusersAdapter
from tempflow.models.lora import LoraSpec

#: FLUX.1 double- and single-stream attention projections (Flow-GRPO's FLUX LoRA targets).
FLUX_ATTENTION_TARGETS: tuple[str, ...] = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")


def pack(x: Tensor) -> Tensor:
    """[B, C, h, w] -> [B, (h/2)(w/2), 4C]: 2x2 patches as tokens, row-major (FluxPipeline's)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(x: Tensor, h: int, w: int) -> Tensor:
    """Inverse of :func:`pack`: [B, (h/2)(w/2), 4C] -> [B, C, h, w]."""
    b, _, d = x.shape
    x = x.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, h, w)


def position_ids(h: int, w: int, device, dtype) -> Tensor:
    """Image token ids [(h/2)(w/2), 3]: (0, row, col) of each 2x2 patch."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxModel(DiffusersAdapter, FlowModel):
    """FLUX.1 flow model. Latents [16, res/8, res/8] (e.g. [16, 128, 128] at 1024 px).

    Args:
        pipe: a ``FluxPipeline`` (on its device / dtype).
        resolution: image side in px, a multiple of 16.
        lora: attach a fresh LoRA (None: none, full fine-tuning unless the pipe has one).
        max_sequence_length: T5 tokens (512 for dev, 256 for schnell).
        guidance: distilled guidance fed to the transformer (ignored by schnell, which has no
            guidance embedding).
        negative_prompt: negative of true CFG (used when velocity's guidance_scale > 1).
    """

    family = "flux"
    text_modules = ("text_encoder", "text_encoder_2")

    def __init__(self, pipe, resolution: int = 1024, lora: LoraSpec | None = None,
                 max_sequence_length: int = 512, guidance: float = 3.5,
                 negative_prompt: str = "") -> None:
        super().__init__(pipe, resolution, lora, max_sequence_length, negative_prompt)
        self.guidance = float(guidance)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(in_channels / 4, res / vae_scale_factor, same): (16, 128, 128) at 1024 px."""
        return (self.transformer.config.in_channels // 4, self.latent_side, self.latent_side)

    def _encode(self, prompts: list[str]) -> Conditioning:
        """prompt_embeds [B, L, D] (T5) and pooled_prompt_embeds [B, P] (CLIP)."""
        embeds, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=prompts, device=self.device,
            max_sequence_length=self.max_sequence_length)
        return Conditioning({"prompt_embeds": embeds, "pooled_prompt_embeds": pooled})

    def _forward(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        """x: [B, C, h, w] (model dtype), sigma: [B] float32 -> velocity [B, C, h, w]."""
        b, _, h, w = x.shape
        t = cond.tensors
        embeds = t["prompt_embeds"].to(self.dtype)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((b,), self.guidance, device=x.device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=pack(x), timestep=sigma.to(x.device, torch.float32), guidance=guidance,
            pooled_projections=t["pooled_prompt_embeds"].to(self.dtype),
            encoder_hidden_states=embeds,
            txt_ids=torch.zeros(embeds.shape[1], 3, device=x.device, dtype=self.dtype),
            img_ids=position_ids(h, w, x.device, self.dtype), return_dict=False)[0]
        return unpack(out, h, w)

    def to_pipeline_latents(self, x: Tensor) -> Tensor:
        """[B, C, h, w] -> packed [B, (h/2)(w/2), 4C], FluxPipeline's ``latents``."""
        return pack(x)

    def from_pipeline_latents(self, x: Tensor) -> Tensor:
        """Packed [B, (h/2)(w/2), 4C] -> [B, C, h, w] (this model's latent grid)."""
        return unpack(x, self.latent_side, self.latent_side)

    def _decode_latents(self, x: Tensor) -> Tensor:
        """[b, C, h, w] -> VAE image [b, 3, H, W] in [-1, 1] (FLUX scaling and shift)."""
        vae = self.pipe.vae
        latents = x.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        return vae.decode(latents, return_dict=False)[0]
