"""Flow models behind one interface (:class:`FlowModel`) and a loader by name or path.

A diffusers folder picks its adapter by the pipeline class in its model_index.json
(:mod:`tempflow.models.families`); a hub id by its organisation and name (FLUX.1, FLUX.2 klein,
Qwen-Image, Z-Image; any other hub id loads as SD3 / SD3.5).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from tempflow.errors import UserError
from tempflow.models.base import Conditioning, FlowModel

__all__ = ["Conditioning", "FlowModel", "load_model", "model_family", "model_sigmas"]

# Sampling defaults per model family: steps, time shift, CFG scale (the diffusers pipelines'
# defaults). FLUX.1's 3.5 is its distilled guidance, an input of FluxModel, so its CFG is off;
# the new families' pipelines shift their own schedule (``shift`` is unused for them).
SAMPLING_DEFAULTS = {
    "shapes": {"steps": 20, "shift": 3.0, "guidance_scale": 3.0},
    "sd3": {"steps": 40, "shift": 3.0, "guidance_scale": 4.5},
    "flux": {"steps": 28, "shift": 3.0, "guidance_scale": 1.0},
    "qwenimage": {"steps": 50, "shift": 3.0, "guidance_scale": 4.0},
    "zimage": {"steps": 50, "shift": 3.0, "guidance_scale": 6.0},
    "flux2klein": {"steps": 50, "shift": 3.0, "guidance_scale": 4.0},
}

#: hub id prefixes (case-insensitive) of the families other than SD3
HUB_PREFIXES = {"black-forest-labs/flux.1": "flux", "black-forest-labs/flux.2-klein": "flux2klein",
                "qwen/qwen-image": "qwenimage", "tongyi-mai/z-image": "zimage"}


def model_family(spec: str | None) -> str:
    """'shapes' for the built-in model or a shapes checkpoint; for a diffusers folder the family
    of its pipeline class (UserError naming the class and the supported ones); for a hub id
    the family its name says, SD3 by default."""
    if spec in (None, "", "shapes", "shapes-base"):
        return "shapes"
    path = Path(spec).expanduser()
    if (path / "model_index.json").is_file():
        from tempflow.models.families import family_of_class, pipeline_class

        return family_of_class(pipeline_class(path)).name
    if (path / "config.json").is_file() or path.exists() or spec.startswith((".", "/", "~")):
        return "shapes"
    if spec.count("/") == 1:  # a hub id such as stabilityai/stable-diffusion-3.5-medium
        low = spec.lower()
        return next((f for p, f in HUB_PREFIXES.items() if low.startswith(p)), "sd3")
    raise UserError(f"model {spec!r} not found: give 'shapes' (the built-in model), a checkpoint "
                    f"folder, a diffusers pipeline folder or a hub id like org/name")


def load_model(spec: str | None = None, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, resolution: int = 512) -> FlowModel:
    """Load a model: None/'shapes' (shipped base), a shapes checkpoint folder, or a diffusers
    pipeline (folder or hub id) of a supported family."""
    family = model_family(spec)
    if family == "shapes":
        from tempflow.models.shapes_model import ShapesModel
        path = None if spec in (None, "", "shapes", "shapes-base") else Path(spec).expanduser()
        model = ShapesModel.from_pretrained(path, device=device, dtype=dtype)
    else:
        from tempflow.models.families import BY_NAME

        module, cls = BY_NAME[family].adapter.split(":")
        adapter = getattr(importlib.import_module(f"tempflow.models.{module}"), cls)
        model = adapter.from_pretrained(spec, resolution=resolution, dtype=dtype, device=device)
    model.source = spec or "shapes"  # how the base was named (recorded in saved LoRAs)
    return model


def model_sigmas(model: FlowModel, steps: int, shift: float) -> torch.Tensor:
    """The sampling schedule [steps + 1]: shapes and SD3 use ``flow_sigmas(steps, shift)``; the
    other families their pipeline's own (dynamically shifted) schedule at the model's resolution."""
    if getattr(model, "family", "shapes") in ("shapes", "sd3"):
        from tempflow.sampling.schedule import flow_sigmas

        return flow_sigmas(steps, shift)
    return model.schedule(steps)
