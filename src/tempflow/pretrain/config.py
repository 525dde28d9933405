"""Options of `tempflow pretrain` (no heavy imports: the command line reads its defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tempflow.errors import UserError

if TYPE_CHECKING:
    from tempflow.models.shapes_model import ShapesModelConfig


@dataclass
class PretrainConfig:
    """Options of `tempflow pretrain` (validated on construction)."""

    out: str = "runs/shapes-base"
    steps: int = 6000
    batch_size: int = 64
    lr: float = 6e-4
    warmup: int = 300
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    sigma_sampling: str = "uniform"  # or "logit_normal" (SD3's choice for large latents)
    sigma_mean: float = 0.0
    sigma_std: float = 1.0
    """logit_normal: sigma = sigmoid(N(sigma_mean, sigma_std)). SD3 uses (0, 1); a positive mean
    favours high noise, which x0-prediction with a velocity loss needs (the loss weighs the x0
    error by 1 / sigma^2), e.g. (0.8, 0.8) as in Li & He 2025 ("Back to Basics")."""
    grad_clip: float = 1.0
    seed: int = 0
    save_every: int = 500
    model: ShapesModelConfig | None = field(default=None)

    def __post_init__(self):
        for name in ("steps", "batch_size", "save_every"):
            if getattr(self, name) < 1:
                raise UserError(f"pretrain: {name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.caption_dropout < 1:
            raise UserError(f"pretrain: caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if not 0 <= self.ema_decay < 1:
            raise UserError(f"pretrain: ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.sigma_sampling not in ("uniform", "logit_normal"):
            raise UserError(f"pretrain: sigma_sampling must be 'uniform' or 'logit_normal', "
                            f"got {self.sigma_sampling!r}")
        if not self.sigma_std > 0:
            raise UserError(f"pretrain: sigma_std must be > 0, got {self.sigma_std}")
        if self.lr <= 0:
            raise UserError(f"pretrain: lr must be > 0, got {self.lr}")
