"""Gaussians2D.save / load: round trip, atomic writes, safe and clear loading errors."""

import os
import pickle

import pytest
import torch

import gsplat2d
from gsplat2d.g2d import QuantSpec


def _field(batch=(), n=37, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(*batch, n, 2, generator=g)
    scales = 0.01 + 0.05 * torch.rand(*batch, n, 2, generator=g)
    rot = torch.rand(*batch, n, generator=g) * 3.14
    colors = torch.rand(*batch, n, c, generator=g) + 0.05
    opac = 0.2 + 0.7 * torch.rand(*batch, n, generator=g)
    return gsplat2d.Gaussians2D.from_scale_rotation(means, scales, rot, colors, opac)


@pytest.mark.parametrize("batch", [(), (2,)], ids=["single", "batch2"])
def test_round_trip_renders_identically(tmp_path, batch):
    field = _field(batch)
    path = tmp_path / "sub" / "field.g2d"
    field.save(path)
    back = gsplat2d.Gaussians2D.load(path)
    for name in ("means", "covariances", "colors", "opacities"):
        assert torch.equal(getattr(back, name), getattr(field, name)), name
    a, _ = field.render(41, 29, backend="torch")
    b, _ = back.render(41, 29, backend="torch")
    assert torch.equal(a, b)
    assert [p.name for p in path.parent.iterdir()] == ["field.g2d"]  # no temp file left


def test_old_torch_encoded_half_precision_files_still_load(tmp_path):
    """gsplat2d 0.1 could write the torch encoding, also in float16; those files still load."""
    field = _field()
    payload = {"format": "gsplat2d.Gaussians2D", "version": 1,
               **{k: getattr(field, k).half() for k in ("means", "covariances", "colors", "opacities")}}
    torch.save(payload, tmp_path / "f.g2d")
    back = gsplat2d.Gaussians2D.load(tmp_path / "f.g2d")
    assert back.means.dtype == torch.float16
    assert (back.means.float() - field.means).abs().max() < 1e-3


def test_every_written_file_has_a_checksum(tmp_path):
    """One format for every writer: a flipped byte in a saved field is refused (the old torch
    encoding had no checksum: a changed covariance loaded and rendered silently)."""
    field = _field()
    path = tmp_path / "f.g2d"
    field.save(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="f.g2d"):
        gsplat2d.Gaussians2D.load(path)


def test_failed_save_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.g2d"
    _field(seed=1).save(path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    import gsplat2d.g2d as g2d

    monkeypatch.setattr(g2d, "encode", boom)
    with pytest.raises(OSError, match="disk full"):
        _field(seed=2).save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.g2d"]


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.g2d"):
        gsplat2d.Gaussians2D.load(tmp_path / "nope.g2d")
    junk = tmp_path / "junk.g2d"
    junk.write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="junk.g2d"):
        gsplat2d.Gaussians2D.load(junk)
    other = tmp_path / "other.g2d"
    torch.save({"means": torch.rand(3, 2)}, other)
    with pytest.raises(ValueError, match="not a gsplat2d Gaussian file"):
        gsplat2d.Gaussians2D.load(other)
    partial = tmp_path / "partial.g2d"
    torch.save({"format": "gsplat2d.Gaussians2D", "version": 1, "means": torch.rand(3, 2)}, partial)
    with pytest.raises(ValueError, match="covariances"):
        gsplat2d.Gaussians2D.load(partial)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_load_never_executes_code(tmp_path):
    path = tmp_path / "evil.g2d"
    with open(path, "wb") as f:
        pickle.dump({"format": "gsplat2d.Gaussians2D", "version": 1, "evil": _Evil()}, f)
    with pytest.raises(ValueError, match="evil.g2d"):
        gsplat2d.Gaussians2D.load(path)


# ---------------------------------------------------------------------------------- metadata, codecs
def test_torch_container_metadata_and_old_files(tmp_path):
    field = _field()
    meta = {"mode": "sum", "width": 96, "height": 64}
    path = tmp_path / "m.g2d"
    size = field.save(path, meta=meta)
    assert size == path.stat().st_size
    back, got = gsplat2d.Gaussians2D.load_with_meta(path)
    assert got == meta
    assert torch.equal(back.means, field.means)
    # a version-1 file as the original save() wrote it (no "meta" key) still loads, with {} meta
    old = tmp_path / "old.g2d"
    torch.save({"format": "gsplat2d.Gaussians2D", "version": 1,
                **{k: getattr(field, k) for k in ("means", "covariances", "colors", "opacities")}}, old)
    back, got = gsplat2d.Gaussians2D.load_with_meta(old)
    assert got == {} and torch.equal(back.colors, field.colors)
    bad = tmp_path / "bad.g2d"
    torch.save({"format": "gsplat2d.Gaussians2D", "version": 1, "meta": {"mode": "max"},
                **{k: getattr(field, k) for k in ("means", "covariances", "colors", "opacities")}}, bad)
    with pytest.raises(ValueError, match="bad.g2d.*mode"):
        gsplat2d.Gaussians2D.load(bad)
    mismatched = tmp_path / "mismatched.g2d"
    torch.save({"format": "gsplat2d.Gaussians2D", "version": 1, "means": torch.rand(4, 2),
                "covariances": torch.rand(5, 3), "colors": torch.rand(4, 3), "opacities": torch.rand(4)},
               mismatched)
    with pytest.raises(ValueError, match="mismatched.g2d"):
        gsplat2d.Gaussians2D.load(mismatched)


def test_save_codec_arguments(tmp_path):
    field = _field()
    with pytest.raises(ValueError, match="codec"):
        field.save(tmp_path / "x.g2d", codec="zip")
    with pytest.raises(ValueError, match="quant"):
        field.save(tmp_path / "x.g2d", quant=QuantSpec())
    sizes = {c: field.save(tmp_path / f"{c}.g2d", codec=c) for c in ("lossless", "quantized")}
    assert sizes["quantized"] < sizes["lossless"] < (tmp_path / "lossless.g2d").stat().st_size + 1
    assert not list(tmp_path.glob("*.g2dtmp*"))


@pytest.mark.parametrize("codec", ["lossless", "quantized"])
def test_saved_files_get_the_usual_mode(tmp_path, codec):
    """Atomic writes go through mkstemp (0600); the result must still be readable by others
    as any normal file would be (0666 & ~umask)."""
    import stat

    g = gsplat2d.Gaussians2D(torch.rand(5, 2), torch.rand(5, 3) * 0.01 + torch.tensor([0.02, 0.0, 0.02]),
                    torch.rand(5, 3), torch.rand(5))
    p = tmp_path / "f.g2d"
    g.save(p, codec=codec)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask


def _as_png_values(image_hwc):
    return (image_hwc.clamp(0, 1) * 255).round().to(torch.uint8).numpy().astype(int)


def test_fitted_and_sr_fields_render_through_the_api_like_the_cli(tmp_path):
    """`Gaussians2D.load(f).render(W, H)` with no mode argument renders a fitted image and an SR
    field exactly as the commands do: the mode and the source size travel with the field (sum
    mode here; the API default for hand-built fields is alpha, which renders these wrongly)."""
    import numpy as np
    from PIL import Image

    from gsplat2d import Gaussians2D
    from gsplat2d.fitting.fit import main as fit_main
    from gsplat2d.sr.render import main as render_main

    rng = np.random.default_rng(0)
    img = (rng.random((20, 28, 3)) * 255).astype(np.uint8)
    src = tmp_path / "img.png"
    Image.fromarray(img).save(src)

    # image fitting: fit -> .g2d; the render command re-renders it at its native size
    g2d = tmp_path / "fit.g2d"
    assert fit_main([str(src), "--out", str(g2d), "--num-gaussians", "60", "--steps", "30", "--no-progress",
                     "--device", "cpu", "--codec", "lossless"]) == 0
    cli_png = tmp_path / "fit_cli.png"
    assert render_main(["--gaussians", str(g2d), "--scale", "1", "--output_path", str(cli_png), "--quiet"]) == 0
    field = Gaussians2D.load(g2d)
    assert field.mode == "sum" and field.source_size == (28, 20)
    api = _as_png_values(field.render(28, 20)[0])
    cli = np.asarray(Image.open(cli_png).convert("RGB")).astype(int)
    assert np.abs(api - cli).max() <= 1
    wrong = _as_png_values(field.render(28, 20, mode="alpha")[0])
    assert np.abs(wrong - cli).max() > 10  # the mode matters for this field

    # super-resolution (the colour model): render --save_gaussians writes the field beside the
    # image it renders
    sr_field, sr_png = tmp_path / "sr.g2d", tmp_path / "sr.png"
    assert render_main(["--input_path", str(src), "--output_path", str(sr_png), "--scale", "3", "--model_path",
                        "colour", "--save_gaussians", str(sr_field), "--device", "cpu", "--quiet"]) == 0
    field = Gaussians2D.load(sr_field)
    assert field.mode == "sum" and field.source_size == (28, 20)
    api = _as_png_values(field.render(84, 60)[0])
    cli = np.asarray(Image.open(sr_png).convert("RGB")).astype(int)
    assert np.abs(api - cli).max() <= 1

    # the default (feature) model's field holds features: its model's decoder turns the API's
    # splat into the CLI's image
    from gsplat2d.sr.model import load_model

    assert render_main(["--input_path", str(src), "--output_path", str(sr_png), "--scale", "3",
                        "--save_gaussians", str(sr_field), "--device", "cpu", "--quiet"]) == 0
    field = Gaussians2D.load(sr_field)
    assert field.mode == "sum_taper" and field.source_size == (28, 20) and field.channels == 16
    with torch.no_grad():
        api = _as_png_values(load_model().pixel_decoder(field, 84, 60)(field.render(84, 60)[0]))
    cli = np.asarray(Image.open(sr_png).convert("RGB")).astype(int)
    assert np.abs(api - cli).max() <= 1
