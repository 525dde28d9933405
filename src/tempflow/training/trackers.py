"""Experiment trackers of a training run (``run.report_to``), through accelerate's tracking API.

``tensorboard`` is the run's own writer under ``tb/`` (:class:`~tempflow.training.run_dir.RunDir`);
``wandb``, ``swanlab``, ``mlflow`` and ``trackio`` are accelerate's ``GeneralTracker`` classes
(``accelerate.tracking.WandBTracker`` and so on), each package imported only when chosen. Every
tracker receives the metrics.jsonl records (same keys, step = iteration), the grids under
``grids/`` as images, and at the end the last evaluation's GenEval-style table. Only the main
process opens trackers. Projects default to ``tempflow`` and the run name to the run folder's
name; the trackers' own environment variables (WANDB_MODE, WANDB_PROJECT, MLFLOW_TRACKING_URI,
MLFLOW_EXPERIMENT_NAME, SWANLAB_MODE, ...) apply as usual.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path

from tempflow.errors import UserError

#: tracker name -> the package it needs (None: always installed)
TRACKERS: dict[str, str | None] = {"tensorboard": None, "wandb": "wandb", "swanlab": "swanlab",
                                   "mlflow": "mlflow", "trackio": "trackio"}
TABLE = "eval/geneval_table"


def require_installed(names) -> None:
    """UserError naming the extra to install for the first tracker in ``names`` whose package
    is missing (found without importing it)."""
    for name in names:
        module = TRACKERS.get(name)
        if module is not None and importlib.util.find_spec(module) is None:
            raise UserError(f"run.report_to names {name!r}, but the {module} package is not "
                            f"installed: pip install 'tempflow[{name}]' (or drop {name!r} from "
                            f"run.report_to)")


def scalars(record: dict) -> dict[str, float]:
    """The finite numbers of a metrics record, 'iteration' left out (what TensorBoard gets)."""
    return {k: v for k, v in record.items()
            if k != "iteration" and isinstance(v, (int, float)) and math.isfinite(v)}


def geneval_table(history: list[dict]) -> tuple[list[str], list[list], int] | None:
    """(columns, rows, iteration) of the last evaluation record with per-category pass rates:
    one row per category and the overall row (GenEval's mean over categories); None if no
    evaluation was verified."""
    last = next((r for r in reversed(history) if "eval/pass_rate" in r), None)
    if last is None:
        return None
    prefix = "eval/pass_rate/"
    rows = [[k[len(prefix):], float(v)] for k, v in sorted(last.items()) if k.startswith(prefix)]
    rows.append(["overall", float(last["eval/pass_rate"])])
    return ["category", "pass_rate"], rows, int(last["iteration"])


def table_markdown(columns: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |"
              for row in rows]
    return "\n".join(lines)


def flat_config(cfg) -> dict:
    """The config as flat 'section.key' -> scalar (lists and mappings as text), for trackers'
    hyperparameter views."""
    from tempflow.config import config_to_dict

    out = {}

    def walk(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and k not in ("kwargs",):
                walk(v, f"{prefix}{k}.")
            else:
                out[prefix + k] = v if isinstance(v, (bool, int, float, str)) or v is None else str(v)
    walk(config_to_dict(cfg))
    return out


# ---------------------------------------------------------------------------- one tracker each

class _Tracker:
    """One external tracker: an accelerate GeneralTracker plus what it does with images and
    tables. ``tracker.main_process_only`` is turned off: only tempflow's main process opens
    trackers, so accelerate's process state is never consulted."""

    name = ""

    def __init__(self, tracker, config: dict):
        self.tracker = tracker
        tracker.main_process_only = False
        tracker.start()
        self.store_config(config)

    def store_config(self, config: dict) -> None:
        self.tracker.store_init_configuration(config)

    def log(self, values: dict, step: int) -> None:
        self.tracker.log(values, step=step)

    def log_image(self, name: str, path: Path, step: int) -> None:
        from PIL import Image

        with Image.open(path) as im:
            self.tracker.log_images({name: [im.convert("RGB")]}, step=step)

    def log_table(self, name: str, columns: list[str], rows: list[list], step: int) -> None:
        pass

    def finish(self) -> None:
        self.tracker.finish()


class _WandB(_Tracker):
    name = "wandb"

    def __init__(self, run_name: str, run_path: Path, config: dict):
        from accelerate.tracking import WandBTracker

        kwargs = {"name": run_name}
        if not os.environ.get("WANDB_DIR"):
            kwargs["dir"] = str(run_path)  # the offline / local files: RUN/wandb/
        super().__init__(WandBTracker(os.environ.get("WANDB_PROJECT", "tempflow"), **kwargs), config)

    def log_table(self, name, columns, rows, step):
        self.tracker.log_table(name, columns=columns, data=rows, step=step)


class _MLflow(_Tracker):
    name = "mlflow"

    def __init__(self, run_name: str, run_path: Path, config: dict):
        from accelerate.tracking import MLflowTracker

        super().__init__(MLflowTracker(experiment_name="tempflow", run_name=run_name), config)

    def log_image(self, name, path, step):
        self.tracker.log_artifact(str(path), artifact_path="grids")

    def log_table(self, name, columns, rows, step):
        import mlflow

        mlflow.log_dict({"columns": columns, "data": rows, "iteration": step},
                        name.replace("/", "_") + ".json")


class _SwanLab(_Tracker):
    """SwanLab: ``SWANLAB_MODE=offline`` (or ``local``) writes the run to RUN/swanlog/ (unless
    SWANLAB_LOG_DIR is set) for a later ``swanlab sync``; online needs ``swanlab login``."""

    name = "swanlab"

    def __init__(self, run_name: str, run_path: Path, config: dict):
        from accelerate.tracking import SwanLabTracker

        kwargs = {"experiment_name": run_name}
        if not (os.environ.get("SWANLAB_LOG_DIR") or os.environ.get("SWANLAB_LOGDIR")):
            kwargs["logdir"] = str(run_path / "swanlog")
        super().__init__(SwanLabTracker(os.environ.get("SWANLAB_PROJECT", "tempflow"), **kwargs),
                         config)

    def store_config(self, config):
        import swanlab

        # accelerate passes wandb's allow_val_change=True, which SwanLab would store as a key
        swanlab.config.update(config)

    def log_table(self, name, columns, rows, step):
        import swanlab

        self.tracker.log({name: swanlab.Text(table_markdown(columns, rows))}, step=step)


class _Trackio(_Tracker):
    """trackio: local-first, one SQLite database per project in TRACKIO_DIR (default
    ~/.cache/huggingface/trackio), shown by ``trackio show``."""

    name = "trackio"

    def __init__(self, run_name: str, run_path: Path, config: dict):
        from accelerate.tracking import TrackioTracker

        super().__init__(TrackioTracker(os.environ.get("TRACKIO_PROJECT", "tempflow"), name=run_name),
                         config)

    def store_config(self, config):
        import trackio

        trackio.config.update(config)  # without accelerate's allow_val_change=True as a key

    def log_image(self, name, path, step):
        import trackio

        self.tracker.log({name: trackio.Image(str(path))}, step=step)

    def log_table(self, name, columns, rows, step):
        import trackio

        self.tracker.log({name: trackio.Table(columns=columns, data=rows)}, step=step)


_CLASSES = {c.name: c for c in (_WandB, _MLflow, _SwanLab, _Trackio)}


class Trackers:
    """The external trackers of ``run.report_to`` (TensorBoard is the run's own writer).

    Opening one that fails (not logged in, no tracking server, ...) is a UserError; a tracker
    that fails later is reported once on stderr and dropped, so training goes on."""

    def __init__(self, trackers: list[_Tracker]):
        self.trackers = trackers

    @classmethod
    def open(cls, cfg, run_path: str | Path) -> "Trackers":
        names = [n for n in cfg.run.report_to if n != "tensorboard"]
        require_installed(names)
        run_path = Path(run_path)
        config = flat_config(cfg) if names else {}
        opened = []
        for name in names:
            try:
                opened.append(_CLASSES[name](run_path.resolve().name, run_path, config))
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001 (any failure of a third-party start-up)
                for t in opened:
                    t.finish()
                raise UserError(f"run.report_to: {name} could not start ({type(e).__name__}: "
                                f"{' '.join(str(e).split())[:300]}); fix its set-up or drop "
                                f"{name!r} from run.report_to") from None
        return cls(opened)

    def _each(self, what: str, *args) -> None:
        for t in list(self.trackers):
            try:
                getattr(t, what)(*args)
            except Exception as e:  # noqa: BLE001
                print(f"tempflow: warning: {t.name} failed ({type(e).__name__}: "
                      f"{' '.join(str(e).split())[:200]}); it gets no more records of this run",
                      file=sys.stderr)
                self.trackers.remove(t)
                if what != "finish":
                    try:
                        t.finish()  # close its tracker run rather than leave it open
                    except Exception:  # noqa: BLE001
                        pass

    def log(self, record: dict) -> None:
        values = scalars(record)
        if values:
            self._each("log", values, int(record["iteration"]))

    def log_image(self, name: str, path: str | Path, step: int) -> None:
        self._each("log_image", name, Path(path), step)

    def log_table(self, name: str, columns: list[str], rows: list[list], step: int) -> None:
        self._each("log_table", name, columns, rows, step)

    def finish(self) -> None:
        self._each("finish")
        self.trackers = []
