"""The training objective over stored transitions, with the shared forward of TempFlow-GRPO.

Transitions are grouped by the state they leave from. All K branches of (seed, j) leave the
same trunk state x_j, so ONE policy forward at (x_j, sigma_j) gives the SDE mean for all K
log-probs (and one reference forward gives the KL): |J| forward+backward passes per seed
instead of K x |J|. Flow-GRPO's transitions are the K = 1 case of the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tempflow.grpo.losses import clipped_policy_loss, kl_penalty
from tempflow.models.base import Conditioning, FlowModel
from tempflow.sampling import step_function
from tempflow.sampling.steps import sde_std


@dataclass
class Transitions:
    """R start states with K stored next states each.

    starts: [R, ...] x_j; sigma, sigma_next: [R] float32; cond: Conditioning of batch R;
    samples: [R, K, ...]; old_log_probs, advantages: [R, K] float32; valid: [R, K] bool
    (a finite reward in a group with signal); weights: [R] float32 (w_j, or 1).
    """

    starts: Tensor
    sigma: Tensor
    sigma_next: Tensor
    cond: Conditioning
    samples: Tensor
    old_log_probs: Tensor
    advantages: Tensor
    valid: Tensor
    weights: Tensor

    def __len__(self) -> int:
        return self.starts.shape[0]

    def select(self, index: Tensor) -> "Transitions":
        """Rows by index tensor [r]."""
        return Transitions(self.starts[index], self.sigma[index], self.sigma_next[index],
                           self.cond[index], self.samples[index], self.old_log_probs[index],
                           self.advantages[index], self.valid[index], self.weights[index])

    def with_signal(self) -> "Transitions":
        """Drop start states none of whose transitions is valid (they add nothing to the loss)."""
        return self.select(self.valid.any(dim=1).nonzero().squeeze(1))

    def per_branch(self) -> "Transitions":
        """The naive layout: every transition its own row (R * K rows, K = 1)."""
        r, k = self.samples.shape[:2]
        rep = torch.arange(r).repeat_interleave(k)
        flat = lambda t: t.reshape(r * k, 1, *t.shape[2:])  # noqa: E731
        return Transitions(self.starts[rep], self.sigma[rep], self.sigma_next[rep], self.cond[rep],
                           flat(self.samples), flat(self.old_log_probs), flat(self.advantages),
                           flat(self.valid), self.weights[rep])


@dataclass
class ObjectiveConfig:
    """Loss settings. kl_std: 's' (the step's own transition std: s_j, or CPS's std) or 'g'
    (Flow-GRPO's g_j); sde_type: 'sde' or 'cps', the step the rollout sampled with (its
    log-probs are recomputed with the same step, so the on-policy ratio is exactly 1)."""

    noise_level: float
    clip_range: float
    beta: float
    guidance_scale: float | None = None
    kl_std: str = "s"
    sde_type: str = "sde"


def grpo_loss(model: FlowModel, batch: Transitions, cfg: ObjectiveConfig) -> tuple[Tensor, dict[str, float]]:
    """L = mean over valid transitions of the clipped ratio loss (weighted by w_j)
         + beta * mean over valid transitions of the KL to the reference at the same start.

    One model forward per start state (with gradient), one more without gradient (reference)
    when beta > 0. Returns (loss, stats) with stats: policy_loss, kl, clip_frac, approx_kl,
    ratio_mean, ratio_min, ratio_max, transitions.
    """
    r, k = batch.samples.shape[:2]
    shape = batch.starts.shape[1:]
    if not bool(batch.valid.any()):
        raise ValueError("grpo_loss needs at least one valid transition (use Transitions.with_signal)")
    step_fn = step_function(cfg.sde_type)
    v = model.velocity(batch.starts, batch.sigma, batch.cond, cfg.guidance_scale)
    expand = lambda t: t.unsqueeze(1).expand(r, k, *t.shape[1:]).reshape(r * k, *t.shape[1:])  # noqa: E731
    step = step_fn(expand(batch.starts), expand(v), expand(batch.sigma), expand(batch.sigma_next),
                    cfg.noise_level, sample=batch.samples.reshape(r * k, *shape))
    dev = step.log_prob.device  # advantages and weights are computed on the CPU
    valid = batch.valid.to(dev).reshape(-1)
    pol = clipped_policy_loss(step.log_prob[valid], batch.old_log_probs.to(dev).reshape(-1)[valid],
                              batch.advantages.to(dev).reshape(-1)[valid], cfg.clip_range,
                              expand(batch.weights.to(dev))[valid])
    loss = pol.loss
    kl_value = torch.zeros(())
    if cfg.beta > 0:
        with torch.no_grad(), model.reference():
            v_ref = model.velocity(batch.starts, batch.sigma, batch.cond, cfg.guidance_scale)
        # the SDE mean is affine in v, so one start's mean serves all of its K transitions
        own = step_fn(batch.starts, v, batch.sigma, batch.sigma_next, cfg.noise_level, sample=batch.starts)
        mean_ref = step_fn(batch.starts, v_ref, batch.sigma, batch.sigma_next, cfg.noise_level,
                           sample=batch.starts).mean
        g, _ = sde_std(batch.sigma, batch.sigma_next, cfg.noise_level)
        kl_rows = kl_penalty(own.mean, mean_ref, own.std if cfg.kl_std == "s" else g)  # [R]
        counts = batch.valid.to(kl_rows.device).float().sum(dim=1)
        kl_value = (kl_rows * counts).sum() / counts.sum().clamp(min=1)
        loss = loss + cfg.beta * kl_value
    stats = {"policy_loss": float(pol.loss.detach()), "kl": float(kl_value.detach()),
             "clip_frac": float(pol.clip_frac), "approx_kl": float(pol.approx_kl),
             "ratio_mean": float(pol.ratio.mean()) if pol.ratio.numel() else 1.0,
             "ratio_min": float(pol.ratio.min()) if pol.ratio.numel() else 1.0,
             "ratio_max": float(pol.ratio.max()) if pol.ratio.numel() else 1.0,
             "transitions": int(valid.sum())}
    return loss, stats


def branch_transitions(rollout, cond: Conditioning, sigmas: Tensor, advantages: Tensor,
                       valid: Tensor, weights: Tensor) -> Transitions:
    """Transitions of a :class:`~tempflow.grpo.rollout.BranchRollout`: one start per (seed, j).

    cond: batch S (one row per seed); advantages, valid: [S, P, K]; weights: [P] (w_j of
    each branch point). Returns R = S * P starts with K samples each.
    """
    s_count, p, k = rollout.log_probs.shape
    pts = torch.tensor(rollout.points)
    shape = rollout.starts.shape[2:]
    return Transitions(
        starts=rollout.starts.reshape(s_count * p, *shape),
        sigma=sigmas[pts].repeat(s_count), sigma_next=sigmas[pts + 1].repeat(s_count),
        cond=cond.repeat_interleave(p), samples=rollout.samples.reshape(s_count * p, k, *shape),
        old_log_probs=rollout.log_probs.reshape(s_count * p, k),
        advantages=advantages.reshape(s_count * p, k).float(), valid=valid.reshape(s_count * p, k),
        weights=weights.float().repeat(s_count))


def trajectory_transitions(rollout, cond: Conditioning, sigmas: Tensor, steps: list[int],
                           advantages: Tensor, valid: Tensor, weights: Tensor) -> Transitions:
    """Transitions of a :class:`~tempflow.grpo.rollout.FlowGRPORollout` at the trained ``steps``.

    cond: batch N; advantages, valid: [N] (one terminal reward per trajectory, broadcast to
    its steps); weights: [len(steps)]. Returns R = N * len(steps) starts with K = 1.
    """
    n = rollout.final.shape[0]
    idx = torch.tensor(steps)
    shape = rollout.final.shape[1:]
    return Transitions(
        starts=rollout.xs[idx].transpose(0, 1).reshape(n * len(steps), *shape),
        sigma=sigmas[idx].repeat(n), sigma_next=sigmas[idx + 1].repeat(n),
        cond=cond.repeat_interleave(len(steps)),
        samples=rollout.xs[idx + 1].transpose(0, 1).reshape(n * len(steps), 1, *shape),
        old_log_probs=rollout.log_probs[idx].transpose(0, 1).reshape(-1, 1),
        advantages=advantages.float().repeat_interleave(len(steps)).unsqueeze(1),
        valid=valid.repeat_interleave(len(steps)).unsqueeze(1),
        weights=weights.float().repeat(n))


def step_transitions(rollout, cond: Conditioning, sigmas: Tensor, row_steps: Tensor,
                     advantages: Tensor, valid: Tensor, weights: Tensor) -> Transitions:
    """One transition per trajectory of a :class:`~tempflow.grpo.rollout.FlowGRPORollout`, each at
    its own step: row i is x_{j_i} -> x_{j_i + 1} with j_i = ``row_steps[i]``.

    cond: batch N; row_steps, advantages, valid, weights: [N]. Returns R = N starts, K = 1.
    """
    n = rollout.final.shape[0]
    j, i = row_steps.long(), torch.arange(n)
    return Transitions(
        starts=rollout.xs[j, i], sigma=sigmas[j], sigma_next=sigmas[j + 1], cond=cond,
        samples=rollout.xs[j + 1, i].unsqueeze(1), old_log_probs=rollout.log_probs[j, i].unsqueeze(1),
        advantages=advantages.float().unsqueeze(1), valid=valid.unsqueeze(1), weights=weights.float())
