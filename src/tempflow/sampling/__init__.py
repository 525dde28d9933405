"""Sampler math: schedules, ODE / SDE / CPS steps with log-probs, step weights, loops."""

from tempflow.sampling.schedule import flow_sigmas, shift_sigma, trained_steps
from tempflow.sampling.steps import SDEStep, ode_step, sde_std, sde_step
from tempflow.sampling.cps import cps_std, cps_step
from tempflow.sampling.weights import (flash_weights, logprob_gradient_scale, noise_aware_weights,
                                       power_weights)



def step_function(sde_type: str):
    """The stochastic step of ``sampling.sde_type``: 'sde' (Flow-GRPO's
    :func:`~tempflow.sampling.steps.sde_step`) or 'cps' (:func:`~tempflow.sampling.cps.cps_step`).
    Both take (x, v, sigma, sigma_next, noise_level, sample=, noise=, generator=) and return an
    :class:`SDEStep`, so rollouts and the loss use whichever the config names."""
    steps = {"sde": sde_step, "cps": cps_step}
    if sde_type not in steps:
        raise ValueError(f"sde_type must be one of {', '.join(steps)}, got {sde_type!r}")
    return steps[sde_type]


__all__ = ["step_function", "flow_sigmas", "shift_sigma", "trained_steps", "SDEStep", "ode_step", "sde_std",
           "sde_step", "cps_std", "cps_step", "noise_aware_weights", "flash_weights",
           "logprob_gradient_scale", "power_weights"]
