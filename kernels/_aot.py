"""Ahead-of-time compile descriptions of the Triton kernels.

Each kernel module lists, in ``AOT_SPECS``, the concrete specialisations it launches (signature,
constexprs, warps). :mod:`gsplat2d.kernels.report` compiles them for sm_80 / sm_90 without a GPU
and reads registers, spills and shared memory from the cubin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AotSpec:
    """One compiled variant of a kernel.

    name:       readable id, e.g. ``"rasterize_fwd[alpha,C=32]"``.
    fn:         the ``@triton.jit`` function.
    signature:  argument name -> Triton type string (``"*fp32"``, ``"i32"``, ``"i64"``,
                ``"fp32"``, ``"constexpr"``), in argument order.
    constexprs: constexpr argument name -> value.
    num_warps / num_stages / maxnreg: launch options used by the launcher for this variant.
    pairs_per_iter: (Gaussian, pixel) pairs one thread covers per iteration of the kernel's main
                (Gaussian) loop; None for kernels without one (binning). Used by the static cost
                report (:mod:`gsplat2d.kernels.cost`).
    trips:      steady-state trip counts of the main loop per iteration of each enclosing loop,
                innermost first (e.g. ``(16,)``: 16 Gaussians between two stop votes).
    cost_key:   name of the per-pair instruction budget this variant is held to
                (``kernels/cost_budget.json``), or None.
    """

    name: str
    fn: Any
    signature: dict[str, str]
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 2
    maxnreg: int | None = None
    pairs_per_iter: float | None = None
    trips: tuple = ()
    cost_key: str | None = None
