"""Differentiable, closed-form builders of 2D conics (inverse covariances) and covariances.

A symmetric 2x2 matrix ``[[xx, xy], [xy, yy]]`` is stored as its last dimension ``(xx, xy, yy)``;
a conic ``(a, b, c)`` is the inverse covariance ``[[a, b], [b, c]]``, so the Gaussian's exponent
at offset ``d = p - mean`` is ``-sigma`` with ``sigma = 0.5 * (a dx^2 + c dy^2) + b dx dy``.
Units follow the inputs: covariances in pixel^2 give conics in 1/pixel^2.

All functions accept any leading dimensions and any floating dtype, are differentiable by
autograd, and raise an error naming the argument when its last dimension has the wrong size.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

__all__ = [
    "conics_from_cholesky",
    "conics_from_scale_rotation",
    "conics_from_covariances",
    "covariances_from_conics",
    "covariances_from_cholesky",
    "covariances_from_scale_rotation",
]


def _check_last(x: Tensor, size: int, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != size:
        raise ValueError(f"{name} must have shape [..., {size}], got {tuple(x.shape)}")


def _sym_inverse(m: Tensor, eps: float) -> Tensor:
    """Closed-form inverse of symmetric 2x2 ``(xx, xy, yy)`` -> ``(yy, -xy, xx) / det``."""
    xx, xy, yy = m.unbind(-1)
    det = xx * yy - xy * xy
    if eps:
        det = det + eps
    return torch.stack([yy / det, -xy / det, xx / det], dim=-1)


def conics_from_covariances(covariances: Tensor, eps: float = 0.0) -> Tensor:
    """Conic ``(a, b, c)`` = inverse of the covariance ``(xx, xy, yy)``.

    Args:
        covariances: ``[..., 3]`` ``(xx, xy, yy)`` (e.g. pixel^2).
        eps: added to the determinant ``xx*yy - xy^2`` before dividing (0 = exact inverse; a
            singular covariance then gives non-finite conics, which the rasterizer skips).

    Returns:
        ``[..., 3]`` conics (e.g. 1/pixel^2).
    """
    _check_last(covariances, 3, "covariances")
    return _sym_inverse(covariances, eps)


def covariances_from_conics(conics: Tensor, eps: float = 0.0) -> Tensor:
    """Covariance ``(xx, xy, yy)`` = inverse of the conic ``(a, b, c)``.

    Args:
        conics: ``[..., 3]`` (e.g. 1/pixel^2). eps: added to the determinant ``a*c - b^2``.

    Returns:
        ``[..., 3]`` covariances (e.g. pixel^2).
    """
    _check_last(conics, 3, "conics")
    return _sym_inverse(conics, eps)


def covariances_from_cholesky(cholesky: Tensor) -> Tensor:
    """Covariance ``Sigma = L L^T`` from the lower-triangular factor ``L = [[l11, 0], [l21, l22]]``.

    Args:
        cholesky: ``[..., 3]`` ``(l11, l21, l22)`` (units of length, e.g. pixels).

    Returns:
        ``[..., 3]`` ``(l11^2, l11*l21, l21^2 + l22^2)``.
    """
    _check_last(cholesky, 3, "cholesky")
    l11, l21, l22 = cholesky.unbind(-1)
    return torch.stack([l11 * l11, l11 * l21, l21 * l21 + l22 * l22], dim=-1)


def conics_from_cholesky(cholesky: Tensor, eps: float = 0.0) -> Tensor:
    """Conic (inverse covariance) from the Cholesky factor of the COVARIANCE (GaussianImage's
    parameterisation).

    ``L = [[l11, 0], [l21, l22]]``, ``Sigma = L L^T``, ``det(Sigma) = (l11 * l22)^2``, and
    ``Sigma^{-1} = [[l21^2 + l22^2, -l11 l21], [-l11 l21, l11^2]] / det(Sigma)``.

    Args:
        cholesky: ``[..., 3]`` ``(l11, l21, l22)`` in pixels. ``l11`` and ``l22`` must be
            nonzero (their signs do not matter); otherwise ``Sigma`` is singular.
        eps: added to ``det(Sigma)`` before dividing (default 0: exact; with a zero ``l11`` or
            ``l22`` the conic is then non-finite and the rasterizer skips that Gaussian). A
            small positive value (e.g. 1e-8 for pixel units) keeps degenerate factors finite.

    Returns:
        ``[..., 3]`` conics ``(a, b, c)`` in 1/pixel^2.
    """
    _check_last(cholesky, 3, "cholesky")
    l11, l21, l22 = cholesky.unbind(-1)
    det = (l11 * l22) ** 2
    if eps:
        det = det + eps
    return torch.stack([(l21 * l21 + l22 * l22) / det, -(l11 * l21) / det, (l11 * l11) / det], dim=-1)


def _scale_rotation_terms(scales: Tensor, rotation: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    _check_last(scales, 2, "scales")
    if not isinstance(rotation, Tensor):
        rotation = torch.as_tensor(rotation, dtype=scales.dtype, device=scales.device)
    if not rotation.is_floating_point():
        raise TypeError(f"rotation must be a floating-point tensor, got dtype {rotation.dtype}")
    if rotation.dim() == scales.dim() and rotation.dim() > 0 and rotation.shape[-1] == 1:
        rotation = rotation.squeeze(-1)  # accept [..., 1]
    try:
        torch.broadcast_shapes(scales.shape[:-1], rotation.shape)
    except RuntimeError:
        raise ValueError(
            f"rotation must have shape {tuple(scales.shape[:-1])} (scales' shape without its "
            f"last dimension) or broadcast to it, got {tuple(rotation.shape)}"
        ) from None
    return scales[..., 0], scales[..., 1], torch.cos(rotation), torch.sin(rotation)


def covariances_from_scale_rotation(scales: Tensor, rotation: Tensor) -> Tensor:
    """Covariance ``Sigma = R diag(sx^2, sy^2) R^T`` (see :func:`conics_from_scale_rotation`).

    Returns:
        ``[..., 3]`` ``(cos^2 sx^2 + sin^2 sy^2, cos sin (sx^2 - sy^2), sin^2 sx^2 + cos^2 sy^2)``.
    """
    sx, sy, co, si = _scale_rotation_terms(scales, rotation)
    vx, vy = sx * sx, sy * sy
    return torch.stack([co * co * vx + si * si * vy, co * si * (vx - vy), si * si * vx + co * co * vy], dim=-1)


def conics_from_scale_rotation(scales: Tensor, rotation: Tensor) -> Tensor:
    """Conic of the Gaussian with standard deviations ``scales`` rotated by ``rotation``.

    ``Sigma = R diag(sx^2, sy^2) R^T`` with ``R = [[cos t, -sin t], [sin t, cos t]]``: the axis
    with standard deviation ``sx`` points along ``(cos t, sin t)`` in pixel coordinates
    (x right, y down). Angles are in radians and turn from +x towards +y: counter-clockwise in
    the usual y-up picture, which appears clockwise on screen because image y points down.
    Closed form: ``Sigma^{-1} = R diag(1/sx^2, 1/sy^2) R^T``, i.e.
    ``a = cos^2/sx^2 + sin^2/sy^2``, ``b = cos sin (1/sx^2 - 1/sy^2)``,
    ``c = sin^2/sx^2 + cos^2/sy^2``.

    Args:
        scales: ``[..., 2]`` standard deviations ``(sx, sy)`` in pixels (nonzero).
        rotation: ``[...]`` (or ``[..., 1]``) angle in radians, broadcastable to
            ``scales.shape[:-1]``.

    Returns:
        ``[..., 3]`` conics ``(a, b, c)`` in 1/pixel^2.
    """
    sx, sy, co, si = _scale_rotation_terms(scales, rotation)
    ix, iy = 1.0 / (sx * sx), 1.0 / (sy * sy)
    return torch.stack([co * co * ix + si * si * iy, co * si * (ix - iy), si * si * ix + co * co * iy], dim=-1)
