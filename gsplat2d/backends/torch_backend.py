"""PyTorch mirror of every rasterizer stage (CPU backend and reference for the Triton kernels).

Every function here has exactly the name, argument order and outputs of the stage of the same
name in ``docs/design.md`` / ``kernels/``. The rasterizer (:func:`rasterize_fwd`) is tiled and
vectorised like the Triton kernel (never a dense ``N x H x W`` evaluation) and differentiable by
plain torch autograd w.r.t. means, conics, colours, opacities and background (the gradient
reference). :func:`rasterize_bwd` mirrors the Triton backward stage on the same tile walk; the
public torch backend uses it through ``gsplat2d.backends.torch_function.RasterizeTorch``.

Units: means in pixels (pixel ``(x, y)`` is sampled at ``(x + 0.5, y + 0.5)``), conics
``(a, b, c)`` = inverse covariance ``[[a, b], [b, c]]`` in 1/pixel^2, opacities dimensionless.
"""

from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from gsplat2d.backends import compute_dtype
from gsplat2d.binning import (
    ALPHA_MAX,
    LOG2E,
    MAX_PAIRS,
    MIN_WEIGHT,
    MODES,
    T_STOP,
    TAPER_A,
    Binning,
    check_pair_budget,
    gaussian_extents,
    tile_grid,
)

__all__ = [
    "Binning",
    "compute_tile_bounds",
    "tile_rects",
    "emit_intersections",
    "tile_ranges",
    "bin_gaussians",
    "rasterize_fwd",
    "rasterize_bwd",
    "MAX_PAIRS",
]

# ----------------------------------------------------------------------------------------------
# Stage 1
# ----------------------------------------------------------------------------------------------
def compute_tile_bounds(
    means: Tensor,
    conics: Tensor,
    opacities: Tensor,
    width: int,
    height: int,
    tile_size: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Tile rectangle touched by each Gaussian and its rasterizer record (stage 1 of
    ``docs/design.md``).

    Args:
        means: ``[B, N, 2]`` pixel-space centres.
        conics: ``[B, N, 3]`` ``(a, b, c)`` inverse covariance, 1/pixel^2.
        opacities: ``[B, N]``.
        width, height: image size in pixels; tile_size: tile edge in pixels.

    Returns:
        rects: int32 ``[B, N, 4]`` half-open ``(tx0, ty0, tx1, ty1)`` clamped to the grid;
            ``(0, 0, 0, 0)`` whenever the count is 0.
        counts: int32 ``[B, N]`` ``(tx1 - tx0) * (ty1 - ty0)``; 0 for non-contributing Gaussians
            (non-finite parameters, non positive-definite conic, ``255 * o < 1``) and for
            Gaussians whose rectangle lies entirely off the grid.
        params: float32 ``[B, N, 8]``, :func:`gaussian_records` (zeros where not valid).

    Computed in float64 without gradients. Never fails on NaN/Inf/huge values (such Gaussians
    are non-contributing; a Gaussian whose float bound is NaN through overflow is too).
    """
    valid, mx_s, my_s, ext_x, ext_y = gaussian_extents(means, conics, opacities)
    rects, counts = tile_rects(valid, mx_s, my_s, ext_x, ext_y, width, height, tile_size)
    params = gaussian_records(mx_s, my_s, conics[..., 0], conics[..., 1], conics[..., 2], opacities,
                              counts > 0)
    return rects, counts, params


def tile_rects(valid: Tensor, mx: Tensor, my: Tensor, ext_x: Tensor, ext_y: Tensor, width: int,
               height: int, tile_size: int) -> Tuple[Tensor, Tensor]:
    """Stage 1's tile rectangles ``int32 [..., 4]`` and counts ``int32 [...]`` from the float64
    bounds of :func:`gsplat2d.binning.gaussian_extents` (the rule of ``docs/design.md``; the
    Triton and numba kernels evaluate the same expressions, tested equal)."""
    tiles_x, tiles_y = tile_grid(width, height, tile_size)
    ts = float(tile_size)
    fx0 = torch.floor((mx - ext_x - 0.5) / ts)
    fx1 = torch.floor((mx + ext_x - 0.5) / ts) + 1.0
    fy0 = torch.floor((my - ext_y - 0.5) / ts)
    fy1 = torch.floor((my + ext_y - 0.5) / ts) + 1.0

    def _cast(f: Tensor, n: int) -> Tensor:
        f = torch.nan_to_num(f, nan=0.0).clamp(-1.0, float(n + 1))
        return f.to(torch.int32).clamp(0, n)

    tx0, tx1 = _cast(fx0, tiles_x), _cast(fx1, tiles_x)
    ty0, ty1 = _cast(fy0, tiles_y), _cast(fy1, tiles_y)
    counts = (tx1 - tx0) * (ty1 - ty0)
    counts = torch.where(valid, counts, torch.zeros_like(counts))
    rects = torch.stack([tx0, ty0, tx1, ty1], dim=-1)
    rects = torch.where((counts > 0).unsqueeze(-1), rects, torch.zeros_like(rects))
    return rects.to(torch.int32).contiguous(), counts.to(torch.int32).contiguous()



def gaussian_records(mx: Tensor, my: Tensor, a: Tensor, b: Tensor, c: Tensor, o: Tensor,
                     valid: Tensor) -> Tensor:
    """The rasterizer's per-Gaussian record, float32 ``[..., 8]``, computed in float64:
    ``(mx, my, qa, qb, qc, lo, inv_o, 0)`` with ``qa = -a/2 log2 e``, ``qb = -b log2 e``,
    ``qc = -c/2 log2 e``, ``lo = log2 o``, ``inv_o = 1 / o``, so that
    ``o exp(-sigma) = exp2(lo + qa dx^2 + qb dx dy + qc dy^2)``. Zeros where not ``valid``."""
    f64 = torch.float64
    a, b, c, o = (t.detach().to(f64) for t in (a, b, c, o))
    one = torch.ones((), dtype=f64, device=a.device)
    zero = torch.zeros((), dtype=f64, device=a.device)
    a, b, c = (torch.where(valid, t, zero) for t in (a, b, c))  # NaN/Inf of invalid ones never used
    o_s = torch.where(valid, o, one)
    rec = torch.stack([
        mx.to(f64), my.to(f64), a * (-0.5 * LOG2E), b * (-LOG2E), c * (-0.5 * LOG2E),
        torch.log2(o_s), 1.0 / o_s, torch.zeros_like(a),
    ], dim=-1)
    rec = torch.where(valid.unsqueeze(-1), rec, torch.zeros_like(rec))
    return rec.to(torch.float32).contiguous()


# ----------------------------------------------------------------------------------------------
# Stage 2
# ----------------------------------------------------------------------------------------------
def emit_intersections(rects: Tensor, counts: Tensor, tiles_x: int, tiles_y: int) -> Tensor:
    """One int64 sort key per (Gaussian, tile) pair (stage 2 of ``docs/design.md``).

    Args:
        rects: int32 ``[B, N, 4]``; counts: int32 ``[B, N]`` (from :func:`compute_tile_bounds`).

    Returns:
        keys: int64 ``[P]``, ``P = counts.sum()``; the j-th pair of Gaussian ``(b, g)`` lands at
        ``offsets[b, g] + j`` (exclusive cumsum of counts) with
        ``key = ((b * tiles_y + ty) * tiles_x + tx) * N + g``, ``tx = tx0 + j % w``,
        ``ty = ty0 + j // w``, ``w = tx1 - tx0``.
    """
    B, N = counts.shape
    dev = counts.device
    cnt = counts.reshape(-1).to(torch.int64)
    total = int(cnt.sum().item()) if cnt.numel() else 0
    if total == 0:
        return torch.empty(0, dtype=torch.int64, device=dev)
    offsets = torch.cumsum(cnt, 0) - cnt  # exclusive
    flat = torch.arange(B * N, device=dev, dtype=torch.int64)
    owner = torch.repeat_interleave(flat, cnt, output_size=total)  # [P] flat (b, g)
    j = torch.arange(total, device=dev, dtype=torch.int64) - offsets[owner]
    r = rects.reshape(-1, 4).to(torch.int64)[owner]  # [P, 4]
    w = r[:, 2] - r[:, 0]
    tx = r[:, 0] + j % w
    ty = r[:, 1] + j // w
    bb = owner // N
    g = owner % N
    return ((bb * tiles_y + ty) * tiles_x + tx) * N + g


# ----------------------------------------------------------------------------------------------
# Stage 3
# ----------------------------------------------------------------------------------------------
def tile_ranges(sorted_keys: Tensor, N: int, n_tiles_total: int) -> Tuple[Tensor, Tensor]:
    """Per-tile ``[start, end)`` ranges and Gaussian ids from sorted keys (stage 3).

    Args:
        sorted_keys: int64 ``[P]`` sorted ascending (output of ``torch.sort`` of the keys).
        N: Gaussians per batch element; n_tiles_total: ``B * tiles_x * tiles_y``.

    Returns:
        ranges: int64 ``[n_tiles_total, 2]`` (``[0, 0]`` for empty tiles);
        gauss_ids: int32 ``[P]`` = ``sorted_keys % N``.
    """
    dev = sorted_keys.device
    if sorted_keys.numel() == 0 or N == 0:
        return (
            torch.zeros((n_tiles_total, 2), dtype=torch.int64, device=dev),
            torch.empty(0, dtype=torch.int32, device=dev),
        )
    keys = sorted_keys.to(torch.int64)
    tile = keys // N
    gauss_ids = (keys % N).to(torch.int32)
    t = torch.arange(n_tiles_total, device=dev, dtype=torch.int64)
    start = torch.searchsorted(tile, t, right=False)
    end = torch.searchsorted(tile, t, right=True)
    empty = start == end
    start = torch.where(empty, torch.zeros_like(start), start)
    end = torch.where(empty, torch.zeros_like(end), end)
    return torch.stack([start, end], dim=1).contiguous(), gauss_ids


def bin_gaussians(
    means: Tensor,
    conics: Tensor,
    opacities: Tensor,
    width: int,
    height: int,
    tile_size: int,
) -> Binning:
    """Stages 1-3: tile bounds -> pair keys -> ``torch.sort`` -> tile ranges (no gradients).

    Args: as :func:`compute_tile_bounds`. Returns: :class:`Binning`.

    Raises:
        ValueError / MemoryError: when the scene needs too many tile-Gaussian pairs
        (see :func:`check_pair_budget`).
    """
    with torch.no_grad():
        B, N = opacities.shape[0], opacities.shape[1]
        tiles_x, tiles_y = tile_grid(width, height, tile_size)
        n_tiles_total = B * tiles_x * tiles_y
        rects, counts, params = compute_tile_bounds(means, conics, opacities, width, height, tile_size)
        total = int(counts.sum(dtype=torch.int64).item()) if counts.numel() else 0
        check_pair_budget(total, B * N, n_tiles_total, counts.device)
        keys = emit_intersections(rects, counts, tiles_x, tiles_y)
        sorted_keys, _ = torch.sort(keys)
        ranges, gauss_ids = tile_ranges(sorted_keys, N, n_tiles_total)
    return Binning(tiles_x, tiles_y, ranges, gauss_ids, counts, params)


# ----------------------------------------------------------------------------------------------
# Stage 4: tiled forward rasterizer (differentiable by autograd)
# ----------------------------------------------------------------------------------------------
#: Pairs per tile processed per step ("rank block", the kernel's BLOCK_G) for the first ranks;
#: later blocks grow (see :func:`_block_size`) so dense tiles need few steps.
BLOCK_K: int = 8
#: Largest rank block.
BLOCK_K_MAX: int = 64
#: Upper bound on elements of one ``[n_tiles, K, tile^2]`` temporary (tiles are sub-chunked).
MAX_BLOCK_ELEMS: int = 2**22
_PAD_LOG_OPACITY = -1.0e4  # log-opacity of padding slots: exp(-1e4 - sigma) == 0 in any dtype


def _block_size(rank0: int) -> int:
    """Rank-block size for the block starting at rank ``rank0``: BLOCK_K, growing ~rank/4."""
    k = BLOCK_K
    while k < BLOCK_K_MAX and 4 * k <= rank0 // 2:
        k *= 2
    return k


class _BlockEval(NamedTuple):
    """One rank block of some tiles, evaluated (see :func:`_block_weights`)."""

    w: Tensor  # [n, K, P] weights, clamped and thresholded
    raw: Tensor  # [n, K, P] o * exp(-sigma) before the clamp (0 for padding)
    colx: Tensor  # [n, C + 1, K] extended colours
    gid: Tensor  # [n, K] int64 flat Gaussian index (b * N + g); padding repeats a real one
    dx: Tensor  # [n, K, S] pixel-column centre minus mean x
    dy: Tensor  # [n, K, S] pixel-row centre minus mean y
    conic: Tensor  # [n, K, 3]


def _block_weights(
    tile_ids: Tensor,
    rank0: int,
    K: int,
    start: Tensor,
    length: Tensor,
    gauss_ids: Tensor,
    N: int,
    T: int,
    tiles_x: int,
    tile_size: int,
    means: Tensor,
    conics: Tensor,
    log_opac: Tensor,
    colors_x: Tensor,
    w_max: float,
    taper: bool = False,
) -> _BlockEval:
    """Gather rank block ``[rank0, rank0 + K)`` of the given tiles and evaluate its weights.

    Args:
        tile_ids: int64 ``[n]`` global tile ids; ``means/conics/log_opac/colors_x`` flattened to
            ``[B*N, ...]`` (``colors_x`` has one extra channel appended, see ``rasterize_fwd``).
        w_max: weight clamp (0.99 alpha mode, 1 sum mode).
        taper: ``"sum_taper"`` mode: each kept weight becomes ``w - m (1 + ln(w / m))``.

    Returns:
        :class:`_BlockEval` with ``w [n, K, P]``, the weights ``min(w_max, o * exp(-sigma))``,
        0 where below 1/255 or for the padding of tiles with fewer than ``rank0 + K`` pairs
        (``P = tile_size^2``, pixel ``p = py * tile_size + px``); ``colx [n, C + 1, K]``, the
        gathered (extended) colours transposed for ``baddbmm``; and what the backward needs.

    Binned conics are positive definite, so ``sigma >= 0`` (up to rounding) and the dense
    definition's ``sigma < 0`` skip never triggers; it is not evaluated.
    """
    dev = means.device
    dt = means.dtype
    S = tile_size
    n = tile_ids.numel()
    rank = rank0 + torch.arange(K, device=dev, dtype=torch.int64)  # [K]
    st = start[tile_ids].unsqueeze(1)
    real = rank.unsqueeze(0) < length[tile_ids].unsqueeze(1)  # [n, K]
    pair = torch.where(real, st + rank.unsqueeze(0), st)
    gid = gauss_ids[pair].to(torch.int64) + ((tile_ids // T) * N).unsqueeze(1)  # [n, K]
    local = tile_ids % T
    ox = ((local % tiles_x) * S).to(dt).view(n, 1, 1)  # tile origin in pixels
    oy = ((local // tiles_x) * S).to(dt).view(n, 1, 1)
    pix = torch.arange(S, device=dev, dtype=dt) + 0.5
    m = means[gid]  # [n, K, 2]
    q = conics[gid]  # [n, K, 3]
    lo = torch.where(real, log_opac[gid], torch.full((), _PAD_LOG_OPACITY, dtype=dt, device=dev))
    colx = colors_x[gid].transpose(1, 2)  # [n, C+1, K]
    dx = (ox + pix) - m[..., 0:1]  # [n, K, S] (x offset of pixel column)
    dy = (oy + pix) - m[..., 1:2]  # [n, K, S] (y offset of pixel row)
    a, b, c = q[..., 0:1], q[..., 1:2], q[..., 2:3]
    # log w = log o - sigma = [log o - c dy^2/2] + [-a dx^2/2] - b dy dx: a rank-3 outer product
    # over (row, column), assembled with one batched matmul.
    u = torch.stack([lo.unsqueeze(-1) - (0.5 * c) * dy * dy, torch.ones_like(dy), -b * dy], dim=-1)
    v = torch.stack([torch.ones_like(dx), (-0.5 * a) * dx * dx, dx], dim=-2)
    logw = torch.bmm(u.view(n * K, S, 3), v.view(n * K, 3, S)).view(n, K, S * S)
    raw = torch.exp(logw)
    w = raw.clamp(max=w_max)
    # keep w >= 1/255 (threshold keeps x > t; t = the largest float below 1/255)
    t = torch.nextafter(torch.tensor(MIN_WEIGHT, dtype=dt), torch.tensor(0.0, dtype=dt)).item()
    w = torch.nn.functional.threshold(w, t, 0.0)
    if taper:  # w - m (1 + ln(w / m)) = w - TAPER_A - m ln(w), ln(w) = min(log w, 0)
        w = torch.where(w > 0, w - (TAPER_A + MIN_WEIGHT * logw.clamp(max=0.0)), w)
    return _BlockEval(w, raw, colx, gid, dx, dy, q)


def _accumulate_nonfinite(state: Tensor, colx: Tensor, wt: Tensor) -> Tensor:
    """``state + colx @ wt`` where non-finite colours only reach pixels with ``wt > 0``.

    Slow path, used only when some colour is NaN/Inf: finite colours go through ``baddbmm``
    (with the non-finite ones zeroed), non-finite ones are added explicitly where covered.
    """
    bad = ~torch.isfinite(colx.detach())  # [n, C+1, K]
    zero = torch.zeros((), dtype=colx.dtype, device=colx.device)
    out = torch.baddbmm(state, torch.where(bad, zero, colx), wt)
    covered = (wt.detach() > 0).unsqueeze(1)  # [n, 1, K, P]
    sel = bad.unsqueeze(-1) & covered  # [n, C+1, K, P]
    extra = torch.where(sel, colx.unsqueeze(-1) * wt.unsqueeze(1), zero).sum(dim=2)
    return out + extra


class _Scene(NamedTuple):
    """Flattened, compute-dtype inputs of the tile walk (:func:`_prepare_scene`)."""

    B: int
    N: int
    C: int
    means: Tensor  # [B*N, 2]
    conics: Tensor  # [B*N, 3]
    log_opac: Tensor  # [B*N]
    colors_x: Tensor  # [B*N, C+1]: colours, then -1 (alpha mode) or +1 (sum mode)
    colors_finite: bool
    taper: bool  # "sum_taper" weights
    start: Tensor  # [B*T] first pair of each global tile
    length: Tensor  # [B*T] pairs of each global tile
    gauss_ids: Tensor  # [P_pairs]


def _prepare_scene(
    means: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor, binning: Binning,
    dtype: torch.dtype, mode: str,
) -> _Scene:
    """Cast and flatten the inputs exactly as the forward uses them (differentiable)."""
    dev = means.device
    alpha_mode = mode == "alpha"
    B, N = opacities.shape[0], opacities.shape[1]
    C = colors.shape[-1]
    means_f = means.to(dtype).reshape(B * N, 2)
    conics_f = conics.to(dtype).reshape(B * N, 3)
    # extra colour channel: accumulates -sum(weights) (alpha: T_out) or +sum(weights) (sum: alpha)
    extra = torch.full((B * N, 1), -1.0 if alpha_mode else 1.0, dtype=dtype, device=dev)
    colors_x = torch.cat([colors.to(dtype).reshape(B * N, C), extra], dim=1)
    # log-opacity; non-positive opacities are never binned, clamp only avoids log(0) elsewhere
    log_opac = torch.log(opacities.to(dtype).reshape(B * N).clamp_min(1e-30))
    # NaN/Inf colours must poison only the pixels their Gaussian covers (not 0 * NaN in bmm)
    colors_finite = bool(torch.isfinite(colors_x.detach()).all())
    ranges = binning.ranges.to(dev)
    return _Scene(
        B, N, C, means_f, conics_f, log_opac, colors_x, colors_finite, mode == "sum_taper",
        ranges[:, 0], ranges[:, 1] - ranges[:, 0], binning.gauss_ids.to(dev),
    )


class _Step(NamedTuple):
    """What the tile walk computed for one chunk of tiles of one rank block (for a visitor)."""

    ids: Tensor  # [n] global tile ids
    ev: _BlockEval
    st_in: Optional[Tensor]  # [n, C+1, P] state entering the block (None when not tracked)
    lv_in: Optional[Tensor]  # alpha: [n, P] pixel live entering the block
    t_ex: Optional[Tensor]  # alpha: [n, K, P] transmittance in front of each Gaussian
    f: Optional[Tensor]  # alpha: [n, K, P] 1 - w
    contrib: Optional[Tensor]  # alpha: [n, K, P] not cut by the stop rule (None: nothing cut)
    wt: Tensor  # [n, K, P] composited weights (w * t_ex, cut; sum mode: w)


def _pixels_inside(active: Tensor, T: int, tiles_x: int, S: int, width: int, height: int) -> Tensor:
    """``[n, P]``: whether each pixel of the given global tiles lies inside the image."""
    pidx = torch.arange(S * S, device=active.device)
    loc = active % T
    return (((loc % tiles_x) * S).unsqueeze(1) + (pidx % S).unsqueeze(0) < width) & (
        ((loc // tiles_x) * S).unsqueeze(1) + (pidx // S).unsqueeze(0) < height
    )


def _composite_block(
    w: Tensor, st_in: Tensor, lv_in: Tensor, C: int, zero: Tensor,
) -> Tuple[Tensor, Tensor, Optional[Tensor], Tensor, Tensor]:
    """Alpha-mode front-to-back compositing of one rank block: ``(t_ex, f, contrib, wt, lv_out)``
    (the fields of :class:`_Step` of the same names, and the pixels still live after it)."""
    # transmittance entering the block; 0 for stopped pixels so they get nothing
    t_in = torch.where(lv_in, st_in[:, C], zero)
    f = 1.0 - w  # [n, K, P]; 1 where the Gaussian is skipped (w = 0)
    # exclusive prefix product: T before Gaussian i = t_in * prod_{j<i} (1 - a_j)
    t_ex = torch.cumprod(torch.cat([t_in.unsqueeze(1), f[:, :-1]], dim=1), dim=1)
    wt = w * t_ex
    with torch.no_grad():
        t_last = t_ex[:, -1] * f[:, -1]  # running T incl. every factor of the block
        lv_out = t_last > T_STOP
        stops = bool((lv_in & ~lv_out).any())
        # T' = T * (1 - a_i) <= 1e-4 stops the pixel: a suffix of the block is cut
        contrib = (t_ex * f > T_STOP) if stops else None
    if contrib is not None:
        wt = torch.where(contrib, wt, zero)
    return t_ex, f, contrib, wt, lv_out


def _walk_chunk(
    sc: _Scene,
    ids: Tensor,
    k: int,
    K: int,
    st_in: Optional[Tensor],
    lv_in: Optional[Tensor],
    T: int,
    tiles_x: int,
    tile_size: int,
    w_max: float,
    zero: Tensor,
    visit: Optional[Callable[[_Step], None]],
) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """Rank block ``[k, k + K)`` of one chunk of tiles: the state after it (None when not
    tracked) and, in alpha mode (``lv_in`` given), the pixels still live after it."""
    ev = _block_weights(
        ids, k, K, sc.start, sc.length, sc.gauss_ids, sc.N, T, tiles_x, tile_size,
        sc.means, sc.conics, sc.log_opac, sc.colors_x, w_max, sc.taper,
    )
    t_ex = f = contrib = lv_out = None
    if lv_in is not None:
        assert st_in is not None
        t_ex, f, contrib, wt, lv_out = _composite_block(ev.w, st_in, lv_in, sc.C, zero)
    else:
        wt = ev.w
    if visit is not None:
        visit(_Step(ids, ev, st_in, lv_in, t_ex, f, contrib, wt))
    if st_in is None:
        return None, lv_out
    # colour += sum_k colx[:, :, k] * wt[:, k, :]; extra channel -/+ sum_k wt
    if sc.colors_finite:
        return torch.baddbmm(st_in, ev.colx, wt), lv_out
    return _accumulate_nonfinite(st_in, ev.colx, wt), lv_out


def _cat(parts: List[Tensor]) -> Tensor:
    """``torch.cat`` that hands back a lone part itself instead of a copy."""
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _walk_tiles(
    sc: _Scene,
    binning: Binning,
    width: int,
    height: int,
    tile_size: int,
    alpha_mode: bool,
    visit: Optional[Callable[[_Step], None]] = None,
    track_state: bool = True,
) -> Optional[Tensor]:
    """Walk every non-empty tile front to back in rank blocks; the forward's compositing loop.

    Returns the per-tile state ``[B*T, C+1, P]`` (colour, then ``T_out`` in alpha mode or the
    weight sum in sum mode), or None when ``track_state`` is off (sum mode only). ``visit`` is
    called with a :class:`_Step` for each chunk of each rank block, after its weights are known:
    the backward recomputes the forward's exact skip/stop decisions through this same code.
    """
    C = sc.C
    dtype, dev = sc.means.dtype, sc.means.device
    S = int(tile_size)
    P = S * S
    tiles_x = binning.tiles_x
    T = tiles_x * binning.tiles_y
    length = sc.length
    w_max = ALPHA_MAX if alpha_mode else 1.0
    track_state = track_state or alpha_mode  # alpha mode needs the carried transmittance

    active = torch.nonzero(length > 0).flatten()
    # per-tile state [n, C+1, P]: colour, then T_out (alpha mode) or alpha sum (sum mode)
    state: Optional[Tensor] = None
    if track_state:
        state = torch.zeros((active.numel(), C + 1, P), dtype=dtype, device=dev)
    live: Optional[Tensor] = None
    if alpha_mode:
        assert state is not None
        state[:, C] = 1.0
        # live[t, p]: pixel has not stopped (T_run > 1e-4) and lies inside the image (no grad)
        live = _pixels_inside(active, T, tiles_x, S, width, height)
    zero = torch.zeros((), dtype=dtype, device=dev)

    done_ids: List[Tensor] = []
    done_state: List[Tensor] = []
    k = 0
    while active.numel() > 0:
        K = _block_size(k)
        chunk = max(1, MAX_BLOCK_ELEMS // (K * P))
        new_state: List[Tensor] = []
        new_live: List[Tensor] = []
        for s0 in range(0, active.numel(), chunk):
            st_out, lv_out = _walk_chunk(
                sc, active[s0:s0 + chunk], k, K,
                state[s0:s0 + chunk] if state is not None else None,
                live[s0:s0 + chunk] if live is not None else None,
                T, tiles_x, S, w_max, zero, visit,
            )
            if st_out is not None:
                new_state.append(st_out)
            if lv_out is not None:
                new_live.append(lv_out)
        if new_state:
            state = _cat(new_state)
        k += K
        keep = length[active] > k
        if alpha_mode:
            live = _cat(new_live)
            keep = keep & live.any(dim=1)
        if bool(keep.all()):
            continue
        fin = ~keep
        if state is not None:
            done_ids.append(active[fin])
            done_state.append(state[fin])
            state = state[keep]
        active = active[keep]
        if live is not None:
            live = live[keep]
    if not track_state:
        return None
    return _tile_results(sc.B * T, C, P, dtype, dev, alpha_mode, done_ids, done_state)


def _tile_results(
    n_tiles: int, C: int, P: int, dtype: torch.dtype, dev: torch.device, alpha_mode: bool,
    done_ids: List[Tensor], done_state: List[Tensor],
) -> Tensor:
    """Per-tile results ``[B*T, C+1, P]`` from the finished tiles' states; tiles never touched
    keep colour 0 and ``T_out`` 1 (alpha) / weight sum 0 (sum)."""
    init = torch.zeros((n_tiles, C + 1, P), dtype=dtype, device=dev)
    if alpha_mode:
        init[:, C] = 1.0
    if not done_ids:
        return init
    return init.index_copy(0, torch.cat(done_ids), torch.cat(done_state))


def _tiles_to_image(tiles: Tensor, B: int, binning: Binning, width: int, height: int, tile_size: int) -> Tensor:
    """``[B*T, C', P]`` per-tile values -> ``[B, H, W, C']`` image (cropping partial tiles)."""
    S, ty, tx = int(tile_size), binning.tiles_y, binning.tiles_x
    Cp = tiles.shape[1]
    img = tiles.view(B, ty, tx, Cp, S, S).permute(0, 1, 4, 2, 5, 3)
    return img.reshape(B, ty * S, tx * S, Cp)[:, :height, :width]


def _image_to_tiles(img: Tensor, binning: Binning, tile_size: int) -> Tensor:
    """``[B, H, W, C']`` -> ``[B*T, C', P]`` (inverse of :func:`_tiles_to_image`, zero padded)."""
    S, ty, tx = int(tile_size), binning.tiles_y, binning.tiles_x
    B, H, W, Cp = img.shape
    pad = img.new_zeros((B, ty * S, tx * S, Cp))
    pad[:, :H, :W] = img
    return pad.view(B, ty, S, tx, S, Cp).permute(0, 1, 3, 5, 2, 4).reshape(B * ty * tx, Cp, S * S)


def rasterize_fwd(
    means: Tensor,
    conics: Tensor,
    colors: Tensor,
    opacities: Tensor,
    background: Optional[Tensor],
    binning: Binning,
    width: int,
    height: int,
    tile_size: int,
    mode: str,
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Tiled, vectorised forward rasterizer (stage 4), differentiable by torch autograd.

    Args:
        means: ``[B, N, 2]`` pixel centres; conics: ``[B, N, 3]`` (1/pixel^2);
        colors: ``[B, N, C]``; opacities: ``[B, N]``;
        background: ``[B, C]`` or None (alpha mode only; None = zero background);
        binning: from :func:`bin_gaussians` with the same width/height/tile_size;
        mode: ``"alpha"`` (front-to-back compositing in index order), ``"sum"`` or
            ``"sum_taper"`` (see :data:`gsplat2d.binning.TAPER_A`).

    Returns:
        image ``[B, H, W, C]``, alpha ``[B, H, W, 1]`` and, in alpha mode, the final
        transmittance ``T_final [B, H, W]`` (None in sum mode). dtype float64 if any float input
        is float64, else float32.

    Works per tile over rank blocks of :data:`BLOCK_K` pairs: all still-active tiles evaluate
    their next ``K`` Gaussians on their ``tile_size^2`` pixels at once (``[n, K, P]``).
    Alpha mode: inside a block the transmittance before each Gaussian is an exclusive prefix
    product (``cumprod`` of ``1 - a``) times the tile's carried transmittance; ``T' <= 1e-4``
    cuts a suffix of the block; a per-pixel ``live`` flag (the running transmittance including
    the stopping Gaussian's factor is still ``> 1e-4``) keeps stopped pixels out of later
    blocks (their carried transmittance is replaced by 0), and tiles whose pixels have all
    stopped are dropped. The carried ``T_out`` is updated as ``T_out - sum(a_i T_i)`` (the
    telescoped product), accumulated through an extra colour channel of ``-1``.
    NaN/Inf colours only affect the pixels their Gaussian covers (slow path).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    dtype = compute_dtype(means, conics, colors, opacities, background)
    alpha_mode = mode == "alpha"
    sc = _prepare_scene(means, conics, colors, opacities, binning, dtype, mode)
    B, C = sc.B, sc.C
    tiles = _walk_tiles(sc, binning, width, height, tile_size, alpha_mode)
    assert tiles is not None
    img = _tiles_to_image(tiles, B, binning, width, height, tile_size)
    color, acc = img[..., :C], img[..., C:]
    if not alpha_mode:
        return color.contiguous(), acc.contiguous(), None
    if background is not None:
        color = color + acc * background.to(dtype).view(B, 1, 1, C)
    return color.contiguous(), (1.0 - acc).contiguous(), acc[..., 0].contiguous()


# ----------------------------------------------------------------------------------------------
# Stage 5: tiled backward rasterizer (mirror of kernels/rasterize_bwd.py)
# ----------------------------------------------------------------------------------------------
def _moment_basis(tile_size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``[P, 6]`` monomials ``1, x, y, x^2, x y, y^2`` of the tile-centred pixel coordinates."""
    S = int(tile_size)
    r = torch.arange(S, dtype=dtype, device=device) - 0.5 * (S - 1)
    y, x = r.repeat_interleave(S), r.repeat(S)  # pixel p = py * S + px
    return torch.stack([torch.ones_like(x), x, y, x * x, x * y, y * y], dim=1)


def _scatter_block_grads(G: Tensor, ev: _BlockEval, basis: Tensor, acc: Tensor) -> None:
    """Reduce ``G = dL/dlog(w)`` ``[n, K, P]`` of one block into ``acc [B*N, 6]``.

    ``log w = log o - sigma``, ``sigma = (a dx^2 + c dy^2) / 2 + b dx dy``. With the tile-centred
    coordinates ``x, y`` of :func:`_moment_basis`, ``dx = x + cx`` where ``cx`` is ``dx`` at the
    tile centre, so every sum ``sum_p G dx^i dy^j`` follows from the six raw moments
    ``G @ basis`` (one GEMM over the block). Columns of ``acc``:
    ``d mean_x, d mean_y, d a, d b, d c, d log o``.
    """
    n, K = ev.gid.shape
    S = ev.dx.shape[-1]
    A = torch.mm(G.view(n * K, S * S), basis).view(n, K, 6)
    a0, a1, a2, a3, a4, a5 = A.unbind(-1)
    half = 0.5 * (S - 1)
    cx = ev.dx[..., 0] + half  # [n, K]
    cy = ev.dy[..., 0] + half
    sx = a1 + cx * a0  # sum G dx
    sy = a2 + cy * a0
    sxx = a3 + cx * (2.0 * a1 + cx * a0)  # sum G dx^2
    syy = a5 + cy * (2.0 * a2 + cy * a0)
    sxy = a4 + cy * a1 + cx * (a2 + cy * a0)  # sum G dx dy
    a, b, c = ev.conic.unbind(-1)
    out = torch.stack([a * sx + b * sy, c * sy + b * sx, -0.5 * sxx, -sxy, -0.5 * syy, a0], dim=-1)
    acc.index_add_(0, ev.gid.reshape(-1), out.reshape(n * K, 6))


def _tile_cotangents(
    image: Tensor, t_final: Optional[Tensor], grad_image: Tensor, grad_alpha: Tensor,
    binning: Binning, B: int, C: int, width: int, height: int, tile_size: int,
    dtype: torch.dtype, alpha_mode: bool,
) -> Tuple[Tensor, Optional[Tensor], Tensor, Optional[Tensor]]:
    """``(g_img, tf, g_tiles, px_tiles)``: the image cotangent ``[B, H, W, C]``, ``T_final
    [B, H, W, 1]`` (alpha mode, else None), the extended cotangent per tile ``[B*T, C+1, P]``
    and (alpha mode, else None) the per-pixel ``g . image`` and ``g_alpha T_final`` per tile
    ``[B*T, 2, P]``."""
    g_img = grad_image.to(dtype).reshape(B, height, width, C)
    g_alpha = grad_alpha.to(dtype).reshape(B, height, width, 1)
    tf: Optional[Tensor] = None
    px_tiles: Optional[Tensor] = None
    if alpha_mode:
        assert t_final is not None
        tf = t_final.to(dtype).reshape(B, height, width, 1)
        # cotangent channels [g, 0]; per pixel: g . image and g_alpha * T_final
        g_ext = torch.cat([g_img, torch.zeros_like(g_alpha)], -1)
        px_terms = torch.cat([(g_img * image.to(dtype)).sum(-1, keepdim=True), g_alpha * tf], -1)
        px_tiles = _image_to_tiles(px_terms, binning, tile_size)  # [B*T, 2, P]
    else:
        # [g, g_alpha]: with the extended colour (c, 1) one bmm gives dL/dw = g . c + g_alpha
        g_ext = torch.cat([g_img, g_alpha], -1)
    g_tiles = _image_to_tiles(g_ext, binning, tile_size)  # [B*T, C+1, P]
    return g_img, tf, g_tiles, px_tiles


def _alpha_log_weight_grad(step: _Step, gc: Tensor, gi: Tensor, pt: Tensor, C: int) -> Tensor:
    """Alpha mode ``dL/dlog w`` ``[n, K, P]`` of one block from ``gc = g . c_k`` ``[n, K, P]``,
    the tiles' cotangents ``gi [n, C+1, P]`` and per-pixel terms ``pt [n, 2, P]``."""
    assert step.st_in is not None and step.t_ex is not None and step.f is not None
    # dL/dlog w = w dL/da = wt (g . c) + w / (1 - a) (g_alpha T_final - g . S_i)
    # with g . S_i = g . image - (g . colour before the block) - inclusive prefix.
    # A weight skipped, cut by the stop rule or on a stopped pixel has wt = 0
    # exactly, and passes nothing: the second term is masked by sign(wt).
    wg = step.wt * gc
    G = torch.cumsum(wg, dim=1)
    G.add_((pt[:, 1] - pt[:, 0] + (gi[:, :C] * step.st_in[:, :C]).sum(1)).unsqueeze(1))
    G.mul_(step.ev.w).div_(step.f).mul_(torch.sign(step.wt)).add_(wg)
    return G


def _accumulate_block_grads(
    step: _Step, g_tiles: Tensor, px_tiles: Optional[Tensor], C: int, w_max: float,
    basis: Tensor, acc: Tensor, acc_col: Tensor, taper: bool = False,
) -> None:
    """Add one visited block's gradients: geometry and log-opacity into ``acc [B*N, 6]``,
    colours into ``acc_col [B*N, C+1]``. ``px_tiles`` is given in alpha mode only."""
    ev = step.ev
    gi = g_tiles[step.ids]  # [n, C+1, P]
    # alpha: g . c_k; sum: g . c_k + g_alpha (= dL/dw)
    gc = torch.bmm(ev.colx.transpose(1, 2), gi)  # [n, K, P]
    if px_tiles is not None:
        G = _alpha_log_weight_grad(step, gc, gi, px_tiles[step.ids], C)
    elif taper:
        # d w_t / d log w = w - m where kept (w_t > 0 exactly there: w_t(m) = 0 has slope 0)
        G = gc.mul_(torch.where(ev.w > 0, ev.raw - MIN_WEIGHT, 0.0))
    else:
        G = gc.mul_(ev.w)  # 0 where the weight is skipped
    if bool(ev.raw.amax() > w_max):
        # a clamped weight passes no gradient to the opacity or sigma
        G.mul_(ev.raw <= w_max)
    _scatter_block_grads(G, ev, basis, acc)
    dcol = torch.bmm(step.wt, gi.transpose(1, 2))  # [n, K, C+1]: sum_p wt g
    acc_col.index_add_(0, ev.gid.reshape(-1), dcol.reshape(-1, C + 1))


def rasterize_bwd(
    means: Tensor,
    conics: Tensor,
    colors: Tensor,
    opacities: Tensor,
    has_background: bool,
    binning: Binning,
    image: Optional[Tensor],
    t_final: Optional[Tensor],
    grad_image: Tensor,
    grad_alpha: Tensor,
    width: int,
    height: int,
    tile_size: int,
    mode: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Tiled, vectorised backward rasterizer (stage 5), the mirror of the Triton backward.

    Args:
        means, conics, colors, opacities: as :func:`rasterize_fwd`; has_background: whether the
        forward had a background; binning: the forward's; image ``[B, H, W, C]`` (alpha mode;
        None in the sum modes, which do not read it) and
        ``t_final [B, H, W]`` (alpha mode; None in sum mode): the forward's outputs;
        grad_image ``[B, H, W, C]``, grad_alpha ``[B, H, W, 1]``: cotangents.

    Returns:
        gradients for means ``[B, N, 2]``, conics ``[B, N, 3]``, colors ``[B, N, C]``,
        opacities ``[B, N]`` and background ``[B, C]`` (None without a background), float64
        when the forward computed in float64 (``image`` is float64), else float32.

    Walks the tiles with the forward's own loop (:func:`_walk_tiles`), so every skip, clamp
    and stop decision is recomputed exactly. Alpha mode, front to back (no division of
    transmittances), per pixel with image cotangent ``g``:
    ``dL/da_i = T_i (g . c_i) - (g . S_i) / (1 - a_i) + g_alpha T_final / (1 - a_i)`` where
    ``g . S_i = g . image - sum_{j <= i} a_j T_j (g . c_j)`` (what lies behind Gaussian i; the
    prefix before the block is ``g . colour state``). Sum mode: ``dL/dw_i = g . c_i + g_alpha``
    (``"sum_taper"``: times ``d w_t / d w = 1 - m / w``).
    A clamped weight passes no gradient to o or sigma; the 1/255 skip and the 1e-4 stop pass
    none. Per-pixel terms are reduced over each tile's pixels before one ``index_add_`` per
    (Gaussian, tile).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    alpha_mode = mode == "alpha"
    dtype = compute_dtype(means, conics, colors, opacities, image)
    dev = means.device
    B, N, C = colors.shape
    w_max = ALPHA_MAX if alpha_mode else 1.0
    with torch.no_grad():
        sc = _prepare_scene(means, conics, colors, opacities, binning, dtype, mode)
        g_img, tf, g_tiles, px_tiles = _tile_cotangents(
            image, t_final, grad_image, grad_alpha, binning, B, C, width, height, tile_size,
            dtype, alpha_mode,
        )
        acc = torch.zeros((B * N, 6), dtype=dtype, device=dev)
        acc_col = torch.zeros((B * N, C + 1), dtype=dtype, device=dev)
        zero = torch.zeros((), dtype=dtype, device=dev)
        basis = _moment_basis(tile_size, dtype, dev)

        def visit(step: _Step) -> None:
            _accumulate_block_grads(step, g_tiles, px_tiles, C, w_max, basis, acc, acc_col, sc.taper)

        _walk_tiles(sc, binning, width, height, tile_size, alpha_mode, visit=visit,
                    track_state=alpha_mode)

        g_means = acc[:, 0:2].reshape(B, N, 2)
        g_conics = acc[:, 2:5].reshape(B, N, 3)
        # d log o / d o = 1 / o (never-binned Gaussians, possibly NaN opacity, get exactly 0)
        g_lo = acc[:, 5]
        o_c = opacities.to(dtype).reshape(B * N).clamp_min(1e-30)
        g_opac = torch.where(g_lo != 0, g_lo / o_c, zero).reshape(B, N)
        g_colors = acc_col[:, :C].reshape(B, N, C).contiguous()
        g_bg: Optional[Tensor] = None
        if has_background:
            if alpha_mode:
                assert tf is not None
                g_bg = (g_img * tf).sum(dim=(1, 2))  # d image / d bg = T_final
            else:
                g_bg = torch.zeros((B, C), dtype=dtype, device=dev)
    return g_means.contiguous(), g_conics.contiguous(), g_colors, g_opac, g_bg
