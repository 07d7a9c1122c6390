"""Public API: argument validation, empty scenes, backend dispatch, conic builders, Gaussians2D."""

import math
import os
import subprocess
import sys

import pytest
import torch

import gsplat2d
from conftest import BACKENDS, HAVE_TRITON, make_scene, max_err, requires_numba, requires_triton
from gsplat2d.reference import dense_rasterize


def _args(n=4, C=3, batch=(), dtype=torch.float32):
    s = make_scene(batch, n, 16, 12, C, seed=3, dtype=dtype)
    return s


def _call(s, width=16, height=12, **kw):
    kw.setdefault("backend", "torch")
    return gsplat2d.rasterize(s["means"], s["conics"], s["colors"], s["opacities"], width, height,
                              **kw)


ERR = (ValueError, TypeError)


# --------------------------------------------------------------------------------------------
# Bad inputs: clear errors naming the argument
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("colors", torch.zeros(4, 0), "colors"),  # C = 0
        ("colors", torch.ones(5, 3), "colors"),  # N mismatch
        ("colors", torch.ones(4), "colors"),  # missing channel dim
        ("means", torch.ones(4, 3), "means"),
        ("means", torch.ones(4), "means"),
        ("conics", torch.ones(4, 2), "conics"),
        ("conics", torch.ones(5, 3), "conics"),
        ("opacities", torch.ones(4, 1), "opacities"),
        ("opacities", torch.ones(3), "opacities"),
        ("means", torch.ones(4, 2, dtype=torch.int32), "means"),
        ("conics", torch.ones(4, 3, dtype=torch.int64), "conics"),
        ("colors", torch.ones(4, 3, dtype=torch.uint8), "colors"),
        ("opacities", torch.ones(4, dtype=torch.bool), "opacities"),
        ("means", [[0.0, 0.0]] * 4, "means"),  # not a tensor
        ("colors", torch.ones(4, 3, dtype=torch.complex64), "colors"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_tensor_arguments(field, value, match):
    s = _args()
    s[field] = value
    with pytest.raises(ERR, match=match):
        _call(s)


def test_batch_shape_mismatch():
    s = _args(batch=(2,))
    s["conics"] = s["conics"][:1]
    with pytest.raises(ValueError, match="conics"):
        _call(s)
    s = _args(batch=(2,))
    s["opacities"] = s["opacities"].expand(3, 2, 4)[0].T.contiguous()  # [4, 2]: wrong order
    with pytest.raises(ValueError, match="opacities"):
        _call(s)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(width=0), "width"),
        (dict(width=-5), "width"),
        (dict(height=0), "height"),
        (dict(height=-1), "height"),
        (dict(width=10**6, height=10**6), "width|height"),
        (dict(width=10**9), "width"),
        (dict(width=16.0), "width"),
        (dict(height=12.5), "height"),
        (dict(width=None), "width"),
        (dict(mode="max"), "mode"),
        (dict(mode="ALPHA"), "mode"),
        (dict(backend="cuda"), "backend"),
        (dict(backend=None), "backend"),
        (dict(tile_size=0), "tile_size"),
        (dict(tile_size=-16), "tile_size"),
        (dict(tile_size=16.5), "tile_size"),
        (dict(tile_size=10**9), "tile_size"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_scalar_arguments(kw, match):
    s = _args()
    width = kw.pop("width", 16)
    height = kw.pop("height", 12)
    with pytest.raises(ERR, match=match):
        _call(s, width, height, **kw)


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not importable")
@pytest.mark.parametrize("tile_size", [4, 5, 64])
def test_triton_tile_size_restriction(tile_size):
    s = _args()
    with pytest.raises(ValueError, match="tile_size"):
        _call(s, tile_size=tile_size, backend="triton")


def test_empty_batch():
    s = _args(batch=(0,))
    img, alp = _call(s, background=s["background"])
    assert img.shape == (0, 12, 16, 3) and alp.shape == (0, 12, 16, 1)


def test_background_errors():
    s = _args()
    with pytest.raises(ValueError, match="background"):
        _call(s, mode="sum", background=torch.zeros(3))
    with pytest.raises(ValueError, match="background"):
        _call(s, background=torch.zeros(4))  # C + 1 channels
    with pytest.raises(ERR, match="background"):
        _call(s, background=torch.zeros(3, dtype=torch.int32))
    s = _args(batch=(2,))
    with pytest.raises(ValueError, match="background"):
        _call(s, background=torch.zeros(3, 3))


def test_mismatched_devices():
    s = _args()
    for name in ("conics", "colors", "opacities"):
        t = dict(s)
        t[name] = s[name].to("meta")
        with pytest.raises(ERR, match=name):
            _call(t)
    with pytest.raises(ERR, match="background"):
        _call(s, background=torch.zeros(3, device="meta"))


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not importable")
def test_triton_on_cpu_without_interpreter_is_a_clear_error():
    code = (
        "import torch, gsplat2d\n"
        "m = torch.rand(4, 2) * 8; q = torch.tensor([[0.5, 0.0, 0.5]] * 4)\n"
        "c = torch.rand(4, 3); o = torch.rand(4) * 0.5 + 0.2\n"
        "try:\n"
        "    gsplat2d.rasterize(m, q, c, o, 8, 8, backend='triton')\n"
        "except RuntimeError as e:\n"
        "    print('RUNTIMEERROR', e)\n"
        "else:\n"
        "    print('NO ERROR')\n"
        "img, _ = gsplat2d.rasterize(m, q, c, o, 8, 8)  # auto -> torch, works\n"
        "print('AUTO OK', tuple(img.shape))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "RUNTIMEERROR" in r.stdout and "TRITON_INTERPRET" in r.stdout, r.stdout
    assert "AUTO OK (8, 8, 3)" in r.stdout


# --------------------------------------------------------------------------------------------
# Empty scenes, dispatch, dtypes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [(), (2,), (2, 3)], ids=["nobatch", "B2", "B2x3"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_gaussians(backend, batch):
    C = 3
    means = torch.zeros(*batch, 0, 2)
    conics = torch.zeros(*batch, 0, 3)
    colors = torch.zeros(*batch, 0, C)
    opac = torch.zeros(*batch, 0)
    bg = (torch.arange(C, dtype=torch.float32) + 1).expand(*batch, C).contiguous().requires_grad_()
    img, alp = gsplat2d.rasterize(means, conics, colors, opac, 7, 5, background=bg, backend=backend)
    assert img.shape == (*batch, 5, 7, C) and alp.shape == (*batch, 5, 7, 1)
    assert torch.equal(img, bg.detach()[..., None, None, :].expand_as(img))
    assert torch.equal(alp, torch.zeros_like(alp))
    img.sum().backward()
    assert torch.equal(bg.grad, torch.full_like(bg, 35.0))
    img, alp = gsplat2d.rasterize(means, conics, colors, opac, 7, 5, mode="sum", backend=backend)
    assert torch.equal(img, torch.zeros(*batch, 5, 7, C)) and torch.equal(alp, torch.zeros_like(alp))


@pytest.mark.parametrize("numba_here", [pytest.param(True, marks=requires_numba), False],
                         ids=["with-numba", "without-numba"])
def test_auto_backend_on_cpu(monkeypatch, numba_here):
    """auto on CPU tensors is the numba backend, and the torch backend where numba cannot be
    imported (simulated), bit for bit."""
    import importlib

    rz = importlib.import_module("gsplat2d.rasterize")  # the module (the package exports the function)
    if not numba_here:
        monkeypatch.setattr(rz, "numba_available", lambda: False)
    expect = "numba" if numba_here else "torch"
    assert rz._pick_backend("auto", torch.device("cpu"), 16) == expect
    s = make_scene((2,), 80, 33, 17, 3, seed=5)
    for mode in ("alpha", "sum"):
        bg = s["background"] if mode == "alpha" else None
        a = gsplat2d.rasterize(s["means"], s["conics"], s["colors"], s["opacities"], 33, 17,
                               mode=mode, background=bg)
        t = gsplat2d.rasterize(s["means"], s["conics"], s["colors"], s["opacities"], 33, 17,
                               mode=mode, background=bg, backend=expect)
        assert torch.equal(a[0], t[0]) and torch.equal(a[1], t[1])


def test_auto_backend_does_not_touch_triton_on_cpu(monkeypatch):
    """auto on CPU tensors never launches a Triton kernel (even under the interpreter)."""
    if not HAVE_TRITON:
        pytest.skip("triton is not importable")
    from gsplat2d.kernels import binning, rasterize_fwd

    def boom(*a, **k):
        raise AssertionError("triton launcher called for backend='auto' on CPU")

    monkeypatch.setattr(binning, "bin_gaussians", boom)
    monkeypatch.setattr(binning, "compute_tile_bounds", boom)
    monkeypatch.setattr(rasterize_fwd, "rasterize_fwd", boom)
    s = make_scene((), 20, 16, 16, 3, seed=6)
    img, _ = gsplat2d.rasterize(s["means"], s["conics"], s["colors"], s["opacities"], 16, 16)
    assert img.abs().sum() > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_dtypes(backend):
    s = make_scene((), 30, 16, 12, 3, seed=7, dtype=torch.float64)
    for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        t = {k: v.to(dt) for k, v in s.items()}
        img, alp = _call(t, backend=backend, background=t["background"])
        expect = torch.float64 if (dt == torch.float64 and backend in ("torch", "numba")) else torch.float32
        assert img.dtype == expect and alp.dtype == expect, dt
        ref = dense_rasterize(t["means"], t["conics"], t["colors"], t["opacities"], 16, 12,
                              "alpha", t["background"])
        assert max_err(img, ref[0]) < 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_input_dtypes(backend):
    s = make_scene((), 30, 16, 12, 3, seed=8)
    t = dict(s)
    t["colors"] = s["colors"].half()
    t["opacities"] = s["opacities"].bfloat16()
    img, alp = _call(t, backend=backend)
    ref = dense_rasterize(t["means"], t["conics"], t["colors"], t["opacities"], 16, 12)
    assert img.dtype == torch.float32 and max_err(img, ref[0]) < 1e-4


# --------------------------------------------------------------------------------------------
# Conic builders
# --------------------------------------------------------------------------------------------


def _inv_to_conic(cov):
    inv = torch.linalg.inv(cov)
    return torch.stack([inv[..., 0, 0], inv[..., 0, 1], inv[..., 1, 1]], -1)


def test_conics_from_cholesky_matches_inverse():
    gen = torch.Generator().manual_seed(0)
    l = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64)
    l[..., 0] = l[..., 0].abs() + 0.3
    l[..., 2] = l[..., 2].abs() + 0.3
    L = torch.zeros(2, 5, 2, 2, dtype=torch.float64)
    L[..., 0, 0], L[..., 1, 0], L[..., 1, 1] = l[..., 0], l[..., 1], l[..., 2]
    expect = _inv_to_conic(L @ L.transpose(-1, -2))
    got = gsplat2d.conics_from_cholesky(l)
    assert got.shape == (2, 5, 3)
    assert torch.allclose(got, expect, rtol=1e-10, atol=1e-12)
    # float32 input works too
    got32 = gsplat2d.conics_from_cholesky(l.float())
    assert got32.dtype == torch.float32
    assert torch.allclose(got32.double(), expect, rtol=1e-4, atol=1e-6)
    assert torch.autograd.gradcheck(gsplat2d.conics_from_cholesky,
                                    (l[0, :3].clone().requires_grad_(),))


def test_conics_from_scale_rotation_matches_inverse():
    gen = torch.Generator().manual_seed(1)
    scales = torch.rand(3, 4, 2, generator=gen, dtype=torch.float64) * 5 + 0.2
    theta = (torch.rand(3, 4, generator=gen, dtype=torch.float64) * 2 - 1) * math.pi
    c, s = torch.cos(theta), torch.sin(theta)
    R = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    cov = R @ torch.diag_embed(scales**2) @ R.transpose(-1, -2)
    expect = _inv_to_conic(cov)
    got = gsplat2d.conics_from_scale_rotation(scales, theta)
    assert got.shape == (3, 4, 3)
    assert torch.allclose(got, expect, rtol=1e-10, atol=1e-12)
    # Axis-aligned case by hand: sx=2, sy=4, theta=0 -> conic (1/4, 0, 1/16).
    one = gsplat2d.conics_from_scale_rotation(torch.tensor([[2.0, 4.0]], dtype=torch.float64),
                                              torch.zeros(1, dtype=torch.float64))
    assert torch.allclose(one, torch.tensor([[0.25, 0.0, 1 / 16]], dtype=torch.float64))
    # theta = pi/2 swaps the axes.
    rot = gsplat2d.conics_from_scale_rotation(torch.tensor([[2.0, 4.0]], dtype=torch.float64),
                                              torch.full((1,), math.pi / 2, dtype=torch.float64))
    assert torch.allclose(rot, torch.tensor([[1 / 16, 0.0, 0.25]], dtype=torch.float64), atol=1e-12)
    assert torch.autograd.gradcheck(
        gsplat2d.conics_from_scale_rotation,
        (scales[0].clone().requires_grad_(), theta[0].clone().requires_grad_()))


# --------------------------------------------------------------------------------------------
# Gaussians2D
# --------------------------------------------------------------------------------------------


def _normalised_scene(batch, n, C, seed):
    gen = torch.Generator().manual_seed(seed)
    means = torch.rand(*batch, n, 2, generator=gen)
    # Normalised covariance (xx, xy, yy): std dev 0.02..0.3 of the image, random correlation.
    sx = 0.02 + 0.28 * torch.rand(*batch, n, generator=gen)
    sy = 0.02 + 0.28 * torch.rand(*batch, n, generator=gen)
    rho = (torch.rand(*batch, n, generator=gen) * 2 - 1) * 0.8
    cov = torch.stack([sx * sx, rho * sx * sy, sy * sy], -1)
    colors = 0.05 + 0.95 * torch.rand(*batch, n, C, generator=gen)
    opac = 0.05 + 0.9 * torch.rand(*batch, n, generator=gen)
    return means, cov, colors, opac


def _pixel_params(means, cov, W, H):
    m = means.double() * torch.tensor([W, H], dtype=torch.float64)
    xx = cov[..., 0].double() * W * W
    xy = cov[..., 1].double() * W * H
    yy = cov[..., 2].double() * H * H
    det = xx * yy - xy * xy
    conics = torch.stack([yy / det, -xy / det, xx / det], -1)
    return m.float(), conics.float()


GAUSSIANS2D_CASES = [
    ("torch", (32, 32)), ("torch", (40, 24)), ("torch", (17, 29)), ("torch", (64, 8)),
    pytest.param("triton", (40, 24), marks=requires_triton),  # interpreter: one size
]


@pytest.mark.parametrize("backend, size", GAUSSIANS2D_CASES,
                         ids=lambda v: f"{v[0]}x{v[1]}" if isinstance(v, tuple) else v)
def test_gaussians2d_render_equals_rasterize(backend, size):
    """render(W, H) == rasterize with pixel means mean*(W, H) and the inverse of the pixel
    covariance [[xx W^2, xy W H], [xy W H, yy H^2]] (non-uniform x/y scale included)."""
    W, H = size
    n = 40 if backend == "torch" else 20
    means, cov, colors, opac = _normalised_scene((2,), n, 3, seed=W * 100 + H)
    g = gsplat2d.Gaussians2D(means, cov, colors, opac)
    bg = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    m, q = _pixel_params(means, cov, W, H)
    for mode, background in (("alpha", bg), ("sum", None)):
        img, alp = g.render(W, H, mode=mode, background=background, backend=backend)
        ref_img, ref_alp = gsplat2d.rasterize(m, q, colors, opac, W, H, mode=mode,
                                              background=background, backend="torch")
        assert img.shape == (2, H, W, 3) and alp.shape == (2, H, W, 1)
        scale = max(1.0, ref_alp.max().item())
        assert max_err(img, ref_img) <= 2e-5 * scale, mode
        assert max_err(alp, ref_alp) <= 2e-5 * scale, mode
        # and the dense definition
        d_img, d_alp = dense_rasterize(m, q, colors, opac, W, H, mode, background)
        assert max_err(img, d_img) <= 1e-4 * scale and max_err(alp, d_alp) <= 1e-4 * scale
    if backend == "torch":
        img, _ = g.render(W, H, backend=backend)  # default alpha mode, no background
        assert max_err(img, gsplat2d.rasterize(m, q, colors, opac, W, H, backend="torch")[0]) < 2e-5


def test_gaussians2d_render_tile_size_and_grads():
    means, cov, colors, opac = _normalised_scene((), 25, 2, seed=3)
    leaves = [t.clone().requires_grad_() for t in (means, cov, colors, opac)]
    g = gsplat2d.Gaussians2D(*leaves)
    img8, _ = g.render(24, 20, tile_size=8, backend="torch")
    img16, _ = g.render(24, 20, tile_size=16, backend="torch")
    assert max_err(img8, img16) < 1e-5
    img16.sum().backward()
    for t in leaves:
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["alpha", "sum"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_rasterization_is_fp32_under_autocast(backend, mode):
    """Training runs the network under bf16 autocast; rasterization must not follow it (the torch
    backend's bmm ran in bf16 there: 0.041 max error at peak 4.76 in sum mode). Outputs and every
    input gradient under CPU bf16 autocast equal the plain float32 ones exactly."""
    s = make_scene((), 200, 48, 40, 3, seed=31, max_radius=8.0)
    bg = s["background"] if mode == "alpha" else None

    def run(autocast):
        leaves = [s[k].clone().requires_grad_(True) for k in ("means", "conics", "colors", "opacities")]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            img, alp = gsplat2d.rasterize(*leaves, 48, 40, mode=mode, background=bg, backend=backend)
            (img.square().sum() + alp.sum()).backward()  # backward inside the region too
        return img, alp, [t.grad for t in leaves]

    a, b = run(False), run(True)
    assert b[0].dtype == torch.float32
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for ga, gb in zip(a[2], b[2]):
        assert torch.equal(ga, gb)
