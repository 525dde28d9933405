"""What every diffusers-pipeline adapter shares: loading a folder, freezing the frozen parts,
float32 LoRA weights, the prompt-embedding cache, dropping text encoders, chunked decoding and
the pipeline's own sampling schedule.

A family adapter (flux.py, qwenimage.py, ...) subclasses :class:`DiffusersAdapter` and writes
only what differs: ``_encode`` (prompts -> Conditioning), ``_forward`` (one transformer call,
latents packed or reshaped inside), ``_decode_latents`` and the schedule's ``_mu``.
Latents are always the VAE's unpacked grid [B, C, h, w]; packing is an adapter detail.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Sequence

import torch
from torch import Tensor

from tempflow.errors import UserError
from tempflow.models.base import Conditioning
from tempflow.models.families import BY_NAME, calculate_mu, scheduler_sigmas
from tempflow.models.lora import LoraSpec, TransformerAdapterMixin, attach_lora, has_lora, lora_parameters


class DiffusersAdapter(TransformerAdapterMixin):
    """Base of the FLUX / Qwen-Image / Z-Image / FLUX.2 adapters (mixed in before FlowModel).

    Attributes:
        family: name in :data:`tempflow.models.families.BY_NAME`.
        text_modules: pipeline attributes holding text encoders (frozen; dropped by
            :meth:`drop_text_encoders`).
        decode_chunk: samples per VAE call in :meth:`decode` (bounds decoder activations).
    """

    family: ClassVar[str] = ""
    text_modules: ClassVar[tuple[str, ...]] = ("text_encoder",)
    decode_chunk: int = 8

    def __init__(self, pipe, resolution: int, lora: LoraSpec | None = None,
                 max_sequence_length: int = 512, negative_prompt: str = "") -> None:
        super().__init__()
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.resolution = int(resolution)
        self.max_sequence_length = int(max_sequence_length)
        self.negative_prompt = negative_prompt
        self.device = self.transformer.device
        self.dtype = self.transformer.dtype
        multiple = self.pixels_per_token
        if self.resolution <= 0 or self.resolution % multiple:
            raise UserError(f"resolution must be a positive multiple of {multiple} for this model, "
                            f"got {resolution}")
        for name in (*self.text_modules, "vae"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.requires_grad_(False)
                module.eval()
        self.transformer.eval()
        if lora is not None:
            attach_lora(self.transformer, lora)
        elif has_lora(self.transformer):        # pipe.load_lora_weights(...) beforehand
            self.transformer.requires_grad_(False)
            for p in lora_parameters(self.transformer):
                p.requires_grad_(True)
        else:
            self.transformer.requires_grad_(True)
        self._lora_in_float32()
        self._cache: dict[str, Conditioning] = {}
        self._negative: Conditioning | None = None
        self._text_dropped = False

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, resolution: int = 512,
                        dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                        lora: LoraSpec | None = None, **kwargs) -> "DiffusersAdapter":
        """Load this family's pipeline (safetensors only) from a local folder or hub id."""
        import diffusers

        from tempflow.models.sd3 import _dtype_kwarg, _looks_local, check_model_index

        fam = BY_NAME[cls.family]
        name = str(path_or_hub_id)
        local = _looks_local(name)
        if local:
            path = Path(name).expanduser()
            if not (path / "model_index.json").is_file():
                raise UserError(f"{name!r} is not a diffusers model folder (no model_index.json)")
            check_model_index(path)
            name = str(path)
        try:
            pipe = getattr(diffusers, fam.pipeline).from_pretrained(
                name, use_safetensors=True, **_dtype_kwarg(dtype))
        except Exception as e:
            where = "folder" if local else "the Hugging Face hub (check id, network and login)"
            raise UserError(f"could not load a {fam.pipeline} from {where} {name!r} "
                            f"({type(e).__name__}: {e})") from e
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device)
        return cls(pipe, resolution=resolution, lora=lora, **kwargs)

    def add_lora(self, spec: LoraSpec) -> None:
        """Attach a fresh LoRA (float32 weights on a bf16 / fp16 base)."""
        super().add_lora(spec)
        self._lora_in_float32()

    def _lora_in_float32(self) -> None:
        """LoRA weights stay float32 whatever the base's dtype (see SD3Model._lora_in_float32)."""
        for p in lora_parameters(self.transformer):
            if p.dtype != torch.float32:
                p.data = p.data.float()

    # ----------------------------------------------------------------- geometry
    @property
    def pixels_per_token(self) -> int:
        """Image pixels per side of one transformer token: VAE factor x patch (16 for FLUX)."""
        fam = BY_NAME[self.family]
        return int(getattr(self.pipe, "vae_scale_factor", fam.vae_factor)) * fam.patch

    @property
    def latent_side(self) -> int:
        """Side of the unpacked latent grid: resolution / VAE factor."""
        return self.resolution * BY_NAME[self.family].patch // self.pixels_per_token

    @property
    def image_seq_len(self) -> int:
        """Image tokens the transformer sees: (resolution / pixels_per_token)^2."""
        return (self.resolution // self.pixels_per_token) ** 2

    # ----------------------------------------------------------------- schedule
    def _mu(self, num_steps: int) -> float:
        """mu of the dynamic shift at this resolution (FLUX.1, Qwen-Image, Z-Image)."""
        return calculate_mu(self.image_seq_len, dict(self.pipe.scheduler.config))

    def schedule(self, num_steps: int) -> Tensor:
        """The sigmas [num_steps + 1] (float32, 1 -> 0) this family's pipeline samples with at
        ``self.resolution``, from the loaded scheduler config: linspace(1, 1 / T, T) shifted."""
        base = torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64).float()
        return scheduler_sigmas(dict(self.pipe.scheduler.config), base, self._mu(num_steps))

    # ----------------------------------------------------------------- prompts
    def _encode(self, prompts: list[str]) -> Conditioning:
        """Encode prompts with the pipeline's text encoder(s); batch len(prompts)."""
        raise NotImplementedError

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """B prompts -> Conditioning of batch B; each distinct prompt is encoded once and cached
        (so a prompt set is encoded once per run, and the encoders may then be dropped)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("encode_prompts needs at least one prompt")
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            if self._text_dropped:
                raise UserError(f"prompt {missing[0]!r} was not encoded before the text encoders "
                                f"were dropped; encode every prompt first")
            cond = self._encode(missing)
            for i, p in enumerate(missing):
                self._cache[p] = cond[i]
        return Conditioning.cat([self._cache[p] for p in prompts])

    def encode_negative(self, n: int) -> Conditioning:
        """The negative prompt (``negative_prompt``, "" by default) encoded once, batch n."""
        if self._negative is None:
            self._negative = self.encode_prompts([self.negative_prompt])
        return self._negative.repeat_interleave(n)

    def drop_text_encoders(self) -> None:
        """Free the text encoders once every prompt (and the negative one) is cached."""
        self.encode_negative(1)
        for name in self.text_modules:
            if getattr(self.pipe, name, None) is not None:
                setattr(self.pipe, name, None)
        self._text_dropped = True

    # ----------------------------------------------------------------- pipeline layout
    def to_pipeline_latents(self, x: Tensor) -> Tensor:
        """[B, C, h, w] -> the layout the pipeline's ``latents=`` takes (identity here)."""
        return x

    def from_pipeline_latents(self, x: Tensor) -> Tensor:
        """The pipeline's latents (``output_type="latent"``) -> [B, C, h, w] (identity here)."""
        return x

    # ----------------------------------------------------------------- images
    def _decode_latents(self, x: Tensor) -> Tensor:
        """Latents [b, C, h, w] -> VAE output in [-1, 1], [b, 3, H, W]."""
        raise NotImplementedError

    def decode(self, x: Tensor) -> Tensor:
        """Latents [B, C, h, w] -> images float32 [B, 3, H, W] in [0, 1], ``decode_chunk``
        samples per VAE call. Gradient mode is the caller's."""
        images = [self._decode_latents(c) for c in x.split(self.decode_chunk)]
        return (torch.cat(images).float() / 2 + 0.5).clamp(0, 1)


def pad_tokens(embeds: Tensor, mask: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Right-pad (or cut) [B, L, D] embeddings and their [B, L] mask to ``length`` tokens, so
    conditionings of different prompts concatenate; padded tokens are masked out."""
    b, n, d = embeds.shape
    if n >= length:
        return embeds[:, :length], mask[:, :length]
    pad = length - n
    return (torch.cat([embeds, embeds.new_zeros(b, pad, d)], 1),
            torch.cat([mask, mask.new_zeros(b, pad)], 1))
