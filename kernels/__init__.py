"""Handwritten Triton kernels of gsplat2d and their launchers.

Modules: ``binning`` (tile bounds, intersections, tile ranges), ``rasterize_fwd``,
``rasterize_bwd``, ``report`` (ahead-of-time compile report), ``_alloc`` (output allocation,
NaN poisoning for tests). Importing this package does not import Triton; the kernel modules do.
"""

from gsplat2d.kernels._alloc import empty, poisoned, poisoning, set_poison

__all__ = ["empty", "poisoned", "poisoning", "set_poison"]
