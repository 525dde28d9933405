"""tempflow: reward alignment of flow-matching text-to-image models.

TempFlow-GRPO (trajectory branching + noise-aware weighting) and Flow-GRPO in one code path.
Conventions everywhere: sigma = 1 is pure noise, sigma = 0 is data,
x_sigma = (1 - sigma) x0 + sigma eps, velocity v = eps - x0, step math in float32.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "evaluate", "sample", "train"]

_API = ("train", "evaluate", "sample")


def __getattr__(name: str):
    """``tempflow.train``, ``tempflow.evaluate`` and ``tempflow.sample`` (docs/api.md), imported
    on first use so that ``import tempflow`` stays light (no torch)."""
    if name in _API:
        from tempflow import api

        return getattr(api, name)
    raise AttributeError(f"module 'tempflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
