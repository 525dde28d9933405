import os

import pytest
import torch

# Two cores: keep each test process to its own share; tests build tiny models. Under
# `pytest -n N` (what `make test` runs) every worker gets one thread, and so do the processes
# it starts, so N workers do not oversubscribe the cores.
if "OMP_NUM_THREADS" not in os.environ:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", max(1, min(2, os.cpu_count() or 1)))))


@pytest.fixture
def tiny_shapes_checkpoint(tmp_path):
    """A randomly initialised shapes model over the full shapes vocabulary, saved to a folder."""
    from tempflow.models.shapes_model import ShapesModel, ShapesModelConfig
    from tempflow.shapes import vocabulary

    torch.manual_seed(0)
    cfg = ShapesModelConfig(vocab=vocabulary(), num_layers=2, num_heads=2, head_dim=8,
                            text_dim=16, text_layers=1)
    path = tmp_path / "tiny-shapes"
    ShapesModel(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def rk():
    """benchmarks/ranking.py, loaded as a module (the ranking tests)."""
    from benchmark_modules import load_benchmark

    return load_benchmark("ranking")


@pytest.fixture(scope="module")
def st(rk):
    """benchmarks/ranking_stats.py, importable once ranking.py has put benchmarks/ on sys.path."""
    import ranking_stats

    return ranking_stats
