"""Triton device functions shared by the forward and backward rasterization kernels.

Keeping them in one place makes the backward recompute *exactly* the forward's decisions (which
Gaussians are skipped, where each pixel stops): both call the same code in the same order.
"""

from __future__ import annotations

import triton
import triton.language as tl

#: Weights below this are skipped (both modes).
ALPHA_MIN = tl.constexpr(1.0 / 255.0)
#: alpha mode: a pixel stops once its transmittance would fall to this.
T_STOP = tl.constexpr(1e-4)
#: alpha mode: opacity clamp.
ALPHA_MAX = tl.constexpr(0.99)


@triton.jit
def tile_block_pixels(pid0, tiles_x, W, H, TILE: tl.constexpr, BLOCK_P: tl.constexpr):
    """Pixels handled by program ``pid0`` (int64).

    A tile's ``TILE * TILE`` pixels may be split over ``TILE * TILE // BLOCK_P`` programs, so
    each thread holds fewer ``[BLOCK_P, BLOCK_G]`` values (no register spills).
    Returns the tile index within the image and ``px, py`` ([BLOCK_P] int64), ``inside``.
    """
    SUBS: tl.constexpr = TILE * TILE // BLOCK_P
    tile = pid0 // SUBS
    sub = pid0 - tile * SUBS
    ty = tile // tiles_x
    tx = tile - ty * tiles_x
    p = sub * BLOCK_P + tl.arange(0, BLOCK_P)  # [P] pixel index inside the tile
    px = tx * TILE + p % TILE
    py = ty * TILE + p // TILE
    inside = (px < W) & (py < H)  # [P]
    return tile, px, py, inside


@triton.jit
def load_gaussian_chunk(
    ids_ptr, means_ptr, conics_ptr, opac_ptr, s, end, gbase, BLOCK_G: tl.constexpr
):
    """Gaussians ``s .. s + BLOCK_G`` of a tile's sorted list (masked past ``end``).

    Returns the flat Gaussian index ``gid`` (int64), ``gmask`` and float32 ``mx, my, ca, cb,
    cc, op``, each [BLOCK_G]. Masked lanes get opacity 0, so they never contribute.
    """
    g_off = s + tl.arange(0, BLOCK_G)  # [BLOCK_G]
    gmask = g_off < end
    gid = tl.load(ids_ptr + g_off, mask=gmask, other=0).to(tl.int64) + gbase
    mx = tl.load(means_ptr + gid * 2, mask=gmask, other=0.0).to(tl.float32)
    my = tl.load(means_ptr + gid * 2 + 1, mask=gmask, other=0.0).to(tl.float32)
    ca = tl.load(conics_ptr + gid * 3, mask=gmask, other=0.0).to(tl.float32)
    cb = tl.load(conics_ptr + gid * 3 + 1, mask=gmask, other=0.0).to(tl.float32)
    cc = tl.load(conics_ptr + gid * 3 + 2, mask=gmask, other=0.0).to(tl.float32)
    op = tl.load(opac_ptr + gid, mask=gmask, other=0.0).to(tl.float32)
    return gid, gmask, mx, my, ca, cb, cc, op


@triton.jit
def gaussian_weights(px, py, inside, gmask, mx, my, ca, cb, cc, op):
    """Evaluate a chunk on a pixel block, all ``[P, BLOCK_G]``.

    Returns ``dx, dy`` (pixel centre minus mean), ``e = exp(-sigma)``, ``raw = o * e`` and
    ``ok`` (sigma >= 0, real Gaussian, pixel inside the image).
    """
    fx = px.to(tl.float32) + 0.5
    fy = py.to(tl.float32) + 0.5
    dx = fx[:, None] - mx[None, :]  # [P, BLOCK_G]
    dy = fy[:, None] - my[None, :]
    sigma = 0.5 * (ca[None, :] * dx * dx + cc[None, :] * dy * dy) + cb[None, :] * dx * dy
    e = tl.exp(-sigma)
    raw = op[None, :] * e
    ok = (sigma >= 0) & gmask[None, :] & inside[:, None]
    return dx, dy, e, raw, ok


@triton.jit
def front_to_back(raw, ok, t_run):
    """alpha mode compositing of one chunk, in index order, for every pixel of the block.

    ``t_run`` [P] is the running transmittance including the factors of stopping Gaussians.
    Inside the chunk the transmittance in front of each Gaussian is an exclusive prefix product
    ``exp(cumsum(log(1 - a)))``. T only falls, so ``T' <= T_STOP`` removes a suffix; since
    ``t_run`` keeps the stopping factor, every later chunk stays out too.

    Returns ``a`` (clamped alpha), ``contrib`` (the Gaussian is composited), ``t_after`` (T'),
    ``t_in`` (T in front of the Gaussian), all [P, BLOCK_G], and the next ``t_run`` [P].
    """
    a = tl.minimum(raw, ALPHA_MAX)
    valid = ok & (a >= ALPHA_MIN)
    log1m = tl.where(valid, tl.log(1.0 - a), 0.0)  # [P, BLOCK_G]
    incl = tl.cumsum(log1m, axis=1)
    t_after = t_run[:, None] * tl.exp(incl)
    contrib = valid & (t_after > T_STOP)
    t_in = t_run[:, None] * tl.exp(incl - log1m)
    t_next = t_run * tl.exp(tl.sum(log1m, axis=1))
    return a, contrib, t_after, t_in, t_next


@triton.jit
def sum_weights(raw, ok):
    """sum mode weights ``min(1, o exp(-sigma))``, 0 below 1/255: [P, BLOCK_G] and the mask."""
    w = tl.minimum(raw, 1.0)
    valid = ok & (w >= ALPHA_MIN)
    return tl.where(valid, w, 0.0), valid


@triton.jit
def any_pixel_left(t_run, inside):
    """alpha mode: whether any pixel of the block can still take a contribution."""
    return tl.max(tl.where(inside, t_run, 0.0), axis=0) > T_STOP
