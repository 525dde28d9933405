"""docs/security.md's threat model: no untrusted file causes an import or an unpickle.

Each hostile file here would create ``pwned`` in the test's folder if tempflow imported or
unpickled it; every test checks that it did not, and that the user got a one-line error.
"""

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from tempflow.config import load_config
from tempflow.errors import UserError


class Pwn:
    """Unpickling this runs a shell command that creates ``target``."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def evil_pickle(path: Path, target: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(Pwn(target)))
    return path


def evil_torch_file(path: Path, target: Path) -> Path:
    """A torch.save zip archive whose data.pkl runs code (what a crafted checkpoint looks like)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"x": Pwn(target)}, path)
    return path


# ---------------------------------------------------------------------------- configs

@pytest.mark.parametrize("reward", [
    {"name": "os:system", "kwargs": {"command": "true"}},
    {"name": "weighted", "components": [{"name": "shapes"}, {"name": "subprocess:call", "label": "x"}]},
    {"name": " os.path :exists"},
])
def test_a_config_file_may_not_name_code(tmp_path, reward):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"reward": reward}))
    with pytest.raises(UserError, match="--allow-import"):
        load_config(path)


def test_allowed_modules_and_typed_names_are_trusted(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"reward": {"name": "mypkg.rewards:make"}}))
    assert load_config(path, allow_imports=["mypkg"]).reward.name == "mypkg.rewards:make"
    assert load_config(path, allow_imports=["mypkg.rewards"]).reward.name == "mypkg.rewards:make"
    with pytest.raises(UserError, match="--allow-import mypkg.rewards"):
        load_config(path, allow_imports=["mypk", "mypkg.reward"])  # prefixes of names are not packages
    # a value the user typed on the command line replaces the file's: no opt-in needed
    assert load_config(path, ["reward.name=other.mod:f"]).reward.name == "other.mod:f"
    assert load_config(path, ["reward.name=shapes"]).reward.name == "shapes"


# ---------------------------------------------------------------------------- weights files

def test_training_checkpoint_with_code_is_refused(tmp_path, tiny_shapes_checkpoint, capsys):
    """A crafted state.pt with a matching SHA-256 in meta.json: resume stops with one line."""
    from tempflow.cli.main import main
    from tempflow.config import config_from_dict
    from tempflow.training import checkpoint as ck
    from tempflow.training.loop import train

    cfg = {"model": {"name": str(tiny_shapes_checkpoint), "lora": {"rank": 2, "alpha": 2}},
           "sampling": {"steps": 4, "eval_steps": 2},
           "algorithm": {"num_branches": 2, "seeds_per_prompt": 1, "branch_points": 1},
           "train": {"iterations": 1, "prompts_per_iteration": 1},
           "run": {"out": str(tmp_path / "run"), "eval_every": 0, "log_images_every": 0}}
    run = train(config_from_dict(cfg), progress=False).path
    ckpt = run / "checkpoints" / ck.folder_name(1)
    evil_torch_file(ckpt / ck.STATE, tmp_path / "pwned")
    meta = json.loads((ckpt / ck.META).read_text())
    meta["sha256"][ck.STATE] = ck.sha256(ckpt / ck.STATE)
    (ckpt / ck.META).write_text(json.dumps(meta))
    capsys.readouterr()
    code = main(["train", "--resume", str(run), "--set", "train.iterations=2", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot be read" in err, err
    assert not (tmp_path / "pwned").exists()


def test_lora_folder_with_a_pickle_is_refused(tmp_path, tiny_shapes_checkpoint, capsys):
    """A LoRA folder holding only a pickled .bin: nothing is unpickled, one line, exit 2."""
    from tempflow.cli.main import main

    lora = tmp_path / "lora"
    evil_torch_file(lora / "pytorch_lora_weights.bin", tmp_path / "pwned")
    capsys.readouterr()
    code = main(["sample", "--model", str(tiny_shapes_checkpoint), "--lora", str(lora), "--prompt",
                 "a red circle", "--num", "1", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "pwned").exists()


def test_aesthetic_head_with_code_is_refused(tmp_path):
    from tempflow.rewards.aesthetic import load_head

    head = evil_torch_file(tmp_path / "head.pth", tmp_path / "pwned")
    with pytest.raises(UserError, match="cannot be read as weights"):
        load_head(str(head), 8, torch.device("cpu"), torch.float32)
    assert not (tmp_path / "pwned").exists()


def test_pretraining_state_with_code_is_refused(tmp_path):
    from tempflow.pretrain.shapes import PretrainConfig, pretrain

    out = tmp_path / "pre"
    evil_pickle(out / "pretrain_state.pt", tmp_path / "pwned")
    with pytest.raises(UserError, match="cannot be read as a pretraining state"):
        pretrain(PretrainConfig(out=str(out), steps=2), resume=True, progress=False)
    assert not (tmp_path / "pwned").exists()


def test_pipeline_folder_naming_another_library_is_refused(tmp_path):
    from tempflow.models.sd3 import check_model_index

    folder = tmp_path / "pipe"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "SD3Transformer2DModel"],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"], "image_encoder": [None, None]}))
    check_model_index(folder)  # the libraries diffusers loads from pass
    (folder / "model_index.json").write_text(json.dumps({"scheduler": ["os", "system"]}))
    with pytest.raises(UserError, match="library 'os'"):
        check_model_index(folder)


def test_a_factory_that_returns_no_reward_is_one_error():
    from tempflow.rewards import build_reward

    with pytest.raises(UserError, match="returned a dict, not a reward"):
        build_reward("builtins:dict")
    with pytest.raises(UserError, match="not a factory function"):
        build_reward("math:pi")
    with pytest.raises(UserError, match="cannot be imported"):
        build_reward(":f")
