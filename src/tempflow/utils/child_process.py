"""Benchmarks measure each variant in a fresh child process (clean memory peaks and caches);
the child prints one ``RESULT <json>`` line that the parent reads back."""

from __future__ import annotations

import json
import subprocess
import sys

TAG = "RESULT "


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
