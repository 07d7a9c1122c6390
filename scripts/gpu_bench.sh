#!/usr/bin/env bash
# One command for a short GPU window (an H200 lent for 15 minutes, offline):
#
#   bash scripts/gpu_bench.sh RESULTS_DIR
#
# Steps, each under its own time limit, the whole under 8 minutes (GPU_BENCH_BUDGET_S, default
# 470 s); a step that fails or runs out of time is recorded and the next one still runs:
#   1. install the package without network: pip install --no-deps --no-build-isolation -e .
#      (falls back to a symlinked import path when pip cannot)            limit  30 s
#   2. CUDA correctness tier: compiled kernels vs the float64 reference
#      (TRITON_INTERPRET=0 python3 -m pytest tests/test_cuda.py)          limit 140 s
#   3. kernel timings: bench/gpu_kernels.py (1080p/100k and 4K/500k, alpha and sum, triton vs the
#      torch backend on CUDA, gsplat when importable; each result checked before it is timed)
#                                                                          limit 170 s
#   4. workload scenes: bench/gpu_workload.py (the workload model's random 1080p/100k and 4K/500k
#      scenes, built by bench/workload.py; our triton rasterizer checked against the torch
#      backend, then binning, forward kernel alone, forward with binning, backward, fwd+bwd
#      timed, next to the model's committed H100 estimate)                 limit  50 s
#   5. super-resolution on CUDA: 60 training steps (triton backend, bf16 AMP) on the bundled
#      crop, then `gsplat2d demo` timings and PSNR (needs nothing outside the repository)
#                                                                          limit  90 s
# Step limits: 30 + 140 + 170 + 50 + 60 + 30 = 480 s (install and kernel timings gave 10 s each
# to the workload step). Writes at most 9 files into RESULTS_DIR (created if missing): summary.md,
# cuda_tier.log, kernels.json, kernels.md, kernels.log (also the install's and the workload
# step's log), workload.json, workload.md, sr.log, sr_demo.md. Never runs the CPU test suite or
# the compile report (no GPU needed for those; CI runs them). Exit status: 0 when every step
# passed, 1 otherwise. Env: PYTHON (default python3), GPU_BENCH_BUDGET_S, GPU_BENCH_SKIP_INSTALL.
set -uo pipefail
if [ $# -ne 1 ]; then
    echo "usage: bash scripts/gpu_bench.sh RESULTS_DIR" >&2
    exit 2
fi
OUT=$1
mkdir -p "$OUT" || { echo "gpu_bench: cannot create $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export TRITON_INTERPRET=0  # compiled kernels only (the CPU suite's interpreter is not wanted here)
BUDGET=${GPU_BENCH_BUDGET_S:-470}
T0=$SECONDS
SUMMARY="$OUT/summary.md"
status=0

left() { echo $((BUDGET - (SECONDS - T0))); }
note() { echo "$*" | tee -a "$SUMMARY"; }

# run_step NAME LIMIT_S LOGFILE CMD...: runs CMD with min(LIMIT, time left) seconds, logs, notes
run_step() {
    local name=$1 limit=$2 log=$3
    shift 3
    local avail
    avail=$(left)
    [ "$avail" -lt "$limit" ] && limit=$avail
    if [ "$limit" -lt 10 ]; then
        note "- $name: SKIPPED (out of time budget)"
        status=1
        return 1
    fi
    local t=$SECONDS rc=0
    timeout --kill-after=5 "$limit" "$@" >>"$log" 2>&1 || rc=$?
    local dt=$((SECONDS - t))
    if [ "$rc" -eq 0 ]; then
        note "- $name: ok (${dt} s)"
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        note "- $name: TIMED OUT after ${dt} s (limit ${limit} s)"
        status=1
    else
        note "- $name: FAILED, exit $rc (${dt} s; see $(basename "$log"))"
        status=1
    fi
    return "$rc"
}

{
    echo "# GPU window results ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
    echo
    echo '```'
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "nvidia-smi unavailable"
    "$PY" - <<'PYEOF' 2>&1
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
try:
    import triton; print("triton", triton.__version__)
except Exception as e:
    print("triton unavailable:", e)
PYEOF
    echo "git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$( [ -n "$(git status --porcelain 2>/dev/null)" ] && echo ' (with uncommitted changes)')"
    echo '```'
    echo
    echo "## Steps"
} >"$SUMMARY"

# 1. install (offline). Fallback: the source tree maps kernels/, train/, eval/ into gsplat2d.*,
#    so expose a gsplat2d/ folder of symlinks on PYTHONPATH instead.
if [ -n "${GPU_BENCH_SKIP_INSTALL:-}" ]; then
    note "- install: skipped (GPU_BENCH_SKIP_INSTALL is set: using the environment as it is)"
elif ! run_step "install (pip -e, offline)" 30 "$OUT/kernels.log" \
        "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e .; then
    SHIM=$(mktemp -d)
    mkdir -p "$SHIM/gsplat2d"
    for f in gsplat2d/*; do ln -s "$PWD/$f" "$SHIM/gsplat2d/"; done
    for d in kernels train eval; do ln -sfn "$PWD/$d" "$SHIM/gsplat2d/$d"; done
    export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
    note "  (using a symlinked import path instead: $SHIM)"
fi
"$PY" -c "import gsplat2d, gsplat2d.kernels.rasterize_fwd" >>"$OUT/kernels.log" 2>&1 \
    || note "- import check: FAILED (see kernels.log)"

# 2. CUDA correctness tier first: no timing is worth anything if this fails.
run_step "CUDA correctness tier (tests/test_cuda.py)" 140 "$OUT/cuda_tier.log" \
    "$PY" -m pytest tests/test_cuda.py -q -p no:cacheprovider -rfEs
tail -n 3 "$OUT/cuda_tier.log" | sed 's/^/  /' >>"$SUMMARY"
if ! tail -n 1 "$OUT/cuda_tier.log" | grep -q " passed"; then
    note "  CUDA tier: no test ran (no CUDA device, or TRITON_INTERPRET set): nothing was checked"
    status=1
fi

# 3. kernel timings (the script writes kernels.json/.md itself, also on failure)
LIM=$(( $(left) < 170 ? $(left) : 170 ))
run_step "kernel timings (bench/gpu_kernels.py)" 170 "$OUT/kernels.log" \
    "$PY" bench/gpu_kernels.py --out "$OUT/kernels.json" --md "$OUT/kernels.md" --deadline $((LIM - 10))

# 4. the workload model's scenes measured next to its estimate (writes workload.json/.md itself;
#    without CUDA it exits 1 at once with one line)
LIM=$(( $(left) < 50 ? $(left) : 50 ))
run_step "workload scenes vs the model's estimate (bench/gpu_workload.py)" 50 "$OUT/kernels.log" \
    "$PY" bench/gpu_workload.py --out "$OUT/workload.json" --md "$OUT/workload.md" --deadline $((LIM - 8))

# 5. super-resolution on CUDA, data from inside the repository (nothing else is copied there)
SRDATA=$(mktemp -d)
"$PY" - "$SRDATA" <<'PYEOF' >>"$OUT/sr.log" 2>&1
import sys
from pathlib import Path
from PIL import Image, ImageOps
src = Path("gsplat2d/assets/kodim23_crop.png")
im = Image.open(src).convert("RGB")
out = Path(sys.argv[1])
for name, t in (("a", im), ("b", ImageOps.mirror(im)), ("c", ImageOps.flip(im)), ("d", im.rotate(180))):
    t.save(out / f"{name}.png")
print(f"SR data: 4 variants of {src} in {out}")
PYEOF
run_step "SR: 60 training steps (triton, bf16 AMP, CUDA)" 60 "$OUT/sr.log" \
    "$PY" -m gsplat2d train --dataset_path "$SRDATA" --val_path "$SRDATA" --val_scales 2,4 \
    --patch_size 24 --scale_max 4 --repeat 64 --epochs 4 --max_steps 60 --batch_size 16 --amp \
    --backend triton --device cuda --no_progress --no_lpips --save_path "$SRDATA/sr.pth" \
    --samples_dir "$SRDATA/samples"
run_step "SR: demo (encode/render times, PSNR vs bicubic)" 30 "$OUT/sr_demo.md" \
    "$PY" -m gsplat2d demo --device cuda --backend triton --output_dir "$SRDATA/demo"

{
    echo
    echo "## Kernel timings"
    echo
    [ -s "$OUT/kernels.md" ] && cat "$OUT/kernels.md" || echo "(no kernels.md: see kernels.log)"
    echo
    echo "## Workload scenes: measured vs the model's estimate"
    echo
    [ -s "$OUT/workload.md" ] && sed 's/^#/##/' "$OUT/workload.md" || echo "(no workload.md: see kernels.log)"
    echo
    echo "total $((SECONDS - T0)) s of a ${BUDGET} s budget; exit status $status"
} >>"$SUMMARY"
echo "results in $OUT (exit $status)"
exit $status
