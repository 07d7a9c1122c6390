"""MATLAB ``imresize(..., 'bicubic')`` in numpy float64: the resize that made the benchmark LR images.

Why not pillow: ``PIL.Image.BICUBIC`` uses the same Keys kernel (a = -0.5) and also antialiases
when shrinking, but it computes in float32 and does not reproduce MATLAB's ``uint8`` LR files
bit for bit. (On the Set5 bicubic Y-PSNR the resize itself matters by only 0.001-0.005 dB; the
0.01-0.02 dB gap to the published figures came from the Y rounding convention, see
:data:`BICUBIC_STUDY`.) This module follows MATLAB's ``imresize.m`` step by step:

* kernel: Keys cubic, ``a = -0.5``, support 4;
* antialiasing when shrinking (``scale < 1``): the kernel is stretched to ``h(x) = s * k(s * x)``
  with support ``4 / s``;
* index mapping: output pixel ``x`` (1-based) samples input position
  ``u = x / s + 0.5 * (1 - 1 / s)``; taps ``floor(u - width / 2) + (0 .. ceil(width) + 1)``;
  weights normalised to sum to 1 per output pixel;
* border: ``'symmetric'`` (the index sequence ``1..n, n..1`` repeated; the edge pixel is repeated);
* both dimensions resized separately, the one with the smaller scale first (rows first on ties);
* output size for a scale factor: ``ceil(scale * input_size)``; with an explicit size the scale of
  each dimension is ``out / in``;
* arithmetic in float64; for ``uint8`` input every pass is rounded and clipped back to ``uint8``
  (MATLAB's ``imresizemex`` returns the input class, so the intermediate image after the first
  dimension is already 8-bit), float input is returned unclamped.

From the mod-cropped Set5 HR images this reproduces the ``LR_bicubic_swinir`` files bit-exactly
(checked in ``tests/test_eval_metrics.py``); the ``LR_bicubic`` files differ in ~0.6 % of their
values (see :data:`BICUBIC_STUDY`, which also records how the benchmark baseline was chosen).
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ["imresize", "cubic", "contributions", "resize_matrix", "lr_size_for", "make_lr", "bicubic_sr", "BICUBIC_STUDY"]

ArrayLike = Union[np.ndarray, torch.Tensor]


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with ``a = -0.5`` (MATLAB ``imresize``'s ``cubic``)."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * (
        (ax > 1) & (ax <= 2)
    )


def contributions(
    in_length: int, out_length: int, scale: float, antialiasing: bool = True
) -> Tuple[np.ndarray, np.ndarray]:
    """MATLAB ``contributions()``: per output pixel, the 0-based input indices and their weights.

    Returns ``(weights [out, P], indices [out, P])`` after MATLAB's symmetric index folding and
    removal of all-zero weight columns.
    """
    kernel_width = 4.0
    if scale < 1 and antialiasing:
        h = lambda t: scale * cubic(scale * t)  # noqa: E731
        kernel_width = kernel_width / scale
    else:
        h = cubic
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    p = int(math.ceil(kernel_width)) + 2
    ind = left[:, None] + np.arange(p, dtype=np.float64)[None, :]  # 1-based
    weights = h(u[:, None] - ind)
    weights = weights / weights.sum(axis=1, keepdims=True)
    aux = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])  # 0-based
    ind = aux[np.mod(ind.astype(np.int64) - 1, aux.size)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], ind[:, keep]


def resize_matrix(in_length: int, out_length: int, scale: float, antialiasing: bool = True) -> np.ndarray:
    """Dense float64 ``[out, in]`` matrix ``M`` with ``resized = M @ signal`` along one axis."""
    w, ind = contributions(in_length, out_length, scale, antialiasing)
    m = np.zeros((out_length, in_length), dtype=np.float64)
    rows = np.repeat(np.arange(out_length), w.shape[1])
    np.add.at(m, (rows, ind.ravel()), w.ravel())
    return m


def _out_size(in_hw: Tuple[int, int], scale, size) -> Tuple[Tuple[int, int], Tuple[float, float]]:
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale= or size=")
    if size is not None:
        if len(size) != 2:
            raise ValueError(f"size must be (rows, cols), got {size!r}")
        out = tuple(int(v) for v in size)
        if min(out) < 1:
            raise ValueError(f"output size must be positive, got {out}")
        return out, (out[0] / in_hw[0], out[1] / in_hw[1])
    sc = (float(scale), float(scale)) if np.isscalar(scale) else tuple(float(v) for v in scale)
    if len(sc) != 2 or not all(math.isfinite(v) and v > 0 for v in sc):
        raise ValueError(f"scale must be a positive number or a (rows, cols) pair, got {scale!r}")
    # MATLAB: ceil(scale * size). The 1e-9 guard keeps e.g. 510 * (1/3) = 170.00000000000003 at 170,
    # as MATLAB's own LR files (Set14 x3: 512 -> 510 -> 170) show.
    out = tuple(max(1, int(math.ceil(s * n - 1e-9))) for s, n in zip(sc, in_hw))
    return out, sc


def imresize(
    img: ArrayLike,
    scale: Union[float, Sequence[float], None] = None,
    size: Union[Sequence[int], None] = None,
    *,
    antialiasing: bool = True,
) -> ArrayLike:
    """MATLAB ``imresize(img, scale)`` / ``imresize(img, [rows cols])`` with method ``'bicubic'``.

    Args:
        img: a numpy array ``[H, W]`` or ``[H, W, C]`` (MATLAB / pillow layout), or a torch tensor
            ``[..., H, W]`` (channels-first, e.g. ``[C, H, W]`` or ``[B, C, H, W]``). ``uint8``
            input gives ``uint8`` output rounded after each pass as MATLAB does; any float input is
            computed in float64 and returned in its own dtype, unclamped.
        scale: a factor (``> 1`` enlarges) or a ``(rows, cols)`` pair; output size
            ``ceil(scale * in)``.
        size: explicit output size ``(rows, cols)`` = ``(H, W)`` (MATLAB order, *not* pillow's
            ``(W, H)``); the per-dimension scale is then ``out / in``.
        antialiasing: MATLAB's ``'Antialiasing'`` option (default true; only matters when shrinking).

    Returns:
        The resized image in the input's container type, layout and dtype (torch tensors come back
        on their original device; the work is done on the CPU).
    """
    is_torch = isinstance(img, torch.Tensor)
    if is_torch:
        device, dtype = img.device, img.dtype
        arr = img.detach().cpu().numpy()
        if arr.ndim < 2:
            raise ValueError(f"expected a tensor [..., H, W], got shape {tuple(img.shape)}")
        h_ax, w_ax = arr.ndim - 2, arr.ndim - 1
    else:
        arr = np.asarray(img)
        if arr.ndim not in (2, 3):
            raise ValueError(f"expected a numpy array [H, W] or [H, W, C], got shape {arr.shape}")
        h_ax, w_ax = 0, 1
    is_u8 = arr.dtype == np.uint8
    if not (is_u8 or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"imresize supports uint8 and float images, got {arr.dtype}")
    in_hw = (arr.shape[h_ax], arr.shape[w_ax])
    if min(in_hw) < 1:
        raise ValueError(f"cannot resize an empty image of size {in_hw}")
    out_hw, sc = _out_size(in_hw, scale, size)

    x = arr.astype(np.float64)
    order = [0, 1] if sc[0] <= sc[1] else [1, 0]  # MATLAB: smaller scale first, stable sort
    for d in order:
        axis = (h_ax, w_ax)[d]
        if out_hw[d] == in_hw[d] and sc[d] == 1.0:
            continue  # MATLAB skips a dimension whose scale is exactly 1
        m = resize_matrix(in_hw[d], out_hw[d], sc[d], antialiasing)
        x = np.moveaxis(np.tensordot(m, np.moveaxis(x, axis, 0), axes=(1, 0)), 0, axis)
        if is_u8:
            x = np.clip(np.floor(x + 0.5), 0, 255)  # MATLAB rounds half away from zero
    if is_u8:
        out = x.astype(np.uint8)
    else:
        out = x.astype(arr.dtype)
    if is_torch:
        return torch.from_numpy(np.ascontiguousarray(out)).to(device=device, dtype=dtype)
    return out


def is_integer_scale(scale: float) -> bool:
    return float(scale).is_integer()


def lr_size_for(hr_hw: Tuple[int, int], scale: float) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """The benchmark's HR crop and LR size for an ``H x W`` image at ``scale``.

    Returns ``((H', W'), (h, w))``: the HR image is cropped top-left to ``H' x W'`` and the LR image
    is ``h x w``.

    * integer scale: MATLAB ``modcrop`` — ``H' = H - H mod s``, ``h = H' / s`` (exact ratio);
    * non-integer scale (e.g. 3.5): ``h = floor(H / s)``, ``H' = floor(h * s + 0.5)`` (round half
      up; ``H' <= H`` always). The ratio ``H' / h`` is then within ``0.5 / h`` of ``s`` (exactly
      ``s`` when ``h * s`` is an integer, e.g. even ``h`` at 3.5); the LR image is made with an
      explicit output size, so its per-axis scale is ``h / H'``, and the SR output is rendered at
      exactly ``H' x W'``.

    Raises ``ValueError`` when the image is too small to give an LR pixel.
    """
    s = float(scale)
    if not math.isfinite(s) or s < 1:
        raise ValueError(f"scale must be >= 1, got {scale!r}")
    H, W = int(hr_hw[0]), int(hr_hw[1])
    if is_integer_scale(s):
        si = int(s)
        h, w = H // si, W // si
        hr = (h * si, w * si)
    else:
        h, w = int(math.floor(H / s + 1e-9)), int(math.floor(W / s + 1e-9))
        hr = (int(math.floor(h * s + 0.5)), int(math.floor(w * s + 0.5)))
    if h < 1 or w < 1:
        raise ValueError(f"a {H}x{W} image is too small for scale {scale:g}")
    return hr, (h, w)


def make_lr(hr_u8: np.ndarray, scale: float) -> Tuple[np.ndarray, np.ndarray]:
    """Crop ``uint8 [H, W, C]`` HR as :func:`lr_size_for` says and make its LR image with MATLAB
    bicubic (``imresize(hr, 1/s)`` for an integer scale, ``imresize(hr, [h w])`` otherwise),
    rounded to ``uint8``. Returns ``(hr_cropped, lr)``."""
    (H2, W2), (h, w) = lr_size_for(hr_u8.shape[:2], scale)
    hr = hr_u8[:H2, :W2]
    if is_integer_scale(scale):
        lr = imresize(hr, 1.0 / float(scale))
    else:
        lr = imresize(hr, size=(h, w))
    assert lr.shape[:2] == (h, w), (lr.shape, h, w)
    return hr, lr


def bicubic_sr(lr_u8: np.ndarray, size: Tuple[int, int]) -> torch.Tensor:
    """The benchmark bicubic baseline: MATLAB ``imresize(im2double(lr), [H W], 'bicubic')`` in
    float64, clamped to ``[0, 1]``, as a float64 tensor ``[C, H, W]`` (the metrics quantise to 8
    bit). ``lr_u8`` is ``uint8 [h, w, C]``; ``size`` is ``(H, W)``."""
    x = imresize(lr_u8.astype(np.float64) / 255.0, size=size)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))).clamp_(0.0, 1.0)


# ------------------------------------------------------------------------------------------------
#: How the benchmark bicubic baseline was chosen (measured with this module on /work/shared/data;
#: mean over images of the per-image Y-PSNR, shave = scale, HR mod-cropped; published figures
#: Set5 33.66 / 30.39 / 28.42 dB, Set14 30.24 / 27.55 / 26.00 dB at x2 / x3 / x4).
BICUBIC_STUDY = """
LR source      upscale               Y convention               Set5 x2/x3/x4 (max dev)          Set14 x2/x3/x4 (max dev)
-------------  --------------------  -------------------------  -------------------------------  -------------------------------
LR_bicubic     MATLAB uint8          both Y rounded (uint8)     33.6404/30.3864/28.4177 (0.020)  30.2200/27.5328/25.9933 (0.020)
LR_bicubic     MATLAB uint8          both Y double              33.6741/30.4047/28.4302 (0.015)  30.2319/27.5391/25.9970 (0.011)
LR_bicubic     MATLAB uint8          SR Y double, HR Y uint8    33.6542/30.3934/28.4219 (0.006)  30.2267/27.5367/25.9955 (0.013)
LR_bicubic     MATLAB uint8          SR Y uint8, HR Y double    33.6574/30.3967/28.4254 (0.007)  30.2245/27.5349/25.9946 (0.016)
LR_bicubic     MATLAB double->8 bit  both Y rounded (uint8)     33.6455/30.3876/28.4189 (0.015)  30.2225/27.5341/25.9944 (0.018)
LR_bicubic     MATLAB double->8 bit  both Y double              33.6786/30.4058/28.4318 (0.019)  30.2348/27.5405/25.9983 (0.010)
LR_bicubic     MATLAB double->8 bit  SR Y double, HR Y uint8 *  33.6586/30.3944/28.4235 (0.004)  30.2296/27.5381/25.9969 (0.012)
LR_bicubic     MATLAB double->8 bit  SR Y uint8, HR Y double    33.6624/30.3979/28.4266 (0.008)  30.2270/27.5362/25.9957 (0.014)
LR_bicubic     MATLAB double (no q)  SR Y double, HR Y uint8    33.6636/30.3955/28.4238 (0.006)  30.2258/27.5355/25.9947 (0.015)
LR_bicubic     PIL float32->8 bit    both Y double (old test)   33.6780/30.4055/28.4321 (0.018)  30.2333/27.5377/25.9954 (0.012)
LR_bicubic     PIL float32->8 bit    both Y rounded (uint8)     33.6450/30.3874/28.4191 (0.015)  30.2209/27.5313/25.9915 (0.019)
LR_bicubic     PIL float32->8 bit    SR Y double, HR Y uint8    33.6579/30.3941/28.4238 (0.004)  30.2281/27.5353/25.9939 (0.015)
imresize(HR)   MATLAB double->8 bit  SR Y double, HR Y uint8    33.6579/30.3929/28.4222 (0.003)  30.2279/27.5356/25.9940 (0.014)
HR Y only: uint8 HR -> Y (uint8) -> double, imresize down and up in double, SR quantised (the
SRCNN/VDSR MATLAB script; no RGB LR image involved)       33.6614/30.3922/28.4207 (0.002)  30.2318/27.5405/26.0001 (0.010)

* = the benchmark method (gsplat2d.eval.cli): bicubic_sr (MATLAB imresize of im2double(LR), the
SR result quantised to 8-bit RGB like any saved image) scored with psnr_y(..., round_hr_y=True):
the ground truth's Y is rounded to uint8 as rgb2ycbcr does on the uint8 HR image, the SR image's
Y is not (rgb2ycbcr of a double image). It gives SSIM 0.9299/0.8679/0.8102 (published
0.9299/0.8682/0.8104) on Set5 and 0.8691/0.7749/0.7034 on Set14.

Findings:
* Neither symmetric convention (both Y rounded, or both unrounded) reaches 0.01 dB at x2 with any
  resize; the result hinges on the Y rounding, the resize matters by only 0.001-0.005 dB.
* Set14's bridge.png (and its LR files) are greyscale: MATLAB scripts skip rgb2ycbcr for
  one-channel images, so it is compared on the grey level (``grey=True``); treating it as RGB
  (Y in [16, 235]) adds ~0.09 dB to every Set14 average (30.32/27.63/26.09).
* imresize(modcrop(HR), 1/s) on uint8 reproduces Set5 ``LR_bicubic_swinir`` bit-exactly; the
  ``LR_bicubic`` files differ from it in ~0.6 % of the values (up to 7-11 grey levels), i.e. they
  were made by another MATLAB version or from slightly different HR files.
* No convention reproduces Set14 within 0.01 dB at all scales (the published Set14 numbers are
  0.01-0.02 dB above every RGB pipeline here; only the Y-only script reaches 0.0095).
"""
