"""Load test of `tempflow serve-reward`: a burst of valid requests plus hostile ones.

    python benchmarks/reward_server_load.py [--requests 200] [--hostile 4] [--max-concurrent N]

Starts the server on 127.0.0.1 in a subprocess (reward `brightness`), waits until /health
answers ok, then sends at once ``--requests`` valid requests (``--images`` PNGs of
``--size`` px each) and ``--hostile`` requests each holding one black 8000 x 8000 PNG (a
few hundred kB that would decode to 192 MB):

1. raw HTTP, no retries: the answers by status code, connections reset (must be 0),
   p50 / p95 latency;
2. the same burst through `RemoteReward` clients, which retry a busy server (503) after
   its Retry-After: how many were scored, and their latency;
3. one hostile request alone, and the server's answer.

Prints the server's peak resident memory (VmHWM in /proc/<pid>/status) before and after.
Exits 1 if a connection was reset, a hostile request was not refused (413 too large, or 503
busy), or a client failed.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a process in MB; NaN where /proc is missing."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def black_png(side: int) -> str:
    """Base64 of a black side x side RGB PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def post(port: int, body: bytes, timeout: float) -> tuple[str, float]:
    """One raw POST /score -> (status code or exception name, seconds)."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/score", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        outcome = str(resp.status)
    except Exception as e:  # a reset, a timeout: counted, never raised
        outcome = type(e).__name__
    finally:
        conn.close()
    return outcome, time.perf_counter() - t0


def percentiles(xs: list[float]) -> str:
    if not xs:
        return "p50 - p95 -"
    xs = sorted(xs)
    return f"p50 {xs[len(xs) // 2]:.2f} s, p95 {xs[min(len(xs) - 1, int(0.95 * len(xs)))]:.2f} s"


def burst(fn, n: int) -> list:
    """Run fn(i) for i < n in n threads released together; the results in order."""
    gate = threading.Barrier(n)

    def go(i):
        gate.wait()
        return fn(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(go, range(n)))


def start_server(args) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "tempflow", "serve-reward", "--reward", "brightness", "--port", "0"]
    if args.max_concurrent is not None:
        cmd += ["--max-concurrent", str(args.max_concurrent)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "serving reward" not in line:
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    port = int(line.split(" on ")[1].split(" ")[0].rsplit(":", 1)[1])
    if "ready" not in proc.stdout.readline():
        proc.kill()
        raise SystemExit("the server did not become ready")
    return proc, port


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200, help="valid requests sent at once")
    ap.add_argument("--hostile", type=int, default=4, help="8000 x 8000 black PNG requests sent with them")
    ap.add_argument("--images", type=int, default=4, help="images per valid request")
    ap.add_argument("--size", type=int, default=64, help="side of the valid images in px")
    ap.add_argument("--max-concurrent", type=int, help="the server's flag (default: its default)")
    ap.add_argument("--timeout", type=float, default=60.0, help="client timeout per request in s")
    args = ap.parse_args(argv)

    import torch

    from tempflow.rewards import build_reward
    from tempflow.rewards.wire import encode_request

    images = torch.rand(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    prompts = ["a red circle"] * args.images
    valid = json.dumps(encode_request(images, prompts, None)).encode()
    bomb = black_png(8000)
    hostile = json.dumps({"images": [bomb], "prompts": ["x"]}).encode()
    proc, port = start_server(args)
    ok = True
    try:
        rss0 = peak_rss_mb(proc.pid)
        limit = args.max_concurrent or "default"
        print(f"server: brightness, --max-concurrent {limit}; {args.requests} valid requests "
              f"({args.images} x {args.size}x{args.size} PNG, {len(valid) / 1e3:.0f} kB) + {args.hostile} "
              f"hostile (one black 8000x8000 PNG, {len(hostile) / 1e3:.0f} kB) sent at once")
        n = args.requests + args.hostile
        t0 = time.perf_counter()
        res = burst(lambda i: post(port, valid if i < args.requests else hostile, args.timeout), n)
        wall = time.perf_counter() - t0
        good, bad = Counter(r[0] for r in res[:args.requests]), Counter(r[0] for r in res[args.requests:])
        resets = sum(v for k, v in (good + bad).items() if not k.isdigit())
        print(f"1. raw HTTP, no retries ({wall:.1f} s):")
        print(f"   valid:   {dict(sorted(good.items()))}, {percentiles([r[1] for r in res[:args.requests]])}")
        print(f"   hostile: {dict(sorted(bad.items()))}")
        print(f"   connections reset or failed: {resets}")
        ok &= resets == 0 and set(bad) <= {"413", "503"}  # refused unread: too large, or busy

        remote = build_reward("remote", url=f"http://127.0.0.1:{port}", backoff=0.2,
                              timeout=args.timeout)

        def client(i):
            t = time.perf_counter()
            try:
                remote(images, prompts)
                return "scored", time.perf_counter() - t
            except Exception as e:
                return type(e).__name__, time.perf_counter() - t

        t0 = time.perf_counter()
        res = burst(client, args.requests)
        wall = time.perf_counter() - t0
        outcomes = Counter(r[0] for r in res)
        print(f"2. RemoteReward clients, retrying after Retry-After ({wall:.1f} s):")
        print(f"   {dict(sorted(outcomes.items()))}, {percentiles([r[1] for r in res])}")
        ok &= outcomes.get("scored", 0) == args.requests
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=args.timeout)
        conn.request("POST", "/score", body=hostile, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        print(f"3. one hostile request alone: {resp.status} {json.loads(resp.read())['error']}")
        conn.close()
        ok &= resp.status == 413
        print(f"server peak RSS (VmHWM): {rss0:.0f} MB after start, {peak_rss_mb(proc.pid):.0f} MB at the end")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print("ok" if ok else "FAILED: resets, an accepted hostile request or a client that gave up")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
