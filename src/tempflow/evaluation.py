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
    passed: torch.Tensor | None  # bool [N] (shapes prompts only)
    score: torch.Tensor | None   # float32 [N] verifier score (shapes prompts only)
    images: torch.Tensor  # float32 [N, 3, H, W]
    reward: torch.Tensor | None = None  # float32 [N], the configured reward (if any)

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

    def summary(self) -> dict[str, float]:
        """Flat metrics: eval/pass_rate (GenEval overall), per category, eval/score, eval/reward."""
        out = {}
        if self.passed is not None:
            table = self.table()
            out = {"eval/pass_rate": table["overall"]["pass_rate"], "eval/score": table["overall"]["score"]}
            out.update({f"eval/pass_rate/{c}": r["pass_rate"] for c, r in table.items() if c != "overall"})
        if self.reward is not None:
            finite = self.reward[torch.isfinite(self.reward)]
            out["eval/reward"] = float(finite.mean()) if finite.numel() else float("nan")
        return out

    def format_table(self) -> str:
        lines = [f"{'category':<14} {'pass rate':>9} {'score':>6} {'n':>5}"]
        for c, r in self.table().items():
            lines.append(f"{c:<14} {r['pass_rate']:>9.3f} {r['score']:>6.3f} {r['n']:>5}")
        return "\n".join(lines)


@torch.no_grad()
def sample_eval_images(model: FlowModel, prompts: list[str], images_per_prompt: int, steps: int,
                       shift: float, guidance_scale: float | None, seed: int,
                       batch_size: int = 256) -> torch.Tensor:
    """ODE samples, ``images_per_prompt`` per prompt in order: float32 [N, 3, H, W] in [0, 1].

    The initial noise depends only on ``seed`` and the position in the list, so two models
    evaluated with the same arguments start from the same points.
    """
    flat = [p for p in prompts for _ in range(images_per_prompt)]
    gen = torch.Generator().manual_seed(seed)
    noise = model.initial_noise(len(flat), gen).to(model.device)
    sigmas = flow_sigmas(steps, shift).to(model.device)
    images = []
    for start in range(0, len(flat), batch_size):
        chunk = flat[start:start + batch_size]
        cond = model.encode_prompts(chunk)
        x = sample_ode(model, cond, noise[start:start + len(chunk)], sigmas, guidance_scale)
        images.append(model.decode_images(x).cpu())
    return torch.cat(images)


def evaluate_shapes(model: FlowModel, prompts: list[tuple[str, str]], images_per_prompt: int = 4,
                    steps: int = 20, shift: float = 3.0, guidance_scale: float | None = 3.0,
                    seed: int = 0, reward=None) -> EvalResult:
    """Sample ``images_per_prompt`` images per (prompt, category) with the ODE and verify them
    (and score them with ``reward`` if given)."""
    from tempflow.shapes import verify_batch

    images = sample_eval_images(model, [p for p, _ in prompts], images_per_prompt, steps, shift,
                                guidance_scale, seed)
    flat = [(p, c) for p, c in prompts for _ in range(images_per_prompt)]
    texts = [p for p, _ in flat]
    passed, score = verify_batch(images, texts)
    values = None
    if reward is not None:
        from tempflow.rewards import score as reward_score
        values = reward_score(reward, images, texts)
    return EvalResult(texts, [c for _, c in flat], passed, score, images, values)


def evaluate_prompts(model: FlowModel, prompt_set, reward, images_per_prompt: int, steps: int,
                     shift: float, guidance_scale: float | None, seed: int) -> EvalResult:
    """Evaluation on a :class:`~tempflow.training.prompts.PromptSet`: the shapes verifier's
    GenEval-style table when the prompts are shapes-world prompts, the reward's mean always."""
    from tempflow.errors import UserError
    from tempflow.shapes import parse

    try:
        for p in prompt_set.prompts:
            parse(p)
        is_shapes = True
    except UserError:
        is_shapes = False
    if is_shapes:
        return evaluate_shapes(model, list(zip(prompt_set.prompts, prompt_set.categories)),
                               images_per_prompt, steps, shift, guidance_scale, seed, reward)
    images = sample_eval_images(model, prompt_set.prompts, images_per_prompt, steps, shift,
                                guidance_scale, seed)
    from tempflow.rewards import score as reward_score
    texts = [p for p in prompt_set.prompts for _ in range(images_per_prompt)]
    return EvalResult(texts, ["all"] * len(texts), None, None, images,
                      reward_score(reward, images, texts))
