"""Load a script of benchmarks/ as a module (benchmarks/ is not a package)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str, module_name: str | None = None):
    """benchmarks/<name>.py, executed as a fresh module named ``module_name`` (bench_<name>)."""
    spec = importlib.util.spec_from_file_location(module_name or f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
