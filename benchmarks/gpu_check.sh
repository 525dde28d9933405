#!/usr/bin/env bash
# The GPU check, in one go: under 8 minutes on one CUDA GPU, everything written to one folder.
#
#   benchmarks/gpu_check.sh [OUT_DIR]          # default out/gpu-check
#
# With a CUDA GPU:
#   tests      pytest tests/test_gpu.py: bf16 / fp16 training steps of the SD3 adapter at
#              SD3.5-Medium's size (on-policy ratio 1 at the first inner step), float32 step
#              math under autocast, CPU-generator noise on the GPU; plus the file's CPU tests
#   gpu_sd35_tempflow, gpu_sd35_flowgrpo
#              benchmarks/gpu_sd35.py, one algorithm each, a quarter of the paper's per-GPU
#              groups (TempFlow-GRPO 1 seed x 6 branches, Flow-GRPO 6 trajectories; override
#              with GPU_SD35_ARGS), 1 warm-up + 1 measured iteration: s/iteration split into
#              sampling, decoding and training, model evaluations, peak memory, TFLOP/s
#   train      20 iterations of `tempflow train` (the shapes preset, on the GPU the trainer
#              picks), s/iteration from metrics.jsonl next to the 2-core CPU's 7.25 s
# Without one (or with GPU_CHECK_FORCE_CPU=1) the CPU mode: the gpu tests (they skip),
# gpu_sd35.py --tiny on the CPU, 2 iterations of a small shapes config; it says so loudly.
#
# Each part runs under `timeout` and its log goes to OUT_DIR/<part>.log; a failing part does not
# stop the others. OUT_DIR/summary.json and summary.md sum up; the exit status is 1 when any
# part failed. PYTHON picks the interpreter (default: the active venv, else ./.venv, else python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/out/gpu-check}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -n "${VIRTUAL_ENV:-}" ]]; then PY="$VIRTUAL_ENV/bin/python"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"
else PY=python3; fi
cd "$ROOT"
rm -rf "$OUT/gpu_tests.jsonl" "$OUT/parts.tsv" "$OUT/shapes-train" "$OUT"/gpu_sd35_*.json
export TEMPFLOW_GPU_CHECK_OUT="$OUT"
START=$SECONDS

MODE=cpu
if [[ "${GPU_CHECK_FORCE_CPU:-0}" == 1 ]]; then
    export CUDA_VISIBLE_DEVICES=""
    WHY="GPU_CHECK_FORCE_CPU=1"
elif timeout 120 "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    MODE=gpu
else
    WHY="torch.cuda.is_available() is False"
fi

GPU_NAME=""
if [[ $MODE == gpu ]]; then
    GPU_NAME="$(timeout 60 "$PY" -c "import torch; print(torch.cuda.get_device_name())")"
    (timeout 30 nvidia-smi || echo "nvidia-smi failed or is missing") > "$OUT/nvidia-smi.txt" 2>&1
    echo "GPU: $GPU_NAME (nvidia-smi in $OUT/nvidia-smi.txt); results go to $OUT"
else
    echo "################################################################################"
    echo "no CUDA GPU used ($WHY): CPU mode at tiny sizes; nothing here measures a GPU"
    echo "################################################################################"
fi

part() {  # part NAME LIMIT_S COMMAND...: run under timeout, log to $OUT/NAME.log, record rc and seconds
    local name=$1 limit=$2 rc=0 t0=$SECONDS
    shift 2
    echo "== $name (limit ${limit} s): $*"
    timeout --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$limit" >> "$OUT/parts.tsv"
    echo "   rc $rc after $((SECONDS - t0)) s$([[ $rc == 124 || $rc == 137 ]] && echo ' (timed out)')"
    [[ $rc == 0 ]] || tail -n 5 "$OUT/$name.log" | sed 's/^/   | /'
}

if [[ $MODE == gpu ]]; then
    # 1. every test of the file but the one that runs this script
    part tests 110 "$PY" -m pytest tests/test_gpu.py -p no:cacheprovider -q -rs -k "not gpu_check_script" \
        --junitxml="$OUT/tests.xml"
    # 2. SD3.5-Medium-size benchmark, one process per algorithm (a timeout loses only one)
    read -r -a SD35 <<< "${GPU_SD35_ARGS:---seeds 1 --group 6 --iterations 1}"
    part gpu_sd35_tempflow 130 "$PY" benchmarks/gpu_sd35.py --algorithms tempflow "${SD35[@]}" \
        --json "$OUT/gpu_sd35_tempflow.json"
    part gpu_sd35_flowgrpo 120 "$PY" benchmarks/gpu_sd35.py --algorithms flowgrpo "${SD35[@]}" \
        --json "$OUT/gpu_sd35_flowgrpo.json"
    # 3. the shapes preset, 20 iterations, no in-run evaluation
    TRAIN_ITERS=20
    part train 90 "$PY" -m tempflow train --set train.iterations=$TRAIN_ITERS --set run.eval_every=0 \
        --set run.out="$OUT/shapes-train" --overwrite --no-progress
else
    part tests 120 "$PY" -m pytest tests/test_gpu.py -p no:cacheprovider -q -rs -m gpu --junitxml="$OUT/tests.xml"
    TINY=(--tiny --device cpu --seeds 2 --branches 2 --group 4 --steps 4 --iterations 1 --rank 4)
    part gpu_sd35_tempflow 240 "$PY" benchmarks/gpu_sd35.py --algorithms tempflow "${TINY[@]}" \
        --json "$OUT/gpu_sd35_tempflow.json"
    part gpu_sd35_flowgrpo 240 "$PY" benchmarks/gpu_sd35.py --algorithms flowgrpo "${TINY[@]}" \
        --json "$OUT/gpu_sd35_flowgrpo.json"
    TRAIN_ITERS=2
    part train 300 "$PY" -m tempflow train --set train.iterations=$TRAIN_ITERS --set train.prompts_per_iteration=1 \
        --set sampling.steps=4 --set sampling.eval_steps=2 --set run.eval_every=0 --set run.log_images_every=0 \
        --set run.out="$OUT/shapes-train" --overwrite --no-progress
fi

export MODE GPU_NAME TRAIN_ITERS ELAPSED=$((SECONDS - START))
"$PY" - <<'EOF'
"""summary.json and summary.md from the parts' outputs."""
import json, math, os, platform, xml.etree.ElementTree as ET
from pathlib import Path

import torch

out, mode = Path(os.environ["TEMPFLOW_GPU_CHECK_OUT"]), os.environ["MODE"]
CPU_REFERENCE = 7.25  # s/iteration of the shapes preset (all 9 branch points) on the 2-core CPU (README)
parts = {}
for line in (out / "parts.tsv").read_text().splitlines():
    name, rc, secs, limit = line.split("\t")
    parts[name] = {"rc": int(rc), "seconds": int(secs), "limit_s": int(limit), "timed_out": rc in ("124", "137")}

tests = {"passed": 0, "failed": 0, "skipped": 0, "failures": []}
if (out / "tests.xml").is_file():
    for case in ET.parse(out / "tests.xml").getroot().iter("testcase"):
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            tests["failed"] += 1
            tests["failures"].append(f"{case.get('name')}: {(bad.get('message') or '')[:300]}")
        elif case.find("skipped") is not None:
            tests["skipped"] += 1
        else:
            tests["passed"] += 1
records = [json.loads(l) for l in (out / "gpu_tests.jsonl").read_text().splitlines()] \
    if (out / "gpu_tests.jsonl").is_file() else []

bench = []
for algo in ("tempflow", "flowgrpo"):
    f = out / f"gpu_sd35_{algo}.json"
    if f.is_file():
        bench += json.loads(f.read_text())

train = {"iterations": int(os.environ["TRAIN_ITERS"]), "device": "cuda" if mode == "gpu" else "cpu",
         "cpu_reference_s_per_iteration": CPU_REFERENCE, "s_per_iteration": None}
metrics = out / "shapes-train" / "metrics.jsonl"
if metrics.is_file():
    rows = [json.loads(l) for l in metrics.read_text().splitlines() if l.strip()]
    times = [r["time/iteration"] for r in rows if "time/iteration" in r]
    if times:
        later = times[1:] or times
        train.update(done=len(times), s_per_iteration=sum(later) / len(later), first_iteration_s=times[0],
                     ratio_max=max((r.get("train/ratio_max", math.nan) for r in rows), default=math.nan),
                     clip_frac=sum(r.get("train/clip_frac", 0.0) for r in rows) / len(rows))

summary = {"mode": mode, "gpu": os.environ["GPU_NAME"] or None, "torch": torch.__version__,
           "cuda": torch.version.cuda, "host": platform.node(), "elapsed_s": int(os.environ["ELAPSED"]),
           "parts": parts, "tests": tests, "gpu_tests": records, "gpu_sd35": bench, "train": train}
(out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")

md = ["# GPU check", ""]
if mode == "gpu":
    md.append(f"GPU: {summary['gpu']}, torch {torch.__version__} (CUDA {torch.version.cuda}); {summary['elapsed_s']} s in all.")
else:
    md.append(f"**CPU mode: no CUDA GPU used** (tiny sizes; nothing here measures a GPU); torch "
              f"{torch.__version__}; {summary['elapsed_s']} s in all.")
md += ["", "| part | rc | seconds | limit |", "|---|---:|---:|---:|"]
md += [f"| {n} | {p['rc']}{' (timed out)' if p['timed_out'] else ''} | {p['seconds']} | {p['limit_s']} |"
       for n, p in parts.items()]
md += ["", f"Tests: {tests['passed']} passed, {tests['failed']} failed, {tests['skipped']} skipped.",
       *[f"- FAILED {f}" for f in tests["failures"]]]
checks = [r for r in records if "rows" in r]
if checks:
    md += ["", "First inner step (on-policy ratio, tests/test_gpu.py):", "",
           "| check | iteration | max abs(r - 1) | bound from e | RMS dv | same layout bitwise | clip frac (max) | peak GiB |",
           "|---|---:|---:|---:|---:|---|---:|---:|"]
    for r in checks:
        for row in r["rows"]:
            md.append(f"| {r['check']} | {row['iteration']} | {row['ratio_dev']:.3g} | {row['log_ratio_bound_from_e']:.3g} "
                      f"| {row['e_rms_dv']:.3g} | {row['same_layout_bitwise']} | {row['clip_frac']:.2f} "
                      f"| {r.get('peak_gib', float('nan')):.1f} |")
if bench:
    cols = [("s/iteration", "iteration_s", "{:.2f}"), ("sampling s", "sample_s", "{:.2f}"),
            ("decode s", "decode_s", "{:.2f}"), ("training s", "train_s", "{:.2f}"), ("model evals", "nfe", "{:.0f}"),
            ("images", "images", "{:.0f}"), ("train rows", "train_rows", "{:.0f}"),
            ("train TFLOP/s", "tflop_per_s", "{:.3g}"), ("peak GiB", "peak_gib", "{:.1f}")]
    md += ["", f"benchmarks/gpu_sd35.py ({bench[0]['device']}, {bench[0]['params_m']:.4g}M-parameter transformer):", "",
           "| algorithm | " + " | ".join(c[0] for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    md += ["| " + r["algorithm"] + " | " + " | ".join(f.format(r[k]) for _, k, f in cols) + " |" for r in bench]
if train["s_per_iteration"] is not None:
    md += ["", f"tempflow train, shapes preset{'' if mode == 'gpu' else ' (small: 1 prompt, T = 4)'}, "
               f"{train['done']} iterations on {train['device']}: {train['s_per_iteration']:.2f} s/iteration "
               f"(after the first, {train['first_iteration_s']:.2f} s); the full preset on the 2-core CPU: "
               f"{CPU_REFERENCE} s/iteration."]
else:
    md += ["", "tempflow train: no metrics.jsonl (see train.log)."]
(out / "summary.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
EOF

failed=$(awk -F'\t' '$2 != 0' "$OUT/parts.tsv" | wc -l)
echo "summary: $OUT/summary.md and summary.json ($((SECONDS - START)) s)"
[[ $MODE == gpu ]] || echo "no CUDA GPU used: this was the CPU mode"
[[ $failed == 0 ]] || { echo "$failed part(s) failed"; exit 1; }
