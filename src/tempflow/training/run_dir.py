"""The run directory: resolved config, metrics.jsonl, TensorBoard events, grids, reward curve,
checkpoints. Nothing in an existing run is changed unless the user asks (--resume, --overwrite)."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

from tempflow.errors import UserError

#: what a run writes (removed by --overwrite; nothing else in the folder is touched)
RUN_FILES = ("config.yaml", "metrics.jsonl", "reward_curve.png", "tb", "grids", "lora", "checkpoints")
#: config keys that may change when a run is resumed (they do not change its results so far)
RESUMABLE_KEYS = ("train.iterations", "run.")


def _saved_config(path: Path):
    """The TrainConfig in ``path``/config.yaml; UserError naming the file if it is unreadable."""
    from tempflow.config import load_config

    try:
        return load_config(path / "config.yaml")
    except UserError as e:
        raise UserError(f"run folder {str(path)!r} has an unreadable config.yaml ({e}); pass "
                        f"--overwrite to start afresh there, or choose another run.out") from None


def check_resume_changes(saved, cfg) -> None:
    """UserError if ``cfg`` differs from the run's ``saved`` config outside RESUMABLE_KEYS."""
    from tempflow.config import diff_configs

    bad = [k for k in diff_configs(saved, cfg) if not k.startswith(RESUMABLE_KEYS) or k == "run.overwrite"]
    if bad:
        raise UserError(f"cannot change {', '.join(bad)} when resuming (only train.iterations and "
                        f"run.* other than run.overwrite may change); start a new run with another "
                        f"run.out instead")


def check_new_run(path: Path, cfg) -> None:
    """A fresh run may not start in a folder that holds a run, unless run.overwrite."""
    from tempflow.config import diff_configs

    if not (path / "config.yaml").is_file() or cfg.run.overwrite:
        return
    changed = [k for k in diff_configs(_saved_config(path), cfg) if k != "run.overwrite"]
    what = (f"a run with another config (differs in {', '.join(changed[:4])})" if changed
            else "a run with this config")
    raise UserError(f"run folder {str(path)!r} already holds {what}: continue it with "
                    f"`tempflow train --resume {path}`, replace it with --overwrite, or choose "
                    f"another run.out")


def ensure_writable(path: Path) -> bool:
    """Create ``path`` if needed and check that files can be written there (before any
    training). Returns whether the folder was created; UserError if it is not writable."""
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"run folder {str(path)!r} is not writable ({e.strerror or e}); choose "
                        f"another run.out") from None
    return created


class RunDir:
    """Files of one training run under ``path``.

    config.yaml (resolved), metrics.jsonl (one JSON object per iteration / evaluation),
    tb/ (TensorBoard), grids/ (images), reward_curve.png, lora/ (LoRA of the newest
    checkpoint, EMA weights, diffusers format), checkpoints/ (full state, see checkpoint.py).
    Only the main process writes.
    """

    def __init__(self, path: str | Path, main: bool = True):
        self.path = Path(path)
        self.main = main
        self._tb = None
        self._purge_step: int | None = None
        self.history: list[dict] = []

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    def start(self, cfg) -> None:
        """Begin a fresh run: with run.overwrite remove the old run's files, then write the
        config (run.overwrite stored as false) and an empty metrics.jsonl."""
        if not self.main:
            return
        if cfg.run.overwrite:
            for name in RUN_FILES:
                target = self.path / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        self.write_config(cfg)
        self.metrics_file.write_text("")
        self.history = []

    def write_config(self, cfg) -> None:
        """config.yaml (YAML that load_config reads back to ``cfg``, run.overwrite false)."""
        import dataclasses

        from tempflow.config import dump_config

        (self.path / "grids").mkdir(parents=True, exist_ok=True)
        if self.main:
            dump_config(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, overwrite=False)),
                        self.path / "config.yaml")

    def resume(self, metrics_bytes: int, iteration: int) -> None:
        """Continue after a checkpoint: metrics.jsonl is cut back to what it held then (later
        records are recomputed), the history re-read, and TensorBoard events from
        ``iteration`` on are purged (the checkpoint's own records are written again)."""
        if not self.main:
            return
        size = self.metrics_file.stat().st_size if self.metrics_file.is_file() else -1
        if size < metrics_bytes:
            raise UserError(f"{self.metrics_file} is shorter than its checkpoint recorded "
                            f"({size} < {metrics_bytes} bytes); restore the file or start afresh "
                            f"with --overwrite")
        with open(self.metrics_file, "r+b") as f:
            f.truncate(metrics_bytes)
        self.history = [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line]
        self._purge_step = iteration
        for record in self.history:
            if record["iteration"] >= iteration:
                self._tb_write(record)

    def metrics_bytes(self) -> int:
        """Flush metrics.jsonl to disk; its length in bytes."""
        with open(self.metrics_file, "ab") as f:
            f.flush()
            os.fsync(f.fileno())
            return f.tell()

    @property
    def tb(self):
        if self._tb is None and self.main:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(self.path / "tb"), purge_step=self._purge_step)
        return self._tb

    def log(self, record: dict) -> None:
        """Append a record (must hold 'iteration') to metrics.jsonl and TensorBoard scalars."""
        self.history.append(record)
        if not self.main:
            return
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(record) + "\n")
        self._tb_write(record)

    def _tb_write(self, record: dict) -> None:
        if not self.main:
            return
        step = record["iteration"]
        for k, v in record.items():
            if k != "iteration" and isinstance(v, (int, float)) and math.isfinite(v):
                self.tb.add_scalar(k.replace(".", "/"), v, step)
        self.tb.flush()

    def plot_rewards(self) -> None:
        """reward_curve.png: training reward and held-out pass rate (left axis) with the KL to
        the reference (right axis), so reward hacking or drift shows side by side."""
        if not self.main:
            return
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [(r["iteration"], r["reward/mean"]) for r in self.history if "reward/mean" in r]
        evals = [(r["iteration"], r["eval/pass_rate"]) for r in self.history if "eval/pass_rate" in r]
        kl = [(r["iteration"], r["train/kl"]) for r in self.history if "train/kl" in r]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        if train:
            ax.plot(*zip(*train), label="train reward (mean)", color="tab:blue", alpha=0.7)
        if evals:
            ax.plot(*zip(*evals), "o-", label="held-out pass rate (ODE)", color="tab:red")
        if kl:
            ax2 = ax.twinx()
            ax2.plot(*zip(*kl), color="tab:gray", alpha=0.5, lw=1)
            ax2.set_ylabel("KL to reference", color="tab:gray")
        ax.set_xlabel("iteration")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(self.path / "reward_curve.png", dpi=100)
        plt.close(fig)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
