#!/usr/bin/env bash
# One command for a CUDA machine: test suite, compile report, benchmarks, summary.
#
#   bash scripts/gpu_bench.sh            # from the repo root (or anywhere; it cd's there)
#
# Writes bench/results/<gpu-name-slug>-<YYYY-MM-DD>.{json,md} plus the raw pytest-benchmark JSON
# and logs under bench/results/raw/. Assumes torch (CUDA build), triton, pytest and
# pytest-benchmark are installed and the package is installed (pip install -e .).
# Env: PYTHON (default python), BENCH_ARGS (extra pytest args, e.g. "-k fwd").
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
STAMP=$(date +%Y-%m-%d_%H%M%S)
RAW=bench/results/raw
mkdir -p "$RAW"
status=0

echo "== environment"
$PY - <<'PYEOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name())
try:
    import triton; print("triton", triton.__version__)
except Exception as e:
    print("triton unavailable:", e)
PYEOF
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || true

echo "== test suite (as in CI: CPU tensors, Triton interpreter)"
$PY -m pytest -q 2>&1 | tee "$RAW/tests-$STAMP.log"
rc=${PIPESTATUS[0]}; [ "$rc" -ne 0 ] && { echo "tests: exit $rc"; status=1; }

echo "== triton backend on CUDA tensors (smoke: every benchmark once)"
$PY -m pytest bench/ --benchmark-disable -q 2>&1 | tee "$RAW/bench-smoke-$STAMP.log"
rc=${PIPESTATUS[0]}; [ "$rc" -ne 0 ] && { echo "bench smoke: exit $rc"; status=1; }

echo "== compile report"
$PY -m gsplat2d.kernels.report 2>&1 | tee "$RAW/report-$STAMP.txt"
$PY -m gsplat2d.kernels.report --json > "$RAW/report-$STAMP.json" 2>/dev/null || true

echo "== benchmarks"
$PY -m pytest bench/ --benchmark-only --benchmark-json="$RAW/bench-$STAMP.json" \
    --benchmark-columns=mean,median,stddev,rounds --benchmark-sort=name ${BENCH_ARGS:-} 2>&1 \
    | tee "$RAW/bench-$STAMP.log"
rc=${PIPESTATUS[0]}; [ "$rc" -ne 0 ] && { echo "benchmarks: exit $rc"; status=1; }

echo "== super-resolution on CUDA: 60 training steps (triton backend, bf16 AMP), shipped model on Set5"
DATA=${GSPLAT2D_DATA:-../shared/data}
if [ -d "$DATA/train" ] && [ -d "$DATA/Set5" ]; then
    $PY -m gsplat2d.train --dataset_path "$DATA/train" --epochs 1 --max_steps 60 --batch_size 16 \
        --amp --backend triton --device cuda --val_split 5 --val_scales 2,4 --no_progress --no_lpips \
        --save_path "$RAW/sr-$STAMP.pth" --samples_dir "$RAW/sr-samples-$STAMP" 2>&1 | tee "$RAW/sr-train-$STAMP.log"
    rc=${PIPESTATUS[0]}; [ "$rc" -ne 0 ] && { echo "sr train: exit $rc"; status=1; }
    $PY -m gsplat2d.eval --benchmark --device cuda --data_path "$DATA/Set5" --json "$RAW/sr-set5-$STAMP.json" \
        2>&1 | tee "$RAW/sr-set5-$STAMP.log"
    rc=${PIPESTATUS[0]}; [ "$rc" -ne 0 ] && { echo "sr eval: exit $rc"; status=1; }
else
    echo "(no $DATA/train or $DATA/Set5: set GSPLAT2D_DATA to the shared data folder to run this step)"
fi

if [ -s "$RAW/bench-$STAMP.json" ]; then
    echo "== summary"
    $PY bench/summarize.py "$RAW/bench-$STAMP.json" || status=1
fi
exit $status
