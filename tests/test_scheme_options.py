"""Options orthogonal to the rollout scheme: step weights (exact values on a small schedule),
tied groups, the stochastic step type, and their config validation."""

import math

import pytest
import torch

from tempflow.config import TrainConfig, load_config
from tempflow.errors import UserError
from tempflow.grpo import group_advantages
from tempflow.schemes import build_scheme, step_weight_table
from tempflow.training.scoring import reward_advantages

# T = 4, no shift: sigma = 1, .75, .5, .25, 0; a = 0.5; trained steps 0, 1, 2
SIG = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
R3 = math.sqrt(3)


def weights(kind, power=1.0):
    cfg = TrainConfig(sampling={"steps": 4, "train_fraction": 0.75, "noise_level": 0.5},
                      algorithm={"step_weight": kind, "weight_power": power})
    w = build_scheme(cfg, SIG).weight_table
    torch.testing.assert_close(w, step_weight_table(kind, SIG, 0.5, [0, 1, 2], power))
    return w


def test_step_weights_by_hand():
    # g_j = a sqrt(sigma_j / (1 - sigma_j')) (sigma_0' = sigma_1): 1, sqrt(3) / 2, 1 / 2;
    # sqrt(-dt_j) = 1 / 2, so s_j = 1 / 2, sqrt(3) / 4, 1 / 4 and sum(s) = (3 + sqrt 3) / 4
    torch.testing.assert_close(weights("none"), torch.ones(3))
    torch.testing.assert_close(weights("tempflow"), torch.tensor([3 - R3, 1.5 * (R3 - 1), (3 - R3) / 2]))
    # s_j^2 = 1/4, 3/16, 1/16 (mean 1/6)
    torch.testing.assert_close(weights("power", 2.0), torch.tensor([1.5, 1.125, 0.375]))
    torch.testing.assert_close(weights("power", 0.0), torch.ones(3))
    # c_j = sqrt(-dt) / g + g sqrt(-dt) (1 - sigma) / (2 sigma) = 1/2, 3 sqrt(3) / 8, 9 / 8
    inv = torch.tensor([2.0, 8 / (3 * R3), 8 / 9])
    torch.testing.assert_close(weights("flash"), inv / inv.mean())


def test_old_weighting_flag_maps_to_step_weight():
    assert load_config(None, ["algorithm.weighting=false"]).algorithm.step_weight == "none"
    assert load_config(None, ["algorithm.weighting=true"]).algorithm.step_weight == "tempflow"
    assert "contradict" in str(pytest.raises(UserError, load_config, None,
                                             ["algorithm.weighting=false", "algorithm.step_weight=power"]).value)


def test_tied_groups_drop_or_zeros():
    r = torch.tensor([1.0, 1.0, 2.0, 4.0, float("nan"), 3.0])
    g = torch.tensor([0, 0, 1, 1, 1, 2])   # group 0 ties, group 2 has one reward
    drop = group_advantages(r, g, clip=None)
    zeros = group_advantages(r, g, clip=None, tied="zeros")
    assert drop.valid.tolist() == [False, False, True, True, False, False]
    assert zeros.valid.tolist() == [True, True, True, True, False, True]
    torch.testing.assert_close(zeros.advantages, drop.advantages)
    assert zeros.advantages.tolist()[:2] == [0.0, 0.0] and zeros.advantages[5] == 0
    assert drop.frac_zero_std == zeros.frac_zero_std == pytest.approx(2 / 3)
    # the trainer's path, one reward and several
    _, a = reward_advantages({"r": r}, {"r": 1.0}, g, "sum_then_normalise", tied="zeros")
    assert a.valid.tolist() == zeros.valid.tolist()
    _, a = reward_advantages({"r": r, "q": r}, {"r": 1.0, "q": 1.0}, g, "normalise_then_sum", tied="zeros")
    assert a.valid.tolist() == zeros.valid.tolist()
    with pytest.raises(ValueError):
        group_advantages(r, g, tied="keep")


def test_option_fields_are_validated():
    cfg = load_config(None, ["sampling.sde_type=cps", "algorithm.tied_groups=zeros"])
    assert (cfg.sampling.sde_type, cfg.algorithm.tied_groups) == ("cps", "zeros")
    assert TrainConfig().sampling.sde_type == "sde" and TrainConfig().algorithm.tied_groups == "drop"
    for bad, field in [(["sampling.sde_type=ode"], "sampling.sde_type"),
                       (["sampling.sde_type=cps", "sampling.noise_level=1.5"], "sampling.noise_level"),
                       (["sampling.sde_type=cps", "sampling.train_fraction=1"], "sampling.train_fraction"),
                       (["algorithm.step_weight=flat"], "algorithm.step_weight"),
                       (["algorithm.tied_groups=keep"], "algorithm.tied_groups"),
                       (["algorithm.scheme=single_step", "algorithm.sde_step=9"], "algorithm.sde_step"),
                       (["algorithm.scheme=sde_window", "algorithm.window_size=10"], "algorithm.window_size"),
                       (["algorithm.scheme=sde_window", "algorithm.window_start=8"], "algorithm.window_start"),
                       (["algorithm.window_size=0"], "algorithm.window_size")]:
        with pytest.raises(UserError, match=field.replace(".", r"\.")):
            load_config(None, bad)
    # Flow-GRPO's SDE step keeps noise on its last step (s_j = g_j sqrt(sigma_j) > 0): all may train
    assert load_config(None, ["sampling.train_fraction=1"]).trained_steps() == list(range(10))
    # scheme-specific settings are only checked for their scheme
    assert load_config(None, ["algorithm.sde_step=9"]).algorithm.sde_step == 9


def test_resume_reads_a_run_recorded_with_the_old_fields():
    from tempflow.training.resume import check_config_unchanged, config_record

    cfg = load_config(None, ["algorithm.branching=false", "algorithm.weighting=true"])
    old = config_record(cfg)["config"]   # as an older tempflow recorded it: no new keys
    for key in ("scheme", "step_weight", "weight_power", "tied_groups", "sde_step", "window_size", "window_start"):
        del old["algorithm"][key]
    del old["sampling"]["sde_type"]
    old["algorithm"].update(branching=False, weighting=True)
    check_config_unchanged(old, cfg, "checkpoint c")                      # the same run
    with pytest.raises(UserError, match="algorithm.scheme"):
        check_config_unchanged(old, load_config(None, []), "checkpoint c")  # another algorithm


# ---------------------------------------------------------------------------- branch-point policies

def branching(policy="adaptive", **algorithm):
    from tempflow.sampling import flow_sigmas

    cfg = TrainConfig(sampling={"steps": 6}, algorithm={"branch_points": 2, "branch_policy": policy,
                                                        "num_branches": 2, **algorithm})
    return build_scheme(cfg, flow_sigmas(6, 3.0))


def test_early_policy_draws_in_proportion_to_the_transition_std():
    from tempflow.config import BranchPointSpec
    from tempflow.sampling import flow_sigmas, sde_std

    s = branching("early")
    sig = flow_sigmas(6, 3.0)
    torch.testing.assert_close(torch.tensor(s.scores()), sde_std(sig[:5], sig[1:6], 0.7)[1])
    spec = BranchPointSpec((0, 1, 2), 1, "early")
    gen = torch.Generator().manual_seed(0)
    assert {spec.draw(gen, [1.0, 1e-12, 1e-12])[0] for _ in range(20)} == {0}
    counts = torch.zeros(3)
    for i in range(2000):
        counts[spec.draw(torch.Generator().manual_seed(i), [3.0, 1.0, 0.0001])[0]] += 1
    assert abs(counts[0] / 2000 - 0.75) < 0.04 and counts[2] < 5
    with pytest.raises(ValueError):
        spec.draw(gen)        # the policy needs scores
    assert len(set(s.plan(3))) == 2 and s.plan(3) == s.plan(3)


def test_adaptive_policy_running_reward_std():
    s = branching(adaptive_decay=0.5)
    assert s.scores() == [1.0] * 5 and s.state_dict() == {"std_mean": [None] * 5}
    nan = float("nan")
    # layout [S = 2 seeds, P = 2 points (0, 2), K = 2]: stds 0.5, 0 | 1.5, (one finite reward)
    r = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0, 3.0, nan, 2.0])
    s.observe([0, 2], r, torch.zeros(8))
    assert s.std_mean == [1.0, None, 0.0, None, None]
    s.observe([0, 4], torch.tensor([0.0, 4.0, 1.0, 1.0]), torch.zeros(4))   # std 2 at j = 0, 0 at j = 4
    assert s.std_mean == [0.5 * 1.0 + 0.5 * 2.0, None, 0.0, None, 0.0]
    # never measured: the largest measured; floor 5% of the largest
    assert s.scores() == pytest.approx([1.5, 1.5, 0.075, 1.5, 0.075])
    t = branching(adaptive_decay=0.5)
    t.load_state_dict(s.state_dict())
    assert t.std_mean == s.std_mean and t.plan(7) == s.plan(7)
    assert branching("uniform").state_dict() == {}


def test_branch_policy_needs_random_branch_points():
    with pytest.raises(UserError, match="algorithm.branch_policy"):
        load_config(None, ["algorithm.branch_policy=early", "algorithm.branch_points=all"])
    with pytest.raises(UserError, match="algorithm.adaptive_decay"):
        load_config(None, ["algorithm.adaptive_decay=1"])
    # the uniform policy draws as before
    from tempflow.config import BranchPointSpec
    assert BranchPointSpec((0, 1, 2, 3), 2).draw(torch.Generator().manual_seed(0)) == \
        BranchPointSpec((0, 1, 2, 3), 2, "uniform").draw(torch.Generator().manual_seed(0))
