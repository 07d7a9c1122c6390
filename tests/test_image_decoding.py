"""Photos decoded as a viewer shows them, each case an image made here: the
EXIF orientation applied (pixels, header size and the render CLI's output size), float images
from [0, 1] (or [0, 255]), 1-bit as 0/255, 16-bit from its full range."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gsplat2d.image_files import image_size, read_image_uint8


def _asymmetric(h: int = 8, w: int = 12) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((h, w, 3)) * 255).astype(np.uint8)


# EXIF orientation -> how the stored pixels are turned for display (the EXIF 2.3 table)
DISPLAY = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: np.transpose(a, (1, 0, 2)),
    6: lambda a: np.rot90(a, k=-1),
    7: lambda a: np.rot90(a[:, ::-1], k=-1),  # mirror, then 90 degrees clockwise
    8: lambda a: np.rot90(a, k=1),
}


@pytest.mark.parametrize("orientation", sorted(DISPLAY))
def test_exif_orientation_is_applied(tmp_path, orientation):
    arr = _asymmetric()
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.png"
    im.save(path, exif=exif)
    got = read_image_uint8(path)
    want = DISPLAY[orientation](arr)
    assert got.shape == want.shape and np.array_equal(got, want)
    with Image.open(path) as f:
        assert image_size(f) == (want.shape[1], want.shape[0])


def test_a_portrait_phone_jpeg_renders_portrait(tmp_path):
    """Stored landscape 12 x 8 with orientation 6 (a phone held upright): x2 is 16 x 24."""
    from gsplat2d.sr.render import main as render_main

    src, out = tmp_path / "phone.jpg", tmp_path / "out.png"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_asymmetric()).save(src, exif=exif, quality=95)
    assert render_main(["--input_path", str(src), "--output_path", str(out), "--scale", "2",
                        "--model_path", "colour", "--device", "cpu", "--quiet"]) == 0
    assert Image.open(out).size == (16, 24)


def test_float_images_map_from_unit_range(tmp_path):
    ramp = np.linspace(0.0, 1.0, 40, dtype=np.float32).reshape(5, 8)
    unit, wide = tmp_path / "unit.tif", tmp_path / "wide.tif"
    Image.fromarray(ramp, mode="F").save(unit)
    Image.fromarray(ramp * 255.0, mode="F").save(wide)
    want = np.round(ramp * 255.0).astype(np.uint8)
    for path in (unit, wide):
        got = read_image_uint8(path)
        assert got.shape == (5, 8, 3)
        assert np.abs(got[..., 0].astype(int) - want).max() <= 1, path.name
        assert np.array_equal(got[..., 0], got[..., 2])
    assert read_image_uint8(unit).mean() > 100  # not the all-black of a [0, 255] reading


def test_one_bit_images_are_black_and_white(tmp_path):
    bits = np.random.default_rng(1).random((9, 14)) > 0.3
    path = tmp_path / "scan.png"
    Image.fromarray(bits).convert("1").save(path)
    got = read_image_uint8(path)
    assert np.array_equal(got[..., 1], np.where(bits, 255, 0).astype(np.uint8))


def test_sixteen_bit_grey_uses_its_full_range(tmp_path):
    v = np.array([[0, 257 * 10, 65535, 32896]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(v).save(path)
    assert read_image_uint8(path)[0, :, 0].tolist() == [0, 10, 255, 128]
