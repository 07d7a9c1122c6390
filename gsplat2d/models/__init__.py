"""Image models built on the rasterizer: pixel-to-Gaussian super-resolution (:mod:`.sr`)."""

from gsplat2d.models.sr import PRESETS, Pixel2GaussianSR, SRConfig, load_model

__all__ = ["Pixel2GaussianSR", "SRConfig", "PRESETS", "load_model"]
