"""The public rasterizer: :func:`rasterize`, and its two stages :func:`bin_gaussians` and
:func:`rasterize_binned` for rendering one scene's geometry several times (other colour or
feature sets, both modes) without binning it again."""

from __future__ import annotations

import functools

from typing import Any, NamedTuple

import torch

from gsplat2d._validate import validate
from gsplat2d.backends import fp32_region, triton_interpret

__all__ = ["rasterize", "bin_gaussians", "rasterize_binned", "BinnedScene", "auto_tile_size", "AUTO_TILE_WARPS_PER_SM", "triton_available",
           "numba_available"]


def triton_available() -> bool:
    """Whether the Triton kernels can be imported here."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


TRITON_TILE_SIZES = (8, 16, 32)



def numba_available() -> bool:
    """Whether the numba CPU backend can be imported here."""
    from gsplat2d.backends.numba_backend import available

    return available()


def _pick_backend(backend: str, device: torch.device, tile_size: int) -> str:
    if backend == "auto":
        if device.type == "cpu":
            return "numba" if numba_available() else "torch"
        use_triton = (
            device.type == "cuda" and tile_size in TRITON_TILE_SIZES and triton_available()
        )
        return "triton" if use_triton else "torch"
    if backend == "numba":
        if device.type != "cpu":
            raise RuntimeError(f"backend='numba' renders CPU tensors, not {device}; use 'auto'")
        if not numba_available():
            raise RuntimeError("backend='numba' needs the numba package (pip install numba); "
                               "use backend='torch' or 'auto'")
    if backend == "triton":
        if not triton_available():
            raise RuntimeError(
                "backend='triton' needs the triton package (Linux x86_64/aarch64); "
                "use backend='torch' or 'auto'"
            )
        if device.type == "cpu" and not triton_interpret():
            raise RuntimeError(
                "backend='triton' on CPU tensors runs only under Triton's interpreter: set "
                "TRITON_INTERPRET=1 before importing triton (slow, for testing), or use "
                "backend='torch' for CPU rendering"
            )
        if device.type not in ("cpu", "cuda"):
            raise RuntimeError(f"backend='triton' supports CUDA (or interpreted CPU) tensors, not {device}")
    return backend


#: ``tile_size=None`` on the Triton path: 16 x 16 tiles (one one-warp program each) unless the
#: launch has fewer of them than ``AUTO_TILE_WARPS_PER_SM`` per SM of the device -- about what an
#: SM keeps resident at the kernels' ~110-128 registers (65,536 / (128 x 32) = 16 warps) -- then
#: 8 x 8 tiles: four times the programs, each walking a list about a quarter as long.
AUTO_TILE_WARPS_PER_SM = 16


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).multi_processor_count)


def auto_tile_size(batch: int, width: int, height: int, sm_count: int) -> int:
    """The tile side ``tile_size=None`` picks for a Triton launch of ``batch`` images of ``width x
    height`` on a device with ``sm_count`` SMs: 16, or 8 when ``batch * ceil(width / 16) *
    ceil(height / 16) < sm_count * AUTO_TILE_WARPS_PER_SM`` (a grid too small to fill the device).
    The results do not depend on the tile size; ``bench/workload.py`` estimates what it saves."""
    tiles16 = batch * -(-int(width) // 16) * -(-int(height) // 16)
    return 8 if tiles16 < sm_count * AUTO_TILE_WARPS_PER_SM else 16


def _resolve_tile_size(tile_size, backend: str, means, width, height) -> int:
    """``tile_size`` as given, or (None) :func:`auto_tile_size` where the Triton kernels will run
    on a CUDA device, else 16 (the CPU backends and the interpreter keep 16)."""
    if tile_size is not None:
        return tile_size
    if not (isinstance(means, torch.Tensor) and means.device.type == "cuda" and backend in ("auto", "triton")
            and triton_available() and isinstance(width, int) and isinstance(height, int)):
        return 16
    batch = 1
    for s in means.shape[:-2]:
        batch *= int(s)
    index = means.device.index if means.device.index is not None else torch.cuda.current_device()
    return auto_tile_size(batch, width, height, _sm_count(index))


def _select_backend(backend: str, device: torch.device, tile_size: int) -> str:
    """:func:`_pick_backend`, then the tile sizes the Triton kernels are built for (checked after
    ``"auto"`` has chosen: it falls back to torch for any other tile size)."""
    backend = _pick_backend(backend, device, tile_size)
    if backend == "triton" and tile_size not in TRITON_TILE_SIZES:
        raise ValueError(f"tile_size must be 8, 16 or 32 for backend='triton', got {tile_size}")
    return backend


def _render_empty(
    means: torch.Tensor,
    conics: torch.Tensor,
    colors: torch.Tensor,
    opacities: torch.Tensor,
    background: torch.Tensor | None,
    width: int,
    height: int,
    C: int,
    batch_shape: tuple[int, ...],
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Background-only image and zero alpha of a scene without Gaussians (or an empty batch)."""
    out_dtype = torch.float64 if (backend in ("torch", "numba") and torch.float64 in (
        means.dtype, conics.dtype, colors.dtype, opacities.dtype)) else torch.float32
    image = torch.zeros((*batch_shape, height, width, C), dtype=out_dtype, device=means.device)
    if background is not None:
        image = image + background.to(out_dtype)[..., None, None, :]
    alpha = torch.zeros((*batch_shape, height, width, 1), dtype=out_dtype, device=means.device)
    # Keep the graph connected so .backward() through an empty scene works.
    zero = (means.sum() + conics.sum() + colors.sum() + opacities.sum()) * 0
    return image + zero.to(out_dtype), alpha + zero.to(out_dtype)


def _rasterize_flat(
    backend: str,
    means: torch.Tensor,
    conics: torch.Tensor,
    colors: torch.Tensor,
    opacities: torch.Tensor,
    background: torch.Tensor | None,
    B: int,
    C: int,
    width: int,
    height: int,
    tile_size: int,
    mode: str,
    binning: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render with ``backend`` on the inputs flattened to ``B`` images: ``image [B, H, W, C]``,
    ``alpha [B, H, W, 1]`` (on ``binning``, the backend's binning of this geometry, when given)."""
    N = means.shape[-2]
    m = means.reshape(B, N, 2)
    q = conics.reshape(B, N, 3)
    c = colors.reshape(B, N, C)
    o = opacities.reshape(B, N)
    bg = background.reshape(B, C) if background is not None else None

    # Rasterization is float32 (float64 for float64 inputs) even under autocast: the torch
    # backend's bmm would otherwise run in bf16/fp16 inside a mixed-precision training step.
    with fp32_region(means.device):
        if backend == "triton":
            from gsplat2d.backends.triton_function import rasterize_triton

            return rasterize_triton(m, q, c, o, bg, width, height, tile_size, mode, binning)
        if backend == "numba":
            from gsplat2d.backends.numba_function import rasterize_numba

            return rasterize_numba(m, q, c, o, bg, width, height, tile_size, mode, binning)
        from gsplat2d.backends.torch_function import rasterize_torch

        m, q, c, o = (t.contiguous() for t in (m, q, c, o))
        return rasterize_torch(m, q, c, o, bg, width, height, tile_size, mode, binning)


def rasterize(
    means: torch.Tensor,
    conics: torch.Tensor,
    colors: torch.Tensor,
    opacities: torch.Tensor,
    width: int,
    height: int,
    *,
    mode: str = "alpha",
    background: torch.Tensor | None = None,
    tile_size: int | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render 2D Gaussians onto a ``height x width`` pixel grid. Differentiable in every tensor.

    Args:
        means: ``[..., N, 2]`` centres in pixels (x right, y down; pixel ``(x, y)`` is sampled
            at ``(x + 0.5, y + 0.5)``).
        conics: ``[..., N, 3]`` ``(a, b, c)``, the inverse covariance ``[[a, b], [b, c]]`` in
            1/pixel^2 (see :func:`gsplat2d.conics_from_cholesky`, ``conics_from_scale_rotation``).
        colors: ``[..., N, C]``, any ``C >= 1`` (RGB, grey or feature channels).
        opacities: ``[..., N]``.
        width, height: output size in pixels (each in ``[1, 65536]``).
        mode: ``"alpha"``: front-to-back compositing in index order (weights
            ``min(0.99, o exp(-sigma))``, skipped below 1/255, a pixel stops once its
            transmittance would fall to 1e-4). ``"sum"``: ``image = sum_i w_i c_i`` with
            ``w_i = min(1, o exp(-sigma))`` (below 1/255 skipped), no limit on Gaussians per tile.
            ``"sum_taper"``: sum mode with ``w_i - m (1 + ln(w_i / m))``, ``m = 1/255``, in
            place of ``w_i``: zero with zero slope at the cutoff, so the image has no jump
            where a Gaussian ends (no rings when a field is magnified many times; see
            :data:`gsplat2d.binning.TAPER_A`).
        background: ``[..., C]`` colour behind the Gaussians (alpha mode only; default 0).
        tile_size: tile side in pixels (triton: 8, 16 or 32); None (the default): 16, or 8 for a
            Triton launch too small to fill its GPU (:func:`auto_tile_size`). The image does not
            depend on it.
        backend: ``"triton"`` (kernels; CUDA tensors, or CPU tensors under
            ``TRITON_INTERPRET=1``), ``"numba"`` (compiled CPU kernels; CPU tensors),
            ``"torch"`` (tiled PyTorch, any device) or ``"auto"`` (triton on CUDA with a
            tile_size of 8, 16 or 32; numba on CPU where it imports; torch otherwise).

    Returns:
        ``image [..., H, W, C]`` and ``alpha [..., H, W, 1]`` (``1 - T`` in alpha mode, the sum
        of weights in the sum modes), float32 (float64 on the numba and torch backends for float64
        inputs).

    Gaussians with a non-positive-definite conic, opacity below 1/255 or a non-finite mean,
    conic or opacity contribute nothing. A non-finite colour channel (NaN, Inf) of a Gaussian
    reaches exactly the pixels that Gaussian contributes to -- that channel of those pixels is
    non-finite, as float arithmetic makes it -- and no other pixel, on every backend; ``alpha`` is
    unaffected. Its gradients: every colour gradient stays finite; in the sum modes only that
    Gaussian's own mean, conic and opacity gradients become non-finite; in alpha mode also those
    of Gaussians that share a tile with it (which ones depends on the backend). Leading dims
    ``...`` are independent images rendered in one launch.
    """
    tile_size = _resolve_tile_size(tile_size, backend, means, width, height)
    width, height, C, batch_shape = validate(
        means, conics, colors, opacities, width, height, mode, background, tile_size, backend
    )
    backend = _select_backend(backend, means.device, tile_size)
    B = 1
    for s in batch_shape:
        B *= s
    if means.shape[-2] == 0 or B == 0:
        return _render_empty(means, conics, colors, opacities, background, width, height, C, batch_shape,
                             backend)
    image, alpha = _rasterize_flat(
        backend, means, conics, colors, opacities, background, B, C, width, height, tile_size, mode
    )
    return (
        image.reshape(*batch_shape, height, width, C),
        alpha.reshape(*batch_shape, height, width, 1),
    )


class BinnedScene(NamedTuple):
    """A scene's geometry binned into tiles for one output size and backend
    (:func:`bin_gaussians`); :func:`rasterize_binned` renders it with any colours.

    ``means``, ``conics``, ``opacities`` are the tensors given to :func:`bin_gaussians`, flattened to
    ``[B, N, *]`` (views: gradients of a render still reach the originals). ``binning`` is the
    backend's own (:class:`gsplat2d.binning.Binning`; the numba backend's adds pixel windows and
    records in its compute dtype); None for an empty scene. The binning describes the geometry as
    it was when binned: change the tensors and bin again.
    """

    backend: str
    width: int
    height: int
    tile_size: int
    batch_shape: tuple
    means: torch.Tensor
    conics: torch.Tensor
    opacities: torch.Tensor
    binning: Any


def bin_gaussians(
    means: torch.Tensor,
    conics: torch.Tensor,
    opacities: torch.Tensor,
    width: int,
    height: int,
    *,
    tile_size: int | None = None,
    backend: str = "auto",
) -> BinnedScene:
    """The binning stage of :func:`rasterize` on its own: which Gaussians reach which
    ``tile_size x tile_size`` tile of a ``height x width`` image, in index order.

    Args as :func:`rasterize`: ``means [..., N, 2]`` (pixels), ``conics [..., N, 3]``
    (1/pixel^2), ``opacities [..., N]``. The backend is chosen here (``"auto"`` as in
    :func:`rasterize`); the numba backend computes in float64 when any of the three is float64.

    Returns a :class:`BinnedScene` for :func:`rasterize_binned`. Rendering ``k`` colour sets costs
    one binning instead of ``k`` (``bench/test_bench_cpu.py::test_binning_reused``).
    """
    # the rasterizer's checks, with a stand-in one-channel colour (colours come with each render)
    stand_in = opacities[..., None] if isinstance(opacities, torch.Tensor) else opacities
    tile_size = _resolve_tile_size(tile_size, backend, means, width, height)
    width, height, _, batch_shape = validate(
        means, conics, stand_in, opacities, width, height, "sum", None, tile_size, backend
    )
    backend = _select_backend(backend, means.device, tile_size)
    B = 1
    for s in batch_shape:
        B *= s
    N = means.shape[-2]
    m, q, o = means.reshape(B, N, 2), conics.reshape(B, N, 3), opacities.reshape(B, N)
    binning = None
    if N > 0 and B > 0:
        with fp32_region(means.device):
            if backend == "triton":
                from gsplat2d.backends.triton_function import bin_triton

                binning = bin_triton(m, q, o, width, height, tile_size)
            elif backend == "numba":
                from gsplat2d.backends.numba_function import bin_numba

                binning = bin_numba(m, q, o, width, height, tile_size)
            else:
                from gsplat2d.backends import torch_backend

                with torch.no_grad():
                    binning = torch_backend.bin_gaussians(
                        *(t.detach().contiguous() for t in (m, q, o)), width, height, tile_size)
    return BinnedScene(backend, width, height, tile_size, tuple(batch_shape), m, q, o, binning)


def rasterize_binned(
    scene: BinnedScene,
    colors: torch.Tensor,
    *,
    mode: str = "alpha",
    background: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rasterization stage of :func:`rasterize` on a :class:`BinnedScene`: equal to
    ``rasterize(means, conics, colors, opacities, width, height, mode=mode, ...)`` with the
    scene's geometry, size, tile size and backend, and differentiable in ``colors``,
    ``background`` and the scene's ``means``, ``conics`` and ``opacities``.

    Args: ``colors [..., N, C]`` with the scene's ``...`` and ``N``; ``mode`` and
    ``background`` as in :func:`rasterize`. Returns ``image [..., H, W, C]`` and
    ``alpha [..., H, W, 1]``.
    """
    if not isinstance(scene, BinnedScene):
        raise TypeError(f"scene must be a BinnedScene from gsplat2d.bin_gaussians, got {type(scene).__name__}")
    bshape = scene.batch_shape
    N = scene.means.shape[1]
    if not isinstance(colors, torch.Tensor) or colors.dim() < 1 or tuple(colors.shape[:-1]) != (*bshape, N):
        got = tuple(colors.shape) if isinstance(colors, torch.Tensor) else type(colors).__name__
        raise ValueError(f"colors must have shape {(*bshape, N)} + (C,) to match the binned scene, got {got}")
    means = scene.means.reshape(*bshape, N, 2)
    conics = scene.conics.reshape(*bshape, N, 3)
    opacities = scene.opacities.reshape(*bshape, N)
    width, height, C, _ = validate(means, conics, colors, opacities, scene.width, scene.height, mode,
                                   background, scene.tile_size, scene.backend)
    B = scene.means.shape[0]
    if scene.binning is None:
        return _render_empty(means, conics, colors, opacities, background, width, height, C, bshape,
                             scene.backend)
    image, alpha = _rasterize_flat(scene.backend, means, conics, colors, opacities, background, B, C,
                                   width, height, scene.tile_size, mode, scene.binning)
    return image.reshape(*bshape, height, width, C), alpha.reshape(*bshape, height, width, 1)
