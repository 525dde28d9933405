"""Convert the published ImageReward checkpoint to the folder ``imagereward`` loads.

    python -m tempflow.rewards.imagereward_convert ImageReward.pt med_config.json OUT_DIR \\
        [--tokenizer bert-base-uncased] [--vision-heads N]

``ImageReward.pt`` (huggingface.co/THUDM/ImageReward) is ``torch.save(model.state_dict())`` of
ImageReward/ImageReward.py: a plain dict of tensors, so it is read with
``torch.load(weights_only=True)``; a file whose unpickling would run code is refused (nothing
of it runs). Its keys, renamed (ImageReward/models/BLIP/vit.py, med.py -> transformers' BLIP):

- ``blip.visual_encoder.``: ``cls_token`` / ``pos_embed`` / ``patch_embed.proj`` ->
  ``vision_model.embeddings.class_embedding`` / ``position_embedding`` / ``patch_embedding``;
  ``blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`` ->
  ``vision_model.encoder.layers.i.{layer_norm1, self_attn.qkv, self_attn.projection,
  layer_norm2, mlp.fc1, mlp.fc2}``; ``norm`` -> ``vision_model.post_layernorm``.
- ``blip.text_encoder.X`` -> ``text_encoder.X`` (BLIP's med.py BertModel and transformers'
  BlipTextModel share the names); ``mlp.layers.*`` stays.
- dropped, unused by the score: ``blip.vision_proj.*``, ``blip.text_proj.*`` (retrieval
  projections) and the ``position_ids`` buffer (checked to be 0, 1, 2, ...).
Any other key is an error. The vision config comes from the tensor shapes (LayerNorm eps 1e-6,
exact GELU, as timm's ViT in vit.py) with head width 64 (ViT-L: 16 heads); the text config from
``med_config.json``, its cross-attention width set to the vision width as BLIP_Pretrain does.
The tokenizer is BERT's with ``[DEC]`` (bos) and ``[ENC]`` added, as BLIP's ``init_tokenizer``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import warnings
from pathlib import Path

import torch
from torch import Tensor

from tempflow.errors import UserError
from tempflow.rewards.imagereward import (FORMAT, MAX_LENGTH, PIXEL_MEAN, PIXEL_STD, SCORE_MEAN,
                                          SCORE_STD, WEIGHTS, ImageRewardModel, check_head)

VIT = "blip.visual_encoder."
RENAMES = [  # (published key pattern, transformers key), tried in order; full matches only
    (VIT + r"cls_token", "vision_model.embeddings.class_embedding"),
    (VIT + r"pos_embed", "vision_model.embeddings.position_embedding"),
    (VIT + r"patch_embed\.proj\.(weight|bias)", r"vision_model.embeddings.patch_embedding.\1"),
    (VIT + r"blocks\.(\d+)\.norm1\.(weight|bias)", r"vision_model.encoder.layers.\1.layer_norm1.\2"),
    (VIT + r"blocks\.(\d+)\.norm2\.(weight|bias)", r"vision_model.encoder.layers.\1.layer_norm2.\2"),
    (VIT + r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"vision_model.encoder.layers.\1.self_attn.qkv.\2"),
    (VIT + r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"vision_model.encoder.layers.\1.self_attn.projection.\2"),
    (VIT + r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"vision_model.encoder.layers.\1.mlp.\2.\3"),
    (VIT + r"norm\.(weight|bias)", r"vision_model.post_layernorm.\1"),
    (r"blip\.text_encoder\.((?:embeddings|encoder)\..+\.(?:weight|bias))", r"text_encoder.\1"),
    (r"mlp\.layers\.([02467])\.(weight|bias)", r"mlp.layers.\1.\2"),
]
DROPPED = re.compile(r"blip\.(vision_proj|text_proj)\.(weight|bias)|blip\.text_encoder\.embeddings\.position_ids")


def map_key(key: str) -> str | None:
    """The transformers name of a published key; None for a key the score does not use."""
    if DROPPED.fullmatch(key):
        return None
    for pattern, target in RENAMES:
        m = re.fullmatch(pattern, key)
        if m:
            return m.expand(target)
    raise KeyError(key)


def read_checkpoint(path: Path) -> dict[str, Tensor]:
    """A state dict from a weights-only torch file or safetensors; UserError for anything else."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:  # weights only: a pickle that would import or call anything is refused unrun
            with warnings.catch_warnings():  # torch warns about pickle protocols it does not expect
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path} is not a plain weights file ({type(e).__name__}); it was not unpickled with "
                        f"code: give the published ImageReward.pt, a dict of tensors") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict of tensors: give the "
                        f"published ImageReward.pt")
    return state


def rename(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Published keys -> transformers keys (contiguous copies); UserError naming unknown keys."""
    out, unknown = {}, []
    for k, v in state.items():
        try:
            target = map_key(k)
        except KeyError:
            unknown.append(k)
            continue
        if target is None:
            if k.endswith("position_ids") and not torch.equal(v.reshape(-1).long(), torch.arange(v.numel())):
                raise UserError(f"{k} is not 0, 1, 2, ...: this is not an ImageReward checkpoint")
            continue
        out[target] = v.detach().contiguous().clone()
    if unknown:
        raise UserError(f"the checkpoint has {len(unknown)} keys that are not ImageReward's "
                        f"(e.g. {', '.join(sorted(unknown)[:3])}): give the published ImageReward.pt")
    return out


def build_config(state: dict[str, Tensor], med_config: dict, vision_heads: int | None, token_ids: dict):
    """BlipConfig from the renamed tensors' shapes (vision), med_config.json and the tokenizer (text)."""
    from transformers import BlipConfig

    try:
        cls_token = state["vision_model.embeddings.class_embedding"]
        pos = state["vision_model.embeddings.position_embedding"]
        patch = state["vision_model.embeddings.patch_embedding.weight"].shape[-1]
        fc1 = state["vision_model.encoder.layers.0.mlp.fc1.weight"]
    except KeyError as e:
        raise UserError(f"the checkpoint lacks the vision tensor that {e} comes from: give the published "
                        f"ImageReward.pt") from None
    width = cls_token.shape[-1]
    grid = math.isqrt(pos.shape[1] - 1)
    if grid * grid != pos.shape[1] - 1:
        raise UserError(f"blip.visual_encoder.pos_embed has {pos.shape[1]} positions, not 1 + a square grid")
    heads = vision_heads or width // 64
    if heads < 1 or width % heads:
        raise UserError(f"cannot split the vision width {width} into heads of 64: give --vision-heads")
    depth = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("vision_model.encoder.layers."))
    vision = dict(hidden_size=width, intermediate_size=fc1.shape[0], num_hidden_layers=depth,
                  num_attention_heads=heads, image_size=grid * patch, patch_size=patch, hidden_act="gelu",
                  layer_norm_eps=1e-6)
    if med_config.get("position_embedding_type", "absolute") != "absolute" or not med_config.get("add_cross_attention"):
        raise UserError("med_config.json must describe BLIP's text encoder (absolute positions, cross-attention)")
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "layer_norm_eps", "hidden_act", "pad_token_id")
    missing = [k for k in keys if k not in med_config]
    if missing:
        raise UserError(f"med_config.json lacks {', '.join(missing)}: give the one published with ImageReward")
    text = {k: med_config[k] for k in keys}
    # is_decoder: BlipTextLayer builds its cross-attention only then (the forward stays bidirectional)
    text.update(encoder_hidden_size=width, is_decoder=True, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, **token_ids)
    settings = dict(format=FORMAT, score_mean=SCORE_MEAN, score_std=SCORE_STD, max_length=MAX_LENGTH,
                    image_mean=list(PIXEL_MEAN), image_std=list(PIXEL_STD),
                    source="THUDM/ImageReward ImageReward.pt (converted by tempflow)")
    return BlipConfig(text_config=text, vision_config=vision, imagereward=settings)


def convert_checkpoint(checkpoint: str | Path, med_config: str | Path, out_dir: str | Path,
                       tokenizer: str = "bert-base-uncased", vision_heads: int | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` and the tokenizer to ``out_dir`` (new or empty)."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    out = Path(out_dir)
    for f in (checkpoint, med_config):
        if not Path(f).is_file():
            raise UserError(f"no file {f}: download ImageReward.pt and med_config.json from "
                            f"huggingface.co/THUDM/ImageReward")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder; give a new one")
    try:
        med = json.loads(Path(med_config).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {med_config} as JSON ({type(e).__name__}): give ImageReward's "
                        f"med_config.json") from None
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the tokenizer {tokenizer!r} ({str(e).splitlines()[0]}): give "
                        f"bert-base-uncased or a local copy with --tokenizer") from None
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tok.model_max_length = MAX_LENGTH
    if len(tok) != med.get("vocab_size"):
        raise UserError(f"the tokenizer {tokenizer!r} has {len(tok)} tokens with [DEC] and [ENC], the text "
                        f"encoder {med.get('vocab_size')}: give bert-base-uncased")
    ids = dict(bos_token_id=tok.bos_token_id, sep_token_id=tok.sep_token_id, eos_token_id=tok.sep_token_id)
    state = rename(read_checkpoint(Path(checkpoint)))
    config = build_config(state, med, vision_heads, ids)
    check_head({k[len("mlp."):]: v for k, v in state.items() if k.startswith("mlp.")},
               config.text_config.hidden_size, str(checkpoint))
    with torch.device("meta"):  # shapes and names only
        skeleton = ImageRewardModel(config)
    try:
        result = skeleton.load_state_dict(state, strict=False, assign=True)
        problem = (f"missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}"
                   if result.missing_keys or result.unexpected_keys else None)
    except RuntimeError as e:  # a shape that differs
        problem = " ".join(ln.strip() for ln in str(e).splitlines()[1:3])[:300]
    if problem:
        raise UserError(f"{checkpoint} does not fit {med_config} ({problem}): give the pair published together")
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    tok.save_pretrained(out)
    save_file(state, str(out / WEIGHTS), metadata={"format": "pt"})
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["convert"]:  # `python -m tempflow.rewards.imagereward convert ...`
        argv = argv[1:]
    p = argparse.ArgumentParser(prog="python -m tempflow.rewards.imagereward_convert",
                                description="Convert ImageReward.pt to a folder for the imagereward reward.")
    p.add_argument("checkpoint", help="ImageReward.pt (huggingface.co/THUDM/ImageReward)")
    p.add_argument("med_config", help="med_config.json from the same repo")
    p.add_argument("out_dir", help="a new or empty folder")
    p.add_argument("--tokenizer", default="bert-base-uncased", help="BERT uncased tokenizer: hub id or folder")
    p.add_argument("--vision-heads", type=int, default=None, help="ViT attention heads (default: width / 64)")
    a = p.parse_args(argv)
    try:
        out = convert_checkpoint(a.checkpoint, a.med_config, a.out_dir, a.tokenizer, a.vision_heads)
    except UserError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"wrote {out}: use reward imagereward with model={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
