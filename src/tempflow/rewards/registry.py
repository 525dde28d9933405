"""The reward contract and the registry of rewards by name.

A reward is a callable ``reward(images, prompts[, metadata]) -> Tensor``: images float
[B, 3, H, W] in [0, 1], prompts a list of B strings, metadata an optional list of B dicts;
out a float tensor [B], NaN marking a sample that could not be scored. Rewards are built by
name (``build_reward("shapes", dense=True)``) or by a dotted path to a user's factory
(``"mypkg.rewards:make_reward"``), with keyword arguments from the config.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import Tensor

from tempflow.errors import UserError


class Reward(Protocol):
    """images [B, 3, H, W] in [0, 1], prompts (B strings) -> float [B] (NaN: not scored)."""

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor: ...


REGISTRY: dict[str, Callable[..., Reward]] = {}


def register(name: str) -> Callable[[Callable[..., Reward]], Callable[..., Reward]]:
    """Decorator: register a reward factory under ``name`` (an existing name is an error)."""
    def add(factory: Callable[..., Reward]) -> Callable[..., Reward]:
        if name in REGISTRY and REGISTRY[name] is not factory:
            raise ValueError(f"a reward named {name!r} is already registered")
        REGISTRY[name] = factory
        return factory
    return add


def resolve_factory(name: str) -> Callable[..., Reward]:
    """The factory of a registered name or of ``module.path:factory``; UserError otherwise."""
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module.strip()), attr.strip())
        except Exception as e:  # ImportError, AttributeError, an empty or relative name, a broken module
            raise UserError(f"reward {name!r} cannot be imported ({type(e).__name__}: {e}); give "
                            f"'module.path:factory' of an importable function") from None
    if name in REGISTRY:
        return REGISTRY[name]
    raise UserError(f"unknown reward {name!r}: known rewards are {', '.join(sorted(REGISTRY))} "
                    f"(or give 'module.path:factory')")


def build_reward(name: str, **kwargs: Any) -> Reward:
    """A registered reward by name, or ``module.path:factory`` called with ``kwargs``."""
    factory = resolve_factory(name)
    if not callable(factory):
        raise UserError(f"reward {name!r} is a {type(factory).__name__}, not a factory function; "
                        f"give 'module.path:factory' of a function that returns a reward")
    try:
        reward = factory(**kwargs)
    except TypeError as e:
        raise UserError(f"reward {name!r} does not take these arguments: {e} (fix reward.kwargs)") from None
    if not callable(reward):
        raise UserError(f"reward {name!r} returned a {type(reward).__name__}, not a reward; its factory "
                        f"must return a callable reward(images, prompts) -> one float per image")
    return reward


def score(reward: Reward, images: Tensor, prompts: Sequence[str],
          metadata: Sequence[dict] | None = None) -> Tensor:
    """Call a reward and check its output: float32 [B] on the CPU; a wrong count is an error.

    ``metadata`` (B dicts) is passed as a third argument only when given and the reward takes
    one, so a reward written as reward(images, prompts) keeps working."""
    with_meta = metadata is not None and takes_metadata(reward)
    raw = reward(images, prompts, metadata) if with_meta else reward(images, prompts)
    out = torch.as_tensor(raw).detach().float().cpu().reshape(-1)
    if out.numel() != images.shape[0]:
        raise UserError(f"the reward returned {out.numel()} values for {images.shape[0]} images "
                        f"(a reward must return one float per image)")
    return out


def takes_metadata(reward) -> bool:
    """Whether ``reward`` can be called as reward(images, prompts, metadata)."""
    import inspect

    try:
        params = list(inspect.signature(reward).parameters.values())
    except (TypeError, ValueError):
        return True
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return True
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params) >= 3
