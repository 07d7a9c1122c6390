"""Kernel timings on a CUDA GPU for the rare, short GPU window (called by scripts/gpu_bench.sh).

For each scene (1080p with 100k Gaussians, 4K with 500k) and mode (alpha, sum) and backend
(triton; torch on CUDA as the reference; gsplat's CUDA rasterizer when ``import gsplat`` works,
alpha mode only):

1. **Check before timing.** The backend's image, alpha and every input gradient (random
   cotangents on image and alpha) are compared with the torch backend on the same GPU; a backend
   that disagrees is reported as ``wrong`` with the errors and is never timed.
2. **Time** forward (binning + rasterization, no autograd), backward only (on a retained graph)
   and forward+backward, each the *median* of ``triton.testing.do_bench``.
3. **Rate**: Gaussian-pixel pairs per second, where pairs = binned (tile, Gaussian) pairs x
   pixels per tile (what a rasterizer without early termination evaluates; alpha mode may stop
   earlier, so this is an upper bound of the work done).

Everything runs under a wall-clock ``--deadline`` (seconds): work that would start after it is
recorded as skipped, and the JSON is written (atomically) even when a step fails.

    python3 bench/gpu_kernels.py --out RESULTS/kernels.json --md RESULTS/kernels.md --deadline 170
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # never shadow a caller's modules
    sys.path.append(_HERE)
from benchlib import Case, check_against, make_scene, renderer, run_with_grads  # noqa: E402

SCENES = [
    Case("1080p-100k", 1920, 1080, 100_000, 4.0),
    Case("4k-500k", 3840, 2160, 500_000, 4.0),
]
#: ``--device cpu`` dry run (TRITON_INTERPRET=1): checks this script's code paths without a GPU.
DRY_RUN_SCENES = [Case("colour", 40, 24, 60, 4.0)]
MODES = ("alpha", "sum")


def _env() -> dict:
    import triton

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "triton": triton.__version__}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), sms=p.multi_processor_count,
                    memory_gib=round(p.total_memory / 2**30, 1))
    try:
        import gsplat

        info["gsplat"] = getattr(gsplat, "__version__", "?")
    except Exception as exc:
        info["gsplat"] = f"unavailable ({type(exc).__name__})"
    return info


def _pairs(case: Case, m, q, o) -> int:
    from gsplat2d.kernels.binning import bin_gaussians

    b = bin_gaussians(m[None], q[None], o[None], case.width, case.height, case.tile_size)
    return int(b.gauss_ids.numel()) * case.tile_size**2


def _wall_ms(fn, grad_to_none=None, **_kw) -> float:
    """Dry-run stand-in for do_bench (CPU): one call, wall clock."""
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def timings(render, scene, gi, ga) -> dict:
    if scene[0].is_cuda:
        from triton.testing import do_bench
    else:
        do_bench = _wall_ms

    leaves = [t.clone().requires_grad_(True) for t in scene]

    def fwd():
        with torch.no_grad():
            render(*scene)

    img, alp = render(*leaves)

    def bwd():
        torch.autograd.backward([img, alp], [gi, ga], retain_graph=True)

    def fwdbwd():
        i, a = render(*leaves)
        torch.autograd.backward([i, a], [gi, ga])

    ms = {}
    for name, fn in (("fwd", fwd), ("bwd", bwd), ("fwdbwd", fwdbwd)):
        ms[name] = do_bench(fn, warmup=5, rep=60, grad_to_none=leaves, return_mode="median")
    return ms


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON results path")
    p.add_argument("--md", default=None, help="markdown table path")
    p.add_argument("--deadline", type=float, default=170.0, help="wall-clock budget, seconds")
    p.add_argument("--scenes", default=",".join(c.name for c in SCENES))
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # "cpu": dry run
    args = p.parse_args(argv)
    t0 = time.monotonic()
    left = lambda: args.deadline - (time.monotonic() - t0)  # noqa: E731

    result = {"environment": _env(), "pairs_definition":
              "binned (tile, Gaussian) pairs x tile pixels (upper bound of evaluated pairs)",
              "timing": "median of triton.testing.do_bench (warmup=5, rep=60 ms)",
              "rows": [], "skipped": [], "errors": []}

    def save():
        for path, text in ((args.out, json.dumps(result, indent=1) + "\n"),
                           (args.md, markdown(result) if args.md else None)):
            if path is None:
                continue
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)

    dev = args.device
    scenes = SCENES if dev == "cuda" else DRY_RUN_SCENES
    if dev == "cuda" and not torch.cuda.is_available():
        result["errors"].append("no CUDA device")
        save()
        return 1
    backends = ["triton", "torch"]
    if not result["environment"]["gsplat"].startswith("unavailable"):
        backends.append("gsplat")
    wanted = set(args.scenes.split(","))
    for case in [c for c in scenes if c.name in wanted or dev != "cuda"]:
        scene = make_scene(case, dev)
        pairs = _pairs(case, scene[0], scene[1], scene[3])
        for mode in MODES:
            g = torch.Generator(device="cpu").manual_seed(1)
            gi = torch.rand(case.height, case.width, case.channels, generator=g).to(dev)
            ga = torch.rand(case.height, case.width, 1, generator=g).to(dev)
            try:
                if left() < 20:
                    raise TimeoutError("deadline")
                ref = run_with_grads(renderer("torch", case, mode), scene, gi, ga)
            except Exception as exc:
                what = "skipped" if isinstance(exc, TimeoutError) else "errors"
                result[what].append(f"{case.name} {mode}: torch reference: {type(exc).__name__}: {exc}")
                save()
                continue
            for backend in backends:
                if backend == "gsplat" and mode != "alpha":
                    continue
                row = {"scene": case.name, "W": case.width, "H": case.height, "N": case.n,
                       "mode": mode, "backend": backend, "pairs": pairs}
                try:
                    if left() < 15:
                        raise TimeoutError("deadline")
                    render = renderer(backend, case, mode)
                    row["check"] = check_against(render, ref, scene, gi, ga) if backend != "torch" else {"ok": True, "reference": True}
                    if not row["check"]["ok"]:
                        row["status"] = "wrong: not timed"
                    else:
                        row["ms"] = timings(render, scene, gi, ga)
                        row["pairs_per_s"] = {k: pairs / (v / 1e3) for k, v in row["ms"].items()}
                        row["status"] = "ok"
                except TimeoutError:
                    row["status"] = "skipped: deadline"
                except Exception as exc:
                    row["status"] = f"error: {type(exc).__name__}: {str(exc)[:300]}"
                    result["errors"].append(traceback.format_exc()[-2000:])
                result["rows"].append(row)
                save()
                print(f"{case.name} {mode} {backend}: {row['status']} {row.get('ms', '')}", flush=True)
                if dev == "cuda":
                    torch.cuda.empty_cache()
    result["wall_s"] = round(time.monotonic() - t0, 1)
    save()
    return 1 if result["errors"] or any(r["status"].startswith("wrong") for r in result["rows"]) else 0


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"# Kernel timings: {env.get('gpu', '?')}",
             "",
             f"torch {env.get('torch')}, CUDA {env.get('cuda')}, triton {env.get('triton')}, "
             f"gsplat {env.get('gsplat')}. {result['timing']}. Pairs: {result['pairs_definition']}.",
             "",
             "| scene | mode | backend | fwd ms | bwd ms | fwd+bwd ms | fwd Gpairs/s | bwd Gpairs/s | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        ms = r.get("ms", {})
        pps = r.get("pairs_per_s", {})
        f = lambda d, k, s=1.0: f"{d[k] * s:.3f}" if k in d else "-"  # noqa: E731
        lines.append(f"| {r['scene']} | {r['mode']} | {r['backend']} | {f(ms, 'fwd')} | {f(ms, 'bwd')} | "
                     f"{f(ms, 'fwdbwd')} | {f(pps, 'fwd', 1e-9)} | {f(pps, 'bwd', 1e-9)} | {r['status']} |")
    for k in ("skipped", "errors"):
        if result[k]:
            lines += ["", f"{k}:"] + [f"- {e.splitlines()[-1] if e else e}" for e in result[k]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
