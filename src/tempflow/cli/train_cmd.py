"""`tempflow train`: TempFlow-GRPO / Flow-GRPO training from a config."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train with TempFlow-GRPO or Flow-GRPO",
                       description="Reward-align a flow model. With no arguments: TempFlow-GRPO on "
                       "the shapes world from the shipped base model with the verifier reward "
                       "(the settings of configs/shapes-tempflow.yaml).")
    p.add_argument("--config", metavar="FILE", help="YAML config (presets in configs/)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override a config field, e.g. --set algorithm.num_branches=6 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args) -> int:
    from tempflow.cli.main import set_threads
    from tempflow.config import load_config
    from tempflow.training.loop import train

    cfg = load_config(args.config, args.overrides)
    set_threads()
    run_dir = train(cfg, progress=not args.no_progress)
    last = next((r for r in reversed(run_dir.history) if "eval/pass_rate" in r), None)
    first = next((r for r in run_dir.history if "eval/pass_rate" in r), None)
    if first is not None and last is not None and run_dir.main:
        print(f"held-out pass rate: {first['eval/pass_rate']:.3f} (iteration {first['iteration']}) -> "
              f"{last['eval/pass_rate']:.3f} (iteration {last['iteration']})")
    if run_dir.main:
        print(f"wrote {run_dir.path}")
    return 0
