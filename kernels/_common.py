"""Triton device functions shared by the forward and backward rasterization kernels.

Keeping them in one place makes the backward recompute *exactly* the forward's decisions (which
Gaussians are skipped, where each pixel stops): both call the same code in the same order, and
every multiply-add that feeds a decision is an explicit ``tl.fma`` so that no compiler
contraction choice can differ between the two kernels.

Per-Gaussian record (written by the binning stage, ``params [B, N, 8]`` float32, see
``docs/design.md``): ``(mx, my, qa, qb, qc, lo, inv_o, 0)`` with ``qa = -a/2 log2 e``,
``qb = -b log2 e``, ``qc = -c/2 log2 e``, ``lo = log2 o`` and ``inv_o = 1/o``, so that

    o * exp(-sigma) = exp2(lo + qa dx^2 + qb dx dy + qc dy^2)

costs one MUFU.EX2 per (Gaussian, pixel) pair and no per-pair multiply by the opacity.
"""

from __future__ import annotations

import math

import triton
import triton.language as tl

from gsplat2d import binning as _rules  # the one definition of every rasterizer rule

#: Weights below this are skipped (both modes): ``binning.MIN_WEIGHT``.
ALPHA_MIN = tl.constexpr(_rules.MIN_WEIGHT)
#: log2(1/255) minus a margin, for the *conservative* backward pre-test (never skips a pair the
#: exact test would keep: ex2.approx's error is ~2 ulp, far below 1e-3 in the exponent).
LOG2_ALPHA_MIN_LOOSE = tl.constexpr(math.log2(_rules.MIN_WEIGHT) - 1e-3)
#: alpha mode: a pixel stops once its transmittance would fall to this (``binning.T_STOP``).
T_STOP = tl.constexpr(_rules.T_STOP)
#: alpha mode: opacity clamp (``binning.ALPHA_MAX``).
ALPHA_MAX = tl.constexpr(_rules.ALPHA_MAX)
#: ``"sum_taper"`` weight ``w - (TAPER_A + TAPER_B log2 w)`` (``binning.TAPER_A``, ``TAPER_B``).
TAPER_A = tl.constexpr(_rules.TAPER_A)
TAPER_B = tl.constexpr(_rules.TAPER_B)
#: Floats per Gaussian in the parameter record (and in the geometry-gradient record).
REC = tl.constexpr(8)


@triton.jit
def exp2_approx(x, FAST: tl.constexpr):
    """``2**x``. ``FAST``: one ``MUFU.EX2`` (``ex2.approx.ftz.f32``; ``tl.exp2`` adds a
    denormal-range compare and two multiplies). The interpreter cannot run inline PTX, so
    launchers pass ``FAST=False`` there (same math, numpy's exp2)."""
    if FAST:
        return tl.inline_asm_elementwise(
            "ex2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        return tl.exp2(x)


@triton.jit
def rcp_approx(x, FAST: tl.constexpr):
    """``1/x``. ``FAST``: one ``MUFU.RCP`` (``rcp.approx.ftz.f32``, ~1 ulp) instead of an
    IEEE division with its slow-path branch."""
    if FAST:
        return tl.inline_asm_elementwise(
            "rcp.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        return 1.0 / x


@triton.jit
def tile_pixels(pid0, tiles_x, n_tiles, W, H, TILE: tl.constexpr, BLOCK_P: tl.constexpr):
    """Pixels handled by program ``pid0`` (int64; the batch is folded into grid dimension 0).

    A tile's ``TILE * TILE`` pixels may be split over ``TILE * TILE // BLOCK_P`` programs.
    Returns ``gtile`` (global tile ``b * n_tiles + tile``, indexes ``ranges``), ``b``, and
    ``px, py`` ([BLOCK_P] int32), ``inside`` ([BLOCK_P] bool).
    """
    SUBS: tl.constexpr = TILE * TILE // BLOCK_P
    gtile = pid0 // SUBS
    sub = pid0 - gtile * SUBS
    b = gtile // n_tiles
    tile = gtile - b * n_tiles
    ty = tile // tiles_x
    tx = tile - ty * tiles_x
    p = sub.to(tl.int32) * BLOCK_P + tl.arange(0, BLOCK_P)  # [P] pixel index inside the tile
    px = tx.to(tl.int32) * TILE + p % TILE
    py = ty.to(tl.int32) * TILE + p // TILE
    inside = (px < W) & (py < H)  # [P]
    return gtile, b, px, py, inside


@triton.jit
def load_record(params_ptr, gid, valid):
    """Gaussian ``gid``'s record as scalars ``mx, my, qa, qb, qc, lo, inv_o`` (the eighth float
    is padding), read with **two 16-byte vector loads**: the record is 8 floats (32 bytes) and the
    JIT's 16-byte divisibility hint on ``params_ptr`` makes ``gid * 32`` bytes in aligned, so the
    ``[8]`` load below becomes ``LDG.E.128`` x 2 (an unaligned ``params`` gets scalar loads, same
    values). The ``[8]`` vector sits in one thread, so the ``tl.split`` chain only renames
    registers. ``valid`` (scalar bool): False reads nothing and returns zeros (an empty tile's
    pipeline prologue); None: no mask (``gid`` is always a Gaussian of the list)."""
    k = tl.arange(0, REC)  # [8]
    if valid is None:
        rec = tl.load(params_ptr + gid * REC + k)  # [8]
    else:
        # (a comparison, not `(k < REC) & valid`: Triton's interpreter rejects that mask's dtype)
        rec = tl.load(params_ptr + gid * REC + k, mask=k < tl.where(valid, REC, 0), other=0.0)  # [8]
    rec = tl.reshape(rec, (2, 2, 2))  # [h, j, m] = record[4h + 2j + m]
    even, odd = tl.split(rec)  # [2, 2]: record[4h + 2j], record[4h + 2j + 1]
    e0, e1 = tl.split(even)  # [2]: record[4h], record[4h + 2]
    o0, o1 = tl.split(odd)  # [2]: record[4h + 1], record[4h + 3]
    mx, qc = tl.split(e0)  # record[0], record[4]
    qa, inv_o = tl.split(e1)  # record[2], record[6]
    my, lo = tl.split(o0)  # record[1], record[5]
    qb, _pad = tl.split(o1)  # record[3], record[7]
    return mx, my, qa, qb, qc, lo, inv_o


@triton.jit
def load_colours(colors_ptr, gid, valid, NC: tl.constexpr):
    """The ``NC <= 4`` colours of Gaussian ``gid`` (``[B, N, NC]`` float), as four float32
    scalars (0.0 beyond ``NC``, and everywhere when ``valid`` is False; ``valid`` None: no
    mask, as in :func:`load_record`)."""
    cp = colors_ptr + gid * NC
    c1 = 0.0
    c2 = 0.0
    c3 = 0.0
    if valid is None:
        c0 = tl.load(cp).to(tl.float32)
        if NC > 1:
            c1 = tl.load(cp + 1).to(tl.float32)
        if NC > 2:
            c2 = tl.load(cp + 2).to(tl.float32)
        if NC > 3:
            c3 = tl.load(cp + 3).to(tl.float32)
    else:
        c0 = tl.load(cp, mask=valid, other=0.0).to(tl.float32)
        if NC > 1:
            c1 = tl.load(cp + 1, mask=valid, other=0.0).to(tl.float32)
        if NC > 2:
            c2 = tl.load(cp + 2, mask=valid, other=0.0).to(tl.float32)
        if NC > 3:
            c3 = tl.load(cp + 3, mask=valid, other=0.0).to(tl.float32)
    return c0, c1, c2, c3


@triton.jit
def log2_weight(fx, fy, mx, my, qa, qb, qc, lo):
    """``dx, dy`` (pixel centre minus mean) and ``pw = log2(o exp(-sigma))``, all [P]
    (five FMA-class instructions after the two subtractions). ``pw <= lo`` is ``sigma >= 0``."""
    dx = fx - mx
    dy = fy - my
    pw = tl.fma(dx, tl.fma(qa, dx, qb * dy), lo)
    pw = tl.fma(qc * dy, dy, pw)
    return dx, dy, pw


@triton.jit
def composite_step(raw, pw, lo, T):
    """alpha mode, one Gaussian on every pixel of the block, front to back.

    ``T`` [P] is the running transmittance *including* the factor of a stopping Gaussian, so
    once a pixel stops every later ``T'`` stays ``<= T_STOP`` and nothing more is composited.
    Returns ``a`` (clamped alpha), ``valid`` (not skipped), ``contrib`` (composited),
    ``vis = a T`` masked to ``contrib``, ``tn = T (1 - a)`` and the next ``T``.
    """
    a = tl.minimum(raw, ALPHA_MAX)
    valid = (a >= ALPHA_MIN) & (pw <= lo)
    tn = tl.fma(-a, T, T)
    contrib = valid & (tn > T_STOP)
    vis = tl.where(contrib, a * T, 0.0)
    t_next = tl.where(valid, tn, T)
    return a, valid, contrib, vis, tn, t_next


@triton.jit
def sum_step(raw, pw, lo, TAPER: tl.constexpr):
    """sum mode weight ``min(1, o exp(-sigma))`` (0 below 1/255 or for sigma < 0): [P].
    ``TAPER`` (``"sum_taper"``): ``w - (TAPER_A + TAPER_B log2 w)``, ``log2 w = min(pw, 0)``."""
    w = tl.minimum(raw, 1.0)
    valid = (w >= ALPHA_MIN) & (pw <= lo)
    if TAPER:
        w = w - tl.fma(tl.minimum(pw, 0.0), TAPER_B, TAPER_A)
    return tl.where(valid, w, 0.0), valid


@triton.jit
def any_pixel_left(T, inside):
    """alpha mode: whether any pixel of the block can still take a contribution."""
    return tl.max(tl.where(inside, T, 0.0), axis=0) > T_STOP


@triton.jit
def opaque_zero(i, FAST: tl.constexpr):
    """0, computed so the compiler cannot see it (``i``: any int32 scalar of the current loop
    iteration). Adding it to a pointer keeps a per-iteration re-read of loop-invariant data
    inside the loop; hoisting C such [P] loads out of the Gaussian loop would need C x 8
    registers per thread and spill."""
    if FAST:
        return tl.inline_asm_elementwise(
            "and.b32 $0, $1, 0;", "=r,r", [i], dtype=tl.int32, is_pure=False, pack=1
        )
    else:
        return i * 0


@triton.jit
def splat_add(acc, w, c, EXACT: tl.constexpr):
    """``acc + w c``. ``w`` is exactly 0 at the pixels a Gaussian misses, and there it must add
    nothing even for a NaN/Inf colour: with ``EXACT`` (a launch whose colours are not all finite)
    ``where(w != 0, w c, 0)``; otherwise one fma, the same value for finite colours."""
    if EXACT:
        acc = acc + tl.where(w != 0.0, w * c, 0.0)
    else:
        acc = tl.fma(w, c, acc)
    return acc


@triton.jit
def next_gaussian(ids_ptr, params_ptr, colors_ptr, id1, i, last, gbase, SMALL_C: tl.constexpr, NC: tl.constexpr):
    """The software pipeline's step with one Gaussian in flight (forward ``PIPE = 1`` and the
    backward): at the end of iteration ``i``, issue the loads of Gaussian ``i + 1`` (its list id
    ``id1`` has been in flight for a whole iteration) and of the list id at ``i + 2`` (clamped to
    the tile's ``last`` entry). Returns ``id0, id1, record (7 scalars), colours (4; C <= 4)``."""
    id0 = id1
    gid = id0.to(tl.int64) + gbase
    mx, my, qa, qb, qc, lo, inv_o = load_record(params_ptr, gid, None)
    c0, c1, c2, c3 = 0.0, 0.0, 0.0, 0.0
    if SMALL_C:
        c0, c1, c2, c3 = load_colours(colors_ptr, gid, None, NC)
    id1 = tl.load(ids_ptr + tl.minimum(i + 2, last))
    return id0, id1, mx, my, qa, qb, qc, lo, inv_o, c0, c1, c2, c3
