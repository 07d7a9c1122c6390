"""Tables of the CPU benchmarks from their JSON files.

    python -m pytest bench/test_bench_cpu.py --benchmark-only --benchmark-json=/tmp/cpu.json
    python bench/cpu_before_after.py --out /tmp/after.json                 # this checkout
    OLD/venv/bin/python bench/cpu_before_after.py --out /tmp/before.json    # the old one
    python bench/cpu_table.py /tmp/cpu.json --before /tmp/before*.json --after /tmp/after*.json \\
        --out bench/results/cpu-numba-<machine>-<date>

writes ``<out>.json`` (the inputs, unchanged) and ``<out>.md`` (the tables).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _bench_rows(raw: dict) -> list[str]:
    rows = ["| benchmark | numba ms | other ms (interleaved) | speed-up (torch / numba) or cost (numba / bicubic) | tile pairs /s | window pairs /s |",
            "|---|---|---|---|---|---|"]
    for b in raw["benchmarks"]:
        e = b["extra_info"]
        other = "torch" if "torch_median_s" in e else "bicubic"
        o = e.get(f"{other}_median_s", 0.0)
        mean = b["stats"]["mean"]
        ratio = f"{o / mean:.3g}x faster" if other == "torch" else f"{mean / o:.3g}x bicubic"
        rows.append(f"| `{b['name']}` | {mean * 1e3:,.1f} | {other} {o * 1e3:,.1f} | {ratio} | "
                    f"{e.get('pairs_tile_per_s', 0):.3g} | {e.get('pairs_window_per_s', 0):.3g} |")
    return rows


def _before_after_rows(before: list[dict], after: list[dict]) -> list[str]:
    def best(runs, path):
        vals = []
        for r in runs:
            v = r
            for k in path:
                v = v[k]
            vals.append(v)
        return min(vals), max(vals)

    rows = ["| what | before (cfadee5) | after | before / after |", "|---|---|---|---|"]
    for key in after[0]["e2e"]:
        b = best(before, ("e2e", key, "ratio"))
        a = best(after, ("e2e", key, "ratio"))
        rows.append(f"| encode + render `{key}`, x PIL bicubic | {b[0]:.1f}-{b[1]:.1f}x | {a[0]:.1f}-{a[1]:.1f}x | "
                    f"{b[0] / a[1]:.1f}-{b[1] / a[0]:.1f} |")
    for key in after[0]["train"]:
        b = best(before, ("train", key, "fwd_bwd_s"))
        a = best(after, ("train", key, "fwd_bwd_s"))
        rows.append(f"| rasterizer fwd+bwd, SR training batch `{key}` (ms) | {b[0] * 1e3:.1f}-{b[1] * 1e3:.1f} | "
                    f"{a[0] * 1e3:.1f}-{a[1] * 1e3:.1f} | {b[0] / a[1]:.1f}-{b[1] / a[0]:.1f} |")
    b = best(before, ("fit", "ms_per_step"))
    a = best(after, ("fit", "ms_per_step"))
    rows.append(f"| fit step, 2000 Gaussians, 256 x 256 (ms) | {b[0]:.1f}-{b[1]:.1f} | {a[0]:.2f}-{a[1]:.2f} | "
                f"{b[0] / a[1]:.1f}-{b[1] / a[0]:.1f} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bench_json")
    p.add_argument("--before", nargs="*", default=[])
    p.add_argument("--after", nargs="*", default=[])
    p.add_argument("--out", required=True)
    a = p.parse_args()
    raw = json.loads(Path(a.bench_json).read_text())
    before = [json.loads(Path(f).read_text()) for f in a.before]
    after = [json.loads(Path(f).read_text()) for f in a.after]
    machine = raw.get("machine_info", {})
    first = raw["benchmarks"][0]["extra_info"] if raw.get("benchmarks") else {}
    lines = [f"# CPU: numba backend against the torch backend, PIL bicubic and the previous release", "",
             f"Machine: {first.get('device_name', '?')}; torch {first.get('torch')}, numba {first.get('numba')}; "
             f"Python {machine.get('python_version', '?')}; {raw.get('datetime', '')}.", "",
             "## pytest bench/test_bench_cpu.py --benchmark-only", "",
             "Each row: the numba time (pytest-benchmark mean) and the torch backend's (or PIL bicubic's) "
             "median over rounds interleaved with it. Tile pairs = (tile, Gaussian) pairs x 256; window "
             "pairs = pixels inside each Gaussian's window (what the numba kernels evaluate).", ""]
    lines += _bench_rows(raw)
    if before and after:
        lines += ["", "## Before / after (bench/cpu_before_after.py, runs alternated old, new, old, new)", "",
                  f"{len(before)} runs each; ranges are min-max over the runs; the ratio column pairs the "
                  "worst with the best.", ""]
        lines += _before_after_rows(before, after)
    out = Path(a.out)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"bench": raw, "before": before, "after": after}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
