"""The workload model's scenes timed on a CUDA GPU, next to the model's ESTIMATE (called by
scripts/gpu_bench.sh).

``bench/workload.py`` estimates H100 time of our rasterizer kernels from a CPU replay; this
script measures the same scenes on the GPU of the short GPU window. Only the scenes that need
nothing outside the repository can be built there (``SCENES_HERE``: the seeded random 1080p and
4K scenes); they are built by ``workload.build_scene`` itself (same seeds, sizes, Gaussians in
pixel units), colours and cotangents are seeded here (the model does not depend on them).

For each scene, our Triton rasterizer through the public API (``backend="triton"``):

1. **Check before timing.** Image, alpha and every input gradient (random cotangents on image
   and alpha) of ``gsplat2d.rasterize`` and of ``bin_gaussians`` + ``rasterize_binned`` are
   compared with the torch backend on the same GPU (``benchlib.check_against``, the rule of
   ``bench/gpu_kernels.py``); a result that disagrees is reported ``wrong: not timed`` and is
   never timed.
2. **Time** (median of ``triton.testing.do_bench``, CUDA events, warm-up, repeats): binning
   alone (``bin_gaussians``), the forward rasterize kernel alone (``rasterize_binned`` on a
   prebuilt binning, no autograd: what the model estimates), the forward with binning
   (``rasterize``), the backward alone (autograd on a retained ``rasterize_binned`` graph) and
   forward+backward. Also the GPU busy time of the kernel-only forward and the backward from
   ``torch.profiler`` (sum of the device kernels' times per call, without the host's launch
   overhead, which the model leaves out too).
3. **Next to the estimate** from the committed JSON (``ESTIMATE``): ours at the scene's own
   mode and C (``scenes[name].ours``), ours alpha C = 3 (``ours_alpha_c3``, like for like with
   gsplat; the same numbers on alpha C = 3 scenes) and gsplat 1.5.3's estimate; the ratio
   measured / estimated (on the profiler's kernel time when there is one, else do_bench's); a
   rate in (tile, Gaussian) pairs per second from the model's pair count (``pairs_ours``), and
   the pairs binned here (a different count means the scene is not the model's: reported as an
   error). gsplat's CUDA rasterizer is timed too when ``import gsplat`` works (alpha scenes;
   ``not installed`` otherwise).

Everything runs under a wall-clock ``--deadline`` (seconds); the JSON and markdown are written
(atomically) after each row and also when something fails. Without CUDA it exits 1 at once with
one line saying so. ``--device cpu`` (hidden; TRITON_INTERPRET=1) is a dry run of the code paths
on one tiny random scene, for the CPU tests; its times mean nothing.

    python3 bench/gpu_workload.py --out RESULTS/workload.json --md RESULTS/workload.md --deadline 40
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(BENCH) not in sys.path:  # a script run has it first already; never shadow a caller's modules
    sys.path.append(str(BENCH))

#: The committed model estimate the measurements are put next to.
ESTIMATE = REPO / "bench" / "results" / "workload-model-h100-estimate-2026-12-07.json"
#: Workload scenes that need no data outside the repository (``workload.build_scene`` names).
SCENES_HERE = ("random-1080p-100k", "random-4k-500k")
#: Dry-run scene (``--device cpu``): a workload-style random scene, not in the estimate.
DRY_RUN_SCENE = "dry-run-32x16-12"
BACKEND = "triton"
TIMING = "median of triton.testing.do_bench (warmup=5, rep=60 ms; CUDA events)"
PAIRS_DEFINITION = "(tile, Gaussian) pairs of the model's binning (estimate JSON pairs_ours)"
PAIRS_TOLERANCE = 1e-3  # relative: binning here vs the model's (float32 on another device)


# ----------------------------------------------------------------------------------- pieces
def build(name: str):
    """``(workload.Launch, info)`` for ``name``: ``workload.build_scene`` for the model's scenes
    (its seeds and sizes), ``workload.random_scene`` for the dry run. One launch of one image."""
    import workload as wl

    if name == DRY_RUN_SCENE:
        launches, info = [wl.Launch([wl.random_scene(32, 16, 12, 3)], "alpha", 3)], {
            "what": "32x16, 12 random Gaussians, seed 3 (dry run)", "mode": "alpha", "C": 3}
    else:
        # the random scenes read nothing from data or cache
        launches, info = wl.build_scene(name, REPO.parent / "shared" / "data", Path(os.devnull))
    if len(launches) != 1 or len(launches[0].images) != 1:
        raise ValueError(f"{name}: {len(launches)} launches; only one-launch, one-image scenes are timed here")
    return launches[0], info


def scene_tensors(launch, device, seed: int = 0):
    """``(means, conics, colors, opacities)`` float32 on ``device`` for the launch's image:
    geometry exactly the model's (pixel units), colours ``U(0, 1)`` with ``launch.C`` channels
    from a seeded generator (the model does not depend on colours)."""
    img = launch.images[0]
    g = torch.Generator().manual_seed(seed)
    m = torch.as_tensor(img.means, dtype=torch.float32)
    q = torch.as_tensor(img.conics, dtype=torch.float32)
    o = torch.as_tensor(img.opacities, dtype=torch.float32)
    c = torch.rand(m.shape[0], launch.C, generator=g)
    return tuple(t.to(device).contiguous() for t in (m, q, c, o))


def cotangents(W: int, H: int, C: int, device, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(H, W, C, generator=g).to(device), torch.rand(H, W, 1, generator=g).to(device))


def load_estimate(name: str, path: Path = ESTIMATE) -> Optional[dict]:
    """The model's numbers for scene ``name`` (None if it is not in ``path``): pairs, and
    forward / backward microseconds of ours at the scene's own mode and C (``ours``), ours alpha
    C = 3 (``ours_alpha_c3``) and gsplat 1.5.3 (``gsplat``)."""
    doc = json.loads(Path(path).read_text())
    r = doc["scenes"].get(name)
    if r is None:
        return None
    us = lambda who: {k: r[who][k]["t_s"] * 1e6 for k in ("fwd", "bwd")}  # noqa: E731
    return {"source": str(Path(path).relative_to(REPO)) if Path(path).is_relative_to(REPO) else str(path),
            "label": doc.get("label", ""), "pairs": int(r["pairs_ours"]), "pairs_gsplat": int(r["pairs_gsplat"]),
            "mode": r["info"]["mode"], "C": int(r["info"]["C"]),
            "ours_us": us("ours"), "ours_alpha_c3_us": us("ours_alpha_c3"), "gsplat_us": us("gsplat")}


def renderers(W: int, H: int, mode: str, backend: str) -> Dict[str, Callable]:
    """``render(means, conics, colors, opacities) -> (image, alpha)`` through the public API:
    ``rasterize`` (binning included) and ``bin_gaussians`` + ``rasterize_binned``."""
    import gsplat2d

    def full(m, q, c, o):
        return gsplat2d.rasterize(m, q, c, o, W, H, mode=mode, backend=backend)

    def staged(m, q, c, o):
        return gsplat2d.rasterize_binned(gsplat2d.bin_gaussians(m, q, o, W, H, backend=backend), c, mode=mode)

    return {"rasterize": full, "bin+rasterize_binned": staged}


def check(render_by_path: Dict[str, Callable], ref, scene, gi, ga) -> dict:
    """``benchlib.check_against`` the torch reference for every path; ``ok`` only if all agree."""
    from benchlib import check_against

    out = {p: check_against(r, ref, scene, gi, ga) for p, r in render_by_path.items()}
    out["ok"] = all(v["ok"] for v in out.values())
    return out


def wall_ms(fn, grad_to_none=None, **_kw) -> float:
    """Dry-run stand-in for do_bench (CPU): one call, wall clock (as bench/gpu_kernels.py)."""
    from gpu_kernels import _wall_ms

    return _wall_ms(fn, grad_to_none)


def cuda_ms(fn, grad_to_none=None) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=5, rep=60, grad_to_none=grad_to_none, return_mode="median")


def device_us_per_call(events, calls: int) -> Dict[str, float]:
    """Per-kernel device time per call (microseconds) from ``torch.profiler``'s events: only
    the device's own events (kernels, memsets, copies: ``device_type`` not CPU), whose
    ``device_time_total`` (older torch ``cuda_time_total``) is their duration; a CPU op's device
    time repeats its kernels' and is left out. ``total``: their sum (the GPU busy time)."""
    from torch.autograd import DeviceType

    out: Dict[str, float] = {}
    for e in events:
        if getattr(e, "device_type", DeviceType.CPU) == DeviceType.CPU:
            continue
        t = getattr(e, "device_time_total", None)
        if t is None:
            t = getattr(e, "cuda_time_total", 0.0)
        if t and t > 0:
            out[e.name] = out.get(e.name, 0.0) + t / calls
    out["total"] = sum(out.values())
    return out


def profile_device_us(fn, calls: int = 10, grad_to_none=None) -> Optional[Dict[str, float]]:
    """GPU busy time of ``fn`` per call (kernels only, no host overhead), or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            for t in grad_to_none or ():
                t.grad = None
            fn()
        torch.cuda.synchronize()
    out = device_us_per_call(prof.events(), calls)
    if out["total"] <= 0:  # no device events recorded (no CUPTI): no number rather than 0
        raise RuntimeError("the profiler recorded no device time")
    return out


def measure(scene, W: int, H: int, mode: str, gi, ga, backend: str, timer, profile=profile_device_us) -> dict:
    """Times in microseconds: ``bin``, ``fwd_kernel`` (rasterize_binned on a prebuilt binning),
    ``fwd`` (rasterize, binning included), ``bwd`` (retained graph of rasterize_binned),
    ``fwdbwd`` (rasterize + backward); ``gpu_us`` the profiler's kernel times where it runs."""
    import gsplat2d

    m, q, c, o = scene
    leaves = [t.clone().requires_grad_(True) for t in scene]
    binned = gsplat2d.bin_gaussians(m, q, o, W, H, backend=backend)

    def bin_():
        gsplat2d.bin_gaussians(m, q, o, W, H, backend=backend)

    def fwd_kernel():
        with torch.no_grad():
            gsplat2d.rasterize_binned(binned, c, mode=mode)

    def fwd():
        with torch.no_grad():
            gsplat2d.rasterize(m, q, c, o, W, H, mode=mode, backend=backend)

    lb = gsplat2d.bin_gaussians(leaves[0], leaves[1], leaves[3], W, H, backend=backend)
    img, alp = gsplat2d.rasterize_binned(lb, leaves[2], mode=mode)

    def bwd():
        torch.autograd.backward([img, alp], [gi, ga], retain_graph=True)

    def fwdbwd():
        i, a = gsplat2d.rasterize(*leaves, W, H, mode=mode, backend=backend)
        torch.autograd.backward([i, a], [gi, ga])

    ms = {"bin": timer(bin_), "fwd_kernel": timer(fwd_kernel), "fwd": timer(fwd),
          "bwd": timer(bwd, grad_to_none=leaves), "fwdbwd": timer(fwdbwd, grad_to_none=leaves)}
    out = {"us": {k: v * 1e3 for k, v in ms.items()}, "pairs_binned": int(binned.binning.gauss_ids.numel())}
    gpu = {}
    for k, fn in (("fwd_kernel", fwd_kernel), ("bwd", bwd)):
        try:
            p = profile(fn, grad_to_none=leaves if k == "bwd" else None)
        except Exception as exc:  # the profiler is a bonus: its failure leaves do_bench's numbers
            out.setdefault("notes", []).append(f"profiler {k}: {type(exc).__name__}: {str(exc)[:200]}")
            p = None
        if p is not None:
            gpu[k] = p
    if gpu:
        out["gpu_us"] = gpu
    return out


def compare(row: dict, est: Optional[dict]) -> None:
    """Add the estimate, measured / estimated ratios and rates to ``row`` (in place)."""
    if est is None:
        row["estimate"] = None
        return
    row["estimate"] = est
    t = row.get("us")
    if not t:
        return
    gpu = row.get("gpu_us", {})
    basis = "profiler kernel time" if "fwd_kernel" in gpu and "bwd" in gpu else "do_bench"
    meas = {"fwd": gpu["fwd_kernel"]["total"] if basis != "do_bench" else t["fwd_kernel"],
            "bwd": gpu["bwd"]["total"] if basis != "do_bench" else t["bwd"]}
    row["ratio_basis"] = basis
    row["measured_over_estimate"] = {k: meas[k] / est["ours_us"][k] for k in ("fwd", "bwd")}
    row["pairs_per_s"] = {k: est["pairs"] / (t[k] * 1e-6) for k in ("fwd_kernel", "fwd", "bwd", "fwdbwd")}


def gsplat_status() -> str:
    try:
        import gsplat
    except ModuleNotFoundError:
        return "not installed"
    except Exception as exc:
        return f"not importable ({type(exc).__name__})"
    return getattr(gsplat, "__version__", "?")


def environment() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as exc:
        info["triton"] = f"unavailable ({type(exc).__name__})"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), sms=p.multi_processor_count,
                    memory_gib=round(p.total_memory / 2**30, 1))
    info["gsplat"] = gsplat_status()
    return info


# ----------------------------------------------------------------------------------- driver
def run_scene(name: str, device: str, left: Callable[[], float], timer, estimate_path: Path = ESTIMATE,
              backend: str = BACKEND, gsplat: bool = False) -> List[dict]:
    """Rows for one scene: ours (checked, then timed), and gsplat when asked (alpha only)."""
    from benchlib import run_with_grads

    launch, info = build(name)
    img0 = launch.images[0]
    W, H, mode, C = img0.width, img0.height, launch.mode, launch.C
    est = load_estimate(name, estimate_path)
    base = {"scene": name, "what": info["what"], "W": W, "H": H, "N": int(img0.means.shape[0]), "mode": mode, "C": C}
    scene = scene_tensors(launch, device)
    gi, ga = cotangents(W, H, C, device)
    if left() < 10:
        raise TimeoutError("deadline")
    ref = run_with_grads(renderers(W, H, mode, "torch")["rasterize"], scene, gi, ga)
    rows = []
    row = {**base, "backend": backend}
    row["check"] = check(renderers(W, H, mode, backend), ref, scene, gi, ga)
    if not row["check"]["ok"]:
        row["status"] = "wrong: not timed"
    elif left() < 5:
        row["status"] = "skipped: deadline"
    else:
        row.update(measure(scene, W, H, mode, gi, ga, backend, timer))
        row["status"] = "ok"
        if est is not None and abs(row["pairs_binned"] - est["pairs"]) > PAIRS_TOLERANCE * est["pairs"]:
            row["status"] = (f"scene differs from the model's: {row['pairs_binned']:,} pairs binned here, "
                             f"{est['pairs']:,} in the estimate")
    compare(row, est)
    rows.append(row)
    if gsplat and mode == "alpha" and left() > 5:
        rows.append(gsplat_row(base, scene, ref, gi, ga, est, timer))
    return rows


def gsplat_row(base: dict, scene, ref, gi, ga, est, timer) -> dict:
    """gsplat's CUDA rasterizer (its own binning, benchlib's adapter): checked, then forward (with
    its binning), backward, forward+backward."""
    from benchlib import Case, check_against, renderer

    row = {**base, "backend": f"gsplat {gsplat_status()}"}
    try:
        batched = renderer("gsplat", Case(base["scene"], base["W"], base["H"], base["N"], 0.0, base["C"]), "alpha")

        def render(*a):  # gsplat renders [1, H, W, *]
            return tuple(t[0] for t in batched(*a))

        row["check"] = check_against(render, ref, scene, gi, ga)
        if not row["check"]["ok"]:
            row["status"] = "wrong: not timed"
            return row
        leaves = [t.clone().requires_grad_(True) for t in scene]
        img, alp = render(*leaves)

        def fwd():
            with torch.no_grad():
                render(*scene)

        def bwd():
            torch.autograd.backward([img, alp], [gi, ga], retain_graph=True)

        def fwdbwd():
            i, a = render(*leaves)
            torch.autograd.backward([i, a], [gi, ga])

        row["us"] = {"fwd": timer(fwd) * 1e3, "bwd": timer(bwd, grad_to_none=leaves) * 1e3,
                     "fwdbwd": timer(fwdbwd, grad_to_none=leaves) * 1e3}
        if est is not None:
            row["estimate_gsplat_us"] = est["gsplat_us"]
        row["status"] = "ok"
    except Exception as exc:
        row["status"] = f"error: {type(exc).__name__}: {str(exc)[:300]}"
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON results path")
    p.add_argument("--md", default=None, help="markdown table path")
    p.add_argument("--deadline", type=float, default=45.0, help="wall-clock budget, seconds")
    p.add_argument("--scenes", default=",".join(SCENES_HERE))
    p.add_argument("--estimate", default=str(ESTIMATE), help="the model's estimate JSON")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # "cpu": dry run
    args = p.parse_args(argv)
    t0 = time.monotonic()
    left = lambda: args.deadline - (time.monotonic() - t0)  # noqa: E731
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():  # before anything else: one line, exit 1
        print("gpu_workload: no CUDA device (torch.cuda.is_available() is False): nothing measured", file=sys.stderr)
        result = {"label": "no CUDA device: nothing measured", "environment": environment(), "estimate": args.estimate,
                  "timing": TIMING, "pairs_definition": PAIRS_DEFINITION, "rows": [], "skipped": [], "errors": ["no CUDA device: nothing measured"]}
        _save(result, args.out, args.md)
        return 1
    result = {"label": "MEASURED on a GPU, next to the workload model's ESTIMATE (H100 SXM)",
              "environment": environment(), "estimate": args.estimate,
              "timing": TIMING if dev == "cuda" else "dry run: one call each, wall clock (times mean nothing)",
              "pairs_definition": PAIRS_DEFINITION,
              "rows": [], "skipped": [], "errors": []}

    def save():
        _save(result, args.out, args.md)

    timer = cuda_ms if dev == "cuda" else wall_ms
    scenes = args.scenes.split(",") if dev == "cuda" else [DRY_RUN_SCENE]
    gs = dev == "cuda" and not result["environment"]["gsplat"].startswith("not ")
    for name in scenes:
        try:
            if left() < 10:
                raise TimeoutError("deadline")
            rows = run_scene(name, dev, left, timer, Path(args.estimate), backend=BACKEND, gsplat=gs)
            result["rows"] += rows
            for r in rows:
                print(f"{name} {r['backend']}: {r['status']} {r.get('us', '')}", flush=True)
        except TimeoutError:
            result["skipped"].append(f"{name}: deadline")
        except Exception as exc:
            result["errors"].append(f"{name}: {traceback.format_exc()[-2000:]}")
            print(f"{name}: error {type(exc).__name__}: {exc}", flush=True)
        save()
        if dev == "cuda":
            torch.cuda.empty_cache()
    result["wall_s"] = round(time.monotonic() - t0, 1)
    save()
    bad = [r for r in result["rows"] if r["status"] != "ok"]
    return 1 if result["errors"] or bad or not result["rows"] else 0


def _save(result: dict, out: str, md: Optional[str]) -> None:
    """JSON (and markdown) written atomically."""
    for path, text in ((out, json.dumps(result, indent=1, default=float) + "\n"), (md, markdown(result) if md else None)):
        if path is None:
            continue
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)


def markdown(result: dict) -> str:
    env = result["environment"]
    f = lambda d, k, s=1.0, p=1: f"{d[k] * s:.{p}f}" if d and d.get(k) is not None else "-"  # noqa: E731
    lines = [f"# Workload scenes measured on {env.get('gpu', 'no GPU')} next to the model's H100 estimate", "",
             f"torch {env.get('torch')}, CUDA {env.get('cuda')}, triton {env.get('triton')}, gsplat {env.get('gsplat')}. "
             f"Ours = backend `triton` through the public API, checked against the torch backend on the same device "
             f"before timing. {result['timing']}. Estimate: `{Path(result['estimate']).name}` (ESTIMATE of the kernels "
             "alone on an H100 SXM; no launch overhead). Kernel-only forward = `rasterize_binned` on a prebuilt binning; "
             "GPU = the profiler's device kernel time per call. Pairs: " + result["pairs_definition"] + ".", "",
             "| scene | backend | mode, C | pairs: model / binned here | bin us | fwd kernel us (GPU) | fwd with binning us | "
             "bwd us (GPU) | fwd+bwd us | estimate fwd / bwd us: own mode; alpha C=3 | measured / estimate fwd, bwd | "
             "Mpairs/s fwd kernel, bwd | status |",
             "|" + "---|" * 13]
    for r in result["rows"]:
        us, gpu, est = r.get("us", {}), r.get("gpu_us", {}), r.get("estimate") or {}
        g = lambda k: f" ({gpu[k]['total']:.1f})" if k in gpu else ""  # noqa: E731
        if r["backend"].startswith("gsplat"):
            e = r.get("estimate_gsplat_us")
            est_s = f"gsplat {f(e, 'fwd')} / {f(e, 'bwd')}" if e else "-"
            ratio = f"{us['fwd'] / e['fwd']:.2f}, {us['bwd'] / e['bwd']:.2f} (fwd incl. binning)" if e and us else "-"
            pairs = f"{est['pairs_gsplat']:,} / -" if est else "-"
        else:
            est_s = (f"{f(est.get('ours_us'), 'fwd')} / {f(est.get('ours_us'), 'bwd')}; "
                     f"{f(est.get('ours_alpha_c3_us'), 'fwd')} / {f(est.get('ours_alpha_c3_us'), 'bwd')}") if est else "no estimate"
            mo = r.get("measured_over_estimate")
            ratio = f"{mo['fwd']:.2f}, {mo['bwd']:.2f} ({r['ratio_basis']})" if mo else "-"
            pairs = f"{est['pairs']:,} / {r['pairs_binned']:,}" if est and "pairs_binned" in r else (
                f"- / {r['pairs_binned']:,}" if "pairs_binned" in r else "-")
        pps = r.get("pairs_per_s", {})
        lines.append(f"| {r['scene']} | {r['backend']} | {r['mode']}, {r['C']} | {pairs} | {f(us, 'bin')} | "
                     f"{f(us, 'fwd_kernel')}{g('fwd_kernel')} | {f(us, 'fwd')} | {f(us, 'bwd')}{g('bwd')} | "
                     f"{f(us, 'fwdbwd')} | {est_s} | {ratio} | {f(pps, 'fwd_kernel', 1e-6, 0)}, {f(pps, 'bwd', 1e-6, 0)} | "
                     f"{r['status']} |")
    if env.get("gpu") and "H100" not in env["gpu"]:
        lines += ["", f"The model is for an H100 SXM; this GPU is {env['gpu']}."]
    for k in ("skipped", "errors"):
        if result[k]:
            lines += ["", f"{k}:"] + [f"- {e.strip().splitlines()[-1] if e.strip() else e}" for e in result[k]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
