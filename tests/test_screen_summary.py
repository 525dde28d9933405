"""benchmarks/screen_summary.py: a screened variant against a reference's runs, seed by seed."""

import json
import sys
from pathlib import Path

import pytest

from ranking_fakes import fake_eval

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import screen_summary as ss  # noqa: E402


def _write(folder, seed, ev):
    path = folder / f"seed{seed}" / "final-eval"
    path.mkdir(parents=True)
    rows = [{**r, "image": f"img{i}.png"} for i, r in enumerate(ev["images"])]  # a field the archive drops
    (path / "eval.json").write_text(json.dumps({**ev, "images": rows}))
    (path.parent / "config.yaml").write_text("train: {seed: %d}\n" % seed)
    (path.parent / "metrics.jsonl").write_text(json.dumps({"iteration": 0, "reward/mean": 0.5}) + "\n")


def test_a_constant_shift_is_measured_exactly_and_seeds_pair_by_number(tmp_path, capsys):
    ref, var = tmp_path / "paper", tmp_path / "cps"
    for s in (0, 1, 2):
        _write(ref, s, fake_eval((False, 0.5)))
    for s in (1, 2, 5):  # seed 5 has no partner and is left out
        _write(var, s, fake_eval((True, 0.6)))
    assert ss.main([str(ref), f"cps={var}", "--n-boot", "200"]) == 0
    out = capsys.readouterr().out
    # every image +1 in pass and +0.1 in score: a degenerate interval at exactly those values
    assert "| cps | 1, 2 | +1.000 [+1.000, +1.000] (p = 0.010) | +0.100 [+0.100, +0.100] (p = 0.010) |" in out
    # --archive keeps the runs (evaluations cut to the rows the statistics read) and reads them back
    assert ss.main([str(ref), f"cps={var}", "--n-boot", "200", "--archive", str(tmp_path / "kept")]) == 0
    assert capsys.readouterr().out == out
    kept = json.loads((tmp_path / "kept/cps/seed5/final-eval/eval.json").read_text())
    assert set(kept["images"][0]) == {"prompt", "category", "passed", "score"}
    row = ss.rows(ss.final_evals(ref), {"same": ss.final_evals(ref)}, n_boot=200)[0]
    assert row["score"]["estimate"] == 0 and row["score"]["p"] == 1.0 and row["seeds"] == [0, 1, 2]


def test_bad_input_names_the_folder_or_value(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="empty: no seed"):
        ss.final_evals(tmp_path / "empty")
    with pytest.raises(SystemExit) as e:
        ss.main([str(tmp_path), "no-equals-sign"])
    assert e.value.code == 2
    ref, var = tmp_path / "r", tmp_path / "v"
    _write(ref, 0, fake_eval((False, 0.5)))
    _write(var, 3, fake_eval((False, 0.5)))
    with pytest.raises(SystemExit, match="v: no seed in common"):
        ss.main([str(ref), f"v={var}"])
