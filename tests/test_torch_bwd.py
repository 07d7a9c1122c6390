"""Torch backward stage (``torch_backend.rasterize_bwd``) vs autograd through the torch forward,
and float64 gradcheck of the public torch backend (which now uses ``RasterizeTorch``)."""

import pytest
import torch

import gsplat2d
from conftest import assert_grad_close, make_scene
from gsplat2d.backends import torch_backend
from gsplat2d.backends.torch_function import rasterize_torch_autograd
from gsplat2d.reference import ambiguous_pixels, dense_tile_counts

NAMES = ("means", "conics", "colors", "opacities", "background")


def _bwd_vs_autograd(s, w, h, mode, tile_size=16, seed=0):
    """Elementwise relative error {name: max |g - g_ref| / (1e-4 max|g_ref| + |g_ref|)} of
    rasterize_bwd vs autograd through rasterize_fwd, for random non-zero cotangents on image and
    alpha (elementwise, so an error in small entries counts). ``s``: flattened [B, N, *]."""
    use_bg = mode == "alpha" and s["background"] is not None
    names = NAMES if use_bg else NAMES[:4]
    leaves = {k: s[k].clone().requires_grad_(True) for k in names}
    bg = leaves.get("background")
    binning = torch_backend.bin_gaussians(leaves["means"], leaves["conics"], leaves["opacities"],
                                        w, h, tile_size)
    img, alp, t_final = torch_backend.rasterize_fwd(leaves["means"], leaves["conics"],
                                                  leaves["colors"], leaves["opacities"], bg,
                                                  binning, w, h, tile_size, mode)
    gen = torch.Generator().manual_seed(seed)
    g_img = torch.randn(img.shape, generator=gen, dtype=torch.float64).to(img.dtype)
    g_alp = torch.randn(alp.shape, generator=gen, dtype=torch.float64).to(alp.dtype)
    torch.autograd.backward([img, alp], [g_img, g_alp])
    grads = torch_backend.rasterize_bwd(
        s["means"], s["conics"], s["colors"], s["opacities"], use_bg, binning, img.detach(),
        t_final.detach() if t_final is not None else None, g_img, g_alp, w, h, tile_size, mode,
    )
    assert (grads[4] is not None) == use_bg
    errs = {}
    for k, g in zip(names, grads):
        ref = leaves[k].grad
        assert g.shape == ref.shape and g.dtype == img.dtype, k
        assert torch.isfinite(g).all(), k
        scale = ref.abs().max().item()
        assert scale > 0, f"reference gradient of {k} is zero: test scene too weak"
        errs[k] = ((g.double() - ref.double()).abs() / (1e-4 * scale + ref.double().abs())).max().item()
    return errs


def _flat(s, batch):
    B = batch[0] if batch else 1
    return {k: (v.reshape(B, *v.shape[len(batch):]) if v is not None else None) for k, v in s.items()}


# (id, batch, N, W, H, C, seed, make_scene kwargs)
CASES = [
    ("B2-N60-37x29-C3", (2,), 60, 37, 29, 3, 1, dict(max_radius=10)),
    ("N40-37x29-C1", (), 40, 37, 29, 1, 2, dict(max_radius=8)),
    ("B2-N30-37x29-C8-degenerate", (2,), 30, 37, 29, 8, 3, dict(max_radius=8, degenerate=0.2)),
    # opacities up to 2: the 0.99 / 1 clamp is hit
    ("N25-15x11-C3-clamped", (), 25, 15, 11, 3, 4, dict(max_radius=8, opacity=(0.5, 2.0))),
]

# elementwise (see _bwd_vs_autograd); worst observed: float64 below 1e-10, float32 1.2e-3 (the
# dense stop-rule tile; float32 summation order differs between the two paths)
TOL = {torch.float64: 1e-10, torch.float32: 5e-3}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("mode", ["alpha", "sum"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bwd_matches_autograd(case, mode, dtype):
    _, batch, n, w, h, C, seed, kw = case
    s = _flat(make_scene(batch, n, w, h, C, seed=seed, dtype=dtype, **kw), batch)
    errs = _bwd_vs_autograd(s, w, h, mode, seed=seed)
    assert max(errs.values()) <= TOL[dtype], errs


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("mode", ["alpha", "sum"])
def test_bwd_dense_tile_stop_rule(mode, dtype):
    """> 256 Gaussians in one partial 16x16 tile (several rank blocks); alpha: pixels stop."""
    w, h = 16, 13
    s = make_scene((), 300, w, h, 3, seed=5, dtype=dtype, margin=0.0, min_radius=2.0,
                   max_radius=5.0, opacity=(0.05, 0.6))
    assert dense_tile_counts(s["means"], s["conics"], s["opacities"], w, h, 16).min() > 256
    if mode == "alpha":
        from gsplat2d.reference import dense_rasterize

        _, _, T = dense_rasterize(s["means"].double(), s["conics"].double(), s["colors"].double(),
                                  s["opacities"].double(), w, h, "alpha", return_final_T=True)
        assert (T < 1e-3).float().mean() > 0.5  # the stop rule fires on most pixels
    s = {k: v[None] for k, v in s.items()}
    errs = _bwd_vs_autograd(s, w, h, mode, seed=5)
    assert max(errs.values()) <= TOL[dtype], errs


@pytest.mark.parametrize("tile_size", [4, 8, 32])
def test_bwd_other_tile_sizes(tile_size):
    w, h = 37, 29
    s = make_scene((2,), 40, w, h, 3, seed=7, dtype=torch.float64, max_radius=8)
    for mode in ("alpha", "sum"):
        errs = _bwd_vs_autograd(s, w, h, mode, tile_size=tile_size, seed=7)
        assert max(errs.values()) <= 1e-10, (mode, errs)


def test_bwd_background_none_and_grad_only_alpha():
    """alpha mode without background, cotangent on alpha only: colour gradients are zero."""
    w, h = 21, 17
    s = make_scene((), 30, w, h, 3, seed=11, dtype=torch.float64, max_radius=8)
    leaves = {k: s[k].clone()[None].requires_grad_(True) for k in NAMES[:4]}
    img, alp = gsplat2d.rasterize(*(leaves[k] for k in NAMES[:4]), w, h, backend="torch")
    alp.backward(torch.linspace(0.5, 1.5, alp.numel(), dtype=torch.float64).view(alp.shape))
    ref = {k: s[k].clone()[None].requires_grad_(True) for k in NAMES[:4]}
    _, ralp = rasterize_torch_autograd(*(ref[k] for k in NAMES[:4]), None, w, h, 16, "alpha")
    ralp.backward(torch.linspace(0.5, 1.5, alp.numel(), dtype=torch.float64).view(alp.shape))
    assert (leaves["colors"].grad == 0).all()
    for k in NAMES[:4]:
        g, r = leaves[k].grad, ref[k].grad
        assert (g - r).abs().max().item() <= 1e-10 * max(r.abs().max().item(), 1e-30), k


def test_public_torch_path_matches_autograd_reference():
    """Public backend='torch' (RasterizeTorch) vs the autograd reference path, float32, batch."""
    w, h = 37, 29
    s = make_scene((2,), 50, w, h, 3, seed=3, max_radius=10)
    for mode in ("alpha", "sum"):
        names = NAMES if mode == "alpha" else NAMES[:4]
        a = {k: s[k].clone().requires_grad_(True) for k in names}
        b = {k: s[k].clone().requires_grad_(True) for k in names}
        out = gsplat2d.rasterize(*(a[k] for k in NAMES[:4]), w, h, mode=mode,
                                 background=a.get("background"), backend="torch")
        ref = rasterize_torch_autograd(*(b[k] for k in NAMES[:4]), b.get("background"), w, h,
                                       16, mode)
        assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
        gen = torch.Generator().manual_seed(3)
        cot = [torch.randn(t.shape, generator=gen) for t in out]
        torch.autograd.backward(out, cot)
        torch.autograd.backward(ref, cot)
        for k in names:
            assert a[k].grad.dtype == torch.float32
            assert_grad_close(a[k].grad, b[k].grad, f"{k} ({mode})")


@pytest.mark.parametrize("mode", ["alpha", "sum"])
def test_gradcheck_public_torch_backend(mode):
    w, h = 9, 7
    s = make_scene((), 5, w, h, 3, seed=1, dtype=torch.float64, margin=0.0, opacity=(0.1, 0.8),
                   min_radius=1.0, max_radius=4.0)
    amb = ambiguous_pixels(s["means"], s["conics"], s["opacities"], w, h, mode,
                           weight_tol=1e-4, stop_tol=1e-4, clamp_tol=1e-4)
    assert not amb.any(), "scene has a pixel at a threshold; pick another seed"
    use_bg = mode == "alpha"
    inputs = [s[k].clone().requires_grad_(True) for k in (NAMES if use_bg else NAMES[:4])]

    def f(*args):
        return gsplat2d.rasterize(args[0], args[1], args[2], args[3], w, h, mode=mode,
                                  background=args[4] if use_bg else None, tile_size=4,
                                  backend="torch")

    assert torch.autograd.gradcheck(f, tuple(inputs), eps=1e-6, atol=1e-7, rtol=1e-5)
