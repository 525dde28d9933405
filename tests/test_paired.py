"""Paired before/after comparison: exact means, interval coverage, pairing checks, the CLI."""

import json

import numpy as np
import pytest

from tempflow.cli.main import main
from tempflow.errors import UserError
from tempflow.paired import compare, format_comparison


def _rows(passed: dict[str, list[list[int]]]) -> list[dict]:
    """eval.json image rows from {category: [[pass of each image] per prompt]}."""
    rows = []
    for cat, prompts in passed.items():
        for k, images in enumerate(prompts):
            rows += [{"prompt": f"{cat} {k}", "category": cat, "passed": bool(v),
                      "score": 0.5 + 0.5 * v} for v in images]
    return rows


def _eval(passed, **meta) -> dict:
    return {"prompts": "shapes:heldout", "images_per_prompt": 2, "steps": 20, "shift": 3.0,
            "guidance_scale": 3.0, "seed": 0, "table": {}, "images": _rows(passed), **meta}


def test_means_and_overall_are_geneval_style():
    before = _eval({"a": [[0, 0], [0, 1]], "b": [[1, 1]]})
    after = _eval({"a": [[1, 1], [1, 1]], "b": [[0, 1]]})
    res = compare(before, after)
    assert res["a"].before == 0.25 and res["a"].after == 1.0 and res["a"].delta == 0.75
    assert res["b"].delta == -0.5
    # overall: mean over categories of the category rates, not over images
    assert res["overall"].before == pytest.approx((0.25 + 1.0) / 2)
    assert res["overall"].delta == pytest.approx((0.75 - 0.5) / 2)
    assert res["overall"].n_prompts == 3
    assert res["b"].lo == res["b"].hi == -0.5  # one prompt: nothing to resample
    s = compare(before, after, "score")
    assert s["a"].delta == pytest.approx(0.375)


def test_interval_covers_a_known_effect_and_zero_when_there_is_none():
    rng = np.random.default_rng(0)
    p_before = rng.uniform(0.2, 0.6, size=(2, 40))  # per-prompt pass probabilities
    cover, null_cover = 0, 0
    for trial in range(20):
        r = np.random.default_rng(trial)
        data = {}
        for name, shift in (("before", 0.0), ("after", 0.15), ("same", 0.0)):
            data[name] = {f"c{c}": [list((r.random(16) < p_before[c, k] + shift).astype(int))
                                    for k in range(40)] for c in range(2)}
        d = compare(_eval(data["before"]), _eval(data["after"]))["overall"]
        cover += d.lo <= 0.15 <= d.hi
        n = compare(_eval(data["before"]), _eval(data["same"]))["overall"]
        null_cover += n.lo <= 0.0 <= n.hi
        assert d.lo > 0  # a 0.15 effect on 80 prompts x 16 images is always detected
    assert cover >= 17 and null_cover >= 17  # about 95% coverage


def test_unpaired_inputs_are_refused():
    a = _eval({"a": [[0, 1]]})
    with pytest.raises(UserError, match="same prompt"):
        compare(a, {"images": [dict(r, prompt="other") for r in a["images"]]})
    with pytest.raises(UserError, match="2 and 1 images"):
        compare(a, {"images": a["images"][:1]})
    with pytest.raises(UserError, match="unknown metric"):
        compare(a, a, "reward")
    nan = {"images": [dict(r, score=None) for r in a["images"]]}
    with pytest.raises(UserError, match="no image scored"):
        compare(nan, nan, "score")


def test_compare_command(tmp_path, capsys):
    before = _eval({"a": [[0, 0]] * 5, "b": [[0, 1]] * 5})
    after = _eval({"a": [[1, 1]] * 5, "b": [[1, 1]] * 5})
    for name, data in (("base", before), ("trained", after)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(json.dumps(data))
    out = tmp_path / "cmp.json"
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "trained"),
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "GenEval overall: 0.250 -> 1.000 (+0.750" in text and "95% CI" in text
    assert json.loads(out.read_text())["pass_rate"]["overall"]["delta"] == 0.75
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "eval.json").write_text(json.dumps(dict(after, seed=1)))
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "other")]) == 2
    assert "differ in seed" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{")
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "bad.json")]) == 2
    assert "not an eval.json" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "missing")]) == 2


def test_format_comparison_lists_every_category():
    res = {m: compare(_eval({"a": [[0, 1]], "b": [[1, 1]]}), _eval({"a": [[1, 1]], "b": [[1, 1]]}), m)
           for m in ("pass_rate", "score")}
    text = format_comparison(res)
    assert [line.split()[0] for line in text.splitlines()[1:]] == ["a", "b", "overall"]
