"""FLUX.2 klein behind :class:`~tempflow.models.base.FlowModel`.

Wraps a diffusers ``Flux2KleinPipeline``. FLUX.2 samples in the VAE's patchified and
batch-normalised space: latents here are that grid [4C, res/16, res/16] (128 channels for the
released models), each cell one transformer token with position id (0, row, col, 0); text
tokens get (0, 0, 0, index). The transformer takes timestep = sigma and predicts v = eps - x0.
Decoding undoes the VAE's batch norm and the 2x2 patchify before the VAE decoder.

Prompts go through the Qwen3 text encoder in its chat template, padded to
``max_sequence_length`` tokens (the pipeline attends to the padding too); the hidden states of
``text_encoder_out_layers`` are concatenated: ``prompt_embeds`` [B, L, 3 * hidden].
Guidance is plain CFG with the empty prompt (the base models; the step-distilled klein models
sample without it, guidance_scale 1). The schedule's shift mu comes from FLUX.2's fit in the
image token count and the number of steps.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tempflow.models.base import Conditioning, FlowModel
from tempflow.models.diffusers_adapter import DiffusersAdapter
from tempflow.models.families import empirical_mu
from tempflow.models.lora import LoraSpec

#: FLUX.2 double-stream attention projections and single-stream fused qkv / output.
FLUX2_ATTENTION_TARGETS: tuple[str, ...] = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")


def token_ids(b: int, h: int, w: int, device) -> Tensor:
    """Image token ids [B, h * w, 4]: (0, row, col, 0) in row-major order."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ids = torch.stack([torch.zeros_like(rows), rows, cols, torch.zeros_like(rows)], -1)
    return ids.reshape(1, h * w, 4).expand(b, -1, -1).to(device)


def tokens(x: Tensor) -> Tensor:
    """[B, C, h, w] -> [B, h * w, C]: one token per latent cell, row-major (the pipeline's packing;
    its ``latents=`` argument takes the grid itself)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h * w).permute(0, 2, 1)


class Flux2KleinModel(DiffusersAdapter, FlowModel):
    """FLUX.2 klein flow model. Latents [4C, res/16, res/16] (e.g. [128, 64, 64] at 1024 px).

    Args:
        pipe: a ``Flux2KleinPipeline`` (on its device / dtype).
        resolution: image side in px, a multiple of 16.
        lora: attach a fresh LoRA (None: none, full fine-tuning unless the pipe has one).
        max_sequence_length: text tokens per prompt (the pipeline's 512).
        text_encoder_out_layers: hidden-state layers concatenated into the prompt embedding.
    """

    family = "flux2klein"

    def __init__(self, pipe, resolution: int = 1024, lora: LoraSpec | None = None,
                 max_sequence_length: int = 512,
                 text_encoder_out_layers: tuple[int, ...] = (9, 18, 27)) -> None:
        super().__init__(pipe, resolution, lora, max_sequence_length, "")
        self.text_encoder_out_layers = tuple(text_encoder_out_layers)

    @property
    def latent_side(self) -> int:
        """Side of the patchified latent grid: resolution / 16 (one token per cell)."""
        return self.resolution // self.pixels_per_token

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(in_channels, res / 16, same): (128, 64, 64) at 1024 px."""
        return (self.transformer.config.in_channels, self.latent_side, self.latent_side)

    def _mu(self, num_steps: int) -> float:
        """FLUX.2's empirical mu for this many image tokens and steps."""
        return empirical_mu(self.image_seq_len, num_steps)

    def _encode(self, prompts: list[str]) -> Conditioning:
        """prompt_embeds [B, max_sequence_length, len(out_layers) * hidden]."""
        embeds, _ = self.pipe.encode_prompt(prompt=list(prompts), device=self.device,
                                            max_sequence_length=self.max_sequence_length,
                                            text_encoder_out_layers=self.text_encoder_out_layers)
        return Conditioning({"prompt_embeds": embeds})

    def _forward(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        """x: [B, C, h, w] (model dtype), sigma: [B] float32 -> velocity [B, C, h, w]."""
        b, c, h, w = x.shape
        embeds = cond.tensors["prompt_embeds"].to(self.dtype)
        txt = torch.zeros(b, embeds.shape[1], 4, dtype=torch.long, device=x.device)
        txt[..., 3] = torch.arange(embeds.shape[1], device=x.device)
        out = self.transformer(
            hidden_states=tokens(x), timestep=sigma.to(x.device, torch.float32),
            guidance=None, encoder_hidden_states=embeds, txt_ids=txt,
            img_ids=token_ids(b, h, w, x.device), return_dict=False)[0]
        return out[:, :h * w].permute(0, 2, 1).reshape(b, c, h, w)

    def _bn(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """The VAE batch norm's running mean and std, [1, C, 1, 1] like ``like``."""
        vae = self.pipe.vae
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
        return mean, std.to(like.device, like.dtype)

    def from_pipeline_latents(self, x: Tensor) -> Tensor:
        """The pipeline's ``output_type="latent"`` (VAE latents [B, C/4, 2h, 2w], denormalised)
        -> this model's normalised, patchified grid [B, C, h, w]."""
        b, c, hh, ww = x.shape
        x = x.view(b, c, hh // 2, 2, ww // 2, 2).permute(0, 1, 3, 5, 2, 4)
        x = x.reshape(b, c * 4, hh // 2, ww // 2)
        mean, std = self._bn(x)
        return (x - mean) / std

    def _decode_latents(self, x: Tensor) -> Tensor:
        """[b, C, h, w] -> VAE image [b, 3, 16 h, 16 w] in [-1, 1]: batch norm undone, 2x2
        unpatchified, decoded."""
        vae = self.pipe.vae
        x = x.to(vae.dtype)
        mean, std = self._bn(x)
        x = x * std + mean
        b, c, h, w = x.shape
        x = x.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, 2 * h, 2 * w)
        return vae.decode(x, return_dict=False)[0]
