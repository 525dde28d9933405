"""A tiny, randomly initialised StableDiffusion3Pipeline built from config dicts (nothing downloaded).

Sizes: 16 px images, VAE scale factor 2 -> latents [4, 8, 8]; MMDiT with 2 blocks of 2 heads x 8;
two CLIP text encoders (hidden 16, projection 32 -> pooled 64) over a character-level BPE vocab;
a T5 encoder (d_model 32) over a character-level Unigram vocab. Prompt embeddings are
[B, CLIP_LEN + T5 length, 32]. Deterministic for a given seed.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

RESOLUTION = 16
CLIP_LEN = 16
T5_LEN = 16  # max_sequence_length to use with this pipeline


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    # character-level BPE (no merges): every letter / digit alone or ending a word
    chars = list(string.ascii_lowercase + string.digits)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_LEN)


def _t5_tokenizer():
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in string.ascii_lowercase + string.digits]
    vocab += [("\u2581" + c, -2.5) for c in string.ascii_lowercase]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=T5_LEN)


def _clip_encoder(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=2, projection_dim=32,
                         max_position_embeddings=CLIP_LEN, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1, hidden_act="gelu")
    return CLIPTextModelWithProjection(cfg)


def _t5_encoder(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=32, num_layers=1,
                   num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0,
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(cfg)


def build_tiny_sd3(seed: int = 0, num_layers: int = 2):
    """A random tiny StableDiffusion3Pipeline (float32, CPU, eval mode), deterministic in ``seed``."""
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=RESOLUTION // 2, patch_size=2, in_channels=4, out_channels=4,
        num_layers=num_layers, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=64,
        pos_embed_max_size=16)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8),
        layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=RESOLUTION,
        scaling_factor=1.5035, shift_factor=0.0609, use_quant_conv=False,
        use_post_quant_conv=False, mid_block_add_attention=False)
    tok, tok3 = _clip_tokenizer(), _t5_tokenizer()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=_clip_encoder(len(tok)), tokenizer=tok,
        text_encoder_2=_clip_encoder(len(tok)), tokenizer_2=_clip_tokenizer(),
        text_encoder_3=_t5_encoder(len(tok3)), tokenizer_3=tok3)
    for m in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3):
        m.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_sd3(folder: str | Path, seed: int = 0) -> Path:
    """Build the tiny pipeline and ``save_pretrained`` it to ``folder`` (a diffusers folder)."""
    folder = Path(folder)
    build_tiny_sd3(seed).save_pretrained(folder)
    return folder
