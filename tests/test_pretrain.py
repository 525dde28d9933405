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


def test_invalid_options():
    with pytest.raises(UserError, match="batch_size"):
        PretrainConfig(batch_size=0)
    with pytest.raises(UserError, match="caption_dropout"):
        PretrainConfig(caption_dropout=1.5)


def test_loss_decreases(tmp_path):
    pretrain(cfg(tmp_path / "c", 60, lr=3e-3), progress=False)
    state = torch.load(tmp_path / "c" / "pretrain_state.pt", weights_only=True)  # no pickled code
    losses = state["losses"]
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
