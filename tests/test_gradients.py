"""Gradients: the torch and numba backends by float64 gradcheck; every backend vs autograd through
the dense float64 reference (the triton backend runs its backward kernel under the interpreter)."""

import pytest
import torch

import gsplat2d
from conftest import BACKENDS, assert_grad_close, make_scene, requires_numba
from gsplat2d.reference import ambiguous_pixels, dense_rasterize, dense_tile_counts

NAMES = ("means", "conics", "colors", "opacities", "background")


# --------------------------------------------------------------------------------------------
# gradcheck (torch and numba backends, float64)
# --------------------------------------------------------------------------------------------

# (id, batch, N, W, H, C, seed, opacity range, radius range)
GRADCHECK_CASES = [
    ("N5-9x7-C2", (), 5, 9, 7, 2, 1, (0.1, 0.8), (1.0, 4.0)),
    ("B2-N4-9x7-C1", (2,), 4, 9, 7, 1, 1, (0.1, 0.8), (1.0, 4.0)),
    # High opacities and stacked Gaussians: exercises the 0.99 clamp and the 1e-4 stop.
    ("N6-9x7-C2-opaque", (), 6, 9, 7, 2, 1, (0.97, 1.0), (2.5, 6.0)),
]


@pytest.mark.parametrize("mode", ["alpha", "sum", "sum_taper"])
@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=[c[0] for c in GRADCHECK_CASES])
@pytest.mark.parametrize("backend", ["torch", pytest.param("numba", marks=requires_numba)])
def test_gradcheck(backend, case, mode):
    _, batch, n, w, h, C, seed, op, (r0, r1) = case
    s = make_scene(batch, n, w, h, C, seed=seed, dtype=torch.float64, margin=0.0, opacity=op,
                   min_radius=r0, max_radius=r1)
    if "opaque" in case[0]:
        s["means"] = s["means"] * 0.3 + torch.tensor([0.35 * w, 0.35 * h], dtype=torch.float64)
    # No pixel within reach of gradcheck's perturbation of a discrete threshold or clamp kink.
    amb = ambiguous_pixels(s["means"], s["conics"], s["opacities"], w, h, mode,
                           weight_tol=1e-4, stop_tol=1e-4, clamp_tol=1e-4)
    assert not amb.any(), "scene has a pixel at a threshold; pick another seed"
    if "opaque" in case[0] and mode == "alpha":
        # Make sure the clamp and the stop rule really occur in this scene.
        from gsplat2d.reference import _pixel_terms

        _, _, raw = _pixel_terms(s["means"], s["conics"], s["opacities"], w, h)
        assert (raw > 0.99).any()
        a = raw.clamp(max=0.99)
        a = torch.where(a >= 1 / 255, a, torch.zeros_like(a))
        assert (torch.cumprod(1 - a, 0) <= 1e-4).any()  # some pixel stops

    use_bg = mode == "alpha"
    inputs = [s["means"], s["conics"], s["colors"], s["opacities"]]
    if use_bg:
        inputs.append(s["background"])
    inputs = [t.clone().requires_grad_(True) for t in inputs]

    def f(*args):
        bg = args[4] if use_bg else None
        return gsplat2d.rasterize(args[0], args[1], args[2], args[3], w, h, mode=mode,
                                  background=bg, tile_size=4, backend=backend)

    out = f(*inputs)
    assert out[0].dtype == torch.float64
    assert torch.autograd.gradcheck(f, tuple(inputs), eps=1e-6, atol=1e-7, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# vs autograd through the dense float64 reference
# --------------------------------------------------------------------------------------------

# Per input tensor: elementwise and RMS bounds (conftest.GRAD_*), worst observed beside them.


def _compare_grads(s, w, h, mode, backend, seed, tile_size=16):
    """Backprop random (non-zero) cotangents over image AND alpha through the backend and through
    the float64 reference; return {name: relative max error} for every input gradient."""
    use_bg = mode == "alpha"
    names = NAMES if use_bg else NAMES[:4]
    leaves = {k: s[k].clone().requires_grad_(True) for k in names}
    ref_leaves = {k: s[k].detach().double().requires_grad_(True) for k in names}

    img, alp = gsplat2d.rasterize(leaves["means"], leaves["conics"], leaves["colors"],
                                  leaves["opacities"], w, h, mode=mode,
                                  background=leaves.get("background"), tile_size=tile_size,
                                  backend=backend)
    ref_img, ref_alp = dense_rasterize(ref_leaves["means"], ref_leaves["conics"],
                                       ref_leaves["colors"], ref_leaves["opacities"], w, h, mode,
                                       ref_leaves.get("background"))
    gen = torch.Generator().manual_seed(seed)
    g_img = torch.randn(ref_img.shape, generator=gen, dtype=torch.float64)
    g_alp = torch.randn(ref_alp.shape, generator=gen, dtype=torch.float64)
    # Pixels where float32 may take the other side of a discrete decision get no cotangent.
    amb = ambiguous_pixels(s["means"], s["conics"], s["opacities"], w, h, mode, clamp_tol=1e-5)
    assert amb.float().mean() < 0.01
    g_img = g_img * (~amb)[..., None]
    g_alp = g_alp * (~amb)[..., None]

    torch.autograd.backward([img, alp], [g_img.to(img.dtype), g_alp.to(alp.dtype)])
    torch.autograd.backward([ref_img, ref_alp], [g_img, g_alp])
    errs = {}
    for k in names:
        g, g_ref = leaves[k].grad, ref_leaves[k].grad
        assert g is not None, f"no gradient for {k}"
        assert g.shape == leaves[k].shape and g.dtype == leaves[k].dtype
        assert torch.isfinite(g).all(), f"non-finite gradient for {k}"
        scale = g_ref.abs().max().item()
        assert scale > 0, f"reference gradient of {k} is zero: test scene too weak"
        errs[k] = assert_grad_close(g, g_ref, k)
    return errs


# (batch, N, W, H, C, seed, extra make_scene kwargs)
GRAD_CASES = [
    ((), 40, 17, 13, 3, 1, {}),
    ((2,), 30, 33, 17, 1, 2, {}),
    ((3,), 25, 19, 11, 32, 3, {}),
    ((2, 2), 20, 21, 15, 3, 4, dict(degenerate=0.2)),
    # Opacities up to 2: weights clamped at 0.99 (alpha) / 1 (sum) pass no gradient to o, sigma.
    ((), 25, 15, 11, 2, 5, dict(opacity=(0.5, 2.0))),
    ((), 12, 13, 9, 40, 6, {}),  # C > 32: several channel blocks
]


def _gid(c):
    batch, n, w, h, C, _, kw = c
    b = ("B" + "x".join(map(str, batch)) + "-") if batch else ""
    extra = "".join(f"-{k}" for k in kw)
    return f"{b}N{n}-{w}x{h}-C{C}{extra}"


# Worst observed relative error: alpha torch 1.2e-5 (opacities up to 2), triton 6.2e-6;
# sum torch 6.4e-7, triton 9.9e-7.
@pytest.mark.parametrize("mode", ["alpha", "sum", "sum_taper"])
@pytest.mark.parametrize("case", GRAD_CASES, ids=_gid)
@pytest.mark.parametrize("backend", BACKENDS)
def test_grads_match_dense_reference(backend, case, mode):
    batch, n, w, h, C, seed, kw = case
    s = make_scene(batch, n, w, h, C, seed=seed, max_radius=12, **kw)
    _compare_grads(s, w, h, mode, backend, seed)


# Worst observed: torch 2.1e-7, triton 3.2e-7.
@pytest.mark.parametrize("mode", ["alpha", "sum"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_grads_dense_tile(backend, mode):
    """More than 256 Gaussians in one (partial) 16x16 tile, 16x13 image."""
    w, h = 16, 13
    s = make_scene((), 280, w, h, 3, seed=5, margin=0.0, min_radius=2.0, max_radius=5.0,
                   opacity=(0.05, 0.5))
    assert dense_tile_counts(s["means"], s["conics"], s["opacities"], w, h, 16).min() > 256
    _compare_grads(s, w, h, mode, backend, seed=5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grads_only_through_image_or_alpha(backend):
    """Cotangent on one output at a time (catches a backward that mixes up the two)."""
    w, h = 17, 13
    s = make_scene((), 30, w, h, 3, seed=9, max_radius=10)
    for which in (0, 1):
        leaves = {k: s[k].clone().requires_grad_(True) for k in NAMES}
        ref_leaves = {k: s[k].double().requires_grad_(True) for k in NAMES}
        out = gsplat2d.rasterize(*(leaves[k] for k in NAMES[:4]), w, h,
                                 background=leaves["background"], backend=backend)
        ref = dense_rasterize(*(ref_leaves[k] for k in NAMES[:4]), w, h, "alpha",
                              ref_leaves["background"])
        cot = torch.linspace(0.5, 1.5, out[which].numel(), dtype=torch.float64).view(out[which].shape)
        out[which].backward(cot.float())
        ref[which].backward(cot)
        for k in NAMES:
            g_ref = ref_leaves[k].grad
            g = leaves[k].grad
            if which == 1 and k in ("colors", "background"):  # alpha depends on neither
                assert g is None or (g == 0).all()
                continue
            assert g is not None
            assert_grad_close(g, g_ref, f"{k} (output {which})")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64],
                         ids=["fp16", "bf16", "fp64"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_input_dtype_gradients(backend, dtype):
    """fp16/bf16 (and fp64 on triton) inputs: gradients come back in the input dtype and match
    the reference."""
    w, h = 15, 11
    s = make_scene((), 20, w, h, 3, seed=8, dtype=dtype, max_radius=8)
    leaves = {k: s[k].clone().requires_grad_(True) for k in NAMES}
    ref_leaves = {k: s[k].double().requires_grad_(True) for k in NAMES}
    img, alp = gsplat2d.rasterize(*(leaves[k] for k in NAMES[:4]), w, h,
                                  background=leaves["background"], backend=backend)
    expect = torch.float64 if (backend in ("torch", "numba") and dtype == torch.float64) else torch.float32
    assert img.dtype == expect and alp.dtype == expect
    ref = dense_rasterize(*(ref_leaves[k] for k in NAMES[:4]), w, h, "alpha",
                          ref_leaves["background"])
    (img.sum() + alp.sum()).backward()
    (ref[0].sum() + ref[1].sum()).backward()
    for k in NAMES:
        g, g_ref = leaves[k].grad, ref_leaves[k].grad
        assert g.dtype == dtype and torch.isfinite(g).all(), k
        if dtype in (torch.float16, torch.bfloat16):
            # the gradient itself is rounded to the input dtype: up to 2^-8 relative for bf16
            scale = g_ref.abs().max().item()
            assert ((g.double() - g_ref).abs() <= 1e-3 * scale + 1e-2 * g_ref.abs()).all(), k
        elif expect == torch.float64:
            assert ((g - g_ref).abs() <= 1e-12 * g_ref.abs().max() + 1e-9 * g_ref.abs()).all(), k
        else:
            assert_grad_close(g, g_ref, k)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grads_partial_requires_grad_and_shared_storage(backend):
    """Only some inputs require grad; means/conics/opacities are views into one parameter
    tensor (non-contiguous); alpha mode without background."""
    w, h = 19, 13
    s = make_scene((2,), 25, w, h, 3, seed=13, max_radius=8)
    params = torch.cat([s["means"], s["conics"], s["opacities"][..., None]], -1)  # [2, 25, 6]
    params.requires_grad_(True)
    colors = s["colors"]  # no grad
    img, alp = gsplat2d.rasterize(params[..., 0:2], params[..., 2:5], colors, params[..., 5],
                                  w, h, backend=backend)
    ref_p = params.detach().double().requires_grad_(True)
    ref = dense_rasterize(ref_p[..., 0:2], ref_p[..., 2:5], colors, ref_p[..., 5], w, h)
    gen = torch.Generator().manual_seed(13)
    g_img = torch.randn(ref[0].shape, generator=gen, dtype=torch.float64)
    amb = ambiguous_pixels(s["means"], s["conics"], s["opacities"], w, h, clamp_tol=1e-5)
    g_img = g_img * (~amb)[..., None]
    img.backward(g_img.float())
    ref[0].backward(g_img)
    assert params.grad is not None and colors.grad is None
    assert torch.isfinite(params.grad).all()
    for sl, name in ((slice(0, 2), "means"), (slice(2, 5), "conics"), (slice(5, 6), "opacities")):
        g, g_ref = params.grad[..., sl], ref_p.grad[..., sl]
        assert g_ref.abs().max().item() > 0
        assert_grad_close(g, g_ref, name)
    # colours only
    col = s["colors"].clone().requires_grad_(True)
    img, _ = gsplat2d.rasterize(s["means"], s["conics"], col, s["opacities"], w, h,
                                backend=backend)
    img.sum().backward()
    ref_c = s["colors"].double().requires_grad_(True)
    dense_rasterize(s["means"], s["conics"], ref_c, s["opacities"], w, h)[0].sum().backward()
    assert_grad_close(col.grad, ref_c.grad, "colors")


@pytest.mark.parametrize("tile_size", [8, 32])
@pytest.mark.parametrize("mode", ["alpha", "sum"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_grads_other_tile_sizes(backend, mode, tile_size):
    w, h = 37, 19
    s = make_scene((), 30, w, h, 3, seed=12, max_radius=8)
    _compare_grads(s, w, h, mode, backend, seed=12, tile_size=tile_size)
