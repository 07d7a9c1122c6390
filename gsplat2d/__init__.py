"""gsplat2d: differentiable 2D Gaussian splatting.

Handwritten Triton kernels on NVIDIA GPUs (and under ``TRITON_INTERPRET=1`` on CPU tensors), a
tiled PyTorch backend everywhere else. See ``docs/design.md`` for the stage contracts.
"""

from gsplat2d._process import apply_command_defaults

apply_command_defaults()  # before torch loads: OpenMP's wait policy for the commands (see _process)

from gsplat2d.conics import conics_from_cholesky, conics_from_scale_rotation  # noqa: E402
from gsplat2d.gaussians import Gaussians2D  # noqa: E402
from gsplat2d.rasterize import BinnedScene, bin_gaussians, rasterize, rasterize_binned  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BinnedScene",
    "Gaussians2D",
    "bin_gaussians",
    "rasterize_binned",
    "conics_from_cholesky",
    "conics_from_scale_rotation",
    "rasterize",
    "__version__",
]
