"""The rasterizer backends behind :func:`gsplat2d.rasterize`.

* :mod:`.torch_backend`: a tiled PyTorch implementation of every stage (binning, forward,
  backward), any device; the cross-check of the other two.
* :mod:`.torch_function`: its ``torch.autograd.Function`` (forward + explicit backward).
* :mod:`.numba_kernels`, :mod:`.numba_backend`, :mod:`.numba_function`: the compiled CPU backend
  (kernels, launchers, ``torch.autograd.Function``), the default on CPU tensors.
* :mod:`.triton_function`: the ``torch.autograd.Function`` over the Triton kernels
  (:mod:`gsplat2d.kernels`).
"""

import contextlib
import os

import torch

__all__ = ["fp32_region", "fp32_backward", "input_grads", "compute_dtype", "triton_interpret"]

#: The values Triton's own ``getenv_bool`` reads as true (any case); anything else is false.
_TRUE = ("1", "true", "yes", "on", "y")


def triton_interpret() -> bool:
    """Whether ``TRITON_INTERPRET`` turns Triton's interpreter on, read exactly as Triton reads it
    (``tests/test_api.py`` compares with Triton's parser), without importing triton. The one
    check of the whole package."""
    return os.environ.get("TRITON_INTERPRET", "").lower() in _TRUE


def compute_dtype(*tensors) -> torch.dtype:
    """The CPU backends' compute dtype: float64 when any given tensor is float64, else float32
    (fp16/bf16 widen)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def fp32_region(device: torch.device):
    """Context with autocast off for ``device`` (a no-op where autocast does not apply): the
    rasterizer computes in float32 (float64 for float64 inputs) inside mixed-precision code."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def fp32_backward(body):
    """A ``torch.autograd.Function.backward`` that runs ``body(ctx, grad_image, grad_alpha)``
    with autocast off (backward may be called inside an autocast region; the gradients stay full
    precision). Shared by every backend's Function."""

    def backward(ctx, grad_image, grad_alpha):
        with fp32_region(grad_image.device if grad_image is not None else grad_alpha.device):
            return body(ctx, grad_image, grad_alpha)

    return staticmethod(backward)


def input_grads(ctx, grads):
    """A Function's return value from backward: each input gradient in its input's dtype
    (``ctx.dtypes``) where ``ctx.needs_input_grad`` asks for it, else None; None for the five
    non-tensor arguments (width, height, tile_size, mode, binning)."""
    need = ctx.needs_input_grad
    return (
        *(g.to(dt) if need[i] and g is not None else None for i, (g, dt) in enumerate(zip(grads, ctx.dtypes))),
        None, None, None, None, None,
    )
