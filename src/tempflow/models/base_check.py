"""Which base model a LoRA was trained on, recorded in the LoRA file and checked on load.

A saved LoRA's safetensors metadata carries ``tempflow.family`` (the model family, e.g. 'sd3',
'flux', 'qwenimage': a LoRA never fits another family's layers), ``tempflow.base_model`` (how the base was named:
'shapes', a folder, a hub id) and ``tempflow.base_probe``: the mean absolute value of the first
1024 entries of up to 32 of the base's weight tensors (evenly spaced in name order). Loading
compares the probe with the model it is loaded onto, within a relative 1e-2, so the same base
in float32, bfloat16 or float16 passes and another base of the same architecture (another
checkpoint, a fine-tune that moved the weights) is refused.
"""

from __future__ import annotations

import json

from torch import nn

from tempflow.errors import UserError

BASE_KEY, PROBE_KEY, FAMILY_KEY = "tempflow.base_model", "tempflow.base_probe", "tempflow.family"
PROBE_TENSORS, PROBE_VALUES, RTOL = 32, 1024, 1e-2


def base_probe(module: nn.Module) -> dict[str, float]:
    """name -> mean |w| over the first entries of up to 32 base (non-LoRA) weights of ``module``;
    names as in the plain module (peft's ``.base_layer`` removed)."""
    weights = {n.replace(".base_layer", ""): p for n, p in module.named_parameters() if "lora_" not in n}
    names = sorted(weights)
    step = max(1, len(names) // PROBE_TENSORS)
    return {n: float(weights[n].detach().reshape(-1)[:PROBE_VALUES].float().abs().mean())
            for n in names[::step][:PROBE_TENSORS]}


def lora_metadata(module: nn.Module, base_name: str, family: str | None = None) -> dict[str, str]:
    """The metadata entries to write into a LoRA file trained on ``module``'s base."""
    meta = {BASE_KEY: base_name, PROBE_KEY: json.dumps(base_probe(module), sort_keys=True)}
    return {**meta, FAMILY_KEY: family} if family else meta


def check_base(module: nn.Module, metadata: dict | None, source: str, family: str | None = None) -> None:
    """UserError if ``metadata`` (a LoRA file's) records another family or base than ``module``'s."""
    saved_family = (metadata or {}).get(FAMILY_KEY)
    if family and saved_family and saved_family != family:
        raise UserError(f"{source} was trained on a {saved_family} model "
                        f"({metadata.get(BASE_KEY, '?')!r}) and cannot load onto this {family} model: "
                        f"a LoRA fits only the model family it was trained on")
    if not metadata or PROBE_KEY not in metadata:
        return  # a LoRA written elsewhere: nothing recorded to check
    try:
        saved = json.loads(metadata[PROBE_KEY])
    except ValueError:
        raise UserError(f"{source}: its {PROBE_KEY} metadata is not JSON; re-export the LoRA") from None
    now = base_probe(module)
    differ = [n for n in saved if n not in now or
              abs(now[n] - float(saved[n])) > RTOL * max(abs(float(saved[n])), 1e-6) + 1e-6]
    if differ:
        raise UserError(f"{source} was trained on base model {metadata.get(BASE_KEY, '?')!r}, and the "
                        f"model it is loaded onto has other weights ({len(differ)} of {len(saved)} "
                        f"probed tensors differ, e.g. {differ[0]!r}); load it onto that base "
                        f"(--model {metadata.get(BASE_KEY, '?')})")
