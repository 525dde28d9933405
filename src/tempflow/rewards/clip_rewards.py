"""Text-image rewards on CLIP (transformers): CLIP score, PickScore, HPSv2.

- ``clip_score``: cos(image, text) of a CLIP model (Hessel et al. 2021 report 100 x this).
- ``pickscore``: PickScore (Kirstain et al. 2023), a CLIP-H fine-tuned on Pick-a-Pic
  preferences: exp(logit_scale) * cos(image, text), as in its reference inference code.
- ``hpsv2``: Human Preference Score v2 (Wu et al. 2023), a CLIP-H fine-tuned on HPD v2:
  cos(image, text). The official weights are open_clip files; give them in transformers'
  CLIP format (e.g. the hub id ``adams-story/HPSv2-hf``, a converted copy) with the OpenAI
  CLIP processor (224 px, OpenAI mean / std, the same BPE vocabulary).
Each model loads once per process with ``from_pretrained`` and runs on the images' device
(or ``device``) in ``dtype`` under no_grad.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from tempflow.rewards.clip_backbone import ClipBackbone, in_batches
from tempflow.rewards.registry import Reward, register


def _similarity_reward(backbone: ClipBackbone, batch_size: int, use_logit_scale: bool) -> Reward:
    """reward(images, prompts) = [exp(logit_scale) *] cos(image_embed, text_embed), float32 [B]."""
    def one_batch(images: Tensor, prompts: list[str]) -> Tensor:
        img = backbone.image_embeds(images)
        txt = backbone.text_embeds(prompts, images.device).to(img.device)
        cos = (img * txt).sum(dim=-1)
        return cos * backbone.logit_scale(images.device) if use_logit_scale else cos

    def reward(images: Tensor, prompts: Sequence[str], metadata=None) -> Tensor:
        return in_batches(one_batch, images, prompts, batch_size)

    return reward


@register("clip_score")
def clip_score(model: str = "openai/clip-vit-large-patch14", processor: str | None = None,
               dtype: str = "float32", device: str | None = None, batch_size: int = 32) -> Reward:
    """Cosine similarity of CLIP image and text embeddings, in [-1, 1]."""
    return _similarity_reward(ClipBackbone(model, processor, dtype, device), batch_size, False)


@register("pickscore")
def pickscore(model: str = "yuvalkirstain/PickScore_v1",
              processor: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", dtype: str = "float32",
              device: str | None = None, batch_size: int = 32) -> Reward:
    """PickScore: exp(logit_scale) * cos(image, text) (about 17-24 for SD images)."""
    return _similarity_reward(ClipBackbone(model, processor, dtype, device), batch_size, True)


@register("hpsv2")
def hpsv2(model: str = "adams-story/HPSv2-hf", processor: str = "openai/clip-vit-base-patch32",
          dtype: str = "float32", device: str | None = None, batch_size: int = 32) -> Reward:
    """HPSv2: cos(image, text) of the preference-tuned CLIP-H (about 0.2-0.3)."""
    return _similarity_reward(ClipBackbone(model, processor, dtype, device), batch_size, False)
