"""Prompt splits of the shapes world: train, held-out and unseen.

    from tempflow.shapes import make_split
    split = make_split(seed=7)          # a fresh split of the whole grammar
    split.train, split.heldout, split.unseen   # [(prompt, category)] each, disjoint

The shipped lists (``shapes:train`` and ``shapes:heldout``) are ``make_split(0)``; every
prompt of the grammar in neither list is ``shapes:unseen``, from which anyone can draw
prompts no shipped model or run has seen. Rules, per category:

- held out: ``heldout_per_category`` prompts drawn at random (all of a category smaller
  than that: single_object has 15 prompts, so all 15 are held out and train learns single
  objects from "one circle" and "a red circle");
- train: ``train_fraction`` of the rest, drawn at random;
- unseen: everything else.

A position scene is kept whole: "a circle left of a square" and its mirror phrasing "a
square right of a circle" always land in the same list, so a held-out or unseen scene is not
seen in training in other words. Every word of the grammar occurs in train.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tempflow.errors import UserError
from tempflow.shapes.grammar import CATEGORIES, parse, prompts_of, vocabulary

HELDOUT_PER_CATEGORY = 27
TRAIN_FRACTION = 0.5
_MIRROR = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

Rows = list[tuple[str, str]]


@dataclass(frozen=True)
class Split:
    """Three disjoint prompt lists covering the grammar, each as [(prompt, category)]."""

    train: Rows
    heldout: Rows
    unseen: Rows

    def as_dict(self) -> dict[str, Rows]:
        return {"train": self.train, "heldout": self.heldout, "unseen": self.unseen}


def scene_key(prompt: str) -> str:
    """The prompt itself, or for a position prompt the first of its two phrasings in
    sorted order (so both phrasings of one scene share a key)."""
    spec = parse(prompt)
    if spec.relation is None:
        return spec.prompt()
    a, b = spec.objects
    mirror = f"{b.text()} {_MIRROR[spec.relation]} {a.text()}"
    return min(spec.prompt(), mirror)


def make_split(seed: int = 0, heldout_per_category: int = HELDOUT_PER_CATEGORY,
               train_fraction: float = TRAIN_FRACTION) -> Split:
    """Split the whole grammar into train / held-out / unseen, deterministic in ``seed``."""
    if heldout_per_category < 1:
        raise UserError(f"heldout_per_category must be >= 1, got {heldout_per_category}")
    if not 0 < train_fraction <= 1:
        raise UserError(f"train_fraction must be in (0, 1], got {train_fraction}")
    rng = np.random.default_rng(seed)
    lists: dict[str, Rows] = {"train": [], "heldout": [], "unseen": []}
    for cat in CATEGORIES:
        groups: dict[str, list[str]] = {}
        for p in prompts_of(cat):
            groups.setdefault(scene_key(p), []).append(p)
        keys = list(groups)
        order = [keys[int(i)] for i in rng.permutation(len(keys))]
        per_scene = max(len(g) for g in groups.values())
        n_held = min(len(order), -(-heldout_per_category // per_scene))
        rest = order[n_held:]
        n_train = round(train_fraction * len(rest))
        for name, chosen in (("heldout", order[:n_held]), ("train", rest[:n_train]),
                             ("unseen", rest[n_train:])):
            picked = {p for k in chosen for p in groups[k]}
            # the grammar's own order within a category, so lists read predictably
            lists[name] += [(p, cat) for p in prompts_of(cat) if p in picked]
    split = Split(**lists)
    missing = sorted(set(vocabulary()) - {w for p, _ in split.train for w in p.split()})
    if missing:
        raise UserError(f"seed {seed}: train would miss the words {missing}; use a larger "
                        f"train_fraction or another seed")
    return split
