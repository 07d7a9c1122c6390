"""Super-resolution on the rasterizer: the pixel-to-Gaussian colour model (:mod:`.model`), the
feature-splatting model (:mod:`.feature`), the ``gsplat2d render`` command (:mod:`.render`) and
the demo (:mod:`.demo`)."""

from gsplat2d.sr.feature import FeatureSRConfig, GaussianFeatureSR
from gsplat2d.sr.model import PRESETS, Pixel2GaussianSR, SRConfig, build_model, load_model, preset_config

__all__ = [
    "Pixel2GaussianSR",
    "SRConfig",
    "GaussianFeatureSR",
    "FeatureSRConfig",
    "PRESETS",
    "preset_config",
    "build_model",
    "load_model",
]
