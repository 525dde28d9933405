"""Learned rewards (CLIP score, PickScore, HPSv2, aesthetic) on tiny random CLIP models built
from config dicts and saved with save_pretrained; nothing is downloaded."""

import string

import pytest
import torch
import torch.nn.functional as F

from tempflow.errors import UserError
from tempflow.rewards import build_reward, score
from tempflow.rewards.aesthetic import AestheticMLP
from tempflow.rewards.clip_backbone import PixelSpec, clip_pixels, resized_hw

PROMPTS = ["a red circle", "two blue squares", "a green triangle", "three circles", "one square"]


def _tokenizer():
    from transformers import CLIPTokenizer

    chars = list(string.ascii_lowercase + string.digits)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({c: i + 2 for i, c in enumerate(chars)})
    vocab.update({c + "</w>": i + 2 + len(chars) for i, c in enumerate(chars)})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random CLIPModel (projection 8) + CLIPProcessor (24 px) saved to a folder."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    tok = _tokenizer()
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=0,
                         eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=24, patch_size=8),
        projection_dim=8, logit_scale_init_value=2.0)
    path = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(cfg).save_pretrained(path)
    ip = CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(path)
    return path


def _images(n=5, hw=(40, 48), seed=0):
    """Smooth random images [n, 3, H, W] in [0, 1], exactly representable in 8 bits."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, 6, 6, generator=g), size=hw, mode="bilinear", align_corners=False)
    return (x * 255).round() / 255


def _reference(path, images, prompts):
    """cos(image, text) and exp(logit_scale) straight from CLIPModel + CLIPProcessor."""
    from transformers import CLIPModel, CLIPProcessor

    model, proc = CLIPModel.from_pretrained(path).eval(), CLIPProcessor.from_pretrained(path)
    u8 = [(x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy() for x in images]
    inputs = proc(text=prompts, images=u8, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
        scale = float(model.logit_scale.exp())
    img = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
    txt = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
    return (img * txt).sum(-1), scale, img


def test_resize_rule_matches_transformers():
    from transformers.image_transforms import get_resize_output_image_size
    import numpy as np

    for h, w in [(40, 48), (48, 40), (100, 60), (24, 24), (33, 500)]:
        want = get_resize_output_image_size(np.zeros((h, w, 3)), 24, default_to_square=False,
                                            input_data_format="channels_last")
        assert resized_hw(h, w, 24) == tuple(want)


@pytest.mark.parametrize("hw", [(40, 48), (64, 64), (100, 60), (24, 24)])
def test_preprocessing_matches_the_processor(tiny_clip, hw):
    from transformers import CLIPProcessor

    proc = CLIPProcessor.from_pretrained(tiny_clip).image_processor
    x = _images(3, hw)
    u8 = [(a * 255).round().to(torch.uint8).permute(1, 2, 0).numpy() for a in x]
    ref = proc(images=u8, return_tensors="pt")["pixel_values"]
    mine = clip_pixels(x, PixelSpec.of(proc))
    assert mine.shape == ref.shape
    lsb = 1 / 255 / min(proc.image_std)  # the processor rounds the resized image to 8 bits
    d = (mine - ref).abs()
    assert d.max() <= lsb + 1e-5 and d.mean() < 0.5 * lsb


def test_clip_score_equals_clip_model_and_is_batch_invariant(tiny_clip):
    reward = build_reward("clip_score", model=str(tiny_clip), batch_size=2)
    x = _images()
    got = score(reward, x, PROMPTS)
    assert got.shape == (5,) and got.dtype == torch.float32
    ref, _, _ = _reference(tiny_clip, x, PROMPTS)
    assert torch.allclose(got, ref, atol=2e-3)
    one_by_one = torch.cat([score(reward, x[i:i + 1], PROMPTS[i:i + 1]) for i in range(5)])
    assert torch.allclose(got, one_by_one, atol=1e-5)
    big_batch = score(build_reward("clip_score", model=str(tiny_clip), batch_size=64), x, PROMPTS)
    assert torch.allclose(got, big_batch, atol=1e-5)
    assert not torch.allclose(got, score(reward, x, PROMPTS[::-1]))  # the prompt matters


def test_pickscore_and_hpsv2(tiny_clip):
    x = _images()
    ref, scale, _ = _reference(tiny_clip, x, PROMPTS)
    pick = score(build_reward("pickscore", model=str(tiny_clip), processor=str(tiny_clip)), x, PROMPTS)
    assert torch.allclose(pick, scale * ref, atol=2e-3 * scale)
    hps = score(build_reward("hpsv2", model=str(tiny_clip), processor=str(tiny_clip)), x, PROMPTS)
    assert torch.allclose(hps, ref, atol=2e-3)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_aesthetic_is_clip_embedding_into_the_laion_mlp(tiny_clip, tmp_path, fmt):
    torch.manual_seed(1)
    mlp = AestheticMLP(8).eval()
    head = tmp_path / f"head.{fmt}"
    if fmt == "pth":
        torch.save(mlp.state_dict(), head)
    else:
        from safetensors.torch import save_file
        save_file(mlp.state_dict(), str(head))
    assert sorted(mlp.state_dict())[0] == "layers.0.bias"  # the released file's key names
    x = _images()
    got = score(build_reward("aesthetic", model=str(tiny_clip), head=str(head)), x, PROMPTS)
    _, _, img = _reference(tiny_clip, x, PROMPTS)
    with torch.no_grad():
        want = mlp(img).squeeze(-1)
    assert got.shape == (5,) and torch.allclose(got, want, atol=2e-3)


def test_model_is_cached_frozen_and_in_eval_mode(tiny_clip):
    from tempflow.rewards.clip_backbone import ClipBackbone

    a, b = ClipBackbone(str(tiny_clip)), ClipBackbone(str(tiny_clip))
    m1, _ = a.load("cpu")
    m2, _ = b.load("cpu")
    assert m1 is m2 and not m1.training
    assert not any(p.requires_grad for p in m1.parameters())
    m16, _ = ClipBackbone(str(tiny_clip), dtype="bfloat16").load("cpu")
    assert m16 is not m1 and next(m16.parameters()).dtype == torch.bfloat16
    r = build_reward("clip_score", model=str(tiny_clip), dtype="bfloat16")
    assert torch.isfinite(score(r, _images(2), PROMPTS[:2])).all()


def test_bad_model_paths_are_user_errors(tmp_path, tiny_clip):
    x = _images(1)
    with pytest.raises(UserError, match="reward.kwargs.model"):
        score(build_reward("clip_score", model=str(tmp_path / "missing")), x, PROMPTS[:1])
    with pytest.raises(UserError, match="reward.kwargs.dtype"):
        build_reward("clip_score", model=str(tiny_clip), dtype="float8")
    with pytest.raises(UserError, match="reward.kwargs.head"):
        score(build_reward("aesthetic", model=str(tiny_clip), head="nothing-here"), x, PROMPTS[:1])
    wrong = tmp_path / "wrong.pth"
    torch.save(AestheticMLP(12).state_dict(), wrong)
    with pytest.raises(UserError, match="does not fit a 8-d"):
        score(build_reward("aesthetic", model=str(tiny_clip), head=str(wrong)), x, PROMPTS[:1])
