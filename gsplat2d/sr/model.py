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
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Optional, Union

import torch
from torch import Tensor, nn

from gsplat2d._io import atomic_write, load_tensors
from gsplat2d.gaussians import Gaussians2D
from gsplat2d.sr.feature import FeatureSRConfig, GaussianFeatureSR
from gsplat2d.sr._layers import (
    ConfigChecks,
    ResBlock,
    SuperResolver,
    grid_means,
    lr_covariances,
    normalise_covariances,
    pad_border,
    partition_opacity,
    per_gaussian,
    pixel_colors,
)

__all__ = [
    "SRConfig",
    "FeatureSRConfig",
    "PRESETS",
    "preset_config",
    "build_model",
    "config_from_checkpoint",
    "GaussianFeatureSR",
    "Pixel2GaussianSR",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "default_model_path",
    "shipped_model_path",
    "resolve_model_path",
    "SHIPPED_MODELS",
    "MODEL_ALIASES",
    "PRESET_ALIASES",
    "CHECKPOINT_FORMAT",
]

CHECKPOINT_FORMAT = "gsplat2d.Pixel2GaussianSR"
CHECKPOINT_VERSION = 1
NUM_RAW = 9  # raw parameters per Gaussian


@dataclass
class SRConfig(ConfigChecks):
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
    border: int = 2  # replicate-pad the LR image by this many pixels (Gaussians outside the image edge)

    def validate(self) -> "SRConfig":
        self._ints(("n_feats", "k", "colors"), ("n_blocks", "border"))
        self._choice("head", ("scale_rotation", "cholesky"))
        self._choice("mode", ("sum", "alpha"))
        self._numbers(("res_scale", "max_offset", "init_scale", "scale_span"))
        return self


#: Named architectures. ``feature`` is the feature-splatting model
#: (:class:`gsplat2d.sr.feature.GaussianFeatureSR`), the shipped default; ``colour`` is the colour
#: model (:class:`Pixel2GaussianSR`, the pixel-to-Gaussian model of ContinuousSR) as shipped;
#: ``small`` and ``base`` (EDSR-baseline width/depth, for GPUs) are wider colour models, and
#: ``cholesky`` is ``colour`` with the Cholesky head. ``feature``'s backbone is 30 channels wide so
#: that it has about ``colour``'s parameter count (84.7k vs 86.7k).
PRESETS: Dict[str, Union[SRConfig, FeatureSRConfig]] = {
    "colour": SRConfig(n_feats=32, n_blocks=4, k=1),
    "small": SRConfig(n_feats=48, n_blocks=8, k=2),
    "base": SRConfig(n_feats=64, n_blocks=16, k=2, res_scale=1.0),
    "cholesky": SRConfig(n_feats=32, n_blocks=4, k=1, head="cholesky"),
    "feature": FeatureSRConfig(n_feats=30, n_blocks=4, k=1),
}

#: Earlier names still accepted: ``tiny`` was the colour model's name.
PRESET_ALIASES = {"tiny": "colour"}

#: Checkpoint "arch" -> config class. The colour model is stored as "pixel" (pixel-to-Gaussian),
#: and checkpoints without "arch" hold one: a key of the file format, never shown to users.
_CONFIGS = {"pixel": SRConfig, "feature": FeatureSRConfig}


def preset_config(name: str, overrides: Optional[Dict[str, Any]] = None) -> Union[SRConfig, "FeatureSRConfig"]:
    """The config of preset ``name`` (or an alias, :data:`PRESET_ALIASES`) with ``overrides``
    (field -> value) applied and validated."""
    name = PRESET_ALIASES.get(name, name)
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    base = PRESETS[name]
    return type(base).from_dict({**asdict(base), **(overrides or {})})


def build_model(config: Union[SRConfig, "FeatureSRConfig", str]) -> nn.Module:
    """The model class a config (or preset name) describes: :class:`Pixel2GaussianSR` or
    :class:`gsplat2d.sr.feature.GaussianFeatureSR`."""
    if isinstance(config, str):
        config = preset_config(config)
    return GaussianFeatureSR(config) if isinstance(config, FeatureSRConfig) else Pixel2GaussianSR(config)


def config_from_checkpoint(payload: Dict[str, Any]) -> Union[SRConfig, "FeatureSRConfig"]:
    """The validated config a checkpoint payload records (ValueError naming what is wrong)."""
    arch = payload.get("arch", "pixel")
    if arch not in _CONFIGS:
        raise ValueError(f"unknown model arch {arch!r} (this gsplat2d knows {', '.join(_CONFIGS)})")
    return _CONFIGS[arch].from_dict(payload["config"])


class Pixel2GaussianSR(SuperResolver):
    """EDSR-style backbone + a head predicting ``K x 9`` raw Gaussian parameters per LR pixel.

    Args:
        config: an :class:`SRConfig` (or a preset name from :data:`PRESETS`).
    """

    arch = "pixel"  # what a checkpoint records under "arch"

    def __init__(self, config: Union[SRConfig, str, None] = None) -> None:
        super().__init__()
        if config is None:
            config = "colour"
        if isinstance(config, str):
            config = preset_config(config)
        if not isinstance(config, SRConfig):  # e.g. the "feature" preset: use build_model
            raise ValueError(f"Pixel2GaussianSR needs an SRConfig, got {type(config).__name__}")
        self.config = config.validate()
        c, f = config.colors, config.n_feats
        self.conv_in = nn.Conv2d(c, f, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(f, config.res_scale) for _ in range(config.n_blocks)])
        self.conv_body = nn.Conv2d(f, f, 3, padding=1)
        self.head = nn.Conv2d(f, config.k * (6 + c), 3, padding=1)
        # A near-zero head makes the untrained field the "init" field (LR colours, isotropic
        # Gaussians at the pixel centres), a smooth interpolator to improve on.
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)
        o0 = partition_opacity(config.init_scale, config.k) if config.mode == "sum" else 0.9
        self.register_buffer("_logit_o0", torch.tensor(math.log(o0 / (1.0 - o0))), persistent=False)

    # ------------------------------------------------------------------ network
    def raw_params(self, lr: Tensor) -> Tensor:
        """Raw head output ``[B, K, 6 + C, H, W]`` for (padded) LR images ``[B, C, H, W]`` in ``[0, 1]``."""
        raw = self._head_output(lr)
        b, _, h, w = raw.shape
        return raw.view(b, self.config.k, 6 + self.config.colors, h, w)

    def encode(self, lr: Tensor) -> Gaussians2D:
        """LR images ``[B, C, h, w]`` (floats in ``[0, 1]``) -> a batched field of
        ``N = K (h + 2 border) (w + 2 border)`` Gaussians per image, in normalised coordinates
        (``[B, N, ...]``; the border ring's Gaussians lie just outside ``[0, 1]^2``)."""
        cfg = self.config
        lr = self._check_lr(lr)
        h, w = lr.shape[-2:]
        padded = pad_border(lr, cfg.border)
        # [B, N, 6 + C]; fp32 geometry even under AMP
        raw = per_gaussian(self._head_output(padded).float(), cfg.k)
        means = grid_means(cfg.max_offset * torch.tanh(raw[..., 0:2]), h, w, cfg.k, cfg.border)
        cov = normalise_covariances(lr_covariances(raw[..., 2:5], cfg.head, cfg.init_scale, cfg.scale_span), h, w)
        colors = pixel_colors(padded, cfg.k) + raw[..., 5 : 5 + cfg.colors]
        opacities = torch.sigmoid(raw[..., 5 + cfg.colors] + self._logit_o0)
        return Gaussians2D(means, cov, colors, opacities, mode=cfg.mode, source_size=(w, h))

    def pixel_decoder(self, field: Gaussians2D, width: int, height: int) -> Optional[Callable[[Tensor], Tensor]]:
        """What turns a rendered window ``[..., h, w, C]`` into RGB: nothing for this model (the
        field's channels are the colours). See :meth:`GaussianFeatureSR.pixel_decoder`."""
        return None

    def render(
        self, field: Gaussians2D, width: int, height: int, *, backend: str = "auto", tile_size: Optional[int] = None
    ) -> Tensor:
        """Render an encoded field to ``[B, C, height, width]`` (unclamped) with this model's mode."""
        if field.channels != self.config.colors:
            raise ValueError(
                f"this field has {field.channels} channels, the colour model renders {self.config.colors}: "
                "a feature field renders with the feature model that encoded it"
            )
        image, _ = field.render(width, height, mode=self.config.mode, backend=backend, tile_size=tile_size)
        return image.permute(0, 3, 1, 2)



# ---------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Union[str, "os.PathLike[str]"], model: nn.Module, **extra: Any) -> None:
    """Write ``{format, version, arch, config, model, **extra}`` atomically (temp file + fsync + rename).

    ``extra`` may hold optimiser/scheduler state, epoch, RNG states and metrics (anything
    ``torch.load(weights_only=True)`` accepts: tensors, numbers, strings, lists, dicts)."""
    net = model.module if hasattr(model, "module") else model
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": net.arch,
        "config": asdict(net.config),
        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        **extra,
    }
    try:
        atomic_write(path, lambda f: torch.save(payload, f), suffix=".pth")
    except RuntimeError:  # torch's C++ writer reports a failed write (disk full, quota) this way
        raise OSError(f"could not write {os.fspath(path)}: the write failed (disk full or over a quota?)") from None
    except OSError as e:
        raise OSError(f"could not write {os.fspath(path)}: {e.strerror or e}") from None


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


#: Models shipped in ``gsplat2d/weights/``, by the name ``--model_path`` also accepts.
SHIPPED_MODELS = {"feature": "gaussian_sr_feature.pth", "colour": "gaussian_sr_colour.pth"}
#: Other names of shipped models: ``tiny`` (the colour model's earlier name) and ``color``.
MODEL_ALIASES = {"tiny": "colour", "color": "colour"}
#: The default of every command: the feature-splatting model, which beat the colour model at an
#: equal training budget and size on this package's CPU runs (README model card).
DEFAULT_MODEL = "feature"


def shipped_model_path(name: str = DEFAULT_MODEL) -> str:
    """Path of a shipped model (``"feature"``: the default; ``"colour"``: the colour model)."""
    if name not in SHIPPED_MODELS:
        raise ValueError(f"no shipped model {name!r}; shipped: {', '.join(SHIPPED_MODELS)}")
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights", SHIPPED_MODELS[name])


def default_model_path() -> str:
    """Path of the shipped default model (``gsplat2d/weights/gaussian_sr_feature.pth``)."""
    return shipped_model_path(DEFAULT_MODEL)


def resolve_model_path(path: Union[str, "os.PathLike[str]", None]) -> str:
    """``None`` -> the default model; a shipped model's name (``"feature"``, ``"colour"``, or an
    alias from :data:`MODEL_ALIASES`) that is not an existing file -> that model; anything else is
    a file path."""
    if path is None:
        return default_model_path()
    path = os.fspath(path)
    name = MODEL_ALIASES.get(path, path)
    if name in SHIPPED_MODELS and not os.path.exists(path):
        return shipped_model_path(name)
    return path


def load_model(
    path: Union[str, "os.PathLike[str]", None] = None, map_location: Any = "cpu"
) -> nn.Module:
    """Build the model a checkpoint holds (:class:`Pixel2GaussianSR` or
    :class:`gsplat2d.sr.feature.GaussianFeatureSR`; ``None``: the shipped default model; ``"colour"``
    / ``"feature"``: a shipped model, see :func:`resolve_model_path`), in eval mode, float32."""
    path = resolve_model_path(path)
    payload = load_checkpoint(path, map_location=map_location)
    try:
        config = config_from_checkpoint(payload)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: bad model config: {e}") from None
    model = build_model(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["model"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not match its config: {e}") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 2} more" if len(bad) > 2 else ""
        raise ValueError(f"{path}: non-finite weights in {', '.join(bad[:2])}{more} (the run that wrote it diverged)")
    return model.to(map_location).eval()
