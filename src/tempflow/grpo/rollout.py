"""Rollouts for Flow-GRPO (independent SDE trajectories) and TempFlow-GRPO (trajectory branching).

Both return the stored transitions a trainer needs: the state x_j a step starts from, the
sampled next state, and its log-prob under the sampling policy, plus the final latents whose
decoded images get rewarded. Model calls are batched: every call advances all samples of the
batch at once, each at its own sigma.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from tempflow.models.base import Conditioning, FlowModel
from tempflow.sampling.steps import ode_step, sde_step


@dataclass
class FlowGRPORollout:
    """N = prompts x G trajectories. xs: [T + 1, N, ...] states (xs[0] is the noise);
    log_probs: [T, N] of each SDE step (0 for deterministic steps); final: [N, ...]."""

    xs: Tensor
    log_probs: Tensor
    final: Tensor


@torch.no_grad()
def rollout_flow_grpo(model: FlowModel, cond: Conditioning, noise: Tensor, sigmas: Tensor,
                      noise_level: float, sde_steps: Sequence[int], guidance_scale: float | None = None,
                      generator: torch.Generator | None = None,
                      step_noise: Tensor | None = None, step_fn=sde_step) -> FlowGRPORollout:
    """SDE at the steps in ``sde_steps`` (the trained steps), ODE elsewhere.

    noise: [N, ...] at sigma = 1; cond: batch N; step_noise: optional [T, N, ...] standard
    normal noise of each step (else drawn from ``generator``); ``step_fn``: the stochastic step
    (:func:`~tempflow.sampling.steps.sde_step` or :func:`~tempflow.sampling.cps.cps_step`).
    Costs T model calls per sample (2T with CFG).
    """
    x = noise.float()
    n = x.shape[0]
    sde = set(int(j) for j in sde_steps)
    xs, logps = [x], []
    for j in range(sigmas.numel() - 1):
        sig, nxt = sigmas[j].expand(n), sigmas[j + 1].expand(n)
        v = model.velocity(x, sig, cond, guidance_scale)
        if j in sde and float(sigmas[j + 1]) > 0:
            eps = step_noise[j] if step_noise is not None else None
            x, _, _, lp = step_fn(x, v, sig, nxt, noise_level, noise=eps, generator=generator)
        else:
            x, lp = ode_step(x, v, sig, nxt), torch.zeros(n, device=x.device)
        xs.append(x)
        logps.append(lp)
    return FlowGRPORollout(torch.stack(xs), torch.stack(logps), x)


@torch.no_grad()
def rollout_sde_mask(model: FlowModel, cond: Conditioning, noise: Tensor, sigmas: Tensor,
                     noise_level: float, sde_mask: Tensor, step_noise: Tensor,
                     guidance_scale: float | None = None, step_fn=sde_step) -> FlowGRPORollout:
    """Trajectories whose stochastic steps differ per sample: ODE everywhere except where
    ``sde_mask`` [T, N] (bool) is true, where x_{j+1} = step_fn(x_j, v, eps) with eps =
    ``step_noise`` [N, ...] (one draw per sample, used at each of its SDE steps; schemes with
    one SDE step per trajectory need no more). noise: [N, ...]; cond: batch N.
    log_probs: [T, N], 0 at ODE steps. Costs T model calls per sample (2T with CFG).
    """
    x = noise.float()
    n = x.shape[0]
    xs, logps = [x], []
    for j in range(sigmas.numel() - 1):
        sig, nxt = sigmas[j].expand(n), sigmas[j + 1].expand(n)
        v = model.velocity(x, sig, cond, guidance_scale)
        x_next, lp = ode_step(x, v, sig, nxt), torch.zeros(n, device=x.device)
        rows = sde_mask[j].to(x.device).nonzero().squeeze(1)
        if rows.numel() and float(sigmas[j + 1]) > 0:
            out = step_fn(x[rows], v[rows], sig[rows], nxt[rows], noise_level, noise=step_noise[rows])
            x_next[rows], lp[rows] = out.sample, out.log_prob
        x = x_next
        xs.append(x)
        logps.append(lp)
    return FlowGRPORollout(torch.stack(xs), torch.stack(logps), x)


@dataclass
class BranchRollout:
    """S seeds, branch points J (|J| = P), K branches each.

    trunk: [T + 1, S, ...] the ODE trunk; starts: [S, P, ...] x_j at each branch point (the
    state every branch of (s, j) leaves from); samples: [S, P, K, ...] the SDE step's result
    y_{j,k}; log_probs: [S, P, K]; final: [S, P, K, ...] end of each branch's ODE continuation;
    trunk_final: [S, ...]; points: the branch-point step indices (length P).
    """

    trunk: Tensor
    starts: Tensor
    samples: Tensor
    log_probs: Tensor
    final: Tensor
    points: list[int]

    @property
    def trunk_final(self) -> Tensor:
        return self.trunk[-1]


def continuation_indices(start: int, t_steps: int, max_steps: int | None = None) -> list[int]:
    """Schedule indices an ODE continuation visits from sigma_start to sigma_T = 0: all of
    start..T, or with ``max_steps`` = m < T - start the m + 1 evenly spaced ones
    start + round(i (T - start) / m), i = 0..m (first and last always included)."""
    n = t_steps - start
    if max_steps is None or n <= max_steps:
        return list(range(start, t_steps + 1))
    return [start + round(i * n / max_steps) for i in range(max_steps + 1)]


@torch.no_grad()
def rollout_branches(model: FlowModel, cond: Conditioning, noise: Tensor, sigmas: Tensor,
                     noise_level: float, points: Sequence[int], num_branches: int,
                     guidance_scale: float | None = None, generator: torch.Generator | None = None,
                     noise_scale: float = 1.0, branch_noise: Tensor | None = None,
                     continuation_steps: int | None = None, step_fn=sde_step) -> BranchRollout:
    """TempFlow-GRPO's trajectory branching.

    For each seed s (noise[s], cond[s]): an ODE trunk x_0 .. x_T; at each branch point j, K
    branches y_{j,k} = SDE(x_j, v(x_j), eps_k) reuse the trunk's velocity at x_j, then follow
    the ODE from sigma_{j+1} to 0. The continuations of all branches of all branch points run
    as one batch per wave, each sample at its own sigma: wave w moves branch (j, k) from step
    j + 1 + w to j + 2 + w. Cost per seed: T + K * sum_j (T - 1 - j) model calls (times 2 with CFG).
    ``continuation_steps`` = m caps each continuation at m ODE steps over evenly spaced sigmas of
    the schedule (:func:`continuation_indices`): cost T + K * sum_j min(T - 1 - j, m).
    ``branch_noise``: optional [S, P, K, ...] standard normal noise of the branch steps (else
    drawn from ``generator``); ``noise_scale`` multiplies it (0: the branches follow the SDE mean).
    ``step_fn``: the branch step (sde_step, or cps_step for coefficients-preserving sampling).
    """
    s_count, t_steps = noise.shape[0], sigmas.numel() - 1
    pts = sorted(int(j) for j in points)
    if not pts or pts[0] < 0 or pts[-1] >= t_steps - 1:
        raise ValueError(f"branch points must lie in 0..{t_steps - 2}, got {list(points)}")
    k = num_branches
    # trunk, keeping the velocity at each branch point
    x = noise.float()
    trunk, v_at = [x], {}
    for j in range(t_steps):
        sig = sigmas[j].expand(s_count)
        v = model.velocity(x, sig, cond, guidance_scale)
        if j in pts:
            v_at[j] = v
        x = ode_step(x, v, sig, sigmas[j + 1].expand(s_count))
        trunk.append(x)
    trunk = torch.stack(trunk)  # [T + 1, S, ...]
    shape = noise.shape[1:]
    p = len(pts)
    # one SDE step per branch: rows ordered (s, j, k)
    starts = torch.stack([trunk[j] for j in pts], dim=1)                 # [S, P, ...]
    vel = torch.stack([v_at[j] for j in pts], dim=1)                    # [S, P, ...]
    x_rep = starts.unsqueeze(2).expand(s_count, p, k, *shape).reshape(-1, *shape)
    v_rep = vel.unsqueeze(2).expand(s_count, p, k, *shape).reshape(-1, *shape)
    step_idx = torch.tensor(pts).repeat(s_count).repeat_interleave(k)     # [S*P*K]
    if branch_noise is not None:
        eps = branch_noise.reshape(x_rep.shape).float() * noise_scale
    else:
        eps = torch.randn(x_rep.shape, generator=generator, dtype=torch.float32) * noise_scale
    out = step_fn(x_rep, v_rep, sigmas[step_idx], sigmas[step_idx + 1], noise_level, noise=eps)
    samples, log_probs = out.sample, out.log_prob
    # ODE continuations in waves: wave w moves each branch from path[w] to path[w + 1]; a branch
    # whose path has ended is padded with T and sits out
    y = samples.clone()
    cond_rows = cond.repeat_interleave(p * k)
    paths = [continuation_indices(j + 1, t_steps, continuation_steps) for j in pts]
    width = max(len(q) for q in paths)
    table = torch.tensor([q + [t_steps] * (width - len(q)) for q in paths])  # [P, width]
    path = table[torch.arange(p).repeat(s_count).repeat_interleave(k)]        # [S*P*K, width]
    for w in range(width - 1):
        live = (path[:, w] < path[:, w + 1]).nonzero().squeeze(1)
        if live.numel() == 0:
            break
        sig, nxt = sigmas[path[live, w]], sigmas[path[live, w + 1]]
        v = model.velocity(y[live], sig, cond_rows[live], guidance_scale)
        y[live] = ode_step(y[live], v, sig, nxt)
    return BranchRollout(trunk, starts, samples.view(s_count, p, k, *shape),
                         log_probs.view(s_count, p, k), y.view(s_count, p, k, *shape), pts)
