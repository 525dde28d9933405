"""Low-precision training, float32 step math and noise on a GPU (tests marked ``gpu``; they skip
without CUDA), with the same checks on the CPU where they mean something.

The GPU tests use an SD3.5-Medium-size random transformer (benchmarks/gpu_sd35.py's
SD35_MEDIUM, 2.24B parameters) behind the SD3 adapter, with tiny text encoders whose outputs
have SD3.5's widths and lengths (77 CLIP + 256 T5 tokens x 4096, pooled 2048) and a tiny VAE
with 16 latent channels (factor 2: 128 px -> latents 16 x 64 x 64, SD3.5's 512 px token count).
Run them with ``pytest -m gpu tests/test_gpu.py`` or benchmarks/gpu_check.sh, which also
collects what they record (``TEMPFLOW_GPU_CHECK_OUT``: one JSON line per check).

Tolerance of the on-policy ratio at the first inner step (algorithm.md sections 2 and 4). The
stored next state is x' = m_old + s eps, so with delta = m_new - m_old = c dt (v_new - v_old),
c = 1 + g^2 (1 - sigma) / (2 sigma), and kappa = |c dt| / s (1.11 at most for T = 4, 1.49 for
T = 10 at shift 3, a = 0.7):

    log r = -(1/D) sum_i [eps_i delta_i / s + delta_i^2 / (2 s^2)]
    |log r| <= kappa^2 e^2 / 2 + kappa |(1/D) sum_i eps_i dv_i|   ~   kappa^2 e^2 / 2 + 5 kappa e / sqrt(D)

with e the RMS of dv = v_new - v_old (after CFG) and D the latent size. Recomputing the same
forward in the same batch layout is bitwise equal (same kernels, deterministic): e = 0, r = 1
exactly, checked below. The loss recomputes in another layout (rollouts run CFG as one batch of
2B without gradient; the loss runs B conditional rows with gradient and B unconditional rows
without, and other batch sizes), so the network output can differ by a few units of its last
place: bf16 keeps 8 significant bits, unit roundoff u = 2^-8 = 3.9e-3. Take 4u per CFG half
and |v| <= 2: e <= sqrt((w - 1)^2 + w^2) * 4u * 2 = 0.18 at w = 4.5, so |log r| <= 0.018 at
kappa = 1.1 (the sqrt(D) term is below 1e-3 for D >= 256). Tolerance |r - 1| <= 2e-2 for
bf16; fp16 keeps 11 bits (u = 2^-11, e 8x smaller, the bound 64x smaller): 2e-3. Both are
above what a recomputation gives (tiny model on the CPU, loss rows one at a time against the
rollout's two: |r - 1| up to 9e-4 in bf16, 8e-5 in fp16) and far below what a real bug gives
(another noise, a LoRA that is not zero, dropout in train mode: dv of order |v|, log r of
order 1). The check also compares the measured |r - 1| with the bound computed from the
measured e. The presets' clip range 1e-4 is below the bf16 figure: in bf16 the first inner
step already clips rows (clip_frac 1 for those rows on the CPU) unless the loss recomputes in
the rollout's layout; the summary of benchmarks/gpu_check.sh shows the GPU's figures.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmark_modules import load_benchmark
from tempflow.grpo import group_advantages
from tempflow.grpo.objective import ObjectiveConfig, branch_transitions, grpo_loss, trajectory_transitions
from tempflow.models.base import FlowModel
from tempflow.models.lora import LoraSpec
from tempflow.models.sd3 import SD3Model
from tempflow.sampling import flow_sigmas, ode_step, sde_std, sde_step
from tempflow.training.rollout_phase import noise_for, sample_branching, sample_trajectories

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
needs_cuda = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")]
TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 2e-3, torch.float32: 1e-4}
NOISE_LEVEL, CFG, STEPS, SHIFT = 0.7, 4.5, 4, 3.0


def record(check: str, **values) -> None:
    """Append one JSON line to $TEMPFLOW_GPU_CHECK_OUT/gpu_tests.jsonl (gpu_check.sh's summary)."""
    out = os.environ.get("TEMPFLOW_GPU_CHECK_OUT")
    if out:
        with open(Path(out) / "gpu_tests.jsonl", "a") as f:
            f.write(json.dumps({"check": check, **values}) + "\n")


# ------------------------------------------------------------------ models

def tiny_model(dtype: torch.dtype) -> SD3Model:
    """tests/tiny_sd3.py's pipeline in ``dtype`` on the CPU (latents 4 x 8 x 8), LoRA r 4."""
    from tiny_sd3 import RESOLUTION, T5_LEN, build_tiny_sd3

    pipe = build_tiny_sd3(0).to(dtype=dtype)
    return SD3Model(pipe, resolution=RESOLUTION, lora=LoraSpec(rank=4, alpha=8.0), max_sequence_length=T5_LEN)


def sd35_medium_model(dtype: torch.dtype, device: str = "cuda") -> SD3Model:
    """SD3.5-Medium's transformer (random) with tiny encoders of SD3.5's output widths, LoRA r 32."""
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel
    from tiny_sd3 import _clip_tokenizer, _t5_tokenizer

    bench = load_benchmark("gpu_sd35", "gpu_sd35")
    torch.manual_seed(0)
    with torch.device(device):  # initialised in place: no 9 GB float32 copy on the host
        transformer = SD3Transformer2DModel(**bench.SD35_MEDIUM)
    transformer.to(dtype)

    def clip():
        tok = _clip_tokenizer()
        tok.model_max_length = 77
        cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, projection_dim=1024, max_position_embeddings=77,
                             bos_token_id=0, eos_token_id=1, pad_token_id=1)
        return tok, CLIPTextModelWithProjection(cfg)

    (tok1, enc1), (tok2, enc2) = clip(), clip()
    tok3 = _t5_tokenizer()
    tok3.model_max_length = 256
    enc3 = T5EncoderModel(T5Config(vocab_size=len(tok3), d_model=4096, d_kv=8, d_ff=32, num_layers=1,
                                   num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0,
                                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8),
                        layers_per_block=1, latent_channels=16, norm_num_groups=4, sample_size=128,
                        scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                        use_post_quant_conv=False, mid_block_add_attention=False)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=vae, text_encoder=enc1, tokenizer=tok1, text_encoder_2=enc2,
                                    tokenizer_2=tok2, text_encoder_3=enc3, tokenizer_3=tok3)
    for m in (enc1, enc2, enc3, vae):
        m.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return SD3Model(pipe, resolution=128, lora=LoraSpec(rank=32, alpha=64.0), max_sequence_length=256)


# ------------------------------------------------------------------ one training step

def rollout_layout_velocity(model, batch, per_row: int) -> torch.Tensor:
    """The velocities at the batch's start states computed as the rollout did: one CFG-batched
    call (no gradient) per trained step over all rows leaving from it. Rows are (row, step)."""
    starts = batch.starts.view(-1, per_row, *batch.starts.shape[1:])
    cond = batch.cond[slice(0, None, per_row)]
    out = torch.empty_like(starts)
    with torch.no_grad():
        for j in range(per_row):
            out[:, j] = model.velocity(starts[:, j], batch.sigma.view(-1, per_row)[:, j], cond, CFG)
    return out.reshape(batch.starts.shape)


def old_log_probs(batch, v_old: torch.Tensor, algo: str, per_row: int) -> torch.Tensor:
    """The stored log-probs recomputed with the rollout's own batching of its SDE steps: one
    call over all (row, step, branch) for TempFlow-GRPO, one per step for Flow-GRPO. [R, K]."""
    k = batch.samples.shape[1]
    sig, nxt = batch.sigma.to(v_old.device), batch.sigma_next.to(v_old.device)
    if algo == "tempflow":
        rep = lambda t: t.repeat_interleave(k, 0)  # noqa: E731
        return sde_step(rep(batch.starts), rep(v_old), rep(sig), rep(nxt), NOISE_LEVEL,
                        sample=batch.samples.flatten(0, 1)).log_prob.view(-1, k)
    view = lambda t: t.view(-1, per_row, *t.shape[1:])  # noqa: E731  [N, steps, ...]
    out = torch.empty(view(sig).shape, device=v_old.device)
    for j in range(per_row):
        out[:, j] = sde_step(view(batch.starts)[:, j], view(v_old)[:, j], view(sig)[:, j], view(nxt)[:, j],
                             NOISE_LEVEL, sample=view(batch.samples)[:, j, 0]).log_prob
    return out.view(-1, 1)


def first_inner_steps(model: SD3Model, algo: str, iterations: int = 2, microbatch: int | None = None) -> list[dict]:
    """``iterations`` GRPO iterations (rollout, advantages, one optimizer step) at T = 4 on 2 prompts;
    at each, the checks of the first inner step. Returns one dict of figures per iteration."""
    model.transformer.train()
    params = model.trainable_parameters()
    assert params and all(p.dtype == torch.float32 for p in params), "LoRA weights must stay float32"
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    sigmas = flow_sigmas(STEPS, SHIFT).to(model.device)
    trained = list(range(STEPS - 1))
    cond = model.encode_prompts(["a red cube", "two blue balls"])
    objective = ObjectiveConfig(NOISE_LEVEL, 1e-4, 0.04, CFG, "s")
    rows = []
    for it in range(iterations):
        with torch.no_grad():
            if algo == "tempflow":
                s = sample_branching(model, cond, [0, 1], 1, 2, trained, sigmas, NOISE_LEVEL, CFG, "seed", 0, it)
            else:
                s = sample_trajectories(model, cond, [0, 1], 2, trained, sigmas, NOISE_LEVEL, CFG, 0, it)
        ro = s.rollout
        # the step math is float32 whatever the model's dtype
        for t in (s.finals, ro.log_probs, ro.samples if algo == "tempflow" else ro.xs):
            assert t.dtype == torch.float32 and bool(torch.isfinite(t).all())
        n = s.finals.shape[0]
        rewards = torch.linspace(-1.0, 1.0, n)  # distinct: every group has signal
        adv = group_advantages(rewards, s.groups, "group", clip=5.0)
        if algo == "tempflow":
            sp, p, k = s.shape_spk
            batch = branch_transitions(ro, s.cond, sigmas.cpu(), adv.advantages.view(sp, p, k),
                                       adv.valid.view(sp, p, k), torch.ones(p))
        else:
            batch = trajectory_transitions(ro, s.cond, sigmas.cpu(), trained, adv.advantages, adv.valid,
                                           torch.ones(len(trained)))
        per_row = len(trained)
        # 1. the rollout's forward recomputed in its own layout is bitwise the same
        v_old = rollout_layout_velocity(model, batch, per_row)
        same_layout_bitwise = bool(torch.equal(old_log_probs(batch, v_old, algo, per_row),
                                               batch.old_log_probs.to(v_old.device)))
        # 2. the loss's layout: per microbatch, the first inner step's ratio
        sub_batches = [batch] if microbatch is None else [batch.select(i) for i in torch.arange(len(batch)).split(microbatch)]
        optimizer.zero_grad()
        stats, dev_bound, e2 = [], 0.0, []
        for sub in sub_batches:
            loss, st = grpo_loss(model, sub, objective)
            assert bool(torch.isfinite(loss)), f"non-finite loss {float(loss)}"
            (loss * len(sub) / len(batch)).backward()
            stats.append(st)
        # the measured e and the bound it implies (same layout as grpo_loss: deterministic)
        for i in (torch.arange(len(batch)).split(microbatch) if microbatch else [torch.arange(len(batch))]):
            with torch.enable_grad():
                v_new = model.velocity(batch.starts[i], batch.sigma[i], batch.cond[i], CFG).detach()
            dv = (v_new - v_old[i]).flatten(1)
            g, sd = sde_std(batch.sigma[i], batch.sigma_next[i], NOISE_LEVEL)
            sig = batch.sigma[i]
            kappa = ((1 + g * g * (1 - sig) / (2 * sig)) * (sig - batch.sigma_next[i]) / sd).to(dv.device)
            e = dv.pow(2).mean(1).sqrt()
            e2.append(e)
            dev_bound = max(dev_bound, float((kappa**2 * e**2 / 2 + 5 * kappa * e / math.sqrt(dv.shape[1])).max()))
        grads = [p.grad for p in params if p.grad is not None]
        assert grads and all(bool(torch.isfinite(gr).all()) for gr in grads), "non-finite gradient"
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
        optimizer.step()
        assert all(bool(torch.isfinite(p).all()) for p in params), "non-finite LoRA weights after the step"
        ratio_dev = max(max(abs(st["ratio_min"] - 1), abs(st["ratio_max"] - 1)) for st in stats)
        rows.append({"iteration": it, "same_layout_bitwise": same_layout_bitwise, "ratio_dev": ratio_dev,
                     "log_ratio_bound_from_e": dev_bound, "e_rms_dv": float(torch.cat(e2).max()),
                     "clip_frac": max(st["clip_frac"] for st in stats), "kl": max(st["kl"] for st in stats),
                     "grad_norm": grad_norm, "train_rows": len(batch)})
    return rows


def check_rows(rows: list[dict], dtype: torch.dtype) -> None:
    tol = TOLERANCE[dtype]
    for r in rows:
        assert r["same_layout_bitwise"], f"recomputing the rollout's forward changed the log-probs: {r}"
        assert r["ratio_dev"] <= tol, f"on-policy ratio off 1 by {r['ratio_dev']:.3g} > {tol}: {r}"
        # |r - 1| ~ |log r| for these sizes; 1e-6 covers float32 rounding of the log-probs
        assert r["ratio_dev"] <= 1.01 * r["log_ratio_bound_from_e"] + 1e-6, r
        assert math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0


# ------------------------------------------------------------------ CPU (always) and GPU (marked)

@pytest.mark.parametrize("algo", ["tempflow", "flowgrpo"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_training_step_tiny_cpu(dtype, algo):
    """Tiny SD3 in bf16 / fp16 on the CPU: float32 step math and LoRA weights, ratio 1 at the
    first inner step, finite gradients and weights after two optimizer steps (a fresh LoRA in
    fp16 gave NaN weights after one AdamW step before the LoRA weights were kept in float32)."""
    model = tiny_model(dtype)
    assert model.dtype == dtype and model.transformer.dtype == dtype
    rows = first_inner_steps(model, algo, microbatch=1)  # another batch size than the rollout's
    check_rows(rows, dtype)
    record(f"tiny-cpu-{algo}-{str(dtype).split('.')[-1]}", rows=rows)


@pytest.mark.parametrize("algo", ["tempflow", "flowgrpo"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_low_precision_training_step_sd35_medium_cuda(dtype, algo):
    """The same at SD3.5-Medium's size on the GPU (2 rows per forward + backward)."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model = sd35_medium_model(dtype)
    assert model.latent_shape == (16, 64, 64) and model.device.type == "cuda"
    cond = model.encode_prompts(["x"])
    assert cond.tensors["prompt_embeds"].shape == (1, 77 + 256, 4096)
    assert cond.tensors["pooled_prompt_embeds"].shape == (1, 2048)
    rows = first_inner_steps(model, algo, microbatch=2)
    record(f"sd35m-cuda-{algo}-{str(dtype).split('.')[-1]}", rows=rows, seconds=time.perf_counter() - t0,
           peak_gib=torch.cuda.max_memory_allocated() / 2**30, device=torch.cuda.get_device_name())
    del model
    torch.cuda.empty_cache()
    check_rows(rows, dtype)


def _step_math_is_float32(device: str, autocast_dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    x32 = torch.randn(3, 4, 8, 8, generator=g).to(device)
    v32 = torch.randn(3, 4, 8, 8, generator=g).to(device)
    eps = torch.randn(3, 4, 8, 8, generator=g).to(device)
    sig, nxt = torch.tensor([1.0, 0.7, 0.3], device=device), torch.tensor([0.9, 0.5, 0.1], device=device)
    x, v = x32.to(autocast_dtype), v32.to(autocast_dtype)  # what a bf16 / fp16 model returns
    with torch.autocast(device_type=device, dtype=autocast_dtype):
        o = ode_step(x, v, sig, nxt)
        s = sde_step(x, v, sig, nxt, NOISE_LEVEL, noise=eps)
        sc = sde_step(x, v, sig, nxt, NOISE_LEVEL, sample=s.sample)
    for t in (o, s.sample, s.mean, s.std, s.log_prob, sc.log_prob):
        assert t.dtype == torch.float32
    # the same float32 arithmetic as without autocast on the upcast inputs: bitwise
    xu, vu = x.float(), v.float()
    assert torch.equal(o, ode_step(xu, vu, sig, nxt))
    ref = sde_step(xu, vu, sig, nxt, NOISE_LEVEL, noise=eps)
    assert torch.equal(s.sample, ref.sample) and torch.equal(s.log_prob, ref.log_prob)
    assert torch.equal(sc.log_prob, s.log_prob)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_step_math_float32_under_autocast_cpu(dtype):
    _step_math_is_float32("cpu", dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_step_math_float32_under_autocast_cuda(dtype):
    _step_math_is_float32("cuda", dtype)
    record(f"step-math-autocast-cuda-{str(dtype).split('.')[-1]}", ok=True)


def test_velocity_float32_under_autocast_cpu():
    """A float32 model run under bf16 autocast still hands the samplers float32 velocities."""
    model = tiny_model(torch.float32)
    cond = model.encode_prompts(["a red cube"])
    x = model.initial_noise(1, torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        v = model.velocity(x, torch.tensor([0.5]), cond, CFG)
    assert v.dtype == torch.float32 and bool(torch.isfinite(v).all())


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_noise_is_the_cpu_noise():
    """Noise comes from CPU generators and is moved (rollout_phase.noise_for, the evaluation's
    initial noise, sde_step given a CPU generator), so a GPU run draws the CPU run's numbers.
    A CUDA generator (Philox) gives other numbers for the same seed: the reason for the design."""
    shape = (16, 8, 8)
    on = {d: SimpleNamespace(latent_shape=shape, device=torch.device(d)) for d in ("cpu", "cuda")}
    x_cpu, e_cpu = noise_for(on["cpu"], [0, 3], 2, 7, 5, (3,))
    x_gpu, e_gpu = noise_for(on["cuda"], [0, 3], 2, 7, 5, (3,))
    assert x_gpu.device.type == "cuda" and torch.equal(x_gpu.cpu(), x_cpu) and torch.equal(e_gpu.cpu(), e_cpu)
    # the evaluation's and `tempflow sample`'s initial noise: a CPU generator, then .to(device)
    n_cpu = FlowModel.initial_noise(on["cpu"], 2, torch.Generator().manual_seed(3))
    n_gpu = FlowModel.initial_noise(on["cuda"], 2, torch.Generator().manual_seed(3)).to("cuda")
    assert n_gpu.device.type == "cuda" and torch.equal(n_gpu.cpu(), n_cpu)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    v = torch.randn(2, *shape, generator=torch.Generator().manual_seed(2))
    sig, nxt = torch.tensor([0.8, 0.6]), torch.tensor([0.7, 0.4])
    a = sde_step(x, v, sig, nxt, NOISE_LEVEL, generator=torch.Generator().manual_seed(4))
    b = sde_step(x.cuda(), v.cuda(), sig.cuda(), nxt.cuda(), NOISE_LEVEL, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(b.sample.cpu(), a.sample, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b.log_prob.cpu(), a.log_prob, rtol=1e-5, atol=1e-5)
    cuda_draw = torch.randn(64, generator=torch.Generator("cuda").manual_seed(4), device="cuda")
    assert not torch.equal(cuda_draw.cpu(), torch.randn(64, generator=torch.Generator().manual_seed(4)))
    record("cuda-noise-is-cpu-noise", ok=True)


# ------------------------------------------------------------------ benchmarks/gpu_check.sh

@pytest.mark.slow
def test_gpu_check_script_cpu_mode(tmp_path):
    """gpu_check.sh end to end in its CPU mode (GPU_CHECK_FORCE_CPU=1 also on a GPU machine)."""
    if shutil.which("timeout") is None:
        pytest.skip("needs coreutils timeout")
    out = tmp_path / "check"
    env = {**os.environ, "GPU_CHECK_FORCE_CPU": "1", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("TEMPFLOW_GPU_CHECK_OUT", None)
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out)], capture_output=True,
                         text=True, timeout=900, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "no CUDA GPU" in res.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "cpu" and summary["gpu"] is None
    parts = summary["parts"]
    assert set(parts) == {"tests", "gpu_sd35_tempflow", "gpu_sd35_flowgrpo", "train"}
    assert all(p["rc"] == 0 and not p["timed_out"] for p in parts.values()), parts
    # the CPU mode runs only the gpu-marked tests: all skip
    assert summary["tests"]["failed"] == 0 and summary["tests"]["skipped"] == 7 and summary["tests"]["passed"] == 0
    bench = {r["algorithm"]: r for r in summary["gpu_sd35"]}
    assert set(bench) == {"tempflow", "flowgrpo"} and all(r["nfe"] > 0 and r["iteration_s"] > 0 for r in bench.values())
    # the benchmark's own counts at the CPU mode's sizes (--seeds 2 --branches 2 --group 4 --steps 4):
    # model evaluations, CFG doubling everything (algorithm.md section 5), T = 4, trained steps 0..2:
    # sampling: TempFlow 2 seeds x (4 + 2 * (3 + 2 + 1)); Flow-GRPO 4 trajectories x 4;
    # training: per start state a policy call and a reference call, each with CFG
    rows = {a: json.loads((out / f"gpu_sd35_{a}.json").read_text())[0] for a in ("tempflow", "flowgrpo")}
    assert rows["tempflow"]["nfe"] == 2 * 2 * (4 + 2 * 6) + 4 * (2 * 3)
    assert rows["flowgrpo"]["nfe"] == 2 * 4 * 4 + 4 * (4 * 3)
    assert rows["tempflow"]["train_rows"] == 6 and rows["flowgrpo"]["train_rows"] == 12
    assert rows["tempflow"]["images"] == 2 * 3 * 2 and rows["flowgrpo"]["images"] == 4
    assert all(r["train_tflops"] > 0 and r["tflop_per_s"] > 0 for r in rows.values())
    train = summary["train"]
    assert train["iterations"] == 2 and train["s_per_iteration"] > 0 and train["device"] == "cpu"
    assert train["cpu_reference_s_per_iteration"] == 7.25
    md = (out / "summary.md").read_text()
    assert "no CUDA GPU" in md and "| tempflow |" in md and "s/iteration" in md
    for f in ("tests.log", "tests.xml", "gpu_sd35_tempflow.json", "gpu_sd35_flowgrpo.log", "train.log", "parts.tsv"):
        assert (out / f).is_file(), f
