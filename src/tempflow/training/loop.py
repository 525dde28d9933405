"""`tempflow train`: the iteration loop around :class:`Trainer` with evaluation, grids and saving."""

from __future__ import annotations

import time

import torch
import yaml
from tqdm.auto import tqdm

from tempflow.config import TrainConfig, config_to_dict
from tempflow.training.distributed import Dist
from tempflow.training.run_dir import RunDir
from tempflow.training.trainer import Trainer

EVAL_GRID_PROMPTS = 8  # fixed evaluation prompts shown in the grids


@torch.no_grad()
def evaluate(trainer: Trainer, it: int, run: RunDir) -> dict:
    """Held-out evaluation with the EMA weights: deterministic ODE sampling.

    Shapes prompt lists get the verifier's GenEval-style pass rate per category; any prompt
    list gets the configured reward's mean. Writes a grid of the first evaluation prompts.
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
    n = min(EVAL_GRID_PROMPTS, len(trainer.eval_set.prompts)) * cfg.run.eval_images_per_prompt
    save_grid(res.images[:n], run.path / "grids" / f"eval_{it:05d}.png",
              nrow=cfg.run.eval_images_per_prompt * 2, prompts=res.prompts[:n])
    return record


def train(cfg: TrainConfig, progress: bool = True) -> RunDir:
    """Run training as configured; returns the run directory."""
    dist = Dist()
    trainer = Trainer(cfg, dist)
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    run = RunDir(cfg.run.out, text, overwrite=cfg.run.overwrite, main=dist.is_main)

    def maybe_eval(it: int) -> None:
        if dist.is_main:
            run.log(evaluate(trainer, it, run))
            run.plot_rewards()
        dist.barrier()

    if cfg.run.eval_every > 0:
        maybe_eval(0)
    bar = tqdm(range(cfg.train.iterations), desc="train", unit="it", disable=not (progress and dist.is_main))
    for it in bar:
        t0 = time.perf_counter()
        record = trainer.iteration(it)
        record["time/iteration"] = time.perf_counter() - t0
        run.log(record)
        bar.set_postfix(reward=f"{record['reward/mean']:.3f}", kl=f"{record.get('train/kl', 0.0):.2e}",
                        s_it=f"{record['time/iteration']:.1f}")
        done = it + 1
        if cfg.run.eval_every > 0 and (done % cfg.run.eval_every == 0 or done == cfg.train.iterations):
            maybe_eval(done)
        elif dist.is_main and done % 5 == 0:
            run.plot_rewards()
        if dist.is_main and cfg.run.log_images_every > 0 and done % cfg.run.log_images_every == 0:
            from tempflow.utils.images import save_grid
            images, prompts, _ = trainer.last_samples  # the iteration's first samples
            save_grid(images, run.path / "grids" / f"train_{done:05d}.png", nrow=4, prompts=prompts)
        if dist.is_main and cfg.model.lora is not None and (
                done % cfg.run.save_every == 0 or done == cfg.train.iterations):
            with trainer.ema.applied():
                trainer.model.save_lora(run.path / "lora")
    if dist.is_main:
        run.plot_rewards()
    run.close()
    dist.close()
    return run
