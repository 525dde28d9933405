"""Sampling loops over a :class:`~tempflow.models.base.FlowModel`."""

from __future__ import annotations

import torch
from torch import Tensor

from tempflow.models.base import Conditioning, FlowModel
from tempflow.sampling.steps import ode_step


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
