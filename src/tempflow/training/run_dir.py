"""The run directory: resolved config, metrics.jsonl, TensorBoard events, grids, reward curve,
checkpoints. A run folder carries a marker file (tempflow-run.json); tempflow writes only into
an empty or new folder or a folder with that marker, and nothing in an existing run is changed
unless the user asks (--resume, --overwrite). --overwrite removes only files tempflow wrote."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from tempflow.errors import UserError
from tempflow.utils.memory import frees_cycles

MARKER = "tempflow-run.json"
#: the first line of every config.yaml tempflow writes (runs from before the marker file)
CONFIG_HEADER = "# tempflow training config"
#: what a run writes, by name: files at the top, and per sub-folder the names of its entries
RUN_FILES = (MARKER, "config.yaml", "metrics.jsonl", "reward_curve.png")
RUN_FOLDERS = {
    "checkpoints": re.compile(r"^(iter_\d{6,}|\.tmp-iter_\d{6,}-\d+)$"),
    "checkpoints/iter_*": re.compile(r"^(weights\.safetensors|state\.pt|meta\.json)$"),
    "grids": re.compile(r"^(eval|train)_\d{5,}\.(png|json)$"),
    "tb": re.compile(r"^events\.out\.tfevents\..+$"),
    "lora": re.compile(r"^pytorch_lora_weights\.safetensors$"),
    ".lora-tmp": re.compile(r"^pytorch_lora_weights\.safetensors$"),
    "model": re.compile(r"^(config\.json|model\.safetensors)$"),
    ".model-tmp": re.compile(r"^(config\.json|model\.safetensors)$"),
}


def is_run(path: Path) -> bool:
    """Whether ``path`` holds a tempflow training run: its marker file, or (older runs) a
    config.yaml that tempflow wrote."""
    try:
        if (path / MARKER).is_file():
            return json.loads((path / MARKER).read_text()).get("tempflow") == "run"
        with open(path / "config.yaml", encoding="utf-8") as f:
            return f.readline().startswith(CONFIG_HEADER)
    except (OSError, ValueError, AttributeError):
        return False


def check_run_folder(path: Path, purpose: str) -> None:
    """UserError if ``path`` exists and is neither empty nor a tempflow run (so tempflow never
    writes into, or deletes from, a folder of someone else's files). ``purpose``: how the
    folder was given, e.g. 'run.out'."""
    if not path.exists():
        return
    if not path.is_dir():
        raise UserError(f"{purpose} {str(path)!r} is a file, not a folder; choose another {purpose}")
    if is_run(path):
        return
    try:
        entries = sorted(p.name for p in path.iterdir())
    except OSError as e:
        raise UserError(f"{purpose} {str(path)!r} cannot be read ({e.strerror or e}); choose another {purpose}") from None
    if entries:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise UserError(f"{purpose} {str(path)!r} is not a tempflow run (no {MARKER}) and is not empty "
                        f"(it holds {shown}); tempflow writes runs only into new or empty folders: "
                        f"choose another {purpose}")


def remove_run_files(path: Path) -> None:
    """Delete what a tempflow run wrote in ``path`` (RUN_FILES, and in RUN_FOLDERS the entries
    named as tempflow names them); other files stay, and so do folders that still hold any."""
    for name in RUN_FILES:
        if (path / name).is_file():
            (path / name).unlink()
    for folder, pattern in RUN_FOLDERS.items():
        if "*" in folder:
            continue
        root = path / folder
        if not root.is_dir() or root.is_symlink():
            continue
        for entry in root.iterdir():
            if not pattern.match(entry.name) or entry.is_symlink():
                continue
            if entry.is_dir():
                inner = RUN_FOLDERS["checkpoints/iter_*"]
                for f in entry.iterdir():
                    if inner.match(f.name) and f.is_file() and not f.is_symlink():
                        f.unlink()
                _rmdir_if_empty(entry)
            elif entry.is_file():
                entry.unlink()
        _rmdir_if_empty(root)


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass  # not empty: it holds files tempflow did not write


def check_new_run(path: Path, cfg) -> None:
    """A fresh run may start only in a new or empty folder, or (with run.overwrite) in a
    tempflow run folder; UserError otherwise."""
    from tempflow.config import diff_configs

    check_run_folder(path, "run.out")
    if not is_run(path) or cfg.run.overwrite:
        return
    changed = [k for k in diff_configs(saved_config(path), cfg) if k != "run.overwrite"]
    what = (f"a run with another config (differs in {', '.join(changed[:4])})" if changed
            else "a run with this config")
    raise UserError(f"run folder {str(path)!r} already holds {what}: continue it with "
                    f"`tempflow train --resume {path}`, replace it with --overwrite, or choose "
                    f"another run.out")


def saved_config(path: Path):
    """The TrainConfig in ``path``/config.yaml, for comparison only (no reward is built from it,
    so factory paths are not checked); UserError naming the file if it is unreadable."""
    from tempflow.config import config_from_dict, read_yaml

    try:
        return config_from_dict(read_yaml(path / "config.yaml"))
    except UserError as e:
        raise UserError(f"run folder {str(path)!r} has an unreadable config.yaml ({e}); pass "
                        f"--overwrite to start afresh there, or choose another run.out") from None


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


def read_metrics(path: Path, limit: int | None = None) -> list[dict]:
    """The records of metrics.jsonl (its first ``limit`` bytes); UserError naming the line
    if one is not a JSON object with an 'iteration'."""
    with open(path, "rb") as f:
        data = f.read() if limit is None else f.read(limit)
    records = []
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            ok = isinstance(record, dict) and isinstance(record.get("iteration"), int)
        except ValueError:
            ok = False
        if not ok:
            raise UserError(f"{path} line {n} is not a metrics record (a JSON object with an "
                            f"'iteration'); restore the file, or start afresh with --overwrite")
        records.append(record)
    return records


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
        self.report_to: list[str] | None = None  # run.report_to, once the trackers are open
        self.trackers = None  # tempflow.training.trackers.Trackers (main process)
        self._tb_pending: list[dict] = []  # records a resume replays before the config is known

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    def start(self, cfg) -> None:
        """Begin a fresh run: with run.overwrite remove the old run's files, then write the
        config (run.overwrite stored as false) and an empty metrics.jsonl."""
        if not self.main:
            return
        from tempflow.training.trackers import require_installed
        require_installed(cfg.run.report_to)  # before anything in the folder changes
        if cfg.run.overwrite:
            remove_run_files(self.path)
        from tempflow import __version__

        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / MARKER).write_text(json.dumps({"tempflow": "run", "format": 1,
                                                    "version": __version__}) + "\n")
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
        self.open_trackers(cfg)

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
        self.history = read_metrics(self.metrics_file, metrics_bytes)
        with open(self.metrics_file, "r+b") as f:
            f.truncate(metrics_bytes)
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

    def open_trackers(self, cfg) -> None:
        """Start the trackers of run.report_to (main process, once; docs/training.md). On a
        resumed run TensorBoard gets the records from the checkpoint on again, and each other
        tracker starts a new tracker run that first receives the run's records and grids so far."""
        if not self.main or self.report_to is not None:
            return
        from tempflow.training.trackers import Trackers

        self.trackers = Trackers.open(cfg, self.path)
        self.report_to = list(cfg.run.report_to)
        pending, self._tb_pending = self._tb_pending, []
        for record in pending:
            self._tb_write(record)
        if not self.history:
            return
        last = max(r["iteration"] for r in self.history)
        grids = sorted((int(f.stem.split("_")[1]), f.stem.split("_")[0], f)
                       for f in (self.path / "grids").glob("*_*.png")
                       if RUN_FOLDERS["grids"].match(f.name) and int(f.stem.split("_")[1]) <= last)
        if "tensorboard" in self.report_to and self._purge_step is not None:
            for step, kind, f in grids:
                if step >= self._purge_step:
                    self._tb_image(f"grids/{kind}", f, step)
        events = sorted([(r["iteration"], 0, i, r) for i, r in enumerate(self.history)]
                        + [(step, 1, i, (kind, f)) for i, (step, kind, f) in enumerate(grids)],
                        key=lambda e: e[:3])
        for step, is_grid, _, what in events:
            if is_grid:
                self.trackers.log_image(f"grids/{what[0]}", what[1], step)
            else:
                self.trackers.log(what)

    def _configured(self) -> bool:
        """Whether this process logs; a RunDir whose config never came logs to TensorBoard."""
        if self.main and self.report_to is None:
            from tempflow.training.trackers import Trackers
            self.trackers, self.report_to = Trackers([]), ["tensorboard"]
        return self.main

    def log(self, record: dict) -> None:
        """Append a record (must hold 'iteration') to metrics.jsonl, TensorBoard scalars and
        the other trackers of run.report_to."""
        self.history.append(record)
        if not self._configured():
            return
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(record) + "\n")
        self._tb_write(record)
        self.trackers.log(record)

    def log_image(self, name: str, path: str | Path, step: int) -> None:
        """Send a grid PNG the run wrote (``name``: 'grids/eval' or 'grids/train') to the
        trackers, as an image where they take images."""
        if not self._configured():
            return
        if "tensorboard" in self.report_to:
            self._tb_image(name, Path(path), step)
        self.trackers.log_image(name, path, step)

    def _tb_image(self, name: str, path: Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            self.tb.add_image(name, np.asarray(im.convert("RGB")), step, dataformats="HWC")
        self.tb.flush()

    def _tb_write(self, record: dict) -> None:
        if not self.main:
            return
        if self.report_to is None:  # a resume replays records before the config is known
            self._tb_pending.append(record)
            return
        if "tensorboard" not in self.report_to:
            return
        from tempflow.training.trackers import scalars

        step = record["iteration"]
        for k, v in scalars(record).items():
            self.tb.add_scalar(k.replace(".", "/"), v, step)
        self.tb.flush()

    @frees_cycles  # the figure's reference cycles, freed now rather than at a full collection
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
        """Log the last evaluation's GenEval-style table (a text table in TensorBoard, a table
        where the tracker has one) and close every tracker."""
        if self.main and self.report_to is not None:
            from tempflow.training.trackers import TABLE, geneval_table, table_markdown

            table = geneval_table(self.history)
            if table is not None:
                columns, rows, _ = table
                step = max(r["iteration"] for r in self.history)
                if "tensorboard" in self.report_to:
                    self.tb.add_text(TABLE, table_markdown(columns, rows), step)
                self.trackers.log_table(TABLE, columns, rows, step)
            self.trackers.finish()
            self.report_to = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
