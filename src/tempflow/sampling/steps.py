"""One denoising step: the deterministic ODE (Euler) step and Flow-GRPO's SDE step.

All functions take per-sample sigma tensors [B] and compute in float32 whatever the
dtype of their inputs; see algorithm.md section 2 for the equations.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _bcast(t: Tensor, like: Tensor) -> Tensor:
    """[B] -> [B, 1, ..., 1] matching ``like``'s number of dimensions."""
    return t.reshape(t.shape[0], *([1] * (like.ndim - 1)))


def _as_batch(sigma: Tensor | float, x: Tensor) -> Tensor:
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    return sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma.float()


def ode_step(x: Tensor, v: Tensor, sigma: Tensor | float, sigma_next: Tensor | float) -> Tensor:
    """Euler step of dx/dsigma = v:  x_{j+1} = x_j + (sigma_{j+1} - sigma_j) * v.

    x, v: [B, ...]; sigma, sigma_next: [B] or scalars. Returns float32 [B, ...].
    """
    x, v = x.float(), v.float()
    dt = _as_batch(sigma_next, x) - _as_batch(sigma, x)
    return x + _bcast(dt, x) * v


def sde_std(sigma: Tensor | float, sigma_next: Tensor | float, noise_level: float) -> tuple[Tensor, Tensor]:
    """Flow-GRPO's diffusion coefficient g_j and transition std s_j, per sample.

        g_j = a * sqrt(sigma_j / (1 - sigma_j'))    s_j = g_j * sqrt(-dt_j)

    sigma_j' = sigma_j, except at sigma_j = 1 (pure noise, where 1 - sigma_j = 0) it is the
    next sigma, i.e. sigma_1 of the schedule: the sigma = 1 guard. Returns float32 (g, s).
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    sigma_next = torch.as_tensor(sigma_next, dtype=torch.float32, device=sigma.device)
    guarded = torch.where(sigma >= 1.0, sigma_next, sigma)
    g = noise_level * torch.sqrt(sigma / (1.0 - guarded))
    s = g * torch.sqrt(sigma - sigma_next)
    return g, s


class SDEStep(NamedTuple):
    """Result of :func:`sde_step`. Shapes: sample/mean [B, ...] float32; std/log_prob [B]."""

    sample: Tensor
    mean: Tensor
    std: Tensor
    log_prob: Tensor


def sde_step(x: Tensor, v: Tensor, sigma: Tensor | float, sigma_next: Tensor | float,
             noise_level: float, sample: Tensor | None = None, noise: Tensor | None = None,
             generator: torch.Generator | None = None) -> SDEStep:
    """Flow-GRPO's marginal-preserving SDE step, with the Gaussian log-prob of the result.

        mean    = x_j + [v + g_j^2 / (2 sigma_j) * (x_j + (1 - sigma_j) v)] * dt_j
        x_{j+1} = mean + s_j * eps
        log p   = mean over non-batch dims of -(x_{j+1} - mean)^2 / (2 s_j^2) - log s_j - log sqrt(2 pi)

    Pass ``sample`` to score a given x_{j+1} (it is detached: gradients flow through the mean,
    i.e. through v, only); otherwise x_{j+1} is drawn with ``noise`` (or fresh N(0, 1) noise
    from ``generator``). With noise_level = 0 the mean is exactly the ODE step.
    x, v: [B, ...]; sigma, sigma_next: [B] or scalars.
    """
    x, v = x.float(), v.float()
    sig, sig_next = _as_batch(sigma, x), _as_batch(sigma_next, x)
    g, s = sde_std(sig, sig_next, noise_level)
    dt = _bcast(sig_next - sig, x)
    sig_b = _bcast(sig, x)
    mean = x + (v + _bcast(g * g, x) / (2.0 * sig_b) * (x + (1.0 - sig_b) * v)) * dt
    s_b = _bcast(s, x)
    if sample is None:
        if noise is None:
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float32,
                                device=generator.device if generator is not None else x.device)
        sample = mean + s_b * noise.to(mean.device, torch.float32)  # a CPU generator's draw on any device
    sample = sample.detach().float()
    if noise_level == 0:
        log_prob = torch.zeros(x.shape[0], device=x.device)
    else:
        logp = -((sample - mean) ** 2) / (2.0 * s_b**2) - torch.log(s_b) - _LOG_SQRT_2PI
        log_prob = logp.mean(dim=tuple(range(1, x.ndim)))
    return SDEStep(sample, mean, s, log_prob)
