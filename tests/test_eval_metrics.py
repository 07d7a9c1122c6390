"""Tests for gsplat2d.eval.metrics: unit tests plus the Set5 bicubic literature check."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from gsplat2d.eval.metrics import (
    bicubic_upscale,
    load_image,
    mod_crop,
    psnr_y,
    rgb_to_y,
    ssim_y,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SET5 = DATA / "Set5"


def _img(shape=(3, 32, 32), seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g)


# ---------------------------------------------------------------- rgb_to_y
def test_rgb_to_y_known_colours():
    cols = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    img = cols.T.reshape(3, 1, 5)
    y = rgb_to_y(img)
    assert y.shape == (1, 1, 5)
    expected = torch.tensor([235.0, 16.0, 16 + 65.481, 16 + 128.553, 16 + 24.966]) / 255.0
    torch.testing.assert_close(y.flatten(), expected, atol=1e-6, rtol=0)


def test_rgb_to_y_batched_and_grey_passthrough():
    x = _img((2, 3, 4, 5))
    assert rgb_to_y(x).shape == (2, 1, 4, 5)
    g = _img((1, 4, 5))
    assert rgb_to_y(g) is g
    with pytest.raises(ValueError):
        rgb_to_y(_img((2, 4, 5)))


# ---------------------------------------------------------------- mod_crop
@pytest.mark.parametrize(
    "hw,scale,out",
    [((33, 47), 2, (32, 46)), ((33, 47), 3, (33, 45)), ((33, 47), 4, (32, 44)), ((31, 31), 1, (31, 31))],
)
def test_mod_crop_shapes(hw, scale, out):
    x = _img((3, *hw))
    y = mod_crop(x, scale)
    assert tuple(y.shape[-2:]) == out
    torch.testing.assert_close(y, x[:, : out[0], : out[1]])  # top-left anchored


def test_mod_crop_rejects_bad_scale():
    with pytest.raises(ValueError):
        mod_crop(_img(), 0)
    with pytest.raises(ValueError):
        mod_crop(_img(), 2.5)


# ---------------------------------------------------------------- psnr / ssim
def test_psnr_identical_is_inf():
    x = _img()
    assert psnr_y(x, x.clone(), shave=2) == math.inf  # torchmetrics: MSE 0 -> inf
    assert ssim_y(x, x.clone(), shave=2) == pytest.approx(1.0, abs=1e-6)


def test_psnr_matches_formula_and_quantises():
    hr = _img(seed=1)
    sr = (hr + 0.05 * _img(seed=2)).clamp(0, 1)
    q = lambda t: torch.round(t.double() * 255) / 255  # noqa: E731
    d = rgb_to_y(q(sr)) - rgb_to_y(q(hr))
    expected = 10 * math.log10(1.0 / float((d[..., 3:-3, 3:-3] ** 2).mean()))
    assert psnr_y(sr, hr, shave=3) == pytest.approx(expected, abs=1e-4)  # torchmetrics sums in float32
    # sub-quantum differences vanish after 8-bit quantisation
    hq = q(hr).float()
    assert psnr_y(hq + 0.1 / 255, hq, shave=0) == math.inf


def test_shave_removes_border():
    hr = _img((3, 40, 40), seed=3)
    sr = (hr + 0.03 * _img((3, 40, 40), seed=4)).clamp(0, 1)
    base = psnr_y(sr, hr, shave=4)
    sr_b = sr.clone()
    sr_b[:, :4, :] = 1 - sr_b[:, :4, :]
    sr_b[:, -4:, :] = 0.0
    sr_b[:, :, :4] = 1.0
    sr_b[:, :, -4:] = 1 - sr_b[:, :, -4:]
    assert psnr_y(sr_b, hr, shave=4) == base
    assert ssim_y(sr_b, hr, shave=4) == ssim_y(sr, hr, shave=4)
    assert psnr_y(sr_b, hr, shave=3) < base - 1.0  # the border does count when not shaved


def test_psnr_shape_mismatch():
    with pytest.raises(ValueError):
        psnr_y(_img((3, 8, 8)), _img((3, 8, 9)), shave=0)


# ---------------------------------------------------------------- load_image
def test_load_image_modes(tmp_path):
    arr = (torch.arange(12 * 10) % 256).to(torch.uint8).reshape(10, 12).numpy()
    paths = {}
    paths["L"] = tmp_path / "grey.png"
    Image.fromarray(arr, mode="L").save(paths["L"])
    paths["RGBA"] = tmp_path / "rgba.png"
    Image.fromarray(arr, mode="L").convert("RGBA").save(paths["RGBA"])
    paths["P"] = tmp_path / "pal.png"
    Image.fromarray(arr, mode="L").convert("RGB").convert("P").save(paths["P"])
    paths["I;16"] = tmp_path / "grey16.png"
    Image.fromarray(arr.astype("uint16") * 257).save(paths["I;16"])
    for mode, p in paths.items():
        x = load_image(p)
        assert x.shape == (3, 10, 12), mode
        assert x.dtype == torch.float32 and 0.0 <= float(x.min()) and float(x.max()) <= 1.0, mode
        if mode != "P":  # palette quantisation may shift values
            torch.testing.assert_close(x[0], torch.from_numpy(arr).float() / 255, atol=1e-6, rtol=0)


def test_load_image_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(missing)
    bogus = tmp_path / "bogus.png"
    bogus.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="bogus.png"):
        load_image(bogus)


# ---------------------------------------------------------------- bicubic_upscale
def test_bicubic_upscale_sizes_and_constant():
    lr = _img((3, 7, 9))
    assert bicubic_upscale(lr, 2).shape == (3, 14, 18)
    assert bicubic_upscale(lr, (20, 15)).shape == (3, 15, 20)  # (W, H)
    c = torch.full((3, 6, 6), 0.4)
    torch.testing.assert_close(bicubic_upscale(c, 3.0), torch.full((3, 18, 18), 0.4), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- literature check
# Published bicubic baselines on Set5 (SRCNN/VDSR/EDSR tables): Y-PSNR dB and SSIM.
PUBLISHED = {2: (33.66, 0.9299), 3: (30.39, 0.8682), 4: (28.42, 0.8104)}
# What this module measures (PIL bicubic of the MATLAB LR_bicubic files, RGB quantised to 8 bit,
# float Y, shave = scale): 33.678 / 30.405 / 28.432 dB, SSIM 0.9305 / 0.8685 / 0.8108.
# The published numbers come from the VDSR-era MATLAB pipeline, which down- AND up-scales the
# Y channel alone in double precision (no RGB LR file, no 8-bit LR), so it cannot be reproduced
# exactly from RGB LR images; no rounding/shave/mod-crop variant brings x2 within 0.01 dB
# (rounding Y to 8 bit too, as MATLAB rgb2ycbcr on uint8 does, gives 33.645 / 30.387 / 28.419).
# Hence 0.02 dB vs the published figures, plus a tight pin on our own measured values.
MEASURED = {2: 33.678, 3: 30.405, 4: 28.432}


@pytest.fixture(scope="module")
def set5_scores():
    if not (SET5 / "HR").is_dir():
        pytest.skip(f"Set5 benchmark images not found at {SET5} (expects shared/data beside the repo)")
    scores = {}
    for s in (2, 3, 4):
        ps, ss = [], []
        for hp in sorted((SET5 / "HR").glob("*.png")):
            hr = mod_crop(load_image(hp), s)
            lr = load_image(SET5 / "LR_bicubic" / f"X{s}" / f"{hp.stem}x{s}.png")
            assert tuple(lr.shape[-2:]) == (hr.shape[-2] // s, hr.shape[-1] // s)
            sr = bicubic_upscale(lr, (hr.shape[-1], hr.shape[-2]))
            ps.append(psnr_y(sr, hr, shave=s))
            ss.append(ssim_y(sr, hr, shave=s))
        assert len(ps) == 5
        scores[s] = (sum(ps) / len(ps), sum(ss) / len(ss))
    return scores


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_set5_bicubic_matches_literature(set5_scores, scale):
    psnr, ssim = set5_scores[scale]
    pub_psnr, pub_ssim = PUBLISHED[scale]
    assert psnr == pytest.approx(MEASURED[scale], abs=0.002)
    assert psnr == pytest.approx(pub_psnr, abs=0.02)
    assert ssim == pytest.approx(pub_ssim, abs=0.001)
