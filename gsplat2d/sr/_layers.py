"""Pieces both super-resolution models share: the EDSR-style backbone, the LR pixel grid the
Gaussians sit on (with its replicate-padded border ring), and the soft-bounded raw -> geometry
maps. Private: the models' docstrings describe the parameterisation."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any, Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gsplat2d.conics import covariances_from_cholesky, covariances_from_scale_rotation


class ConfigChecks:
    """Validation shared by the model configs (dataclasses): errors name ``Class.field``."""

    def _ints(self, positive: Sequence[str], non_negative: Sequence[str] = ()) -> None:
        for name in (*positive, *non_negative):
            v, low = getattr(self, name), (1 if name in positive else 0)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                what = "a positive" if low else "a non-negative"
                raise ValueError(f"{type(self).__name__}.{name} must be {what} int, got {v!r}")

    def _numbers(self, names: Sequence[str]) -> None:
        for name in names:
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{type(self).__name__}.{name} must be a positive number, got {v!r}")

    def _choice(self, name: str, allowed: Sequence[Any]) -> None:
        if getattr(self, name) not in allowed:
            raise ValueError(f"{type(self).__name__}.{name} must be one of {', '.join(map(repr, allowed))}, "
                             f"got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, d: Dict[str, Any]):
        """The validated config from a dict (a checkpoint's, or a preset's with overrides)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
        return cls(**d).validate()


class SuperResolver(nn.Module):
    """What both SR models share on top of ``encode(lr) -> field`` and ``render(field, W, H)``."""

    def forward(
        self, lr: Tensor, size: "Tuple[int, int] | None" = None, *, scale: "float | None" = None,
        backend: str = "auto",
    ) -> Tensor:
        """Super-resolve ``lr [B, C, h, w]`` to ``size = (W, H)`` pixels, or ``round(w * scale)``.

        Returns ``[B, C, H, W]`` float32 (unclamped; clamp to ``[0, 1]`` for display/metrics).
        """
        h, w = lr.shape[-2:]
        if size is None:
            if scale is None:
                raise ValueError("give size=(W, H) or scale=")
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return self.render(self.encode(lr), int(size[0]), int(size[1]), backend=backend)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check_lr(self, lr: Tensor) -> Tensor:
        """``lr`` as the network takes it: ``[B, colors, h, w]`` floats in ``[0, 1]``, cast to the
        weights' dtype (fp64 / fp16 inputs work). A ValueError names what is wrong; the value
        range is checked outside training (8-bit values are the usual mistake)."""
        c = self.config.colors
        if not isinstance(lr, Tensor) or lr.dim() != 4 or lr.shape[1] != c:
            shape = tuple(lr.shape) if isinstance(lr, Tensor) else type(lr).__name__
            raise ValueError(f"lr must be [B, {c}, H, W] floats in [0, 1], got {shape}")
        if 0 in lr.shape:
            raise ValueError(f"lr is empty: shape {tuple(lr.shape)} (B, H and W must be >= 1)")
        if not lr.is_floating_point():
            raise ValueError(f"lr must be floats in [0, 1], got {lr.dtype} (divide 8-bit images by 255)")
        if not self.training:
            top = float(lr.detach().amax())
            if top > 1.5:
                raise ValueError(f"lr values reach {top:g}; the models take [0, 1] (divide 0..255 images by 255)")
        return lr.to(self.conv_in.weight.dtype)

    def _head_output(self, lr: Tensor) -> Tensor:
        """Backbone + head on (padded) LR images ``[B, colors, H, W]`` in ``[0, 1]``: the raw
        ``[B, K * P, H, W]`` (``conv_in``, ``body``, ``conv_body`` and ``head`` are the subclass's)."""
        if lr.device.type == "cpu":  # oneDNN's convolutions run faster channels-last (~1.2x here)
            lr = lr.contiguous(memory_format=torch.channels_last)
        x = self.conv_in(lr - 0.5)
        x = x + self.conv_body(self.body(x))
        return self.head(x)


class ResBlock(nn.Module):
    def __init__(self, n: int, res_scale: float) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n, n, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(n, n, 3, padding=1))
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x) * self.res_scale


def pad_border(lr: Tensor, border: int) -> Tensor:
    """Replicate-pad ``lr [B, C, h, w]`` by ``border`` pixels on every side.

    The padded ring's Gaussians sit outside the image; they supply the weight an edge pixel would
    otherwise miss (a Gaussian field is a partition of unity only where Gaussians surround a
    point), so a flat image renders flat up to its corners, and the network sees a continued
    image instead of zeros at the edge."""
    return F.pad(lr, (border, border, border, border), mode="replicate") if border else lr


def grid_means(offsets: Tensor, h: int, w: int, k: int, border: int) -> Tensor:
    """Normalised Gaussian centres ``[B, N, 2]``: the padded grid's pixel centres (LR pixels,
    ``-border + 0.5 ...``) plus ``offsets [B, N, 2]`` (LR pixels), divided by the unpadded
    ``(w, h)``. ``N = k * (h + 2 border) * (w + 2 border)``, ordered (k, row, column)."""
    hp, wp = h + 2 * border, w + 2 * border
    dev = offsets.device
    ys = (torch.arange(hp, device=dev, dtype=torch.float32) + (0.5 - border)).view(hp, 1).expand(hp, wp)
    xs = (torch.arange(wp, device=dev, dtype=torch.float32) + (0.5 - border)).view(1, wp).expand(hp, wp)
    centres = torch.stack([xs, ys], dim=-1).reshape(1, hp * wp, 2).repeat(1, k, 1)  # [1, N, 2]
    inv = torch.tensor([1.0 / w, 1.0 / h], device=dev)
    return (centres + offsets) * inv


def soft_log_scale(raw: Tensor, init_scale: float, span: float) -> Tensor:
    """``log(init_scale) + span * tanh(raw / span)``: a log-std that moves at most ``span``."""
    return math.log(init_scale) + span * torch.tanh(raw / span)


def lr_covariances(raw3: Tensor, head: str, init_scale: float, span: float) -> Tensor:
    """Covariances ``(xx, xy, yy)`` in LR px^2 from 3 raw numbers per Gaussian: ``(log sx, log sy,
    theta)`` for the ``scale_rotation`` head, the Cholesky factor for ``cholesky``."""
    if head == "scale_rotation":
        return covariances_from_scale_rotation(torch.exp(soft_log_scale(raw3[..., 0:2], init_scale, span)), raw3[..., 2])
    l11 = init_scale * torch.exp(span * torch.tanh(raw3[..., 0] / span))
    l22 = init_scale * torch.exp(span * torch.tanh(raw3[..., 1] / span))
    l21 = init_scale * raw3[..., 2]
    return covariances_from_cholesky(torch.stack([l11, l21, l22], dim=-1))


def normalise_covariances(cov_lr: Tensor, h: int, w: int) -> Tensor:
    """LR px^2 -> normalised image units (``x / w``, ``y / h``)."""
    return cov_lr * torch.tensor([1.0 / (w * w), 1.0 / (w * h), 1.0 / (h * h)], device=cov_lr.device)


def partition_opacity(init_scale: float, k: int) -> float:
    """Opacity making K isotropic Gaussians of std ``s`` per unit cell a partition of unity (the sum
    of ``exp(-d^2 / 2 s^2)`` over a unit grid is ``2 pi s^2``), kept in [0.05, 0.95]."""
    o0 = 1.0 / (2.0 * math.pi * init_scale**2 * k)
    return min(max(o0, 0.05), 0.95)


def pixel_colors(padded: Tensor, k: int) -> Tensor:
    """The (padded) LR image's pixel colours once per Gaussian: ``[B, k * hp * wp, C]`` float32,
    in :func:`per_gaussian`'s order (k, row, column)."""
    b, c, hp, wp = padded.shape
    return padded.float().permute(0, 2, 3, 1).reshape(b, 1, hp * wp, c).expand(b, k, hp * wp, c).reshape(b, -1, c)


def per_gaussian(raw: Tensor, k: int) -> Tensor:
    """Head output ``[B, k * P, hp, wp]`` -> ``[B, k * hp * wp, P]`` (order k, row, column)."""
    b, ch, hp, wp = raw.shape
    p = ch // k
    return raw.view(b, k, p, hp, wp).permute(0, 1, 3, 4, 2).reshape(b, k * hp * wp, p)
