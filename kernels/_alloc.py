"""Output allocation for every launcher.

Launchers allocate with :func:`empty` so the test suite can poison new tensors (NaN for floats,
-1 for integers): an output element a kernel forgot to write then fails the comparison instead
of silently holding whatever the allocator returned.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Sequence

import torch

_POISON = os.environ.get("GSPLAT2D_POISON", "0") not in ("", "0")


def poisoning() -> bool:
    """Whether new launcher outputs are currently filled with NaN / -1."""
    return _POISON


def set_poison(enabled: bool) -> None:
    """Turn NaN/-1 filling of newly allocated launcher outputs on or off (tests turn it on)."""
    global _POISON
    _POISON = bool(enabled)


@contextlib.contextmanager
def poisoned(enabled: bool = True) -> Iterator[None]:
    """Context manager form of :func:`set_poison`."""
    old = _POISON
    set_poison(enabled)
    try:
        yield
    finally:
        set_poison(old)


def device_guard(device: torch.device):
    """Context that makes ``device`` the current CUDA device for a launch (Triton launches on
    the *current* device, which need not be the tensors' one); a no-op for CPU tensors."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def empty(shape: Sequence[int], dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """``torch.empty`` that honours poisoning. Use for every tensor a kernel fully overwrites."""
    out = torch.empty(tuple(shape), dtype=dtype, device=device)
    if _POISON:
        if out.is_floating_point():
            out.fill_(float("nan"))
        else:
            out.fill_(-1)
    return out
