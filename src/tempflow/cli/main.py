"""`tempflow` command line: one subcommand per module in this package."""

from __future__ import annotations

import argparse
import os
import sys

from tempflow import __version__
from tempflow.errors import UserError

SUBCOMMANDS = ("train", "sample", "verify", "eval", "compare", "report", "export", "pretrain", "serve-reward")


class Parser(argparse.ArgumentParser):
    """argparse with tempflow's error contract: one line on stderr, exit code 2 (the usage
    is one `--help` away). Sub-command parsers are of this class too."""

    def error(self, message: str):
        print(f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)",
              file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version (0) or a usage error (2, one line printed)
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except UserError as e:
        print(f"tempflow {args.command}: error: {one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"tempflow {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a file or folder the user named: missing, too long a name, no space, ...
        if os.environ.get("TEMPFLOW_DEBUG"):
            raise
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"tempflow {args.command}: error: {one_line(e.strerror or str(e))}{where}; check the "
              f"paths given and the free space", file=sys.stderr)
        return 2
    except Exception as e:  # a bug, not the user's input: one line, the traceback on request
        if os.environ.get("TEMPFLOW_DEBUG"):
            raise
        print(f"tempflow {args.command}: internal error: {type(e).__name__}: {one_line(str(e))[:500]} "
              f"(a bug: rerun with TEMPFLOW_DEBUG=1 for the traceback and report it)", file=sys.stderr)
        return 1


def one_line(text: str) -> str:
    """``text`` with its line breaks and runs of spaces collapsed (error messages are one line)."""
    return " ".join(text.split())


def set_threads() -> None:
    """Use all cores for intra-op work unless the user set OMP_NUM_THREADS."""
    import torch
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(os.cpu_count() or 1)
