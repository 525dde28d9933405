"""The distributed engine a run trains under: the one `accelerate launch` asked for (DDP, FSDP2 or
DeepSpeed ZeRO), applied to the trainable denoiser through ``Accelerator.prepare``.

- one process: nothing is wrapped; the optimiser and the gradients are plain PyTorch (the
  results are bitwise those of a run without accelerate);
- DDP (``--multi_gpu`` or a MULTI_GPU / MULTI_CPU config): the denoiser is wrapped in
  DistributedDataParallel; gradients are averaged in buckets while the backward pass runs, and
  micro-batches before the last of a minibatch run under ``no_sync``;
- FSDP2 (``distributed_type: FSDP``, ``fsdp_version: 2``): ``fully_shard`` per transformer block
  (``fsdp_transformer_layer_cls_to_wrap``) and on the root; weights, gradients, optimiser state
  and the EMA shadow are DTensor shards; the frozen reference copy of full fine-tuning is
  sharded the same way; checkpoints are written shard by shard (torch.distributed.checkpoint);
- DeepSpeed ZeRO-2 / ZeRO-3 (``distributed_type: DEEPSPEED``): accelerate's plugin builds the
  DeepSpeed engine; DeepSpeed clips the gradients and steps the optimiser itself.

Every engine averages gradients over processes, so each process's loss is scaled by
``world * n_local / n_global``: the update is that of one process holding the whole batch.
Settings an engine cannot honour are refused by :func:`check_engine` before a model is loaded.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import torch

from tempflow.errors import UserError


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


@dataclass
class LaunchEngine:
    """What the launch asked for: name ('single', 'ddp', 'fsdp', 'deepspeed') and its settings."""

    name: str
    fsdp_version: int = 2
    zero_stage: int = 0
    deepspeed: dict = field(default_factory=dict)
    mixed_precision: str = "no"


def launch_engine(world: int) -> LaunchEngine:
    """The engine in this process's launch environment (set by ``accelerate launch``)."""
    mp = _env("ACCELERATE_MIXED_PRECISION", "no").lower()
    if _env("ACCELERATE_USE_DEEPSPEED").lower() == "true":
        ds = {"gradient_clipping": _env("ACCELERATE_GRADIENT_CLIPPING", "none"),
              "gradient_accumulation_steps": _env("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1"),
              "offload_param": _env("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "none")}
        stage = _env("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
        return LaunchEngine("deepspeed", zero_stage=int(stage) if stage.isdigit() else -1, deepspeed=ds,
                            mixed_precision=mp)
    if _env("ACCELERATE_USE_FSDP").lower() == "true":
        version = _env("FSDP_VERSION", "1")
        return LaunchEngine("fsdp", fsdp_version=int(version) if version.isdigit() else -1, mixed_precision=mp)
    return LaunchEngine("single" if world == 1 else "ddp", mixed_precision=mp)


def _conflict(engine: str, setting: str, why: str, fix: str) -> UserError:
    return UserError(f"launch config {engine} cannot run with {setting}: {why}; {fix}")


def check_engine(cfg, eng: LaunchEngine, cuda: bool) -> None:
    """UserError (one line naming the launch setting and the run setting) when the launch
    engine cannot train this config. Called before any model is loaded."""
    t = cfg.train
    if eng.name == "fsdp" and eng.fsdp_version != 2:
        raise _conflict(f"fsdp_version: {eng.fsdp_version}", "tempflow's trainer",
                        "tempflow shards with FSDP2 (fully_shard) only", "set fsdp_version: 2")
    if eng.name in ("fsdp", "deepspeed") and eng.mixed_precision != "no" and cfg.model.dtype != "float32":
        raise _conflict(f"mixed_precision: {eng.mixed_precision}", f"model.dtype={cfg.model.dtype}",
                        "the engine's mixed precision keeps float32 master weights and casts them itself",
                        "set model.dtype=float32 or mixed_precision: no")
    if eng.name != "deepspeed":
        return
    ds, stage = eng.deepspeed, eng.zero_stage
    if stage not in (2, 3):
        raise _conflict(f"deepspeed zero_stage: {stage}", "tempflow's trainer",
                        "only ZeRO-2 and ZeRO-3 are supported", "set zero_stage: 2 or 3")
    if not cuda:
        raise _conflict(f"deepspeed zero_stage: {stage}", "this machine (no CUDA GPU)",
                        "DeepSpeed's ZeRO optimisers need GPUs", "use the ddp or fsdp config here")
    clip = ds.get("gradient_clipping", "none")
    if clip.lower() in ("none", "") or abs(float(clip) - t.grad_clip) > 1e-12:
        raise _conflict(f"deepspeed gradient_clipping: {clip}", f"train.grad_clip={t.grad_clip}",
                        "DeepSpeed clips the gradients itself", f"set gradient_clipping: {t.grad_clip}")
    if ds.get("gradient_accumulation_steps", "1") not in ("1", "auto"):
        raise _conflict(f"deepspeed gradient_accumulation_steps: {ds['gradient_accumulation_steps']}",
                        f"train.grad_accumulation={t.grad_accumulation}",
                        "tempflow accumulates micro-batches itself",
                        "set gradient_accumulation_steps: 1 and use train.grad_accumulation")
    if t.grad_accumulation != 1:
        raise _conflict(f"deepspeed zero_stage: {stage}", f"train.grad_accumulation={t.grad_accumulation}",
                        "a DeepSpeed engine steps after every backward", "set train.grad_accumulation=1")
    if stage == 3 and t.ema_every > 0:
        raise _conflict("deepspeed zero_stage: 3", f"train.ema_every={t.ema_every}",
                        "ZeRO-3 partitions the weights outside the module, so no EMA shadow can follow them",
                        "set train.ema_every=0, or use ZeRO-2 or FSDP2 (configs/accelerate/fsdp.yaml)")
    if stage == 3 and cfg.model.lora is None and cfg.algorithm.beta > 0:
        raise _conflict("deepspeed zero_stage: 3", f"model.lora=null with algorithm.beta={cfg.algorithm.beta}",
                        "the frozen reference copy would be a whole unpartitioned model on every GPU",
                        "use FSDP2, which shards the reference too, or train a LoRA")


class Engine:
    """The launch engine applied to a model's denoiser and its optimiser."""

    def __init__(self, dist, cfg):
        self.dist, self.cfg = dist, cfg
        self.launch = launch_engine(dist.world)
        check_engine(cfg, self.launch, torch.cuda.is_available())
        self.name = self.launch.name if dist.world > 1 else "single"
        self.wrapper = None          # DDP / DeepSpeed module the grad forward goes through
        self.lora_template = None    # sharded LoRA runs: what the export writes (main process)

    @property
    def sharded(self) -> bool:
        """Weights are split over processes: every process must take part in every forward."""
        return self.name == "fsdp" or (self.name == "deepspeed" and self.launch.zero_stage == 3)

    @property
    def loss_scale(self) -> float:
        """Engines average gradients over processes; the loss is scaled so they sum."""
        return float(self.dist.world) if self.name != "single" else 1.0

    # ---------------------------------------------------------------- preparation
    def prepare(self, model, optimizer):
        """Hand the denoiser and its optimiser to accelerate; returns the optimiser to use."""
        if self.name == "single":
            return optimizer
        acc = self.dist.acc
        if self.name == "fsdp":
            return self._prepare_fsdp(model, optimizer)
        if self.name == "deepspeed":
            ds = acc.state.deepspeed_plugin.deepspeed_config
            ds["train_micro_batch_size_per_gpu"] = 1
            ds["train_batch_size"] = self.dist.world
        if self.name == "ddp":
            from accelerate.utils import DistributedDataParallelKwargs
            # frozen base weights are skipped; LoRA layers a block does not use are allowed
            acc.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
        self.wrapper, optimizer = acc.prepare(model.transformer, optimizer)
        return optimizer

    def _prepare_fsdp(self, model, optimizer):
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        acc = self.dist.acc
        if acc.distributed_type != DistributedType.FSDP:
            # accelerate keeps FSDP for GPUs; on CPU (gloo) the same FSDP2 plugin is set here
            acc.state.distributed_type = DistributedType.FSDP
            acc.state.fsdp_plugin = FullyShardedDataParallelPlugin()
        plugin = acc.state.fsdp_plugin
        if not plugin.transformer_cls_names_to_wrap:
            plugin.transformer_cls_names_to_wrap = sorted(self._block_classes(model.transformer))
        ref = getattr(model, "_reference_copy", None)
        if self.dist.is_main and getattr(model, "has_lora", False):
            from tempflow.training.sharded import LoraTemplate
            self.lora_template = LoraTemplate(model)
        model.transformer, optimizer = acc.prepare(model.transformer, optimizer)
        if ref is not None:  # full fine-tuning: the frozen reference is sharded like the policy
            self._shard_like(ref, plugin.transformer_cls_names_to_wrap)
        return optimizer

    @staticmethod
    def _block_classes(module) -> set[str]:
        """Class names of the repeated transformer blocks (module lists' children)."""
        names = set()
        for m in module.modules():
            if isinstance(m, torch.nn.ModuleList):
                names.update(type(c).__name__ for c in m)
        return names

    @staticmethod
    def _shard_like(module, class_names) -> None:
        from torch.distributed.fsdp import fully_shard

        for m in list(module.modules())[1:]:
            if type(m).__name__ in class_names:
                fully_shard(m)
        fully_shard(module)

    # ---------------------------------------------------------------- training step
    @contextlib.contextmanager
    def forward_scope(self, model):
        """Within the context the model's forwards go through the engine's wrapper (DDP and
        DeepSpeed need the forward that precedes a backward to pass through them)."""
        if self.wrapper is None:
            yield
            return
        raw, model.transformer = model.transformer, self.wrapper
        try:
            yield
        finally:
            model.transformer = raw

    def no_sync(self, sync: bool):
        """Context for one micro-batch's backward: gradients synchronised only when ``sync``."""
        if sync or self.name == "single":
            return contextlib.nullcontext()
        if self.name == "ddp":
            return self.wrapper.no_sync()
        if self.name == "fsdp":
            return _fsdp_sync(self.dist.acc, sync)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        if self.name == "deepspeed":
            self.dist.acc.backward(loss)   # DeepSpeed's backward, reduction and step
        else:
            loss.backward()

    def clip(self, params, max_norm: float) -> torch.Tensor:
        """Clip the synchronised gradients; the global norm (a plain tensor, same everywhere)."""
        if self.name == "deepspeed":
            norm = self.wrapper.get_global_grad_norm()
            return torch.tensor(float("nan") if norm is None else float(norm))
        if self.name == "fsdp":
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    # ---------------------------------------------------------------- figures
    def memory_record(self) -> dict:
        """Peak memory of every process (MB): host RSS, and the accelerator's when there is one."""
        from tempflow.utils.memory import peak_rss_mb

        mine = [peak_rss_mb(), torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0]
        every = self.dist.gather(torch.tensor([mine], dtype=torch.float64))
        out = {f"sys/peak_rss_mb/rank{r}": float(v[0]) for r, v in enumerate(every)}
        if torch.cuda.is_available():
            out.update({f"sys/peak_gpu_mb/rank{r}": float(v[1]) for r, v in enumerate(every)})
        return out


@contextlib.contextmanager
def _fsdp_sync(acc, sync: bool):
    modules = [m for m in acc._models if hasattr(m, "set_requires_gradient_sync")]
    for m in modules:
        m.set_requires_gradient_sync(sync)
    try:
        yield
    finally:
        for m in modules:
            m.set_requires_gradient_sync(True)
