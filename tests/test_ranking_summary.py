"""benchmarks/ranking_stats.py and ranking_summary.py: paired statistics, the time to the
reference's level, and the tables and plots --summarise-only writes (no training)."""

import json
import math

import pytest

from ranking_fakes import fake_eval, write_metrics

# ------------------------------------------------------------------ statistics

ALL_PASS, ALL_FAIL = fake_eval((True, 1.0)), fake_eval((False, 0.0))


def test_all_pass_against_all_fail_is_exactly_one_with_a_degenerate_interval(st):
    for m in ("pass_rate", "score"):
        d = st.paired_difference({0: ALL_PASS, 1: ALL_PASS}, {0: ALL_FAIL, 1: ALL_FAIL}, m, n_boot=500)
        assert (d["estimate"], d["lo"], d["hi"]) == (1.0, 1.0, 1.0) and d["common_seeds"] == [0, 1]
        assert st.verdict(d) == "yes"
        worse = st.paired_difference({0: ALL_FAIL}, {0: ALL_PASS}, m, n_boot=500)
        assert (worse["estimate"], worse["lo"], worse["hi"]) == (-1.0, -1.0, -1.0)
        assert st.verdict(worse) == "no (worse)"


def test_identical_evals_differ_by_zero_and_seeds_pair_by_number(st):
    mixed = fake_eval([(True, 1.0), (False, 0.5), (True, 0.75), (True, 1.0), (False, 0.0), (False, 0.25)])
    same = st.paired_difference({0: ALL_PASS, 1: mixed}, {0: ALL_PASS, 1: mixed, 2: ALL_FAIL}, "score", 500)
    assert (same["estimate"], same["lo"], same["hi"]) == (0.0, 0.0, 0.0) and same["common_seeds"] == [0, 1]
    assert st.verdict(same) == "no"
    # the same evals under swapped seed numbers are no longer a zero difference
    swapped = st.paired_difference({0: mixed, 1: ALL_PASS}, {0: ALL_PASS, 1: mixed}, "score", 500)
    assert swapped["estimate"] == pytest.approx(0.0) and swapped["lo"] < 0 < swapped["hi"]
    assert st.paired_difference({0: mixed}, {1: mixed}, "score") is None


def test_level_is_the_geneval_mean_with_an_interval_over_seeds_and_prompts(st):
    # colors: prompt 1 (1 + 0) / 2, prompt 2 (1 + 1) / 2 -> 0.75; counting: 0 -> overall 0.375
    mixed = fake_eval([(True, 1.0), (False, 0.5), (True, 0.75), (True, 1.0), (False, 0.0), (None, None)])
    lv = st.level([mixed], "pass_rate", n_boot=2000)
    assert lv["estimate"] == pytest.approx(0.375) == mixed["summary"]["eval/pass_rate"]
    assert lv["prompts"] == 3 and lv["seeds"] == 1
    assert lv["lo"] == pytest.approx(0.25) and lv["hi"] == pytest.approx(0.5)  # colors' prompt resample
    two = st.level([mixed, ALL_PASS], "pass_rate", n_boot=2000)
    assert two["estimate"] == pytest.approx((0.375 + 1.0) / 2) and two["lo"] < two["estimate"] < two["hi"]
    assert st.level([ALL_PASS, ALL_PASS], "score", 100) == {"estimate": 1.0, "lo": 1.0, "hi": 1.0, "seeds": 2,
                                                            "prompts": 3}


def test_bootstrap_p_value_of_a_paired_difference(st):
    n = 500
    for m in ("pass_rate", "score"):  # every resample above zero: the smallest p the bootstrap gives
        assert st.paired_difference({0: ALL_PASS}, {0: ALL_FAIL}, m, n)["p"] == pytest.approx(2 / (n + 1))
        assert st.paired_difference({0: ALL_FAIL}, {0: ALL_PASS}, m, n)["p"] == pytest.approx(2 / (n + 1))
        assert st.paired_difference({0: ALL_PASS}, {0: ALL_PASS}, m, n)["p"] == 1.0  # no difference at all
    mixed = fake_eval([(True, 1.0), (False, 0.5), (True, 0.75), (True, 1.0), (False, 0.0), (False, 0.25)])
    swapped = st.paired_difference({0: mixed, 1: ALL_PASS}, {0: ALL_PASS, 1: mixed}, "score", n)
    assert 0.2 < swapped["p"] <= 1.0  # a zero mean with spread: nowhere near significant
    assert "p" not in st.level([mixed], "score", 100)  # levels carry no test


def test_holm_adjusts_by_hand_computed_values(st):
    # sorted: d 0.005, a 0.01, c 0.03, b 0.04 -> 4 x 0.005, 3 x 0.01, 2 x 0.03, max(0.06, 1 x 0.04)
    adj = st.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005})
    assert adj == pytest.approx({"d": 0.02, "a": 0.03, "c": 0.06, "b": 0.06})
    assert st.holm({"x": 0.6, "y": 0.7}) == {"x": 1.0, "y": 1.0}  # capped at 1, never decreasing
    assert st.holm({"only": 0.03}) == {"only": 0.03} and st.holm({}) == {}
    d = {"estimate": 0.01}
    assert st.holm_verdict(d, 0.049) == "yes" and st.holm_verdict(d, 0.05) == "no"
    assert st.holm_verdict({"estimate": -0.01}, 0.001) == "no" and st.holm_verdict(None, 0.01) == "–"


def test_time_to_reference(st):
    assert st.first_reaching([(10.0, 0.5), (5.0, 0.7), (20.0, 0.8)], 0.7) == 5.0
    assert st.first_reaching([(1.0, 0.1)], 0.7) is None
    assert st.median_censored([0.5, None, 0.3]) == 0.5 and st.median_censored([0.2, 0.4]) == pytest.approx(0.3)
    assert st.median_censored([None, None, 0.2]) is None and st.median_censored([]) is None
    curve = lambda pts: [{"seconds": s, "score": v} for s, v in pts]  # noqa: E731
    ref = {k: {"seconds": 100.0, "final": ALL_FAIL, "curve": curve([(0, 0.5), (50, 0.55), (100, 0.6)])}
           for k in (0, 1)}
    runs = {0: {"seconds": 90.0, "final": ALL_PASS, "curve": curve([(0, 0.5), (30, 0.62), (90, 0.7)])},
            1: {"seconds": 90.0, "final": ALL_FAIL, "curve": curve([(0, 0.5), (30, 0.5), (90, 0.55)])}}
    t = st.time_to_reference(runs, ref)
    assert t["source"] == "in-run evaluations" and t["fractions"] == [0.3, None] and t["reached"] == 1
    assert t["median"] is None  # one seed of two never reached: the median did not
    runs[1]["curve"] = curve([(0, 0.5), (60, 0.6), (90, 0.7)])
    assert st.time_to_reference(runs, ref)["median"] == pytest.approx(0.45)
    for r in (*runs.values(), *ref.values()):
        r["curve"] = []  # final evaluations only: reached by the end or not
    t = st.time_to_reference(runs, ref)
    assert t["source"] == "final evaluation" and t["fractions"] == [0.9, 0.9] and t["median"] == 0.9
    for r in ref.values():
        r["final"] = fake_eval((False, 0.5))  # the target: dense score 0.5
    runs[1]["final"] = ALL_PASS
    runs[0]["half"] = {"seconds": 45.0, "eval": ALL_PASS}  # reached at the half-budget checkpoint
    runs[1]["half"] = {"seconds": 45.0, "eval": ALL_FAIL}  # not yet: at the end
    t = st.time_to_reference(runs, ref)
    assert t["source"] == "half and final evaluations" and t["fractions"] == [0.45, 0.9]
    assert t["median"] == pytest.approx(0.675)


# ------------------------------------------------------------------ summary

def fake_run(path, secs, final, evals=()):
    write_metrics(path, secs, evals=evals)
    (path / "final-eval").mkdir()
    (path / "final-eval" / "eval.json").write_text(json.dumps(final))


def test_summarise_only_writes_the_expected_numbers(rk, tmp_path):
    for k in (0, 1):
        fake_run(tmp_path / "flowgrpo" / f"seed{k}", [2.0, 2.0, 2.0], ALL_FAIL, evals=[(0, 0.5), (3, 0.6)])
        fake_run(tmp_path / "weighting-only" / f"seed{k}", [4.0, 4.0, 4.0], ALL_PASS,
                 evals=[(0, 0.5), (1, 0.55), (2, 0.65), (3, 0.7)])
        (tmp_path / "weighting-only" / f"seed{k}" / "half-eval").mkdir()  # its checkpoint after 1 iteration
        (tmp_path / "weighting-only" / f"seed{k}" / "half-eval" / "eval.json").write_text(
            json.dumps({**ALL_PASS, "checkpoint": 1}))
    (tmp_path / "final-eval").mkdir()
    (tmp_path / "final-eval" / "eval.json").write_text(json.dumps(ALL_FAIL))
    (tmp_path / "plan.json").write_text(json.dumps({"mode": "iterations", "iterations": {"flowgrpo": 3}}))
    assert rk.main(["--summarise-only", "--out", str(tmp_path), "--variants", "flowgrpo", "weighting-only",
                    "--bootstrap", "200"]) == 0
    text = (tmp_path / "results.md").read_text()
    assert "Equal iterations (`--iterations`), not equal wall-clock" in text
    assert "at 2 images per prompt, the same initial noise (`tempflow eval --num 2 --steps 10 --seed 0`)" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")][1:]
    # the half-budget table: weighting-only after 1 of 3 iterations (4 s) already beats flowgrpo's end
    assert ("| weighting-only | 2 | 1 | 0.1 | 1.000 [1.000, 1.000] | 1.000 [1.000, 1.000] | +1.000 [+1.000, +1.000] "
            "| +1.000 [+1.000, +1.000] | yes | 0.010 | yes |") in rows
    assert rows[0].startswith("| weighting-only |") and rows[1].startswith("| flowgrpo |")  # sorted by gain
    # weighting-only passes everything flowgrpo fails, on every seed: +1 exactly; it first scores
    # flowgrpo's last in-run score 0.6 after 2 iterations x 4 s = 8 s, 1.33 x flowgrpo's 3 x 2 s
    assert ("| weighting-only | `algorithm.scheme=flow_grpo` `algorithm.step_weight=tempflow` | 3 | 4.00 | 100 | "
            "0.2 | 1.000 [1.000, 1.000] | 1.000 [1.000, 1.000] | +1.000 [+1.000, +1.000] | +1.000 [+1.000, +1.000] | "
            "yes | 0.010 | 1.33 (2/2 seeds) |") == rows[0]
    assert "| flowgrpo |" in rows[1] and "| 0.000 [0.000, 0.000] | +0.000 [+0.000, +0.000] |" in rows[1]
    assert rows[1].endswith("| – | – | 1.00 (2/2 seeds) |")
    assert "Pairwise at the end" not in text  # one variant besides the reference: no pair
    assert "Base model: pass rate 0.000 [0.000, 0.000]" in text
    summary = json.loads((tmp_path / "summary.json").read_text())
    w = summary["variants"]["weighting-only"]
    assert w["vs_reference"]["score"]["estimate"] == 1.0
    assert w["time_to_reference"]["fractions"] == [pytest.approx(8 / 6)] * 2
    assert w["measured"]["seconds"] == 12.0 and w["iterations"] is None
    for x in ("iterations", "nfe", "wallclock"):
        assert (tmp_path / f"ranking_vs_{x}.png").stat().st_size > 0
    short = (tmp_path / "results-short.md").read_text().splitlines()  # the README's table
    assert short[2] == ("| weighting-only | 2 | 3 | 100 | 1.000 [1.000, 1.000] | 1.000 [1.000, 1.000] | "
                        "+1.000 [+1.000, +1.000] | +1.000 [+1.000, +1.000] | +1.000 [+1.000, +1.000] | "
                        "1.33 (2/2 seeds) |")
    assert short[3].startswith("| flowgrpo | 2 |") and short[3].endswith("| – | – | – | 1.00 (2/2 seeds) |")
    assert not math.isnan(summary["variants"]["flowgrpo"]["final"]["score"]["estimate"])
    assert w["time_to_reference"]["clock"] == "measured"  # no calibration: the runs' own time/iteration
    # with a calibration both clocks are iterations x calibrated s/it, whatever the load was:
    # 0.6 first reached after 2 iterations x 3 s, against flowgrpo's 3 iterations x 1 s
    cal = {v: {"s_per_iteration": s_it, "nfe_per_iteration": 100.0, "threads": 1}
           for v, s_it in (("flowgrpo", 1.0), ("weighting-only", 3.0))}
    (tmp_path / "calibration.json").write_text(json.dumps(cal))
    t = rk.summarise(tmp_path, ["flowgrpo", "weighting-only"], 200)["variants"]["weighting-only"]["time_to_reference"]
    assert t["clock"] == "calibrated" and t["fractions"] == [pytest.approx(2.0)] * 2


def test_summary_adjusts_for_several_variants_and_compares_them_pairwise(rk, tmp_path):
    mixed = fake_eval([(True, 1.0), (False, 0.5), (True, 0.75), (True, 1.0), (False, 0.0), (False, 0.25)])
    for k in (0, 1):
        fake_run(tmp_path / "flowgrpo" / f"seed{k}", [2.0, 2.0], ALL_FAIL)
        fake_run(tmp_path / "weighting-only" / f"seed{k}", [2.0, 2.0], ALL_PASS)
        fake_run(tmp_path / "tempflow" / f"seed{k}", [2.0, 2.0], mixed)
        for v, half in (("weighting-only", ALL_PASS), ("tempflow", ALL_FAIL)):
            (tmp_path / v / f"seed{k}" / "half-eval").mkdir()
            (tmp_path / v / f"seed{k}" / "half-eval" / "eval.json").write_text(json.dumps({**half, "checkpoint": 1}))
    n = 200
    s = rk.summarise(tmp_path, ["flowgrpo", "weighting-only", "tempflow"], n)
    w, t = s["variants"]["weighting-only"], s["variants"]["tempflow"]
    # the end family: weighting-only +1 exactly (p = 2 / (n + 1)), adjusted x 2 as the smaller
    assert w["vs_reference"]["score"]["p_holm"] == pytest.approx(2 * 2 / (n + 1))
    assert t["vs_reference"]["score"]["p_holm"] >= w["vs_reference"]["score"]["p_holm"]
    # the target: tempflow's half-budget checkpoint equals flowgrpo's end (p = 1), so it fails it
    # while weighting-only meets it; p = the larger of its two tests, adjusted x 2
    assert t["target"]["p"] == 1.0 and not t["target"]["met"] and not t["target"]["met_holm"]
    assert w["target"]["met"] and w["target"]["met_holm"] and w["target"]["family"] == 2
    assert w["target"]["p_holm"] == pytest.approx(2 * 2 / (n + 1))
    # one pair, the higher gain first: weighting-only (all pass) against tempflow (mixed)
    (q,) = s["pairwise"]
    assert (q["a"], q["b"]) == ("weighting-only", "tempflow") and q["score"]["estimate"] > 0
    assert q["score"]["p_holm"] == q["score"]["p"]  # a family of one
    assert q["score"]["seeds"] == 2
    # --pairs picks the comparisons (and so the Holm family): here the reverse of the default
    (r,) = rk.summarise(tmp_path, ["flowgrpo", "weighting-only", "tempflow"], n,
                        pairs=[("tempflow", "weighting-only")])["pairwise"]
    assert (r["a"], r["b"]) == ("tempflow", "weighting-only")
    assert r["score"]["estimate"] == pytest.approx(-q["score"]["estimate"])


@pytest.mark.parametrize("bad", ["tempflow", "tempflow:tempflow", "tempflow:nope"])
def test_pairs_must_name_two_different_variants(rk, tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as e:
        rk.main(["--summarise-only", "--out", str(tmp_path), "--pairs", bad])
    assert e.value.code == 2
    assert f"{bad!r}: expected VARIANT:VARIANT" in capsys.readouterr().err
