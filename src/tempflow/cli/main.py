"""`tempflow` command line: one subcommand per module in this package."""

from __future__ import annotations

import argparse
import os
import sys

from tempflow import __version__
from tempflow.errors import UserError

SUBCOMMANDS = ("train", "sample", "verify", "eval", "report", "pretrain", "serve-reward")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tempflow", description="Reward alignment of flow-matching text-to-image models "
        "(TempFlow-GRPO, Flow-GRPO).")
    parser.add_argument("--version", action="version", version=f"tempflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = __import__(f"tempflow.cli.{name.replace('-', '_')}_cmd", fromlist=["add_parser"])
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 user error)."""
    # transformers warns at import about optional image backends the CLI never uses
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except UserError as e:
        print(f"tempflow {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"tempflow {args.command}: interrupted", file=sys.stderr)
        return 130


def set_threads() -> None:
    """Use all cores for intra-op work unless the user set OMP_NUM_THREADS."""
    import torch
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(os.cpu_count() or 1)
