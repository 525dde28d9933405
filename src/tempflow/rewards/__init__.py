"""Rewards: images float [B, 3, H, W] in [0, 1] and prompts in, float32 [B] out (NaN = failed).

Rewards are built by name (``build_reward("shapes", dense=True)``) or by a dotted path to a
user's factory (``"mypkg.rewards:make_reward"``); heavy imports happen inside the factories.
Modules: ``registry`` (the contract), ``simple`` (JPEG size, brightness, contrast), ``shapes``
(the demo verifier), ``clip_rewards`` / ``aesthetic`` (learned, transformers), ``remote`` and
``server`` (HTTP, format in ``wire``), ``combine`` (weighted sums), ``robust`` (failed samples).
docs/rewards.md lists every reward and its arguments.
"""

from tempflow.rewards.registry import REGISTRY, Reward, build_reward, register, score
from tempflow.rewards import (aesthetic, clip_rewards, geneval_remote, imagereward, ocr,  # noqa: F401  (register)
                              remote, shapes, simple, vlm_judge)
from tempflow.rewards.combine import WeightedReward, reward_from_config
from tempflow.rewards.robust import Scored, score_or_nan

__all__ = ["REGISTRY", "Reward", "Scored", "WeightedReward", "build_reward", "register",
           "reward_from_config", "score", "score_or_nan"]
