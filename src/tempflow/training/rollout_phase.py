"""The sampling phase of one iteration: rollouts for this process's prompts, with noise that
depends only on (seed, iteration, global prompt position, sample), never on the process
layout, so 1 and N processes draw the same samples for the same global batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from tempflow.grpo.rollout import rollout_branches, rollout_flow_grpo
from tempflow.models.base import Conditioning, FlowModel
from tempflow.sampling.steps import sde_step


def sample_generator(seed: int, iteration: int, position: int, sample: int) -> torch.Generator:
    """A CPU generator for one sample (seed or trajectory) of one prompt of one iteration."""
    key = np.random.SeedSequence([seed, iteration, position, sample]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(key))


@dataclass
class Samples:
    """This process's rollouts.

    finals: [N, ...] latents to decode and reward; prompt_rows: [N] index into the iteration's
    local prompts; groups: [N] global advantage-group ids; rollout: the raw rollout; points:
    branch points (branching) or trained steps (Flow-GRPO); shape_spk: (S, P, K) for branching;
    row_steps: [N] the one trained step of each sample (single_step), else None.
    """

    finals: Tensor
    prompt_rows: Tensor
    groups: Tensor
    rollout: object
    cond: Conditioning
    points: list[int]
    shape_spk: tuple[int, int, int] | None
    row_steps: Tensor | None = None


def noise_for(model: FlowModel, positions: list[int], per_prompt: int, seed: int,
              iteration: int, extra_shape: tuple[int, ...] = ()) -> tuple[Tensor, Tensor]:
    """Initial noise [n, *latent] and per-sample step noise [n, *extra_shape, *latent]."""
    x0, steps = [], []
    for pos in positions:
        for i in range(per_prompt):
            g = sample_generator(seed, iteration, pos, i)
            x0.append(torch.randn(model.latent_shape, generator=g))
            steps.append(torch.randn((*extra_shape, *model.latent_shape), generator=g))
    dev = model.device
    return torch.stack(x0).to(dev), torch.stack(steps).to(dev)


def sample_branching(model: FlowModel, cond: Conditioning, positions: list[int], seeds: int,
                     branches: int, points: list[int], sigmas: Tensor, noise_level: float,
                     guidance_scale: float | None, group_by: str, seed: int, iteration: int,
                     continuation_steps: int | None = None, step_fn=sde_step) -> Samples:
    """TempFlow-GRPO: ``seeds`` trunks per prompt, K branches at each branch point.

    cond: batch = number of local prompts; groups: (seed, j) or (prompt, j) ids, global."""
    p, k = len(points), branches
    x0, eps = noise_for(model, positions, seeds, seed, iteration, (p, k))
    ro = rollout_branches(model, cond.repeat_interleave(seeds), x0, sigmas, noise_level, points, k,
                          guidance_scale, branch_noise=eps, continuation_steps=continuation_steps,
                          step_fn=step_fn)
    s_count = x0.shape[0]
    pos = torch.tensor(positions).repeat_interleave(seeds)                      # [S]
    seed_idx = torch.arange(seeds).repeat(len(positions))                        # [S]
    j = torch.arange(p)
    if group_by == "seed":
        g = (pos * seeds + seed_idx)[:, None] * p + j[None, :]
    else:
        g = pos[:, None] * p + j[None, :]
    groups = g[:, :, None].expand(s_count, p, k).reshape(-1)
    rows = torch.arange(len(positions)).repeat_interleave(seeds * p * k)
    return Samples(ro.final.reshape(-1, *model.latent_shape), rows, groups, ro,
                   cond.repeat_interleave(seeds), list(points), (s_count, p, k))


def sample_trajectories(model: FlowModel, cond: Conditioning, positions: list[int], group_size: int,
                        steps: list[int], sigmas: Tensor, noise_level: float,
                        guidance_scale: float | None, seed: int, iteration: int, step_fn=sde_step) -> Samples:
    """Flow-GRPO: ``group_size`` SDE trajectories per prompt; groups = prompts."""
    t = sigmas.numel() - 1
    x0, eps = noise_for(model, positions, group_size, seed, iteration, (t,))
    cond_rows = cond.repeat_interleave(group_size)
    ro = rollout_flow_grpo(model, cond_rows, x0, sigmas, noise_level, steps, guidance_scale,
                           step_noise=eps.transpose(0, 1), step_fn=step_fn)
    groups = torch.tensor(positions).repeat_interleave(group_size)
    rows = torch.arange(len(positions)).repeat_interleave(group_size)
    return Samples(ro.final, rows, groups, ro, cond_rows, list(steps), None)
