#!/bin/bash
# The engines that need GPUs (DeepSpeed ZeRO-2 / ZeRO-3; DDP and FSDP2 over NCCL), each checked
# against one process on the tiny shapes model: one iteration, the same rewards, advantages,
# gradient and update (tolerances of tests/test_distributed.py). Needs >= 2 GPUs and
# `pip install deepspeed`. Prints one line per engine and exits non-zero on a mismatch.
#   bash benchmarks/gpu_distributed_check.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-$(mktemp -d)}
PY=${PYTHON:-python}
ACC="$(dirname "$(command -v $PY)")/accelerate"
export PYTHONPATH=tests/workers:tests
$PY - "$OUT" <<'PYEOF'
import sys, yaml
from pathlib import Path
from test_resume import make_tiny_model
out = Path(sys.argv[1])
cfg = {"model": {"name": str(make_tiny_model(out / "tiny")), "lora": {"rank": 4, "alpha": 4}},
       "sampling": {"steps": 6}, "algorithm": {"num_branches": 2, "seeds_per_prompt": 2, "branch_points": "all",
                                               "std": "batch", "beta": 0.01},
       "train": {"iterations": 1, "prompts_per_iteration": 2, "lr": 1e-2, "ema_every": 0},
       "reward": {"name": "toy_rewards:brightness"}, "run": {"out": str(out / "run")}}
(out / "cfg.yaml").write_text(yaml.safe_dump(cfg))
PYEOF
$PY tests/workers/one_iteration.py "$OUT/cfg.yaml" "$OUT/one.pt"
COMMON=(--num_processes 2 --mixed_precision no --dynamo_backend no)
declare -A FLAGS=(
  [ddp]="--multi_gpu"
  [fsdp2]="--config_file configs/accelerate/fsdp.yaml"
  [zero2]="--config_file configs/accelerate/deepspeed-zero2.yaml"
  [zero3]="--config_file configs/accelerate/deepspeed-zero3.yaml")
status=0
for engine in ddp fsdp2 zero2 zero3; do
  if "$ACC" launch ${FLAGS[$engine]} "${COMMON[@]}" tests/workers/one_iteration.py "$OUT/cfg.yaml" \
       "$OUT/$engine.pt" > "$OUT/$engine.log" 2>&1; then
    $PY - "$OUT/one.pt" "$OUT/$engine.pt" "$engine" <<'PYEOF' || status=1
import sys, torch
from test_distributed import assert_matches
a, b = torch.load(sys.argv[1]), torch.load(sys.argv[2])
assert_matches(a, b)
print(f"{sys.argv[3]}: ok (engine {b['engine']})")
PYEOF
  else
    echo "$engine: launch failed, see $OUT/$engine.log"; status=1
  fi
done
exit $status
