"""The `tempflow` command line: outputs, and bad input giving a one-line error with exit code 2."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tempflow.cli.main import main
from tempflow.shapes import render_batch
from tempflow.utils.images import load_images, save_grid


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tempflow", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def assert_user_error(res, *words):
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, res.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_sample_then_verify_roundtrip(tmp_path, tiny_shapes_checkpoint):
    out = tmp_path / "grid.png"
    res = run_cli("sample", "--prompt", "two red circles", "--num", "3", "--steps", "2",
                  "--model", str(tiny_shapes_checkpoint), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert out.is_file() and out.with_suffix(".json").is_file()
    images, prompts = load_images(out)
    assert images.shape == (3, 3, 32, 32) and prompts == ["two red circles"] * 3
    res = run_cli("verify", str(out), "--json")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(l) for l in res.stdout.splitlines()]
    assert len(rows) == 4 and rows[-1]["summary"].startswith(("0/3", "1/3", "2/3", "3/3"))


def test_verify_rendered_grid_passes(tmp_path, capsys):
    prompts = ["a red circle", "three squares", "a circle left of a triangle", "two blue squares"]
    save_grid(render_batch(prompts, np.random.default_rng(0)), tmp_path / "g.png", prompts=prompts)
    assert main(["verify", str(tmp_path / "g.png")]) == 0
    out = capsys.readouterr().out
    assert "4/4 passed" in out
    # the same images against the wrong prompt fail
    assert main(["verify", str(tmp_path / "g.png"), "--prompt", "four triangles"]) == 0
    assert "0/4 passed" in capsys.readouterr().out


def test_grid_roundtrip_exact(tmp_path):
    imgs = render_batch(["a red circle"] * 5, np.random.default_rng(1))
    save_grid(imgs, tmp_path / "g.png", nrow=2, scale=3)
    back, _ = load_images(tmp_path / "g.png")
    assert (back == imgs).all()


def test_unknown_word_is_exit_2(tiny_shapes_checkpoint):
    res = run_cli("sample", "--prompt", "a hexagon", "--model", str(tiny_shapes_checkpoint))
    assert_user_error(res, "hexagon")


def test_missing_checkpoint_is_exit_2(tmp_path):
    res = run_cli("sample", "--prompt", "a circle", "--model", str(tmp_path / "nowhere"))
    assert_user_error(res, "nowhere")
    res = run_cli("eval", "--model", str(tmp_path / "nowhere"))
    assert_user_error(res, "nowhere")


@pytest.mark.parametrize("content", [None, b"", b"# only a comment\n\n", b"\xff\xfe\x00bad"])
def test_bad_prompt_file_is_exit_2(tmp_path, tiny_shapes_checkpoint, content):
    path = tmp_path / "prompts.txt"
    if content is not None:
        path.write_bytes(content)
    res = run_cli("sample", "--prompts", str(path), "--model", str(tiny_shapes_checkpoint))
    assert_user_error(res, "prompts.txt")


def test_verify_errors(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not a png")
    assert_user_error(run_cli("verify", str(tmp_path / "x.png"), "--prompt", "a circle"), "x.png")
    assert_user_error(run_cli("verify", str(tmp_path / "missing.png"), "--prompt", "a circle"),
                      "missing.png")
    save_grid(render_batch(["a circle"], np.random.default_rng(0)), tmp_path / "g.png")
    assert_user_error(run_cli("verify", str(tmp_path / "g.png"), "--prompt", "a blue hexagon"),
                      "hexagon")


def test_bad_number_is_exit_2(tiny_shapes_checkpoint):
    assert_user_error(run_cli("sample", "--prompt", "a circle", "--num", "0"), "--num")


def test_sample_shipped_base_model(tmp_path):
    """The shipped checkpoint loads and samples through the CLI."""
    out = tmp_path / "base.png"
    res = run_cli("sample", "--prompt", "two red circles", "--num", "4", "--out", str(out))
    assert res.returncode == 0, res.stderr
    images, _ = load_images(out)
    assert images.shape == (4, 3, 32, 32)
    assert images.std() > 0.05  # not a blank canvas


def test_sample_with_sde_noise(tmp_path, tiny_shapes_checkpoint):
    out = tmp_path / "sde.png"
    assert main(["sample", "--prompt", "a red circle", "--num", "2", "--steps", "3",
                 "--noise-level", "0.7", "--model", str(tiny_shapes_checkpoint), "--out", str(out)]) == 0
    images, _ = load_images(out)
    assert images.shape == (2, 3, 32, 32)


def test_every_option_of_every_command_has_help():
    """`--help` explains every option and positional argument of every command."""
    import argparse

    from tempflow.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {'/'.join(action.option_strings) or action.dest}"
               for name, p in sub.choices.items() for action in p._actions
               if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()]
    assert not missing, f"options without help text: {missing}"
    assert set(sub.choices) >= {"train", "sample", "verify", "eval", "report", "pretrain", "serve-reward"}
