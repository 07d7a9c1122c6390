"""Bad input, one test per case: each ends with a clear one-line error (or correct handling) and
no leftover or destroyed file.

Two cases are install steps: CI runs ``pip install -e ".[test]"`` as the README says, and the
dependency split (triton optional) is checked on ``pyproject.toml`` below. Files written with a
checksum: ``test_gaussians_io.test_every_written_file_has_a_checksum``; a flat image rendering
flat, with its ``border=0`` mutant: ``test_sr_model.test_shipped_model_renders_a_flat_image_flat``.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gsplat2d.fitting.fit import main as fit_main
from gsplat2d.sr.render import main as render_main
from gsplat2d.train.cli import main as train_main

ROOT = Path(__file__).resolve().parents[1]


def _png(path: Path, w: int = 24, h: int = 20, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


def _one_line_error(err: str, prog: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith(f"{prog}: error:") or any(ln.startswith(f"{prog}: error:") for ln in lines), err
    assert "Traceback" not in err, err


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(4):
        _png(d / f"im{i}.png", 40, 32, seed=i)
    return d


def test_train_refuses_a_folder_as_save_path_before_any_step(tmp_path, images, capsys):
    models = tmp_path / "models"
    models.mkdir()
    rc = train_main(["--dataset_path", str(images), "--save_path", str(models), "--epochs", "1",
                     "--batch_size", "2", "--patch_size", "8", "--no_progress", "--no_lpips", "--device", "cpu",
                     "--samples_dir", str(tmp_path / "samples")])
    assert rc == 2
    _one_line_error(capsys.readouterr().err, "gsplat2d train")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "models"]  # nothing written
    assert list(models.iterdir()) == []


def test_render_folder_skips_a_bad_image_and_reports_it(tmp_path, images, capsys):
    (images / "zz_truncated.png").write_bytes((images / "im0.png").read_bytes()[:60])
    (images / "not_an_image.png").write_bytes(b"hello")
    out = tmp_path / "out"
    rc = render_main(["--input_path", str(images), "--output_path", str(out), "--scale", "2", "--device", "cpu",
                      "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "skipped" in err and "zz_truncated.png" in err and "not_an_image.png" in err
    assert "2 of 6 images failed" in err
    assert sorted(p.name for p in out.iterdir()) == [f"im{i}.png" for i in range(4)]  # the rest rendered


def test_fit_folder_skips_an_unreadable_image_and_writes_the_results(tmp_path, images, capsys):
    (images / "im1.png").write_bytes(b"not a png")
    out = tmp_path / "fit"
    rc = fit_main(["--input_path", str(images), "--output_path", str(out), "--num_gaussians", "40", "--steps", "3",
                   "--no_progress", "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "im1.png" in err and "1 of 4 images failed" in err
    assert (out / "results.json").is_file() and (out / "results.md").is_file()
    assert sorted(p.name for p in out.glob("*.g2d")) == ["im0.g2d", "im2.g2d", "im3.g2d"]


def test_ci_runs_the_quick_start_and_triton_is_optional():
    """CI (``.ci/run`` on a clean clone) is the behaviour check of the README's Quick start: it
    must run the Quick start's install and test commands themselves, so a README that drifts from
    what CI proves fails here; CPU users get no 1 GB triton, the test extra brings it."""
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [ln.split("#")[0].strip() for ln in quick.splitlines()
                if ln.startswith(("pip install -e", "python -m pytest"))]
    assert commands == ['pip install -e ".[test]"', "python -m pytest -q"], commands
    ci = (ROOT / ".ci" / "run").read_text()
    assert '"$PY" -m pip install -q -e ".[test]"' in ci and "run_pytest -q\n" in ci
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("triton") for d in meta["dependencies"])  # CPU users: no 1 GB triton
    assert any(d.startswith("triton") for d in meta["optional-dependencies"]["test"])
    assert "pytest>=7" in meta["optional-dependencies"]["test"]


@pytest.mark.parametrize("model", ["feature", "colour"])
@pytest.mark.parametrize("size,scale", [((1, 1), "2"), ((1, 1), "100"), ((9, 6), "2"), ((9, 6), "3.7")],
                         ids=["1x1-x2", "1x1-x100", "9x6-x2", "9x6-x3.7"])
def test_render_of_a_flat_image_is_flat_to_its_corners(tmp_path, size, scale, model):
    """Before the border ring, a 1x1 image rendered at half brightness and flat images ~10% dark at the corners
    (the colour model, before its border ring); both shipped models."""
    src, out = tmp_path / "flat.png", tmp_path / "out.png"
    Image.new("RGB", size, (200, 30, 40)).save(src)
    assert render_main(["--input_path", str(src), "--output_path", str(out), "--scale", scale, "--model_path", model,
                        "--device", "cpu", "--backend", "torch", "--quiet"]) == 0
    got = np.asarray(Image.open(out)).astype(int)
    corners = got[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert np.abs(corners - (200, 30, 40)).max() <= 5, corners  # worst observed 4 (1x1 at x100)
    assert np.abs(got - (200, 30, 40)).max() <= 5


def test_resuming_a_finished_run_says_so(tmp_path, images, capsys):
    save = tmp_path / "m.pth"
    common = ["--dataset_path", str(images), "--save_path", str(save), "--epochs", "1", "--batch_size", "2",
              "--patch_size", "8", "--no_progress", "--no_lpips", "--device", "cpu", "--samples_dir",
              str(tmp_path / "s")]
    assert train_main(common) == 0
    capsys.readouterr()
    rc = train_main(common + ["--resume", str(tmp_path / "m.last.pth")])
    out, err = capsys.readouterr()
    assert rc == 0 and "Traceback" not in err
    assert "is complete" in out and "--epochs" in out


def test_train_on_a_folder_of_unreadable_images_fails_before_training(tmp_path, capsys):
    d = tmp_path / "bad"
    d.mkdir()
    for i in range(3):
        (d / f"x{i}.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        rc = train_main(["--dataset_path", str(d), "--save_path", str(tmp_path / "m.pth"), "--epochs", "1",
                         "--no_progress", "--device", "cpu"])
    assert rc == 2
    err = capsys.readouterr().err
    _one_line_error(err, "gsplat2d train")
    assert "no readable image" in err
    assert not (tmp_path / "m.pth").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("main,prog,extra", [
    (fit_main, "gsplat2d fit", ["--num_gaussians", "10", "--steps", "1"]),
    (render_main, "gsplat2d render", ["--scale", "2", "--output_path", "OUT"]),
])
def test_device_cuda_without_cuda_is_one_line(tmp_path, capsys, main, prog, extra):
    src = _png(tmp_path / "a.png")
    args = [a.replace("OUT", str(tmp_path / "o.png")) for a in extra]
    rc = main(["--input_path", str(src), "--device", "cuda", *args])
    assert rc == 2
    err = capsys.readouterr().err
    _one_line_error(err, prog)
    assert "no CUDA device" in err


@pytest.mark.parametrize("n", [1_000_000, 10_000_000])
def test_fit_refuses_more_gaussians_than_pixels_up_front(tmp_path, capsys, n):
    src = _png(tmp_path / "a.png", 96, 64)
    t = time.perf_counter()
    rc = fit_main(["--input_path", str(src), "--num_gaussians", str(n), "--steps", "5", "--no_progress",
                   "--device", "cpu"])
    assert time.perf_counter() - t < 30  # the check comes before any allocation for N Gaussians
    assert rc == 2
    err = capsys.readouterr().err
    _one_line_error(err, "gsplat2d fit")
    assert "6144 pixels" in err
    assert not (tmp_path / "a.g2d").exists()


def test_fit_never_returns_a_field_worse_than_its_start(tmp_path):
    """An absurd learning rate makes the optimisation diverge; the best field seen is kept."""
    from gsplat2d.fitting.fit import fit_image

    img = torch.rand(3, 32, 40)
    res = fit_image(img, num_gaussians=200, steps=20, lr=50.0, lr_means=50.0, progress=False)
    assert res.psnr >= res.init_psnr - 1e-6, (res.psnr, res.init_psnr)


def test_fit_refuses_an_image_too_small_to_fit(tmp_path, capsys):
    src = _png(tmp_path / "dot.png", 1, 1)
    rc = fit_main(["--input_path", str(src), "--num_gaussians", "1", "--steps", "5", "--no_progress",
                   "--device", "cpu"])
    assert rc == 2
    err = capsys.readouterr().err
    _one_line_error(err, "gsplat2d fit")
    assert "at least 11x11" in err and "nan" not in err


def test_sigterm_during_render_leaves_no_temporary_file(tmp_path):
    src = _png(tmp_path / "a.png", 64, 48)
    out = tmp_path / "out"
    out.mkdir()
    code = (
        "import sys, time, gsplat2d.image_files as im\n"
        "real = im.write_image_atomic\n"
        "def slow(arr, path):\n"
        "    def write(f):\n"
        "        f.write(b'x' * 1000); f.flush(); print('writing', flush=True); time.sleep(30)\n"
        "    from gsplat2d._io import atomic_write\n"
        "    atomic_write(path, write, suffix='.png')\n"
        "im.write_image_atomic = slow\n"
        "import gsplat2d.cli.common as c\n"
        "c.write_image_atomic = slow\n"
        "import gsplat2d.sr.render as r\n"
        "sys.exit(r.main(sys.argv[1:]))\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, "--input_path", str(src), "--output_path",
                          str(out / "hr.png"), "--scale", "2", "--device", "cpu", "--quiet"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    assert any(".g2dtmp" in n for n in os.listdir(out))  # the temporary file is there now
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143 and "terminated" in err
    assert os.listdir(out) == []  # no hidden temporary file, no partial output


def test_a_temporary_file_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    from gsplat2d._io import atomic_write

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".f.g2d.{dead}.abcd1234.g2dtmp.g2d"
    stale.write_bytes(b"half")
    other = tmp_path / f".f.g2d.{os.getpid()}.abcd1234.g2dtmp.g2d"  # a live writer's: kept
    other.write_bytes(b"busy")
    atomic_write(tmp_path / "f.g2d", lambda f: f.write(b"new"), suffix=".g2d")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([other.name, "f.g2d"])


def test_replacing_an_output_keeps_its_permission_bits(tmp_path):
    src = _png(tmp_path / "a.png")
    out = tmp_path / "o.png"
    _png(out)
    os.chmod(out, 0o640)
    assert render_main(["--input_path", str(src), "--output_path", str(out), "--scale", "2", "--device", "cpu",
                        "--quiet"]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert Image.open(out).size == (48, 40)


def test_test_command_creates_no_empty_output_folders(tmp_path, capsys):
    from gsplat2d.eval.cli import main as test_main

    d = tmp_path / "hr"
    d.mkdir()
    (d / "a.png").write_bytes(b"not an image")
    _png(d / "tiny.png", 3, 3)
    outs = [tmp_path / n for n in ("cmp", "gt", "ren")]
    rc = test_main(["--data_path", str(d), "--output_dir", str(outs[0]), "--gt_dir", str(outs[1]),
                    "--ren_dir", str(outs[2]), "--device", "cpu"])
    assert rc == 2
    _one_line_error(capsys.readouterr().err, "gsplat2d test")
    assert not any(p.exists() for p in outs)


def test_messages_say_exact_limits_and_the_command(tmp_path, capsys):
    src = _png(tmp_path / "a.png")
    assert render_main(["--input_path", str(src), "--output_path", str(tmp_path / "o.png"),
                        "--size", "16384x16385"]) == 2
    err = capsys.readouterr().err
    assert "268,451,840 pixels exceeds the limit of 268,435,456 pixels" in err
    # one extension rule for every output: a field is a .g2d file
    assert render_main(["--input_path", str(src), "--save_gaussians", str(tmp_path / "f.txt")]) == 2
    assert ".g2d" in capsys.readouterr().err and not (tmp_path / "f.txt").exists()
    assert fit_main(["--input_path", str(src), "--output_path", str(tmp_path / "x.txt"), "--steps", "1"]) == 2
    assert ".g2d" in capsys.readouterr().err and not (tmp_path / "x.txt").exists()


def test_test_command_counts_evaluated_and_skipped_images(tmp_path, capsys):
    from gsplat2d.eval.cli import main as test_main

    d = tmp_path / "hr"
    d.mkdir()
    for i in range(2):
        _png(d / f"a{i}.png", 64, 64, seed=i)
    (d / "b_bad.png").write_bytes(b"junk")
    rc = test_main(["--data_path", str(d), "--output_dir", str(tmp_path / "c"), "--gt_dir", str(tmp_path / "g"),
                    "--ren_dir", str(tmp_path / "r"), "--crop", "32", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "[1/3]" in out and "[2/3]" in out  # counters over all files, a skipped one included
    assert "Evaluated 2 of 3 images (1 skipped)" in out
    block = out.split("--- Validation Complete ---", 1)[1]
    assert block.splitlines()[1].startswith("Dataset:")  # the brief's block itself is unchanged


def test_version_and_no_leaked_library_warnings(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gsplat2d", "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("gsplat2d ")
    import pickle

    bad = tmp_path / "raw.g2d"
    with open(bad, "wb") as f:
        pickle.dump({"format": "gsplat2d.Gaussians2D", "version": 1}, f, protocol=4)
    r = subprocess.run([sys.executable, "-m", "gsplat2d", "render", "--gaussians", str(bad), "--size", "8x8",
                        "--output_path", str(tmp_path / "o.png")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "UserWarning" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
