"""Several rewards at once: a weighted sum R = sum_k w_k R_k, each component kept for logging.

``combine`` says how advantages are formed from the components (see
:func:`tempflow.training.scoring.reward_advantages`): ``sum_then_normalise`` group-normalises
the weighted sum; ``normalise_then_sum`` group-normalises each component, then sums
w_k * A_k, so a reward with a large scale cannot drown the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from tempflow.errors import UserError
from tempflow.rewards.registry import Reward, build_reward, register, score

COMBINE_MODES = ("sum_then_normalise", "normalise_then_sum")


@dataclass
class Component:
    """One weighted reward: ``label`` names it in logs (reward/<label>/mean)."""

    label: str
    weight: float
    reward: Reward


class WeightedReward:
    """reward(images, prompts[, metadata]) = sum_k w_k R_k, float32 [B] (NaN if any R_k is)."""

    def __init__(self, components: Sequence[Component], combine: str = "sum_then_normalise"):
        if not components:
            raise UserError("reward.components must list at least one reward")
        if combine not in COMBINE_MODES:
            raise UserError(f"reward.combine must be one of {', '.join(COMBINE_MODES)} (got {combine!r})")
        labels = [c.label for c in components]
        if len(set(labels)) != len(labels):
            raise UserError(f"reward component labels must be unique (got {labels}): set a label on each")
        self.components, self.combine = list(components), combine

    @property
    def weights(self) -> dict[str, float]:
        return {c.label: c.weight for c in self.components}

    def score_components(self, images: Tensor, prompts: Sequence[str],
                         metadata: Sequence[dict] | None = None) -> dict[str, Tensor]:
        """label -> float32 [B] for every component."""
        return {c.label: score(c.reward, images, prompts, metadata) for c in self.components}

    def __call__(self, images: Tensor, prompts: Sequence[str],
                 metadata: Sequence[dict] | None = None) -> Tensor:
        return weighted_sum(self.score_components(images, prompts, metadata), self.weights)


def weighted_sum(values: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """sum_k w_k values[k]: float32 [B]; a NaN / inf anywhere gives NaN for that sample."""
    total = sum(weights[k] * v.float() for k, v in values.items())
    return torch.where(torch.isfinite(total), total, torch.full_like(total, float("nan")))


def component_from_spec(spec: Mapping[str, Any] | Any) -> Component:
    """A Component from a mapping or config section with name, weight, kwargs, label."""
    get = spec.get if isinstance(spec, Mapping) else lambda k, d=None: getattr(spec, k, d)
    name = get("name")
    if not name:
        raise UserError("each reward component needs a name (e.g. {name: shapes, weight: 1.0})")
    return Component(get("label") or name, float(get("weight", 1.0)),
                     build_reward(name, **dict(get("kwargs") or {})))


@register("weighted")
def weighted(components: Sequence[Mapping[str, Any]] | None = None,
             combine: str = "sum_then_normalise") -> WeightedReward:
    """Weighted sum of rewards, each {name, weight (1.0), kwargs ({}), label (the name)}."""
    if not components:
        raise UserError("reward 'weighted' needs its components: build it from the config's reward "
                        "section (tempflow.rewards.reward_from_config) or pass components=[{name: ...}]")
    return WeightedReward([component_from_spec(c) for c in components], combine)


def reward_from_config(cfg: Any) -> Reward:
    """The reward of a :class:`tempflow.config.RewardConfig` (a WeightedReward for 'weighted')."""
    if cfg.name == "weighted":
        return WeightedReward([component_from_spec(c) for c in cfg.components], cfg.combine)
    return build_reward(cfg.name, **cfg.kwargs)
