"""The ``algorithm`` config section: rollout scheme, step weight, advantages and the loss
(docs/algorithms.md; cross-field checks against the sampling schedule are in TrainConfig)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from tempflow.config.section import Section
from tempflow.errors import UserError


@dataclass(frozen=True)
class AlgorithmConfig(Section):
    """Flow-GRPO / TempFlow-GRPO: rollouts, advantages and the loss (algorithm.md 3-4)."""

    _prefix: ClassVar[str] = "algorithm."
    scheme: Literal["flow_grpo", "branching", "single_step", "sde_window"] | None = None
    """Rollout scheme (tempflow.schemes): branching (TempFlow-GRPO), flow_grpo (full SDE
    trajectories), single_step (Flash-GRPO), sde_window (MixGRPO); null: from algorithm.branching,
    else branching."""
    branching: bool | None = None
    """Old name of algorithm.scheme, read for older configs: true = branching, false = flow_grpo.
    Validation moves it into algorithm.scheme and leaves it null."""
    weighting: bool | None = None
    """Old name of algorithm.step_weight, read for older configs: true = tempflow, false = none.
    Validation moves it into algorithm.step_weight and leaves it null."""
    step_weight: Literal["none", "tempflow", "flash", "power"] | None = None
    """Policy-loss weight w_j of a step-j transition: none (1), tempflow (s_j / mean s), flash
    (Flash-GRPO's (1 / c_j) / mean(1 / c)), power (s_j^p / mean s^p, p = weight_power); means over
    the trained steps. null: from algorithm.weighting, else tempflow."""
    weight_power: float = 1.0
    """With step_weight power: the exponent p (1 = tempflow, 0 = none)."""
    group_size: int = 8
    """flow_grpo, single_step, sde_window: trajectories per prompt (G), one advantage group."""
    sde_step: int | None = None
    """single_step: the trained step every group samples stochastically (null: drawn uniformly
    from the trained steps per iteration and prompt)."""
    window_size: int = 2
    """sde_window: consecutive trained steps with SDE sampling and training."""
    window_start: int | None = None
    """sde_window: the window's first step (null: drawn uniformly per iteration)."""
    seeds_per_prompt: int = 2
    """Branching: initial noises (ODE trunks) per prompt."""
    num_branches: int = 4
    """Branching: SDE branches K per (seed, branch point)."""
    branch_points: Literal["all"] | list[int] | int = "all"
    """Branching: 'all' trained steps, a list of steps, or r = r random trained steps per iteration."""
    branch_policy: Literal["uniform", "early", "adaptive"] = "uniform"
    """Branching with r random branch points: how they are drawn: uniform, early (P(j) proportional
    to the transition std s_j, higher for early noisy steps) or adaptive (P(j) proportional to a
    running mean of step j's measured reward std across a seed's K branches)."""
    adaptive_decay: float = 0.9
    """branch_policy adaptive: the running mean's decay, m_j <- d m_j + (1 - d) std_j per iteration
    that branches at j."""
    continuation_steps: int | None = None
    """Branching: ODE steps of each branch's continuation to sigma = 0 for its reward, over evenly
    spaced sigmas of the schedule (null: every remaining step). Fewer is cheaper, coarser images."""
    group_by: Literal["seed", "prompt"] = "seed"
    """Branching advantage group: K branches of a seed at step j, or all seeds of a prompt at j."""
    std: Literal["group", "batch"] = "batch"
    """Advantage std: per group, or over the whole batch (Flow-GRPO's default)."""
    tied_groups: Literal["drop", "zeros"] = "drop"
    """Groups whose rewards all tie (no signal): drop their samples from the loss, or keep them in
    the loss mean with advantage 0 (zeros: the TempFlow-GRPO authors' code; they add only KL)."""
    adv_clip: float = 5.0
    """Advantages are clipped to [-adv_clip, adv_clip]."""
    clip_range: float = 1e-4
    """PPO ratio clip eps: r is clipped to [1 - eps, 1 + eps]."""
    beta: float = 0.01
    """KL weight (the paper: 0.004 GenEval, 0.001 PickScore; about 10x with kl_std g). The shapes
    default, 2.5x the paper's, gained more than 0.04 and about as much as none (README)."""
    kl_std: Literal["s", "g"] = "s"
    """KL denominator: transition std s_j (TempFlow) or Flow-GRPO's g_j."""

    def _check(self) -> None:
        self._resolve_alias("scheme", "branching", {True: "branching", False: "flow_grpo"}, "branching")
        self._resolve_alias("step_weight", "weighting", {True: "tempflow", False: "none"}, "tempflow")
        self._need("group_size", self.group_size >= 2, ">= 2",
                   "advantages compare at least two trajectories per prompt")
        self._need("sde_step", self.sde_step is None or self.sde_step >= 0, ">= 0 or null",
                   "it is a trained step index; null draws one per iteration and prompt")
        self._need("window_size", self.window_size >= 1, ">= 1", "the window holds the trained steps")
        self._need("window_start", self.window_start is None or self.window_start >= 0, ">= 0 or null",
                   "it is a trained step index; null draws the window per iteration")
        self._need("seeds_per_prompt", self.seeds_per_prompt >= 1, ">= 1", "each prompt needs a seed")
        self._need("num_branches", self.num_branches >= 2, ">= 2",
                   "branching needs at least two branches to compare")
        bp = self.branch_points
        if isinstance(bp, list):
            self._need("branch_points", bool(bp) and min(bp) >= 0 and len(set(bp)) == len(bp),
                       "a non-empty list of distinct steps >= 0", "write trained step indices, e.g. [0, 2, 4]")
        elif isinstance(bp, int):
            self._need("branch_points", bp >= 1, ">= 1", "an integer r draws r random branch points")
        self._need("adaptive_decay", 0 <= self.adaptive_decay < 1, "in [0, 1)",
                   "it is the running mean's decay (0: the last iteration's std only)")
        if self.continuation_steps is not None:
            self._need("continuation_steps", self.continuation_steps >= 1, ">= 1 or null",
                       "null continues every branch through all remaining steps")
        self._need("adv_clip", self.adv_clip > 0, "> 0", "advantages are clipped to [-adv_clip, adv_clip]")
        self._need("clip_range", self.clip_range > 0, "> 0", "the PPO ratio clip needs a width (1e-4)")
        self._need("beta", self.beta >= 0, ">= 0", "beta weighs the KL penalty; 0 disables it")

    def _resolve_alias(self, name: str, old: str, mapping: dict, default: str) -> None:
        """Move the old boolean field ``old`` into ``name`` as ``mapping[old]`` (both null:
        ``default``) and clear it; UserError naming both when both are given and differ."""
        value, flag = getattr(self, name), getattr(self, old)
        if value is not None and flag is not None and mapping[flag] != value:
            raise UserError(f"{self._prefix}{name} ({value!r}) and {self._prefix}{old} ({str(flag).lower()}) "
                            f"contradict: {self._prefix}{old} is the old name of {self._prefix}{name} "
                            f"({str(flag).lower()} means {mapping[flag]!r}); give only {self._prefix}{name}")
        if value is None:
            value = default if flag is None else mapping[flag]
        object.__setattr__(self, name, value)
        object.__setattr__(self, old, None)
