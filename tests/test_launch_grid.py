"""Launch geometry of the Triton launchers, checked without running a kernel: the batch is
folded into grid dimension 0 (CUDA caps dimensions 1 and 2 at 65535), channel blocks use
dimension 1, and every launch happens under a device guard."""

from __future__ import annotations


import pytest
import torch

from conftest import requires_triton

pytestmark = requires_triton


class _Recorder:
    def __init__(self):
        self.grids = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.grids.append((tuple(grid), kwargs))

        return launch


def _binning(B, tiles_x, tiles_y, N):
    from gsplat2d.backends.torch_backend import Binning

    z = torch.zeros
    return Binning(tiles_x, tiles_y, z(B * tiles_x * tiles_y, 2, dtype=torch.int64),
                   z(0, dtype=torch.int32), z(B, N, dtype=torch.int32), z(B, N, 8))


@pytest.mark.parametrize("C", [3, 40])
def test_batch_goes_to_grid_dimension_0(monkeypatch, C):
    from gsplat2d.kernels import rasterize_bwd, rasterize_fwd

    B, N, W, H, tile = 70_000, 2, 4, 4, 16
    f, b = _Recorder(), _Recorder()
    monkeypatch.setattr(rasterize_fwd, "_rasterize_fwd_kernel", f)
    monkeypatch.setattr(rasterize_bwd, "_rasterize_bwd_kernel", b)
    bins = _binning(B, 1, 1, N)
    colors = torch.zeros(B, N, C)
    img, alp, tf = rasterize_fwd.rasterize_fwd(colors, None, bins, W, H, tile, "alpha")
    rasterize_bwd.rasterize_bwd(colors, False, bins, img, tf, torch.zeros(B, H, W, C),
                                torch.zeros(B, H, W, 1), W, H, tile, "alpha")
    for grids, cfg_bwd in ((f.grids, False), (b.grids, True)):
        (grid, kw), = grids
        cfg = rasterize_fwd.launch_config(tile, C, backward=cfg_bwd)
        assert grid[0] == B * tile * tile // cfg["BLOCK_P"]
        assert all(g <= 65535 for g in grid[1:]), grid
        assert grid[0] < 2**31 - 1


def test_every_launch_is_under_a_device_guard():
    """Triton launches on the *current* CUDA device: every ``kernel[grid](...)`` in kernels/ must
    sit inside ``with device_guard(...)`` (tensors on cuda:1 while cuda:0 is current)."""
    import ast
    import pathlib

    import gsplat2d.kernels as pkg

    root = pathlib.Path(pkg.__file__).parent
    missing, launches = [], 0
    for path in sorted(root.glob("*.py")):
        tree = ast.parse(path.read_text())
        guarded = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.With) and any(
                isinstance(i.context_expr, ast.Call) and getattr(i.context_expr.func, "id", "") == "device_guard"
                for i in node.items
            ):
                guarded |= {id(n) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript):
                name = getattr(node.func.value, "id", "")
                if name.startswith("_") and name.endswith("_kernel"):
                    launches += 1
                    if id(node) not in guarded:
                        missing.append(f"{path.name}:{node.lineno} {name}")
    assert launches >= 5
    assert not missing, missing


def test_device_guard_selects_the_tensor_device():
    from gsplat2d.kernels._alloc import device_guard

    g = device_guard(torch.device("cuda", 1))
    assert isinstance(g, torch.cuda.device) and g.idx == 1
    with device_guard(torch.device("cpu")):
        pass


def test_memory_budget_counts_pytorch_cached_memory(monkeypatch):
    from gsplat2d import binning

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (1 << 30, 80 << 30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d=None: 20 << 30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d=None: 5 << 30)
    # 1 GiB free on the device + 15 GiB cached-but-unused inside PyTorch
    assert binning._available_bytes(torch.device("cuda", 0)) == 16 << 30
    binning.check_pair_budget(10 << 30 >> 6, 1000, 100, torch.device("cuda", 0))  # 10 GiB: fits


def test_auto_tile_size_fills_small_grids():
    """tile_size=None: 8 x 8 tiles when the 16 x 16 grid has fewer programs than the device keeps
    resident (SMs x AUTO_TILE_WARPS_PER_SM), else 16; the boundary is exact (a rule that counted
    pixels or forgot the batch would move it)."""
    from gsplat2d.rasterize import AUTO_TILE_WARPS_PER_SM, auto_tile_size

    sms = 132  # H100 SXM
    limit = sms * AUTO_TILE_WARPS_PER_SM  # 2112 programs of 16 x 16
    assert auto_tile_size(1, 512, 512, sms) == 8  # 1,024 tiles: an SR render, a fit
    assert auto_tile_size(16, 144, 144, sms) == 8  # a training batch: 16 x 81 tiles
    assert auto_tile_size(1, 1920, 1080, sms) == 16  # 8,160 tiles
    assert auto_tile_size(3, 512, 512, sms) == 16  # the batch counts: 3,072 tiles
    assert auto_tile_size(1, 16 * limit, 16, sms) == 16
    assert auto_tile_size(1, 16 * limit - 1, 16, sms) == 16  # 2112 tiles (the last one partial)
    assert auto_tile_size(1, 16 * (limit - 1), 16, sms) == 8


def test_tile_size_none_keeps_16_off_the_gpu():
    """On CPU tensors (numba, torch, the interpreter) None means 16, as before."""
    import gsplat2d

    m = torch.rand(5, 2) * 40
    q = torch.tensor([[0.1, 0.0, 0.1]]).repeat(5, 1)
    o = torch.full((5,), 0.5)
    assert gsplat2d.bin_gaussians(m, q, o, 40, 30, backend="torch").tile_size == 16
    assert gsplat2d.bin_gaussians(m, q, o, 40, 30, backend="torch", tile_size=8).tile_size == 8
