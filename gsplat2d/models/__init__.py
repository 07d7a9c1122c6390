"""Image models built on the rasterizer: pixel-to-Gaussian super-resolution (:mod:`.sr`)."""

from gsplat2d.models.sr import PRESETS, GaussianSR, SRConfig, load_model

__all__ = ["GaussianSR", "SRConfig", "PRESETS", "load_model"]
