"""Exact tests of group advantages, the clipped policy loss and the KL penalty."""

import math

import pytest
import torch

from tempflow.grpo import clipped_policy_loss, group_advantages, kl_penalty


def test_group_advantages_per_group_std():
    r = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 0.0, 4.0])
    g = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    out = group_advantages(r, g, std="group", clip=None)
    s0 = math.sqrt(2 / 3)
    expected = [-1 / (s0 + 1e-4), 0.0, 1 / (s0 + 1e-4), 0.0, 0.0, -2 / (2 + 1e-4), 2 / (2 + 1e-4)]
    torch.testing.assert_close(out.advantages, torch.tensor(expected))
    assert out.valid.tolist() == [True, True, True, False, False, True, True]
    assert out.frac_zero_std == pytest.approx(1 / 3)
    for gid in (0, 2):  # zero mean per group
        assert float(out.advantages[g == gid].sum()) == pytest.approx(0.0, abs=1e-6)


def test_group_advantages_batch_std_and_clip():
    r = torch.tensor([0.0, 1.0, 0.0, 100.0])
    g = torch.tensor([0, 0, 1, 1])
    out = group_advantages(r, g, std="batch", clip=None)
    sd = float(r.std(unbiased=False))
    torch.testing.assert_close(out.advantages, torch.tensor([-0.5, 0.5, -50.0, 50.0]) / (sd + 1e-4))
    clipped = group_advantages(torch.tensor([0.0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
                               torch.zeros(10, dtype=torch.long), clip=2.0)
    assert float(clipped.advantages.max()) == 2.0


def test_failed_rewards_are_left_out():
    r = torch.tensor([1.0, float("nan"), 3.0, float("inf"), 5.0, 5.0])
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    out = group_advantages(r, g, clip=None)
    assert out.num_failed == 2
    assert out.valid.tolist() == [True, False, True, False, False, False]
    torch.testing.assert_close(out.advantages[[0, 2]], torch.tensor([-1.0, 1.0]) / (1 + 1e-4))
    assert out.frac_zero_std == pytest.approx(0.5)  # group 1's finite rewards tie
    assert torch.isfinite(out.advantages).all()


def test_policy_loss_on_policy_gradient_is_advantage():
    logp = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 0.5])
    w = torch.tensor([1.5, 1.0, 0.5])
    out = clipped_policy_loss(logp, logp.detach(), adv, clip_range=1e-4, weights=w)
    assert torch.allclose(out.ratio, torch.ones(3))
    assert float(out.clip_frac) == 0.0 and float(out.approx_kl) == 0.0
    out.loss.backward()
    torch.testing.assert_close(logp.grad, -(w * adv) / 3)


def test_policy_loss_clips():
    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5]))
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    out = clipped_policy_loss(logp, old, adv, clip_range=0.2)
    # max(-A r, -A clip(r)): [-1.2, 1.5, -0.5, 0.8]
    assert float(out.loss) == pytest.approx((-1.2 + 1.5 - 0.5 + 0.8) / 4, abs=1e-6)
    assert float(out.clip_frac) == 1.0


def test_kl_penalty():
    mean = torch.randn(3, 2, 4)
    assert torch.equal(kl_penalty(mean, mean.clone(), torch.ones(3)), torch.zeros(3))
    ref = mean + torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)
    std = torch.tensor([0.5, 1.0, 2.0])
    expected = torch.tensor([0.01, 0.04, 0.09]) / (2 * std**2)
    torch.testing.assert_close(kl_penalty(mean, ref, std), expected)
