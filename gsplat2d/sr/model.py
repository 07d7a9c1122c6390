"""Pixel-to-Gaussian super-resolution (the ContinuousSR idea): a CNN turns a low-resolution image
into K 2D Gaussians per LR pixel in one forward pass; the field renders at any output size.

Encode once, render many sizes: :meth:`Pixel2GaussianSR.encode` returns a :class:`Gaussians2D` in
normalised image coordinates, and :meth:`Gaussians2D.render` samples it at any ``W x H``
(non-integer and non-uniform scales included) without touching the network again.

The 9 raw parameters per Gaussian (the project brief's parameterisation), in LR-pixel units:

====================  =========================================================================
``dx, dy``            offset from the LR pixel centre, ``max_offset * tanh(raw)`` (bounded)
``log sx, log sy``    log standard deviations, ``log(init_scale) + scale_span * tanh(raw / scale_span)``
                      (soft-bounded, so a Gaussian can neither vanish nor cover the image)
``theta``             rotation in radians (unbounded; periodic)
``r, g, b``           colour = the LR pixel's colour + raw (a residual, so an untrained head already
                      reproduces a smooth interpolation of the input)
``logit opacity``     opacity = sigmoid(raw + logit(init_opacity))
====================  =========================================================================

The ``cholesky`` head replaces ``(log sx, log sy, theta)`` by the Cholesky factor
``(l11, l21, l22)`` with ``l11 = init * exp(..)``, ``l22 = init * exp(..)`` (same soft bounds) and
``l21 = init * raw``.

Rendering mode ``sum`` (default) adds ``o_i exp(-sigma_i) c_i`` (GaussianImage's accumulated
summation); the initial opacity ``1 / (2 pi s^2 K)`` makes the untrained field a partition of
unity, so flat regions render at their LR colour at every scale. ``alpha`` blends front to back
in LR raster order.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from gsplat2d._io import atomic_write, load_tensors
from gsplat2d.conics import covariances_from_cholesky, covariances_from_scale_rotation
from gsplat2d.gaussians import Gaussians2D

__all__ = [
    "SRConfig",
    "PRESETS",
    "Pixel2GaussianSR",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "default_model_path",
    "CHECKPOINT_FORMAT",
]

CHECKPOINT_FORMAT = "gsplat2d.Pixel2GaussianSR"
CHECKPOINT_VERSION = 1
NUM_RAW = 9  # raw parameters per Gaussian


@dataclass
class SRConfig:
    """Architecture of :class:`Pixel2GaussianSR` (stored in every checkpoint)."""

    n_feats: int = 32  # backbone width (channels)
    n_blocks: int = 4  # EDSR residual blocks
    res_scale: float = 1.0  # residual scaling inside each block (EDSR uses 0.1 for wide models)
    k: int = 1  # Gaussians per LR pixel
    head: str = "scale_rotation"  # "scale_rotation" or "cholesky"
    mode: str = "sum"  # rasterizer mode: "sum" or "alpha"
    max_offset: float = 1.0  # |dx|, |dy| bound in LR pixels
    init_scale: float = 0.6  # initial standard deviation in LR pixels
    scale_span: float = 1.0  # log-std may move +-scale_span around log(init_scale)
    colors: int = 3  # image channels

    def validate(self) -> "SRConfig":
        ints = {"n_feats": self.n_feats, "n_blocks": self.n_blocks, "k": self.k, "colors": self.colors}
        for name, v in ints.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "n_blocks" else 1):
                raise ValueError(f"SRConfig.{name} must be a positive int, got {v!r}")
        if self.head not in ("scale_rotation", "cholesky"):
            raise ValueError(f"SRConfig.head must be 'scale_rotation' or 'cholesky', got {self.head!r}")
        if self.mode not in ("sum", "alpha"):
            raise ValueError(f"SRConfig.mode must be 'sum' or 'alpha', got {self.mode!r}")
        for name in ("res_scale", "max_offset", "init_scale", "scale_span"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"SRConfig.{name} must be a positive number, got {v!r}")
        return self

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "SRConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown SRConfig field(s): {', '.join(unknown)}")
        return cls(**d).validate()


#: Named architectures. ``tiny`` trains and runs on a CPU (the shipped default model);
#: ``base`` is EDSR-baseline width/depth for GPUs; ``cholesky`` is ``tiny`` with the Cholesky head.
PRESETS: Dict[str, SRConfig] = {
    "tiny": SRConfig(n_feats=32, n_blocks=4, k=1),
    "small": SRConfig(n_feats=48, n_blocks=8, k=2),
    "base": SRConfig(n_feats=64, n_blocks=16, k=2, res_scale=1.0),
    "cholesky": SRConfig(n_feats=32, n_blocks=4, k=1, head="cholesky"),
}


class _ResBlock(nn.Module):
    def __init__(self, n: int, res_scale: float) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n, n, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(n, n, 3, padding=1))
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x) * self.res_scale


class Pixel2GaussianSR(nn.Module):
    """EDSR-style backbone + a head predicting ``K x 9`` raw Gaussian parameters per LR pixel.

    Args:
        config: an :class:`SRConfig` (or a preset name from :data:`PRESETS`).
    """

    def __init__(self, config: Union[SRConfig, str, None] = None) -> None:
        super().__init__()
        if config is None:
            config = "tiny"
        if isinstance(config, str):
            if config not in PRESETS:
                raise ValueError(f"unknown preset {config!r}; choose one of {', '.join(PRESETS)}")
            config = SRConfig(**asdict(PRESETS[config]))
        self.config = config.validate()
        c, f = config.colors, config.n_feats
        self.conv_in = nn.Conv2d(c, f, 3, padding=1)
        self.body = nn.Sequential(*[_ResBlock(f, config.res_scale) for _ in range(config.n_blocks)])
        self.conv_body = nn.Conv2d(f, f, 3, padding=1)
        self.head = nn.Conv2d(f, config.k * (6 + c), 3, padding=1)
        # A near-zero head makes the untrained field the "init" field (LR colours, isotropic
        # Gaussians at the pixel centres), a smooth interpolator to improve on.
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)
        # Opacity giving a partition of unity for K isotropic Gaussians of std s per unit cell
        # (sum of exp(-d^2 / 2 s^2) over a unit grid = 2 pi s^2); capped for alpha blending.
        o0 = 1.0 / (2.0 * math.pi * config.init_scale**2 * config.k)
        o0 = min(max(o0, 0.05), 0.95) if config.mode == "sum" else 0.9
        self.register_buffer("_logit_o0", torch.tensor(math.log(o0 / (1.0 - o0))), persistent=False)

    # ------------------------------------------------------------------ network
    def raw_params(self, lr: Tensor) -> Tensor:
        """Raw head output ``[B, K, 6 + C, H, W]`` for LR images ``[B, C, H, W]`` in ``[0, 1]``."""
        if lr.dim() != 4 or lr.shape[1] != self.config.colors:
            raise ValueError(
                f"lr must be [B, {self.config.colors}, H, W] floats in [0, 1], got {tuple(lr.shape)}"
            )
        x = self.conv_in(lr - 0.5)
        x = x + self.conv_body(self.body(x))
        raw = self.head(x)
        b, _, h, w = raw.shape
        return raw.view(b, self.config.k, 6 + self.config.colors, h, w)

    def encode(self, lr: Tensor) -> Gaussians2D:
        """LR images ``[B, C, H, W]`` (floats in ``[0, 1]``) -> a batched field of
        ``N = K * H * W`` Gaussians per image, in normalised coordinates (``[B, N, ...]``)."""
        cfg = self.config
        raw = self.raw_params(lr).float()  # [B, K, 6 + C, H, W]; fp32 geometry even under AMP
        b, k, _, h, w = raw.shape
        raw = raw.permute(0, 1, 3, 4, 2).reshape(b, k * h * w, 6 + cfg.colors)  # [B, N, 6 + C]
        dev = raw.device
        ys = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5).view(h, 1).expand(h, w)
        xs = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5).view(1, w).expand(h, w)
        centres = torch.stack([xs, ys], dim=-1).reshape(1, h * w, 2).repeat(1, k, 1)  # [1, N, 2] LR px
        offsets = cfg.max_offset * torch.tanh(raw[..., 0:2])
        inv = torch.tensor([1.0 / w, 1.0 / h], device=dev)
        means = (centres + offsets) * inv  # [B, N, 2] normalised

        log_s0 = math.log(cfg.init_scale)
        span = cfg.scale_span
        if cfg.head == "scale_rotation":
            log_s = log_s0 + span * torch.tanh(raw[..., 2:4] / span)
            cov_lr = covariances_from_scale_rotation(torch.exp(log_s), raw[..., 4])  # LR px^2
        else:
            l11 = cfg.init_scale * torch.exp(span * torch.tanh(raw[..., 2] / span))
            l22 = cfg.init_scale * torch.exp(span * torch.tanh(raw[..., 3] / span))
            l21 = cfg.init_scale * raw[..., 4]
            cov_lr = covariances_from_cholesky(torch.stack([l11, l21, l22], dim=-1))
        cov = cov_lr * torch.tensor([1.0 / (w * w), 1.0 / (w * h), 1.0 / (h * h)], device=dev)

        base = lr.float().permute(0, 2, 3, 1).reshape(b, 1, h * w, cfg.colors).expand(b, k, h * w, cfg.colors)
        colors = base.reshape(b, k * h * w, cfg.colors) + raw[..., 5 : 5 + cfg.colors]
        opacities = torch.sigmoid(raw[..., 5 + cfg.colors] + self._logit_o0)
        return Gaussians2D(means, cov, colors, opacities, mode=cfg.mode, source_size=(w, h))

    def render(
        self, field: Gaussians2D, width: int, height: int, *, backend: str = "auto", tile_size: int = 16
    ) -> Tensor:
        """Render an encoded field to ``[B, C, height, width]`` (unclamped) with this model's mode."""
        image, _ = field.render(width, height, mode=self.config.mode, backend=backend, tile_size=tile_size)
        return image.permute(0, 3, 1, 2)

    def forward(
        self, lr: Tensor, size: Union[Tuple[int, int], None] = None, *, scale: Optional[float] = None,
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


# ---------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Union[str, "os.PathLike[str]"], model: Pixel2GaussianSR, **extra: Any) -> None:
    """Write ``{format, version, config, model, **extra}`` atomically (temp file + fsync + rename).

    ``extra`` may hold optimiser/scheduler state, epoch, RNG states and metrics (anything
    ``torch.load(weights_only=True)`` accepts: tensors, numbers, strings, lists, dicts)."""
    net = model.module if hasattr(model, "module") else model
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": asdict(net.config),
        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        **extra,
    }
    atomic_write(path, lambda f: torch.save(payload, f), suffix=".pth")


def load_checkpoint(path: Union[str, "os.PathLike[str]"], map_location: Any = "cpu") -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; never executes code from the file
    (``torch.load(weights_only=True)``). Errors name the file and what is wrong."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}")
    payload = load_tensors(path, map_location, "gsplat2d model checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a gsplat2d super-resolution checkpoint (no '{CHECKPOINT_FORMAT}' header)")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} has checkpoint version {payload.get('version')!r}; this gsplat2d reads {CHECKPOINT_VERSION}"
        )
    if not isinstance(payload.get("config"), dict) or not isinstance(payload.get("model"), dict):
        raise ValueError(f"{path} lacks the 'config' or 'model' entry")
    return payload


def default_model_path() -> str:
    """Path of the shipped default model (``gsplat2d/weights/gaussian_sr_tiny.pth``)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights", "gaussian_sr_tiny.pth")


def load_model(
    path: Union[str, "os.PathLike[str]", None] = None, map_location: Any = "cpu"
) -> Pixel2GaussianSR:
    """Build a :class:`Pixel2GaussianSR` from a checkpoint (``None``: the shipped default model), in
    eval mode, float32."""
    path = default_model_path() if path is None else os.fspath(path)
    payload = load_checkpoint(path, map_location=map_location)
    try:
        config = SRConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: bad model config: {e}") from None
    model = Pixel2GaussianSR(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["model"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not match its config: {e}") from None
    return model.to(map_location).eval()
