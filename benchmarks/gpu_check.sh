#!/usr/bin/env bash
# The GPU checks owed by issue 17 (item 5), as one script that fits in a few minutes on an H100/H200:
#   1. pytest -m gpu          (fast paths equal the straightforward ones on CUDA, the paper step's peak memory,
#                              bf16/compile stay close)
#   2. train_step.py --preset gpu   (batch 64, 100 and 397 classes, fp32: ours against the faithful reference
#                              baseline, equal loss/gradients/AdamW state, speed-up and peak memory)
#   3. eval_mtil.py           (the Order I evaluation's unit costs on this GPU, predicted wall time)
#   4. moe_layer.py --device cuda   (one MoE layer at ViT-B/16 shapes, forward+backward)
# Every output goes to $OUT (default results/gpu_check/): one log and one JSON per benchmark, and summary.txt.
#
#   bash benchmarks/gpu_check.sh              # run it (from the repository root)
#   bash benchmarks/gpu_check.sh --dry-run    # on any machine: check the environment and that every step parses
#
# PYTHON (default python3) must have torch with CUDA, open_clip_torch and the project's dependencies; the
# package itself is taken from src/ (PYTHONPATH). Nothing is downloaded: random weights, synthetic inputs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-results/gpu_check}
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
mkdir -p "$OUT"

"$PYTHON" - <<'EOF'
import torch, open_clip, moe_adapters  # noqa: F401
print(f"torch {torch.__version__}, open_clip {open_clip.__version__}, cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0))
EOF

# name, time limit (s), command
STEPS=(
  "pytest_gpu|180|$PYTHON -m pytest -m gpu tests/test_gpu.py -q -rs -p no:cacheprovider"
  "train_step|300|$PYTHON benchmarks/train_step.py --preset gpu --json $OUT/train_step.json"
  "eval_mtil|240|$PYTHON benchmarks/eval_mtil.py --device cuda --json $OUT/eval_mtil.json"
  "moe_layer|60|$PYTHON benchmarks/moe_layer.py --device cuda --json"
)

if (( DRY )); then
  for s in "${STEPS[@]}"; do
    IFS='|' read -r name limit cmd <<<"$s"
    echo "would run ($limit s): $cmd"
  done
  # every benchmark's arguments parse, the GPU tests collect
  for b in train_step eval_mtil moe_layer; do "$PYTHON" "benchmarks/$b.py" --help >/dev/null; done
  "$PYTHON" -m pytest -m gpu tests/test_gpu.py -q --collect-only -p no:cacheprovider | tail -1
  echo "dry run: every step parses"
  exit 0
fi

"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: nothing to check')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/summary.txt" || true
status=0
for s in "${STEPS[@]}"; do
  IFS='|' read -r name limit cmd <<<"$s"
  echo "== $name: $cmd" | tee -a "$OUT/summary.txt"
  start=$(date +%s)
  if timeout "$limit" $cmd >"$OUT/$name.log" 2>&1; then rc=0; else rc=$?; status=1; fi
  echo "-- $name: rc $rc in $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
  tail -n 15 "$OUT/$name.log" | tee -a "$OUT/summary.txt"
done
[[ -f "$OUT/moe_layer.log" ]] && tail -n 1 "$OUT/moe_layer.log" >"$OUT/moe_layer.json" || true
exit $status
