"""The shapes world: a procedural, verifiable GenEval-like text-to-image task.

Coloured circles, squares, triangles, diamonds and crosses on a plain canvas (default 32 px).
Prompts come from a grammar of 6,350 prompts in GenEval's six categories, split into train,
held-out and unseen lists (:func:`make_split`); :func:`render` draws a matching image and
:func:`verify` checks any image against a prompt from its pixels alone. See docs/shapes.md.
"""

from tempflow.shapes.grammar import (
    BACKGROUND,
    CATEGORIES,
    COLORS,
    NUMBERS,
    RELATIONS,
    SHAPES,
    SIZES,
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
from tempflow.shapes.splits import Split, make_split, scene_key
from tempflow.shapes.verify import Detection, VerifyResult, check, verify, verify_batch

__all__ = [
    "BACKGROUND", "CATEGORIES", "COLORS", "NUMBERS", "RELATIONS", "SHAPES",
    "ObjectSpec", "SceneSpec", "SIZES", "Split", "make_split", "scene_key", "PlacedObject", "Detection", "VerifyResult",
    "all_prompts", "category_of", "check", "draw", "load_prompts", "parse", "perturb", "prompts_of",
    "random_prompt", "render", "render_batch", "sample_layout", "verify", "verify_batch",
    "vocabulary",
]
