"""Forward pass of both backends vs the dense float64 reference (gsplat2d/reference.py).

The triton backend runs on CPU tensors under TRITON_INTERPRET=1 (set in conftest.py); sizes are
kept small because the interpreter is slow.

Comparison: the float32 renderers are compared with the float64 reference at every pixel except
the few where a discrete decision (weight vs 1/255, transmittance vs the 1e-4 stop) lies within
float32 rounding of its threshold (``reference.ambiguous_pixels``); the test asserts those are
rare (< 1% of pixels).
"""

import pytest
import torch

import gsplat2d
from conftest import BACKENDS, make_degenerate, make_scene, max_err, requires_triton
from gsplat2d.reference import (
    ALPHA_MAX,
    MIN_WEIGHT,
    ambiguous_pixels,
    dense_rasterize,
    dense_tile_counts,
    loop_rasterize,
)

# Max abs error (alpha mode; values ~1), relative to max(1, max alpha) in sum mode; per test near
# the error observed (2 cores, CPU, triton 3.9 interpreter / torch 2.13), the worst beside each.
ATOL_F32 = 2e-6  # worst observed 7.3e-7 (triton, > 256 Gaussians per tile, alpha)
ATOL_FAR = 1e-4  # test_outside_and_larger_than_image only: worst 3.5e-5 (Gaussians 10x the
#                  image seen from far away: float32 cancellation in sigma; a naive float32
#                  weight evaluation errs by 6.6e-5 there)
ATOL_HALF = 2e-6  # fp16/bf16 inputs (computed in float32 on the rounded values): worst 2.7e-7
ATOL_STOP = 1e-6  # test_stop_rule_at_every_chunk_position: worst 1.8e-7; the off-by-one stop
#                   rule is 6.8e-5 away (tests/test_mutations.py)
ATOL_F64 = 1e-9  # torch backend in float64: worst 5e-14


def _render(s, w, h, mode, backend, background=True, **kw):
    bg = s["background"] if (mode == "alpha" and background) else None
    return gsplat2d.rasterize(s["means"], s["conics"], s["colors"], s["opacities"], w, h,
                              mode=mode, background=bg, backend=backend, **kw)


def _reference(s, w, h, mode, background=True):
    bg = s["background"] if (mode == "alpha" and background) else None
    return dense_rasterize(s["means"], s["conics"], s["colors"], s["opacities"], w, h, mode, bg)


def _check(s, w, h, mode, backend, atol, background=True, **kw):
    """Render, compare with the reference away from ambiguous pixels, return the max errors."""
    img, alp = _render(s, w, h, mode, backend, background, **kw)
    ref_img, ref_alp = _reference(s, w, h, mode, background)
    batch = s["means"].shape[:-2]
    C = s["colors"].shape[-1]
    assert img.shape == (*batch, h, w, C)
    assert alp.shape == (*batch, h, w, 1)
    assert img.dtype == torch.float32 and alp.dtype == torch.float32
    assert torch.isfinite(img).all() and torch.isfinite(alp).all()
    amb = ambiguous_pixels(s["means"], s["conics"], s["opacities"], w, h, mode)
    assert amb.float().mean().item() < 0.01, "too many pixels at a threshold; reseed the scene"
    ok = ~amb[..., None]
    # sum mode values grow with the number of overlapping Gaussians: scale the tolerance.
    scale = max(1.0, ref_alp.abs().max().item()) if mode != "alpha" else 1.0
    e_img = max_err(img, ref_img, ok) / scale
    e_alp = max_err(alp, ref_alp, ok) / scale
    assert e_img <= atol, f"image max err {e_img:.3g} (relative to scale {scale:.3g})"
    assert e_alp <= atol, f"alpha max err {e_alp:.3g}"
    return e_img, e_alp


# (batch, N, W, H, C, seed, max std dev in px (None: 1.5x the image)). Sizes keep the Triton
# interpreter's work (pairs of (tile, Gaussian)) small.
CASES = [
    ((), 300, 63, 47, 3, 1, 12.0),
    ((), 120, 33, 17, 1, 2, None),
    ((2,), 100, 33, 17, 8, 3, 10.0),
    ((2, 3), 30, 33, 17, 3, 4, 10.0),
    ((), 120, 64, 64, 32, 5, 10.0),
    ((), 1000, 64, 48, 3, 6, 3.0),
    ((), 40, 17, 13, 40, 7, 8.0),  # C > 32: several channel blocks
]
MODES = ["alpha-bg", "sum", "sum_taper"]  # plain alpha (no background) in test_other_tile_sizes


def _case_id(c):
    batch, n, w, h, C = c[:5]
    b = ("B" + "x".join(map(str, batch)) + "-") if batch else ""
    return f"{b}N{n}-{w}x{h}-C{C}"


# Worst observed (sum mode relative to max alpha): alpha torch 4.1e-7, triton 5.7e-7;
# sum torch 3.0e-7, triton 2.4e-7.
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_dense_reference(backend, case, mode):
    batch, n, w, h, C, seed, max_radius = case
    s = make_scene(batch, n, w, h, C, seed=seed, max_radius=max_radius)
    _check(s, w, h, mode.split("-")[0], backend, ATOL_F32, background=mode.endswith("bg"))


# --------------------------------------------------------------------------------------------
# Validate the reference itself against the literal loop definition.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["alpha", "sum", "sum_taper"])
def test_reference_matches_loop_definition(mode):
    w, h = 11, 9
    s = make_scene((), 60, w, h, 2, seed=11, dtype=torch.float64, opacity=(0.4, 1.0), max_radius=5,
                   degenerate=0.15)
    bg = s["background"] if mode == "alpha" else None
    a = dense_rasterize(s["means"], s["conics"], s["colors"], s["opacities"], w, h, mode, bg)
    b = loop_rasterize(s["means"], s["conics"], s["colors"], s["opacities"], w, h, mode, bg)
    assert max_err(a[0], b[0]) < 1e-12 and max_err(a[1], b[1]) < 1e-12
    if mode == "alpha":
        # The scene exercises the 1e-4 stop rule and the 0.99 clamp somewhere.
        b_nostop = _loop_without_stop(s, w, h)
        assert max_err(b_nostop, b[1]) > 1e-6, "the stop rule never fired in this scene"
        assert (s["opacities"] > ALPHA_MAX).any()


def _loop_without_stop(s, w, h):
    """alpha (1 - prod(1 - a_i)) ignoring the stop rule, for the check above."""
    from gsplat2d.reference import _pixel_terms

    valid, sigma, raw = _pixel_terms(s["means"], s["conics"], s["opacities"], w, h)
    a = raw.clamp(max=ALPHA_MAX)
    a = torch.where(valid[:, None, None] & (sigma >= 0) & (a >= MIN_WEIGHT), a, 0)
    return (1 - torch.prod(1 - a, 0))[..., None]


# --------------------------------------------------------------------------------------------
# Special scenes
# --------------------------------------------------------------------------------------------


# Worst observed (first scene): alpha torch 1.1e-5, triton 1.3e-5; sum torch 2.4e-5, triton
# 3.5e-5 (float32 cancellation in sigma for far, huge Gaussians; see ATOL_FAR).
@pytest.mark.parametrize("mode", ["alpha", "sum"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_outside_and_larger_than_image(backend, mode):
    w, h = 33, 17
    # Means far outside the image (up to 3 image sizes away), radii up to 10x the image: some
    # reach in from outside, some cover the whole image.
    s = make_scene((), 60, w, h, 3, seed=21, margin=3.0, min_radius=0.5, max_radius=10 * w,
                   opacity=(0.05, 0.6))
    _check(s, w, h, mode, backend, ATOL_FAR)
    # Only huge Gaussians centred well outside the image.
    s = make_scene((), 20, w, h, 3, seed=22, margin=0.0, min_radius=2 * w, max_radius=20 * w)
    s["means"] = s["means"] * 4 - torch.tensor([1.5 * w, 1.5 * h])
    _check(s, w, h, mode, backend, ATOL_F32)  # worst observed 2.4e-7


# Worst observed: torch 1.6e-7, triton 2.1e-7.
@pytest.mark.parametrize("mode", ["alpha", "sum"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_degenerate_gaussians_do_not_contribute(backend, mode):
    w, h = 33, 17
    s = make_scene((2,), 100, w, h, 3, seed=31, degenerate=0.4, max_radius=10)
    from gsplat2d.reference import gaussian_valid

    keep = gaussian_valid(s["means"], s["conics"], s["opacities"]).all(0)
    # A non-contributing Gaussian's colour is never read: NaN there must not leak anywhere.
    s["colors"][:, ~keep] = float("nan")
    _check(s, w, h, mode, backend, ATOL_F32)
    # Same image as the scene with the degenerate Gaussians removed.
    assert (~keep).sum() >= 40
    s2 = {k: (v[:, keep] if k != "background" else v) for k, v in s.items()}
    img, alp = _render(s, w, h, mode, backend)
    img2, alp2 = _render(s2, w, h, mode, backend)
    scale = max(1.0, alp2.abs().max().item())
    assert max_err(img, img2) <= 1e-5 * scale and max_err(alp, alp2) <= 1e-5 * scale


@pytest.mark.parametrize("mode", ["alpha", "sum"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_all_degenerate_gives_background(backend, mode):
    w, h = 20, 12
    s = make_scene((), 10, w, h, 4, seed=41)
    make_degenerate(s, list(range(10)))
    img, alp = _render(s, w, h, mode, backend)
    assert torch.equal(alp, torch.zeros_like(alp))
    expect = s["background"].expand(h, w, 4) if mode == "alpha" else torch.zeros(h, w, 4)
    assert torch.equal(img, expect.float())


# Worst observed: alpha torch 2.2e-7 / triton 7.3e-7; sum (relative) 1.4e-7 / 6.4e-7.
@pytest.mark.parametrize("mode", ["alpha", "sum"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_dense_tiles_over_256_gaussians(backend, mode):
    """The published renderer's failure case: more than 256 Gaussians in every 16x16 tile
    (the 2x2 tiles of a 27x21 image, 3 of them partial; the Gaussians crowd the shared corner)."""
    w, h = 27, 21
    s = make_scene((), 320, w, h, 3, seed=51, margin=0.0, min_radius=2.0, max_radius=6.0,
                   opacity=(0.05, 0.5))
    s["means"] = s["means"] / torch.tensor([w, h]) * 8 + 12  # in [12, 20]^2
    counts = dense_tile_counts(s["means"], s["conics"], s["opacities"], w, h, 16)
    assert counts.min().item() > 256, counts
    from gsplat2d.backends import torch_backend

    binning = torch_backend.bin_gaussians(s["means"][None], s["conics"][None], s["opacities"][None],
                                        w, h, 16)
    per_tile = binning.ranges[:, 1] - binning.ranges[:, 0]
    assert per_tile.min().item() > 256
    _check(s, w, h, mode, backend, ATOL_F32)
    if mode == "alpha":
        assert _stop_indices(s, w, h).numel() > 0.25 * w * h  # many pixels hit the 1e-4 stop


def _stop_indices(s, w, h):
    """Index of the Gaussian at which each stopping pixel stops (reference decisions)."""
    from gsplat2d.reference import _pixel_terms

    valid, sigma, raw = _pixel_terms(s["means"], s["conics"], s["opacities"], w, h)
    a = raw.clamp(max=ALPHA_MAX)
    a = torch.where(valid[..., None, None] & (sigma >= 0) & (a >= MIN_WEIGHT), a, 0)
    stopped = torch.cumprod(1 - a, -3) <= 1e-4
    first = stopped.to(torch.int8).argmax(-3)
    return first[stopped.any(-3)]


# Worst observed: torch 1.3e-7, triton 1.8e-7.
@pytest.mark.parametrize("backend", BACKENDS)
def test_stop_rule_at_every_chunk_position(backend):
    """Stacked, similarly placed Gaussians: pixels stop at many different indices (both sides
    of every chunk boundary), and Gaussians after the stop (bright colours) must not leak in."""
    w, h = 17, 13
    n = 60
    s = make_scene((), n, w, h, 3, seed=111, margin=0.0, min_radius=6.0, max_radius=14.0,
                   opacity=(0.3, 0.6))
    s["means"] = s["means"] * 0.3 + torch.tensor([0.35 * w, 0.35 * h])
    s["colors"][40:] = 50.0  # any leak past the stop is obvious
    idx = _stop_indices(s, w, h)
    assert idx.unique().numel() >= 8 and idx.max() < 40
    _check(s, w, h, "alpha", backend, ATOL_STOP)


def clamp_scene():
    """Opacities above 1 (allowed: the weight is clamped): many pixels sit at the 0.99 alpha
    clamp and at the sum mode's clamp of a weight at 1."""
    w, h = 21, 15
    s = make_scene((), 25, w, h, 3, seed=121, margin=0.0, min_radius=2.0, max_radius=6.0,
                   opacity=(0.9, 3.0))
    return s, w, h


# Worst observed: alpha torch 1.5e-7, triton 2.2e-7; sum (relative) 1.1e-7 / 1.9e-7.
@pytest.mark.parametrize("mode", ["alpha", "sum"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_weights_at_their_clamp(backend, mode):
    s, w, h = clamp_scene()
    from gsplat2d.reference import _pixel_terms

    _, _, raw = _pixel_terms(s["means"], s["conics"], s["opacities"], w, h)
    assert ((raw > 1.0).any(0).float().mean() > 0.2).item()  # many pixels see a clamped weight
    _check(s, w, h, mode, backend, ATOL_F32)


# Worst observed: torch 1.6e-7, triton 2.7e-7.
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("mode", ["alpha", "sum"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_half_precision_inputs(backend, mode, dtype):
    w, h = 33, 17
    s = make_scene((2,), 60, w, h, 3, seed=61, dtype=dtype, max_radius=10)
    # The reference sees exactly the rounded half-precision values (upcast to float64).
    _check(s, w, h, mode, backend, ATOL_HALF)


# Worst observed: alpha 4.4e-16, sum 5e-14.
@pytest.mark.parametrize("mode", ["alpha", "sum"])
def test_torch_backend_float64(mode):
    w, h = 33, 17
    s = make_scene((2,), 300, w, h, 3, seed=71, dtype=torch.float64)
    img, alp = _render(s, w, h, mode, "torch")
    assert img.dtype == torch.float64 and alp.dtype == torch.float64
    ref_img, ref_alp = _reference(s, w, h, mode)
    scale = max(1.0, ref_alp.max().item())
    assert max_err(img, ref_img) <= ATOL_F64 * scale
    assert max_err(alp, ref_alp) <= ATOL_F64 * scale


# Worst observed: torch 1.7e-7, triton 2.6e-7.
@pytest.mark.parametrize("backend, tile_size", [
    ("torch", 8), ("torch", 32), ("torch", 5), ("torch", 1),
    pytest.param("triton", 8, marks=requires_triton), pytest.param("triton", 32, marks=requires_triton),
], ids=lambda v: v if isinstance(v, str) else f"tile{v}")
def test_other_tile_sizes(backend, tile_size):
    w, h = 37, 29
    s = make_scene((), 100, w, h, 3, seed=81, max_radius=8)
    for mode in ("alpha", "sum"):
        _check(s, w, h, mode, backend, ATOL_F32, background=False, tile_size=tile_size)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    w, h = 33, 17
    s = make_scene((2,), 50, w, h, 3, seed=91, max_radius=8)
    ref = _render(s, w, h, "alpha", backend)
    # Same values, laid out transposed / strided.
    nc = {
        "means": s["means"].transpose(-1, -2).contiguous().transpose(-1, -2),
        "conics": s["conics"].transpose(0, 1).contiguous().transpose(0, 1),
        "colors": torch.stack([s["colors"]] * 2, -1)[..., 0],
        "opacities": torch.stack([s["opacities"]] * 3, -1)[..., 1],
        "background": torch.stack([s["background"]] * 2, -1)[..., 1],
    }
    assert not nc["means"].is_contiguous() and not nc["opacities"].is_contiguous()
    out = _render(nc, w, h, "alpha", backend)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])


@pytest.mark.parametrize("mode", ["alpha", "sum"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_stage_rasterize_fwd_final_transmittance(backend, mode):
    """The stage-4 launcher alone: T_final == 1 - alpha (alpha mode) and image/alpha match."""
    w, h = 33, 17
    s = make_scene((2,), 60, w, h, 3, seed=101, max_radius=8)
    bg = s["background"] if mode == "alpha" else None
    if backend == "numba":  # its forward reads the record and windows of its own binning
        from gsplat2d.backends import numba_backend

        nb = numba_backend.bin_gaussians(s["means"], s["conics"], s["opacities"], w, h, 16)
        img, alp, T = numba_backend.rasterize_fwd(s["colors"], bg, nb, w, h, 16, mode)
    elif backend == "torch":
        from gsplat2d.backends import torch_backend as impl

        binning = impl.bin_gaussians(s["means"], s["conics"], s["opacities"], w, h, 16)
        img, alp, T = impl.rasterize_fwd(s["means"], s["conics"], s["colors"], s["opacities"], bg,
                                         binning, w, h, 16, mode)
    else:  # the Triton launcher reads the geometry from the binning's record
        from gsplat2d.kernels.binning import bin_gaussians
        from gsplat2d.kernels.rasterize_fwd import rasterize_fwd

        binning = bin_gaussians(s["means"], s["conics"], s["opacities"], w, h, 16)
        img, alp, T = rasterize_fwd(s["colors"], bg, binning, w, h, 16, mode)
    ref = dense_rasterize(s["means"], s["conics"], s["colors"], s["opacities"], w, h, mode, bg,
                          return_final_T=(mode == "alpha"))
    amb = ambiguous_pixels(s["means"], s["conics"], s["opacities"], w, h, mode)[..., None]
    scale = max(1.0, ref[1].max().item())
    assert max_err(img, ref[0], ~amb) <= ATOL_F32 * scale
    assert max_err(alp, ref[1], ~amb) <= ATOL_F32 * scale
    if mode == "alpha":
        assert T.shape == (2, h, w)
        assert max_err(T, ref[2], ~amb[..., 0]) <= ATOL_F32
        assert torch.allclose(T, 1 - alp[..., 0], atol=1e-6)
