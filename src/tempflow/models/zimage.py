"""Z-Image behind :class:`~tempflow.models.base.FlowModel`.

Wraps a diffusers ``ZImagePipeline`` (Z-Image, Z-Image-Turbo). Latents are the VAE grid
[16, res/8, res/8]; the single-stream transformer takes a list of [C, 1, h, w] latents and a
list of caption features and patchifies inside.

Time convention: Z-Image's transformer runs on t = 1 - sigma (t = 1 is data) and predicts
x0 - eps; the adapter passes 1 - sigma and negates the output, so the velocity is the
project's v = eps - x0 at sigma (sigma = 1 is noise), exactly as the pipeline does.

Guidance: the pipeline's ``guidance_scale`` g means v_c + g (v_c - v_u), i.e. the project's CFG
scale g + 1 (the pipeline's default 5.0 is 6.0 here; Z-Image-Turbo's 0.0 is 1.0, off). Prompts
go through the Qwen3 text encoder in its chat template; the hidden states of each prompt's
tokens (second-to-last layer) are padded here to ``max_sequence_length`` with a mask
(``prompt_embeds`` [B, L, 2560], ``prompt_embeds_mask`` [B, L]) and unpadded per call.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tempflow.models.base import Conditioning, FlowModel
from tempflow.models.diffusers_adapter import DiffusersAdapter, pad_tokens
from tempflow.models.families import BY_NAME
from tempflow.models.lora import LoraSpec

#: attention projections of Z-Image's main, noise-refiner and context-refiner blocks
ZIMAGE_ATTENTION_TARGETS: tuple[str, ...] = (
    "attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0")


class ZImageModel(DiffusersAdapter, FlowModel):
    """Z-Image flow model. Latents [16, res/8, res/8] (e.g. [16, 128, 128] at 1024 px).

    Args:
        pipe: a ``ZImagePipeline`` (on its device / dtype).
        resolution: image side in px, a multiple of 16.
        lora: attach a fresh LoRA (None: none, full fine-tuning unless the pipe has one).
        max_sequence_length: text tokens kept per prompt (the pipeline's 512).
        negative_prompt: the unconditional prompt of CFG ("" as in the pipeline).
    """

    family = "zimage"

    def __init__(self, pipe, resolution: int = 1024, lora: LoraSpec | None = None,
                 max_sequence_length: int = 512, negative_prompt: str = "") -> None:
        super().__init__(pipe, resolution, lora, max_sequence_length, negative_prompt)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(in_channels, res / vae_scale_factor, same): (16, 128, 128) at 1024 px."""
        return (self.transformer.config.in_channels, self.latent_side, self.latent_side)

    @property
    def image_seq_len(self) -> int:
        """Image tokens: (latent side / 2)^2, the pipeline's count for its shift."""
        return (self.latent_side // BY_NAME[self.family].patch) ** 2

    def _encode(self, prompts: list[str]) -> Conditioning:
        """prompt_embeds [B, max_sequence_length, D] and prompt_embeds_mask [B, same]."""
        embeds = self.pipe._encode_prompt(list(prompts), device=self.device,  # it edits the list
                                          max_sequence_length=self.max_sequence_length)
        length = max(e.shape[0] for e in embeds)
        rows = [torch.cat([e, e.new_zeros(length - e.shape[0], e.shape[1])]) for e in embeds]
        mask = torch.tensor([[1] * e.shape[0] + [0] * (length - e.shape[0]) for e in embeds],
                            dtype=torch.long, device=embeds[0].device)
        padded, mask = pad_tokens(torch.stack(rows), mask, self.max_sequence_length)
        return Conditioning({"prompt_embeds": padded, "prompt_embeds_mask": mask})

    def _forward(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        """x: [B, C, h, w] (model dtype), sigma: [B] float32 -> velocity [B, C, h, w]."""
        embeds, mask = cond.tensors["prompt_embeds"].to(self.dtype), cond.tensors["prompt_embeds_mask"]
        captions = [e[m.bool()] for e, m in zip(embeds, mask)]
        out = self.transformer(list(x.unsqueeze(2).unbind(0)), (1.0 - sigma).to(x.device),
                               captions, return_dict=False)[0]
        return -torch.stack(out).squeeze(2)

    def _decode_latents(self, x: Tensor) -> Tensor:
        """[b, C, h, w] -> VAE image [b, 3, H, W] in [-1, 1] (Z-Image scaling and shift)."""
        vae = self.pipe.vae
        latents = x.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        return vae.decode(latents, return_dict=False)[0]
