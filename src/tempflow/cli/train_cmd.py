"""`tempflow train`: TempFlow-GRPO / Flow-GRPO training from a config, resumable."""

from __future__ import annotations

import signal
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train with TempFlow-GRPO or Flow-GRPO",
                       description="Reward-align a flow model. With no arguments: TempFlow-GRPO on "
                       "the shapes world from the shipped base model with the verifier reward "
                       "(the settings of configs/shapes-tempflow.yaml). Ctrl-C (SIGINT) or SIGTERM "
                       "finishes the iteration, saves a checkpoint and exits.")
    p.add_argument("--config", metavar="FILE", help="YAML config (presets in configs/)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override a config field, e.g. --set algorithm.num_branches=6 (repeatable)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its newest valid checkpoint (its "
                   "config.yaml is used; --set may change train.iterations, run.*, and with a "
                   "warning train.lr, train.weight_decay, train.grad_clip)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in run.out even if it holds a run (the files that run "
                   "wrote are deleted; other files stay)")
    p.add_argument("--from-checkpoint", type=int, default=None, metavar="N",
                   help="with --resume: continue from the checkpoint after N iterations instead of "
                   "the newest; later checkpoints are moved to RUN/set-aside/, never deleted")
    add_allow_import(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def add_allow_import(p) -> None:
    """The --allow-import flag: modules a config file may name reward factories from."""
    p.add_argument("--allow-import", dest="allow_imports", metavar="MODULE", action="append",
                   default=[], help="let the config name reward factories ('MODULE:factory') from "
                   "this module or package: a config file alone may not make tempflow import code "
                   "(repeatable; docs/security.md)")


def resolve_config(args):
    """The run's config: --config and --set, or with --resume the run's own config.yaml with
    --set changes (checked against the checkpoint when training starts) and run.out = RUN_DIR."""
    import dataclasses
    from pathlib import Path

    from tempflow.config import load_config
    from tempflow.errors import UserError

    if args.resume is None:
        overrides = [*args.overrides, *(["run.overwrite=true"] if args.overwrite else [])]
        return load_config(args.config, overrides, args.allow_imports)
    if args.config is not None or args.overwrite:
        raise UserError("--resume continues a run with its own config.yaml: drop "
                        f"{'--config' if args.config is not None else '--overwrite'}")
    saved_file = Path(args.resume) / "config.yaml"
    if not saved_file.is_file():
        raise UserError(f"--resume {args.resume}: no run there ({saved_file} not found); give the "
                        f"run.out folder of an earlier `tempflow train`")
    cfg = load_config(saved_file, args.overrides, args.allow_imports)
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out=str(args.resume)))


def print_final_comparison(run_path: Path, images_per_prompt: int) -> None:
    """The run's first and last held-out evaluations compared pair by pair (same noise), per
    category, with 95% intervals; nothing when the run kept fewer than two."""
    import json

    from tempflow.paired import compare, format_comparison

    files = sorted((run_path / "evals").glob("eval_*.json"))
    if len(files) < 2:
        return
    first, last = (json.loads(f.read_text()) for f in (files[0], files[-1]))
    by_metric = {m: compare(first, last, m) for m in ("pass_rate", "score")}
    o = by_metric["pass_rate"]["overall"]
    print(f"held-out GenEval overall, iteration {first['iteration']} -> {last['iteration']}: "
          f"{o.text()}; paired, {images_per_prompt} images per prompt on {o.n_prompts} prompts")
    print(format_comparison(by_metric, f"it {first['iteration']}", f"it {last['iteration']}"))


def run(args) -> int:
    from tempflow.cli.main import set_threads
    from tempflow.training.loop import train

    cfg = resolve_config(args)
    set_threads()
    if args.from_checkpoint is not None and args.resume is None:
        from tempflow.errors import UserError
        raise UserError("--from-checkpoint N goes with --resume RUN (the run whose checkpoint N to continue)")
    run_dir = train(cfg, progress=not args.no_progress, resume=args.resume is not None,
                    from_checkpoint=args.from_checkpoint)
    if not run_dir.main:
        return 0
    print_final_comparison(run_dir.path, cfg.run.eval_images_per_prompt)
    print(f"wrote {run_dir.path}")
    if run_dir.stopped is None:
        return 0
    why, done, signum = run_dir.stopped
    resume = f"continue with `tempflow train --resume {run_dir.path}`"
    if why == "kl":
        print(f"stopped early after iteration {done}: KL to the reference exceeded "
              f"run.kl_stop={cfg.run.kl_stop}; checkpoint saved", file=sys.stderr)
        return 0
    name = signal.Signals(signum).name
    print(f"tempflow train: {name} received: stopped after iteration {done} with a checkpoint; "
          f"{resume}", file=sys.stderr)
    return 128 + signum
