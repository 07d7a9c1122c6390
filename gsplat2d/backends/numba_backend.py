"""The numba CPU backend's launchers: binning, forward and backward on CPU tensors.

Same stages and contracts as ``docs/design.md`` (the torch backend and the Triton kernels), run
by the compiled kernels of :mod:`.numba_kernels`; each launcher only converts, allocates and
launches. Stage 1 evaluates the design's float64 bound formula per Gaussian (its outputs equal
the torch backend's, tested); stages 2-3 are one counting sort instead of a key sort.

Compute dtype: float64 when any input is float64, else float32 (fp16/bf16 widen), as the torch
backend. Threads: the kernels run on ``torch.get_num_threads()`` threads (so ``--num_threads``
and ``torch.set_num_threads`` govern them too), parallel over tiles.
"""

from __future__ import annotations

import functools
import time
from typing import NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from gsplat2d.binning import EXTENT_ABS_PAD, EXTENT_REL_PAD, MODES, Binning, check_pair_budget, tile_grid
from gsplat2d.kernels._alloc import empty

__all__ = [
    "NumbaBinning", "available", "compute_tile_bounds", "bin_gaussians", "rasterize_fwd",
    "rasterize_bwd", "warm_up",
]


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether numba (and so this backend) can be imported here (asked once per process: a
    failed import would otherwise be retried by every ``backend="auto"`` call)."""
    try:
        import numba  # noqa: F401
    except Exception:
        return False
    return True


def _kernels():
    """The kernel module (imports numba; compiled kernels load from the cache on first call)."""
    from gsplat2d.backends import numba_kernels

    return numba_kernels


def _set_threads() -> None:
    import numba

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


class NumbaBinning(NamedTuple):
    """What the numba kernels read: the :class:`~gsplat2d.binning.Binning` contract (``params``
    the float32 record, identical to the other backends'), the same record in the compute dtype
    (``rec [B*N, 8]``) and each Gaussian's pixel window (``win`` int32 ``[B*N, 4]``)."""

    binning: Binning
    rec: Tensor
    win: Tensor


def compute_tile_bounds(
    means: Tensor, conics: Tensor, opacities: Tensor, width: int, height: int, tile_size: int,
    dtype: torch.dtype = torch.float32,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Stage 1 (``docs/design.md``) plus what the CPU kernels read, from ``[B, N, 2]``,
    ``[B, N, 3]``, ``[B, N]`` inputs: ``rects`` int32 ``[B, N, 4]``, ``counts`` int32 ``[B, N]``,
    ``params`` float32 ``[B, N, 8]`` (the record, as the torch backend's), the record in ``dtype``
    ``[B, N, 8]`` and the pixel windows int32 ``[B, N, 4]`` (half-open ``(x0, y0, x1, y1)``: the
    pixels whose centre lies in the padded bound; every other pixel has weight below 1/255)."""
    B, N = opacities.shape
    m, q, o = (t.detach().reshape(B * N, -1) for t in (means, conics, opacities))
    m, q, o = (t if t.dtype in _NP else t.float() for t in (m, q, o))  # fp16/bf16 widen exactly
    rects = empty((B, N, 4), torch.int32, "cpu")
    counts = empty((B, N), torch.int32, "cpu")
    params = empty((B, N, 8), torch.float32, "cpu")
    rec = params if dtype == torch.float32 else empty((B, N, 8), dtype, "cpu")
    win = empty((B, N, 4), torch.int32, "cpu")
    _set_threads()
    _kernels().tile_bounds(
        m.contiguous().numpy(), q.contiguous().numpy(), o.reshape(-1).contiguous().numpy(),
        width, height, tile_size, EXTENT_REL_PAD, EXTENT_ABS_PAD, rects.view(B * N, 4).numpy(),
        counts.view(-1).numpy(), params.view(B * N, 8).numpy(), rec.view(B * N, 8).numpy(),
        win.view(B * N, 4).numpy(),
    )
    return rects, counts, params, rec, win


def bin_gaussians(
    means: Tensor, conics: Tensor, opacities: Tensor, width: int, height: int, tile_size: int,
    dtype: torch.dtype = torch.float32,
) -> NumbaBinning:
    """Stages 1-3: bounds, then per-tile ranges and ids by a counting sort (equal to sorting the
    stage-2 keys). Inputs ``[B, N, 2]``, ``[B, N, 3]``, ``[B, N]``.

    Raises:
        ValueError / MemoryError: too many tile-Gaussian pairs (:func:`check_pair_budget`).
    """
    B, N = opacities.shape
    tiles_x, tiles_y = tile_grid(width, height, tile_size)
    rects, counts, params, rec, win = compute_tile_bounds(
        means, conics, opacities, width, height, tile_size, dtype)
    total = int(counts.sum(dtype=torch.int64))
    check_pair_budget(total, B * N, B * tiles_x * tiles_y, counts.device)
    ranges = empty((B * tiles_x * tiles_y, 2), torch.int64, "cpu")
    ids = empty((total,), torch.int32, "cpu")
    _kernels().bin_tiles(rects.view(B * N, 4).numpy(), counts.view(B * N).numpy(), B, N,
                         tiles_x, tiles_y, ranges.numpy(), ids.numpy())
    return NumbaBinning(Binning(tiles_x, tiles_y, ranges, ids, counts, params),
                        rec.view(B * N, 8), win.view(B * N, 4))


_NP = {torch.float32: np.float32, torch.float64: np.float64}


def _pixel_centres(width: int, height: int, dtype: torch.dtype) -> np.ndarray:
    """``i + 0.5`` for every pixel column and row of the image (the kernels' pixel centres and
    window bounds)."""
    n = max(width, height)
    return (torch.arange(n, dtype=torch.float64) + 0.5).to(dtype).numpy()


def _np(t: Tensor, dtype: torch.dtype) -> np.ndarray:
    """A contiguous ``dtype`` NumPy view (a copy only where a cast or layout needs one)."""
    return t.detach().to(dtype).contiguous().numpy()


def rasterize_fwd(
    colors: Tensor, background: Optional[Tensor], nb: NumbaBinning, width: int, height: int,
    tile_size: int, mode: str,
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Forward (stage 4) on the binning of :func:`bin_gaussians`. ``colors [B, N, C]``,
    ``background [B, C]`` or None (alpha mode). Returns ``image [B, H, W, C]``, ``alpha
    [B, H, W, 1]`` and (alpha mode) ``T_final [B, H, W]``, in ``nb.rec``'s dtype.

    ``image`` is stored channel-major (a ``[B, C, H, W]`` tensor, permuted): the kernels' layout,
    so ``image.permute(0, 3, 1, 2)`` (NCHW, what image models take) is contiguous and free."""
    B, N, C = colors.shape
    dt = nb.rec.dtype
    k = _kernels()
    alpha_mode = mode == "alpha"
    image = empty((B, C, height, width), dt, "cpu")
    alpha = empty((B, height, width, 1), dt, "cpu")
    t_final = empty((B, height, width), dt, "cpu") if alpha_mode else alpha.view(B, height, width)
    bg = _np(background, dt) if background is not None else np.zeros((B, 0), dtype=_NP[dt])
    _set_threads()
    k.rasterize_fwd_kernel(
        nb.rec.numpy(), nb.win.numpy(), _np(colors.reshape(B * N, C), dt), bg,
        nb.binning.ranges.numpy(), nb.binning.gauss_ids.numpy(), _pixel_centres(width, height, dt),
        k.kernel_constants(_NP[dt], mode), N, width, height, nb.binning.tiles_x, tile_size, alpha_mode,
        image.view(-1).numpy(), alpha.view(-1).numpy(), t_final.reshape(-1).numpy(),
    )
    return image.permute(0, 2, 3, 1), alpha, (t_final if alpha_mode else None)


def _channel_major(t: Tensor, dt: torch.dtype) -> np.ndarray:
    """A ``[B, H, W, C]`` tensor as a flat channel-major ``[B, C, H, W]`` NumPy array (no copy for
    the forward's own ``image``, nor for a cotangent that came back through an NCHW view)."""
    return t.detach().to(dt).permute(0, 3, 1, 2).contiguous().view(-1).numpy()


def rasterize_bwd(
    conics: Tensor, colors: Tensor, has_background: bool, nb: NumbaBinning, image: Optional[Tensor],
    t_final: Optional[Tensor], grad_image: Tensor, grad_alpha: Tensor, width: int, height: int,
    tile_size: int, mode: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Backward (stage 5): gradients for means ``[B, N, 2]``, conics ``[B, N, 3]``, colours
    ``[B, N, C]``, opacities ``[B, N]`` and background ``[B, C]`` (None without one), in
    ``nb.rec``'s dtype. ``image``/``t_final`` are the forward's outputs (alpha mode; sum mode
    needs neither: None), ``grad_image
    [B, H, W, C]`` and ``grad_alpha [B, H, W, 1]`` the cotangents (any layout).

    Each (tile, Gaussian) pair's sums go to its own row of a ``[P, 6 + C]`` buffer, then are
    added per Gaussian in pair order: deterministic for any thread count."""
    B, N, C = colors.shape
    dt = nb.rec.dtype
    k = _kernels()
    alpha_mode = mode == "alpha"
    n_pairs = nb.binning.gauss_ids.numel()
    gpair = torch.zeros((n_pairs, 6 + C), dtype=dt)
    tf = t_final.detach().to(dt).contiguous() if alpha_mode else torch.zeros((1,), dtype=dt)
    _set_threads()
    k.rasterize_bwd_kernel(
        nb.rec.numpy(), nb.win.numpy(), _np(conics.reshape(B * N, 3), dt),
        _np(colors.reshape(B * N, C), dt), nb.binning.ranges.numpy(), nb.binning.gauss_ids.numpy(),
        _pixel_centres(width, height, dt), k.kernel_constants(_NP[dt], mode), N, width, height,
        nb.binning.tiles_x, tile_size, alpha_mode,
        _channel_major(image, dt) if alpha_mode else np.zeros(1, dtype=_NP[dt]), tf.reshape(-1).numpy(),
        _channel_major(grad_image, dt), _np(grad_alpha.reshape(-1), dt), gpair.numpy(),
    )
    acc = torch.zeros((B * N, 6 + C), dtype=dt)
    k.reduce_pairs(gpair.numpy(), nb.binning.ranges.numpy(), nb.binning.gauss_ids.numpy(), N, B, acc.numpy())
    g_bg: Optional[Tensor] = None
    if has_background:
        g_bg = (torch.einsum("bhwc,bhw->bc", grad_image.detach().to(dt), tf) if alpha_mode
                else torch.zeros((B, C), dtype=dt))
    acc = acc.view(B, N, 6 + C)
    return acc[..., 0:2], acc[..., 2:5], acc[..., 6:], acc[..., 5], g_bg


def warm_up() -> float:
    """Compile (or load from the cache) every kernel for both dtypes and modes on a tiny scene;
    returns the seconds it took (the first-call JIT cost: a few seconds the very first time on a
    machine, well under one once the on-disk cache holds them)."""
    t0 = time.perf_counter()
    for dt in (torch.float32, torch.float64):
        means = torch.tensor([[[3.0, 4.0]]], dtype=dt)
        conics = torch.tensor([[[0.5, 0.1, 0.4]]], dtype=dt)
        colors = torch.tensor([[[0.2, 0.7]]], dtype=dt)
        opac = torch.tensor([[0.8]], dtype=dt)
        nb = bin_gaussians(means, conics, opac, 5, 6, 4, dt)
        for mode in MODES:
            bg = torch.ones((1, 2), dtype=dt) if mode == "alpha" else None
            image, alpha, tf = rasterize_fwd(colors, bg, nb, 5, 6, 4, mode)
            rasterize_bwd(conics, colors, bg is not None, nb, image, tf, torch.ones_like(image),
                          torch.ones_like(alpha), 5, 6, 4, mode)
    return time.perf_counter() - t0
