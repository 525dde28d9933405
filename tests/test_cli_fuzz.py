"""Property: no input makes the CLI print a traceback.

Hypothesis drives every sub-command with generated argument values (numbers at and past their
limits, non-finite numbers, text, paths to missing, empty, garbage, huge and foreign files and
folders) and drives the config loader with generated YAML and bytes. The work each command
does after its checks (building the trainer, loading a model, pretraining) is replaced by a
stub that raises :class:`Accepted`, so an example either is accepted by every check, or is
rejected with exit code 2 and exactly one line on stderr. Anything else (another exit code,
an 'internal error', a traceback, a second line) fails the test.
"""

import contextlib
import io
import itertools
import json
import struct
import zlib

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


class Accepted(BaseException):
    """Raised by the stubbed work: every check before it passed."""


def _refuse(*args, **kwargs):
    raise Accepted


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a few hundred bytes: a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = zlib.compress(b"\x00" * 1024)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Files and folders the generated arguments point at."""
    from PIL import Image

    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "dir").mkdir()
    (tmp / "dir" / "notes.txt").write_text("mine")
    (tmp / "empty").mkdir()
    (tmp / "garbage").write_bytes(bytes(range(256)) * 4)
    (tmp / "text.txt").write_text("a red circle\nsomething else\n")
    (tmp / "bomb.png").write_bytes(_png_header(60000, 60000))
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp / "red.png")
    (tmp / "red.json").write_text(json.dumps({"num": 4, "nrow": 0, "pad": -1, "scale": 0, "height": 1,
                                              "width": 1, "prompts": None}))
    run = tmp / "run"  # a folder that looks like a run, with damaged files
    (run / "checkpoints" / "iter_000002").mkdir(parents=True)
    (run / "config.yaml").write_text("# tempflow training config\nreward: [1, 2\n")
    (run / "metrics.jsonl").write_text('{"iteration": 0, "reward/mean": "x"}\n[1, 2]\n{"iteration": "a"}\n')
    (run / "lora").mkdir()
    (run / "lora" / "pytorch_lora_weights.safetensors").write_bytes(b"\x00" * 20)
    (run / "eval.json").write_text('{"table": 5, "images": "no"}')
    (run / "checkpoints" / "iter_000002" / "meta.json").write_text('{"format": 1, "iteration": "x", "sha256": []}')
    return {"tmp": tmp, "names": {
        "{dir}": tmp / "dir", "{empty}": tmp / "empty", "{garbage}": tmp / "garbage",
        "{text}": tmp / "text.txt", "{bomb}": tmp / "bomb.png", "{red}": tmp / "red.png",
        "{run}": run, "{missing}": tmp / "missing" / "x", "{under_file}": tmp / "garbage" / "x.png",
        "{json}": tmp / "red.json"}}


PATHS = ["{dir}", "{empty}", "{garbage}", "{text}", "{bomb}", "{red}", "{run}", "{missing}", "{under_file}",
         "{json}"]
NUMBERS = ["0", "-1", "1", "2", "65536", "nan", "inf", "-inf", "1e309", "-0.0", "1.5", "9" * 25, "0x10", "1_0"]
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00:"), max_size=12)
value = st.one_of(st.sampled_from(PATHS), st.sampled_from(NUMBERS), text,
                  st.integers(-2**70, 2**70).map(str), st.floats().map(repr))


def _fill(argv: list[str], world: dict) -> list[str]:
    out = []
    for a in argv:
        for key, path in world["names"].items():
            a = a.replace(key, str(path))
        out.append(a)
    return out


OPTIONS = {
    "sample": ["--num", "--out", "--model", "--lora", "--steps", "--shift", "--cfg", "--noise-level", "--seed",
               "--scale"],
    "eval": ["--model", "--lora", "--prompts", "--split", "--num", "--steps", "--shift", "--cfg", "--seed",
             "--device", "--out"],
    "pretrain": ["--out", "--steps", "--batch-size", "--lr", "--seed", "--save-every", "--sigma-sampling",
                 "--layers"],
    "report": ["--out", "--title"],
    "verify": ["--prompt", "--prompts"],
}
SET_KEYS = ["model.name", "model.resolution", "model.dtype", "model.lora", "model.lora.rank", "sampling.steps",
            "sampling.shift", "sampling.guidance_scale", "algorithm.branch_points", "algorithm.group_size",
            "train.iterations", "train.lr", "reward.name", "reward.kwargs", "reward.components", "prompts.train",
            "prompts.eval", "run.out", "run.keep_checkpoints", "train", "nosuch.key", "algorithm"]


@st.composite
def command_lines(draw):
    command = draw(st.sampled_from(sorted(OPTIONS) + ["train"]))
    argv = [command]
    if command == "train":
        for key in draw(st.lists(st.sampled_from(SET_KEYS), max_size=4)):
            argv += ["--set", f"{key}={draw(value)}"]
        argv += draw(st.sampled_from([[], ["--resume", draw(st.sampled_from(PATHS))], ["--overwrite"],
                                      ["--config", draw(st.sampled_from(PATHS))]]))
        argv += ["--set", "run.out={missing}", "--no-progress"] if "--resume" not in argv else []
        return argv
    if command == "sample":
        argv += draw(st.sampled_from([["--prompt", "a red circle"], ["--prompts", draw(st.sampled_from(PATHS))],
                                      ["--prompt", draw(text)]]))
    if command in ("verify", "report"):
        argv += draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=2))
    if command == "eval" and draw(st.booleans()):
        argv.append(draw(st.sampled_from(PATHS)))
    for option in draw(st.lists(st.sampled_from(OPTIONS[command]), max_size=4, unique=True)):
        argv += [option, draw(value)]
    if command == "pretrain" and draw(st.booleans()):
        argv.append("--resume")
    return argv


@pytest.fixture(scope="module")
def stubs():
    """The work after the checks raises Accepted."""
    import tempflow.models
    import tempflow.pretrain.shapes
    import tempflow.training.loop

    mp = pytest.MonkeyPatch()
    mp.setattr(tempflow.training.loop, "Trainer", _refuse)
    mp.setattr(tempflow.models, "load_model", _refuse)
    mp.setattr(tempflow.pretrain.shapes, "ShapesModel", _refuse)
    mp.setenv("OMP_NUM_THREADS", "1")
    yield
    mp.undo()


def run_cli(argv: list[str]) -> tuple[str, int | None, str]:
    """('accepted' | 'exit', exit code, stderr) of `tempflow argv`."""
    from tempflow.cli.main import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return "exit", main(argv), err.getvalue()
        except Accepted:
            return "accepted", None, err.getvalue()


def assert_clean(argv: list[str], outcome: tuple[str, int | None, str]) -> None:
    kind, code, err = outcome
    assert "Traceback" not in err and "internal error" not in err, (argv, err)
    if kind == "exit" and code != 0:
        lines = [line for line in err.splitlines() if not line.startswith("tempflow: warning:")]
        assert code == 2, (argv, code, err)
        assert len(lines) == 1 and lines[0].startswith("tempflow"), (argv, err)


@SETTINGS
@given(argv=command_lines())
def test_cli_arguments_never_give_a_traceback(world, stubs, argv):
    argv = _fill(argv, world)
    assert_clean(argv, run_cli(argv))


# ---------------------------------------------------------------------------- config files

SECTIONS = {"model": ["name", "resolution", "dtype", "lora", "gradient_checkpointing"],
            "sampling": ["steps", "shift", "guidance_scale", "noise_level", "train_fraction", "eval_steps"],
            "algorithm": ["scheme", "branching", "weighting", "step_weight", "group_size", "num_branches", "branch_points",
                          "continuation_steps", "std", "beta"],
            "train": ["iterations", "lr", "ema_decay", "seed", "minibatches"],
            "reward": ["name", "kwargs", "components", "combine", "score_chunks"],
            "prompts": ["train", "eval", "balance"], "run": ["eval_every", "keep_checkpoints", "kl_stop"]}
scalar = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(), text,
                   st.sampled_from(["all", "shapes", "seed", "group", "float32", "shapes:train", "weighted"]))
leaf = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                    st.dictionaries(text, inner, max_size=2)), max_leaves=6)
section = st.sampled_from(sorted(SECTIONS)).flatmap(
    lambda s: st.tuples(st.just(s), st.dictionaries(st.sampled_from(SECTIONS[s] + ["typo"]), leaf, max_size=3)))
documents = st.one_of(st.lists(section, max_size=4).map(dict), leaf)
_count = itertools.count()


@SETTINGS
@given(doc=documents, raw=st.one_of(st.none(), st.binary(max_size=64)))
def test_config_files_never_give_a_traceback(world, stubs, doc, raw):
    path = world["tmp"] / f"cfg-{next(_count)}.yaml"
    if raw is None:
        try:
            path.write_text(yaml.safe_dump(doc, allow_unicode=True))
        except yaml.YAMLError:
            return
    else:
        path.write_bytes(raw)
    argv = ["train", "--config", str(path), "--no-progress", "--set", f"run.out={world['tmp']}/out-{path.stem}"]
    assert_clean(argv, run_cli(argv))
