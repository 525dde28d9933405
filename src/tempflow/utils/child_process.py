"""Benchmarks measure each variant in a fresh child process (clean memory peaks and caches);
the child prints one ``RESULT <json>`` line that the parent reads back. :func:`run_pool` runs
many ``tempflow`` commands a few at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

TAG = "RESULT "
# run_pool may run in several threads at once (benchmarks/ranking.py): one line per write
_PRINT_LOCK = threading.Lock()


def emit_result(result: dict) -> None:
    """In the child: print the result line."""
    print(TAG + json.dumps(result))


def run_child(cmd: list[str], env: dict, name: str) -> dict | None:
    """Run ``cmd`` and return its result, or None (with its stderr tail printed) when it failed."""
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith(TAG)), None)
    if res.returncode != 0 or line is None:
        print(f"{name} failed:\n{res.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(line[len(TAG):])


def threads_per_job(jobs: int) -> int:
    """Intra-op threads for each of ``jobs`` processes sharing this machine's cores: the user's
    OMP_NUM_THREADS when set, else cores // jobs."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, (os.cpu_count() or 1) // jobs)


def run_pool(tasks: list[tuple[str, list[str], Path]], jobs: int) -> list[str]:
    """Run ``python -m tempflow <args>`` for each (label, args, log file), ``jobs`` at a time,
    each with :func:`threads_per_job` threads; prints each one's seconds and returns the labels
    of those that failed."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_job(jobs))}
    tasks, running, failed = list(tasks), [], []
    while tasks or running:
        while tasks and len(running) < jobs:
            label, args, log = tasks.pop(0)
            with open(log, "w") as f:
                proc = subprocess.Popen([sys.executable, "-m", "tempflow", *args], env=env, stdout=f, stderr=f)
            running.append((label, log, proc, time.time()))
        time.sleep(0.5)
        for item in list(running):
            label, log, proc, t0 = item
            if proc.poll() is not None:
                running.remove(item)
                status = "" if proc.returncode == 0 else f" (exit {proc.returncode}, see {log})"
                with _PRINT_LOCK:
                    sys.stderr.write(f"{label}: {time.time() - t0:.0f} s{status}\n")
                    sys.stderr.flush()
                if proc.returncode:
                    failed.append(label)
    return failed
