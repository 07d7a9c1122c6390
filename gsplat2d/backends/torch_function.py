"""``torch.autograd.Function`` for the torch backend: the PyTorch mirror of ``backends/triton_function.py``.

Forward runs the torch binning and :func:`gsplat2d.backends.torch_backend.rasterize_fwd` without building
an autograd graph; backward runs :func:`gsplat2d.backends.torch_backend.rasterize_bwd` (the mirror of the
Triton backward kernel). :func:`rasterize_torch_autograd` keeps the old path, plain autograd
through ``rasterize_fwd``, as the gradient reference.
"""

from __future__ import annotations

import torch

from gsplat2d.backends import fp32_backward, input_grads, torch_backend

__all__ = ["RasterizeTorch", "rasterize_torch", "rasterize_torch_autograd"]


class RasterizeTorch(torch.autograd.Function):
    """Forward: bin + rasterize (torch, no graph). Backward: the torch backward stage.

    Binning is saved, never recomputed in backward. Computes in float64 when any input is
    float64, else float32; gradients are returned in each input's dtype.
    """

    @staticmethod
    def forward(ctx, means, conics, colors, opacities, background, width, height, tile_size, mode,
                binning=None):
        inputs = (means, conics, colors, opacities, background)
        ctx.dtypes = [None if t is None else t.dtype for t in inputs]
        m, q, c, o, bg = (None if t is None else t.detach().contiguous() for t in inputs)
        with torch.no_grad():
            if binning is None:
                binning = torch_backend.bin_gaussians(m, q, o, width, height, tile_size)
            image, alpha, t_final = torch_backend.rasterize_fwd(
                m, q, c, o, bg, binning, width, height, tile_size, mode
            )
        # the binning is an intermediate (no input or output of the Function): kept on ctx
        ctx.binning = binning
        ctx.args = (bg is not None, width, height, tile_size, mode)
        # the backward reads the image only in alpha mode
        ctx.save_for_backward(m, q, c, o, image if mode == "alpha" else None, t_final)
        ctx.out_dtype = image.dtype
        return image, alpha

    backward = fp32_backward(lambda ctx, gi, ga: _backward(ctx, gi, ga))


def _backward(ctx, grad_image, grad_alpha):
    """The Function's backward (see its class docstring), run with autocast off."""
    m, q, c, o, image, t_final = ctx.saved_tensors
    has_bg, width, height, tile_size, mode = ctx.args
    B, C = c.shape[0], c.shape[-1]
    if grad_image is None:
        grad_image = torch.zeros((B, height, width, C), dtype=ctx.out_dtype, device=c.device)
    if grad_alpha is None:
        grad_alpha = torch.zeros((B, height, width, 1), dtype=ctx.out_dtype, device=c.device)
    grads = torch_backend.rasterize_bwd(
        m, q, c, o, has_bg, ctx.binning, image, t_final, grad_image, grad_alpha,
        width, height, tile_size, mode,
    )
    return input_grads(ctx, grads)


def rasterize_torch_autograd(means, conics, colors, opacities, background, width, height,
                             tile_size, mode, binning=None):
    """Reference path: torch binning + ``rasterize_fwd`` differentiated by plain autograd.

    Inputs flattened ``[B, N, *]``; returns ``image [B, H, W, C]``, ``alpha [B, H, W, 1]``.
    """
    if binning is None:
        binning = torch_backend.bin_gaussians(means, conics, opacities, width, height, tile_size)
    image, alpha, _ = torch_backend.rasterize_fwd(
        means, conics, colors, opacities, background, binning, width, height, tile_size, mode
    )
    return image, alpha


def rasterize_torch(means, conics, colors, opacities, background, width, height, tile_size, mode,
                    binning=None):
    """Differentiable torch-backend rasterization of flattened inputs ``[B, N, *]``.

    Uses :class:`RasterizeTorch`; scenes with NaN/Inf colours take the autograd reference path
    (its gradients keep non-finite colours to the pixels they cover). Returns ``image
    [B, H, W, C]`` and ``alpha [B, H, W, 1]``, float64 for float64 inputs, else float32.
    """
    if not bool(torch.isfinite(colors.detach()).all()):
        return rasterize_torch_autograd(
            means, conics, colors, opacities, background, width, height, tile_size, mode, binning
        )
    return RasterizeTorch.apply(
        means, conics, colors, opacities, background, width, height, tile_size, mode, binning
    )
