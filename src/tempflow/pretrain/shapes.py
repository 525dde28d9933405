"""Flow-matching pretraining of the shapes model on rendered scenes (`tempflow pretrain`).

Each step renders a fresh batch of training prompts (category uniform, then prompt uniform
within it), draws sigma uniformly (default; at 32 px
the layout is decided at high noise, which SD3's logit-normal rarely visits), forms x_sigma = (1 - sigma) x0 + sigma eps and regresses v = eps - x0.
Captions are dropped with probability ``caption_dropout`` so the model also learns the
unconditional velocity that classifier-free guidance needs. The EMA weights are what gets
saved as the model. A full training state is written every ``save_every`` steps (atomic
rename), so an interrupted run continues with ``--resume``.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from tempflow.errors import UserError
from tempflow.models.shapes_model import ShapesModel, ShapesModelConfig
from tempflow.pretrain.config import PretrainConfig

STATE_NAME = "pretrain_state.pt"
__all__ = ["PretrainConfig", "STATE_NAME", "check_out", "pretrain"]


def _batch(prompts: list[str], rng: np.random.Generator, size: int, dropout: float):
    """Draw a batch: (captions with dropout applied, images [B, 3, R, R] in [0, 1])."""
    from tempflow.shapes import render_batch
    images = render_batch(prompts, rng, size=size)
    captions = ["" if rng.random() < dropout else p for p in prompts]
    return captions, images


def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_out(out: Path, resume: bool) -> None:
    """--out: with ``resume`` a folder holding a pretraining state; else a new or empty folder,
    so no file of the user's is replaced. UserError otherwise (nothing is created)."""
    from tempflow.cli.args import writable_folder

    writable_folder(out, "--out")
    state_file = out / STATE_NAME
    if resume and not state_file.is_file():
        raise UserError(f"--resume: no {STATE_NAME} in {out} (start without --resume)")
    if not resume and state_file.exists():
        raise UserError(f"{out} already holds a pretraining run (add --resume to continue it, "
                        f"or choose another --out)")
    if not resume and out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {str(out)!r} is not empty; pretraining writes into a new or empty "
                        f"folder: choose another --out")


def _read_state(path: Path, cfg: PretrainConfig) -> dict:
    """The training state of an interrupted run, loaded weights-only (no code can run from
    the file); UserError if it is unreadable or was made with other options."""
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
        saved = dict(st["config"])
    except Exception as e:  # a damaged or foreign file: pickle, zip and key errors alike
        raise UserError(f"{path} cannot be read as a pretraining state ({type(e).__name__}); "
                        f"start a new --out") from None
    free = ("steps", "out", "save_every")  # what may change on resume: none alters the result
    if ({k: v for k, v in saved.items() if k not in free}
            != {k: v for k, v in _plain(asdict(cfg)).items() if k not in free}):
        raise UserError(f"{path} was made with other options; resume with the same "
                        f"options (only --steps, --out and --save-every may change) or start a new --out")
    return st


def _plain(value):
    """Tuples as lists, recursively (how a state's config reads back)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def pretrain(cfg: PretrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train a shapes model from scratch; returns the output folder (a loadable checkpoint)."""
    from tempflow.shapes import load_prompts, vocabulary

    out = Path(cfg.out)
    state_file = out / STATE_NAME
    check_out(out, resume)
    st = _read_state(state_file, cfg) if resume else None
    out.mkdir(parents=True, exist_ok=True)

    mcfg = cfg.model or ShapesModelConfig(vocab=vocabulary())
    torch.manual_seed(cfg.seed)
    model = ShapesModel(mcfg)
    modules = torch.nn.ModuleDict({"transformer": model.transformer, "text_encoder": model.text_encoder})
    ema = copy.deepcopy(modules).requires_grad_(False)
    opt = torch.optim.AdamW(modules.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup))
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    step, losses = 0, []
    if st is not None:
        modules.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        gen.set_state(st["torch_rng"])
        rng.bit_generator.state = st["numpy_rng"]
        step, losses = st["step"], st["losses"]

    by_category: dict[str, list[str]] = {}
    for prompt, category in load_prompts("train"):
        by_category.setdefault(category, []).append(prompt)
    categories = sorted(by_category)
    modules.train()
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc="pretrain", unit="step")
    t0 = time.time()
    while step < cfg.steps:
        # category first (uniform), then a prompt of it: every category gets 1/6 of the batch
        cats = rng.integers(0, len(categories), cfg.batch_size)
        prompts = [by_category[categories[c]][rng.integers(len(by_category[categories[c]]))] for c in cats]
        captions, images = _batch(prompts, rng, mcfg.resolution, cfg.caption_dropout)
        x0 = model.encode_images(images)
        eps = torch.randn(x0.shape, generator=gen)
        if cfg.sigma_sampling == "uniform":
            sigma = torch.rand(cfg.batch_size, generator=gen)
        else:
            sigma = torch.sigmoid(cfg.sigma_mean + cfg.sigma_std * torch.randn(cfg.batch_size, generator=gen))
        s = sigma.view(-1, 1, 1, 1)
        x = (1 - s) * x0 + s * eps
        cond = model.encode_prompts(captions, grad=True)
        loss = torch.nn.functional.mse_loss(model.velocity(x, sigma, cond), eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), modules.parameters()):
                pe.lerp_(p, 1 - decay)
        step += 1
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if step % cfg.save_every == 0 or step == cfg.steps:
            _save_state(state_file, {
                "config": _plain(asdict(cfg)), "step": step, "losses": losses,
                "model": modules.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                "sched": sched.state_dict(), "torch_rng": gen.get_state(),
                "numpy_rng": rng.bit_generator.state})
            final = ShapesModel(mcfg)
            final.transformer.load_state_dict(ema["transformer"].state_dict())
            final.text_encoder.load_state_dict(ema["text_encoder"].state_dict())
            final.save_pretrained(out)
    bar.close()
    (out / "pretrain_log.txt").write_text(
        f"steps {step}\nbatch_size {cfg.batch_size}\nseed {cfg.seed}\n"
        f"final_loss_mean_last_100 {np.mean(losses[-100:]):.5f}\n"
        f"seconds_this_session {time.time() - t0:.0f}\n")
    return out
