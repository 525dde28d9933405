"""The Python API (docs/api.md): the documented examples run as written and print no warning,
and `import tempflow` stays light and quiet."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TEMPFLOW_", "TRANSFORMERS_VERBOSITY"))}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}


def doc_examples() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs/api.md").read_text(), re.S)
    assert len(blocks) >= 4
    return "\n".join(blocks)


def test_import_is_light_and_quiet():
    code = ("import sys, tempflow\n"
            "heavy = [m for m in ('torch', 'transformers', 'diffusers', 'numpy') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "assert callable(tempflow.train) and callable(tempflow.evaluate) and callable(tempflow.sample)\n")
    p = subprocess.run([sys.executable, "-c", "import tempflow"], capture_output=True, text=True,
                       env=_env(), timeout=120)
    assert p.returncode == 0 and p.stdout == "" and p.stderr == ""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(),
                       timeout=300)
    assert p.returncode == 0, p.stderr


@pytest.mark.slow
def test_documented_examples_run_quietly(tmp_path):
    """Every ```python block of docs/api.md, in order, in a fresh folder: exit 0 and nothing
    on stderr (no warnings, with Python's warnings shown)."""
    script = tmp_path / "examples.py"
    script.write_text(doc_examples())
    p = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                       text=True, env=_env(), timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stderr == "", p.stderr[-3000:]
    out = p.stdout.splitlines()
    assert out[0] == "torch.Size([2, 3, 32, 32])"
    assert any(line.startswith("overall") for line in out)  # format_table
    assert "unknown config key 'algorithm.num_branchs'" in p.stdout
    for f in ("grid.png", "grid.json", "trained.png", "eval-base/eval.json",
              "runs/api-demo/model/model.safetensors"):
        assert (tmp_path / f).is_file(), f
    metrics = (tmp_path / "runs/api-demo/metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 4  # 2 iterations, then 2 more after the resume


def test_user_setting_of_transformers_verbosity_wins():
    code = ("import os, tempflow; tempflow.sample\n"
            "print(os.environ['TRANSFORMERS_VERBOSITY'])")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**_env(), "TRANSFORMERS_VERBOSITY": "info"}, timeout=300)
    assert p.stdout.strip() == "info", p.stderr
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(),
                       timeout=300)
    assert p.stdout.strip() == "error", p.stderr


def test_api_errors_are_user_errors(tmp_path):
    import tempflow
    from tempflow.errors import UserError

    with pytest.raises(UserError, match="num must be a positive integer"):
        tempflow.sample("a red circle", num=0)
    with pytest.raises(UserError, match="must end in .png"):
        tempflow.sample("a red circle", num=1, out=tmp_path / "grid.jpg")
    with pytest.raises(UserError, match="not a folder"):
        tempflow.evaluate(tmp_path / "missing")
    with pytest.raises(UserError, match="only a reward can score them"):
        (tmp_path / "p.txt").write_text("a photo of a cat\n")
        tempflow.evaluate(prompts=str(tmp_path / "p.txt"))
    with pytest.raises(UserError, match="resume=True"):
        tempflow.train(tmp_path)
    with pytest.raises(UserError, match="unknown config key"):
        tempflow.train(None, ["train.iterationz=2"])
