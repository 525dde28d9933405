"""EMA of the trainable weights: constant decay and the published warm-up."""

import pytest
import torch

from tempflow.training.ema import EMA, warmup_decay


def test_warmup_decay_values():
    # d_t = min((1 + t) / (10 + t), decay): 0.1 at the first update, 0.5 at t = 8, capped
    assert warmup_decay(0, 0.9) == pytest.approx(0.1)
    assert warmup_decay(8, 0.9) == pytest.approx(0.5)
    assert warmup_decay(80, 0.9) == pytest.approx(0.9)
    assert warmup_decay(1000, 0.9) == 0.9


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_updates_every_k_steps_with_the_right_decay(warmup):
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([p], decay=0.9, every=2, warmup=warmup)
    expected = torch.zeros(3)
    for step in range(1, 9):
        with torch.no_grad():
            p.add_(1.0)
        ema.step()
        if step % 2 == 0:
            d = warmup_decay(step // 2 - 1, 0.9) if warmup else 0.9
            expected = d * expected + (1 - d) * p.detach()
        assert torch.allclose(ema.shadow[0], expected)
    with ema.applied():
        assert torch.allclose(p.detach(), expected)
    assert torch.equal(p.detach(), torch.full((3,), 8.0))


def test_preset_and_defaults():
    from pathlib import Path

    from tempflow.config import TrainConfig, load_config
    root = Path(__file__).resolve().parents[1]
    assert TrainConfig().train.ema_warmup is True
    assert load_config(root / "configs/sd35m-geneval-tempflow.yaml", []).train.ema_warmup is True
