"""Checks shared by the sub-commands: argparse value types with ranges, devices and output
paths, all run before any model loads or any image is sampled (a bad value is one line and
exit code 2, see :class:`tempflow.cli.main.Parser`)."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from tempflow.errors import UserError

SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes up to 64 bits; keep one sign bit spare


def int_in(lo: int, hi: int | None = None):
    """argparse type: an integer in [lo, hi] (hi None: no upper bound)."""
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise argparse.ArgumentTypeError(f"must be {rng}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


def number(lo: float | None = None, strict: bool = False, hi: float | None = None):
    """argparse type: a finite number >= lo (> lo if ``strict``) and <= hi."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if lo is not None and (value <= lo if strict else value < lo):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {lo:g}, got {value:g}")
        if hi is not None and value > hi:
            raise argparse.ArgumentTypeError(f"must be <= {hi:g}, got {value:g}")
        return value
    parse.__name__ = "number"
    return parse


seed = int_in(0, SEED_MAX)
positive = int_in(1)


def device(text: str) -> str:
    """argparse type: 'cpu', 'cuda' or 'cuda:N', and CUDA only where torch can use it."""
    if text != "cpu" and text != "cuda" and not (text.startswith("cuda:") and text[5:].isdigit()):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text!r}")
    if text.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text} was asked for, but this torch build sees no CUDA "
                                             f"GPU; use --device cpu")
        if ":" in text and int(text[5:]) >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} "
                                             f"CUDA device(s)")
    return text


def model_spec(text: str) -> str:
    """argparse type for --model: a path (starting with '.', '/' or '~') must exist; names and
    hub ids are checked when the model loads. Fails fast, before torch is imported."""
    if text.startswith((".", "/", "~")) and not Path(text).expanduser().exists():
        raise argparse.ArgumentTypeError(f"model folder {text!r} not found (give 'shapes', a checkpoint "
                                         f"folder, a diffusers pipeline folder or a hub id like org/name)")
    return text


def writable_folder(path: str | os.PathLike, flag: str) -> Path:
    """``path`` as an output folder: an existing folder, or one that can be created (its
    nearest existing parent is a writable folder). Nothing is created; UserError otherwise."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {str(path)!r} is a file, not a folder; give a folder path")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{flag} {str(path)!r} cannot be created: {str(probe)!r} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {str(path)!r} is not writable ({str(probe)!r} denies it); give "
                        f"another folder")
    return p


def writable_file(path: str | os.PathLike, flag: str, suffixes: tuple[str, ...]) -> Path:
    """``path`` as an output file with one of ``suffixes`` in a folder that exists or can be
    created; UserError otherwise (nothing is created)."""
    p = Path(path).expanduser()
    if p.suffix.lower() not in suffixes:
        raise UserError(f"{flag} {str(path)!r} must end in {' or '.join(suffixes)}")
    if p.is_dir():
        raise UserError(f"{flag} {str(path)!r} is a folder; give a file name ending in {suffixes[0]}")
    writable_folder(p.parent, f"the folder of {flag}")
    return p
