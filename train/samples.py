"""Per-epoch sample strips: LR (nearest) | bicubic | SR | HR, labelled, side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from gsplat2d._io import atomic_write
from gsplat2d.eval.metrics import bicubic_upscale, psnr_y

__all__ = ["save_sample_strip"]


def _u8(x: Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def save_sample_strip(model, lr: Tensor, hr: Tensor, path: Path, device: torch.device, backend: str = "auto") -> None:
    """Render ``lr [3, h, w]`` at ``hr``'s size and write the labelled strip to ``path`` (atomic)."""
    was_training = model.training
    model.eval()
    H, W = hr.shape[-2:]
    sr = model(lr[None].to(device), (W, H), backend=backend)[0].float().clamp(0, 1).cpu()
    model.train(was_training)
    bic = bicubic_upscale(lr, (W, H))
    near = torch.nn.functional.interpolate(lr[None], size=(H, W), mode="nearest")[0]
    shave = max(1, round(W / lr.shape[-1]))
    panels = [("LR", near), (f"bicubic {psnr_y(bic, hr, shave):.2f} dB", bic), (f"SR {psnr_y(sr, hr, shave):.2f} dB", sr), ("HR", hr)]
    strip = Image.new("RGB", (4 * W + 15, H + 16), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, (label, im) in enumerate(panels):
        strip.paste(Image.fromarray(_u8(im)), (i * (W + 5), 16))
        draw.text((i * (W + 5) + 2, 2), label, fill=(0, 0, 0))
    atomic_write(path, lambda f: strip.save(f, format="PNG"), suffix=".png")
