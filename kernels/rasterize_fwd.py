"""Forward rasterization in Triton: one program per (pixel block of a tile, channel block).

A program walks its tile's Gaussians **one at a time** over a vector of pixels (a 16 x 16 tile
is one warp, 8 pixels per thread). Each Gaussian's record is read with two 16-byte vector loads
(warp-uniform), issued ahead by a software pipeline (``PIPE`` Gaussians in flight, so no
iteration waits on a load it issued), so per (Gaussian, pixel) pair the inner loop issues only
the per-pixel math: two subtractions, five FMA-class instructions for ``log2(o exp(-sigma))``,
one ``MUFU.EX2``, the clamp and 1/255 test, ``T' = T - a T``, the stop test, three selects and
one FMA per channel. Cross-lane work (the "all pixels done?" vote of alpha mode) runs once per
``CHUNK`` Gaussians. Measured per pair with ``python -m gsplat2d.kernels.report --cost`` (method in
``docs/design.md``).

* alpha mode: front to back in index order, exactly the dense definition: skip
  ``a < 1/255`` and ``sigma < 0``; a pixel whose ``T'`` would fall to ``<= 1e-4`` stops (that
  Gaussian and every later one are not composited). ``T`` keeps the stopping factor so later
  Gaussians fail the test without a separate flag; ``t_out`` holds the transmittance after the
  last composited Gaussian (the final T). The program leaves once no pixel can take more.
* sum mode: ``w = min(1, o exp(-sigma))`` (skipped below 1/255), no limit per tile.

Channels: ``C <= 4`` (grey, RGB, RGBA) accumulate in named per-channel vectors, so a 3-channel
image costs three FMAs per pair and no padded fourth channel. ``C > 4`` (feature splatting)
accumulates a ``[BLOCK_P, BLOCK_C]`` block with a rank-1 update per Gaussian; channel blocks are
grid dimension 1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gsplat2d.binning import MODES, Binning
from gsplat2d.kernels._alloc import device_guard, empty
from gsplat2d.kernels._aot import AotSpec
from gsplat2d.kernels._common import (
    any_pixel_left,
    composite_step,
    exp2_approx,
    load_colours,
    load_record,
    next_gaussian,
    log2_weight,
    splat_add,
    sum_step,
    tile_pixels,
)
from gsplat2d.kernels._target import COMPILE_OPTIONS, fast_math

__all__ = ["rasterize_fwd", "launch_config", "launch_options", "fast_math", "rasterizer_aot_specs", "AOT_SPECS",
           "SMALL_C_MAX"]

#: Up to this many channels use named per-channel accumulators.
SMALL_C_MAX = 4
#: Gaussians between two "all pixels stopped?" votes (alpha mode).
CHUNK = 16


def launch_config(tile_size: int, C: int, backward: bool = False, mode: str = "alpha") -> dict:
    """Block sizes and warps of the forward / backward launchers (and the AOT report).

    Chosen with ``python -m gsplat2d.kernels.report --cost``: the fewest instructions per pair
    with no register spills on sm_80 / sm_90 and at most 128 registers for ``C <= 4``.

    BLOCK_P: pixels per program (a tile may be split over several programs). BLOCK_C: channels
    per program (a power of two). NC: ``C`` when ``C <= 4`` (named per-channel accumulators with
    constexpr strides; one program covers every channel), else 0.
    """
    if C <= SMALL_C_MAX:
        cfg = {"BLOCK_P": min(tile_size * tile_size, 256), "BLOCK_C": triton.next_power_of_2(C),
               "NC": C, "SMALL_C": True, "num_warps": 1, "CHUNK": CHUNK, "maxnreg": None,
               "PIPE": 2 if mode == "alpha" and not backward and tile_size >= 16 else 1}
        return cfg
    if backward:
        # one warp per block; channels unrolled (NC = C), the cotangent re-read per Gaussian
        block_p = 256 if (mode == "alpha" or C <= 16 or C > 64) else 128  # sum 32/64 spill at 256
        return {"BLOCK_P": min(tile_size * tile_size, block_p), "BLOCK_C": 32, "NC": C,
                "SMALL_C": False, "num_warps": 1, "CHUNK": CHUNK, "maxnreg": None, "PIPE": 1}
    # forward: a [BLOCK_P, BLOCK_C] accumulator, channel blocks in grid dimension 1
    if C <= 8:
        block_c, block_p, num_warps = 8, 128, 1
    elif C <= 16:
        block_c, block_p, num_warps = 16, (128 if mode == "alpha" else 256), 2
    else:
        block_c, block_p, num_warps = 32, (128 if mode == "alpha" else 256), 4
    return {"BLOCK_P": min(tile_size * tile_size, block_p), "BLOCK_C": block_c, "NC": 0,
            "SMALL_C": False, "num_warps": num_warps, "CHUNK": CHUNK, "maxnreg": None, "PIPE": 1}


def launch_options(cfg: dict) -> dict:
    """Compile options of a launch: ``num_warps``, :data:`COMPILE_OPTIONS` and, where set and the
    target is NVIDIA, ``maxnreg`` (neither AMD's compiler nor the interpreter takes it)."""
    opts = {"num_warps": cfg["num_warps"], **COMPILE_OPTIONS}
    if cfg.get("maxnreg") and fast_math():
        opts["maxnreg"] = cfg["maxnreg"]
    return opts


def pairs_per_iteration(cfg: dict) -> float:
    """(Gaussian, pixel) pairs one thread covers per iteration of the Gaussian loop."""
    return cfg["BLOCK_P"] / (32 * cfg["num_warps"])


# Sizes change with every image / scene: never specialise on their values (an int equal to 1 would
# otherwise become a constexpr, and each new "divisible by 16" pattern a recompile).
@triton.jit(do_not_specialize=["N", "C", "W", "H", "tiles_x", "n_tiles"])
def _rasterize_fwd_kernel(
    params_ptr,  # [B, N, 8] fp32 per-Gaussian record (binning stage 1)
    colors_ptr,  # [B, N, C]
    bg_ptr,  # [B, C] (unused unless HAS_BG)
    ranges_ptr,  # [B * n_tiles, 2] int64
    ids_ptr,  # [P_pairs] int32
    image_ptr,  # [B, H, W, C] fp32 out
    alpha_ptr,  # [B, H, W] fp32 out
    tfinal_ptr,  # [B, H, W] fp32 out (alpha mode)
    N, C, W, H, tiles_x, n_tiles,  # sizes (never specialised)
    ALPHA_MODE: tl.constexpr, TAPER: tl.constexpr, HAS_BG: tl.constexpr,  # the mode
    TILE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, NC: tl.constexpr,  # blocks (launch_config)
    SMALL_C: tl.constexpr, CHUNK: tl.constexpr, FAST: tl.constexpr,
    PIPE: tl.constexpr,
    EXACT: tl.constexpr,  # some colour is NaN/Inf: a zero weight must add nothing (splat_add)
):
    pid0 = tl.program_id(0).to(tl.int64)
    cblk = tl.program_id(1)
    gtile, b, px, py, inside = tile_pixels(pid0, tiles_x, n_tiles, W, H, TILE, BLOCK_P)
    fx = px.to(tl.float32) + 0.5  # [P]
    fy = py.to(tl.float32) + 0.5
    start = tl.load(ranges_ptr + gtile * 2).to(tl.int32)
    end = tl.load(ranges_ptr + gtile * 2 + 1).to(tl.int32)
    gbase = b * N  # int64: B * N may exceed 2**31 / 8

    T = tl.full((BLOCK_P,), 1.0, dtype=tl.float32)  # [P] includes a stopping factor
    t_out = tl.full((BLOCK_P,), 1.0, dtype=tl.float32)  # [P] after the last composited one
    wsum = tl.zeros((BLOCK_P,), dtype=tl.float32)  # [P] sum mode alpha
    acc0 = tl.zeros((BLOCK_P,), dtype=tl.float32)  # [P] channel 0 (SMALL_C)
    acc1 = tl.zeros((BLOCK_P,), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_P,), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_P,), dtype=tl.float32)
    cidx = cblk * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    cmask = cidx < C
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)  # [P, BLOCK_C] (C > 4)

    # Software pipeline over the tile's list (latency tolerance). PIPE = 1: at the top of
    # iteration i the record and colours of Gaussian i are in registers (issued at the end of
    # iteration i - 1, after the last use of i - 1's) and the list id of i + 1 has been in flight
    # for a whole iteration; the end of iteration i issues the loads of i + 1's record and colours
    # and of i + 2's id. PIPE = 2 keeps one more Gaussian in flight: the end of iteration i moves
    # i + 1's values (issued one whole iteration earlier) into place and issues the loads of
    # i + 2's record and colours and of i + 3's id. Look-ahead indices are clamped to the tile's
    # last entry (a real Gaussian of the list), so only the prologue, which an empty tile also
    # runs, needs masks.
    last = end - 1
    has = start < end
    id0 = tl.load(ids_ptr + start, mask=has, other=0)  # int32 list ids: position i
    id1 = tl.load(ids_ptr + tl.minimum(start + 1, last), mask=has, other=0)  # position i + 1
    mx, my, qa, qb, qc, lo, _inv_o = load_record(params_ptr, id0.to(tl.int64) + gbase, has)
    c0, c1, c2, c3 = 0.0, 0.0, 0.0, 0.0  # colours of Gaussian i (C <= 4)
    if SMALL_C:
        c0, c1, c2, c3 = load_colours(colors_ptr, id0.to(tl.int64) + gbase, has, NC)
    if PIPE == 2:
        pmx, pmy, pqa, pqb, pqc, plo, _pinv_o = load_record(params_ptr, id1.to(tl.int64) + gbase, has)
        pc0, pc1, pc2, pc3 = 0.0, 0.0, 0.0, 0.0  # Gaussian i + 1
        if SMALL_C:
            pc0, pc1, pc2, pc3 = load_colours(colors_ptr, id1.to(tl.int64) + gbase, has, NC)
        id2 = tl.load(ids_ptr + tl.minimum(start + 2, last), mask=has, other=0)  # position i + 2

    s = start
    go = s < end
    while go:
        s_end = tl.minimum(s + CHUNK, end)
        for i in range(s, s_end):
            dx, dy, pw = log2_weight(fx, fy, mx, my, qa, qb, qc, lo)
            raw = exp2_approx(pw, FAST)  # o exp(-sigma), [P]
            if ALPHA_MODE:
                a, valid, contrib, w, tn, T = composite_step(raw, pw, lo, T)
                t_out = tl.where(contrib, tn, t_out)
            else:
                w, valid = sum_step(raw, pw, lo, TAPER)
                if not SMALL_C:
                    # Tie w to the loop-carried [P] sum (always >= 0, so a no-op) so that Triton
                    # cannot recompute the per-pixel chain, exponential included, once per channel
                    # in the broadcast [P, BLOCK_C] layout (seen with Triton 3.6: C+1 MUFU/pair).
                    w = tl.where(wsum >= 0.0, w, 0.0)
                wsum += w
            if SMALL_C:
                acc0 = splat_add(acc0, w, c0, EXACT)
                if NC > 1:
                    acc1 = splat_add(acc1, w, c1, EXACT)
                if NC > 2:
                    acc2 = splat_add(acc2, w, c2, EXACT)
                if NC > 3:
                    acc3 = splat_add(acc3, w, c3, EXACT)
            else:
                gid = id0.to(tl.int64) + gbase  # int64: B * N may exceed 2**31 / C
                col = tl.load(colors_ptr + gid * C + cidx, mask=cmask, other=0.0)
                acc = splat_add(acc, w[:, None], col.to(tl.float32)[None, :], EXACT)  # [P, BLOCK_C]
            # the loads for the next iterations (see PIPE above)
            if PIPE == 2:
                mx, my, qa, qb, qc, lo = pmx, pmy, pqa, pqb, pqc, plo
                c0, c1, c2, c3 = pc0, pc1, pc2, pc3
                id0 = id1
                id1 = id2
                pmx, pmy, pqa, pqb, pqc, plo, _pinv_o = load_record(params_ptr, id1.to(tl.int64) + gbase, None)
                if SMALL_C:
                    pc0, pc1, pc2, pc3 = load_colours(colors_ptr, id1.to(tl.int64) + gbase, None, NC)
                id2 = tl.load(ids_ptr + tl.minimum(i + 3, last))
            else:
                id0, id1, mx, my, qa, qb, qc, lo, _inv_o, c0, c1, c2, c3 = next_gaussian(
                    ids_ptr, params_ptr, colors_ptr, id1, i, last, gbase, SMALL_C, NC)
        s = s_end
        go = s < end
        if ALPHA_MODE:
            go = go & any_pixel_left(T, inside)

    pix = (b * H + py) * W + px  # [P] int64
    if SMALL_C:
        ip = image_ptr + pix * NC  # constexpr stride
        if HAS_BG:
            acc0 = tl.fma(t_out, tl.load(bg_ptr + b * NC).to(tl.float32), acc0)
        tl.store(ip, acc0, mask=inside)
        if NC > 1:
            if HAS_BG:
                acc1 = tl.fma(t_out, tl.load(bg_ptr + b * NC + 1).to(tl.float32), acc1)
            tl.store(ip + 1, acc1, mask=inside)
        if NC > 2:
            if HAS_BG:
                acc2 = tl.fma(t_out, tl.load(bg_ptr + b * NC + 2).to(tl.float32), acc2)
            tl.store(ip + 2, acc2, mask=inside)
        if NC > 3:
            if HAS_BG:
                acc3 = tl.fma(t_out, tl.load(bg_ptr + b * NC + 3).to(tl.float32), acc3)
            tl.store(ip + 3, acc3, mask=inside)
    else:
        if HAS_BG:
            bg = tl.load(bg_ptr + b * C + cidx, mask=cmask, other=0.0).to(tl.float32)
            acc += t_out[:, None] * bg[None, :]
        tl.store(image_ptr + pix[:, None] * C + cidx[None, :], acc,
                 mask=inside[:, None] & cmask[None, :])
    if cblk == 0:
        if ALPHA_MODE:
            tl.store(alpha_ptr + pix, 1.0 - t_out, mask=inside)
            tl.store(tfinal_ptr + pix, t_out, mask=inside)
        else:
            tl.store(alpha_ptr + pix, wsum, mask=inside)


def rasterize_fwd(
    colors: torch.Tensor,
    background: torch.Tensor | None,
    binning: Binning,
    width: int,
    height: int,
    tile_size: int,
    mode: str,
    exact: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launch the forward kernel. ``colors [B, N, C]``, ``background [B, C]`` or None, float32
    contiguous; the geometry is read from ``binning.params``, the per-Gaussian record of the
    binning stage (the numba launcher's argument order). See ``docs/design.md``.

    ``exact``: some colour is NaN or Inf (the caller knows; it costs a device sync to find out):
    the kernel variant in which a Gaussian adds nothing, not ``0 * nan``, to the pixels it misses.

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
    grid = (B * n_tiles * subs, triton.cdiv(C, cfg["BLOCK_C"]))
    with device_guard(dev):
        _rasterize_fwd_kernel[grid](
            binning.params, colors,
            background if background is not None else image,
            binning.ranges, binning.gauss_ids,
            image, alpha, t_final if t_final is not None else alpha,
            N, C, width, height, binning.tiles_x, n_tiles,
            ALPHA_MODE=alpha_mode, TAPER=mode == "sum_taper", HAS_BG=background is not None, TILE=tile_size,
            BLOCK_P=cfg["BLOCK_P"], BLOCK_C=cfg["BLOCK_C"], NC=cfg["NC"], SMALL_C=cfg["SMALL_C"],
            CHUNK=cfg["CHUNK"], FAST=fast_math(), PIPE=cfg["PIPE"], EXACT=bool(exact), **launch_options(cfg),
        )
    return image, alpha, t_final


#: Argument types of the kernel (the JIT sees the same: sizes are never specialised).
SIGNATURE = {
    "params_ptr": "*fp32", "colors_ptr": "*fp32", "bg_ptr": "*fp32", "ranges_ptr": "*i64",
    "ids_ptr": "*i32", "image_ptr": "*fp32", "alpha_ptr": "*fp32", "tfinal_ptr": "*fp32",
    "N": "i32", "C": "i32", "W": "i32", "H": "i32", "tiles_x": "i32", "n_tiles": "i32",
    "ALPHA_MODE": "constexpr", "TAPER": "constexpr", "HAS_BG": "constexpr", "TILE": "constexpr", "BLOCK_P": "constexpr",
    "BLOCK_C": "constexpr", "NC": "constexpr", "SMALL_C": "constexpr", "CHUNK": "constexpr",
    "FAST": "constexpr", "PIPE": "constexpr", "EXACT": "constexpr",
}

#: (tile, C) variants compiled by the AOT report for each mode, both kernels.
AOT_VARIANTS = ((8, 3), (16, 1), (16, 2), (16, 3), (16, 4), (16, 8), (16, 16), (16, 32), (16, 64),
                (16, 96), (32, 3))
#: ``"sum_taper"`` variants compiled by the report: the feature SR model's C (3 + 12 + 1) and C = 3.
AOT_VARIANTS_TAPER = ((16, 3), (16, 16))
#: Forward variants also compiled with ``EXACT`` (a launch with a non-finite colour): they must
#: compile without spills; their cost is not budgeted (a rare launch, not a training step).
AOT_VARIANTS_EXACT = (("alpha", 16, 3), ("sum_taper", 16, 16))


def rasterizer_aot_specs(kind: str, kernel, signature: dict) -> list[AotSpec]:
    """The AOT specs of the forward (``kind="fwd"``) or backward (``"bwd"``) rasterizer kernel:
    every mode and (tile, C) variant, with the launcher's own :func:`launch_config`, so the
    report compiles exactly what the launches do (``FAST`` is set per target by the report)."""
    variants = [(mode, tile, C, False) for mode in MODES
                for tile, C in (AOT_VARIANTS_TAPER if mode == "sum_taper" else AOT_VARIANTS)]
    if "EXACT" in signature:
        variants += [(mode, tile, C, True) for mode, tile, C in AOT_VARIANTS_EXACT]
    specs = []
    for mode, tile, C, exact in variants:
        cfg = launch_config(tile, C, backward=kind == "bwd", mode=mode)
        specs.append(
            AotSpec(
                f"rasterize_{kind}[{mode},TILE={tile},C={C}{',exact' if exact else ''}]",
                kernel,
                signature,
                {
                    "ALPHA_MODE": mode == "alpha", "TAPER": mode == "sum_taper",
                    "HAS_BG": mode == "alpha", "TILE": tile,
                    "BLOCK_P": cfg["BLOCK_P"], "BLOCK_C": cfg["BLOCK_C"], "NC": cfg["NC"],
                    "SMALL_C": cfg["SMALL_C"], "CHUNK": cfg["CHUNK"], "FAST": True,
                    **({"PIPE": cfg["PIPE"]} if kind == "fwd" else {}),
                    **({"EXACT": exact} if "EXACT" in signature else {}),
                },
                num_warps=cfg["num_warps"],
                maxnreg=cfg["maxnreg"],
                pairs_per_iter=None if exact else pairs_per_iteration(cfg),
                trips=(cfg["CHUNK"],),
                cost_key=f"{kind}-{mode}" if C == 3 and tile == 16 and not exact else None,
            )
        )
    return specs


AOT_SPECS = rasterizer_aot_specs("fwd", _rasterize_fwd_kernel, SIGNATURE)
