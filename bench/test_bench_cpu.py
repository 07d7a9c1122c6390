"""CPU benchmarks of the numba backend, each against the torch backend (or PIL bicubic) timed in
the same run, interleaved round by round.

``pytest bench/test_bench_cpu.py --benchmark-only`` (about 3 minutes on 2 cores). Every
benchmark first checks the numba result against the torch backend's and refuses to time a wrong
one. ``extra_info`` records, beside the times: ``pairs_tile`` ((tile, Gaussian) pairs x tile^2,
the work of a tiled rasterizer, "pairs after tile rounding"), ``pairs_window`` ((Gaussian, pixel)
pairs inside each Gaussian's pixel window, what the numba kernels evaluate), both per second of
the numba time, the torch (or bicubic) median of the interleaved rounds and the ratio.

Inputs: a 256 x 256 crop and 48 x 48 patches of a training photo (``../shared/data/train``,
else the bundled Kodak crop resized), encoded by the shipped models; both models are sum mode.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest
import torch
from PIL import Image

from benchlib import DEVICE, cpu_model_name, numba_version
from cpu_before_after import _photo, _tensor  # one input photo for every CPU benchmark

pytestmark = pytest.mark.skipif(DEVICE.type != "cpu" or numba_version() is None,
                                reason="CPU benchmarks of the numba backend")

#: Target seconds of timed numba work per benchmark (the interleaved torch rounds come on top).
BUDGET_S = 3.0


@pytest.fixture(scope="module")
def lr256() -> Image.Image:
    return _photo().crop((100, 30, 356, 286))


@pytest.fixture(scope="module", params=["feature", "colour"])
def model(request):
    from gsplat2d.sr.model import load_model

    return request.param, load_model(request.param).eval()


def _info(benchmark, **kw) -> None:
    benchmark.extra_info.update(
        device_name=f"{cpu_model_name()} ({torch.get_num_threads()} torch threads)",
        torch=torch.__version__, numba=numba_version(), **kw,
    )


def _pairs(means: torch.Tensor, conics: torch.Tensor, opac: torch.Tensor, W: int, H: int, tile: int = 16):
    """(tile-rounded pairs, window pairs) of one binning."""
    from gsplat2d.backends import numba_backend

    N = opac.shape[-1]
    m, q, o = (t.detach().reshape(-1, N, *t.shape[opac.dim():]) for t in (means, conics, opac))
    nb = numba_backend.bin_gaussians(m, q, o, W, H, tile)
    win = nb.win.long()
    window = int(((win[:, 2] - win[:, 0]) * (win[:, 3] - win[:, 1])).sum())
    return int(nb.binning.gauss_ids.numel()) * tile * tile, window


def _interleaved(benchmark, fn, other, *, est_s: float, rounds: int = 0) -> float:
    """Time ``fn`` with ``benchmark.pedantic``; before each round, time one call of ``other`` (in
    the untimed setup), so both see the same machine state. Returns the median of ``other``."""
    other_s = []

    def setup():
        t0 = time.perf_counter()
        other()
        other_s.append(time.perf_counter() - t0)
        return (), {}

    if getattr(benchmark, "disabled", False):
        benchmark.pedantic(fn, setup=setup, rounds=1, iterations=1)
        return other_s[0]
    rounds = rounds or int(max(3, min(20, BUDGET_S // max(est_s, 1e-6))))
    benchmark.pedantic(fn, setup=setup, rounds=rounds, iterations=1, warmup_rounds=0)
    return statistics.median(other_s)


def _record(benchmark, pairs, other_s: float, other: str) -> None:
    mean = getattr(getattr(getattr(benchmark, "stats", None), "stats", None), "mean", None)
    info = benchmark.extra_info
    info["pairs_tile"], info["pairs_window"] = pairs
    info[f"{other}_median_s"] = other_s
    if mean:
        info["numba_mean_s"] = mean
        info["pairs_tile_per_s"] = pairs[0] / mean
        info["pairs_window_per_s"] = pairs[1] / mean
        info[f"ratio_{other}_over_numba"] = other_s / mean


def _check(a, b, what: str) -> None:
    """Refuse to time a wrong result: numba's outputs (and gradients) against the torch backend's.
    A weight within float32 rounding of 1/255 may fall on either side in two float32 renderers
    (a pixel then differs by up to 1/255 of a colour), so: at most 0.1% of the values off by more
    than 1e-3 of the largest, and a relative RMS difference below 1e-4 (gradients: 1e-3)."""
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        x, y = x.double(), y.double()
        d = (x - y).abs()
        frac = float((d > 1e-3 * float(y.abs().max())).double().mean())
        rms = float(d.pow(2).mean().sqrt()) / max(float(y.pow(2).mean().sqrt()), 1e-30)
        limit = 1e-4 if i < 2 else 1e-3
        assert frac <= 1e-3 and rms <= limit, f"{what}, output {i}: {frac:.2%} off, relative RMS {rms:.3g}"


# ---------------------------------------------------------------------------------------------
# Rasterizer on an SR training batch: 8 patches, LR 48 x 48 -> HR 144 x 144 (x3)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def train_batch(model):
    name, m = model
    g = torch.Generator().manual_seed(0)
    photo = _tensor(_photo())
    crops = []
    for _ in range(8):
        y = int(torch.randint(0, photo.shape[1] - 48, (1,), generator=g))
        x = int(torch.randint(0, photo.shape[2] - 48, (1,), generator=g))
        crops.append(photo[:, y : y + 48, x : x + 48])
    with torch.no_grad():
        field = m.encode(torch.stack(crops))
    means, conics = field.to_pixels(144, 144)
    return name, [t.contiguous() for t in (means, conics, field.colors, field.opacities)]


@pytest.mark.parametrize("stage", ["fwd", "fwdbwd"])
def test_sr_train_batch(benchmark, train_batch, stage):
    """One training step's rasterization (forward, or forward + backward of random cotangents)."""
    import gsplat2d

    name, scene = train_batch
    benchmark.group = f"cpu sr-train-batch {stage}"
    leaves = [t.clone().requires_grad_(stage == "fwdbwd") for t in scene]
    g = torch.Generator().manual_seed(1)
    C = scene[2].shape[-1]
    # cotangents in the layout a training step hands back: the models take the render as NCHW
    # (image.permute(0, 3, 1, 2)), so the image's gradient arrives channel-major
    gi = torch.rand(8, C, 144, 144, generator=g).permute(0, 2, 3, 1)
    ga = torch.rand(8, 144, 144, 1, generator=g)

    def run(backend):
        def f():
            for t in leaves:
                t.grad = None
            with torch.set_grad_enabled(stage == "fwdbwd"):
                img, alp = gsplat2d.rasterize(*leaves, 144, 144, mode="sum", backend=backend)
                if stage == "fwdbwd":
                    torch.autograd.backward([img, alp], [gi, ga])
            return [img.detach(), alp.detach()] + [t.grad.clone() for t in leaves if t.grad is not None]
        return f

    _check(run("numba")(), run("torch")(), f"{name} train batch {stage}")
    t0 = time.perf_counter()
    run("numba")()
    torch_s = _interleaved(benchmark, run("numba"), run("torch"), est_s=time.perf_counter() - t0)
    _info(benchmark, model=name, stage=stage, batch=8, lr=48, hr=144, C=C,
          gaussians=int(scene[3].numel()))
    _record(benchmark, _pairs(scene[0], scene[1], scene[3], 144, 144), torch_s, "torch")


# ---------------------------------------------------------------------------------------------
# Rendering a 256 x 256 LR image's field at x4 and x8
# ---------------------------------------------------------------------------------------------
SCALES = [4, 8]


@pytest.fixture(scope="module")
def field256(model, lr256):
    from gsplat2d.sr.rendering import encode_image

    name, m = model
    return name, m, encode_image(m, _tensor(lr256))


@pytest.mark.parametrize("scale", SCALES, ids=lambda s: f"x{s}")
def test_sr_render_rasterize(benchmark, field256, scale, request):
    """The rasterizer alone on the whole output (``gsplat2d.rasterize``, no autograd)."""
    import gsplat2d

    if request.config.getoption("benchmark_disable", default=False) and scale != 4:
        pytest.skip("smoke run: x4 only")
    name, _m, field = field256
    W = 256 * scale
    means, conics = field.to_pixels(W, W)

    def run(backend):
        def f():
            with torch.no_grad():
                return gsplat2d.rasterize(means, conics, field.colors, field.opacities, W, W,
                                          mode="sum", backend=backend)
        return f

    _check(run("numba")(), run("torch")(), f"{name} x{scale} render")
    benchmark.group = f"cpu sr-render-rasterize x{scale}"
    t0 = time.perf_counter()
    run("numba")()
    torch_s = _interleaved(benchmark, run("numba"), run("torch"), est_s=time.perf_counter() - t0)
    _info(benchmark, model=name, scale=scale, out_w=W, out_h=W, gaussians=field.num_gaussians,
          C=field.channels)
    _record(benchmark, _pairs(means, conics, field.opacities, W, W), torch_s, "torch")
    if benchmark.extra_info.get("numba_mean_s"):
        benchmark.extra_info["output_mpix_per_s"] = W * W / benchmark.extra_info["numba_mean_s"] / 1e6


def test_binning_reused(benchmark, field256):
    """Three renders of one x4 field (its channels, its colour base, its weight channel), sum
    mode, numba: ``bin_gaussians`` once + three ``rasterize_binned`` against three
    ``rasterize`` calls (each bins again), interleaved. Results must be identical."""
    import gsplat2d

    name, _m, field = field256
    W = 256 * 4
    means, conics = field.to_pixels(W, W)
    sets = [field.colors, field.colors[..., :3].contiguous(), field.colors[..., -1:].contiguous()]

    def staged():
        with torch.no_grad():
            scene = gsplat2d.bin_gaussians(means, conics, field.opacities, W, W, backend="numba")
            return [gsplat2d.rasterize_binned(scene, c, mode="sum")[0] for c in sets]

    def separate():
        with torch.no_grad():
            return [gsplat2d.rasterize(means, conics, c, field.opacities, W, W, mode="sum",
                                       backend="numba")[0] for c in sets]

    for a, b in zip(staged(), separate()):
        assert torch.equal(a, b), "refusing to time: staged and one-call renders differ"
    benchmark.group = "cpu binning reused (3 renders of one x4 field)"
    t0 = time.perf_counter()
    staged()
    sep_s = _interleaved(benchmark, staged, separate, est_s=time.perf_counter() - t0)
    _info(benchmark, model=name, out_w=W, out_h=W, gaussians=field.num_gaussians, renders=len(sets))
    _record(benchmark, _pairs(means, conics, field.opacities, W, W), sep_s, "separate_rasterize")


@pytest.mark.parametrize("scale", SCALES, ids=lambda s: f"x{s}")
def test_sr_encode_and_render(benchmark, model, lr256, scale, request):
    """What ``gsplat2d render`` times: encode the 256 x 256 image, then render it windowed (and
    decode, for the feature model) to uint8 pixels; against PIL bicubic to the same size."""
    from gsplat2d.sr.rendering import encode_image, render_to_array

    if request.config.getoption("benchmark_disable", default=False) and scale != 4:
        pytest.skip("smoke run: x4 only")
    name, m = model
    W = 256 * scale
    lr = _tensor(lr256)

    def sr():
        field = encode_image(m, lr)
        return render_to_array(field, W, W, mode=field.mode, decode=m.pixel_decoder(field, W, W))

    def bicubic():
        return lr256.resize((W, W), Image.BICUBIC)

    field = encode_image(m, lr)
    ref = render_to_array(field, W, W, mode=field.mode, backend="torch",
                          decode=m.pixel_decoder(field, W, W))
    got = sr()
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1, "numba render differs from torch"
    benchmark.group = f"cpu sr-encode-render x{scale}"
    t0 = time.perf_counter()
    sr()
    bic_s = _interleaved(benchmark, sr, bicubic, est_s=time.perf_counter() - t0)
    _info(benchmark, model=name, scale=scale, out_w=W, out_h=W, gaussians=field.num_gaussians)
    means, conics = field.to_pixels(W, W)
    _record(benchmark, _pairs(means, conics, field.opacities, W, W), bic_s, "bicubic")


# ---------------------------------------------------------------------------------------------
# Image fitting: 1000 steps on a 256 x 256 crop
# ---------------------------------------------------------------------------------------------
def test_fit_256_crop(benchmark, lr256, request):
    """``fit_image`` (2000 Gaussians, sum mode, the fit CLI's defaults otherwise) for 1000 steps,
    numba against torch, one round each (the torch fit takes about a minute)."""
    from gsplat2d.fitting.fit import fit_image

    smoke = request.config.getoption("benchmark_disable", default=False)
    steps = 3 if smoke else 1000
    img = _tensor(lr256)
    kw = dict(num_gaussians=2000, steps=steps, seed=0, log_every=max(1, steps // 10))
    out = {}

    def run(backend):
        def f():
            out[backend] = fit_image(img, backend=backend, **kw)
        return f

    fit_image(img, backend="numba", **{**kw, "steps": 2})  # first-call costs out of the timing
    benchmark.group = "cpu fit 256x256"
    torch_s = _interleaved(benchmark, run("numba"), run("torch"), est_s=BUDGET_S, rounds=1)
    pa, pb = out["numba"].history[-1][1], out["torch"].history[-1][1]
    # 1000 Adam steps amplify float32 rounding into different (equally good) optima: observed
    # 0.09 dB apart; a wrong rasterizer is far off (the 5-step trajectories agree: tests/test_fit.py)
    assert abs(pa - pb) < 0.3, f"numba fit PSNR {pa:.3f} dB vs torch {pb:.3f} dB"
    g = out["numba"].gaussians
    means, conics = g.to_pixels(256, 256)
    tiles, window = _pairs(means, conics, g.opacities, 256, 256)
    _info(benchmark, steps=steps, gaussians=2000, psnr_numba=out["numba"].history[-1][1],
          psnr_torch=out["torch"].history[-1][1], note="pairs: of the final field, times steps")
    _record(benchmark, (tiles * steps, window * steps), torch_s, "torch")
