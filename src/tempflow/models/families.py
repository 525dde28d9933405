"""The model families tempflow aligns: which diffusers pipeline class each adapter wraps, the
families' public scheduler configurations, and the sampling schedule they imply.

A diffusers folder names its pipeline in ``model_index.json`` (``"_class_name"``); that class
picks the adapter. The scheduler dicts below are the ``scheduler/scheduler_config.json`` of the
published checkpoints (public values, copied by hand): the noise-aware weights of a preset are
computed from them, at the preset's resolution, without downloading anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from tempflow.errors import UserError


@dataclass(frozen=True)
class Family:
    """One model family: its name in configs and docs, the diffusers pipeline class it wraps, the
    adapter (``module:Class`` under tempflow.models), the VAE's pixels per latent cell and the
    2x2 patch (transformer patch or FLUX.2's VAE patchify) so one image token covers
    ``vae_factor * patch`` pixels."""

    name: str
    pipeline: str
    adapter: str
    vae_factor: int
    patch: int


FAMILIES: dict[str, Family] = {f.pipeline: f for f in (
    Family("sd3", "StableDiffusion3Pipeline", "sd3:SD3Model", 8, 2),
    Family("flux", "FluxPipeline", "flux:FluxModel", 8, 2),
    Family("qwenimage", "QwenImagePipeline", "qwenimage:QwenImageModel", 8, 2),
    Family("zimage", "ZImagePipeline", "zimage:ZImageModel", 8, 2),
    Family("flux2klein", "Flux2KleinPipeline", "flux2klein:Flux2KleinModel", 8, 2),
)}
BY_NAME: dict[str, Family] = {f.name: f for f in FAMILIES.values()}

#: FLUX.1-dev / FLUX.1-schnell ``scheduler_config.json`` (black-forest-labs on the HF hub).
FLUX_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True,
                  "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
                  "max_image_seq_len": 4096}
#: Qwen/Qwen-Image ``scheduler_config.json``: exponential dynamic shift, terminal sigma 0.02.
QWENIMAGE_SCHEDULER = {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": True,
                       "base_shift": 0.5, "max_shift": 0.9, "base_image_seq_len": 256,
                       "max_image_seq_len": 8192, "shift_terminal": 0.02,
                       "time_shift_type": "exponential"}
#: Tongyi-MAI/Z-Image-Turbo ``scheduler_config.json``: a fixed shift of 3.
ZIMAGE_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}
#: black-forest-labs/FLUX.2-klein ``scheduler_config.json``: dynamic shift, whose mu the
#: pipeline computes from the image size and step count (compute_empirical_mu).
FLUX2KLEIN_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True,
                        "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
                        "max_image_seq_len": 4096, "time_shift_type": "exponential"}

SCHEDULERS = {"flux": FLUX_SCHEDULER, "qwenimage": QWENIMAGE_SCHEDULER, "zimage": ZIMAGE_SCHEDULER,
              "flux2klein": FLUX2KLEIN_SCHEDULER}


def supported() -> str:
    """'FluxPipeline (flux), ...': the pipeline classes tempflow has an adapter for."""
    return ", ".join(f"{f.pipeline} ({f.name})" for f in FAMILIES.values())


def pipeline_class(folder: Path) -> str:
    """The ``_class_name`` of ``folder``/model_index.json (UserError when unreadable)."""
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
        name = index["_class_name"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{str(folder)!r}: model_index.json is unreadable or names no pipeline "
                        f"class ({type(e).__name__}); pass a diffusers pipeline folder") from None
    if not isinstance(name, str):
        raise UserError(f"{str(folder)!r}: model_index.json's _class_name is not a string")
    return name


def family_of_class(name: str) -> Family:
    """The family wrapping diffusers pipeline class ``name``; UserError listing the supported ones."""
    if name not in FAMILIES:
        raise UserError(f"pipeline class {name!r} is not supported; tempflow aligns {supported()}")
    return FAMILIES[name]


def calculate_mu(image_seq_len: int, config: dict) -> float:
    """mu of the exponential time shift (sigma' = e^mu / (e^mu + 1 / sigma - 1)): linear in the
    number of image tokens, from base_shift at base_image_seq_len to max_shift at max_image_seq_len."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base, top = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (top - base) / (max_len - base_len)
    return image_seq_len * slope + base - slope * base_len


def empirical_mu(image_seq_len: int, num_steps: int) -> float:
    """FLUX.2's mu: a fit in the image token count and the number of steps (Flux2 pipelines)."""
    a1, b1, a2, b2 = 8.73809524e-05, 1.89833333, 0.00016927, 0.45666666
    if image_seq_len > 4300:
        return float(a2 * image_seq_len + b2)
    m_200, m_10 = a2 * image_seq_len + b2, a1 * image_seq_len + b1
    a = (m_200 - m_10) / 190.0
    return float(a * num_steps + m_200 - 200.0 * a)


def scheduler_sigmas(config: dict, base: Tensor, mu: float | None) -> Tensor:
    """Sampling sigmas [T + 1] (float32, ending in 0) of a FlowMatchEulerDiscreteScheduler with
    ``config`` given the unshifted grid ``base`` [T] and mu: diffusers' own set_timesteps, so
    the schedule is the pipeline's by construction."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    kwargs = {"mu": mu} if scheduler.config.use_dynamic_shifting else {}
    scheduler.set_timesteps(sigmas=base.tolist(), device="cpu", **kwargs)
    return scheduler.sigmas.float().clone()


def family_sigmas(family: str, num_steps: int, resolution: int,
                  config: dict | None = None) -> Tensor:
    """The schedule [num_steps + 1] a family's diffusers pipeline samples with at a square
    ``resolution`` (px), from its public scheduler config (or ``config``). All four families
    start from linspace(1, 1 / T, T); they differ in how they shift it."""
    fam = BY_NAME[family]
    config = SCHEDULERS[family] if config is None else config
    tokens = (resolution // (fam.vae_factor * fam.patch)) ** 2
    base = torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64).float()
    mu = empirical_mu(tokens, num_steps) if family == "flux2klein" else calculate_mu(tokens, config)
    return scheduler_sigmas(config, base, mu)
