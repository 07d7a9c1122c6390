"""Benchmarks: binning, forward, backward, forward+backward per backend, mode and scene.

Run with ``pytest bench/ --benchmark-only`` (see bench/README.md). Parametrised by
``bench/conftest.py`` (``case``, ``backend``, ``mode``); ids read
``<backend>-<mode>-<case>-<W>x<H>-N<n>-r<radius>``.
"""

from __future__ import annotations

import torch

from benchlib import DEVICE, binner, make_scene, renderer


def _grad_inputs(case):
    return [t.clone().requires_grad_(True) for t in make_scene(case, str(DEVICE))]


def _grad_outputs(case, image, alpha):
    g = torch.Generator(device="cpu").manual_seed(1)
    gi = torch.rand(image.shape, generator=g).to(image.device, image.dtype)
    ga = torch.rand(alpha.shape, generator=g).to(alpha.device, alpha.dtype)
    return gi, ga


def test_bin(runner, case, backend, mode):
    """Binning (bounds, intersections, sort, ranges); no gradients. Mode-independent (mode=None)."""
    m, q, c, o = make_scene(case, str(DEVICE))
    fn = binner(backend, case)
    runner.run(lambda: fn(m, q, c, o), case=case, backend=backend, mode=mode, stage="bin")


def test_fwd(runner, case, backend, mode):
    """Public forward (binning + rasterization), inputs without requires_grad."""
    m, q, c, o = make_scene(case, str(DEVICE))
    render = renderer(backend, case, mode)

    def fwd():
        with torch.no_grad():
            return render(m, q, c, o)

    runner.run(fwd, case=case, backend=backend, mode=mode, stage="fwd")


def test_bwd(runner, case, backend, mode):
    """Backward only: the forward runs in the (untimed) setup of every round."""
    render = renderer(backend, case, mode)
    inputs = _grad_inputs(case)

    def setup():
        for t in inputs:
            t.grad = None
        image, alpha = render(*inputs)
        gi, ga = _grad_outputs(case, image, alpha)
        return (image, alpha, gi, ga), {}

    def bwd(image, alpha, gi, ga):
        torch.autograd.backward([image, alpha], [gi, ga])

    runner.run(bwd, setup=setup, case=case, backend=backend, mode=mode, stage="bwd")


def test_fwdbwd(runner, case, backend, mode):
    """One training step's rendering: forward with grad + backward."""
    render = renderer(backend, case, mode)
    inputs = _grad_inputs(case)
    with torch.no_grad():
        image, alpha = render(*[t.detach() for t in inputs])
    gi, ga = _grad_outputs(case, image, alpha)

    def fwdbwd():
        for t in inputs:
            t.grad = None
        image, alpha = render(*inputs)
        torch.autograd.backward([image, alpha], [gi, ga])

    runner.run(fwdbwd, case=case, backend=backend, mode=mode, stage="fwdbwd")
