"""Training runs are never lost: an existing run at --save_path is refused
unless resumed or --overwrite; a lock refuses a second process on the same path; --resume
restores every recorded argument and refuses a changed one that may not change; validation images
are never trained on."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gsplat2d.sr.model import load_checkpoint
from gsplat2d.train import loop as loop_mod
from gsplat2d.train.cli import main as train_main


@pytest.fixture
def images(tmp_path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray((rng.random((30 + i, 34, 3)) * 255).astype(np.uint8)).save(d / f"im{i}.png")
    return d


def _args(images: Path, save: Path, *extra: str, val_split: bool = True) -> list:
    return ["--dataset_path", str(images), "--save_path", str(save), "--preset", "colour", "--epochs", "1", "--batch_size", "2",
            "--patch_size", "8", *(["--val_split", "1"] if val_split else []), "--val_scales", "2",
            "--model", '{"n_feats": 8, "n_blocks": 1}', "--no_progress", "--no_lpips", "--device", "cpu",
            "--backend", "torch", "--samples_dir", str(save.parent / "s"), *extra]


def _digest(*paths: Path) -> list:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def test_a_second_run_on_the_same_path_is_refused_and_loses_nothing(tmp_path, images, capsys):
    save = tmp_path / "m.pth"
    assert train_main(_args(images, save)) == 0
    files = [save, tmp_path / "m.last.pth", tmp_path / "m.metrics.jsonl"]
    before = _digest(*files)
    capsys.readouterr()
    assert train_main(_args(images, save, "--lr", "3e-4")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a training run" in err[0], err
    assert f"--resume {tmp_path / 'm.last.pth'}" in err[0] and "--overwrite" in err[0]
    assert _digest(*files) == before
    assert train_main(_args(images, save, "--overwrite")) == 0  # asked for: replaced
    assert _digest(*files) != before


def test_a_live_lock_refuses_and_a_stale_one_is_taken_over(tmp_path, images, capsys):
    save = tmp_path / "m.pth"
    lock = tmp_path / "m.pth.lock"
    host = loop_mod.socket.gethostname()
    lock.write_text(f"{os.getppid()} {host}\n")  # a live process (the one that ran pytest)
    assert train_main(_args(images, save)) == 2
    err = capsys.readouterr().err
    assert "another training run" in err and f"pid {os.getppid()}" in err
    assert not save.exists() and lock.read_text().startswith(str(os.getppid()))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock.write_text(f"{gone.pid} {host}\n")  # its process is gone: a kill -9 left it
    assert train_main(_args(images, save)) == 0
    assert save.is_file() and not lock.exists()  # taken over, then released


def test_resume_restores_the_recorded_arguments_and_refuses_changed_ones(tmp_path, images, capsys, monkeypatch):
    save = tmp_path / "run" / "m.pth"
    assert train_main(_args(images, save, "--lr", "3e-4")) == 0
    last = tmp_path / "run" / "m.last.pth"
    capsys.readouterr()
    # a changed argument that may not change: refused, nothing written
    before = _digest(last)
    assert train_main(["--resume", str(last), "--batch_size", "4", "--epochs", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--batch_size 4 differs" in err[0], err
    assert _digest(last) == before
    # only the flags that may change: every other argument is the recorded run's
    monkeypatch.chdir(tmp_path)  # the default --save_path would land here
    assert train_main(["--resume", str(last), "--epochs", "2", "--no_progress"]) == 0
    cfg = json.loads(load_checkpoint(str(last))["train_config"])
    assert (cfg["epochs"], cfg["batch_size"], cfg["patch_size"], cfg["val_split"], cfg["lr"]) == (2, 2, 8, 1, 3e-4)
    assert cfg["model"] == {"n_feats": 8, "n_blocks": 1} and cfg["lpips"] is False
    assert cfg["save_path"] == str(save) and not (tmp_path / "models").exists()
    # a flag given again with its recorded value is fine
    assert train_main(["--resume", str(last), "--epochs", "3", "--batch_size", "2", "--no_progress"]) == 0


def test_validation_images_are_never_trained_on(tmp_path, images, capsys):
    save = tmp_path / "m.pth"
    val = images / "val"
    val.mkdir()
    for f in sorted(images.glob("*.png"))[:2]:
        f.rename(val / f.name)  # validation images inside the training folder
    args = _args(images, save, val_split=False)
    seen = []
    real = loop_mod.make_loader
    monkey = pytest.MonkeyPatch()
    monkey.setattr(loop_mod, "make_loader", lambda ds, *a, **k: (seen.append(list(ds.files)), real(ds, *a, **k))[1])
    try:
        assert train_main(args + ["--val_path", str(val)]) == 0
    finally:
        monkey.undo()
    assert "2 image(s) of --val_path are also under --dataset_path" in capsys.readouterr().out
    assert len(seen[0]) == 3 and not any(f.parent.name == "val" for f in seen[0])
    assert train_main(args + ["--val_path", str(images), "--overwrite"]) == 2
    assert "every training image is a validation image" in capsys.readouterr().err
