"""TempFlow-GRPO and Flow-GRPO training: one trainer, one code path.

Each iteration runs five phases, top to bottom: sample (rollouts), score (decode + reward),
advantages (group-normalised, gathered across processes), train (clipped policy loss + KL,
inner epochs x minibatches), log. What differs between algorithms (which samples are drawn,
their advantage groups, the trained transitions and their step weights) is the rollout scheme
of ``algorithm.scheme`` (:mod:`tempflow.schemes`); the trainer calls it and has no
per-algorithm code. The 2 x 2 ablation of TempFlow-GRPO is four configs of the same trainer.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import numpy as np
import torch

from tempflow.config import TrainConfig
from tempflow.grpo.objective import ObjectiveConfig, grpo_loss
from tempflow.models import load_model, model_sigmas
from tempflow.rewards import reward_from_config
from tempflow.schemes import build_scheme
from tempflow.training.distributed import Dist
from tempflow.training.ema import EMA
from tempflow.training.engine import Engine
from tempflow.training.prompts import PromptSet
from tempflow.training.scoring import (FailureWatch, RewardScorer, component_means, gather_components,
                                       reward_advantages, sample_and_score)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Trainer:
    """Builds everything from a :class:`TrainConfig`; :meth:`iteration` runs one iteration."""

    def __init__(self, cfg: TrainConfig, dist: Dist | None = None):
        self.cfg = cfg
        self.dist = dist or Dist()
        self.engine = Engine(self.dist, cfg)  # refuses launch settings it cannot honour, before loading
        torch.manual_seed(cfg.train.seed)
        self.model = load_model(cfg.model.name, device=self.dist.device,
                                dtype=DTYPES[cfg.model.dtype], resolution=cfg.model.resolution)
        self._prepare_model()
        optimizer = torch.optim.AdamW(self.model.trainable_parameters(), lr=cfg.train.lr,
                                      weight_decay=cfg.train.weight_decay)
        self.optimizer = self.engine.prepare(self.model, optimizer)
        params = self.model.trainable_parameters()  # after prepare: the engine's (maybe sharded) ones
        self.ema = EMA(params, cfg.train.ema_decay, cfg.train.ema_every, cfg.train.ema_warmup)
        self.reward = reward_from_config(cfg.reward)
        self.scorer = RewardScorer(self.model, self.reward, cfg.reward.name, cfg.reward.score_chunks,
                                   cfg.reward.async_scoring, cfg.reward.device)
        self.failures = FailureWatch(cfg.reward.max_failed_iterations)
        self.train_set = PromptSet.load(cfg.prompts.train)
        self.eval_set = PromptSet.load(cfg.prompts.eval)
        if cfg.train.prompts_per_iteration % self.dist.world:
            from tempflow.errors import UserError
            raise UserError(f"train.prompts_per_iteration ({cfg.train.prompts_per_iteration}) must be a "
                            f"multiple of the number of processes ({self.dist.world})")
        with torch.no_grad():  # text embeddings of the prompt set, computed once
            self.train_cond = self.model.encode_prompts(self.train_set.prompts)
            if hasattr(self.model, "drop_text_encoders"):  # diffusers models cache embeddings:
                self.model.encode_prompts(self.eval_set.prompts)  # with every prompt cached,
                self.model.drop_text_encoders()                    # the text encoders can go
        self.sigmas = model_sigmas(self.model, cfg.sampling.steps, cfg.sampling.shift).to(self.dist.device)
        self.scheme = build_scheme(cfg, self.sigmas)
        self.objective = ObjectiveConfig(cfg.sampling.noise_level, cfg.algorithm.clip_range,
                                         cfg.algorithm.beta, cfg.sampling.guidance_scale,
                                         cfg.algorithm.kl_std, cfg.sampling.sde_type)

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
    def iteration(self, it: int) -> dict:
        cfg, a, times, scheme = self.cfg, self.cfg.algorithm, defaultdict(float), self.scheme
        counters0, collective0 = dict(self.model.counters), self.dist.collective_s
        # 1. sample: this process's share of the iteration's prompts, in reward.score_chunks chunks
        positions = list(range(cfg.train.prompts_per_iteration))[self.dist.rank::self.dist.world]
        ids = self.train_set.draw(cfg.train.prompts_per_iteration, cfg.train.seed, it, cfg.prompts.balance)
        local_ids = [ids[p] for p in positions]
        cond = self.train_cond[torch.tensor(local_ids)]
        plan = scheme.plan(it)

        def sample(rows: slice):
            with torch.no_grad():
                return scheme.sample(self.model, cond[rows], positions[rows], plan, it)

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
            all_r, adv = reward_advantages(all_c, self.scorer.weights, all_g, cfg.reward.combine, a.std, a.adv_clip,
                                               a.tied_groups)
            self.failures.update(all_r, scored.errors)
            mine = slice(self.dist.rank * len(rewards), (self.dist.rank + 1) * len(rewards))
            advantages, valid = adv.advantages[mine], adv.valid[mine]
            self.last_batch = {"rewards": all_r, "groups": all_g, "advantages": adv.advantages}
            scheme.observe(plan, all_r, all_g)  # e.g. adaptive branch points learn where rewards spread
        batch = scheme.transitions(samples, advantages, valid)
        keys = scheme.start_keys(positions, plan)  # global ids of this process's start states
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
                  **train_stats, **{f"count/{k}": v for k, v in counters.items()}, **times,
                  "time/collectives": self.dist.collective_s - collective0}
        record.update(scheme.log_record(plan, adv.advantages))
        return record

    def _train(self, batch, keys, it: int) -> dict:
        """Inner epochs x minibatches over start states. Each process's loss is weighted by its
        share of the global number of valid transitions (times the process count, as the engine
        averages gradients), so N processes make the update of 1 process."""
        cfg, eng = self.cfg.train, self.engine
        total_keys = int(self.dist.sum(torch.tensor(float(len(keys)))).item())
        params = self.model.trainable_parameters()
        stats, skipped = defaultdict(list), 0
        for epoch in range(cfg.inner_epochs):
            perm = torch.from_numpy(np.random.default_rng([cfg.seed, it, epoch, 13]).permutation(total_keys))
            rank_of = torch.empty(total_keys, dtype=torch.long)
            rank_of[perm] = torch.arange(total_keys)
            mb_of = rank_of[keys] * cfg.minibatches // total_keys           # [R_local]
            for mb in range(cfg.minibatches):
                sub = batch.select((mb_of == mb).nonzero().squeeze(1))
                n_local = sub.valid.sum()
                n_global = self.dist.sum(n_local.float())
                self.optimizer.zero_grad(set_to_none=False)
                if eng.name != "deepspeed":
                    for prm in params:
                        if prm.grad is None:
                            prm.grad = torch.zeros_like(prm)
                if n_global == 0:
                    continue
                loss, bad, st = self._backward(batch, sub, n_local, n_global)
                grad_norm = eng.clip(params, cfg.grad_clip)
                # NaN / inf guard: skip the step on every process (the flags are summed)
                if bad or self.dist.sum(torch.stack([~torch.isfinite(loss), ~torch.isfinite(grad_norm)])
                                        .float().cpu()).any():
                    skipped += 1
                    continue
                for part in st:
                    for k, v in part.items():
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

    def _backward(self, batch, sub, n_local, n_global) -> tuple[torch.Tensor, bool, list[dict]]:
        """Loss and backward of one minibatch in train.grad_accumulation micro-batches (gradients
        synchronised on the last). Under an engine every process runs every micro-batch, one
        with no valid transition as a zero-weighted forward, as the engine's collectives need."""
        from tempflow.training.scoring import chunk_slices

        eng, a = self.engine, self.cfg.train.grad_accumulation
        rows = sub.with_signal() if n_local > 0 else sub
        parts = [rows.select(torch.arange(s.start, s.stop)) for s in chunk_slices(len(rows), a)]
        parts += [None] * (a - len(parts))
        total, stats = torch.zeros(()), []
        for i, part in enumerate(parts):
            n_part = part.valid.sum() if part is not None and n_local > 0 else torch.zeros((), dtype=torch.long)
            if n_part == 0 and eng.name == "single":
                continue
            weight = n_part.float() / n_global
            if n_part == 0:  # a forward the other processes' collectives wait for; no gradient
                part = self._dummy_rows(batch)
            with eng.no_sync(sync=i == a - 1), eng.forward_scope(self.model):
                loss, st = grpo_loss(self.model, part, self.objective)
                if eng.name == "deepspeed" and self.dist.sum((~torch.isfinite(loss.detach())).float().cpu()) > 0:
                    return loss.detach(), True, stats  # DeepSpeed steps inside backward: check the loss first
                eng.backward(loss * (weight * eng.loss_scale) if eng.name != "single" else loss * weight)
            if n_part > 0:
                total = total + loss.detach().cpu() * weight
                stats.append(st)
        return total, False, stats

    @staticmethod
    def _dummy_rows(batch):
        """One start state of this process's batch, marked valid (its loss is weighted by 0)."""
        import dataclasses

        one = batch.select(torch.tensor([0]))
        return dataclasses.replace(one, valid=torch.ones_like(one.valid))

    # ------------------------------------------------------------------ state
    def _named_trainable(self) -> dict[str, torch.nn.Parameter]:
        """The trainable parameters by their name in the denoiser, in optimiser order."""
        names = {id(p): n for n, p in self.model.transformer.named_parameters()}
        return {names.get(id(p), f"param{i}"): p for i, p in enumerate(self.model.trainable_parameters())}

    def state_dict(self) -> dict:
        """What an exact resume needs besides the config and the random generators:
        params / ema (name -> tensor: trainable weights, EMA shadow), ema_steps, optimizer,
        reward_failure_streak (iterations in a row whose rewards all failed), scheme (the rollout
        scheme's running state, e.g. adaptive branch-point statistics)."""
        params = self._named_trainable()
        return {"params": {n: p.detach().clone() for n, p in params.items()},
                "ema": {n: s.clone() for n, s in zip(params, self.ema.shadow)},
                "ema_steps": self.ema.steps,  # DeepSpeed's partitioned state is not saved (no resume)
                "optimizer": self.optimizer.state_dict() if self.engine.name != "deepspeed" else {},
                "reward_failure_streak": self.failures.streak, "scheme": self.scheme.state_dict()}

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
        self.scheme.load_state_dict(sd.get("scheme", {}))

    @contextmanager
    def _timed(self, times: dict, key: str):
        t0 = time.perf_counter()
        yield
        times[key] += time.perf_counter() - t0
