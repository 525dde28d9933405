"""The Python API: ``tempflow.train``, ``tempflow.evaluate`` and ``tempflow.sample``, the three
jobs of the command line as functions (docs/api.md). They take the same settings as
``tempflow train / eval / sample``, run the same code, raise :class:`tempflow.errors.UserError`
where the command prints its one-line error, and return objects instead of printing.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

# transformers warns at import about optional image backends tempflow never uses (as the CLI
# does; a value the user set wins)
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

if TYPE_CHECKING:
    import torch

    from tempflow.config import TrainConfig
    from tempflow.evaluation import EvalResult
    from tempflow.training.run_dir import RunDir

__all__ = ["train", "evaluate", "sample"]


def train(config: "TrainConfig | str | os.PathLike | None" = None, overrides: Sequence[str] = (), *,
          resume: bool = False, allow_imports: Sequence[str] = (), progress: bool = True) -> "RunDir":
    """Train as ``tempflow train`` does; returns the run directory (``.path``, ``.history``: the
    metrics records, ``.stopped``: why it ended early, or None).

    ``config``: a :class:`~tempflow.config.TrainConfig`, a YAML file, None (the defaults: the
    shapes preset), or with ``resume`` a run folder. ``overrides``: ``"key=value"`` strings as
    for ``--set``. ``resume``: continue the run in ``run.out`` (or the run folder given) from
    its newest valid checkpoint. ``allow_imports``: modules a config file may name reward
    factories from (docs/security.md). ``progress``: the progress bar.
    """
    from tempflow.training.loop import train as train_loop
    from tempflow.training.trackers import require_installed

    cfg = _resolve_config(config, list(overrides), resume, allow_imports)
    require_installed(cfg.run.report_to)  # before the model loads
    return train_loop(cfg, progress=progress, resume=resume)


def _resolve_config(config, overrides: list[str], resume: bool, allow_imports) -> "TrainConfig":
    from tempflow.config import TrainConfig, apply_override, config_from_dict, config_to_dict, load_config
    from tempflow.errors import UserError

    if isinstance(config, TrainConfig):
        data = config_to_dict(config)
        for item in overrides:
            apply_override(data, item)
        return config_from_dict(data)
    if config is not None and Path(config).expanduser().is_dir():
        run = Path(config).expanduser()
        if not resume:
            raise UserError(f"{str(config)!r} is a folder: give a YAML config, or resume=True to "
                            f"continue the run in that folder")
        if not (run / "config.yaml").is_file():
            raise UserError(f"resume {str(config)!r}: no run there (no config.yaml); give the "
                            f"run.out folder of an earlier training run")
        cfg = load_config(run / "config.yaml", overrides, allow_imports)
        return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out=str(config)))
    return load_config(config, overrides, allow_imports)


def evaluate(target: "str | os.PathLike | None" = None, *, model: str | None = None,
             lora: "str | os.PathLike | None" = None, prompts: str | None = None,
             images_per_prompt: int = 4, steps: int | None = None, shift: float | None = None,
             guidance_scale: float | None = None, seed: int = 0,
             reward: "str | Callable | None" = None, out: "str | os.PathLike | None" = None,
             allow_imports: Sequence[str] = (), device: str | None = None) -> "EvalResult":
    """GenEval-style evaluation as ``tempflow eval`` does; returns the
    :class:`~tempflow.evaluation.EvalResult` (``.table()``: pass rate and score per category
    and overall, ``.summary()``, ``.format_table()``, ``.images``).

    ``target``: a run folder (its config's model, sampler, prompts and reward, and its LoRA), a
    LoRA folder, a checkpoint folder, or None (``model``, default the shipped base, with
    ``lora``). ``prompts``: 'shapes:<split>' or a prompt file (default: the run's, else
    shapes:heldout). ``reward``: a registered reward name or a reward callable
    ``(images, prompts) -> scores`` (default: the run's reward, else none). Unset sampler
    settings come from the run, else the model's defaults. ``out``: a folder for eval.json and
    one grid per category.
    """
    import torch

    from tempflow.cli.eval_cmd import _settings
    from tempflow.errors import UserError
    from tempflow.evaluation import evaluate_prompts, resolve_target, write_eval
    from tempflow.models import model_family
    from tempflow.rewards import build_reward, reward_from_config
    from tempflow.training.prompts import PromptSet

    _positive(images_per_prompt, "images_per_prompt")
    if out is not None:
        from tempflow.cli.args import writable_folder
        writable_folder(out, "out")
    target_ = resolve_target(None if target is None else str(target), model,
                             None if lora is None else str(lora), tuple(allow_imports))
    named = reward if isinstance(reward, str) else None
    flags = dataclasses.make_dataclass("Flags", ["prompts", "split", "steps", "shift", "cfg",
                                                 "reward", "reward_set"])
    s = _settings(flags(prompts, None, steps, shift, guidance_scale, named, []), target_)
    family = model_family(target_.model)
    shapes_prompts = s["prompts"].startswith("shapes:")
    scored = reward is not None or s["reward"] is not None
    if family != "shapes" and shapes_prompts and not scored:
        raise UserError("the shapes verifier scores shapes-model images only; give a shapes model "
                        "or reward= (and prompts=FILE) for this model")
    if not shapes_prompts and not scored:
        raise UserError(f"prompts {s['prompts']!r} are not shapes-world prompts, so only a reward "
                        f"can score them; give reward=")
    prompt_set = PromptSet.load(s["prompts"])
    if callable(reward) and not isinstance(reward, str):
        reward_fn = reward
    elif reward is None and target_.config is not None:
        reward_fn = reward_from_config(target_.config.reward)
    else:
        reward_fn = build_reward(s["reward"], **s["reward_kwargs"]) if s["reward"] else None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    net, used = target_.load(device)
    res = evaluate_prompts(net, prompt_set, reward_fn, images_per_prompt, s["steps"], s["shift"],
                           s["guidance_scale"], seed, verify=family == "shapes")
    if out is not None:
        meta = {"target": None if target is None else str(target), "checkpoint_used": used,
                "model": target_.model or "shapes",
                "lora": str(target_.lora) if target_.lora else None, "prompts": s["prompts"],
                "reward": s["reward"] if named or reward is None else getattr(reward, "__name__", "callable"),
                "images_per_prompt": images_per_prompt, "steps": s["steps"], "shift": s["shift"],
                "guidance_scale": s["guidance_scale"], "seed": seed}
        write_eval(res, out, meta, images_per_prompt)
    return res


def sample(prompts: str | Sequence[str], *, num: int = 8, model: str | None = None,
           lora: "str | os.PathLike | None" = None, steps: int | None = None,
           shift: float | None = None, guidance_scale: float | None = None,
           noise_level: float = 0.0, seed: int = 0,
           out: "str | os.PathLike | None" = None) -> "torch.Tensor":
    """Images as ``tempflow sample`` draws them: ``num`` per prompt, prompt by prompt; returns
    float32 [len(prompts) * num, 3, H, W] in [0, 1].

    ``prompts``: one prompt or a list. ``model``: 'shapes' (default, the shipped base), a
    checkpoint folder, or an SD3 folder / hub id; ``lora``: a LoRA folder (a run's ``lora/``).
    Unset sampler settings are the model's defaults; ``noise_level`` > 0 samples with the SDE
    instead of the deterministic ODE. ``out``: also write the PNG grid (and its .json sidecar,
    which ``tempflow verify`` reads).
    """
    import torch

    from tempflow.cli.sample_cmd import check_out
    from tempflow.errors import UserError
    from tempflow.grpo.rollout import rollout_flow_grpo
    from tempflow.models import SAMPLING_DEFAULTS, load_model, model_family, model_sigmas
    from tempflow.sampling.loops import sample_ode
    from tempflow.utils.images import save_grid

    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise UserError("prompts must be a prompt or a non-empty list of prompts")
    _positive(num, "num")
    if noise_level < 0:
        raise UserError(f"noise_level must be >= 0 (got {noise_level}); 0 samples with the ODE")
    if out is not None:
        check_out(str(out))
    defaults = SAMPLING_DEFAULTS[model_family(model)]
    steps = steps or defaults["steps"]
    shift = shift if shift is not None else defaults["shift"]
    cfg = guidance_scale if guidance_scale is not None else defaults["guidance_scale"]
    net = load_model(model)
    if lora is not None:
        net.load_lora(str(lora))
    flat = [p for p in prompts for _ in range(num)]
    with torch.no_grad():
        cond = net.encode_prompts(flat)
        gen = torch.Generator().manual_seed(seed)
        noise = net.initial_noise(len(flat), gen)
        sigmas = model_sigmas(net, steps, shift)
        if noise_level > 0:
            x = rollout_flow_grpo(net, cond, noise, sigmas, noise_level, range(steps), cfg,
                                  generator=gen).final
        else:
            x = sample_ode(net, cond, noise, sigmas, cfg)
        images = net.decode_images(x)
    if out is not None:
        save_grid(images, out, nrow=num if len(prompts) > 1 else None, prompts=flat)
    return images


def _positive(value, name: str) -> None:
    from tempflow.errors import UserError

    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name} must be a positive integer (got {value!r})")
