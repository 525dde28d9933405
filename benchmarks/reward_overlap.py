"""Seconds per training iteration with scoring in a worker thread (overlapping the next
chunk's sampling) against scoring after sampling, with a deliberately slow reward.

    OMP_NUM_THREADS=2 python benchmarks/reward_overlap.py --iterations 3 --delay 0.02

The reward is the shapes verifier plus a sleep of ``delay`` seconds per image: it stands for a
scorer whose time is spent outside this process's CPU (a reward server, a GPU model), which
is the case the overlap is for. ``--remote`` sends the images through a reward server on
127.0.0.1 in this process instead. The model is the shipped shapes base with the preset
configs/shapes-tempflow.yaml (4 prompts per iteration, so ``--chunks 4`` is one per prompt).
The modes take turns, iteration by iteration: one warm-up, then ``--iterations`` timed
ones (the same iterations in every mode); rewards and advantages are checked to be
identical between the two chunked modes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

try:
    import tempflow  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tempflow.config import load_config
from tempflow.rewards import REGISTRY, build_reward, register

ROOT = Path(__file__).resolve().parents[1]


@register("bench_slow_shapes")
def slow_shapes(delay: float = 0.02):
    """The shapes verifier, then ``delay`` seconds of sleep per image."""
    inner = REGISTRY["shapes"]()

    def reward(images, prompts, metadata=None):
        out = inner(images, prompts)
        time.sleep(delay * images.shape[0])
        return out
    return reward


def make_trainer(chunks: int, use_async: bool, reward: dict, seed: int):
    """A trainer on the preset with this scoring mode."""
    from tempflow.training.trainer import Trainer

    cfg = load_config(ROOT / "configs/shapes-tempflow.yaml", [
        f"reward.name={reward['name']}", f"reward.kwargs={reward['kwargs']}",
        f"reward.score_chunks={chunks}", f"reward.async_scoring={str(use_async).lower()}",
        f"train.seed={seed}", "run.out=/tmp/tempflow-bench-overlap"])
    return Trainer(cfg)


def run_modes(modes: list[tuple[str, int, bool]], reward: dict, iterations: int, seed: int) -> dict:
    """Per mode: mean seconds per iteration and per phase over ``iterations`` after a warm-up.
    The modes take turns iteration by iteration, so a load change on the machine hits them alike."""
    trainers = {name: make_trainer(c, a, reward, seed) for name, c, a in modes}
    walls = {name: [] for name in trainers}
    records = {name: [] for name in trainers}
    for it in range(iterations + 1):
        for name, trainer in trainers.items():
            t0 = time.perf_counter()
            rec = trainer.iteration(it)
            if it > 0:  # iteration 0 is the warm-up
                walls[name].append(time.perf_counter() - t0)
                records[name].append(rec)
    out = {}
    for name, trainer in trainers.items():
        mean = lambda k: statistics.mean(r.get(k, 0.0) for r in records[name])  # noqa: E731
        out[name] = {"s/it": statistics.mean(walls[name]), "sample": mean("time/sample"),
                     "decode": mean("time/decode"), "reward": mean("time/reward"),
                     "wait": mean("time/score_wait"), "train": mean("time/train"),
                     "rewards": trainer.last_batch["rewards"].clone(),
                     "adv": trainer.last_batch["advantages"].clone()}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--delay", type=float, default=0.02, help="reward seconds per image (sleep)")
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--remote", action="store_true", help="score through a server on 127.0.0.1")
    args = ap.parse_args()
    reward = {"name": "bench_slow_shapes", "kwargs": {"delay": args.delay}}
    server = None
    if args.remote:
        from tempflow.rewards.server import make_server

        server = make_server(build_reward(**{"name": reward["name"]}, **reward["kwargs"]), reward["name"])
        threading.Thread(target=server.serve_forever, daemon=True).start()
        reward = {"name": "remote", "kwargs": {"url": f"http://127.0.0.1:{server.server_address[1]}"}}
    print(f"torch threads {torch.get_num_threads()}, reward sleep {args.delay} s/image, "
          f"{'remote' if args.remote else 'in-process'} reward, {args.iterations} timed iterations")
    modes = [("1 chunk, sync (default)", 1, False), (f"{args.chunks} chunks, sync", args.chunks, False),
             (f"{args.chunks} chunks, async", args.chunks, True)]
    res = run_modes(modes, reward, args.iterations, args.seed)
    print(f"{'mode':<26}{'s/it':>8}{'sample':>9}{'decode':>9}{'reward':>9}{'wait':>9}{'train':>9}")
    for name, r in res.items():
        print(f"{name:<26}{r['s/it']:>8.2f}{r['sample']:>9.2f}{r['decode']:>9.2f}{r['reward']:>9.2f}"
              f"{r['wait']:>9.2f}{r['train']:>9.2f}")
    sync, asyn = res[modes[1][0]], res[modes[2][0]]
    same = torch.equal(sync["rewards"], asyn["rewards"]) and torch.equal(sync["adv"], asyn["adv"])
    print(f"async vs sync ({args.chunks} chunks): {sync['s/it'] - asyn['s/it']:.2f} s/it saved "
          f"({1 - asyn['s/it'] / sync['s/it']:.0%}); identical rewards and advantages: {same}")
    if server is not None:
        server.shutdown()
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
