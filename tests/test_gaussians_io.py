"""Gaussians2D.save / load: round trip, atomic writes, safe and clear loading errors."""

import os
import pickle

import pytest
import torch

import gsplat2d


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


def test_half_precision_storage(tmp_path):
    field = _field()
    field.save(tmp_path / "f.g2d", dtype=torch.float16)
    back = gsplat2d.Gaussians2D.load(tmp_path / "f.g2d")
    assert back.means.dtype == torch.float16
    assert (back.means.float() - field.means).abs().max() < 1e-3


def test_failed_save_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.g2d"
    _field(seed=1).save(path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
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
