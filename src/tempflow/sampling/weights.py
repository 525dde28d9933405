"""TempFlow-GRPO's noise-aware step weights."""

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
    idx = torch.as_tensor(list(steps), dtype=torch.long)
    if idx.numel() == 0:
        raise ValueError("steps must not be empty")
    if int(idx.min()) < 0 or int(idx.max()) >= sigmas.numel() - 1:
        raise ValueError(f"steps must lie in 0..{sigmas.numel() - 2}, got {list(steps)}")
    sig = sigmas.float()
    _, s = sde_std(sig[idx], sig[idx + 1], noise_level)
    return s / s.mean()
