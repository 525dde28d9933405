"""The built-in shapes model implements the FlowModel interface (tiny random config)."""

import pytest
import torch

from tempflow.errors import UserError
from tempflow.models.base import Conditioning
from tempflow.models.shapes_model import ShapesModel, ShapesModelConfig
from tempflow.sampling import flow_sigmas
from tempflow.sampling.loops import sample_ode

VOCAB = ["a", "red", "blue", "circle", "square", "and"]


def tiny(num_layers: int = 1) -> ShapesModel:
    torch.manual_seed(0)
    cfg = ShapesModelConfig(vocab=VOCAB, resolution=16, patch_size=4, num_layers=num_layers,
                            num_heads=2, head_dim=8, text_dim=16, text_layers=1, max_length=8)
    return ShapesModel(cfg)


def test_velocity_shapes_dtype_and_counting():
    m = tiny()
    cond = m.encode_prompts(["a red circle", "a blue square", ""])
    assert cond.tensors["prompt_embeds"].shape == (3, 8, 16)
    assert cond.tensors["pooled_prompt_embeds"].shape == (3, 16)
    x = torch.randn(3, *m.latent_shape)
    v = m.velocity(x, torch.tensor([1.0, 0.5, 0.1]), cond)
    assert v.shape == (3, 3, 16, 16) and v.dtype == torch.float32
    with torch.no_grad():
        m.velocity(x, torch.full((3,), 0.5), cond, guidance_scale=3.0)
    assert m.counters["nfe"] == 3 + 6  # CFG counts both halves
    assert m.counters["nfe_grad"] == 3


def test_per_sample_sigma_equals_separate_calls():
    m = tiny()
    cond = m.encode_prompts(["a red circle", "a blue square"])
    x = torch.randn(2, *m.latent_shape)
    sig = torch.tensor([0.9, 0.2])
    with torch.no_grad():
        both = m.velocity(x, sig, cond)
        one = torch.cat([m.velocity(x[i:i + 1], sig[i:i + 1], cond[i]) for i in range(2)])
    torch.testing.assert_close(both, one, atol=1e-5, rtol=1e-5)


def test_cfg_combination():
    m = tiny()
    cond = m.encode_prompts(["a red circle"] * 2)
    x, sig = torch.randn(2, *m.latent_shape), torch.tensor([0.7, 0.3])
    with torch.no_grad():
        v_c = m.velocity(x, sig, cond)
        v_u = m.velocity(x, sig, m.encode_negative(2))
        v = m.velocity(x, sig, cond, guidance_scale=4.0)
    torch.testing.assert_close(v, v_u + 4.0 * (v_c - v_u), atol=1e-5, rtol=1e-5)
    # with gradients on, the unconditional half runs without gradient: same value
    v_grad = m.velocity(x, sig, cond, guidance_scale=4.0)
    torch.testing.assert_close(v_grad.detach(), v, atol=1e-5, rtol=1e-5)


def test_conditioning_ops():
    c = Conditioning({"a": torch.arange(6).view(3, 2)})
    assert len(c) == 3
    assert c[1].tensors["a"].tolist() == [[2, 3]]
    assert c.repeat_interleave(2).tensors["a"][:, 0].tolist() == [0, 0, 2, 2, 4, 4]
    assert len(Conditioning.cat([c, c[0:2]])) == 5


def test_unknown_word_is_user_error():
    m = tiny()
    with pytest.raises(UserError, match="hexagon"):
        m.encode_prompts(["a hexagon"])


def test_decode_range_and_sampling_runs():
    m = tiny()
    cond = m.encode_prompts(["a red circle"] * 2)
    x = sample_ode(m, cond, m.initial_noise(2, torch.Generator().manual_seed(0)), flow_sigmas(3), 2.0)
    img = m.decode_images(x)
    assert img.shape == (2, 3, 16, 16) and img.min() >= 0 and img.max() <= 1
    assert m.counters["decodes"] == 2


def test_save_load_roundtrip_and_errors(tmp_path):
    m = tiny()
    m.save_pretrained(tmp_path / "ck")
    m2 = ShapesModel.from_pretrained(tmp_path / "ck")
    cond = m.encode_prompts(["a blue square"])
    x = torch.randn(1, *m.latent_shape)
    with torch.no_grad():
        torch.testing.assert_close(m.velocity(x, torch.tensor([0.4]), cond),
                                   m2.velocity(x, torch.tensor([0.4]), m2.encode_prompts(["a blue square"])))
    with pytest.raises(UserError, match="not found"):
        ShapesModel.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="missing"):
        ShapesModel.from_pretrained(tmp_path / "empty")
    # a checkpoint of another architecture
    torch.manual_seed(0)
    big = ShapesModel(ShapesModelConfig(vocab=VOCAB, resolution=16, patch_size=4, num_layers=2,
                                        num_heads=2, head_dim=8, text_dim=16, text_layers=1, max_length=8))
    big.save_pretrained(tmp_path / "big")
    (tmp_path / "big" / "config.json").write_text((tmp_path / "ck" / "config.json").read_text())
    with pytest.raises(UserError, match="does not match"):
        ShapesModel.from_pretrained(tmp_path / "big")
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="unreadable"):
        ShapesModel.from_pretrained(tmp_path / "ck")


def test_lora_reference_mode():
    from tempflow.models.lora import LoraSpec, SD3_ATTENTION_TARGETS

    m = tiny(num_layers=2)  # the last SD3 block has no to_add_out: two blocks cover all targets
    cond = m.encode_prompts(["a red circle"])
    x, sig = torch.randn(1, *m.latent_shape), torch.tensor([0.6])
    with torch.no_grad():
        base = m.velocity(x, sig, cond)
    m.add_lora(LoraSpec(rank=4, alpha=8, target_modules=SD3_ATTENTION_TARGETS))
    params = m.trainable_parameters()
    assert params and all("lora" in n for n, p in m.transformer.named_parameters() if p.requires_grad)
    with torch.no_grad():
        for p in params:
            p.add_(0.1 * torch.randn_like(p))
        adapted = m.velocity(x, sig, cond)
        with m.reference():
            ref = m.velocity(x, sig, cond)
        again = m.velocity(x, sig, cond)
    torch.testing.assert_close(ref, base)
    torch.testing.assert_close(again, adapted)
    assert not torch.allclose(adapted, base)


def test_x0_prediction_parameterisation():
    """The transformer predicts the clean image; the velocity is (x - x0_hat) / max(sigma, 0.05)."""
    m = tiny()
    assert m.config.prediction == "x0"
    cond = m.encode_prompts(["a red circle", "a blue square"])
    x, sig = torch.randn(2, *m.latent_shape), torch.tensor([0.6, 0.01])
    with torch.no_grad():
        out = m.transformer(hidden_states=x, encoder_hidden_states=cond.tensors["prompt_embeds"],
                            pooled_projections=cond.tensors["pooled_prompt_embeds"],
                            timestep=1000 * sig, return_dict=False)[0]
        v = m.velocity(x, sig, cond)
    torch.testing.assert_close(v[0], (x[0] - out[0]) / 0.6)
    torch.testing.assert_close(v[1], (x[1] - out[1]) / 0.05)
    with pytest.raises(ValueError, match="prediction"):
        ShapesModelConfig(vocab=VOCAB, prediction="eps")
