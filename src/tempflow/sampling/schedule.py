"""Noise schedules for flow matching (sigma = 1 is noise, sigma = 0 is data)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def shift_sigma(sigma: Tensor | float, shift: float) -> Tensor:
    """SD3 / FLUX time shift: sigma' = s * sigma / (1 + (s - 1) * sigma).

    Shift > 1 spends more steps at high noise. Returns float32.
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def flow_sigmas(num_steps: int, shift: float = 3.0, num_train_timesteps: int = 1000) -> Tensor:
    """Sampling sigmas [num_steps + 1], float32, from 1 down to a final 0.

    Equal to diffusers' ``FlowMatchEulerDiscreteScheduler(shift=s).set_timesteps(T).sigmas``:
    the shifted training grid ends at sigma_min = shift(1 / num_train_timesteps); the T
    sampling points are linspace(1, sigma_min, T) shifted once more; a terminal 0 is appended.
    For shift 3, T = 10: [1, .9601, .9133, .8577, .7904, .7073, .6022, .4649, .2780, .0089, 0].
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    sigma_min = shift_sigma(1.0 / num_train_timesteps, shift).double()
    base = torch.linspace(1.0, float(sigma_min), num_steps, dtype=torch.float64)
    sigmas = shift * base / (1.0 + (shift - 1.0) * base)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)]).float()


def trained_steps(num_steps: int, fraction: float = 0.99) -> list[int]:
    """Step indices trained by (TempFlow-/Flow-)GRPO: the first floor(fraction * T).

    For T = 10 that is steps 0..8: the last step (sigma 0.0089 -> 0) carries almost no noise.
    """
    return list(range(math.floor(fraction * num_steps + 1e-9)))  # 0.29 * 100 is 28.999...
