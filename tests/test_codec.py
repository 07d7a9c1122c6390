"""The binary .g2d codecs (gsplat2d.g2d): exact lossless round trip, quantised error and exact
size, and clear errors for truncated, corrupted and foreign files."""

import json
import math
import struct
import zlib

import pytest
import torch

import gsplat2d
from gsplat2d import g2d as codec
from gsplat2d.g2d import QuantSpec

FIELDS = ("means", "covariances", "colors", "opacities")


def _field(batch=(), n=37, c=3, seed=0, const_opacity=False):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(*batch, n, 2, generator=g)
    scales = 0.005 + 0.05 * torch.rand(*batch, n, 2, generator=g)
    rot = torch.rand(*batch, n, generator=g) * 6.28
    colors = torch.rand(*batch, n, c, generator=g) * 1.2 - 0.1
    opac = torch.ones(*batch, n) if const_opacity else 0.2 + 0.7 * torch.rand(*batch, n, generator=g)
    return gsplat2d.Gaussians2D.from_scale_rotation(means, scales, rot, colors, opac)


def _equal(a, b):
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in FIELDS)


@pytest.mark.parametrize("batch,c,const", [((), 3, False), ((2, 3), 1, False), ((), 5, True)])
def test_lossless_round_trip_is_exact(tmp_path, batch, c, const):
    field = _field(batch, c=c, const_opacity=const)
    meta = {"mode": "alpha", "width": 40, "height": 30, "background": [0.1] * c, "note": "x"}
    path = tmp_path / "f.g2d"
    size = field.save(path, codec="lossless", meta=meta)
    assert size == path.stat().st_size == len(codec.encode(field, meta=meta))
    back, meta_back = gsplat2d.Gaussians2D.load_with_meta(path)
    assert _equal(back, field)
    assert meta_back == {**meta, "background": [0.1] * c}
    assert gsplat2d.Gaussians2D.load(path).num_gaussians == field.num_gaussians
    # size: header 20 + batch dims + meta length + meta + float32 arrays + CRC
    n = math.prod(batch) * field.num_gaussians
    meta_len = len(json.dumps(meta, sort_keys=True, separators=(",", ":")))
    expect = 20 + 4 * len(batch) + 4 + meta_len + 4 * n * (2 + 3 + c) + 4 * (1 if const else n) + 4
    assert size == expect
    assert [p.name for p in tmp_path.iterdir()] == ["f.g2d"]


def _expected_quantized_size(n, c, spec, const, meta_len, ndim=0):
    streams = [(2 * n, spec.pos_bits), (3 * n, spec.cov_bits), (c * n, spec.color_bits)]
    if not const:
        streams.append((n, spec.opacity_bits))
    n_comp = 2 + 3 + c + (0 if const else 1)
    return (20 + 4 * ndim + 4 + meta_len + 8 + 8 * n_comp + sum((k * b + 7) // 8 for k, b in streams)
            + (4 if const else 0) + 4)


@pytest.mark.parametrize("encoding", ["cholesky", "scale_rotation"])
@pytest.mark.parametrize("const", [False, True], ids=["opacity", "const_opacity"])
def test_quantized_round_trip_size_and_error(tmp_path, encoding, const):
    n, c = 301, 3
    field = _field(n=n, c=c, const_opacity=const, seed=3)
    spec = QuantSpec(cov_encoding=encoding)
    meta = {"mode": "sum", "width": 64, "height": 48}
    path = tmp_path / "q.g2d"
    size = field.save(path, codec="quantized", quant=spec, meta=meta)
    meta_len = len(json.dumps(meta, sort_keys=True, separators=(",", ":")))
    assert size == path.stat().st_size == _expected_quantized_size(n, c, spec, const, meta_len)
    bits = spec.bits_per_gaussian(c, const)
    assert bits == 2 * spec.pos_bits + 3 * spec.cov_bits + 3 * spec.color_bits + (0 if const else spec.opacity_bits)
    back, meta_back = gsplat2d.Gaussians2D.load_with_meta(path)
    assert meta_back == meta
    # the file holds exactly what quantize_dequantize (used by QAT) predicts
    assert _equal(back, codec.quantize_dequantize(field, spec))
    # stated error: every value within half a quantisation step of its range (+ float32 rounding)
    for name, bits_, x, y in (("means", spec.pos_bits, field.means, back.means),
                              ("colors", spec.color_bits, field.colors, back.colors),
                              ("opacities", spec.opacity_bits, field.opacities[..., None], back.opacities[..., None])):
        span = (x.amax(0) - x.amin(0)).clamp_min(0)
        step = span / (2**bits_ - 1)
        assert bool(((x - y).abs() <= 0.5 * step + 1e-6).all()), name
    # covariance: 7 bits in log space -> small relative error of each variance
    rel = (back.covariances[:, [0, 2]] / field.covariances[:, [0, 2]]).sqrt()
    assert float((rel - 1).abs().max()) < 0.12
    # rendered: close to the original (sum mode, 64x48)
    a, _ = field.render(64, 48, mode="sum", backend="torch")
    b, _ = back.render(64, 48, mode="sum", backend="torch")
    mse = float(((a - b) ** 2).mean())
    assert -10 * math.log10(mse / float(a.abs().max()) ** 2) > 30.0


def test_quant_spec_for_size():
    assert QuantSpec.for_size(256, 256).pos_bits == 12
    assert QuantSpec.for_size(768, 512).pos_bits == 14
    assert QuantSpec.for_size(8000, 100).pos_bits == 16 and QuantSpec.for_size(4, 4).pos_bits == 8
    assert QuantSpec.for_size(64, 64, cov_bits=5).cov_bits == 5


def test_quantized_higher_bits_is_closer():
    field = _field(n=200, seed=5)
    errs = []
    for b in (4, 6, 8, 10):
        q = codec.quantize_dequantize(field, QuantSpec(pos_bits=b + 6, cov_bits=b, color_bits=b, opacity_bits=b))
        errs.append(float((q.colors - field.colors).abs().max() + (q.covariances - field.covariances).abs().max()))
    assert errs == sorted(errs, reverse=True)


def test_quantized_batched_and_grey(tmp_path):
    field = _field((2,), n=20, c=1)
    data = codec.encode(field, quant=QuantSpec())
    back, meta, info = gsplat2d.Gaussians2D.from_g2d_bytes(data)
    assert back.means.shape == (2, 20, 2) and back.colors.shape == (2, 20, 1) and meta == {}
    assert info["codec"] == "quantized" and info["bytes"] == len(data)
    assert _equal(back, codec.quantize_dequantize(field, QuantSpec()))


def test_fake_quantize_is_straight_through():
    field = _field(n=50)
    means = field.means.clone().requires_grad_()
    colors = field.colors.clone().requires_grad_()
    f = gsplat2d.Gaussians2D(means, field.covariances, colors, field.opacities)
    fq = codec.fake_quantize(f, QuantSpec(color_bits=3))
    assert torch.equal(fq.colors.detach(), codec.quantize_dequantize(field, QuantSpec(color_bits=3)).colors)
    (fq.colors.sum() * 2 + fq.means.sum()).backward()
    assert torch.equal(colors.grad, torch.full_like(colors, 2.0))
    assert torch.equal(means.grad, torch.ones_like(means))


def test_quantize_rejects_bad_fields():
    f = _field(n=5)
    bad = gsplat2d.Gaussians2D(f.means.clone(), f.covariances, f.colors, f.opacities)
    bad.means[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite means"):
        codec.encode(bad, quant=QuantSpec())
    cov = f.covariances.clone()
    cov[1] = torch.tensor([1.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="positive definite"):
        codec.encode(gsplat2d.Gaussians2D(f.means, cov, f.colors, f.opacities), quant=QuantSpec())
    with pytest.raises(ValueError, match="cov_bits"):
        QuantSpec(cov_bits=0)
    with pytest.raises(ValueError, match="mode"):
        codec.encode(f, meta={"mode": "max"})
    with pytest.raises(ValueError, match="width"):
        codec.encode(f, meta={"width": 0})


@pytest.mark.parametrize("quant", [None, QuantSpec()], ids=["lossless", "quantized"])
def test_truncated_and_corrupted_files(tmp_path, quant):
    data = codec.encode(_field(n=40), quant=quant, meta={"mode": "sum"})
    path = tmp_path / "t.g2d"
    for cut in (0, 4, 8, 12, 19, 20, 30, len(data) // 2, len(data) - 5, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=r"t\.g2d") as e:
            gsplat2d.Gaussians2D.load(path)
        assert any(w in str(e.value) for w in ("truncated", "corrupted", "not a", "not a readable")), str(e.value)
    for pos in (9, 14, 40, len(data) // 2, len(data) - 2):
        bad = bytearray(data)
        bad[pos] ^= 0x10
        path.write_bytes(bytes(bad))
        with pytest.raises(ValueError, match=r"t\.g2d.*(corrupted|version|codec)"):
            gsplat2d.Gaussians2D.load(path)
    path.write_bytes(data + b"\x00")  # trailing garbage breaks the CRC too
    with pytest.raises(ValueError, match="corrupted"):
        gsplat2d.Gaussians2D.load(path)


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


def test_consistent_crc_but_wrong_contents(tmp_path):
    data = codec.encode(_field(n=10), meta={"mode": "sum"})
    body = bytearray(data[:-4])
    path = tmp_path / "v.g2d"
    v2 = bytearray(body)
    v2[8:10] = struct.pack("<H", 2)
    path.write_bytes(_with_crc(bytes(v2)))
    with pytest.raises(ValueError, match="version 2"):
        gsplat2d.Gaussians2D.load(path)
    big = bytearray(body)
    big[12:16] = struct.pack("<I", 2**31)  # header claims 2^31 Gaussians: size check, no allocation
    path.write_bytes(_with_crc(bytes(big)))
    with pytest.raises(ValueError, match="payload is"):
        gsplat2d.Gaussians2D.load(path)
    path.write_bytes(_with_crc(bytes(body[:-8])))
    with pytest.raises(ValueError, match="payload is"):
        gsplat2d.Gaussians2D.load(path)
    meta_bad = bytes(body).replace(b'"sum"', b'"max"')
    path.write_bytes(_with_crc(meta_bad))
    with pytest.raises(ValueError, match="mode"):
        gsplat2d.Gaussians2D.load(path)


def test_foreign_files(tmp_path):
    from PIL import Image

    png = tmp_path / "image.g2d"
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    with pytest.raises(ValueError, match=r"image\.g2d"):
        gsplat2d.Gaussians2D.load(png)
    empty = tmp_path / "empty.g2d"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.g2d"):
        gsplat2d.Gaussians2D.load(empty)
    with pytest.raises(ValueError, match="wrong magic"):
        codec.decode(b"GIF89a" + bytes(40))
