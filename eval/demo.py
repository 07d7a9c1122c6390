"""``gsplat2d demo``: super-resolve a bundled photo crop at x2, x3.5 and x4 (and one non-uniform
size) with the default model, against bicubic, in about ten seconds on a CPU.

The high-resolution (HR) image is ``gsplat2d/assets/kodim23_crop.png`` (a 252x168 crop of Kodak
image 23). For each scale the low-resolution (LR) input is made from it with MATLAB-style bicubic
downscaling (``gsplat2d.eval.resize.imresize``, the resize that made the SR benchmarks), encoded
ONCE into a Gaussian field, and the field is rendered at the HR size; the x2 field is also
rendered at 2x horizontally by 3x vertically, a size no fixed-scale network can produce.
Y-channel PSNR/SSIM (BT.601, border ``ceil(scale)`` shaved) against the HR crop are printed for
the model and for bicubic upscaling of the same LR image.

Writes to ``--output_dir`` (default ``./demo_output``): ``lr_x*.png`` (the inputs, to try
``gsplat2d render`` on), ``sr_x*.png`` (the model's outputs) and ``comparison.png`` (LR nearest
| bicubic | model | HR, one row per case).

Also ``python -m gsplat2d.eval.demo``. ``--image`` runs the same protocol on your own picture (centre
crop of at most 504x504 px).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from gsplat2d.cli.common import add_alias, add_runtime_args, apply_runtime_args, check_folder_creatable
from gsplat2d.gaussians import Gaussians2D
import gsplat2d
from gsplat2d._io import short_load_error
from gsplat2d.cli.common import UserError, load_image_file, run_command, save_image_atomic
from gsplat2d.sr.rendering import encode_image, render_to_array, sync, warm_up

__all__ = ["ASSET", "SCALES", "main"]

_PROG = "gsplat2d demo"
#: The bundled HR image (252x168: a multiple of 28, so x2, x3.5 and x4 all divide it exactly).
ASSET = Path(gsplat2d.__file__).resolve().parent / "assets" / "kodim23_crop.png"
SCALES = (2.0, 3.5, 4.0)
NONUNIFORM = (2.0, 3.0)  # (horizontal, vertical) factors applied to the first scale's LR image
_MAX_SIDE = 504  # --image is centre-cropped to at most this (keeps the demo fast)


def _lcm_numerators(scales: Sequence[float]) -> int:
    """Smallest HR side divisible by every scale (``HR / s`` integral): lcm of the numerators."""
    m = 1
    for s in scales:
        p = Fraction(s).limit_denominator(100).numerator
        m = m * p // math.gcd(m, p)
    return m


def _centre_crop(a: np.ndarray, h: int, w: int) -> np.ndarray:
    y0, x0 = (a.shape[0] - h) // 2, (a.shape[1] - w) // 2
    return a[y0 : y0 + h, x0 : x0 + w]


def _bicubic(img_u8: np.ndarray, width: int, height: int) -> np.ndarray:
    """MATLAB ``imresize(img, [height width], 'bicubic')`` on uint8 ``[H, W, 3]`` (antialiased
    when shrinking), uint8 result."""
    from gsplat2d.eval.resize import imresize

    return imresize(img_u8, size=(height, width))


def _to_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float().div_(255.0)


def _fmt_scale(s: float) -> str:
    return f"{s:g}"


def _label_panel(img: np.ndarray, text: str, font, band: int) -> Image.Image:
    h, w = img.shape[:2]
    panel = Image.new("RGB", (w, h + band), (255, 255, 255))
    panel.paste(Image.fromarray(img), (0, band))
    ImageDraw.Draw(panel).text((3, 1), text, fill=(0, 0, 0), font=font)
    return panel


def _comparison(rows: List[List[tuple]], gap: int = 4) -> Image.Image:
    """rows: lists of ``(uint8 image, label)``; panels of a row share one size."""
    try:
        font = ImageFont.load_default(size=11)
    except TypeError:  # pillow < 10.1: fixed bitmap font
        font = ImageFont.load_default()
    band = 15
    built = []
    for row in rows:
        panels = [_label_panel(img, text, font, band) for img, text in row]
        w = sum(p.width for p in panels) + gap * (len(panels) - 1)
        h = max(p.height for p in panels)
        r = Image.new("RGB", (w, h), (255, 255, 255))
        x = 0
        for p in panels:
            r.paste(p, (x, 0))
            x += p.width + gap
        built.append(r)
    canvas = Image.new("RGB", (max(r.width for r in built), sum(r.height for r in built) + gap * (len(built) - 1)),
                       (255, 255, 255))
    y = 0
    for r in built:
        canvas.paste(r, (0, y))
        y += r.height + gap
    return canvas


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=_PROG,
        description="Super-resolve a bundled image at x2, x3.5, x4 and a non-uniform 2x3 size with the "
        "default (or a given) model; compare with bicubic; write the outputs and a comparison picture.",
    )
    p.add_argument("--model_path",
                   help="model checkpoint (.pth), or a shipped model: 'feature' (the default) or 'colour' (the colour model)")
    p.add_argument("--output_dir", default="demo_output", help="output folder (default ./demo_output)")
    p.add_argument("--image", help=f"use this HR image instead of the bundled one (centre crop, at most "
                   f"{_MAX_SIDE}x{_MAX_SIDE})")
    add_runtime_args(p)
    add_alias(p, "--output_dir", "--out_dir")
    # For tests: a 56x56 centre crop of the HR image.
    p.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)
    return p


def _load_hr(image: Optional[str], quick: bool) -> Tuple[Path, np.ndarray, bool]:
    """The HR image (``--image`` or the bundled one) centre-cropped to a multiple of every scale;
    returns its path, the crop and whether cropping changed its size."""
    src = Path(image) if image else ASSET
    if not src.is_file():
        raise UserError(f"image not found: {src}" + ("" if image else " (the bundled demo image is missing)"))
    hr_full = (load_image_file(src).permute(1, 2, 0) * 255.0).round().to(torch.uint8).numpy()
    unit = _lcm_numerators(SCALES)  # 28
    limit = 56 if quick else _MAX_SIDE
    H = min(hr_full.shape[0], limit) // unit * unit
    W = min(hr_full.shape[1], limit) // unit * unit
    if H < unit or W < unit:
        raise UserError(f"{src} is {hr_full.shape[1]}x{hr_full.shape[0]}; the demo needs at least {unit}x{unit} px")
    return src, _centre_crop(hr_full, H, W), (W, H) != hr_full.shape[1::-1]


def _load_demo_model(model_path: Optional[str], device: torch.device) -> Tuple[torch.nn.Module, str]:
    """The model (``--model_path`` or the shipped one) on ``device``, with the path it came from."""
    from gsplat2d.sr.model import load_model, resolve_model_path

    mpath = resolve_model_path(model_path)
    try:
        model = load_model(mpath, map_location="cpu").to(device)
    except FileNotFoundError as e:
        raise UserError(f"{e}" + ("" if model_path else " (the shipped default model is missing)")) from None
    except ValueError as e:
        raise UserError(short_load_error(e)) from None
    return model, mpath


@dataclass
class _Demo:
    """What every demo case shares: the model, where it runs and the HR image."""

    model: torch.nn.Module
    mode: str
    backend: str
    device: torch.device
    out_dir: Path
    hr: np.ndarray
    hr_t: torch.Tensor


@dataclass
class _EncodedLR:
    """One scale's LR input and its Gaussian field, encoded once and rendered at every size."""

    scale: float
    lr: np.ndarray
    w: int
    h: int
    field: Gaussians2D
    enc_ms: float


class _CaseRow(NamedTuple):
    """One line of the printed table; NaN where a value does not apply."""

    name: str
    size: str
    bic_psnr: float
    bic_ssim: float
    sr_psnr: float
    sr_ssim: float
    enc_ms: float
    ren_ms: float


def _encode_scale(demo: _Demo, s: float) -> _EncodedLR:
    """Makes the LR input at scale ``s``, writes it as ``lr_x{s}.png`` and times its encoding."""
    H, W = demo.hr.shape[:2]
    w, h = int(round(W / s)), int(round(H / s))
    lr = _bicubic(demo.hr, w, h)
    save_image_atomic(lr, demo.out_dir / f"lr_x{_fmt_scale(s)}.png")
    sync(demo.device)
    t0 = time.perf_counter()
    field = encode_image(demo.model, _to_tensor(lr))
    sync(demo.device)
    return _EncodedLR(s, lr, w, h, field, (time.perf_counter() - t0) * 1e3)


def _output_sizes(enc: _EncodedLR, W: int, H: int, first: bool) -> List[Tuple[str, int, int, bool]]:
    """``(name, width, height, has HR)`` to render ``enc`` at: the HR size, plus the non-uniform
    size for the first scale."""
    s = enc.scale
    sizes = [(f"x{_fmt_scale(s)}", W, H, True)]
    if first:
        sx, sy = NONUNIFORM
        sizes.append((f"{_fmt_scale(sx)}x{_fmt_scale(sy)} of x{_fmt_scale(s)}", int(round(enc.w * sx)),
                      int(round(enc.h * sy)), False))
    return sizes


def _score_case(
    demo: _Demo, sr: np.ndarray, bic: np.ndarray, s: float, has_hr: bool
) -> Tuple[Tuple[float, float, float, float], Tuple[np.ndarray, str], Tuple[str, str]]:
    """Bicubic and model PSNR/SSIM against the HR image, the HR panel and the bicubic and model
    panel labels; NaN scores and a blank panel when there is no HR image at this size."""
    from gsplat2d.eval.metrics import psnr_y, ssim_y

    if not has_hr:
        return (math.nan,) * 4, (np.full_like(sr, 235), "(no HR at this size)"), ("bicubic", "model")
    shave = int(math.ceil(s))
    sr_t, bic_t = _to_tensor(sr), _to_tensor(bic)
    m = (psnr_y(bic_t, demo.hr_t, shave), ssim_y(bic_t, demo.hr_t, shave),
         psnr_y(sr_t, demo.hr_t, shave), ssim_y(sr_t, demo.hr_t, shave))
    return m, (demo.hr, "HR"), (f"bicubic {m[0]:.2f} dB", f"model {m[2]:.2f} dB")


def _render_case(
    demo: _Demo, enc: _EncodedLR, name: str, ow: int, oh: int, has_hr: bool, enc_ms: float
) -> Tuple[_CaseRow, List[tuple]]:
    """Renders ``enc`` at ``ow x oh``, writes ``sr_{name}.png`` and scores it against bicubic;
    returns its table line and its comparison row (LR nearest | bicubic | model | HR)."""
    t1 = time.perf_counter()
    sr = render_to_array(enc.field, ow, oh, mode=demo.mode, backend=demo.backend, model=demo.model)
    sync(demo.device)
    ren_ms = (time.perf_counter() - t1) * 1e3
    bic = _bicubic(enc.lr, ow, oh)
    fname = "sr_" + name.replace(" ", "_") + ".png"
    save_image_atomic(sr, demo.out_dir / fname)
    nearest = np.asarray(Image.fromarray(enc.lr).resize((ow, oh), Image.NEAREST))
    m, hr_panel, labels = _score_case(demo, sr, bic, enc.scale, has_hr)
    panels = [(nearest, f"{name}: LR {enc.w}x{enc.h}, nearest"), (bic, labels[0]), (sr, labels[1]), hr_panel]
    return _CaseRow(name, f"{ow}x{oh}", *m, enc_ms, ren_ms), panels


def _cell(v: float, d: int) -> str:
    """``v`` with ``d`` decimals, ``-`` for NaN."""
    return "-" if math.isnan(v) else f"{v:.{d}f}"


def _print_table(table: List[_CaseRow]) -> None:
    """Prints the scores and timings of every case, then the metric note."""
    head = f"{'scale':<13}{'output':>9}  {'bicubic PSNR/SSIM':>18}  {'model PSNR/SSIM':>18}  {'encode ms':>9}  {'render ms':>9}"
    print(head)
    print("-" * len(head))
    for name, size, bp, bs, sp, ss, em, rm in table:
        print(f"{name:<13}{size:>9}  {_cell(bp, 2) + ' / ' + _cell(bs, 4):>18}  "
              f"{_cell(sp, 2) + ' / ' + _cell(ss, 4):>18}  {_cell(em, 1):>9}  {_cell(rm, 1):>9}")
    print("PSNR/SSIM: Y channel (BT.601), border of ceil(scale) px shaved; encode runs once per LR image.")


def _run(args: argparse.Namespace) -> int:
    """Runs the demo: every scale and size, the comparison picture and the printed table."""
    t_start = time.perf_counter()
    check_folder_creatable(args.output_dir, "--output_dir")  # before the model runs
    src, hr, cropped = _load_hr(args.image, args.quick)
    device = apply_runtime_args(args)
    model, mpath = _load_demo_model(args.model_path, device)
    mode = model.config.mode
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    H, W = hr.shape[:2]
    print(f"model: {mpath} ({model.num_parameters():,} parameters, mode {mode}), device {device}")
    print(f"HR image: {src.name} {W}x{H}" + (" (centre crop)" if cropped else ""))

    warm_up(model, mode, args.backend, device)  # one-off start-up and JIT costs out of the timings

    demo = _Demo(model, mode, args.backend, device, out_dir, hr, _to_tensor(hr))
    table: List[_CaseRow] = []
    rows: List[List[tuple]] = []
    for i, s in enumerate(SCALES):
        enc = _encode_scale(demo, s)
        enc_ms = enc.enc_ms
        for name, ow, oh, has_hr in _output_sizes(enc, W, H, first=i == 0):
            line, panels = _render_case(demo, enc, name, ow, oh, has_hr, enc_ms)
            table.append(line)
            rows.append(panels)
            enc_ms = math.nan  # encoded once: later sizes of this LR cost no encode

    save_image_atomic(np.asarray(_comparison(rows)), out_dir / "comparison.png")
    _print_table(table)
    print(f"wrote {len(table)} SR images, the LR inputs and comparison.png to {out_dir} "
          f"({time.perf_counter() - t_start:.1f} s)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``gsplat2d demo``; returns the exit status."""
    return run_command(_PROG, _build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
