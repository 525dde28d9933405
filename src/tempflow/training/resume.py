"""What `--resume` may continue: a tempflow run with a valid checkpoint, trained with the same
config. Checked before the model loads and before anything in the run folder changes.

Each checkpoint records the config it was trained with (meta.json: ``config`` and its SHA-256,
``config_sha256``). Resuming compares it with the config the run would continue with (its
config.yaml, perhaps edited, plus ``--set``):

- ``train.iterations``, ``train.max_nonfinite`` and ``run.*`` (except ``run.overwrite``) may
  change silently: they do not change the results of the iterations trained so far;
- the optimiser's step settings (:data:`OPTIMISER_KEYS`) may change with a warning: the run
  continues, but no longer matches an uninterrupted run bitwise (the non-finite guard's advice
  is to lower ``train.lr`` and resume);
- any other change is refused: it would be a different run under the same name.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tempflow.errors import UserError
from tempflow.training import checkpoint as ckpt_io
from tempflow.training.run_dir import MARKER, is_run, saved_config

SILENT_KEYS = ("train.iterations", "train.max_nonfinite", "run.")
OPTIMISER_KEYS = ("train.lr", "train.weight_decay", "train.grad_clip")


def config_record(cfg) -> dict:
    """meta.json's record of ``cfg``: {"config": nested dict, "config_sha256": its digest};
    run.overwrite is recorded false, as in config.yaml (it says how the run started, not what
    it trains)."""
    from tempflow.config import config_to_dict

    data = json.loads(json.dumps(config_to_dict(cfg), default=str))
    data["run"]["overwrite"] = False
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()
    return {"config": data, "config_sha256": digest}


def _value(data: dict, key: str):
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def check_config_unchanged(recorded: dict, cfg, where: str) -> None:
    """UserError if ``cfg`` differs from the ``recorded`` config (meta.json) outside the keys
    that may change; a warning for changed optimiser settings."""
    from tempflow.config import config_from_dict, config_to_dict, diff_configs

    now = json.loads(json.dumps(config_to_dict(cfg), default=str))
    try:  # in today's field names (an older run's algorithm.branching -> algorithm.scheme, ...)
        recorded = json.loads(json.dumps(config_to_dict(config_from_dict(recorded)), default=str))
    except (UserError, TypeError, ValueError):
        pass  # compared as recorded
    changed = [k for k in diff_configs(recorded, now) if not k.startswith(SILENT_KEYS) or k == "run.overwrite"]
    show = lambda k: f"{k} ({_value(recorded, k)!r} -> {_value(now, k)!r})"  # noqa: E731
    refused = [k for k in changed if k not in OPTIMISER_KEYS]
    if refused:
        raise UserError(f"cannot change {', '.join(show(k) for k in refused[:4])} when resuming: "
                        f"{where} was trained with the old value (only train.iterations, "
                        f"{', '.join(OPTIMISER_KEYS)} and run.* other than run.overwrite may change); "
                        f"undo the change in config.yaml or --set, or start a new run with another run.out")
    if changed:
        ckpt_io.warn(f"resuming with {', '.join(show(k) for k in changed)}: the run continues from "
                     f"{where}, but no longer matches an uninterrupted run exactly")


def find_resume_checkpoint(path: Path, cfg, report: bool = True,
                           iteration: int | None = None) -> ckpt_io.Checkpoint:
    """The newest valid checkpoint of the run in ``path`` (or checkpoint ``iteration``) that
    ``cfg`` may continue; UserError (nothing changed) when the folder is not a run, no
    checkpoint is valid, train.iterations is below what was done, or the config changed where
    it may not."""
    if not is_run(path):
        raise UserError(f"--resume {path}: not a tempflow run (no {MARKER} or tempflow config.yaml); "
                        f"give the run.out folder of an earlier `tempflow train`")
    if iteration is not None:
        from tempflow.training.export import pick_checkpoint
        found = pick_checkpoint(path, iteration)
    else:
        found = ckpt_io.latest_checkpoint(path / ckpt_io.FOLDER, report=report)
    if found is None:
        _, damaged = ckpt_io.scan_checkpoints(path / ckpt_io.FOLDER)
        why = (f" ({len(damaged)} damaged, the newest: {damaged[0][1]})" if damaged else "")
        raise UserError(f"--resume {path}: no valid checkpoint in {path / ckpt_io.FOLDER}{why}, so there "
                        f"is nothing to continue and nothing was changed; start the run again with "
                        f"`tempflow train --config {path / 'config.yaml'} --overwrite`")
    recorded = found.meta.get("config")
    if not isinstance(recorded, dict):  # an older tempflow's checkpoint: compare with config.yaml
        recorded = config_record(saved_config(path))["config"]
    check_config_unchanged(recorded, cfg, f"checkpoint {found.path}")
    if cfg.train.iterations < found.iteration:
        raise UserError(f"train.iterations={cfg.train.iterations} is below the {found.iteration} "
                        f"iterations already done in {found.path}; resume with train.iterations >= "
                        f"{found.iteration} (the run's lora/ holds the weights after {found.iteration})")
    return found


def set_aside_later(path: Path, iteration: int) -> Path | None:
    """Move the checkpoints after ``iteration`` into ``set-aside/<UTC time>/`` of the run, with
    copies of metrics.jsonl and lora/ as they are now (resuming from an earlier checkpoint
    rewrites both); nothing is deleted. Returns that folder (None: nothing was later)."""
    import shutil
    import time

    later = [p for i, p in ckpt_io.list_checkpoints(path / ckpt_io.FOLDER) if i > iteration]
    if not later:
        return None
    aside = path / "set-aside" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    (aside / ckpt_io.FOLDER).mkdir(parents=True, exist_ok=False)
    for folder in later:
        folder.rename(aside / ckpt_io.FOLDER / folder.name)
    for name in ("metrics.jsonl", "lora", "model"):
        src = path / name
        if src.is_dir():
            shutil.copytree(src, aside / name)
        elif src.is_file():
            shutil.copy2(src, aside / name)
    ckpt_io.warn(f"resuming from checkpoint {iteration}: the {len(later)} later checkpoint(s), "
                 f"metrics.jsonl and lora/ or model/ as they were are kept in {aside}")
    return aside
