"""The built-in demo model: a small pixel-space text-to-image flow model for the shapes world.

The denoiser is diffusers' ``SD3Transformer2DModel`` (the same class as in SD3.5, with LoRA on
the same attention projections), run directly on RGB pixels scaled to [-1, 1], conditioned on
a small word-level text encoder. Checkpoints are folders with ``config.json`` and
``model.safetensors``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from diffusers import SD3Transformer2DModel
from safetensors.torch import load_file, save_file
from torch import Tensor

from tempflow.errors import UserError
from tempflow.models.base import Conditioning, FlowModel
from tempflow.models.lora import TransformerAdapterMixin
from tempflow.models.text_encoder import WordTextEncoder, WordTokenizer

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
X0_SIGMA_MIN = 0.05
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "shapes-base"


@dataclass
class ShapesModelConfig:
    """Architecture of :class:`ShapesModel` (stored in the checkpoint's config.json)."""

    vocab: list[str] = field(default_factory=list)
    resolution: int = 32
    patch_size: int = 4
    num_layers: int = 6
    num_heads: int = 4
    head_dim: int = 32
    text_dim: int = 128
    text_layers: int = 2
    max_length: int = 10
    prediction: str = "x0"
    """What the transformer outputs: "x0" (the clean image; v = (x - x0) / max(sigma, 0.05))
    or "velocity". Small pixel-space models learn x0 far more easily: predicting v at high
    noise means reproducing the input noise exactly, and the residue shows as scattered patches."""

    def __post_init__(self):
        for name in ("resolution", "patch_size", "num_layers", "num_heads", "head_dim",
                     "text_dim", "text_layers", "max_length"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ShapesModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.resolution % self.patch_size:
            raise ValueError(f"resolution {self.resolution} must be a multiple of patch_size {self.patch_size}")
        if self.prediction not in ("x0", "velocity"):
            raise ValueError(f"ShapesModelConfig.prediction must be 'x0' or 'velocity', got {self.prediction!r}")
        if not self.vocab:
            raise ValueError("ShapesModelConfig.vocab must list the prompt words")


class ShapesModel(TransformerAdapterMixin, FlowModel):
    """Pixel-space flow model: x is an RGB image in [-1, 1], latent_shape (3, R, R)."""

    family = "shapes"  # recorded in saved LoRAs (models/base_check.py)

    def __init__(self, config: ShapesModelConfig, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = config
        self.device, self.dtype = torch.device(device), dtype
        self.tokenizer = WordTokenizer(config.vocab, config.max_length)
        hidden = config.num_heads * config.head_dim
        self.transformer = SD3Transformer2DModel(
            sample_size=config.resolution, patch_size=config.patch_size, in_channels=3,
            out_channels=3, num_layers=config.num_layers, attention_head_dim=config.head_dim,
            num_attention_heads=config.num_heads, joint_attention_dim=config.text_dim,
            caption_projection_dim=hidden, pooled_projection_dim=config.text_dim,
            pos_embed_max_size=config.resolution // config.patch_size,
        ).to(self.device)
        self.text_encoder = WordTextEncoder(len(self.tokenizer), config.max_length, config.text_dim,
                                            config.text_layers, num_heads=4).to(self.device)
        if dtype != torch.float32:
            self.transformer.to(dtype)
            self.text_encoder.to(dtype)
        self._negative: Conditioning | None = None

    # ------------------------------------------------------------------ interface
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (3, self.config.resolution, self.config.resolution)

    def encode_prompts(self, prompts: Sequence[str], grad: bool = False) -> Conditioning:
        """prompts -> Conditioning(prompt_embeds [B, L, text_dim], pooled_prompt_embeds [B, text_dim])."""
        ids = self.tokenizer(list(prompts)).to(self.device)
        with torch.set_grad_enabled(grad):
            tokens, pooled = self.text_encoder(ids)
        return Conditioning({"prompt_embeds": tokens, "pooled_prompt_embeds": pooled})

    def encode_negative(self, n: int) -> Conditioning:
        if self._negative is None:
            self._negative = self.encode_prompts([""])
        return self._negative.repeat_interleave(n)

    def _forward(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        out = self.transformer(
            hidden_states=x, encoder_hidden_states=cond.tensors["prompt_embeds"].to(self.dtype),
            pooled_projections=cond.tensors["pooled_prompt_embeds"].to(self.dtype),
            timestep=(1000.0 * sigma).to(self.dtype), return_dict=False)[0]
        if self.config.prediction == "velocity":
            return out
        # x = (1 - sigma) x0 + sigma eps  =>  v = eps - x0 = (x - x0) / sigma (denominator
        # clamped as in "Back to Basics: Let Denoising Generative Models Denoise", Li & He 2025)
        s = sigma.float().clamp(min=X0_SIGMA_MIN).view(-1, *([1] * (x.ndim - 1)))
        return (x.float() - out.float()) / s

    def decode(self, x: Tensor) -> Tensor:
        """Pixels in [-1, 1] -> images in [0, 1]: float32 [B, 3, R, R]."""
        return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    @staticmethod
    def encode_images(images: Tensor) -> Tensor:
        """Images in [0, 1] [B, 3, R, R] -> model space x0 in [-1, 1]."""
        return images.float() * 2.0 - 1.0

    def invalidate_cache(self) -> None:
        """Forget cached encodings (call after the text encoder's weights change)."""
        self._negative = None

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Tensor]:
        sd = {f"transformer.{k}": v for k, v in self.transformer.state_dict().items()}
        sd.update({f"text_encoder.{k}": v for k, v in self.text_encoder.state_dict().items()})
        return sd

    def load_state_dict(self, sd: dict[str, Tensor], source: str = "state dict") -> None:
        ours = self.state_dict()
        missing = sorted(set(ours) - set(sd))
        unexpected = sorted(set(sd) - set(ours))
        bad = [k for k in ours if k in sd and sd[k].shape != ours[k].shape]
        if missing or unexpected or bad:
            what = (f"missing {missing[:3]}" if missing else
                    f"unexpected {unexpected[:3]}" if unexpected else f"shape mismatch in {bad[:3]}")
            raise UserError(f"{source} does not match the model architecture ({what}); use a "
                            f"checkpoint saved by this model's config")
        self.transformer.load_state_dict({k[12:]: v for k, v in sd.items() if k.startswith("transformer.")})
        self.text_encoder.load_state_dict({k[13:]: v for k, v in sd.items() if k.startswith("text_encoder.")})
        self.invalidate_cache()

    def save_pretrained(self, path: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` into folder ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=1) + "\n")
        save_file({k: v.detach().float().contiguous().cpu() for k, v in self.state_dict().items()},
                  str(path / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> "ShapesModel":
        """Load a checkpoint folder (default: the shipped base model)."""
        path = Path(path) if path is not None else DEFAULT_CHECKPOINT
        cfg_file, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
        if not path.is_dir():
            raise UserError(f"checkpoint folder {str(path)!r} not found (give a folder holding "
                            f"{CONFIG_NAME} and {WEIGHTS_NAME}, e.g. one written by `tempflow pretrain`)")
        for f in (cfg_file, weights):
            if not f.is_file():
                raise UserError(f"checkpoint file {str(f)!r} is missing (the folder must hold "
                                f"{CONFIG_NAME} and {WEIGHTS_NAME} written by `tempflow pretrain`)")
        try:
            config = ShapesModelConfig(**json.loads(cfg_file.read_text()))
        except (ValueError, TypeError) as e:
            raise UserError(f"{cfg_file}: not a valid shapes model config ({e}); re-create the "
                            f"checkpoint with `tempflow pretrain`") from None
        try:
            sd = load_file(str(weights))
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise UserError(f"{weights}: unreadable weights ({e}); re-create the checkpoint "
                            f"with `tempflow pretrain`") from None
        model = cls(config, device=device, dtype=dtype)
        model.load_state_dict(sd, source=str(weights))
        model.transformer.eval()
        model.text_encoder.eval().requires_grad_(False)
        return model
