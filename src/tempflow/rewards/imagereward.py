"""ImageReward (Xu et al. 2023, github.com/THUDM/ImageReward) on transformers' BLIP classes.

The model: a BLIP ViT (ViT-L/16 at 224 px in the release) encodes the image; BLIP's BERT text
encoder reads the prompt with cross-attention to every image token; its [CLS] feature goes
through a stack of linear layers 768 -> 1024 -> 128 -> 64 -> 16 -> 1 (dropout between them and,
as released, no activations), and the score is (raw - mean) / std with the published mean
0.16717362830052426 and std 1.0333394966054072 (centred and scaled: mostly within about -2..2).
Preprocessing as in the release: shortest edge to 224 (bicubic), centre crop 224, CLIP's
mean / std; the prompt: BERT uncased WordPiece, padded and truncated to 35 tokens, [CLS] first.

Weights load from a folder in the converted format (``config.json`` with an ``imagereward``
section, ``model.safetensors``, tokenizer files) or a hub repo holding one; the published
``ImageReward.pt`` converts with ``python -m tempflow.rewards.imagereward_convert``
(``imagereward_convert.py``). Key names: ``vision_model.*`` (``BlipVisionModel``),
``text_encoder.*`` (``BlipTextModel`` without pooler), ``mlp.layers.*`` (the head).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tempflow.errors import UserError
from tempflow.rewards.clip_backbone import cached, in_batches, resized_hw, resolve_dtype
from tempflow.rewards.registry import Reward, register

if __name__ == "__main__":  # `python -m tempflow.rewards.imagereward convert ...`: before @register runs twice
    from tempflow.rewards.imagereward_convert import main
    sys.exit(main(sys.argv[1:]))

FORMAT = "tempflow-imagereward-1"
SCORE_MEAN = 0.16717362830052426  # ImageReward/ImageReward.py: ImageReward.mean
SCORE_STD = 1.0333394966054072    # ImageReward.std
PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)  # ImageReward/ImageReward.py: _transform (CLIP's)
PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_LENGTH = 35                   # ImageReward.score: padding="max_length", truncation, max_length=35
HEAD_DIMS = (1024, 128, 64, 16, 1)
WEIGHTS, CONFIG = "model.safetensors", "config.json"
CONVERT_HINT = ("convert the published ImageReward.pt with `python -m tempflow.rewards.imagereward_convert "
                "ImageReward.pt med_config.json OUT_DIR` and give OUT_DIR in reward.kwargs.model")


class ImageRewardHead(nn.Module):
    """[CLS] feature [B, D] -> raw score [B, 1]; layer indices match the released ``mlp.layers.*``
    (Linear at 0, 2, 4, 6, 7; Dropout 0.2, 0.2, 0.1 between; the release has its ReLUs commented out)."""

    def __init__(self, dim: int = 768):
        super().__init__()
        d = (dim,) + HEAD_DIMS
        self.layers = nn.Sequential(
            nn.Linear(d[0], d[1]), nn.Dropout(0.2), nn.Linear(d[1], d[2]), nn.Dropout(0.2),
            nn.Linear(d[2], d[3]), nn.Dropout(0.1), nn.Linear(d[3], d[4]), nn.Linear(d[4], d[5]))

    def forward(self, features: Tensor) -> Tensor:
        return self.layers(features)


class ImageRewardModel(nn.Module):
    """BlipVisionModel + BlipTextModel (cross-attention, no pooler) + the head."""

    def __init__(self, config):
        super().__init__()
        from transformers import BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        self.config = config
        self.vision_model = BlipVisionModel(config.vision_config)
        self.text_encoder = BlipTextModel(config.text_config, add_pooling_layer=False)
        self.mlp = ImageRewardHead(config.text_config.hidden_size)

    def raw_scores(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Head output before normalisation, float32 [B] (ImageReward.score_gard without the last line)."""
        image = self.vision_model(pixel_values=pixel_values).last_hidden_state
        image_mask = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
        text = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask,
                                 encoder_hidden_states=image, encoder_attention_mask=image_mask)
        cls = text.last_hidden_state[:, 0, :].float()
        return self.mlp(cls.to(self.mlp.layers[0].weight.dtype)).squeeze(-1).float()


def imagereward_pixels(images: Tensor, size: int, mean=PIXEL_MEAN, std=PIXEL_STD) -> Tensor:
    """images [B, 3, H, W] in [0, 1] -> [B, 3, size, size] as torchvision's Resize(size, BICUBIC),
    CenterCrop(size), ToTensor, Normalize(mean, std) do to a PIL image (on the images' device)."""
    x = images.float()
    h, w = resized_hw(x.shape[-2], x.shape[-1], size)
    if (h, w) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    x = x.clamp(0, 1)  # bicubic overshoot; PIL's 8-bit result clips too
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))  # torchvision's center_crop
    x = x[..., top:top + size, left:left + size]
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def model_folder(model: str) -> Path:
    """A local folder, or a hub repo id downloaded (config, safetensors and tokenizer files only)."""
    p = Path(model).expanduser()
    if p.is_dir():
        return p
    if p.exists() or model.count("/") != 1 or model.startswith((".", "/", "~")):
        raise UserError(f"the ImageReward model {model!r} is not a folder: {CONVERT_HINT}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, allow_patterns=[CONFIG, WEIGHTS, "tokenizer*", "vocab.txt",
                                                            "special_tokens_map.json"]))
    except Exception as e:  # offline, no such repo, no access: one line with the fix
        raise UserError(f"cannot fetch the ImageReward model {model!r} ({type(e).__name__}): give a local "
                        f"folder in reward.kwargs.model; {CONVERT_HINT}") from None


def check_head(state: dict[str, Tensor], dim: int, where: str) -> None:
    """UserError naming the first head tensor whose shape is not the released head's for ``dim``."""
    want = ImageRewardHead(dim).state_dict()
    for k, t in want.items():
        got = state.get(k)
        if got is None or tuple(got.shape) != tuple(t.shape):
            shape = "missing" if got is None else f"of shape {list(got.shape)}"
            raise UserError(f"the ImageReward head in {where} does not fit: {k} is {shape}, the released "
                            f"head on a {dim}-d text feature needs {list(t.shape)}; {CONVERT_HINT}")


def load_imagereward(model: str, device: torch.device, dtype: torch.dtype):
    """(ImageRewardModel frozen in eval mode on ``device``: towers in ``dtype``, head in float32,
    tokenizer, settings dict) from a converted folder or hub id."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BlipConfig

    folder = model_folder(model)
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        raise UserError(f"{folder} holds no {CONFIG} and {WEIGHTS}: {CONVERT_HINT}")
    try:
        config = BlipConfig.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"cannot read {folder / CONFIG} as a BLIP config ({str(e).splitlines()[0]}): "
                        f"{CONVERT_HINT}") from None
    settings = getattr(config, "imagereward", None)
    if not isinstance(settings, dict) or settings.get("format") != FORMAT:
        raise UserError(f"{folder / CONFIG} is not an ImageReward config (no imagereward section of "
                        f"format {FORMAT!r}): {CONVERT_HINT}")
    try:
        state = load_file(str(folder / WEIGHTS))
    except Exception as e:  # safetensors raises its own types for a damaged file
        raise UserError(f"{folder / WEIGHTS} cannot be read as safetensors ({type(e).__name__}): "
                        f"{CONVERT_HINT}") from None
    head = {k[len("mlp."):]: v for k, v in state.items() if k.startswith("mlp.")}
    check_head(head, config.text_config.hidden_size, str(folder / WEIGHTS))
    with torch.device("meta"):  # no random init of ~450 M parameters (20 s on one core): the file fills them
        net = ImageRewardModel(config)
    try:
        net.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise UserError(f"{folder / WEIGHTS} does not fit its {CONFIG} ({' '.join(lines[1:3])[:300]}): "
                        f"{CONVERT_HINT}") from None
    emb = net.text_encoder.embeddings  # its one buffer is not saved: 0, 1, 2, ... as BlipTextEmbeddings makes it
    emb.position_ids = torch.arange(emb.position_embeddings.num_embeddings).expand((1, -1))
    if any(t.is_meta for t in [*net.parameters(), *net.buffers()]):
        raise RuntimeError("ImageRewardModel has a tensor that is neither in the file nor rebuilt")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the tokenizer in {folder} ({str(e).splitlines()[0]}): {CONVERT_HINT}") from None
    net.requires_grad_(False).eval()
    net.vision_model.to(device=device, dtype=dtype)
    net.text_encoder.to(device=device, dtype=dtype)
    net.mlp.to(device=device, dtype=torch.float32)
    return net, tokenizer, dict(settings)


class ImageRewardScorer:
    """Loads once per (model, device, dtype) and scores batches under no_grad."""

    def __init__(self, model: str, dtype: str = "float32", device: str | None = None):
        self.model_id, self.dtype, self.device = model, resolve_dtype(dtype), device

    def load(self, device: torch.device | str):
        dev = torch.device(self.device or device)
        return cached(("imagereward", self.model_id, str(dev), self.dtype),
                      lambda: load_imagereward(self.model_id, dev, self.dtype))

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str]) -> Tensor:
        net, tokenizer, s = self.load(images.device)
        dev = net.mlp.layers[0].weight.device
        pixels = imagereward_pixels(images.to(dev), int(net.config.vision_config.image_size),
                                    s.get("image_mean", PIXEL_MEAN), s.get("image_std", PIXEL_STD))
        tok = tokenizer(list(prompts), padding="max_length", truncation=True,
                        max_length=int(s.get("max_length", MAX_LENGTH)), return_tensors="pt").to(dev)
        raw = net.raw_scores(pixels.to(self.dtype), tok.input_ids, tok.attention_mask)
        return (raw - float(s.get("score_mean", SCORE_MEAN))) / float(s.get("score_std", SCORE_STD))


@register("imagereward")
def imagereward(model: str | None = None, dtype: str = "float32", device: str | None = None,
                batch_size: int = 32) -> Reward:
    """ImageReward: human-preference score of (prompt, image), about N(0, 1); higher is better."""
    if not model:
        raise UserError(f"the imagereward reward needs reward.kwargs.model: {CONVERT_HINT}")
    scorer = ImageRewardScorer(str(model), dtype, device)

    def reward(images: Tensor, prompts: Sequence[str], metadata=None) -> Tensor:
        return in_batches(scorer, images, prompts, batch_size)

    return reward
