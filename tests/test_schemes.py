"""Rollout schemes (tempflow.schemes): cost formulas against counted model calls, groups,
on-policy ratio 1 for every scheme and step type, and one trainer iteration of each scheme."""

import math

import pytest
import torch

from tempflow.config import TrainConfig
from tempflow.grpo.objective import ObjectiveConfig, grpo_loss
from tempflow.models.lora import LoraSpec
from tempflow.models.shapes_model import ShapesModel, ShapesModelConfig
from tempflow.schemes import SCHEMES, build_scheme
from tempflow.sampling import flow_sigmas

VOCAB = ["a", "red", "blue", "circle", "square"]
SIG = flow_sigmas(6, 3.0)
ALL = ["flow_grpo", "branching", "single_step", "sde_window"]


def tiny_lora() -> ShapesModel:
    torch.manual_seed(0)
    m = ShapesModel(ShapesModelConfig(vocab=VOCAB, resolution=8, patch_size=4, num_layers=2, num_heads=2,
                                      head_dim=8, text_dim=16, text_layers=1, max_length=6))
    m.text_encoder.requires_grad_(False)
    m.transformer.requires_grad_(False)
    m.add_lora(LoraSpec(rank=4, alpha=4))
    with torch.no_grad():  # a non-trivial adapter, so policy != reference
        for p in m.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def config(scheme, sde_type="sde", gs=2.0, **algorithm):
    alg = {"scheme": scheme, "group_size": 3, "seeds_per_prompt": 2, "num_branches": 2,
           "branch_points": [0, 2, 4], **algorithm}
    return TrainConfig(sampling={"steps": 6, "guidance_scale": gs, "sde_type": sde_type}, algorithm=alg)


def run(scheme_name, sde_type="sde", gs=2.0, positions=(0, 3), it=5, **algorithm):
    cfg = config(scheme_name, sde_type, gs, **algorithm)
    m = tiny_lora()
    scheme = build_scheme(cfg, SIG)
    cond = m.encode_prompts(["a red circle", "a blue square"])
    plan = scheme.plan(it)
    m.counters.clear()
    samples = scheme.sample(m, cond, list(positions), plan, it)
    return cfg, m, scheme, plan, samples


def test_registry():
    assert sorted(SCHEMES) == sorted(ALL)
    for name in ALL:
        assert type(build_scheme(config(name), SIG)).name == name


@pytest.mark.parametrize("gs", [None, 2.0])
@pytest.mark.parametrize("name", ALL)
def test_cost_formula_counts_the_model_calls(name, gs):
    cfg, m, scheme, plan, samples = run(name, gs=gs)
    assert m.counters["nfe"] == scheme.cost_nfe(2, plan)
    mult, t = (2 if gs else 1), 6
    want = {"flow_grpo": 2 * 3 * t, "single_step": 2 * 3 * t, "sde_window": 2 * 3 * t,
            # per seed: trunk T + K * sum_j (T - 1 - j) over branch points 0, 2, 4
            "branching": 2 * 2 * (t + 2 * (5 + 3 + 1))}[name]
    assert scheme.cost_nfe(2, plan) == want * mult


def test_branching_cost_of_random_branch_points_is_the_mean():
    scheme = build_scheme(config("branching", branch_points=2, continuation_steps=2), SIG)
    # continuations of steps 0..4: min(5 - j, 2) = 2, 2, 2, 2, 1 -> mean 1.8; per seed 6 + 2 * 2 * 1.8
    assert scheme.cost_nfe(1) == pytest.approx(2 * 2 * (6 + 2 * 2 * 1.8))
    assert scheme.cost_nfe(1, [0, 4]) == 2 * 2 * (6 + 2 * 3)


def test_groups_and_rows():
    _, _, scheme, plan, s = run("single_step")
    assert s.groups.tolist() == [0, 0, 0, 3, 3, 3] and s.prompt_rows.tolist() == [0, 0, 0, 1, 1, 1]
    # one shared step per group; each trajectory is stochastic exactly there
    assert s.row_steps[:3].unique().numel() == 1 and s.row_steps[3:].unique().numel() == 1
    lp = s.rollout.log_probs                                           # [T, N]
    assert ((lp != 0) == torch.nn.functional.one_hot(s.row_steps, 6).T.bool()).all()
    assert scheme.start_keys([0, 3], plan).tolist() == [0, 1, 2, 9, 10, 11]
    _, _, scheme, plan, s = run("sde_window", window_size=2)
    assert s.groups.tolist() == [0, 0, 0, 3, 3, 3] and len(plan) == 2 and plan[1] == plan[0] + 1
    assert ((s.rollout.log_probs != 0).any(dim=1).nonzero().squeeze(1).tolist()) == plan
    assert scheme.starts_per_prompt(plan) == 3 * 2
    _, _, _, plan, s = run("branching", group_by="prompt")
    assert s.groups.view(2, 2, 3, 2)[:, :, 1, 0].tolist() == [[1, 1], [10, 10]]   # (prompt, j) ids


def test_draws_depend_on_seed_iteration_and_position_only():
    a = build_scheme(config("single_step"), SIG)
    draws = {a.step_of(a.plan(it), it, p) for it in range(10) for p in range(4)}
    assert draws <= set(range(5)) and len(draws) > 1
    assert a.step_of(a.plan(3), 3, 2) == build_scheme(config("single_step"), SIG).step_of(list(range(5)), 3, 2)
    assert build_scheme(config("single_step", sde_step=4), SIG).plan(0) == [4]
    w = build_scheme(config("sde_window", window_size=3), SIG)
    starts = {w.plan(it)[0] for it in range(30)}
    assert starts == {0, 1, 2}
    assert build_scheme(config("sde_window", window_start=1, window_size=3), SIG).plan(7) == [1, 2, 3]


@pytest.mark.parametrize("sde_type", ["sde", "cps"])
@pytest.mark.parametrize("name", ALL)
def test_on_policy_ratio_is_one(name, sde_type):
    cfg, m, scheme, plan, s = run(name, sde_type)
    n = s.finals.shape[0]
    adv = torch.randn(n, generator=torch.Generator().manual_seed(1))
    batch = scheme.transitions(s, adv, torch.ones(n, dtype=torch.bool))
    assert len(batch) == 2 * scheme.starts_per_prompt(plan)
    sub = batch.select(torch.arange(len(batch)).flip(0)[:5])   # another batch composition than sampling
    obj = ObjectiveConfig(0.7, 1e-4, 0.01, 2.0, sde_type=sde_type)
    _, st = grpo_loss(m, sub, obj)
    assert abs(st["ratio_min"] - 1) < 1e-5 and abs(st["ratio_max"] - 1) < 1e-5 and st["clip_frac"] == 0
    # scoring with the other step type would not give 1: the loss really uses the rollout's step
    other = ObjectiveConfig(0.7, 1e-4, 0.01, 2.0, sde_type="cps" if sde_type == "sde" else "sde")
    _, st = grpo_loss(m, sub, other)
    assert abs(st["ratio_max"] - 1) > 1e-3 or abs(st["ratio_min"] - 1) > 1e-3


def test_single_step_transitions_are_the_sampled_step():
    _, _, scheme, _, s = run("single_step", step_weight="flash")
    n = s.finals.shape[0]
    b = scheme.transitions(s, torch.arange(n).float(), torch.ones(n, dtype=torch.bool))
    j = s.row_steps
    torch.testing.assert_close(b.sigma, SIG[j])
    torch.testing.assert_close(b.starts, s.rollout.xs[j, torch.arange(n)])
    torch.testing.assert_close(b.samples[:, 0], s.rollout.xs[j + 1, torch.arange(n)])
    torch.testing.assert_close(b.weights, scheme.weight_table[j])
    assert b.advantages[:, 0].tolist() == list(range(n))


@pytest.mark.parametrize("name", ALL)
def test_one_trainer_iteration(tmp_path, tiny_shapes_checkpoint, name):
    from tempflow.training.trainer import Trainer

    cfg = TrainConfig(model={"name": str(tiny_shapes_checkpoint), "lora": {"rank": 2, "alpha": 2}},
                      sampling={"steps": 4, "eval_steps": 4},
                      algorithm={"scheme": name, "group_size": 2, "num_branches": 2, "seeds_per_prompt": 1,
                                 "branch_points": "all", "clip_range": 0.2, "window_size": 2},
                      train={"iterations": 1, "prompts_per_iteration": 2, "lr": 1e-2},
                      reward={"name": "shapes", "kwargs": {"dense": True}}, run={"out": str(tmp_path / "run")})
    tr = Trainer(cfg)
    before = [p.detach().clone() for p in tr.model.trainable_parameters()]
    plan, spent, sample = tr.scheme.plan(0), [], tr.scheme.sample

    def counted(model, *args):  # the model calls of the sampling phase
        n0 = model.counters["nfe"]
        out = sample(model, *args)
        spent.append(model.counters["nfe"] - n0)
        return out

    tr.scheme.sample = counted
    rec = tr.iteration(0)
    assert sum(spent) == tr.scheme.cost_nfe(2, plan) and rec["count/nfe"] > sum(spent)
    assert rec["count/decodes"] == {"branching": 2 * 1 * 3 * 2}.get(name, 2 * 2)  # prompts x samples each
    assert math.isfinite(rec["reward/mean"]) and rec["train/skipped_steps"] == 0
    assert rec["frac_reward_zero_std"] < 1   # some group has signal, so the weights moved
    assert any(not torch.equal(p, q) for p, q in zip(tr.model.trainable_parameters(), before))
    assert set(rec) >= {f"weight/step{j}" for j in plan}

