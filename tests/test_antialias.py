"""Anti-aliased rendering: where an output pixel is larger than a source pixel
the rendered value is the average over the pixel's area, so a 1 x 1 is the mean colour and a
downscale matches a box filter; at the trained scales (output >= source) nothing changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gsplat2d.sr.model import load_model
from gsplat2d.sr.rendering import encode_image, footprint_supersampling, render_to_array

CROP = Path(__file__).resolve().parents[1] / "gsplat2d" / "assets" / "kodim23_crop.png"
MODELS = ["feature", "colour"]


def _photo(size: int = 128) -> Image.Image:
    return Image.open(CROP).convert("RGB").crop((0, 0, size, size))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


@pytest.fixture(scope="module", params=MODELS)
def encoded(request):
    m = load_model(request.param).eval()
    img = _photo()
    lr = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255.0
    return m, encode_image(m, lr), img


def test_supersampling_factors():
    from gsplat2d import Gaussians2D

    f = Gaussians2D(torch.rand(3, 2), torch.tensor([[1e-3, 0.0, 1e-3]] * 3), torch.rand(3, 3), torch.rand(3),
                    source_size=(64, 43))
    assert footprint_supersampling(f, 128, 86) == (1, 1)  # upscales: the trained regime
    assert footprint_supersampling(f, 64, 43) == (1, 1)
    assert footprint_supersampling(f, 32, 43) == (2, 1)
    assert footprint_supersampling(f, 1, 1) == (64, 43)
    assert footprint_supersampling(f, 6, 4000) == (11, 1)
    f.source_size = None
    assert footprint_supersampling(f, 1, 1) == (1, 1)


def test_one_pixel_is_the_mean_colour(encoded):
    m, field, img = encoded
    mean = np.asarray(img, dtype=np.float64).reshape(-1, 3).mean(0)
    got = render_to_array(field, 1, 1, mode=field.mode, model=m)[0, 0].astype(np.float64)
    assert np.abs(got - mean).max() <= 3.0, (got, mean)  # worst observed 1.03 (colour model)
    point = render_to_array(field, 1, 1, mode=field.mode, model=m, antialias=False)[0, 0]
    assert np.abs(point - mean).max() > 20  # point sampling: one Gaussian's neighbourhood


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_downscales_match_a_box_filter(encoded, factor):
    m, field, img = encoded
    w = img.width // factor
    got = render_to_array(field, w, w, mode=field.mode, model=m)
    ref = np.asarray(img.resize((w, w), Image.BOX))
    assert _psnr(got, ref) >= 32.0  # worst observed 43.2 dB (colour model, 1/2); PIL bicubic ~36


def test_upscales_are_unchanged_and_windows_stitch(encoded):
    m, field, img = encoded
    for size in ((256, 256), (300, 211)):
        a = render_to_array(field, *size, mode=field.mode, model=m)
        b = render_to_array(field, *size, mode=field.mode, model=m, antialias=False)
        assert np.array_equal(a, b)
    whole = render_to_array(field, 37, 23, mode=field.mode, model=m, as_uint8=False)
    tiles = render_to_array(field, 37, 23, mode=field.mode, model=m, as_uint8=False, window=9)
    np.testing.assert_allclose(tiles, whole, rtol=0, atol=2e-6)  # worst observed 1.2e-7
