"""Exponential moving average of the trainable weights (used for evaluation and saved)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def warmup_decay(updates: int, decay: float) -> float:
    """The published EMA warm-up (Flow-GRPO and TempFlow-GRPO code):
    d_t = min((1 + t) / (10 + t), decay), t = EMA updates done before this one, so the first
    updates mostly copy the weights and early EMA weights are not held near the base."""
    return min((1.0 + updates) / (10.0 + updates), decay)


class EMA:
    """shadow <- d * shadow + (1 - d) * param every ``every`` optimiser steps, with
    d = :func:`warmup_decay` (``warmup``) or the constant ``decay``."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float, every: int,
                 warmup: bool = True):
        self.params, self.decay, self.every, self.warmup = params, decay, every, warmup
        self.shadow = [p.detach().clone().float() for p in params]
        self.steps = 0

    @torch.no_grad()
    def step(self) -> None:
        """Call after every optimiser step."""
        self.steps += 1
        if self.every <= 0 or self.steps % self.every:
            return
        updates = self.steps // self.every - 1  # EMA updates before this one
        decay = warmup_decay(updates, self.decay) if self.warmup else self.decay
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach().float(), 1.0 - decay)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Within the context the parameters hold the EMA weights (disabled EMA: unchanged)."""
        if self.every <= 0:
            yield
            return
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for s, p in zip(self.shadow, self.params):
                p.copy_(s.to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for b, p in zip(saved, self.params):
                    p.copy_(b)
