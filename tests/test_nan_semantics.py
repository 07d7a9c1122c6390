"""What a non-finite colour does (the rule is in ``rasterize``'s docstring and the float64
reference): it reaches exactly the pixels its Gaussian contributes to, on every backend.

A plausible wrong implementation: accumulating ``w * c`` with ``w = 0`` for the pixels a Gaussian
misses (``0 * nan = nan``) poisons the whole block a program covers: 16 x 16 tiles on the Triton
backend before this rule, 32-pixel blocks in a torch-style backend, every pixel in a dense einsum
reference. Each of those fails ``test_non_finite_colour_reaches_exactly_its_pixels``."""

from __future__ import annotations

import pytest
import torch

from conftest import BACKENDS
from gsplat2d import rasterize
from gsplat2d.reference import ambiguous_pixels, dense_rasterize, loop_rasterize

W, H = 72, 56  # 5 x 4 tiles, the last column and row partial


def _scene(bad_value: float, channel: int = 1, C: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = 30
    means = torch.rand(n, 2, generator=g) * torch.tensor([W, H])
    sig = torch.rand(n, generator=g) * 3 + 1.5
    conics = torch.stack([1 / sig**2, 0.1 / sig**2, 1 / sig**2], -1)
    colors = torch.rand(n, C, generator=g)
    opacities = torch.rand(n, generator=g) * 0.5 + 0.4
    means[5] = torch.tensor([47.0, 31.0])  # across the corner of four tiles
    colors[5, channel] = bad_value
    return means, conics, colors, opacities


def _contributes(means, conics, opacities, mode):
    """Bool [H, W]: pixels Gaussian 5 contributes to, from the float64 reference (its colour set
    to a marker)."""
    colors = torch.zeros(len(means), 1, dtype=torch.float64)
    colors[5] = 1.0
    img, _ = dense_rasterize(means, conics, colors, opacities, W, H, mode=mode)
    return img[..., 0] != 0


@pytest.mark.parametrize("mode", ["alpha", "sum", "sum_taper"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_colour_reaches_exactly_its_pixels(backend, bad, mode):
    means, conics, colors, opacities = _scene(bad)
    img, alpha = rasterize(means, conics, colors, opacities, W, H, mode=mode, backend=backend)
    ref, ref_alpha = dense_rasterize(means, conics, colors, opacities, W, H, mode=mode)
    hit = _contributes(means, conics, opacities, mode)
    assert 20 < int(hit.sum()) < W * H // 4  # the Gaussian covers part of four tiles, not all of them
    odd = ~torch.isfinite(img)
    # a float32 weight within rounding of the 1/255 cutoff may decide either way (a tapered
    # weight there is ~1e-9): such pixels, 2 of 262 here, are left out of the comparison
    sure = ~ambiguous_pixels(means, conics, opacities, W, H, mode=mode, weight_tol=1e-3)
    assert int((~sure & hit).sum()) <= 4
    assert torch.equal(odd[..., 1][sure], hit[sure]), f"{int(odd[..., 1].sum())} non-finite pixels, expected {int(hit.sum())}"
    assert not odd[..., [0, 2]].any()  # the other channels stay finite
    assert torch.equal((~torch.isfinite(ref))[..., 1], hit)  # the reference's rule, exactly
    if bad == float("inf"):
        assert (img[..., 1][hit & sure] == float("inf")).all()
    # everything else as usual: the finite pixels and alpha match the reference
    fine = sure[..., None] & ~odd
    torch.testing.assert_close(img[fine], ref[fine].float(), rtol=1e-5, atol=2e-6)  # worst seen 4.8e-7
    torch.testing.assert_close(alpha, ref_alpha.float(), rtol=1e-5, atol=2e-6)


def test_reference_agrees_with_the_loop_definition():
    """The vectorised reference's rule is the plain loop's: a pixel sums only its contributors."""
    means, conics, colors, opacities = _scene(float("nan"))
    for mode in ("alpha", "sum"):
        dense, _ = dense_rasterize(means[:, :], conics, colors, opacities, W, H, mode=mode)
        loop, _ = loop_rasterize(means, conics, colors.double(), opacities, W, H, mode=mode)
        assert torch.equal(torch.isnan(dense), torch.isnan(loop))
        fin = torch.isfinite(dense)
        torch.testing.assert_close(dense[fin], loop.double()[fin], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", ["alpha", "sum"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_with_a_non_finite_colour(backend, mode):
    means, conics, colors, opacities = _scene(float("nan"))
    params = [t.clone().requires_grad_(True) for t in (means, conics, colors, opacities)]
    img, alpha = rasterize(*params, W, H, mode=mode, backend=backend)
    g = torch.Generator().manual_seed(1)
    torch.autograd.backward([img, alpha], [torch.rand(img.shape, generator=g), torch.rand(alpha.shape, generator=g)])
    gm, gq, gc, go = (p.grad for p in params)
    assert torch.isfinite(gc).all()  # colour gradients: sums of weights x cotangents
    bad = ~(torch.isfinite(gm).all(-1) & torch.isfinite(gq).all(-1) & torch.isfinite(go))
    assert bad[5]  # the Gaussian itself
    if mode == "sum":
        assert bad.nonzero().flatten().tolist() == [5]
    else:  # at most the Gaussians that share a 16 x 16 tile with it
        n = len(means)
        foot, _ = dense_rasterize(means, conics, torch.eye(n, dtype=torch.float64), opacities, W, H, mode="sum")
        tiles = [{(x // 16, y // 16) for y, x in (foot[..., i] != 0).nonzero().tolist()} for i in range(n)]
        sharing = {i for i in range(n) if tiles[i] & tiles[5]}
        assert len(sharing) < n  # the bound excludes someone
        assert set(bad.nonzero().flatten().tolist()) <= sharing
