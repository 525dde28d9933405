"""The score phase: chunked sampling with scoring in a worker thread equals synchronous
scoring; several rewards; failed samples; the all-failed stop."""

import math
import threading
import time

import pytest
import torch

from tempflow.config import config_from_dict
from tempflow.errors import UserError
from tempflow.grpo import group_advantages
from tempflow.rewards import REGISTRY, register
from tempflow.training.scoring import (FailureWatch, chunk_slices, component_means,
                                       reward_advantages)


def test_chunk_slices_cover_in_order():
    assert chunk_slices(5, 2) == [slice(0, 2), slice(2, 5)]
    assert chunk_slices(3, 10) == [slice(0, 1), slice(1, 2), slice(2, 3)]
    assert chunk_slices(4, 1) == [slice(0, 4)]


def test_reward_advantages_sum_then_normalise_is_group_advantages_of_the_sum():
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    a, b = torch.tensor([1., 2., 3., 0., 0., 1.]), torch.tensor([0., 5., 1., 2., 2., 2.])
    total, adv = reward_advantages({"a": a, "b": b}, {"a": 1.0, "b": 0.5}, g, "sum_then_normalise")
    assert torch.equal(total, a + 0.5 * b)
    ref = group_advantages(a + 0.5 * b, g)
    assert torch.equal(adv.advantages, ref.advantages) and torch.equal(adv.valid, ref.valid)


def test_reward_advantages_normalise_then_sum():
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    a = torch.tensor([1., 2., 3., 4., 4., 4.])          # group 1 ties in a
    b = torch.tensor([100., 500., 300., 0., 7., 1.])    # large scale
    total, adv = reward_advantages({"a": a, "b": b}, {"a": 1.0, "b": 2.0}, g, "normalise_then_sum",
                                   clip=None)
    # re-derived: per-group (x - mean) / (std + 1e-4), population std; a ties in group 1 -> 0
    def norm(x):
        return (x - x.mean()) / (x.std(unbiased=False) + 1e-4)
    want = torch.cat([norm(a[:3]) + 2 * norm(b[:3]), 2 * norm(b[3:])])
    assert torch.allclose(adv.advantages, want, atol=1e-5)
    assert adv.valid.all() and adv.frac_zero_std == 0 and adv.num_failed == 0
    assert torch.equal(total, a + 2 * b)


def test_reward_advantages_failed_samples_left_out_of_every_component():
    g = torch.tensor([0, 0, 0, 0])
    a = torch.tensor([1., 2., 3., 10.])
    b = torch.tensor([1., 1., 2., float("inf")])    # sample 3 fails in b
    total, adv = reward_advantages({"a": a, "b": b}, {"a": 1.0, "b": 1.0}, g, "normalise_then_sum")
    assert math.isnan(total[3]) and adv.num_failed == 1 and not adv.valid[3] and adv.advantages[3] == 0
    ref_a = group_advantages(torch.tensor([1., 2., 3.]), torch.zeros(3, dtype=torch.long)).advantages
    ref_b = group_advantages(torch.tensor([1., 1., 2.]), torch.zeros(3, dtype=torch.long)).advantages
    assert torch.allclose(adv.advantages[:3], (ref_a + ref_b).clamp(-5, 5))


def test_reward_advantages_all_tied_group_has_no_signal():
    g = torch.tensor([0, 0, 1, 1])
    a, b = torch.tensor([1., 1., 0., 1.]), torch.tensor([2., 2., 5., 5.])
    _, adv = reward_advantages({"a": a, "b": b}, {"a": 1.0, "b": 1.0}, g, "normalise_then_sum")
    assert adv.valid.tolist() == [False, False, True, True] and adv.frac_zero_std == 0.5


def test_component_means_ignore_failed():
    out = component_means({"x": torch.tensor([1., float("nan"), 3.]), "y": torch.tensor([float("nan")])})
    assert out["reward/x/mean"] == 2.0 and math.isnan(out["reward/y/mean"])


def test_failure_watch_stops_after_limit_in_a_row():
    w = FailureWatch(2)
    nan = torch.full((3,), float("nan"))
    w.update(nan)
    w.update(torch.tensor([1., float("nan"), 2.]))  # resets the streak
    w.update(nan)
    with pytest.raises(UserError, match="2 iterations in a row.*boom"):
        w.update(nan, ["r: ValueError: boom"])


# ---------------------------------------------------------------- the trainer


@register("test_slow_shapes")
def _slow_shapes(delay: float = 0.0):
    """The shapes reward after a sleep; records the thread it ran on."""
    inner = REGISTRY["shapes"]()

    def reward(images, prompts, metadata=None):
        _slow_shapes.threads.add(threading.current_thread().name)
        time.sleep(delay)
        return inner(images, prompts)
    return reward


_slow_shapes.threads = set()


@register("test_flaky")
def _flaky(fail_every: int = 3):
    """Brightness, but every sample whose brightness rank % fail_every == 0 raises / is inf."""
    calls = {"n": 0}

    def reward(images, prompts, metadata=None):
        calls["n"] += 1
        if images.shape[0] > 1:
            raise RuntimeError("batch failed")
        v = float(images.mean())
        if calls["n"] % fail_every == 0:
            raise ValueError("this sample cannot be scored")
        return torch.tensor([v if calls["n"] % fail_every != 1 else float("inf")])
    return reward


@register("test_always_nan")
def _always_nan():
    return lambda images, prompts, metadata=None: torch.full((images.shape[0],), float("nan"))


def _trainer(ckpt, tmp_path, branching=True, **reward):
    from tempflow.training.trainer import Trainer

    cfg = config_from_dict({
        "model": {"name": str(ckpt), "lora": {"rank": 2, "alpha": 2}},
        "sampling": {"steps": 4, "eval_steps": 4},
        "algorithm": {"branching": branching, "num_branches": 2, "seeds_per_prompt": 1, "group_size": 2,
                      "branch_points": "all", "clip_range": 0.2},
        "train": {"iterations": 1, "prompts_per_iteration": 3, "lr": 1e-2, "minibatches": 1},
        "reward": reward, "run": {"out": str(tmp_path / "run")}})
    return Trainer(cfg)


def _numbers(record):
    return {k: v for k, v in record.items() if not k.startswith("time/")}


@pytest.mark.parametrize("branching", [True, False])
def test_async_chunked_scoring_equals_sync(tiny_shapes_checkpoint, tmp_path, branching):
    base = {"name": "test_slow_shapes", "kwargs": {"delay": 0.01}, "score_chunks": 3}
    sync = _trainer(tiny_shapes_checkpoint, tmp_path, branching, async_scoring=False, **base)
    _slow_shapes.threads.clear()
    r_sync = sync.iteration(0)
    assert _slow_shapes.threads == {threading.current_thread().name}
    asyn = _trainer(tiny_shapes_checkpoint, tmp_path, branching, async_scoring=True, **base)
    _slow_shapes.threads.clear()
    r_async = asyn.iteration(0)
    assert all(t.startswith("tempflow-reward") for t in _slow_shapes.threads)
    assert _numbers(r_sync) == _numbers(r_async)
    assert torch.equal(sync.last_batch["rewards"], asyn.last_batch["rewards"])
    assert torch.equal(sync.last_batch["advantages"], asyn.last_batch["advantages"])
    for p, q in zip(sync.model.trainable_parameters(), asyn.model.trainable_parameters()):
        assert torch.equal(p, q)
    assert "reward/test_slow_shapes/mean" in r_async and r_async["time/reward"] > 0
    # chunking keeps the unchunked layout: same rewards (up to batch-size float error)
    one = _trainer(tiny_shapes_checkpoint, tmp_path, branching, name="test_slow_shapes", score_chunks=1)
    one.iteration(0)
    assert torch.allclose(one.last_batch["rewards"], sync.last_batch["rewards"], atol=1e-4)
    assert torch.equal(one.last_batch["groups"], sync.last_batch["groups"])


def test_weighted_rewards_logged_per_component(tiny_shapes_checkpoint, tmp_path):
    tr = _trainer(tiny_shapes_checkpoint, tmp_path, name="weighted", combine="normalise_then_sum",
                  components=[{"name": "shapes", "weight": 1.0},
                              {"name": "brightness", "weight": 0.5, "label": "bright"}])
    rec = tr.iteration(0)
    b = tr.last_batch["rewards"]
    assert rec["reward/mean"] == pytest.approx(float(b.mean()), abs=1e-6)
    assert rec["reward/mean"] == pytest.approx(rec["reward/shapes/mean"] + 0.5 * rec["reward/bright/mean"],
                                               abs=1e-5)
    assert rec["reward/failed"] == 0


def test_failed_samples_counted_and_training_goes_on(tiny_shapes_checkpoint, tmp_path):
    tr = _trainer(tiny_shapes_checkpoint, tmp_path, name="test_flaky")
    rec = tr.iteration(0)
    r = tr.last_batch["rewards"]
    n_bad = int((~torch.isfinite(r)).sum())
    assert 0 < n_bad < r.numel() and rec["reward/failed"] == n_bad
    assert (tr.last_batch["advantages"][~torch.isfinite(r)] == 0).all()
    assert "train/loss" in rec or "train/skipped_steps" in rec


def test_all_failed_iterations_stop_with_user_error(tiny_shapes_checkpoint, tmp_path):
    tr = _trainer(tiny_shapes_checkpoint, tmp_path, name="test_always_nan", max_failed_iterations=2)
    tr.iteration(0)
    with pytest.raises(UserError, match="2 iterations in a row"):
        tr.iteration(1)
