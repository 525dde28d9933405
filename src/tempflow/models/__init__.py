"""Flow models behind one interface (:class:`FlowModel`) and a loader by name or path."""

from __future__ import annotations

from pathlib import Path

import torch

from tempflow.errors import UserError
from tempflow.models.base import Conditioning, FlowModel

__all__ = ["Conditioning", "FlowModel", "load_model"]

# Sampling defaults per model family: steps, time shift, CFG scale.
SAMPLING_DEFAULTS = {
    "shapes": {"steps": 20, "shift": 3.0, "guidance_scale": 3.0},
    "sd3": {"steps": 40, "shift": 3.0, "guidance_scale": 4.5},
}


def model_family(spec: str | None) -> str:
    """'shapes' for the built-in model or a shapes checkpoint, 'sd3' for a diffusers pipeline."""
    if spec in (None, "", "shapes", "shapes-base"):
        return "shapes"
    path = Path(spec).expanduser()
    if (path / "model_index.json").is_file():
        return "sd3"
    if (path / "config.json").is_file() or path.exists() or spec.startswith((".", "/", "~")):
        return "shapes"
    if spec.count("/") == 1:  # a hub id such as stabilityai/stable-diffusion-3.5-medium
        return "sd3"
    raise UserError(f"model {spec!r} not found: give 'shapes' (the built-in model), a checkpoint "
                    f"folder, a diffusers pipeline folder or a hub id like org/name")


def load_model(spec: str | None = None, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, resolution: int = 512) -> FlowModel:
    """Load a model: None/'shapes' (shipped base), a shapes checkpoint folder, or an SD3 pipeline."""
    family = model_family(spec)
    if family == "shapes":
        from tempflow.models.shapes_model import ShapesModel
        path = None if spec in (None, "", "shapes", "shapes-base") else Path(spec).expanduser()
        model = ShapesModel.from_pretrained(path, device=device, dtype=dtype)
    else:
        from tempflow.models.sd3 import SD3Model
        model = SD3Model.from_pretrained(spec, resolution=resolution, dtype=dtype, device=device)
    model.source = spec or "shapes"  # how the base was named (recorded in saved LoRAs)
    return model
