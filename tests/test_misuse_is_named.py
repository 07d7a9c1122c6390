"""Misuse and broken inputs end in one line that names them: broken fields and
checkpoints, diverging runs, time budgets, full disks, wrong inputs to the models, hints, and
truncated files. Each test fails on the old behaviour (silent, raw or late), said beside it."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gsplat2d import Gaussians2D
from gsplat2d.sr.model import load_model, save_checkpoint
from gsplat2d.sr.render import main as render_main
from gsplat2d.train.cli import main as train_main
from gsplat2d.train.loop import TrainConfig, _lr_lambda

ROOT = Path(__file__).resolve().parents[1]


def _png(path: Path, w: int, h: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def images(tmp_path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(5):
        _png(d / f"im{i}.png", 34, 30 + i, i)
    return d


def _train_args(images: Path, save: Path, *extra: str) -> list:
    return ["--dataset_path", str(images), "--save_path", str(save), "--preset", "colour", "--epochs", "2", "--batch_size", "2",
            "--patch_size", "8", "--val_split", "1", "--val_scales", "2", "--model", '{"n_feats": 8, "n_blocks": 1}',
            "--no_progress", "--no_lpips", "--device", "cpu", "--backend", "torch",
            "--samples_dir", str(save.parent / "s"), *extra]


def _field(n: int = 40, seed: int = 0) -> Gaussians2D:
    g = torch.Generator().manual_seed(seed)
    return Gaussians2D(torch.rand(n, 2, generator=g), torch.tensor([[4e-3, 1e-4, 3e-3]]).repeat(n, 1),
                       torch.rand(n, 3, generator=g), 0.3 + 0.5 * torch.rand(n, generator=g), mode="sum",
                       source_size=(16, 12))


# -- broken fields and checkpoints (before: rendered flat or black, rc 0, nothing said) ----------
def test_a_field_with_nan_or_absurd_gaussians_is_warned_about(tmp_path, capsys):
    f = _field()
    f.means[0, 0] = float("nan")
    f.covariances[1] = torch.tensor([1e6, 0.0, 1e6])  # a std of 1000 images
    f.covariances[2] = torch.tensor([1e-3, 2e-3, 1e-3])  # not positive definite
    f.save(tmp_path / "bad.g2d")
    _field(seed=1).save(tmp_path / "good.g2d")
    out = tmp_path / "o.png"
    assert render_main(["--gaussians", str(tmp_path / "bad.g2d"), "--scale", "2", "--output_path", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "of its 40 Gaussians 1 have non-finite values" in err, err
    assert "1 have a covariance that is not positive definite" in err and "1 have a covariance over 10 images wide" in err
    assert render_main(["--gaussians", str(tmp_path / "good.g2d"), "--scale", "2", "--output_path", str(out), "--quiet"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_a_checkpoint_with_nan_weights_is_refused(tmp_path, capsys):
    m = load_model("feature")
    with torch.no_grad():
        m.decoder[0].weight[0, 0] = float("nan")
    save_checkpoint(tmp_path / "nan.pth", m)
    with pytest.raises(ValueError, match=r"non-finite weights in decoder\.0\.weight"):
        load_model(tmp_path / "nan.pth")
    src = _png(tmp_path / "in.png", 16, 12, 0)
    rc = render_main(["--input_path", str(src), "--model_path", str(tmp_path / "nan.pth"), "--scale", "2",
                      "--output_path", str(tmp_path / "o.png"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "non-finite weights" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o.png").exists()


# -- training runs -----------------------------------------------------------------------------
def test_a_diverging_run_is_warned_about_and_keeps_no_broken_model(tmp_path, images, capsys):
    """Before: --lr 1e6 ran to the end, rc 0, and saved its epoch-1 model as the best."""
    save = tmp_path / "m.pth"
    rc = train_main(_train_args(images, save, "--lr", "1e6"))
    out = capsys.readouterr()
    assert rc == 1, out
    assert "the run is diverging (lower --lr)" in out.out  # the epochs' warning
    # then a step with a non-finite gradient stops it: one line, rc 1
    assert "the run diverged (lower --lr); no model saved" in out.err and len(out.err.strip().splitlines()) == 1
    assert "Traceback" not in out.err
    assert not save.exists() and (tmp_path / "m.last.pth").exists()  # the run itself is resumable


def test_a_healthy_run_is_not_called_diverging(tmp_path, images, capsys):
    save = tmp_path / "m.pth"
    assert train_main(_train_args(images, save)) == 0
    out = capsys.readouterr().out
    assert "diverging" not in out and save.exists() and "Stopped:         all 2 epochs done" in out


def test_a_time_budget_longer_than_the_epochs_still_decays_the_rate():
    """Before: the cosine ran over the budget's clock only; --time_budget_min 1e9 never decayed."""
    cfg = TrainConfig(dataset_path="x", time_budget_min=1e9, warmup_steps=10, min_lr_ratio=0.01)
    clock = {"t": 1e-7}
    f = _lr_lambda(cfg, total_steps=1000, clock=clock)
    assert math.isclose(f(999), 0.01, rel_tol=1e-3)  # the epochs' end: fully decayed
    assert 0.45 < f(505) < 0.55  # half way
    clock["t"] = 1.0  # a spent budget decays it too
    assert math.isclose(f(20), 0.01, rel_tol=1e-9)


def test_a_run_stopped_by_its_time_budget_says_so(tmp_path, images, capsys):
    save = tmp_path / "m.pth"
    assert train_main(_train_args(images, save, "--time_budget_min", "1e-5")) == 0
    out = capsys.readouterr().out
    assert "Stopped:         the 1e-05-minute time budget was spent (epoch 1 of 2)" in out, out


def test_a_full_disk_gives_one_line_naming_the_file(tmp_path):
    """Before: torch's raw ``[enforce fail at inline_container.cc ...]``. The file-size limit
    makes the write fail as a full disk does (EFBIG instead of ENOSPC)."""
    code = f"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
from gsplat2d.sr.model import load_model, save_checkpoint
try:
    save_checkpoint({str(tmp_path / 'big.pth')!r}, load_model('feature'))
except OSError as e:
    print('OSError:', e)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.startswith("OSError: could not write ") and "big.pth" in r.stdout, (r.stdout, r.stderr)
    assert "inline_container" not in r.stdout and len(r.stdout.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == []  # no partial file, no temporary left


# -- the models' inputs ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["feature", "colour"])
def test_encode_names_a_wrong_input_and_takes_any_float_dtype(name):
    m = load_model(name)
    lr = torch.rand(1, 3, 9, 11)
    with pytest.raises(ValueError, match="floats in \\[0, 1\\], got torch.uint8"):
        m.encode((lr * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="divide 0..255 images by 255"):
        m.encode(lr * 255)
    with pytest.raises(ValueError, match="lr is empty"):
        m.encode(lr[:0])
    with pytest.raises(ValueError, match=r"lr must be \[B, 3, H, W\]"):
        m.encode(lr[0])
    with torch.no_grad():
        for dt in (torch.float64, torch.float16):  # before: raw torch dtype errors
            x = lr.to(dt)
            got = m.render(m.encode(x), 22, 18)  # the network runs on x cast to its float32 weights
            assert got.dtype == torch.float32 and torch.equal(got, m.render(m.encode(x.float()), 22, 18))


def test_the_colour_model_refuses_a_feature_field():
    """Before: returned the field's 16 channels as an image."""
    feat = load_model("feature").encode(torch.rand(1, 3, 6, 5))
    with pytest.raises(ValueError, match="this field has 16 channels, the colour model renders 3"):
        load_model("colour").render(feat, 10, 12)


# -- hints and files ------------------------------------------------------------------------------
def test_the_save_gaussians_hint_names_the_model_a_feature_field_needs(tmp_path, capsys):
    ck = tmp_path / "my_feature.pth"
    save_checkpoint(ck, load_model("feature"))
    src = _png(tmp_path / "in.png", 12, 10, 0)
    for mp, want in ((str(ck), f"--model_path {ck}"), (None, None)):
        args = ["--input_path", str(src), "--save_gaussians", str(tmp_path / f"f{bool(mp)}.g2d")]
        assert render_main(args + (["--model_path", mp] if mp else [])) == 0
        hint = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("re-render a field with")]
        assert len(hint) == 1
        assert (want in hint[0]) if want else ("--model_path" not in hint[0])  # the shipped one is found by hash


def test_a_truncated_legacy_field_file_gives_a_short_message(tmp_path):
    """Before: 460 characters of torch's advice about corrupted checkpoints."""
    import gsplat2d.gaussians as G

    f = _field()
    torch.save({"format": G._FORMAT, "version": G._VERSION, "means": f.means, "covariances": f.covariances,
                "colors": f.colors, "opacities": f.opacities}, tmp_path / "old.g2d")
    data = (tmp_path / "old.g2d").read_bytes()
    assert Gaussians2D.load(tmp_path / "old.g2d").num_gaussians == 40
    (tmp_path / "cut.g2d").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as e:
        Gaussians2D.load(tmp_path / "cut.g2d")
    msg = str(e.value).replace(str(tmp_path / "cut.g2d"), "")
    assert "truncated or damaged" in msg and len(msg) < 120, msg


def test_a_folder_of_truncated_images_fails_before_training(tmp_path, capsys):
    """Before: the headers passed, and the run failed once its first batch was loaded."""
    d = tmp_path / "cut"
    d.mkdir()
    for i in range(3):
        data = _png(tmp_path / f"full{i}.png", 40, 40, i).read_bytes()
        (d / f"im{i}.png").write_bytes(data[: len(data) // 2])
    jpg = tmp_path / "full.jpg"
    Image.fromarray((np.random.default_rng(5).random((64, 64, 3)) * 255).astype(np.uint8)).save(jpg, quality=90)
    (d / "im3.jpg").write_bytes(jpg.read_bytes()[:700])
    save = tmp_path / "m.pth"
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        rc = train_main(_train_args(d, save))
    err = capsys.readouterr().err
    assert rc == 2 and "no readable image" in err and "all 4 image files failed" in err, err
    assert not save.exists() and not (tmp_path / "m.last.pth").exists()


def test_mode_alpha_on_a_feature_field_is_refused(tmp_path, capsys):
    """Before: the CLI warned and rendered, though the README says it is refused."""
    src = _png(tmp_path / "in.png", 12, 10, 0)
    g = tmp_path / "f.g2d"
    assert render_main(["--input_path", str(src), "--save_gaussians", str(g), "--quiet"]) == 0
    rc = render_main(["--gaussians", str(g), "--mode", "alpha", "--scale", "2", "--output_path", str(tmp_path / "o.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "renders in its sum mode only (drop --mode alpha)" in err
    assert not (tmp_path / "o.png").exists()
