"""Process memory: resident set size now and at its peak, and freeing the reference cycles a
function leaves behind (matplotlib figures) as soon as it returns.

Why :func:`frees_cycles` exists: a matplotlib figure is a web of reference cycles (figure <->
axes <-> artists <-> transforms, ~4,000 objects and ~1.3 MiB for the reward curve) that
``plt.close`` does not break, so only Python's cycle collector frees it. The collector runs
often on young objects but collects the oldest generation only when the number of long-lived
objects has grown by 25%; with torch, diffusers and transformers imported that is ~500,000
objects, i.e. after ~125,000 new ones: ~30 figures drawn every few iterations (and promoted
to the oldest generation while they are drawn). The training loop's reward curve (every 5
iterations) piled up ~30 MiB of dead figures between full collections, and the peak RSS
ratcheted up with each pile (docs/training.md, "Memory over a long run"). A full
``gc.collect()`` after each figure would free them too, but costs ~0.5-1 s with that many
objects; with the collector paused while the function runs, everything it allocates stays in
the youngest generation, and ``gc.collect(0)`` frees the dead cycles in milliseconds.
"""

from __future__ import annotations

import functools
import gc
import resource
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (VmHWM), MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # macOS: bytes, Linux: KiB


def rss_mb() -> float:
    """This process's resident memory now (VmRSS), MiB; NaN where /proc is not available."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def frees_cycles(fn: F) -> F:
    """Decorator: run ``fn`` with the cycle collector paused, then free the reference cycles it
    left behind (its figures, once closed and out of scope) with a young-generation collection.

    Everything ``fn`` allocates stays in generation 0 until it returns, so ``gc.collect(0)``
    reaches all of it; objects it keeps alive (caches, its return value) simply move on to
    generation 1. Only for functions that return quickly: the pause is process-wide."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.collect(0)
            if enabled:
                gc.enable()

    return wrapper  # type: ignore[return-value]
