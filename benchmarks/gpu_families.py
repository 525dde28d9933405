"""Random-weight FLUX.1-dev, Qwen-Image, Z-Image-Turbo and FLUX.2 klein for benchmarks/gpu_sd35.py.

Each family's real adapter (tempflow.models.flux, qwenimage, zimage, flux2klein: latent packing,
the transformer call, distilled guidance, CFG, VAE scaling) wraps a stand-in pipeline that
holds only the transformer, the VAE and the public scheduler config; prompts are random
tensors of the text encoder's output shapes (fixed per prompt string), so no text encoder is
built or downloaded. ``--tiny`` sizes follow tests/tiny_pipelines.py (16 px, 1-2 blocks).

The full-size numbers are the ``transformer/config.json`` and ``vae/config.json`` values of the
published checkpoints as recalled from their public configs (not read from a download here);
those marked "unsure" may differ from the released files. Timing and FLOPs depend on the
layer counts and widths, not on the weights.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

RESOLUTION, TINY_RESOLUTION = 512, 16  # image side in px: the SD3.5 benchmark's 512, the tiny pipelines' 16

# ---------------------------------------------------------------- full size (public configs)
# black-forest-labs/FLUX.1-dev transformer/config.json (public; 11.9B parameters)
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                guidance_embeds=True, axes_dims_rope=(16, 56, 56))
# black-forest-labs/FLUX.1-dev vae/config.json (public); Z-Image uses the same VAE
FLUX_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False, sample_size=1024)
# Qwen/Qwen-Image transformer/config.json (public; 20B parameters)
QWEN_IMAGE = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                  num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False,
                  axes_dims_rope=(16, 56, 56))
# Qwen/Qwen-Image vae/config.json (public; latents_mean / latents_std: diffusers' defaults,
# which are the published values)
QWEN_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True])
# Tongyi-MAI/Z-Image-Turbo transformer/config.json (public; 6.2B parameters; axes_lens unsure:
# a RoPE table length, no cost)
Z_IMAGE_TURBO = dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30,
                     n_refiner_layers=2, n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True,
                     cap_feat_dim=2560, rope_theta=256.0, t_scale=1000.0, axes_dims=[32, 48, 48],
                     axes_lens=[1536, 512, 512])
# black-forest-labs/FLUX.2-klein-4B transformer/config.json (public; unsure: the block counts
# 5 double + 20 single and 24 heads are recalled, not checked; joint_attention_dim = 3 x the
# Qwen3-4B hidden size 2560, from text_encoder_out_layers (9, 18, 27))
FLUX2_KLEIN_4B = dict(patch_size=1, in_channels=128, num_layers=5, num_single_layers=20, attention_head_dim=128,
                      num_attention_heads=24, joint_attention_dim=7680, timestep_guidance_channels=256,
                      mlp_ratio=3.0, axes_dims_rope=(32, 32, 32, 32), guidance_embeds=False)
# black-forest-labs/FLUX.2 vae/config.json (public: 32 latent channels, 2x2 patchify + batch norm)
FLUX2_VAE = dict(latent_channels=32, block_out_channels=(128, 256, 512, 512), layers_per_block=2)

# ---------------------------------------------------------------- tiny (tests/tiny_pipelines.py)
_TINY_KL = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                norm_num_groups=4, sample_size=TINY_RESOLUTION, use_quant_conv=False, use_post_quant_conv=False,
                mid_block_add_attention=False)
TINY_FLUX = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
                 axes_dims_rope=(4, 4, 8))
TINY_QWEN = dict(patch_size=2, in_channels=16, out_channels=4, num_layers=1, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4))
TINY_QWEN_VAE = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[False, True],
                     latents_mean=[0.1, -0.2, 0.0, 0.3], latents_std=[1.5, 0.8, 1.0, 2.0])
TINY_ZIMAGE = dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=1,
                   n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=16,
                   rope_theta=256.0, t_scale=1000.0, axes_dims=[8, 4, 4], axes_lens=[256, 32, 32])
TINY_FLUX2 = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                  num_attention_heads=2, joint_attention_dim=32, timestep_guidance_channels=256,
                  axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False)


@dataclass(frozen=True)
class FamilySpec:
    """One family at both sizes. text: conditioning key -> per-prompt shape, full and tiny
    (a key ending in ``_mask`` is an all-ones mask); cfg: the project's CFG scale the family
    samples with by default (1 = off); kwargs: the adapter's extra arguments."""

    name: str                      # tempflow.models.families name
    adapter: str                   # module:Class under tempflow.models
    transformer: str               # diffusers class
    vae: str
    full: dict
    tiny: dict
    vae_full: dict
    vae_tiny: dict
    text_full: dict
    text_tiny: dict
    cfg: float
    targets: str                   # module attribute holding the LoRA target modules
    kwargs: dict = field(default_factory=dict)


# Text lengths: FLUX.1-dev's T5 max_sequence_length 512; FLUX.2 klein pads to 512 and attends to
# it all; Qwen-Image and Z-Image keep only a prompt's own tokens, 128 here (a long prompt).
SPECS: dict[str, FamilySpec] = {
    "flux": FamilySpec(
        "flux", "flux:FluxModel", "FluxTransformer2DModel", "AutoencoderKL", FLUX_DEV, TINY_FLUX,
        FLUX_VAE, dict(_TINY_KL, latent_channels=4, scaling_factor=0.3611, shift_factor=0.1159),
        {"prompt_embeds": (512, 4096), "pooled_prompt_embeds": (768,)},
        {"prompt_embeds": (8, 32), "pooled_prompt_embeds": (32,)},
        1.0, "FLUX_ATTENTION_TARGETS", {"guidance": 3.5}),   # guidance-distilled: 3.5 in every call, no CFG
    "qwenimage": FamilySpec(
        "qwenimage", "qwenimage:QwenImageModel", "QwenImageTransformer2DModel", "AutoencoderKLQwenImage",
        QWEN_IMAGE, TINY_QWEN, QWEN_VAE, TINY_QWEN_VAE,
        {"prompt_embeds": (128, 3584), "prompt_embeds_mask": (128,)},
        {"prompt_embeds": (8, 16), "prompt_embeds_mask": (8,)},
        4.0, "QWENIMAGE_ATTENTION_TARGETS", {"max_sequence_length": 128}),  # true CFG 4, the model card's
    "zimage": FamilySpec(
        "zimage", "zimage:ZImageModel", "ZImageTransformer2DModel", "AutoencoderKL", Z_IMAGE_TURBO, TINY_ZIMAGE,
        FLUX_VAE, dict(_TINY_KL, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159),
        {"prompt_embeds": (128, 2560), "prompt_embeds_mask": (128,)},
        {"prompt_embeds": (8, 16), "prompt_embeds_mask": (8,)},
        1.0, "ZIMAGE_ATTENTION_TARGETS", {"max_sequence_length": 128}),  # Turbo: guidance_scale 0, no CFG
    "flux2": FamilySpec(
        "flux2klein", "flux2klein:Flux2KleinModel", "Flux2Transformer2DModel", "AutoencoderKLFlux2",
        FLUX2_KLEIN_4B, TINY_FLUX2, FLUX2_VAE, dict(_TINY_KL, latent_channels=4),
        {"prompt_embeds": (512, 7680)}, {"prompt_embeds": (8, 32)},
        1.0, "FLUX2_ATTENTION_TARGETS"),  # the step-distilled klein samples without CFG
}


def random_text_adapter(adapter_cls, shapes: dict[str, tuple[int, ...]]):
    """``adapter_cls`` whose prompt encoding is random tensors of ``shapes`` (per prompt), fixed
    per prompt string: the text encoders run once per prompt in training and are left out."""
    from tempflow.models.base import Conditioning

    class RandomText(adapter_cls):
        def _encode(self, prompts):
            rows = {k: [] for k in shapes}
            for p in prompts:
                g = torch.Generator().manual_seed(sum(map(ord, p)))
                for k, shape in shapes.items():
                    rows[k].append(torch.ones(shape, dtype=torch.long) if k.endswith("_mask")
                                   else torch.randn(shape, generator=g))
            return Conditioning({k: torch.stack(v).to(self.device, torch.long if k.endswith("_mask") else self.dtype)
                                 for k, v in rows.items()})

    RandomText.__name__ = f"RandomText{adapter_cls.__name__}"
    return RandomText


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    """Build in ``dtype`` directly (no float32 copy of a 20B-parameter model)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_family(model: str, tiny: bool, device: str, dtype: torch.dtype, rank: int):
    """Random-weight transformer + VAE of ``model`` (a SPECS key) behind its tempflow adapter,
    with a fresh LoRA (B = 0, r = rank, alpha = 2 rank) on the adapter's attention targets."""
    import importlib

    import diffusers

    from tempflow.models.families import BY_NAME, SCHEDULERS
    from tempflow.models.lora import LoraSpec

    spec = SPECS[model]
    module, cls_name = spec.adapter.split(":")
    mod = importlib.import_module(f"tempflow.models.{module}")
    torch.manual_seed(0)
    with torch.device(device), _default_dtype(dtype):
        transformer = getattr(diffusers, spec.transformer)(**(spec.tiny if tiny else spec.full))
        vae = getattr(diffusers, spec.vae)(**(spec.vae_tiny if tiny else spec.vae_full))
    transformer.to(device, dtype)
    vae.to(device, dtype).requires_grad_(False).eval()
    if hasattr(transformer, "x_pad_token"):  # Z-Image creates these with torch.empty
        with torch.no_grad():
            transformer.x_pad_token.normal_()
            transformer.cap_pad_token.normal_()
    if spec.vae == "AutoencoderKLQwenImage":
        scale = 2 ** len(vae.temperal_downsample)
    else:
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
    pipe = SimpleNamespace(transformer=transformer, vae=vae, vae_scale_factor=scale,
                           scheduler=SimpleNamespace(config=SCHEDULERS[BY_NAME[spec.name].name]))
    lora = LoraSpec(rank=rank, alpha=2.0 * rank, target_modules=getattr(mod, spec.targets))
    cls = random_text_adapter(getattr(mod, cls_name), spec.text_tiny if tiny else spec.text_full)
    kwargs = dict(spec.kwargs)
    if tiny and "max_sequence_length" in kwargs:
        kwargs["max_sequence_length"] = spec.text_tiny["prompt_embeds"][0]
    adapter = cls(pipe, resolution=TINY_RESOLUTION if tiny else RESOLUTION, lora=lora, **kwargs)
    transformer.train()
    return adapter
