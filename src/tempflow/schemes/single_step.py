"""Flash-GRPO's single-step scheme, "iso-temporal grouping" (arXiv 2605.15980; algorithm.md 7).

Per prompt p, G = group_size trajectories from their own noise. One step j_p, shared by the
whole group, is stochastic; every other step is the ODE:

    x_{i, j+1} = ODE(x_{i,j})                 j != j_p
    x_{i, j_p+1} = SDE(x_{i,j_p}, v, eps_i)   (sde_step or cps_step, sampling.sde_type)

The group's advantages come from the final rewards, A_i = (R_i - mean_p R) / (std_p R + 1e-4),
and only that one transition per trajectory is trained: rows = trajectories, K = 1. Since
all members of a group share j_p, their rewards differ only through the noise of that step.

j_p: algorithm.sde_step if set, else drawn per iteration and prompt, uniformly from the trained
steps, from SeedSequence([train.seed, iteration, position, 17]) (the same on any process layout).

Cost per prompt: G * T model evaluations (x2 with CFG); training: one forward per trajectory.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from tempflow.grpo.objective import Transitions, step_transitions
from tempflow.grpo.rollout import rollout_sde_mask
from tempflow.schemes.base import RolloutScheme
from tempflow.training.rollout_phase import Samples, noise_for


class SingleStepScheme(RolloutScheme):
    """algorithm.scheme = single_step; group size algorithm.group_size (G)."""

    name = "single_step"

    def plan(self, iteration: int) -> list[int]:
        """The candidate steps j_p is drawn from (one step if algorithm.sde_step is set)."""
        j = self.cfg.algorithm.sde_step
        return list(self.steps) if j is None else [j]

    def step_of(self, plan: list[int], iteration: int, position: int) -> int:
        """j_p of the prompt at global ``position``: uniform over ``plan``."""
        key = np.random.SeedSequence([self.cfg.train.seed, iteration, position, 17]).generate_state(1)[0]
        return plan[int(torch.randint(len(plan), (1,), generator=torch.Generator().manual_seed(int(key))))]

    def sample(self, model, cond, positions, plan, iteration) -> Samples:
        g = self.cfg.algorithm.group_size
        x0, eps = noise_for(model, positions, g, self.cfg.train.seed, iteration)   # [N, ...] each
        steps = torch.tensor([self.step_of(plan, iteration, p) for p in positions]).repeat_interleave(g)  # [N]
        mask = torch.zeros(self.t_steps, len(steps), dtype=torch.bool)
        mask[steps, torch.arange(len(steps))] = True                                 # [T, N]
        cond_rows = cond.repeat_interleave(g)
        ro = rollout_sde_mask(model, cond_rows, x0, self.sigmas, self.noise_level, mask, eps,
                              self.guidance, self.step_fn)
        groups = torch.tensor(positions).repeat_interleave(g)
        rows = torch.arange(len(positions)).repeat_interleave(g)
        return Samples(ro.final, rows, groups, ro, cond_rows, list(plan), None, steps)

    def transitions(self, samples: Samples, advantages: Tensor, valid: Tensor) -> Transitions:
        return step_transitions(samples.rollout, samples.cond, self.sigmas.cpu(), samples.row_steps,
                                advantages, valid, self.step_weights(samples.row_steps.tolist()))

    def starts_per_prompt(self, plan) -> int:
        return self.cfg.algorithm.group_size  # one transition per trajectory

    def cost_nfe(self, prompts: int, plan=None) -> float:
        """prompts * G * T (x2 with CFG)."""
        return prompts * self.cfg.algorithm.group_size * self.t_steps * self.cfg_factor
