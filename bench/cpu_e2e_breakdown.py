"""Where the time of an x4 render goes on the CPU: encoder, rasterizer (the windowed renderer's
``rasterize`` calls) and the feature model's decoder, each summed over one ``render_to_array``
(the CLI's path) of a 256 x 256 photo crop at 1024 x 1024; the minimum of ``--repeats`` rounds.

    python bench/cpu_e2e_breakdown.py --out bench/results/cpu-e2e-breakdown-<machine>-<date>.json
    python bench/cpu_e2e_breakdown.py --model old=old.pth --model new=new.pth --out ...  # any checkpoints
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import platform
import time
from pathlib import Path

import torch

from cpu_before_after import _photo, _tensor


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--model", action="append", metavar="LABEL=PATH",
                   help="a model to measure (repeatable; default: the shipped feature and colour models)")
    args = p.parse_args()
    from gsplat2d.sr.model import load_model
    from gsplat2d.sr.rendering import encode_image, render_to_array

    rz = importlib.import_module("gsplat2d.rasterize")
    acc: collections.Counter = collections.Counter()
    real = rz.rasterize

    def timed_rasterize(*a, **k):
        t0 = time.perf_counter()
        out = real(*a, **k)
        acc["rasterize_s"] += time.perf_counter() - t0
        return out

    rz.rasterize = timed_rasterize
    lr = _tensor(_photo().crop((100, 30, 356, 286)))
    rows = {}
    models = dict(spec.split("=", 1) for spec in args.model) if args.model else {"feature": "feature", "colour": "colour"}
    for name, path in models.items():
        m = load_model(path).eval()
        best: dict = {}
        for _ in range(args.repeats + 1):  # the first round warms up
            acc.clear()
            t0 = time.perf_counter()
            field = encode_image(m, lr)
            acc["encode_s"] = time.perf_counter() - t0
            dec0 = m.pixel_decoder(field, 1024, 1024)
            dec = None
            if dec0 is not None:
                def dec(x, dec0=dec0):
                    t = time.perf_counter()
                    out = dec0(x)
                    acc["decode_s"] += time.perf_counter() - t
                    return out
            t0 = time.perf_counter()
            render_to_array(field, 1024, 1024, mode=field.mode, decode=dec)
            acc["render_total_s"] = time.perf_counter() - t0
            if best and acc["render_total_s"] + acc["encode_s"] >= best["render_total_s"] + best["encode_s"]:
                continue
            best = dict(acc)
        best["other_s"] = best["render_total_s"] - best["rasterize_s"] - best.get("decode_s", 0.0)
        best["parameters"] = sum(w.numel() for w in m.parameters())
        rows[name] = best
    res = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "size": "256x256 -> 1024x1024", "models": rows}
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
