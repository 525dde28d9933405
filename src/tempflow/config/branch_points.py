"""Branch points of TempFlow-GRPO's trajectory branching (``algorithm.branch_points``,
``algorithm.branch_policy``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

POLICIES = ("uniform", "early", "adaptive")


@dataclass(frozen=True)
class BranchPointSpec:
    """Which trained steps branch: ``candidates`` (sorted); each iteration uses all of them
    (``subset`` None) or ``subset`` = r of them drawn without replacement by ``policy``:

    - uniform: every r-subset equally likely (a random permutation's first r);
    - early: P(j) proportional to a score that falls with j, the SDE transition std s_j
      (the noise-aware weight), drawn one by one without replacement;
    - adaptive: P(j) proportional to a running mean of step j's measured within-group reward
      std (the scheme keeps it and passes it as ``scores``).
    """

    candidates: tuple[int, ...]
    subset: int | None = None
    policy: str = "uniform"

    def draw(self, generator: Any = None, scores: Sequence[float] | None = None) -> list[int]:
        """This iteration's branch points, sorted; ``generator``: a torch.Generator; ``scores``:
        [len(candidates)] positive, needed by the early and adaptive policies."""
        if self.subset is None:
            return list(self.candidates)
        import torch

        if self.policy == "uniform":
            idx = torch.randperm(len(self.candidates), generator=generator)[:self.subset]
        else:
            if scores is None or len(scores) != len(self.candidates):
                raise ValueError(f"policy {self.policy!r} needs one score per candidate step")
            p = torch.as_tensor(list(scores), dtype=torch.float64)
            if not bool((p > 0).all()) or not bool(torch.isfinite(p).all()):
                raise ValueError(f"branch-point scores must be positive and finite, got {p.tolist()}")
            idx = torch.multinomial(p / p.sum(), self.subset, replacement=False, generator=generator)
        return sorted(self.candidates[i] for i in idx.tolist())
