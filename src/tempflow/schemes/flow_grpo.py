"""Flow-GRPO: G independent SDE trajectories per prompt (algorithm.md section 3).

Each trajectory i of prompt p runs from its own noise with an SDE step at every trained step
and the ODE elsewhere (the last step, sigma_T = 0, is always ODE); its final image's reward
R_i gives one advantage A_i = (R_i - mean_p R) / (std + 1e-4), broadcast to all of its trained
steps. Groups: prompts. Rows: (trajectory, step), K = 1 sample each.

Cost per prompt: G * T model evaluations (x2 with CFG).
"""

from __future__ import annotations

from torch import Tensor

from tempflow.grpo.objective import Transitions, trajectory_transitions
from tempflow.schemes.base import RolloutScheme
from tempflow.training.rollout_phase import Samples, sample_trajectories


class FlowGRPOScheme(RolloutScheme):
    """algorithm.scheme = flow_grpo; group size algorithm.group_size (G)."""

    name = "flow_grpo"

    def sample(self, model, cond, positions, plan, iteration) -> Samples:
        return sample_trajectories(model, cond, positions, self.cfg.algorithm.group_size, plan, self.sigmas,
                                   self.noise_level, self.guidance, self.cfg.train.seed, iteration,
                                   step_fn=self.step_fn)

    def transitions(self, samples: Samples, advantages: Tensor, valid: Tensor) -> Transitions:
        return trajectory_transitions(samples.rollout, samples.cond, self.sigmas.cpu(), samples.points,
                                      advantages, valid, self.step_weights(samples.points))

    def starts_per_prompt(self, plan) -> int:
        return self.cfg.algorithm.group_size * len(plan)

    def cost_nfe(self, prompts: int, plan=None) -> float:
        """prompts * G * T (x2 with CFG)."""
        return prompts * self.cfg.algorithm.group_size * self.t_steps * self.cfg_factor
