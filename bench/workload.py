"""Workload model: a GPU-free ESTIMATE of H100 rasterizer time, ours and gsplat 1.5.3's.

Run::

    python bench/workload.py                       # all scenes, writes bench/results/workload-model-*.{json,md}
    python bench/workload.py --scenes random-1080p-100k single-512 --no-write

Everything this module prints is an **estimate** from a model, not a measurement. What it does:

1. **Scenes** are real fields (:func:`build_scene`): the shipped SR models' x4 fields of the
   Set14 LR images, a fitted Kodak field (alpha mode), an SR training batch, random 1080p/4K
   scenes and one 512 x 512 image. Each is a list of *launches* (one rasterizer launch each; a
   launch may hold a batch of images) of Gaussians already in pixel units (``field.to_pixels``
   at the render size, which is what the rasterizer sees; a whole image is one launch: the
   windowed CLI renderer splits it into 512 x 512 launches whose tile lists are the same, since
   512 is a multiple of the tile).

2. **Binning, replayed exactly.** Ours: the public :func:`gsplat2d.bin_gaussians` (torch
   backend), i.e. the per-tile Gaussian lists the kernels read. gsplat 1.5.3: its own rule on the
   same 2D Gaussians (``ProjectionEWA3DGSFused.cu`` / ``IntersectTile.cu``): opacity-aware
   extent ``e = min(3.33, sqrt(2 ln(255 o)))``, integer radii ``r_x = ceil(e sqrt(Sigma_xx))``,
   ``r_y = ceil(e sqrt(Sigma_yy))``, tiles ``[floor((m - r)/16), ceil((m + r)/16))`` clamped
   to the grid, culled when ``o < 1/255``, both radii are 0 or the box misses the image; depth
   order = index order (2D). No eps2d blur is added (the Gaussians are given in 2D). This rule
   was read from copies of gsplat's CUDA sources in public repositories, not from the 1.5.3 wheel
   itself (the rasterizer kernels whose SASS is counted do come from that wheel:
   ``bench/gsplat_cost.py``).

3. **Control flow, replayed per (Gaussian, program) iteration** (:func:`replay_ours`, :func:`replay_gsplat`), in
   float64 on the CPU, with the kernels' rules (``gsplat2d.binning``: weight ``o exp(-sigma)``
   skipped below 1/255 or for ``sigma < 0``, alpha clamp 0.99, stop when ``T' <= 1e-4``):

   *Ours* (``kernels/rasterize_fwd.py``, ``kernels/rasterize_bwd.py``, read-only here): one
   program per ``BLOCK_P`` pixels of a 16 x 16 tile (``launch_config``), Gaussians one at a time
   front to back. Forward: every iteration runs the same path (there is no per-Gaussian branch;
   the report's "full" and "cheap" forward counts are equal). Alpha mode leaves the loop only at
   a CHUNK (16) boundary once no pixel of the program can take more: iterations
   ``= min(L, 16 ceil(d / 16))`` with ``d`` the 1-based position after which the program's last
   live pixel stopped (``L`` when one never stops, at least one chunk); sum modes run ``L``.
   Backward: the same walk and the same stop (front to back, not back to front), and per
   iteration a warp vote: the **full** path if any pixel of the program passes the conservative
   pre-test (``log2 w >= log2(1/255) - 1e-3``, ``sigma >= 0``, inside the image, alpha mode:
   transmittance before this Gaussian ``> 1e-4``), else the **cheap** path.

   *gsplat 1.5.3* (``RasterizeToPixels3DGS{Fwd,Bwd}.cu``; alpha mode, its only mode, clamp
   0.999): one 256-thread block per tile, one pixel per thread, 8 warps of two tile rows each,
   Gaussians staged 256 at a time in shared memory. Forward: a lane breaks at the Gaussian that
   would take its ``T`` to ``<= 1e-4`` (exclusive); a warp iterates while any lane is live (so it
   runs positions ``0 .. max_lane min(s_p, L-1)``); an iteration is **full** if any live lane
   passes ``alpha >= 1/255, sigma >= 0``, else **cheap**; the block leaves at the start of a batch
   once every thread is done (``__syncthreads_count``), so it runs
   ``min(ceil(L/256), floor(max_p s_p / 256) + 1)`` batches. Backward: every batch of the list is
   staged (no early exit), each warp runs positions ``0 .. max_lane last_id`` (back to front);
   an iteration is **full** if any lane is valid (inside, position ``<= last_id``, passes the
   test), **cheap** (39: every such lane evaluates the exponential, the ``warp.any`` skip) if a
   lane is at or before its ``last_id`` but none passes, and the 17-instruction **no-valid-lane**
   path otherwise. A pixel with no contributor has ``last_id = -1`` here (gsplat stores 0, an
   absolute index; it matters only in the first tile of the image).

   Every program/block and every (Gaussian, program) iteration is replayed; nothing is sampled.
   Replay rounding: the kernels compute weights and transmittance in float32, the replay in
   float64; a pixel whose ``T`` lands within rounding of 1e-4 may stop one Gaussian apart.

4. **Counts** (data, refreshed by re-running the report; nothing is hard-coded here):
   ours from ``bench/results/kernel-cost-triton3.9-sm90-rasterizers.json`` (``python -m
   gsplat2d.kernels.report --cost --arch 90 --json --modules gsplat2d.kernels.rasterize_fwd
   gsplat2d.kernels.rasterize_bwd``; its non-taper records equal those of
   ``kernel-cost-triton3.9.json``, searched second; sm_90 records ``rasterize_{fwd,bwd}[mode,TILE=16,C=..]``: per-pair counts of the
   full and cheap paths, registers, warps). A program iteration issues
   ``per_pair x BLOCK_P / 32`` warp-instructions (``pairs_per_iter = BLOCK_P / (32 num_warps)``
   pairs per thread, per warp); the per-pair counts already amortise the CHUNK loop over full
   chunks of 16. gsplat from ``bench/results/gsplat-1.5.3-cost-sm90-sm80.json``
   (``bench/gsplat_cost.py``, sm_90, C = 3): ``steady_state`` inner-loop counts (forward 52 / 31,
   backward 236 / 39), ``as_compiled`` cheap (17) for an iteration with no valid lane, and the
   batch loop's own instructions (48 / 68 per warp per batch), registers. gsplat's counts exist
   for C = 3 only: on C = 16 scenes gsplat is costed at C = 3 (an underestimate of its time).

   What-ifs from the same replay: ``ours_alpha_c3_prefetched`` (:data:`LATENCY_CHAIN_PREFETCHED`),
   ``ours_alpha_c3_tile8`` (the shipped ``tile_size=8`` variant: its own binning and counts,
   ``rasterize_*[alpha,TILE=8,C=3]``) and both.

5. **Time model** (:func:`estimate_time`), H100 SXM (:data:`H100`): 132 SMs, 1.98 GHz, 4
   schedulers per SM each issuing one warp-instruction per clock.

   * Warps per SM: registers are allocated per warp in units of 256, so a warp of a kernel with
     ``r`` registers takes ``ceil(32 r / 256) 256``; blocks per SM
     ``= min(floor(65536 / (warps_per_block x that)), 32 blocks, floor(64 / warps_per_block),
     floor(233472 / (shared + 1024)))``; warps per SM = blocks x warps per block, capped by the
     grid: ``ceil(blocks_in_grid / 132) x warps_per_block``. ``w`` = warps per scheduler = that / 4.
   * Issue bound: ``t_issue = S / (132 x 4 x f)``, ``S`` = replayed warp-instructions.
   * Latency bound (Little's law): a warp's iteration lasts at least its own instructions
     (one per clock) plus the latency it cannot hide, ``lat`` (:data:`LATENCY_CHAIN`, a named
     input per kernel path: e.g. ours waits on ``ids[i]`` then on the record it indexes, two
     dependent global loads per iteration, no prefetch); ``t_lat = sum_warps serial / (132 x 4 x
     w x f)`` with ``serial = sum_iterations (n + lat)`` (+ gsplat's per-batch staging).
   * Schedule and tail (the heaviest programs): each program has a serial length (cycles,
     uncontended: its iterations' instructions, one per clock, plus their exposed latencies;
     gsplat: a block's ``sum_batches (staging + slowest warp's batch time)``) and an instruction
     count. :func:`fluid_schedule` dispatches the programs in grid order onto
     ``m = 132 x blocks per SM`` slots (a program starts when the first running one finishes: the
     block scheduler) and lets them share the 528 issue slots per clock: while the running
     programs would together issue more than that, all slow down by the same factor (fluid
     processor sharing, pooled over the GPU). Ours: grid dimension 0 = (image, tile, sub-block)
     fastest, channel blocks last; gsplat: grid ``(I, tiles_y, tiles_x)``, image fastest, then
     tile row, then tile column. The heaviest programs left running at the end make the tail:

         ``t = max(t_issue, t_lat, makespan)``,   reported tail = ``t - max(t_issue, t_lat)``.

     Also reported: ``t_graham_upper_s = max(t_issue, t_lat) + (1 - 1/m) p_max`` (Graham's bound
     for any greedy order) and ``t_longest_program_s = p_max`` (uncontended).
   * Not modelled: launch overhead, prologue/epilogue (once per program, not per iteration),
     MUFU/LSU pipe limits (both kernels issue 1-2 MUFU per pair, far below the 16/clk/SM pipe),
     atomics contention in the backward, bank conflicts, DRAM traffic (all loads are taken as
     L1/L2 hits), clock throttling.

   Latencies (cycles, :data:`LATENCY`): L1 hit 33, shared-memory load 30, L2 hit 270, warp
   shuffle/vote 25. These are assumptions of the model (named parameters, not measured here), of
   the order that microbenchmark studies of Hopper report (Luo et al., "Benchmarking and
   Dissecting the Nvidia Hopper GPU Architecture", arXiv:2402.13499; Chips and Cheese, "Nvidia's
   H100: Funny L2, and Tons of Bandwidth", 2023). L2 270 is the low end of the 270-500 cycles
   such studies report; a higher value would make ours (an L2 load in every iteration's chain)
   slower in this model, gsplat's (shared memory in the loop) hardly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
#: Our per-variant counts, searched in order: the sm_90 rasterizer report (all modes, with the
#: sum_taper variants) and the full report of bench/results/kernel-cost.md.
OUR_COUNTS = (REPO / "bench" / "results" / "kernel-cost-triton3.9-sm90-rasterizers.json",
              REPO / "bench" / "results" / "kernel-cost-triton3.9.json")
GSPLAT_COUNTS = REPO / "bench" / "results" / "gsplat-1.5.3-cost-sm90-sm80.json"
RESULT_STEM = REPO / "bench" / "results" / "workload-model-h100-estimate-2026-12-07"

TILE = 16
# the rasterizer's rules, from where they are defined (gsplat 1.5.3's own clamp is gsplat's)
from gsplat2d.binning import ALPHA_MAX as ALPHA_MAX_OURS, MIN_WEIGHT, T_STOP  # noqa: E402
from gsplat2d.kernels.rasterize_fwd import CHUNK  # noqa: E402

ALPHA_MAX_GSPLAT = 0.999
LOG2_LOOSE = math.log2(MIN_WEIGHT) - 1e-3  # the backward's conservative pre-test
GS_BATCH = 256
GS_WARPS = 8

#: H100 SXM.
H100 = {
    "sms": 132, "clock_hz": 1.98e9, "schedulers_per_sm": 4, "regs_per_sm": 65536,
    "reg_alloc_unit": 256, "max_warps_per_sm": 64, "max_blocks_per_sm": 32,
    "smem_per_sm": 233472, "smem_reserved_per_block": 1024,
}
#: Latencies in cycles (see the module docstring for sources; approximate).
LATENCY = {"l1": 33, "shared": 30, "l2": 270, "shfl": 25}
#: Exposed latency per loop iteration (cycles) by kernel path: what a warp waits for on each
#: iteration that its own instructions cannot cover. Set these to model a prefetched design.
LATENCY_CHAIN = {
    # ours: ids[i] (sequential, L1 hit) -> record of that Gaussian (L2: shared by programs on
    # other SMs); no software pipelining of these scalar loads
    "ours_fwd": LATENCY["l1"] + LATENCY["l2"],
    # + the block vote
    "ours_bwd_cheap": LATENCY["l1"] + LATENCY["l2"] + LATENCY["shfl"],
    # + six block sums: in-thread adds, then 5 dependent shuffle levels (sums pipelined)
    "ours_bwd_full": LATENCY["l1"] + LATENCY["l2"] + 6 * LATENCY["shfl"],
    # gsplat: conic / mean from shared memory; full path adds the colour load (L1 after the
    # block's first warp brought it in)
    "gs_fwd_cheap": LATENCY["shared"],
    "gs_fwd_full": LATENCY["shared"] + LATENCY["l1"],
    "gs_bwd_none": LATENCY["shfl"],
    "gs_bwd_cheap": LATENCY["shared"] + LATENCY["shfl"],
    "gs_bwd_full": LATENCY["shared"] + 6 * LATENCY["shfl"],
    # per batch: flatten_ids -> means/conics/opacities (two dependent L2 loads) + 2 barriers
    "gs_batch": 2 * LATENCY["l2"] + 2 * LATENCY["shfl"],
}
#: What-if: our loops with the next Gaussian's id and record prefetched (loads off the critical
#: path; only the backward's vote and block sums remain). Reported as ``ours_alpha_c3_prefetched``.
LATENCY_CHAIN_PREFETCHED = {
    **LATENCY_CHAIN,
    "ours_fwd": 0,
    "ours_bwd_cheap": LATENCY["shfl"],
    "ours_bwd_full": 6 * LATENCY["shfl"],
}


# ------------------------------------------------------------------------------------- counts
@dataclass
class OurKernel:
    name: str
    full: float  # per pair
    cheap: float
    registers: int
    num_warps: int
    block_p: int
    block_c: int
    channel_blocks: int

    @property
    def per_iter_full(self) -> float:  # warp-instructions per program iteration (all warps)
        return self.full * self.block_p / 32

    @property
    def per_iter_cheap(self) -> float:
        return self.cheap * self.block_p / 32


def _launch_config(C: int, backward: bool, mode: str, tile: int = TILE) -> dict:
    from gsplat2d.kernels.rasterize_fwd import launch_config

    return launch_config(tile, C, backward=backward, mode=mode)


def load_our_counts(mode: str, C: int, path=OUR_COUNTS, arch: int = 90, tile: int = TILE) -> Dict[str, OurKernel]:
    """Forward and backward counts of our sm_90 variant ``mode, TILE=16, C`` from the report JSON
    (``path``: one file or several searched in order)."""
    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(x) for x in path]
    recs = [r for x in paths if x.exists() for r in json.loads(x.read_text())["records"]]
    out = {}
    for kind in ("fwd", "bwd"):
        key = f"rasterize_{kind}[{mode},TILE={tile},C={C}]"
        hit = [r for r in recs if r["kernel"] == key and r["arch"] == arch and r.get("cost")]
        if not hit:
            raise KeyError(f"{key} @sm_{arch} has no cost record in {[str(x) for x in paths]}: run "
                           "python -m gsplat2d.kernels.report --cost --cached")
        r = hit[0]
        cfg = _launch_config(C, kind == "bwd", mode, tile)
        paths = r["cost"]["paths"]
        cblocks = 1 if (kind == "bwd" or cfg["SMALL_C"]) else -(-C // cfg["BLOCK_C"])
        out[kind] = OurKernel(key, paths["full"]["total"], paths["cheap"]["total"], int(r["registers"]),
                              int(r["num_warps"]), int(cfg["BLOCK_P"]), int(cfg["BLOCK_C"]), cblocks)
        ppi = r["cost"].get("pairs_per_iter")
        if ppi is not None and abs(ppi - cfg["BLOCK_P"] / (32 * cfg["num_warps"])) > 1e-9:
            raise ValueError(f"{key}: pairs_per_iter {ppi} disagrees with launch_config {cfg}")
    return out


@dataclass
class GsplatCounts:
    fwd_full: float
    fwd_cheap: float
    fwd_batch: float
    bwd_full: float
    bwd_cheap: float
    bwd_none: float
    bwd_batch: float
    fwd_registers: int
    bwd_registers: int
    fwd_shared: int  # bytes per block (dynamic + static)
    bwd_shared: int


def load_gsplat_counts(path: Path = GSPLAT_COUNTS, arch: str = "sm_90", C: int = 3) -> GsplatCounts:
    d = json.loads(Path(path).read_text())["kernels"]
    f = d["rasterize_to_pixels_3dgs_fwd_kernel"]["arch"][arch]
    b = d["rasterize_to_pixels_3dgs_bwd_kernel"]["arch"][arch]

    def inner(k, reading, p):
        return k[reading]["per_pair"]["inner_loop"][p]["total"] * k[reading]["marker_per_iter"]

    # dynamic shared memory of gsplat's launch: id (4) + xy_opacity (12) + conic (12) [+ rgbs 4C]
    return GsplatCounts(
        inner(f, "steady_state", "full"), inner(f, "steady_state", "cheap"),
        f["steady_state"]["batch_loop"]["instructions"],
        inner(b, "steady_state", "full"), inner(b, "steady_state", "cheap"),
        inner(b, "as_compiled", "cheap"), b["steady_state"]["batch_loop"]["instructions"],
        int(f["registers"]), int(b["registers"]),
        GS_BATCH * 28 + int(f.get("static_shared_bytes", 0)),
        GS_BATCH * (28 + 4 * C) + int(b.get("static_shared_bytes", 0)),
    )


# ------------------------------------------------------------------------------------ binning
@dataclass
class Image:
    """One image of a launch: Gaussians in pixel units (what the rasterizer sees)."""

    means: np.ndarray  # [N, 2] float64
    conics: np.ndarray  # [N, 3] (a, b, c): sigma = a/2 dx^2 + b dx dy + c/2 dy^2
    opacities: np.ndarray  # [N]
    width: int
    height: int


def our_tile_lists(img: Image, tile: int = TILE) -> Tuple[np.ndarray, np.ndarray]:
    """``(ranges [T, 2], ids [P])`` from the public binning stage (torch backend)."""
    from gsplat2d.rasterize import bin_gaussians

    m = torch.as_tensor(img.means, dtype=torch.float32)
    q = torch.as_tensor(img.conics, dtype=torch.float32)
    o = torch.as_tensor(img.opacities, dtype=torch.float32)
    sc = bin_gaussians(m, q, o, img.width, img.height, tile_size=tile, backend="torch")
    tx = -(-img.width // tile)
    ty = -(-img.height // tile)
    if sc.binning is None:
        return np.zeros((tx * ty, 2), np.int64), np.zeros(0, np.int64)
    return sc.binning.ranges.numpy().astype(np.int64), sc.binning.gauss_ids.numpy().astype(np.int64)


def gsplat_tile_lists(img: Image) -> Tuple[np.ndarray, np.ndarray]:
    """gsplat 1.5.3's tile lists for the same 2D Gaussians (rule in the module docstring)."""
    W, H = img.width, img.height
    tx, ty = -(-W // TILE), -(-H // TILE)
    a, b, c = (img.conics[:, k].astype(np.float64) for k in range(3))
    o = img.opacities.astype(np.float64)
    det = a * c - b * b
    ok = (det > 0) & (a > 0) & (c > 0) & (o >= MIN_WEIGHT) & np.isfinite(det)
    det_s = np.where(ok, det, 1.0)
    ext = np.minimum(3.33, np.sqrt(np.maximum(2.0 * np.log(np.where(ok, o, 1.0) * 255.0), 0.0)))
    rx = np.ceil(ext * np.sqrt(np.where(ok, c, 1.0) / det_s))
    ry = np.ceil(ext * np.sqrt(np.where(ok, a, 1.0) / det_s))
    mx, my = img.means[:, 0].astype(np.float64), img.means[:, 1].astype(np.float64)
    ok &= ~((rx <= 0) & (ry <= 0))
    ok &= ~((mx + rx <= 0) | (mx - rx >= W) | (my + ry <= 0) | (my - ry >= H))
    x0 = np.clip(np.floor((mx - rx) / TILE), 0, tx).astype(np.int64)
    x1 = np.clip(np.ceil((mx + rx) / TILE), 0, tx).astype(np.int64)
    y0 = np.clip(np.floor((my - ry) / TILE), 0, ty).astype(np.int64)
    y1 = np.clip(np.ceil((my + ry) / TILE), 0, ty).astype(np.int64)
    return _rect_lists(np.where(ok, x0, 0), np.where(ok, x1, 0), y0, y1, tx, ty)


def _rect_lists(x0, x1, y0, y1, tx, ty) -> Tuple[np.ndarray, np.ndarray]:
    """Tile lists of Gaussians covering tile rectangles ``[x0, x1) x [y0, y1)``, index order."""
    w = np.maximum(x1 - x0, 0)
    h = np.maximum(y1 - y0, 0)
    cnt = w * h
    total = int(cnt.sum())
    g = np.repeat(np.arange(len(cnt), dtype=np.int64), cnt)
    start = np.repeat(np.cumsum(cnt) - cnt, cnt)
    loc = np.arange(total, dtype=np.int64) - start
    ww = np.repeat(np.maximum(w, 1), cnt)
    tile = (np.repeat(y0, cnt) + loc // ww) * tx + np.repeat(x0, cnt) + loc % ww
    order = np.lexsort((g, tile))
    tile, g = tile[order], g[order]
    counts = np.bincount(tile, minlength=tx * ty)
    ends = np.cumsum(counts)
    return np.stack([ends - counts, ends], 1).astype(np.int64), g


# ------------------------------------------------------------------------------------- replay
@dataclass
class OurProgramStats:
    """Per program (tile x sub-block): list length, iterations, backward full iterations."""

    L: np.ndarray
    iters: np.ndarray
    bwd_full: np.ndarray


@dataclass
class GsBlockStats:
    """Per tile (block): list length; per warp: forward full/cheap iterations, backward
    full/cheap/none iterations; per block: batches run and serial cycles (forward, backward)."""

    L: np.ndarray
    fwd_full: np.ndarray  # [T, 8]
    fwd_cheap: np.ndarray
    bwd_full: np.ndarray
    bwd_cheap: np.ndarray
    bwd_none: np.ndarray
    fwd_batches: np.ndarray  # [T]
    bwd_batches: np.ndarray
    fwd_serial: np.ndarray  # [T] cycles
    bwd_serial: np.ndarray
    tiles_x: int = 1


def _offsets(tile: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    off = np.arange(tile * tile)
    return off, (off % tile).astype(np.float64) + 0.5, (off // tile).astype(np.float64) + 0.5


def _pixel_terms(img: Image, tiles: np.ndarray, g: np.ndarray, tile: int = TILE):
    """``ln w`` ([P, tile^2] float64, ``ln o - sigma``) and the ``sigma >= 0`` mask for pairs
    (tile, gaussian); pixel ``p`` of a tile is ``(p % tile, p // tile)``."""
    _, oxs, oys = _offsets(tile)
    tx = -(-img.width // tile)
    ox = (tiles % tx) * tile
    oy = (tiles // tx) * tile
    dx = (ox[:, None] + oxs[None, :]) - img.means[g, 0][:, None]
    dy = (oy[:, None] + oys[None, :]) - img.means[g, 1][:, None]
    a, b, c = (img.conics[g, k][:, None] for k in range(3))
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    lnw = np.log(np.maximum(img.opacities[g], 1e-300))[:, None] - sigma
    return lnw, sigma >= 0.0


def _inside(img: Image, tiles: np.ndarray, tile: int = TILE) -> np.ndarray:
    off = np.arange(tile * tile)
    tx = -(-img.width // tile)
    px = (tiles % tx)[:, None] * tile + (off % tile)[None, :]
    py = (tiles // tx)[:, None] * tile + (off // tile)[None, :]
    return (px < img.width) & (py < img.height)


def _groups(ranges: np.ndarray, max_pairs: int):
    """Consecutive tile groups with at most ``max_pairs`` pairs (a longer tile alone)."""
    lens = ranges[:, 1] - ranges[:, 0]
    T = len(lens)
    t = 0
    while t < T:
        acc = 0
        u = t
        while u < T and (acc + lens[u] <= max_pairs or u == t):
            acc += lens[u]
            u += 1
        yield t, u
        t = u


def _seg_first_stop(stopped: np.ndarray, seg_starts: np.ndarray, L: np.ndarray) -> np.ndarray:
    """First position (per segment, per pixel) where the monotone ``stopped`` is True; ``L`` if
    never. ``stopped`` [P, 256] is monotone within each segment."""
    out = np.empty((len(seg_starts), stopped.shape[1]), np.int64)
    nz = L > 0
    if nz.any():
        live = np.add.reduceat((~stopped).astype(np.int32), seg_starts[nz], axis=0)
        out[nz] = live
    out[~nz] = 0
    return out


def _log_t(lnw: np.ndarray, valid: np.ndarray, alpha_max: float, seg_id: np.ndarray,
           seg_starts: np.ndarray) -> np.ndarray:
    """``ln T`` after each pair (including it), per pixel, within each tile segment."""
    a = np.minimum(np.exp(lnw), alpha_max)
    step = np.where(valid, np.log1p(-a), 0.0)
    cs = np.cumsum(step, axis=0)
    base = np.zeros((len(seg_starts), step.shape[1]))
    first = seg_starts > 0
    base[first] = cs[seg_starts[first] - 1]
    return cs - base[seg_id]


def replay_ours(img: Image, ranges: np.ndarray, ids: np.ndarray, mode: str, block_p_fwd: int,
                block_p_bwd: int, max_pairs: int = 1 << 15, tile: int = TILE) -> Tuple[OurProgramStats, OurProgramStats]:
    """Our forward and backward control flow on one image (see the module docstring).

    Returns per-program stats for the forward (programs of ``block_p_fwd`` pixels) and the
    backward (``block_p_bwd``); program order: tile-major, then sub-block."""
    alpha = mode == "alpha"
    T = len(ranges)
    L = (ranges[:, 1] - ranges[:, 0]).astype(np.int64)
    res = {}
    for bp in {block_p_fwd, block_p_bwd}:
        S = tile * tile // bp
        res[bp] = (np.zeros((T, S), np.int64), np.zeros((T, S), np.int64))
    ln_loose = LOG2_LOOSE * math.log(2.0)
    ln_min = math.log(MIN_WEIGHT)
    for t0, t1 in _groups(ranges, max_pairs):
        lens = L[t0:t1]
        tiles = np.repeat(np.arange(t0, t1), lens)
        p0, p1 = ranges[t0, 0], ranges[t1 - 1, 1]
        inside = _inside(img, np.arange(t0, t1), tile)  # [G, 256]
        if p1 == p0:
            for bp in res:
                res[bp][0][t0:t1] = 0
            continue
        g = ids[p0:p1]
        lnw, spos = _pixel_terms(img, tiles, g, tile)
        seg_len = lens
        seg_starts = np.concatenate([[0], np.cumsum(seg_len)[:-1]])
        seg_id = np.repeat(np.arange(t1 - t0), seg_len)
        k_rel = np.arange(p1 - p0) - seg_starts[seg_id]
        valid = (lnw >= ln_min) & spos
        pre = (lnw >= ln_loose) & spos & inside[seg_id]
        if alpha:
            logt = _log_t(lnw, valid, ALPHA_MAX_OURS, seg_id, seg_starts)
            stopped = logt <= math.log(T_STOP)
            s_first = _seg_first_stop(stopped, seg_starts, seg_len)  # [G, 256]; L = never
            pre &= k_rel[:, None] <= s_first[seg_id]  # T before this Gaussian > T_STOP
        for bp, (iters_a, full_a) in res.items():
            S = tile * tile // bp
            if alpha:
                d = np.where(inside, np.where(s_first < seg_len[:, None], s_first + 1, -1), 0)
                d = d.reshape(-1, S, bp)
                never = (d == -1).any(axis=2)
                dmax = d.max(axis=2)
                chunks = np.maximum(1, -(-dmax // CHUNK))
                it = np.where(never, seg_len[:, None], np.minimum(seg_len[:, None], CHUNK * chunks))
            else:
                it = np.repeat(seg_len[:, None], S, axis=1)
            it = np.where(seg_len[:, None] > 0, it, 0)
            iters_a[t0:t1] = it
            anyp = pre.reshape(len(k_rel), S, bp).any(axis=2)  # [P, S]
            counted = anyp & (k_rel[:, None] < it[seg_id])
            full_a[t0:t1] = _segment_sum(counted.astype(np.int64), seg_starts, seg_len)
    out = []
    for bp in (block_p_fwd, block_p_bwd):
        iters_a, full_a = res[bp]
        S = tile * tile // bp
        out.append(OurProgramStats(np.repeat(L, S), iters_a.reshape(-1), full_a.reshape(-1)))
    return out[0], out[1]


def _segment_sum(x: np.ndarray, seg_starts: np.ndarray, seg_len: np.ndarray) -> np.ndarray:
    out = np.zeros((len(seg_starts),) + x.shape[1:], x.dtype)
    nz = seg_len > 0
    if nz.any():
        out[nz] = np.add.reduceat(x, seg_starts[nz], axis=0)
    return out


def replay_gsplat(img: Image, ranges: np.ndarray, ids: np.ndarray, counts: GsplatCounts,
                  max_pairs: int = 1 << 15) -> GsBlockStats:
    """gsplat 1.5.3's forward and backward control flow (alpha mode) on one image."""
    T = len(ranges)
    L = (ranges[:, 1] - ranges[:, 0]).astype(np.int64)
    z8 = lambda: np.zeros((T, GS_WARPS), np.int64)  # noqa: E731
    st = GsBlockStats(L, z8(), z8(), z8(), z8(), z8(), np.zeros(T, np.int64), np.zeros(T, np.int64),
                      np.zeros(T), np.zeros(T), -(-img.width // TILE))
    ln_min = math.log(MIN_WEIGHT)
    lc = LATENCY_CHAIN
    c_ff, c_fc = counts.fwd_full + lc["gs_fwd_full"], counts.fwd_cheap + lc["gs_fwd_cheap"]
    c_bf, c_bc = counts.bwd_full + lc["gs_bwd_full"], counts.bwd_cheap + lc["gs_bwd_cheap"]
    c_bn = counts.bwd_none + lc["gs_bwd_none"]
    for t0, t1 in _groups(ranges, max_pairs):
        lens = L[t0:t1]
        p0, p1 = ranges[t0, 0], ranges[t1 - 1, 1]
        if p1 == p0:
            continue
        G = t1 - t0
        tiles = np.repeat(np.arange(t0, t1), lens)
        inside = _inside(img, np.arange(t0, t1))
        g = ids[p0:p1]
        lnw, spos = _pixel_terms(img, tiles, g)
        seg_starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        seg_id = np.repeat(np.arange(G), lens)
        k_rel = np.arange(p1 - p0) - seg_starts[seg_id]
        valid = (lnw >= ln_min) & spos & inside[seg_id]
        logt = _log_t(lnw, valid, ALPHA_MAX_GSPLAT, seg_id, seg_starts)
        s = _seg_first_stop(logt <= math.log(T_STOP), seg_starts, lens)  # stop position; L = never
        s_pair = s[seg_id]  # [P, 256]
        live = k_rel[:, None] <= s_pair  # lane still iterating at this position
        # forward: warp runs positions 0..E_w, E_w = max over inside lanes min(s_p, L - 1)
        lane_end = np.where(inside, np.minimum(s, lens[:, None] - 1), -1)  # [G, 256]
        E = lane_end.reshape(G, GS_WARPS, 32).max(axis=2)  # [G, 8]
        in_range = k_rel[:, None] <= E[seg_id]  # [P, 8]
        full_w = (valid & live).reshape(-1, GS_WARPS, 32).any(axis=2) & in_range
        ff = _segment_sum(full_w.astype(np.int64), seg_starts, lens)
        st.fwd_full[t0:t1] = ff
        st.fwd_cheap[t0:t1] = (E + 1) - ff
        smax = np.where(inside, s, -1).max(axis=1)  # [G]; L = some pixel never stops
        nb = -(-lens // GS_BATCH)
        st.fwd_batches[t0:t1] = np.where(lens > 0, np.minimum(nb, smax // GS_BATCH + 1), 0)
        # backward: last contributor per pixel, warp runs positions 0..max lane last_id
        contrib = valid & (k_rel[:, None] < s_pair)
        last = np.where(contrib, k_rel[:, None], -1)
        bf = np.full((G, TILE * TILE), -1, np.int64)
        nz = lens > 0
        bf[nz] = np.maximum.reduceat(last, seg_starts[nz], axis=0)
        wbf = bf.reshape(G, GS_WARPS, 32).max(axis=2)  # [G, 8]
        bf_pair = bf[seg_id]
        run_b = k_rel[:, None] <= wbf[seg_id]  # [P, 8]
        bfull = contrib.reshape(-1, GS_WARPS, 32).any(axis=2) & run_b
        evaluates = (inside[seg_id] & (k_rel[:, None] <= bf_pair)).reshape(-1, GS_WARPS, 32).any(axis=2)
        bcheap = evaluates & ~bfull & run_b
        bnone = run_b & ~evaluates
        st.bwd_full[t0:t1] = _segment_sum(bfull.astype(np.int64), seg_starts, lens)
        st.bwd_cheap[t0:t1] = _segment_sum(bcheap.astype(np.int64), seg_starts, lens)
        st.bwd_none[t0:t1] = _segment_sum(bnone.astype(np.int64), seg_starts, lens)
        st.bwd_batches[t0:t1] = nb
        # serial length of each block: per batch, staging + the slowest warp
        fcost = np.where(full_w, c_ff, np.where(in_range, c_fc, 0.0))  # [P, 8]
        bcost = np.where(bfull, c_bf, np.where(bcheap, c_bc, np.where(bnone, c_bn, 0.0)))
        bstarts, btile = [], []
        for j in range(G):
            for b in range(int(nb[j])):
                bstarts.append(seg_starts[j] + b * GS_BATCH)
                btile.append(j)
        bstarts = np.asarray(bstarts, np.int64)
        btile = np.asarray(btile, np.int64)
        fb = np.add.reduceat(fcost, bstarts, axis=0).max(axis=1)
        bb = np.add.reduceat(bcost, bstarts, axis=0).max(axis=1)
        bidx = (bstarts - seg_starts[btile]) // GS_BATCH
        ovh_f = counts.fwd_batch + lc["gs_batch"]
        ovh_b = counts.bwd_batch + lc["gs_batch"]
        run_f = bidx < st.fwd_batches[t0:t1][btile]
        st.fwd_serial[t0:t1] = np.bincount(btile, weights=np.where(run_f, fb + ovh_f, 0.0), minlength=G)
        st.bwd_serial[t0:t1] = np.bincount(btile, weights=bb + ovh_b, minlength=G)
    return st


# --------------------------------------------------------------------------------- time model
def warps_per_sm(registers: int, warps_per_block: int, shared_bytes: int, blocks_in_grid: int,
                 hw: dict = H100) -> Tuple[int, str]:
    """Resident warps per SM and the limiting resource (see the module docstring)."""
    per_warp = -(-registers * 32 // hw["reg_alloc_unit"]) * hw["reg_alloc_unit"]
    lim = {
        "registers": hw["regs_per_sm"] // (per_warp * warps_per_block),
        "blocks": hw["max_blocks_per_sm"],
        "threads": hw["max_warps_per_sm"] // warps_per_block,
        "shared": hw["smem_per_sm"] // (shared_bytes + hw["smem_reserved_per_block"]),
        "grid": max(1, -(-blocks_in_grid // hw["sms"])),
    }
    why = min(lim, key=lambda k: lim[k])
    return lim[why] * warps_per_block, why


def fluid_schedule(serial: np.ndarray, instr: np.ndarray, slots: int, capacity: float) -> float:
    """Makespan (cycles) of programs dispatched in order onto ``slots`` concurrent slots (each
    starts when the first running one finishes: the block scheduler), sharing ``capacity``
    warp-instructions per cycle. A program alone needs ``serial[i]`` cycles and issues
    ``instr[i]`` instructions in them; while the running programs together would issue more
    than ``capacity`` per cycle, all slow down by the same factor ``capacity / demand``.
    ``instr = 0`` gives plain greedy list scheduling."""
    import heapq

    n = len(serial)
    if n == 0:
        return 0.0
    q = np.divide(instr, serial, out=np.zeros(n), where=serial > 0).tolist()
    ser = serial.tolist()
    heap: list = []  # (virtual finish time, program)
    demand = 0.0
    t = v = 0.0
    nxt = 0
    while nxt < n and nxt < slots:
        heapq.heappush(heap, (ser[nxt], nxt))
        demand += q[nxt]
        nxt += 1
    while heap:
        vf, i = heapq.heappop(heap)
        rate = min(1.0, capacity / demand) if demand > 0 else 1.0
        t += (vf - v) / rate
        v = vf
        demand -= q[i]
        if nxt < n:
            heapq.heappush(heap, (v + ser[nxt], nxt))
            demand += q[nxt]
            nxt += 1
        if not heap:
            break
        if demand < 1e-9:
            demand = 0.0
    return t


def estimate_time(serial: np.ndarray, instr: np.ndarray, warps_sm: int, warps_per_block: int,
                  warps_per_program: Optional[float] = None, hw: dict = H100) -> dict:
    """Estimated kernel time (seconds) from the replayed programs; see the module docstring.

    ``serial``: each program's serial length in cycles (a multi-warp program: its slowest
    warp), ``instr``: its warp-instructions (all warps), both in dispatch order;
    ``warps_per_program``: warps each doing ``serial`` on average (default: all of the block).
    """
    f = hw["clock_hz"]
    slots = hw["sms"] * hw["schedulers_per_sm"]
    w = warps_sm / hw["schedulers_per_sm"]
    wpp = warps_per_block if warps_per_program is None else warps_per_program
    issue_slots = float(instr.sum())
    t_issue = issue_slots / slots / f
    t_lat = float(serial.sum()) * wpp / (slots * w) / f
    m = int(hw["sms"] * warps_sm // warps_per_block)
    makespan = fluid_schedule(serial, instr, m, float(slots)) / f
    p_max = float(serial.max(initial=0.0)) / f
    t = max(t_issue, t_lat, makespan)
    return {"issue_slots": issue_slots, "t_issue_s": t_issue, "t_latency_s": t_lat,
            "t_longest_program_s": p_max, "t_schedule_s": makespan, "t_s": t,
            "t_graham_upper_s": max(t_issue, t_lat) + (1.0 - 1.0 / max(m, 1)) * p_max,
            "t_tail_s": t - max(t_issue, t_lat), "warps_per_sm": warps_sm, "concurrent_programs": m,
            "bound": "issue" if t_issue >= t_lat else "latency"}


# --------------------------------------------------------------------------------- per launch
@dataclass
class Launch:
    images: List[Image]
    mode: str
    C: int


def _our_kernel_totals(kern: OurKernel, stats: List[OurProgramStats], backward: bool,
                       lc: Optional[dict] = None) -> dict:
    lc = LATENCY_CHAIN if lc is None else lc
    nw = kern.num_warps
    iters = np.concatenate([s.iters for s in stats])
    full = np.concatenate([s.bwd_full for s in stats]) if backward else iters
    cheap = iters - full
    cb = kern.channel_blocks
    instr = full * kern.per_iter_full + cheap * kern.per_iter_cheap  # per program, all its warps
    # per warp of a program: its share of the instructions plus the exposed latency
    if backward:
        ser = full * (kern.per_iter_full / nw + lc["ours_bwd_full"]) + cheap * (kern.per_iter_cheap / nw + lc["ours_bwd_cheap"])
    else:
        ser = iters * (kern.per_iter_full / nw + lc["ours_fwd"])
    n_prog = len(iters) * cb
    wsm, why = warps_per_sm(kern.registers, nw, 0, n_prog)
    # dispatch order: grid dimension 0 (batch, tile, sub-block) fastest, channel blocks in dim 1
    est = estimate_time(np.tile(ser.astype(np.float64), cb), np.tile(instr.astype(np.float64), cb), wsm, nw)
    i = int(np.argmax(iters)) if len(iters) else 0
    return {"programs": int(n_prog), "iterations": int(iters.sum()) * cb,
            "full_iterations": int(full.sum()) * cb, "cheap_iterations": int(cheap.sum()) * cb,
            "longest_program_iterations": int(iters.max(initial=0)),
            "longest_program_list": int(np.concatenate([s.L for s in stats])[i]) if len(iters) else 0,
            "occupancy_limit": why, **est}


def gsplat_dispatch_order(images: int, tiles: int, tiles_x: int) -> np.ndarray:
    """gsplat's grid is ``(I, tiles_y, tiles_x)`` and blocks are dispatched x fastest: image,
    then tile row, then tile column. Returns indices into image-major, row-major tile arrays."""
    ty, tx = np.meshgrid(np.arange(tiles // tiles_x), np.arange(tiles_x), indexing="ij")
    i = np.arange(images)
    idx = i[None, None, :] * tiles + (ty * tiles_x + tx)[:, :, None]  # [ty, tx, I]
    return idx.transpose(1, 0, 2).reshape(-1)


def _gs_totals(gc: GsplatCounts, st: List[GsBlockStats], backward: bool) -> dict:
    lc = LATENCY_CHAIN
    cat = lambda a: np.concatenate([getattr(s, a) for s in st])  # noqa: E731
    if backward:
        full, cheap, none = cat("bwd_full"), cat("bwd_cheap"), cat("bwd_none")
        batches, serial = cat("bwd_batches"), cat("bwd_serial")
        instr = (full * gc.bwd_full + cheap * gc.bwd_cheap + none * gc.bwd_none).sum(axis=1) \
            + batches * GS_WARPS * gc.bwd_batch
        ser_w = full * (gc.bwd_full + lc["gs_bwd_full"]) + cheap * (gc.bwd_cheap + lc["gs_bwd_cheap"]) \
            + none * (gc.bwd_none + lc["gs_bwd_none"]) + batches[:, None] * (gc.bwd_batch + lc["gs_batch"])
        regs, smem = gc.bwd_registers, gc.bwd_shared
    else:
        full, cheap = cat("fwd_full"), cat("fwd_cheap")
        none = np.zeros_like(full)
        batches, serial = cat("fwd_batches"), cat("fwd_serial")
        instr = (full * gc.fwd_full + cheap * gc.fwd_cheap).sum(axis=1) + batches * GS_WARPS * gc.fwd_batch
        ser_w = full * (gc.fwd_full + lc["gs_fwd_full"]) + cheap * (gc.fwd_cheap + lc["gs_fwd_cheap"]) \
            + batches[:, None] * (gc.fwd_batch + lc["gs_batch"])
        regs, smem = gc.fwd_registers, gc.fwd_shared
    wsm, why = warps_per_sm(regs, GS_WARPS, smem, len(batches))
    order = gsplat_dispatch_order(len(st), len(st[0].L), st[0].tiles_x) if st else np.zeros(0, np.int64)
    # a block's warps run side by side: the latency bound uses their mean serial length
    wpp = float(ser_w.sum()) / max(float(serial.sum()), 1e-30)
    est = estimate_time(serial[order], instr[order].astype(np.float64), wsm, GS_WARPS, warps_per_program=wpp)
    per_block = (full + cheap + none).max(axis=1)
    i = int(np.argmax(serial)) if len(serial) else 0
    return {"programs": int(len(batches)), "iterations": int((full + cheap + none).sum()),
            "full_iterations": int(full.sum()), "cheap_iterations": int(cheap.sum()),
            "no_valid_lane_iterations": int(none.sum()), "batches": int(batches.sum()),
            "longest_program_iterations": int(per_block.max(initial=0)),
            "longest_program_list": int(cat("L")[i]) if len(serial) else 0,
            "occupancy_limit": why, **est}


def model_launch(launch: Launch, ours: Dict[str, OurKernel], ours_alpha3: Dict[str, OurKernel],
                 gc: GsplatCounts, max_pairs: int = 1 << 15,
                 ours_alpha3_tile8: Optional[Dict[str, OurKernel]] = None) -> dict:
    """Replay one launch (all its images) for ours (its mode and C), ours in alpha mode at C = 3
    (like for like with gsplat) and gsplat; returns the per-kernel totals."""
    ours_f, ours_b, a3_f, a3_b, gs, t8_f, t8_b = [], [], [], [], [], [], []
    pairs_ours = pairs_gs = 0
    for img in launch.images:
        r, ids = our_tile_lists(img)
        pairs_ours += len(ids)
        f, b = replay_ours(img, r, ids, launch.mode, ours["fwd"].block_p, ours["bwd"].block_p, max_pairs)
        ours_f.append(f)
        ours_b.append(b)
        if launch.mode == "alpha" and ours_alpha3 is ours:
            a3_f.append(f)
            a3_b.append(b)
        else:
            f3, b3 = replay_ours(img, r, ids, "alpha", ours_alpha3["fwd"].block_p, ours_alpha3["bwd"].block_p, max_pairs)
            a3_f.append(f3)
            a3_b.append(b3)
        if ours_alpha3_tile8 is not None:
            r8, ids8 = our_tile_lists(img, 8)
            f8, b8 = replay_ours(img, r8, ids8, "alpha", ours_alpha3_tile8["fwd"].block_p,
                                 ours_alpha3_tile8["bwd"].block_p, max_pairs, tile=8)
            t8_f.append(f8)
            t8_b.append(b8)
        rg, idg = gsplat_tile_lists(img)
        pairs_gs += len(idg)
        gs.append(replay_gsplat(img, rg, idg, gc, max_pairs))
    out = {
        "pairs_ours": pairs_ours, "pairs_gsplat": pairs_gs,
        "ours": {"fwd": _our_kernel_totals(ours["fwd"], ours_f, False),
                 "bwd": _our_kernel_totals(ours["bwd"], ours_b, True)},
        "ours_alpha_c3": {"fwd": _our_kernel_totals(ours_alpha3["fwd"], a3_f, False),
                          "bwd": _our_kernel_totals(ours_alpha3["bwd"], a3_b, True)},
        "ours_alpha_c3_prefetched": {
            "fwd": _our_kernel_totals(ours_alpha3["fwd"], a3_f, False, LATENCY_CHAIN_PREFETCHED),
            "bwd": _our_kernel_totals(ours_alpha3["bwd"], a3_b, True, LATENCY_CHAIN_PREFETCHED)},
        "gsplat": {"fwd": _gs_totals(gc, gs, False), "bwd": _gs_totals(gc, gs, True)},
    }
    if ours_alpha3_tile8 is not None:
        k8 = ours_alpha3_tile8
        out["ours_alpha_c3_tile8"] = {"fwd": _our_kernel_totals(k8["fwd"], t8_f, False),
                                      "bwd": _our_kernel_totals(k8["bwd"], t8_b, True)}
        out["ours_alpha_c3_tile8_prefetched"] = {
            "fwd": _our_kernel_totals(k8["fwd"], t8_f, False, LATENCY_CHAIN_PREFETCHED),
            "bwd": _our_kernel_totals(k8["bwd"], t8_b, True, LATENCY_CHAIN_PREFETCHED)}
    return out


#: Result columns: ours at the scene's mode and C, ours alpha C = 3 (like for like with gsplat),
#: what-ifs (prefetched load chain; the shipped tile_size = 8 kernels), gsplat.
WHO = ("ours", "ours_alpha_c3", "ours_alpha_c3_prefetched", "ours_alpha_c3_tile8",
       "ours_alpha_c3_tile8_prefetched", "gsplat")


def _sum_launches(results: List[dict]) -> dict:
    """Totals over launches run one after another: times and counts add, maxima take the max."""
    out = {"pairs_ours": sum(r["pairs_ours"] for r in results),
           "pairs_gsplat": sum(r["pairs_gsplat"] for r in results)}
    for who in WHO:
        if who not in results[0]:
            continue
        out[who] = {}
        for k in ("fwd", "bwd"):
            rs = [r[who][k] for r in results]
            agg = {}
            for key, v in rs[0].items():
                if key.startswith("longest") or key in ("warps_per_sm", "t_longest_program_s", "concurrent_programs"):
                    agg[key] = max(r[key] for r in rs)
                elif isinstance(v, (int, float)) and not isinstance(v, bool):
                    agg[key] = sum(r[key] for r in rs)
                else:
                    agg[key] = sorted({r[key] for r in rs}) if len(rs) > 1 else v
            out[who][k] = agg
    return out


# ------------------------------------------------------------------------------------- scenes
def _to_image(means, conics, opac, W, H) -> Image:
    return Image(np.asarray(means, np.float64), np.asarray(conics, np.float64),
                 np.asarray(opac, np.float64), int(W), int(H))


def random_scene(W: int, H: int, N: int, seed: int, sigma_range=(1.0, 6.0),
                 opacity_range=(0.05, 0.99)) -> Image:
    """Seeded random scene: means uniform over the image; principal standard deviations
    log-uniform in ``sigma_range`` pixels (independently), rotation uniform in [0, pi),
    opacities uniform in ``opacity_range``."""
    rng = np.random.default_rng(seed)
    m = rng.uniform([0, 0], [W, H], size=(N, 2))
    s = np.exp(rng.uniform(math.log(sigma_range[0]), math.log(sigma_range[1]), size=(N, 2)))
    th = rng.uniform(0, math.pi, size=N)
    c, sn = np.cos(th), np.sin(th)
    # covariance R diag(s^2) R^T, conic = its inverse
    sxx = c * c * s[:, 0] ** 2 + sn * sn * s[:, 1] ** 2
    syy = sn * sn * s[:, 0] ** 2 + c * c * s[:, 1] ** 2
    sxy = c * sn * (s[:, 0] ** 2 - s[:, 1] ** 2)
    det = sxx * syy - sxy * sxy
    conics = np.stack([syy / det, -sxy / det, sxx / det], 1)
    o = rng.uniform(*opacity_range, size=N)
    return _to_image(m, conics, o, W, H)


def _field_image(field, W, H) -> Image:
    m, q = field.to_pixels(W, H)
    return _to_image(m.reshape(-1, 2).numpy(), q.reshape(-1, 3).numpy(), field.opacities.reshape(-1).numpy(), W, H)


def set14_launches(model_name: str, data: Path) -> Tuple[List[Launch], str, int, List[str]]:
    from gsplat2d.sr import load_model
    from gsplat2d.cli.common import load_image_file
    from gsplat2d.sr.rendering import encode_image

    model = load_model(model_name)
    files = sorted((data / "Set14" / "LR_bicubic" / "X4").glob("*.png"))
    if not files:
        raise FileNotFoundError(f"no Set14 x4 LR images under {data}")
    launches, mode, C = [], None, None
    for f in files:
        lr = load_image_file(f)
        fld = encode_image(model, lr)
        W, H = lr.shape[2] * 4, lr.shape[1] * 4
        mode, C = fld.mode, fld.channels
        launches.append(Launch([_field_image(fld, W, H)], fld.mode, fld.channels))
    return launches, mode, C, [f.name for f in files]


def train_batch_launch(data: Path, seed: int = 0, batch: int = 16, patch: int = 48) -> Tuple[Launch, dict]:
    """One SR training step's render: ``batch`` crops at one scale drawn uniformly from [1, 4]
    (train/data.py draws one scale per batch), seeded; HR crops from the Kodak images (the
    training set is not shipped); the default (feature) model's field at the HR crop size."""
    from gsplat2d.train.data import CustomImageDataset
    from gsplat2d.sr import load_model

    rng = np.random.default_rng(seed)
    scale = float(rng.uniform(1.0, 4.0))
    ds = CustomImageDataset(str(data / "Kodak"), patch_size=patch, scale_range=(1.0, 4.0))
    items = [ds[(int(rng.integers(len(ds))), scale, int(rng.integers(2**31)))] for _ in range(batch)]
    lr = torch.stack([it["lr"] for it in items])
    hr_side = items[0]["hr"].shape[-1]
    model = load_model("feature")
    with torch.inference_mode():
        fld = model.encode(lr)
    imgs = []
    for i in range(batch):
        sub = fld._like(fld.means[i], fld.covariances[i], fld.colors[i], fld.opacities[i])
        imgs.append(_field_image(sub, hr_side, hr_side))
    return Launch(imgs, fld.mode, fld.channels), {"scale": scale, "hr_side": hr_side, "lr_side": patch}


def kodak_fit_launch(cache: Path, data: Path) -> Tuple[Launch, dict]:
    """kodim23 (768 x 512) fitted in alpha mode: N = 20000, 300 steps, seed 0, other settings the
    FitConfig defaults. Cached in ``cache`` (fitting takes minutes on a CPU)."""
    from gsplat2d import Gaussians2D

    path = cache / "kodim23-alpha-N20000-300steps.g2d"
    if not path.exists():
        from gsplat2d.fitting.fit import fit_image

        r = fit_image(str(data / "Kodak" / "kodim23.png"), num_gaussians=20000, steps=300, mode="alpha", seed=0)
        cache.mkdir(parents=True, exist_ok=True)
        r.gaussians.save(str(path))
    fld = Gaussians2D.load(str(path))
    return Launch([_field_image(fld, 768, 512)], "alpha", 3), {"file": path.name}


def single_512_launch(data: Path) -> Tuple[Launch, dict]:
    """The default (feature) model's x4 field of the 128 x 128 centre crop of Set14 baboon's x2 LR
    image (250 x 240; the x4 LR image is smaller than the crop), rendered at 512 x 512."""
    from gsplat2d.sr import load_model
    from gsplat2d.cli.common import load_image_file
    from gsplat2d.sr.rendering import encode_image

    lr = load_image_file(data / "Set14" / "LR_bicubic" / "X2" / "baboonx2.png")
    h, w = lr.shape[1:]
    if h < 128 or w < 128:
        raise ValueError(f"baboonx2.png is {w}x{h}, smaller than the 128 x 128 crop")
    y0, x0 = (h - 128) // 2, (w - 128) // 2
    lr = lr[:, y0:y0 + 128, x0:x0 + 128].contiguous()
    fld = encode_image(load_model("feature"), lr)
    return Launch([_field_image(fld, 512, 512)], fld.mode, fld.channels), {"crop": [x0, y0, 128, 128]}


SCENES = ("set14-x4-feature", "set14-x4-colour", "kodak-fit-alpha", "train-batch-16", "random-1080p-100k",
          "random-4k-500k", "single-512")


def build_scene(name: str, data: Path, cache: Path) -> Tuple[List[Launch], dict]:
    if name in ("set14-x4-feature", "set14-x4-colour"):
        ls, mode, C, files = set14_launches("feature" if name.endswith("feature") else "colour", data)
        return ls, {"what": f"{len(files)} Set14 x4 LR images, shipped {name.split('-')[-1]} model, "
                    "one launch per image (times add)", "mode": mode, "C": C}
    if name == "kodak-fit-alpha":
        l, info = kodak_fit_launch(cache, data)
        return [l], {"what": "kodim23 768x512 fitted in alpha mode (N=20000, 300 steps, seed 0)", "mode": "alpha", "C": 3, **info}
    if name == "train-batch-16":
        l, info = train_batch_launch(data)
        return [l], {"what": f"SR training batch of 16 crops (LR 48, scale {info['scale']:.3f}, HR {info['hr_side']}), "
                     "feature model, seed 0, Kodak HR images", "mode": l.mode, "C": l.C, **info}
    if name == "random-1080p-100k":
        return [Launch([random_scene(1920, 1080, 100_000, 1)], "alpha", 3)], {
            "what": "1920x1080, 100k random Gaussians, seed 1 (sigma log-uniform 1-6 px, opacity U(0.05, 0.99))",
            "mode": "alpha", "C": 3}
    if name == "random-4k-500k":
        return [Launch([random_scene(3840, 2160, 500_000, 2)], "alpha", 3)], {
            "what": "3840x2160, 500k random Gaussians, seed 2 (sigma log-uniform 1-6 px, opacity U(0.05, 0.99))",
            "mode": "alpha", "C": 3}
    if name == "single-512":
        l, info = single_512_launch(data)
        return [l], {"what": "512x512: feature model x4 of the 128x128 centre crop of Set14 baboon's x2 LR image",
                     "mode": l.mode, "C": l.C, **info}
    raise KeyError(name)


def model_scene(launches: List[Launch], our_counts=OUR_COUNTS, gs_counts=GSPLAT_COUNTS) -> dict:
    gc = load_gsplat_counts(gs_counts)
    a3 = load_our_counts("alpha", 3, our_counts)
    a8 = load_our_counts("alpha", 3, our_counts, tile=8)
    res = []
    for l in launches:
        ours = a3 if (l.mode == "alpha" and l.C == 3) else load_our_counts(l.mode, l.C, our_counts)
        res.append(model_launch(l, ours, a3, gc, ours_alpha3_tile8=a8))
    return _sum_launches(res)


# ------------------------------------------------------------------------------------- output
def _fmt_t(s: float) -> str:
    return f"{s * 1e6:.1f}"


def _ratio(r: dict, who: str) -> Tuple[float, float, float]:
    o, g = r[who], r["gsplat"]
    return (o["fwd"]["t_s"] / g["fwd"]["t_s"], o["bwd"]["t_s"] / g["bwd"]["t_s"],
            (o["fwd"]["t_s"] + o["bwd"]["t_s"]) / (g["fwd"]["t_s"] + g["bwd"]["t_s"]))


def table_rows(results: Dict[str, dict], who: str = "ours_alpha_c3") -> List[str]:
    """One row per scene: ``who`` (ours: ``ours_alpha_c3`` like for like with gsplat, ``ours`` at
    the scene's own mode and C, ``ours_alpha_c3_prefetched``) next to gsplat 1.5.3."""
    rows = ["| scene | ours: mode, C | pairs ours / gsplat | ours fwd iterations; bwd full / cheap; longest program | "
            "gsplat fwd full / cheap; bwd full / cheap / no-lane; longest block | issue slots fwd, M: ours / gsplat | "
            "issue slots bwd, M: ours / gsplat | fwd us: ours / gsplat | bwd us: ours / gsplat | ratio fwd / bwd / fwd+bwd |",
            "|" + "---|" * 10]
    for name, r in results.items():
        o, g = r[who], r["gsplat"]
        mode, C = ("alpha", 3) if who.startswith("ours_alpha_c3") else (r["info"]["mode"], r["info"]["C"])
        rf, rb, rt = _ratio(r, who)
        rows.append(
            f"| {name} | {mode}, {C} | {r['pairs_ours']:,} / {r['pairs_gsplat']:,} | "
            f"{o['fwd']['iterations']:,}; {o['bwd']['full_iterations']:,} / {o['bwd']['cheap_iterations']:,}; "
            f"{o['fwd']['longest_program_iterations']} | "
            f"{g['fwd']['full_iterations']:,} / {g['fwd']['cheap_iterations']:,}; {g['bwd']['full_iterations']:,} / "
            f"{g['bwd']['cheap_iterations']:,} / {g['bwd']['no_valid_lane_iterations']:,}; {g['fwd']['longest_program_iterations']} | "
            f"{o['fwd']['issue_slots'] / 1e6:.1f} / {g['fwd']['issue_slots'] / 1e6:.1f} | "
            f"{o['bwd']['issue_slots'] / 1e6:.1f} / {g['bwd']['issue_slots'] / 1e6:.1f} | "
            f"{_fmt_t(o['fwd']['t_s'])} / {_fmt_t(g['fwd']['t_s'])} | {_fmt_t(o['bwd']['t_s'])} / {_fmt_t(g['bwd']['t_s'])} | "
            f"{rf:.2f} / {rb:.2f} / **{rt:.2f}** |")
    return rows


DESIGN_NOTE = (
    "**Cause and what the design would need** (read with the per-scene lines above). Our kernels run one "
    "one-warp program per 16 x 16 tile (8 pixels per thread) that walks the tile's whole list serially, and each "
    "iteration waits on two dependent loads (the id, then the record it points to: about 300 cycles with the "
    "assumed latencies) besides issuing its own instructions. gsplat runs 8 warps per tile, each walking the list "
    "for 32 pixels out of shared memory. On large scenes (1080p, 4K) ours is issue-bound and issues about half of "
    "gsplat's instructions, so the ratio is about 0.5. The scenes above 0.6 are small launches (Set14 x4 renders of "
    "0.08-0.41 MP, the 768 x 512 Kodak fit, 16 training crops of 140 x 140, one 512 x 512 image): the grid holds "
    "only a few hundred to about two thousand programs, so the GPU runs few warps per SM (grid-limited, where "
    "gsplat's 8-warp blocks fill 40) and the per-iteration latency and the heaviest tiles' serial length (the "
    "tail) set the time, not the instruction count. The design would need shorter serial paths "
    "and more warps in flight on small grids: the load chain off the critical path (prefetch the next id and "
    "record; `LATENCY_CHAIN_PREFETCHED`) and more, smaller programs per tile (the shipped tile_size = 8 kernels are "
    "one existing instance); the what-if columns estimate each and both, from the same replay.")


def short_rows(results: Dict[str, dict]) -> List[str]:
    """The summary table (README): ours alpha C = 3 vs gsplat, and the what-if ratios."""
    rows = ["| scene | pairs ours / gsplat | longest program, iterations: ours / gsplat | fwd us: ours / gsplat | "
            "bwd us: ours / gsplat | issue slots fwd+bwd, M: ours / gsplat | ratio fwd+bwd | what-if ratios: "
            "prefetched / tile 8 / both |", "|" + "---|" * 8]
    for name, r in results.items():
        o, g = r["ours_alpha_c3"], r["gsplat"]
        wi = [f"{_ratio(r, w)[2]:.2f}" if w in r else "-" for w in
              ("ours_alpha_c3_prefetched", "ours_alpha_c3_tile8", "ours_alpha_c3_tile8_prefetched")]
        rows.append(
            f"| {name} | {r['pairs_ours']:,} / {r['pairs_gsplat']:,} | {o['fwd']['longest_program_iterations']} / "
            f"{g['fwd']['longest_program_iterations']} | {_fmt_t(o['fwd']['t_s'])} / {_fmt_t(g['fwd']['t_s'])} | "
            f"{_fmt_t(o['bwd']['t_s'])} / {_fmt_t(g['bwd']['t_s'])} | "
            f"{(o['fwd']['issue_slots'] + o['bwd']['issue_slots']) / 1e6:.0f} / "
            f"{(g['fwd']['issue_slots'] + g['bwd']['issue_slots']) / 1e6:.0f} | **{_ratio(r, 'ours_alpha_c3')[2]:.2f}** | "
            f"{' / '.join(wi)} |")
    return rows


def notes(results: Dict[str, dict], limit: float = 0.6) -> List[str]:
    """A line per scene where ours (like for like) is above ``limit`` x gsplat: where the time goes."""
    out = []
    for name, r in results.items():
        rt = _ratio(r, "ours_alpha_c3")[2]
        if rt <= limit:
            continue
        parts = []
        j = lambda x: x if isinstance(x, str) else "/".join(x)  # noqa: E731 (several launches)
        for k in ("fwd", "bwd"):
            o, g = r["ours_alpha_c3"][k], r["gsplat"][k]
            parts.append(
                f"{k}: ours {_fmt_t(o['t_s'])} us = {j(o['bound'])}-bound bulk {_fmt_t(max(o['t_issue_s'], o['t_latency_s']))} us "
                f"(issue {_fmt_t(o['t_issue_s'])}, latency {_fmt_t(o['t_latency_s'])}) + tail {_fmt_t(o['t_tail_s'])} us, "
                f"{o['warps_per_sm']} warps/SM ({j(o['occupancy_limit'])}-limited), longest program {o['longest_program_iterations']} "
                f"iterations ({_fmt_t(o['t_longest_program_s'])} us serial); gsplat {_fmt_t(g['t_s'])} us "
                f"(issue {_fmt_t(g['t_issue_s'])}, tail {_fmt_t(g['t_tail_s'])}, {g['warps_per_sm']} warps/SM)")
        wi = lambda who: _ratio(r, who)[2] if who in r else float("nan")  # noqa: E731
        out.append(f"* **{name}**: ratio {rt:.2f} > {limit}. " + "; ".join(parts)
                   + f". What-ifs (same replay): load chain hidden (prefetched, `LATENCY_CHAIN_PREFETCHED`) "
                   f"{wi('ours_alpha_c3_prefetched'):.2f}; the shipped tile_size = 8 kernels (4x the programs, 64 pixels "
                   f"each) {wi('ours_alpha_c3_tile8'):.2f}; both {wi('ours_alpha_c3_tile8_prefetched'):.2f}.")
    return out


def detail_rows(results: Dict[str, dict]) -> List[str]:
    rows = ["| scene | kernel | who | warps/SM (limit) | bound | t_issue us | t_latency us | tail us | estimate us | longest program: iterations (list) |",
            "|" + "---|" * 10]
    for name, r in results.items():
        for who in WHO:
            for k in ("fwd", "bwd"):
                if who not in r:
                    continue
                x = r[who][k]
                lim = x["occupancy_limit"] if isinstance(x["occupancy_limit"], str) else "/".join(x["occupancy_limit"])
                bound = x["bound"] if isinstance(x["bound"], str) else "/".join(x["bound"])
                rows.append(f"| {name} | {k} | {who} | {x['warps_per_sm']} ({lim}) | {bound} | "
                            f"{_fmt_t(x['t_issue_s'])} | {_fmt_t(x['t_latency_s'])} | {_fmt_t(x['t_tail_s'])} | "
                            f"{_fmt_t(x['t_s'])} | {x['longest_program_iterations']} ({x['longest_program_list']}) |")
    return rows


def environment() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"replay_machine": f"{cpu}, {os.cpu_count()} CPUs visible", "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__,
            "counts_ours": [str(x.relative_to(REPO)) for x in OUR_COUNTS],
            "counts_gsplat": str(GSPLAT_COUNTS.relative_to(REPO)),
            "hardware_model": H100, "latency_cycles": LATENCY, "latency_chain_cycles": LATENCY_CHAIN}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/workload.py",
                                description="GPU-free workload model: ESTIMATED H100 rasterizer time, ours vs gsplat 1.5.3")
    p.add_argument("--scenes", nargs="+", default=list(SCENES), choices=SCENES)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder with Set14/ and Kodak/")
    p.add_argument("--cache", default=os.environ.get("GSPLAT2D_WORKLOAD_CACHE", str(Path.home() / ".cache" / "gsplat2d-workload")),
                   help="where the fitted Kodak field is kept")
    p.add_argument("--out", default=str(RESULT_STEM), help="output path without extension (.json and .md)")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--reuse", action="store_true", help="reuse scene results saved in --cache by an earlier run "
                   "(same counts files; replays nothing for those scenes)")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    data, cache = Path(args.data), Path(args.cache)
    results = {}
    for name in args.scenes:
        saved = cache / f"scene-{name}.json"
        if args.reuse and saved.exists():
            results[name] = json.loads(saved.read_text())
            print(f"[{name}] reused {saved}", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        launches, info = build_scene(name, data, cache)
        t1 = time.perf_counter()
        r = model_scene(launches)
        r["info"] = {**info, "launches": len(launches), "images": sum(len(l.images) for l in launches),
                     "build_s": round(t1 - t0, 1), "replay_s": round(time.perf_counter() - t1, 1)}
        results[name] = r
        cache.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(r, default=float))
        print(f"[{name}] built {t1 - t0:.1f} s, replayed {time.perf_counter() - t1:.1f} s", file=sys.stderr, flush=True)
    rows = table_rows(results)
    print("ESTIMATE (workload model, not a measurement): H100 SXM, sm_90 counts")
    print("\n".join(rows))
    print()
    print("\n".join(notes(results)))
    print()
    print("\n".join(detail_rows(results)))
    if not args.no_write:
        out = Path(args.out)
        doc = {"label": "ESTIMATE: workload model (CPU replay of binning and control flow x static SASS counts x "
                        "occupancy/latency model), not a GPU measurement",
               "method": "bench/workload.py module docstring", "environment": environment(),
               "scenes": results}
        out.with_suffix(".json").write_text(json.dumps(doc, indent=1, default=float) + "\n")
        md = ["# Workload model: ESTIMATED H100 rasterizer time, ours vs gsplat 1.5.3", "",
              "**ESTIMATE**, not a measurement: binning and each kernel's control flow replayed on the CPU, multiplied by "
              "the per-path SASS counts, with the occupancy / latency / tail model of `bench/workload.py` "
              "(module docstring). Replay machine: " + doc["environment"]["replay_machine"] + ". Counts: "
              "`" + "`, `".join(doc['environment']['counts_ours']) + f"` (ours, sm_90), `{doc['environment']['counts_gsplat']}` (gsplat, sm_90, C=3).",
              "", "Re-run: `python bench/workload.py` (or `python -m gsplat2d.kernels.report --workload`).", "",
              "## Summary", "", *short_rows(results), "",
              "## Ours (alpha mode, C = 3, like for like) vs gsplat 1.5.3", "",
              "gsplat 1.5.3 has only alpha mode and its counts are for C = 3, so the criterion (ours <= 0.6 x gsplat) is "
              "judged here: our alpha C = 3 kernels replayed on each scene's Gaussians next to gsplat's on the same "
              "Gaussians. Times in microseconds, issue slots in millions of warp-instructions.", "", *rows, "",
              "### Scenes above 0.6", "", *(notes(results) or ["(none)"]), "",
              *([DESIGN_NOTE, ""] if notes(results) else []),
              "## Ours at each scene's own mode and C (sum / sum_taper, C = 16 for the feature model) vs gsplat (alpha, C = 3)", "",
              "Not like for like where C = 16: gsplat is costed at C = 3 (an underestimate of its C = 16 time).", "",
              *table_rows(results, "ours"), "",
              "## What-ifs from the same replay (ours alpha, C = 3)", "",
              "Load chain hidden: the next Gaussian's id and record prefetched (`LATENCY_CHAIN_PREFETCHED`: only the "
              "backward's vote and block sums stay exposed); not a kernel that exists yet.", "",
              *table_rows(results, "ours_alpha_c3_prefetched"), "",
              "The shipped `tile_size=8` kernels (`rasterize_*[alpha,TILE=8,C=3]`: 64 pixels per one-warp program, "
              "4x the programs, 8 x 8 tile lists from the same public binning), as compiled today:", "",
              *table_rows(results, "ours_alpha_c3_tile8"), "",
              "Both (tile_size = 8 and the load chain hidden):", "",
              *table_rows(results, "ours_alpha_c3_tile8_prefetched"), "",
              "## Time model detail", "", *detail_rows(results), "", "## Scenes", ""]
        for name, r in results.items():
            md.append(f"* **{name}**: {r['info']['what']}; launches {r['info']['launches']}, images {r['info']['images']}.")
        out.with_suffix(".md").write_text("\n".join(md) + "\n")
        print(f"wrote {out.with_suffix('.json')} and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
