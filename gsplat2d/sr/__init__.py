"""Super-resolution on the rasterizer: the pixel-to-Gaussian model (:mod:`.model`), the
``gsplat2d render`` command (:mod:`.render`) and the demo (:mod:`.demo`)."""

from gsplat2d.sr.model import PRESETS, Pixel2GaussianSR, SRConfig, load_model

__all__ = ["Pixel2GaussianSR", "SRConfig", "PRESETS", "load_model"]
