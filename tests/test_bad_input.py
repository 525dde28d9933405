"""Every bad input of docs/errors.md, through the CLI: exit code 2, one line on stderr naming
the field or file and the fix, no traceback, and an existing run left untouched.

`python tests/test_bad_input.py` prints the table rows of docs/errors.md from these cases.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from tempflow.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Case:
    """argv after `tempflow` ({placeholders} filled from the world's paths); ``expect``: a
    piece of the error line; ``fresh``: run.out is a new folder (else: the existing run)."""

    id: str
    what: str
    argv: list[str]
    expect: str
    fresh: bool = False
    patch: str | None = None


def train(*sets: str) -> list[str]:
    return ["train", "--config", "{config}", "--no-progress", *[a for s in sets for a in ("--set", s)]]


CASES = [
    # ---- config values
    Case("group-size", "Flow-GRPO group size < 2", train("algorithm.group_size=1"), "algorithm.group_size must be >= 2"),
    Case("branches", "K < 2 branches", train("algorithm.num_branches=1"), "algorithm.num_branches must be >= 2"),
    Case("branch-point", "branch point out of range", train("algorithm.branch_points=[0,7]"),
         "algorithm.branch_points must lie in 0..3"),
    Case("branch-count", "more random branch points than trained steps", train("algorithm.branch_points=9"),
         "algorithm.branch_points must be in 1..4"),
    Case("noise-level", "noise level <= 0", train("sampling.noise_level=0"), "sampling.noise_level must be > 0"),
    Case("clip-range", "clip range <= 0", train("algorithm.clip_range=-0.1"), "algorithm.clip_range must be > 0"),
    Case("unknown-key", "unknown key", train("algorithm.num_branch=4"),
         "unknown config key 'algorithm.num_branch'; did you mean 'algorithm.num_branches'?"),
    Case("unknown-section", "unknown section in a config file",
         ["train", "--config", "{typo_config}"], "unknown config key 'algoritm'"),
    Case("wrong-type", "wrong type", train("train.iterations=ten"), "train.iterations must be an integer"),
    Case("bool-as-int", "a boolean where a number goes", train("train.lr=true"), "train.lr must be a number"),
    Case("bad-yaml", "config file that is not YAML", ["train", "--config", "{bad_yaml}"], "is not valid YAML"),
    Case("no-config", "config file missing", ["train", "--config", "{tmp}/nope.yaml"], "nope.yaml not found"),
    Case("keep", "keep no checkpoints", train("run.keep_checkpoints=0"), "run.keep_checkpoints must be >= 1"),
    Case("kl-stop", "KL bound <= 0", train("run.kl_stop=0"), "run.kl_stop must be > 0 or null"),
    Case("bad-override", "--set without '='", train("algorithm.beta"), "must look like section.key=value"),
    # ---- names
    Case("reward", "unknown reward name", train("reward.name=clipscore"), "unknown reward 'clipscore'", fresh=True),
    Case("reward-import", "reward factory that cannot be imported", train("reward.name=nomodule:make"),
         "reward 'nomodule:make' cannot be imported", fresh=True),
    Case("reward-kwargs", "reward arguments it does not take", train("reward.kwargs.colour=1"),
         "does not take these arguments", fresh=True),
    Case("model", "unknown model name", train("model.name=sdxl"), "model 'sdxl' not found", fresh=True),
    # ---- prompts
    Case("prompt-missing", "prompt file missing", train("prompts.train={tmp}/none.txt"), "none.txt' not found", fresh=True),
    Case("prompt-empty", "empty prompt file", train("prompts.train={empty_prompts}"), "holds no prompts", fresh=True),
    Case("prompt-binary", "malformed (not UTF-8) prompt file", train("prompts.train={binary_prompts}"),
         "is not UTF-8", fresh=True),
    Case("prompt-folder", "a folder given as prompt file", train("prompts.eval={tmp}"), "not found", fresh=True),
    Case("prompt-words", "prompts the shapes model cannot encode", train("prompts.train={odd_prompts}"),
         "unknown word 'purple'", fresh=True),
    Case("prompt-split", "unknown shapes prompt list", train("prompts.eval=shapes:test"),
         "unknown prompt split 'test'", fresh=True),
    # ---- checkpoints
    Case("model-missing", "model checkpoint folder missing", train("model.name={tmp}/no-model/"),
         "checkpoint folder", fresh=True),
    Case("model-arch", "model checkpoint of another architecture", train("model.name={other_arch}"),
         "does not match the model architecture", fresh=True),
    Case("model-corrupt", "model weights truncated", train("model.name={corrupt_model}"), "unreadable weights",
         fresh=True),
    Case("resume-rank", "resume with a checkpoint of another LoRA rank",
         ["train", "--resume", "{rank_mismatch}", "--no-progress"], "does not fit this model"),
    Case("lora-arch", "LoRA of another architecture (sample --lora)",
         ["sample", "--model", "{wide_model}", "--lora", "{run}/lora", "--prompt", "a red circle",
          "--out", "{tmp}/x.png"], "LoRA weights do not fit this model"),
    # ---- run folders
    Case("run-other-config", "run folder holding a run with another config", train("run.out={run}", "train.lr=0.5"),
         "already holds a run with another config (differs in train.lr)"),
    Case("run-same-config", "run folder holding this run already", train("run.out={run}"),
         "already holds a run with this config"),
    Case("resume-none", "--resume of a folder without a run", ["train", "--resume", "{tmp}/empty-dir"],
         "no run there"),
    Case("resume-config", "--resume with --config", ["train", "--resume", "{run}", "--config", "{config}"],
         "drop --config"),
    Case("resume-change", "--resume changing a setting", ["train", "--resume", "{run}", "--set", "algorithm.beta=0.1"],
         "cannot change algorithm.beta when resuming"),
    Case("unwritable", "output folder that cannot be created", train("run.out={config}/run"), "is not writable"),
    # ---- numbers
    Case("nan-model", "model whose outputs are NaN", train("model.name={nan_model}"),
         "3 iterations in a row (up to iteration 2) had a non-finite model output", fresh=True),
    Case("nan-loss", "non-finite loss (every step skipped)",
         train("train.max_nonfinite=2", "reward.name=resume_rewards:brightness"),
         "2 iterations in a row (up to iteration 1) had a non-finite", fresh=True, patch="nan_loss"),
]


# ---------------------------------------------------------------------------- the world

def _tiny(path: Path, **arch) -> Path:
    from tempflow.models.shapes_model import ShapesModel, ShapesModelConfig
    from tempflow.shapes import vocabulary

    torch.manual_seed(0)
    cfg = dict(vocab=vocabulary(), num_layers=2, num_heads=2, head_dim=8, text_dim=16, text_layers=1)
    ShapesModel(ShapesModelConfig(**{**cfg, **arch})).save_pretrained(path)
    return path


def _edit_weights(path: Path, fn) -> Path:
    from safetensors.torch import load_file, save_file

    f = path / "model.safetensors"
    save_file(fn(load_file(str(f))), str(f))
    return path


def _config(tmp: Path, model: Path, out: Path, **train) -> dict:
    return {"model": {"name": str(model), "lora": {"rank": 2, "alpha": 2}},
            "sampling": {"steps": 5, "eval_steps": 2},
            "algorithm": {"num_branches": 2, "seeds_per_prompt": 1, "branch_points": 2},
            "train": {"iterations": 3, "prompts_per_iteration": 2, **train},
            "prompts": {"eval": str(tmp / "eval.txt")},
            "run": {"out": str(out), "eval_every": 0, "save_every": 1, "log_images_every": 0}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Paths the cases refer to; ``run`` is a finished tiny run that must never change."""
    from tempflow.config import config_from_dict
    from tempflow.training.loop import train as run_training

    tmp = tmp_path_factory.mktemp("bad")
    model = _tiny(tmp / "tiny")
    (tmp / "eval.txt").write_text("a red circle\n")
    paths = {"tmp": tmp, "model": model, "run": tmp / "run", "fresh": tmp / "fresh"}
    (tmp / "config.yaml").write_text(yaml.safe_dump(_config(tmp, model, tmp / "fresh")))
    paths["config"] = tmp / "config.yaml"
    run_training(config_from_dict(_config(tmp, model, tmp / "run")), progress=False)
    # a run of another LoRA rank, then the first run's checkpoints copied into it
    other = tmp / "rank4"
    other_cfg = _config(tmp, model, other)
    other_cfg["model"]["lora"]["rank"] = 4
    run_training(config_from_dict({**other_cfg, "train": {**other_cfg["train"], "iterations": 1}}),
                 progress=False)
    shutil.rmtree(other / "checkpoints")
    shutil.copytree(tmp / "run" / "checkpoints", other / "checkpoints")
    paths["rank_mismatch"] = other
    (tmp / "typo.yaml").write_text("algoritm:\n  beta: 0.1\n")
    (tmp / "bad.yaml").write_text("train: {iterations: [1, 2\n")
    (tmp / "empty.txt").write_text("# only a comment\n\n")
    (tmp / "binary.txt").write_bytes(b"\xff\xfe\x00a red circle\n")
    (tmp / "odd.txt").write_text("a red circle\na purple elephant\n")
    (tmp / "empty-dir").mkdir()
    paths.update(typo_config=tmp / "typo.yaml", bad_yaml=tmp / "bad.yaml", empty_prompts=tmp / "empty.txt",
                 binary_prompts=tmp / "binary.txt", odd_prompts=tmp / "odd.txt")
    paths["other_arch"] = _tiny(tmp / "arch")
    cfg_file = paths["other_arch"] / "config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "num_layers": 3}))
    paths["corrupt_model"] = _tiny(tmp / "corrupt")
    weights = paths["corrupt_model"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    paths["wide_model"] = _tiny(tmp / "wide", head_dim=16)
    paths["nan_model"] = _edit_weights(_tiny(tmp / "nan"), lambda sd: {
        k: (torch.full_like(v, float("nan")) if k.startswith("transformer.proj_out") else v) for k, v in sd.items()})
    return paths


def snapshot(folder: Path) -> dict:
    """relative path -> SHA-256 of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def fill(argv: list[str], world: dict) -> list[str]:
    return [a.format(**world) for a in argv]


def nan_loss(monkeypatch) -> None:
    """Every policy loss becomes NaN (the model outputs stay finite); a reward that varies,
    so that every iteration has steps to take."""
    import tempflow.training.trainer as trainer_module

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "workers"))

    real = trainer_module.grpo_loss

    def loss(*args, **kwargs):
        value, stats = real(*args, **kwargs)
        return value * float("nan"), stats

    monkeypatch.setattr(trainer_module, "grpo_loss", loss)


def run_case(case: Case, world: dict, capsys, monkeypatch) -> tuple[int, str]:
    from tempflow.cli.main import main

    if case.patch:
        globals()[case.patch](monkeypatch)
    capsys.readouterr()
    code = main(fill(case.argv, world))
    return code, capsys.readouterr().err


# ---------------------------------------------------------------------------- tests

@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_clear_line(case, world, capsys, monkeypatch):
    fresh = world["fresh"]
    shutil.rmtree(fresh, ignore_errors=True)
    before = snapshot(world["run"]), snapshot(world["rank_mismatch"])
    code, err = run_case(case, world, capsys, monkeypatch)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"tempflow {case.argv[0]}: error: "), err
    assert case.expect.format(**world) in lines[0], lines[0]
    if os.environ.get("TEMPFLOW_ERRORS_TABLE"):
        with open(os.environ["TEMPFLOW_ERRORS_TABLE"], "a") as f:
            f.write(table_row(case, lines[0], world) + "\n")
    assert (snapshot(world["run"]), snapshot(world["rank_mismatch"])) == before  # existing runs untouched
    if case.fresh and not case.id.startswith("nan"):
        assert not fresh.exists()  # a failed start leaves no folder behind


def test_nan_loss_skips_steps_and_keeps_weights_finite(world, capsys, monkeypatch):
    """The skipped steps are logged, and the checkpoint the error names holds finite weights
    equal to the initial ones (no update was applied)."""
    from safetensors.torch import load_file

    shutil.rmtree(world["fresh"], ignore_errors=True)
    case = next(c for c in CASES if c.id == "nan-loss")
    code, err = run_case(case, world, capsys, monkeypatch)
    assert code == 2 and "checkpoint" in err and "iter_000001" in err, err
    records = [json.loads(l) for l in (world["fresh"] / "metrics.jsonl").read_text().splitlines()]
    mb = TrainConfig().train.minibatches  # every optimizer step of both iterations is skipped
    assert [r["train/skipped_steps"] for r in records] == [mb, mb]
    weights = load_file(str(world["fresh"] / "checkpoints" / "iter_000001" / "weights.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert all((v == 0).all() for k, v in weights.items() if "lora_B" in k)  # never stepped


def test_overwrite_replaces_only_run_files(world, capsys):
    from tempflow.cli.main import main

    run = world["tmp"] / "overwritten"
    shutil.copytree(world["run"], run)
    (run / "notes.txt").write_text("mine")
    code = main(fill(train(f"run.out={run}", "train.iterations=1"), world) + ["--overwrite"])
    assert code == 0, capsys.readouterr().err
    assert (run / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter_000001"]
    assert "overwrite: false" in (run / "config.yaml").read_text()


def test_resume_may_extend_a_finished_run(world, capsys):
    """The allowed change: more iterations. The finished 3-iteration run continues to 4."""
    from tempflow.cli.main import main

    run = world["tmp"] / "extended"
    shutil.copytree(world["run"], run)
    code = main(["train", "--resume", str(run), "--set", "train.iterations=4", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0, 1, 2, 3]
    assert "iterations: 4" in (run / "config.yaml").read_text()
    assert (run / "checkpoints" / "iter_000004").is_dir()


@pytest.mark.slow
@pytest.mark.parametrize("case_id", ["unknown-key", "model-arch"])
def test_real_process_prints_no_traceback(case_id, world):
    case = next(c for c in CASES if c.id == case_id)
    argv = fill(case.argv, world)
    if case.fresh:
        shutil.rmtree(world["fresh"], ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "tempflow", *argv], capture_output=True, text=True,
                         timeout=300, env=env)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr, res.stderr


def test_docs_table_lists_every_case():
    text = (ROOT / "docs" / "errors.md").read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in text]
    assert not missing, f"docs/errors.md lacks rows for {missing} (run python tests/test_bad_input.py)"


def table_row(case: Case, line: str, world: dict) -> str:
    """A docs/errors.md row: the case, the command and the error line, with the test's
    temporary paths written as their {placeholder} names."""
    for key in sorted(world, key=lambda k: -len(str(world[k]))):
        line = line.replace(str(world[key]), "{" + key + "}")
    message = line.split(": error: ", 1)[1].replace("|", "\\|")
    command = " ".join(["tempflow", *case.argv]).replace("|", "\\|")
    return f"| `{case.id}` | {case.what} | `{command}` | {message} |"


if __name__ == "__main__":  # print the rows of docs/errors.md
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "rows.md"
        code = subprocess.call([sys.executable, "-m", "pytest", __file__, "-q", "-k", "gives_one_clear_line",
                                "-p", "no:cacheprovider", "--basetemp", str(Path(d) / "t")],
                               env={**os.environ, "TEMPFLOW_ERRORS_TABLE": str(out)},
                               stdout=subprocess.DEVNULL)
        rows = out.read_text().splitlines()
        print("\n".join(sorted(rows, key=lambda r: [c.id for c in CASES].index(r.split("`")[1]))))
        sys.exit(code)
