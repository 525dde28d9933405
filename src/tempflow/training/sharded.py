"""Checkpoints and LoRA exports of a run whose weights are sharded over processes (FSDP2).

Every process writes its own shards of the trainable weights, the optimiser state and the EMA
shadow with ``torch.distributed.checkpoint`` into ``shards/`` of the checkpoint folder; the
loop's checkpoint writer (checkpoint.py) adds state.pt and meta.json with the SHA-256 of every
file, and renames the folder once everything is on disk. Loading puts each shard back where it
was, so a resumed run continues bitwise as if it had not stopped.

The LoRA export needs whole tensors: every process gathers them (a collective) and the main
process writes the diffusers file, with the metadata (base probe, LoRA config) taken from a
save of the still unsharded model made when the engine was prepared.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

SHARDS = "shards"


def _state(trainer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate's wrapper
    model_sd, optim_sd = get_state_dict(trainer.model.transformer, opt,
                                        options=StateDictOptions(ignore_frozen_params=True))
    names = list(trainer._named_trainable())
    return {"model": model_sd, "optim": optim_sd, "ema": dict(zip(names, trainer.ema.shadow))}


def save(trainer, folder: Path) -> list[str]:
    """Write this process's shards into ``folder`` (every process calls this); the files'
    paths relative to the checkpoint folder (on every process, after the write)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_state(trainer), checkpoint_id=str(folder))
    trainer.dist.barrier()
    return sorted(str(p.relative_to(folder.parent)) for p in folder.rglob("*") if p.is_file())


def load(trainer, folder: Path) -> None:
    """Read the shards written by :func:`save` back into the model, optimiser and EMA."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    state = _state(trainer)
    dcp.load(state, checkpoint_id=str(folder))
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    set_state_dict(trainer.model.transformer, opt, model_state_dict=state["model"],
                   optim_state_dict=state["optim"],
                   # the frozen base is not in the checkpoint; dcp.load above already required
                   # every trainable weight to be there
                   options=StateDictOptions(ignore_frozen_params=True, strict=False))
    with torch.no_grad():
        for shadow, loaded in zip(trainer.ema.shadow, state["ema"].values()):
            if loaded is not shadow:
                shadow.copy_(loaded)


# ---------------------------------------------------------------------------- LoRA export

class LoraTemplate:
    """The diffusers LoRA file of the unsharded model: its keys and metadata, and the map from
    trainable parameter names to file keys."""

    def __init__(self, model):
        from safetensors import safe_open

        with tempfile.TemporaryDirectory(prefix="tempflow-lora-") as tmp:
            model.save_lora(tmp)
            with safe_open(str(Path(tmp) / "pytorch_lora_weights.safetensors"), framework="pt") as f:
                self.metadata = f.metadata()
                keys = set(f.keys())
        self.key_of = {}
        for name, _ in model.transformer.named_parameters():
            if "lora_" not in name:
                continue
            parts = name.split(".")
            # peft names 'x.lora_A.<adapter>.weight'; the file has 'transformer.x.lora_A.weight'
            key = "transformer." + ".".join(p for i, p in enumerate(parts)
                                            if not (i > 0 and parts[i - 1].startswith("lora_")))
            self.key_of[name] = key
        if set(self.key_of.values()) != keys:
            raise RuntimeError(f"LoRA file keys do not match the trainable weights "
                               f"({sorted(keys ^ set(self.key_of.values()))[:3]})")

    def write(self, full: dict[str, torch.Tensor], directory: Path) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        tensors = {self.key_of[n]: t.detach().cpu().contiguous() for n, t in sorted(full.items())}
        from tempflow.models.lora import canonical_safetensors

        path = directory / "pytorch_lora_weights.safetensors"
        save_file(dict(sorted(tensors.items())), str(path), metadata=self.metadata)
        canonical_safetensors(path)  # the header in sorted order: equal weights, equal bytes


def full_trainable(trainer) -> dict[str, torch.Tensor]:
    """Whole tensors of the trainable weights (EMA applied when enabled); every process calls."""
    with trainer.ema.applied():
        return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p.detach().clone())
                for n, p in trainer._named_trainable().items()}

