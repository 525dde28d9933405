"""Sampler math: schedules, ODE / SDE steps with log-probs, noise-aware weights, loops."""

from tempflow.sampling.schedule import flow_sigmas, shift_sigma, trained_steps
from tempflow.sampling.steps import SDEStep, ode_step, sde_std, sde_step
from tempflow.sampling.weights import noise_aware_weights

__all__ = ["flow_sigmas", "shift_sigma", "trained_steps", "SDEStep", "ode_step", "sde_std",
           "sde_step", "noise_aware_weights"]
