"""gsplat2d: differentiable 2D Gaussian splatting.

Handwritten Triton kernels on NVIDIA GPUs (and under ``TRITON_INTERPRET=1`` on CPU tensors), a
tiled PyTorch backend everywhere else. See ``docs/design.md`` for the stage contracts.
"""

from gsplat2d.conics import conics_from_cholesky, conics_from_scale_rotation
from gsplat2d.gaussians import Gaussians2D
from gsplat2d.rasterize import rasterize

__version__ = "0.1.0"

__all__ = [
    "Gaussians2D",
    "conics_from_cholesky",
    "conics_from_scale_rotation",
    "rasterize",
    "__version__",
]
