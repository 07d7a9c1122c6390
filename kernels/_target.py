"""What the compile target decides, in one place for every launcher and the AOT report.

* :func:`fast_math`: the inline-PTX ``ex2.approx`` / ``rcp.approx`` of ``kernels/_common.py``
  run only on NVIDIA targets. AMD's assembler rejects PTX, and Triton's interpreter cannot run
  it. Elsewhere the same formulas use ``tl.exp2`` and a division.
* :data:`COMPILE_OPTIONS`: FMA contraction is on for every launch and every report compile.
  Triton 3.9 warns when ``TRITON_DEFAULT_FP_FUSION`` is unset, and 3.10 turns contraction off by
  default. Passing it explicitly keeps the kernels the same on both, and the report counts exactly
  what the launches compile.
"""

from __future__ import annotations

import functools

from gsplat2d.backends import triton_interpret

__all__ = ["COMPILE_OPTIONS", "fast_math", "fast_math_for"]

COMPILE_OPTIONS = {"enable_fp_fusion": True}


def fast_math_for(target_backend: str) -> bool:
    """Whether a compile target takes the inline-PTX fast path: Triton's target backend name
    ``"cuda"`` (NVIDIA) does; ``"hip"`` (AMD) and anything else take the portable one."""
    return target_backend == "cuda"


@functools.lru_cache(maxsize=None)
def _active_backend() -> str:
    from triton.runtime import driver

    return driver.active.get_current_target().backend


def fast_math() -> bool:
    """Whether launches here use the inline-PTX fast path: not under the interpreter, and only
    when Triton's active target is NVIDIA."""
    return not triton_interpret() and fast_math_for(_active_backend())
