"""The score phase: rollouts sampled in chunks of prompts, each chunk decoded and scored in a
worker thread while the next one samples; rewards per component; advantages from several
rewards; and a stop when every reward fails several iterations in a row.

The chunks are contiguous slices of this process's prompts, sampled in order, so the
concatenated samples have the layout of one unchunked call (prompt-major rows), and the
scores do not depend on whether scoring ran in the thread or inline.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from tempflow.errors import UserError
from tempflow.grpo import group_advantages
from tempflow.grpo.advantages import GroupAdvantages
from tempflow.grpo.rollout import BranchRollout, FlowGRPORollout
from tempflow.models.base import Conditioning
from tempflow.rewards import Reward, WeightedReward, score_or_nan
from tempflow.rewards.combine import weighted_sum
from tempflow.training.rollout_phase import Samples

log = logging.getLogger("tempflow.rewards")


@dataclass
class ChunkScores:
    """One chunk (or the whole batch) scored. images: [n, 3, H, W]; prompts: n strings;
    components: label -> float32 [n] (NaN: failed); errors: exceptions caught; seconds spent
    decoding and scoring (in the worker thread when asynchronous)."""

    images: Tensor
    prompts: list[str]
    components: dict[str, Tensor]
    errors: list[str]
    decode_s: float = 0.0
    reward_s: float = 0.0

    @staticmethod
    def cat(items: Sequence["ChunkScores"]) -> "ChunkScores":
        """Concatenate chunks in order (times summed)."""
        labels = items[0].components.keys()
        return ChunkScores(torch.cat([c.images for c in items]), [p for c in items for p in c.prompts],
                           {k: torch.cat([c.components[k] for c in items]) for k in labels},
                           [e for c in items for e in c.errors], sum(c.decode_s for c in items),
                           sum(c.reward_s for c in items))


def reward_parts(reward: Reward, label: str) -> tuple[dict[str, Reward], dict[str, float]]:
    """(label -> reward, label -> weight): the components of a WeightedReward, else {label: reward}."""
    if isinstance(reward, WeightedReward):
        return {c.label: c.reward for c in reward.components}, reward.weights
    return {label: reward}, {label: 1.0}


def decode_and_score(model, parts: Mapping[str, Reward], finals: Tensor, prompts: list[str],
                     metadata: list[dict] | None = None, device: str | None = None) -> ChunkScores:
    """Decode latents [n, ...] to images and score them with every component (no_grad); the
    prompts' metadata (n dicts, e.g. GenEval's) goes to the rewards that take it. ``device``:
    where the rewards run (the images are moved there; None: where they were decoded)."""
    t0 = time.perf_counter()
    with torch.no_grad():
        images = torch.cat([model.decode_images(c) for c in finals.split(256)])
    t1 = time.perf_counter()
    scored_images = images if device is None else images.to(device)
    comps, errors = {}, []
    with torch.no_grad():
        for label, reward in parts.items():
            scored = score_or_nan(reward, scored_images, prompts, metadata)
            comps[label] = scored.values
            errors += [f"{label}: {e}" for e in scored.errors]
    return ChunkScores(images, prompts, comps, errors, t1 - t0, time.perf_counter() - t1)


class RewardScorer:
    """Decodes and scores chunks, in one worker thread (``use_thread``) or inline."""

    def __init__(self, model, reward: Reward, label: str, chunks: int = 1, use_thread: bool = True,
                 device: str | None = None):
        self.model, self.chunks, self.device = model, chunks, device
        self.parts, self.weights = reward_parts(reward, label)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="tempflow-reward") if use_thread else None

    def submit(self, finals: Tensor, prompts: list[str], metadata: list[dict] | None = None) -> Future:
        """Start decoding + scoring one chunk; the Future's result is a :class:`ChunkScores`."""
        if self.pool is not None:
            return self.pool.submit(decode_and_score, self.model, self.parts, finals, prompts, metadata,
                                    self.device)
        fut: Future = Future()
        try:
            fut.set_result(decode_and_score(self.model, self.parts, finals, prompts, metadata, self.device))
        except Exception as e:  # re-raised by .result(), as from the thread
            fut.set_exception(e)
        return fut

    def total(self, components: Mapping[str, Tensor]) -> Tensor:
        """sum_k w_k R_k: float32 [N], NaN where a component failed."""
        return weighted_sum(components, self.weights)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def chunk_slices(n: int, chunks: int) -> list[slice]:
    """min(chunks, n) contiguous slices covering range(n), sizes differing by at most one."""
    k = max(1, min(chunks, n))
    bounds = [n * i // k for i in range(k + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(k)]


def cat_rollouts(items: Sequence[BranchRollout | FlowGRPORollout]):
    """Concatenate rollouts of consecutive prompt chunks along their sample dimension."""
    first = items[0]
    if isinstance(first, BranchRollout):   # trunk [T+1, S, ...]; the rest [S, ...]
        return BranchRollout(torch.cat([r.trunk for r in items], 1), torch.cat([r.starts for r in items]),
                             torch.cat([r.samples for r in items]), torch.cat([r.log_probs for r in items]),
                             torch.cat([r.final for r in items]), first.points)
    if isinstance(first, FlowGRPORollout):  # xs [T+1, N, ...], log_probs [T, N], final [N, ...]
        return FlowGRPORollout(torch.cat([r.xs for r in items], 1), torch.cat([r.log_probs for r in items], 1),
                               torch.cat([r.final for r in items]))
    raise TypeError(f"cannot concatenate rollouts of type {type(first).__name__}")


def cat_samples(items: Sequence[Samples]) -> Samples:
    """Concatenate chunk samples (prompt_rows already offset to the full local batch)."""
    if len(items) == 1:
        return items[0]
    spk = None
    if items[0].shape_spk is not None:
        _, p, k = items[0].shape_spk
        spk = (sum(s.shape_spk[0] for s in items), p, k)
    return Samples(torch.cat([s.finals for s in items]), torch.cat([s.prompt_rows for s in items]),
                   torch.cat([s.groups for s in items]), cat_rollouts([s.rollout for s in items]),
                   Conditioning.cat([s.cond for s in items]), items[0].points, spk,
                   None if items[0].row_steps is None else torch.cat([s.row_steps for s in items]))


def sample_and_score(sample: Callable[[slice], Samples], n_prompts: int,
                     prompts_of: Callable[[slice, Samples], tuple[list[str], list[dict] | None]],
                     scorer: RewardScorer,
                     times: dict) -> tuple[Samples, ChunkScores]:
    """Sample the local prompts chunk by chunk; each chunk is scored while the next samples.

    sample(rows) -> the Samples of local prompts ``rows`` (prompt_rows counted from 0);
    prompts_of(rows, samples) -> (one prompt per sample, one metadata dict per sample or None). Adds time/sample (main thread),
    time/decode and time/reward (worker) and time/score_wait (main thread waiting) to ``times``."""
    parts, futures = [], []
    for rows in chunk_slices(n_prompts, scorer.chunks):
        t0 = time.perf_counter()
        s = sample(rows)
        times["time/sample"] += time.perf_counter() - t0
        futures.append(scorer.submit(s.finals, *prompts_of(rows, s)))
        parts.append(dataclasses.replace(s, prompt_rows=s.prompt_rows + rows.start))
    t0 = time.perf_counter()
    scored = ChunkScores.cat([f.result() for f in futures])
    times["time/score_wait"] += time.perf_counter() - t0
    times["time/decode"] += scored.decode_s
    times["time/reward"] += scored.reward_s
    if scored.errors:
        log.warning("%d reward error(s), e.g. %s", len(scored.errors), scored.errors[0])
    return cat_samples(parts), scored


def gather_components(dist, components: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """label -> [N_local] on each process -> label -> [N_global] (one collective)."""
    labels = list(components)
    stacked = dist.gather(torch.stack([components[k] for k in labels], dim=1))   # [N_global, C]
    return {k: stacked[:, i] for i, k in enumerate(labels)}


def reward_advantages(components: Mapping[str, Tensor], weights: Mapping[str, float], groups: Tensor,
                      combine: str, std: str = "group", clip: float | None = 5.0,
                      tied: str = "drop") -> tuple[Tensor, GroupAdvantages]:
    """(R [N], advantages) from component rewards label -> [N].

    R = sum_k w_k R_k (NaN where any R_k is non-finite: the sample failed).
    sum_then_normalise: A = group_advantages(R). normalise_then_sum: A = sum_k w_k A_k with
    A_k = group_advantages(R_k), failed samples left out of every component; a sample is valid
    if it did not fail and some component's group has signal (with tied="zeros": if it did not
    fail); A is clipped to [-clip, clip]. tied: see :func:`group_advantages`."""
    total = weighted_sum(components, weights)
    if combine == "sum_then_normalise" or len(components) == 1:
        return total, group_advantages(total, groups, std, clip=clip, tied=tied)
    if combine != "normalise_then_sum":
        raise ValueError(f"combine must be sum_then_normalise or normalise_then_sum, got {combine!r}")
    failed = ~torch.isfinite(total)
    adv, valid = torch.zeros_like(total), torch.zeros_like(failed)
    for k, r in components.items():
        a_k = group_advantages(torch.where(failed, torch.nan, r.float()), groups, std, clip=None, tied=tied)
        adv, valid = adv + weights[k] * a_k.advantages, valid | a_k.valid
    valid &= ~failed
    adv = torch.where(valid, adv, torch.zeros_like(adv))
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    _, gid = torch.unique(groups, return_inverse=True)
    n_groups = int(gid.max()) + 1 if gid.numel() else 0
    has_data = torch.zeros(n_groups, dtype=torch.bool).index_fill_(0, gid[~failed], True)
    has_signal = torch.zeros(n_groups, dtype=torch.bool).index_fill_(0, gid[valid], True)
    frac = float((has_data & ~has_signal).sum()) / max(int(has_data.sum()), 1)
    return total, GroupAdvantages(adv, valid, frac, int(failed.sum()))


def component_means(components: Mapping[str, Tensor]) -> dict[str, float]:
    """reward/<label>/mean over finite values (NaN when none)."""
    out = {}
    for k, r in components.items():
        ok = r[torch.isfinite(r)]
        out[f"reward/{k}/mean"] = float(ok.mean()) if ok.numel() else float("nan")
    return out


class FailureWatch:
    """Counts iterations in a row whose rewards all failed; UserError at ``limit``."""

    def __init__(self, limit: int = 3):
        self.limit, self.streak = limit, 0

    def update(self, rewards: Tensor, errors: Sequence[str] = ()) -> None:
        """rewards: the iteration's gathered rewards [N] (the same on every process)."""
        all_failed = rewards.numel() > 0 and not bool(torch.isfinite(rewards).any())
        self.streak = self.streak + 1 if all_failed else 0
        if self.streak >= self.limit:
            why = errors[0] if errors else "the reward returned only NaN / inf"
            raise UserError(f"every sample's reward failed for {self.streak} iterations in a row "
                            f"(e.g. {why}); fix the reward (reward.name / reward.kwargs), or raise "
                            f"reward.max_failed_iterations")
