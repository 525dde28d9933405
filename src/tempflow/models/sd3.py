"""Stable Diffusion 3 / 3.5 behind :class:`~tempflow.models.base.FlowModel`.

Wraps a diffusers ``StableDiffusion3Pipeline``. Only the MMDiT transformer is trained (LoRA via
:mod:`tempflow.models.lora`, or all of it); text encoders and VAE are frozen, in eval mode.
Conventions (algorithm.md section 1): sigma = 1 is noise; the transformer gets
timestep = 1000 * sigma, one value per sample; it predicts v = eps - x0.

The other families (flux.py, qwenimage.py, ...) share the same base,
:class:`~tempflow.models.diffusers_adapter.DiffusersAdapter`: prompt cache, freezing, chunked
decoding; each writes its own encode / _forward / decode.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from tempflow.errors import UserError
from tempflow.models.base import Conditioning, FlowModel
from tempflow.models.diffusers_adapter import DiffusersAdapter
from tempflow.models.lora import LoraSpec

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


class SD3Model(DiffusersAdapter, FlowModel):
    """SD3 / SD3.5 flow model. Latents [16, res/8, res/8] for the real model.

    Args:
        pipe: a ``StableDiffusion3Pipeline`` (already on its device / dtype).
        resolution: image side in pixels; must be a multiple of vae_scale_factor * patch_size.
        lora: attach a fresh LoRA with this spec (None: no LoRA -> full fine-tuning).
        max_sequence_length: T5 tokens; prompt embeddings are [B, 77 + this, 4096] for SD3.
    """

    family = "sd3"
    text_modules = ("text_encoder", "text_encoder_2", "text_encoder_3")

    def __init__(self, pipe, resolution: int = 512, lora: LoraSpec | None = None,
                 max_sequence_length: int = 256) -> None:
        super().__init__(pipe, resolution, lora, max_sequence_length)

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

    def schedule(self, num_steps: int) -> Tensor:
        """SD3's sigmas [num_steps + 1]: a fixed shift (the scheduler config's, 3.0) over the
        scheduler's own grid, i.e. :func:`tempflow.sampling.flow_sigmas`."""
        from tempflow.sampling.schedule import flow_sigmas

        return flow_sigmas(num_steps, float(self.pipe.scheduler.config.shift))

    def _encode(self, prompts: list[str]) -> Conditioning:
        """B prompts -> prompt_embeds [B, L, D] and pooled_prompt_embeds [B, P] on self.device.

        All three encoders see the same prompt; L = CLIP length + max_sequence_length.
        """
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=prompts, prompt_3=prompts, device=self.device,
            do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length)
        return Conditioning({"prompt_embeds": embeds, "pooled_prompt_embeds": pooled})

    def _forward(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        """x: [B, C, H, W] (model dtype), sigma: [B] float32 -> velocity [B, C, H, W] (model dtype)."""
        t = cond.tensors
        return self.transformer(
            hidden_states=x,
            encoder_hidden_states=t["prompt_embeds"].to(self.dtype),
            pooled_projections=t["pooled_prompt_embeds"].to(self.dtype),
            timestep=(1000.0 * sigma).to(x.device, torch.float32),
            return_dict=False)[0]

    def _decode_latents(self, x: Tensor) -> Tensor:
        """Latents [b, C, h, w] -> VAE image [b, 3, h * f, w * f] in [-1, 1]."""
        vae = self.pipe.vae
        latents = x.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        return vae.decode(latents, return_dict=False)[0]
