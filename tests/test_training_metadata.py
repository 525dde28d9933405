"""Prompt metadata (a GenEval-style JSONL prompt file) reaches the reward during training."""

import json

import torch

from tempflow.rewards import register

SEEN: list[dict] = []


@register("test_metadata_recorder")
def _recorder():
    """Scores 1 when the sample's metadata names its own prompt, and records what it saw."""
    def reward(images, prompts, metadata):
        SEEN.extend(metadata)
        return torch.tensor([float(m["prompt"] == p) for p, m in zip(prompts, metadata)])
    return reward


def test_training_passes_each_prompts_metadata_to_the_reward(tmp_path, tiny_shapes_checkpoint):
    from tempflow.config import config_from_dict
    from tempflow.training.loop import train

    lines = [{"prompt": p, "tag": t, "include": [{"class": "circle", "count": 1}]}
             for p, t in (("a red circle", "colors"), ("two blue squares", "counting"))]
    prompts = tmp_path / "meta.jsonl"
    prompts.write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = config_from_dict({
        "model": {"name": str(tiny_shapes_checkpoint), "lora": {"rank": 2, "alpha": 2}},
        "sampling": {"steps": 4, "eval_steps": 2},
        "algorithm": {"num_branches": 2, "seeds_per_prompt": 1, "branch_points": 1},
        "train": {"iterations": 1, "prompts_per_iteration": 2},
        "reward": {"name": "test_metadata_recorder"},
        "prompts": {"train": str(prompts), "eval": str(prompts), "balance": "uniform"},
        "run": {"out": str(tmp_path / "run"), "eval_every": 0, "log_images_every": 0}})
    SEEN.clear()
    run = train(cfg, progress=False)
    assert SEEN and {m["tag"] for m in SEEN} <= {"colors", "counting"}
    assert run.history[0]["reward/mean"] == 1.0  # every sample got its own prompt's metadata
