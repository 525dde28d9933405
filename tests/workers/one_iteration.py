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


def full(t):
    """The whole tensor (FSDP2 shards are gathered: every process must call this)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t.detach().clone()


initial = [full(p) for p in trainer.model.trainable_parameters()]
trainer.iteration(0)
params = [full(p) for p in trainer.model.trainable_parameters()]
# the last minibatch's gradient, summed over processes (Adam's step is scale-free, so the
# gradient is what shows the loss normalisation)
# (DeepSpeed steps inside its backward and keeps no .grad: None)
grads = None if trainer.engine.name == "deepspeed" else [full(p.grad) for p in trainer.model.trainable_parameters()]
if dist.is_main:
    torch.save({"advantages": trainer.last_batch["advantages"],
                "rewards": trainer.last_batch["rewards"],
                "groups": trainer.last_batch["groups"],
                "params": params, "grads": grads, "engine": trainer.engine.name,
                "initial": initial, "world": dist.world}, sys.argv[2])
del trainer  # the wrapped model must not outlive the process group (Dist.close)
dist.close()
