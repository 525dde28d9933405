"""Exponential moving average of the trainable weights (used for evaluation and saved)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


class EMA:
    """shadow <- decay * shadow + (1 - decay) * param, every ``every`` optimiser steps."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float, every: int):
        self.params, self.decay, self.every = params, decay, every
        self.shadow = [p.detach().clone().float() for p in params]
        self.steps = 0

    @torch.no_grad()
    def step(self) -> None:
        """Call after every optimiser step."""
        self.steps += 1
        if self.every <= 0 or self.steps % self.every:
            return
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach().float(), 1.0 - self.decay)

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
