"""Helpers for the gsplat2d benchmarks (pytest-benchmark): device, cases, scenes, backend
adapters and the timing runner. ``conftest.py`` turns them into parametrisation and fixtures.

``pytest bench/ --benchmark-only`` times binning, forward, backward and forward+backward for
every available backend:

* ``torch``: always (CPU, or CUDA tensors on a GPU machine);
* ``numba``: on CPU where numba imports (the CPU default backend);
* ``triton``: only on CUDA, and never under ``TRITON_INTERPRET`` (interpreted kernels measure the
  interpreter, not the kernels);
* ``gsplat``: the gsplat library's CUDA rasterizer, alpha mode only, if ``import gsplat`` works
  on a CUDA machine (comparison only).

Device: CUDA if available, else CPU; ``GSPLAT2D_BENCH_DEVICE=cpu|cuda`` overrides. Under
``--benchmark-disable`` (smoke run, each function called once) only the smallest case runs.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import platform
from dataclasses import dataclass

import torch


# ----------------------------------------------------------------------------------------------
# Device and environment
# ----------------------------------------------------------------------------------------------


def bench_device() -> torch.device:
    want = os.environ.get("GSPLAT2D_BENCH_DEVICE", "").strip().lower()
    if want:
        return torch.device(want)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


DEVICE = bench_device()
IS_CUDA = DEVICE.type == "cuda"


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")


@functools.lru_cache(maxsize=None)
def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


@functools.lru_cache(maxsize=None)
def device_name(device: str = str(DEVICE)) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{cpu_model_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


@functools.lru_cache(maxsize=None)
def triton_version() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return None
    import triton

    return triton.__version__


@functools.lru_cache(maxsize=None)
def gsplat_available() -> bool:
    if not IS_CUDA:
        return False
    try:
        import gsplat  # noqa: F401

        return hasattr(gsplat, "rasterize_to_pixels") and hasattr(gsplat, "isect_tiles")
    except Exception:
        return False


#: Debug only: include the triton backend on CPU tensors under TRITON_INTERPRET=1, to check the
#: benchmark code paths without a GPU (``--benchmark-disable``; the timings would be meaningless).
ALLOW_INTERPRET = os.environ.get("GSPLAT2D_BENCH_ALLOW_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def numba_version() -> str | None:
    if importlib.util.find_spec("numba") is None:
        return None
    import numba

    return numba.__version__


def available_backends() -> list[str]:
    out = ["torch"]
    if DEVICE.type == "cpu" and numba_version() is not None:
        out.append("numba")
    if triton_version() is not None and (
        (IS_CUDA and not interpreting()) or (ALLOW_INTERPRET and interpreting() and not IS_CUDA)
    ):
        out.append("triton")
    if gsplat_available():
        out.append("gsplat")
    return out


def sync() -> None:
    if IS_CUDA:
        torch.cuda.synchronize(DEVICE)


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A random scene: N Gaussians, std devs log-normal around ``radius`` px, means uniform over
    a ``width x height`` image, C channels."""

    name: str
    width: int
    height: int
    n: int
    radius: float
    channels: int = 3
    tile_size: int = 16

    @property
    def id(self) -> str:
        c = "" if self.channels == 3 else f"-C{self.channels}"
        return f"{self.name}-{self.width}x{self.height}-N{self.n}-r{self.radius:g}{c}"


CPU_CASES = [
    Case("small", 256, 256, 1_000, 4.0),
    Case("medium", 256, 256, 10_000, 4.0),
    Case("headline", 512, 512, 20_000, 4.0),  # the CPU target: forward < 1 s on 2 cores
    Case("dense", 256, 256, 2_000, 24.0),
]

CUDA_CASES = CPU_CASES + [
    Case("features", 512, 512, 20_000, 4.0, channels=32),
    Case("hd", 1920, 1080, 100_000, 4.0),
    Case("1M", 1024, 1024, 1_000_000, 2.0),
    Case("4k-1M", 3840, 2160, 1_000_000, 3.0),
    Case("dense-1k", 1024, 1024, 10_000, 48.0),
]

STAGES = ("bin", "fwd", "bwd", "fwdbwd")
MODES = ("alpha", "sum")


# ----------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def make_scene(case: Case, device: str = str(DEVICE), seed: int = 0):
    """(means [N,2], conics [N,3], colors [N,C], opacities [N]) float32 on ``device``."""
    g = torch.Generator().manual_seed(seed)
    n = case.n
    means = torch.rand(n, 2, generator=g) * torch.tensor([case.width, case.height], dtype=torch.float32)
    s = case.radius * torch.exp(0.3 * torch.randn(n, 2, generator=g))
    th = torch.rand(n, generator=g) * math.pi
    cos, sin = torch.cos(th), torch.sin(th)
    i0, i1 = 1.0 / (s[:, 0] ** 2), 1.0 / (s[:, 1] ** 2)
    conics = torch.stack([cos * cos * i0 + sin * sin * i1, cos * sin * (i0 - i1), sin * sin * i0 + cos * cos * i1], -1)
    colors = torch.rand(n, case.channels, generator=g)
    opacities = 0.1 + 0.8 * torch.rand(n, generator=g)
    return tuple(t.to(device).contiguous() for t in (means, conics, colors, opacities))


# ----------------------------------------------------------------------------------------------
# Backend adapters: bin(scene) and render(scene, mode) -> (image, alpha)
# ----------------------------------------------------------------------------------------------


def _gsplat_radii(means, conics, opacities):
    a, b, c = conics.unbind(-1)
    det = (a * c - b * b).clamp_min(1e-12)
    r2 = 2.0 * torch.log((255.0 * opacities).clamp_min(1.0))
    rx = torch.ceil(torch.sqrt(r2 * c / det))
    ry = torch.ceil(torch.sqrt(r2 * a / det))
    return torch.stack([rx, ry], -1).to(torch.int32)


def _gsplat_bin(case: Case, means, conics, opacities):
    import gsplat

    tw = math.ceil(case.width / case.tile_size)
    th = math.ceil(case.height / case.tile_size)
    radii = _gsplat_radii(means, conics, opacities)
    depths = torch.arange(means.shape[0], device=means.device, dtype=torch.float32)[None]
    try:  # gsplat >= 1.5: radii [..., N, 2]
        _tpg, isect_ids, flatten_ids = gsplat.isect_tiles(means[None], radii[None], depths, case.tile_size, tw, th)
    except Exception:  # older: radii [C, N]
        _tpg, isect_ids, flatten_ids = gsplat.isect_tiles(
            means[None], radii.amax(-1)[None], depths, case.tile_size, tw, th
        )
    offsets = gsplat.isect_offset_encode(isect_ids, 1, tw, th)
    return offsets, flatten_ids


def binner(backend: str, case: Case):
    """A no-arg-after-scene binning function for ``backend``."""
    if backend == "torch":
        from gsplat2d.backends import torch_backend

        return lambda m, q, c, o: torch_backend.bin_gaussians(m[None], q[None], o[None], case.width, case.height, case.tile_size)
    if backend == "triton":
        from gsplat2d.kernels import binning

        return lambda m, q, c, o: binning.bin_gaussians(m[None], q[None], o[None], case.width, case.height, case.tile_size)
    if backend == "numba":
        from gsplat2d.backends import numba_backend

        return lambda m, q, c, o: numba_backend.bin_gaussians(m[None], q[None], o[None], case.width, case.height,
                                                              case.tile_size)
    if backend == "gsplat":
        return lambda m, q, c, o: _gsplat_bin(case, m, q, o)
    raise ValueError(backend)


def renderer(backend: str, case: Case, mode: str):
    """``render(means, conics, colors, opacities) -> (image, alpha)`` for ``backend``."""
    if backend in ("torch", "triton", "numba"):
        import gsplat2d

        def render(m, q, c, o):
            return gsplat2d.rasterize(m, q, c, o, case.width, case.height, mode=mode,
                                      tile_size=case.tile_size, backend=backend)

        return render
    if backend == "gsplat":
        import gsplat

        assert mode == "alpha", "gsplat has no sum mode"

        def render(m, q, c, o):
            offsets, flatten_ids = _gsplat_bin(case, m.detach(), q.detach(), o.detach())
            return gsplat.rasterize_to_pixels(m[None], q[None], c[None], o[None], case.width, case.height,
                                              case.tile_size, offsets, flatten_ids)

        return render
    raise ValueError(backend)


@functools.lru_cache(maxsize=16)
def pair_count(case: Case, device: str = str(DEVICE)) -> int:
    """Tile-Gaussian pairs of ``case`` (the torch binning; every backend bins the same pairs up to
    gsplat's own radius rule)."""
    from gsplat2d.backends import torch_backend

    m, q, _c, o = make_scene(case, device)
    b = torch_backend.bin_gaussians(m[None], q[None], o[None], case.width, case.height, case.tile_size)
    return int(b.gauss_ids.numel())


# ----------------------------------------------------------------------------------------------
# Correctness before timing
# ----------------------------------------------------------------------------------------------


def run_with_grads(render, scene, gi, ga):
    """``(image, alpha, [grad of each scene tensor])`` for cotangents ``gi``, ``ga``."""
    leaves = [t.clone().requires_grad_(True) for t in scene]
    img, alp = render(*leaves)
    torch.autograd.backward([img, alp], [gi, ga])
    return img.detach(), alp.detach(), [t.grad for t in leaves]


def _rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """RMS of the difference relative to the RMS of the reference (absolute if that is 0)."""
    d = (a.double() - b.double()).pow(2).mean().sqrt().item()
    s = b.double().pow(2).mean().sqrt().item()
    return d / s if s > 0 else d


def check_against(render, ref, scene, gi, ga) -> dict:
    """Errors of ``render`` against ``ref = run_with_grads(torch backend, ...)``: outputs and
    every input gradient; ``ok`` is False for a wrong result. A few pixels may legitimately take
    the other side of the 1/255 or 1e-4 thresholds (float rounding), hence the pixel fraction."""
    img, alp, grads = run_with_grads(render, scene, gi, ga)
    rimg, ralp, rgrads = ref
    out = {
        "image_max_abs": (img - rimg).abs().max().item(),
        "image_frac_over_1e-3": ((img - rimg).abs() > 1e-3).float().mean().item(),
        "alpha_max_abs": (alp - ralp).abs().max().item(),
    }
    for name, g, r in zip(("means", "conics", "colors", "opacities"), grads, rgrads):
        out[f"grad_{name}_rel_rms"] = _rel_rms(g, r) if g is not None else None
    out["ok"] = bool(out["image_frac_over_1e-3"] < 1e-4 and all(
        v is not None and v < 1e-3 for k, v in out.items() if k.startswith("grad_")))
    return out


@functools.lru_cache(maxsize=64)
def verified(case: Case, backend: str, mode: str) -> dict:
    """``check_against`` the torch backend on the benchmark device (cached per case)."""
    scene = make_scene(case, str(DEVICE))
    g = torch.Generator(device="cpu").manual_seed(1)
    gi = torch.rand(case.height, case.width, case.channels, generator=g).to(DEVICE)
    ga = torch.rand(case.height, case.width, 1, generator=g).to(DEVICE)
    ref = run_with_grads(renderer("torch", case, mode), scene, gi, ga)
    return check_against(renderer(backend, case, mode), ref, scene, gi, ga)


# ----------------------------------------------------------------------------------------------
# Timing helper
# ----------------------------------------------------------------------------------------------

#: Target seconds of timed work per benchmark (after one warm-up call).
TIME_BUDGET_S = float(os.environ.get("GSPLAT2D_BENCH_BUDGET", "1.0" if IS_CUDA else "3.0"))
MIN_ROUNDS = 3 if IS_CUDA else 1
MAX_ROUNDS = 100 if IS_CUDA else 20


@dataclass
class Runner:
    benchmark: object

    def run(self, fn, *, setup=None, case: Case, backend: str, mode: str, stage: str):
        """Time ``fn`` (CUDA-synchronised) with ``benchmark.pedantic``; rounds chosen from one
        warm-up call so each benchmark takes about ``TIME_BUDGET_S``; fill ``extra_info``."""
        import time

        bm = self.benchmark
        if backend != "torch" and mode is not None:
            # never time a wrong result: compare outputs and gradients with the torch backend
            chk = verified(case, backend, mode)
            assert chk["ok"], f"{backend} {mode} {case.id} disagrees with the torch backend: {chk}"
            bm.extra_info["check"] = chk

        def timed(*args, **kwargs):
            out = fn(*args, **kwargs)
            sync()
            return out

        def call_once():
            args, kwargs = setup() if setup is not None else ((), {})
            sync()
            t0 = time.perf_counter()
            timed(*args, **kwargs)
            return time.perf_counter() - t0

        bm.group = f"{stage} {mode} {case.id}" if mode else f"{stage} {case.id}"
        info = bm.extra_info
        info.update(
            stage=stage, backend=backend, mode=mode, case=case.name, N=case.n, W=case.width,
            H=case.height, C=case.channels, tile_size=case.tile_size, radius_px=case.radius,
            device=str(DEVICE), device_name=device_name(), torch=torch.__version__,
            triton=triton_version(), numba=numba_version(), torch_threads=torch.get_num_threads(),
        )
        info["pairs"] = pair_count(case)

        if getattr(bm, "disabled", False):  # --benchmark-disable: pedantic runs it once, untimed
            bm.pedantic(timed, setup=setup, rounds=1, iterations=1)
            return
        est = min(call_once(), call_once()) if IS_CUDA else call_once()  # warm-up (+ compile)
        rounds = int(max(MIN_ROUNDS, min(MAX_ROUNDS, TIME_BUDGET_S // max(est, 1e-6))))
        if setup is not None:
            bm.pedantic(timed, setup=setup, rounds=rounds, iterations=1, warmup_rounds=0)
        else:
            bm.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=0)
        stats = getattr(bm, "stats", None)
        mean = getattr(getattr(stats, "stats", None), "mean", None)
        if mean:
            info["mean_s"] = mean
            info["gauss_pixel_evals_per_s"] = info["pairs"] * case.tile_size**2 / mean
