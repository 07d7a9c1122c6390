"""The public rasterizer: :func:`rasterize`."""

from __future__ import annotations


import torch

from gsplat2d._validate import validate
from gsplat2d.backends import fp32_region, triton_interpret

__all__ = ["rasterize", "triton_available", "numba_available"]


def triton_available() -> bool:
    """Whether the Triton kernels can be imported here."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


TRITON_TILE_SIZES = (8, 16, 32)



def numba_available() -> bool:
    """Whether the numba CPU backend can be imported here."""
    from gsplat2d.backends.numba_backend import available

    return available()


def _pick_backend(backend: str, device: torch.device, tile_size: int) -> str:
    if backend == "auto":
        if device.type == "cpu":
            return "numba" if numba_available() else "torch"
        use_triton = (
            device.type == "cuda" and tile_size in TRITON_TILE_SIZES and triton_available()
        )
        return "triton" if use_triton else "torch"
    if backend == "numba":
        if device.type != "cpu":
            raise RuntimeError(f"backend='numba' renders CPU tensors, not {device}; use 'auto'")
        if not numba_available():
            raise RuntimeError("backend='numba' needs the numba package (pip install numba); "
                               "use backend='torch' or 'auto'")
    if backend == "triton":
        if not triton_available():
            raise RuntimeError(
                "backend='triton' needs the triton package (Linux x86_64/aarch64); "
                "use backend='torch' or 'auto'"
            )
        if device.type == "cpu" and not triton_interpret():
            raise RuntimeError(
                "backend='triton' on CPU tensors runs only under Triton's interpreter: set "
                "TRITON_INTERPRET=1 before importing triton (slow, for testing), or use "
                "backend='torch' for CPU rendering"
            )
        if device.type not in ("cpu", "cuda"):
            raise RuntimeError(f"backend='triton' supports CUDA (or interpreted CPU) tensors, not {device}")
    return backend


def _select_backend(backend: str, device: torch.device, tile_size: int) -> str:
    """:func:`_pick_backend`, then the tile sizes the Triton kernels are built for (checked after
    ``"auto"`` has chosen: it falls back to torch for any other tile size)."""
    backend = _pick_backend(backend, device, tile_size)
    if backend == "triton" and tile_size not in TRITON_TILE_SIZES:
        raise ValueError(f"tile_size must be 8, 16 or 32 for backend='triton', got {tile_size}")
    return backend


def _render_empty(
    means: torch.Tensor,
    conics: torch.Tensor,
    colors: torch.Tensor,
    opacities: torch.Tensor,
    background: torch.Tensor | None,
    width: int,
    height: int,
    C: int,
    batch_shape: tuple[int, ...],
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Background-only image and zero alpha of a scene without Gaussians (or an empty batch)."""
    out_dtype = torch.float64 if (backend in ("torch", "numba") and torch.float64 in (
        means.dtype, conics.dtype, colors.dtype, opacities.dtype)) else torch.float32
    image = torch.zeros((*batch_shape, height, width, C), dtype=out_dtype, device=means.device)
    if background is not None:
        image = image + background.to(out_dtype)[..., None, None, :]
    alpha = torch.zeros((*batch_shape, height, width, 1), dtype=out_dtype, device=means.device)
    # Keep the graph connected so .backward() through an empty scene works.
    zero = (means.sum() + conics.sum() + colors.sum() + opacities.sum()) * 0
    return image + zero.to(out_dtype), alpha + zero.to(out_dtype)


def _rasterize_flat(
    backend: str,
    means: torch.Tensor,
    conics: torch.Tensor,
    colors: torch.Tensor,
    opacities: torch.Tensor,
    background: torch.Tensor | None,
    B: int,
    C: int,
    width: int,
    height: int,
    tile_size: int,
    mode: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render with ``backend`` on the inputs flattened to ``B`` images: ``image [B, H, W, C]``,
    ``alpha [B, H, W, 1]``."""
    N = means.shape[-2]
    m = means.reshape(B, N, 2)
    q = conics.reshape(B, N, 3)
    c = colors.reshape(B, N, C)
    o = opacities.reshape(B, N)
    bg = background.reshape(B, C) if background is not None else None

    # Rasterization is float32 (float64 for float64 inputs) even under autocast: the torch
    # backend's bmm would otherwise run in bf16/fp16 inside a mixed-precision training step.
    with fp32_region(means.device):
        if backend == "triton":
            from gsplat2d.backends.triton_function import rasterize_triton

            return rasterize_triton(m, q, c, o, bg, width, height, tile_size, mode)
        if backend == "numba":
            from gsplat2d.backends.numba_function import rasterize_numba

            return rasterize_numba(m, q, c, o, bg, width, height, tile_size, mode)
        from gsplat2d.backends.torch_function import rasterize_torch

        m, q, c, o = (t.contiguous() for t in (m, q, c, o))
        return rasterize_torch(m, q, c, o, bg, width, height, tile_size, mode)


def rasterize(
    means: torch.Tensor,
    conics: torch.Tensor,
    colors: torch.Tensor,
    opacities: torch.Tensor,
    width: int,
    height: int,
    *,
    mode: str = "alpha",
    background: torch.Tensor | None = None,
    tile_size: int = 16,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render 2D Gaussians onto a ``height x width`` pixel grid. Differentiable in every tensor.

    Args:
        means: ``[..., N, 2]`` centres in pixels (x right, y down; pixel ``(x, y)`` is sampled
            at ``(x + 0.5, y + 0.5)``).
        conics: ``[..., N, 3]`` ``(a, b, c)``, the inverse covariance ``[[a, b], [b, c]]`` in
            1/pixel^2 (see :func:`gsplat2d.conics_from_cholesky`, ``conics_from_scale_rotation``).
        colors: ``[..., N, C]``, any ``C >= 1`` (RGB, grey or feature channels).
        opacities: ``[..., N]``.
        width, height: output size in pixels (each in ``[1, 65536]``).
        mode: ``"alpha"``: front-to-back compositing in index order (weights
            ``min(0.99, o exp(-sigma))``, skipped below 1/255, a pixel stops once its
            transmittance would fall to 1e-4). ``"sum"``: ``image = sum_i w_i c_i`` with
            ``w_i = min(1, o exp(-sigma))`` (below 1/255 skipped), no limit on Gaussians per tile.
            ``"sum_taper"``: sum mode with ``w_i - m (1 + ln(w_i / m))``, ``m = 1/255``, in
            place of ``w_i``: zero with zero slope at the cutoff, so the image has no jump
            where a Gaussian ends (no rings when a field is magnified many times; see
            :data:`gsplat2d.binning.TAPER_A`).
        background: ``[..., C]`` colour behind the Gaussians (alpha mode only; default 0).
        tile_size: tile side in pixels (triton: 8, 16 or 32).
        backend: ``"triton"`` (kernels; CUDA tensors, or CPU tensors under
            ``TRITON_INTERPRET=1``), ``"numba"`` (compiled CPU kernels; CPU tensors),
            ``"torch"`` (tiled PyTorch, any device) or ``"auto"`` (triton on CUDA with a
            tile_size of 8, 16 or 32; numba on CPU where it imports; torch otherwise).

    Returns:
        ``image [..., H, W, C]`` and ``alpha [..., H, W, 1]`` (``1 - T`` in alpha mode, the sum
        of weights in the sum modes), float32 (float64 on the numba and torch backends for float64
        inputs).

    Gaussians with a non-positive-definite conic, opacity below 1/255 or a non-finite mean,
    conic or opacity contribute nothing. Leading dims ``...`` are independent images rendered
    in one launch.
    """
    width, height, C, batch_shape = validate(
        means, conics, colors, opacities, width, height, mode, background, tile_size, backend
    )
    backend = _select_backend(backend, means.device, tile_size)
    B = 1
    for s in batch_shape:
        B *= s
    if means.shape[-2] == 0 or B == 0:
        return _render_empty(means, conics, colors, opacities, background, width, height, C, batch_shape,
                             backend)
    image, alpha = _rasterize_flat(
        backend, means, conics, colors, opacities, background, B, C, width, height, tile_size, mode
    )
    return (
        image.reshape(*batch_shape, height, width, C),
        alpha.reshape(*batch_shape, height, width, 1),
    )
