"""SR evaluation building blocks: Y-channel PSNR/SSIM, mod-crop, image loading, PIL bicubic.

Conventions follow the super-resolution literature (and ``/work/shared/data/README.md``):
images are float tensors ``[C, H, W]`` (or batched ``[..., C, H, W]``) in ``[0, 1]``; metrics are
computed on the ITU-R BT.601 luma (``[16, 235] / 255`` range, like MATLAB ``rgb2ycbcr``) after
quantising to 8 bit, with ``shave`` pixels cut from every border, and HR images are mod-cropped
to a multiple of the scale. ``round_hr_y=True`` (used by ``python -m gsplat2d.eval``) additionally
rounds the ground truth's Y to 8 bit as MATLAB does, which reproduces the published Set5 bicubic
figures; see ``gsplat2d.eval.resize`` for the MATLAB ``imresize`` baseline.
"""

from __future__ import annotations

from pathlib import Path

from typing import Optional, Tuple

import numpy as np
import torch
from PIL import Image
# torchmetrics.functional.peak_signal_noise_ratio / ...structural_similarity_index_measure are
# deprecated wrappers (FutureWarning in torchmetrics 1.9) around these implementations.
from gsplat2d.image_files import read_image_uint8
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

__all__ = [
    "rgb_to_y", "mod_crop", "psnr_y", "ssim_y", "ms_ssim_y", "load_image", "load_image_uint8", "bicubic_upscale",
]


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma of an RGB image, as MATLAB ``rgb2ycbcr`` computes it.

    Args:
        img: float tensor ``[..., 3, H, W]`` with values in ``[0, 1]``. A greyscale tensor
            ``[..., 1, H, W]`` is returned unchanged (it is taken to be luma already, not
            rescaled to ``[16, 235]``).

    Returns:
        ``[..., 1, H, W]`` float tensor, ``Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255``,
        i.e. in ``[16/255, 235/255]`` for inputs in ``[0, 1]``.
    """
    if img.dim() < 3 or img.shape[-3] not in (1, 3):
        raise ValueError(f"expected [..., 3, H, W] or [..., 1, H, W], got {tuple(img.shape)}")
    if img.shape[-3] == 1:
        return img
    img = img.to(torch.float64) if img.dtype == torch.float64 else img.float()
    r, g, b = img[..., 0:1, :, :], img[..., 1:2, :, :], img[..., 2:3, :, :]
    return (16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def mod_crop(img: torch.Tensor, scale: int) -> torch.Tensor:
    """Crop ``[..., H, W]`` to ``H - H % scale`` by ``W - W % scale``, keeping the top-left corner.

    This is MATLAB ``modcrop``, the crop the benchmark LR images were made from.
    """
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    scale = int(scale)
    h, w = img.shape[-2], img.shape[-1]
    return img[..., : h - h % scale, : w - w % scale]


def _luma(x: torch.Tensor, grey: bool) -> torch.Tensor:
    """Y of ``[N, C, H, W]`` float64 in [0, 1]: BT.601 ``[16, 235]`` Y, or for greyscale images the
    full-range grey level (MATLAB skips ``rgb2ycbcr`` for one-channel images): the BT.601 weights
    normalised to sum to 1, which is exactly ``g`` for ``R = G = B = g``."""
    if not grey or x.shape[-3] == 1:
        return rgb_to_y(x)
    r, g, b = x[..., 0:1, :, :], x[..., 1:2, :, :], x[..., 2:3, :, :]
    return (65.481 * r + 128.553 * g + 24.966 * b) / 219.0


def _prepare(
    sr: torch.Tensor, hr: torch.Tensor, shave: int, round_hr_y: bool = False, grey: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise to 8 bit, take Y, shave borders; returns two ``[N, 1, H', W']`` float64 tensors."""
    if sr.shape != hr.shape:
        raise ValueError(f"sr and hr shapes differ: {tuple(sr.shape)} vs {tuple(hr.shape)}")
    if shave < 0:
        raise ValueError(f"shave must be >= 0, got {shave}")
    out = []
    for x, round_y in ((sr, False), (hr, round_hr_y)):
        x = torch.round(x.detach().to(torch.float64).clamp(0.0, 1.0) * 255.0) / 255.0
        y = _luma(x, grey)
        if round_y:  # MATLAB rgb2ycbcr on a uint8 image returns uint8 Y (round half away from 0)
            y = torch.floor(y * 255.0 + 0.5) / 255.0
        if shave:
            y = y[..., shave:-shave, shave:-shave]
        if y.shape[-1] == 0 or y.shape[-2] == 0:
            raise ValueError(f"shave={shave} leaves nothing of a {tuple(x.shape[-2:])} image")
        out.append(y.reshape(-1, 1, *y.shape[-2:]))
    return out[0], out[1]


def psnr_y(
    sr: torch.Tensor, hr: torch.Tensor, shave: int, *, round_hr_y: bool = False, grey: bool = False
) -> float:
    """PSNR in dB on the Y channel, the SR-literature way.

    Both images (``[..., 3 or 1, H, W]``, floats in ``[0, 1]``, same shape) are clamped and
    quantised to 8 bit (``round(x * 255) / 255``), converted to BT.601 Y, ``shave`` pixels are cut
    from each border, and PSNR is computed with data range 1.0 over all remaining pixels
    (a batch is pooled into one MSE). Identical inputs give ``inf`` (torchmetrics' result).

    Keyword options (``python -m gsplat2d.eval`` sets both, see ``gsplat2d.eval.cli.METRIC``;
    the defaults keep the older symmetric convention used by ``gsplat2d.train``):
        round_hr_y: also round the *HR* image's Y to 8 bit, as MATLAB ``rgb2ycbcr`` does for the
            ``uint8`` ground truth (the SR image's Y stays unrounded, as for a ``double`` image).
            This is the convention that reproduces the published Set5 bicubic figures
            (see ``gsplat2d.eval.resize.BICUBIC_STUDY``).
        grey: the images are greyscale (``R = G = B``): Y is the full-range grey level, not
            rescaled to ``[16, 235]`` (MATLAB pipelines skip ``rgb2ycbcr`` for one-channel images,
            e.g. Set14 ``bridge``).
    """
    a, b = _prepare(sr, hr, shave, round_hr_y, grey)
    return float(peak_signal_noise_ratio(a, b, data_range=1.0))


def ssim_y(
    sr: torch.Tensor, hr: torch.Tensor, shave: int, *, round_hr_y: bool = False, grey: bool = False
) -> float:
    """SSIM on the Y channel (same preprocessing and options as :func:`psnr_y`).

    Gaussian window 11x11, sigma 1.5, data range 1.0 (torchmetrics defaults otherwise);
    batched inputs give the mean SSIM over the batch.
    """
    a, b = _prepare(sr, hr, shave, round_hr_y, grey)
    # float32 convolutions: ~10x faster than float64 on the CPU, SSIM differs by < 1e-6
    return float(
        structural_similarity_index_measure(
            a.float(), b.float(), gaussian_kernel=True, kernel_size=11, sigma=1.5, data_range=1.0
        )
    )


MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003 (torchmetrics default)


def ms_ssim_betas(side: int) -> Optional[Tuple[float, ...]]:
    """The scale weights MS-SSIM uses for images whose shorter side is ``side`` pixels: as many
    of the standard 5 scales as fit (torchmetrics' rule ``side // (n-1)^2 > 10``, and the
    coarsest scale at least 11 px: ``side > 10 * 2^(n-1)``; so 5 from 176 px, 4 from 99, 3 from
    44, 2 from 21), the first ``n`` weights renormalised to sum to 1; None under 2 scales.
    The one rule for the training loss, image fitting and evaluation."""
    n = len(MS_SSIM_BETAS)
    while n > 1 and not (side // max(1, n - 1) ** 2 > 10 and side > 10 * 2 ** (n - 1)):
        n -= 1
    if n < 2:
        return None
    b = MS_SSIM_BETAS[:n]
    return tuple(v / sum(b) for v in b)


def ms_ssim(pred: torch.Tensor, target: torch.Tensor) -> Optional[torch.Tensor]:
    """MS-SSIM of ``[N, C, H, W]`` images in [0, 1] (``pred`` clamped): Gaussian 11 x 11 window,
    sigma 1.5, data range 1, scales from :func:`ms_ssim_betas`, ``normalize="relu"`` (the
    product stays defined when a contrast term goes negative, early in training).
    Differentiable; None when the images are too small for 2 scales."""
    betas = ms_ssim_betas(min(pred.shape[-2:]))
    if betas is None:
        return None
    return multiscale_structural_similarity_index_measure(
        pred.float().clamp(0, 1), target.float(), gaussian_kernel=True, kernel_size=11, sigma=1.5,
        data_range=1.0, betas=betas, normalize="relu",
    )


def ms_ssim_y(
    sr: torch.Tensor, hr: torch.Tensor, shave: int, *, round_hr_y: bool = False, grey: bool = False
) -> float:
    """Multi-scale SSIM on the Y channel (same preprocessing and options as :func:`psnr_y`), by
    :func:`ms_ssim`; ``nan`` for images too small for 2 scales."""
    a, b = _prepare(sr, hr, shave, round_hr_y, grey)
    val = ms_ssim(a, b)
    return float("nan") if val is None else float(val)


def load_image_uint8(path: str | Path) -> np.ndarray:
    """Decode an image file to ``uint8 [H, W, 3]`` RGB: grey replicated, alpha dropped, palette
    expanded, 16/32-bit integer images scaled from their full range to 8 bit.

    Raises ``ValueError`` naming the file when pillow cannot read it (also truncated files).
    The decoder lives in :func:`gsplat2d.image_files.read_image_uint8` (no torchmetrics import, for the CLIs).
    """
    return read_image_uint8(path)


def load_image(path: str | Path) -> torch.Tensor:
    """Load an image file as a float32 tensor ``[3, H, W]`` in ``[0, 1]``.

    Every mode is converted to 8-bit RGB with pillow: greyscale is replicated to three channels,
    the alpha channel of RGBA/LA is dropped (not composited), palette images are expanded, and
    16-bit / 32-bit integer images (``I;16``, ``I``) are scaled from their full range to 8 bit.

    Raises:
        FileNotFoundError: the path does not exist (message names the file).
        ValueError: the file is not an image pillow can read (message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    arr = load_image_uint8(path)
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def bicubic_upscale(
    lr: torch.Tensor, scale_or_size: float | tuple[int, int]
) -> torch.Tensor:
    """Resize ``[C, H, W]`` (``[0, 1]`` floats) with pillow's ``Image.BICUBIC`` (Keys a = -0.5,
    the MATLAB ``imresize`` kernel; pillow also antialiases when shrinking, as MATLAB does).

    Args:
        lr: float tensor ``[C, H, W]`` in ``[0, 1]`` (any C; typically 3).
        scale_or_size: a float scale factor (output size ``round(W * s), round(H * s)``), or an
            exact ``(W, H)`` output size in pixels (pillow's order).

    Returns:
        float32 tensor ``[C, H_out, W_out]`` clamped to ``[0, 1]``. Each channel is resized in
        32-bit float mode, so no 8-bit rounding happens here (:func:`psnr_y` quantises).
    """
    if lr.dim() != 3:
        raise ValueError(f"expected [C, H, W], got {tuple(lr.shape)}")
    h, w = lr.shape[-2:]
    if isinstance(scale_or_size, (tuple, list)):
        out_w, out_h = (int(v) for v in scale_or_size)
    else:
        s = float(scale_or_size)
        out_w, out_h = int(round(w * s)), int(round(h * s))
    if out_w < 1 or out_h < 1:
        raise ValueError(f"output size must be positive, got {(out_w, out_h)}")
    arr = lr.detach().to(torch.float32).cpu().numpy()
    chans = [
        np.asarray(Image.fromarray(np.ascontiguousarray(c), mode="F").resize((out_w, out_h), Image.BICUBIC))
        for c in arr
    ]
    return torch.from_numpy(np.stack(chans)).clamp_(0.0, 1.0)
