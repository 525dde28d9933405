"""Every checkpoint usable: export as a LoRA with a model card or merged weights, sampling
from a chosen checkpoint, resuming from an earlier one, and LoRAs that know their base."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tempflow.cli.main import main
from tempflow.errors import UserError

LORA = "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 3-iteration run with a checkpoint and an evaluation after every iteration."""
    from tempflow.config import config_from_dict
    from tempflow.models.shapes_model import ShapesModel, ShapesModelConfig
    from tempflow.shapes import vocabulary
    from tempflow.training.loop import train

    tmp = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    ShapesModel(ShapesModelConfig(vocab=vocabulary(), num_layers=2, num_heads=2, head_dim=8, text_dim=16,
                                  text_layers=1)).save_pretrained(tmp / "tiny")
    (tmp / "eval.txt").write_text("a red circle\n")
    cfg = {"model": {"name": str(tmp / "tiny"), "lora": {"rank": 2, "alpha": 2}},
           "sampling": {"steps": 4, "eval_steps": 2},
           "algorithm": {"num_branches": 2, "seeds_per_prompt": 1, "branch_points": 1, "clip_range": 0.2},
           "train": {"iterations": 3, "prompts_per_iteration": 2, "ema_every": 1, "ema_decay": 0.5},
           "prompts": {"eval": str(tmp / "eval.txt")},
           "run": {"out": str(tmp / "run"), "eval_every": 1, "eval_images_per_prompt": 1, "save_every": 1,
                   "log_images_every": 0, "keep_checkpoints": 3}}
    train(config_from_dict(cfg), progress=False)
    return tmp


def cli(*argv) -> tuple[int, str]:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in argv])
    return code, err.getvalue()


def ema_of(run_path, iteration):
    ckpt = run_path / "checkpoints" / f"iter_{iteration:06d}" / "weights.safetensors"
    return {k[4:]: v for k, v in load_file(str(ckpt)).items() if k.startswith("ema.")}


def test_export_writes_a_lora_with_a_model_card(run, tmp_path):
    out = tmp_path / "exported"
    code, err = cli("export", run / "run", "--checkpoint", 2, "--out", out)
    assert code == 0, err
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusers\n") and "- lora" in card and "- tempflow-grpo" in card
    assert "iteration 2" in card and "| category | pass rate |" in card and (out / "sample.png").is_file()
    meta = json.loads((out / "tempflow_export.json").read_text())
    assert meta["iteration"] == 2 and meta["algorithm"] == "TempFlow-GRPO"
    with safe_open(str(out / LORA), framework="pt") as f:
        assert f.metadata()["tempflow.base_model"] == str(run / "tiny")
    # the exported LoRA holds checkpoint 2's EMA weights (peft names without the adapter name)
    ema = ema_of(run / "run", 2)
    lora = load_file(str(out / LORA))
    assert len(lora) == len(ema)
    for name, tensor in ema.items():
        assert torch.equal(lora["transformer." + name.replace(".default", "")], tensor), name
    code, err = cli("sample", "--model", run / "tiny", "--lora", out, "--prompt", "a red circle", "--num", 1,
                    "--out", tmp_path / "x.png")
    assert code == 0, err


def test_eval_of_a_checkpoint_equals_eval_of_its_export(run, tmp_path):
    code, err = cli("export", run / "run", "--checkpoint", 1, "--out", tmp_path / "one")
    assert code == 0, err
    common = ["--prompts", run / "eval.txt", "--num", 2, "--steps", 2]
    code, err = cli("eval", run / "run", "--checkpoint", 1, *common, "--out", tmp_path / "a")
    assert code == 0, err
    code, err = cli("eval", "--model", run / "tiny", "--lora", tmp_path / "one", "--reward", "shapes", *common,
                    "--out", tmp_path / "b")
    assert code == 0, err
    a, b = (json.loads((tmp_path / x / "eval.json").read_text()) for x in "ab")
    assert a["checkpoint"] == 1 and a["images"] == b["images"]


def test_raw_weights_of_a_checkpoint_load_and_evaluate(run, tmp_path):
    from tempflow.training.export import load_run_model

    ckpt = load_file(str(run / "run" / "checkpoints" / "iter_000002" / "weights.safetensors"))
    for weights, prefix in (("ema", "ema."), ("raw", "params.")):
        model = load_run_model(run / "run", 2, weights=weights)[0]
        loaded = {n: p for n, p in model.transformer.named_parameters() if "lora" in n}
        assert loaded and all(torch.equal(p, ckpt[prefix + n]) for n, p in loaded.items()), weights
    # EMA decay 0.5 every step: after two steps the shadow differs from the raw weights
    assert any(not torch.equal(ckpt["ema." + n], ckpt["params." + n]) for n in loaded)
    common = ["--prompts", run / "eval.txt", "--num", 1, "--steps", 2]
    code, err = cli("eval", run / "run", "--checkpoint", 2, "--weights", "raw", *common, "--out", tmp_path / "r")
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "eval.json").read_text())["weights"] == "raw"


def test_a_full_finetuning_run_evaluates_its_newest_checkpoint(run, tmp_path):
    from tempflow.config import config_from_dict
    from tempflow.training.loop import train

    cfg = {"model": {"name": str(run / "tiny"), "lora": None}, "sampling": {"steps": 4, "eval_steps": 2},
           "algorithm": {"num_branches": 2, "seeds_per_prompt": 1, "branch_points": 1},
           "train": {"iterations": 2, "prompts_per_iteration": 1, "ema_every": 1, "ema_decay": 0.5, "lr": 1e-3},
           "prompts": {"eval": str(run / "eval.txt")},
           "run": {"out": str(tmp_path / "full"), "eval_every": 0, "save_every": 1, "log_images_every": 0}}
    train(config_from_dict(cfg), progress=False)
    common = ["--prompts", run / "eval.txt", "--num", 2, "--steps", 2]
    code, err = cli("eval", tmp_path / "full", *common, "--out", tmp_path / "newest")
    assert code == 0, err
    code, err = cli("eval", tmp_path / "full", "--checkpoint", 2, *common, "--out", tmp_path / "two")
    assert code == 0, err
    code, err = cli("eval", tmp_path / "full", "--checkpoint", 1, *common, "--out", tmp_path / "one")
    assert code == 0, err
    newest, two, one = (json.loads((tmp_path / x / "eval.json").read_text()) for x in ("newest", "two", "one"))
    assert newest["checkpoint"] is None and newest["checkpoint_used"] == 2 and newest["weights"] == "ema"
    assert newest["images"] == two["images"] and two["checkpoint_used"] == 2
    # the weights are really the checkpoint's: full fine-tuning changed them between 1 and 2
    from tempflow.training.export import load_run_model
    m1, m2 = (load_run_model(tmp_path / "full", i)[0] for i in (1, 2))
    assert any(not torch.equal(a, b) for a, b in zip(m1.transformer.parameters(), m2.transformer.parameters()))
    # model/ holds the newest checkpoint's EMA weights, in the folder format --model reads; no lora/
    assert not (tmp_path / "full" / "lora").exists() and not (tmp_path / "full" / ".model-tmp").exists()
    exported = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    ema = ema_of(tmp_path / "full", 2)
    assert ema and all(torch.equal(exported[f"transformer.{k}"], v) for k, v in ema.items())
    code, err = cli("eval", "--model", tmp_path / "full" / "model", *common, "--reward", "shapes",
                    "--out", tmp_path / "folder")
    assert code == 0, err
    folder = json.loads((tmp_path / "folder" / "eval.json").read_text())["images"]
    assert [(r["passed"], r["score"]) for r in folder] == [(r["passed"], r["score"]) for r in newest["images"]]


def test_newest_export_equals_the_runs_own_lora(run, tmp_path):
    code, err = cli("export", run / "run", "--out", tmp_path / "newest")
    assert code == 0, err
    assert (tmp_path / "newest" / LORA).read_bytes() == (run / "run" / "lora" / LORA).read_bytes()


def test_merged_weights_sample_like_base_plus_lora(run, tmp_path):
    code, err = cli("export", run / "run", "--merge", "--out", tmp_path / "merged")
    assert code == 0, err
    code, _ = cli("sample", "--model", tmp_path / "merged", "--prompt", "a red circle", "--num", 2, "--scale", 1,
                  "--out", tmp_path / "merged.png")
    assert code == 0
    code, _ = cli("sample", "--lora", run / "run", "--prompt", "a red circle", "--num", 2, "--scale", 1,
                  "--out", tmp_path / "lora.png")
    assert code == 0
    from tempflow.utils.images import load_images
    a, b = load_images(tmp_path / "merged.png")[0], load_images(tmp_path / "lora.png")[0]
    assert (a - b).abs().max() <= 2 / 255  # the same model up to float rounding (8-bit images)


@pytest.mark.parametrize("argv, expect", [
    (["export", "{run}", "--checkpoint", "9", "--out", "{tmp}/x"], "has no checkpoint 9 (it has: 1, 2, 3"),
    (["export", "{run}", "--out", "{run}"], "is not an empty folder"),
    (["export", "{tiny}", "--out", "{tmp}/y"], "is not a tempflow run"),
    (["sample", "--model", "{tiny}", "--checkpoint", "2", "--prompt", "a red circle", "--out", "{tmp}/z.png"],
     "give the run folder as --lora RUN"),
    (["train", "--resume", "{run}", "--from-checkpoint", "7"], "has no checkpoint 7"),
    (["train", "--from-checkpoint", "1"], "goes with --resume"),
    (["eval", "{run}", "--checkpoint", "9"], "has no checkpoint 9"),
    (["eval", "--checkpoint", "1"], "give the run folder as TARGET"),
    (["eval", "{run}", "--weights", "raw"], "give --checkpoint N too"),
])
def test_bad_checkpoint_choices_are_one_line(run, tmp_path, argv, expect):
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    argv = [a.format(run=run / "run", tiny=run / "tiny", tmp=tmp_path) for a in argv]
    code, err = cli(*argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and expect in err, err
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_resume_from_an_earlier_checkpoint_sets_later_ones_aside(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run / "run", copy)
    final = ema_of(copy, 3)
    code, err = cli("train", "--resume", copy, "--from-checkpoint", 1, "--no-progress")
    assert code == 0, err
    aside = list((copy / "set-aside").iterdir())
    assert len(aside) == 1 and "set-aside" in err
    assert sorted(p.name for p in (aside[0] / "checkpoints").iterdir()) == ["iter_000002", "iter_000003"]
    assert (aside[0] / "metrics.jsonl").is_file() and (aside[0] / "lora" / LORA).is_file()
    again = ema_of(copy, 3)  # iterations 2 and 3 recomputed: the same weights (exact resume)
    assert all(torch.equal(again[k], final[k]) for k in final)


def test_lora_refuses_another_base_and_accepts_the_same_base_in_bfloat16(run):
    from tempflow.models import load_model

    same = load_model(str(run / "tiny"), dtype=torch.bfloat16)
    same.load_lora(run / "run" / "lora")
    other = load_model(str(run / "tiny"))
    with torch.no_grad():
        for p in other.transformer.parameters():
            p.mul_(1.1)
    with pytest.raises(UserError, match="was trained on base model"):
        other.load_lora(run / "run" / "lora")
