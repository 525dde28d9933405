"""Rewards: images float [B, 3, H, W] in [0, 1] and prompts in, float32 [B] out (NaN = failed).

Rewards are built by name (``build_reward("shapes", dense=True)``) or by a dotted path to a
user's factory (``"mypkg.rewards:make_reward"``); heavy imports happen inside the factories.
"""

from __future__ import annotations

import importlib
from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor

from tempflow.errors import UserError


class Reward(Protocol):
    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor: ...


def _shapes(dense: bool = True) -> Reward:
    """The shapes-world verifier: dense partial credit in [0, 1], or 1/0 pass/fail."""
    from tempflow.shapes import verify_batch

    def reward(images: Tensor, prompts: Sequence[str]) -> Tensor:
        passed, score = verify_batch(images.detach().float().cpu(), list(prompts))
        return score.float() if dense else passed.float()

    return reward


REGISTRY: dict[str, Callable[..., Reward]] = {"shapes": _shapes}


def build_reward(name: str, **kwargs) -> Reward:
    """A registered reward by name, or ``module.path:factory`` called with ``kwargs``."""
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise UserError(f"reward {name!r} cannot be imported ({e}); give 'module.path:factory' "
                            f"of an importable function") from None
    elif name in REGISTRY:
        factory = REGISTRY[name]
    else:
        raise UserError(f"unknown reward {name!r}: known rewards are {', '.join(sorted(REGISTRY))} "
                        f"(or give 'module.path:factory')")
    try:
        return factory(**kwargs)
    except TypeError as e:
        raise UserError(f"reward {name!r} does not take these arguments: {e} (fix reward.kwargs)") from None


def score(reward: Reward, images: Tensor, prompts: Sequence[str]) -> Tensor:
    """Call a reward and check its output: float32 [B] on the CPU; a wrong shape is an error."""
    out = torch.as_tensor(reward(images, prompts)).float().cpu().reshape(-1)
    if out.numel() != images.shape[0]:
        raise UserError(f"the reward returned {out.numel()} values for {images.shape[0]} images "
                        f"(a reward must return one float per image)")
    return out
