"""The per-iteration prompt draw: a function of (seed, iteration), uniform or category-balanced."""

from collections import Counter

import pytest

from tempflow.training.prompts import PromptSet


def test_draw_is_a_function_of_seed_and_iteration():
    ps = PromptSet.load("shapes:train")
    for balance in ("uniform", "category"):
        assert ps.draw(4, 0, 3, balance) == ps.draw(4, 0, 3, balance)
        assert ps.draw(4, 0, 3, balance) != ps.draw(4, 0, 4, balance)


def test_category_draw_takes_distinct_categories_and_balances_them():
    ps = PromptSet.load("shapes:train")
    cats = sorted(set(ps.categories))
    counts = Counter()
    for it in range(600):
        ids = ps.draw(4, 0, it, "category")
        got = [ps.categories[i] for i in ids]
        assert len(set(got)) == 4  # 4 of the train list's categories, never one twice
        counts.update(got)
    # each category is drawn in 4/C of iterations, whatever its number of prompts
    assert set(counts) == set(cats) and len(cats) >= 5
    expected = 600 * 4 / len(cats)
    assert all(abs(counts[c] - expected) < 60 for c in cats), counts
    # the uniform draw follows the list's composition instead: position dominates
    uni = Counter(ps.categories[i] for it in range(600) for i in ps.draw(4, 0, it, "uniform"))
    share = sum(k == "position" for k in ps.categories) / len(ps.categories)
    assert share > 0.5
    assert uni["position"] / 2400 == pytest.approx(share, abs=0.04)
    assert min(uni[c] for c in cats if c != "position") < 0.2 * 2400


def test_category_draw_with_more_prompts_than_categories_and_files():
    ps = PromptSet(["a", "b", "c"], ["x", "x", "y"])
    ids = ps.draw(5, 1, 0, "category")
    assert len(ids) == 5 and all(0 <= i < 3 for i in ids)
    single = PromptSet(["p", "q", "r"], ["all"] * 3)  # a prompt file: one category
    assert sorted(single.draw(3, 0, 0, "category")) == [0, 1, 2]
    with pytest.raises(ValueError, match="balance"):
        ps.draw(2, 0, 0, "bogus")
