"""Binning stages alone (docs/design.md stages 1-3), torch mirror vs Triton launchers.

Stage functions see flattened batches: means [B, N, 2], conics [B, N, 3], opacities [B, N].
"""

import math

import pytest
import torch

from conftest import DEGENERATE_KINDS, make_degenerate, make_scene, requires_numba, requires_triton
from gsplat2d.reference import _pixel_terms

from gsplat2d.backends import torch_backend


def _impls():
    out = [pytest.param("torch", id="torch")]
    out.append(pytest.param("triton", marks=requires_triton, id="triton"))
    return out


def _stages(backend):
    if backend == "torch":
        return torch_backend
    from gsplat2d.kernels import binning

    return binning


def _flat_scene(batch, n, w, h, seed, degenerate=0.0, **kw):
    s = make_scene(batch, n, w, h, 1, seed=seed, degenerate=degenerate, **kw)
    B = int(math.prod(batch)) if batch else 1
    return (s["means"].reshape(B, n, 2).contiguous(), s["conics"].reshape(B, n, 3).contiguous(),
            s["opacities"].reshape(B, n).contiguous())


# (batch, N, W, H, tile, seed, degenerate fraction)
SCENES = [
    ((), 300, 63, 47, 16, 1, 0.0),
    ((2,), 200, 33, 17, 16, 2, 0.2),
    ((2, 3), 50, 40, 40, 8, 3, 0.1),
    ((), 400, 64, 64, 32, 4, 0.0),
    ((), 500, 17, 70, 8, 5, 0.3),
]


def _sid(s):
    batch, n, w, h, t, _, d = s
    b = ("B" + "x".join(map(str, batch)) + "-") if batch else ""
    return f"{b}N{n}-{w}x{h}-tile{t}" + (f"-deg{d}" if d else "")


@requires_triton
@pytest.mark.parametrize("scene", SCENES, ids=_sid)
def test_backends_identical(scene):
    batch, n, w, h, tile, seed, deg = scene
    m, q, o = _flat_scene(batch, n, w, h, seed, deg)
    tt, tr = _stages("torch"), _stages("triton")
    tiles_x, tiles_y = -(-w // tile), -(-h // tile)
    B = m.shape[0]

    rects_a, counts_a, params_a = tt.compute_tile_bounds(m, q, o, w, h, tile)
    rects_b, counts_b, params_b = tr.compute_tile_bounds(m, q, o, w, h, tile)
    assert rects_a.dtype == rects_b.dtype == torch.int32 and rects_a.shape == (B, n, 4)
    assert counts_a.dtype == counts_b.dtype == torch.int32 and counts_a.shape == (B, n)
    assert torch.equal(counts_a, counts_b)
    assert torch.equal(rects_a, rects_b)
    assert counts_a.sum() > 0
    # the rasterizer record: float64 math rounded once to float32 in both (libdevice vs. torch
    # log2 may differ in the last float64 ulp, hence one float32 ulp of slack; worst seen: 0)
    assert params_a.dtype == params_b.dtype == torch.float32 and params_a.shape == (B, n, 8)
    torch.testing.assert_close(params_b, params_a, rtol=1.2e-7, atol=0)

    keys_a = tt.emit_intersections(rects_a, counts_a, tiles_x, tiles_y)
    keys_b = tr.emit_intersections(rects_a, counts_a, tiles_x, tiles_y)
    assert keys_a.dtype == keys_b.dtype == torch.int64
    assert keys_a.numel() == counts_a.sum().item()
    assert torch.equal(keys_a, keys_b)

    sorted_keys, _ = torch.sort(keys_a)
    n_tiles = B * tiles_x * tiles_y
    ranges_a, ids_a = tt.tile_ranges(sorted_keys, n, n_tiles)
    ranges_b, ids_b = tr.tile_ranges(sorted_keys, n, n_tiles)
    assert ranges_a.dtype == ranges_b.dtype == torch.int64 and ranges_a.shape == (n_tiles, 2)
    assert ids_a.dtype == ids_b.dtype == torch.int32
    assert torch.equal(ranges_a, ranges_b)
    assert torch.equal(ids_a, ids_b)

    bin_a = tt.bin_gaussians(m, q, o, w, h, tile)
    bin_b = tr.bin_gaussians(m, q, o, w, h, tile)
    assert (bin_a.tiles_x, bin_a.tiles_y) == (bin_b.tiles_x, bin_b.tiles_y) == (tiles_x, tiles_y)
    for name in ("ranges", "gauss_ids", "counts"):
        assert torch.equal(getattr(bin_a, name), getattr(bin_b, name)), name
    assert torch.equal(bin_a.ranges, ranges_a) and torch.equal(bin_a.gauss_ids, ids_a)


def _design_rects(m, q, o, w, h, tile):
    """Independent float64 evaluation of the stage-1 formula of docs/design.md."""
    m, q, o = m.double(), q.double(), o.double()
    tiles_x, tiles_y = -(-w // tile), -(-h // tile)
    a, b, c = q.unbind(-1)
    det = a * c - b * b
    r2 = 2 * torch.log(255 * o)
    ext_x = torch.sqrt(r2 * c / det) * (1 + 1e-3) + 1e-2
    ext_y = torch.sqrt(r2 * a / det) * (1 + 1e-3) + 1e-2

    def cast(f, n):
        return f.clamp(-1, n + 1).long().clamp(0, n)

    tx0 = cast(torch.floor((m[..., 0] - ext_x - 0.5) / tile), tiles_x)
    tx1 = cast(torch.floor((m[..., 0] + ext_x - 0.5) / tile) + 1, tiles_x)
    ty0 = cast(torch.floor((m[..., 1] - ext_y - 0.5) / tile), tiles_y)
    ty1 = cast(torch.floor((m[..., 1] + ext_y - 0.5) / tile) + 1, tiles_y)
    return torch.stack([tx0, ty0, tx1, ty1], -1)


@requires_numba
@pytest.mark.parametrize("scene", SCENES, ids=_sid)
def test_numba_binning_identical_to_torch(scene):
    """The numba backend's counting sort gives exactly the sorted-key binning of the torch
    backend (ranges, ids, counts, record), and its pixel windows hold every pixel where a
    Gaussian's weight reaches 1/255, inside the Gaussian's tile rectangle."""
    from gsplat2d.backends import numba_backend

    batch, n, w, h, tile, seed, deg = scene
    m, q, o = _flat_scene(batch, n, w, h, seed, deg)
    ref = torch_backend.bin_gaussians(m, q, o, w, h, tile)
    nb = numba_backend.bin_gaussians(m, q, o, w, h, tile)
    got = nb.binning
    assert (got.tiles_x, got.tiles_y) == (ref.tiles_x, ref.tiles_y)
    for name in ("ranges", "gauss_ids", "counts", "params"):
        a, b = getattr(got, name), getattr(ref, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert got.gauss_ids.numel() > 0
    assert torch.equal(nb.rec, ref.params.reshape(-1, 8))
    # float64 geometry: the same record in float64 (rounded to float32 it is the contract's)
    nb64 = numba_backend.bin_gaussians(m.double(), q.double(), o.double(), w, h, tile, torch.float64)
    assert nb64.rec.dtype == torch.float64 and torch.equal(nb64.binning.ranges, ref.ranges)
    torch.testing.assert_close(nb64.rec.float(), ref.params.reshape(-1, 8), rtol=1.2e-7, atol=0)

    valid, sigma, raw = _pixel_terms(m, q, o, w, h)
    hit = (valid[..., None, None] & (sigma >= 0) & (raw >= 1 / 255)).reshape(-1, h, w)  # [BN, H, W]
    win = nb.win.long()
    ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    inside = ((xs >= win[:, 0, None, None]) & (xs < win[:, 2, None, None])
              & (ys >= win[:, 1, None, None]) & (ys < win[:, 3, None, None]))
    assert hit.any() and not (hit & ~inside).any()
    # a window lies inside its tile rectangle and is the pixel rule of docs/design.md (a looser
    # window would cost pairs, not correctness; a tighter one would drop weights)
    rects = torch_backend.compute_tile_bounds(m, q, o, w, h, tile)[0].reshape(-1, 4).long()
    used = ref.counts.reshape(-1) > 0
    assert (win[used, 0] >= rects[used, 0] * tile).all() and (win[used, 2] <= rects[used, 2] * tile).all()
    assert (win[used, 1] >= rects[used, 1] * tile).all() and (win[used, 3] <= rects[used, 3] * tile).all()
    assert (win[~used] == 0).all()
    md, qd, od = m.double().reshape(-1, 2), q.double().reshape(-1, 3), o.double().reshape(-1)
    det = qd[:, 0] * qd[:, 2] - qd[:, 1] ** 2
    r2 = 2 * torch.log(255 * od)
    ext_x = torch.sqrt(r2 * qd[:, 2] / det) * (1 + 1e-3) + 1e-2
    ext_y = torch.sqrt(r2 * qd[:, 0] / det) * (1 + 1e-3) + 1e-2
    expect = torch.stack([
        torch.ceil(md[:, 0] - ext_x - 0.5).clamp(0, w), torch.ceil(md[:, 1] - ext_y - 0.5).clamp(0, h),
        (torch.floor(md[:, 0] + ext_x - 0.5) + 1).clamp(0, w), (torch.floor(md[:, 1] + ext_y - 0.5) + 1).clamp(0, h),
    ], -1).long()
    assert torch.equal(win[used], expect[used])


@pytest.mark.parametrize("scene", SCENES, ids=_sid)
@pytest.mark.parametrize("backend", _impls())
def test_tile_bounds_follow_design_and_are_conservative(backend, scene):
    batch, n, w, h, tile, seed, deg = scene
    m, q, o = _flat_scene(batch, n, w, h, seed, deg)
    st = _stages(backend)
    rects, counts, params = st.compute_tile_bounds(m, q, o, w, h, tile)
    rects, counts = rects.long(), counts.long()

    valid, sigma, raw = _pixel_terms(m, q, o, w, h)
    # counts = rectangle area; non-contributing -> 0 with rect (0, 0, 0, 0)
    area = (rects[..., 2] - rects[..., 0]) * (rects[..., 3] - rects[..., 1])
    assert torch.equal(counts, area)
    assert (rects[..., 2] >= rects[..., 0]).all() and (rects[..., 3] >= rects[..., 1]).all()
    assert (counts[~valid] == 0).all() and (rects[~valid] == 0).all()
    # Valid Gaussians that touch the grid: rect equals the design formula.
    expect = _design_rects(m, q, o, w, h, tile)
    sel = valid & (counts > 0)
    assert sel.sum() > 0.5 * n
    assert torch.equal(rects[sel], expect[sel])

    # Conservative: every pixel where the weight reaches 1/255 lies in a binned tile.
    hit = valid[..., None, None] & (sigma >= 0) & (raw >= 1 / 255)  # [B, N, H, W]
    ty = (torch.arange(h) // tile).view(1, 1, h, 1)
    tx = (torch.arange(w) // tile).view(1, 1, 1, w)
    r = rects[..., None, None, :]
    inside = (tx >= r[..., 0]) & (tx < r[..., 2]) & (ty >= r[..., 1]) & (ty < r[..., 3])
    assert hit.any()
    assert not (hit & ~inside).any(), "a pixel with weight >= 1/255 lies outside the binned tiles"


@pytest.mark.parametrize("scene", SCENES, ids=_sid)
@pytest.mark.parametrize("backend", _impls())
def test_bin_gaussians_ranges_and_ids(backend, scene):
    batch, n, w, h, tile, seed, deg = scene
    m, q, o = _flat_scene(batch, n, w, h, seed, deg)
    st = _stages(backend)
    binning = st.bin_gaussians(m, q, o, w, h, tile)
    B = m.shape[0]
    tiles_x, tiles_y = binning.tiles_x, binning.tiles_y
    assert (tiles_x, tiles_y) == (-(-w // tile), -(-h // tile))
    T = tiles_x * tiles_y
    ranges, ids, counts = binning.ranges, binning.gauss_ids.long(), binning.counts.long()
    P = ids.numel()
    assert P == counts.sum().item() > 0
    assert ranges.shape == (B * T, 2)

    # Ranges partition [0, P) in global tile order; empty tiles are [0, 0].
    lengths = ranges[:, 1] - ranges[:, 0]
    assert (lengths >= 0).all() and lengths.sum().item() == P
    empty = lengths == 0
    assert (ranges[empty] == 0).all()
    starts = ranges[~empty, 0]
    ends = ranges[~empty, 1]
    assert starts[0].item() == 0 and ends[-1].item() == P
    assert torch.equal(starts[1:], ends[:-1])

    # Per tile: ids strictly increasing, exactly the Gaussians whose rect contains the tile.
    rects, counts_b, _ = torch_backend.compute_tile_bounds(m, q, o, w, h, tile)
    assert torch.equal(binning.counts, counts_b)
    rects = rects.long()
    members = torch.zeros(B, T, n, dtype=torch.bool)
    gt = torch.repeat_interleave(torch.arange(B * T), lengths)
    members.view(B * T, n)[gt, ids] = True
    for g_tile in range(B * T):
        s, e = ranges[g_tile].tolist()
        tile_ids = ids[s:e]
        assert (tile_ids[1:] > tile_ids[:-1]).all()
        assert ((tile_ids >= 0) & (tile_ids < n)).all()
    tyy = torch.arange(T) // tiles_x
    txx = torch.arange(T) % tiles_x
    r = rects[:, None, :, :]  # [B, 1, N, 4]
    expect = ((txx[None, :, None] >= r[..., 0]) & (txx[None, :, None] < r[..., 2])
              & (tyy[None, :, None] >= r[..., 1]) & (tyy[None, :, None] < r[..., 3]))
    assert torch.equal(members, expect)
    # Pairs counted per Gaussian agree with counts.
    assert torch.equal(members.sum(1), counts)


@pytest.mark.parametrize("backend", _impls())
def test_non_contributing_gaussians_get_zero_count(backend):
    n = 3 * len(DEGENERATE_KINDS)
    s = make_scene((2,), n, 40, 30, 1, seed=7, max_radius=10)
    make_degenerate(s, list(range(n)))
    # Plus: opacity exactly 0, negative, and a mean so far away its rect is off the grid.
    m, q, o = s["means"].contiguous(), s["conics"].contiguous(), s["opacities"].contiguous()
    rects, counts, _ = _stages(backend).compute_tile_bounds(m, q, o, 40, 30, 16)
    assert (counts == 0).all() and (rects == 0).all()
    binning = _stages(backend).bin_gaussians(m, q, o, 40, 30, 16)
    assert binning.gauss_ids.numel() == 0 and (binning.ranges == 0).all()

    m = torch.tensor([[[20.0, 15.0], [20.0, 15.0], [-1e30, 15.0], [20.0, 3e38]]])
    q = torch.tensor([[[0.1, 0.0, 0.1]] * 4])
    o = torch.tensor([[0.0, -0.5, 0.9, 0.9]])
    rects, counts, _ = _stages(backend).compute_tile_bounds(m, q, o, 40, 30, 16)
    assert (counts == 0).all()


@pytest.mark.parametrize("backend", _impls())
def test_huge_gaussians_cover_all_tiles(backend):
    w, h, tile = 1000, 700, 16
    tiles = (-(-w // tile)) * (-(-h // tile))
    # Tiny conics (std dev up to ~1e15 px), means inside, outside and extremely far outside.
    m = torch.tensor([[[500.0, 350.0], [-5000.0, 350.0], [1e14, -1e14], [-1e18, 2e18], [0.0, 0.0]]])
    q = torch.tensor([[[1e-8, 0.0, 1e-8], [1e-12, 1e-13, 1e-12], [1e-30, 0.0, 1e-30],
                       [1e-38, 0.0, 1e-38], [1e-35, 5e-36, 1e-35]]])
    o = torch.tensor([[0.9, 0.5, 1.0, 1.0, 0.9]])
    st = _stages(backend)
    rects, counts, _ = st.compute_tile_bounds(m, q, o, w, h, tile)
    # All reach every tile (det = 1e-76 for Gaussian 3 must not underflow: stage 1 is float64).
    expect_rect = torch.tensor([0, 0, -(-w // tile), -(-h // tile)], dtype=torch.int32)
    for g in range(5):
        assert counts[0, g].item() == tiles, g
        assert torch.equal(rects[0, g], expect_rect), g
    binning = st.bin_gaussians(m, q, o, w, h, tile)
    assert binning.gauss_ids.numel() == 5 * tiles
    assert ((binning.ranges[:, 1] - binning.ranges[:, 0]) == 5).all()
    assert torch.equal(binning.gauss_ids.view(tiles, 5).long(), torch.arange(5).expand(tiles, 5))


@pytest.mark.parametrize("backend", _impls())
def test_keys_beyond_int32(backend):
    """b * T * N + g exceeds 2^31: keys must be int64 all the way (no wrap-around)."""
    B, N, w, h, tile = 4, 40000, 2048, 2048, 16
    T = (w // tile) * (h // tile)
    assert (B * T - 1) * N + N - 1 > 2**31
    st = _stages(backend)
    # One huge Gaussian per batch element covers every tile ...
    m1 = torch.full((B, 1, 2), 100.0)
    q1 = torch.tensor([1e-10, 0.0, 1e-10]).expand(B, 1, 3).contiguous()
    o1 = torch.full((B, 1), 0.9)
    r1, c1, _ = st.compute_tile_bounds(m1, q1, o1, w, h, tile)
    assert (c1 == T).all()
    # ... and sits at index N - 1 behind N - 1 non-contributing ones (count 0, rect 0).
    rects = torch.zeros(B, N, 4, dtype=torch.int32)
    counts = torch.zeros(B, N, dtype=torch.int32)
    rects[:, N - 1] = r1[:, 0]
    counts[:, N - 1] = c1[:, 0]
    keys = st.emit_intersections(rects, counts, w // tile, h // tile)
    expect = (torch.arange(B * T, dtype=torch.int64) * N + N - 1)
    assert torch.equal(keys, expect)
    ranges, ids = st.tile_ranges(keys, N, B * T)
    assert (ids == N - 1).all()
    assert torch.equal(ranges[:, 0], torch.arange(B * T)) and torch.equal(ranges[:, 1], torch.arange(1, B * T + 1))


def test_the_triton_kernels_read_the_rules_of_the_binning_contract():
    """One definition of the 1/255 cutoff, the 1e-4 stop and the 0.99 clamp: the Triton kernels'
    constants are the core's (a copy that drifted would fail here)."""
    import math

    pytest.importorskip("triton")
    from gsplat2d import binning
    from gsplat2d.kernels import _common

    assert _common.ALPHA_MIN.value == binning.MIN_WEIGHT == 1.0 / 255.0
    assert _common.T_STOP.value == binning.T_STOP == 1e-4
    assert _common.ALPHA_MAX.value == binning.ALPHA_MAX == 0.99
    assert _common.LOG2_ALPHA_MIN_LOOSE.value == math.log2(binning.MIN_WEIGHT) - 1e-3
    assert (_common.TAPER_A.value, _common.TAPER_B.value) == (binning.TAPER_A, binning.TAPER_B)


def test_the_taper_constants_are_the_reference_weight():
    """``w - (TAPER_A + TAPER_B log2 w)`` (what every backend evaluates) is the reference's
    ``w - m (1 + ln(w / m))``, 0 with slope 0 at the cutoff; the reference's constants (written
    out again on purpose) are the contract's."""
    import math

    from gsplat2d import binning, reference

    assert (reference.MIN_WEIGHT, reference.ALPHA_MAX, reference.T_STOP) == (
        binning.MIN_WEIGHT, binning.ALPHA_MAX, binning.T_STOP)
    w = torch.tensor([binning.MIN_WEIGHT, 0.01, 0.3, 1.0], dtype=torch.float64)
    kernel_form = w - (binning.TAPER_A + binning.TAPER_B * torch.log2(w))
    assert torch.allclose(kernel_form, reference.taper(w), rtol=0, atol=1e-15)
    assert abs(reference.taper(w)[0].item()) < 1e-17
    m = binning.MIN_WEIGHT  # slope d w_t / d w = 1 - m / w: 0 at the cutoff
    wg = torch.tensor([m * (1 + 1e-6)], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(reference.taper(wg).sum(), wg)
    assert abs(g.item()) < 1e-5 and math.isclose(reference.taper(torch.tensor(1.0, dtype=torch.float64)).item(),
                                                   1 - m * (1 + math.log(255)), rel_tol=1e-14)
