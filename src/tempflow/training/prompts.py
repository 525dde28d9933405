"""Prompt sets for training and evaluation, and the per-iteration prompt draw."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tempflow.utils.prompts import read_prompt_file


@dataclass
class PromptSet:
    """prompts and their categories (shapes lists carry one; files get 'all')."""

    prompts: list[str]
    categories: list[str]

    @classmethod
    def load(cls, spec: str) -> "PromptSet":
        """'shapes:<split>' (a shipped shapes list) or a prompt file path."""
        if spec.startswith("shapes:"):
            from tempflow.shapes import load_prompts
            rows = load_prompts(spec.split(":", 1)[1])
            return cls([p for p, _ in rows], [c for _, c in rows])
        prompts = read_prompt_file(spec)
        return cls(prompts, ["all"] * len(prompts))

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
