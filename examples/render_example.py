"""Render a colourful pattern of a few thousand 2D Gaussians with both modes at two sizes.

    python examples/render_example.py --out out/example.png

The scene is a :class:`gsplat2d.Gaussians2D` in normalised coordinates ([0, 1] x [0, 1], sizes as
fractions of the image), so the same Gaussians render at any output size. Writes ``<out>`` (alpha mode, large size) and
``<out stem>-<mode>-<W>x<H>.png`` for every render, and prints render times.
Backend ``auto``: Triton kernels on a CUDA device, the tiled PyTorch backend on CPU.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch
from PIL import Image

import gsplat2d


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """h, s, v in [0, 1] -> rgb [..., 3]."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], -1)
    f = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return v[..., None] - v[..., None] * s[..., None] * f


def make_pattern(n_spiral: int = 2400, grid: int = 24, seed: int = 0):
    """A scene in normalised coordinates: a two-armed spiral of elongated Gaussians, then a
    backdrop grid of soft blobs. Alpha mode composites front to back in index order, so the
    spiral (first) lies in front of the grid (second).

    Returns (means [N,2] in [0,1], stds [N,2] in normalised units (fractions of the image width /
    height), rotation angles [N] in radians, colors [N,3], opacities [N]).
    """
    g = torch.Generator().manual_seed(seed)
    # Spiral "galaxy": two arms, hue by angle, elongated along the arm.
    t = torch.rand(n_spiral, generator=g)
    arm = (torch.rand(n_spiral, generator=g) < 0.5).float()
    theta = 4.0 * math.pi * t + math.pi * arm
    r = 0.05 + 0.40 * t
    jitter = 0.012 * torch.randn(n_spiral, 2, generator=g)
    sp_means = torch.stack([0.5 + r * torch.cos(theta), 0.5 + r * torch.sin(theta)], -1) + jitter
    sp_stds = torch.stack([0.004 + 0.010 * t, 0.002 + 0.004 * t], -1) * torch.exp(0.25 * torch.randn(n_spiral, 2, generator=g))
    sp_angles = theta + math.pi / 2  # along the arm
    sp_colors = hsv_to_rgb((theta / (2 * math.pi)) % 1.0, 0.55 + 0.45 * t, torch.full_like(t, 1.0))
    sp_opac = 0.5 + 0.5 * torch.rand(n_spiral, generator=g)

    # Backdrop: a grid of round blobs in a blue-violet gradient.
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    gx = (xs.flatten().float() + 0.5) / grid
    gy = (ys.flatten().float() + 0.5) / grid
    gr_means = torch.stack([gx, gy], -1)
    gr_stds = torch.full((grid * grid, 2), 0.45 / grid)
    gr_angles = torch.zeros(grid * grid)
    gr_colors = hsv_to_rgb(0.55 + 0.25 * gx, 0.6 + 0.2 * gy, 0.25 + 0.25 * gy)
    gr_opac = torch.full((grid * grid,), 0.9)

    cat = lambda a, b: torch.cat([a, b], 0)  # noqa: E731
    return (cat(sp_means, gr_means), cat(sp_stds, gr_stds), cat(sp_angles, gr_angles),
            cat(sp_colors, gr_colors), cat(sp_opac, gr_opac))


def save_png(image: torch.Tensor, path: str) -> None:
    arr = (image.detach().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(arr, mode="RGB").save(path)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/example.png", help="output PNG (alpha mode, largest size)")
    p.add_argument("--sizes", default="256x256,1024x768", help="comma-separated WxH list")
    p.add_argument("--n", type=int, default=2400, help="Gaussians in the spiral (plus a 24x24 grid)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backend", default="auto", choices=["auto", "numba", "torch", "triton"])
    p.add_argument("--repeats", type=int, default=3, help="timed renders per image (best is printed)")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    means, stds, angles, colors, opac = (t.to(device) for t in make_pattern(args.n))
    scenes = {
        "alpha": gsplat2d.Gaussians2D.from_scale_rotation(means, stds, angles, colors, opac),
        # sum mode adds the weighted colours up: dim them so the spiral does not saturate
        "sum": gsplat2d.Gaussians2D.from_scale_rotation(means, stds, angles, colors * 0.35, opac),
    }
    background = torch.tensor([0.02, 0.02, 0.05], device=device)
    stem, ext = os.path.splitext(args.out)
    print(f"{means.shape[0]} Gaussians, device {device}, backend {args.backend}, torch {torch.__version__}")

    for width, height in sizes:
        for mode, scene in scenes.items():
            kw = dict(mode=mode, backend=args.backend, background=background if mode == "alpha" else None)
            times = []
            with torch.no_grad():
                for _ in range(max(1, args.repeats)):
                    sync(device)
                    t0 = time.perf_counter()
                    image, alpha = scene.render(width, height, **kw)
                    sync(device)
                    times.append(time.perf_counter() - t0)
            path = f"{stem}-{mode}-{width}x{height}{ext or '.png'}"
            save_png(image, path)
            print(f"{mode:>5} {width}x{height}: first {times[0] * 1e3:8.1f} ms, best {min(times) * 1e3:8.1f} ms "
                  f"-> {path}")
            if mode == "alpha" and (width, height) == sizes[-1]:
                save_png(image, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
