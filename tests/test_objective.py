"""The GRPO objective: on-policy ratio 1, shared forward == per-branch forward, KL, one step."""

import pytest
import torch

from tempflow.grpo.objective import (ObjectiveConfig, branch_transitions, grpo_loss,
                                     trajectory_transitions)
from tempflow.grpo.rollout import rollout_branches, rollout_flow_grpo
from tempflow.models.lora import LoraSpec
from tempflow.models.shapes_model import ShapesModel, ShapesModelConfig
from tempflow.sampling import flow_sigmas, noise_aware_weights, trained_steps

VOCAB = ["a", "red", "blue", "circle", "square"]
SIG = flow_sigmas(6, 3.0)
STEPS = trained_steps(6)  # 0..4


def tiny_lora(seed=0) -> ShapesModel:
    torch.manual_seed(seed)
    m = ShapesModel(ShapesModelConfig(vocab=VOCAB, resolution=8, patch_size=4, num_layers=2,
                                      num_heads=2, head_dim=8, text_dim=16, text_layers=1,
                                      max_length=6))
    m.text_encoder.requires_grad_(False)
    m.transformer.requires_grad_(False)
    m.add_lora(LoraSpec(rank=4, alpha=4))
    return m


def branch_batch(m, cfg_scale, k=3, points=(0, 2, 3)):
    cond = m.encode_prompts(["a red circle", "a blue square"])
    gen = torch.Generator().manual_seed(0)
    ro = rollout_branches(m, cond, m.initial_noise(2, gen), SIG, 0.7, points, k, cfg_scale, gen)
    adv = torch.randn(2, len(points), k, generator=gen)
    valid = torch.ones(2, len(points), k, dtype=torch.bool)
    if len(points) > 1:
        valid[0, 1] = False  # a dropped group
    w = noise_aware_weights(SIG, 0.7, STEPS)[list(points)]
    return branch_transitions(ro, cond, SIG, adv, valid, w)


@pytest.mark.parametrize("cfg_scale", [None, 3.0])
def test_on_policy_ratio_is_one_branching(cfg_scale):
    m = tiny_lora()
    with torch.no_grad():  # make the adapter non-trivial so policy != reference
        for p in m.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = branch_batch(m, cfg_scale)
    # training sees another batch composition than sampling did (one minibatch of starts)
    _, stats = grpo_loss(m, batch.select(torch.tensor([5, 0, 3])),
                         ObjectiveConfig(0.7, 1e-4, 0.01, cfg_scale))
    assert abs(stats["ratio_min"] - 1) < 1e-5 and abs(stats["ratio_max"] - 1) < 1e-5
    assert stats["clip_frac"] == 0.0


@pytest.mark.parametrize("cfg_scale", [None, 3.0])
def test_on_policy_ratio_is_one_flow_grpo(cfg_scale):
    m = tiny_lora()
    cond = m.encode_prompts(["a red circle"] * 2 + ["a blue square"] * 2)
    gen = torch.Generator().manual_seed(0)
    ro = rollout_flow_grpo(m, cond, m.initial_noise(4, gen), SIG, 0.7, STEPS, cfg_scale, gen)
    batch = trajectory_transitions(ro, cond, SIG, STEPS, torch.tensor([1.0, -1, 1, -1]),
                                   torch.ones(4, dtype=torch.bool), torch.ones(len(STEPS)))
    _, stats = grpo_loss(m, batch.select(torch.arange(len(batch)).flip(0)[:7]),
                         ObjectiveConfig(0.7, 1e-4, 0.04, cfg_scale, kl_std="g"))
    assert abs(stats["ratio_min"] - 1) < 1e-5 and abs(stats["ratio_max"] - 1) < 1e-5


def test_shared_forward_equals_per_branch():
    m = tiny_lora()
    with torch.no_grad():
        for p in m.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = branch_batch(m, 2.0)
    cfg = ObjectiveConfig(0.7, 0.2, 0.01, 2.0)
    with torch.no_grad():  # move the policy so ratios differ from 1 and some clip
        for p in m.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    grads = []
    for b in (batch, batch.per_branch()):
        m.counters.clear()
        loss, stats = grpo_loss(m, b, cfg)
        for p in m.trainable_parameters():
            p.grad = None
        loss.backward()
        grads.append(([p.grad.clone() for p in m.trainable_parameters()], float(loss.detach()), stats,
                      m.counters["nfe_grad"]))
    (g1, l1, s1, n1), (g2, l2, s2, n2) = grads
    assert l1 == pytest.approx(l2, rel=1e-5, abs=1e-7)
    assert s1["kl"] == pytest.approx(s2["kl"], rel=1e-5)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert n2 == 3 * n1  # K = 3 times fewer gradient forwards when shared


def test_kl_zero_when_policy_is_reference():
    m = tiny_lora()  # fresh LoRA: B = 0, the adapted model equals the base
    _, stats = grpo_loss(m, branch_batch(m, 2.0), ObjectiveConfig(0.7, 1e-4, 1.0, 2.0))
    assert stats["kl"] == pytest.approx(0.0, abs=1e-12)


def test_one_step_raises_logprob_of_positive_sample():
    m = tiny_lora()
    batch = branch_batch(m, None, k=2, points=(1,)).select(torch.tensor([0]))
    batch.advantages[:] = torch.tensor([[1.0, -1.0]])
    batch.valid[:] = True
    cfg = ObjectiveConfig(0.7, 10.0, 0.0, None)  # wide clip: a plain policy-gradient step
    before = [p.clone() for p in m.trainable_parameters()]
    opt = torch.optim.Adam(m.trainable_parameters(), lr=1e-3)
    loss, _ = grpo_loss(m, batch, cfg)
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, m.trainable_parameters()))
    with torch.no_grad():
        _, stats = grpo_loss(m, batch, cfg)
    from tempflow.sampling.steps import sde_step
    with torch.no_grad():
        v = m.velocity(batch.starts, batch.sigma, batch.cond)
        lp = [sde_step(batch.starts, v, batch.sigma, batch.sigma_next, 0.7,
                       sample=batch.samples[:, i]).log_prob for i in range(2)]
    assert float(lp[0]) > float(batch.old_log_probs[0, 0])  # the positive sample became likelier
    assert float(lp[1]) < float(batch.old_log_probs[0, 1])  # the negative one less likely
    assert torch.isfinite(torch.tensor(stats["policy_loss"]))
