"""``torch.autograd.Function`` for the numba CPU backend (the mirror of ``triton_function.py``).

Forward bins and rasterizes with the compiled CPU kernels (:mod:`.numba_backend`); backward runs
the backward kernel on the saved binning (never recomputed).
"""

from __future__ import annotations

import torch

from gsplat2d.backends import compute_dtype, fp32_backward, input_grads, numba_backend

__all__ = ["RasterizeNumba", "rasterize_numba", "bin_numba"]


class RasterizeNumba(torch.autograd.Function):
    """Forward: bin + rasterize (numba). Backward: the numba backward kernel.

    Computes in float64 when any input is float64, else float32; gradients are returned in each
    input's dtype.
    """

    @staticmethod
    def forward(ctx, means, conics, colors, opacities, background, width, height, tile_size, mode,
                binning=None):
        inputs = (means, conics, colors, opacities, background)
        ctx.dtypes = [None if t is None else t.dtype for t in inputs]
        m, q, c, o, bg = (None if t is None else t.detach() for t in inputs)
        nb = binning if binning is not None else bin_numba(m, q, o, width, height, tile_size, compute_dtype(*inputs))
        image, alpha, t_final = numba_backend.rasterize_fwd(c, bg, nb, width, height, tile_size, mode)
        ctx.nb = nb  # intermediates (no input or output of the Function)
        ctx.args = (bg is not None, width, height, tile_size, mode)
        # the backward reads the image only in alpha mode (the sum-mode gradient needs none)
        ctx.save_for_backward(q, c, image if mode == "alpha" else None, t_final)
        return image, alpha

    backward = fp32_backward(lambda ctx, gi, ga: _backward(ctx, gi, ga))


def _backward(ctx, grad_image, grad_alpha):
    """The Function's backward (see its class docstring), run with autocast off."""
    q, c, image, t_final = ctx.saved_tensors
    has_bg, width, height, tile_size, mode = ctx.args
    B, C, dt = c.shape[0], c.shape[-1], ctx.nb.rec.dtype
    if grad_image is None:
        grad_image = torch.zeros((B, height, width, C), dtype=dt)
    if grad_alpha is None:
        grad_alpha = torch.zeros((B, height, width, 1), dtype=dt)
    grads = numba_backend.rasterize_bwd(
        q, c, has_bg, ctx.nb, image, t_final, grad_image, grad_alpha, width, height, tile_size, mode,
    )
    return input_grads(ctx, grads)


def bin_numba(means, conics, opacities, width, height, tile_size, dtype=None):
    """The numba binning of flattened geometry ``[B, N, *]`` (computed in ``dtype``: by default
    float64 when any input is float64, else float32)."""
    dt = dtype or compute_dtype(means, conics, opacities)
    return numba_backend.bin_gaussians(means.detach(), conics.detach(), opacities.detach(), width, height,
                                       tile_size, dt)


def rasterize_numba(means, conics, colors, opacities, background, width, height, tile_size, mode,
                    binning=None):
    """Differentiable numba-backend rasterization of flattened CPU inputs ``[B, N, *]``, on
    ``binning`` (from :func:`bin_numba` of the same geometry) when given.

    Returns ``image [B, H, W, C]`` and ``alpha [B, H, W, 1]``, float64 for float64 inputs (or a
    float64 binning), else float32.
    """
    return RasterizeNumba.apply(means, conics, colors, opacities, background, width, height,
                                tile_size, mode, binning)
