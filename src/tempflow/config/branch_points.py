"""Branch points of TempFlow-GRPO's trajectory branching (``algorithm.branch_points``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BranchPointSpec:
    """Which trained steps branch: ``candidates`` (sorted); each iteration uses all of them
    (``subset`` None) or ``subset`` of them drawn at random without replacement."""

    candidates: tuple[int, ...]
    subset: int | None = None

    def draw(self, generator: Any = None) -> list[int]:
        """This iteration's branch points, sorted; ``generator``: a torch.Generator."""
        if self.subset is None:
            return list(self.candidates)
        import torch

        idx = torch.randperm(len(self.candidates), generator=generator)[:self.subset]
        return sorted(self.candidates[i] for i in idx.tolist())
