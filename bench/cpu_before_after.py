"""What a CPU user waits for, measured on whatever gsplat2d this Python imports: run it with the
interpreter of an older checkout to get the "before" numbers on the same machine, in the same
session.

    python bench/cpu_before_after.py --out after.json            # this checkout
    /path/to/old/venv/bin/python bench/cpu_before_after.py --out before.json

Measures, each the minimum of ``--repeats`` rounds, interleaved within one process:

* ``e2e``: encode a 256 x 256 photo crop and render it (``render_to_array``, the CLI's path,
  decoder included) at x4 and x8, with each shipped model, against PIL bicubic to the same size
  (``ratio`` = SR time / bicubic time);
* ``train``: the rasterizer's forward + backward on an SR training batch (8 x LR 48 -> HR 144,
  the shipped models' fields, random cotangents), ``backend="auto"``;
* ``fit``: milliseconds per ``fit_image`` step (2000 Gaussians, 256 x 256 crop), from the
  difference of a 120- and a 20-step fit.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
TRAIN_PHOTO = HERE.parents[1] / "shared" / "data" / "train" / "BSD200" / "2092.jpg"
BUNDLED = HERE.parent / "gsplat2d" / "assets" / "kodim23_crop.png"


def _photo() -> Image.Image:
    if TRAIN_PHOTO.is_file():
        return Image.open(TRAIN_PHOTO).convert("RGB")
    return Image.open(BUNDLED).convert("RGB").resize((481, 321), Image.BICUBIC)


def _tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255.0


def _best(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def e2e(models, repeats: int) -> dict:
    from gsplat2d.sr.rendering import encode_image, render_to_array

    img = _photo().crop((100, 30, 356, 286))
    lr = _tensor(img)
    out = {}
    for name, m in models.items():
        f = encode_image(m, lr[:, :16, :16])  # warm-up as the CLI does
        render_to_array(f, 32, 32, mode=f.mode, decode=m.pixel_decoder(f, 32, 32))
        for s in (4, 8):
            W = 256 * s
            sr_t, bic_t = [], []
            for _ in range(repeats):
                bic_t.append(_best(lambda: img.resize((W, W), Image.BICUBIC), 1))

                def sr():
                    field = encode_image(m, lr)
                    render_to_array(field, W, W, mode=field.mode, decode=m.pixel_decoder(field, W, W))

                sr_t.append(_best(sr, 1))
            out[f"{name}-x{s}"] = {"sr_s": min(sr_t), "bicubic_s": min(bic_t), "ratio": min(sr_t) / min(bic_t)}
    return out


def train_batch(models, repeats: int) -> dict:
    from gsplat2d import rasterize

    photo = _tensor(_photo())
    g = torch.Generator().manual_seed(0)
    crops = []
    for _ in range(8):
        y = int(torch.randint(0, photo.shape[1] - 48, (1,), generator=g))
        x = int(torch.randint(0, photo.shape[2] - 48, (1,), generator=g))
        crops.append(photo[:, y : y + 48, x : x + 48])
    lr = torch.stack(crops)
    out = {}
    for name, m in models.items():
        with torch.no_grad():
            field = m.encode(lr)
        means, conics = field.to_pixels(144, 144)
        leaves = [t.detach().clone().requires_grad_(True) for t in (means, conics, field.colors, field.opacities)]
        # the cotangent in the layout a training step hands back: the models take the render as
        # NCHW (image.permute(0, 3, 1, 2)), so its gradient arrives channel-major
        gi = torch.rand(8, field.channels, 144, 144, generator=g).permute(0, 2, 3, 1)
        ga = torch.rand(8, 144, 144, 1, generator=g)

        def step():
            for t in leaves:
                t.grad = None
            img, alp = rasterize(*leaves, 144, 144, mode="sum")
            torch.autograd.backward([img, alp], [gi, ga])

        step()
        out[name] = {"fwd_bwd_s": _best(step, max(3, repeats))}
    return out


def fit_steps(repeats: int) -> dict:
    from gsplat2d.fitting.fit import fit_image

    x = _tensor(_photo().crop((100, 30, 356, 286)))
    fit_image(x, num_gaussians=2000, steps=3)
    t20 = _best(lambda: fit_image(x, num_gaussians=2000, steps=20), repeats)
    t120 = _best(lambda: fit_image(x, num_gaussians=2000, steps=120), repeats)
    return {"ms_per_step": (t120 - t20) / 100 * 1e3}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    import gsplat2d
    from gsplat2d.sr import load_model

    models = {name: load_model(name).eval() for name in ("feature", "colour")}
    res = {
        "gsplat2d_path": str(Path(gsplat2d.__file__).resolve().parent),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "e2e": e2e(models, args.repeats),
        "train": train_batch(models, args.repeats),
        "fit": fit_steps(1),
    }
    try:
        import numba

        res["numba"] = numba.__version__
    except ImportError:
        res["numba"] = None
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
