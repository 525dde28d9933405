"""Exact tests of the sampler math (algorithm.md sections 1, 2 and 4)."""

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from tempflow.sampling import (flow_sigmas, noise_aware_weights, ode_step, sde_std, sde_step,
                               shift_sigma, trained_steps)

SD3_SIGMAS = [1, .9601, .9133, .8577, .7904, .7073, .6022, .4649, .2780, .0089, 0]


@pytest.mark.parametrize("shift,steps", [(1.0, 10), (3.0, 10), (3.0, 40), (3.0, 1), (1.15, 28), (5.0, 7)])
def test_schedule_matches_diffusers(shift, steps):
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(steps)
    ours = flow_sigmas(steps, shift)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, sched.sigmas.float(), atol=1e-6, rtol=0)


def test_schedule_constants_and_convention():
    s = flow_sigmas(10, 3.0)
    assert torch.allclose(s, torch.tensor(SD3_SIGMAS), atol=1e-4)
    assert s[0] == 1.0 and s[-1] == 0.0  # sigma = 1 is noise, 0 is data
    assert torch.all(s[1:] < s[:-1])
    assert float(shift_sigma(0.5, 3.0)) == pytest.approx(0.75)
    assert trained_steps(10) == list(range(9))


def test_ode_step_per_sample_sigma():
    x = torch.randn(3, 2, 4, 4)
    v = torch.randn(3, 2, 4, 4)
    sig = torch.tensor([1.0, 0.5, 0.2])
    nxt = torch.tensor([0.9, 0.3, 0.0])
    out = ode_step(x, v, sig, nxt)
    for i in range(3):
        torch.testing.assert_close(out[i], x[i] + (nxt[i] - sig[i]) * v[i])


def test_ode_constant_velocity_integrates_exactly():
    # x_sigma = (1 - sigma) x0 + sigma eps has constant velocity eps - x0 along the path.
    x0, eps = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    x = eps.clone()
    sig = flow_sigmas(10, 3.0)
    for j in range(10):
        x = ode_step(x, eps - x0, sig[j], sig[j + 1])
    torch.testing.assert_close(x, x0, atol=1e-5, rtol=0)


def test_sde_logprob_equals_torch_normal_mean():
    torch.manual_seed(0)
    x, v = torch.randn(5, 3, 6, 6), torch.randn(5, 3, 6, 6)
    sig = torch.tensor([1.0, 0.9, 0.6, 0.3, 0.1])
    nxt = torch.tensor([0.95, 0.7, 0.5, 0.1, 0.0089])
    out = sde_step(x, v, sig, nxt, noise_level=0.7)
    ref = torch.distributions.Normal(out.mean, out.std.view(-1, 1, 1, 1)).log_prob(out.sample)
    torch.testing.assert_close(out.log_prob, ref.mean(dim=(1, 2, 3)), atol=1e-5, rtol=1e-5)
    # scoring the same sample again gives the same log-prob
    again = sde_step(x, v, sig, nxt, 0.7, sample=out.sample)
    torch.testing.assert_close(again.log_prob, out.log_prob)


def test_sde_mean_formula_and_float32():
    x, v = torch.randn(2, 4, dtype=torch.float16), torch.randn(2, 4, dtype=torch.bfloat16)
    sig, nxt, a = torch.tensor([0.8, 0.4]), torch.tensor([0.7, 0.2]), 0.9
    out = sde_step(x, v, sig, nxt, a, noise=torch.zeros(2, 4))
    assert out.mean.dtype == torch.float32 and out.log_prob.dtype == torch.float32
    xf, vf = x.float(), v.float()
    for i in range(2):
        s, n = float(sig[i]), float(nxt[i])
        g = a * math.sqrt(s / (1 - s))
        mean = xf[i] + (vf[i] + g * g / (2 * s) * (xf[i] + (1 - s) * vf[i])) * (n - s)
        torch.testing.assert_close(out.mean[i], mean)
        assert float(out.std[i]) == pytest.approx(g * math.sqrt(s - n), rel=1e-6)
    torch.testing.assert_close(out.sample, out.mean)  # zero noise -> the mean


def test_noise_level_zero_is_ode_step():
    x, v = torch.randn(3, 2, 5, 5), torch.randn(3, 2, 5, 5)
    sig, nxt = torch.tensor([1.0, 0.5, 0.1]), torch.tensor([0.9, 0.4, 0.0])
    out = sde_step(x, v, sig, nxt, noise_level=0.0)
    torch.testing.assert_close(out.sample, ode_step(x, v, sig, nxt), atol=0, rtol=0)
    torch.testing.assert_close(out.mean, ode_step(x, v, sig, nxt), atol=0, rtol=0)


def test_sigma_one_guard_is_finite_and_uses_next_sigma():
    sig = flow_sigmas(10, 3.0)
    g, s = sde_std(sig[:1], sig[1:2], 0.7)
    assert torch.isfinite(g).all()
    assert float(g[0]) == pytest.approx(0.7 * math.sqrt(1.0 / (1.0 - float(sig[1]))), rel=1e-6)
    out = sde_step(torch.randn(2, 8), torch.randn(2, 8), 1.0, float(sig[1]), 0.7)
    assert torch.isfinite(out.sample).all() and torch.isfinite(out.log_prob).all()


def test_gradient_flows_through_mean_only():
    x = torch.randn(2, 6)
    v = torch.randn(2, 6, requires_grad=True)
    target = torch.randn(2, 6, requires_grad=True)
    out = sde_step(x, v, torch.tensor([0.7, 0.5]), torch.tensor([0.6, 0.3]), 0.7, sample=target)
    out.log_prob.sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
    assert target.grad is None  # the stored sample is detached


def test_noise_aware_weights_sd3_constants():
    sig = flow_sigmas(10, 3.0)
    steps = trained_steps(10)
    w = noise_aware_weights(sig, 0.7, steps)
    expected = torch.tensor([1.577, 1.673, 1.208, 1.004, 0.882, 0.795, 0.719, 0.635, 0.508])
    torch.testing.assert_close(w, expected, atol=1e-3, rtol=0)
    assert float(w.mean()) == pytest.approx(1.0, abs=1e-6)
    _, s = sde_std(sig[:9], sig[1:10], 0.7)
    assert float(1.0 / s.mean()) == pytest.approx(2.252, abs=1e-3)
    with pytest.raises(ValueError):
        noise_aware_weights(sig, 0.7, [0, 10])


def _gaussian_velocity(x, sigma, mu, tau):
    """Exact velocity E[eps - x0 | x_sigma] for data x0 ~ N(mu, tau^2) per dimension."""
    s = sigma.view(-1, 1)
    var = (1 - s) ** 2 * tau**2 + s**2
    centred = x - (1 - s) * mu
    e_x0 = mu + (1 - s) * tau**2 / var * centred
    e_eps = s / var * centred
    return e_eps - e_x0


@pytest.mark.parametrize("noise_level", [0.7, 1.0])
def test_sde_preserves_ode_marginals_on_gaussian_data(noise_level):
    """The SDE is marginal-preserving: with the exact velocity of Gaussian data, SDE samples
    at every sigma match the ODE's (and the data's at sigma = 0) in mean and std."""
    gen = torch.Generator().manual_seed(0)
    n, d, mu, tau = 20000, 4, 1.5, 0.5
    sig = flow_sigmas(200, 1.0)
    x_ode = torch.randn(n, d, generator=gen)
    x_sde = torch.randn(n, d, generator=gen)
    for j in range(200):
        s, nxt = sig[j].expand(n), sig[j + 1].expand(n)
        x_ode = ode_step(x_ode, _gaussian_velocity(x_ode, s, mu, tau), s, nxt)
        if float(sig[j + 1]) > 0:
            x_sde = sde_step(x_sde, _gaussian_velocity(x_sde, s, mu, tau), s, nxt, noise_level,
                             generator=gen).sample
        else:
            x_sde = ode_step(x_sde, _gaussian_velocity(x_sde, s, mu, tau), s, nxt)
        if j in (50, 120):
            true_std = math.sqrt((1 - float(sig[j + 1])) ** 2 * tau**2 + float(sig[j + 1]) ** 2)
            assert float(x_sde.std()) == pytest.approx(true_std, rel=0.03)
            assert float(x_sde.std()) == pytest.approx(float(x_ode.std()), rel=0.03)
    for x in (x_ode, x_sde):
        assert float(x.mean()) == pytest.approx(mu, abs=0.02)
        assert float(x.std()) == pytest.approx(tau, rel=0.05)
