"""Markdown tables of instructions per (Gaussian, pixel) pair from the committed cost JSONs.

    python bench/cost_table.py > bench/results/kernel-cost.md

Inputs (all in bench/results/, produced by the same :mod:`gsplat2d.kernels.cost` method):
``kernel-cost-triton3.9.json`` / ``kernel-cost-triton3.6.json`` (``python -m
gsplat2d.kernels.report --cost --json``), ``kernel-cost-before-2497094.json`` (the kernels before
the redesign) and ``gsplat-1.5.3-cost-sm90-sm80.json`` (``python bench/gsplat_cost.py``).
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
H100 = 132 * 1.98e9 * 128  # issue slots per second


def _load(name: str) -> dict:
    with open(os.path.join(HERE, name)) as f:
        return json.load(f)


def _ours(report: dict, arch: int) -> dict:
    return {r["kernel"]: r for r in report["records"] if r.get("cost") and r["arch"] == arch}


def _row(label, full, cheap, regs) -> str:
    g = H100 / full["total"] / 1e9
    ch = f"{cheap['total']:.1f}" if cheap is not None else "-"
    return (f"| {label} | {full['total']:.1f} | {ch} | {full['mufu']:.2f} | {full['shfl']:.2f} | "
            f"{regs} | {g:.0f} |")


def main() -> int:
    now, now36 = _load("kernel-cost-triton3.9.json"), _load("kernel-cost-triton3.6.json")
    before = _load("kernel-cost-before-2497094.json")
    gs = _load("gsplat-1.5.3-cost-sm90-sm80.json")
    head = ("| kernel (sm_90, C=3, float) | instr/pair full | cheap | MUFU/pair | SHFL/pair | "
            "registers | issue-bound Gpairs/s (H100) |\n|---|---|---|---|---|---|---|")
    out = ["# Instructions per (Gaussian, pixel) pair", "",
           "Static SASS counts (method: docs/design.md, code: gsplat2d/kernels/cost.py); "
           "\"full\": longest path through one loop iteration, \"cheap\": shortest (the path a "
           "Gaussian that no pixel of the block can use takes). Issue bound = 3.35e13 "
           "instruction slots/s (H100 SXM) / instructions per pair.", "", head]
    o, o36, b = _ours(now, 90), _ours(now36, 90), _ours(before, 90)
    for name, key in (("fwd", "rasterize_to_pixels_3dgs_fwd_kernel"),
                      ("bwd", "rasterize_to_pixels_3dgs_bwd_kernel")):
        k = gs["kernels"][key]["arch"]["sm_90"]
        for reading in ("as_compiled", "steady_state"):
            p = k[reading]["per_pair"]["with_batch_loop"]
            out.append(_row(f"gsplat 1.5.3 {name} ({reading.replace('_', ' ')})", p["full"], p["cheap"],
                            k["registers"]))
    for label, recs, triton in (("gsplat2d before", b, before["environment"]["triton"]),
                                ("gsplat2d now", o, now["environment"]["triton"]),
                                ("gsplat2d now", o36, now36["environment"]["triton"])):
        for kern in ("rasterize_fwd[alpha,TILE=16,C=3]", "rasterize_fwd[sum,TILE=16,C=3]",
                     "rasterize_bwd[alpha,TILE=16,C=3]", "rasterize_bwd[sum,TILE=16,C=3]"):
            r = recs[kern]
            cheap = None if label.endswith("before") else r["cost"]["paths"]["cheap"]
            short = kern.split("[")[0].replace("rasterize_", "") + " " + kern.split("[")[1].split(",")[0]
            out.append(_row(f"{label} {short} (triton {triton})", r["cost"]["paths"]["full"], cheap,
                            r["registers"]))
    out += ["", "## Every variant (triton " + now["environment"]["triton"] + ", sm_90)", "",
            "| variant | instr/pair full | cheap | MUFU | SHFL | registers | before: full | before: registers |",
            "|---|---|---|---|---|---|---|---|"]
    for kern, r in o.items():
        f, c = r["cost"]["paths"]["full"], r["cost"]["paths"]["cheap"]
        old = b.get(kern)
        ob = f"{old['cost']['paths']['full']['total']:.1f}" if old else "-"
        orr = str(old["registers"]) if old else "-"
        out.append(f"| {kern} | {f['total']:.1f} | {c['total']:.1f} | {f['mufu']:.2f} | {f['shfl']:.2f} | "
                   f"{r['registers']} | {ob} | {orr} |")
    out.append("")
    out.append("Large C: cost per pair for all channels of a program (forward: per channel block of "
               "BLOCK_C channels, see launch_config; backward: all C channels).")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
