"""``torch.autograd.Function`` wrapping the Triton binning, forward and backward launchers."""

from __future__ import annotations

import torch

from gsplat2d.backends import fp32_backward
from gsplat2d.binning import Binning

__all__ = ["RasterizeTriton", "rasterize_triton", "bin_triton"]


class RasterizeTriton(torch.autograd.Function):
    """Forward: bin + rasterize (Triton). Backward: the Triton backward kernel.

    Binning is saved, never recomputed in backward. Kernels compute in float32; gradients are
    returned in each input's dtype.
    """

    @staticmethod
    def forward(ctx, means, conics, colors, opacities, background, width, height, tile_size, mode,
                binning=None):
        from gsplat2d.kernels.rasterize_fwd import rasterize_fwd

        colors_c = colors.detach().float().contiguous()
        bg_c = background.detach().float().contiguous() if background is not None else None
        # Queued before the binning, whose pair count is read on the host: by then this flag is
        # computed too, so reading it adds a few bytes to that sync, not a sync of its own.
        odd = (~torch.isfinite(colors_c)).any()
        if binning is None:
            binning = bin_triton(means, conics, opacities, width, height, tile_size)
        image, alpha, t_final = rasterize_fwd(colors_c, bg_c, binning, width, height, tile_size, mode,
                                              exact=bool(odd))
        # the backward reads the geometry from binning.params, and the image only in alpha mode
        ctx.save_for_backward(
            colors_c, binning.ranges, binning.gauss_ids, binning.counts, binning.params,
            image if mode == "alpha" else None, t_final,
        )
        ctx.meta = (binning.tiles_x, binning.tiles_y, width, height, tile_size, mode)
        ctx.has_bg = background is not None
        ctx.dtypes = tuple(
            t.dtype if t is not None else None
            for t in (means, conics, colors, opacities, background)
        )
        return image, alpha

    backward = fp32_backward(lambda ctx, gi, ga: _backward(ctx, gi, ga))


def _backward(ctx, grad_image, grad_alpha):
    """The Function's backward (see its class docstring), run with autocast off."""
    from gsplat2d.kernels.rasterize_bwd import rasterize_bwd

    colors, ranges, ids, counts, params, image, t_final = ctx.saved_tensors
    tiles_x, tiles_y, width, height, tile_size, mode = ctx.meta
    B, N, C = colors.shape
    dev = colors.device
    if grad_image is None:
        grad_image = torch.zeros((B, height, width, C), dtype=torch.float32, device=dev)
    if grad_alpha is None:
        grad_alpha = torch.zeros((B, height, width, 1), dtype=torch.float32, device=dev)
    binning = Binning(tiles_x, tiles_y, ranges, ids, counts, params)
    g_means, g_conics, g_colors, g_opac, g_bg = rasterize_bwd(
        colors, ctx.has_bg, binning, image, t_final,
        grad_image.float().contiguous(), grad_alpha.float().contiguous(),
        width, height, tile_size, mode,
    )
    grads = [g_means, g_conics, g_colors, g_opac, g_bg]
    out = []
    for g, dt, need in zip(grads, ctx.dtypes, ctx.needs_input_grad[:5]):
        out.append(g.to(dt) if (need and g is not None) else None)
    return (*out, None, None, None, None, None)


def rasterize_triton(
    means: torch.Tensor,
    conics: torch.Tensor,
    colors: torch.Tensor,
    opacities: torch.Tensor,
    background: torch.Tensor | None,
    width: int,
    height: int,
    tile_size: int,
    mode: str,
    binning: Binning | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable Triton rasterization of flattened inputs ``[B, N, *]``, on ``binning``
    (from :func:`bin_triton` of the same geometry) when given.

    Returns ``image [B, H, W, C]`` and ``alpha [B, H, W, 1]`` (float32).
    """
    return RasterizeTriton.apply(
        means, conics, colors, opacities, background, width, height, tile_size, mode, binning
    )


def _geometry(means, conics, opacities):
    """The geometry as the kernels take it. They compute in float32 and exist as float32 variants
    only (the AOT report compiles exactly those): fp16/bf16 widen exactly; float64 geometry keeps
    its precision through the float64 binning stage, which rounds the per-Gaussian record once."""
    geo = torch.float64 if torch.float64 in (means.dtype, conics.dtype, opacities.dtype) else torch.float32
    return tuple(t.detach().to(geo).contiguous() for t in (means, conics, opacities))


def bin_triton(means, conics, opacities, width, height, tile_size) -> Binning:
    """The Triton binning of flattened geometry ``[B, N, *]``."""
    from gsplat2d.kernels.binning import bin_gaussians

    return bin_gaussians(*_geometry(means, conics, opacities), width, height, tile_size)
