"""LoRA helpers (tempflow.models.lora) on the tiny SD3 transformer and on plain modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tempflow.errors import UserError
from tempflow.models.lora import (SD3_ATTENTION_TARGETS, LoraSpec, adapter_disabled, attach_lora,
                                  has_lora, load_lora_state_dict, lora_parameters, lora_state_dict)
from tiny_sd3 import build_tiny_sd3


def _transformer(seed: int = 0):
    return build_tiny_sd3(seed).transformer


def _inputs(tr, b: int = 2):
    g = torch.Generator().manual_seed(1)
    cfg = tr.config
    side = cfg.sample_size
    return dict(hidden_states=torch.randn(b, cfg.in_channels, side, side, generator=g),
                encoder_hidden_states=torch.randn(b, 5, cfg.joint_attention_dim, generator=g),
                pooled_projections=torch.randn(b, cfg.pooled_projection_dim, generator=g),
                timestep=torch.tensor([700.0, 300.0][:b]), return_dict=False)


def _perturb(module, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(module):
            p.add_(0.2 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("kwargs, field", [
    (dict(rank=0), "rank"), (dict(rank=2.5), "rank"), (dict(alpha=0), "alpha"),
    (dict(alpha=float("nan")), "alpha"), (dict(target_modules=()), "target_modules"),
    (dict(target_modules=("to_q", "")), "target_modules"), (dict(init="bogus"), "init"),
    (dict(dropout=1.0), "dropout"), (dict(dropout=-0.1), "dropout")])
def test_spec_validation_names_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LoraSpec(**kwargs)


def test_spec_defaults_match_paper():
    spec = LoraSpec()
    assert (spec.rank, spec.alpha, spec.scale, spec.dropout) == (32, 64, 2.0, 0.0)
    assert spec.target_modules == ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                                   "add_v_proj", "to_add_out")
    assert LoraSpec(target_modules=["to_q"]).target_modules == ("to_q",)


def test_attach_only_lora_trainable_and_exact_targets():
    tr = _transformer()
    n_base = sum(p.numel() for p in tr.parameters())
    attach_lora(tr, LoraSpec(rank=4, alpha=8))
    trainable = [n for n, p in tr.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {id(p) for p in lora_parameters(tr)} == {id(p) for p in tr.parameters() if p.requires_grad}
    assert sum(p.numel() for p in tr.parameters()) > n_base
    # adapted modules: exactly the attention projections of algorithm.md section 6, in every block
    adapted = {n for n, m in tr.named_modules() if hasattr(m, "lora_A")}
    suffixes = {n.split(".attn.", 1)[1] for n in adapted}
    assert suffixes == set(SD3_ATTENTION_TARGETS)
    n_blocks = len(tr.transformer_blocks)
    # the last block is context_pre_only in SD3 (no to_add_out there)
    assert len(adapted) == n_blocks * len(SD3_ATTENTION_TARGETS) - 1
    assert all(m.r["default"] == 4 and m.scaling["default"] == 2.0
               for n, m in tr.named_modules() if hasattr(m, "lora_A"))


def test_gaussian_init_starts_at_base_and_grad_reaches_lora():
    tr = _transformer()
    x = _inputs(tr)
    with torch.no_grad():
        base = tr(**x)[0]
    attach_lora(tr, LoraSpec(rank=4, alpha=8))
    out = tr(**x)[0]
    torch.testing.assert_close(out, base)
    out.square().mean().backward()
    assert all(p.grad is not None for p in lora_parameters(tr))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_parameters(tr))
    assert all(p.grad is None for n, p in tr.named_parameters() if "lora_" not in n)


def test_missing_targets_raise_user_error():
    tr = _transformer()
    with pytest.raises(UserError, match="q_proj"):
        attach_lora(tr, LoraSpec(target_modules=("to_q", "q_proj", "k_proj")))
    assert not has_lora(tr)
    plain = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(UserError, match="to_q"):
        attach_lora(plain, LoraSpec())


def test_attach_twice_is_an_error():
    tr = _transformer()
    attach_lora(tr, LoraSpec(rank=2, alpha=2))
    with pytest.raises(ValueError, match="already"):
        attach_lora(tr, LoraSpec(rank=2, alpha=2))


def test_plain_module_supported():
    net = nn.Sequential()
    net.add_module("to_q", nn.Linear(4, 3))
    attach_lora(net, LoraSpec(rank=2, alpha=2, target_modules=("to_q",)))
    assert [n for n, p in net.named_parameters() if p.requires_grad] == [
        "to_q.lora_A.default.weight", "to_q.lora_B.default.weight"]
    assert set(lora_state_dict(net)) == {"to_q.lora_A.weight", "to_q.lora_B.weight"}


def test_adapter_disabled_and_restored_on_exception():
    tr = _transformer()
    x = _inputs(tr)
    with torch.no_grad():
        base = tr(**x)[0]
        attach_lora(tr, LoraSpec(rank=4, alpha=8))
        _perturb(tr)
        adapted = tr(**x)[0]
        assert (adapted - base).abs().max() > 1e-3
        with adapter_disabled(tr):
            torch.testing.assert_close(tr(**x)[0], base)
            with adapter_disabled(tr):  # nesting keeps it disabled
                pass
            torch.testing.assert_close(tr(**x)[0], base)
        torch.testing.assert_close(tr(**x)[0], adapted)
        with pytest.raises(RuntimeError, match="boom"):
            with adapter_disabled(tr):
                raise RuntimeError("boom")
        torch.testing.assert_close(tr(**x)[0], adapted)
    with pytest.raises(ValueError, match="no LoRA"):
        with adapter_disabled(_transformer()):
            pass


def test_state_dict_roundtrip_and_mismatch():
    tr = _transformer()
    x = _inputs(tr)
    attach_lora(tr, LoraSpec(rank=4, alpha=8))
    _perturb(tr)
    sd = lora_state_dict(tr)
    assert sd and all(".lora_A.weight" in k or ".lora_B.weight" in k for k in sd)
    assert all("default" not in k for k in sd)
    with torch.no_grad():
        adapted = tr(**x)[0]
    other = _transformer()
    attach_lora(other, LoraSpec(rank=4, alpha=8))
    load_lora_state_dict(other, sd)
    with torch.no_grad():
        torch.testing.assert_close(other(**x)[0], adapted)
    assert all(p.requires_grad for p in lora_parameters(other))
    wrong_rank = _transformer()
    attach_lora(wrong_rank, LoraSpec(rank=2, alpha=8))
    with pytest.raises(UserError, match="wrong shape"):
        load_lora_state_dict(wrong_rank, sd)
    with pytest.raises(UserError, match="missing"):
        load_lora_state_dict(other, {k: v for k, v in list(sd.items())[1:]})


def test_canonical_safetensors_gives_equal_bytes_for_any_header_order(tmp_path):
    """Two files with the same tensors and metadata but headers in different key orders (as
    the writer may produce in different processes) become byte-identical and still load."""
    import json
    import struct

    from safetensors.torch import load_file, save_file

    from tempflow.models.lora import canonical_safetensors

    tensors = {"b.weight": torch.arange(6.0).reshape(2, 3), "a.weight": torch.ones(4)}
    save_file(tensors, str(tmp_path / "x.safetensors"), metadata={"format": "pt", "lora": '{"r": 2}'})
    data = (tmp_path / "x.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    reordered = json.dumps(dict(reversed(list(header.items())))).encode()
    reordered += b" " * (-len(reordered) % 8)
    (tmp_path / "y.safetensors").write_bytes(struct.pack("<Q", len(reordered)) + reordered + data[8 + n:])
    assert (tmp_path / "x.safetensors").read_bytes() != (tmp_path / "y.safetensors").read_bytes()
    for name in ("x", "y"):
        canonical_safetensors(tmp_path / f"{name}.safetensors")
    assert (tmp_path / "x.safetensors").read_bytes() == (tmp_path / "y.safetensors").read_bytes()
    loaded = load_file(str(tmp_path / "x.safetensors"))
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
