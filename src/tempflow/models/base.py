"""The one interface every flow model implements.

A model maps (x_sigma, sigma, conditioning) to a velocity v = eps - x0 (rectified-flow
convention, sigma = 1 is noise). Samplers and trainers only use this interface, so a new
model (SD3, FLUX with packed latents, the built-in shapes model) plugs in by implementing:

- ``encode_prompts(prompts) -> Conditioning``
- ``encode_negative(n) -> Conditioning``          (unconditional input for CFG)
- ``_forward(x, sigma, cond) -> v``               (one model call, x in model dtype)
- ``decode(x) -> images`` in [0, 1], float32 [B, 3, H, W]
- ``latent_shape``                                (C, H, W) of one sample
- ``trainable_parameters()`` and ``reference()``  (frozen base, e.g. LoRA disabled)

CFG, dtype handling and model-call counting live here, once.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor


@dataclass
class Conditioning:
    """Prompt conditioning: named tensors, each with the batch as its first dimension.

    The names are model-specific (SD3: ``prompt_embeds`` [B, L, D] and
    ``pooled_prompt_embeds`` [B, P]); samplers only slice, repeat and concatenate.
    """

    tensors: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0] if self.tensors else 0

    def __getitem__(self, index) -> "Conditioning":
        """Select rows by int, slice, list or index tensor (batch dim kept)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Conditioning({k: v[index] for k, v in self.tensors.items()})

    def repeat_interleave(self, repeats: int) -> "Conditioning":
        """[B, ...] -> [B * repeats, ...], each row repeated in place (r0, r0, r1, r1, ...)."""
        return Conditioning({k: v.repeat_interleave(repeats, dim=0) for k, v in self.tensors.items()})

    def to(self, *args, **kwargs) -> "Conditioning":
        return Conditioning({k: v.to(*args, **kwargs) for k, v in self.tensors.items()})

    @staticmethod
    def cat(items: Sequence["Conditioning"]) -> "Conditioning":
        """Concatenate along the batch dimension."""
        keys = items[0].tensors.keys()
        return Conditioning({k: torch.cat([c.tensors[k] for c in items], dim=0) for k in keys})


class FlowModel(ABC):
    """A text-to-image flow model behind the interface samplers and trainers use.

    Attributes:
        device, dtype: where the network runs and in which precision. Velocities are
            always returned in float32 whatever ``dtype`` is.
        counters: model calls made through :meth:`velocity`: ``"nfe"`` counts network
            evaluations per sample (a CFG call counts 2), ``"nfe_grad"`` those made with
            gradient enabled, ``"decodes"`` decoded samples.
    """

    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    def __init__(self) -> None:
        self.counters: Counter = Counter()

    # ----------------------------------------------------------------- to implement
    @property
    @abstractmethod
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one sample's latent, e.g. (16, 64, 64) for SD3 at 512 px."""

    @abstractmethod
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Encode B prompts; returns a Conditioning of batch B on ``self.device``."""

    @abstractmethod
    def encode_negative(self, n: int) -> Conditioning:
        """Unconditional (empty / negative prompt) conditioning of batch n, for CFG."""

    @abstractmethod
    def _forward(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        """One network call. x: [B, *latent_shape] (model dtype), sigma: [B] float32 in [0, 1].

        Returns the velocity prediction [B, *latent_shape] (any float dtype).
        """

    @abstractmethod
    def decode(self, x: Tensor) -> Tensor:
        """Latents [B, *latent_shape] -> images float32 [B, 3, H, W] in [0, 1]."""

    @abstractmethod
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters an optimiser updates (LoRA weights when an adapter is attached)."""

    @abstractmethod
    def reference(self) -> contextlib.AbstractContextManager:
        """Context in which :meth:`velocity` evaluates the frozen reference policy."""

    # ----------------------------------------------------------------- shared logic
    def initial_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Standard normal starting points x_{sigma=1}: float32 [n, *latent_shape]."""
        return torch.randn((n, *self.latent_shape), generator=generator, dtype=torch.float32,
                           device=generator.device if generator is not None else self.device)

    def velocity(self, x: Tensor, sigma: Tensor, cond: Conditioning,
                 guidance_scale: float | None = None,
                 negative: Conditioning | None = None,
                 uncond_grad: bool = False) -> Tensor:
        """Velocity at per-sample sigma, with classifier-free guidance when guidance_scale > 1.

        x: [B, *latent_shape]; sigma: [B] (a scalar is broadcast); cond: batch B.
        CFG: v = v_u + g * (v_c - v_u), both halves in one batched call unless
        ``uncond_grad`` is False and gradients are on, in which case the unconditional half
        runs separately under no_grad (it carries no gradient either way).
        Returns float32 [B, *latent_shape].
        """
        b = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(b)
        if sigma.shape != (b,):
            raise ValueError(f"sigma must have shape [{b}] (one per sample), got {tuple(sigma.shape)}")
        xm = x.to(self.dtype)
        grad = torch.is_grad_enabled()
        if guidance_scale is None or guidance_scale <= 1.0:
            self._count(b, grad)
            return self._forward(xm, sigma, cond).float()
        neg = negative if negative is not None else self.encode_negative(b)
        if grad and not uncond_grad:
            with torch.no_grad():
                self._count(b, False)
                v_u = self._forward(xm, sigma, neg).float()
            self._count(b, True)
            v_c = self._forward(xm, sigma, cond).float()
        else:
            self._count(2 * b, grad)
            both = self._forward(torch.cat([xm, xm]), torch.cat([sigma, sigma]),
                                 Conditioning.cat([neg, cond])).float()
            v_u, v_c = both.chunk(2)
        return self.guide(v_u, v_c, guidance_scale)

    def guide(self, v_u: Tensor, v_c: Tensor, guidance_scale: float) -> Tensor:
        """Classifier-free guidance v_u + g (v_c - v_u); float32 [B, *latent_shape] in and out.
        A family whose pipeline combines differently (Qwen-Image rescales) overrides this."""
        return v_u + guidance_scale * (v_c - v_u)

    def decode_images(self, x: Tensor) -> Tensor:
        """Decode and count: [B, *latent_shape] -> float32 [B, 3, H, W] in [0, 1]."""
        self.counters["decodes"] += x.shape[0]
        return self.decode(x).float().clamp(0, 1)

    def _count(self, n: int, grad: bool) -> None:
        self.counters["nfe"] += n
        if grad:
            self.counters["nfe_grad"] += n
