"""``gsplat2d demo`` runs end to end (on a 56x56 crop with --quick) and writes its files."""

import os

import torch
from PIL import Image

from gsplat2d.eval.demo import ASSET, main
from gsplat2d.sr.model import Pixel2GaussianSR, save_checkpoint


def test_bundled_image():
    assert ASSET.is_file() and ASSET.stat().st_size < 150_000
    with Image.open(ASSET) as im:
        assert im.size == (252, 168) and im.mode == "RGB"


def test_demo_quick(tmp_path, capsys):
    model = tmp_path / "tiny.pth"
    torch.manual_seed(0)
    save_checkpoint(model, Pixel2GaussianSR("colour"))
    out = tmp_path / "demo"
    assert main(["--quick", "--model_path", str(model), "--output_dir", str(out)]) == 0
    text = capsys.readouterr().out
    assert sorted(os.listdir(out)) == [
        "comparison.png", "lr_x2.png", "lr_x3.5.png", "lr_x4.png",
        "sr_2x3_of_x2.png", "sr_x2.png", "sr_x3.5.png", "sr_x4.png",
    ]
    for name in ("sr_x2.png", "sr_x3.5.png", "sr_x4.png"):
        assert Image.open(out / name).size == (56, 56)
    assert Image.open(out / "lr_x3.5.png").size == (16, 16)
    assert Image.open(out / "sr_2x3_of_x2.png").size == (56, 84)
    assert "bicubic PSNR/SSIM" in text and "x3.5" in text and "dB" not in text.split("\n")[0]
    # each SR image is the model's render of the LR image beside it (not bicubic, not another scale)
    import numpy as np

    from gsplat2d.sr.model import load_model

    m = load_model(model)
    for s in ("2", "3.5", "4"):
        lr = torch.from_numpy(np.array(Image.open(out / f"lr_x{s}.png").convert("RGB"))).permute(2, 0, 1)
        with torch.no_grad():
            want = m(lr[None].float() / 255, (56, 56))[0].clamp(0, 1).mul(255).round().permute(1, 2, 0)
        got = torch.from_numpy(np.array(Image.open(out / f"sr_x{s}.png").convert("RGB"))).float()
        assert (got - want).abs().max() <= 1, s


def test_demo_missing_model(tmp_path, capsys):
    rc = main(["--quick", "--model_path", str(tmp_path / "none.pth"), "--out_dir", str(tmp_path / "d")])
    assert rc == 2 and "not found" in capsys.readouterr().err
