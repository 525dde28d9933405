"""Qwen-Image behind :class:`~tempflow.models.base.FlowModel`.

Wraps a diffusers ``QwenImagePipeline``. Latents are the VAE grid [16, res/8, res/8] (one
frame of its video VAE); the transformer sees 2x2-packed tokens, as FLUX's, takes
timestep = sigma and predicts v = eps - x0.

Prompts go through the Qwen2.5-VL text encoder in the pipeline's template; its hidden states
have one length per prompt, so they are padded here to ``max_sequence_length`` with a mask
(``prompt_embeds`` [B, L, 3584], ``prompt_embeds_mask`` [B, L]) and cut back to the batch's
longest prompt before each call, as the pipeline pads. Guidance is true CFG with a negative
prompt (" " by default, the model card's) and the pipeline's rescaling: each token's guided
velocity is scaled back to the norm of its conditional one (:meth:`guide`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tempflow.models.base import Conditioning, FlowModel
from tempflow.models.diffusers_adapter import DiffusersAdapter, pad_tokens
from tempflow.models.flux import pack, unpack
from tempflow.models.lora import LoraSpec

#: Qwen-Image MMDiT attention projections: image stream q, k, v, out and text stream q, k, v, out.
QWENIMAGE_ATTENTION_TARGETS: tuple[str, ...] = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")


class QwenImageModel(DiffusersAdapter, FlowModel):
    """Qwen-Image flow model. Latents [16, res/8, res/8] (e.g. [16, 64, 64] at 512 px).

    Args:
        pipe: a ``QwenImagePipeline`` (on its device / dtype).
        resolution: image side in px, a multiple of 16.
        lora: attach a fresh LoRA (None: none, full fine-tuning unless the pipe has one).
        max_sequence_length: text tokens kept per prompt (the pipeline's 512).
        negative_prompt: negative of true CFG.
    """

    family = "qwenimage"

    def __init__(self, pipe, resolution: int = 512, lora: LoraSpec | None = None,
                 max_sequence_length: int = 512, negative_prompt: str = " ") -> None:
        super().__init__(pipe, resolution, lora, max_sequence_length, negative_prompt)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(in_channels / 4, res / vae_scale_factor, same): (16, 64, 64) at 512 px."""
        return (self.transformer.config.in_channels // 4, self.latent_side, self.latent_side)

    def _encode(self, prompts: list[str]) -> Conditioning:
        """prompt_embeds [B, max_sequence_length, D] and its mask [B, max_sequence_length]."""
        embeds, mask = self.pipe.encode_prompt(prompt=prompts, device=self.device,
                                               max_sequence_length=self.max_sequence_length)
        if mask is None:  # the pipeline drops an all-ones mask
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        embeds, mask = pad_tokens(embeds, mask, self.max_sequence_length)
        return Conditioning({"prompt_embeds": embeds, "prompt_embeds_mask": mask})

    def _forward(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        """x: [B, C, h, w] (model dtype), sigma: [B] float32 -> velocity [B, C, h, w]."""
        b, _, h, w = x.shape
        mask = cond.tensors["prompt_embeds_mask"]
        length = int(mask.sum(1).max())                  # padding is on the right
        out = self.transformer(
            hidden_states=pack(x), timestep=sigma.to(x.device, torch.float32),
            encoder_hidden_states=cond.tensors["prompt_embeds"][:, :length].to(self.dtype),
            encoder_hidden_states_mask=mask[:, :length],
            img_shapes=[[(1, h // 2, w // 2)]] * b, return_dict=False)[0]
        return unpack(out, h, w)

    def guide(self, v_u: Tensor, v_c: Tensor, guidance_scale: float) -> Tensor:
        """True CFG rescaled per token: v = comb * |v_c| / |comb| with comb = v_u + g (v_c - v_u),
        norms over each packed token's 4C values (QwenImagePipeline). [B, C, h, w] float32."""
        h, w = v_c.shape[-2:]
        cond, comb = pack(v_c), pack(v_u + guidance_scale * (v_c - v_u))
        scale = cond.norm(dim=-1, keepdim=True) / comb.norm(dim=-1, keepdim=True)
        return unpack(comb * scale, h, w)

    def to_pipeline_latents(self, x: Tensor) -> Tensor:
        """[B, C, h, w] -> packed [B, (h/2)(w/2), 4C], QwenImagePipeline's ``latents``."""
        return pack(x)

    def from_pipeline_latents(self, x: Tensor) -> Tensor:
        """Packed [B, (h/2)(w/2), 4C] -> [B, C, h, w]."""
        return unpack(x, self.latent_side, self.latent_side)

    def _decode_latents(self, x: Tensor) -> Tensor:
        """[b, C, h, w] -> VAE image [b, 3, H, W] in [-1, 1]: un-normalised with the VAE's
        per-channel latents_mean / latents_std, decoded as one frame."""
        vae = self.pipe.vae
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean, device=x.device, dtype=vae.dtype).view(shape)
        std = torch.tensor(vae.config.latents_std, device=x.device, dtype=vae.dtype).view(shape)
        latents = x.to(vae.dtype).unsqueeze(2) * std + mean
        return vae.decode(latents, return_dict=False)[0][:, :, 0]
