"""The shapes world: a procedural, verifiable GenEval-like text-to-image task.

Coloured circles, squares and triangles on a plain canvas (default 32 px). Prompts come from
a small grammar with GenEval's six categories; :func:`render` draws a matching image and
:func:`verify` checks any image against a prompt from its pixels alone. See docs/shapes.md.
"""

from tempflow.shapes.grammar import (
    BACKGROUND,
    CATEGORIES,
    COLORS,
    NUMBERS,
    RELATIONS,
    SHAPES,
    ObjectSpec,
    SceneSpec,
    all_prompts,
    category_of,
    load_prompts,
    parse,
    prompts_of,
    random_prompt,
    vocabulary,
)
from tempflow.shapes.render import (PlacedObject, draw, perturb, render, render_batch,
                                    sample_layout)
from tempflow.shapes.verify import Detection, VerifyResult, check, verify, verify_batch

__all__ = [
    "BACKGROUND", "CATEGORIES", "COLORS", "NUMBERS", "RELATIONS", "SHAPES",
    "ObjectSpec", "SceneSpec", "PlacedObject", "Detection", "VerifyResult",
    "all_prompts", "category_of", "check", "draw", "load_prompts", "parse", "perturb", "prompts_of",
    "random_prompt", "render", "render_batch", "sample_layout", "verify", "verify_batch",
    "vocabulary",
]
