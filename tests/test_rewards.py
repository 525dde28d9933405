"""The reward contract and registry, the simple rewards, shapes, weighted sums and the
per-sample failure handling."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from tempflow.errors import UserError
from tempflow.rewards import REGISTRY, WeightedReward, build_reward, register, score, score_or_nan
from tempflow.rewards.combine import reward_from_config


def make_constant(value: float = 1.0):
    """A user factory reached by dotted path."""
    return lambda images, prompts: torch.full((images.shape[0],), value)


def test_registry_lists_builtins_and_unknown_names_are_errors():
    for name in ("shapes", "jpeg_compressibility", "jpeg_incompressibility", "brightness", "contrast",
                 "clip_score", "pickscore", "aesthetic", "hpsv2", "remote", "weighted"):
        assert name in REGISTRY
    with pytest.raises(UserError, match="unknown reward 'nope': known rewards are aesthetic, brightness"):
        build_reward("nope")
    with pytest.raises(UserError, match="does not take these arguments"):
        build_reward("shapes", colour=True)
    with pytest.raises(ValueError, match="already registered"):
        register("shapes")(lambda: None)


def test_dotted_path_factory():
    r = build_reward("test_rewards:make_constant", value=2.5)
    assert score(r, torch.zeros(3, 3, 4, 4), ["a"] * 3).tolist() == [2.5] * 3
    with pytest.raises(UserError, match="cannot be imported"):
        build_reward("no_such_module_xyz:f")


def test_score_checks_count_and_passes_metadata_only_when_given():
    two_args = lambda images, prompts: torch.ones(images.shape[0])  # noqa: E731
    assert score(two_args, torch.zeros(2, 3, 4, 4), ["a", "b"]).dtype == torch.float32
    with pytest.raises(UserError, match="returned 3 values for 2 images"):
        score(lambda i, p: torch.ones(3), torch.zeros(2, 3, 4, 4), ["a", "b"])
    seen = {}

    def with_meta(images, prompts, metadata=None):
        seen["m"] = metadata
        return [1.0, 2.0]

    assert score(with_meta, torch.zeros(2, 3, 4, 4), ["a", "b"], [{"k": 1}, {"k": 2}]).tolist() == [1.0, 2.0]
    assert seen["m"] == [{"k": 1}, {"k": 2}]


def test_jpeg_rewards_are_ddpo_sizes():
    g = torch.Generator().manual_seed(0)
    flat, noise = torch.full((1, 3, 32, 32), 0.5), torch.rand(1, 3, 32, 32, generator=g)
    x = torch.cat([flat, noise])
    inc = score(build_reward("jpeg_incompressibility"), x, ["", ""])
    com = score(build_reward("jpeg_compressibility"), x, ["", ""])
    assert torch.equal(com, -inc) and inc[1] > inc[0]
    buf = io.BytesIO()  # re-derived: PIL JPEG at quality 95, size in kB
    Image.fromarray((noise[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
        buf, format="JPEG", quality=95)
    assert inc[1].item() == pytest.approx(buf.tell() / 1000)


def test_brightness_and_contrast_exact():
    x = torch.zeros(2, 3, 4, 4)
    x[0] = 0.25
    x[1, :, :2] = 1.0                       # half white, half black
    b = score(build_reward("brightness"), x, ["", ""])
    assert b.tolist() == pytest.approx([0.25, 0.5])
    assert score(build_reward("brightness", target=0.3), x, ["", ""]).tolist() == pytest.approx([-0.05, -0.2])
    c = score(build_reward("contrast"), x, ["", ""])
    assert c.tolist() == pytest.approx([0.0, 0.5])
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1
    assert score(build_reward("brightness"), red, [""]).item() == pytest.approx(0.299)


def test_shapes_reward_dense_and_binary():
    from tempflow.shapes import render_batch, verify_batch

    prompts = ["a red circle", "two blue squares"]
    x = render_batch(prompts, np.random.default_rng(0))
    passed, dense = verify_batch(x, prompts)
    assert torch.equal(score(build_reward("shapes"), x, prompts), dense.float())
    assert torch.equal(score(build_reward("shapes", dense=False), x, prompts[::-1]),
                       verify_batch(x, prompts[::-1])[0].float())


def test_score_or_nan_finds_failing_samples():
    def picky(images, prompts, metadata=None):
        if "bad" in prompts:
            raise ValueError("bad prompt")
        return torch.tensor([float("inf") if p == "inf" else 1.0 for p in prompts])

    out = score_or_nan(picky, torch.zeros(4, 3, 2, 2), ["ok", "bad", "inf", "ok"])
    assert out.values[[0, 3]].tolist() == [1.0, 1.0] and torch.isnan(out.values[[1, 2]]).all()
    assert out.errors[0] == "ValueError: bad prompt" and out.errors[1].startswith("sample 1:")

    def config_error(images, prompts, metadata=None):
        raise UserError("reward.kwargs.url is wrong")

    with pytest.raises(UserError, match="url is wrong"):
        score_or_nan(config_error, torch.zeros(1, 3, 2, 2), ["a"])


def test_weighted_reward_sums_components():
    x = torch.zeros(2, 3, 4, 4)
    x[1] = 1.0
    r = build_reward("weighted", components=[
        {"name": "brightness", "weight": 2.0},
        {"name": "contrast", "weight": -1.0, "label": "flat"}])
    assert isinstance(r, WeightedReward) and r.weights == {"brightness": 2.0, "flat": -1.0}
    parts = r.score_components(x, ["", ""])
    assert parts["brightness"].tolist() == [0.0, 1.0] and parts["flat"].tolist() == [0.0, 0.0]
    assert score(r, x, ["", ""]).tolist() == [0.0, 2.0]
    nan = build_reward("weighted", components=[
        {"name": "brightness"}, {"name": "test_rewards:make_constant", "kwargs": {"value": float("inf")}}])
    assert torch.isnan(score(nan, x, ["", ""])).all()
    with pytest.raises(UserError, match="unique"):
        build_reward("weighted", components=[{"name": "brightness"}, {"name": "brightness"}])
    with pytest.raises(UserError, match="reward.combine"):
        build_reward("weighted", components=[{"name": "brightness"}], combine="average")
    with pytest.raises(UserError, match="needs its components"):
        build_reward("weighted")


def test_reward_from_config():
    from tempflow.config import load_config

    cfg = load_config(None, ["reward.name=weighted", "reward.combine=normalise_then_sum",
                             "reward.components=[{name: brightness, weight: 0.5}, {name: shapes, label: s}]"])
    r = reward_from_config(cfg.reward)
    assert isinstance(r, WeightedReward) and r.combine == "normalise_then_sum"
    assert r.weights == {"brightness": 0.5, "s": 1.0}
    assert not isinstance(reward_from_config(load_config(None, []).reward), WeightedReward)
    for bad, words in [(["reward.components=[{name: shapes}]"], "set reward.name: weighted"),
                       (["reward.name=weighted"], "non-empty list"),
                       (["reward.name=weighted", "reward.components=[{name: shapes, weight: 0}]"], "non-zero"),
                       (["reward.score_chunks=0"], ">= 1"), (["reward.max_failed_iterations=0"], ">= 1")]:
        with pytest.raises(UserError, match=words):
            load_config(None, bad)
    assert load_config(None, []).reward.max_failed_iterations == 3
