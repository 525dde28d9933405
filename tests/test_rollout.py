"""Rollouts: branching reproduces the trunk without noise, costs what the analysis says."""

import torch

from tempflow.grpo.rollout import continuation_indices, rollout_branches, rollout_flow_grpo
from tempflow.models.shapes_model import ShapesModel, ShapesModelConfig
from tempflow.sampling import flow_sigmas, sde_step, trained_steps
from tempflow.sampling.loops import sample_ode

VOCAB = ["a", "red", "blue", "circle", "square"]


def tiny() -> ShapesModel:
    torch.manual_seed(0)
    return ShapesModel(ShapesModelConfig(vocab=VOCAB, resolution=8, patch_size=4, num_layers=1,
                                         num_heads=2, head_dim=8, text_dim=16, text_layers=1,
                                         max_length=6))


def test_zero_noise_branches_reproduce_trunk():
    m = tiny()
    cond = m.encode_prompts(["a red circle", "a blue square"])
    noise = m.initial_noise(2, torch.Generator().manual_seed(1))
    sig = flow_sigmas(6, 3.0)
    out = rollout_branches(m, cond, noise, sig, noise_level=0.0, points=[0, 2, 4], num_branches=3,
                           guidance_scale=2.0)
    ode = sample_ode(m, cond, noise, sig, 2.0)
    torch.testing.assert_close(out.trunk_final, ode)
    for j in range(3):
        for k in range(3):
            torch.testing.assert_close(out.final[:, j, k], ode, atol=1e-5, rtol=1e-5)
    # the same with a > 0 but the SDE noise itself set to zero: branches follow the SDE mean
    out2 = rollout_branches(m, cond, noise, sig, 0.7, [1], 2, noise_scale=0.0)
    assert not torch.allclose(out2.final[:, 0, 0], ode, atol=1e-4)


def test_branch_cost_and_logprobs():
    m = tiny()
    cond = m.encode_prompts(["a red circle"] * 3)
    sig = flow_sigmas(10, 3.0)
    pts = trained_steps(10)
    gen = torch.Generator().manual_seed(0)
    out = rollout_branches(m, cond, m.initial_noise(3, gen), sig, 0.7, pts, 6, generator=gen)
    # trunk 10 + branches 6 * sum_j (9 - j) = 270 per seed (algorithm.md section 5)
    assert m.counters["nfe"] == 3 * (10 + 270)
    assert out.samples.shape == (3, 9, 6, 3, 8, 8) and out.log_probs.shape == (3, 9, 6)
    # stored log-probs equal a fresh scoring of the stored samples at the trunk states
    s, j = 1, 4
    with torch.no_grad():
        v = m.velocity(out.starts[s, j:j + 1], sig[j].expand(1), cond[s])
    re = sde_step(out.starts[s, j].expand(6, 3, 8, 8), v.expand(6, 3, 8, 8), sig[j], sig[j + 1], 0.7,
                  sample=out.samples[s, j])
    torch.testing.assert_close(re.log_prob, out.log_probs[s, j], atol=1e-4, rtol=1e-4)


def test_flow_grpo_rollout():
    m = tiny()
    cond = m.encode_prompts(["a red circle", "a blue square"])
    sig = flow_sigmas(10, 3.0)
    gen = torch.Generator().manual_seed(0)
    out = rollout_flow_grpo(m, cond, m.initial_noise(2, gen), sig, 0.7, trained_steps(10), 1.5, gen)
    assert m.counters["nfe"] == 2 * 10 * 2
    assert out.xs.shape == (11, 2, 3, 8, 8)
    assert (out.log_probs[:9] != 0).all() and (out.log_probs[9] == 0).all()
    torch.testing.assert_close(out.final, out.xs[-1])


def test_continuation_indices():
    assert continuation_indices(1, 10) == list(range(1, 11))
    assert continuation_indices(1, 10, 3) == [1, 4, 7, 10]
    assert continuation_indices(8, 10, 3) == [8, 9, 10]  # fewer steps left than the cap
    assert continuation_indices(0, 10, 4) == [0, 2, 5, 8, 10]
    assert continuation_indices(9, 10, 1) == [9, 10]


def test_short_continuations_cost_and_path():
    m = tiny()
    cond = m.encode_prompts(["a red circle", "a blue square"])
    noise = m.initial_noise(2, torch.Generator().manual_seed(1))
    sig = flow_sigmas(10, 3.0)
    pts, cap = [0, 5, 8], 2
    out = rollout_branches(m, cond, noise, sig, 0.0, pts, 3, continuation_steps=cap)
    # per seed: trunk 10 + K * sum_j min(9 - j, cap) = 10 + 3 * (2 + 2 + 1)
    assert m.counters["nfe"] == 2 * (10 + 3 * 5)
    for p, j in enumerate(pts):
        # a = 0: the SDE step is the ODE step, so each branch is the trunk's x_{j+1} followed by
        # the ODE over the evenly spaced sigmas
        sub = sig[continuation_indices(j + 1, 10, cap)]
        want = sample_ode(m, cond, out.trunk[j + 1], sub)
        for k in range(3):
            torch.testing.assert_close(out.final[:, p, k], want, atol=1e-5, rtol=1e-5)
    # no cap: the same branches as before the option existed (every remaining step)
    full = rollout_branches(m, cond, noise, sig, 0.0, pts, 3)
    torch.testing.assert_close(full.final[:, 0, 0], sample_ode(m, cond, noise, sig), atol=1e-5, rtol=1e-5)
