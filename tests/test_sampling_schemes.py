"""CPS steps and the Flash-GRPO / power step weights: exact values, limits, gradients."""

import math

import pytest
import torch

from tempflow.sampling import (cps_step, flash_weights, flow_sigmas, logprob_gradient_scale,
                               noise_aware_weights, ode_step, power_weights, sde_std, sde_step)
from test_sampling_math import _gaussian_velocity


def test_cps_by_hand():
    x = torch.tensor([[1.0, -2.0]])
    v = torch.tensor([[0.5, 1.0]])
    eps = torch.tensor([[0.3, -0.1]])
    sig, nxt, a = 0.8, 0.6, 0.5
    out = cps_step(x, v, sig, nxt, a, noise=eps)
    std = nxt * math.sin(a * math.pi / 2)  # 0.6 * sin(pi / 4)
    x0 = [1.0 - 0.8 * 0.5, -2.0 - 0.8 * 1.0]  # x - sigma v
    x1 = [1.0 + 0.2 * 0.5, -2.0 + 0.2 * 1.0]  # x + (1 - sigma) v
    keep = math.sqrt(nxt**2 - std**2)
    mean = [0.4 * x0[i] + keep * x1[i] for i in range(2)]
    assert out.std.item() == pytest.approx(std)
    assert out.mean[0].tolist() == pytest.approx(mean)
    assert out.sample[0].tolist() == pytest.approx([mean[i] + std * eps[0, i].item() for i in range(2)])
    # Flow-GRPO's convention: constants dropped, mean over dimensions of -(x' - mean)^2
    assert out.log_prob.item() == pytest.approx(-(std**2) * (0.3**2 + 0.1**2) / 2)
    assert out.sample.dtype == torch.float32


def test_cps_noise_zero_is_the_ode_step_per_sample_sigma():
    gen = torch.Generator().manual_seed(0)
    x, v = torch.randn(3, 4, 2, 2, generator=gen), torch.randn(3, 4, 2, 2, generator=gen)
    sig, nxt = torch.tensor([1.0, 0.7, 0.2]), torch.tensor([0.9, 0.5, 0.0])
    out = cps_step(x, v, sig, nxt, 0.0, generator=gen)
    assert torch.allclose(out.sample, ode_step(x, v, sig, nxt), atol=1e-6)
    assert torch.equal(out.log_prob, torch.zeros(3))


def test_cps_std_is_finite_at_sigma_one_and_zero_at_the_last_step():
    x, v = torch.ones(2, 3), torch.ones(2, 3)
    out = cps_step(x, v, torch.tensor([1.0, 0.1]), torch.tensor([0.9, 0.0]), 0.7,
                   noise=torch.ones(2, 3))
    assert torch.isfinite(out.sample).all()
    assert out.std[0] == pytest.approx(0.9 * math.sin(0.35 * math.pi)) and out.std[1] == 0
    with pytest.raises(ValueError, match="noise level"):
        cps_step(x, v, 0.5, 0.4, 1.5)


def test_cps_gradient_flows_through_the_mean_only():
    x = torch.randn(2, 3)
    v = torch.randn(2, 3, requires_grad=True)
    stored = torch.randn(2, 3, requires_grad=True)
    out = cps_step(x, v, 0.5, 0.4, 0.7, sample=stored)
    out.log_prob.sum().backward()
    assert v.grad is not None and stored.grad is None


def test_cps_keeps_the_coefficients_of_point_mass_data():
    """Data x0 = c (a point): x_sigma = (1 - sigma) c + sigma eps exactly at every step."""
    gen = torch.Generator().manual_seed(1)
    c, n = 2.0, 40000
    sig = flow_sigmas(10, 3.0)
    x = torch.randn(n, 1, generator=gen)
    for j in range(10):
        s, nxt = float(sig[j]), float(sig[j + 1])
        v = (x - (1 - s) * c) / s - c  # the exact velocity eps - x0 for this data
        x = cps_step(x, v, s, nxt, 0.8, generator=gen).sample
        assert float(x.mean()) == pytest.approx((1 - nxt) * c, abs=0.02)
        assert float(x.std()) == pytest.approx(nxt, abs=0.01)


@pytest.mark.parametrize("noise_level", [0.5, 0.9])
def test_cps_on_gaussian_data_follows_its_exact_moment_recursion(noise_level):
    """Gaussian data N(mu, tau^2) with its exact velocity: each CPS step is linear in x plus
    fresh noise, x' - (1 - s') mu = A (x - (1 - s) mu) + std eps with
    A = ((1 - s')(1 - s) tau^2 + sqrt(s'^2 - std^2) s) / ((1 - s)^2 tau^2 + s^2), so the mean
    and variance follow m' = A (m - (1 - s) mu) + (1 - s') mu, V' = A^2 V + std^2. Unlike
    Flow-GRPO's SDE, CPS does not keep the marginals of non-degenerate data (its noise does
    not shrink with the step size): at 10 steps the final std is below tau."""
    gen = torch.Generator().manual_seed(0)
    n, mu, tau = 40000, 1.5, 0.5
    sig = flow_sigmas(10, 3.0)
    x = torch.randn(n, 4, generator=gen)
    m, var = 0.0, 1.0
    for j in range(10):
        s, nxt = float(sig[j]), float(sig[j + 1])
        x = cps_step(x, _gaussian_velocity(x, torch.full((n,), s), mu, tau), s, nxt, noise_level,
                     generator=gen).sample
        std = nxt * math.sin(noise_level * math.pi / 2)
        a = ((1 - nxt) * (1 - s) * tau**2 + math.sqrt(nxt**2 - std**2) * s) / (
            (1 - s) ** 2 * tau**2 + s**2)
        m, var = a * (m - (1 - s) * mu) + (1 - nxt) * mu, a * a * var + std**2
        assert float(x.mean()) == pytest.approx(m, abs=0.01)
        assert float(x.std()) == pytest.approx(math.sqrt(var), rel=0.02)
    assert math.sqrt(var) < 0.95 * tau  # measured, not a design goal: the marginal shrinks


def test_flash_scale_is_the_logprob_gradient_per_unit_noise():
    """c_j by autograd: with x' = mean + s eps, d log p / d v = -eps c_j per dimension."""
    sig = flow_sigmas(10, 3.0)
    for j in (0, 4, 8):
        x = torch.randn(1, 5)
        v = torch.randn(1, 5, requires_grad=True)
        eps = torch.randn(1, 5)
        with torch.no_grad():
            y = sde_step(x, v, sig[j], sig[j + 1], 0.7, noise=eps).sample
        lp = sde_step(x, v, sig[j], sig[j + 1], 0.7, sample=y).log_prob
        (grad,) = torch.autograd.grad(lp.sum() * 5, v)  # log p is a mean over 5 dims
        c = logprob_gradient_scale(sig[j:j + 1], sig[j + 1:j + 2], 0.7)
        assert torch.allclose(grad, -eps * c, rtol=1e-4, atol=1e-5)


def test_flash_and_power_weights_by_hand():
    sig = flow_sigmas(10, 3.0)
    steps = list(range(9))
    g, s = sde_std(sig[:9], sig[1:10], 0.7)
    dt = sig[:9] - sig[1:10]
    c = dt.sqrt() / g + g * dt.sqrt() * (1 - sig[:9]) / (2 * sig[:9])
    w = (1 / c) / (1 / c).mean()
    assert torch.allclose(flash_weights(sig, 0.7, steps), w, rtol=1e-6)
    assert flash_weights(sig, 0.7, steps).mean() == pytest.approx(1.0)
    # late steps (small sigma) have the largest gradient scale, so the smallest weight
    fw = flash_weights(sig, 0.7, steps)
    assert fw[0] > fw[4] > fw[8]
    assert torch.allclose(power_weights(sig, 0.7, steps, 1.0), noise_aware_weights(sig, 0.7, steps))
    assert torch.allclose(power_weights(sig, 0.7, steps, 0.0), torch.ones(9))
    p2 = power_weights(sig, 0.7, steps, 2.0)
    assert torch.allclose(p2, s**2 / (s**2).mean())
    with pytest.raises(ValueError, match="steps"):
        flash_weights(sig, 0.7, [10])
