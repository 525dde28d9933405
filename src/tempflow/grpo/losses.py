"""PPO-style clipped policy loss and the Gaussian-mean KL penalty (algorithm.md section 4)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class PolicyLoss(NamedTuple):
    """loss: scalar; clip_frac: share of rows where the clipped term was taken;
    approx_kl: 0.5 * mean (log r)^2, the usual PPO diagnostic; ratio: [N] (detached)."""

    loss: Tensor
    clip_frac: Tensor
    approx_kl: Tensor
    ratio: Tensor


def clipped_policy_loss(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor,
                        clip_range: float, weights: Tensor | None = None) -> PolicyLoss:
    """L = mean_i max(-w_i A_i r_i, -w_i A_i clip(r_i, 1 - eps, 1 + eps)),  r_i = exp(logp - logp_old).

    All inputs [N] (one row per stored transition); ``weights`` are TempFlow-GRPO's
    noise-aware w_j of each row's step (None: all 1, i.e. Flow-GRPO). Computed in float32.
    """
    log_ratio = log_prob.float() - old_log_prob.float()
    ratio = torch.exp(log_ratio)
    wa = advantages.float() if weights is None else advantages.float() * weights.float()
    unclipped = -wa * ratio
    clipped = -wa * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        clip_frac = ((ratio - 1.0).abs() > clip_range).float().mean()
        approx_kl = 0.5 * (log_ratio**2).mean()
    return PolicyLoss(loss, clip_frac, approx_kl, ratio.detach())


def kl_penalty(mean: Tensor, ref_mean: Tensor, std: Tensor) -> Tensor:
    """KL between the policy's and the reference's Gaussian steps of equal std, per row:

        KL_i = mean over non-batch dims of (mean_theta - mean_ref)^2 / (2 std_i^2)

    mean, ref_mean: [N, ...]; std: [N] (s_j for TempFlow-GRPO, g_j for Flow-GRPO's
    convention). Returns float32 [N]; the caller averages and multiplies by beta.
    """
    d = (mean.float() - ref_mean.float()) ** 2
    per_dim = d / (2.0 * std.float().reshape(-1, *([1] * (d.ndim - 1))) ** 2)
    return per_dim.mean(dim=tuple(range(1, d.ndim)))
