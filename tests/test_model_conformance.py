"""One conformance suite for every diffusers adapter, each on a tiny random pipeline
(tests/tiny_pipelines.py; nothing downloaded). A new family passes by adding its adapter file
and a tiny builder to tiny_pipelines.TINY."""

from __future__ import annotations

import pytest
import torch

from tempflow.errors import UserError
from tempflow.grpo.objective import ObjectiveConfig, grpo_loss, trajectory_transitions
from tempflow.grpo.rollout import rollout_flow_grpo
from tempflow.models.lora import LoraSpec, lora_parameters
from tempflow.sampling.loops import sample_ode
from tiny_pipelines import RESOLUTION, TINY, fresh

PROMPTS = ["a red cube", "two blue balls"]
FAMILIES = sorted(TINY)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def built(family):
    """(spec, pipeline, adapter without LoRA) per family, shared by the module's tests."""
    spec = TINY[family]
    pipe = fresh(family)
    return spec, pipe, spec.adapter(pipe)


def _noise(model, n, seed=0):
    return model.initial_noise(n, torch.Generator().manual_seed(seed))


def _perturb(model, seed=5, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model.transformer):
            p.add_(scale * torch.randn(p.shape, generator=g))


def _pipeline_latents(spec, pipe, model, noise, steps, callback=None):
    """The diffusers pipeline's own final latents from ``noise``, as [B, *latent_shape]."""
    out = pipe(prompt=PROMPTS[:noise.shape[0]], latents=model.to_pipeline_latents(noise.clone()),
               num_inference_steps=steps, output_type="latent", height=RESOLUTION,
               width=RESOLUTION, callback_on_step_end=callback, **spec.call_kwargs).images
    return model.from_pipeline_latents(out).float()


def test_sampler_reproduces_pipeline(built):
    spec, pipe, model = built
    noise = _noise(model, 2, seed=7)
    ref = _pipeline_latents(spec, pipe, model, noise, 3)
    torch.testing.assert_close(model.schedule(3), pipe.scheduler.sigmas.float(), atol=1e-6, rtol=0)
    ours = sample_ode(model, model.encode_prompts(PROMPTS), noise, model.schedule(3),
                      guidance_scale=spec.guidance_scale)
    assert ours.abs().max() > 0.1
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_velocity_convention_first_step(built):
    """sigma = 1 is noise and v = eps - x0: the pipeline's first step from pure noise lands on
    x_1 = noise + (sigma_1 - 1) v(noise, 1), with v the adapter's velocity."""
    spec, pipe, model = built
    noise, seen = _noise(model, 2, seed=3), {}

    def grab(p, i, t, kwargs):
        seen.setdefault(i, kwargs["latents"].clone())
        return {}

    _pipeline_latents(spec, pipe, model, noise, 2, callback=grab)
    sig = model.schedule(2)
    with torch.no_grad():
        v = model.velocity(noise, torch.ones(2), model.encode_prompts(PROMPTS),
                           guidance_scale=spec.guidance_scale)
    x1 = spec.loop_latents(model, seen[0]).float()
    torch.testing.assert_close(x1, noise + (sig[1] - sig[0]) * v, atol=1e-5, rtol=1e-5)


def test_per_sample_sigma(built):
    _, _, model = built
    cond = model.encode_prompts(PROMPTS + PROMPTS[:1])
    x, sig = _noise(model, 3), torch.tensor([0.95, 0.5, 0.05])
    with torch.no_grad():
        batched = model.velocity(x, sig, cond)
        single = torch.cat([model.velocity(x[i:i + 1], sig[i:i + 1], cond[i]) for i in range(3)])
    assert batched.shape == (3, *model.latent_shape) and batched.dtype == torch.float32
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    assert (batched[0] - batched[2]).abs().max() > 1e-3  # sigma reaches the network per sample


def _policy_batch(family):
    """A LoRA model (perturbed) and the Flow-GRPO transitions of its own 3-step rollout."""
    spec = TINY[family]
    model = spec.adapter(fresh(family), LoraSpec(rank=2, alpha=4, target_modules=spec.lora_targets))
    _perturb(model, scale=0.05)
    cond = model.encode_prompts(PROMPTS)
    sig, steps, gen = model.schedule(3), [0, 1], torch.Generator().manual_seed(0)
    ro = rollout_flow_grpo(model, cond, _noise(model, 2), sig, 0.7, steps, spec.guidance_scale, gen)
    batch = trajectory_transitions(ro, cond, sig, steps, torch.tensor([1.0, -1.0]),
                                   torch.ones(2, dtype=torch.bool), torch.ones(len(steps)))
    return model, batch, ObjectiveConfig(0.7, 1e-4, 0.01, spec.guidance_scale)


def test_on_policy_ratio_is_one(family):
    model, batch, cfg = _policy_batch(family)
    loss, stats = grpo_loss(model, batch, cfg)
    assert abs(stats["ratio_min"] - 1) < 1e-5 and abs(stats["ratio_max"] - 1) < 1e-5
    loss.backward()  # (a last block's text-stream output feeds nothing: some LoRAs get no grad)
    grads = [p.grad for p in model.trainable_parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().max() > 0 for g in grads)


@pytest.mark.slow
def test_gradient_checkpointing_keeps_the_gradients(family):
    """The presets' memory setting (model.gradient_checkpointing) changes no gradient."""
    model, batch, cfg = _policy_batch(family)
    model.transformer.train()
    grpo_loss(model, batch, cfg)[0].backward()
    plain = [None if p.grad is None else p.grad.clone() for p in model.trainable_parameters()]
    model.transformer.enable_gradient_checkpointing()
    model.transformer.zero_grad(set_to_none=True)
    grpo_loss(model, batch, cfg)[0].backward()
    for g, p in zip(plain, model.trainable_parameters()):
        if g is not None:
            torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-4)


def test_lora_targets_reference_and_pipeline_loading(family, built, tmp_path):
    spec, _, base = built
    model = spec.adapter(fresh(family), LoraSpec(rank=2, alpha=4, target_modules=spec.lora_targets))
    trained = {n for n, p in model.transformer.named_parameters() if p.requires_grad}
    assert trained and all(".lora_" in n for n in trained)
    hit = {t for t in spec.lora_targets for n in trained if f".{t}.lora_" in n}
    assert hit == set(spec.lora_targets)
    _perturb(model)
    cond = model.encode_prompts(PROMPTS)
    x, sig = _noise(model, 2), torch.tensor([0.9, 0.4])
    with torch.no_grad():
        v_base = base.velocity(x, sig, cond)
        v_pol = model.velocity(x, sig, cond)
        assert (v_pol - v_base).abs().max() > 1e-3
        with model.reference():
            torch.testing.assert_close(model.velocity(x, sig, cond), v_base)
    # a saved LoRA loads with the pipeline's own load_lora_weights and samples as the adapter does
    out = model.save_lora(tmp_path / "lora")
    pipe = fresh(family)
    pipe.load_lora_weights(str(out))
    noise = _noise(model, 2, seed=7)
    ref = _pipeline_latents(spec, pipe, model, noise, 2)
    ours = sample_ode(model, cond, noise, model.schedule(2), guidance_scale=spec.guidance_scale)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    loaded = spec.adapter(fresh(family))
    loaded.load_lora(out)
    with torch.no_grad():
        torch.testing.assert_close(loaded.velocity(x, sig, cond), v_pol, atol=1e-5, rtol=1e-5)


def test_lora_of_another_family_is_refused(family, tmp_path):
    other = "flux" if family == "sd3" else "sd3"  # the cheapest donors
    spec, spec_o = TINY[family], TINY[other]
    donor = spec_o.adapter(fresh(other), LoraSpec(rank=2, alpha=4, target_modules=spec_o.lora_targets))
    out = donor.save_lora(tmp_path / "lora")
    with pytest.raises(UserError, match=f"{other}.*{family}"):
        spec.adapter(fresh(family)).load_lora(out)


def test_decode_range(built):
    _, _, model = built
    with torch.no_grad():
        img = model.decode_images(2.0 * _noise(model, 3, seed=2))
    assert img.shape == (3, 3, RESOLUTION, RESOLUTION) and img.dtype == torch.float32
    assert img.min() >= 0 and img.max() <= 1 and img.std() > 0


def test_prompt_embeddings_cached_and_encoders_dropped(family):
    spec = TINY[family]
    model = spec.adapter(fresh(family))
    calls = []
    hooks = [getattr(model.pipe, n).register_forward_hook(lambda *a: calls.append(1))
             for n in model.text_modules if getattr(model.pipe, n, None) is not None]
    first = model.encode_prompts(PROMPTS)
    n_calls = len(calls)
    again = model.encode_prompts(list(reversed(PROMPTS)) + PROMPTS)
    assert n_calls > 0 and len(calls) == n_calls
    for h in hooks:
        h.remove()
    for k, v in first.tensors.items():
        torch.testing.assert_close(again.tensors[k][2:], v)
        torch.testing.assert_close(again.tensors[k][0], v[1])
    model.drop_text_encoders()
    assert all(getattr(model.pipe, n, None) is None for n in model.text_modules)
    assert len(model.encode_prompts(PROMPTS[:1])) == 1 and len(model.encode_negative(2)) == 2
    with pytest.raises(UserError, match="not encoded"):
        model.encode_prompts(["a prompt never seen"])
