"""benchmarks/gpu_sd35.py --model X --tiny for every family on the CPU: one measured iteration,
its figures present and the model evaluations equal to the script's cost formula
(expected_nfe); the full-size public configs build (on the meta device) at their published
parameter counts. Nothing here runs on a GPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmark_modules import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("sd35", "flux", "qwenimage", "zimage", "flux2")
SMALL = ["--tiny", "--device", "cpu", "--seeds", "2", "--branches", "2", "--group", "4", "--steps", "4",
         "--iterations", "1", "--rank", "4"]
FIGURES = ("iteration_s", "sample_s", "decode_s", "train_s", "nfe", "expected_nfe", "images", "train_rows",
           "train_tflops", "tflop_per_s", "params_m")


def check(r: dict, algo: str, model: str, cfg: float) -> None:
    assert r["algorithm"] == algo and r["model"] == model
    assert all(k in r and math.isfinite(r[k]) for k in FIGURES), r
    assert r["iteration_s"] > 0 and r["train_tflops"] > 0 and r["tflop_per_s"] > 0
    c = 2 if cfg > 1 else 1  # the counts at SMALL's sizes (T = 4, trained steps 0..2), spelled out
    if algo == "tempflow":   # 2 seeds x (4 + 2 branches x (3 + 2 + 1)); 2 seeds x 3 rows, policy + reference
        assert r["nfe"] == r["expected_nfe"] == c * (2 * (4 + 2 * 6) + 2 * 6)
        assert r["images"] == 12 and r["train_rows"] == 6
    else:                    # 4 trajectories x 4 steps; 4 x 3 rows
        assert r["nfe"] == r["expected_nfe"] == c * (4 * 4 + 2 * 12)
        assert r["images"] == 4 and r["train_rows"] == 12


@pytest.mark.parametrize("model", FAMILIES)
def test_tiny_iteration_counts(model):
    """In-process: one warm-up + one measured iteration of each algorithm at tiny size."""
    b = load_benchmark("gpu_sd35", "gpu_sd35")
    a = b.parse([*SMALL, "--model", model])
    assert a.cfg == {"sd35": 4.5, "qwenimage": 4.0}.get(model, 1.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for algo in ("tempflow", "flowgrpo"):
            check(b.measure(algo, a), algo, model, a.cfg)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_cli_for_a_family(tmp_path):
    """The script end to end (one child process per algorithm): the table and the JSON, for
    one family besides SD3.5 (whose command line the gpu_check.sh test runs); every family's
    iteration is checked in process above."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for model in ("qwenimage",):
        out = tmp_path / f"{model}.json"
        res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_sd35.py"), *SMALL, "--model", model,
                              "--json", str(out)], capture_output=True, text=True, timeout=300, env=env)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        assert res.stdout.startswith(f"{model} (tiny), cfg ") and "| tempflow |" in res.stdout
        assert "| flowgrpo |" in res.stdout and "expected evals" in res.stdout
        rows = json.loads(out.read_text())
        cfg = 4.5 if model == "sd35" else 4.0 if model == "qwenimage" else 1.0
        for r, algo in zip(rows, ("tempflow", "flowgrpo")):
            check(r, algo, model, cfg)


def test_full_size_configs_public_parameter_counts():
    """The full-size transformers build from the public config values (meta device: no memory)
    with the published sizes: FLUX.1-dev 11.9B, Qwen-Image 20.4B, Z-Image 6.15B, FLUX.2 klein ~4B."""
    import diffusers

    b = load_benchmark("gpu_sd35", "gpu_sd35")
    from gpu_families import SPECS

    billions = {"flux": 11.9, "qwenimage": 20.4, "zimage": 6.15, "flux2": 3.9}
    for name, spec in SPECS.items():
        with torch.device("meta"):
            transformer = getattr(diffusers, spec.transformer)(**spec.full)
        n = sum(p.numel() for p in transformer.parameters()) / 1e9
        assert abs(n - billions[name]) < 0.05, (name, n)
    with torch.device("meta"):
        sd35 = diffusers.SD3Transformer2DModel(**b.SD35_MEDIUM)
    assert abs(sum(p.numel() for p in sd35.parameters()) / 1e9 - 2.24) < 0.01
