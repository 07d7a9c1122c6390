"""Tile binning in Triton: tile bounds, (tile, Gaussian) intersection keys, per-tile ranges.

Stage contracts are in ``docs/design.md``; :mod:`gsplat2d.backends.torch_backend` holds the PyTorch mirror
of each stage under the same name, and the two must produce identical tensors.

Layers: ``_*_kernel`` (Triton) -> launcher of the same name without the underscore (allocates,
launches) -> :func:`bin_gaussians` (chains the stages with ``torch.sort``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gsplat2d.binning import EXTENT_ABS_PAD, EXTENT_REL_PAD, Binning, check_pair_budget
from gsplat2d.kernels._alloc import device_guard, empty
from gsplat2d.kernels._aot import AotSpec
from gsplat2d.kernels._target import COMPILE_OPTIONS

__all__ = ["compute_tile_bounds", "emit_intersections", "tile_ranges", "bin_gaussians", "AOT_SPECS"]

# the padding of gsplat2d.binning.gaussian_extents (one definition for every backend)
_REL_PAD = tl.constexpr(EXTENT_REL_PAD)
_ABS_PAD = tl.constexpr(EXTENT_ABS_PAD)

BLOCK_BOUNDS = 256
BLOCK_PAIRS = 512


# Sizes change with every call: never specialise on their values (an int argument equal to 1 would
# become a constexpr, and every new "divisible by 16" pattern would be another compile).
@triton.jit
def _block_of(BLOCK: tl.constexpr, n):
    """This program's ``BLOCK`` element offsets (int64: ``pid * BLOCK`` may pass 2**31) and the
    mask of those below ``n``."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return offs, offs < n


@triton.jit(do_not_specialize=["total", "tiles_x", "tiles_y"])
def _compute_tile_bounds_kernel(
    means_ptr,  # [B*N, 2]
    conics_ptr,  # [B*N, 3]
    opac_ptr,  # [B*N]
    rects_ptr,  # [B*N, 4] int32 out
    counts_ptr,  # [B*N] int32 out
    params_ptr,  # [B*N, 8] fp32 out: per-Gaussian record of the rasterizer (docs/design.md)
    total,  # B*N
    tiles_x,
    tiles_y,
    TILE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs, m = _block_of(BLOCK, total)  # [BLOCK]
    # float64 on purpose: the bound must never be lost to rounding, and this is per Gaussian.
    mx = tl.load(means_ptr + offs * 2, mask=m, other=0.0).to(tl.float64)
    my = tl.load(means_ptr + offs * 2 + 1, mask=m, other=0.0).to(tl.float64)
    ca = tl.load(conics_ptr + offs * 3, mask=m, other=1.0).to(tl.float64)
    cb = tl.load(conics_ptr + offs * 3 + 1, mask=m, other=0.0).to(tl.float64)
    cc = tl.load(conics_ptr + offs * 3 + 2, mask=m, other=1.0).to(tl.float64)
    op = tl.load(opac_ptr + offs, mask=m, other=0.0).to(tl.float64)

    INF = float("inf")
    # NaN fails every comparison, so `abs(x) < inf` is an isfinite test.
    finite = (tl.abs(mx) < INF) & (tl.abs(my) < INF) & (tl.abs(ca) < INF)
    finite = finite & (tl.abs(cb) < INF) & (tl.abs(cc) < INF) & (tl.abs(op) < INF)
    det = ca * cc - cb * cb
    valid = m & finite & (ca > 0) & (cc > 0) & (det > 0) & (op * 255.0 >= 1.0)

    # Replace invalid lanes by a harmless unit Gaussian so no NaN reaches the int casts.
    mx = tl.where(valid, mx, 0.0)
    my = tl.where(valid, my, 0.0)
    ca = tl.where(valid, ca, 1.0)
    cc = tl.where(valid, cc, 1.0)
    det = tl.where(valid, det, 1.0)
    op = tl.where(valid, op, 1.0)
    r2 = 2.0 * tl.log(op * 255.0)  # weight >= 1/255  <=>  sigma <= log(255 o)
    r2 = tl.maximum(r2, 0.0)
    # Exact half-extent of the ellipse's bounding box (Sigma_xx = c/det, Sigma_yy = a/det), padded.
    ext_x = tl.sqrt(r2 * cc / det) * (1.0 + _REL_PAD) + _ABS_PAD
    ext_y = tl.sqrt(r2 * ca / det) * (1.0 + _REL_PAD) + _ABS_PAD

    # tl.cast (not .to) also accepts a constexpr: the JIT turns an int argument equal to 1 into one
    tx_hi = tl.cast(tiles_x, tl.float64) + 1.0
    ty_hi = tl.cast(tiles_y, tl.float64) + 1.0
    fx0 = tl.minimum(tl.maximum(tl.floor((mx - ext_x - 0.5) / TILE), -1.0), tx_hi)
    fx1 = tl.minimum(tl.maximum(tl.floor((mx + ext_x - 0.5) / TILE) + 1.0, -1.0), tx_hi)
    fy0 = tl.minimum(tl.maximum(tl.floor((my - ext_y - 0.5) / TILE), -1.0), ty_hi)
    fy1 = tl.minimum(tl.maximum(tl.floor((my + ext_y - 0.5) / TILE) + 1.0, -1.0), ty_hi)
    tx0 = tl.minimum(tl.maximum(fx0.to(tl.int32), 0), tiles_x)
    tx1 = tl.minimum(tl.maximum(fx1.to(tl.int32), 0), tiles_x)
    ty0 = tl.minimum(tl.maximum(fy0.to(tl.int32), 0), tiles_y)
    ty1 = tl.minimum(tl.maximum(fy1.to(tl.int32), 0), tiles_y)
    w = tl.maximum(tx1 - tx0, 0)
    h = tl.maximum(ty1 - ty0, 0)
    cnt = w * h
    valid = valid & (cnt > 0)
    zero = tl.zeros_like(tx0)
    tl.store(rects_ptr + offs * 4, tl.where(valid, tx0, zero), mask=m)
    tl.store(rects_ptr + offs * 4 + 1, tl.where(valid, ty0, zero), mask=m)
    tl.store(rects_ptr + offs * 4 + 2, tl.where(valid, tx1, zero), mask=m)
    tl.store(rects_ptr + offs * 4 + 3, tl.where(valid, ty1, zero), mask=m)
    tl.store(counts_ptr + offs, tl.where(valid, cnt, zero), mask=m)
    # Rasterizer record, from the float64 values: o exp(-sigma) = exp2(lo + qa dx^2 + qb dx dy
    # + qc dy^2); inv_o for the opacity gradient. Zero for non-contributing Gaussians (never read).
    LOG2E = 1.4426950408889634
    rec = params_ptr + offs * 8
    tl.store(rec, tl.where(valid, mx, 0.0).to(tl.float32), mask=m)
    tl.store(rec + 1, tl.where(valid, my, 0.0).to(tl.float32), mask=m)
    tl.store(rec + 2, tl.where(valid, ca * (-0.5 * LOG2E), 0.0).to(tl.float32), mask=m)
    tl.store(rec + 3, tl.where(valid, cb * (-LOG2E), 0.0).to(tl.float32), mask=m)
    tl.store(rec + 4, tl.where(valid, cc * (-0.5 * LOG2E), 0.0).to(tl.float32), mask=m)
    tl.store(rec + 5, tl.where(valid, tl.log2(op), 0.0).to(tl.float32), mask=m)
    tl.store(rec + 6, tl.where(valid, 1.0 / op, 0.0).to(tl.float32), mask=m)
    tl.store(rec + 7, tl.zeros_like(mx).to(tl.float32), mask=m)


@triton.jit(do_not_specialize=["n_pairs", "N", "tiles_x", "tiles_y"])
def _emit_intersections_kernel(
    pair_gid_ptr,  # [P] int64: flat Gaussian index b*N + g of each pair
    starts_ptr,  # [B*N] int64: exclusive prefix sum of counts
    rects_ptr,  # [B*N, 4] int32
    keys_ptr,  # [P] int64 out
    n_pairs,
    N,
    tiles_x,
    tiles_y,
    BLOCK: tl.constexpr,
):
    offs, m = _block_of(BLOCK, n_pairs)  # [BLOCK]
    gid = tl.load(pair_gid_ptr + offs, mask=m, other=0)
    j = offs - tl.load(starts_ptr + gid, mask=m, other=0)  # pair index within its Gaussian
    tx0 = tl.load(rects_ptr + gid * 4, mask=m, other=0).to(tl.int64)
    ty0 = tl.load(rects_ptr + gid * 4 + 1, mask=m, other=0).to(tl.int64)
    tx1 = tl.load(rects_ptr + gid * 4 + 2, mask=m, other=1).to(tl.int64)
    w = tl.maximum(tx1 - tx0, 1)
    tx = tx0 + j % w
    ty = ty0 + j // w
    b = gid // N
    g = gid - b * N
    key = ((b * tiles_y + ty) * tiles_x + tx) * N + g
    tl.store(keys_ptr + offs, key, mask=m)


@triton.jit(do_not_specialize=["n_pairs", "N"])
def _tile_ranges_kernel(
    keys_ptr,  # [P] int64, sorted
    ranges_ptr,  # [n_tiles_total, 2] int64, zero-initialised
    ids_ptr,  # [P] int32 out
    n_pairs,
    N,
    BLOCK: tl.constexpr,
):
    offs, m = _block_of(BLOCK, n_pairs)  # [BLOCK]
    key = tl.load(keys_ptr + offs, mask=m, other=0)
    tile = key // N
    tl.store(ids_ptr + offs, (key - tile * N).to(tl.int32), mask=m)
    prev = tl.load(keys_ptr + offs - 1, mask=m & (offs > 0), other=-1) // N
    nxt = tl.load(keys_ptr + offs + 1, mask=m & (offs + 1 < n_pairs), other=-1) // N
    first = m & ((offs == 0) | (prev != tile))
    last = m & ((offs + 1 == n_pairs) | (nxt != tile))
    tl.store(ranges_ptr + tile * 2, offs, mask=first)
    tl.store(ranges_ptr + tile * 2 + 1, offs + 1, mask=last)


def compute_tile_bounds(means: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor, width: int,
                        height: int, tile_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tile rectangle, tile count and rasterizer record per Gaussian. Inputs ``[B, N, 2]``,
    ``[B, N, 3]``, ``[B, N]``.

    Returns ``rects`` int32 ``[B, N, 4]`` (tx0, ty0, tx1, ty1, half-open), ``counts`` int32
    ``[B, N]`` (0 for a non-contributing Gaussian) and ``params`` float32 ``[B, N, 8]``
    (``mx, my, qa, qb, qc, log2 o, 1/o, 0``; zeros for a non-contributing Gaussian).
    """
    B, N = opacities.shape
    tiles_x = triton.cdiv(width, tile_size)
    tiles_y = triton.cdiv(height, tile_size)
    rects = empty((B, N, 4), torch.int32, means.device)
    counts = empty((B, N), torch.int32, means.device)
    params = empty((B, N, 8), torch.float32, means.device)
    total = B * N
    if total > 0:
        grid = (triton.cdiv(total, BLOCK_BOUNDS),)
        with device_guard(means.device):
            _compute_tile_bounds_kernel[grid](
                means, conics, opacities, rects, counts, params, total, tiles_x, tiles_y,
                TILE=tile_size, BLOCK=BLOCK_BOUNDS, **COMPILE_OPTIONS,
            )
    return rects, counts, params


def emit_intersections(
    rects: torch.Tensor, counts: torch.Tensor, tiles_x: int, tiles_y: int
) -> torch.Tensor:
    """Unsorted int64 keys ``(global_tile * N + g)``, one per (tile, Gaussian) pair: ``[P]``."""
    B, N = counts.shape
    flat = counts.reshape(-1).to(torch.int64)
    ends = torch.cumsum(flat, 0)
    n_pairs = int(ends[-1].item()) if flat.numel() else 0
    check_pair_budget(n_pairs, B * N, B * tiles_x * tiles_y, counts.device)
    keys = empty((n_pairs,), torch.int64, counts.device)
    if n_pairs == 0:
        return keys
    starts = ends - flat
    pair_gid = torch.repeat_interleave(
        torch.arange(B * N, device=counts.device), flat, output_size=n_pairs
    )
    grid = (triton.cdiv(n_pairs, BLOCK_PAIRS),)
    with device_guard(counts.device):
        _emit_intersections_kernel[grid](
            pair_gid, starts, rects, keys, n_pairs, N, tiles_x, tiles_y, BLOCK=BLOCK_PAIRS,
            **COMPILE_OPTIONS,
        )
    return keys


def tile_ranges(
    sorted_keys: torch.Tensor, N: int, n_tiles_total: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tile ``[start, end)`` (int64 ``[n_tiles_total, 2]``, empty tiles ``[0, 0]``) and the
    within-batch Gaussian index of each sorted pair (int32 ``[P]``)."""
    n_pairs = sorted_keys.numel()
    ranges = torch.zeros((n_tiles_total, 2), dtype=torch.int64, device=sorted_keys.device)
    ids = empty((n_pairs,), torch.int32, sorted_keys.device)
    if n_pairs > 0:
        grid = (triton.cdiv(n_pairs, BLOCK_PAIRS),)
        with device_guard(sorted_keys.device):
            _tile_ranges_kernel[grid](sorted_keys, ranges, ids, n_pairs, N, BLOCK=BLOCK_PAIRS, **COMPILE_OPTIONS)
    return ranges, ids


def bin_gaussians(means: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor, width: int, height: int,
                  tile_size: int) -> Binning:
    """All binning stages: bounds -> keys -> ``torch.sort`` -> ranges. See ``docs/design.md``."""
    B, N = opacities.shape
    tiles_x = triton.cdiv(width, tile_size)
    tiles_y = triton.cdiv(height, tile_size)
    rects, counts, params = compute_tile_bounds(means, conics, opacities, width, height, tile_size)
    keys = emit_intersections(rects, counts, tiles_x, tiles_y)
    sorted_keys, _ = torch.sort(keys)
    ranges, ids = tile_ranges(sorted_keys, N, B * tiles_x * tiles_y)
    return Binning(tiles_x, tiles_y, ranges, ids, counts, params)


_BOUNDS_SIG = {
    "means_ptr": "*fp32", "conics_ptr": "*fp32", "opac_ptr": "*fp32",
    "rects_ptr": "*i32", "counts_ptr": "*i32", "params_ptr": "*fp32", "total": "i32",
    "tiles_x": "i32", "tiles_y": "i32", "TILE": "constexpr", "BLOCK": "constexpr",
}
_BOUNDS_SIG64 = {**_BOUNDS_SIG, "means_ptr": "*fp64", "conics_ptr": "*fp64", "opac_ptr": "*fp64"}

AOT_SPECS = [
    *(AotSpec(f"compute_tile_bounds[TILE={t}]", _compute_tile_bounds_kernel, _BOUNDS_SIG,
              {"TILE": t, "BLOCK": BLOCK_BOUNDS}) for t in (8, 16, 32)),
    # float64 geometry (the autograd Function passes float64 means/conics/opacities as they are)
    AotSpec("compute_tile_bounds[TILE=16,fp64]", _compute_tile_bounds_kernel, _BOUNDS_SIG64,
            {"TILE": 16, "BLOCK": BLOCK_BOUNDS}),
    # What the JIT would build for a one-tile-wide image if the sizes were specialised (they are
    # not: do_not_specialize), kept as a guard: int arguments equal to 1 become constexprs.
    AotSpec(
        "compute_tile_bounds[TILE=16,tiles=1]",
        _compute_tile_bounds_kernel,
        {
            "means_ptr": "*fp32", "conics_ptr": "*fp32", "opac_ptr": "*fp32",
            "rects_ptr": "*i32", "counts_ptr": "*i32", "params_ptr": "*fp32", "total": "constexpr",
            "tiles_x": "constexpr", "tiles_y": "constexpr", "TILE": "constexpr", "BLOCK": "constexpr",
        },
        {"TILE": 16, "BLOCK": BLOCK_BOUNDS, "total": 1, "tiles_x": 1, "tiles_y": 1},
    ),
    AotSpec(
        "emit_intersections",
        _emit_intersections_kernel,
        {
            "pair_gid_ptr": "*i64", "starts_ptr": "*i64", "rects_ptr": "*i32", "keys_ptr": "*i64",
            "n_pairs": "i32", "N": "i32", "tiles_x": "i32", "tiles_y": "i32", "BLOCK": "constexpr",
        },
        {"BLOCK": BLOCK_PAIRS},
    ),
    AotSpec(
        "tile_ranges",
        _tile_ranges_kernel,
        {
            "keys_ptr": "*i64", "ranges_ptr": "*i64", "ids_ptr": "*i32",
            "n_pairs": "i32", "N": "i32", "BLOCK": "constexpr",
        },
        {"BLOCK": BLOCK_PAIRS},
    ),
]
