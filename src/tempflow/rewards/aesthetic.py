"""The LAION aesthetic predictor v2: a CLIP ViT-L/14 image embedding (unit norm) into a small
MLP trained on SAC + LOGOS + AVA ratings (Schuhmann 2022, "improved-aesthetic-predictor"),
as used by DDPO. Scores are on the 1-10 rating scale (about 5-6.5 for SD images)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from tempflow.errors import UserError
from tempflow.rewards.clip_backbone import ClipBackbone, cached, in_batches
from tempflow.rewards.registry import Reward, register

DEFAULT_HEAD = "trl-lib/ddpo-aesthetic-predictor/sac+logos+ava1-l14-linearMSE.pth"


class AestheticMLP(nn.Module):
    """embedding [B, D] -> rating [B, 1]; layer names match the released state dict."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, embed: Tensor) -> Tensor:
        return self.layers(embed)


def head_file(head: str) -> Path:
    """A local file, or 'owner/repo/filename' fetched with huggingface_hub (cached there)."""
    p = Path(head).expanduser()
    if p.is_file():
        return p
    parts = head.split("/")
    if len(parts) < 3:
        raise UserError(f"aesthetic head {head!r} is neither a file nor 'owner/repo/filename' "
                        f"(set reward.kwargs.head)")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:])))
    except Exception as e:  # offline, missing file, no access: one line with the fix
        raise UserError(f"cannot fetch the aesthetic head {head!r} ({type(e).__name__}): give a local "
                        f".pth or .safetensors file in reward.kwargs.head") from None


def load_head(head: str, dim: int, device: torch.device, dtype: torch.dtype) -> AestheticMLP:
    """The MLP with weights from a .pth / .bin (torch state dict) or .safetensors file."""
    path = head_file(head)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:  # weights only: a pickle that would run code is refused
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors / torch raise their own types for bad files
        raise UserError(f"aesthetic head {head!r} cannot be read as weights ({type(e).__name__}); give "
                        f"a .safetensors or weights-only .pth state dict in reward.kwargs.head") from None
    mlp = AestheticMLP(dim)
    try:
        mlp.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"aesthetic head {head!r} does not fit a {dim}-d CLIP embedding "
                        f"({str(e).splitlines()[0]}); use the head trained for this CLIP model") from None
    return mlp.requires_grad_(False).eval().to(device=device, dtype=dtype)


@register("aesthetic")
def aesthetic(model: str = "openai/clip-vit-large-patch14", processor: str | None = None,
              head: str = DEFAULT_HEAD, dtype: str = "float32", device: str | None = None,
              batch_size: int = 32) -> Reward:
    """Predicted aesthetic rating of each image (the prompt is not used)."""
    backbone = ClipBackbone(model, processor, dtype, device)

    @torch.no_grad()
    def one_batch(images: Tensor, prompts: list[str]) -> Tensor:
        embed = backbone.image_embeds(images)                       # [B, D], unit norm
        dev = embed.device
        mlp = cached(("aesthetic-head", head, str(dev), backbone.dtype),
                     lambda: load_head(head, embed.shape[-1], dev, backbone.dtype))
        return mlp(embed.to(backbone.dtype)).squeeze(-1).float()

    def reward(images: Tensor, prompts: Sequence[str], metadata=None) -> Tensor:
        return in_batches(one_batch, images, prompts, batch_size)

    return reward
