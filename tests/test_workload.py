"""The workload model (bench/workload.py) on hand-made scenes whose counts are known in
closed form. Each test names the plausible wrong implementation it catches."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import bench_module

wl = bench_module("workload")


def _img(gaussians, W, H):
    """gaussians: (mx, my, sigma, opacity), isotropic."""
    m = np.array([[g[0], g[1]] for g in gaussians], np.float64)
    q = np.array([[1.0 / g[2] ** 2, 0.0, 1.0 / g[2] ** 2] for g in gaussians], np.float64)
    o = np.array([g[3] for g in gaussians], np.float64)
    return wl.Image(m, q, o, W, H)


@pytest.fixture(scope="module")
def gc():
    return wl.load_gsplat_counts()


def _replay(img, mode, gc):
    r, ids = wl.our_tile_lists(img)
    f, b = wl.replay_ours(img, r, ids, mode, 256, 256)
    rg, ig = wl.gsplat_tile_lists(img)
    return (r, ids), f, b, wl.replay_gsplat(img, rg, ig, gc)


def test_one_gaussian_covering_one_tile(gc):
    # sigma 20 px at the tile centre: every one of the 256 pixels passes (min weight 0.43).
    img = _img([(8.0, 8.0, 20.0, 0.5)], 16, 16)
    (r, ids), f, b, g = _replay(img, "sum", gc)
    assert r.tolist() == [[0, 1]] and ids.tolist() == [0]
    assert f.iters.tolist() == [1] and b.bwd_full.tolist() == [1]
    # gsplat: 8 warps, one full iteration each, one batch; wrong: counting one iteration per
    # block (not per warp) would give 1.
    assert g.fwd_full.sum() == 8 and g.fwd_cheap.sum() == 0 and g.fwd_batches.tolist() == [1]
    assert g.bwd_full.sum() == 8 and g.bwd_cheap.sum() == 0 and g.bwd_none.sum() == 0
    # issue slots: ours = per pair x BLOCK_P / 32 per program iteration (wrong: per pair x 1, or
    # x 256 = pairs per program rather than per thread); gsplat = 8 x (52 + 48 batch)
    a3 = wl.load_our_counts("alpha", 3)
    s3 = wl.load_our_counts("sum", 3)
    res = wl.model_launch(wl.Launch([img], "sum", 3), s3, a3, gc)
    assert res["ours"]["fwd"]["issue_slots"] == pytest.approx(s3["fwd"].full * 8)
    assert res["ours"]["bwd"]["issue_slots"] == pytest.approx(s3["bwd"].full * 8)
    assert res["gsplat"]["fwd"]["issue_slots"] == pytest.approx(8 * (gc.fwd_full + gc.fwd_batch))
    assert res["gsplat"]["bwd"]["issue_slots"] == pytest.approx(8 * (gc.bwd_full + gc.bwd_batch))
    assert res["pairs_ours"] == 1 and res["pairs_gsplat"] == 1


@pytest.mark.parametrize("n", [40, 300])
def test_opaque_stack_stops_after_k(gc, n):
    # n identical huge Gaussians of opacity 0.8: T after j = 0.2**j, first <= 1e-4 at j = 6.
    img = _img([(8.0, 8.0, 1e4, 0.8)] * n, 16, 16)
    _, f, b, g = _replay(img, "alpha", gc)
    # ours: leaves at the first CHUNK (16) boundary after the 6th; wrong: stopping at exactly 6,
    # or running all n
    assert f.iters.tolist() == [16]
    # backward vote: full while T before the Gaussian > 1e-4 (positions 0..5), then cheap;
    # wrong: ignoring the transmittance in the pre-test gives 16 full
    assert b.iters.tolist() == [16] and b.bwd_full.tolist() == [6]
    # gsplat forward: each lane breaks at position 5 (exclusive stop), so 6 iterations per warp
    assert g.fwd_full.tolist() == [[6] * 8] and g.fwd_cheap.sum() == 0
    # per-block exit: one batch even when the list has two; wrong: walking every batch
    assert g.fwd_batches.tolist() == [1]
    # gsplat backward: from each warp's last contributor (position 4) down: 5 full iterations;
    # every batch is staged (no early exit); wrong: starting from the end of the list (n)
    assert g.bwd_full.tolist() == [[5] * 8] and g.bwd_cheap.sum() == 0 and g.bwd_none.sum() == 0
    assert g.bwd_batches.tolist() == [math.ceil(n / 256)]


def test_sum_mode_never_stops(gc):
    # same stack in sum mode: every program runs its whole list (wrong: applying the alpha stop)
    img = _img([(8.0, 8.0, 1e4, 0.8)] * 40, 16, 16)
    _, f, b, _ = _replay(img, "sum", gc)
    assert f.iters.tolist() == [40] and b.bwd_full.tolist() == [40]


def test_cutoff_ellipse_misses_pixels_cheap_vs_full(gc):
    # A: centred on a pixel corner with reach 0.6 px: listed in tile 0 (its box holds pixel
    # centres 7.5 and 8.5) but no pixel centre (>= 0.707 px away) passes 1/255.
    # B: sigma 2 at the same point: passes on rows 2..13 only (row 1.5 and 14.5: 0.0025 < 1/255).
    sig_a = 0.6 / math.sqrt(2 * math.log(255 * 0.9))
    img = _img([(8.0, 8.0, sig_a, 0.9), (8.0, 8.0, 2.0, 0.5)], 16, 16)
    (r, ids), f, b, g = _replay(img, "sum", gc)
    assert ids.tolist() == [0, 1]
    # ours: 2 iterations, backward: A cheap, B full (wrong: every listed pair full -> 2)
    assert f.iters.tolist() == [2] and b.bwd_full.tolist() == [1]
    # gsplat forward: every warp walks both (no stop); warps 1..6 (rows 2..13) take B's full path
    assert g.fwd_full.tolist() == [[0, 1, 1, 1, 1, 1, 1, 0]]
    assert g.fwd_cheap.tolist() == [[2, 1, 1, 1, 1, 1, 1, 2]]
    # gsplat backward: warps 0 and 7 have no contributor: 0 iterations (the warp's start at its
    # largest last_id); warps 1..6: B full, A cheap (lanes evaluate, none valid, warp.any skip).
    # wrong: charging the no-contributor warps the 17-instruction path for the whole list
    assert g.bwd_full.tolist() == [[0, 1, 1, 1, 1, 1, 1, 0]]
    assert g.bwd_cheap.tolist() == [[0, 1, 1, 1, 1, 1, 1, 0]]
    assert g.bwd_none.sum() == 0


def test_gsplat_idle_warps_differ_from_ours(gc):
    # One small Gaussian on rows 0..3 of a tile. Ours: one program iteration (one warp covers the
    # tile). gsplat: all 8 warps iterate in the forward (no stop: lanes stay live), 2 of them full.
    img = _img([(8.0, 1.0, 0.7, 0.9)], 16, 16)
    _, f, b, g = _replay(img, "sum", gc)
    assert f.iters.tolist() == [1] and b.bwd_full.tolist() == [1]
    rows = [y for y in range(16) if 0.9 * math.exp(-0.5 * ((y + 0.5 - 1.0) ** 2 + 0.25) / 0.49) >= 1 / 255]
    warps = sorted({y // 2 for y in rows})
    assert warps == [0, 1]
    assert g.fwd_full.tolist() == [[1, 1, 0, 0, 0, 0, 0, 0]] and g.fwd_cheap.sum() == 6
    # backward: only the warps with a contributor iterate
    assert g.bwd_full.tolist() == [[1, 1, 0, 0, 0, 0, 0, 0]] and g.bwd_cheap.sum() == 0


def test_gsplat_tile_rule():
    # opacity 1: extent min(3.33, sqrt(2 ln 255) = 3.33) x sigma 1 -> radius ceil(3.33) = 4 px
    one = wl.gsplat_tile_lists(_img([(20.0, 20.0, 1.0, 1.0)], 64, 64))
    assert [t for t in range(16) if one[0][t, 1] > one[0][t, 0]] == [5]  # x, y in [16, 24): tile (1, 1)
    two = wl.gsplat_tile_lists(_img([(14.0, 20.0, 1.0, 1.0)], 64, 64))
    assert [t for t in range(16) if two[0][t, 1] > two[0][t, 0]] == [4, 5]  # x in [10, 18)
    # culled below 1/255 (wrong: keeping it would list it)
    assert len(wl.gsplat_tile_lists(_img([(20.0, 20.0, 1.0, 0.003)], 64, 64))[1]) == 0


def test_occupancy():
    # 110 registers -> 3584 per warp -> 18 warps (one-warp programs)
    assert wl.warps_per_sm(110, 1, 0, 10**6) == (18, "registers")
    # 45 registers, 8-warp blocks: 1536 x 8 = 12288 per block -> 5 blocks = 40 warps
    assert wl.warps_per_sm(45, 8, 8192, 10**6) == (40, "registers")
    # few registers: the 32-blocks-per-SM limit (wrong: 64 warps from the thread limit)
    assert wl.warps_per_sm(32, 1, 0, 10**6) == (32, "blocks")
    # a small grid: ceil(660 / 132) = 5
    assert wl.warps_per_sm(110, 1, 0, 660) == (5, "grid")


def test_schedule_and_tail():
    zero = np.zeros(4)
    # pure latency (no issue contention) = greedy list scheduling in dispatch order: the heavy
    # program dispatched last costs its whole length after the others (wrong: sum / slots = 3)
    assert wl.fluid_schedule(np.array([1.0, 1.0, 1.0, 3.0]), zero, 2, 1.0) == 4.0
    assert wl.fluid_schedule(np.array([3.0, 1.0, 1.0, 1.0]), zero, 2, 1.0) == 3.0
    assert wl.fluid_schedule(np.array([2.0, 5.0]), np.zeros(2), 8, 1.0) == 5.0
    # issue-bound: 4 programs issuing every cycle on 2 issue slots: 40 / 2 = 20
    assert wl.fluid_schedule(np.full(4, 10.0), np.full(4, 10.0), 4, 2.0) == pytest.approx(20.0)
    # tail: the long program runs at full speed once the short ones are done: 15 + 20 = 35 (wrong:
    # slowing it down for the whole run by the average contention, 50 / 2 = 25 or 30 x 1.5 = 45)
    assert wl.fluid_schedule(np.array([10.0, 10.0, 30.0]), np.array([10.0, 10.0, 30.0]), 3, 2.0) \
        == pytest.approx(35.0)
    # issue bound of the whole model: 528 x 1.98e9 slots per second
    n = 528 * 16  # = 132 SMs x 64 resident one-warp programs: all start at once
    per = 1.98e6 * 528 / n  # each issues every cycle of its serial length
    est = wl.estimate_time(np.full(n, per), np.full(n, per), 64, 1)
    assert est["bound"] == "issue" and est["t_s"] == pytest.approx(1e-3, rel=1e-3)


def test_gsplat_dispatch_order():
    # grid (I, tiles_y, tiles_x), x fastest: image, then tile row, then tile column
    assert wl.gsplat_dispatch_order(2, 6, 3).tolist() == [0, 6, 3, 9, 1, 7, 4, 10, 2, 8, 5, 11]


def test_tile8_programs():
    # the shipped tile_size = 8 kernels: 4 programs of 64 pixels on a 16 x 16 image, one
    # iteration each (wrong: replaying 16 x 16 pixel blocks with 8 x 8 tile lists)
    img = _img([(8.0, 8.0, 20.0, 0.5)], 16, 16)
    r, ids = wl.our_tile_lists(img, 8)
    f, b = wl.replay_ours(img, r, ids, "alpha", 64, 64, tile=8)
    assert len(r) == 4 and f.iters.tolist() == [1, 1, 1, 1] and b.bwd_full.tolist() == [1, 1, 1, 1]
