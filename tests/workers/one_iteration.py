"""Run one training iteration and save the gathered advantages and the updated weights.

    python tests/workers/one_iteration.py CONFIG.yaml OUT.pt      (1 process, or under accelerate launch)
"""

import sys

import torch

from tempflow.config import load_config
from tempflow.training.distributed import Dist
from tempflow.training.trainer import Trainer

cfg = load_config(sys.argv[1], allow_imports=["toy_rewards", "resume_rewards"])  # the tests' own rewards
dist = Dist()
trainer = Trainer(cfg, dist)
initial = [p.detach().clone() for p in trainer.model.trainable_parameters()]
trainer.iteration(0)
if dist.is_main:
    torch.save({"advantages": trainer.last_batch["advantages"],
                "rewards": trainer.last_batch["rewards"],
                "groups": trainer.last_batch["groups"],
                "params": [p.detach().clone() for p in trainer.model.trainable_parameters()],
                # the last minibatch's gradient, summed over processes (Adam's step is
                # scale-free, so the gradient is what shows the loss normalisation)
                "grads": [p.grad.detach().clone() for p in trainer.model.trainable_parameters()],
                "initial": initial, "world": dist.world}, sys.argv[2])
dist.close()
