"""The rollout-scheme interface: what differs between GRPO algorithms for flow models.

A scheme decides which samples an iteration draws, how they are grouped for advantages,
which transitions are trained and with which step weight. The trainer is the same for all;
per iteration it calls

    plan    = scheme.plan(it)                                   # the iteration's steps (sorted)
    samples = scheme.sample(model, cond, positions, plan, it)   # once per chunk of local prompts
    ...                                                         # decode, reward, advantages over samples.groups
    batch   = scheme.transitions(samples, advantages, valid)    # Transitions of grpo/objective.py
    keys    = scheme.start_keys(positions, plan)                # [R] global ids of batch's start states
    record |= scheme.log_record(plan, all_advantages)

Noise depends only on (train.seed, iteration, global prompt position, sample index) (see
training/rollout_phase.py), so 1 and N processes draw the same samples. ``cost_nfe`` is the
sampling cost in per-sample model evaluations (a CFG call counts 2), as a formula of the config.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Sequence

import torch
from torch import Tensor

from tempflow.grpo.objective import Transitions
from tempflow.models.base import Conditioning, FlowModel
from tempflow.sampling import step_function
from tempflow.sampling.weights import flash_weights, power_weights
from tempflow.training.rollout_phase import Samples


def step_weight_table(kind: str, sigmas: Tensor, noise_level: float, steps: Sequence[int],
                      power: float = 1.0) -> Tensor:
    """w_j for each of the trained ``steps``, float32 [len(steps)], mean 1 unless 'none':

    none: 1;  tempflow: s_j / mean s;  power: s_j^p / mean s^p;  flash: (1 / c_j) / mean (1 / c)
    with s_j the SDE transition std and c_j = d log p / d v per unit noise (sampling/weights.py).
    sigmas: [T + 1] schedule (CPU).
    """
    if kind == "none":
        return torch.ones(len(steps))
    if kind == "tempflow":
        return power_weights(sigmas, noise_level, steps, 1.0)
    if kind == "power":
        return power_weights(sigmas, noise_level, steps, power)
    if kind == "flash":
        return flash_weights(sigmas, noise_level, steps)
    raise ValueError(f"unknown step weight {kind!r}")


class RolloutScheme(ABC):
    """One GRPO rollout scheme, built from a validated :class:`~tempflow.config.TrainConfig`.

    sigmas: [T + 1] schedule on the model's device. ``self.steps``: the trained steps
    [0, ..., floor(train_fraction T) - 1]; ``self.weight_table``: [len(steps)] w_j of each.
    """

    name: ClassVar[str] = ""

    def __init__(self, cfg, sigmas: Tensor):
        self.cfg = cfg
        self.sigmas = sigmas
        self.steps = cfg.trained_steps()
        self.t_steps = sigmas.numel() - 1
        self.noise_level = cfg.sampling.noise_level
        self.guidance = cfg.sampling.guidance_scale
        self.cfg_factor = 2 if cfg.sampling.use_cfg else 1
        self.step_fn = step_function(cfg.sampling.sde_type)  # sde_step or cps_step
        a = cfg.algorithm
        self.weight_table = step_weight_table(a.step_weight, sigmas.cpu(), self.noise_level, self.steps,
                                              a.weight_power)

    # ------------------------------------------------------------------ per iteration
    def plan(self, iteration: int) -> list[int]:
        """The steps this iteration trains (the same on every process); default: all trained."""
        return list(self.steps)

    @abstractmethod
    def sample(self, model: FlowModel, cond: Conditioning, positions: list[int], plan: list[int],
               iteration: int) -> Samples:
        """Rollouts of the local prompts ``positions`` (global indices; cond: batch len(positions)),
        without gradient. Returns finals [N, ...] to decode and reward, prompt_rows [N] (0-based
        local prompt of each), groups [N] (global advantage-group ids) and the raw rollout."""

    @abstractmethod
    def transitions(self, samples: Samples, advantages: Tensor, valid: Tensor) -> Transitions:
        """The training batch: advantages, valid: [N] per sample of ``samples``, in its order."""

    @abstractmethod
    def starts_per_prompt(self, plan: list[int]) -> int:
        """Rows (start states) of :meth:`transitions` per prompt."""

    @abstractmethod
    def cost_nfe(self, prompts: int, plan: list[int] | None = None) -> float:
        """Sampling cost of ``prompts`` prompts in model evaluations per sample (x2 with CFG).
        ``plan``: the iteration's plan, where the cost depends on it (None: its mean)."""

    # ------------------------------------------------------------------ shared helpers
    def step_weights(self, steps: Sequence[int]) -> Tensor:
        """w_j of the given trained steps, float32 [len(steps)]."""
        return self.weight_table[[self.steps.index(int(j)) for j in steps]]

    def start_keys(self, positions: list[int], plan: list[int]) -> Tensor:
        """[R] global id of each row of :meth:`transitions` (prompt position * per + row within
        the prompt): the same for any number of processes, so minibatches split identically."""
        per = self.starts_per_prompt(plan)
        return (torch.tensor(positions).repeat_interleave(per) * per + torch.arange(per).repeat(len(positions)))

    def log_record(self, plan: list[int], advantages: Tensor) -> dict[str, float]:
        """Per-iteration log entries; advantages: [N_global] of all processes. Default: the
        weight of each planned step (weight/step<j>)."""
        return {f"weight/step{j}": float(w) for j, w in zip(plan, self.step_weights(plan))}

    def observe(self, plan: list[int], rewards: Tensor, groups: Tensor) -> None:
        """Learn from the iteration's rewards [N_global] (NaN: failed) and groups [N_global],
        after scoring and before the next :meth:`plan` (default: nothing)."""

    def state_dict(self) -> dict:
        """Running state an exact resume needs (none by default)."""
        return {}

    def load_state_dict(self, sd: dict) -> None:
        """Restore :meth:`state_dict`."""
