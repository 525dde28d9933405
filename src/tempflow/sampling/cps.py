"""Coefficients-preserving sampling (CPS): an SDE step that keeps the noise coefficient exact.

Wang and Yu, "Coefficients-Preserving Sampling for Reinforcement Learning with Flow Matching"
(arXiv 2509.05952); in Flow-GRPO's code as ``sde_type="cps"`` since 2025-10. With the
model's estimates of the clean image and of the noise,

    x0_hat = x_j - sigma_j v          x1_hat = x_j + (1 - sigma_j) v
    std    = sigma_{j+1} sin(a pi / 2)
    mean   = (1 - sigma_{j+1}) x0_hat + sqrt(sigma_{j+1}^2 - std^2) x1_hat
    x_{j+1} = mean + std eps

the next state has data coefficient 1 - sigma_{j+1} and total noise coefficient sigma_{j+1}
(sqrt((sigma_{j+1}^2 - std^2) + std^2)), as the forward process x_sigma = (1 - sigma) x0 +
sigma eps has: the injected noise replaces part of the predicted noise instead of adding to
it. With a = 0 it is exactly the Euler ODE step. The coefficients are exact, so are the
marginals when the model's estimates are exact (point-mass data); for spread-out data the
estimates are posterior means and, since the injected noise does not shrink with the step
size, the marginal variance is not kept (tests/test_sampling_schemes.py checks its exact
moment recursion on Gaussian data: at 10 steps the final std is below the data's). Unlike Flow-GRPO's SDE step its std is
finite at sigma_j = 1 and vanishes at the last step (sigma_{j+1} = 0).

Log-probability convention (Flow-GRPO's code): all constants dropped,
log p = mean over non-batch dims of -(x_{j+1} - mean)^2 -- not the Gaussian log-density,
whose 1 / (2 std^2) factor would make ratios at small std explode. Policy ratios between
two means for one stored x_{j+1} use this form.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tempflow.sampling.steps import SDEStep, _as_batch, _bcast


def cps_std(sigma_next: Tensor | float, noise_level: float) -> Tensor:
    """std_j = sigma_{j+1} sin(a pi / 2), float32 (a scalar or [B])."""
    return torch.as_tensor(sigma_next, dtype=torch.float32) * math.sin(noise_level * math.pi / 2)


def cps_step(x: Tensor, v: Tensor, sigma: Tensor | float, sigma_next: Tensor | float,
             noise_level: float, sample: Tensor | None = None, noise: Tensor | None = None,
             generator: torch.Generator | None = None) -> SDEStep:
    """One CPS step (module docstring) with its log-prob; same calling convention as
    :func:`tempflow.sampling.steps.sde_step`: pass ``sample`` to score a stored x_{j+1}
    (detached: gradients flow through the mean only), else it is drawn with ``noise`` or from
    ``generator``. x, v: [B, ...]; sigma, sigma_next: [B] or scalars; math in float32.
    """
    if not 0.0 <= noise_level <= 1.0:
        raise ValueError(f"CPS noise level must be in [0, 1] (std = sigma_next sin(a pi / 2)), "
                         f"got {noise_level}")
    x, v = x.float(), v.float()
    sig, sig_next = _as_batch(sigma, x), _as_batch(sigma_next, x)
    std = cps_std(sig_next, noise_level)
    sig_b, next_b, std_b = _bcast(sig, x), _bcast(sig_next, x), _bcast(std, x)
    x0_hat = x - sig_b * v
    x1_hat = x + (1.0 - sig_b) * v
    keep = torch.sqrt(torch.clamp(next_b * next_b - std_b * std_b, min=0.0))
    mean = (1.0 - next_b) * x0_hat + keep * x1_hat
    if sample is None:
        if noise is None:
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float32,
                                device=generator.device if generator is not None else x.device)
        sample = mean + std_b * noise.to(mean.device, torch.float32)
    sample = sample.detach().float()
    log_prob = (-(sample - mean) ** 2).mean(dim=tuple(range(1, x.ndim)))
    return SDEStep(sample, mean, std, log_prob)
