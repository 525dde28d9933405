"""The shapes-world verifier as a reward (the built-in demo's GenEval stand-in)."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from tempflow.rewards.registry import Reward, register


@register("shapes")
def shapes_reward(dense: bool = True) -> Reward:
    """Dense partial credit in [0, 1] (``dense``), or 1 / 0 pass / fail like GenEval."""
    from tempflow.shapes import verify_batch

    def reward(images: Tensor, prompts: Sequence[str], metadata=None) -> Tensor:
        passed, score = verify_batch(images.detach().float().cpu(), list(prompts))
        return score.float() if dense else passed.float()

    return reward
