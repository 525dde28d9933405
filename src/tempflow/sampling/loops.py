"""Sampling loops over a :class:`~tempflow.models.base.FlowModel`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tempflow.models.base import Conditioning, FlowModel
from tempflow.sampling.steps import ode_step, sde_step


@torch.no_grad()
def sample_ode(model: FlowModel, cond: Conditioning, noise: Tensor, sigmas: Tensor,
               guidance_scale: float | None = None, start: int = 0,
               negative: Conditioning | None = None) -> Tensor:
    """Integrate the probability-flow ODE with Euler steps from sigmas[start] to sigmas[-1].

    noise: x at sigmas[start], [B, *latent_shape]; cond: batch B; sigmas: [T + 1].
    Returns the final latents, float32 [B, *latent_shape].
    """
    x = noise.float()
    b = x.shape[0]
    for j in range(start, sigmas.numel() - 1):
        sig = sigmas[j].to(x.device).expand(b)
        v = model.velocity(x, sig, cond, guidance_scale, negative)
        x = ode_step(x, v, sig, sigmas[j + 1].to(x.device).expand(b))
    return x


@dataclass
class SDETrajectory:
    """A stored SDE trajectory. xs: [T + 1, B, ...] states; log_probs: [T, B]."""

    xs: Tensor
    log_probs: Tensor


@torch.no_grad()
def sample_sde(model: FlowModel, cond: Conditioning, noise: Tensor, sigmas: Tensor,
               noise_level: float, guidance_scale: float | None = None,
               generator: torch.Generator | None = None,
               negative: Conditioning | None = None) -> SDETrajectory:
    """Flow-GRPO rollout: SDE steps from sigma = 1 to 0, storing states and log-probs.

    The final step (to sigma = 0) is also stochastic here; trainers choose which steps to use.
    """
    x = noise.float()
    b = x.shape[0]
    xs, logps = [x], []
    for j in range(sigmas.numel() - 1):
        sig, nxt = sigmas[j].to(x.device).expand(b), sigmas[j + 1].to(x.device).expand(b)
        v = model.velocity(x, sig, cond, guidance_scale, negative)
        if float(sigmas[j + 1]) == 0.0:
            x, lp = ode_step(x, v, sig, nxt), torch.zeros(b, device=x.device)
        else:
            x, _, _, lp = sde_step(x, v, sig, nxt, noise_level, generator=generator)
        xs.append(x)
        logps.append(lp)
    return SDETrajectory(torch.stack(xs), torch.stack(logps))
