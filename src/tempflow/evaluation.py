"""GenEval-style evaluation: deterministic ODE samples, verifier scores, reward means.

The per-category table comes from the shapes verifier on shapes prompts, or from a reward
that offers ``verify(images, prompts, metadata) -> (values, passed)`` (a pass / fail per
image, 1.0 / 0.0, NaN where not scored), e.g. ``geneval_remote`` on GenEval metadata prompts.

What to evaluate (:func:`resolve_target`) is the bare base model, a checkpoint folder, a LoRA
folder, or a training run folder (its config's model, sampler, prompts and reward, and its
LoRA); :func:`evaluate_prompts` samples and scores; :func:`write_eval` writes eval.json and
one grid per category.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from tempflow.models.base import FlowModel
from tempflow.sampling.loops import sample_ode


@dataclass
class EvalResult:
    """Per-image results plus the GenEval-style table (pass rate per category and overall)."""

    prompts: list[str]
    categories: list[str]
    passed: torch.Tensor | None  # bool [N] (shapes prompts, or a reward with verify)
    score: torch.Tensor | None   # float32 [N] verifier score, NaN where not scored (failed)
    images: torch.Tensor  # float32 [N, 3, H, W]
    reward: torch.Tensor | None = None  # float32 [N], the configured reward (if any)

    def table(self) -> dict[str, dict[str, float]]:
        """{category: {"pass_rate", "score", "n", "failed"}} with an "overall" row (mean over
        categories, as GenEval reports it). Images not scored (score NaN) are left out of the
        rates and counted in "failed"; a category with none scored has NaN rates."""
        rows = defaultdict(list)
        for i, c in enumerate(self.categories):
            rows[c].append(i)
        out = {}
        for c, idx in sorted(rows.items()):
            ok = torch.isfinite(self.score[idx])
            n_ok = int(ok.sum())
            out[c] = {"pass_rate": float(self.passed[idx][ok].float().sum()) / n_ok if n_ok else float("nan"),
                      "score": float(self.score[idx][ok].sum()) / n_ok if n_ok else float("nan"),
                      "n": len(idx), "failed": len(idx) - n_ok}
        out["overall"] = {"pass_rate": sum(r["pass_rate"] for r in out.values()) / len(out),
                          "score": sum(r["score"] for r in out.values()) / len(out),
                          "n": len(self.prompts), "failed": sum(r["failed"] for r in out.values())}
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

    def format_table(self, reward_name: str | None = None) -> str:
        """The GenEval-style table as text (when verified), then the reward's mean (when scored)."""
        lines = []
        if self.passed is not None:
            table = self.table()
            failed = table["overall"]["failed"] > 0
            lines.append(f"{'category':<14} {'pass rate':>9} {'score':>6} {'n':>5}" + (" failed" if failed else ""))
            for c, r in table.items():
                lines.append(f"{c:<14} {r['pass_rate']:>9.3f} {r['score']:>6.3f} {r['n']:>5}"
                             + (f" {r['failed']:>6}" if failed else ""))
        if self.reward is not None:
            mean = self.summary()["eval/reward"]
            lines.append(f"reward{f' ({reward_name})' if reward_name else ''}: mean {mean:.4f} "
                         f"over {len(self.prompts)} images")
        return "\n".join(lines)

    def to_json(self, meta: dict) -> dict:
        """eval.json's content: ``meta`` (what was evaluated, how), the table, the flat summary
        and one record per image (prompt, category, passed, score, reward)."""
        rows = []
        for i, (p, c) in enumerate(zip(self.prompts, self.categories)):
            row = {"prompt": p, "category": c}
            if self.passed is not None:
                ok = bool(torch.isfinite(self.score[i]))
                row.update(passed=bool(self.passed[i]) if ok else None,
                           score=round(float(self.score[i]), 4) if ok else None)
            if self.reward is not None:
                row["reward"] = round(float(self.reward[i]), 4)
            rows.append(row)
        return {**meta, "table": self.table() if self.passed is not None else None,
                "summary": self.summary(), "images": rows}


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
    from tempflow.models import model_sigmas
    sigmas = model_sigmas(model, steps, shift).to(model.device)
    images = []
    for start in range(0, len(flat), batch_size):
        chunk = flat[start:start + batch_size]
        cond = model.encode_prompts(chunk)
        x = sample_ode(model, cond, noise[start:start + len(chunk)], sigmas, guidance_scale)
        images.append(model.decode_images(x).cpu())
    return torch.cat(images)


def evaluate_shapes(model: FlowModel, prompts: list[tuple[str, str]], images_per_prompt: int = 4,
                    steps: int = 20, shift: float = 3.0, guidance_scale: float | None = 3.0,
                    seed: int = 0, reward=None, metadata: list[dict] | None = None) -> EvalResult:
    """Sample ``images_per_prompt`` images per (prompt, category) with the ODE and verify them
    (and score them with ``reward`` if given, passing ``metadata``, one dict per prompt)."""
    from tempflow.shapes import verify_batch

    images = sample_eval_images(model, [p for p, _ in prompts], images_per_prompt, steps, shift,
                                guidance_scale, seed)
    flat = [(p, c) for p, c in prompts for _ in range(images_per_prompt)]
    texts = [p for p, _ in flat]
    passed, score = verify_batch(images, texts)
    values = None
    if reward is not None:
        from tempflow.rewards import score as reward_score
        meta = (None if metadata is None or not takes_metadata(reward)
                else [m for m in metadata for _ in range(images_per_prompt)])
        values = reward_score(reward, images, texts, meta)
    return EvalResult(texts, [c for _, c in flat], passed, score, images, values)


def evaluate_prompts(model: FlowModel, prompt_set, reward, images_per_prompt: int, steps: int,
                     shift: float, guidance_scale: float | None, seed: int,
                     verify: bool = True) -> EvalResult:
    """Evaluation on a :class:`~tempflow.training.prompts.PromptSet`: the shapes verifier's
    GenEval-style table when the prompts are shapes-world prompts (and ``verify``); the table
    from ``reward.verify`` (module docstring) when the reward has one and the prompts carry
    metadata or are not shapes-verified; the reward's mean whenever ``reward`` is given. The
    set's metadata (if any) is passed to the reward."""
    from tempflow.errors import UserError
    from tempflow.shapes import parse

    metadata = getattr(prompt_set, "metadata", None)
    reward_verifies = reward is not None and callable(getattr(reward, "verify", None))
    try:
        for p in prompt_set.prompts:
            parse(p)
        is_shapes = verify and not (reward_verifies and metadata is not None)
    except UserError:
        is_shapes = False
    if is_shapes:
        return evaluate_shapes(model, list(zip(prompt_set.prompts, prompt_set.categories)),
                               images_per_prompt, steps, shift, guidance_scale, seed, reward, metadata)
    images = sample_eval_images(model, prompt_set.prompts, images_per_prompt, steps, shift,
                                guidance_scale, seed)
    texts = [p for p in prompt_set.prompts for _ in range(images_per_prompt)]
    cats = [c for c in prompt_set.categories for _ in range(images_per_prompt)]
    meta = None if metadata is None else [m for m in metadata for _ in range(images_per_prompt)]
    values = None
    if reward_verifies:
        values, passed = reward_verify(reward, images, texts, meta)
        return EvalResult(texts, cats, passed == 1, values, images, values)
    if reward is not None:
        from tempflow.rewards import score as reward_score
        values = reward_score(reward, images, texts, meta if takes_metadata(reward) else None)
    return EvalResult(texts, cats, None, None, images, values)


def takes_metadata(reward) -> bool:
    """Whether ``reward`` can be called as reward(images, prompts, metadata)."""
    from tempflow.rewards.registry import takes_metadata as takes

    return takes(reward)


def reward_verify(reward, images: torch.Tensor, texts: list[str], meta: list[dict] | None):
    """(values, passed), float32 [N] each, from ``reward.verify``: NaN in both where either is
    not finite or the pass is not 0 / 1 (a sample not scored)."""
    from tempflow.errors import UserError

    got = reward.verify(images, texts, meta) if meta is not None else reward.verify(images, texts)
    values, passed = (torch.as_tensor(t).detach().float().cpu().reshape(-1) for t in got)
    if values.numel() != len(texts) or passed.numel() != len(texts):
        raise UserError(f"the reward's verify returned {values.numel()} values and {passed.numel()} "
                        f"passes for {len(texts)} images (it must return one of each per image)")
    bad = ~torch.isfinite(values) | ~((passed == 0) | (passed == 1))
    nan = torch.full_like(values, float("nan"))
    return torch.where(bad, nan, values), torch.where(bad, nan, passed)


@dataclass
class EvalTarget:
    """What to evaluate: ``model`` (a spec for :func:`tempflow.models.load_model`), an optional
    LoRA folder, and the run's config and folder when the target is a training run folder (a run
    of full fine-tuning has no LoRA: its weights are in its checkpoints)."""

    model: str | None
    lora: Path | None = None
    config: object | None = None  # tempflow.config.TrainConfig of a run folder
    run: Path | None = None

    def describe(self) -> str:
        base = self.model or "shapes"
        if self.run is not None and self.lora is None:
            return f"{base} fine-tuned by run {self.run}"
        return f"{base} + LoRA {self.lora}" if self.lora else base

    def load(self, device, checkpoint: int | None = None, weights: str = "ema"):
        """(model, iteration of the checkpoint its weights come from, or None): the base plus
        the LoRA; or, for a run folder with ``checkpoint`` given or without a LoRA, checkpoint
        ``checkpoint`` (None: the newest) with its EMA or raw weights."""
        if checkpoint is not None or (self.run is not None and self.lora is None):
            from tempflow.training.export import load_run_model

            if self.run is None:
                from tempflow.errors import UserError
                raise UserError("a checkpoint belongs to a run: give the run folder as the target")
            model, _, ckpt = load_run_model(self.run, checkpoint, device=device, weights=weights)
            return model, ckpt.iteration
        from tempflow.models import load_model

        model = load_model(self.model, device=device)
        if self.lora:
            model.load_lora(self.lora)
        return model, None


LORA_FILE = "pytorch_lora_weights.safetensors"


def resolve_target(path: str | None, model: str | None = None, lora: str | None = None,
                   allow_imports: tuple[str, ...] | list[str] = ()) -> EvalTarget:
    """A run folder (config.yaml + lora/, or checkpoints/ of full fine-tuning), a LoRA folder, a
    checkpoint / diffusers folder, or None (``model`` and ``lora`` as given; None is the shipped
    base). UserError otherwise.
    A run's config may name reward factories only from ``allow_imports`` (docs/security.md)."""
    from tempflow.errors import UserError

    if path is None:
        return EvalTarget(model, Path(lora) if lora else None)
    p = Path(path).expanduser()
    if not p.is_dir():
        raise UserError(f"{path!r} is not a folder: give a run folder (with config.yaml), a LoRA "
                        f"folder, a checkpoint folder, or nothing for the base model")
    if (p / "config.yaml").is_file():
        from tempflow.config import load_config
        cfg = load_config(p / "config.yaml", allow_imports=allow_imports)
        if cfg.model.lora is None:  # full fine-tuning: the weights are in its checkpoints
            return EvalTarget(model or cfg.model.name, None, cfg, run=p)
        if not (p / "lora" / LORA_FILE).is_file():
            raise UserError(f"run {path!r} has no lora/{LORA_FILE} yet (it saves every "
                            f"run.save_every iterations); wait for a save or evaluate another run")
        return EvalTarget(model or cfg.model.name, Path(lora) if lora else p / "lora", cfg, p)
    if (p / LORA_FILE).is_file():
        return EvalTarget(model, p)
    if (p / "config.json").is_file() or (p / "model_index.json").is_file():
        return EvalTarget(str(p), Path(lora) if lora else None)
    raise UserError(f"{path!r} is neither a run folder (config.yaml), a LoRA folder ({LORA_FILE}) "
                    f"nor a model checkpoint (config.json or model_index.json)")


def write_eval(res: EvalResult, out: str | Path, meta: dict, images_per_prompt: int) -> Path:
    """eval.json (see :meth:`EvalResult.to_json`) and one grid per category (``images_per_prompt``
    images of a prompt in a row, same order as eval.json) under ``out``; returns eval.json."""
    from tempflow.utils.images import save_grid

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "eval.json"
    path.write_text(json.dumps(res.to_json(meta), indent=1) + "\n")
    for cat in sorted(set(res.categories)):
        idx = [i for i, c in enumerate(res.categories) if c == cat]
        save_grid(res.images[idx], out / f"{cat}.png", nrow=images_per_prompt,
                  prompts=[res.prompts[i] for i in idx])
    return path
