"""`tempflow eval`: what it evaluates (run, LoRA, checkpoint, base), its outputs, same noise."""

import json

import pytest
import torch
import yaml

from tempflow.cli.main import main
from tempflow.config import TrainConfig, config_to_dict
from tempflow.errors import UserError
from tempflow.evaluation import EvalResult, evaluate_prompts, resolve_target
from tempflow.models.lora import LoraSpec
from tempflow.models.shapes_model import ShapesModel
from tempflow.training.prompts import PromptSet


def save_lora(ckpt, folder, init):
    """A rank-4 LoRA on the tiny model: init False gives a random B (the model changes),
    'gaussian' B = 0 (the model equals the base)."""
    model = ShapesModel.from_pretrained(ckpt)
    torch.manual_seed(1)
    model.add_lora(LoraSpec(rank=4, alpha=4.0, init=init))
    model.save_lora(folder)
    return folder


def make_run(tmp_path, ckpt, lora=True, eval_steps=3, reward=None):
    cfg = config_to_dict(TrainConfig())
    if reward is not None:
        cfg["reward"].update(reward)
    run = tmp_path / "run"
    cfg["model"]["name"] = str(ckpt)
    cfg["model"]["lora"] = {"rank": 4, "alpha": 4.0} if lora else None
    cfg["sampling"]["eval_steps"] = eval_steps
    cfg["run"]["out"] = str(run)
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    if lora:
        save_lora(ckpt, run / "lora", init=False)
    return run


def test_resolve_target_kinds(tmp_path, tiny_shapes_checkpoint):
    assert resolve_target(None).model is None and resolve_target(None).lora is None
    run = make_run(tmp_path, tiny_shapes_checkpoint)
    t = resolve_target(str(run))
    assert t.model == str(tiny_shapes_checkpoint) and t.lora == run / "lora"
    assert t.config.sampling.eval_steps == 3
    t = resolve_target(str(run / "lora"), model=str(tiny_shapes_checkpoint))
    assert t.lora == run / "lora" and t.config is None
    t = resolve_target(str(tiny_shapes_checkpoint))
    assert t.model == str(tiny_shapes_checkpoint) and t.lora is None


def test_resolve_target_errors_say_what_is_missing(tmp_path, tiny_shapes_checkpoint):
    with pytest.raises(UserError, match="is not a folder"):
        resolve_target(str(tmp_path / "nowhere"))
    (tmp_path / "junk").mkdir()
    with pytest.raises(UserError, match="neither a run folder"):
        resolve_target(str(tmp_path / "junk"))
    run = make_run(tmp_path, tiny_shapes_checkpoint)
    (run / "lora" / "pytorch_lora_weights.safetensors").unlink()
    with pytest.raises(UserError, match="no lora/"):
        resolve_target(str(run))


def test_full_finetuning_run_is_evaluated_from_its_checkpoints(tmp_path, tiny_shapes_checkpoint):
    run = make_run(tmp_path, tiny_shapes_checkpoint, lora=False)
    t = resolve_target(str(run))
    assert t.run == run and t.lora is None and "fine-tuned by run" in t.describe()
    with pytest.raises(UserError, match="not a tempflow run"):  # a bare config.yaml, no checkpoints
        t.load("cpu")


def test_eval_run_folder_writes_json_grids_and_table(tmp_path, tiny_shapes_checkpoint, capsys):
    run = make_run(tmp_path, tiny_shapes_checkpoint)
    out = tmp_path / "ev"
    assert main(["eval", str(run), "--num", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "eval.json").read_text())
    # the run's config decides the sampler and the reward; the run's LoRA is loaded
    assert data["steps"] == 3 and data["reward"] == "shapes" and data["lora"] == str(run / "lora")
    heldout = PromptSet.load("shapes:heldout")
    assert len(data["images"]) == len(heldout.prompts)
    cats = sorted(set(heldout.categories))
    assert sorted(c for c in data["table"] if c != "overall") == cats
    for c in cats:
        assert (out / f"{c}.png").is_file() and (out / f"{c}.json").is_file()
        rows = [r for r in data["images"] if r["category"] == c]
        assert data["table"][c]["pass_rate"] == pytest.approx(sum(r["passed"] for r in rows) / len(rows))
    overall = sum(data["table"][c]["pass_rate"] for c in cats) / len(cats)
    assert data["table"]["overall"]["pass_rate"] == pytest.approx(overall)
    # the dense shapes reward's mean is the mean of the per-image rewards (rounded to 4 places)
    mean = sum(r["reward"] for r in data["images"]) / len(data["images"])
    assert data["summary"]["eval/reward"] == pytest.approx(mean, abs=1e-4)
    assert "overall" in printed and f"reward (shapes): mean {data['summary']['eval/reward']:.4f}" in printed


def test_eval_of_a_weighted_reward_run_scores_with_the_weighted_reward(tmp_path, tiny_shapes_checkpoint):
    # 0.5 * dense shapes + 2 * brightness: the eval mean is that sum, not either component alone
    run = make_run(tmp_path, tiny_shapes_checkpoint, reward={"name": "weighted", "components": [
        {"name": "shapes", "weight": 0.5}, {"name": "brightness", "weight": 2.0}]})
    prompts = PromptSet.load("shapes:heldout")
    short = PromptSet(prompts.prompts[::10], prompts.categories[::10])  # 16 prompts, every category
    listing = tmp_path / "prompts.txt"
    listing.write_text("\n".join(short.prompts) + "\n")
    out = tmp_path / "ev"
    assert main(["eval", str(run), "--num", "1", "--prompts", str(listing), "--out", str(out)]) == 0
    data = json.loads((out / "eval.json").read_text())
    assert data["reward"] == "weighted" and len(data["images"]) == len(short.prompts)
    from tempflow.models import load_model
    from tempflow.rewards import build_reward
    model = load_model(str(tiny_shapes_checkpoint))
    model.load_lora(run / "lora")
    res = evaluate_prompts(model, short, build_reward("brightness"), 1, 3, 3.0, 3.0, 0, verify=True)
    expected = 0.5 * res.score.mean() + 2.0 * res.reward.mean()
    assert data["summary"]["eval/reward"] == pytest.approx(float(expected), abs=1e-4)


def test_flags_override_the_run_config(tmp_path, tiny_shapes_checkpoint):
    run = make_run(tmp_path, tiny_shapes_checkpoint)
    listing = tmp_path / "prompts.txt"
    listing.write_text("a red circle\ntwo blue squares\n")
    out = tmp_path / "ev"
    assert main(["eval", str(run), "--num", "1", "--steps", "2", "--cfg", "1", "--prompts", str(listing),
                 "--out", str(out)]) == 0
    data = json.loads((out / "eval.json").read_text())
    assert data["steps"] == 2 and data["guidance_scale"] == 1.0 and data["prompts"] == str(listing)
    assert len(data["images"]) == 2
    # --split names a shapes list (resolved without evaluating its 3,099 prompts)
    import argparse
    from tempflow.cli.eval_cmd import _settings
    target = resolve_target(str(run))
    flags = dict(prompts=None, split="train", steps=None, shift=None, cfg=None, reward=None, reward_set=[])
    assert _settings(argparse.Namespace(**flags), target)["prompts"] == "shapes:train"
    assert _settings(argparse.Namespace(**{**flags, "split": None}), target)["prompts"] == "shapes:heldout"


def test_same_seed_same_noise_for_any_model(tmp_path, tiny_shapes_checkpoint):
    """A LoRA with B = 0 reproduces the base's images exactly; a random B changes them."""
    prompts = PromptSet(["a red circle", "two blue squares"], ["colors", "counting"])

    def images(lora):
        model = ShapesModel.from_pretrained(tiny_shapes_checkpoint)
        if lora:
            model.load_lora(lora)
        return evaluate_prompts(model, prompts, None, 2, 3, 3.0, 3.0, seed=5).images

    base = images(None)
    assert torch.equal(images(save_lora(tiny_shapes_checkpoint, tmp_path / "zero", "gaussian")), base)
    assert not torch.allclose(images(save_lora(tiny_shapes_checkpoint, tmp_path / "rand", False)), base)


def test_verify_false_keeps_only_the_reward(tiny_shapes_checkpoint):
    model = ShapesModel.from_pretrained(tiny_shapes_checkpoint)
    prompts = PromptSet(["a red circle"], ["colors"])
    brightness = lambda images, texts: images.mean(dim=(1, 2, 3))  # noqa: E731
    res = evaluate_prompts(model, prompts, brightness, 3, 2, 3.0, None, 0, verify=False)
    assert res.passed is None and res.score is None
    assert res.summary() == {"eval/reward": pytest.approx(float(res.images.mean()))}
    assert res.format_table("brightness").startswith("reward (brightness): mean")
    assert res.to_json({})["table"] is None and len(res.to_json({})["images"]) == 3


def test_prompt_file_needs_a_reward(tmp_path, capsys):
    f = tmp_path / "p.txt"
    f.write_text("a photo of a cat\n")
    assert main(["eval", "--prompts", str(f), "--num", "1"]) == 2
    assert "--reward" in capsys.readouterr().err
    assert main(["eval", "--num", "0"]) == 2


def test_table_rows_are_category_means():
    res = EvalResult(["a", "a", "b"], ["x", "x", "y"], torch.tensor([True, False, True]),
                     torch.tensor([1.0, 0.0, 0.5]), torch.zeros(3, 3, 2, 2))
    t = res.table()
    assert t["x"]["pass_rate"] == 0.5 and t["y"]["pass_rate"] == 1.0
    assert t["overall"]["pass_rate"] == 0.75 and t["overall"]["n"] == 3
