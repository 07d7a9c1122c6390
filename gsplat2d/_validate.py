"""Input checks for :func:`gsplat2d.rasterize`. Every error names the offending argument."""

from __future__ import annotations

import torch

from gsplat2d.binning import MODES

#: Largest accepted output side, in pixels (a 30x upscale of a 2K image is ~60k).
MAX_SIDE = 65536
#: Largest whole-image output of the applications, in pixels (a uint8 RGB result alone is 3 bytes
#: per pixel: 768 MiB); rasterizing is windowed there, so this bounds the result, not a launch.
MAX_PIXELS = 2**28

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BACKENDS = ("auto", "numba", "triton", "torch")


def check_output_pixels(width: int, height: int) -> None:
    """ValueError for an output side outside ``[1, MAX_SIDE]`` or more than :data:`MAX_PIXELS`
    pixels in all (exact numbers in the message)."""
    if width < 1 or height < 1:
        raise ValueError(f"output size {width}x{height} is empty (each side must be >= 1 px)")
    if width > MAX_SIDE or height > MAX_SIDE:
        raise ValueError(f"output size {width}x{height} exceeds the largest side, {MAX_SIDE} px")
    if width * height > MAX_PIXELS:
        raise ValueError(f"output size {width}x{height} = {width * height:,} pixels exceeds the "
                         f"limit of {MAX_PIXELS:,} pixels")


def device_memory_bytes(device: torch.device) -> int | None:
    """Total memory of ``device`` in bytes (None when unknown)."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.get_device_properties(device).total_memory)
        if device.type == "cpu":
            import os

            return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError, RuntimeError):
        return None
    return None


def _check_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (fp16/bf16/fp32/fp64), got {t.dtype}")
    return t


def _check_int(name: str, v: object, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        try:
            import numpy as np

            if isinstance(v, np.integer):
                v = int(v)
            else:
                raise TypeError
        except TypeError:
            raise TypeError(f"{name} must be an int, got {type(v).__name__}") from None
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {v}")
    return int(v)


def validate(
    means: torch.Tensor,
    conics: torch.Tensor,
    colors: torch.Tensor,
    opacities: torch.Tensor,
    width: int,
    height: int,
    mode: str,
    background: torch.Tensor | None,
    tile_size: int,
    backend: str,
) -> tuple[int, int, int, torch.Size]:
    """Check the arguments of :func:`gsplat2d.rasterize`.

    Returns ``(width, height, C, batch_shape)``.
    """
    _check_tensor("means", means)
    _check_tensor("conics", conics)
    _check_tensor("colors", colors)
    _check_tensor("opacities", opacities)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    width = _check_int("width", width, 1, MAX_SIDE)
    height = _check_int("height", height, 1, MAX_SIDE)
    tile_size = _check_int("tile_size", tile_size, 1, 256)

    if means.dim() < 2 or means.shape[-1] != 2:
        raise ValueError(f"means must have shape [..., N, 2], got {tuple(means.shape)}")
    batch_shape = means.shape[:-2]
    N = means.shape[-2]
    if conics.shape != (*batch_shape, N, 3):
        raise ValueError(
            f"conics must have shape {(*batch_shape, N, 3)} to match means, got {tuple(conics.shape)}"
        )
    if colors.dim() != means.dim() or colors.shape[:-1] != (*batch_shape, N):
        raise ValueError(
            f"colors must have shape {(*batch_shape, N)} + (C,) to match means, "
            f"got {tuple(colors.shape)}"
        )
    C = colors.shape[-1]
    if C < 1:
        raise ValueError("colors must have at least one channel (C >= 1), got C = 0")
    if opacities.shape != (*batch_shape, N):
        raise ValueError(
            f"opacities must have shape {(*batch_shape, N)} to match means, "
            f"got {tuple(opacities.shape)}"
        )
    if background is not None:
        if mode != "alpha":
            raise ValueError(f"background is only defined for mode='alpha'; mode {mode!r} has none")
        _check_tensor("background", background)
        if background.shape != (*batch_shape, C):
            raise ValueError(
                f"background must have shape {(*batch_shape, C)}, got {tuple(background.shape)}"
            )
    tensors = {"means": means, "conics": conics, "colors": colors, "opacities": opacities}
    if background is not None:
        tensors["background"] = background
    dev = means.device
    for name, t in tensors.items():
        if t.device != dev:
            raise ValueError(f"{name} is on {t.device} but means is on {dev}; use one device")
    B = 1
    for s in batch_shape:
        B *= s
    out_bytes = B * height * width * (C + 2) * 4
    avail = device_memory_bytes(dev)
    if avail is not None and out_bytes > avail:
        raise ValueError(
            f"width x height = {width} x {height} (batch {B}, C = {C}) needs "
            f"{out_bytes / 2**30:.1f} GiB of output but {dev} has {avail / 2**30:.1f} GiB; "
            "render a smaller size or in pieces"
        )
    return width, height, C, batch_shape
