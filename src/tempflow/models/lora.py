"""LoRA over peft, the same for every model (SD3 now, FLUX later).

A :class:`LoraSpec` says what to attach; :func:`attach_lora` injects one adapter named
``"default"`` into a module (diffusers ``ModelMixin`` via its peft integration
``add_adapter``; a plain ``nn.Module`` via ``peft.inject_adapter_in_model``) and freezes
everything but the LoRA weights. The other helpers read, disable and (re)load that adapter.

State dicts are peft's format: keys like ``transformer_blocks.0.attn.to_q.lora_A.weight``
(adapter name removed), i.e. what diffusers' ``save_lora_weights`` expects under the
``transformer`` prefix.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
from torch import Tensor, nn

from tempflow.errors import UserError

ADAPTER_NAME = "default"

#: Attention projections of the SD3 / SD3.5 MMDiT (algorithm.md section 6): image stream
#: q, k, v, out and the joint-attention text stream's q, k, v, out.
SD3_ATTENTION_TARGETS: tuple[str, ...] = (
    "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")

_STR_INITS = ("gaussian", "olora", "pissa", "orthogonal")


@dataclass(frozen=True)
class LoraSpec:
    """What LoRA to attach.

    rank: r >= 1. alpha: scale numerator (the update is alpha / r * B @ A), > 0.
    target_modules: module-name suffixes, peft semantics (``"to_q"`` matches ``*.to_q``).
    init: peft ``init_lora_weights``: True / "gaussian" (B = 0, so the adapted model starts
    equal to the base), False (random B: only for tests), "olora", "pissa", "orthogonal".
    dropout: LoRA dropout probability in [0, 1).
    """

    rank: int = 32
    alpha: float = 64
    target_modules: tuple[str, ...] = SD3_ATTENTION_TARGETS
    init: str | bool = "gaussian"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoraSpec.rank must be an integer >= 1, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) \
                or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ValueError(f"LoraSpec.alpha must be a finite number > 0, got {self.alpha!r}")
        targets = (self.target_modules,) if isinstance(self.target_modules, str) else self.target_modules
        try:
            targets = tuple(targets)
        except TypeError:
            raise ValueError(f"LoraSpec.target_modules must be a tuple of module names, "
                             f"got {self.target_modules!r}") from None
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(f"LoraSpec.target_modules must be a non-empty tuple of non-empty "
                             f"module names, got {self.target_modules!r}")
        object.__setattr__(self, "target_modules", targets)
        ok_init = isinstance(self.init, bool) or self.init in _STR_INITS or (
            isinstance(self.init, str) and self.init.startswith("pissa_niter_"))
        if not ok_init:
            raise ValueError(f"LoraSpec.init must be True, False or one of {_STR_INITS}, "
                             f"got {self.init!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraSpec.dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def scale(self) -> float:
        """alpha / rank, the factor applied to B @ A."""
        return self.alpha / self.rank

    def to_peft_config(self):
        """The equivalent ``peft.LoraConfig``."""
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha, target_modules=list(self.target_modules),
                          init_lora_weights=self.init, lora_dropout=self.dropout)


def _tuner_layers(module: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


def has_lora(module: nn.Module) -> bool:
    """Whether any peft adapter layer is injected in ``module``."""
    return bool(_tuner_layers(module))


def adapter_name(module: nn.Module) -> str:
    """The adapter the helpers act on: "default", or the only one (e.g. diffusers' "default_0"
    after ``pipe.load_lora_weights``). ValueError when there is none or several."""
    names = list(getattr(module, "peft_config", {}) or {})
    if ADAPTER_NAME in names:
        return ADAPTER_NAME
    if len(names) != 1:
        raise ValueError(f"{type(module).__name__} needs exactly one LoRA adapter, has {names}")
    return names[0]


def missing_targets(module: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """Targets that match no submodule name (peft rule: exact name or ``*.<target>``)."""
    names = [n for n, _ in module.named_modules()]
    return [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]


def attach_lora(module: nn.Module, spec: LoraSpec) -> None:
    """Inject a LoRA adapter named "default"; afterwards only LoRA params require grad.

    Raises UserError when some of ``spec.target_modules`` match no submodule (e.g. SD3 targets
    on a model with other layer names), ValueError when an adapter is already attached.
    """
    missing = missing_targets(module, spec.target_modules)
    if missing:
        raise UserError(f"LoRA target modules not found in {type(module).__name__}: {missing}; "
                        f"set the LoRA target_modules to module names this model has")
    if has_lora(module):
        raise ValueError(f"{type(module).__name__} already has a LoRA adapter attached")
    module.requires_grad_(False)
    config = spec.to_peft_config()
    if hasattr(module, "add_adapter"):          # diffusers ModelMixin (PeftAdapterMixin)
        module.add_adapter(config, adapter_name=ADAPTER_NAME)
    else:                                       # plain nn.Module
        from peft import inject_adapter_in_model

        inject_adapter_in_model(config, module, adapter_name=ADAPTER_NAME)
        if not hasattr(module, "peft_config"):
            module.peft_config = {ADAPTER_NAME: config}
    for p in lora_parameters(module):
        p.requires_grad_(True)


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """All LoRA parameters (names containing ``lora_``), in module order."""
    return [p for n, p in module.named_parameters() if "lora_" in n]


@contextlib.contextmanager
def adapter_disabled(module: nn.Module) -> Iterator[None]:
    """Run the base model: every adapter layer disabled; the previous state is restored on exit,
    also on exception (nested uses are fine)."""
    layers = _tuner_layers(module)
    if not layers:
        raise ValueError(f"{type(module).__name__} has no LoRA adapter to disable")
    before = [bool(layer.disable_adapters) for layer in layers]
    try:
        for layer in layers:
            layer.enable_adapters(False)
        yield
    finally:
        for layer, was_disabled in zip(layers, before):
            layer.enable_adapters(not was_disabled)


def lora_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """peft's ``get_peft_model_state_dict`` of the adapter (its name stripped from the keys).

    Tensors are detached copies on their device, e.g. ``...to_q.lora_A.weight`` [r, in].
    """
    from peft.utils import get_peft_model_state_dict

    if not has_lora(module):
        raise ValueError(f"{type(module).__name__} has no LoRA adapter")
    sd = get_peft_model_state_dict(module, adapter_name=adapter_name(module))
    return {k: v.detach().clone() for k, v in sd.items()}


def load_lora_state_dict(module: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Load a state dict from :func:`lora_state_dict` into the attached adapter.

    Every key must match an adapter weight of the same shape and every adapter weight must be
    given; otherwise UserError (the saved LoRA belongs to another model or rank).
    """
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    if not has_lora(module):
        raise ValueError(f"{type(module).__name__} has no LoRA adapter to load into")
    name = adapter_name(module)
    expected = get_peft_model_state_dict(module, adapter_name=name)
    unexpected = sorted(set(state_dict) - set(expected))
    missing = sorted(set(expected) - set(state_dict))
    wrong = sorted(k for k in set(expected) & set(state_dict)
                   if tuple(state_dict[k].shape) != tuple(expected[k].shape))
    if unexpected or missing or wrong:
        raise UserError(f"LoRA weights do not fit this model: {len(missing)} missing "
                        f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, "
                        f"{len(wrong)} with wrong shape {wrong[:3]}; load a LoRA saved from the "
                        f"same base model with the same rank and target modules")
    with torch.no_grad():
        set_peft_model_state_dict(module, dict(state_dict), adapter_name=name)


def canonical_safetensors(path: Path, extra_metadata: dict[str, str] | None = None) -> None:
    """Rewrite a safetensors file's JSON header with sorted keys, so equal tensors and metadata
    give equal bytes (the writer's header order can vary from process to process). The file
    format: 8-byte little-endian header length, the JSON header padded with spaces to a
    multiple of 8, then the tensor data (offsets relative to its start, so they stay valid)."""
    import json
    import os
    import struct

    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    if extra_metadata:
        header["__metadata__"] = {**header.get("__metadata__", {}), **extra_metadata}
    header = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    header += b" " * (-len(header) % 8)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(struct.pack("<Q", len(header)) + header + data[8 + n:])
    os.replace(tmp, path)


def _file_metadata(path: Path) -> dict | None:
    """The safetensors metadata of a LoRA folder's (or file's) weights, None if unreadable."""
    from safetensors import safe_open

    f = path / "pytorch_lora_weights.safetensors" if path.is_dir() else path
    try:
        with safe_open(str(f), framework="pt") as handle:
            return handle.metadata()
    except Exception:  # no such file, or not safetensors: diffusers already read the weights
        return None


class TransformerAdapterMixin:
    """Training-facing methods for models whose denoiser is ``self.transformer`` (a diffusers
    ModelMixin): LoRA attach / save / load in diffusers format, trainable parameters, and the
    frozen reference policy (LoRA disabled, or a frozen copy for full fine-tuning)."""

    transformer: nn.Module
    _reference_copy: nn.Module | None = None

    @property
    def has_lora(self) -> bool:
        return has_lora(self.transformer)

    def add_lora(self, spec: LoraSpec) -> None:
        """Attach a fresh LoRA; only its weights train afterwards."""
        attach_lora(self.transformer, spec)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """LoRA weights when an adapter is attached, else the transformer's trainable weights."""
        if self.has_lora:
            return lora_parameters(self.transformer)
        return [p for p in self.transformer.parameters() if p.requires_grad]

    def freeze_reference(self) -> None:
        """Full fine-tuning: keep a frozen copy of the current transformer as the reference."""
        import copy
        self._reference_copy = copy.deepcopy(self.transformer).requires_grad_(False).eval()

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Context in which the transformer is the frozen reference policy."""
        if self.has_lora:
            with adapter_disabled(self.transformer):
                yield
            return
        if self._reference_copy is None:
            raise RuntimeError("reference(): attach a LoRA, or call freeze_reference() before "
                               "full fine-tuning")
        trained, self.transformer = self.transformer, self._reference_copy
        try:
            yield
        finally:
            self.transformer = trained

    def save_lora(self, directory) -> Path:
        """Write the LoRA in diffusers format (pytorch_lora_weights.safetensors with its LoRA
        config as metadata, so alpha survives); ``pipe.load_lora_weights(directory)`` loads it."""
        from diffusers import StableDiffusion3Pipeline

        if not self.has_lora:
            raise ValueError("save_lora: no LoRA adapter attached (full fine-tuning: save the transformer)")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = self.transformer.peft_config[adapter_name(self.transformer)].to_dict()
        # peft keeps target_modules as a set: sorted, the file is the same bytes in every process
        config = {k: sorted(v) if isinstance(v, (set, frozenset)) else v for k, v in config.items()}
        StableDiffusion3Pipeline.save_lora_weights(
            directory, transformer_lora_layers=lora_state_dict(self.transformer),
            transformer_lora_adapter_metadata=config)
        from tempflow.models.base_check import lora_metadata

        canonical_safetensors(directory / "pytorch_lora_weights.safetensors",
                              lora_metadata(self.transformer, getattr(self, "source", "?"),
                                            getattr(self, "family", None)))
        return directory

    def load_lora(self, directory) -> None:
        """Load a LoRA written by :meth:`save_lora` (or any diffusers SD3 transformer LoRA):
        into the attached adapter (keys and shapes must match), else into a new adapter with
        the saved config. UserError if the folder or its weights are missing or unreadable."""
        from diffusers import StableDiffusion3Pipeline

        path = Path(directory).expanduser()
        if not path.exists():
            raise UserError(f"LoRA folder {str(directory)!r} does not exist; pass a folder written "
                            f"by save_lora (containing pytorch_lora_weights.safetensors)")
        try:
            # safetensors only: a pickled .bin LoRA is never unpickled
            sd, metadata = StableDiffusion3Pipeline.lora_state_dict(str(path), return_lora_metadata=True,
                                                                    use_safetensors=True)
        except Exception as e:
            raise UserError(f"could not read LoRA weights from {str(directory)!r} ({e}); pass a "
                            f"folder written by save_lora") from None
        prefix = "transformer."
        weights = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if not weights:
            raise UserError(f"{str(directory)!r} holds no transformer LoRA weights")
        from tempflow.models.base_check import check_base

        check_base(self.transformer, _file_metadata(path), f"LoRA {str(directory)!r}",
                   getattr(self, "family", None))
        if not self.has_lora:
            config = {k[len(prefix):]: v for k, v in (metadata or {}).items() if k.startswith(prefix)}
            if not config:
                raise UserError(f"{str(directory)!r} has no LoRA config metadata; attach a LoRA "
                                f"with the right LoraSpec first, then load")
            spec = LoraSpec(rank=int(config["r"]), alpha=float(config["lora_alpha"]),
                            target_modules=tuple(sorted(config["target_modules"])),
                            dropout=float(config.get("lora_dropout", 0.0)))
            attach_lora(self.transformer, spec)
        load_lora_state_dict(self.transformer, weights)
