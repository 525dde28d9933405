"""SDE window (MixGRPO, Flow-GRPO-Fast; algorithm.md section 7).

Per prompt, G = group_size trajectories; SDE steps, and training, only inside a window
W = [w0, w0 + window_size) of consecutive trained steps, the ODE elsewhere. A trajectory's
final reward gives one advantage (groups: prompts), broadcast to its window steps: rows =
(trajectory, j in W), K = 1, as Flow-GRPO restricted to W.

w0: algorithm.window_start if set, else drawn per iteration uniformly from 0..n - window_size
(n trained steps) from SeedSequence([train.seed, iteration, 19]) (the same on every process).

Cost per prompt: G * T model evaluations (x2 with CFG); training: G * window_size forwards.
"""

from __future__ import annotations

import numpy as np
import torch

from tempflow.schemes.flow_grpo import FlowGRPOScheme


class SDEWindowScheme(FlowGRPOScheme):
    """algorithm.scheme = sde_window: Flow-GRPO's rollout and loss over the window's steps only."""

    name = "sde_window"

    def plan(self, iteration: int) -> list[int]:
        """The window's steps [w0, ..., w0 + window_size - 1]."""
        a = self.cfg.algorithm
        start = a.window_start
        if start is None:
            key = np.random.SeedSequence([self.cfg.train.seed, iteration, 19]).generate_state(1)[0]
            gen = torch.Generator().manual_seed(int(key))
            start = int(torch.randint(len(self.steps) - a.window_size + 1, (1,), generator=gen))
        return list(self.steps[start:start + a.window_size])

    def log_record(self, plan, advantages) -> dict[str, float]:
        """window/start and weight/step<j> of the window's steps."""
        return {"window/start": float(plan[0]), **super().log_record(plan, advantages)}
