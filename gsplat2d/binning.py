"""The binning contract shared by both backends and the windowed renderer.

* :class:`Binning`: what binning produces (identical for the torch and Triton backends).
* The constants of the definition: :data:`ALPHA_MAX`, :data:`MIN_WEIGHT`, :data:`T_STOP`, the
  modes (:data:`MODES`) and the ``"sum_taper"`` weight (:data:`TAPER_A`, :data:`TAPER_B`).
* :func:`gaussian_extents`: the one formula for how far a Gaussian's weight can reach 1/255
  (half-widths of the bounding box of the ellipse ``sigma <= log(255 o)``), used by the torch
  backend's tile bounds and the windowed renderer; the Triton kernel
  (``kernels/binning.py``) evaluates the same float64 expression and ``tests/test_binning.py``
  checks that both produce identical tile rectangles.
* :func:`check_pair_budget`: the refusal of scenes that need too many (tile, Gaussian) pairs.

See ``docs/design.md`` for the stage contracts.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "Binning", "MODES", "ALPHA_MAX", "MIN_WEIGHT", "T_STOP", "TAPER_A", "TAPER_B", "LOG2E", "MAX_PAIRS", "EXTENT_REL_PAD",
    "EXTENT_ABS_PAD", "tile_grid", "gaussian_extents", "check_pair_budget",
]

#: The rasterizer's modes: ``"alpha"`` composites front to back; ``"sum"`` adds weighted colours;
#: ``"sum_taper"`` is sum mode with weights that fall to 0 smoothly at the 1/255 cutoff (below).
MODES = ("alpha", "sum", "sum_taper")
#: alpha mode: opacity clamp.
ALPHA_MAX = 0.99
#: Weights below this are skipped (both modes).
MIN_WEIGHT = 1.0 / 255.0
#: alpha mode: a pixel stops when its transmittance would fall to this or below.
T_STOP = 1e-4
#: ``"sum_taper"`` weight: ``w_t = w - m (1 + ln(w / m))`` for the sum-mode weight
#: ``w = min(1, o exp(-sigma)) >= m = MIN_WEIGHT`` (else 0). ``w_t`` and its slope are 0 at the
#: cutoff ``w = m``, so a splat is continuous with a continuous gradient there, where plain sum
#: mode jumps by ``m c`` (rings at large upscales, ``docs/theory.md`` §1.9). ``d w_t / d ln w
#: = w - m``. Kernels evaluate it as ``w - TAPER_A - TAPER_B log2(w)`` from the ``log2`` of the
#: weight they already hold: ``TAPER_A = m (1 - ln m)``, ``TAPER_B = m ln 2``.
TAPER_A = MIN_WEIGHT * (1.0 - math.log(MIN_WEIGHT))
TAPER_B = MIN_WEIGHT * math.log(2.0)
#: log2(e): the rasterizer record stores ``qa = -a/2 log2 e`` etc., so a weight is one exp2.
LOG2E = 1.4426950408889634
#: Hard limit on the number of (tile, Gaussian) pairs of one binning (int32 pair offsets).
MAX_PAIRS: int = 2**31 - 1
#: Rough bytes of temporary memory needed per (tile, Gaussian) pair while binning
#: (keys, repeat_interleave indices, per-pair temporaries, sorted keys, sort permutation, ids).
BYTES_PER_PAIR: int = 48
#: Padding of the exact bounding box: ``ext * (1 + EXTENT_REL_PAD) + EXTENT_ABS_PAD`` pixels.
EXTENT_REL_PAD = 1e-3
EXTENT_ABS_PAD = 1e-2


class Binning(NamedTuple):
    """Result of binning (identical for the torch and Triton backends).

    tiles_x, tiles_y: tile grid size, ``ceil(W / tile)``, ``ceil(H / tile)``.
    ranges: int64 ``[B * tiles_x * tiles_y, 2]``, ``[start, end)`` of each global tile's pairs
        in ``gauss_ids`` (``[0, 0]`` for empty tiles). Global tile = ``b*T + ty*tiles_x + tx``.
    gauss_ids: int32 ``[P]``, Gaussian index within its batch element, sorted by (tile, index).
    counts: int32 ``[B, N]``, number of tiles each Gaussian touches (0 = non-contributing).
    params: float32 ``[B, N, 8]``, the per-Gaussian record the Triton rasterizer reads
        (``mx, my, qa, qb, qc, log2 o, 1/o, 0`` with ``(qa, qb, qc) = -log2(e) (a/2, b, c/2)``;
        zeros for non-contributing Gaussians).
    """

    tiles_x: int
    tiles_y: int
    ranges: Tensor
    gauss_ids: Tensor
    counts: Tensor
    params: Optional[Tensor] = None


def tile_grid(width: int, height: int, tile_size: int) -> Tuple[int, int]:
    """``(tiles_x, tiles_y) = (ceil(W / tile), ceil(H / tile))``."""
    return -(-int(width) // int(tile_size)), -(-int(height) // int(tile_size))


def gaussian_extents(
    means: Tensor, conics: Tensor, opacities: Tensor, pad: bool = True
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Where a Gaussian's weight can reach 1/255, in float64 (no gradients).

    Args: ``means [..., 2]`` (pixels), ``conics [..., 3]`` ``(a, b, c)``, ``opacities [...]``.

    Returns ``(valid, mx, my, ext_x, ext_y)`` (float64, ``[...]``): ``valid`` is False for a
    non-contributing Gaussian (non-finite parameters, non positive-definite conic, ``255 o < 1``,
    or a bound that overflows); ``ext_x = sqrt(2 log(255 o) c / det)`` (and ``ext_y`` with
    ``a``) is the exact half-width of the bounding box of the ellipse ``sigma <= log(255 o)``,
    padded by ``EXTENT_REL_PAD`` / ``EXTENT_ABS_PAD`` when ``pad``. Invalid Gaussians get
    ``mx = my = 0`` and unit extents (harmless values for later arithmetic).
    """
    f64 = torch.float64
    m = means.detach().to(f64)
    q = conics.detach().to(f64)
    o = opacities.detach().to(f64)
    mx, my = m[..., 0], m[..., 1]
    a, b, c = q[..., 0], q[..., 1], q[..., 2]
    det = a * c - b * b
    finite = (
        torch.isfinite(mx) & torch.isfinite(my) & torch.isfinite(a) & torch.isfinite(b)
        & torch.isfinite(c) & torch.isfinite(o)
    )
    valid = finite & (a > 0) & (c > 0) & (det > 0) & (255.0 * o >= 1.0)
    one = torch.ones((), dtype=f64, device=m.device)
    zero = torch.zeros((), dtype=f64, device=m.device)
    det_s = torch.where(valid, det, one)
    r2 = 2.0 * torch.log(255.0 * torch.where(valid, o, one))
    ext_x = torch.sqrt(r2 * torch.where(valid, c, one) / det_s)
    ext_y = torch.sqrt(r2 * torch.where(valid, a, one) / det_s)
    if pad:
        ext_x = ext_x * (1.0 + EXTENT_REL_PAD) + EXTENT_ABS_PAD
        ext_y = ext_y * (1.0 + EXTENT_REL_PAD) + EXTENT_ABS_PAD
    # inf/inf overflow can make a bound NaN: such a Gaussian is non-contributing
    valid = valid & ~(torch.isnan(ext_x) | torch.isnan(ext_y))
    return (valid, torch.where(valid, mx, zero), torch.where(valid, my, zero),
            torch.where(valid, ext_x, one), torch.where(valid, ext_y, one))


def _available_bytes(device: torch.device) -> Optional[int]:
    try:
        if device.type == "cuda":
            # memory PyTorch holds in its cache but does not use is available to it too
            free, _ = torch.cuda.mem_get_info(device)
            cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
            return int(free) + max(int(cached), 0)
        if device.type == "cpu":
            return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except Exception:  # pragma: no cover - platform dependent
        return None
    return None


def check_pair_budget(total_pairs: int, n_gaussians: int, n_tiles_total: int, device: torch.device) -> None:
    """Raise a clear error before binning a scene that needs too many tile-Gaussian pairs.

    Raises:
        ValueError: more than :data:`MAX_PAIRS` pairs.
        MemoryError: the pair buffers (about 48 bytes per pair) would not fit in free memory
            (on CUDA: free device memory plus what PyTorch caches but does not use).
    """
    why = (
        f"the scene needs {total_pairs} tile-Gaussian pairs ({n_gaussians} Gaussians over "
        f"{n_tiles_total} tiles, {total_pairs / max(n_gaussians, 1):.1f} tiles per Gaussian on "
        "average); this usually means Gaussians far larger than the image (tiny conics) or "
        "opacities far above 1. Shrink the Gaussians, use fewer of them, or a larger tile_size."
    )
    if total_pairs > MAX_PAIRS:
        raise ValueError(f"too many tile-Gaussian pairs (limit {MAX_PAIRS}): {why}")
    need = total_pairs * BYTES_PER_PAIR
    avail = _available_bytes(device)
    if avail is not None and need > avail:
        raise MemoryError(
            f"binning would need about {need / 2**30:.2f} GiB but only {avail / 2**30:.2f} GiB "
            f"is free on {device}: {why}"
        )
