"""Backward rasterization in Triton: gradients for means, conics, colours, opacities, background.

Same grid and Gaussian walk as the forward (one program per pixel block of a tile, Gaussians one
at a time, front to back, the same device functions, so every skip/stop decision is the
forward's; the same software pipeline of list ids, records and colours). Per Gaussian and pixel, with ``g`` the pixel's image cotangent:

alpha mode (no division of transmittances, no back-to-front walk):
    image = sum_j a_j T_j c_j + T_final * bg
    dL/da_i = T_i (g . c_i) + (g_alpha T_final - g . S_i) / (1 - a_i),
    g . S_i = g . image - sum_{j <= i} a_j T_j (g . c_j)      (what lies behind Gaussian i)
so one running per-pixel value ``k = g_alpha T_final - g . S_i`` carries the whole suffix.
sum mode: ``dL/dw_i = g . c_i + g_alpha``.

A weight clamped at 0.99 (alpha) / 1 (sum) passes no gradient to the opacity or sigma. With
``s = dL/d(raw) * raw`` per pixel (``raw = o exp(-sigma)``) the geometry gradients are six
per-Gaussian sums over the block's pixels, ``S = sum s``, ``Sx = sum s dx``, ``Sy``, ``Sxx``,
``Sxy``, ``Syy``:
    dL/dmx = a Sx + b Sy,  dL/dmy = b Sx + c Sy,
    dL/da = -Sxx / 2,  dL/db = -Sxy,  dL/dc = -Syy / 2,  dL/do = S / o.
Each sum is reduced inside the program (one warp: in-thread adds, then shuffles), and the
program issues **one relaxed vector atomic** per Gaussian for the six geometry values (lanes 0-5
of an 8-float record) and one for the colours: never one per pixel, and no fences.

Cheap path: before any exponential, a conservative test (``log2`` weight above log2(1/255)
minus a margin, ``sigma >= 0``, pixel inside and not yet stopped) is voted over the block; a
Gaussian that no pixel can use costs only that test. Its ``T`` update can be skipped too: a pixel
that fails the test either is not touched (``T`` unchanged in the forward) or has already
stopped (``T <= 1e-4`` stays below the threshold either way).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gsplat2d.binning import Binning
from gsplat2d.kernels._alloc import device_guard
from gsplat2d.kernels._common import (
    ALPHA_MIN, LOG2_ALPHA_MIN_LOOSE, REC, T_STOP, composite_step, exp2_approx, load_colours,
    load_record, next_gaussian, log2_weight, opaque_zero, rcp_approx, sum_step, tile_pixels,
)
from gsplat2d.kernels.rasterize_fwd import (
    fast_math,
    launch_config,
    launch_options,
    rasterizer_aot_specs,
)

__all__ = ["rasterize_bwd", "AOT_SPECS"]

# (-2 / log2 e, -1 / log2 e): conic entries back from the record's qa, qb, qc
_A_FROM_Q = tl.constexpr(-1.3862943611198906)
_B_FROM_Q = tl.constexpr(-0.6931471805599453)


@triton.jit
def _load_pixel(ptr, pix, inside, k, C: tl.constexpr):
    """Channel ``k`` of a ``[B, H, W, C]`` float tensor at the block's pixels ([P], 0 outside)."""
    return tl.load(ptr + pix * C + k, mask=inside, other=0.0).to(tl.float32)


@triton.jit
def _channel_sums(x, g0, g1, g2, g3, cr, NC: tl.constexpr):
    """``[sum_p x g_k]`` for the ``NC <= 4`` named cotangent channels, as one ``[BLOCK_C]`` vector
    (entry ``k`` in lane ``k``) for a single vector atomic."""
    out = tl.where(cr == 0, tl.sum(x * g0), 0.0)
    if NC > 1:
        out = tl.where(cr == 1, tl.sum(x * g1), out)
    if NC > 2:
        out = tl.where(cr == 2, tl.sum(x * g2), out)
    if NC > 3:
        out = tl.where(cr == 3, tl.sum(x * g3), out)
    return out


@triton.jit(do_not_specialize=["N", "C", "W", "H", "tiles_x", "n_tiles"])
def _rasterize_bwd_kernel(
    params_ptr,  # [B, N, 8] fp32 per-Gaussian record (binning stage 1)
    colors_ptr,  # [B, N, C]
    ranges_ptr,  # [B * n_tiles, 2] int64
    ids_ptr,  # [P_pairs] int32
    image_ptr,  # C <= 4: [B, H, W, C] fp32 forward output (incl. background); else [B, H, W] g . image
    tfinal_ptr,  # [B, H, W] fp32 (alpha mode)
    gimage_ptr,  # [B, H, W, C] cotangent
    galpha_ptr,  # [B, H, W] cotangent
    ggeo_ptr,  # [B, N, 8] fp32, accumulated: dmx, dmy, da, db, dc, do, -, -
    gcolors_ptr,  # [B, N, C] fp32, accumulated
    gbg_ptr,  # [B, C] fp32, accumulated (alpha mode with background, C <= 4)
    N, C, W, H, tiles_x, n_tiles,  # sizes (never specialised)
    ALPHA_MODE: tl.constexpr, TAPER: tl.constexpr, HAS_BG: tl.constexpr,  # the mode
    TILE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, NC: tl.constexpr,  # blocks (launch_config)
    SMALL_C: tl.constexpr, CHUNK: tl.constexpr, FAST: tl.constexpr,
):
    pid0 = tl.program_id(0).to(tl.int64)
    gtile, b, px, py, inside = tile_pixels(pid0, tiles_x, n_tiles, W, H, TILE, BLOCK_P)
    fx = px.to(tl.float32) + 0.5  # [P]
    fy = py.to(tl.float32) + 0.5
    pix = (b * H + py) * W + px  # [P] int64
    start = tl.load(ranges_ptr + gtile * 2).to(tl.int32)
    end = tl.load(ranges_ptr + gtile * 2 + 1).to(tl.int32)
    gbase = b * N
    k8 = tl.arange(0, REC)  # [8] lanes of the geometry-gradient record
    cr = tl.arange(0, BLOCK_C)  # [BLOCK_C]

    ga = tl.load(galpha_ptr + pix, mask=inside, other=0.0).to(tl.float32)  # [P]
    t_final = tl.full((BLOCK_P,), 1.0, dtype=tl.float32)
    if ALPHA_MODE:
        t_final = tl.load(tfinal_ptr + pix, mask=inside, other=1.0)
    # Loop-invariant cotangent: named vectors for C <= 4, else re-read per Gaussian (L1 hits).
    g0 = tl.zeros((BLOCK_P,), dtype=tl.float32)
    g1 = tl.zeros((BLOCK_P,), dtype=tl.float32)
    g2 = tl.zeros((BLOCK_P,), dtype=tl.float32)
    g3 = tl.zeros((BLOCK_P,), dtype=tl.float32)
    g_dot_img = tl.zeros((BLOCK_P,), dtype=tl.float32)  # [P] g . image
    if SMALL_C:
        g0 = _load_pixel(gimage_ptr, pix, inside, 0, NC)
        if NC > 1:
            g1 = _load_pixel(gimage_ptr, pix, inside, 1, NC)
        if NC > 2:
            g2 = _load_pixel(gimage_ptr, pix, inside, 2, NC)
        if NC > 3:
            g3 = _load_pixel(gimage_ptr, pix, inside, 3, NC)
        if ALPHA_MODE:
            g_dot_img = g0 * _load_pixel(image_ptr, pix, inside, 0, NC)
            if NC > 1:
                g_dot_img = tl.fma(g1, _load_pixel(image_ptr, pix, inside, 1, NC), g_dot_img)
            if NC > 2:
                g_dot_img = tl.fma(g2, _load_pixel(image_ptr, pix, inside, 2, NC), g_dot_img)
            if NC > 3:
                g_dot_img = tl.fma(g3, _load_pixel(image_ptr, pix, inside, 3, NC), g_dot_img)
            if HAS_BG:
                # d image / d bg = T_final: reduce over the block, one atomic per channel
                gbg = _channel_sums(t_final, g0, g1, g2, g3, cr, NC)  # [BLOCK_C]
                tl.atomic_add(gbg_ptr + b * NC + cr, gbg, mask=cr < NC, sem="relaxed")
    else:
        if ALPHA_MODE:
            # C > 4: g . image was reduced by the launcher (torch), [B, H, W] in image_ptr
            g_dot_img = tl.load(image_ptr + pix, mask=inside, other=0.0).to(tl.float32)
    # alpha mode: k = g_alpha T_final - g . S_i, updated by + a_i T_i (g . c_i) per Gaussian
    kk = ga * t_final - g_dot_img  # [P]

    # [P] as in the forward; a pixel outside the image starts stopped (T = 0), so in alpha mode
    # the stop test alone keeps it out of the vote and of the "any pixel left?" test and the loop
    # does not hold the `inside` mask (8 registers). Its gradients are 0 either way (g = 0 there).
    T = tl.where(inside, 1.0, 0.0)
    # The forward's software pipeline with PIPE = 1 (kernels/rasterize_fwd.py), int32 list ids:
    # at the top of iteration i the record (and, C <= 4, the colours) of Gaussian i are in
    # registers, issued at the end of iteration i - 1 (on the cheap and the full path alike),
    # and the id of i + 1 has been in flight for a whole iteration. (Two deep, measured: +2.4
    # instructions per pair on both paths, 128 registers at C = 3, and ptxas moves the second
    # stage into place at the top of the next iteration, 17-55 instructions after the loads.)
    last = end - 1
    has = start < end
    id0 = tl.load(ids_ptr + start, mask=has, other=0)  # int32, position i
    id1 = tl.load(ids_ptr + tl.minimum(start + 1, last), mask=has, other=0)  # position i + 1
    mx, my, qa, qb, qc, lo, inv_o = load_record(params_ptr, id0.to(tl.int64) + gbase, has)
    c0, c1, c2, c3 = 0.0, 0.0, 0.0, 0.0  # colours of Gaussian i (C <= 4)
    if SMALL_C:
        c0, c1, c2, c3 = load_colours(colors_ptr, id0.to(tl.int64) + gbase, has, NC)
    s = start
    go = s < end
    while go:
        s_end = tl.minimum(s + CHUNK, end)
        for i in range(s, s_end):
            gid = id0.to(tl.int64) + gbase
            dx, dy, pw = log2_weight(fx, fy, mx, my, qa, qb, qc, lo)
            # conservative vote: can any pixel of the block use this Gaussian?
            pre = (pw >= LOG2_ALPHA_MIN_LOOSE) & (pw <= lo)
            if ALPHA_MODE:
                pre = pre & (T > T_STOP)  # False outside the image (T = 0)
            else:
                pre = pre & inside
            if tl.max(pre.to(tl.int32), axis=0) > 0:
                raw = exp2_approx(pw, FAST)  # [P]
                if ALPHA_MODE:
                    t_in = T
                    a, valid, contrib, w, tn, T = composite_step(raw, pw, lo, T)
                    live = contrib & (raw <= 0.99)
                else:
                    w, valid = sum_step(raw, pw, lo, TAPER)
                    live = valid & (raw <= 1.0)
                # g . c for this Gaussian, [P]
                if SMALL_C:
                    gc = g0 * c0
                    if NC > 1:
                        gc = tl.fma(g1, c1, gc)
                    if NC > 2:
                        gc = tl.fma(g2, c2, gc)
                    if NC > 3:
                        gc = tl.fma(g3, c3, gc)
                else:
                    # C > 4: one pass over the channels computes g . c and the colour gradients
                    # (w does not depend on g . c); the cotangent is re-read from L1 per Gaussian
                    gc = tl.zeros((BLOCK_P,), dtype=tl.float32)
                    cp = colors_ptr + gid * NC
                    gptr = gimage_ptr + opaque_zero(i, FAST)
                    for k0 in tl.static_range(0, NC, 8):
                        dcol = tl.zeros((8,), dtype=tl.float32)  # [8] one group of channels
                        for k in tl.static_range(8):
                            if k0 + k < NC:
                                gk = _load_pixel(gptr, pix, inside, k0 + k, NC)
                                gc = tl.fma(gk, tl.load(cp + k0 + k).to(tl.float32), gc)
                                dcol = tl.where(k8 == k, tl.sum(w * gk), dcol)
                        tl.atomic_add(gcolors_ptr + gid * NC + k0 + k8, dcol, mask=k0 + k8 < NC,
                                      sem="relaxed")
                if ALPHA_MODE:
                    kk = tl.fma(w, gc, kk)  # now g_alpha T_final - g . S_i (S_i excludes i)
                    dl = tl.fma(t_in, gc, kk * rcp_approx(1.0 - a, FAST))  # dL/da, [P]
                else:
                    dl = gc + ga  # dL/dw
                if TAPER:
                    sg = tl.where(live, dl * (raw - ALPHA_MIN), 0.0)  # d w_t / d ln raw = raw - m
                else:
                    sg = tl.where(live, dl * raw, 0.0)  # dL/draw * raw = -dL/dsigma, [P]
                u = sg * dx
                v = sg * dy
                # colour gradients sum_p w g_p (w is already 0 where not composited)
                if SMALL_C:
                    dcol = _channel_sums(w, g0, g1, g2, g3, cr, NC)  # [BLOCK_C]
                    tl.atomic_add(gcolors_ptr + gid * NC + cr, dcol, mask=cr < NC, sem="relaxed")
                ss = tl.sum(sg)
                sx = tl.sum(u)
                sy = tl.sum(v)
                sxx = tl.sum(u * dx)
                sxy = tl.sum(u * dy)
                syy = tl.sum(v * dy)
                ca = qa * _A_FROM_Q
                cb = qb * _B_FROM_Q
                cc = qc * _A_FROM_Q
                gv = tl.where(k8 == 0, ca * sx + cb * sy, 0.0)  # [8]
                gv = tl.where(k8 == 1, cb * sx + cc * sy, gv)
                gv = tl.where(k8 == 2, -0.5 * sxx, gv)
                gv = tl.where(k8 == 3, -sxy, gv)
                gv = tl.where(k8 == 4, -0.5 * syy, gv)
                gv = tl.where(k8 == 5, ss * inv_o, gv)
                tl.atomic_add(ggeo_ptr + gid * REC + k8, gv, mask=k8 < 6, sem="relaxed")
            # the loads for the next iterations: i + 1's record and colours, i + 2's id
            id0, id1, mx, my, qa, qb, qc, lo, inv_o, c0, c1, c2, c3 = next_gaussian(
                ids_ptr, params_ptr, colors_ptr, id1, i, last, gbase, SMALL_C, NC)
        s = s_end
        go = s < end
        if ALPHA_MODE:
            go = go & (tl.max(T, axis=0) > T_STOP)  # any_pixel_left: T = 0 outside the image


def rasterize_bwd(
    colors: torch.Tensor,
    has_background: bool,
    binning: Binning,
    image: torch.Tensor | None,
    t_final: torch.Tensor | None,
    grad_image: torch.Tensor,
    grad_alpha: torch.Tensor,
    width: int,
    height: int,
    tile_size: int,
    mode: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launch the backward kernel. ``image`` and ``t_final`` are the forward's (alpha mode; sum
    mode reads neither: None), the geometry is ``binning.params``. Cotangents ``grad_image
    [B, H, W, C]``, ``grad_alpha [B, H, W, 1]`` (contiguous). Returns float32 gradients for means ``[B, N, 2]``, conics
    ``[B, N, 3]``, colors ``[B, N, C]``, opacities ``[B, N]`` and background ``[B, C]`` (None
    without a background). The first three geometry outputs are views of one ``[B, N, 8]``
    accumulation record.
    """
    B, N, C = colors.shape
    dev = colors.device
    cfg = launch_config(tile_size, C, backward=True, mode=mode)
    alpha_mode = mode == "alpha"
    # Accumulation targets of the atomics: they must start at zero.
    g_geo = torch.zeros((B, N, 8), dtype=torch.float32, device=dev)
    g_colors = torch.zeros((B, N, C), dtype=torch.float32, device=dev)
    g_bg = torch.zeros((B, C), dtype=torch.float32, device=dev) if has_background else None
    if not cfg["SMALL_C"] and alpha_mode:
        # Many channels: the once-per-pixel reductions over channels are plain torch (a kernel
        # prologue holding C [P] vectors would spill); the kernel reads g . image per pixel.
        image = (grad_image * image).sum(-1)
        if g_bg is not None:
            g_bg = torch.einsum("bhwc,bhw->bc", grad_image, t_final)
    n_tiles = binning.tiles_x * binning.tiles_y
    subs = tile_size * tile_size // cfg["BLOCK_P"]
    grid = (B * n_tiles * subs,)
    with device_guard(dev):
        _rasterize_bwd_kernel[grid](
            binning.params, colors, binning.ranges, binning.gauss_ids,
            image if image is not None else grad_image, t_final if t_final is not None else grad_alpha,
            grad_image, grad_alpha,
            g_geo, g_colors, g_bg if (g_bg is not None and cfg["SMALL_C"]) else g_colors,
            N, C, width, height, binning.tiles_x, n_tiles,
            ALPHA_MODE=alpha_mode, TAPER=mode == "sum_taper", HAS_BG=has_background and cfg["SMALL_C"], TILE=tile_size,
            BLOCK_P=cfg["BLOCK_P"], BLOCK_C=cfg["BLOCK_C"], NC=cfg["NC"],
            SMALL_C=cfg["SMALL_C"], CHUNK=cfg["CHUNK"],
            FAST=fast_math(), **launch_options(cfg),
        )
    return g_geo[..., 0:2], g_geo[..., 2:5], g_colors, g_geo[..., 5], g_bg


SIGNATURE = {
    "params_ptr": "*fp32", "colors_ptr": "*fp32", "ranges_ptr": "*i64", "ids_ptr": "*i32",
    "image_ptr": "*fp32", "tfinal_ptr": "*fp32", "gimage_ptr": "*fp32", "galpha_ptr": "*fp32",
    "ggeo_ptr": "*fp32", "gcolors_ptr": "*fp32", "gbg_ptr": "*fp32",
    "N": "i32", "C": "i32", "W": "i32", "H": "i32", "tiles_x": "i32", "n_tiles": "i32",
    "ALPHA_MODE": "constexpr", "TAPER": "constexpr", "HAS_BG": "constexpr", "TILE": "constexpr",
    "BLOCK_P": "constexpr", "BLOCK_C": "constexpr", "NC": "constexpr", "SMALL_C": "constexpr",
    "CHUNK": "constexpr", "FAST": "constexpr",
}

AOT_SPECS = rasterizer_aot_specs("bwd", _rasterize_bwd_kernel, SIGNATURE)
