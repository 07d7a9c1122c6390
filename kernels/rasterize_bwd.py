"""Backward rasterization in Triton: gradients for means, conics, colours, opacities, background.

One program per (pixel block of a tile, image), the same grid as the forward without the channel
split: every channel is needed to form ``dL/da`` for a Gaussian, so the program loops over
channel blocks inside each chunk.

alpha mode, walking front to back like the forward (no division of transmittances):
    image = sum_j a_j T_j c_j + T_final * bg
    S_i   = image - sum_{j <= i} a_j T_j c_j                 (what lies behind Gaussian i)
    dL/da_i = T_i (g . c_i) - (g . S_i) / (1 - a_i) + g_alpha T_final / (1 - a_i)
where ``g`` is the image cotangent of the pixel. ``g . S_i`` is ``g . image`` minus a running
prefix of ``a_j T_j (g . c_j)``, a ``[P, BLOCK_G]`` cumsum, so no ``[P, G, C]`` block is formed.
sum mode: ``dL/dw_i = g . c_i + g_alpha``.

Per-Gaussian gradients are reduced over the program's pixels first, then one atomic add per
(Gaussian, pixel block), never one per pixel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gsplat2d._torch_impl import Binning
from gsplat2d.kernels._aot import AotSpec
from gsplat2d.kernels._common import (
    ALPHA_MAX,
    any_pixel_left,
    front_to_back,
    gaussian_weights,
    load_gaussian_chunk,
    sum_weights,
    tile_block_pixels,
)
from gsplat2d.kernels.rasterize_fwd import launch_config

__all__ = ["rasterize_bwd", "AOT_SPECS"]



@triton.jit
def _rasterize_bwd_kernel(
    means_ptr,  # [B, N, 2]
    conics_ptr,  # [B, N, 3]
    colors_ptr,  # [B, N, C]
    opac_ptr,  # [B, N]
    ranges_ptr,  # [B * n_tiles, 2] int64
    ids_ptr,  # [P_pairs] int32
    image_ptr,  # [B, H, W, C] fp32, forward output (includes background)
    tfinal_ptr,  # [B, H, W] fp32 (alpha mode)
    gimage_ptr,  # [B, H, W, C] cotangent
    galpha_ptr,  # [B, H, W] cotangent
    gmeans_ptr,  # [B, N, 2] fp32, accumulated
    gconics_ptr,  # [B, N, 3] fp32, accumulated
    gcolors_ptr,  # [B, N, C] fp32, accumulated
    gopac_ptr,  # [B, N] fp32, accumulated
    gbg_ptr,  # [B, C] fp32, accumulated (alpha mode with background)
    N,
    C,
    W,
    H,
    tiles_x,
    n_tiles,
    ALPHA_MODE: tl.constexpr,
    HAS_BG: tl.constexpr,
    TILE: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_C: tl.constexpr,
    NUM_CB: tl.constexpr,
    SMALL_C: tl.constexpr,
):
    pid0 = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    tile, px, py, inside = tile_block_pixels(pid0, tiles_x, W, H, TILE, BLOCK_P)
    pix = (b * H + py) * W + px  # [P] int64
    cr = tl.arange(0, BLOCK_C)  # [BLOCK_C]

    start = tl.load(ranges_ptr + (b * n_tiles + tile) * 2)
    end = tl.load(ranges_ptr + (b * n_tiles + tile) * 2 + 1)
    gbase = b * N

    galpha = tl.load(galpha_ptr + pix, mask=inside, other=0.0).to(tl.float32)  # [P]
    t_final = tl.full((BLOCK_P,), 1.0, dtype=tl.float32)
    g_dot_img = tl.zeros((BLOCK_P,), dtype=tl.float32)  # [P] g . image
    if ALPHA_MODE:
        t_final = tl.load(tfinal_ptr + pix, mask=inside, other=1.0)
        for k in tl.static_range(NUM_CB):
            cidx = k * BLOCK_C + cr
            m2 = inside[:, None] & (cidx < C)[None, :]
            g = tl.load(gimage_ptr + pix[:, None] * C + cidx[None, :], mask=m2, other=0.0).to(tl.float32)
            img = tl.load(image_ptr + pix[:, None] * C + cidx[None, :], mask=m2, other=0.0)
            g_dot_img += tl.sum(g * img, axis=1)
            if HAS_BG:
                # d image / d bg = T_final; reduce over the block's pixels, one atomic per channel.
                tl.atomic_add(
                    gbg_ptr + b * C + cidx, tl.sum(g * t_final[:, None], axis=0), mask=cidx < C
                )

    t_run = tl.full((BLOCK_P,), 1.0, dtype=tl.float32)  # [P] includes stopping factors
    prefix = tl.zeros((BLOCK_P,), dtype=tl.float32)  # [P] sum_j a_j T_j (g . c_j) so far

    s = start
    go = s < end
    while go:
        gid, gmask, mx, my, ca, cb, cc, op = load_gaussian_chunk(
            ids_ptr, means_ptr, conics_ptr, opac_ptr, s, end, gbase, BLOCK_G
        )

        # g . c_j for every pixel and Gaussian of the chunk: [P, C] @ [C, BLOCK_G].
        gc = tl.zeros((BLOCK_P, BLOCK_G), dtype=tl.float32)
        if SMALL_C:
            for k in tl.static_range(BLOCK_C):
                kk = tl.full((BLOCK_G,), k, tl.int32)
                ck = tl.load(colors_ptr + gid * C + k, mask=gmask & (kk < C), other=0.0)
                gk = tl.load(
                    gimage_ptr + pix * C + k,
                    mask=inside & (tl.full((BLOCK_P,), k, tl.int32) < C), other=0.0,
                ).to(tl.float32)  # [P]
                gc += gk[:, None] * ck.to(tl.float32)[None, :]
        for k in tl.static_range(0 if SMALL_C else NUM_CB):
            cidx = k * BLOCK_C + cr
            cm = cidx < C
            g = tl.load(
                gimage_ptr + pix[:, None] * C + cidx[None, :],
                mask=inside[:, None] & cm[None, :], other=0.0,
            ).to(tl.float32)  # [P, BLOCK_C]
            colt = tl.load(
                colors_ptr + gid[None, :] * C + cidx[:, None],
                mask=cm[:, None] & gmask[None, :], other=0.0,
            ).to(tl.float32)  # [BLOCK_C, BLOCK_G]
            gc += tl.dot(g, colt, input_precision="ieee")

        dx, dy, e, raw, ok = gaussian_weights(px, py, inside, gmask, mx, my, ca, cb, cc, op)
        if ALPHA_MODE:
            a, contrib, t_after, t_in, t_run = front_to_back(raw, ok, t_run)
            w = tl.where(contrib, a * t_in, 0.0)  # [P, BLOCK_G]
            wg = w * gc
            behind = g_dot_img[:, None] - (prefix[:, None] + tl.cumsum(wg, axis=1))  # g . S_i
            inv1m = 1.0 / (1.0 - a)
            dl_da = t_in * gc + (galpha[:, None] * t_final[:, None] - behind) * inv1m
            dl_da = tl.where(contrib, dl_da, 0.0)
            unclamped = raw <= ALPHA_MAX
            prefix += tl.sum(wg, axis=1)
        else:
            w, valid = sum_weights(raw, ok)
            dl_da = tl.where(valid, gc + galpha[:, None], 0.0)
            unclamped = raw <= 1.0
        # A clamped weight passes no gradient to the opacity or sigma.
        dl_dsig = tl.where(unclamped, -dl_da * raw, 0.0)  # [P, BLOCK_G]
        dl_dop = tl.sum(tl.where(unclamped, dl_da * e, 0.0), axis=0)  # [BLOCK_G]
        dmx = -tl.sum(dl_dsig * (ca[None, :] * dx + cb[None, :] * dy), axis=0)
        dmy = -tl.sum(dl_dsig * (cb[None, :] * dx + cc[None, :] * dy), axis=0)
        dca = 0.5 * tl.sum(dl_dsig * dx * dx, axis=0)
        dcb = tl.sum(dl_dsig * dx * dy, axis=0)
        dcc = 0.5 * tl.sum(dl_dsig * dy * dy, axis=0)
        tl.atomic_add(gmeans_ptr + gid * 2, dmx, mask=gmask)
        tl.atomic_add(gmeans_ptr + gid * 2 + 1, dmy, mask=gmask)
        tl.atomic_add(gconics_ptr + gid * 3, dca, mask=gmask)
        tl.atomic_add(gconics_ptr + gid * 3 + 1, dcb, mask=gmask)
        tl.atomic_add(gconics_ptr + gid * 3 + 2, dcc, mask=gmask)
        tl.atomic_add(gopac_ptr + gid, dl_dop, mask=gmask)

        # dL/dc_j = sum_p w_pj g_p: [BLOCK_G, P] @ [P, C].
        if SMALL_C:
            for k in tl.static_range(BLOCK_C):
                kk = tl.full((BLOCK_G,), k, tl.int32)
                gk = tl.load(
                    gimage_ptr + pix * C + k,
                    mask=inside & (tl.full((BLOCK_P,), k, tl.int32) < C), other=0.0,
                ).to(tl.float32)  # [P]
                tl.atomic_add(
                    gcolors_ptr + gid * C + k, tl.sum(w * gk[:, None], axis=0), mask=gmask & (kk < C)
                )
        wt = tl.trans(w)  # [BLOCK_G, P]
        for k in tl.static_range(0 if SMALL_C else NUM_CB):
            cidx = k * BLOCK_C + cr
            cm = cidx < C
            g = tl.load(
                gimage_ptr + pix[:, None] * C + cidx[None, :],
                mask=inside[:, None] & cm[None, :], other=0.0,
            ).to(tl.float32)  # [P, BLOCK_C]
            dcol = tl.dot(wt, g, input_precision="ieee")  # [BLOCK_G, BLOCK_C]
            tl.atomic_add(
                gcolors_ptr + gid[:, None] * C + cidx[None, :], dcol,
                mask=gmask[:, None] & cm[None, :],
            )

        s += BLOCK_G
        go = s < end
        if ALPHA_MODE:
            go = go & any_pixel_left(t_run, inside)


def rasterize_bwd(
    means: torch.Tensor,
    conics: torch.Tensor,
    colors: torch.Tensor,
    opacities: torch.Tensor,
    has_background: bool,
    binning: Binning,
    image: torch.Tensor,
    t_final: torch.Tensor | None,
    grad_image: torch.Tensor,
    grad_alpha: torch.Tensor,
    width: int,
    height: int,
    tile_size: int,
    mode: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launch the backward kernel. Cotangents ``grad_image [B, H, W, C]``, ``grad_alpha
    [B, H, W, 1]`` (contiguous). Returns float32 gradients for means ``[B, N, 2]``, conics
    ``[B, N, 3]``, colors ``[B, N, C]``, opacities ``[B, N]`` and background ``[B, C]`` (None
    without a background).
    """
    B, N, C = colors.shape
    dev = colors.device
    cfg = launch_config(tile_size, C, backward=True, mode=mode)
    alpha_mode = mode == "alpha"
    # Accumulation targets of the atomics: they must start at zero.
    g_means = torch.zeros((B, N, 2), dtype=torch.float32, device=dev)
    g_conics = torch.zeros((B, N, 3), dtype=torch.float32, device=dev)
    g_colors = torch.zeros((B, N, C), dtype=torch.float32, device=dev)
    g_opac = torch.zeros((B, N), dtype=torch.float32, device=dev)
    g_bg = torch.zeros((B, C), dtype=torch.float32, device=dev) if has_background else None
    n_tiles = binning.tiles_x * binning.tiles_y
    subs = tile_size * tile_size // cfg["BLOCK_P"]
    grid = (n_tiles * subs, B)
    _rasterize_bwd_kernel[grid](
        means, conics, colors, opacities, binning.ranges, binning.gauss_ids,
        image, t_final if t_final is not None else grad_alpha,
        grad_image, grad_alpha,
        g_means, g_conics, g_colors, g_opac, g_bg if g_bg is not None else g_opac,
        N, C, width, height, binning.tiles_x, n_tiles,
        ALPHA_MODE=alpha_mode, HAS_BG=has_background, TILE=tile_size,
        BLOCK_P=cfg["BLOCK_P"], BLOCK_G=cfg["BLOCK_G"], BLOCK_C=cfg["BLOCK_C"],
        NUM_CB=triton.cdiv(C, cfg["BLOCK_C"]), SMALL_C=cfg["SMALL_C"], num_warps=cfg["num_warps"],
    )
    return g_means, g_conics, g_colors, g_opac, g_bg


def _aot_specs() -> list[AotSpec]:
    sig = {
        "means_ptr": "*fp32", "conics_ptr": "*fp32", "colors_ptr": "*fp32", "opac_ptr": "*fp32",
        "ranges_ptr": "*i64", "ids_ptr": "*i32", "image_ptr": "*fp32", "tfinal_ptr": "*fp32",
        "gimage_ptr": "*fp32", "galpha_ptr": "*fp32", "gmeans_ptr": "*fp32",
        "gconics_ptr": "*fp32", "gcolors_ptr": "*fp32", "gopac_ptr": "*fp32", "gbg_ptr": "*fp32",
        "N": "i32", "C": "i32", "W": "i32", "H": "i32", "tiles_x": "i32", "n_tiles": "i32",
        "ALPHA_MODE": "constexpr", "HAS_BG": "constexpr", "TILE": "constexpr",
        "BLOCK_P": "constexpr", "BLOCK_G": "constexpr", "BLOCK_C": "constexpr",
        "NUM_CB": "constexpr", "SMALL_C": "constexpr",
    }
    specs = []
    for mode in ("alpha", "sum"):
        for tile, C in ((8, 3), (16, 1), (16, 2), (16, 3), (16, 8), (16, 32), (16, 64), (16, 96), (32, 3)):
            cfg = launch_config(tile, C, backward=True, mode=mode)
            specs.append(
                AotSpec(
                    f"rasterize_bwd[{mode},TILE={tile},C={C}]",
                    _rasterize_bwd_kernel,
                    sig,
                    {
                        "ALPHA_MODE": mode == "alpha", "HAS_BG": mode == "alpha", "TILE": tile,
                        "BLOCK_P": cfg["BLOCK_P"], "BLOCK_G": cfg["BLOCK_G"],
                        "BLOCK_C": cfg["BLOCK_C"], "NUM_CB": triton.cdiv(C, cfg["BLOCK_C"]),
                        "SMALL_C": cfg["SMALL_C"],
                    },
                    num_warps=cfg["num_warps"],
                )
            )
    return specs


AOT_SPECS = _aot_specs()
