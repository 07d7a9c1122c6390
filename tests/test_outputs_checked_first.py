"""Every command checks where its results go before any work: an output under a
path that is a file is one line, exit 2, and the expensive step never ran; a folder render goes on
past an image whose output cannot be written."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def setup(tmp_path):
    (tmp_path / "afile").write_text("x")
    img = tmp_path / "small.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(img)
    return tmp_path, img


def _never(*a, **k):
    raise AssertionError("the work started before the outputs were checked")


def _one_line(capsys, *words):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for w in words:
        assert w in err[0], err
    return err[0]


@pytest.mark.parametrize("flag", ["--output_path", "--save_gaussians"])
def test_render_checks_its_outputs_before_encoding(setup, capsys, monkeypatch, flag):
    import gsplat2d.sr.render as render

    tmp, img = setup
    monkeypatch.setattr(render, "_render_one", _never)
    extra = ["--scale", "2"] if flag == "--output_path" else []
    rc = render.main(["--input_path", str(img), flag, str(tmp / "afile" / "out.x"), *extra, "--quiet",
                      "--model_path", "colour", "--device", "cpu"])
    # the file ending is checked first; a good ending under a file fails on the folder
    assert rc == 2
    capsys.readouterr()
    name = "out.png" if flag == "--output_path" else "out.g2d"
    rc = render.main(["--input_path", str(img), flag, str(tmp / "afile" / name), *extra, "--quiet",
                      "--model_path", "colour", "--device", "cpu"])
    assert rc == 2
    _one_line(capsys, flag, "is a file")


@pytest.mark.parametrize("which", ["--output_path", "--json"])
def test_fit_checks_its_outputs_before_fitting(setup, capsys, monkeypatch, which):
    import gsplat2d.fitting.fit as fit

    tmp, img = setup
    monkeypatch.setattr(fit, "_fit_one", _never)
    out = tmp / "afile" / "o.g2d" if which == "--output_path" else tmp / "o.g2d"
    args = ["--input_path", str(img), "--output_path", str(out), "--num_gaussians", "50", "--steps", "5", "--quiet"]
    if which == "--json":
        args += ["--json", str(tmp / "afile" / "r.json")]
    assert fit.main(args) == 2
    _one_line(capsys, which, "is a file")


def test_demo_and_test_check_their_outputs_first(setup, capsys, monkeypatch):
    import gsplat2d.eval.cli as ev
    import gsplat2d.eval.demo as demo

    tmp, img = setup
    monkeypatch.setattr(demo, "_load_hr", _never)
    assert demo.main(["--output_dir", str(tmp / "afile" / "d"), "--quick"]) == 2
    _one_line(capsys, "--output_dir", "is a file")
    hr = tmp / "hr"
    hr.mkdir()
    Image.open(img).save(hr / "a.png")
    monkeypatch.setattr(ev, "_measure_dataset", _never)
    assert ev.main(["--benchmark", "--data_path", str(hr), "--json", str(tmp / "afile" / "r.json"),
                    "--model_path", "colour", "--device", "cpu"]) == 2
    _one_line(capsys, "--json", "is a file")


def test_a_folder_render_goes_on_past_an_output_it_cannot_write(setup, capsys):
    from gsplat2d.sr.render import main as render_main

    tmp, img = setup
    src = tmp / "in"
    src.mkdir()
    for name in ("a", "b", "c"):
        Image.open(img).save(src / f"{name}.png")
    out = tmp / "out"
    (out / "b.png").mkdir(parents=True)  # b's output slot is taken by a folder
    rc = render_main(["--input_path", str(src), "--output_path", str(out), "--scale", "2", "--quiet",
                      "--model_path", "colour", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "skipped" in err and "b.png" in err and "1 of 3 images failed" in err
    assert Image.open(out / "a.png").size == (48, 40) and Image.open(out / "c.png").size == (48, 40)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_folder_is_refused_before_fitting(setup, capsys, monkeypatch):
    import gsplat2d.fitting.fit as fit

    tmp, img = setup
    ro = tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    monkeypatch.setattr(fit, "_fit_one", _never)
    try:
        assert fit.main(["--input_path", str(img), "--output_path", str(ro / "o.g2d"), "--quiet"]) == 2
    finally:
        ro.chmod(0o755)
    _one_line(capsys, "cannot write")
