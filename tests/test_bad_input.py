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
    Case("config-import", "config file naming a reward factory path (code) on its own",
         ["train", "--config", "{evil_config}"], "pass --allow-import os"),
    Case("run-import", "downloaded run whose config.yaml names a reward factory path",
         ["eval", "{evil_run}"], "pass --allow-import os"),
    Case("reward-not-factory", "reward path to something that is not a function", train("reward.name=math:pi"),
         "is a float, not a factory function", fresh=True),
    Case("reward-not-reward", "reward factory returning something that is not a reward",
         train("reward.name=builtins:dict"), "returned a dict, not a reward", fresh=True),
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
         ["train", "--resume", "{rank_mismatch}", "--no-progress"], "cannot change model.lora.rank (2 -> 4)"),
    Case("resume-rank-legacy", "the same, with checkpoints that record no config (older tempflow)",
         ["train", "--resume", "{rank_legacy}", "--no-progress", "--set", "train.iterations=3"],
         "does not fit this model"),
    Case("lora-arch", "LoRA of another architecture (sample --lora)",
         ["sample", "--model", "{wide_model}", "--lora", "{run}/lora", "--prompt", "a red circle",
          "--out", "{tmp}/x.png"], "was trained on base model"),
    Case("model-class", "a diffusers folder of an unsupported pipeline class",
         ["sample", "--model", "{sdxl_folder}", "--prompt", "a red circle", "--out", "{tmp}/x.png"],
         "pipeline class 'StableDiffusionXLPipeline' is not supported"),
    Case("lora-other-base", "LoRA loaded onto another base of the same architecture",
         ["sample", "--model", "{other_base}", "--lora", "{run}/lora", "--prompt", "a red circle",
          "--out", "{tmp}/x.png"], "was trained on base model"),
    # ---- other commands' arguments
    Case("eval-shift", "eval with a time shift <= 0", ["eval", "--shift", "0"], "--shift: must be > 0"),
    Case("eval-device", "eval on a CUDA device this machine lacks", ["eval", "--device", "cuda:99"], "cuda:99"),
    Case("eval-out-file", "eval --out at an existing file", ["eval", "--num", "1", "--out", "{config}"],
         "is a file, not a folder"),
    Case("eval-out-under-file", "eval --out below a file", ["eval", "--num", "1", "--out", "{config}/eval"],
         "cannot be created"),
    Case("sample-out-ext", "sample --out without .png", ["sample", "--prompt", "a red circle", "--out", "{tmp}/grid"],
         "must end in .png"),
    Case("sample-sidecar", "sample --out next to a .json tempflow did not write",
         ["sample", "--prompt", "a red circle", "--out", "{tmp}/mine.png"], "not a grid layout tempflow wrote"),
    Case("sample-nan", "sample with a non-finite CFG scale", ["sample", "--prompt", "a red circle", "--cfg", "nan"],
         "--cfg: must be a finite number"),
    Case("pretrain-layers", "pretrain with 0 layers", ["pretrain", "--layers", "0", "--out", "{tmp}/pre"],
         "--layers: must be in 1..64"),
    Case("pretrain-out", "pretrain into a folder of other files", ["pretrain", "--out", "{tmp}"], "is not empty"),
    Case("pretrain-pickle", "pretrain --resume of a state file that is a crafted pickle",
         ["pretrain", "--resume", "--out", "{evil_pretrain}"], "cannot be read as a pretraining state"),
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
         "cannot change algorithm.beta (0.01 -> 0.1) when resuming"),
    Case("resume-edited", "--resume after config.yaml was edited by hand", ["train", "--resume", "{edited_run}"],
         "cannot change algorithm.beta (0.01 -> 0.2) when resuming"),
    Case("resume-shorter", "--resume with fewer iterations than were done",
         ["train", "--resume", "{run}", "--set", "train.iterations=1"], "below the 3 iterations already done"),
    Case("resume-no-checkpoint", "--resume of a run whose checkpoints are all damaged",
         ["train", "--resume", "{damaged_run}"], "no valid checkpoint"),
    Case("resume-metrics", "--resume with a garbled line in metrics.jsonl", ["train", "--resume", "{garbled_run}"],
         "line 2 is not a metrics record"),
    Case("resume-not-run", "--resume of a folder that another tool wrote", ["train", "--resume", "{foreign}"],
         "no run there"),
    Case("out-foreign", "run.out at a folder another tool wrote (lora/, metrics.jsonl)",
         train("run.out={foreign}"), "is not a tempflow run"),
    Case("overwrite-foreign", "--overwrite of a folder another tool wrote",
         train("run.out={foreign}") + ["--overwrite"], "is not a tempflow run"),
    Case("out-file", "run.out at a file", train("run.out={config}"), "is a file, not a folder"),
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
    legacy = tmp / "rank4-legacy"
    shutil.copytree(other, legacy)
    for meta in legacy.glob("checkpoints/*/meta.json"):
        meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items()
                                    if not k.startswith("config")}))
    paths["rank_legacy"] = legacy
    _hostile_world(tmp, paths)
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
    (tmp / "sdxl").mkdir()
    (tmp / "sdxl" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    paths["sdxl_folder"] = tmp / "sdxl"
    paths["wide_model"] = _tiny(tmp / "wide", head_dim=16)
    paths["other_base"] = _edit_weights(_tiny(tmp / "other-base"), lambda sd: {k: v * 1.5 for k, v in sd.items()})
    paths["nan_model"] = _edit_weights(_tiny(tmp / "nan"), lambda sd: {
        k: (torch.full_like(v, float("nan")) if k.startswith("transformer.proj_out") else v) for k, v in sd.items()})
    return paths


#: folders no bad input may change
PROTECTED = ("run", "rank_mismatch", "rank_legacy", "edited_run", "damaged_run", "garbled_run", "foreign",
             "evil_run", "evil_pretrain")


def _hostile_world(tmp: Path, paths: dict) -> None:
    """Copies of the finished run, damaged or edited, and files crafted to run code."""
    from test_security import evil_pickle  # a pickle that would create {tmp}/pwned

    run = paths["run"]
    for name in ("edited_run", "damaged_run", "garbled_run", "evil_run"):
        paths[name] = tmp / name
        shutil.copytree(run, paths[name])
    cfg_file = paths["edited_run"] / "config.yaml"
    cfg_file.write_text(cfg_file.read_text().replace("beta: 0.01", "beta: 0.2"))
    for state in paths["damaged_run"].glob("checkpoints/*/state.pt"):
        state.write_bytes(state.read_bytes()[:100])
    metrics = paths["garbled_run"] / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "{" + "#" * (len(lines[1]) - 1), *lines[2:]]) + "\n")  # same length
    evil = {"reward": {"name": "os:system", "kwargs": {"command": f"touch {tmp / 'pwned'}"}}}
    cfg_file = paths["evil_run"] / "config.yaml"
    cfg_file.write_text(cfg_file.read_text().replace("reward:\n  name: shapes", "reward:\n  name: os:system"))
    assert "os:system" in cfg_file.read_text()
    paths["evil_config"] = tmp / "evil.yaml"
    paths["evil_config"].write_text(yaml.safe_dump(evil))
    paths["foreign"] = tmp / "foreign"
    (paths["foreign"] / "lora").mkdir(parents=True)
    (paths["foreign"] / "lora" / "pytorch_lora_weights.safetensors").write_bytes(b"not ours")
    (paths["foreign"] / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    paths["evil_pretrain"] = tmp / "evil-pretrain"
    paths["evil_pretrain"].mkdir()
    evil_pickle(paths["evil_pretrain"] / "pretrain_state.pt", tmp / "pwned")
    (tmp / "mine.json").write_text('{"my": "notes"}\n')


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
    before = [snapshot(world[k]) for k in PROTECTED]
    code, err = run_case(case, world, capsys, monkeypatch)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"tempflow {case.argv[0]}: error: "), err
    assert case.expect.format(**world) in lines[0], lines[0]
    if os.environ.get("TEMPFLOW_ERRORS_TABLE"):
        with open(os.environ["TEMPFLOW_ERRORS_TABLE"], "a") as f:
            f.write(table_row(case, lines[0], world) + "\n")
    assert [snapshot(world[k]) for k in PROTECTED] == before  # existing folders untouched
    assert not (world["tmp"] / "pwned").exists()  # no code ran from a file
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
    mine = ["notes.txt", "checkpoints/README.md", "checkpoints/iter_000003/notes.txt", "grids/eval_best.png",
            "tb/my-plot.png", "lora/README.md", "model/notes.txt"]
    (run / "model").mkdir()
    (run / "model" / "model.safetensors").write_bytes(b"a full fine-tune's export")  # a run's own file
    for name in mine:
        (run / name).write_text(f"mine: {name}")
    code = main(fill(train(f"run.out={run}", "train.iterations=1"), world) + ["--overwrite"])
    assert code == 0, capsys.readouterr().err
    assert all((run / name).read_text() == f"mine: {name}" for name in mine)
    # the old run's own files are gone: only the new checkpoint, and the user's folder
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["README.md", "iter_000001", "iter_000003"]
    assert sorted(p.name for p in (run / "checkpoints" / "iter_000003").iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in (run / "grids").iterdir()) == ["eval_best.png"]
    assert sorted(p.name for p in (run / "model").iterdir()) == ["notes.txt"]
    assert "overwrite: false" in (run / "config.yaml").read_text()
    assert json.loads((run / "tempflow-run.json").read_text())["tempflow"] == "run"
    # a run started with --overwrite resumes like any other
    code = main(["train", "--resume", str(run), "--set", "train.iterations=2", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert (run / "checkpoints" / "iter_000002").is_dir()


def test_a_run_from_before_the_marker_file_is_still_a_run(world, capsys):
    """Runs written before tempflow-run.json are recognised by their config.yaml's header, so
    they can be resumed and overwritten."""
    from tempflow.cli.main import main

    run = world["tmp"] / "legacy-run"
    shutil.copytree(world["run"], run)
    (run / "tempflow-run.json").unlink()
    code = main(["train", "--resume", str(run), "--set", "train.iterations=4", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert (run / "checkpoints" / "iter_000004").is_dir()


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
