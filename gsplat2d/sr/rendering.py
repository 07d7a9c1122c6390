"""Encode an image into a Gaussian field with an SR model, and render a field to an array at any
size: the library behind ``gsplat2d render``, ``gsplat2d demo``, ``gsplat2d test`` and the
benchmarks.

* :func:`encode_image`: the network runs once per image; images larger than :data:`ENCODE_TILE`
  are encoded in pieces with a halo (bounded memory, the same field).
* :func:`render_to_array`: the field rasterized window by window (bounded memory for any output
  size), decoded per pixel for a feature field, anti-aliased where an output pixel is larger than
  a source pixel (docs/theory.md).
* :func:`degenerate_gaussians`, :func:`decoder_meta`: what a saved field needs checking or
  recording.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import numpy as np
import torch

from gsplat2d._validate import check_output_pixels
from gsplat2d.binning import EXTENT_REL_PAD, gaussian_extents
from gsplat2d.gaussians import Gaussians2D

__all__ = [
    "DEFAULT_WINDOW",
    "ENCODE_TILE",
    "DECODER_KIND",
    "encode_image",
    "render_to_array",
    "receptive_radius",
    "footprint_supersampling",
    "warm_up",
    "sync",
    "unbatch",
    "degenerate_gaussians",
    "decoder_meta",
]

#: Side of the square windows a render is split into (bounded memory for any output size).
DEFAULT_WINDOW = 512  # 2048 x 2048 feature render on 2 cores: 399 ms at 512, 440 ms at 1024

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: LR tile side of the windowed encode (:func:`encode_image`): images up to this size are encoded
#: whole.
ENCODE_TILE = 512


def receptive_radius(model: torch.nn.Module) -> int:
    """An upper bound of how far (LR pixels) an encoder output looks: the convolutions' radii,
    summed as if all were in series (a residual branch beside another counts twice; safe)."""
    r = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            r += max((k - 1) // 2 * d for k, d in zip(m.kernel_size, m.dilation))
    return r


def encode_image(model, lr: torch.Tensor, *, tile: int = ENCODE_TILE) -> Gaussians2D:
    """Run the network on ``lr [3, h, w]`` (on the model's device); returns the unbatched field
    (``means [N, 2]`` ...) in normalised coordinates.

    An image larger than ``tile`` on a side is encoded in ``tile x tile`` pieces, each with a halo
    of :func:`receptive_radius` LR pixels, and each piece's Gaussians are written into the whole
    field at their place in the whole image's order: the encoder is convolutional, so every
    Gaussian equals the whole-image encode's (``tests/test_encode_windows.py``), while the memory
    is the field plus one piece's activations (a 4000 x 2667 photo at x2: 7.1 GB peak RSS with
    a whole encode, 1.79 GiB in pieces with the 48 x 6 default)."""
    dev = next(model.parameters()).device
    lr = lr.to(dev)
    h, w = lr.shape[-2:]
    with torch.inference_mode():
        if tile < 1 or (h <= tile and w <= tile):
            field = model.encode(lr[None])
            return field._like(field.means[0], field.covariances[0], field.colors[0], field.opacities[0])
        return _encode_tiles(model, lr, tile)


def _encode_tiles(model, lr: torch.Tensor, tile: int) -> Gaussians2D:
    """:func:`encode_image` piece by piece (see there). Each model lays its field out on the
    replicate-padded LR grid: ``N = k * (h + 2 b) * (w + 2 b)`` in (k, row, column) order, means
    and covariances normalised by ``(w, h)``."""
    k, b = int(model.config.k), int(model.config.border)
    h, w = lr.shape[-2:]
    hp, wp = h + 2 * b, w + 2 * b
    R = receptive_radius(model)
    out = None
    for y0 in range(0, h, tile):
        y1 = min(h, y0 + tile)
        for x0 in range(0, w, tile):
            x1 = min(w, x0 + tile)
            cy0, cy1, cx0, cx1 = max(0, y0 - R), min(h, y1 + R), max(0, x0 - R), min(w, x1 + R)
            piece = model.encode(lr[None, :, cy0:cy1, cx0:cx1])
            th, tw = cy1 - cy0, cx1 - cx0
            # padded rows/columns of the piece that are exact: the core, plus the border ring where
            # the piece meets the image edge (there its replicate padding is the whole image's)
            ry0 = y0 - cy0 + (b if y0 > 0 else 0)
            ry1 = y1 - cy0 + (b if y1 < h else 2 * b)
            rx0 = x0 - cx0 + (b if x0 > 0 else 0)
            rx1 = x1 - cx0 + (b if x1 < w else 2 * b)
            gy0, gx0 = cy0 + ry0, cx0 + rx0  # the same rows/columns in the whole padded grid
            parts = [t[0].reshape(k, th + 2 * b, tw + 2 * b, -1)[:, ry0:ry1, rx0:rx1]
                     for t in (piece.means, piece.covariances, piece.colors, piece.opacities)]
            # the piece's normalised units -> the whole image's
            to_lr = torch.tensor([float(tw), float(th)], device=lr.device)
            origin = torch.tensor([float(cx0), float(cy0)], device=lr.device)
            size = torch.tensor([float(w), float(h)], device=lr.device)
            parts[0] = (parts[0] * to_lr + origin) / size
            parts[1] = parts[1] * torch.tensor([tw * tw / (w * w), tw * th / (w * h), th * th / (h * h)],
                                               device=lr.device)
            if out is None:
                out = [torch.empty((k, hp, wp, t.shape[-1]), dtype=t.dtype, device=lr.device) for t in parts]
            for dst, src in zip(out, parts):
                dst[:, gy0 : gy0 + ry1 - ry0, gx0 : gx0 + rx1 - rx0] = src
    n = k * hp * wp
    return Gaussians2D(out[0].reshape(n, 2), out[1].reshape(n, 3), out[2].reshape(n, -1), out[3].reshape(n),
                       mode=piece.mode, source_size=(w, h))


def unbatch(field: Gaussians2D, source: str) -> Gaussians2D:
    shape = tuple(field.batch_shape)
    if math.prod(shape) != 1 and shape != ():
        raise ValueError(
            f"{source} holds a batch of {math.prod(shape)} fields (batch shape {shape}); render needs one"
        )
    if shape == ():
        return field
    n, c = field.num_gaussians, field.channels
    return field._like(
        field.means.reshape(n, 2), field.covariances.reshape(n, 3), field.colors.reshape(n, c),
        field.opacities.reshape(n),
    )


#: Gaussians per chunk when a whole field's pixel parameters and boxes are computed (bounds the
#: float64 temporaries of a 10-million-Gaussian field to a few hundred MB).
_CHUNK = 1 << 20


def _boxes(means_px: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor):
    """Conservative pixel bounding boxes ``(x0, x1, y0, y1)`` of where each Gaussian's weight can
    reach 1/255 (the rasterizer's own bound, :func:`gsplat2d.binning.gaussian_extents`, plus a
    pixel), float32 (the pixel of margin dwarfs float32's rounding, 1/64 px at the largest
    supersampled size, 2 x 65536 px);
    non-contributing Gaussians get an empty box."""
    valid, mx, my, ex, ey = gaussian_extents(means_px, conics, opacities, pad=False)
    ex = ex * (1.0 + EXTENT_REL_PAD) + 1.0
    ey = ey * (1.0 + EXTENT_REL_PAD) + 1.0
    inf = torch.full_like(ex, math.inf)
    return tuple(t.float() for t in (torch.where(valid, mx - ex, inf), torch.where(valid, mx + ex, -inf),
                                     torch.where(valid, my - ey, inf), torch.where(valid, my + ey, -inf)))


def _row_extents(field: Gaussians2D, width: int, height: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Every Gaussian's ``(y0, y1)`` of :func:`_boxes` at ``width x height``, in chunks of
    :data:`_CHUNK` Gaussians whose pixel parameters are dropped again (bounded memory; the
    columns are found per band of rows)."""
    n = field.num_gaussians
    y0s = torch.empty(n, dtype=torch.float32, device=field.means.device)
    y1s = torch.empty_like(y0s)
    for a in range(0, n, _CHUNK):
        b = min(n, a + _CHUNK)
        means_px, conics = _pixel_params(field, width, height, a, b)
        _, _, y0s[a:b], y1s[a:b] = _boxes(means_px, conics, field.opacities[a:b])
    return y0s, y1s


def _pixel_params(field: Gaussians2D, width: int, height: int, a: int = 0, b: Optional[int] = None,
                  index: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``field.to_pixels(width, height)`` of Gaussians ``a:b`` (or ``index``): elementwise, so a
    part's values equal the whole's."""
    sel = index if index is not None else slice(a, b)
    part = field._like(field.means[sel], field.covariances[sel], field.colors[sel], field.opacities[sel])
    return part.to_pixels(width, height)


def warm_up(model, mode: str, backend: str, device: torch.device) -> None:
    """Pay one-off start-up costs before anything is timed: the first network pass (allocator,
    convolution algorithm choice, CUDA context) and the first render (Triton compiles its
    binning and rasterization kernels on first use; sizes are never specialised, so one tiny
    render compiles what every later size uses)."""
    field = encode_image(model, torch.zeros(3, 8, 8))
    render_to_array(field, 16, 16, mode=mode, backend=backend, model=model)
    sync(device)


def footprint_supersampling(field: Gaussians2D, width: int, height: int) -> Tuple[int, int]:
    """Per-axis supersampling ``(kx, ky)`` that makes a rendered pixel no larger than a pixel of
    the field's source image: ``ceil(source / output)``, 1 when the output is as large or larger
    (the scales a model is trained at) or when the field records no source size."""
    if field.source_size is None:
        return 1, 1
    sw, sh = field.source_size
    return max(1, math.ceil(float(sw) / int(width) - 1e-9)), max(1, math.ceil(float(sh) / int(height) - 1e-9))


def render_to_array(
    field: Gaussians2D,
    width: int,
    height: int,
    *,
    mode: Optional[str] = None,
    window: int = DEFAULT_WINDOW,
    backend: str = "auto",
    tile_size: Optional[int] = None,
    as_uint8: bool = True,
    decode: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    model: Optional[torch.nn.Module] = None,
    antialias: bool = True,
) -> np.ndarray:
    """Render an unbatched field at ``width x height`` window by window.

    Each ``window x window`` piece is rasterized with only the Gaussians that can reach it (means
    shifted by the window origin), so memory stays bounded for any output size; the stitched result
    equals ``field.render(width, height, mode=mode)`` wherever no anti-aliasing applies (below);
    ``mode`` defaults to the field's own. ``model`` (an SR model) supplies the per-pixel
    decoder of a feature field (:meth:`~gsplat2d.sr.feature.GaussianFeatureSR.pixel_decoder`);
    ``decode``, the older form, is that decoder already made for this ``width x height``. Decoding
    is per pixel, so the windowed result equals a whole-image decode.

    **Anti-aliasing** (``antialias``, the default): where an output pixel is larger than a pixel of
    the field's source image (a downscale, a thumbnail, a 1 x 1), the value of an output pixel is
    the average over its area: the field is rendered (and decoded) at
    :func:`footprint_supersampling` times the size, so that no rendered pixel is larger than a
    source pixel, and each output pixel is the mean of its ``kx x ky`` block. At the sizes a
    model is trained for (output >= source) nothing changes.

    Returns ``uint8 [H, W, C_out]`` (clamped to [0, 1], rounded) or, with ``as_uint8=False``, the
    unclamped float32 image.
    """
    from gsplat2d.rasterize import rasterize

    field = unbatch(field, "field")
    check_output_pixels(int(width), int(height))
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    kx, ky = footprint_supersampling(field, width, height) if antialias else (1, 1)
    sup_w, sup_h = int(width) * kx, int(height) * ky
    if model is not None:
        decode = model.pixel_decoder(field, sup_w, sup_h)
    elif decode is not None and (kx, ky) != (1, 1):
        raise ValueError("an anti-aliased downscale decodes at the supersampled size: pass model=, not decode=")
    colors, opac = field.colors, field.opacities
    y0s, y1s = _row_extents(field, sup_w, sup_h)
    ow, oh = max(1, window // kx), max(1, window // ky)  # a window in output pixels
    out: Optional[np.ndarray] = None  # allocated at the first window (decode sets C_out)
    with torch.inference_mode():
        for oy in range(0, height, oh):
            h = min(oh, height - oy) * ky
            wy = oy * ky
            # Pixel centres of this band: wy + 0.5 .. wy + h - 0.5 (the extents carry a 1 px margin).
            band = torch.nonzero((y1s >= wy + 0.5) & (y0s <= wy + h - 0.5)).squeeze(1)
            # the band's pixel parameters and columns only (a whole field's: 28 bytes per Gaussian)
            bmeans, bconics = _pixel_params(field, sup_w, sup_h, index=band)
            bcolors, bopac = colors[band], opac[band]
            bx0, bx1, _, _ = _boxes(bmeans, bconics, bopac)
            for ox in range(0, width, ow):
                w = min(ow, width - ox) * kx
                wx = ox * kx
                sel = torch.nonzero((bx1 >= wx + 0.5) & (bx0 <= wx + w - 0.5)).squeeze(1)  # ascending
                shift = torch.tensor([float(wx), float(wy)], dtype=bmeans.dtype, device=bmeans.device)
                img, _ = rasterize(
                    bmeans[sel] - shift, bconics[sel], bcolors[sel], bopac[sel], w, h,
                    mode=mode or field.mode, tile_size=tile_size, backend=backend,
                )
                if decode is not None:
                    img = decode(img)
                if (kx, ky) != (1, 1):  # each output pixel: the mean of its kx x ky block
                    img = img.reshape(h // ky, ky, w // kx, kx, img.shape[-1]).mean(dim=(1, 3))
                if out is None:
                    out = np.empty((height, width, img.shape[-1]), dtype=np.uint8 if as_uint8 else np.float32)
                if as_uint8:
                    piece = img.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
                else:
                    piece = img.float()
                out[oy : oy + h // ky, ox : ox + w // kx] = piece.cpu().numpy()
    return out



def degenerate_gaussians(field: Gaussians2D) -> str:
    """What renders as nothing or as a flat wash in ``field`` (one line; empty when all is well):
    non-finite values, covariances that are not positive definite, or wider than 10 images."""
    with torch.no_grad():
        f64 = [t.detach().to(torch.float64) for t in (field.means, field.covariances, field.colors)]
        finite = torch.isfinite(f64[0]).all(-1) & torch.isfinite(f64[1]).all(-1) & torch.isfinite(f64[2]).all(-1)
        finite &= torch.isfinite(field.opacities.detach().to(torch.float64))
        xx, xy, yy = f64[1].unbind(-1)
        pd = (xx > 0) & (yy > 0) & (xx * yy - xy * xy > 0)
        wide = (xx.abs().maximum(yy.abs()) > 100.0)  # a standard deviation over 10 image sides
    n, parts = field.num_gaussians, []
    for count, what in ((int((~finite).sum()), "non-finite values"),
                        (int((finite & ~pd).sum()), "a covariance that is not positive definite"),
                        (int((finite & pd & wide).sum()), "a covariance over 10 images wide")):
        if count:
            parts.append(f"{count} have {what}")
    if not parts:
        return ""
    return f"of its {n} Gaussians {', '.join(parts)}: they render as nothing or as a flat wash"


#: ``.g2d`` metadata of a feature field: which model kind decodes it and a hash of its decoder.
DECODER_KIND = "gsplat2d.GaussianFeatureSR"


def decoder_meta(model) -> dict:
    """Metadata a saved field needs beyond mode and size: for a feature model, the decoder it
    needs (its kind and weight hash, checked when ``--gaussians`` re-renders the field)."""
    if model.arch != "feature":
        return {}
    return {"decoder": DECODER_KIND, "decoder_sha256": model.decoder_sha256(),
            "feature_dim": model.config.feature_dim}
