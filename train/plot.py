"""Train/val curves as a PNG, drawn with pillow (no plotting dependency)."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence

from PIL import Image, ImageDraw

from gsplat2d._io import atomic_write

__all__ = ["plot_curves"]

_COLOURS = {"train_loss": (31, 119, 180), "val_loss": (255, 127, 14), "val_psnr": (44, 160, 44), "bicubic_psnr": (150, 150, 150)}


def _panel(draw: ImageDraw.ImageDraw, box, xs: Sequence[float], series: Dict[str, List[float]], title: str) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((x0 + 4, y0 - 14), title, fill=(0, 0, 0))
    vals = [v for s in series.values() for v in s if v is not None and math.isfinite(v)]
    if not vals or not xs:
        return
    lo, hi = min(vals), max(vals)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    xmin, xmax = min(xs), max(xs)
    span = max(xmax - xmin, 1e-12)

    def px(x: float, y: float):
        return (x0 + 8 + (x - xmin) / span * (x1 - x0 - 16), y1 - 8 - (y - lo) / (hi - lo) * (y1 - y0 - 16))

    draw.text((x0 + 4, y0 + 2), f"{hi:.4g}", fill=(80, 80, 80))
    draw.text((x0 + 4, y1 - 14), f"{lo:.4g}", fill=(80, 80, 80))
    ly = y0 + 4
    for name, ys in series.items():
        pts = [px(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
        col = _COLOURS.get(name, (0, 0, 0))
        if len(pts) > 1:
            draw.line(pts, fill=col, width=2)
        for p in pts:
            draw.ellipse((p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2), fill=col)
        draw.text((x1 - 110, ly), name, fill=col)
        ly += 12


def plot_curves(history: List[Dict[str, Any]], path: str) -> None:
    """Two panels against epoch: losses (train, val) and PSNR (val, bicubic). Atomic write."""
    img = Image.new("RGB", (720, 300), (255, 255, 255))
    d = ImageDraw.Draw(img)
    xs = [float(r["epoch"]) for r in history]
    losses = {k: [r.get(k) for r in history] for k in ("train_loss", "val_loss") if any(k in r for r in history)}
    psnr = {k: [r.get(k) for r in history] for k in ("val_psnr", "bicubic_psnr") if any(k in r for r in history)}
    _panel(d, (10, 24, 350, 280), xs, losses, "loss vs epoch")
    _panel(d, (370, 24, 710, 280), xs, psnr, "val PSNR (dB) vs epoch")
    atomic_write(path, lambda f: img.save(f, format="PNG"), suffix=".png")
