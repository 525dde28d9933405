"""Any checkpoint of a run as a model: loaded for sampling and evaluation, or exported as a
diffusers-format LoRA with a model card (``tempflow export``), or merged into full weights.

A checkpoint holds the trainable weights and their EMA; what the run exports (and what this
module loads by default) are the EMA weights, as in the run's own ``lora/``. The raw (not
averaged) weights load with ``weights="raw"``, to measure what the EMA adds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tempflow.errors import UserError
from tempflow.training import checkpoint as ckpt_io
from tempflow.training.run_dir import is_run, read_metrics

CARD = "README.md"


def pick_checkpoint(run: Path, iteration: int | None) -> ckpt_io.Checkpoint:
    """Checkpoint ``iteration`` of the run in ``run`` (None: the newest valid one), verified;
    UserError naming the ones there are otherwise."""
    if not is_run(run):
        raise UserError(f"{str(run)!r} is not a tempflow run (no tempflow-run.json); give a run.out folder")
    root = run / ckpt_io.FOLDER
    have = [i for i, _ in ckpt_io.list_checkpoints(root)]
    if iteration is None:
        found = ckpt_io.latest_checkpoint(root)
        if found is None:
            raise UserError(f"run {str(run)!r} has no valid checkpoint in {root}")
        return found
    if iteration not in have:
        listed = ", ".join(map(str, sorted(have))) or "none"
        raise UserError(f"run {str(run)!r} has no checkpoint {iteration} (it has: {listed}; older ones "
                        f"are pruned to run.keep_checkpoints); give one of those to --checkpoint")
    try:
        return ckpt_io.verify(root / ckpt_io.folder_name(iteration))
    except ckpt_io.DamagedCheckpoint as e:
        raise UserError(f"checkpoint {iteration} of {str(run)!r} is damaged ({e}); choose another") from None


def run_config(ckpt: ckpt_io.Checkpoint, run: Path):
    """The config the checkpoint was trained with (meta.json; older checkpoints: config.yaml).
    Only its model section is used here, so no reward factory is built from it."""
    from tempflow.config import config_from_dict
    from tempflow.training.run_dir import saved_config

    recorded = ckpt.meta.get("config")
    return config_from_dict(recorded) if isinstance(recorded, dict) else saved_config(run)


WEIGHTS = {"ema": "ema.", "raw": "params."}  # --weights choice -> key prefix in weights.safetensors


def load_run_model(run: str | Path, iteration: int | None = None, device: str | torch.device = "cpu",
                   weights: str = "ema"):
    """(model with the checkpoint's EMA weights, or its raw trainable weights with
    ``weights="raw"``; its config; the checkpoint)."""
    if weights not in WEIGHTS:
        raise UserError(f"weights {weights!r} is not one of {', '.join(WEIGHTS)}")
    from tempflow.models import load_model

    run = Path(run).expanduser()
    ckpt = pick_checkpoint(run, iteration)
    cfg = run_config(ckpt, run)
    model = load_model(cfg.model.name, device=device, resolution=cfg.model.resolution)
    if cfg.model.lora is not None:
        model.transformer.requires_grad_(False)
        model.add_lora(cfg.model.lora.to_spec())
    else:
        model.transformer.requires_grad_(True)
    names = {id(p): n for n, p in model.transformer.named_parameters()}
    params = {names.get(id(p), f"param{i}"): p for i, p in enumerate(model.trainable_parameters())}
    tensors, _ = ckpt_io.load_checkpoint(ckpt)
    prefix = WEIGHTS[weights]
    chosen = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if {n: tuple(p.shape) for n, p in params.items()} != {n: tuple(t.shape) for n, t in chosen.items()}:
        raise UserError(f"checkpoint {ckpt.path} does not fit the model its config names "
                        f"({cfg.model.name!r}); was the base model replaced?")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(chosen[n].to(p.dtype))
    model.transformer.requires_grad_(False)
    return model, cfg, ckpt


def check_export_folder(out: Path) -> None:
    """``out`` must be new or empty: an export never replaces files."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {str(out)!r} exists and is not an empty folder; exports go into a new "
                        f"or empty folder")


def export_run(run: str | Path, out: str | Path, iteration: int | None = None, merge: bool = False) -> Path:
    """Write checkpoint ``iteration`` of ``run`` into ``out``: the LoRA (diffusers format) or, with
    ``merge`` or a full fine-tune of the shapes model, the full weights; plus a model card."""
    run, out = Path(run).expanduser(), Path(out).expanduser()
    check_export_folder(out)
    model, cfg, ckpt = load_run_model(run, iteration)
    full = merge or cfg.model.lora is None
    if full and not hasattr(model, "save_pretrained"):
        raise UserError(f"--merge writes full weights of the shapes model only; {cfg.model.name!r} is "
                        f"exported as a LoRA (merge it with diffusers' fuse_lora)")
    out.mkdir(parents=True, exist_ok=True)
    if full:
        merged_model(model, cfg).save_pretrained(out)
    else:
        model.save_lora(out)
    write_model_card(out, run, cfg, ckpt, full)
    return out


def merged_model(model, cfg):
    """The shapes model with its LoRA merged into the base weights (W + alpha/r B A), as a
    plain model without adapter layers."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from tempflow.models import load_model

    if cfg.model.lora is None:
        return model
    for layer in model.transformer.modules():
        if isinstance(layer, BaseTunerLayer):
            layer.merge()
    sd = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    plain = load_model(cfg.model.name)
    plain.load_state_dict(sd, source="the merged weights")
    return plain


def _last_eval(run: Path, iteration: int) -> dict | None:
    """The newest evaluation record at or before ``iteration`` in metrics.jsonl (None: none)."""
    try:
        records = read_metrics(run / "metrics.jsonl")
    except (OSError, UserError):
        return None
    evals = [r for r in records if "eval/pass_rate" in r and r["iteration"] <= iteration]
    return evals[-1] if evals else None


def write_model_card(out: Path, run: Path, cfg, ckpt: ckpt_io.Checkpoint, full: bool) -> Path:
    """README.md with Hugging Face hub front matter (base model, library, tags) and what made
    the weights: algorithm, reward, iterations, the held-out table, a sample grid."""
    from tempflow.config import config_to_dict
    from tempflow.schemes import describe_algorithm

    algo = describe_algorithm(config_to_dict(cfg.algorithm))
    algo = "Flow-GRPO with noise-aware weighting" if algo == "weighting only" else algo
    base = cfg.model.name
    hub_base = base if base.count("/") == 1 and not Path(base).exists() else None
    tags = ["tempflow", "text-to-image", "reinforcement-learning", algo.lower().replace(" ", "-")]
    front = ["---", "library_name: " + ("tempflow" if full and cfg.model.name == "shapes" else "diffusers")]
    if hub_base:
        front.append(f"base_model: {hub_base}")
    front += ["tags:", *[f"- {t}" for t in (tags + ([] if full else ["lora"]))], "---", ""]
    lines = [f"# {run.name}, iteration {ckpt.iteration}", "",
             f"{'Full weights' if full else 'A LoRA'} trained with {algo} by tempflow on base model "
             f"`{base}` with the reward `{cfg.reward.name}`, {ckpt.iteration} iterations of "
             f"{cfg.train.prompts_per_iteration} prompts (exponential moving average of the weights).", ""]
    if not full and cfg.model.lora is not None:
        lines += [f"LoRA rank {cfg.model.lora.rank}, alpha {cfg.model.lora.alpha:g}, on "
                  f"{', '.join(cfg.model.lora.target_modules)}.", ""]
    record = _last_eval(run, ckpt.iteration)
    if record is not None:
        cats = {k.split("/")[-1]: v for k, v in record.items() if k.startswith("eval/pass_rate/")}
        lines += [f"Held-out pass rate at iteration {record['iteration']} ({cfg.run.eval_images_per_prompt} "
                  f"images per prompt, `{cfg.prompts.eval}`): **{record['eval/pass_rate']:.3f}**", "",
                  "| category | pass rate |", "|---|---|",
                  *[f"| {c} | {v:.3f} |" for c, v in sorted(cats.items())], ""]
        grid = run / "grids" / f"eval_{record['iteration']:05d}.png"
        if grid.is_file():
            shutil.copyfile(grid, out / "sample.png")
            lines += ["![held-out samples](sample.png)", ""]
    if not full:
        lines += ["```python", "pipe.load_lora_weights(\"<this folder or hub repo>\")  # diffusers",
                  "```", "", "or `tempflow sample --model BASE --lora <this folder> --prompt ...`.", "",
                  "Upload: `huggingface-cli upload <user>/<repo> <this folder>`.", ""]
    (out / CARD).write_text("\n".join(front + lines), encoding="utf-8")
    (out / "tempflow_export.json").write_text(json.dumps(
        {"run": str(run), "iteration": ckpt.iteration, "base_model": base, "algorithm": algo,
         "reward": cfg.reward.name, "config_sha256": ckpt.meta.get("config_sha256")}, indent=1) + "\n")
    return out / CARD
