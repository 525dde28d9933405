"""The training configuration: nested frozen dataclasses, validated on construction.

Construction checks every field against its annotation (an int is accepted for a float, a
mapping for a nested section, a tuple for a list) and then its range; a mistake raises
:class:`UserError` naming the dotted field, the bad value and the fix. Build one from YAML and
``--set`` overrides with :func:`tempflow.config.load_config`; change one with
``dataclasses.replace`` (which validates again). Defaults are the shapes-world TempFlow-GRPO
setting; algorithm.md gives the meaning of each constant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from tempflow.config.algorithm import AlgorithmConfig
from tempflow.config.branch_points import BranchPointSpec
from tempflow.config.section import Section
from tempflow.errors import UserError
from tempflow.models.lora import SD3_ATTENTION_TARGETS, LoraSpec

LORA_INITS = ("gaussian", "olora", "pissa", "orthogonal")


# ---------------------------------------------------------------------------- sections

@dataclass(frozen=True)
class LoraConfig(Section):
    """LoRA adapter on the denoiser (peft); see :class:`tempflow.models.lora.LoraSpec`."""

    _prefix: ClassVar[str] = "model.lora."
    rank: int = 8
    """LoRA rank r (the paper uses 32 on SD3.5-M)."""
    alpha: float = 16.0
    """Scale numerator: the update is alpha / rank * B @ A."""
    target_modules: list[str] = field(default_factory=lambda: list(SD3_ATTENTION_TARGETS))
    """Module-name suffixes to adapt (default: the 8 SD3 attention projections)."""
    init: str = "gaussian"
    """peft init: gaussian (B = 0, starts equal to the base), olora, pissa, orthogonal."""

    def _check(self) -> None:
        self._need("rank", self.rank >= 1, ">= 1", "the rank is the adapter's inner width")
        self._need("alpha", self.alpha > 0, "> 0", "alpha / rank scales the LoRA update")
        self._need("target_modules", bool(self.target_modules) and all(self.target_modules),
                   "a non-empty list of module names", "LoRA needs layers to adapt")
        self._need("init", self.init in LORA_INITS or self.init.startswith("pissa_niter_"),
                   f"one of {', '.join(LORA_INITS)}", "these are the peft initialisations supported")

    def to_spec(self) -> LoraSpec:
        """The equivalent :class:`LoraSpec` (no dropout)."""
        return LoraSpec(rank=self.rank, alpha=self.alpha, target_modules=tuple(self.target_modules),
                        init=self.init)


@dataclass(frozen=True)
class ModelConfig(Section):
    """The base flow model and what of it is trained."""

    _prefix: ClassVar[str] = "model."
    name: str = "shapes"
    """'shapes' (the shipped base), a shapes checkpoint folder, a diffusers folder or hub id."""
    resolution: int = 512
    """Image side in pixels (SD3 only; the shapes model has its own)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Model precision; the sampler's step math is always float32."""
    lora: LoraConfig | None = None
    """LoRA adapter to train; null (the default) trains the full model."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, slower)."""

    def _check(self) -> None:
        self._need("name", bool(self.name.strip()), "a model name or path", "say which model to train")
        self._need("resolution", self.resolution >= 16 and self.resolution % 16 == 0,
                   "a positive multiple of 16", "SD3 latents are 1/8 of the image, in 2x2 patches")


@dataclass(frozen=True)
class SamplingConfig(Section):
    """The sampler used for rollouts (SDE steps) and evaluation (ODE)."""

    _prefix: ClassVar[str] = "sampling."
    steps: int = 10
    """Sampling steps T of a training rollout."""
    shift: float = 3.0
    """Time shift s of the sigma schedule (SD3: 3)."""
    guidance_scale: float | None = 3.0
    """Classifier-free guidance scale; null or <= 1 disables CFG."""
    noise_level: float = 0.7
    """SDE noise level a (0.7 for SD3.5-M, 0.9 for FLUX)."""
    train_fraction: float = 0.99
    """Trained steps are the first floor(train_fraction * steps)."""
    eval_steps: int = 10
    """ODE steps for evaluation images."""
    sde_type: Literal["sde", "cps"] = "sde"
    """Stochastic step of rollouts and of the loss's log-probs: sde (Flow-GRPO's, std s_j) or cps
    (coefficients-preserving, std sigma_{j+1} sin(a pi / 2), log p = -mean (x - mean)^2)."""

    def _check(self) -> None:
        self._need("steps", self.steps >= 2, ">= 2", "GRPO needs a multi-step sampler")
        self._need("shift", self.shift > 0, "> 0", "the time shift is a ratio (1 = no shift)")
        self._need("noise_level", self.noise_level > 0, "> 0",
                   "the SDE must add noise for log-probabilities to exist")
        self._need("train_fraction", 0 < self.train_fraction <= 1, "in (0, 1]",
                   "it is the fraction of the steps that are trained")
        self._need("train_fraction", len(self.trained_steps()) >= 1, f">= 1/{self.steps}",
                   f"at least one of the {self.steps} steps must be trained")
        self._need("eval_steps", self.eval_steps >= 1, ">= 1", "evaluation needs a step")
        if self.sde_type == "cps":
            self._need("noise_level", self.noise_level <= 1, "<= 1 with sde_type cps",
                       "CPS's std is sigma_next sin(a pi / 2), defined for a in [0, 1]")
            self._need("train_fraction", len(self.trained_steps()) < self.steps,
                       f"< 1 with sde_type cps (at most {self.steps - 1} of {self.steps} steps trained)",
                       "CPS's last step ends at sigma = 0 with std 0, so it has no log-probability")

    @property
    def use_cfg(self) -> bool:
        """Whether classifier-free guidance is on (guidance_scale > 1)."""
        return self.guidance_scale is not None and self.guidance_scale > 1

    def trained_steps(self) -> list[int]:
        """[0, ..., floor(train_fraction * steps) - 1] (floor robust to float round-off)."""
        from tempflow.sampling.schedule import trained_steps
        return trained_steps(self.steps, self.train_fraction)


@dataclass(frozen=True)
class OptimConfig(Section):
    """The optimisation loop: iterations, batches, AdamW, EMA."""

    _prefix: ClassVar[str] = "train."
    iterations: int = 115
    """Iterations (sample, score, train)."""
    prompts_per_iteration: int = 4
    """Prompts sampled per iteration (over all processes)."""
    inner_epochs: int = 1
    """Passes over each iteration's samples."""
    minibatches: int = 1
    """Optimizer steps per pass (the rows are split into this many minibatches)."""
    grad_accumulation: int = 1
    """Backward passes per minibatch (its rows in this many micro-batches, gradients synchronised
    after the last: less activation memory, the same update up to float rounding)."""
    lr: float = 1e-4
    """AdamW learning rate."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    ema_decay: float = 0.9
    """EMA decay of the trainable weights."""
    ema_every: int = 8
    """EMA update every this many optimizer steps; 0 disables EMA."""
    ema_warmup: bool = True
    """Decay min((1 + t) / (10 + t), ema_decay) at the t-th EMA update (the published code's warm-up, so early EMA weights are not held near the base); false: constant ema_decay."""
    seed: int = 0
    """Seed for prompts, noise and branch points."""
    max_nonfinite: int = 3
    """Stop with an error after this many iterations in a row with a non-finite model output, loss or gradient."""

    def _check(self) -> None:
        for name in ("iterations", "prompts_per_iteration", "inner_epochs", "minibatches", "grad_accumulation"):
            self._need(name, getattr(self, name) >= 1, ">= 1", "it counts rounds of work")
        self._need("lr", self.lr > 0, "> 0", "the optimizer needs a step size (e.g. 3e-4)")
        self._need("weight_decay", self.weight_decay >= 0, ">= 0", "0 disables weight decay")
        self._need("grad_clip", self.grad_clip > 0, "> 0", "it is the maximal gradient norm")
        self._need("ema_decay", 0 <= self.ema_decay < 1, "in [0, 1)", "1 would freeze the EMA")
        self._need("ema_every", self.ema_every >= 0, ">= 0", "0 disables the EMA")
        self._need("seed", self.seed >= 0, ">= 0", "random generators take non-negative seeds")
        self._need("max_nonfinite", self.max_nonfinite >= 1, ">= 1",
                   "it counts non-finite iterations in a row before stopping")


@dataclass(frozen=True)
class RewardComponentConfig(Section):
    """One weighted reward of ``reward.components`` (docs/rewards.md)."""

    _prefix: ClassVar[str] = "reward.components[]."
    name: str = ""
    """Reward name or 'module.path:factory'."""
    weight: float = 1.0
    """Weight w_k in sum_k w_k R_k (negative: a penalty)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the reward's factory."""
    label: str = ""
    """Name in the logs (reward/<label>/mean); default: the reward name."""

    def _check(self) -> None:
        self._need("name", bool(self.name.strip()), "a reward name", "say which reward this component is")
        self._need("weight", self.weight != 0, "non-zero", "a zero weight leaves the component out; remove it")


@dataclass(frozen=True)
class RewardConfig(Section):
    """The reward: one reward by name, or 'weighted' over several components (docs/rewards.md)."""

    _prefix: ClassVar[str] = "reward."
    name: str = "shapes"
    """Reward name (shapes, pickscore, remote, weighted, ...) or 'module.path:factory'."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the reward's factory."""
    components: list[RewardComponentConfig] = field(default_factory=list)
    """With name 'weighted': the rewards summed, each {name, weight, kwargs, label}."""
    combine: Literal["sum_then_normalise", "normalise_then_sum"] = "sum_then_normalise"
    """Advantages of the weighted sum, or the weighted sum of each component's advantages."""
    max_failed_iterations: int = 3
    """Stop with an error when every sample's reward fails this many iterations in a row."""
    score_chunks: int = 1
    """Sample each process's prompts in this many chunks; a chunk is decoded and scored in a
    worker thread while the next one samples (1: score after sampling everything)."""
    async_scoring: bool = True
    """Score chunks in a worker thread (false: in the main thread, for debugging)."""
    device: str | None = None
    """Where reward models run: null (each process scores its own images on its own device) or a
    torch device such as 'cpu' or 'cuda:7' (images are moved there before scoring)."""

    def _check(self) -> None:
        self._need("name", bool(self.name.strip()), "a reward name", "say which reward to optimise")
        weighted = self.name == "weighted"
        self._need("components", weighted or not self.components, "empty unless reward.name is 'weighted'",
                   "set reward.name: weighted to combine the components")
        self._need("components", not weighted or bool(self.components), "a non-empty list",
                   "'weighted' sums the rewards listed there, e.g. [{name: shapes, weight: 1.0}]")
        self._need("kwargs", not weighted or not self.kwargs, "empty when reward.name is 'weighted'",
                   "give each component its own kwargs")
        labels = [c.label or c.name for c in self.components]
        self._need("components", len(set(labels)) == len(labels), "uniquely labelled",
                   "give components of the same reward different labels")
        self._need("max_failed_iterations", self.max_failed_iterations >= 1, ">= 1",
                   "it counts iterations in a row whose rewards all failed")
        self._need("score_chunks", self.score_chunks >= 1, ">= 1", "1 scores everything at once")
        self._need("device", self.device is None or bool(re.fullmatch(r"cpu|(cuda|xpu|npu)(:\d+)?|mps", self.device)),
                   "null, 'cpu' or 'cuda:<index>'", "null scores on each process's own device")


@dataclass(frozen=True)
class PromptsConfig(Section):
    """Prompt sources: 'shapes:<split>' or a prompt file (one prompt a line)."""

    _prefix: ClassVar[str] = "prompts."
    train: str = "shapes:train"
    """Training prompts."""
    eval: str = "shapes:heldout"
    """Held-out evaluation prompts."""
    balance: Literal["category", "uniform"] = "category"
    """Per-iteration draw: categories first, uniformly, then a prompt of each (GenEval's overall
    is the mean over categories), or prompts uniformly. Prompt files have one category."""

    def _check(self) -> None:
        for name in ("train", "eval"):
            value = getattr(self, name)
            self._need(name, bool(value.strip()) and value != "shapes:", "'shapes:<split>' or a file path",
                       "say where the prompts come from, e.g. shapes:train")


@dataclass(frozen=True)
class RunConfig(Section):
    """Outputs: run folder, evaluation, checkpoints, logged images."""

    _prefix: ClassVar[str] = "run."
    out: str = "runs/shapes-tempflow"
    """Run folder (config, logs, checkpoints, images)."""
    eval_every: int = 115
    """Evaluate every this many iterations; 0 disables."""
    eval_images_per_prompt: int = 16
    """Evaluation images per held-out prompt."""
    save_every: int = 50
    """Save a full-state checkpoint (and the LoRA) every this many iterations and at the end; 0: only at the end."""
    keep_checkpoints: int = 3
    """Full-state checkpoints kept in checkpoints/ (older ones are deleted)."""
    kl_stop: float | None = None
    """Stop early (with a checkpoint) when an iteration's KL to the reference exceeds this; null: never."""
    log_images_every: int = 10
    """Log a grid of training images every this many iterations; 0 disables."""
    overwrite: bool = False
    """Start afresh in an existing run folder, replacing it."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Experiment trackers that get the metrics, grids and final table: tensorboard (tb/), wandb,
    swanlab, mlflow, trackio (each but tensorboard needs its extra, e.g. tempflow[wandb]); [] for none."""

    def _check(self) -> None:
        from tempflow.training.trackers import TRACKERS

        self._need("out", bool(self.out.strip()), "a folder path", "runs need a place to write")
        bad = [n for n in self.report_to if n not in TRACKERS]
        self._need("report_to", not bad, f"a list of trackers from {', '.join(TRACKERS)}",
                   f"{bad[0]!r} is not a tracker tempflow knows" if bad else "")
        self._need("report_to", len(set(self.report_to)) == len(self.report_to), "a list without repeats",
                   "each tracker is opened once")
        for name in ("eval_every", "save_every", "log_images_every"):
            self._need(name, getattr(self, name) >= 0, ">= 0", "it is an interval; 0 disables")
        self._need("eval_images_per_prompt", self.eval_images_per_prompt >= 1, ">= 1",
                   "evaluation draws images")
        self._need("keep_checkpoints", self.keep_checkpoints >= 1, ">= 1",
                   "resuming needs at least the newest checkpoint")
        self._need("kl_stop", self.kl_stop is None or self.kl_stop > 0, "> 0 or null",
                   "it bounds the KL to the reference; null disables early stopping")


@dataclass(frozen=True)
class TrainConfig(Section):
    """Everything a training run needs (``tempflow train``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def _check(self) -> None:
        a, n = self.algorithm, len(self.trained_steps())
        trained = (f"only the first {n} of sampling.steps={self.sampling.steps} steps are trained "
                   f"(sampling.train_fraction={self.sampling.train_fraction})")
        if a.scheme == "single_step" and a.sde_step is not None and a.sde_step >= n:
            raise UserError(f"algorithm.sde_step must lie in 0..{n - 1} (got {a.sde_step}): {trained}")
        if a.scheme == "sde_window":
            if a.window_size > n:
                raise UserError(f"algorithm.window_size must be in 1..{n} (got {a.window_size}): {trained}")
            if a.window_start is not None and a.window_start + a.window_size > n:
                raise UserError(f"algorithm.window_start must lie in 0..{n - a.window_size} (got "
                                f"{a.window_start}): the window of {a.window_size} steps must fit; {trained}")
        if a.scheme != "branching":
            return  # branch points are unused
        bp = a.branch_points
        if isinstance(bp, list) and max(bp) >= n:
            raise UserError(f"algorithm.branch_points must lie in 0..{n - 1} (got {bp}): only the "
                            f"first {n} of sampling.steps={self.sampling.steps} steps are trained "
                            f"(sampling.train_fraction={self.sampling.train_fraction})")
        if isinstance(bp, int) and bp > n:
            raise UserError(f"algorithm.branch_points must be in 1..{n} (got {bp}): it draws that "
                            f"many of the {n} trained steps each iteration")
        if a.branch_policy != "uniform" and not isinstance(bp, int):
            raise UserError(f"algorithm.branch_policy {a.branch_policy!r} needs algorithm.branch_points "
                            f"to be a number r of steps to draw (got {bp!r}); 'all' and lists draw nothing")

    def trained_steps(self) -> list[int]:
        """Indices of the trained sampling steps, [0, ..., floor(train_fraction * steps) - 1]."""
        return self.sampling.trained_steps()

    def branch_point_spec(self) -> BranchPointSpec:
        """The branch points of algorithm.branch_points (ValueError when branching is off)."""
        if self.algorithm.scheme != "branching":
            raise ValueError(f"algorithm.scheme is {self.algorithm.scheme!r}: only branching has branch points")
        bp = self.algorithm.branch_points
        if bp == "all":
            return BranchPointSpec(tuple(self.trained_steps()))
        if isinstance(bp, list):
            return BranchPointSpec(tuple(sorted(bp)))
        return BranchPointSpec(tuple(self.trained_steps()), None if bp == len(self.trained_steps()) else bp,
                               self.algorithm.branch_policy)
