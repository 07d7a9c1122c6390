"""The numba CPU backend beyond the tests every backend runs (tests/test_rasterize_forward.py,
test_gradients.py, test_api.py, test_binning.py, the trajectory tests): equality with the torch
backend, thread counts, 1-pixel images, NaN colours, and the on-disk cache of its compiled
kernels."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import gsplat2d
from conftest import HAVE_NUMBA, assert_grad_close, make_scene, max_err
from gsplat2d.reference import ambiguous_pixels, dense_rasterize

pytestmark = pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not importable")

NAMES = ("means", "conics", "colors", "opacities", "background")


def _leaves(s, mode):
    names = NAMES if mode == "alpha" else NAMES[:4]
    return {k: s[k].clone().requires_grad_(True) for k in names}


def _run(leaves, w, h, mode, backend, tile_size=16, seed=0):
    """Forward, then backward of random cotangents over image and alpha; returns the outputs and
    every input gradient."""
    img, alp = gsplat2d.rasterize(leaves["means"], leaves["conics"], leaves["colors"],
                                  leaves["opacities"], w, h, mode=mode,
                                  background=leaves.get("background"), tile_size=tile_size,
                                  backend=backend)
    g = torch.Generator().manual_seed(seed)
    gi = torch.rand(img.shape, generator=g, dtype=torch.float64).to(img.dtype)
    ga = torch.rand(alp.shape, generator=g, dtype=torch.float64).to(alp.dtype) - 0.5
    for t in leaves.values():
        t.grad = None
    torch.autograd.backward([img, alp], [gi, ga])
    return img.detach(), alp.detach(), {k: t.grad.clone() for k, t in leaves.items()}


# (batch, N, W, H, C, tile, seed, max std dev in px)
CASES = [
    ((), 400, 70, 45, 3, 16, 1, 10.0),
    ((2,), 300, 37, 53, 16, 16, 2, 6.0),  # the feature model's channel count
    ((3,), 200, 40, 33, 1, 7, 3, 8.0),  # odd tile size
    ((), 150, 48, 31, 40, 16, 4, 12.0),  # many channels, not a multiple of 4
]


def _cid(c):
    batch, n, w, h, C, tile = c[:6]
    b = ("B" + "x".join(map(str, batch)) + "-") if batch else ""
    return f"{b}N{n}-{w}x{h}-C{C}-tile{tile}"


# Worst observed (float32 both; forward relative to max(1, max alpha)): forward 6.0e-7;
# gradients: elementwise ratio 0.036 (<= 1) and relative RMS 2.2e-6 (<= 1e-4), conftest's bounds.
@pytest.mark.parametrize("mode", ["alpha", "sum"])
@pytest.mark.parametrize("case", CASES, ids=_cid)
def test_equals_the_torch_backend(case, mode):
    """The two CPU backends, built differently (per-pixel scalar walk vs. tile-vectorised torch
    blocks), agree on the outputs and on every input gradient, elementwise."""
    batch, n, w, h, C, tile, seed, radius = case
    s = make_scene(batch, n, w, h, C, seed=seed, max_radius=radius)
    amb = ambiguous_pixels(s["means"], s["conics"], s["opacities"], w, h, mode)[..., None]
    assert amb.float().mean() < 0.01
    a = _run(_leaves(s, mode), w, h, mode, "numba", tile)
    b = _run(_leaves(s, mode), w, h, mode, "torch", tile)
    scale = max(1.0, float(b[1].abs().max()))
    assert max_err(a[0], b[0], ~amb) <= 2e-6 * scale
    assert max_err(a[1], b[1], ~amb) <= 2e-6 * scale
    for k in a[2]:
        assert_grad_close(a[2][k], b[2][k], k)


@pytest.mark.parametrize("mode", ["alpha", "sum"])
def test_one_and_two_threads_give_identical_bits(mode):
    """Tiles run in parallel, and each (tile, Gaussian) pair's gradient has its own row, added
    per Gaussian in a fixed order: the result does not depend on the thread count."""
    s = make_scene((2,), 500, 97, 61, 5, seed=7, max_radius=9.0)
    old = torch.get_num_threads()
    try:
        out = []
        for n in (1, 2):
            torch.set_num_threads(n)
            out.append(_run(_leaves(s, mode), 97, 61, mode, "numba"))
    finally:
        torch.set_num_threads(old)
    (i1, a1, g1), (i2, a2, g2) = out
    assert torch.equal(i1, i2) and torch.equal(a1, a2)
    for k in g1:
        assert torch.equal(g1[k], g2[k]), k


@pytest.mark.parametrize("mode", ["alpha", "sum"])
def test_image_is_channel_major_and_cotangents_of_either_layout_agree(mode):
    """The image is stored channel-major (its NCHW permute is contiguous, no copy for image
    models); the backward takes a cotangent in either layout and gives identical gradients."""
    s = make_scene((2,), 200, 45, 38, 5, seed=11, max_radius=7.0)
    leaves = _leaves(s, mode)
    img, alp = gsplat2d.rasterize(leaves["means"], leaves["conics"], leaves["colors"],
                                  leaves["opacities"], 45, 38, mode=mode,
                                  background=leaves.get("background"), backend="numba")
    assert img.permute(0, 3, 1, 2).is_contiguous()
    g = torch.rand(2, 5, 38, 45, generator=torch.Generator().manual_seed(2))
    grads = []
    for gi in (g.permute(0, 2, 3, 1), g.permute(0, 2, 3, 1).contiguous()):
        for t in leaves.values():
            t.grad = None
        torch.autograd.backward([img, alp], [gi, torch.ones_like(alp)], retain_graph=True)
        grads.append({k: t.grad.clone() for k, t in leaves.items()})
    assert float(grads[0]["means"].abs().max()) > 0
    for k in grads[0]:
        assert torch.equal(grads[0][k], grads[1][k]), k


@pytest.mark.parametrize("name", ["feature", "colour"])
def test_a_training_step_hands_the_backward_a_channel_major_cotangent(name, monkeypatch):
    """Both shipped models take the render as NCHW, so the image's cotangent comes back
    channel-major: the layout ``bench/test_bench_cpu.py`` times the backward with."""
    from gsplat2d.backends import numba_backend
    from gsplat2d.sr.model import load_model

    seen = []
    real = numba_backend.rasterize_bwd

    def spy(conics, colors, has_bg, nb, image, t_final, grad_image, *rest):
        seen.append(grad_image.permute(0, 3, 1, 2).is_contiguous())
        return real(conics, colors, has_bg, nb, image, t_final, grad_image, *rest)

    monkeypatch.setattr(numba_backend, "rasterize_bwd", spy)
    m = load_model(name).train()
    out = m.render(m.encode(torch.rand(2, 3, 10, 12)), 30, 25, backend="numba")
    torch.nn.functional.l1_loss(out, torch.rand_like(out)).backward()
    assert seen == [True]


@pytest.mark.parametrize("size", [(1, 37), (45, 1), (1, 1), (17, 2)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("mode", ["alpha", "sum"])
def test_one_pixel_wide_images(size, mode):
    """A tile wider than the image, Gaussians far larger than it: the dense reference, forward and
    gradients (float64, so the comparison is exact to rounding)."""
    w, h = size
    s = make_scene((), 40, w, h, 3, seed=8, dtype=torch.float64, min_radius=0.4, max_radius=6.0,
                   margin=2.0)
    got = _run(_leaves(s, mode), w, h, mode, "numba")
    leaves = _leaves(s, mode)
    ref_img, ref_alp = dense_rasterize(leaves["means"], leaves["conics"], leaves["colors"],
                                       leaves["opacities"], w, h, mode, leaves.get("background"))
    g = torch.Generator().manual_seed(0)
    gi = torch.rand(ref_img.shape, generator=g, dtype=torch.float64)
    ga = torch.rand(ref_alp.shape, generator=g, dtype=torch.float64) - 0.5
    torch.autograd.backward([ref_img, ref_alp], [gi, ga])
    assert float(ref_alp.detach().max()) > 0.05  # Gaussians do reach the image
    assert max_err(got[0], ref_img) < 1e-12 and max_err(got[1], ref_alp) < 1e-12  # worst 8.9e-16
    for k, t in leaves.items():
        torch.testing.assert_close(got[2][k], t.grad, rtol=1e-9, atol=1e-12)  # worst 7.1e-15 abs


def test_a_nan_colour_reaches_only_the_pixels_its_gaussian_covers():
    """NaN colours are not checked (a pass over all colours per call); a Gaussian's NaN colour
    makes exactly the pixels where its weight is non-zero NaN, the torch backend's rule (the
    weight is 0 over most of its pixel window, and 0 * NaN would be NaN)."""
    w, h = 40, 30
    s = make_scene((), 60, w, h, 3, seed=9, max_radius=4.0)
    s["colors"][5, 1] = float("nan")
    for mode in ("alpha", "sum"):
        bg = s["background"] if mode == "alpha" else None
        a, _ = gsplat2d.rasterize(s["means"], s["conics"], s["colors"], s["opacities"], w, h,
                                  mode=mode, background=bg, backend="numba")
        b, _ = gsplat2d.rasterize(s["means"], s["conics"], s["colors"], s["opacities"], w, h,
                                  mode=mode, background=bg, backend="torch")
        nan = torch.isnan(a[..., 1])
        assert 0 < int(nan.sum()) < w * h // 4
        assert torch.equal(nan, torch.isnan(b[..., 1]))
        assert torch.isfinite(a[..., 0]).all() and torch.isfinite(a[..., 2]).all()


def test_compiled_kernels_load_from_the_cache_in_a_new_process():
    """The first call's JIT compile is paid once per machine: a later process loads every kernel
    it runs from numba's on-disk cache (no compile)."""
    gsplat2d.rasterize(torch.rand(1, 2) * 8, torch.tensor([[0.5, 0.1, 0.4]]), torch.rand(1, 3),
                       torch.rand(1), 8, 8, backend="numba")  # this process compiled or loaded
    code = (
        "import torch, gsplat2d\n"
        "from gsplat2d.backends import numba_kernels as K\n"
        "m = torch.rand(1, 2) * 8; q = torch.tensor([[0.5, 0.1, 0.4]], requires_grad=True)\n"
        "img, _ = gsplat2d.rasterize(m, q, torch.rand(1, 3), torch.rand(1), 8, 8, backend='numba')\n"
        "img.sum().backward()\n"
        "ks = (K.tile_bounds, K.bin_tiles, K.rasterize_fwd_kernel, K.rasterize_bwd_kernel, K.reduce_pairs)\n"
        "print(sum(sum(k.stats.cache_hits.values()) for k in ks),"
        " sum(sum(k.stats.cache_misses.values()) for k in ks))\n"
    )
    # the backward kernel may not be cached by this process yet: run the child twice
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
    hits, misses = map(int, out.stdout.split())
    assert hits == 5 and misses == 0, out.stdout


_PURE_PYTHON = """
import sys, torch, gsplat2d
sys.path.insert(0, {tests!r})
from conftest import make_scene
from gsplat2d.reference import dense_rasterize
for dt in (torch.float32, torch.float64):
    for mode in ("alpha", "sum"):
        for tile, (w, h) in ((4, (9, 7)), (16, (21, 5))):
            s = make_scene((2,), 6, w, h, 2, seed=1, dtype=dt, max_radius=4.0)
            leaves = {{k: v.clone().requires_grad_(True) for k, v in s.items() if v is not None}}
            bg = leaves["background"] if mode == "alpha" else None
            img, al = gsplat2d.rasterize(leaves["means"], leaves["conics"], leaves["colors"],
                                         leaves["opacities"], w, h, mode=mode, background=bg,
                                         tile_size=tile, backend="numba")
            (img.sum() + al.square().sum()).backward()
            ref = dense_rasterize(s["means"], s["conics"], s["colors"], s["opacities"], w, h, mode,
                                  s["background"] if mode == "alpha" else None)
            assert (img - ref[0]).abs().max() < 1e-6, (dt, mode, tile)
            assert all(torch.isfinite(v.grad).all() for v in leaves.values() if v.grad is not None)
print("ok")
"""


def test_kernels_as_plain_python_stay_in_bounds():
    """numba does not check indices: the kernels run as plain Python (``NUMBA_DISABLE_JIT=1``,
    where every index is checked) on images with partial tiles, both dtypes and modes. A read
    past the pixel-centre array (the lanes of a partial tile) once made the backward's sums NaN
    at random, depending on the memory behind it; this run raises IndexError on it instead."""
    import os
    from pathlib import Path

    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    code = _PURE_PYTHON.format(tests=str(Path(__file__).parent))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
