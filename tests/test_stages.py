"""The public stages ``bin_gaussians`` + ``rasterize_binned`` equal ``rasterize`` (image, alpha and
every input gradient, bit for bit: the same kernels on the same binning) on the forward tests'
scenes, for every backend and mode; one binning serves several colour sets."""

from __future__ import annotations

import pytest
import torch

import gsplat2d
from conftest import BACKENDS, make_scene

# (batch, N, W, H, C, seed, max radius): a subset of tests/test_rasterize_forward.py's CASES
CASES = [((), 300, 63, 47, 3, 1, 12.0), ((2,), 100, 33, 17, 8, 3, 10.0), ((2, 3), 30, 33, 17, 3, 4, 10.0),
         ((), 40, 17, 13, 40, 7, 8.0)]
IDS = ["N300-63x47-C3", "B2-N100-33x17-C8", "B2x3-N30-33x17-C3", "N40-17x13-C40"]
# The interpreter takes 20-50 s per case above: triton gets two small scenes (C <= 4 and C > 4 paths)
TRITON_CASES = [((2,), 24, 21, 13, 3, 4, 6.0), ((), 20, 17, 13, 6, 7, 6.0)]
TRITON_IDS = ["B2-N24-21x13-C3", "N20-17x13-C6"]
PARAMS = []
for b in BACKENDS:
    name, marks = (b, ()) if isinstance(b, str) else (b.values[0], b.marks)
    cases = zip(TRITON_CASES, TRITON_IDS) if name == "triton" else zip(CASES, IDS)
    PARAMS += [pytest.param(name, c, id=f"{name}-{i}", marks=marks) for c, i in cases]


def _leaves(s, mode):
    names = ["means", "conics", "colors", "opacities"] + (["background"] if mode == "alpha" else [])
    return {k: s[k].clone().requires_grad_(True) for k in names}


@pytest.mark.parametrize("mode", ["alpha", "sum", "sum_taper"])
@pytest.mark.parametrize("backend,case", PARAMS)
def test_stages_equal_rasterize(backend, case, mode):
    batch, n, w, h, C, seed, r = case
    s = make_scene(batch, n, w, h, C, seed=seed, max_radius=r)
    a, b = _leaves(s, mode), _leaves(s, mode)
    img, alp = gsplat2d.rasterize(a["means"], a["conics"], a["colors"], a["opacities"], w, h, mode=mode,
                                  background=a.get("background"), backend=backend)
    scene = gsplat2d.bin_gaussians(b["means"], b["conics"], b["opacities"], w, h, backend=backend)
    assert scene.backend == backend
    img2, alp2 = gsplat2d.rasterize_binned(scene, b["colors"], mode=mode, background=b.get("background"))
    assert torch.equal(img, img2) and torch.equal(alp, alp2)
    g = torch.Generator().manual_seed(seed)
    gi, ga = torch.randn(img.shape, generator=g), torch.randn(alp.shape, generator=g)
    torch.autograd.backward([img, alp], [gi, ga])
    torch.autograd.backward([img2, alp2], [gi, ga])
    for k in a:
        assert a[k].grad is not None and torch.equal(a[k].grad, b[k].grad), k


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_binning_renders_several_colour_sets(backend):
    w, h = 24, 18
    s = make_scene((), 40, w, h, 3, seed=5, max_radius=6.0)
    means = s["means"].clone().requires_grad_(True)
    scene = gsplat2d.bin_gaussians(means, s["conics"], s["opacities"], w, h, backend=backend)
    feats = torch.randn(40, 5)
    for colors, mode in ((s["colors"], "alpha"), (feats, "sum"), (feats[:, :1], "sum_taper")):
        got, _ = gsplat2d.rasterize_binned(scene, colors, mode=mode)
        want, _ = gsplat2d.rasterize(s["means"], s["conics"], colors, s["opacities"], w, h, mode=mode,
                                     backend=backend)
        assert torch.equal(got, want), mode
        got.sum().backward()
    assert means.grad is not None and means.grad.abs().sum() > 0  # three renders' gradients, summed


def test_stage_errors_name_the_argument():
    s = make_scene((2,), 20, 16, 12, 3, seed=1)
    scene = gsplat2d.bin_gaussians(s["means"], s["conics"], s["opacities"], 16, 12, backend="torch")
    with pytest.raises(ValueError, match=r"colors must have shape \(2, 20\) \+ \(C,\)"):
        gsplat2d.rasterize_binned(scene, s["colors"][0])
    with pytest.raises(TypeError, match="BinnedScene"):
        gsplat2d.rasterize_binned((1, 2), s["colors"])
    with pytest.raises(ValueError, match="mode must be one of"):
        gsplat2d.rasterize_binned(scene, s["colors"], mode="max")
    with pytest.raises(ValueError, match="conics must have shape"):
        gsplat2d.bin_gaussians(s["means"], s["conics"][..., :2], s["opacities"], 16, 12)
    empty = gsplat2d.bin_gaussians(s["means"][:, :0], s["conics"][:, :0], s["opacities"][:, :0], 16, 12)
    img, alp = gsplat2d.rasterize_binned(empty, s["colors"][:, :0], mode="alpha", background=torch.ones(2, 3))
    assert img.shape == (2, 12, 16, 3) and torch.equal(img, torch.ones_like(img)) and alp.abs().sum() == 0
