"""Tests for ``python -m gsplat2d.eval`` (gsplat2d.eval.cli): the brief report, the output folders,
the benchmark table / JSON, and user-error handling. Tiny synthetic images and an untrained model."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gsplat2d.eval.cli import main
from gsplat2d.eval.resize import imresize
from gsplat2d.sr.model import Pixel2GaussianSR, save_checkpoint

W, H = 40, 36  # synthetic HR size


def _smooth_rgb(seed: int, w: int = W, h: int = H) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8))
    return np.asarray(small.resize((w, h), Image.BICUBIC))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("model") / "m.pth"
    save_checkpoint(p, Pixel2GaussianSR("colour"))
    return p


@pytest.fixture(scope="module")
def hr_folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hr")
    Image.fromarray(_smooth_rgb(1)).save(d / "a.png")
    Image.fromarray(_smooth_rgb(2)).save(d / "b.png")
    Image.fromarray(_smooth_rgb(3)[..., 1]).save(d / "grey.png")  # mode L
    (d / "notes.txt").write_text("not an image")  # ignored (extension)
    return d


@pytest.fixture(scope="module")
def set_layout(tmp_path_factory) -> Path:
    """Set5-style: HR/ + LR_bicubic/X2/{name}x2.png (no X4: made by the CLI)."""
    root = tmp_path_factory.mktemp("bench") / "Tiny"
    (root / "HR").mkdir(parents=True)
    (root / "LR_bicubic" / "X2").mkdir(parents=True)
    for i, name in enumerate(("p", "q")):
        hr = _smooth_rgb(10 + i)
        Image.fromarray(hr).save(root / "HR" / f"{name}.png")
        Image.fromarray(imresize(hr, 0.5)).save(root / "LR_bicubic" / "X2" / f"{name}x2.png")
    return root


REPORT = [
    r"--- Validation Complete ---",
    r"Dataset: (?P<data>.+)",
    r"Model:   (?P<model>.+)",
    r"Comparison Output:  (?P<out>.+)",
    r"GT Output:          (?P<gt>.+)",
    r"Rendered Output:    (?P<ren>.+)",
    r"Average PSNR: (?P<psnr>-?\d+\.\d{4}) dB",
    r"Average SSIM: (?P<ssim>-?\d\.\d{4})",
    r"---------------------------",
]


def _report(stdout: str) -> dict:
    lines = stdout.rstrip("\n").splitlines()[-len(REPORT):]
    got = {}
    for pat, line in zip(REPORT, lines):
        m = re.fullmatch(pat, line)
        assert m, f"report line {line!r} does not match {pat!r}\n{stdout}"
        got.update(m.groupdict())
    return got


def _crops_args(tmp_path: Path, data: Path, model: Path, *extra: str) -> list:
    return [
        "--model_path", str(model), "--data_path", str(data), "--batch_size", "1",
        "--output_dir", str(tmp_path / "cmp"), "--gt_dir", str(tmp_path / "gt"), "--ren_dir", str(tmp_path / "ren"),
        *extra,
    ]


# ----------------------------------------------------------------------------- crops protocol
def test_brief_report_block_and_outputs(tmp_path, capsys, hr_folder, model_path):
    rc = main(_crops_args(tmp_path, hr_folder, model_path, "--crop", "32"))
    out = capsys.readouterr().out
    assert rc == 0
    rep = _report(out)
    assert rep["data"] == str(hr_folder)
    assert rep["model"] == str(model_path)
    assert (rep["out"], rep["gt"], rep["ren"]) == (str(tmp_path / "cmp"), str(tmp_path / "gt"), str(tmp_path / "ren"))
    assert 5.0 < float(rep["psnr"]) < 60.0 and 0.0 < float(rep["ssim"]) <= 1.0
    names = ["a.png", "b.png", "grey.png"]
    for d in ("cmp", "gt", "ren"):
        assert sorted(p.name for p in (tmp_path / d).iterdir()) == names
    for n in names:
        gt = Image.open(tmp_path / "gt" / n)
        assert gt.size == (32, 32)  # 32x32 centre crop, divisible by 4
        assert Image.open(tmp_path / "ren" / n).size == (32, 32)
        cmp_w, cmp_h = Image.open(tmp_path / "cmp" / n).size
        assert cmp_w > 3 * 32 and cmp_h > 32  # three panels + labels
    # the crop is the centre of the HR image
    hr = np.asarray(Image.open(hr_folder / "a.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "gt" / "a.png")), hr[2:34, 4:36])


def test_brief_small_images_used_whole_and_batched(tmp_path, capsys, hr_folder, model_path):
    # default crop 256 > image: the whole image, mod-cropped to 3 -> 39 x 36
    rc = main(_crops_args(tmp_path / "b1", hr_folder, model_path, "--scale", "3"))
    rep1 = _report(capsys.readouterr().out)
    assert rc == 0
    assert Image.open(tmp_path / "b1" / "gt" / "a.png").size == (39, 36)
    assert Image.open(tmp_path / "b1" / "ren" / "b.png").size == (39, 36)
    args = _crops_args(tmp_path / "b3", hr_folder, model_path, "--scale", "3")
    args[args.index("--batch_size") + 1] = "3"
    assert main(args) == 0
    rep3 = _report(capsys.readouterr().out)
    assert float(rep3["psnr"]) == pytest.approx(float(rep1["psnr"]), abs=1e-3)  # batching changes nothing


def test_brief_non_integer_scale(tmp_path, capsys, hr_folder, model_path):
    assert main(_crops_args(tmp_path, hr_folder, model_path, "--scale", "3.5", "--crop", "0")) == 0
    _report(capsys.readouterr().out)
    # LR = floor(36/3.5) x floor(40/3.5) = 10 x 11 -> HR 35 x 39 (round(38.5) = 39)
    assert Image.open(tmp_path / "gt" / "a.png").size == (39, 35)
    assert Image.open(tmp_path / "ren" / "a.png").size == (39, 35)


# ----------------------------------------------------------------------------- benchmark protocol
def test_benchmark_table_and_json(tmp_path, capsys, set_layout, hr_folder, model_path):
    jp = tmp_path / "res.json"
    rc = main(["--benchmark", "--model_path", str(model_path), "--data_path", str(set_layout), str(hr_folder),
               "--scales", "2,4,3.5", "--json", str(jp), "--ms_ssim"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = [ln.split() for ln in out.splitlines() if ln.startswith(("Tiny ", hr_folder.name + " "))]
    assert [(r[0], r[1]) for r in rows] == [
        ("Tiny", "x2"), ("Tiny", "x4"), ("Tiny", "x3.5"),
        (hr_folder.name, "x2"), (hr_folder.name, "x4"), (hr_folder.name, "x3.5"),
    ]
    header = next(ln for ln in out.splitlines() if ln.startswith("dataset"))
    for col in ("bic PSNR", "bic SSIM", "model PSNR", "model SSIM", "dPSNR", "MS-SSIM"):
        assert col in header
    data = json.loads(jp.read_text())
    assert data["protocol"] == "benchmark" and data["model"] == str(model_path)
    res = {(r["dataset"], r["scale"]): r for r in data["results"]}
    assert len(res) == 6
    tiny2, tiny4 = res[("Tiny", 2.0)], res[("Tiny", 4.0)]
    assert tiny2["lr_source"] == {"provided": 2, "made": 0}
    assert tiny4["lr_source"] == {"provided": 0, "made": 2}
    assert res[(hr_folder.name, 3.5)]["images"] == 3 and res[(hr_folder.name, 3.5)]["shave"] == 4
    for r in data["results"]:
        for key in ("bicubic", "model"):
            assert set(r[key]) == {"psnr", "ssim", "ms_ssim"}
        assert r["delta_psnr"] == pytest.approx(r["model"]["psnr"] - r["bicubic"]["psnr"])
        assert 5 < r["bicubic"]["psnr"] < 80
    assert tiny2["per_image"][0]["hr_size"] == [40, 36] and tiny2["per_image"][0]["lr_size"] == [20, 18]
    # the provided LR files were made by the same MATLAB bicubic: identical to making them
    rc = main(["--benchmark", "--model_path", str(model_path), "--data_path", str(set_layout / "HR"),
               "--scales", "2", "--json", str(tmp_path / "made.json")])
    capsys.readouterr()
    made = json.loads((tmp_path / "made.json").read_text())["results"][0]
    assert made["lr_source"] == {"provided": 0, "made": 2}
    assert made["bicubic"]["psnr"] == pytest.approx(tiny2["bicubic"]["psnr"], abs=1e-9)


def test_benchmark_lpips_unavailable_is_one_note(tmp_path, capsys, set_layout, model_path):
    rc = main(["--benchmark", "--model_path", str(model_path), "--data_path", str(set_layout),
               "--scales", "2", "--lpips"])
    cap = capsys.readouterr()
    assert rc == 0
    try:
        import torchvision  # noqa: F401
    except ImportError:
        assert (cap.out + cap.err).count("LPIPS skipped") == 1
        assert "Traceback" not in cap.err


def test_gsplat2d_test_subcommand_dispatches(tmp_path, capsys, set_layout, model_path):
    from gsplat2d.cli import main as top

    assert top(["test", "--benchmark", "--model_path", str(model_path), "--data_path", str(set_layout),
                "--scales", "4"]) == 0
    assert "Tiny" in capsys.readouterr().out


# ----------------------------------------------------------------------------- errors
def _err(capsys, argv) -> str:
    rc = main(argv)
    cap = capsys.readouterr()
    assert rc != 0
    assert "Traceback" not in cap.err
    return cap.err


def test_errors_are_clear(tmp_path, capsys, hr_folder, model_path):
    missing = tmp_path / "nope"
    assert f"data path not found: {missing}" in _err(capsys, ["--data_path", str(missing)])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images" in _err(capsys, ["--data_path", str(empty), "--model_path", str(model_path)])
    bad_model = tmp_path / "broken.pth"
    bad_model.write_bytes(b"not a checkpoint")
    err = _err(capsys, ["--data_path", str(hr_folder), "--model_path", str(bad_model)])
    assert "broken.pth" in err and err.startswith("gsplat2d test: error:")
    err = _err(capsys, ["--data_path", str(hr_folder), "--model_path", str(tmp_path / "gone.pth")])
    assert "gone.pth" in err
    assert "scale" in _err(capsys, ["--benchmark", "--data_path", str(hr_folder), "--scales", "2,abc"])
    assert "scale" in _err(capsys, ["--data_path", str(hr_folder), "--scale", "0.5"])
    if not torch.cuda.is_available():
        assert "CUDA" in _err(capsys, ["--data_path", str(hr_folder), "--model_path", str(model_path),
                                       "--device", "cuda"])
    # every image too small for the scale
    tiny = tmp_path / "colour"
    tiny.mkdir()
    Image.fromarray(_smooth_rgb(4, 3, 3)).save(tiny / "t.png")
    assert "no image" in _err(capsys, ["--data_path", str(tiny), "--model_path", str(model_path)])


@pytest.mark.parametrize("protocol", ["crops", "benchmark"])
def test_an_image_too_small_for_the_border_shave_is_skipped(tmp_path, capsys, model_path, protocol):
    """An image that gives an LR image but nothing left after the ``ceil(scale)`` border shave
    (9x9 at x4: 8x8 HR, 4 px shaved each side) is skipped with a warning naming it; it used to
    end the run with a ValueError traceback (exit 1) after earlier files were written."""
    d = tmp_path / "mixed"
    d.mkdir()
    Image.fromarray(_smooth_rgb(5)).save(d / "a_ok.png")
    Image.fromarray(_smooth_rgb(6, 9, 9)).save(d / "b_small.png")
    Image.fromarray(_smooth_rgb(7)).save(d / "c_ok.png")
    js = tmp_path / "b.json"
    extra = ["--scale", "4"] if protocol == "crops" else ["--benchmark", "--scales", "4", "--json", str(js)]
    rc = main(_crops_args(tmp_path, d, model_path, *extra))
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "b_small.png" in cap.err and "too small to score at x4" in cap.err
    if protocol == "crops":
        assert sorted(p.name for p in (tmp_path / "gt").iterdir()) == ["a_ok.png", "c_ok.png"]
        assert "Evaluated 2 of 3 images (1 skipped)" in cap.out
    else:
        rows = json.loads(js.read_text())["results"]
        assert [(r["scale"], r["images"]) for r in rows] == [(4.0, 2)]


def test_unreadable_image_is_skipped_with_warning(tmp_path, capsys, model_path):
    d = tmp_path / "mixed"
    d.mkdir()
    Image.fromarray(_smooth_rgb(5)).save(d / "ok.png")
    (d / "bad.png").write_bytes(b"garbage")
    rc = main(_crops_args(tmp_path, d, model_path))
    cap = capsys.readouterr()
    assert rc == 0 and "bad.png" in cap.err
    _report(cap.out)
    assert [p.name for p in (tmp_path / "gt").iterdir()] == ["ok.png"]


def test_module_entry_point_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gsplat2d.eval", "--data_path", str(tmp_path / "missing")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "error: data path not found" in r.stderr and "Traceback" not in r.stderr


def test_benchmark_constant_image_json_is_valid(tmp_path, capsys, model_path):
    d = tmp_path / "flat"
    d.mkdir()
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(d / "flat.png")
    jp = tmp_path / "flat.json"
    assert main(["--benchmark", "--model_path", str(model_path), "--data_path", str(d), "--scales", "2",
                 "--json", str(jp)]) == 0
    capsys.readouterr()
    row = json.loads(jp.read_text())["results"][0]  # strict JSON: bicubic PSNR is inf -> null
    assert row["per_image"][0]["bicubic"]["psnr"] is None or row["per_image"][0]["bicubic"]["psnr"] > 40


def test_the_crops_protocol_keeps_its_old_name(tmp_path, capsys, model_path):
    """``--protocol brief`` (its name in earlier releases) still runs the crops protocol."""
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(_smooth_rgb(5)).save(d / "a.png")
    for name in ("brief", "crops"):
        assert main(_crops_args(tmp_path, d, model_path, "--scale", "2", "--protocol", name)) == 0
        assert "--- Validation Complete ---" in capsys.readouterr().out
    assert main(_crops_args(tmp_path, d, model_path, "--protocol", "cropped")) == 2
    assert "invalid choice: 'cropped'" in capsys.readouterr().err
