"""`tempflow sample`: draw an image grid from a model (deterministic ODE sampling by default)."""

from __future__ import annotations

import time


def add_parser(sub) -> None:
    from tempflow.cli import args as A

    p = sub.add_parser("sample", help="draw a grid of images for a prompt",
                       description="Sample images with the probability-flow ODE (or the SDE with "
                       "--noise-level) and save them as a PNG grid with a .json sidecar.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt", help="the prompt, e.g. 'two red circles'")
    g.add_argument("--prompts", metavar="FILE", help="text file, one prompt per line")
    p.add_argument("--num", type=A.int_in(1, 4096), default=8, help="images per prompt (default 8)")
    p.add_argument("--out", default="grid.png", help="output PNG (default grid.png); its layout "
                   "and prompts go to the .json of the same name")
    p.add_argument("--model", type=A.model_spec, default=None, help="'shapes' (default, the shipped base), a "
                   "checkpoint folder, or an SD3 pipeline folder / hub id")
    p.add_argument("--lora", metavar="DIR", default=None,
                   help="load a LoRA (diffusers format: a run's lora/, an export) onto the model, "
                   "or give a run folder to use its checkpoint's weights (see --checkpoint)")
    p.add_argument("--checkpoint", type=A.int_in(0), default=None, metavar="N",
                   help="with --lora RUN: the run's checkpoint after N iterations (default: newest)")
    p.add_argument("--steps", type=A.int_in(1, 1000), default=None, help="sampling steps (model default)")
    p.add_argument("--shift", type=A.number(0, strict=True), default=None,
                   help="schedule time shift, > 0 (model default)")
    p.add_argument("--cfg", type=A.number(0), default=None, help="guidance scale; 1 disables CFG")
    p.add_argument("--noise-level", type=A.number(0), default=0.0,
                   help="SDE noise level a (0 = deterministic ODE, default)")
    p.add_argument("--seed", type=A.seed, default=0, help="seed of the initial noise (default 0)")
    p.add_argument("--scale", type=A.int_in(1, 16), default=4, help="nearest-neighbour upscale in the PNG (1..16)")
    p.set_defaults(run=run)


def check_out(out: str) -> None:
    """--out is a .png in a writable folder, and its .json sidecar, if there is one, was
    written by tempflow (a file of the user's is never replaced)."""
    import json

    from tempflow.cli.args import writable_file
    from tempflow.errors import UserError
    from tempflow.utils.images import SIDECAR_KEYS

    path = writable_file(out, "--out", (".png",))
    side = path.with_suffix(".json")
    if side.exists():
        try:
            ours = SIDECAR_KEYS <= set(json.loads(side.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            ours = False
        if not ours:
            raise UserError(f"--out {out!r} would replace {str(side)!r}, which is not a grid layout "
                            f"tempflow wrote; choose another --out or move that file")


def _load(args):
    """The model to sample: --model with --lora, or a run's checkpoint (--lora RUN)."""
    from pathlib import Path

    from tempflow.errors import UserError
    from tempflow.models import load_model
    from tempflow.training.run_dir import is_run

    if args.lora and is_run(Path(args.lora).expanduser()):
        from tempflow.training.export import load_run_model
        return load_run_model(args.lora, args.checkpoint)[0]
    if args.checkpoint is not None:
        raise UserError("--checkpoint picks a checkpoint of a run: give the run folder as --lora RUN")
    model = load_model(args.model)
    if args.lora:
        model.load_lora(args.lora)
    return model


def run(args) -> int:
    import torch

    from tempflow.cli.main import set_threads
    from tempflow.models import SAMPLING_DEFAULTS, model_family, model_sigmas
    from tempflow.grpo.rollout import rollout_flow_grpo
    from tempflow.sampling.loops import sample_ode
    from tempflow.utils.images import save_grid
    from tempflow.utils.prompts import read_prompt_file

    check_out(args.out)
    set_threads()
    prompts = [args.prompt] if args.prompt is not None else read_prompt_file(args.prompts)
    defaults = SAMPLING_DEFAULTS[model_family(args.model)]
    steps = args.steps or defaults["steps"]
    shift = args.shift if args.shift is not None else defaults["shift"]
    cfg = args.cfg if args.cfg is not None else defaults["guidance_scale"]
    t0 = time.time()
    model = _load(args)
    all_prompts = [p for p in prompts for _ in range(args.num)]
    cond = model.encode_prompts(all_prompts)  # unknown words fail here, before any sampling
    gen = torch.Generator().manual_seed(args.seed)
    noise = model.initial_noise(len(all_prompts), gen)
    sigmas = model_sigmas(model, steps, shift)
    if args.noise_level > 0:
        x = rollout_flow_grpo(model, cond, noise, sigmas, args.noise_level, range(steps), cfg,
                              generator=gen).final
    else:
        x = sample_ode(model, cond, noise, sigmas, cfg)
    images = model.decode_images(x)
    nrow = args.num if len(prompts) > 1 else None
    path = save_grid(images, args.out, nrow=nrow, scale=args.scale, prompts=all_prompts)
    print(f"wrote {path} ({len(all_prompts)} images, {steps} steps, cfg {cfg}, "
          f"{model.counters['nfe']} model evaluations, {time.time() - t0:.1f}s)")
    return 0
