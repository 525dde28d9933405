"""The run directory: resolved config, metrics.jsonl, TensorBoard events, grids, reward curve."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tempflow.errors import UserError


class RunDir:
    """Files of one training run under ``path``.

    config.yaml (resolved), metrics.jsonl (one JSON object per iteration / evaluation),
    tb/ (TensorBoard), grids/ (images of fixed evaluation prompts), reward_curve.png,
    lora/ (final LoRA, diffusers format).
    """

    def __init__(self, path: str | Path, config_text: str, overwrite: bool = False, main: bool = True):
        self.path = Path(path)
        self.main = main
        cfg_file = self.path / "config.yaml"
        if main:
            if cfg_file.is_file() and not overwrite and cfg_file.read_text() != config_text:
                raise UserError(f"run folder {str(self.path)!r} holds a run with another config "
                                f"(set run.overwrite=true to replace it, or choose another run.out)")
            try:
                (self.path / "grids").mkdir(parents=True, exist_ok=True)
                probe = self.path / ".write_test"
                probe.write_text("")
                probe.unlink()
            except OSError as e:
                raise UserError(f"run folder {str(self.path)!r} is not writable ({e.strerror}); "
                                f"choose another run.out") from None
            cfg_file.write_text(config_text)
            (self.path / "metrics.jsonl").write_text("")
        self._tb = None
        self.history: list[dict] = []

    @property
    def tb(self):
        if self._tb is None and self.main:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(self.path / "tb"))
        return self._tb

    def log(self, record: dict) -> None:
        """Append a record (must hold 'iteration') to metrics.jsonl and TensorBoard scalars."""
        self.history.append(record)
        if not self.main:
            return
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        step = record["iteration"]
        for k, v in record.items():
            if k != "iteration" and isinstance(v, (int, float)) and math.isfinite(v):
                self.tb.add_scalar(k.replace(".", "/"), v, step)
        self.tb.flush()

    def plot_rewards(self) -> None:
        """reward_curve.png: training reward per iteration and held-out pass rate per evaluation."""
        if not self.main:
            return
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [(r["iteration"], r["reward/mean"]) for r in self.history if "reward/mean" in r]
        evals = [(r["iteration"], r["eval/pass_rate"]) for r in self.history if "eval/pass_rate" in r]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        if train:
            ax.plot(*zip(*train), label="train reward (mean)", color="tab:blue", alpha=0.7)
        if evals:
            ax.plot(*zip(*evals), "o-", label="held-out pass rate (ODE)", color="tab:red")
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
