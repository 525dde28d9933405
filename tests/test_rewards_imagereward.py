"""ImageReward on transformers' BLIP classes: a synthetic checkpoint with the published key
names (ImageReward/ImageReward.py, models/BLIP/vit.py, med.py) and tiny shapes is converted,
and the reward is checked against a forward pass written here from the raw tensors."""

import json
import math
import os
import pickle
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tempflow.errors import UserError
from tempflow.rewards import build_reward, score
from tempflow.rewards.imagereward import imagereward_pixels
from tempflow.rewards.imagereward_convert import convert_checkpoint, main, map_key

PROMPTS = ["a red circle", "two blue squares", "a green triangle on a red square", "three circles",
           "one square"]
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "green", "circle", "square",
         "triangle", "two", "three", "one", "on", "##s"]
VIS, VIS_HEADS, VIS_LAYERS, PATCH, IMG = 48, 4, 2, 8, 32
TXT, TXT_HEADS, TXT_LAYERS, VOCAB, MAXPOS = 32, 2, 2, len(WORDS) + 2, 40
MEAN, STD = 0.16717362830052426, 1.0333394966054072  # ImageReward.py, as published
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _synthetic_checkpoint(seed=0) -> "OrderedDict[str, torch.Tensor]":
    """Every key of ImageReward.pt (ImageReward = blip: BLIP_Pretrain + mlp: MLP) at tiny sizes;
    LayerNorm weights random too, so that any swapped pair of tensors changes the output."""
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()

    def lin(name, n_out, n_in):
        sd[name + ".weight"] = torch.randn(n_out, n_in, generator=g) / math.sqrt(n_in)
        sd[name + ".bias"] = 0.1 * torch.randn(n_out, generator=g)

    def ln(name, n):
        sd[name + ".weight"] = 1 + 0.2 * torch.randn(n, generator=g)
        sd[name + ".bias"] = 0.1 * torch.randn(n, generator=g)

    v = "blip.visual_encoder."
    sd[v + "cls_token"] = 0.5 * torch.randn(1, 1, VIS, generator=g)
    sd[v + "pos_embed"] = 0.5 * torch.randn(1, (IMG // PATCH) ** 2 + 1, VIS, generator=g)
    sd[v + "patch_embed.proj.weight"] = torch.randn(VIS, 3, PATCH, PATCH, generator=g) / math.sqrt(3 * PATCH * PATCH)
    sd[v + "patch_embed.proj.bias"] = 0.1 * torch.randn(VIS, generator=g)
    for i in range(VIS_LAYERS):
        b = f"{v}blocks.{i}."
        ln(b + "norm1", VIS)
        lin(b + "attn.qkv", 3 * VIS, VIS)
        lin(b + "attn.proj", VIS, VIS)
        ln(b + "norm2", VIS)
        lin(b + "mlp.fc1", 2 * VIS, VIS)
        lin(b + "mlp.fc2", VIS, 2 * VIS)
    ln(v + "norm", VIS)
    t = "blip.text_encoder."
    sd[t + "embeddings.position_ids"] = torch.arange(MAXPOS).expand(1, -1)
    sd[t + "embeddings.word_embeddings.weight"] = torch.randn(VOCAB, TXT, generator=g)
    sd[t + "embeddings.position_embeddings.weight"] = torch.randn(MAXPOS, TXT, generator=g)
    ln(t + "embeddings.LayerNorm", TXT)
    for i in range(TXT_LAYERS):
        b = f"{t}encoder.layer.{i}."
        for att, kv_width in (("attention", TXT), ("crossattention", VIS)):
            lin(b + att + ".self.query", TXT, TXT)
            lin(b + att + ".self.key", TXT, kv_width)
            lin(b + att + ".self.value", TXT, kv_width)
            lin(b + att + ".output.dense", TXT, TXT)
            ln(b + att + ".output.LayerNorm", TXT)
        lin(b + "intermediate.dense", 2 * TXT, TXT)
        lin(b + "output.dense", TXT, 2 * TXT)
        ln(b + "output.LayerNorm", TXT)
    lin("blip.vision_proj", 16, VIS)
    lin("blip.text_proj", 16, TXT)
    for i, (n_in, n_out) in zip((0, 2, 4, 6, 7), [(TXT, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)]):
        lin(f"mlp.layers.{i}", n_out, n_in)
    return sd


def _med_config():
    """The published med_config.json with tiny sizes (encoder_width is overridden by BLIP_Pretrain)."""
    return {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "hidden_size": TXT, "initializer_range": 0.02,
            "intermediate_size": 2 * TXT, "layer_norm_eps": 1e-12, "max_position_embeddings": MAXPOS,
            "model_type": "bert", "num_attention_heads": TXT_HEADS, "num_hidden_layers": TXT_LAYERS,
            "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": VOCAB, "encoder_width": 768,
            "add_cross_attention": True}


def _tokenizer():
    from transformers import BertTokenizer

    return BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """(folder with ImageReward.pt, med_config.json and a BERT tokenizer; the raw state dict)."""
    d = tmp_path_factory.mktemp("published")
    sd = _synthetic_checkpoint()
    torch.save(sd, d / "ImageReward.pt")
    (d / "med_config.json").write_text(json.dumps(_med_config()))
    _tokenizer().save_pretrained(d / "bert")
    return d, sd


def _convert(published, out, **kw):
    d, _ = published
    return convert_checkpoint(d / "ImageReward.pt", d / "med_config.json", out, tokenizer=str(d / "bert"),
                              vision_heads=kw.pop("vision_heads", VIS_HEADS), **kw)


@pytest.fixture(scope="module")
def tiny_dir(published, tmp_path_factory):
    return _convert(published, tmp_path_factory.mktemp("converted") / "ir")


# ------------------------------------------------ the forward pass, from the published tensors


def _ln(x, sd, name, eps):
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps)


def _lin(x, sd, name):
    return F.linear(x, sd[name + ".weight"], sd[name + ".bias"])


def _heads(x, n):  # [B, L, D] -> [B, n, L, D / n]
    return x.view(x.shape[0], x.shape[1], n, -1).transpose(1, 2)


def _attend(q, k, v, n, bias=None):
    q, k, v = _heads(q, n), _heads(k, n), _heads(v, n)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        s = s + bias
    o = s.softmax(-1) @ v
    return o.transpose(1, 2).reshape(o.shape[0], o.shape[2], -1)


def _vit(sd, pixels):
    """models/BLIP/vit.py VisionTransformer.forward (timm ViT, LayerNorm eps 1e-6)."""
    v = "blip.visual_encoder."
    x = F.conv2d(pixels, sd[v + "patch_embed.proj.weight"], sd[v + "patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd[v + "cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + sd[v + "pos_embed"]
    for i in range(VIS_LAYERS):
        b = f"{v}blocks.{i}."
        q, k, val = _lin(_ln(x, sd, b + "norm1", 1e-6), sd, b + "attn.qkv").chunk(3, dim=-1)
        x = x + _lin(_attend(q, k, val, VIS_HEADS), sd, b + "attn.proj")
        x = x + _lin(F.gelu(_lin(_ln(x, sd, b + "norm2", 1e-6), sd, b + "mlp.fc1")), sd, b + "mlp.fc2")
    return _ln(x, sd, v + "norm", 1e-6)


def _bert_cls(sd, ids, mask, image):
    """models/BLIP/med.py BertModel(mode='multimodal'): [CLS] of the last layer."""
    t = "blip.text_encoder."
    x = sd[t + "embeddings.word_embeddings.weight"][ids]
    x = x + sd[t + "embeddings.position_embeddings.weight"][:ids.shape[1]]
    x = _ln(x, sd, t + "embeddings.LayerNorm", 1e-12)
    bias = (1.0 - mask[:, None, None, :].float()) * -10000.0
    for i in range(TXT_LAYERS):
        b = f"{t}encoder.layer.{i}."
        for att in ("attention", "crossattention"):
            p, (kv, bb) = b + att, ((x, bias) if att == "attention" else (image, None))
            a = _attend(_lin(x, sd, p + ".self.query"), _lin(kv, sd, p + ".self.key"),
                        _lin(kv, sd, p + ".self.value"), TXT_HEADS, bb)
            x = _ln(_lin(a, sd, p + ".output.dense") + x, sd, p + ".output.LayerNorm", 1e-12)
        h = F.gelu(_lin(x, sd, b + "intermediate.dense"))
        x = _ln(_lin(h, sd, b + "output.dense") + x, sd, b + "output.LayerNorm", 1e-12)
    return x[:, 0]


def _head(sd, f):
    """ImageReward.py MLP in eval: the five Linear layers, no activations."""
    for i in (0, 2, 4, 6, 7):
        f = _lin(f, sd, f"mlp.layers.{i}")
    return f.squeeze(-1)


def _reference_pixels(images, size=IMG, exact=False):
    """ImageReward's _transform through PIL: Resize(size, BICUBIC), CenterCrop, ToTensor, Normalize.
    exact: PIL's float ("F") resize of each channel, without the 8-bit rounding of the RGB path."""
    out = []
    for x in images:
        if exact:
            ims = [Image.fromarray(c.numpy().astype(np.float32), mode="F") for c in x]
        else:
            ims = [Image.fromarray((x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())]
        w, h = ims[0].size
        nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
        ims = [im.resize((nw, nh), Image.BICUBIC).crop((left, top, left + size, top + size)) for im in ims]
        if exact:
            a = torch.stack([torch.from_numpy(np.asarray(im).copy()) for im in ims]).clamp(0, 1)
        else:
            a = torch.from_numpy(np.asarray(ims[0]).copy()).permute(2, 0, 1).float() / 255
        out.append((a - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1))
    return torch.stack(out)


def _reference(sd, images, prompts):
    """(raw - mean) / std from the published tensors, prompts tokenised as ImageReward.score does."""
    tok = _tokenizer()
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    enc = tok(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    with torch.no_grad():
        cls = _bert_cls(sd, enc.input_ids, enc.attention_mask, _vit(sd, _reference_pixels(images)))
        return (_head(sd, cls) - MEAN) / STD


def _images(n=5, hw=(IMG, IMG), seed=0):
    """Smooth random images [n, 3, H, W] in [0, 1], exactly representable in 8 bits."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, 6, 6, generator=g), size=hw, mode="bilinear", align_corners=False)
    return (x * 255).round() / 255


# ------------------------------------------------------------------------------- the tests


def test_every_published_key_is_mapped_and_every_model_key_filled(published, tiny_dir):
    from safetensors.torch import load_file
    from transformers import BlipConfig

    from tempflow.rewards.imagereward import ImageRewardModel

    _, sd = published
    mapped = {map_key(k): k for k in sd if map_key(k) is not None}
    dropped = sorted(k for k in sd if map_key(k) is None)
    assert dropped == ["blip.text_encoder.embeddings.position_ids", "blip.text_proj.bias",
                       "blip.text_proj.weight", "blip.vision_proj.bias", "blip.vision_proj.weight"]
    assert len(mapped) == len(sd) - len(dropped)  # one target per key
    model_keys = set(ImageRewardModel(BlipConfig.from_pretrained(tiny_dir)).state_dict())
    saved = load_file(str(tiny_dir / "model.safetensors"))
    assert set(saved) == set(mapped) == model_keys  # no missing, no unexpected
    assert all(torch.equal(saved[k], sd[mapped[k]]) for k in saved)
    with pytest.raises(KeyError):
        map_key("blip.visual_encoder.blocks.0.attn.qkv.scale")


def test_scores_equal_the_forward_pass_from_the_published_tensors(published, tiny_dir):
    _, sd = published
    x = _images()
    got = score(build_reward("imagereward", model=str(tiny_dir), batch_size=2), x, PROMPTS)
    want = _reference(sd, x, PROMPTS)
    assert got.shape == (5,) and got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got, want)
    assert want.std() > 0.05  # the samples differ: a real check, not constants
    cfg = json.loads((tiny_dir / "config.json").read_text())["imagereward"]
    assert (cfg["score_mean"], cfg["score_std"], cfg["max_length"]) == (MEAN, STD, 35)


def test_head_and_normalisation_are_exactly_the_published_ones(published, tiny_dir):
    from tempflow.rewards.imagereward import ImageRewardScorer

    _, sd = published
    net, _, _ = ImageRewardScorer(str(tiny_dir)).load("cpu")
    f = torch.randn(7, TXT)
    with torch.no_grad():
        raw = net.mlp(f).squeeze(-1)
    want = f
    for i in (0, 2, 4, 6, 7):  # x W^T + b, five times; dropout is off in eval
        want = want @ sd[f"mlp.layers.{i}.weight"].T + sd[f"mlp.layers.{i}.bias"]
    assert torch.allclose(raw, want.squeeze(-1), atol=1e-5, rtol=1e-5)
    # the reward is (raw - mean) / std of the model's own raw score
    tok = ImageRewardScorer(str(tiny_dir)).load("cpu")[1]
    enc = tok(PROMPTS[:1], padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    x = _images(1)
    with torch.no_grad():
        r = net.raw_scores(imagereward_pixels(x, IMG), enc.input_ids, enc.attention_mask)
    got = score(build_reward("imagereward", model=str(tiny_dir)), x, PROMPTS[:1])
    assert enc.input_ids.shape == (1, 35) and got.item() == pytest.approx(((r - MEAN) / STD).item(), abs=1e-6)


@pytest.mark.parametrize(("src", "dst"), [
    ("blip.visual_encoder.blocks.0.norm1.weight", "blip.visual_encoder.blocks.0.norm2.weight"),
    ("blip.text_encoder.encoder.layer.0.attention.self.query.weight",
     "blip.text_encoder.encoder.layer.0.attention.self.key.weight"),
    ("blip.text_encoder.encoder.layer.1.crossattention.self.key.weight",
     "blip.text_encoder.encoder.layer.1.crossattention.self.value.weight"),
    ("blip.text_encoder.encoder.layer.0.attention.output.LayerNorm.bias",
     "blip.text_encoder.encoder.layer.0.crossattention.output.LayerNorm.bias"),
])
def test_a_wrong_key_mapping_would_be_caught(published, tiny_dir, tmp_path, src, dst):
    """The comparison above is sensitive: a mapping that swapped two same-shape tensors fails it."""
    import shutil

    from safetensors.torch import load_file, save_file

    _, sd = published
    bad = tmp_path / "swapped"
    shutil.copytree(tiny_dir, bad)
    w = load_file(str(bad / "model.safetensors"))
    a, b = map_key(src), map_key(dst)
    w[a], w[b] = w[b].clone(), w[a].clone()
    save_file(w, str(bad / "model.safetensors"))
    x = _images(3)
    got = score(build_reward("imagereward", model=str(bad)), x, PROMPTS[:3])
    assert (got - _reference(sd, x, PROMPTS[:3])).abs().max() > 1e-3


@pytest.mark.parametrize("hw", [(IMG, IMG), (40, 48), (48, 40), (64, 64), (20, 30), (100, 61), (32, 35), (35, 32)])
def test_preprocessing_within_one_8bit_step_of_the_published_one(hw):
    """(32, 35) and (35, 32) crop 3 pixels: torchvision rounds the offset 1.5 to 2, not down to 1."""
    x = _images(3, hw)
    mine = imagereward_pixels(x, IMG)
    lsb = 1 / 255 / min(CLIP_STD)
    exact = (mine - _reference_pixels(x, exact=True)).abs()
    assert mine.shape == (3, 3, IMG, IMG) and exact.max() < 0.01 * lsb  # the same filter and crop
    # the published path: PIL rounds to 8 bits after each of its two resize passes
    d = (mine - _reference_pixels(x)).abs()
    assert d.max() <= 1.05 * lsb and d.mean() < 0.5 * lsb


def test_scores_do_not_depend_on_batch_size_and_the_prompt_matters(tiny_dir):
    x = _images(5, (40, 56), seed=3)
    r2 = build_reward("imagereward", model=str(tiny_dir), batch_size=2)
    got = score(r2, x, PROMPTS)
    one_by_one = torch.cat([score(r2, x[i:i + 1], PROMPTS[i:i + 1]) for i in range(5)])
    big = score(build_reward("imagereward", model=str(tiny_dir), batch_size=64), x, PROMPTS)
    assert torch.allclose(got, one_by_one, atol=1e-5) and torch.allclose(got, big, atol=1e-5)
    assert not torch.allclose(got, score(r2, x, PROMPTS[::-1]), atol=1e-3)


def test_model_is_cached_frozen_and_in_eval_mode(tiny_dir):
    from tempflow.rewards.imagereward import ImageRewardScorer

    a, _, _ = ImageRewardScorer(str(tiny_dir)).load("cpu")
    b, _, _ = ImageRewardScorer(str(tiny_dir)).load(torch.device("cpu"))
    assert a is b and not a.training and not any(p.requires_grad for p in a.parameters())
    c, _, _ = ImageRewardScorer(str(tiny_dir), dtype="bfloat16").load("cpu")
    assert c is not a and c.vision_model.dtype == torch.bfloat16 and c.mlp.layers[0].weight.dtype == torch.float32
    r = build_reward("imagereward", model=str(tiny_dir), dtype="bfloat16")
    assert torch.isfinite(score(r, _images(2), PROMPTS[:2])).all()


def test_usable_by_name_and_in_a_weighted_combination(tiny_dir):
    x = _images(3)
    alone = score(build_reward("imagereward", model=str(tiny_dir)), x, PROMPTS[:3])
    w = build_reward("weighted", components=[
        {"name": "imagereward", "weight": 2.0, "kwargs": {"model": str(tiny_dir)}},
        {"name": "brightness", "weight": 1.0}])
    bright = score(build_reward("brightness"), x, PROMPTS[:3])
    assert torch.allclose(score(w, x, PROMPTS[:3]), 2 * alone + bright, atol=1e-5)


def test_bad_inputs_give_one_user_error_each(published, tiny_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    x = _images(1)
    with pytest.raises(UserError, match="needs reward.kwargs.model"):
        build_reward("imagereward")
    with pytest.raises(UserError, match="is not a folder.*imagereward_convert"):
        score(build_reward("imagereward", model=str(tmp_path / "missing")), x, PROMPTS[:1])
    with pytest.raises(UserError, match="holds no config.json"):
        score(build_reward("imagereward", model=str(tmp_path)), x, PROMPTS[:1])
    with pytest.raises(UserError, match="reward.kwargs.dtype"):
        build_reward("imagereward", model=str(tiny_dir), dtype="float8")
    wrong = tmp_path / "wrong-head"
    shutil.copytree(tiny_dir, wrong)
    w = load_file(str(wrong / "model.safetensors"))
    w["mlp.layers.0.weight"] = torch.zeros(1000, TXT)
    save_file(w, str(wrong / "model.safetensors"))
    with pytest.raises(UserError, match=r"head .* does not fit: layers.0.weight is of shape \[1000, 32\]"):
        score(build_reward("imagereward", model=str(wrong)), x, PROMPTS[:1])
    # the converter: a non-empty output folder, a checkpoint with a stray key, a head of the wrong width
    d, sd = published
    with pytest.raises(UserError, match="not an empty folder"):
        _convert(published, tiny_dir)
    extra = dict(sd, **{"blip.itm_head.weight": torch.zeros(2, TXT)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(UserError, match="1 keys that are not ImageReward's .*blip.itm_head.weight"):
        convert_checkpoint(tmp_path / "extra.pt", d / "med_config.json", tmp_path / "o1", str(d / "bert"), VIS_HEADS)
    narrow = dict(sd, **{"mlp.layers.0.weight": torch.zeros(1024, 16)})
    torch.save(narrow, tmp_path / "narrow.pt")
    with pytest.raises(UserError, match="head in .* does not fit"):
        convert_checkpoint(tmp_path / "narrow.pt", d / "med_config.json", tmp_path / "o2", str(d / "bert"), VIS_HEADS)
    med = tmp_path / "med_config.json"
    med.write_text(json.dumps(dict(_med_config(), intermediate_size=3 * TXT)))
    with pytest.raises(UserError, match="does not fit .*med_config.json .*intermediate.dense.weight"):
        convert_checkpoint(d / "ImageReward.pt", med, tmp_path / "o4", str(d / "bert"), VIS_HEADS)
    med.write_text(json.dumps(dict(_med_config(), num_hidden_layers=1)))
    with pytest.raises(UserError, match="does not fit .*unexpected"):
        convert_checkpoint(d / "ImageReward.pt", med, tmp_path / "o5", str(d / "bert"), VIS_HEADS)
    with pytest.raises(UserError, match="--vision-heads"):
        _convert(published, tmp_path / "o3", vision_heads=None)  # 48 wide: not heads of 64
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))


class _Pwn:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


@pytest.mark.parametrize("kind", ["torch", "pickle"])
def test_a_checkpoint_that_would_run_code_is_refused_unrun(published, tmp_path, kind, capsys):
    d, sd = published
    marker, evil = tmp_path / "pwned", tmp_path / "ImageReward.pt"
    if kind == "torch":
        torch.save({**sd, "x": _Pwn(marker)}, evil)
    else:
        evil.write_bytes(pickle.dumps(_Pwn(marker)))
    with pytest.raises(UserError, match="not a plain weights file .*not unpickled"):
        convert_checkpoint(evil, d / "med_config.json", tmp_path / "out", str(d / "bert"), VIS_HEADS)
    assert main(["convert", str(evil), str(d / "med_config.json"), str(tmp_path / "out"),
                 "--tokenizer", str(d / "bert"), "--vision-heads", str(VIS_HEADS)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a plain weights file" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_command_line_converts(published, tmp_path):
    d, sd = published
    out = tmp_path / "cli"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "tempflow.rewards.imagereward", "convert", str(d / "ImageReward.pt"),
                        str(d / "med_config.json"), str(out), "--tokenizer", str(d / "bert"),
                        "--vision-heads", str(VIS_HEADS)], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert sorted(f.name for f in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                     "tokenizer_config.json"]
    x = _images(2)
    assert torch.allclose(score(build_reward("imagereward", model=str(out)), x, PROMPTS[:2]),
                          _reference(sd, x, PROMPTS[:2]), atol=1e-4, rtol=1e-4)
