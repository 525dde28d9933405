"""Memory helpers: RSS figures and the figure-cycle freeing that keeps long runs' memory flat."""

import gc
import weakref

import pytest

from tempflow.utils.memory import frees_cycles, peak_rss_mb, rss_mb


class Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the cycle collector frees it


def live_figures() -> int:
    from matplotlib.figure import Figure

    return sum(issubclass(type(o), Figure) for o in gc.get_objects())


@pytest.fixture
def collector_on():
    """The collector enabled, with its thresholds, as in a normal process."""
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_rss_figures_are_positive_and_peak_is_at_least_current():
    now, peak = rss_mb(), peak_rss_mb()
    assert 0 < now <= peak + 1  # VmHWM is sampled by the kernel; allow rounding


def test_frees_cycles_frees_the_cycles_a_function_leaves(collector_on):
    refs = []

    @frees_cycles
    def make(n):
        nodes = [Node() for _ in range(n)]
        refs.extend(weakref.ref(x) for x in nodes)
        return n

    assert make(5000) == 5000  # more than gen-0's threshold: nothing promoted while paused
    assert all(r() is None for r in refs)
    assert gc.isenabled()


def test_frees_cycles_keeps_what_the_function_returns_and_restores_the_collector(collector_on):
    @frees_cycles
    def make():
        return Node()

    kept = make()
    assert kept.me is kept
    gc.disable()
    make()
    assert not gc.isenabled()  # a disabled collector stays disabled
    gc.enable()

    @frees_cycles
    def fail():
        raise ValueError("boom")

    with pytest.raises(ValueError):
        fail()
    assert gc.isenabled()


def test_report_plots_leave_no_figure_behind(collector_on):
    from tempflow.report.plots import eval_curves, reward_curves
    from tempflow.report.runs import RunData

    gc.collect()
    before = live_figures()
    train = [{"iteration": i, "reward/mean": 0.5, "count/nfe": 10, "time/iteration": 1.0} for i in range(20)]
    evals = [{"iteration": i, "eval/pass_rate": 0.4} for i in (0, 10, 20)]
    run = RunData(name="r", path=None, config={"algorithm": {"branching": True}}, train=train, evals=evals)
    for _ in range(3):
        assert reward_curves([run]).startswith(b"\x89PNG")
        assert eval_curves([run], x="nfe").startswith(b"\x89PNG")
    assert live_figures() == before


def test_reward_curve_leaves_no_figure_behind(tmp_path, collector_on):
    from tempflow.training.run_dir import RunDir

    gc.collect()
    before = live_figures()
    run = RunDir(tmp_path)
    run.history = [{"iteration": i, "reward/mean": 0.5, "train/kl": 1e-4} for i in range(20)]
    run.history += [{"iteration": i, "eval/pass_rate": 0.4} for i in (0, 10, 20)]
    for _ in range(3):
        run.plot_rewards()
    assert (tmp_path / "reward_curve.png").is_file()
    assert live_figures() == before
