"""Where a training iteration's time goes: TempFlow-GRPO vs Flow-GRPO, shared vs naive training.

    python benchmarks/throughput.py [--iterations 3] [--warmup 1] [--variants ...] [--set key=value ...]

Each variant runs in its own process (so its peak memory is its own): ``--warmup`` iterations,
then ``--iterations`` measured ones of :class:`tempflow.training.trainer.Trainer` built from a
preset with :func:`tempflow.config.load_config`. Per iteration it reports the trainer's phase
times (sampling, decode and reward, which run in a worker thread while the next chunk samples,
the main thread's wait for them, advantages, training) with the training phase split into
policy forward with gradient, forward without gradient (CFG's detached unconditional half and
the KL's reference policy), backward, optimiser (AdamW and EMA; gradient clip excluded) and
the rest; the cost of logging a record (metrics.jsonl + TensorBoard, and the
reward plot amortised over the 5 iterations between plots); model evaluations (a CFG call
counts 2); samples per second; peak memory (RSS on CPU, ``torch.cuda.max_memory_allocated`` on
GPU); and the share of wall time spent inside the model's forward and backward passes.

Variants: the two presets, plus TempFlow-GRPO trained naively (every branch transition its own
row: K policy forwards per start state instead of one, :meth:`Transitions.per_branch`) and
both again with every trained step a branch point ("-all", the authors' layout).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
try:
    import tempflow  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))

from tempflow.training.trainer import Trainer  # noqa: E402
from tempflow.utils.child_process import emit_result, run_child  # noqa: E402

# name: (preset, overrides, naive per-branch training)
VARIANTS = {
    "flowgrpo": ("configs/shapes-flowgrpo.yaml", [], False),
    "tempflow": ("configs/shapes-tempflow.yaml", ["algorithm.branch_points=3"], False),  # 3 random branch points
    "tempflow-naive": ("configs/shapes-tempflow.yaml", ["algorithm.branch_points=3"], True),
    "tempflow-all": ("configs/shapes-tempflow.yaml", ["algorithm.branch_points=all"], False),  # the preset's layout
    "tempflow-all-naive": ("configs/shapes-tempflow.yaml", ["algorithm.branch_points=all"], True),
}


class Probe:
    """Wall time inside the transformer's forward (with gradient; without gradient during the
    training phase: CFG's unconditional half and the reference policy; without gradient
    elsewhere: sampling), inside backward, and inside optimiser + EMA steps."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.t = defaultdict(float)
        self.in_train = False
        self._start: list[tuple[float, str]] = []

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def attach(self, module: torch.nn.Module) -> None:
        def pre(mod, args):
            kind = "forward_grad" if torch.is_grad_enabled() else (
                "forward_train_nograd" if self.in_train else "forward_nograd")
            self._start.append((self._now(), kind))

        def post(mod, args, out):
            t0, kind = self._start.pop()
            self.t[kind] += self._now() - t0

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    def timed(self, fn, key: str):
        def wrapper(*a, **kw):
            t0 = self._now()
            try:
                return fn(*a, **kw)
            finally:
                self.t[key] += self._now() - t0
        return wrapper

    @contextmanager
    def backward(self):
        """Time every Tensor.backward call while active."""
        original = torch.Tensor.backward
        torch.Tensor.backward = self.timed(original, "backward")
        try:
            yield
        finally:
            torch.Tensor.backward = original


class BenchTrainer(Trainer):
    """The trainer with a probe on its training phase; ``naive`` trains each branch
    transition as its own row (K forward + backward passes per start state instead of one)."""

    naive = False
    probe: Probe

    def _train(self, batch, keys, it):
        if self.naive:
            k = batch.samples.shape[1]
            batch = batch.per_branch()
            keys = keys.repeat_interleave(k) * k + torch.arange(k).repeat(len(keys))  # distinct row ids
        self.probe.in_train = True
        try:
            return super()._train(batch, keys, it)
        finally:
            self.probe.in_train = False


def peak_memory_mb(cuda: bool) -> float:
    if cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(name: str, iterations: int, warmup: int, extra: list[str]) -> dict:
    """Run one variant in this process; the mean of the measured iterations' figures."""
    from tempflow.config import load_config
    from tempflow.training.run_dir import RunDir

    preset, overrides, naive = VARIANTS[name]
    tmp = tempfile.mkdtemp(prefix="tempflow-throughput-")
    cfg = load_config(ROOT / preset, [*overrides, *extra, f"run.out={tmp}/run",
                                      f"train.iterations={iterations + warmup}"])
    trainer = BenchTrainer(cfg)
    cuda = trainer.model.device.type == "cuda"
    probe = trainer.probe = Probe(cuda)
    trainer.naive = naive
    probe.attach(trainer.model.transformer)
    trainer.optimizer.step = probe.timed(trainer.optimizer.step, "optimizer")
    trainer.ema.step = probe.timed(trainer.ema.step, "optimizer")
    run = RunDir(cfg.run.out)
    run.start(cfg)
    rows = []
    with probe.backward():
        for it in range(iterations + warmup):
            probe.t.clear()
            t0 = time.perf_counter()
            record = trainer.iteration(it)
            wall = time.perf_counter() - t0
            t1 = time.perf_counter()
            run.log(record)
            log_s = time.perf_counter() - t1
            t1 = time.perf_counter()
            run.plot_rewards()
            log_s += (time.perf_counter() - t1) / 5  # the training loop plots every 5 iterations
            if it >= warmup:
                rows.append({**{k: v for k, v in record.items() if k.startswith(("time/", "count/"))},
                             **{f"probe/{k}": v for k, v in probe.t.items()},
                             "wall": wall + log_s, "time/logging": log_s})
    run.close()
    mean = {k: sum(r.get(k, 0.0) for r in rows) / len(rows) for k in rows[0]}
    model_s = sum(mean.get(f"probe/{k}", 0.0) for k in ("forward_grad", "forward_train_nograd", "forward_nograd", "backward"))
    return {"variant": name, **mean, "samples_per_s": mean["count/decodes"] / mean["wall"],
            "model_share": model_s / mean["wall"], "peak_mb": peak_memory_mb(cuda),
            "device": str(trainer.model.device), "threads": torch.get_num_threads()}


COLUMNS = [  # (header, key, format)
    ("s/iteration", "wall", "{:.2f}"), ("sample", "time/sample", "{:.2f}"),
    ("decode*", "time/decode", "{:.3f}"), ("reward*", "time/reward", "{:.3f}"),
    ("score wait", "time/score_wait", "{:.3f}"), ("advantages", "time/advantages", "{:.3f}"),
    ("train", "time/train", "{:.2f}"), ("train fwd", "probe/forward_grad", "{:.2f}"),
    ("train fwd no-grad", "probe/forward_train_nograd", "{:.2f}"), ("backward", "probe/backward", "{:.2f}"),
    ("optimiser", "probe/optimizer", "{:.3f}"), ("logging", "time/logging", "{:.3f}"),
    ("model evals", "count/nfe", "{:.0f}"), ("grad evals", "count/nfe_grad", "{:.0f}"),
    ("samples/s", "samples_per_s", "{:.1f}"), ("peak MiB", "peak_mb", "{:.0f}"),
    ("in model fwd+bwd", "model_share", "{:.0%}"),
]


def table(results: list[dict]) -> str:
    """Markdown table, one row per variant (seconds per iteration unless named otherwise)."""
    head = "| variant | " + " | ".join(h for h, _, _ in COLUMNS) + " |"
    sep = "|---|" + "---:|" * len(COLUMNS)
    rows = ["| " + r["variant"] + " | " + " | ".join(f.format(r.get(k, 0.0)) for _, k, f in COLUMNS) + " |"
            for r in results]
    return "\n".join([head, sep, *rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--iterations", type=int, default=3, help="measured iterations per variant")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured iterations first")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides for every variant (e.g. model.name=DIR sampling.steps=6)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process: one variant
    args = ap.parse_args(argv)
    if args.one:
        emit_result(measure(args.one, args.iterations, args.warmup, args.overrides))
        return 0
    results = []
    for name in args.variants:
        cmd = [sys.executable, __file__, "--one", name, "--iterations", str(args.iterations),
               "--warmup", str(args.warmup), "--set", *args.overrides]
        result = run_child(cmd, {**os.environ, "TQDM_DISABLE": "1"}, name)
        if result is None:
            return 1
        results.append(result)
        print(f"{name}: {results[-1]['wall']:.2f} s/iteration", file=sys.stderr)
    r0 = results[0]
    print(f"device {r0['device']}, {r0['threads']} threads, {args.iterations} measured iterations "
          f"after {args.warmup} warm-up; seconds per iteration; * decode and reward run in a "
          f"worker thread while the next chunk samples")
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
