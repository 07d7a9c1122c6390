"""Shared test setup for gsplat2d.

Two tiers run the Triton kernels, chosen per machine so that one ``python -m pytest`` passes
anywhere (``TRITON_INTERPRET`` must be decided before anything imports triton):

* no CUDA device: ``TRITON_INTERPRET=1``; the kernels run under Triton's interpreter on CPU
  tensors (every ``backend="triton"`` case of the suite, marked with ``requires_triton``).
* a CUDA device: the interpreter stays off; the compiled kernels run on the GPU (marker
  ``cuda``: ``tests/test_cuda.py``; ``-m cuda`` selects it) and the interpreter cases skip.

An explicit ``TRITON_INTERPRET`` wins (``TRITON_INTERPRET=1`` on a GPU machine runs the
interpreter tier there).
"""

import os

import torch

if "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "0" if torch.cuda.is_available() else "1"

import importlib  # noqa: E402
import importlib.util  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import gsplat2d.kernels  # noqa: E402  (does not import triton)
from gsplat2d.backends import triton_interpret  # noqa: E402

HAVE_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETING = triton_interpret()
# CPU-tensor Triton cases: under the interpreter only (with it off they would need a GPU)
requires_triton = pytest.mark.skipif(
    not (HAVE_TRITON and INTERPRETING),
    reason="triton is not importable" if not HAVE_TRITON else
    "Triton's interpreter is off (a CUDA machine: tests/test_cuda.py runs the compiled kernels)",
)

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
requires_numba = pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not importable")

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench_module(name: str):
    """Import ``bench/<name>.py`` for a test. ``bench/`` goes to the *end* of ``sys.path``: in
    front it would shadow this file with ``bench/conftest.py`` for anything that imports
    ``conftest`` later, such as the DDP test's spawned workers re-importing their test module."""
    if str(BENCH) not in sys.path:
        sys.path.append(str(BENCH))
    return importlib.import_module(name)


# Backend parameter usable in @pytest.mark.parametrize: triton / numba cases skip without them.
BACKENDS = ["torch", pytest.param("numba", marks=requires_numba, id="numba"),
            pytest.param("triton", marks=requires_triton, id="triton")]


@pytest.fixture(autouse=True)
def _poison_launcher_outputs():
    """Every launcher output starts as NaN (floats) / -1 (ints): an element a kernel forgets to
    write fails the comparison instead of silently holding stale memory."""
    with gsplat2d.kernels.poisoned(True):
        yield


@pytest.fixture(autouse=True)
def _deterministic_seed():
    torch.manual_seed(1234)
    yield


# ----------------------------------------------------------------------------------------------
# Scene generation
# ----------------------------------------------------------------------------------------------


def random_conics(shape, gen, min_radius, max_radius):
    """Float64 PD conics ``[*shape, 3]``, half from scale+rotation, half from random Cholesky
    factors; standard deviations log-uniform in [min_radius, max_radius] pixels."""
    n = int(math.prod(shape))
    lo, hi = math.log(min_radius), math.log(max_radius)
    s = torch.exp(lo + (hi - lo) * torch.rand(n, 2, generator=gen, dtype=torch.float64))
    theta = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * math.pi
    cos, sin = torch.cos(theta), torch.sin(theta)
    R = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    cov_sr = R @ torch.diag_embed(s * s) @ R.transpose(-1, -2)
    # Cholesky: L = [[l0, 0], [l1, l2]]; cov = L L^T
    l0, l2 = s[:, 0], s[:, 1]
    l1 = torch.randn(n, generator=gen, dtype=torch.float64) * 0.7 * torch.minimum(l0, l2)
    L = torch.zeros(n, 2, 2, dtype=torch.float64)
    L[:, 0, 0], L[:, 1, 0], L[:, 1, 1] = l0, l1, l2
    cov_ch = L @ L.transpose(-1, -2)
    use_sr = (torch.arange(n) % 2 == 0)[:, None, None]
    cov = torch.where(use_sr, cov_sr, cov_ch)
    inv = torch.linalg.inv(cov)
    conics = torch.stack([inv[:, 0, 0], 0.5 * (inv[:, 0, 1] + inv[:, 1, 0]), inv[:, 1, 1]], -1)
    return conics.reshape(*shape, 3)


DEGENERATE_KINDS = ("not_pd", "neg_a", "zero_c", "low_opacity", "nan_mean", "inf_conic",
                    "nan_opacity", "zero_conic", "inf_mean", "nan_conic")


def make_degenerate(scene, idx):
    """In place: turn Gaussians ``idx`` (indices along N, all batch elements) into degenerate ones,
    cycling through DEGENERATE_KINDS."""
    m, q, o = scene["means"], scene["conics"], scene["opacities"]
    for j, i in enumerate(idx):
        kind = DEGENERATE_KINDS[j % len(DEGENERATE_KINDS)]
        if kind == "not_pd":
            q[..., i, :] = torch.tensor([0.05, 0.2, 0.05], dtype=q.dtype)  # b^2 > ac
        elif kind == "neg_a":
            q[..., i, 0] = -q[..., i, 0]
        elif kind == "zero_c":
            q[..., i, 2] = 0.0
        elif kind == "low_opacity":
            o[..., i] = 0.5 / 255.0
        elif kind == "nan_mean":
            m[..., i, 0] = float("nan")
        elif kind == "inf_conic":
            q[..., i, 1] = float("inf")
        elif kind == "nan_opacity":
            o[..., i] = float("nan")
        elif kind == "zero_conic":
            q[..., i, :] = 0.0
        elif kind == "inf_mean":
            m[..., i, 1] = -float("inf")
        elif kind == "nan_conic":
            q[..., i, 0] = float("nan")
    return scene


def make_scene(batch=(), n=100, width=32, height=32, channels=3, seed=0, *, dtype=torch.float32,
               min_radius=1.0, max_radius=None, margin=0.25, opacity=(0.05, 1.0), degenerate=0.0,
               background=True):
    """A random scene as a dict of tensors (means, conics, colors, opacities, background).

    means uniform over the image extended by ``margin`` of its size on each side (so some lie
    outside); std devs log-uniform in [min_radius, max_radius] (default 1.5x the image);
    colors in [0.05, 1] (never zero); opacities uniform in ``opacity``; a ``degenerate``
    fraction of Gaussians (spread through the index order) replaced by non-contributing ones.
    """
    gen = torch.Generator().manual_seed(seed)
    batch = tuple(batch)
    f64 = torch.float64
    if max_radius is None:
        max_radius = 1.5 * max(width, height)
    u = torch.rand(*batch, n, 2, generator=gen, dtype=f64)
    size = torch.tensor([width, height], dtype=f64)
    means = (-margin + (1 + 2 * margin) * u) * size
    conics = random_conics(batch + (n,), gen, min_radius, max_radius)
    colors = 0.05 + 0.95 * torch.rand(*batch, n, channels, generator=gen, dtype=f64)
    lo, hi = opacity
    opacities = lo + (hi - lo) * torch.rand(*batch, n, generator=gen, dtype=f64)
    bg = 0.05 + 0.95 * torch.rand(*batch, channels, generator=gen, dtype=f64)
    scene = dict(means=means, conics=conics, colors=colors, opacities=opacities,
                 background=bg if background else None)
    n_deg = int(round(degenerate * n))
    if n_deg:
        idx = torch.randperm(n, generator=gen)[:n_deg].tolist()
        make_degenerate(scene, idx)
    return {k: (v.to(dtype) if v is not None else None) for k, v in scene.items()}


@pytest.fixture
def scene_factory():
    return make_scene


def max_err(a, b, mask=None):
    """Max abs difference (float64), optionally only over ``mask`` (broadcast over channels)."""
    d = (a.detach().to(torch.float64) - b.detach().to(torch.float64)).abs()
    if mask is not None:
        d = d[mask.expand_as(d)]
    return d.max().item() if d.numel() else 0.0


# Gradient comparison: elementwise, so that an error confined to small entries (a Gaussian with a
# small gradient dropped or doubled) fails too, plus an RMS bound. Worst observed over
# tests/test_gradients.py (2 cores, CPU): |g - g_ref| <= 0.033 * (1e-5 * max|g_ref| + |g_ref|)
# elementwise, relative RMS 3.0e-5.
GRAD_ATOL = 1e-5  # times max |g_ref|: the floor for entries at float32 cancellation level
GRAD_RTOL = 0.05  # times |g_ref|, per entry
GRAD_RMS = 1e-4  # ||g - g_ref|| / ||g_ref||


def grad_errors(g, g_ref):
    """(worst elementwise ratio |g - g_ref| / (GRAD_ATOL max|g_ref| + GRAD_RTOL |g_ref|), relative
    RMS error); the gradients agree when the first is <= 1 and the second <= GRAD_RMS."""
    g, g_ref = g.detach().double(), g_ref.detach().double()
    d = (g - g_ref).abs()
    scale = g_ref.abs().max().item()
    ratio = (d / (GRAD_ATOL * scale + GRAD_RTOL * g_ref.abs())).max().item() if scale > 0 else d.max().item()
    ref_rms = g_ref.pow(2).mean().sqrt().item()
    rms = d.pow(2).mean().sqrt().item() / ref_rms if ref_rms > 0 else d.max().item()
    return ratio, rms


def assert_grad_close(g, g_ref, what="", rms_tol=GRAD_RMS):
    ratio, rms = grad_errors(g, g_ref)
    assert ratio <= 1.0 and rms <= rms_tol, f"d/d{what}: elementwise ratio {ratio:.3g} (<= 1), relative RMS {rms:.3g}"
    return ratio, rms


def pytest_terminal_summary(terminalreporter):
    """Say loudly when tests skipped for want of the evaluation data (``../shared/data`` beside
    the checkout): a clone elsewhere passes without them, and should know what it did not run."""
    skipped = terminalreporter.stats.get("skipped", [])
    data = [r for r in skipped if "shared data" in str(r.longrepr) or "shared/data" in str(r.longrepr)]
    if data:
        terminalreporter.write_sep("=", "evaluation data missing", yellow=True)
        terminalreporter.write_line(
            f"{len(data)} tests skipped: they need ../shared/data (Set5, Set14, Kodak) beside this "
            f"checkout, which is not there; the shipped models' scores and the Kodak fits were not checked"
        )
