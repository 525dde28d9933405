"""TempFlow-GRPO's trajectory branching (algorithm.md section 4).

Per prompt, S = seeds_per_prompt ODE trunks; at each branch point j of the iteration's plan,
K = num_branches SDE branches y_{j,k} leave the trunk state x_j and follow the ODE to sigma = 0
(or over continuation_steps evenly spaced sigmas). R_{j,k} is the reward of branch (j, k)'s
image; groups are the K branches of one (seed, j) (group_by seed) or all S x K of one
(prompt, j) (group_by prompt). Rows: (seed, j) with K samples each (one shared forward).

Branch points: algorithm.branch_points through :class:`~tempflow.config.BranchPointSpec`,
drawn per iteration from SeedSequence([train.seed, iteration, 11]) (the same on every process)
by algorithm.branch_policy: uniform; early, P(j) proportional to s_j (the SDE transition std,
larger at early noisy steps); adaptive, P(j) proportional to m_j, a running mean of step j's
measured reward std across the K branches of one seed:

    std_j = mean over seeds s of std_k R_{s,j,k}      (seeds with >= 2 finite rewards)
    m_j  <- d m_j + (1 - d) std_j                     (d = adaptive_decay; first time: std_j)

Steps never measured score max_j m_j (1 before any measurement), and every score is floored
at 5% of the largest so no step starves. m is saved in checkpoints (state_dict) for exact resume.

Cost per seed: T + K * sum_{j in plan} c_j with c_j = min(T - 1 - j, continuation_steps)
ODE steps of a continuation (x2 with CFG).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from tempflow.grpo.objective import Transitions, branch_transitions
from tempflow.grpo.rollout import continuation_indices
from tempflow.sampling.steps import sde_std
from tempflow.schemes.base import RolloutScheme
from tempflow.training.rollout_phase import Samples, sample_branching


class BranchingScheme(RolloutScheme):
    """algorithm.scheme = branching."""

    name = "branching"

    def __init__(self, cfg, sigmas):
        super().__init__(cfg, sigmas)
        self.spec = cfg.branch_point_spec()
        cand = torch.tensor(self.spec.candidates)
        sig = sigmas.cpu().float()
        self.early_scores = sde_std(sig[cand], sig[cand + 1], self.noise_level)[1].tolist()  # s_j
        self.std_mean: list[float | None] = [None] * len(cand)  # m_j, adaptive

    def scores(self) -> list[float] | None:
        """The draw's score of each candidate step (None: uniform)."""
        if self.spec.policy == "early":
            return self.early_scores
        if self.spec.policy != "adaptive":
            return None
        seen = [m for m in self.std_mean if m is not None]
        fill = max(seen) if seen else 1.0
        vals = [fill if m is None else m for m in self.std_mean]
        floor = 0.05 * max(max(vals), 1e-6)
        return [max(v, floor) for v in vals]

    def plan(self, iteration: int) -> list[int]:
        """'all' trained steps, an explicit list, or r trained steps drawn by the policy (same
        on every process)."""
        key = np.random.SeedSequence([self.cfg.train.seed, iteration, 11]).generate_state(1)[0]
        return self.spec.draw(torch.Generator().manual_seed(int(key)), self.scores())

    def observe(self, plan, rewards, groups) -> None:
        """adaptive: update m_j of each branch point from rewards [N_global], laid out as
        [S, P, K] (seeds of all processes, plan's points, branches)."""
        if self.spec.policy != "adaptive":
            return
        r = rewards.double().view(-1, len(plan), self.cfg.algorithm.num_branches)    # [S, P, K]
        finite = torch.isfinite(r)
        n = finite.sum(2)                                                          # [S, P]
        r0 = torch.where(finite, r, torch.zeros_like(r))
        mean = r0.sum(2) / n.clamp(min=1)
        dev = torch.where(finite, r0 - mean[..., None], torch.zeros_like(r0))
        std = ((dev ** 2).sum(2) / n.clamp(min=1)).sqrt()                          # [S, P]
        ok = n >= 2
        d = self.cfg.algorithm.adaptive_decay
        for p, j in enumerate(plan):
            if ok[:, p].any():
                value = float(std[ok[:, p], p].mean())
                i = self.spec.candidates.index(j)
                old = self.std_mean[i]
                self.std_mean[i] = value if old is None else d * old + (1 - d) * value

    def state_dict(self) -> dict:
        """{"std_mean": m_j per candidate step (None: never measured)} with the adaptive policy."""
        return {"std_mean": list(self.std_mean)} if self.spec.policy == "adaptive" else {}

    def load_state_dict(self, sd: dict) -> None:
        if "std_mean" in sd:
            if len(sd["std_mean"]) != len(self.std_mean):
                raise ValueError(f"branch-point state has {len(sd['std_mean'])} steps, this run {len(self.std_mean)}")
            self.std_mean = [None if m is None else float(m) for m in sd["std_mean"]]

    def sample(self, model, cond, positions, plan, iteration) -> Samples:
        a = self.cfg.algorithm
        return sample_branching(model, cond, positions, a.seeds_per_prompt, a.num_branches, plan, self.sigmas,
                                self.noise_level, self.guidance, a.group_by, self.cfg.train.seed, iteration,
                                a.continuation_steps, step_fn=self.step_fn)

    def transitions(self, samples: Samples, advantages: Tensor, valid: Tensor) -> Transitions:
        s, p, k = samples.shape_spk
        return branch_transitions(samples.rollout, samples.cond, self.sigmas.cpu(), advantages.view(s, p, k),
                                  valid.view(s, p, k), self.step_weights(samples.points))

    def starts_per_prompt(self, plan) -> int:
        return self.cfg.algorithm.seeds_per_prompt * len(plan)  # (seed, branch point)

    def continuation_cost(self, j: int) -> int:
        """ODE steps of a branch's continuation from sigma_{j+1} to 0."""
        return len(continuation_indices(j + 1, self.t_steps, self.cfg.algorithm.continuation_steps)) - 1

    def cost_nfe(self, prompts: int, plan=None) -> float:
        """prompts * S * (T + K * sum_{j in plan} c_j) (x2 with CFG); plan None with random
        branch points: the mean over the draw, r * mean_j c_j for the sum."""
        a = self.cfg.algorithm
        if plan is None and self.spec.subset is not None:
            branch = self.spec.subset * float(np.mean([self.continuation_cost(j) for j in self.spec.candidates]))
        else:
            branch = sum(self.continuation_cost(j) for j in (self.spec.candidates if plan is None else plan))
        return prompts * a.seeds_per_prompt * (self.t_steps + a.num_branches * branch) * self.cfg_factor

    def log_record(self, plan, advantages) -> dict[str, float]:
        """adv_std/step<j>: std of the advantages at branch point j over all seeds and branches
        (how much signal each step's groups carry), and weight/step<j>."""
        per_step = advantages.view(-1, len(plan), self.cfg.algorithm.num_branches).std(dim=(0, 2))
        return {**{f"adv_std/step{j}": float(v) for j, v in zip(plan, per_step)},
                **super().log_record(plan, advantages)}
