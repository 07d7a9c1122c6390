"""Tests for gsplat2d.train.data: SR training crops, one scale per batch, bad data."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gsplat2d.train.data import (
    CustomImageDataset,
    RandomScaleBatchSampler,
    collate,
    make_loader,
)

P = 8  # small LR patch: crops up to round(8 * 4) = 32


def _rgb(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write_clean(root: Path, n=4, size=(40, 52)):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(_rgb(*size, i)).save(root / f"{i + 1:04d}.png")


@pytest.fixture
def mixed(tmp_path) -> Path:
    root = tmp_path / "hr"
    (root / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(_rgb(40, 50, 0)).save(root / "a_rgb.png")
    Image.fromarray(_rgb(45, 38, 1)).save(root / "b_photo.JPG", quality=90)
    Image.fromarray(_rgb(36, 36, 2)[..., 0], mode="L").save(root / "c_grey.png")
    Image.fromarray(np.dstack([_rgb(40, 40, 3), np.full((40, 40), 128, np.uint8)]), "RGBA").save(
        root / "sub" / "d_rgba.png")
    Image.fromarray((_rgb(40, 40, 4)[..., 0].astype(np.uint16) * 257)).save(root / "sub" / "e_16bit.png")
    Image.fromarray(_rgb(40, 40, 5)).save(root / "sub" / "deeper" / "f.bmp")
    Image.fromarray(_rgb(5, 7, 6)).save(root / "g_tiny.png")  # smaller than every crop
    (root / "notes.txt").write_text("not an image")
    return root


def _truncated(root: Path, name="zz_truncated.png"):
    Image.fromarray(_rgb(40, 40, 9)).save(root / name)
    data = (root / name).read_bytes()
    (root / name).write_bytes(data[: len(data) // 2])


def test_finds_images_recursively_sorted(mixed):
    ds = CustomImageDataset(mixed, patch_size=P)
    names = [p.name for p in ds.files]
    assert len(ds) == 7 and "notes.txt" not in names
    assert ds.files == sorted(ds.files)


@pytest.mark.parametrize("scale", [1.0, 2.0, 2.5, 3.7, 4.0])
def test_shapes_and_range_every_mode(mixed, scale):
    ds = CustomImageDataset(mixed, patch_size=P, scale_range=(1.0, 4.0))
    hs = round(P * scale)
    for i in range(len(ds)):
        out = ds[(i, scale, 123 + i)]
        assert out["hr"].shape == (3, hs, hs) and out["lr"].shape == (3, P, P)
        assert out["hr"].dtype == out["lr"].dtype == torch.float32
        for t in (out["hr"], out["lr"]):
            assert 0.0 <= t.min() and t.max() <= 1.0
        assert out["scale"] == scale
    assert ds.skipped == 0


def test_lr_is_pil_bicubic_of_hr_crop(tmp_path):
    _write_clean(tmp_path / "hr", n=1)
    ds = CustomImageDataset(tmp_path / "hr", patch_size=P, augment=False)
    out = ds[(0, 2.5, 7)]
    hr8 = (out["hr"] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    ref = np.asarray(Image.fromarray(hr8).resize((P, P), Image.BICUBIC, reducing_gap=None))
    assert torch.equal((out["lr"] * 255).round().to(torch.uint8), torch.from_numpy(ref.copy()).permute(2, 0, 1))


def test_plain_index_uses_set_scale(tmp_path):
    _write_clean(tmp_path / "hr", n=2)
    ds = CustomImageDataset(tmp_path / "hr", patch_size=P)
    ds.set_scale(3.0)
    assert ds[0]["hr"].shape == (3, 24, 24)


def test_truncated_file_warns_once_and_is_skipped(mixed):
    """A file cut after its header is found before training (its data is read to the end)."""
    _truncated(mixed)
    with pytest.warns(UserWarning, match="zz_truncated.png"):
        ds = CustomImageDataset(mixed, patch_size=P)
    assert "zz_truncated.png" not in [p.name for p in ds.files]


def test_a_file_broken_during_training_warns_once_and_is_skipped(mixed):
    ds = CustomImageDataset(mixed, patch_size=P)
    bad = 0
    data = ds.files[bad].read_bytes()
    ds.files[bad].write_bytes(data[: len(data) // 2])  # cut after the checks
    with pytest.warns(UserWarning, match=ds.files[bad].name):
        out = ds[(bad, 2.0, 0)]
    assert out["hr"].shape == (3, 16, 16)
    assert ds.skipped == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no retry of the bad file
        for seed in range(5):
            ds[(bad, 2.0, seed)]
    assert ds.skipped == 1


def test_all_unreadable_raises_before_training(tmp_path):
    root = tmp_path / "hr"
    root.mkdir()
    _truncated(root, "only.png")
    with pytest.warns(UserWarning, match="only.png"), pytest.raises(ValueError, match="no readable image"):
        CustomImageDataset(root, patch_size=P)


def test_missing_and_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        CustomImageDataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="empty"):
        CustomImageDataset(tmp_path / "empty")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_one_scale_per_batch_through_loader(tmp_path, num_workers):
    _write_clean(tmp_path / "hr", n=10)
    ds = CustomImageDataset(tmp_path / "hr", patch_size=P, scale_range=(1.5, 4.0))
    loader = make_loader(ds, batch_size=3, num_workers=num_workers, seed=5)
    assert loader.persistent_workers == (num_workers > 0)
    batches = list(loader)
    assert len(batches) == 4 and sum(b["lr"].shape[0] for b in batches) == 10
    scales = []
    for b in batches:
        s = b["scale"]
        assert isinstance(s, float) and 1.5 <= s <= 4.0
        assert b["hr"].shape[1:] == (3, round(P * s), round(P * s))
        assert b["lr"].shape[1:] == (3, P, P)
        scales.append(s)
    assert len(set(scales)) > 1  # scales vary between batches
    second = list(loader)  # next epoch: different draws
    assert [b["scale"] for b in second] != scales


def test_determinism_given_seed_across_workers(tmp_path):
    _write_clean(tmp_path / "hr", n=6)
    ds = CustomImageDataset(tmp_path / "hr", patch_size=P)
    a = list(make_loader(ds, 2, num_workers=0, seed=11))
    b = list(make_loader(ds, 2, num_workers=2, seed=11))
    c = list(make_loader(ds, 2, num_workers=0, seed=12))
    for x, y in zip(a, b):
        assert x["scale"] == y["scale"]
        assert torch.equal(x["hr"], y["hr"]) and torch.equal(x["lr"], y["lr"])
    assert any(x["scale"] != z["scale"] or not torch.equal(x["hr"], z["hr"]) for x, z in zip(a, c))


def test_sampler_epochs_and_collate_check(tmp_path):
    _write_clean(tmp_path / "hr", n=5)
    ds = CustomImageDataset(tmp_path / "hr", patch_size=P)
    s = RandomScaleBatchSampler(ds, 2, shuffle=False, seed=0, drop_last=True)
    e0 = list(s)
    assert len(e0) == len(s) == 2 and [i for b in e0 for i, _, _ in b] == [0, 1, 2, 3]
    s.set_epoch(0)
    assert list(s) == e0
    with pytest.raises(ValueError, match="one scale"):
        collate([ds[(0, 2.0, 0)], ds[(1, 3.0, 0)]])


@pytest.mark.parametrize("augment", [False, True])
def test_paired_lr_alignment(tmp_path, augment):
    hr_root, lr_root, s = tmp_path / "DIV2K_train_HR", tmp_path / "X4", 4
    hr_root.mkdir(), lr_root.mkdir()
    for i in range(3):
        hr = Image.fromarray(_rgb(48, 64, i))
        hr.save(hr_root / f"{i + 1:04d}.png")
        hr.resize((16, 12), Image.BICUBIC, reducing_gap=None).save(lr_root / f"{i + 1:04d}x4.png")
    ds = CustomImageDataset(hr_root, patch_size=P, lr_root=lr_root, lr_scale=s, augment=augment)
    assert ds.scale_range == (4.0, 4.0)
    for seed in range(8):
        out = ds[(seed % 3, 2.0, seed)]  # the given scale is overridden by lr_scale
        assert out["scale"] == 4.0
        assert out["hr"].shape == (3, 32, 32) and out["lr"].shape == (3, P, P)
        # The HR crop shrunk by PIL reproduces the LR crop except near the crop border (the
        # full-image resize saw pixels outside the crop there). With augmentation a transpose
        # swaps PIL's horizontal/vertical passes (8-bit rounding in between): off by <= 1.
        hr8 = (out["hr"] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        ref = np.asarray(Image.fromarray(hr8).resize((P, P), Image.BICUBIC, reducing_gap=None))
        lr8 = (out["lr"] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        inner = (slice(2, -2), slice(2, -2))
        diff = np.abs(ref[inner].astype(int) - lr8[inner].astype(int)).max()
        assert diff <= (1 if augment else 0)
    batch = next(iter(make_loader(ds, 2, num_workers=0, seed=0)))
    assert batch["scale"] == 4.0


def test_paired_lr_missing_partner(tmp_path):
    _write_clean(tmp_path / "hr", n=2)
    (tmp_path / "lr").mkdir()
    Image.fromarray(_rgb(10, 13, 0)).save(tmp_path / "lr" / "0001x4.png")
    with pytest.raises(FileNotFoundError, match="0002"):
        CustomImageDataset(tmp_path / "hr", patch_size=P, lr_root=tmp_path / "lr", lr_scale=4)
