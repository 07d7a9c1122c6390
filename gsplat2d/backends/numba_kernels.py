"""Numba CPU kernels of the rasterizer: binning (a counting sort), forward and backward.

The kernel layer of the numba backend (``numba_backend.py`` holds the launchers,
``numba_function.py`` the ``torch.autograd.Function``). Every kernel works on flat NumPy views
of contiguous CPU tensors and writes into arrays the launcher allocated.

Work split, as in the Triton kernels: one tile is one task (``prange`` over global tiles, so the
two cores of a laptop or the many of a server each take whole tiles), and a tile walks its
Gaussians **front to back, one at a time**, in index order, over its pixels. Two things make the
walk cheap on a CPU where a GPU warp would not care:

* **Pixel windows.** Each Gaussian carries the pixel rectangle where its weight can reach 1/255
  (the binning stage's padded bound, ``win [B*N, 4]``), so a tile visits only the pixels of that
  rectangle inside it, not all ``TILE * TILE``: a 3-pixel Gaussian costs ~9 pairs per tile, not
  256. Every skipped pixel has weight below 1/255 by the same bound that decides the tiles.
* **Per-pixel stop.** alpha mode: a pixel whose transmittance has stopped (``T <= 1e-4``) is
  skipped before its exponential, and the tile leaves once all its pixels have stopped.

The per-pair math is one shared inlined function per decision (:func:`_log2_weight`,
:func:`_alpha_step`), so the backward recomputes *exactly* the forward's values: the kernels
are compiled without ``fastmath`` (no FMA contraction or reassociation), so the same source
gives the same rounding in both.

The backward writes each (tile, Gaussian) pair's gradient sums into its own row of a
``[P, 6 + C]`` buffer, reduced per Gaussian afterwards in a fixed order: no atomics, and the
result is bit-identical for any number of threads.

Compiled on first use for the float32 and the float64 signatures (``cache=True``: the machine
code is kept in ``__pycache__`` or ``NUMBA_CACHE_DIR`` and reused by later processes).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from gsplat2d.binning import ALPHA_MAX, LOG2E, MIN_WEIGHT, T_STOP

__all__ = ["tile_bounds", "bin_tiles", "rasterize_fwd_kernel", "rasterize_bwd_kernel", "reduce_pairs",
           "kernel_constants", "exp2"]

#: Index type of the inner loops (see the note above :func:`_alpha_phase`).
U = np.uint64

# Kernel options: cache compiled code across processes; no fastmath (forward and backward must
# round identically); numpy's error model (a division by zero gives inf, as in torch, instead of
# a Python exception check in the inner loops).
_OPTS = dict(cache=True, nogil=True, error_model="numpy")


def kernel_constants(dtype: np.dtype) -> np.ndarray:
    """The rule constants in the compute dtype, read by the kernels as locals: comparisons and
    arithmetic then stay in that dtype (a float64 literal would widen every float32 operation).
    ``[ALPHA_MAX, MIN_WEIGHT, T_STOP, 1, 0.5]``."""
    return np.array([ALPHA_MAX, MIN_WEIGHT, T_STOP, 1.0, 0.5], dtype=dtype)


# ----------------------------------------------------------------------------------------------
# Binning stage 1: bounds, tile rectangles, records, pixel windows
# ----------------------------------------------------------------------------------------------
@njit(inline="always", **_OPTS)
def _grid_index(f, n):  # pragma: no cover - jitted
    """A float tile/pixel bound clamped to ``[-1, n + 1]`` (NaN -> 0), cast, clamped to
    ``[0, n]`` (``torch_backend.tile_rects``'s ``_cast``)."""
    if f != f:
        f = 0.0
    f = min(max(f, -1.0), float(n + 1))
    return min(max(np.int64(f), 0), n)


@njit(parallel=True, **_OPTS)
def tile_bounds(means, conics, opac, W, H, S, rel_pad, abs_pad, rects, counts, params, rec,
                win):  # pragma: no cover - jitted
    """Stage 1 for every Gaussian in float64, the formula of ``docs/design.md`` as
    :func:`gsplat2d.binning.gaussian_extents` and ``torch_backend.tile_rects`` evaluate it
    (``tests/test_binning.py`` checks the outputs equal theirs).

    Inputs ``means [BN, 2]``, ``conics [BN, 3]``, ``opac [BN]`` (any float dtype). Writes
    ``rects`` int32 ``[BN, 4]``, ``counts`` int32 ``[BN]``, ``params`` float32 ``[BN, 8]`` (the
    record ``(mx, my, qa, qb, qc, log2 o, 1/o, 0)``), ``rec`` (the same in the compute dtype) and
    ``win`` int32 ``[BN, 4]`` (pixels whose centre lies in the padded bound, clipped to the
    image); all zero for a Gaussian with no tile."""
    tiles_x = (W + S - 1) // S
    tiles_y = (H + S - 1) // S
    for i in prange(opac.shape[0]):
        mx = np.float64(means[i, 0])
        my = np.float64(means[i, 1])
        a = np.float64(conics[i, 0])
        b = np.float64(conics[i, 1])
        c = np.float64(conics[i, 2])
        o = np.float64(opac[i])
        det = a * c - b * b
        ok = (np.isfinite(mx) and np.isfinite(my) and np.isfinite(a) and np.isfinite(b)
              and np.isfinite(c) and np.isfinite(o) and a > 0.0 and c > 0.0 and det > 0.0
              and 255.0 * o >= 1.0)
        n = 0
        ext_x = ext_y = 0.0
        tx0 = tx1 = ty0 = ty1 = 0
        if ok:
            r2 = 2.0 * np.log(255.0 * o)
            ext_x = np.sqrt(r2 * c / det) * (1.0 + rel_pad) + abs_pad
            ext_y = np.sqrt(r2 * a / det) * (1.0 + rel_pad) + abs_pad
            ok = not (np.isnan(ext_x) or np.isnan(ext_y))
        if ok:
            tx0 = _grid_index(np.floor((mx - ext_x - 0.5) / S), tiles_x)
            tx1 = _grid_index(np.floor((mx + ext_x - 0.5) / S) + 1.0, tiles_x)
            ty0 = _grid_index(np.floor((my - ext_y - 0.5) / S), tiles_y)
            ty1 = _grid_index(np.floor((my + ext_y - 0.5) / S) + 1.0, tiles_y)
            n = (tx1 - tx0) * (ty1 - ty0)
        if n > 0:
            rects[i, 0], rects[i, 1], rects[i, 2], rects[i, 3] = tx0, ty0, tx1, ty1
            win[i, 0] = _grid_index(np.ceil(mx - ext_x - 0.5), W)
            win[i, 1] = _grid_index(np.ceil(my - ext_y - 0.5), H)
            win[i, 2] = _grid_index(np.floor(mx + ext_x - 0.5) + 1.0, W)
            win[i, 3] = _grid_index(np.floor(my + ext_y - 0.5) + 1.0, H)
            v0, v1, v2 = a * (-0.5 * LOG2E), b * (-LOG2E), c * (-0.5 * LOG2E)
            v3, v4 = np.log2(o), 1.0 / o
            params[i, 0], params[i, 1], params[i, 2], params[i, 3] = mx, my, v0, v1
            params[i, 4], params[i, 5], params[i, 6], params[i, 7] = v2, v3, v4, 0.0
            rec[i, 0], rec[i, 1], rec[i, 2], rec[i, 3] = mx, my, v0, v1
            rec[i, 4], rec[i, 5], rec[i, 6], rec[i, 7] = v2, v3, v4, 0.0
        else:
            for j in range(4):
                rects[i, j] = 0
                win[i, j] = 0
            for j in range(8):
                params[i, j] = 0.0
                rec[i, j] = 0.0
        counts[i] = n


# ----------------------------------------------------------------------------------------------
# Binning: stages 2 + 3 as one counting sort
# ----------------------------------------------------------------------------------------------
@njit(inline="always", **_OPTS)
def _visit_tiles(rects, counts, b, N, tiles_x, n_tiles, fill, ids, scatter):  # pragma: no cover
    """Batch element ``b``'s Gaussians in index order, each over its tile rectangle: count one
    pair per tile in ``fill`` or, with ``scatter``, write the Gaussian into the tile's next slot."""
    for g in range(N):
        k = b * N + g
        if counts[k] == 0:
            continue
        for ty in range(rects[k, 1], rects[k, 3]):
            row = b * n_tiles + ty * tiles_x
            for tx in range(rects[k, 0], rects[k, 2]):
                if scatter:
                    ids[fill[row + tx]] = g
                fill[row + tx] += 1


@njit(parallel=True, **_OPTS)
def bin_tiles(rects, counts, B, N, tiles_x, tiles_y, ranges, ids):  # pragma: no cover - jitted
    """Per-tile ``[start, end)`` and Gaussian ids, sorted by (global tile, Gaussian index).

    ``rects`` int32 ``[B*N, 4]``, ``counts`` int32 ``[B*N]`` (stage 1); ``ranges`` int64
    ``[B*T, 2]`` and ``ids`` int32 ``[P]`` are written. Equal to sorting the stage-2 keys: each
    batch element's Gaussians are visited in index order and appended to their tiles' slots,
    so inside a tile the order is the index order (no sort, O(P)); batch elements in parallel.
    """
    n_tiles = tiles_x * tiles_y
    fill = np.zeros(B * n_tiles, dtype=np.int64)
    for b in prange(B):  # pass 1: pairs per tile
        _visit_tiles(rects, counts, b, N, tiles_x, n_tiles, fill, ids, False)
    # exclusive prefix sum -> ranges (empty tiles [0, 0], as the sort-based stage 3)
    pos = 0
    for t in range(B * n_tiles):
        n = fill[t]
        ranges[t, 0] = pos if n > 0 else 0
        ranges[t, 1] = pos + n if n > 0 else 0
        fill[t] = pos
        pos += n
    for b in prange(B):  # pass 2: scatter the ids, index order inside every tile
        _visit_tiles(rects, counts, b, N, tiles_x, n_tiles, fill, ids, True)


# ----------------------------------------------------------------------------------------------
# Shared per-pair math
# ----------------------------------------------------------------------------------------------
@intrinsic
def _f32_from_bits(typingctx, bits):  # pragma: no cover - compile-time
    """Reinterpret an int32 as the float32 with those bits (LLVM ``bitcast``)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


def exp2(x):  # pragma: no cover - replaced by the overload inside jitted code
    """``2**x`` in jitted code: float32 a branch-free polynomial that vectorises (below), float64
    ``np.exp2``."""
    return np.exp2(x)


# Minimax coefficients of 2**f on [-1/2, 1/2] (Cephes exp2f): relative error <= 1.7 float32 ulp
# (1.0e-7, measured over [-126, 10]), the same order as the GPU's ex2.approx (2 ulp).
_EXP2_POLY = (1.535336188319500e-4, 1.339887440266574e-3, 9.618437357674640e-3,
              5.550332471162809e-2, 2.402264791363012e-1, 6.931472028550421e-1, 1.0)


@overload(exp2, inline="always", jit_options=_OPTS)
def _exp2_overload(x):  # pragma: no cover - compile-time
    if x == types.float32:
        c0, c1, c2, c3, c4, c5, c6 = (np.float32(c) for c in _EXP2_POLY)

        def exp2_f32(x):
            # 2**x = 2**n * 2**f, n = round(x), f in [-1/2, 1/2]; x below -127 gives 0 (or the
            # smallest normal's neighbourhood), far below the 1/255 cutoff either way
            x = min(max(x, np.float32(-127.0)), np.float32(127.0))
            n = np.floor(x + np.float32(0.5))
            f = x - n
            p = ((((((c0 * f + c1) * f + c2) * f + c3) * f + c4) * f + c5) * f + c6)
            return p * _f32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))

        return exp2_f32
    return lambda x: np.exp2(x)


@njit(inline="always", **_OPTS)
def _window(win, k, x0, y0, x1, y1):  # pragma: no cover - jitted
    """Gaussian ``k``'s pixel rectangle clipped to the tile ``[x0, x1) x [y0, y1)``."""
    return max(win[k, 0], x0), max(win[k, 1], y0), min(win[k, 2], x1), min(win[k, 3], y1)


@njit(inline="always", **_OPTS)
def _tile_origin(gt, n_tiles, tiles_x, S, W, H):  # pragma: no cover - jitted
    """Batch element, pixel origin and clipped end of global tile ``gt``."""
    b = gt // n_tiles
    t = gt - b * n_tiles
    ty = t // tiles_x
    tx = t - ty * tiles_x
    x0 = tx * S
    y0 = ty * S
    return b, x0, y0, min(x0 + S, W), min(y0 + S, H)


@njit(inline="always", **_OPTS)
def _tile_pixels(xs, x0, y0, S, pxl, pyl, lxs):  # pragma: no cover - jitted
    """Pixel centres ``pxl``/``pyl`` and column ``lxs`` of the tile's ``S * S`` pixels, row-major
    (``p = ly * S + lx``), so a Gaussian's rows are one contiguous pixel range."""
    for p in range(S * S):
        lx = p % S
        lxs[p] = np.int32(lx)
        pxl[p] = xs[x0 + lx]
        pyl[p] = xs[y0 + p // S]


@njit(inline="always", **_OPTS)
def _span(win, k, x0, y0, x1, y1, S):  # pragma: no cover - jitted
    """Gaussian ``k``'s window inside the tile as the flat pixel range ``[pa, pb)`` from its first
    to its last pixel (middle rows whole; columns outside ``[lx0, lx1)`` are masked), or an
    empty range."""
    wx0, wy0, wx1, wy1 = _window(win, k, x0, y0, x1, y1)
    lx0 = wx0 - x0
    lx1 = wx1 - x0
    # int32 columns: a mask of int64 lanes would halve the vector width
    if wx0 >= wx1 or wy0 >= wy1:
        return 0, 0, np.int32(lx0), np.int32(lx1)
    return (wy0 - y0) * S + lx0, (wy1 - 1 - y0) * S + lx1, np.int32(lx0), np.int32(lx1)


# Every per-pixel loop below runs over a flat pixel range and indexes with unsigned integers:
# numba wraps negative indices around, and a possibly negative index makes LLVM gather and
# scatter instead of loading contiguous vectors (measured: 2-6x slower loops).
#
# The two phase functions decide everything (weights, skips, the stop rule). They are compiled
# once, strictly (no fastmath), and *called* (not inlined at numba level) by both the forward
# and the backward, so the backward may allow reassociation in its own sums while every
# decision stays bit-identical to the forward's (LLVM flags are per instruction).
@njit(**_OPTS)
def _alpha_phase(pa, pb, pxl, pyl, lxs, lx0, lx1, mx, my, qa, qb, qc, lo, T, amax, wmin, tstop,
                 zero, wb, ab, tb, rb):  # pragma: no cover - jitted
    """alpha mode, one Gaussian on the pixels ``[pa, pb)`` of a tile, front to back; branch-free,
    so it vectorises. The backward calls this very function: every decision is the forward's.

    ``log2 w = lo + qc dy^2 + dx (qa dx + qb dy)``; skip ``a < 1/255``, ``sigma < 0``
    (``pw > lo``), pixels outside the window and stopped pixels (``T <= 1e-4``); a pixel whose
    ``T' = T (1 - a)`` would fall to ``<= 1e-4`` stops: ``T`` keeps that factor and nothing is
    composited. Writes per pixel ``wb = a T`` (0 where not composited), ``ab = a``, ``tb = T``
    before it and ``rb = o exp(-sigma)``; updates ``T``; returns how many pixels stopped."""
    stopped = 0
    for pp in range(pa, pb):
        p = U(pp)
        dx = pxl[p] - mx
        dy = pyl[p] - my
        pw = (lo + qc * dy * dy) + dx * (qa * dx + qb * dy)
        raw = exp2(pw)
        t_in = T[p]
        a = min(raw, amax)
        valid = (lxs[p] >= lx0) & (lxs[p] < lx1) & (a >= wmin) & (pw <= lo) & (t_in > tstop)
        tn = t_in - a * t_in
        keep = valid & (tn > tstop)
        T[p] = tn if valid else t_in
        wb[p] = a * t_in if keep else zero
        ab[p] = a
        tb[p] = t_in
        rb[p] = raw
        stopped += 1 if (valid & (tn <= tstop)) else 0
    return stopped


@njit(**_OPTS)
def _sum_phase(pa, pb, pxl, pyl, lxs, lx0, lx1, mx, my, qa, qb, qc, lo, one, wmin, zero, wb,
               rb):  # pragma: no cover - jitted
    """sum mode, one Gaussian on the pixels ``[pa, pb)``: ``wb = min(1, o exp(-sigma))`` (0 below
    1/255, for ``sigma < 0`` and outside the window) and ``rb = o exp(-sigma)``; vectorises."""
    for pp in range(pa, pb):
        p = U(pp)
        dx = pxl[p] - mx
        dy = pyl[p] - my
        pw = (lo + qc * dy * dy) + dx * (qa * dx + qb * dy)
        raw = exp2(pw)
        w = min(raw, one)
        ok = (lxs[p] >= lx0) & (lxs[p] < lx1) & (w >= wmin) & (pw <= lo)
        wb[p] = w if ok else zero
        rb[p] = raw


@njit(inline="always", **_OPTS)
def _weigh(rec, win, k, x0, y0, x1, y1, S, pxl, pyl, lxs, T, amax, wmin, tstop, one, zero,
           alpha_mode, wb, ab, tb, rb):  # pragma: no cover - jitted
    """Gaussian ``k`` in the tile: its flat pixel range ``[pa, pb)`` and, where it is not empty,
    its weights there by the phase function of the mode (both kernels walk through this).
    Returns ``(pa, pb, pixels that stopped, mx, my)``."""
    pa, pb, lx0, lx1 = _span(win, k, x0, y0, x1, y1, S)
    mx, my, qa, qb, qc, lo = rec[k, 0], rec[k, 1], rec[k, 2], rec[k, 3], rec[k, 4], rec[k, 5]
    stopped = 0
    if pa < pb:
        if alpha_mode:
            stopped = _alpha_phase(pa, pb, pxl, pyl, lxs, lx0, lx1, mx, my, qa, qb, qc, lo, T,
                                   amax, wmin, tstop, zero, wb, ab, tb, rb)
        else:
            _sum_phase(pa, pb, pxl, pyl, lxs, lx0, lx1, mx, my, qa, qb, qc, lo, one, wmin, zero,
                       wb, rb)
    return pa, pb, stopped, mx, my


@njit(inline="always", **_OPTS)
def _tile_buffers(xs, x0, y0, S, dtype):  # pragma: no cover - jitted
    """The tile's pixel coordinates (:func:`_tile_pixels`) and the per-Gaussian scratch rows
    ``wb, ab, tb, rb`` of the phase functions, ``S * S`` each."""
    P = S * S
    pxl = np.empty(P, dtype=dtype)
    pyl = np.empty(P, dtype=dtype)
    lxs = np.empty(P, dtype=np.int32)
    _tile_pixels(xs, x0, y0, S, pxl, pyl, lxs)
    return (pxl, pyl, lxs, np.zeros(P, dtype=dtype), np.zeros(P, dtype=dtype),
            np.zeros(P, dtype=dtype), np.zeros(P, dtype=dtype))


@njit(inline="always", **_OPTS)
def _all_finite(colors, k):  # pragma: no cover - jitted
    for c in range(colors.shape[1]):
        if not np.isfinite(colors[k, c]):
            return False
    return True


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------
@njit(**_OPTS)
def _fwd_tile(gt, rec, win, colors, bg, ranges, ids, xs, consts, N, W, H, tiles_x, n_tiles, S,
              alpha_mode, image, alpha, tfinal):  # pragma: no cover - jitted
    """One tile of :func:`rasterize_fwd_kernel` (a plain function: its loops get LLVM's full
    loop optimisation, which a ``prange`` body does not)."""
    amax, wmin, tstop, one = consts[0], consts[1], consts[2], consts[3]
    zero = one - one
    C = colors.shape[1]
    P = S * S
    b, x0, y0, x1, y1 = _tile_origin(gt, n_tiles, tiles_x, S, W, H)
    pxl, pyl, lxs, wb, ab, tb, rb = _tile_buffers(xs, x0, y0, S, colors.dtype)
    acc = np.zeros((C, P), dtype=colors.dtype)  # channel-major: a channel's pixels are contiguous
    T = np.full(P, one)  # running transmittance, incl. a stopping factor
    tout = np.full(P, one)  # after the last composited Gaussian
    wsum = np.zeros(P, dtype=colors.dtype)
    live = (x1 - x0) * (y1 - y0)  # alpha: pixels not yet stopped
    for s in range(ranges[gt, 0], ranges[gt, 1]):
        k = b * N + ids[s]
        pa, pb, stopped, _, _ = _weigh(rec, win, k, x0, y0, x1, y1, S, pxl, pyl, lxs, T, amax,
                                       wmin, tstop, one, zero, alpha_mode, wb, ab, tb, rb)
        if pa >= pb:
            continue
        live -= stopped
        if alpha_mode:
            for pp in range(pa, pb):
                p = U(pp)
                tout[p] = T[p] if wb[p] > zero else tout[p]
        else:
            for pp in range(pa, pb):
                p = U(pp)
                wsum[p] += wb[p]
        if not _all_finite(colors, k):
            # a NaN/Inf colour reaches only the pixels its weight does (0 * NaN is NaN)
            for pp in range(pa, pb):
                if wb[pp] != zero:
                    for c in range(C):
                        acc[c, pp] += wb[pp] * colors[k, c]
        else:
            for c in range(C):
                cc = colors[k, c]
                for pp in range(pa, pb):
                    p = U(pp)
                    acc[U(c), p] += wb[p] * cc
        if alpha_mode and live == 0:
            break  # every pixel of the tile has stopped
    has_bg = bg.shape[1] > 0
    for y in range(y0, y1):
        for x in range(x0, x1):
            p = U((y - y0) * S + (x - x0))
            q = U((b * H + y) * W + x)
            if alpha_mode:
                for c in range(C):
                    extra = tout[p] * bg[b, c] if has_bg else zero
                    image[q, U(c)] = acc[U(c), p] + extra
                alpha[q] = one - tout[p]
                tfinal[q] = tout[p]
            else:
                for c in range(C):
                    image[q, U(c)] = acc[U(c), p]
                alpha[q] = wsum[p]


@njit(parallel=True, **_OPTS)
def rasterize_fwd_kernel(rec, win, colors, bg, ranges, ids, xs, consts, N, W, H, tiles_x, S,
                         alpha_mode, image, alpha, tfinal):  # pragma: no cover - jitted
    """Forward: ``image [B*H*W, C]``, ``alpha [B*H*W]`` and (alpha mode) ``tfinal [B*H*W]``.

    ``rec [B*N, 8]`` per-Gaussian record ``(mx, my, qa, qb, qc, lo, 1/o, 0)`` in the compute
    dtype; ``win`` int32 ``[B*N, 4]`` pixel rectangles ``(x0, y0, x1, y1)``, half-open;
    ``colors [B*N, C]``; ``bg [B, C]`` (``B x 0`` without a background); ``ranges``/``ids``
    from :func:`bin_tiles`; ``xs`` pixel centres ``i + 0.5`` over the whole tile grid (partial
    tiles' lanes beyond the image included: they are computed, then masked); ``consts`` from
    :func:`kernel_constants`. A NaN/Inf colour is added only where its weight is non-zero (else
    ``0 * NaN`` would spread it over the window): it reaches the pixels the Gaussian covers.
    """
    B = image.shape[0] // (W * H)
    n_tiles = ranges.shape[0] // B
    for gt in prange(ranges.shape[0]):
        _fwd_tile(gt, rec, win, colors, bg, ranges, ids, xs, consts, N, W, H, tiles_x, n_tiles, S,
                  alpha_mode, image, alpha, tfinal)


# ----------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------
# Sums over a pixel range may be reassociated (so they vectorise); the result is still the same
# for any thread count, and nothing here feeds a forward decision (the phases are strict).
@njit(fastmath={"reassoc"}, **_OPTS)
def _moments(sg, pxl, pyl, mx, my, pa, pb, zero):  # pragma: no cover - jitted
    """``(sum s, sum s dx, sum s dy, sum s dx^2, sum s dx dy, sum s dy^2)`` over ``[pa, pb)``."""
    s0 = sx = sy = sxx = sxy = syy = zero
    for pp in range(pa, pb):
        p = U(pp)
        v = sg[p]
        dx = pxl[p] - mx
        dy = pyl[p] - my
        u = v * dx
        w = v * dy
        s0 += v
        sx += u
        sy += w
        sxx += u * dx
        sxy += u * dy
        syy += w * dy
    return s0, sx, sy, sxx, sxy, syy


@njit(fastmath={"reassoc"}, **_OPTS)  # sums only: the phase functions it calls are strict
def _bwd_tile(gt, rec, win, conics, colors, ranges, ids, xs, consts, N, W, H, tiles_x, n_tiles,
              S, alpha_mode, image, tfinal, gimage, galpha, gpair):  # pragma: no cover - jitted
    """One tile of :func:`rasterize_bwd_kernel`."""
    amax, wmin, tstop, one, half = consts[0], consts[1], consts[2], consts[3], consts[4]
    zero = one - one
    C = colors.shape[1]
    P = S * S
    b, x0, y0, x1, y1 = _tile_origin(gt, n_tiles, tiles_x, S, W, H)
    pxl, pyl, lxs, wb, ab, tb, rb = _tile_buffers(xs, x0, y0, S, colors.dtype)
    g = np.zeros((C, P), dtype=colors.dtype)  # image cotangent, channel-major
    ga = np.zeros(P, dtype=colors.dtype)
    kk = np.zeros(P, dtype=colors.dtype)  # alpha: g_alpha T_final - g . S_i
    T = np.full(P, one)
    gc = np.zeros(P, dtype=colors.dtype)
    sg = np.zeros(P, dtype=colors.dtype)
    for y in range(y0, y1):
        for x in range(x0, x1):
            p = U((y - y0) * S + (x - x0))
            q = U((b * H + y) * W + x)
            ga[p] = galpha[q]
            for c in range(C):
                g[U(c), p] = gimage[q, U(c)]
            if alpha_mode:
                gi = zero
                for c in range(C):
                    gi += gimage[q, U(c)] * image[q, U(c)]
                kk[p] = ga[p] * tfinal[q] - gi
    live = (x1 - x0) * (y1 - y0)
    for s in range(ranges[gt, 0], ranges[gt, 1]):
        k = b * N + ids[s]
        pa, pb, stopped, mx, my = _weigh(rec, win, k, x0, y0, x1, y1, S, pxl, pyl, lxs, T, amax,
                                         wmin, tstop, one, zero, alpha_mode, wb, ab, tb, rb)
        if pa >= pb:
            continue
        live -= stopped
        # g . c per pixel and sum_p w g_c per channel, four channels per pass over the pixels
        for pp in range(pa, pb):
            gc[U(pp)] = zero
        out = gpair[s]
        c = 0
        while c + 4 <= C:
            c0, c1, c2, c3 = colors[k, c], colors[k, c + 1], colors[k, c + 2], colors[k, c + 3]
            g0, g1, g2, g3 = g[c], g[c + 1], g[c + 2], g[c + 3]
            d0 = d1 = d2 = d3 = zero
            for pp in range(pa, pb):
                p = U(pp)
                w = wb[p]
                v0, v1, v2, v3 = g0[p], g1[p], g2[p], g3[p]
                gc[p] += (v0 * c0 + v1 * c1) + (v2 * c2 + v3 * c3)
                d0 += w * v0
                d1 += w * v1
                d2 += w * v2
                d3 += w * v3
            out[6 + c], out[7 + c], out[8 + c], out[9 + c] = d0, d1, d2, d3
            c += 4
        while c < C:
            cc = colors[k, c]
            gr = g[c]
            dsum = zero
            for pp in range(pa, pb):
                p = U(pp)
                gv = gr[p]
                gc[p] += gv * cc
                dsum += wb[p] * gv
            out[6 + c] = dsum
            c += 1
        # s = dL/draw * raw where the weight is composited and below its clamp, else 0 (selects,
        # not products: a NaN colour must not reach pixels its weight does not)
        if alpha_mode:
            for pp in range(pa, pb):
                p = U(pp)
                on = wb[p] > zero
                kk[p] += wb[p] * gc[p] if on else zero  # now excludes this Gaussian
                d = (tb[p] * gc[p] + kk[p] / (one - ab[p])) * rb[p]
                sg[p] = d if (on & (rb[p] <= amax)) else zero
        else:
            for pp in range(pa, pb):
                p = U(pp)
                d = (gc[p] + ga[p]) * rb[p]
                sg[p] = d if ((wb[p] > zero) & (rb[p] <= one)) else zero
        s0, sx, sy, sxx, sxy, syy = _moments(sg, pxl, pyl, mx, my, pa, pb, zero)
        ca, cb, cc = conics[k, 0], conics[k, 1], conics[k, 2]
        out[0] = ca * sx + cb * sy
        out[1] = cb * sx + cc * sy
        out[2] = -half * sxx
        out[3] = -sxy
        out[4] = -half * syy
        out[5] = s0 * rec[k, 6]
        if alpha_mode and live == 0:
            break


@njit(parallel=True, **_OPTS)
def rasterize_bwd_kernel(rec, win, conics, colors, ranges, ids, xs, consts, N, W, H, tiles_x, S,
                         alpha_mode, image, tfinal, gimage, galpha, gpair):  # pragma: no cover
    """Backward: per (tile, Gaussian) pair ``s``, ``gpair[s] = (dmx, dmy, da, db, dc, do,
    dcolor[C])`` summed over the tile's pixels (rows of pairs that take nothing stay 0).

    Inputs as :func:`rasterize_fwd_kernel`, plus ``conics [B*N, 3]`` (the compute dtype),
    the forward's ``image [B*H*W, C]`` (background included) and ``tfinal [B*H*W]`` (alpha
    mode), and the cotangents ``gimage [B*H*W, C]``, ``galpha [B*H*W]``.

    alpha mode, front to back as the forward (no division of transmittances): per pixel
    ``k = g_alpha T_final - g . S_i`` where ``g . S_i = g . image - sum_{j <= i} a_j T_j (g . c_j)``
    is what lies behind Gaussian ``i``, and ``dL/da_i = T_i (g . c_i) + k / (1 - a_i)``. sum
    mode: ``dL/dw_i = g . c_i + g_alpha``. A weight at its clamp (0.99 / 1) passes nothing to
    the opacity or sigma. With ``s = dL/draw * raw`` the geometry gradients are the moments
    ``S = sum s``, ``Sx = sum s dx``, ... of the pair's pixels:
    ``dmx = a Sx + b Sy``, ``dmy = b Sx + c Sy``, ``da = -Sxx/2``, ``db = -Sxy``, ``dc = -Syy/2``,
    ``do = S / o``.
    """
    B = image.shape[0] // (W * H)
    n_tiles = ranges.shape[0] // B
    for gt in prange(ranges.shape[0]):
        if ranges[gt, 0] < ranges[gt, 1]:
            _bwd_tile(gt, rec, win, conics, colors, ranges, ids, xs, consts, N, W, H, tiles_x,
                      n_tiles, S, alpha_mode, image, tfinal, gimage, galpha, gpair)


@njit(parallel=True, **_OPTS)
def reduce_pairs(gpair, ranges, ids, N, B, out):  # pragma: no cover - jitted
    """``out[b*N + g] += gpair[s]`` over every pair ``s`` of Gaussian ``g`` of batch element ``b``,
    in pair order (batch elements in parallel: their Gaussians are disjoint)."""
    n_tiles = ranges.shape[0] // B
    D = gpair.shape[1]
    for b in prange(B):
        for t in range(b * n_tiles, (b + 1) * n_tiles):
            for s in range(ranges[t, 0], ranges[t, 1]):
                k = b * N + ids[s]
                for d in range(D):
                    out[k, d] += gpair[s, d]
