"""Choosing the adapter (model_index.json's pipeline class, hub ids), the families' schedules
from their public scheduler configs (noise-aware weights pinned) and the presets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tempflow.errors import UserError
from tempflow.models import load_model, model_family, model_sigmas
from tempflow.models.families import FAMILIES, family_sigmas, supported
from tempflow.sampling import noise_aware_weights, trained_steps
from tempflow.sampling.steps import sde_std
from tiny_pipelines import RESOLUTION, TINY

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def inv_mean_std(sigmas: torch.Tensor, noise_level: float) -> float:
    """1 / mean_j s_j over the trained steps (TempFlow-GRPO's hard-coded normaliser)."""
    idx = torch.tensor(trained_steps(sigmas.numel() - 1))
    _, s = sde_std(sigmas[idx], sigmas[idx + 1], noise_level)
    return float(1 / s.mean())


def test_flux_weights_at_1024px_match_the_authors():
    sig = family_sigmas("flux", 10, 1024)
    # mu = 1.15 at 4096 tokens: a shift of e^1.15 over linspace(1, 0.1, 10)
    shifted = torch.exp(torch.tensor(1.15)) / (torch.exp(torch.tensor(1.15)) + 1 / torch.linspace(1, 0.1, 10) - 1)
    torch.testing.assert_close(sig[:-1], shifted, atol=1e-6, rtol=0)
    assert abs(inv_mean_std(sig, 0.9) - 1.726) < 5e-4      # the authors hard-code 1.73
    w = noise_aware_weights(sig, 0.9, trained_steps(10))
    assert abs(float(w.mean()) - 1) < 1e-6 and w.argmax() == 1


def test_qwenimage_weights_at_512px():
    sig = family_sigmas("qwenimage", 10, 512)
    assert abs(float(sig[-2]) - 0.02) < 1e-6                # shift_terminal: the last sigma
    assert abs(inv_mean_std(sig, 0.7) - 2.628) < 5e-4
    # 1 / mean(s) scales as 1 / noise level: the authors' 1.53 is this schedule at a = 1.2
    assert abs(inv_mean_std(sig, 1.2) - 1.533) < 5e-4


def test_family_of_a_folder_and_of_hub_ids(tmp_path):
    folder = tmp_path / "flux"
    TINY["flux"].build(0).save_pretrained(folder)
    assert model_family(str(folder)) == "flux"
    model = load_model(str(folder), resolution=RESOLUTION)
    assert type(model).__name__ == "FluxModel" and model.source == str(folder)
    torch.testing.assert_close(model_sigmas(model, 4, 3.0), model.schedule(4))
    assert model_family("black-forest-labs/FLUX.1-dev") == "flux"
    assert model_family("Qwen/Qwen-Image") == "qwenimage"
    assert model_family("Tongyi-MAI/Z-Image-Turbo") == "zimage"
    assert model_family("black-forest-labs/FLUX.2-klein-base-4B") == "flux2klein"
    assert model_family("stabilityai/stable-diffusion-3.5-medium") == "sd3"


def test_unsupported_pipeline_class_is_a_user_error(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    with pytest.raises(UserError, match="KandinskyPipeline") as err:
        model_family(str(tmp_path))
    assert all(name in str(err.value) for name in FAMILIES) and supported() in str(err.value)
    res = subprocess.run([sys.executable, "-m", "tempflow", "sample", "--prompt", "a cat",
                          "--model", str(tmp_path)], capture_output=True, text=True, timeout=300)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "KandinskyPipeline" in lines[0], res.stderr


def test_flux_preset_mirrors_the_authors():
    from tempflow.config.loading import load_config

    cfg = load_config(CONFIGS / "flux1-dev-pickscore-tempflow.yaml", [])
    assert model_family(cfg.model.name) == "flux" and cfg.model.resolution == 1024
    assert (cfg.sampling.steps, cfg.sampling.noise_level, cfg.model.dtype) == (10, 0.9, "bfloat16")
    sig = family_sigmas("flux", cfg.sampling.steps, cfg.model.resolution)
    assert abs(inv_mean_std(sig, cfg.sampling.noise_level) - 1.726) < 5e-4


def test_qwenimage_preset():
    from tempflow.config.loading import load_config

    cfg = load_config(CONFIGS / "qwenimage-pickscore-tempflow.yaml", [])
    assert model_family(cfg.model.name) == "qwenimage" and cfg.model.resolution == 512
    assert (cfg.sampling.guidance_scale, cfg.train.ema_every, cfg.algorithm.beta) == (4.0, 0, 0.0)
    sig = family_sigmas("qwenimage", cfg.sampling.steps, cfg.model.resolution)
    assert abs(inv_mean_std(sig, cfg.sampling.noise_level) - 1.533) < 5e-4


def test_zimage_preset():
    from tempflow.config.loading import load_config

    cfg = load_config(CONFIGS / "zimage-turbo-pickscore-tempflow.yaml", [])
    assert model_family(cfg.model.name) == "zimage" and cfg.sampling.guidance_scale == 1.0
    sig = family_sigmas("zimage", cfg.sampling.steps, cfg.model.resolution)
    # a fixed shift 3 over linspace(1, 1 / T, T): no dependence on the resolution
    torch.testing.assert_close(sig[:-1], 3 * torch.linspace(1, 1 / 8, 8) / (1 + 2 * torch.linspace(1, 1 / 8, 8)))
    assert abs(inv_mean_std(sig, cfg.sampling.noise_level) - 1.995) < 5e-4


def test_flux2klein_preset():
    from tempflow.config.loading import load_config
    from tempflow.models.families import empirical_mu

    cfg = load_config(CONFIGS / "flux2klein-base-pickscore-tempflow.yaml", [])
    assert model_family(cfg.model.name) == "flux2klein" and cfg.sampling.guidance_scale == 4.0
    mu = empirical_mu((cfg.model.resolution // 16) ** 2, cfg.sampling.steps)
    assert abs(mu - 1.988) < 5e-4
    sig = family_sigmas("flux2klein", cfg.sampling.steps, cfg.model.resolution)
    base = torch.linspace(1, 0.1, 10, dtype=torch.float64)
    expected = torch.exp(torch.tensor(mu, dtype=torch.float64)) / (torch.exp(torch.tensor(mu, dtype=torch.float64)) + 1 / base - 1)
    torch.testing.assert_close(sig[:-1], expected.float(), atol=1e-6, rtol=0)
    assert abs(inv_mean_std(sig, cfg.sampling.noise_level) - 1.512) < 5e-4


def test_trainer_runs_a_flux_folder_and_drops_its_text_encoders(tmp_path):
    from tempflow.config import config_from_dict
    from tempflow.training.trainer import Trainer

    folder = tmp_path / "flux"
    TINY["flux"].build(0).save_pretrained(folder)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\ntwo blue balls\n")
    cfg = config_from_dict({
        "model": {"name": str(folder), "resolution": RESOLUTION, "lora": {"rank": 2, "alpha": 2}},
        "sampling": {"steps": 3, "eval_steps": 3, "guidance_scale": 1.0, "noise_level": 0.9},
        "algorithm": {"num_branches": 2, "seeds_per_prompt": 1, "branch_points": "all"},
        "train": {"iterations": 1, "prompts_per_iteration": 2},
        "reward": {"name": "brightness"},
        "prompts": {"train": str(prompts), "eval": str(prompts)},
        "run": {"out": str(tmp_path / "run")}})
    trainer = Trainer(cfg)
    model = trainer.model
    assert model.pipe.text_encoder is None and model.pipe.text_encoder_2 is None
    torch.testing.assert_close(trainer.sigmas, model.schedule(3))
    stats = trainer.iteration(0)
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in stats.values()
               if isinstance(v, (int, float)))
