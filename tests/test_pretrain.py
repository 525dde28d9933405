"""`tempflow pretrain`: loss goes down, checkpoints load, resume continues exactly."""

import pytest
import torch
from safetensors.torch import load_file

from tempflow.errors import UserError
from tempflow.models.shapes_model import ShapesModel, ShapesModelConfig
from tempflow.pretrain.shapes import PretrainConfig, pretrain
from tempflow.shapes import vocabulary


def cfg(out, steps, **kw):
    model = ShapesModelConfig(vocab=vocabulary(), num_layers=1, num_heads=2, head_dim=8,
                              text_dim=16, text_layers=1)
    return PretrainConfig(out=str(out), steps=steps, batch_size=8, save_every=2, warmup=2,
                          model=model, **kw)


def test_resume_is_exact(tmp_path):
    pretrain(cfg(tmp_path / "a", 4), progress=False)
    pretrain(cfg(tmp_path / "b", 2), progress=False)
    pretrain(cfg(tmp_path / "b", 4), resume=True, progress=False)
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ShapesModel.from_pretrained(tmp_path / "a")  # a loadable checkpoint


def test_refuses_to_overwrite_or_resume_wrongly(tmp_path):
    pretrain(cfg(tmp_path / "a", 2), progress=False)
    with pytest.raises(UserError, match="--resume"):
        pretrain(cfg(tmp_path / "a", 2), progress=False)
    with pytest.raises(UserError, match="other options"):
        pretrain(cfg(tmp_path / "a", 4, lr=1e-3), resume=True, progress=False)
    with pytest.raises(UserError, match="no pretrain_state"):
        pretrain(cfg(tmp_path / "fresh", 2), resume=True, progress=False)


def test_resume_from_a_moved_folder_with_other_save_every_is_exact(tmp_path):
    import shutil
    kw = dict(sigma_sampling="logit_normal", sigma_mean=0.8, sigma_std=0.8)
    pretrain(cfg(tmp_path / "a", 4, **kw), progress=False)
    pretrain(cfg(tmp_path / "b", 2, **kw), progress=False)
    shutil.move(tmp_path / "b", tmp_path / "moved")
    c = cfg(tmp_path / "moved", 4, **kw)
    c.save_every = 3
    pretrain(c, resume=True, progress=False)
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "moved" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match="other options"):  # the noise distribution may not change
        pretrain(cfg(tmp_path / "moved", 6, sigma_sampling="logit_normal", sigma_mean=0.0,
                     sigma_std=0.8), resume=True, progress=False)


def test_logit_normal_sigma_draws_follow_mean_and_std(tmp_path, monkeypatch):
    """sigma = sigmoid(N(mean, std)): the logits of the drawn noise levels have that mean and std."""
    import tempflow.pretrain.shapes as P
    seen = []
    real = torch.sigmoid
    monkeypatch.setattr(P.torch, "sigmoid", lambda z: (seen.append(z.clone()), real(z))[1])
    c = cfg(tmp_path / "s", 40, sigma_sampling="logit_normal", sigma_mean=0.8, sigma_std=0.5)
    c.batch_size = 64
    pretrain(c, progress=False)
    logits = torch.cat([z for z in seen if z.shape == (64,)])
    assert logits.numel() == 40 * 64
    assert abs(float(logits.mean()) - 0.8) < 0.05 and abs(float(logits.std()) - 0.5) < 0.05


def test_invalid_options():
    with pytest.raises(UserError, match="sigma_std"):
        PretrainConfig(sigma_sampling="logit_normal", sigma_std=0.0)
    with pytest.raises(UserError, match="batch_size"):
        PretrainConfig(batch_size=0)
    with pytest.raises(UserError, match="caption_dropout"):
        PretrainConfig(caption_dropout=1.5)


def test_loss_decreases(tmp_path):
    pretrain(cfg(tmp_path / "c", 60, lr=3e-3), progress=False)
    state = torch.load(tmp_path / "c" / "pretrain_state.pt", weights_only=True)  # no pickled code
    losses = state["losses"]
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
