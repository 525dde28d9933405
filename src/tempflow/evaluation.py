"""GenEval-style evaluation on the shapes world: deterministic ODE samples, verifier scores."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from tempflow.models.base import FlowModel
from tempflow.sampling import flow_sigmas
from tempflow.sampling.loops import sample_ode


@dataclass
class EvalResult:
    """Per-image results plus the GenEval-style table (pass rate per category and overall)."""

    prompts: list[str]
    categories: list[str]
    passed: torch.Tensor  # bool [N]
    score: torch.Tensor   # float32 [N]
    images: torch.Tensor  # float32 [N, 3, H, W]

    def table(self) -> dict[str, dict[str, float]]:
        """{category: {"pass_rate", "score", "n"}} with an "overall" row (mean over categories,
        as GenEval reports it)."""
        rows = defaultdict(list)
        for i, c in enumerate(self.categories):
            rows[c].append(i)
        out = {c: {"pass_rate": float(self.passed[idx].float().mean()),
                   "score": float(self.score[idx].mean()), "n": len(idx)}
               for c, idx in sorted(rows.items())}
        out["overall"] = {"pass_rate": sum(r["pass_rate"] for r in out.values()) / len(out),
                          "score": sum(r["score"] for r in out.values()) / len(out),
                          "n": len(self.prompts)}
        return out

    def format_table(self) -> str:
        lines = [f"{'category':<14} {'pass rate':>9} {'score':>6} {'n':>5}"]
        for c, r in self.table().items():
            lines.append(f"{c:<14} {r['pass_rate']:>9.3f} {r['score']:>6.3f} {r['n']:>5}")
        return "\n".join(lines)


@torch.no_grad()
def evaluate_shapes(model: FlowModel, prompts: list[tuple[str, str]], images_per_prompt: int = 4,
                    steps: int = 20, shift: float = 3.0, guidance_scale: float | None = 3.0,
                    seed: int = 0, batch_size: int = 256) -> EvalResult:
    """Sample ``images_per_prompt`` images per (prompt, category) with the ODE and verify them.

    The initial noise depends only on ``seed`` and the position in the list, so two models
    evaluated with the same arguments see the same starting points.
    """
    from tempflow.shapes import verify_batch

    flat = [(p, c) for p, c in prompts for _ in range(images_per_prompt)]
    gen = torch.Generator().manual_seed(seed)
    noise = model.initial_noise(len(flat), gen)
    sigmas = flow_sigmas(steps, shift)
    images = []
    for start in range(0, len(flat), batch_size):
        chunk = flat[start:start + batch_size]
        cond = model.encode_prompts([p for p, _ in chunk])
        x = sample_ode(model, cond, noise[start:start + len(chunk)], sigmas, guidance_scale)
        images.append(model.decode_images(x))
    images = torch.cat(images)
    passed, score = verify_batch(images, [p for p, _ in flat])
    return EvalResult([p for p, _ in flat], [c for _, c in flat], passed, score, images)
