"""TempFlow-GRPO and Flow-GRPO training: one trainer, one code path.

Each iteration runs five phases, top to bottom: sample (rollouts), score (decode + reward),
advantages (group-normalised, gathered across processes), train (clipped policy loss + KL,
inner epochs x minibatches), log. ``algorithm.branching`` picks TempFlow-GRPO's branched
rollouts or Flow-GRPO's independent SDE trajectories; ``algorithm.weighting`` turns the
noise-aware step weights on; the 2 x 2 ablation is four configs of the same trainer.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import numpy as np
import torch

from tempflow.config import TrainConfig
from tempflow.grpo.objective import ObjectiveConfig, branch_transitions, grpo_loss, trajectory_transitions
from tempflow.models import load_model
from tempflow.rewards import reward_from_config
from tempflow.sampling import flow_sigmas, noise_aware_weights
from tempflow.training.distributed import Dist
from tempflow.training.ema import EMA
from tempflow.training.prompts import PromptSet
from tempflow.training.rollout_phase import sample_branching, sample_trajectories
from tempflow.training.scoring import (FailureWatch, RewardScorer, component_means, gather_components,
                                       reward_advantages, sample_and_score)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Trainer:
    """Builds everything from a :class:`TrainConfig`; :meth:`iteration` runs one iteration."""

    def __init__(self, cfg: TrainConfig, dist: Dist | None = None):
        self.cfg = cfg
        self.dist = dist or Dist()
        torch.manual_seed(cfg.train.seed)
        self.model = load_model(cfg.model.name, device=self.dist.device,
                                dtype=DTYPES[cfg.model.dtype], resolution=cfg.model.resolution)
        self._prepare_model()
        params = self.model.trainable_parameters()
        self.optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.ema = EMA(params, cfg.train.ema_decay, cfg.train.ema_every, cfg.train.ema_warmup)
        self.reward = reward_from_config(cfg.reward)
        self.scorer = RewardScorer(self.model, self.reward, cfg.reward.name, cfg.reward.score_chunks,
                                   cfg.reward.async_scoring)
        self.failures = FailureWatch(cfg.reward.max_failed_iterations)
        self.train_set = PromptSet.load(cfg.prompts.train)
        self.eval_set = PromptSet.load(cfg.prompts.eval)
        if cfg.train.prompts_per_iteration % self.dist.world:
            from tempflow.errors import UserError
            raise UserError(f"train.prompts_per_iteration ({cfg.train.prompts_per_iteration}) must be a "
                            f"multiple of the number of processes ({self.dist.world})")
        with torch.no_grad():  # text embeddings of the prompt set, computed once
            self.train_cond = self.model.encode_prompts(self.train_set.prompts)
        self.sigmas = flow_sigmas(cfg.sampling.steps, cfg.sampling.shift).to(self.dist.device)
        self.steps = cfg.sampling.trained_steps()
        self.weights_all = noise_aware_weights(self.sigmas.cpu(), cfg.sampling.noise_level, self.steps)
        self.objective = ObjectiveConfig(cfg.sampling.noise_level, cfg.algorithm.clip_range,
                                         cfg.algorithm.beta, cfg.sampling.guidance_scale,
                                         cfg.algorithm.kl_std)

    def _prepare_model(self) -> None:
        m, cfg = self.model, self.cfg.model
        if cfg.lora is not None:
            m.transformer.requires_grad_(False)
            m.add_lora(cfg.lora.to_spec())
        else:
            m.transformer.requires_grad_(True)
            m.freeze_reference()
        if cfg.gradient_checkpointing and hasattr(m.transformer, "enable_gradient_checkpointing"):
            m.transformer.enable_gradient_checkpointing()
        m.transformer.train()

    # ------------------------------------------------------------------ phases
    def branch_points(self, iteration: int) -> list[int]:
        """'all' trained steps, an explicit list, or r random trained steps (same on every process)."""
        key = np.random.SeedSequence([self.cfg.train.seed, iteration, 11]).generate_state(1)[0]
        return self.cfg.branch_point_spec().draw(torch.Generator().manual_seed(int(key)))

    def iteration(self, it: int) -> dict:
        cfg, a, times = self.cfg, self.cfg.algorithm, defaultdict(float)
        counters0 = dict(self.model.counters)
        # 1. sample: this process's share of the iteration's prompts, in reward.score_chunks chunks
        positions = list(range(cfg.train.prompts_per_iteration))[self.dist.rank::self.dist.world]
        ids = self.train_set.draw(cfg.train.prompts_per_iteration, cfg.train.seed, it, cfg.prompts.balance)
        local_ids = [ids[p] for p in positions]
        cond = self.train_cond[torch.tensor(local_ids)]
        gs = cfg.sampling.guidance_scale
        points = self.branch_points(it) if a.branching else list(self.steps)

        def sample(rows: slice):
            with torch.no_grad():
                if a.branching:
                    return sample_branching(self.model, cond[rows], positions[rows], a.seeds_per_prompt,
                                            a.num_branches, points, self.sigmas, cfg.sampling.noise_level, gs,
                                            a.group_by, cfg.train.seed, it, a.continuation_steps)
                return sample_trajectories(self.model, cond[rows], positions[rows], a.group_size, points,
                                           self.sigmas, cfg.sampling.noise_level, gs, cfg.train.seed, it)

        def prompts_of(rows: slice, s) -> tuple[list[str], list[dict] | None]:
            ids_ = [local_ids[rows.start + r] for r in s.prompt_rows.tolist()]
            return [self.train_set.prompts[i] for i in ids_], self.train_set.metadata_of(ids_)

        # 2. score: each chunk is decoded and scored (worker thread) while the next one samples
        samples, scored = sample_and_score(sample, len(positions), prompts_of, self.scorer, times)
        images, prompts = scored.images, scored.prompts
        rewards = self.scorer.total(scored.components)  # [N] sum_k w_k R_k, NaN: failed
        self.last_samples = (images[:16], prompts[:16], rewards[:16])  # for training grids
        self.model.counters["reward_calls"] += len(prompts)
        # 3. advantages over the gathered batch (several rewards: reward.combine)
        with self._timed(times, "time/advantages"):
            all_c, all_g = gather_components(self.dist, scored.components), self.dist.gather(samples.groups)
            all_r, adv = reward_advantages(all_c, self.scorer.weights, all_g, cfg.reward.combine, a.std, a.adv_clip)
            self.failures.update(all_r, scored.errors)
            mine = slice(self.dist.rank * len(rewards), (self.dist.rank + 1) * len(rewards))
            advantages, valid = adv.advantages[mine], adv.valid[mine]
            self.last_batch = {"rewards": all_r, "groups": all_g, "advantages": adv.advantages}
        weights = (self.weights_all[[self.steps.index(j) for j in points]] if a.weighting
                   else torch.ones(len(points)))
        if a.branching:
            s, p, k = samples.shape_spk
            batch = branch_transitions(samples.rollout, samples.cond, self.sigmas.cpu(),
                                       advantages.view(s, p, k), valid.view(s, p, k), weights)
            per_prompt = a.seeds_per_prompt * p  # start states per prompt: (seed, branch point)
        else:
            batch = trajectory_transitions(samples.rollout, samples.cond, self.sigmas.cpu(), points,
                                           advantages, valid, weights)
            per_prompt = a.group_size * len(points)  # start states per prompt: (trajectory, step)
        # global ids of this process's start states, the same for any number of processes
        keys = (torch.tensor(positions).repeat_interleave(per_prompt) * per_prompt
                + torch.arange(per_prompt).repeat(len(positions)))
        # 4. train; not on a non-finite rollout (its rewards and log-probs mean nothing)
        finite_rows = torch.isfinite(samples.finals).flatten(1).all(1)
        nonfinite = int(self.dist.sum((~finite_rows).sum().float()).item())
        with self._timed(times, "time/train"):
            train_stats = self._train(batch, keys, it) if nonfinite == 0 else {"train/skipped_steps": 0}
        # 5. log
        keys = ("nfe", "nfe_grad", "decodes", "reward_calls")  # the same on every process
        local = torch.tensor([float(self.model.counters[k] - counters0.get(k, 0)) for k in keys])
        counters = dict(zip(keys, self.dist.sum(local).long().tolist()))
        finite = all_r[torch.isfinite(all_r)]
        record = {"iteration": it,
                  "reward/mean": float(finite.mean()) if finite.numel() else float("nan"),
                  "reward/std": float(finite.std(unbiased=False)) if finite.numel() else float("nan"),
                  "frac_reward_zero_std": adv.frac_zero_std, "reward/failed": adv.num_failed,
                  **component_means(all_c),
                  "rollout/nonfinite": nonfinite,
                  **train_stats, **{f"count/{k}": v for k, v in counters.items()}, **times}
        if a.branching:
            per_step = adv.advantages.view(-1, len(points), a.num_branches).std(dim=(0, 2))
            record.update({f"adv_std/step{j}": float(v) for j, v in zip(points, per_step)})
        record.update({f"weight/step{j}": float(w) for j, w in zip(points, weights)})
        return record

    def _train(self, batch, keys, it: int) -> dict:
        """Inner epochs x minibatches over start states; gradients summed across processes and
        normalised by the global number of valid transitions, so N processes == 1 process."""
        cfg = self.cfg.train
        total_keys = int(self.dist.sum(torch.tensor(float(len(keys)))).item())
        params = self.model.trainable_parameters()
        stats, skipped = defaultdict(list), 0
        for epoch in range(cfg.inner_epochs):
            perm = torch.from_numpy(np.random.default_rng([cfg.seed, it, epoch, 13]).permutation(total_keys))
            rank_of = torch.empty(total_keys, dtype=torch.long)
            rank_of[perm] = torch.arange(total_keys)
            mb_of = rank_of[keys] * cfg.minibatches // total_keys           # [R_local]
            for mb in range(cfg.minibatches):
                rows = (mb_of == mb).nonzero().squeeze(1)
                sub = batch.select(rows)
                n_local = sub.valid.sum()
                n_global = self.dist.sum(n_local.float())
                self.optimizer.zero_grad(set_to_none=False)
                for prm in params:
                    if prm.grad is None:
                        prm.grad = torch.zeros_like(prm)
                if n_global == 0:
                    continue
                loss, st = torch.zeros(()), {}
                if n_local > 0:
                    sub = sub.with_signal()
                    loss, st = grpo_loss(self.model, sub, self.objective)
                    (loss * (n_local.float() / n_global)).backward()
                for prm in params:
                    prm.grad = self.dist.sum(prm.grad)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                # NaN / inf guard: skip the step on every process (the flags are summed)
                if self.dist.sum(torch.stack([~torch.isfinite(loss.detach()), ~torch.isfinite(grad_norm)])
                                 .float().cpu()).any():
                    skipped += 1
                    continue
                for k, v in st.items():
                    stats[k].append(v)
                stats["grad_norm"].append(float(grad_norm))
                self.optimizer.step()
                self.ema.step()
        out = {f"train/{k}": float(np.mean(v)) for k, v in stats.items() if k not in ("ratio_min", "ratio_max", "transitions")}
        if stats["ratio_min"]:
            out["train/ratio_min"] = float(np.min(stats["ratio_min"]))
            out["train/ratio_max"] = float(np.max(stats["ratio_max"]))
        out["train/skipped_steps"] = skipped
        return out

    # ------------------------------------------------------------------ state
    def _named_trainable(self) -> dict[str, torch.nn.Parameter]:
        """The trainable parameters by their name in the denoiser, in optimiser order."""
        names = {id(p): n for n, p in self.model.transformer.named_parameters()}
        return {names.get(id(p), f"param{i}"): p for i, p in enumerate(self.model.trainable_parameters())}

    def state_dict(self) -> dict:
        """What an exact resume needs besides the config and the random generators:
        params / ema (name -> tensor: trainable weights, EMA shadow), ema_steps, optimizer,
        reward_failure_streak (iterations in a row whose rewards all failed)."""
        params = self._named_trainable()
        return {"params": {n: p.detach().clone() for n, p in params.items()},
                "ema": {n: s.clone() for n, s in zip(params, self.ema.shadow)},
                "ema_steps": self.ema.steps, "optimizer": self.optimizer.state_dict(),
                "reward_failure_streak": self.failures.streak}

    def load_state_dict(self, sd: dict, source: str = "checkpoint") -> None:
        """Restore :meth:`state_dict`; UserError naming ``source`` if the weights do not fit."""
        from tempflow.errors import UserError
        params = self._named_trainable()
        want = {n: tuple(p.shape) for n, p in params.items()}
        for part in ("params", "ema"):
            got = {n: tuple(t.shape) for n, t in sd[part].items()}
            if got != want:
                diff = sorted(set(got) ^ set(want)) or sorted(n for n in want if got[n] != want[n])
                raise UserError(f"{source} does not fit this model ({len(diff)} trainable weights differ "
                                f"in name or shape, e.g. {diff[0]!r}); it was saved with another "
                                f"model.name or model.lora (rank, target modules): resume with that run's config")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(sd["params"][n])
            for n, s in zip(params, self.ema.shadow):
                s.copy_(sd["ema"][n])
        self.ema.steps = int(sd["ema_steps"])
        self.optimizer.load_state_dict(sd["optimizer"])
        self.failures.streak = int(sd.get("reward_failure_streak", 0))

    @contextmanager
    def _timed(self, times: dict, key: str):
        t0 = time.perf_counter()
        yield
        times[key] += time.perf_counter() - t0
