"""Tiny, randomly initialised diffusers pipelines of every family tempflow adapts, built from
config dicts (nothing downloaded), and the adapters around them.

Each builder returns a float32 CPU pipeline in eval mode, deterministic in ``seed``, with the
family's real (public) scheduler config, so the dynamic time shift is exercised. Sizes are
chosen so one sampling step takes milliseconds: images 16 px, latents [C, 8, 8] (FLUX.2:
[C, 4, 4] after its 2x2 patchify), transformers of 1-2 blocks with 2 heads.
A new family: add ``build_<family>`` and a :data:`TINY` entry.
"""

from __future__ import annotations

import copy

from dataclasses import dataclass, field
from typing import Callable

import torch

from tiny_sd3 import CLIP_LEN, T5_LEN, _clip_tokenizer, _t5_encoder, _t5_tokenizer, build_tiny_sd3

RESOLUTION = 16
QWEN_LEN = 64  # text tokens kept per prompt by the Qwen-based tiny pipelines


def _clip_text_model(vocab_size: int, hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=1, num_attention_heads=2, projection_dim=hidden,
                         max_position_embeddings=CLIP_LEN, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1, hidden_act="gelu")
    return CLIPTextModel(cfg)


def _kl_vae(latent_channels: int, **extra):
    """AutoencoderKL with two levels (scale factor 2): 16 px images -> [latent_channels, 8, 8]."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8),
                         layers_per_block=1, latent_channels=latent_channels, norm_num_groups=4,
                         sample_size=RESOLUTION, use_quant_conv=False, use_post_quant_conv=False,
                         mid_block_add_attention=False, **extra)


def _scheduler(family: str):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from tempflow.models.families import SCHEDULERS

    return FlowMatchEulerDiscreteScheduler.from_config(SCHEDULERS[family])


def _finish(pipe):
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_flux(seed: int = 0, guidance_embeds: bool = True):
    """FluxPipeline: transformer 1 double + 1 single block, 2 heads x 16 (rope axes 4, 4, 8);
    CLIP (hidden 32 -> pooled 32) + T5 (d_model 32); VAE latents [4, 8, 8], packed [16, 16]."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        guidance_embeds=guidance_embeds, axes_dims_rope=[4, 4, 8])
    tok, tok2 = _clip_tokenizer(), _t5_tokenizer()
    pipe = FluxPipeline(scheduler=_scheduler("flux"), vae=_kl_vae(4, scaling_factor=0.3611, shift_factor=0.1159),
                        text_encoder=_clip_text_model(len(tok)), tokenizer=tok,
                        text_encoder_2=_t5_encoder(len(tok2)), tokenizer_2=tok2,
                        transformer=transformer)
    return _finish(pipe)


def qwen_tokenizer(chat_template: bool = False):
    """A byte-level BPE tokenizer with no merges (one token per byte) and Qwen's special tokens
    (<|endoftext|>, <|im_start|>, <|im_end|>): 259 ids. ``chat_template``: a ChatML template."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        vocab[special] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=[])
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    if chat_template:
        tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                             "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}"
                             "<|im_start|>assistant\n{% endif %}")
    return tok


def build_qwenimage(seed: int = 0):
    """QwenImagePipeline: transformer 1 block of 2 heads x 16 over 2x2-packed latents
    [4, 4, 4] (its video VAE has scale factor 4 here); Qwen2.5-VL text encoder (hidden 16)."""
    from diffusers import AutoencoderKLQwenImage, QwenImagePipeline, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4))
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=[0.1, -0.2, 0.0, 0.3],
                                 latents_std=[1.5, 0.8, 1.0, 2.0])
    tok = qwen_tokenizer()
    config = Qwen2_5_VLConfig(
        text_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": len(tok),
                     "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                     "rope_theta": 1000000.0, "bos_token_id": 256, "eos_token_id": 258},
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                       "out_hidden_size": 16},
        hidden_size=16, vocab_size=len(tok), vision_start_token_id=len(tok) + 1,
        vision_end_token_id=len(tok) + 2, vision_token_id=len(tok) + 3, image_token_id=len(tok) + 4,
        video_token_id=len(tok) + 5)
    text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    pipe = QwenImagePipeline(scheduler=_scheduler("qwenimage"), vae=vae, text_encoder=text_encoder,
                             tokenizer=tok, transformer=transformer)
    return _finish(pipe)


def build_zimage(seed: int = 0):
    """ZImagePipeline: single-stream transformer (dim 32, 1 layer + 1 refiner of each kind,
    2 heads) over latents [16, 8, 8]; Qwen3 text encoder (hidden 16) in a ChatML template."""
    from diffusers import ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=1,
        n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=16,
        rope_theta=256.0, t_scale=1000.0, axes_dims=[8, 4, 4], axes_lens=[256, 32, 32])
    with torch.no_grad():  # created with torch.empty: fix them (as diffusers' own tests do)
        transformer.x_pad_token.copy_(torch.ones_like(transformer.x_pad_token))
        transformer.cap_pad_token.copy_(torch.ones_like(transformer.cap_pad_token))
    tok = qwen_tokenizer(chat_template=True)
    text_encoder = Qwen3Model(Qwen3Config(
        hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=512,
        bos_token_id=256, eos_token_id=258, pad_token_id=256))
    pipe = ZImagePipeline(scheduler=_scheduler("zimage"), vae=_kl_vae(16, scaling_factor=0.3611, shift_factor=0.1159),
                          text_encoder=text_encoder, tokenizer=tok, transformer=transformer)
    return _finish(pipe)


def build_flux2klein(seed: int = 0):
    """Flux2KleinPipeline: transformer 1 double + 1 single block, 2 heads x 16 over the
    patchified latent grid [16, 4, 4] (VAE latents [4, 8, 8], random batch-norm statistics);
    Qwen3 text encoder (hidden 16, layers 1 and 2 concatenated -> 32)."""
    from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, timestep_guidance_channels=256,
        axes_dims_rope=[4, 4, 4, 4], guidance_embeds=False)
    vae = AutoencoderKLFlux2(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8),
                             layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=RESOLUTION,
                             use_quant_conv=False, use_post_quant_conv=False)
    with torch.no_grad():
        vae.bn.running_mean.copy_(0.3 * torch.randn_like(vae.bn.running_mean))
        vae.bn.running_var.copy_(0.5 + torch.rand_like(vae.bn.running_var))
    tok = qwen_tokenizer(chat_template=True)
    text_encoder = Qwen3ForCausalLM(Qwen3Config(
        hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=512,
        bos_token_id=256, eos_token_id=258, pad_token_id=256))
    pipe = Flux2KleinPipeline(scheduler=_scheduler("flux2klein"), vae=vae, text_encoder=text_encoder,
                              tokenizer=tok, transformer=transformer)
    return _finish(pipe)


@dataclass(frozen=True)
class Tiny:
    """How to build one family's tiny pipeline and wrap it.

    build(seed) -> pipeline; adapter(pipe, lora) -> FlowModel; call_kwargs: what the pipeline's
    __call__ needs to sample as the adapter does at the family's default guidance
    ``guidance_scale`` (the project's CFG scale; None = off); lora_targets: the adapter's
    default LoRA target modules; step_latents(model, latents): the pipeline's latents inside its
    loop (what a step callback sees) -> [B, *latent_shape] (default: from_pipeline_latents).
    """

    build: Callable
    adapter: Callable
    guidance_scale: float | None
    call_kwargs: dict = field(default_factory=dict)
    lora_targets: tuple[str, ...] = ()
    step_latents: Callable | None = None

    def loop_latents(self, model, latents):
        """Latents seen by a step callback -> [B, *latent_shape]."""
        return (self.step_latents or (lambda m, x: m.from_pipeline_latents(x)))(model, latents)


def _tokens_to_grid(model, x):
    """FLUX.2's packed loop latents [B, h * w, C] -> [B, C, h, w]."""
    side = model.latent_side
    return x.permute(0, 2, 1).reshape(x.shape[0], -1, side, side)


def _sd3_adapter(pipe, lora=None):
    from tempflow.models.sd3 import SD3Model

    return SD3Model(pipe, resolution=RESOLUTION, lora=lora, max_sequence_length=T5_LEN)


def _flux_adapter(pipe, lora=None):
    from tempflow.models.flux import FluxModel

    return FluxModel(pipe, resolution=RESOLUTION, lora=lora, max_sequence_length=T5_LEN)


def _qwenimage_adapter(pipe, lora=None):
    from tempflow.models.qwenimage import QwenImageModel

    return QwenImageModel(pipe, resolution=RESOLUTION, lora=lora, max_sequence_length=QWEN_LEN)


def _zimage_adapter(pipe, lora=None):
    from tempflow.models.zimage import ZImageModel

    return ZImageModel(pipe, resolution=RESOLUTION, lora=lora, max_sequence_length=QWEN_LEN)


def _flux2klein_adapter(pipe, lora=None):
    from tempflow.models.flux2klein import Flux2KleinModel

    return Flux2KleinModel(pipe, resolution=RESOLUTION, lora=lora, max_sequence_length=QWEN_LEN,
                           text_encoder_out_layers=(1, 2))


def _targets(name: str) -> tuple[str, ...]:
    from tempflow.models import flux, flux2klein, lora, qwenimage, zimage

    return {"sd3": lora.SD3_ATTENTION_TARGETS, "flux": flux.FLUX_ATTENTION_TARGETS,
            "qwenimage": qwenimage.QWENIMAGE_ATTENTION_TARGETS,
            "zimage": zimage.ZIMAGE_ATTENTION_TARGETS,
            "flux2klein": flux2klein.FLUX2_ATTENTION_TARGETS}[name]


TINY: dict[str, Tiny] = {
    "sd3": Tiny(build_tiny_sd3, _sd3_adapter, 4.5,
                {"guidance_scale": 4.5, "max_sequence_length": T5_LEN}, _targets("sd3")),
    "flux": Tiny(build_flux, _flux_adapter, None,
                 {"guidance_scale": 3.5, "max_sequence_length": T5_LEN}, _targets("flux")),
    "qwenimage": Tiny(build_qwenimage, _qwenimage_adapter, 4.0,
                      {"true_cfg_scale": 4.0, "negative_prompt": " ", "max_sequence_length": QWEN_LEN},
                      _targets("qwenimage")),
    # the pipeline's guidance_scale 5 (v_c + 5 (v_c - v_u)) is CFG scale 6 here
    "zimage": Tiny(build_zimage, _zimage_adapter, 6.0,
                   {"guidance_scale": 5.0, "max_sequence_length": QWEN_LEN}, _targets("zimage")),
    "flux2klein": Tiny(build_flux2klein, _flux2klein_adapter, 4.0,
                       {"guidance_scale": 4.0, "max_sequence_length": QWEN_LEN,
                        "text_encoder_out_layers": (1, 2)}, _targets("flux2klein"), _tokens_to_grid),
}

_BUILT: dict = {}


def fresh(family: str, seed: int = 0):
    """A deep copy of ``family``'s tiny pipeline, built once per process (a copy takes
    milliseconds; building a Qwen2.5-VL text encoder takes seconds)."""
    if (family, seed) not in _BUILT:
        _BUILT[family, seed] = TINY[family].build(seed)
    return copy.deepcopy(_BUILT[family, seed])
