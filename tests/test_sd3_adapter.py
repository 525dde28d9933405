"""SD3Model on a tiny random StableDiffusion3Pipeline (tests/tiny_sd3.py); nothing downloaded."""

from __future__ import annotations

import pytest
import torch

from tempflow.errors import UserError
from tempflow.models.lora import SD3_ATTENTION_TARGETS, LoraSpec, lora_parameters
from tempflow.models.sd3 import SD3Model
from tempflow.sampling.loops import sample_ode
from tempflow.sampling.schedule import flow_sigmas
from tiny_sd3 import RESOLUTION, T5_LEN, build_tiny_sd3, save_tiny_sd3

PROMPTS = ["a red cube", "two blue balls", "x"]


def make(lora: LoraSpec | None = None, seed: int = 0) -> SD3Model:
    return SD3Model(build_tiny_sd3(seed), resolution=RESOLUTION, lora=lora, max_sequence_length=T5_LEN)


@pytest.fixture(scope="module")
def model() -> SD3Model:
    return make()


def _noise(model, n, seed=0):
    return model.initial_noise(n, torch.Generator().manual_seed(seed))


def _perturb(model, seed=5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model.transformer):
            p.add_(0.3 * torch.randn(p.shape, generator=g))


def test_shapes_and_conditioning(model):
    assert model.latent_shape == (4, 8, 8)
    cond = model.encode_prompts(PROMPTS)
    assert set(cond.tensors) == {"prompt_embeds", "pooled_prompt_embeds"}
    assert cond.tensors["prompt_embeds"].shape == (3, 16 + T5_LEN, 32)
    assert cond.tensors["pooled_prompt_embeds"].shape == (3, 64)
    assert not cond.tensors["prompt_embeds"].requires_grad
    neg = model.encode_negative(2)
    assert len(neg) == 2 and model._negative is not None and len(model.encode_negative(1)) == 1
    torch.testing.assert_close(neg.tensors["prompt_embeds"][1:],
                               model.encode_prompts([""]).tensors["prompt_embeds"])
    v = model.velocity(_noise(model, 3), torch.full((3,), 0.7), cond)
    assert v.shape == (3, 4, 8, 8) and v.dtype == torch.float32 and v.abs().mean() > 0


def test_frozen_parts_and_full_finetune(model):
    pipe = model.pipe
    for m in (pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3, pipe.vae):
        assert not m.training and not any(p.requires_grad for p in m.parameters())
    params = model.trainable_parameters()
    assert len(params) == len(list(model.transformer.parameters()))
    assert all(p.requires_grad for p in params)
    with pytest.raises(RuntimeError, match="freeze_reference"):
        with model.reference():
            pass
    # full fine-tuning: a frozen copy is the reference (own model: the fixture is shared)
    full = make()
    cond = full.encode_prompts(PROMPTS[:1])
    x, sig = _noise(full, 1), torch.tensor([0.5])
    with torch.no_grad():
        before = full.velocity(x, sig, cond)
        full.freeze_reference()
        for p in full.trainable_parameters():
            p.add_(0.01)
        with full.reference():
            torch.testing.assert_close(full.velocity(x, sig, cond), before)
        assert not torch.allclose(full.velocity(x, sig, cond), before)
    with pytest.raises(UserError, match="multiple of 4"):
        SD3Model(pipe, resolution=18)


def test_per_sample_sigma_and_timestep(model):
    cond = model.encode_prompts(PROMPTS)
    x = _noise(model, 3)
    sig = torch.tensor([0.95, 0.5, 0.05])
    with torch.no_grad():
        batched = model.velocity(x, sig, cond)
        single = torch.cat([model.velocity(x[i:i + 1], sig[i:i + 1], cond[i]) for i in range(3)])
        torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
        seen = {}
        hook = model.transformer.register_forward_pre_hook(
            lambda mod, args, kwargs: seen.update(t=kwargs["timestep"].clone()), with_kwargs=True)
        try:
            model.velocity(x, sig, cond)
        finally:
            hook.remove()
        torch.testing.assert_close(seen["t"], 1000 * sig)
        direct = model.transformer(hidden_states=x, timestep=1000 * sig, return_dict=False,
                                   encoder_hidden_states=cond.tensors["prompt_embeds"],
                                   pooled_projections=cond.tensors["pooled_prompt_embeds"])[0]
        torch.testing.assert_close(batched, direct)


def test_cfg_by_hand(model):
    cond = model.encode_prompts(PROMPTS[:2])
    x, sig, g = _noise(model, 2), torch.tensor([0.8, 0.3]), 4.5
    with torch.no_grad():
        v_c = model.velocity(x, sig, cond)
        v_u = model.velocity(x, sig, model.encode_negative(2))
        v = model.velocity(x, sig, cond, guidance_scale=g)
    expected = v_u + g * (v_c - v_u)
    torch.testing.assert_close(v, expected, atol=1e-5, rtol=1e-5)
    with torch.enable_grad():  # separate no-grad unconditional call: same numbers
        torch.testing.assert_close(model.velocity(x, sig, cond, guidance_scale=g), expected,
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("guidance", [1.0, 4.5])
def test_sample_ode_matches_diffusers_pipeline(model, guidance):
    steps = 4
    pipe = model.pipe
    pipe.scheduler.set_timesteps(steps)
    torch.testing.assert_close(pipe.scheduler.sigmas.float(), flow_sigmas(steps, shift=3.0))
    noise = _noise(model, 2, seed=7)
    ref = pipe(PROMPTS[:2], latents=noise.clone(), num_inference_steps=steps,
               guidance_scale=guidance, output_type="latent", height=RESOLUTION, width=RESOLUTION,
               max_sequence_length=T5_LEN).images
    ours = sample_ode(model, model.encode_prompts(PROMPTS[:2]), noise,
                      flow_sigmas(steps, shift=3.0), guidance_scale=guidance)
    assert ours.abs().max() > 0.1
    torch.testing.assert_close(ours, ref.float(), atol=1e-4, rtol=1e-4)


def test_decode_range_and_matches_pipeline(model):
    lat = 2.0 * _noise(model, 2, seed=3)
    with torch.no_grad():
        img = model.decode(lat)
        counted = model.decode_images(lat)
    assert img.shape == (2, 3, RESOLUTION, RESOLUTION) and img.dtype == torch.float32
    assert img.min() >= 0 and img.max() <= 1 and img.std() > 0
    torch.testing.assert_close(counted, img)
    vae = model.pipe.vae
    raw = vae.decode(lat / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]
    expected = model.pipe.image_processor.postprocess(raw.detach(), output_type="pt")
    torch.testing.assert_close(img, expected)


def test_lora_targets_reference_and_exception():
    base = make()
    m = make(LoraSpec(rank=4, alpha=8))
    names = [n for n, p in m.transformer.named_parameters() if p.requires_grad]
    assert {id(p) for p in m.trainable_parameters()} == {
        id(p) for p in m.transformer.parameters() if p.requires_grad}
    assert all("lora_" in n for n in names)
    assert {n.split(".attn.", 1)[1].split(".lora_")[0] for n in names} == set(SD3_ATTENTION_TARGETS)
    cond = m.encode_prompts(PROMPTS[:2])
    x, sig = _noise(m, 2), torch.tensor([0.9, 0.4])
    with torch.no_grad():
        v0 = base.velocity(x, sig, cond)
        torch.testing.assert_close(m.velocity(x, sig, cond), v0)  # B = 0 at init
        _perturb(m)
        v_pol = m.velocity(x, sig, cond)
        assert (v_pol - v0).abs().max() > 1e-3
        with m.reference():
            torch.testing.assert_close(m.velocity(x, sig, cond), v0)
        torch.testing.assert_close(m.velocity(x, sig, cond), v_pol)
        with pytest.raises(KeyError):
            with m.reference():
                raise KeyError("boom")
        torch.testing.assert_close(m.velocity(x, sig, cond), v_pol)
    loss = m.velocity(x, sig, cond).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in m.trainable_parameters())


def test_save_lora_loads_in_diffusers_and_back(tmp_path):
    m = make(LoraSpec(rank=4, alpha=8))  # alpha != rank: the scale must survive the round trip
    _perturb(m)
    cond = m.encode_prompts(PROMPTS[:2])
    x, sig = _noise(m, 2), torch.tensor([0.9, 0.4])
    with torch.no_grad():
        v_pol = m.velocity(x, sig, cond)
    out = m.save_lora(tmp_path / "lora")
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    fresh = build_tiny_sd3()
    fresh.load_lora_weights(str(out))
    with torch.no_grad():
        v = fresh.transformer(hidden_states=x, timestep=1000 * sig, return_dict=False,
                              encoder_hidden_states=cond.tensors["prompt_embeds"],
                              pooled_projections=cond.tensors["pooled_prompt_embeds"])[0]
    torch.testing.assert_close(v, v_pol, atol=1e-5, rtol=1e-5)
    wrapped = SD3Model(fresh, resolution=RESOLUTION, max_sequence_length=T5_LEN)  # adapter "default_0"
    assert wrapped.has_lora and all(p.requires_grad for p in wrapped.trainable_parameters())
    assert not any(p.requires_grad for n, p in fresh.transformer.named_parameters() if "lora_" not in n)
    again = wrapped.save_lora(tmp_path / "again")
    for m2 in (make(), make(LoraSpec(rank=4, alpha=8))):  # new adapter from metadata / existing one
        m2.load_lora(out if m2.has_lora else again)
        with torch.no_grad():
            torch.testing.assert_close(m2.velocity(x, sig, cond), v_pol, atol=1e-5, rtol=1e-5)
        assert all(p.requires_grad for p in m2.trainable_parameters())
    with pytest.raises(UserError, match="rank|shape"):
        make(LoraSpec(rank=2, alpha=8)).load_lora(out)
    with pytest.raises(UserError, match="nope"):
        make().load_lora(tmp_path / "nope")


def test_from_pretrained_local_folder(tmp_path, model):
    folder = save_tiny_sd3(tmp_path / "tiny")
    loaded = SD3Model.from_pretrained(folder, resolution=RESOLUTION, max_sequence_length=T5_LEN,
                                      lora=LoraSpec(rank=2, alpha=4))
    assert loaded.latent_shape == model.latent_shape and loaded.has_lora
    cond = model.encode_prompts(PROMPTS[:1])
    torch.testing.assert_close(loaded.encode_prompts(PROMPTS[:1]).tensors["prompt_embeds"],
                               cond.tensors["prompt_embeds"])
    x, sig = _noise(model, 1), torch.tensor([0.6])
    with torch.no_grad():
        torch.testing.assert_close(loaded.velocity(x, sig, cond), model.velocity(x, sig, cond))


def test_from_pretrained_missing_or_bad_folder(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(UserError, match="no_such_model"):
        SD3Model.from_pretrained(missing)
    with pytest.raises(UserError, match="does not exist"):
        SD3Model.from_pretrained("./definitely/not/here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="model_index.json"):
        SD3Model.from_pretrained(tmp_path / "empty")
    broken = save_tiny_sd3(tmp_path / "broken")
    for f in (broken / "transformer").iterdir():
        f.unlink()
    with pytest.raises(UserError, match="broken"):
        SD3Model.from_pretrained(broken)
