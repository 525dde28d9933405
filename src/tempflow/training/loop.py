"""`tempflow train`: the iteration loop around :class:`Trainer` with evaluation, grids,
checkpoints, resume, stop signals and the long-run health guards."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tempflow.config import TrainConfig
from tempflow.errors import UserError
from tempflow.training import checkpoint as ckpt_io
from tempflow.training import sharded
from tempflow.training.distributed import Dist
from tempflow.training.resume import config_record, find_resume_checkpoint, set_aside_later
from tempflow.training.run_dir import RunDir, check_new_run, ensure_writable
from tempflow.training.trainer import Trainer
from tempflow.utils.memory import peak_rss_mb, rss_mb

EVAL_GRID_PROMPTS = 8  # fixed evaluation prompts shown in the grids, one row each
EVAL_GRID_IMAGES = 8  # images per row


def grid_prompts(categories: list[str], n: int = EVAL_GRID_PROMPTS) -> list[int]:
    """Indices of the prompts shown in evaluation grids: round-robin over the categories in
    order of first appearance (the first prompt of each, then the second, ...), n at most."""
    by: dict[str, list[int]] = {}
    for i, c in enumerate(categories):
        by.setdefault(c, []).append(i)
    out: list[int] = []
    for k in range(max((len(v) for v in by.values()), default=0)):
        out += [v[k] for v in by.values() if k < len(v)]
    return out[:n]




@torch.no_grad()
def evaluate(trainer: Trainer, it: int, run: RunDir, write: bool = True) -> dict:
    """Held-out evaluation with the EMA weights: deterministic ODE sampling.

    Shapes prompt lists get the verifier's GenEval-style pass rate per category; any prompt
    list gets the configured reward's mean. Writes a grid of the first evaluation prompts
    (``write``; with sharded weights every process samples, the main one writes).
    """
    from tempflow.evaluation import evaluate_prompts
    from tempflow.utils.images import save_grid

    cfg = trainer.cfg
    t0 = time.perf_counter()
    with trainer.ema.applied():
        res = evaluate_prompts(trainer.model, trainer.eval_set, trainer.reward,
                               images_per_prompt=cfg.run.eval_images_per_prompt,
                               steps=cfg.sampling.eval_steps, shift=cfg.sampling.shift,
                               guidance_scale=cfg.sampling.guidance_scale, seed=cfg.train.seed)
    record = {"iteration": it, **res.summary(), "time/eval": time.perf_counter() - t0}
    if not write:
        return record
    if res.passed is not None:
        record.update(_paired_with_first(res, it, run))
    per = cfg.run.eval_images_per_prompt
    shown = min(per, EVAL_GRID_IMAGES)  # the first images of each of the first prompts, a row each
    idx = [p * per + k for p in grid_prompts(trainer.eval_set.categories) for k in range(shown)]
    grid = save_grid(res.images[idx], run.path / "grids" / f"eval_{it:05d}.png",
                     nrow=shown, prompts=[res.prompts[i] for i in idx])
    run.log_image("grids/eval", grid, it)
    return record


def _paired_with_first(res, it: int, run: RunDir) -> dict:
    """Keep this evaluation's per-image results (evals/eval_<it>.json) and, after the first,
    its paired change against the run's first evaluation (same prompts, same noise):
    eval/delta/<metric> with its 95% bootstrap interval (eval/delta/<metric>_lo, _hi)."""
    import json

    from tempflow.paired import compare

    folder = run.path / "evals"
    folder.mkdir(exist_ok=True)
    data = res.to_json({"iteration": it})
    (folder / f"eval_{it:05d}.json").write_text(json.dumps(data) + "\n")
    firsts = sorted(folder.glob("eval_*.json"))
    if not firsts or firsts[0].name == f"eval_{it:05d}.json":
        return {}
    first = json.loads(firsts[0].read_text())
    out = {}
    for metric in ("pass_rate", "score"):
        d = compare(first, data, metric)["overall"]
        out.update({f"eval/delta/{metric}": d.delta, f"eval/delta/{metric}_lo": d.lo,
                    f"eval/delta/{metric}_hi": d.hi})
    return out


# ---------------------------------------------------------------------------- checkpoints

def _gather_objects(dist: Dist, obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every process."""
    if dist.world == 1:
        return [obj]
    import torch.distributed as td
    out = [None] * dist.world
    td.all_gather_object(out, obj)
    return out


def save(trainer: Trainer, run: RunDir, dist: Dist, done: int, streak: int):
    """Full-state checkpoint after ``done`` iterations (and the LoRA export, EMA weights).
    Every process contributes its random generator states; the main one writes."""
    cfg = trainer.cfg
    rngs = _gather_objects(dist, ckpt_io.rng_state())
    root, written = run.path / ckpt_io.FOLDER, None
    if trainer.engine.sharded:  # every process writes its shards into the main one's temp folder
        tmp = ckpt_io.temp_folder(root, done, _gather_objects(dist, os.getpid())[0])
        if dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        written = sharded.save(trainer, tmp / sharded.SHARDS)
        sd = {"ema_steps": trainer.ema.steps, "reward_failure_streak": trainer.failures.streak}
    else:
        sd = trainer.state_dict()
    path = None
    if dist.is_main:
        tensors = None if written is not None else {**{f"params.{k}": v for k, v in sd["params"].items()},
                                                    **{f"ema.{k}": v for k, v in sd["ema"].items()}}
        state = {"optimizer": sd.get("optimizer", {}), "ema_steps": sd["ema_steps"], "rng": rngs,
                 "nonfinite_streak": streak, "reward_failure_streak": sd["reward_failure_streak"],
                 "scheme": trainer.scheme.state_dict()}
        meta = {"metrics_bytes": run.metrics_bytes(), "world": dist.world, "engine": trainer.engine.name,
                **config_record(cfg)}
        path = ckpt_io.save_checkpoint(root, done, tensors, state, meta, cfg.run.keep_checkpoints, written)
    export(trainer, run, dist)
    return path


def export(trainer: Trainer, run: RunDir, dist: Dist) -> None:
    """lora/ (or model/ for a full fine-tune) from the current EMA weights; every process takes
    part (a sharded run gathers its LoRA), the main one writes."""
    cfg = trainer.cfg
    lora = sharded.full_trainable(trainer) if trainer.engine.sharded and cfg.model.lora is not None else None
    if dist.is_main:
        if cfg.model.lora is not None:
            _export_lora(trainer, run, lora)
        elif not trainer.engine.sharded and hasattr(trainer.model, "save_pretrained"):
            _export_model(trainer, run)
    dist.barrier()


def _replace_folder_files(tmp: Path, final: Path) -> None:
    """Move each file of ``tmp`` over its namesake in ``final`` (atomic per file), then drop tmp."""
    final.mkdir(exist_ok=True)
    for f in tmp.iterdir():
        os.replace(f, final / f.name)
    tmp.rmdir()


def _export_model(trainer: Trainer, run: RunDir) -> None:
    """model/ (EMA weights of a full fine-tune of the shapes model, in the format ``--model``
    reads: config.json and model.safetensors), written aside and renamed as lora/ is."""
    tmp = run.path / ".model-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with trainer.ema.applied():
        trainer.model.save_pretrained(tmp)
    _replace_folder_files(tmp, run.path / "model")


def _export_lora(trainer: Trainer, run: RunDir, full: dict | None = None) -> None:
    """lora/ (EMA weights, diffusers format): each file written aside, then renamed over the
    old one (atomic); other files in lora/ stay. ``full``: the gathered weights of a sharded run."""
    tmp, final = run.path / ".lora-tmp", run.path / "lora"
    shutil.rmtree(tmp, ignore_errors=True)
    if full is not None:
        trainer.engine.lora_template.write(full, tmp)
    else:
        with trainer.ema.applied():
            trainer.model.save_lora(tmp)
    _replace_folder_files(tmp, final)


def restore(trainer: Trainer, run: RunDir, dist: Dist, found: ckpt_io.Checkpoint) -> tuple[int, int, object]:
    """Load checkpoint ``found`` (see :func:`find_resume_checkpoint`) into the trainer and cut
    the run's logs back to it: (iterations done, non-finite streak, its folder)."""
    tensors, state = ckpt_io.load_checkpoint(found)
    engine = found.meta.get("engine", "single" if found.meta.get("world", 1) == 1 else "ddp")
    if "deepspeed" in (engine, trainer.engine.name):
        raise UserError(f"checkpoint {found.path}: runs under DeepSpeed cannot be resumed (its partitioned "
                        f"optimizer state is not saved); use DDP or FSDP2 for runs that must resume, "
                        f"or start a new run from the exported lora/")
    if trainer.engine.sharded or engine in ("fsdp",):
        if engine != trainer.engine.name or found.meta.get("world") != dist.world:
            raise UserError(f"checkpoint {found.path} holds weights sharded over {found.meta.get('world')} "
                            f"processes by engine {engine}, and this run has {dist.world} under "
                            f"{trainer.engine.name}; resume with the launch config it was written with")
        sharded.load(trainer, found.path / sharded.SHARDS)
        trainer.ema.steps = int(state["ema_steps"])
        trainer.failures.streak = int(state.get("reward_failure_streak", 0))
        return _restored(trainer, run, dist, found, state)
    sd = {"params": {k[7:]: v for k, v in tensors.items() if k.startswith("params.")},
          "ema": {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")},
          "ema_steps": state["ema_steps"], "optimizer": state["optimizer"],
          "reward_failure_streak": state.get("reward_failure_streak", 0)}
    trainer.load_state_dict(sd, source=f"checkpoint {found.path}")
    return _restored(trainer, run, dist, found, state)


def _restored(trainer: Trainer, run: RunDir, dist: Dist, found, state: dict) -> tuple[int, int, object]:
    trainer.scheme.load_state_dict(state.get("scheme", {}))  # e.g. adaptive branch-point statistics
    rngs = state["rng"]
    if len(rngs) != dist.world and dist.is_main:
        ckpt_io.warn(f"checkpoint {found.path} was written by {len(rngs)} processes and this run has "
                     f"{dist.world}: results match an uninterrupted run only up to float rounding")
    ckpt_io.set_rng_state(rngs[min(dist.rank, len(rngs) - 1)])
    run.resume(found.meta["metrics_bytes"], found.iteration)
    run.write_config(trainer.cfg)
    return found.iteration, int(state["nonfinite_streak"]), found.path


def _nonfinite_error(cfg: TrainConfig, it: int, last) -> UserError:
    where = f"the newest checkpoint {last} is intact" if last else "no checkpoint was written yet"
    return UserError(f"{cfg.train.max_nonfinite} iterations in a row (up to iteration {it}) had a "
                     f"non-finite model output, loss or gradient; {where}: continue with a lower "
                     f"learning rate, `tempflow train --resume {cfg.run.out} --set train.lr={cfg.train.lr / 10:g}`, "
                     f"or check the model and reward")


# ---------------------------------------------------------------------------- the loop

class StopSignals:
    """Within the context, SIGINT / SIGTERM only set ``received`` (the signal number) so the loop
    can finish the iteration, save a checkpoint and exit; a second signal interrupts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            self.__exit__()
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}


def train(cfg: TrainConfig, progress: bool = True, resume: bool = False,
          from_checkpoint: int | None = None) -> RunDir:
    """Run training as configured (``resume``: continue the run in cfg.run.out from its newest
    valid checkpoint, or from checkpoint ``from_checkpoint``, with the later ones set aside);
    returns the run directory. ``run.stopped`` says why it ended early."""
    dist = Dist()
    run = RunDir(cfg.run.out, main=dist.is_main)
    created, found = False, None
    if resume:  # nothing is changed before these checks pass
        found = find_resume_checkpoint(run.path, cfg, report=dist.is_main, iteration=from_checkpoint)
    elif dist.is_main:
        check_new_run(run.path, cfg)
    if dist.is_main:
        created = ensure_writable(run.path)
    try:
        trainer = Trainer(cfg, dist)
    except BaseException:
        if created and not any(run.path.iterdir()):
            run.path.rmdir()  # leave no empty folder behind a failed start
        raise
    if resume and dist.is_main:
        set_aside_later(run.path, found.iteration)
    dist.barrier()
    start, streak, last = restore(trainer, run, dist, found) if resume else (0, 0, None)
    if resume:  # a run killed between its checkpoint and the export left lora/ one save behind
        export(trainer, run, dist)
    if not resume:
        run.start(cfg)
    run.stopped = None
    if cfg.run.eval_every > 0 and start == 0:
        _maybe_eval(trainer, run, dist, 0)
    bar = tqdm(range(start, cfg.train.iterations), desc="train", unit="it", initial=start,
               total=cfg.train.iterations, disable=not (progress and dist.is_main))
    with StopSignals() as signals:
        for it in bar:
            t0 = time.perf_counter()
            record = trainer.iteration(it)
            record["time/iteration"] = time.perf_counter() - t0
            record["sys/peak_rss_mb"] = peak_rss_mb()
            record["sys/rss_mb"] = rss_mb()
            record.update(trainer.engine.memory_record())  # every process's peak
            run.log(record)
            bar.set_postfix(reward=f"{record['reward/mean']:.3f}", kl=f"{record.get('train/kl', 0.0):.2e}",
                            s_it=f"{record['time/iteration']:.1f}")
            streak = streak + 1 if record["rollout/nonfinite"] or record["train/skipped_steps"] else 0
            if streak >= cfg.train.max_nonfinite:
                raise _nonfinite_error(cfg, it, last)
            done = it + 1
            _after_iteration(trainer, run, dist, done)
            kl_high = cfg.run.kl_stop is not None and record.get("train/kl", 0.0) > cfg.run.kl_stop
            # every process stops at the same iteration (signals and local KL are combined)
            flags = dist.sum(torch.tensor([float(signals.received is not None), float(kl_high)]))
            stop = "signal" if flags[0] > 0 else "kl" if flags[1] > 0 else None
            every = cfg.run.save_every
            if stop or done == cfg.train.iterations or (every > 0 and done % every == 0):
                last = save(trainer, run, dist, done, streak) or last
            if stop:
                run.stopped = (stop, done, signals.received or signal.SIGTERM)
                break
    if dist.is_main:
        run.plot_rewards()
    run.close()
    del trainer  # before leaving the process group (Dist.close)
    dist.close()
    return run


def _maybe_eval(trainer: Trainer, run: RunDir, dist: Dist, it: int) -> None:
    if trainer.engine.sharded:  # the forwards gather shards: every process samples
        record = evaluate(trainer, it, run, write=dist.is_main)
    if dist.is_main:
        run.log(record if trainer.engine.sharded else evaluate(trainer, it, run))
        run.plot_rewards()
    dist.barrier()


def _after_iteration(trainer: Trainer, run: RunDir, dist: Dist, done: int) -> None:
    """Evaluation, reward curve and training grid due after ``done`` iterations."""
    cfg = trainer.cfg
    if cfg.run.eval_every > 0 and (done % cfg.run.eval_every == 0 or done == cfg.train.iterations):
        _maybe_eval(trainer, run, dist, done)
    elif dist.is_main and done % 5 == 0:
        run.plot_rewards()
    if dist.is_main and cfg.run.log_images_every > 0 and done % cfg.run.log_images_every == 0:
        from tempflow.utils.images import save_grid
        images, prompts, _ = trainer.last_samples  # the iteration's first samples
        grid = save_grid(images, run.path / "grids" / f"train_{done:05d}.png", nrow=4, prompts=prompts)
        run.log_image("grids/train", grid, done)
