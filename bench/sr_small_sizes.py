"""Renders smaller than the input, with and without the pixel-footprint anti-aliasing:
the 1 x 1 colour against the input's mean, and 1/2, 1/4, 1/8 downscales against PIL's
box filter (and PIL bicubic's distance to it), for each shipped model, on a 256 x 256 crop of
kodim05 (``../shared/data/Kodak``, else the bundled kodim23 crop), plus the mean colour of
extreme sizes of the whole photo.

    python bench/sr_small_sizes.py --out bench/results/sr-small-sizes-<date>.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
KODIM05 = HERE.parents[1] / "shared" / "data" / "Kodak" / "kodim05.png"
BUNDLED = HERE.parent / "gsplat2d" / "assets" / "kodim23_crop.png"


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    args = p.parse_args()
    from gsplat2d.sr.model import load_model
    from gsplat2d.sr.rendering import encode_image, render_to_array

    src = KODIM05 if KODIM05.is_file() else BUNDLED
    photo = Image.open(src).convert("RGB")
    crop = photo.crop((200, 100, 456, 356)) if src == KODIM05 else photo.crop((0, 0, 256, 256))
    arr = np.asarray(crop)
    res = {"image": f"{src.name} crop {crop.size}", "models": {}}
    bic = {d: _psnr(np.asarray(crop.resize((256 // d,) * 2, Image.BICUBIC)), np.asarray(crop.resize((256 // d,) * 2, Image.BOX)))
           for d in (2, 4, 8)}
    res["pil_bicubic_vs_box_db"] = bic
    for name in ("feature", "colour"):
        m = load_model(name).eval()
        f = encode_image(m, torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0)
        whole = encode_image(m, torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1).float() / 255.0)
        row = {}
        for aa in (False, True):
            key = "antialias" if aa else "point"
            one = render_to_array(f, 1, 1, mode=f.mode, model=m, antialias=aa)[0, 0].astype(float)
            row[key] = {
                "1x1_minus_mean": (one - arr.reshape(-1, 3).mean(0)).round(2).tolist(),
                "downscale_vs_box_db": {f"1/{d}": round(_psnr(render_to_array(f, 256 // d, 256 // d, mode=f.mode, model=m,
                                                                            antialias=aa),
                                                              np.asarray(crop.resize((256 // d,) * 2, Image.BOX))), 2)
                                        for d in (2, 4, 8)},
                "whole_photo_sizes_mean_minus_input_mean": {
                    f"{w}x{h}": (render_to_array(whole, w, h, mode=whole.mode, model=m, antialias=aa).reshape(-1, 3).mean(0)
                                 - np.asarray(photo).reshape(-1, 3).mean(0)).round(2).tolist()
                    for w, h in ((1, 1), (2, 2), (1, 4000), (4000, 1), (64, 43))},
            }
        res["models"][name] = row
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
