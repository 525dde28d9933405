"""Step weights of the policy loss: TempFlow-GRPO's noise-aware w_j, Flash-GRPO's 1 / c_j."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from tempflow.sampling.steps import sde_std


def noise_aware_weights(sigmas: Tensor, noise_level: float, steps: Sequence[int]) -> Tensor:
    """w_j = s_j / mean_{j' in steps} s_{j'}, fixed by the schedule (mean 1 over ``steps``).

    s_j = g_j sqrt(-dt_j) is the SDE transition std of step j (sigma_j -> sigma_{j+1}).
    Without it the per-step policy gradient scales like sqrt(dt (1 - sigma) / sigma), so late
    low-noise steps dominate. SD3 schedule (shift 3, T = 10), a = 0.7, steps 0..8:
    1 / mean(s) = 2.252 and w = [1.577, 1.673, 1.208, 1.004, 0.882, 0.795, 0.719, 0.635, 0.508].
    sigmas: [T + 1] schedule; returns float32 [len(steps)].
    """
    return power_weights(sigmas, noise_level, steps, 1.0)


def _check_steps(sigmas: Tensor, steps: Sequence[int]) -> Tensor:
    idx = torch.as_tensor(list(steps), dtype=torch.long)
    if idx.numel() == 0:
        raise ValueError("steps must not be empty")
    if int(idx.min()) < 0 or int(idx.max()) >= sigmas.numel() - 1:
        raise ValueError(f"steps must lie in 0..{sigmas.numel() - 2}, got {list(steps)}")
    return idx


def logprob_gradient_scale(sigma: Tensor, sigma_next: Tensor, noise_level: float) -> Tensor:
    """c_j = sqrt(-dt_j) / g_j + g_j sqrt(-dt_j) (1 - sigma_j) / (2 sigma_j): the size of
    d log p / d v per unit of injected noise for Flow-GRPO's SDE step (per dimension, before
    the mean over dimensions): with x_{j+1} = mean + s_j eps, d log p / d v = -eps c_j.
    sigma, sigma_next: float tensors of one shape; returns float32 of that shape."""
    sigma, sigma_next = sigma.float(), sigma_next.float()
    g, _ = sde_std(sigma, sigma_next, noise_level)
    root = torch.sqrt(sigma - sigma_next)
    return root / g + g * root * (1.0 - sigma) / (2.0 * sigma)


def flash_weights(sigmas: Tensor, noise_level: float, steps: Sequence[int]) -> Tensor:
    """Flash-GRPO's step weights (arXiv 2605.15980): w_j = (1 / c_j) / mean_{j'} (1 / c_{j'})
    with c_j from :func:`logprob_gradient_scale`, so every trained step's policy gradient has
    the same size. sigmas: [T + 1] schedule; returns float32 [len(steps)], mean 1."""
    idx = _check_steps(sigmas, steps)
    sig = sigmas.float()
    inv = 1.0 / logprob_gradient_scale(sig[idx], sig[idx + 1], noise_level)
    return inv / inv.mean()


def power_weights(sigmas: Tensor, noise_level: float, steps: Sequence[int], power: float) -> Tensor:
    """w_j = s_j^p / mean_{j'} s_{j'}^p: TempFlow's weights (p = 1) made stronger (p > 1) or
    weaker (0 < p < 1); p = 0 gives equal weights. Returns float32 [len(steps)], mean 1."""
    idx = _check_steps(sigmas, steps)
    sig = sigmas.float()
    _, s = sde_std(sig[idx], sig[idx + 1], noise_level)
    w = s ** power
    return w / w.mean()
