"""Super-resolution timings: encode once (the network), then render at several scales (the
rasterizer only) with the shipped default model.

``pytest bench/test_bench_sr.py --benchmark-only``. LR 96x96 on CPU, 480x270 on CUDA (a 4K
frame at x8). ``extra_info`` records the output megapixels per second of each render.
"""

from __future__ import annotations

import pytest
import torch

from benchlib import DEVICE, IS_CUDA, TIME_BUDGET_S, device_name, sync, triton_version

LR_SIZE = (480, 270) if IS_CUDA else (96, 96)
SCALES = (2.0, 4.0, 8.0) if IS_CUDA else (2.0, 4.0)


@pytest.fixture(scope="module", params=["feature", "colour"])
def model_and_lr(request):
    """Each shipped model: the default feature model and the colour model."""
    from gsplat2d.sr.model import load_model

    torch.manual_seed(0)
    model = load_model(request.param, map_location=DEVICE)
    lr = torch.rand(1, 3, LR_SIZE[1], LR_SIZE[0], device=DEVICE)
    return model, lr


def _info(benchmark, **kw):
    benchmark.extra_info.update(
        device=str(DEVICE), device_name=device_name(), torch=torch.__version__, triton=triton_version(),
        torch_threads=torch.get_num_threads(), lr_w=LR_SIZE[0], lr_h=LR_SIZE[1], **kw,
    )


def _rounds(fn) -> int:
    import time

    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    dt = time.perf_counter() - t0
    return max(1, min(50, int(TIME_BUDGET_S / max(dt, 1e-6))))


def test_sr_encode(benchmark, model_and_lr):
    model, lr = model_and_lr
    benchmark.group = "sr encode"
    with torch.no_grad():
        n = model.encode(lr).num_gaussians  # the border ring included
    _info(benchmark, stage="encode", model=type(model).__name__, gaussians=n)

    def run():
        with torch.no_grad():
            model.encode(lr)
        sync()

    if getattr(benchmark, "disabled", False):
        benchmark(run)
        return
    benchmark.pedantic(run, rounds=_rounds(run), iterations=1)


@pytest.mark.parametrize("scale", SCALES, ids=lambda s: f"x{s:g}")
def test_sr_render(benchmark, model_and_lr, scale):
    model, lr = model_and_lr
    with torch.no_grad():
        field = model.encode(lr)
    w, h = round(LR_SIZE[0] * scale), round(LR_SIZE[1] * scale)
    benchmark.group = "sr render"
    _info(benchmark, stage="render", model=type(model).__name__, scale=scale, out_w=w, out_h=h)

    def run():
        with torch.no_grad():
            model.render(field, w, h)
        sync()

    if getattr(benchmark, "disabled", False):
        benchmark(run)
        return
    benchmark.pedantic(run, rounds=_rounds(run), iterations=1)
    mean = benchmark.stats.stats.mean
    benchmark.extra_info["output_mpix_per_s"] = w * h / mean / 1e6
