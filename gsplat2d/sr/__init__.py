"""Super-resolution on the rasterizer: the pixel-to-Gaussian colour model (:mod:`.model`), the
feature-splatting model (:mod:`.feature`), encoding an image and rendering a field to an array
(:mod:`.rendering`), and the ``gsplat2d render`` command (:mod:`.render`). Measuring models (the
``test`` and ``demo`` commands) is :mod:`gsplat2d.eval`'s job."""

from gsplat2d.sr.feature import FeatureSRConfig, GaussianFeatureSR
from gsplat2d.sr.model import PRESETS, Pixel2GaussianSR, SRConfig, build_model, load_model, preset_config
from gsplat2d.sr.rendering import encode_image, render_to_array

__all__ = [
    "Pixel2GaussianSR",
    "SRConfig",
    "GaussianFeatureSR",
    "FeatureSRConfig",
    "PRESETS",
    "preset_config",
    "build_model",
    "load_model",
    "encode_image",
    "render_to_array",
]
