"""Image files as a user sees them, for every application (render, demo, fit, test, train): one
extension list, one folder lister, one decoder (EXIF orientation applied; 16-bit, float and
1-bit images mapped to [0, 1] correctly) and one atomic writer. The rasterizer core never imports
this (nor pillow).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from gsplat2d._io import atomic_write

__all__ = ["IMAGE_EXTENSIONS", "OUTPUT_FORMATS", "list_images", "image_size", "read_image_uint8",
           "write_image_atomic"]

#: Image files every command reads (case-insensitive).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
#: File ending -> pillow format of the images the commands write.
OUTPUT_FORMATS = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
    ".webp": "WEBP", ".ppm": "PPM",
}


def list_images(folder: Union[str, "os.PathLike[str]"], *, recursive: bool = False) -> List[Path]:
    """Image files of ``folder`` (sorted; hidden files skipped; nested folders with
    ``recursive``). May be empty: each command decides what an empty folder means."""
    root = Path(folder)
    it = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.startswith("."))


#: EXIF orientations (tag 0x0112) that turn the stored image by 90 degrees: width and height swap.
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)


def image_size(im: Image.Image) -> Tuple[int, int]:
    """``(W, H)`` of an opened image as seen (its EXIF orientation applied), from the header only."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block: the stored orientation
        orientation = 1
    w, h = int(im.width), int(im.height)
    return (h, w) if orientation in _TRANSPOSED_ORIENTATIONS else (w, h)


def read_image_uint8(path: Union[str, "os.PathLike[str]"]) -> np.ndarray:
    """Decode an image file to ``uint8 [H, W, 3]`` RGB as a viewer shows it: the EXIF orientation
    applied (a phone's portrait JPEG stays portrait), grey replicated, alpha dropped, palette
    expanded, 1-bit as 0/255, 16/32-bit integer images scaled from their full range and float
    images from ``[0, 1]`` (a float image with values above 1 from ``[0, 255]``) to 8 bit.

    Raises ``ValueError`` naming the file when pillow cannot read it (also truncated files);
    ``PIL.Image.DecompressionBombError`` for images over pillow's pixel limit.
    """
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                arr = np.asarray(im, dtype=np.float64)
                finite = arr[np.isfinite(arr)]
                top = float(finite.max()) if finite.size else 0.0
                if im.mode == "F":
                    maxval = 1.0 if top <= 1.0 else 255.0
                else:
                    maxval = 65535.0 if im.mode.startswith("I;16") or top > 255 else 255.0
                arr = np.nan_to_num(arr, nan=0.0, posinf=maxval, neginf=0.0)
                arr = np.round(np.clip(arr / maxval, 0.0, 1.0) * 255.0).astype(np.uint8)
                im = Image.fromarray(arr, mode="L")
            rgb = im.convert("RGB")
    except Image.DecompressionBombError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read image file {path}: {e}") from e
    return np.asarray(rgb, dtype=np.uint8).copy()


def write_image_atomic(array: np.ndarray, path: Union[str, "os.PathLike[str]"]) -> None:
    """Write ``uint8 [H, W, C]`` (C = 1 or 3) to ``path`` (a file ending of
    :data:`OUTPUT_FORMATS`). Atomic: a temporary file in the same folder is renamed over
    ``path``, so a failure never leaves a partial file."""
    path = Path(path)
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unsupported file ending {path.suffix!r}; use .png")
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (1, 3):
        raise ValueError(f"expected uint8 [H, W, 1 or 3], got {array.dtype} {array.shape}")
    img = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array,
                          mode="L" if array.shape[2] == 1 else "RGB")
    kwargs = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    atomic_write(path, lambda f: img.save(f, format=fmt, **kwargs), suffix=path.suffix)
