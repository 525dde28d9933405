"""Full-state training checkpoints: written atomically, verified on load, the last k kept.

A checkpoint is a folder ``<run>/checkpoints/iter_NNNNNN`` (N = iterations done) holding

- ``weights.safetensors``: the trainable weights (``params.<name>``) and the EMA shadow
  (``ema.<name>``), float tensors;
- ``state.pt`` (``torch.save``, loadable with ``weights_only=True``): the optimiser state, the
  EMA step counter, the loop's counters and every process's random generator states
  (torch, numpy, Python ``random``; CUDA when present);
- ``meta.json``: the iteration, the byte length of ``metrics.jsonl`` at that point, the
  number of processes and the SHA-256 of the two files above.

Writing goes to a hidden temporary folder; each file and the folder are fsynced, then the
folder is renamed to its final name and the parent folder is fsynced (POSIX rename is
atomic, so a crash leaves either the whole checkpoint or none). On load the newest folder
whose files match their recorded SHA-256 wins; a truncated or corrupted one is skipped with a
warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tempflow.errors import UserError

FORMAT = 1
FOLDER = "checkpoints"
WEIGHTS, STATE, META = "weights.safetensors", "state.pt", "meta.json"
_NAME = re.compile(r"^iter_(\d{6,})$")
#: test hook: "<stage>:<iteration>" SIGKILLs this process during that checkpoint's write
#: (stage: weights = after weights.safetensors, state = half-way through state.pt,
#: rename = everything written, before the rename)
FAULT_ENV = "TEMPFLOW_FAULT_CHECKPOINT"


class DamagedCheckpoint(Exception):
    """A checkpoint folder that is incomplete, truncated or corrupted."""


@dataclass
class Checkpoint:
    """A verified checkpoint: its folder, iterations done and its meta.json."""

    path: Path
    iteration: int
    meta: dict


def warn(message: str) -> None:
    """One warning line on stderr."""
    print(f"tempflow: warning: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- random generators

def rng_state() -> dict:
    """This process's global random generator states (torch CPU and CUDA, numpy, Python)."""
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))


# ---------------------------------------------------------------------------- files

def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's metadata to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fault(stage: str, iteration: int) -> None:
    if os.environ.get(FAULT_ENV) == f"{stage}:{iteration}":
        os.kill(os.getpid(), signal.SIGKILL)


def folder_name(iteration: int) -> str:
    return f"iter_{iteration:06d}"


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(iteration, folder) of the finished-looking checkpoint folders in ``root``, newest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return sorted(found, reverse=True)


# ---------------------------------------------------------------------------- save

def temp_folder(root: Path, iteration: int, pid: int | None = None) -> Path:
    """The hidden folder checkpoint ``iteration`` is written into before its rename."""
    return root / f".tmp-{folder_name(iteration)}-{pid or os.getpid()}"


def save_checkpoint(root: Path, iteration: int, tensors: dict[str, torch.Tensor] | None, state: dict,
                    meta: dict, keep: int, written: list[str] | None = None) -> Path:
    """Write checkpoint ``iteration`` atomically into ``root`` and keep the newest ``keep``.

    tensors: name -> tensor (safetensors; None: no weights file); state: picklable with
    ``weights_only`` (torch.save); meta: JSON-able, extended with the format, iteration and file
    digests. ``written``: files (relative paths) that other processes already wrote and fsynced
    into :func:`temp_folder` (sharded weights); they are digested with the others. Returns the folder.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / folder_name(iteration)
    tmp = temp_folder(root, iteration)
    if written is None:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    names = [*(written or [])]
    if tensors is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / WEIGHTS))
        fsync_path(tmp / WEIGHTS)
        names.append(WEIGHTS)
    _fault("weights", iteration)
    with open(tmp / STATE, "wb") as f:
        torch.save(state, f)
        if os.environ.get(FAULT_ENV) == f"state:{iteration}":
            f.flush()
            f.truncate(f.tell() // 2)
            _fault("state", iteration)
        f.flush()
        os.fsync(f.fileno())
    meta = {**meta, "format": FORMAT, "iteration": iteration,
            "sha256": {name: sha256(tmp / name) for name in [*names, STATE]}}
    with open(tmp / META, "w") as f:
        json.dump(meta, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    fsync_path(tmp)
    _fault("rename", iteration)
    if final.exists():  # the same iteration saved again (e.g. interrupted right after a save)
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_path(root)
    prune(root, keep)
    _fault("saved", iteration)  # complete, but the LoRA export that follows it is not written
    return final


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, and temporary folders of dead writes."""
    for _, path in list_checkpoints(root)[keep:]:
        shutil.rmtree(path, ignore_errors=True)
    for path in root.glob(".tmp-iter_*"):
        if not path.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------- load

def verify(path: Path) -> Checkpoint:
    """The checkpoint in ``path`` if its meta.json parses and both files match their digests;
    DamagedCheckpoint saying what is wrong otherwise."""
    try:
        meta = json.loads((path / META).read_text())
        digests = meta["sha256"]
        iteration = int(meta["iteration"])
    except FileNotFoundError:
        raise DamagedCheckpoint(f"{META} is missing") from None
    except (ValueError, KeyError, TypeError) as e:
        raise DamagedCheckpoint(f"{META} is unreadable ({e})") from None
    if meta.get("format") != FORMAT:
        raise DamagedCheckpoint(f"format {meta.get('format')!r} is not {FORMAT}")
    if not isinstance(digests, dict) or STATE not in digests:
        raise DamagedCheckpoint(f"{META} lists no {STATE}")
    for name in digests:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise DamagedCheckpoint(f"{META} names a file outside the checkpoint ({name!r})")
        if not (path / name).is_file():
            raise DamagedCheckpoint(f"{name} is missing")
        if sha256(path / name) != digests.get(name):
            raise DamagedCheckpoint(f"{name} does not match its SHA-256 (truncated or corrupted)")
    return Checkpoint(path, iteration, meta)


def scan_checkpoints(root: Path) -> tuple[Checkpoint | None, list[tuple[Path, str]]]:
    """(the newest valid checkpoint in ``root`` or None, [(folder, what is wrong)] of the
    damaged ones newer than it)."""
    damaged = []
    for _, path in list_checkpoints(root):
        try:
            return verify(path), damaged
        except DamagedCheckpoint as e:
            damaged.append((path, str(e)))
    return None, damaged


def latest_checkpoint(root: Path, report: bool = True) -> Checkpoint | None:
    """The newest valid checkpoint in ``root`` (None if there is none); when one is found,
    each damaged newer one is reported with a warning if ``report``."""
    found, damaged = scan_checkpoints(root)
    if found is not None and report:
        for path, why in damaged:
            warn(f"checkpoint {path} is damaged ({why}); using an older one")
    return found


def load_checkpoint(ckpt: Checkpoint) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, state) of a verified checkpoint; UserError if the files cannot be read."""
    try:
        tensors = load_file(str(ckpt.path / WEIGHTS)) if WEIGHTS in ckpt.meta["sha256"] else {}
        state = torch.load(ckpt.path / STATE, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors / torch raise their own types for bad files
        raise UserError(f"checkpoint {ckpt.path} cannot be read ({e}); delete that folder to "
                        f"resume from the one before it") from None
    return tensors, state
