"""The two rasterizer backends behind :func:`gsplat2d.rasterize`.

* :mod:`.torch_backend`: a tiled PyTorch implementation of every stage (binning, forward,
  backward), any device; also the CPU backend.
* :mod:`.torch_function`: its ``torch.autograd.Function`` (forward + explicit backward).
* :mod:`.triton_function`: the ``torch.autograd.Function`` over the Triton kernels
  (:mod:`gsplat2d.kernels`).
"""

import contextlib

import torch

__all__ = ["fp32_region"]


def fp32_region(device: torch.device):
    """Context with autocast off for ``device`` (a no-op where autocast does not apply): the
    rasterizer computes in float32 (float64 for float64 inputs) inside mixed-precision code."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()
