"""Group-normalised advantages (GRPO), with NaN rewards and zero-variance groups left out."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class GroupAdvantages(NamedTuple):
    """advantages: float32 [N] (0 where not valid); valid: bool [N] (a finite reward in a group
    with signal, or any finite reward with tied="zeros"); frac_zero_std: fraction of groups
    whose finite rewards all tie (no signal);
    num_failed: samples with a NaN / inf reward (left out of statistics and loss)."""

    advantages: Tensor
    valid: Tensor
    frac_zero_std: float
    num_failed: int


def group_advantages(rewards: Tensor, groups: Tensor, std: str = "group", eps: float = 1e-4,
                     clip: float | None = 5.0, tied: str = "drop") -> GroupAdvantages:
    """A_i = (R_i - mean_{g(i)} R) / (std + eps), clipped to [-clip, clip].

    rewards: [N] (NaN / inf marks a failed sample); groups: [N] integer group ids (Flow-GRPO:
    the prompt; TempFlow-GRPO: (seed, step) or (prompt, step)). ``std`` is "group" (the std of
    each group, "Flow-GRPO (Prompt)") or "batch" (one std over all valid samples, Flow-GRPO's
    default: the std of all finite rewards). Means are always per group; stds are population
stds (unbiased=False).
    Groups with fewer than two finite rewards, or whose finite rewards all tie, carry no
    signal. ``tied``: "drop" leaves their samples out of the loss (valid = False; Flow-GRPO's
    current code), "zeros" keeps their finite samples in the loss mean with advantage exactly 0
    (valid = True; the TempFlow-GRPO authors' code): they then add only KL and dilute the mean.
    """
    if std not in ("group", "batch"):
        raise ValueError(f"std must be 'group' or 'batch', got {std!r}")
    if tied not in ("drop", "zeros"):
        raise ValueError(f"tied must be 'drop' or 'zeros', got {tied!r}")
    r = rewards.double()
    finite = torch.isfinite(r)
    r0 = torch.where(finite, r, torch.zeros_like(r))
    _, gid = torch.unique(groups, return_inverse=True)
    ng = int(gid.max()) + 1 if gid.numel() else 0
    count = torch.zeros(ng, dtype=torch.float64).index_add_(0, gid, finite.double())
    total = torch.zeros(ng, dtype=torch.float64).index_add_(0, gid, r0)
    mean = total / count.clamp(min=1)
    dev = torch.where(finite, r0 - mean[gid], torch.zeros_like(r0))
    var = torch.zeros(ng, dtype=torch.float64).index_add_(0, gid, dev**2) / count.clamp(min=1)
    gstd = var.sqrt()
    has_signal = (count >= 2) & (gstd > 0)
    valid = finite & has_signal[gid]
    if std == "group":
        denom = gstd[gid]
    else:
        # Flow-GRPO's global std: the std of all finite rewards in the batch
        denom = r[finite].std(unbiased=False) if finite.any() else torch.zeros((), dtype=torch.float64)
        denom = denom.expand_as(r0)
    adv = torch.where(valid, dev / (denom + eps), torch.zeros_like(r0))
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    if tied == "zeros":
        valid = finite
    groups_with_data = int((count >= 1).sum())
    frac = float(((count >= 1) & ~has_signal).sum()) / max(groups_with_data, 1)
    return GroupAdvantages(adv.float(), valid, frac, int((~finite).sum()))
