"""Prompt sets for training and evaluation, and the per-iteration prompt draw.

Sources (:meth:`PromptSet.load`): ``shapes:<split>`` (the shipped shapes lists),
``ocr:<split>`` (the packaged OCR prompt lists, ``assets/prompts/ocr-<split>.txt``), a
``.jsonl`` metadata file (GenEval's format: its objects are passed to rewards as metadata,
"tag" is the category), or a text file with one prompt per line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tempflow.errors import UserError
from tempflow.utils.prompts import read_metadata_file, read_prompt_file

OCR_SPLITS = ("train", "test")


def assets_dir() -> Path:
    """The packaged prompt lists (a seam for tests)."""
    return Path(__file__).resolve().parent.parent / "assets" / "prompts"


@dataclass
class PromptSet:
    """prompts and their categories (shapes lists and metadata files carry one; other files
    get 'all'), and per-prompt metadata dicts when the source has them (else None)."""

    prompts: list[str]
    categories: list[str]
    metadata: list[dict] | None = None

    @classmethod
    def load(cls, spec: str) -> "PromptSet":
        """'shapes:<split>', 'ocr:<split>', a .jsonl metadata file or a prompt file path."""
        if spec.startswith("shapes:"):
            from tempflow.shapes import load_prompts
            rows = load_prompts(spec.split(":", 1)[1])
            return cls([p for p, _ in rows], [c for _, c in rows])
        if spec.startswith("ocr:"):
            split = spec.split(":", 1)[1]
            if split not in OCR_SPLITS:
                raise UserError(f"unknown OCR prompt split {split!r}: known splits are "
                                f"{', '.join(OCR_SPLITS)} (give ocr:train or ocr:test)")
            path = assets_dir() / f"ocr-{split}.txt"
            if not path.is_file():
                raise UserError(f"the packaged OCR prompts {str(path)!r} are missing; reinstall tempflow")
            prompts = read_prompt_file(path)
            return cls(prompts, ["all"] * len(prompts))
        if spec.lower().endswith(".jsonl"):
            rows = read_metadata_file(spec)
            return cls([r["prompt"].strip() for r in rows], [r.get("tag", "all").strip() for r in rows], rows)
        prompts = read_prompt_file(spec)
        return cls(prompts, ["all"] * len(prompts))

    def metadata_of(self, indices) -> list[dict] | None:
        """The metadata of prompts ``indices`` (None when the set has none)."""
        return None if self.metadata is None else [self.metadata[int(i)] for i in indices]

    def draw(self, n: int, seed: int, iteration: int, balance: str = "uniform") -> list[int]:
        """n prompt indices for an iteration: the same on every process and for any number of
        processes (a function of seed and iteration only); without replacement when possible.

        balance "uniform": prompts uniformly. "category": n categories uniformly (distinct while
        n <= number of categories), then one prompt of each, uniformly within the category
        (distinct prompts of a category drawn twice while it has enough).
        """
        rng = np.random.default_rng([seed, iteration, 7])
        if balance == "uniform":
            replace = n > len(self.prompts)
            return [int(i) for i in rng.choice(len(self.prompts), n, replace=replace)]
        if balance != "category":
            raise ValueError(f"balance must be 'uniform' or 'category', got {balance!r}")
        names = sorted(set(self.categories))
        members = {c: [i for i, k in enumerate(self.categories) if k == c] for c in names}
        picked = rng.choice(len(names), n, replace=n > len(names))
        out = []
        for c in np.unique(picked):
            pool = members[names[int(c)]]
            count = int((picked == c).sum())
            out += [pool[int(i)] for i in rng.choice(len(pool), count, replace=count > len(pool))]
        return [out[i] for i in rng.permutation(len(out))]
