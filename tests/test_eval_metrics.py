"""Tests for gsplat2d.eval.metrics and gsplat2d.eval.resize: unit tests plus the Set5 / Set14
bicubic literature check."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gsplat2d.eval.metrics import (
    bicubic_upscale,
    load_image,
    load_image_uint8,
    mod_crop,
    ms_ssim_y,
    psnr_y,
    rgb_to_y,
    ssim_y,
)
from gsplat2d.eval.resize import bicubic_sr, imresize, lr_size_for, make_lr

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SET5 = DATA / "Set5"
SET14 = DATA / "Set14"


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


# ---------------------------------------------------------------- psnr options
def test_round_hr_y_rounds_only_the_ground_truth():
    hr = _img(seed=5)
    sr = (hr + 0.04 * _img(seed=6)).clamp(0, 1)
    q = lambda t: torch.round(t.double() * 255) / 255  # noqa: E731
    y_sr = rgb_to_y(q(sr))
    y_hr = torch.floor(rgb_to_y(q(hr)) * 255 + 0.5) / 255
    expected = 10 * math.log10(1.0 / float(((y_sr - y_hr)[..., 2:-2, 2:-2] ** 2).mean()))
    assert psnr_y(sr, hr, shave=2, round_hr_y=True) == pytest.approx(expected, abs=1e-4)
    assert psnr_y(sr, hr, shave=2, round_hr_y=True) != psnr_y(sr, hr, shave=2)
    # identical images: the unrounded SR Y differs from the rounded HR Y by < 0.5 grey level
    assert 50 < psnr_y(hr, hr, shave=2, round_hr_y=True) < math.inf


def test_grey_option_uses_full_range_grey_level():
    g = _img((1, 24, 24), seed=7)
    n = (g + 0.05 * _img((1, 24, 24), seed=8)).clamp(0, 1)
    one = psnr_y(n, g, shave=1)  # one channel: taken as luma already
    three = psnr_y(n.repeat(3, 1, 1), g.repeat(3, 1, 1), shave=1, grey=True)
    assert three == pytest.approx(one, abs=1e-6)
    # as RGB the error is scaled by 219/255 (Y in [16, 235]): +1.32 dB
    rgb = psnr_y(n.repeat(3, 1, 1), g.repeat(3, 1, 1), shave=1)
    assert rgb - three == pytest.approx(20 * math.log10(255 / 219), abs=0.05)


def test_ms_ssim_y_sizes():
    a = _img((3, 60, 60), seed=9)
    b = (a * 0.9 + 0.05).clamp(0, 1)
    v = ms_ssim_y(b, a, shave=2)
    assert 0.5 < v < 1.0
    assert ms_ssim_y(a, a.clone(), shave=2) == pytest.approx(1.0, abs=1e-5)
    assert math.isnan(ms_ssim_y(b[:, :20, :20], a[:, :20, :20], shave=2))  # too small for 2 scales


# ---------------------------------------------------------------- MATLAB imresize
def test_imresize_constant_stays_constant():
    c8 = np.full((7, 9, 3), 137, np.uint8)
    for kw in ({"scale": 2}, {"scale": 0.5}, {"scale": 1 / 3.5}, {"scale": 2.7}, {"size": (5, 13)}):
        out = imresize(c8, **kw)
        assert out.dtype == np.uint8 and np.all(out == 137), kw
    cf = torch.full((2, 3, 10, 11), 0.25, dtype=torch.float64)
    out = imresize(cf, scale=1.7)
    assert out.shape == (2, 3, 17, 19) and out.dtype == torch.float64
    torch.testing.assert_close(out, torch.full_like(out, 0.25), atol=1e-12, rtol=0)


def test_imresize_shapes_odd_and_non_integer():
    x = np.random.default_rng(0).integers(0, 256, (15, 13, 3), dtype=np.uint8)
    assert imresize(x, 2).shape == (30, 26, 3)
    assert imresize(imresize(x, 2), 0.5).shape == (15, 13, 3)  # x2 then /2 comes back
    assert imresize(x, 1 / 3).shape == (5, 5, 3)  # ceil(15/3), ceil(13/3)
    assert imresize(x, 1.5).shape == (23, 20, 3)  # ceil(22.5), ceil(19.5)
    assert imresize(x, 1 / 3.5).shape == (5, 4, 3)  # ceil(4.29), ceil(3.71)
    assert imresize(x[..., 0], size=(7, 31)).shape == (7, 31)  # 2-D, explicit (rows, cols)
    assert imresize(np.zeros((510, 4)), 1 / 3).shape == (170, 2)  # 510 * (1/3) is not > 170
    # torch [C, H, W] and numpy [H, W, C] agree
    t = torch.from_numpy(x).permute(2, 0, 1).contiguous()
    np.testing.assert_array_equal(imresize(t, 1 / 3.5).permute(1, 2, 0).numpy(), imresize(x, 1 / 3.5))
    with pytest.raises(ValueError):
        imresize(x, scale=2, size=(4, 4))
    with pytest.raises(ValueError):
        imresize(x)


def test_imresize_known_values():
    # MATLAB imresize([1 2 3 4], 2): Keys a=-0.5 reproduces a ramp away from the border; the
    # symmetric border (x0 = x1, x-1 = x2) gives 1.09375 * x1 - 0.09375 * x2 = 0.90625 at the first
    # sample (hand computed from the taps/weights of imresize.m).
    row = np.array([[1.0, 2.0, 3.0, 4.0]])
    out = imresize(row, scale=(1, 2))
    assert out.shape == (1, 8)
    np.testing.assert_allclose(out[0, 3:5], [2.25, 2.75], atol=1e-12)
    np.testing.assert_allclose(out[0, [0, -1]], [0.90625, 4.09375], atol=1e-12)
    # sample 3 (u = 1.75) still reaches the mirrored x0 = x1: 1.7265625 rather than 1.75
    np.testing.assert_allclose(out[0, [2, -3]], [1.7265625, 3.2734375], atol=1e-12)
    # shrinking antialiases: a 1-px checkerboard averages to its mean
    chk = (np.indices((16, 16)).sum(0) % 2).astype(np.float64)
    assert np.abs(imresize(chk, 0.5)[2:-2, 2:-2] - 0.5).max() < 0.05
    # uint8 output is rounded (and clipped) like MATLAB
    ramp = np.tile(np.arange(0, 256, 17, dtype=np.uint8), (4, 1))
    up = imresize(ramp, 2)
    ref = np.clip(np.floor(imresize(imresize(ramp.astype(np.float64), scale=(2, 1)).round(), scale=(1, 2)) + 0.5), 0, 255)
    np.testing.assert_array_equal(up, ref.astype(np.uint8))


def test_lr_size_for_and_make_lr():
    assert lr_size_for((36, 40), 4) == ((36, 40), (9, 10))
    assert lr_size_for((37, 41), 3) == ((36, 39), (12, 13))  # mod-crop
    (H, W), (h, w) = lr_size_for((36, 40), 3.5)
    assert (h, w) == (10, 11) and (H, W) == (35, 39)  # 10*3.5 = 35, 11*3.5 = 38.5 -> 39
    assert H <= 36 and W <= 40
    with pytest.raises(ValueError):
        lr_size_for((3, 40), 4)
    hr = np.random.default_rng(1).integers(0, 256, (36, 40, 3), dtype=np.uint8)
    hc, lr = make_lr(hr, 3.5)
    assert hc.shape == (35, 39, 3) and lr.shape == (10, 11, 3) and lr.dtype == np.uint8
    sr = bicubic_sr(lr, hc.shape[:2])
    assert sr.shape == (3, 35, 39) and float(sr.min()) >= 0 and float(sr.max()) <= 1


# ---------------------------------------------------------------- literature check
# Published bicubic baselines (SRCNN / VDSR / EDSR tables): Y-PSNR dB and SSIM.
PUBLISHED = {
    "Set5": {2: (33.66, 0.9299), 3: (30.39, 0.8682), 4: (28.42, 0.8104)},
    "Set14": {2: (30.24, 0.8688), 3: (27.55, 0.7742), 4: (26.00, 0.7027)},
}
# The benchmark method (see gsplat2d.eval.resize.BICUBIC_STUDY for every variant tried): the
# provided LR_bicubic files upscaled with MATLAB imresize in double, the SR quantised to 8-bit RGB,
# Y of the SR unrounded and Y of the uint8 HR rounded (MATLAB rgb2ycbcr on double / on uint8),
# shave = scale, greyscale images (Set14 bridge) on their grey level.
MEASURED = {
    "Set5": {2: (33.6586, 0.9299), 3: (30.3944, 0.8679), 4: (28.4235, 0.8102)},
    "Set14": {2: (30.2296, 0.8691), 3: (27.5381, 0.7749), 4: (25.9969, 0.7034)},
}
# The pre-MATLAB method (PIL bicubic, Y unrounded on both sides): 0.012-0.018 dB above Set5.
MEASURED_PIL_SET5 = {2: 33.678, 3: 30.405, 4: 28.432}


def _bicubic_scores(root: Path, scales, with_pil: bool = False):
    if not (root / "HR").is_dir():
        pytest.skip(f"benchmark images not found at {root} (expects shared/data beside the repo)")
    scores = {}
    for s in scales:
        ps, ss, pil = [], [], []
        for hp in sorted((root / "HR").glob("*.png")):
            with Image.open(hp) as im:
                grey = im.mode == "L"
            hr8 = load_image_uint8(hp)
            hr8 = hr8[: hr8.shape[0] - hr8.shape[0] % s, : hr8.shape[1] - hr8.shape[1] % s]
            lr8 = load_image_uint8(root / "LR_bicubic" / f"X{s}" / f"{hp.stem}x{s}.png")
            assert lr8.shape[:2] == (hr8.shape[0] // s, hr8.shape[1] // s)
            hr = torch.from_numpy(hr8).permute(2, 0, 1).double() / 255
            sr = bicubic_sr(lr8, hr8.shape[:2])
            ps.append(psnr_y(sr, hr, shave=s, round_hr_y=True, grey=grey))
            ss.append(ssim_y(sr, hr, shave=s, round_hr_y=True, grey=grey))
            if with_pil:
                lr = torch.from_numpy(lr8).permute(2, 0, 1).float() / 255
                pil.append(psnr_y(bicubic_upscale(lr, (hr.shape[-1], hr.shape[-2])), hr, shave=s))
        scores[s] = (float(np.mean(ps)), float(np.mean(ss)), float(np.mean(pil)) if pil else None)
    return scores


@pytest.fixture(scope="module")
def set5_scores():
    return _bicubic_scores(SET5, (2, 3, 4), with_pil=True)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_set5_bicubic_matches_literature(set5_scores, scale):
    psnr, ssim, pil = set5_scores[scale]
    pub_psnr, pub_ssim = PUBLISHED["Set5"][scale]
    assert psnr == pytest.approx(pub_psnr, abs=0.01)
    assert round(psnr, 2) == pub_psnr  # in fact it rounds to the published figure
    assert psnr == pytest.approx(MEASURED["Set5"][scale][0], abs=5e-4)
    assert ssim == pytest.approx(pub_ssim, abs=0.001)
    assert ssim == pytest.approx(MEASURED["Set5"][scale][1], abs=5e-4)
    assert pil == pytest.approx(MEASURED_PIL_SET5[scale], abs=0.002)


def test_set14_bicubic_close_to_literature():
    scores = _bicubic_scores(SET14, (4,))  # one scale keeps this fast; x2/x3 are in MEASURED
    psnr, ssim, _ = scores[4]
    assert psnr == pytest.approx(MEASURED["Set14"][4][0], abs=5e-4)
    assert ssim == pytest.approx(MEASURED["Set14"][4][1], abs=5e-4)
    assert psnr == pytest.approx(PUBLISHED["Set14"][4][0], abs=0.02)  # 0.003 off at x4, 0.012 at x2


def test_imresize_reproduces_matlab_lr_files():
    """MATLAB imresize(modcrop(HR, 4), 1/4) on uint8 == the Set5 LR_bicubic_swinir files, bit for bit."""
    folder = SET5 / "LR_bicubic_swinir" / "X4"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    for hp in sorted((SET5 / "HR").glob("*.png")):
        hr = load_image_uint8(hp)
        hr, lr = make_lr(hr, 4)
        ref = load_image_uint8(folder / f"{hp.stem}x4.png")
        np.testing.assert_array_equal(lr, ref, err_msg=hp.name)
        np.testing.assert_array_equal(imresize(hr, 0.25), ref)


def test_one_ms_ssim_for_loss_fit_and_eval(monkeypatch):
    """Training loss, image fitting and the test command all go through eval.metrics.ms_ssim with
    one scale rule (5 scales from 176 px, 4 from 99, 3 from 44, 2 from 21, renormalised)."""
    import gsplat2d.eval.metrics as m
    from gsplat2d.fitting.fit import ms_ssim as fit_ms_ssim
    from gsplat2d.train.loop import SRLoss

    assert [len(m.ms_ssim_betas(s) or ()) for s in (20, 21, 43, 44, 98, 99, 175, 176)] == [0, 2, 2, 3, 3, 4, 4, 5]
    for s in (21, 44, 99, 176):
        assert abs(sum(m.ms_ssim_betas(s)) - 1) < 1e-12
    calls = []
    real = m.ms_ssim
    monkeypatch.setattr(m, "ms_ssim", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    x, y = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    import gsplat2d.train.loop as loop

    monkeypatch.setattr(loop, "ms_ssim", m.ms_ssim)
    v_loss = SRLoss(0.0, 1.0)(x, y)[1]["ms_ssim"]
    v_fit = fit_ms_ssim(x[0], y[0])
    assert len(calls) == 2 and abs(v_loss - v_fit) < 1e-6
