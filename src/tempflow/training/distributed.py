"""The few collective operations training needs, over accelerate (identity in one process)."""

from __future__ import annotations

import time

from torch import Tensor


class Dist:
    """rank / world / device, and sum and gather across processes.

    With more than one process (``accelerate launch``) the collectives go through
    :class:`accelerate.Accelerator`; in a single process they return their input.
    """

    def __init__(self, accelerator=None):
        if accelerator is None:
            import torch
            from accelerate import Accelerator
            # without a GPU, processes started by `accelerate launch` meet over gloo (MULTI_CPU;
            # the FSDP2 engine is set on top of it, training/engine.py)
            accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.acc = accelerator
        self.rank = accelerator.process_index
        self.world = accelerator.num_processes
        self.device = accelerator.device
        self.collective_s = 0.0  # seconds spent in sum / gather (the figures in docs/distributed.md)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, t: Tensor) -> Tensor:
        """Elementwise sum over processes."""
        if self.world == 1:
            return t
        t0 = time.perf_counter()
        out = self.acc.reduce(t.to(self.device).clone(), reduction="sum").to(t.device)
        self.collective_s += time.perf_counter() - t0
        return out

    def gather(self, t: Tensor) -> Tensor:
        """Concatenate along dim 0 in process order (same shape on every process)."""
        if self.world == 1:
            return t
        t0 = time.perf_counter()
        out = self.acc.gather(t.to(self.device).contiguous()).to(t.device)
        self.collective_s += time.perf_counter() - t0
        return out

    def barrier(self) -> None:
        if self.world > 1:
            self.acc.wait_for_everyone()

    def close(self) -> None:
        """Wait for every process, drop the accelerator's references to the prepared model and
        optimizer, then leave the process group. Callers drop their own references (the trainer)
        first: a wrapped model that outlives this holds the process group until interpreter
        shutdown, where gloo's threads can abort the process at exit."""
        if self.world > 1:
            import gc

            import torch.distributed as td
            self.barrier()
            self.acc.free_memory()
            gc.collect()
            if td.is_initialized():
                td.destroy_process_group()
