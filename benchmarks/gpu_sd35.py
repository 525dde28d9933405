"""Time per iteration, peak GPU memory and training TFLOP/s at SD3.5-Medium's size (or another family's).

    python benchmarks/gpu_sd35.py [--model sd35] [--algorithms tempflow flowgrpo] [--prompts 1] [--iterations 2]
    python benchmarks/gpu_sd35.py --tiny        # a 2-layer stand-in that runs on a CPU in seconds
    python benchmarks/gpu_sd35.py --model flux  # flux | qwenimage | zimage | flux2: benchmarks/gpu_families.py

``--model`` other than sd35 builds FLUX.1-dev, Qwen-Image, Z-Image-Turbo or FLUX.2 klein 4B at
their public config sizes (random weights) behind the project's own adapter for the family,
with random prompt embeddings of the family's text-encoder shapes, 512 px and the family's
default guidance (FLUX.1-dev: distilled guidance 3.5, no CFG; Qwen-Image: true CFG 4;
Z-Image-Turbo and FLUX.2 klein: no CFG; ``--cfg`` overrides); see benchmarks/gpu_families.py.
Model evaluations are checked against :func:`expected_nfe` (a CFG call counts 2).

An ``SD3Transformer2DModel`` with SD3.5-Medium's architecture (random weights: timing needs no
download) and the SD3.5 VAE's decoder architecture, LoRA r = 32 / alpha 64 on the eight
attention projections, 512 px (latents 16 x 64 x 64), CFG 4.5 with the unconditional half
detached in training, T = 10 sampling steps, a = 0.7 (algorithm.md section 6). Prompt
embeddings are random tensors of the real shapes (CLIP 77 + T5 256 tokens x 4096, pooled
2048): the text encoders run once per prompt and are left out. The reward is a random number
per image (a reward model's cost is its own). The paper's groups: TempFlow-GRPO 4 seeds x 6
branches at every trained step, Flow-GRPO G = 24 trajectories, 2 optimizer steps per
iteration; the paper's 48 prompts per iteration are spread over many GPUs, so one GPU takes
``--prompts`` of them (default 1).

Each algorithm runs in its own process; the first iteration is a warm-up and also counts the
training phase's floating-point operations (torch.utils.flop_counter), so achieved TFLOP/s =
those FLOPs / the measured training time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
try:
    import tempflow  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))
if str(Path(__file__).resolve().parent) not in sys.path:  # gpu_families.py, also when imported
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from tempflow.models.base import Conditioning, FlowModel  # noqa: E402
from tempflow.models.lora import TransformerAdapterMixin  # noqa: E402
from tempflow.utils.child_process import emit_result, run_child  # noqa: E402

# stabilityai/stable-diffusion-3.5-medium, transformer/config.json (public)
SD35_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                   attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                   caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
                   dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
# stabilityai/stable-diffusion-3.5-medium, vae/config.json (public)
SD35_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=1.5305, shift_factor=0.0609,
                use_quant_conv=False, use_post_quant_conv=False, sample_size=1024)
TEXT_TOKENS, RESOLUTION = 77 + 256, 512   # CLIP + T5 (max_sequence_length 256); image side
TINY = dict(sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=16,
            pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm")
TINY_VAE = dict(SD35_VAE, block_out_channels=(8, 8), layers_per_block=1,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                norm_num_groups=4, sample_size=32)


class RandomTextSD3(TransformerAdapterMixin, FlowModel):
    """SD3 transformer + VAE decoder with random prompt embeddings (one fixed tensor per prompt
    string): the FlowModel interface the rollouts and the loss use, without text encoders."""

    def __init__(self, transformer, vae, text_tokens: int, side: int):
        super().__init__()
        self.transformer, self.vae = transformer, vae
        self.device, self.dtype = transformer.device, transformer.dtype
        self.text_tokens, self.side = text_tokens, side

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.transformer.config.in_channels, self.side, self.side)

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """prompt_embeds [B, L, D] and pooled [B, P], random but fixed per prompt string."""
        c = self.transformer.config
        rows = []
        for p in prompts:
            g = torch.Generator().manual_seed(sum(map(ord, p)))
            rows.append((torch.randn(self.text_tokens, c.joint_attention_dim, generator=g),
                         torch.randn(c.pooled_projection_dim, generator=g)))
        return Conditioning({"prompt_embeds": torch.stack([r[0] for r in rows]).to(self.device, self.dtype),
                             "pooled_prompt_embeds": torch.stack([r[1] for r in rows]).to(self.device, self.dtype)})

    def encode_negative(self, n: int) -> Conditioning:
        return self.encode_prompts([""]).repeat_interleave(n)

    def _forward(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        t = cond.tensors
        return self.transformer(hidden_states=x, encoder_hidden_states=t["prompt_embeds"],
                                pooled_projections=t["pooled_prompt_embeds"],
                                timestep=1000.0 * sigma, return_dict=False)[0]

    def decode(self, x: Tensor) -> Tensor:
        cfg = self.vae.config
        image = self.vae.decode(x.to(self.vae.dtype) / cfg.scaling_factor + cfg.shift_factor, return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)


MODELS = ("sd35", "flux", "qwenimage", "zimage", "flux2")


def default_cfg(model: str) -> float:
    """The CFG scale a family samples with by default (1: off): SD3.5 4.5, the others' in gpu_families."""
    if model == "sd35":
        return 4.5
    from gpu_families import SPECS

    return SPECS[model].cfg


def expected_nfe(algo: str, a: argparse.Namespace) -> int:
    """Model evaluations of one iteration (FlowModel counts a CFG call as 2): sampling, then a
    policy and a reference call per training row. TempFlow-GRPO: per prompt and seed one
    trajectory of T steps plus K branches from each trained step j = 0..T-2 over the T-1-j steps
    left; Flow-GRPO: G trajectories of T steps; training rows = (seeds or G) x (T - 1) per prompt,
    all valid (random rewards), each with a reference call (KL coefficient 0.004 > 0)."""
    c = 2 if a.cfg > 1 else 1
    t = a.steps
    if algo == "tempflow":
        sampling = a.prompts * a.seeds * (t + a.branches * t * (t - 1) // 2)
        rows = a.prompts * a.seeds * (t - 1)
    else:
        sampling = a.prompts * a.group * t
        rows = a.prompts * a.group * (t - 1)
    return c * (sampling + 2 * rows)


def build_model(tiny: bool, device: str, dtype: torch.dtype, rank: int, model: str = "sd35") -> FlowModel:
    """Random-weight SD3.5-Medium (or the tiny stand-in; or another family) with a fresh LoRA (B = 0)."""
    if model != "sd35":
        from gpu_families import build_family

        return build_family(model, tiny, device, dtype, rank)
    from diffusers import AutoencoderKL, SD3Transformer2DModel

    from tempflow.models.lora import LoraSpec

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(**(TINY if tiny else SD35_MEDIUM)).to(device, dtype)
    vae = AutoencoderKL(**(TINY_VAE if tiny else SD35_VAE)).to(device, dtype).requires_grad_(False).eval()
    side = (16 if tiny else RESOLUTION) // 2 ** (len(vae.config.block_out_channels) - 1)
    model = RandomTextSD3(transformer, vae, 8 if tiny else TEXT_TOKENS, side)
    model.add_lora(LoraSpec(rank=rank, alpha=2.0 * rank))
    transformer.train()
    return model


def sample(model, algo: str, prompts: list[str], a: argparse.Namespace, sigmas: Tensor, it: int):
    """The iteration's rollouts: (Samples, transitions builder)."""
    from tempflow.training.rollout_phase import sample_branching, sample_trajectories

    cond = model.encode_prompts(prompts)
    positions = list(range(len(prompts)))
    steps = list(range(a.steps - 1))  # trained steps: the first floor(0.99 T) = T - 1
    with torch.no_grad():
        if algo == "tempflow":
            return sample_branching(model, cond, positions, a.seeds, a.branches, steps, sigmas, 0.7, a.cfg,
                                    "seed", 0, it)
        return sample_trajectories(model, cond, positions, a.group, steps, sigmas, 0.7, a.cfg, 0, it)


def transitions(samples, algo: str, sigmas: Tensor, steps: int, rewards: Tensor):
    """Group-normalised advantages and the stored transitions of the iteration."""
    from tempflow.grpo import group_advantages
    from tempflow.grpo.objective import branch_transitions, trajectory_transitions
    from tempflow.sampling import noise_aware_weights

    adv = group_advantages(rewards, samples.groups, "group", clip=5.0)
    points = samples.points
    if algo == "tempflow":
        w = noise_aware_weights(sigmas.cpu(), 0.7, list(range(steps - 1)))[points]
        s, p, k = samples.shape_spk
        return branch_transitions(samples.rollout, samples.cond, sigmas.cpu(), adv.advantages.view(s, p, k),
                                  adv.valid.view(s, p, k), w)
    return trajectory_transitions(samples.rollout, samples.cond, sigmas.cpu(), points, adv.advantages,
                                  adv.valid, torch.ones(len(points)))


def train_phase(model, batch, optimizer, a: argparse.Namespace) -> None:
    """``a.minibatches`` optimizer steps over the start states, ``a.microbatch`` rows per
    forward + backward (gradients accumulated)."""
    from tempflow.grpo.objective import ObjectiveConfig, grpo_loss

    obj = ObjectiveConfig(0.7, 1e-4, 0.004, a.cfg, "s")
    batch = batch.with_signal()
    params = model.trainable_parameters()
    order = torch.randperm(len(batch), generator=torch.Generator().manual_seed(0))
    for mb in order.chunk(a.minibatches):
        optimizer.zero_grad()
        n = batch.valid[mb].sum()
        for micro in mb.split(a.microbatch):
            sub = batch.select(micro)
            if sub.valid.any():
                loss, _ = grpo_loss(model, sub, obj)
                (loss * sub.valid.sum() / n).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()


def sync(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter()


def measure(algo: str, a: argparse.Namespace) -> dict:
    """Warm-up iteration (also counts the training FLOPs), then the measured ones."""
    from torch.utils.flop_counter import FlopCounterMode

    from tempflow.sampling import flow_sigmas

    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[a.dtype]
    model = build_model(a.tiny, a.device, dtype, a.rank, a.model)
    if a.grad_ckpt:
        model.transformer.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=3e-4, weight_decay=1e-4)
    sigmas = flow_sigmas(a.steps, 3.0).to(a.device)
    prompts = [f"prompt {i}" for i in range(a.prompts)]
    if a.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rows, flops = [], 0
    for it in range(a.iterations + 1):
        n0 = dict(model.counters)
        t0 = sync(a.device)
        samples = sample(model, algo, prompts, a, sigmas, it)
        t1 = sync(a.device)
        with torch.no_grad():
            images = torch.cat([model.decode_images(c) for c in samples.finals.split(a.decode_batch)])
        t2 = sync(a.device)
        rewards = torch.rand(images.shape[0], generator=torch.Generator().manual_seed(it))
        batch = transitions(samples, algo, sigmas, a.steps, rewards)
        if it == 0:
            with FlopCounterMode(display=False) as counter:
                train_phase(model, batch, optimizer, a)
            flops = counter.get_total_flops()
            continue
        t3 = sync(a.device)
        train_phase(model, batch, optimizer, a)
        t4 = sync(a.device)
        rows.append({"sample_s": t1 - t0, "decode_s": t2 - t1, "train_s": t4 - t3, "iteration_s": t4 - t0,
                     "nfe": model.counters["nfe"] - n0.get("nfe", 0), "images": images.shape[0],
                     "train_rows": len(batch)})
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    peak = torch.cuda.max_memory_allocated() / 2**30 if a.device.startswith("cuda") else float("nan")
    params = sum(p.numel() for p in model.transformer.parameters())
    return {"algorithm": algo, "model": a.model, **mean, "expected_nfe": expected_nfe(algo, a),
            "train_tflops": flops / 1e12,
            "tflop_per_s": flops / mean["train_s"] / 1e12, "peak_gib": peak, "params_m": params / 1e6,
            "device": torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"}


def table(results: list[dict]) -> str:
    cols = [("s/iteration", "iteration_s", "{:.1f}"), ("sampling s", "sample_s", "{:.1f}"),
            ("decode s", "decode_s", "{:.2f}"), ("training s", "train_s", "{:.1f}"),
            ("model evals", "nfe", "{:.0f}"), ("expected evals", "expected_nfe", "{:.0f}"),
            ("images", "images", "{:.0f}"),
            ("train rows", "train_rows", "{:.0f}"), ("train TFLOP", "train_tflops", "{:.3g}"),
            ("train TFLOP/s", "tflop_per_s", "{:.3g}"), ("peak GiB", "peak_gib", "{:.1f}")]
    head = "| algorithm | " + " | ".join(c[0] for c in cols) + " |\n|---|" + "---:|" * len(cols)
    rows = ["| " + r["algorithm"] + " | " + " | ".join(f.format(r[k]) for _, k, f in cols) + " |" for r in results]
    return "\n".join([head, *rows])


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--algorithms", nargs="+", default=["tempflow", "flowgrpo"], choices=["tempflow", "flowgrpo"])
    ap.add_argument("--model", default="sd35", choices=MODELS, help="model family at its public size (default sd35)")
    ap.add_argument("--tiny", action="store_true", help="1-2-layer stand-in at 16 px (CPU smoke run)")
    ap.add_argument("--prompts", type=int, default=1, help="prompts per iteration on this GPU (paper: 48 over all GPUs)")
    ap.add_argument("--seeds", type=int, default=4, help="TempFlow-GRPO seeds per prompt (paper 4)")
    ap.add_argument("--branches", type=int, default=6, help="TempFlow-GRPO branches K (paper 6)")
    ap.add_argument("--group", type=int, default=24, help="Flow-GRPO trajectories per prompt (paper 24)")
    ap.add_argument("--steps", type=int, default=10, help="sampling steps T (paper 10)")
    ap.add_argument("--cfg", type=float, default=None, help="CFG scale (default: the family's, 4.5 for sd35)")
    ap.add_argument("--rank", type=int, default=32, help="LoRA rank (alpha = 2 rank)")
    ap.add_argument("--minibatches", type=int, default=2, help="optimizer steps per iteration (paper 2)")
    ap.add_argument("--microbatch", type=int, default=8, help="rows per forward + backward")
    ap.add_argument("--decode-batch", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=2, help="measured iterations after one warm-up")
    ap.add_argument("--dtype", default=None, help="bfloat16 (default on GPU) | float16 | float32 (default on CPU)")
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing in training")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    a.dtype = a.dtype or ("bfloat16" if a.device.startswith("cuda") else "float32")
    a.cfg = default_cfg(a.model) if a.cfg is None else a.cfg
    if a.device == "cpu" and not a.tiny:
        ap.error("the full-size model needs a CUDA GPU; use --tiny for a CPU run")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.one:
        emit_result(measure(a.one, a))
        return 0
    passthrough = [x for x in (argv if argv is not None else sys.argv[1:])]
    skip = {"--algorithms", "--json"}
    args, i = [], 0
    while i < len(passthrough):  # drop --algorithms/--json and their values for the children
        if passthrough[i] in skip:
            i += 1
            while i < len(passthrough) and not passthrough[i].startswith("--"):
                i += 1
            continue
        args.append(passthrough[i])
        i += 1
    results = []
    for algo in a.algorithms:
        result = run_child([sys.executable, __file__, "--one", algo, *args], dict(os.environ), algo)
        if result is None:
            return 1
        results.append(result)
    r = results[0]
    print(f"{a.model}{' (tiny)' if a.tiny else ''}, cfg {a.cfg:g}, {r['device']}, {a.dtype}, "
          f"transformer {r['params_m']:.1f}M parameters + LoRA r {a.rank}, "
          f"{a.prompts} prompt(s) per iteration, mean of {a.iterations} iteration(s) after a warm-up")
    print(table(results))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
