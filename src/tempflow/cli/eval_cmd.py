"""`tempflow eval [TARGET]`: GenEval-style table of a run, LoRA, checkpoint or the base model."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    from tempflow.cli import args as A

    p = sub.add_parser("eval", help="GenEval-style evaluation of a run, LoRA, checkpoint or the base",
                       description="Deterministic ODE sampling on a prompt list (the held-out "
                       "shapes prompts by default), several images per prompt: the shapes "
                       "verifier's pass rate per category and overall (or, on a GenEval "
                       "metadata .jsonl, the pass rate of a reward that verifies, e.g. "
                       "geneval_remote), and the mean of the configured reward. TARGET is a "
                       "run folder (its config's model, sampler, prompts and reward, and its "
                       "LoRA), a LoRA folder, a checkpoint folder, or nothing (the shipped base "
                       "model).")
    p.add_argument("target", nargs="?", default=None, metavar="TARGET",
                   help="run folder, LoRA folder or checkpoint folder (default: the base model)")
    p.add_argument("--model", type=A.model_spec, default=None, help="base model: 'shapes' (the shipped base) or a checkpoint folder")
    p.add_argument("--lora", metavar="DIR", default=None, help="load a LoRA written by `tempflow train`")
    p.add_argument("--checkpoint", type=A.int_in(0), default=None, metavar="N",
                   help="with a run folder as TARGET: its checkpoint after N iterations (EMA weights) "
                   "instead of its lora/")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema",
                   help="with --checkpoint: the EMA weights (default, what the run exports) or the raw "
                   "trained weights")
    p.add_argument("--prompts", default=None, metavar="SPEC",
                   help="'shapes:<split>', 'ocr:<split>', a GenEval metadata .jsonl or a prompt file "
                   "(default: the run's prompts.eval, else shapes:heldout)")
    p.add_argument("--split", default=None, help="shorthand for --prompts shapes:SPLIT (heldout or train)")
    p.add_argument("--reward", default=None, metavar="NAME",
                   help="also score with this reward (default: the run's reward, else none)")
    p.add_argument("--reward-set", dest="reward_set", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword argument of --reward's factory, value read as YAML (repeatable), "
                   "e.g. url=http://127.0.0.1:18085")
    p.add_argument("--num", type=A.positive, default=4, help="images per prompt (default 4)")
    p.add_argument("--steps", type=A.positive, default=None,
                   help="ODE steps (default: the run's sampling.eval_steps, else 20)")
    p.add_argument("--shift", type=A.number(0, strict=True), default=None,
                   help="time shift of the sigma schedule, > 0 (default: the run's, else the model's)")
    p.add_argument("--cfg", type=A.number(0), default=None, help="CFG scale (<= 1 disables)")
    p.add_argument("--seed", type=A.seed, default=0, help="seed of the initial noise (same seed: same noise for any model)")
    p.add_argument("--device", type=A.device, default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--out", default=None, help="folder for eval.json and one grid per category")
    from tempflow.cli.train_cmd import add_allow_import
    add_allow_import(p)
    p.set_defaults(run=run)


def _settings(args, target) -> dict:
    """Sampler, prompts and reward: flags first, then the run's config, then the model's defaults."""
    from tempflow.models import SAMPLING_DEFAULTS, model_family

    d = SAMPLING_DEFAULTS[model_family(target.model)]
    cfg = target.config
    pick = lambda flag, from_cfg, default: flag if flag is not None else (  # noqa: E731
        from_cfg if cfg is not None else default)
    prompts = args.prompts or (f"shapes:{args.split}" if args.split else None)
    return {
        "steps": pick(args.steps, cfg and cfg.sampling.eval_steps, d["steps"]),
        "shift": pick(args.shift, cfg and cfg.sampling.shift, d["shift"]),
        "guidance_scale": pick(args.cfg, cfg and cfg.sampling.guidance_scale, d["guidance_scale"]),
        "prompts": pick(prompts, cfg and cfg.prompts.eval, "shapes:heldout"),
        "reward": pick(args.reward, cfg and cfg.reward.name, None),
        "reward_kwargs": dict(cfg.reward.kwargs) if cfg is not None and args.reward is None else
        _reward_kwargs(args.reward_set),
    }


def _reward_kwargs(items: list[str]) -> dict:
    """--reward-set KEY=VALUE items -> keyword arguments (values read as YAML)."""
    from tempflow.cli.serve_reward_cmd import parse_kwargs

    return parse_kwargs(items)


def _check(args) -> None:
    """Output paths before any sampling: --out is a folder that exists or can be created;
    --reward-set goes with --reward."""
    from tempflow.cli.args import writable_folder
    from tempflow.errors import UserError

    if args.weights != "ema" and args.checkpoint is None:
        raise UserError("--weights picks a checkpoint's EMA or raw weights; give --checkpoint N too "
                        "(a run's lora/ holds the EMA weights only)")
    if args.reward_set and args.reward is None:
        raise UserError("--reward-set gives arguments to --reward's factory; give --reward NAME too")
    if args.out is not None:
        writable_folder(args.out, "--out")


def run(args) -> int:
    import time

    import torch

    from tempflow.cli.main import set_threads
    from tempflow.errors import UserError
    from tempflow.evaluation import evaluate_prompts, resolve_target, write_eval
    from tempflow.models import model_family
    from tempflow.rewards import build_reward, reward_from_config
    from tempflow.training.prompts import PromptSet

    _check(args)
    target = resolve_target(args.target, args.model, args.lora, args.allow_imports)
    if args.checkpoint is not None and target.config is None:
        raise UserError("--checkpoint N picks a checkpoint of a run: give the run folder as TARGET")
    s = _settings(args, target)
    family = model_family(target.model)
    prompt_set = PromptSet.load(s["prompts"])
    shapes_prompts = s["prompts"].startswith("shapes:")
    if family != "shapes" and shapes_prompts and s["reward"] is None:
        raise UserError("the shapes verifier scores shapes-model images only; give a shapes model "
                        "or --reward NAME (and --prompts FILE) for this model")
    if not shapes_prompts and s["reward"] is None:
        raise UserError(f"prompts {s['prompts']!r} are not shapes-world prompts, so only a reward can "
                        f"score them; give --reward NAME")
    set_threads()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.time()
    if args.reward is None and target.config is not None:
        reward = reward_from_config(target.config.reward)  # the run's reward, weighted ones too
    else:
        reward = build_reward(s["reward"], **s["reward_kwargs"]) if s["reward"] else None
    model, used = target.load(device, args.checkpoint, args.weights)
    res = evaluate_prompts(model, prompt_set, reward, args.num, s["steps"], s["shift"],
                           s["guidance_scale"], args.seed, verify=family == "shapes")
    at = "" if used is None else f", checkpoint {used} ({args.weights} weights)"
    print(f"{target.describe()}{at} on {s['prompts']}")
    print(res.format_table(s["reward"]))
    print(f"({len(res.prompts)} images, {args.num} per prompt, {s['steps']} steps, shift {s['shift']}, "
          f"cfg {s['guidance_scale']}, seed {args.seed}, {time.time() - t0:.1f}s)")
    if args.out:
        meta = {"target": args.target, "checkpoint": args.checkpoint, "checkpoint_used": used,
                "weights": args.weights if used is not None else None, "model": target.model or "shapes",
                "lora": str(target.lora) if target.lora else None, "prompts": s["prompts"],
                "reward": s["reward"], "images_per_prompt": args.num, "steps": s["steps"],
                "shift": s["shift"], "guidance_scale": s["guidance_scale"], "seed": args.seed}
        path = write_eval(res, args.out, meta, args.num)
        print(f"wrote {path} and one grid per category in {Path(args.out)}")
    return 0
