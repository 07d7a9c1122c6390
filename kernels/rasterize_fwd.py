"""Forward rasterization in Triton: one program per (tile, image, channel block).

A program walks its tile's Gaussians front to back in chunks of ``BLOCK_G`` loaded as vectors
and evaluates them on all ``TILE * TILE`` pixels at once (``[P, BLOCK_G]`` blocks).

* alpha mode: inside a chunk the transmittance in front of each Gaussian is an exclusive prefix
  product, computed as ``exp(cumsum(log(1 - a)))``. T only falls, so the stop rule
  ``T' <= 1e-4`` removes a suffix of the chunk; the running transmittance ``T_run`` includes the
  stopping Gaussian's factor, which keeps every later chunk out too. The program leaves the loop
  once every pixel of the tile has stopped.
* sum mode: weights ``min(1, o exp(-sigma))``; no limit on Gaussians per tile.

Colour accumulation is a ``[P, BLOCK_G] @ [BLOCK_G, BLOCK_C]`` product (``tl.dot`` in IEEE fp32,
not TF32, so results match the float64 definition to ~1e-6). For C <= 4 (grey, RGB, RGBA) a dot
padded to 16 channels would do 4-16x the needed multiply-adds, so SMALL_C reduces per channel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gsplat2d._torch_impl import Binning
from gsplat2d.kernels._alloc import empty
from gsplat2d.kernels._aot import AotSpec
from gsplat2d.kernels._common import (
    any_pixel_left,
    front_to_back,
    gaussian_weights,
    load_gaussian_chunk,
    sum_weights,
    tile_block_pixels,
)

__all__ = ["rasterize_fwd", "launch_config", "AOT_SPECS"]



def launch_config(tile_size: int, C: int, backward: bool = False, mode: str = "alpha") -> dict:
    """Block sizes of the forward / backward launchers (and the AOT report), chosen so that no
    variant spills registers on sm_80 or sm_90 (see ``python -m gsplat2d.kernels.report``).

    BLOCK_P: pixels per program (a tile may be split over several programs). BLOCK_G: Gaussians
    per chunk (>= 16 for tl.dot). BLOCK_C: channels per block (>= 16 for tl.dot).
    """
    small_c = C <= 4
    block_c = triton.next_power_of_2(C) if small_c else min(32, max(16, triton.next_power_of_2(C)))
    if backward:
        # The backward keeps ~3x more [P, G] values alive than the forward. These pixel-block
        # sizes and warp counts are the spill-free ones found with the compile report (ptxas
        # caps registers by occupancy, so "more warps" is not always "fewer registers").
        if small_c and mode == "alpha":
            block_p, num_warps = 32, 4
        elif C <= 32:
            block_p, num_warps = 64, (8 if tile_size > 8 else 4)
        else:
            block_p, num_warps = 32, 4
        return {"BLOCK_P": min(tile_size * tile_size, block_p), "BLOCK_G": 16,
                "BLOCK_C": block_c, "num_warps": num_warps, "SMALL_C": small_c}
    block_p = min(tile_size * tile_size, 128)
    if small_c:
        num_warps = (4 if mode == "alpha" else 8) if block_p == 128 else (2 if mode == "alpha" else 4)
    else:
        num_warps = 2 if block_p == 64 else 4
    return {"BLOCK_P": block_p, "BLOCK_G": 16, "BLOCK_C": block_c, "num_warps": num_warps,
            "SMALL_C": small_c}


@triton.jit
def _rasterize_fwd_kernel(
    means_ptr,  # [B, N, 2]
    conics_ptr,  # [B, N, 3]
    colors_ptr,  # [B, N, C]
    opac_ptr,  # [B, N]
    bg_ptr,  # [B, C] (unused unless HAS_BG)
    ranges_ptr,  # [B * n_tiles, 2] int64
    ids_ptr,  # [P_pairs] int32
    image_ptr,  # [B, H, W, C] fp32 out
    alpha_ptr,  # [B, H, W] fp32 out
    tfinal_ptr,  # [B, H, W] fp32 out (alpha mode)
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
    SMALL_C: tl.constexpr,
):
    pid0 = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    cblk = tl.program_id(2).to(tl.int64)
    tile, px, py, inside = tile_block_pixels(pid0, tiles_x, W, H, TILE, BLOCK_P)
    cidx = cblk * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    cmask = cidx < C

    start = tl.load(ranges_ptr + (b * n_tiles + tile) * 2)
    end = tl.load(ranges_ptr + (b * n_tiles + tile) * 2 + 1)
    gbase = b * N

    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)  # [P, BLOCK_C]
    t_run = tl.full((BLOCK_P,), 1.0, dtype=tl.float32)  # [P] includes stopping factors
    t_out = tl.full((BLOCK_P,), 1.0, dtype=tl.float32)  # [P] after last contributor
    wsum = tl.zeros((BLOCK_P,), dtype=tl.float32)  # [P] sum mode alpha

    s = start
    go = s < end
    while go:
        gid, gmask, mx, my, ca, cb, cc, op = load_gaussian_chunk(
            ids_ptr, means_ptr, conics_ptr, opac_ptr, s, end, gbase, BLOCK_G
        )
        if not SMALL_C:
            # Loaded before the [P, BLOCK_G] work: shorter live ranges, no spills.
            col = tl.load(
                colors_ptr + gid[:, None] * C + cidx[None, :],
                mask=gmask[:, None] & cmask[None, :],
                other=0.0,
            ).to(tl.float32)  # [BLOCK_G, BLOCK_C]
        dx, dy, e, raw, ok = gaussian_weights(px, py, inside, gmask, mx, my, ca, cb, cc, op)
        if ALPHA_MODE:
            a, contrib, t_after, t_in, t_run = front_to_back(raw, ok, t_run)
            w = tl.where(contrib, a * t_in, 0.0)  # [P, BLOCK_G]
            t_out = tl.minimum(t_out, tl.min(tl.where(contrib, t_after, 1.0), axis=1))
        else:
            w, valid = sum_weights(raw, ok)
            wsum += tl.sum(w, axis=1)
        if SMALL_C:
            for k in tl.static_range(BLOCK_C):
                kmask = gmask & (tl.full((BLOCK_G,), k, tl.int32) < C)  # [BLOCK_G]
                ck = tl.load(colors_ptr + gid * C + k, mask=kmask, other=0.0)
                ck = ck.to(tl.float32)  # [BLOCK_G]
                part = tl.sum(w * ck[None, :], axis=1)  # [P]
                acc += tl.where(cidx[None, :] == k, part[:, None], 0.0)  # [P, BLOCK_C]
        else:
            acc += tl.dot(w, col, input_precision="ieee")  # [P, BLOCK_C]

        s += BLOCK_G
        go = s < end
        if ALPHA_MODE:
            go = go & any_pixel_left(t_run, inside)

    pix = (b * H + py) * W + px  # [P] int64
    if ALPHA_MODE:
        if HAS_BG:
            bg = tl.load(bg_ptr + b * C + cidx, mask=cmask, other=0.0).to(tl.float32)
            acc += t_out[:, None] * bg[None, :]
    tl.store(
        image_ptr + pix[:, None] * C + cidx[None, :], acc, mask=inside[:, None] & cmask[None, :]
    )
    if cblk == 0:
        if ALPHA_MODE:
            tl.store(alpha_ptr + pix, 1.0 - t_out, mask=inside)
            tl.store(tfinal_ptr + pix, t_out, mask=inside)
        else:
            tl.store(alpha_ptr + pix, wsum, mask=inside)


def rasterize_fwd(
    means: torch.Tensor,
    conics: torch.Tensor,
    colors: torch.Tensor,
    opacities: torch.Tensor,
    background: torch.Tensor | None,
    binning: Binning,
    width: int,
    height: int,
    tile_size: int,
    mode: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launch the forward kernel. Inputs ``[B, N, *]`` contiguous; see ``docs/design.md``.

    Returns ``image [B, H, W, C]``, ``alpha [B, H, W, 1]`` and (alpha mode) ``T_final [B, H, W]``
    (sum mode: None), all float32.
    """
    B, N, C = colors.shape
    dev = colors.device
    cfg = launch_config(tile_size, C, mode=mode)
    alpha_mode = mode == "alpha"
    image = empty((B, height, width, C), torch.float32, dev)
    alpha = empty((B, height, width, 1), torch.float32, dev)
    t_final = empty((B, height, width), torch.float32, dev) if alpha_mode else None
    n_tiles = binning.tiles_x * binning.tiles_y
    subs = tile_size * tile_size // cfg["BLOCK_P"]
    grid = (n_tiles * subs, B, triton.cdiv(C, cfg["BLOCK_C"]))
    _rasterize_fwd_kernel[grid](
        means, conics, colors, opacities,
        background if background is not None else image,
        binning.ranges, binning.gauss_ids,
        image, alpha, t_final if t_final is not None else alpha,
        N, C, width, height, binning.tiles_x, n_tiles,
        ALPHA_MODE=alpha_mode, HAS_BG=background is not None, TILE=tile_size,
        BLOCK_P=cfg["BLOCK_P"], BLOCK_G=cfg["BLOCK_G"], BLOCK_C=cfg["BLOCK_C"],
        SMALL_C=cfg["SMALL_C"], num_warps=cfg["num_warps"],
    )
    return image, alpha, t_final


def _aot_specs() -> list[AotSpec]:
    sig = {
        "means_ptr": "*fp32", "conics_ptr": "*fp32", "colors_ptr": "*fp32", "opac_ptr": "*fp32",
        "bg_ptr": "*fp32", "ranges_ptr": "*i64", "ids_ptr": "*i32", "image_ptr": "*fp32",
        "alpha_ptr": "*fp32", "tfinal_ptr": "*fp32", "N": "i32", "C": "i32", "W": "i32",
        "H": "i32", "tiles_x": "i32", "n_tiles": "i32", "ALPHA_MODE": "constexpr",
        "HAS_BG": "constexpr", "TILE": "constexpr", "BLOCK_P": "constexpr", "BLOCK_G": "constexpr", "BLOCK_C": "constexpr",
        "SMALL_C": "constexpr",
    }
    specs = []
    for mode in ("alpha", "sum"):
        for tile in (8, 16, 32):
            for C in (1, 2, 3, 8, 32, 64):
                if tile != 16 and C != 3:
                    continue
                cfg = launch_config(tile, C, mode=mode)
                specs.append(
                    AotSpec(
                        f"rasterize_fwd[{mode},TILE={tile},C={C}]",
                        _rasterize_fwd_kernel,
                        sig,
                        {
                            "ALPHA_MODE": mode == "alpha", "HAS_BG": mode == "alpha",
                            "TILE": tile, "BLOCK_P": cfg["BLOCK_P"], "BLOCK_G": cfg["BLOCK_G"], "BLOCK_C": cfg["BLOCK_C"],
                            "SMALL_C": cfg["SMALL_C"],
                        },
                        num_warps=cfg["num_warps"],
                    )
                )
    return specs


AOT_SPECS = _aot_specs()
