"""Sampler math: schedules, ODE / SDE / CPS steps with log-probs, step weights, loops."""

from tempflow.sampling.schedule import flow_sigmas, shift_sigma, trained_steps
from tempflow.sampling.steps import SDEStep, ode_step, sde_std, sde_step
from tempflow.sampling.cps import cps_std, cps_step
from tempflow.sampling.weights import (flash_weights, logprob_gradient_scale, noise_aware_weights,
                                       power_weights)

__all__ = ["flow_sigmas", "shift_sigma", "trained_steps", "SDEStep", "ode_step", "sde_std",
           "sde_step", "cps_std", "cps_step", "noise_aware_weights", "flash_weights",
           "logprob_gradient_scale", "power_weights"]
