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
  256. Every skipped pixel has weight below 1/255 by the same bound that decides the tiles. The
  rectangle's rows are walked as one flat pixel range rounded out to whole 8-lane vectors, the
  lanes outside it masked.
* **Per-pixel stop.** alpha mode: a pixel whose transmittance has stopped (``T <= 1e-4``) is
  skipped before its exponential, and the tile leaves once all its pixels have stopped.

Each decision (weights, skips, the stop rule) is made by one phase function per mode
(:func:`_alpha_phase_py`, :func:`_sum_phase_py`), compiled without ``fastmath`` (no FMA
contraction or reassociation), so the backward recomputes *exactly* the forward's values.

Images are **channel-major** (``[B, C, H, W]``): a tile accumulates each channel's pixels
contiguously, so the tile's result leaves (and the backward's cotangent arrives) as contiguous
row copies, not a per-element transposition (which was 13-18% of each kernel).

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

from gsplat2d.binning import ALPHA_MAX, LOG2E, MIN_WEIGHT, T_STOP, TAPER_A, TAPER_B

__all__ = ["tile_bounds", "bin_tiles", "rasterize_fwd_kernel", "rasterize_bwd_kernel", "reduce_pairs",
           "kernel_constants", "exp2"]

#: Index type of the inner loops (see the note above :func:`_alpha_phase`).
U = np.uint64

# Kernel options: cache compiled code across processes; no fastmath (forward and backward must
# round identically); numpy's error model (a division by zero gives inf, as in torch, instead of
# a Python exception check in the inner loops).
_OPTS = dict(cache=True, nogil=True, error_model="numpy")


def kernel_constants(dtype: np.dtype, mode: str) -> np.ndarray:
    """The rule constants in the compute dtype, read by the kernels as locals: comparisons and
    arithmetic then stay in that dtype (a float64 literal would widen every float32 operation).
    ``[ALPHA_MAX, MIN_WEIGHT, T_STOP, 1, 0.5, ta, tb, tw]``: the ``"sum_taper"`` weight is
    ``w - (ta + tb log2 w)`` with slope factor ``raw - tw`` (``TAPER_A``, ``TAPER_B``,
    ``MIN_WEIGHT``); zeros in the other modes, where the same code then leaves ``w`` exact."""
    ta, tb, tw = (TAPER_A, TAPER_B, MIN_WEIGHT) if mode == "sum_taper" else (0.0, 0.0, 0.0)
    return np.array([ALPHA_MAX, MIN_WEIGHT, T_STOP, 1.0, 0.5, ta, tb, tw], dtype=dtype)


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


# ----------------------------------------------------------------------------------------------
# A tile's scratch and a pair's pixel range
# ----------------------------------------------------------------------------------------------
# One [rows, P8] scratch array per tile (P8 = S * S rounded up to a multiple of 8), its rows named
# below. Helpers take this one array and scalars: every array handed to a helper costs an atomic
# reference-count pair per call (measured: 10-13% of the forward when each row was its own array).
PX, PY, WB, AB, TB, RB, TT = 0, 1, 2, 3, 4, 5, 6  # both kernels (see the phase functions)
TOUT, WSUM = 7, 8  # forward: T after the last composited Gaussian, sum of weights (sum mode)
GC, SG, GA, KK = 7, 8, 9, 10  # backward: g . c, dL/draw * raw, g_alpha, alpha-mode carry
_FWD_ROWS = 9
_BWD_ROWS = 11


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
def _tile_scratch(xs, x0, y0, x1, y1, S, rows, dtype):  # pragma: no cover - jitted
    """A tile's zeroed ``[rows, P8]`` scratch with the pixel centres in rows PX and PY, row-major
    (``p = ly * S + lx``, so a Gaussian's rows are one contiguous range). Lanes outside the image
    and the padding get -1, which no pixel window contains."""
    P8 = (S * S + 7) // 8 * 8
    sc = np.zeros((rows, P8), dtype=dtype)
    for p in range(P8):
        sc[PX, p] = -1.0
        sc[PY, p] = -1.0
    for ly in range(y1 - y0):
        for lx in range(x1 - x0):
            sc[PX, ly * S + lx] = xs[x0 + lx]
            sc[PY, ly * S + lx] = xs[y0 + ly]
    return sc


@njit(inline="always", **_OPTS)
def _span(wx0, wy0, wx1, wy1, x0, y0, S):  # pragma: no cover - jitted
    """A non-empty window ``[wx0, wx1) x [wy0, wy1)`` inside the tile as the flat pixel range from
    its first to its last pixel, rounded out to multiples of 8: whole vectors, so no loop over it
    ends in a scalar remainder. The phase functions mask every lane outside the window."""
    pa = ((wy0 - y0) * S + (wx0 - x0)) // 8 * 8
    pb = ((wy1 - 1 - y0) * S + (wx1 - x0) + 7) // 8 * 8
    return pa, pb


# Every per-pixel loop below runs over a flat pixel range and indexes with unsigned integers:
# numba wraps negative indices around, and a possibly negative index makes LLVM gather and
# scatter instead of loading contiguous vectors (measured: 2-6x slower loops).
#
# The two phase functions decide everything (weights, skips, the stop rule), strictly (no
# fastmath). The forward inlines them; the backward, whose sums may be reassociated, *calls* a
# separately compiled copy, so every decision is computed by the same IEEE operations in both
# (LLVM's fast-math flags are per instruction and survive its inlining; numba-level inlining
# would lower them with the caller's flags).
def _alpha_phase_py(sc, pa, pb, fx0, fx1, fy0, fy1, mx, my, qa, qb, qc, lo, amax, wmin, tstop,
                    zero):  # pragma: no cover - jitted
    """alpha mode, one Gaussian on the pixels ``[pa, pb)`` of a tile, front to back; branch-free,
    so it vectorises.

    ``log2 w = lo + qc dy^2 + dx (qa dx + qb dy)``; skip pixels outside the window
    (``[fx0, fx1] x [fy0, fy1]``, pixel centres), ``a < 1/255``, ``sigma < 0`` (``pw > lo``)
    and stopped pixels (``T <= 1e-4``); a pixel whose ``T' = T (1 - a)`` would fall to
    ``<= 1e-4`` stops: ``T`` keeps that factor and nothing is composited. Writes per pixel
    ``WB = a T`` (0 where not composited), ``AB = a``, ``TB = T`` before it and ``RB = o
    exp(-sigma)``; updates ``TT``; returns how many pixels stopped."""
    stopped = 0
    for pp in range(pa, pb):
        p = U(pp)
        px = sc[PX, p]
        py = sc[PY, p]
        dx = px - mx
        dy = py - my
        pw = (lo + qc * dy * dy) + dx * (qa * dx + qb * dy)
        raw = exp2(pw)
        t_in = sc[TT, p]
        a = min(raw, amax)
        inside = (px >= fx0) & (px <= fx1) & (py >= fy0) & (py <= fy1)
        valid = inside & (a >= wmin) & (pw <= lo) & (t_in > tstop)
        tn = t_in - a * t_in
        keep = valid & (tn > tstop)
        sc[TT, p] = tn if valid else t_in
        sc[WB, p] = a * t_in if keep else zero
        sc[AB, p] = a
        sc[TB, p] = t_in
        sc[RB, p] = raw
        stopped += 1 if (valid & (tn <= tstop)) else 0
    return stopped


def _sum_phase_py(sc, pa, pb, fx0, fx1, fy0, fy1, mx, my, qa, qb, qc, lo, one, wmin, zero, ta,
                  tb):  # pragma: no cover - jitted
    """sum mode, one Gaussian on the pixels ``[pa, pb)``: ``WB = w - (ta + tb log2 w)`` with ``w =
    min(1, o exp(-sigma))`` (0 below 1/255, for ``sigma < 0`` and outside the window; ``ta = tb =
    0`` but in ``"sum_taper"`` mode) and ``RB = o exp(-sigma)``; vectorises."""
    for pp in range(pa, pb):
        p = U(pp)
        px = sc[PX, p]
        py = sc[PY, p]
        dx = px - mx
        dy = py - my
        pw = (lo + qc * dy * dy) + dx * (qa * dx + qb * dy)
        raw = exp2(pw)
        w = min(raw, one)
        inside = (px >= fx0) & (px <= fx1) & (py >= fy0) & (py <= fy1)
        ok = inside & (w >= wmin) & (pw <= lo)
        sc[WB, p] = w - (ta + tb * min(pw, zero)) if ok else zero
        sc[RB, p] = raw


# inlined (forward) and called (backward) compilations of the same source; _nrt=False: a called
# copy touches no reference counts
_alpha_phase_inline = njit(inline="always", **_OPTS)(_alpha_phase_py)
_sum_phase_inline = njit(inline="always", **_OPTS)(_sum_phase_py)
_alpha_phase = njit(_nrt=False, **_OPTS)(_alpha_phase_py)
_sum_phase = njit(_nrt=False, **_OPTS)(_sum_phase_py)


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------
@njit(**_OPTS)
def _fwd_tile(gt, rec, win, colors, bg, ranges, ids, xs, consts, N, W, H, tiles_x, n_tiles, S,
              alpha_mode, image, alpha, tfinal):  # pragma: no cover - jitted
    """One tile of :func:`rasterize_fwd_kernel` (a plain function: its loops get LLVM's full
    loop optimisation, which a ``prange`` body does not)."""
    amax, wmin, tstop, one = consts[0], consts[1], consts[2], consts[3]
    ta, tb = consts[5], consts[6]
    zero = one - one
    C = colors.shape[1]
    b, x0, y0, x1, y1 = _tile_origin(gt, n_tiles, tiles_x, S, W, H)
    sc = _tile_scratch(xs, x0, y0, x1, y1, S, _FWD_ROWS, colors.dtype)
    P8 = sc.shape[1]
    for p in range(P8):
        sc[TT, p] = one
        sc[TOUT, p] = one
    acc = np.zeros((C, P8), dtype=colors.dtype)  # channel-major: a channel's pixels are contiguous
    live = (x1 - x0) * (y1 - y0)  # alpha: pixels not yet stopped
    for s in range(ranges[gt, 0], ranges[gt, 1]):
        k = b * N + ids[s]
        wx0, wy0 = max(win[k, 0], x0), max(win[k, 1], y0)
        wx1, wy1 = min(win[k, 2], x1), min(win[k, 3], y1)
        if wx0 >= wx1 or wy0 >= wy1:
            continue
        pa, pb = _span(wx0, wy0, wx1, wy1, x0, y0, S)
        fx0, fx1, fy0, fy1 = xs[wx0], xs[wx1 - 1], xs[wy0], xs[wy1 - 1]
        mx, my, qa, qb, qc, lo = rec[k, 0], rec[k, 1], rec[k, 2], rec[k, 3], rec[k, 4], rec[k, 5]
        if alpha_mode:
            live -= _alpha_phase_inline(sc, pa, pb, fx0, fx1, fy0, fy1, mx, my, qa, qb, qc, lo,
                                        amax, wmin, tstop, zero)
            for pp in range(pa, pb):
                p = U(pp)
                sc[TOUT, p] = sc[TT, p] if sc[WB, p] > zero else sc[TOUT, p]
        else:
            _sum_phase_inline(sc, pa, pb, fx0, fx1, fy0, fy1, mx, my, qa, qb, qc, lo, one, wmin,
                              zero, ta, tb)
            for pp in range(pa, pb):
                p = U(pp)
                sc[WSUM, p] += sc[WB, p]
        finite = True
        for c in range(C):
            finite &= np.isfinite(colors[k, c])
        if finite:
            for c in range(C):
                cc = colors[k, c]
                for pp in range(pa, pb):
                    p = U(pp)
                    acc[U(c), p] += sc[WB, p] * cc
        else:
            # a NaN/Inf colour reaches only the pixels its weight does (0 * NaN is NaN)
            for pp in range(pa, pb):
                if sc[WB, pp] != zero:
                    for c in range(C):
                        acc[c, pp] += sc[WB, pp] * colors[k, c]
        if alpha_mode and live == 0:
            break  # every pixel of the tile has stopped
    # channel-major output: each (channel, row) of the tile is one contiguous copy
    w = x1 - x0
    has_bg = bg.shape[1] > 0
    for ly in range(y1 - y0):
        row = U(ly * S)
        q = U((b * H + y0 + ly) * W + x0)  # the row's first pixel in alpha / tfinal
        for c in range(C):
            qc = U(((b * C + c) * H + y0 + ly) * W + x0)
            extra = bg[b, c] if (alpha_mode and has_bg) else zero
            if alpha_mode:
                for lx in range(w):
                    p = row + U(lx)
                    image[qc + U(lx)] = acc[U(c), p] + sc[TOUT, p] * extra
            else:
                for lx in range(w):
                    image[qc + U(lx)] = acc[U(c), row + U(lx)]
        if alpha_mode:
            for lx in range(w):
                t = sc[TOUT, row + U(lx)]
                alpha[q + U(lx)] = one - t
                tfinal[q + U(lx)] = t
        else:
            for lx in range(w):
                alpha[q + U(lx)] = sc[WSUM, row + U(lx)]


@njit(parallel=True, **_OPTS)
def rasterize_fwd_kernel(rec, win, colors, bg, ranges, ids, xs, consts, N, W, H, tiles_x, S,
                         alpha_mode, image, alpha, tfinal):  # pragma: no cover - jitted
    """Forward: ``image`` (channel-major ``[B, C, H, W]``, flat), ``alpha [B*H*W]`` and (alpha
    mode) ``tfinal [B*H*W]``.

    ``rec [B*N, 8]`` per-Gaussian record ``(mx, my, qa, qb, qc, lo, 1/o, 0)`` in the compute
    dtype; ``win`` int32 ``[B*N, 4]`` pixel rectangles ``(x0, y0, x1, y1)``, half-open;
    ``colors [B*N, C]``; ``bg [B, C]`` (``B x 0`` without a background); ``ranges``/``ids``
    from :func:`bin_tiles`; ``xs`` pixel centres ``i + 0.5`` for ``i < max(W, H)``;
    ``consts`` from :func:`kernel_constants`. A NaN/Inf colour is added only where its weight
    is non-zero (else ``0 * NaN`` would spread it over the window): it reaches the pixels the
    Gaussian covers.
    """
    n_tiles = ranges.shape[0] // (image.shape[0] // (colors.shape[1] * H * W))
    for gt in prange(ranges.shape[0]):
        _fwd_tile(gt, rec, win, colors, bg, ranges, ids, xs, consts, N, W, H, tiles_x, n_tiles, S,
                  alpha_mode, image, alpha, tfinal)


# ----------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------
# Sums over a pixel range may be reassociated (so they vectorise); the result is still the same
# for any thread count, and nothing here feeds a forward decision (the phases are called, strict).
@njit(fastmath={"reassoc"}, **_OPTS)
def _bwd_tile(gt, rec, win, conics, colors, ranges, ids, xs, consts, N, W, H, tiles_x, n_tiles,
              S, alpha_mode, image, tfinal, gimage, galpha, gpair):  # pragma: no cover - jitted
    """One tile of :func:`rasterize_bwd_kernel`."""
    amax, wmin, tstop, one, half = consts[0], consts[1], consts[2], consts[3], consts[4]
    ta, tb, tw = consts[5], consts[6], consts[7]
    zero = one - one
    C = colors.shape[1]
    b, x0, y0, x1, y1 = _tile_origin(gt, n_tiles, tiles_x, S, W, H)
    sc = _tile_scratch(xs, x0, y0, x1, y1, S, _BWD_ROWS, colors.dtype)
    P8 = sc.shape[1]
    g = np.zeros((C, P8), dtype=colors.dtype)  # image cotangent, channel-major
    for p in range(P8):
        sc[TT, p] = one
    w = x1 - x0
    for ly in range(y1 - y0):
        row = U(ly * S)
        q = U((b * H + y0 + ly) * W + x0)
        for lx in range(w):
            sc[GA, row + U(lx)] = galpha[q + U(lx)]
        for c in range(C):
            qc = U(((b * C + c) * H + y0 + ly) * W + x0)
            for lx in range(w):
                g[U(c), row + U(lx)] = gimage[qc + U(lx)]
        if alpha_mode:  # KK = g_alpha T_final - g . S_i, S_0 the whole image
            for lx in range(w):
                sc[KK, row + U(lx)] = galpha[q + U(lx)] * tfinal[q + U(lx)]
            for c in range(C):
                qc = U(((b * C + c) * H + y0 + ly) * W + x0)
                for lx in range(w):
                    sc[KK, row + U(lx)] -= gimage[qc + U(lx)] * image[qc + U(lx)]
    live = (x1 - x0) * (y1 - y0)
    for s in range(ranges[gt, 0], ranges[gt, 1]):
        k = b * N + ids[s]
        wx0, wy0 = max(win[k, 0], x0), max(win[k, 1], y0)
        wx1, wy1 = min(win[k, 2], x1), min(win[k, 3], y1)
        if wx0 >= wx1 or wy0 >= wy1:
            continue
        pa, pb = _span(wx0, wy0, wx1, wy1, x0, y0, S)
        fx0, fx1, fy0, fy1 = xs[wx0], xs[wx1 - 1], xs[wy0], xs[wy1 - 1]
        mx, my, qa, qb, qc, lo = rec[k, 0], rec[k, 1], rec[k, 2], rec[k, 3], rec[k, 4], rec[k, 5]
        if alpha_mode:
            live -= _alpha_phase(sc, pa, pb, fx0, fx1, fy0, fy1, mx, my, qa, qb, qc, lo, amax,
                                 wmin, tstop, zero)
        else:
            _sum_phase(sc, pa, pb, fx0, fx1, fy0, fy1, mx, my, qa, qb, qc, lo, one, wmin, zero, ta,
                       tb)
        # g . c per pixel and sum_p w g_c per channel, four channels per pass over the pixels
        for pp in range(pa, pb):
            sc[GC, U(pp)] = zero
        c = 0
        while c + 4 <= C:
            c0, c1, c2, c3 = colors[k, c], colors[k, c + 1], colors[k, c + 2], colors[k, c + 3]
            u0, u1, u2, u3 = U(c), U(c + 1), U(c + 2), U(c + 3)
            d0 = d1 = d2 = d3 = zero
            for pp in range(pa, pb):
                p = U(pp)
                w = sc[WB, p]
                v0, v1, v2, v3 = g[u0, p], g[u1, p], g[u2, p], g[u3, p]
                sc[GC, p] += (v0 * c0 + v1 * c1) + (v2 * c2 + v3 * c3)
                d0 += w * v0
                d1 += w * v1
                d2 += w * v2
                d3 += w * v3
            gpair[s, 6 + c], gpair[s, 7 + c], gpair[s, 8 + c], gpair[s, 9 + c] = d0, d1, d2, d3
            c += 4
        while c < C:
            cc = colors[k, c]
            dsum = zero
            for pp in range(pa, pb):
                p = U(pp)
                gv = g[U(c), p]
                sc[GC, p] += gv * cc
                dsum += sc[WB, p] * gv
            gpair[s, 6 + c] = dsum
            c += 1
        # s = dL/draw * raw where the weight is composited and below its clamp, else 0 (selects,
        # not products: a NaN colour must not reach pixels its weight does not)
        if alpha_mode:
            for pp in range(pa, pb):
                p = U(pp)
                wv = sc[WB, p]
                on = wv > zero
                sc[KK, p] += wv * sc[GC, p] if on else zero  # now excludes this Gaussian
                d = (sc[TB, p] * sc[GC, p] + sc[KK, p] / (one - sc[AB, p])) * sc[RB, p]
                sc[SG, p] = d if (on & (sc[RB, p] <= amax)) else zero
        else:
            for pp in range(pa, pb):
                p = U(pp)
                d = (sc[GC, p] + sc[GA, p]) * (sc[RB, p] - tw)  # d w_t / d ln raw = raw - tw
                sc[SG, p] = d if ((sc[WB, p] > zero) & (sc[RB, p] <= one)) else zero
        # the moments S = sum s, Sx = sum s dx, ... of the pair's pixels
        s0 = sx = sy = sxx = sxy = syy = zero
        for pp in range(pa, pb):
            p = U(pp)
            v = sc[SG, p]
            dx = sc[PX, p] - mx
            dy = sc[PY, p] - my
            u = v * dx
            w = v * dy
            s0 += v
            sx += u
            sy += w
            sxx += u * dx
            sxy += u * dy
            syy += w * dy
        ca, cb, cc = conics[k, 0], conics[k, 1], conics[k, 2]
        gpair[s, 0] = ca * sx + cb * sy
        gpair[s, 1] = cb * sx + cc * sy
        gpair[s, 2] = -half * sxx
        gpair[s, 3] = -sxy
        gpair[s, 4] = -half * syy
        gpair[s, 5] = s0 * rec[k, 6]
        if alpha_mode and live == 0:
            break


@njit(parallel=True, **_OPTS)
def rasterize_bwd_kernel(rec, win, conics, colors, ranges, ids, xs, consts, N, W, H, tiles_x, S,
                         alpha_mode, image, tfinal, gimage, galpha, gpair):  # pragma: no cover
    """Backward: per (tile, Gaussian) pair ``s``, ``gpair[s] = (dmx, dmy, da, db, dc, do,
    dcolor[C])`` summed over the tile's pixels (rows of pairs that take nothing stay 0).

    Inputs as :func:`rasterize_fwd_kernel`, plus ``conics [B*N, 3]`` (the compute dtype),
    the forward's ``image`` (channel-major ``[B, C, H, W]``, flat, background included) and
    ``tfinal [B*H*W]`` (alpha mode; sum mode reads neither), and the cotangents ``gimage``
    (channel-major, as ``image``) and ``galpha [B*H*W]``.

    alpha mode, front to back as the forward (no division of transmittances): per pixel
    ``k = g_alpha T_final - g . S_i`` where ``g . S_i = g . image - sum_{j <= i} a_j T_j (g . c_j)``
    is what lies behind Gaussian ``i``, and ``dL/da_i = T_i (g . c_i) + k / (1 - a_i)``. sum
    mode: ``dL/dw_i = g . c_i + g_alpha`` (``"sum_taper"``: times ``1 - m / w``). A weight at its clamp (0.99 / 1) passes nothing to
    the opacity or sigma. With ``s = dL/draw * raw`` the geometry gradients are the moments
    ``S = sum s``, ``Sx = sum s dx``, ... of the pair's pixels:
    ``dmx = a Sx + b Sy``, ``dmy = b Sx + c Sy``, ``da = -Sxx/2``, ``db = -Sxy``, ``dc = -Syy/2``,
    ``do = S / o``.
    """
    n_tiles = ranges.shape[0] // (gimage.shape[0] // (colors.shape[1] * H * W))
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
