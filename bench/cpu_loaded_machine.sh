#!/usr/bin/env bash
# A fit and a render on a machine with one busy process beside them, against the idle machine:
# torch's default threads, --num_threads 1, and OpenMP's passive waiting (OMP_WAIT_POLICY=PASSIVE).
#
#   bash bench/cpu_loaded_machine.sh > bench/results/cpu-loaded-machine-<machine>-<date>.md
#
# Wall seconds per command (process start included), one run each: read the ratios.
set -euo pipefail
PY=${PYTHON:-python}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"; [ -n "${BUSY:-}" ] && kill "$BUSY" 2>/dev/null || true' EXIT
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$PY" -c "from PIL import Image; Image.open('$ROOT/gsplat2d/assets/kodim23_crop.png').crop((0, 0, 256, 256)).save('$TMP/c256.png')"
secs() { local t0 t1; t0=$(date +%s.%N); "$@" > /dev/null; t1=$(date +%s.%N); python3 -c "print(f'{$t1 - $t0:.1f}')"; }
fit() { secs env "$@" "$PY" -m gsplat2d fit --input_path "$TMP/c256.png" --output_path "$TMP/t.g2d" --num_gaussians 2000 --steps 200 --quiet; }
render() { secs env "$@" "$PY" -m gsplat2d render --input_path "$TMP/c256.png" --output_path "$TMP/r.png" --scale 4 --quiet; }
echo "# A loaded machine: $(python3 -c 'import platform; print(platform.processor() or platform.machine())'), $(nproc) cores, $(date -u +%F)"
echo
echo "Seconds: \`gsplat2d fit\` (256 x 256, 2,000 Gaussians, 200 steps; numba backend, then --backend torch) and \`gsplat2d render --scale 4\` (256 x 256)."
echo
echo "| machine, setting | fit (numba) | fit (torch backend) | render x4 |"
echo "|---|---|---|---|"
for state in idle busy; do
    if [ "$state" = busy ]; then python3 -c "while True: pass" & BUSY=$!; sleep 1; fi
    echo "| $state, default threads | $(fit X=1) | $(secs env X=1 "$PY" -m gsplat2d fit --input_path "$TMP/c256.png" --output_path "$TMP/t.g2d" --num_gaussians 2000 --steps 200 --quiet --backend torch) | $(render X=1) |"
    echo "| $state, OMP_WAIT_POLICY=PASSIVE | $(fit OMP_WAIT_POLICY=PASSIVE) | $(secs env OMP_WAIT_POLICY=PASSIVE "$PY" -m gsplat2d fit --input_path "$TMP/c256.png" --output_path "$TMP/t.g2d" --num_gaussians 2000 --steps 200 --quiet --backend torch) | $(render OMP_WAIT_POLICY=PASSIVE) |"
    echo "| $state, --num_threads 1 | $(secs env X=1 "$PY" -m gsplat2d fit --input_path "$TMP/c256.png" --output_path "$TMP/t.g2d" --num_gaussians 2000 --steps 200 --quiet --num_threads 1) | $(secs env X=1 "$PY" -m gsplat2d fit --input_path "$TMP/c256.png" --output_path "$TMP/t.g2d" --num_gaussians 2000 --steps 200 --quiet --backend torch --num_threads 1) | $(secs env X=1 "$PY" -m gsplat2d render --input_path "$TMP/c256.png" --output_path "$TMP/r.png" --scale 4 --quiet --num_threads 1) |"
done
