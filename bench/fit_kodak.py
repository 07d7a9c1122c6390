"""Kodak image-fitting benchmark (GaussianImage protocol): fit every image at several Gaussian
counts, report PSNR / MS-SSIM (lossless float32 field and quantised file), bpp, fit time and
decode speed; per-image rows and means as JSON + markdown.

The full protocol, one command on a GPU machine (24 images x 3 counts x 50k steps)::

    python bench/fit_kodak.py --num-gaussians 10000 30000 70000 --steps 50000

A CPU-sized run (what docs/fitting.md reports)::

    OMP_NUM_THREADS=1 python bench/fit_kodak.py --images kodim03 kodim05 kodim15 kodim23 \\
        --crop 256x256 --num-gaussians 2000 --steps 1000 --inits gradient uniform random

Results go to ``bench/results/fit_kodak-<device>-<date>.{json,md}`` (``--out PREFIX`` overrides);
the JSON is rewritten after every fit, and ``--resume`` skips the fits it already holds, so an
interrupted run loses at most one fit. Reference points (GaussianImage, ECCV 2024): 1500-2000 FPS
decoding; a community reproduction on an RTX 4090 reports 32.05 dB PSNR / 0.9797 MS-SSIM on Kodak
at 9k Gaussians in 29.9 s of fitting.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List

import torch

from gsplat2d.g2d import QuantSpec
from gsplat2d.eval.metrics import load_image
from gsplat2d.fitting.fit import (
    INITS,
    MODES,
    PARAMS,
    FitConfig,
    center_crop,
    environment,
    evaluate,
    fit_image,
    markdown_table,
    mean_row,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "Kodak"

REFERENCE = [
    "GaussianImage (Zhang et al., ECCV 2024) reports 1500-2000 FPS decoding (rendering).",
    "A community run of GaussianImage on an RTX 4090: Kodak, 9k Gaussians: 32.05 dB PSNR, 0.9797 MS-SSIM, "
    "29.9 s of fitting per image.",
]


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")[:40]


def _parse_size(s: str):
    w, h = s.lower().split("x")
    return int(w), int(h)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"Kodak folder (default {DEFAULT_DATA})")
    p.add_argument("--images", nargs="*", help="image stems to use (default: all kodim*.png)")
    p.add_argument("--max-images", type=int, help="use only the first K images")
    p.add_argument("--crop", type=_parse_size, metavar="WxH", help="centre crop (default: full images)")
    p.add_argument("--num-gaussians", type=int, nargs="+", default=[10000, 30000, 70000])
    p.add_argument("--steps", type=int, default=50000)
    p.add_argument("--inits", nargs="+", choices=INITS, default=["gradient"])
    p.add_argument("--param", choices=PARAMS, default="cholesky")
    p.add_argument("--mode", choices=MODES, default="sum")
    p.add_argument("--qat-steps", type=int, default=0)
    p.add_argument("--lr", type=float, default=FitConfig.lr)
    p.add_argument("--lr-means", type=float, default=FitConfig.lr_means)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--out", type=Path, help="output prefix (default bench/results/fit_kodak-<device>-<date>)")
    p.add_argument("--save-fields", action="store_true",
                   help="also write each fitted field (lossless float32 .g2d) to <out>-fields/, so other "
                   "quantiser settings can be evaluated later without refitting")
    p.add_argument("--resume", action="store_true", help="skip fits already in the output JSON")
    p.add_argument("--progress", action="store_true", help="tqdm bar per fit")
    return p


def _key(r: Dict[str, Any]):
    return (r["image"], r["num_gaussians"], r["steps"], r["init"], r.get("qat_steps", 0))


def _spec_text(rows) -> str:
    specs = {json.dumps(r.get("quant"), sort_keys=True) for r in rows}
    return "; ".join(sorted(specs))


def write(out: Path, rows: List[Dict[str, Any]], args, env: Dict[str, Any]) -> None:
    groups: Dict[Any, List[Dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["num_gaussians"], r["steps"], r["init"], r.get("qat_steps", 0)), []).append(r)
    means = [mean_row(g, label=f"mean N={k[0]} {k[2]}" + (f" +{k[3]} QAT" if k[3] else ""))
             for k, g in sorted(groups.items())]
    payload = {
        "protocol": {k: (v if not isinstance(v, Path) else str(v)) for k, v in vars(args).items()},
        "quant": "QuantSpec.for_size(W, H) (per row: 'quant')",
        "environment": env,
        "reference": REFERENCE,
        "rows": rows,
        "means": means,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(out.with_suffix(".json"))
    crop = f"centre crops {args.crop[0]}x{args.crop[1]}" if args.crop else "full 768x512 images"
    md = [
        "# Kodak image fitting (gsplat2d fit)",
        "",
        f"Device: {env['device']}; torch {env['torch']}; threads {env['threads']}.",
        f"Images: {len({r['image'] for r in rows})} Kodak {crop}; mode {args.mode}, {args.param} preset, "
        f"steps {sorted({r['steps'] for r in rows})}, QAT steps {sorted({r.get('qat_steps', 0) for r in rows})}; "
        f"quantised codec {_spec_text(rows)}.",
        "PSNR: RGB, render clamped to [0, 1], float (GaussianImage convention). (q) = the quantised file. "
        "decode ms = median render at native size (no autograd); FPS = 1000 / decode ms.",
        "",
        "## Means",
        "",
        markdown_table(means),
        "",
    ]
    inits = sorted({r["init"] for r in rows})
    if len(inits) > 1:
        md += ["## Initialisation comparison (mean PSNR, dB)", "",
               "| N | steps | " + " | ".join(inits) + " |", "|---|---|" + "---|" * len(inits)]
        for n, steps in sorted({(r["num_gaussians"], r["steps"]) for r in rows}):
            cells = []
            for i in inits:
                g = groups.get((n, steps, i, 0))
                cells.append(f"{sum(x['psnr'] for x in g) / len(g):.2f} (init {sum(x['init_psnr'] for x in g) / len(g):.2f})"
                             if g else "")
            md.append(f"| {n} | {steps} | " + " | ".join(cells) + " |")
        md.append("")
    md += ["## Per image", "", markdown_table(rows), "", "## Reference points", ""] + [f"- {r}" for r in REFERENCE] + [""]
    out.with_suffix(".md").write_text("\n".join(md))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not args.data.is_dir():
        print(f"fit_kodak: data folder {args.data} not found", file=sys.stderr)
        return 2
    files = sorted(args.data.glob("kodim*.png"))
    if args.images:
        want = {s.removesuffix(".png") for s in args.images}
        files = [f for f in files if f.stem in want]
        missing = want - {f.stem for f in files}
        if missing:
            print(f"fit_kodak: not found in {args.data}: {sorted(missing)}", file=sys.stderr)
            return 2
    if args.max_images:
        files = files[: args.max_images]
    if not files:
        print(f"fit_kodak: no kodim*.png in {args.data}", file=sys.stderr)
        return 2
    env = environment()
    out = args.out or REPO / "bench" / "results" / (
        f"fit_kodak-{_slug(env['device'])}-{datetime.date.today().isoformat()}")
    rows: List[Dict[str, Any]] = []
    if args.resume and out.with_suffix(".json").is_file():
        rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    done = {_key(r) for r in rows}
    total = len(files) * len(args.num_gaussians) * len(args.inits)
    k = 0
    for n in args.num_gaussians:
        for init in args.inits:
            for f in files:
                k += 1
                row_key = (f.name, n, args.steps, init, args.qat_steps)
                if row_key in done:
                    continue
                img = load_image(f)
                if args.crop:
                    img = center_crop(img, *args.crop)
                img = img.to(device)
                spec = QuantSpec.for_size(img.shape[-1], img.shape[-2])
                cfg = FitConfig(num_gaussians=n, steps=args.steps, param=args.param, mode=args.mode, init=init,
                                lr=args.lr, lr_means=args.lr_means, qat_steps=args.qat_steps, quant=spec,
                                seed=args.seed, progress=args.progress)
                res = fit_image(img, cfg)
                m = evaluate(res.gaussians, img, res.meta, quant=spec)
                row = {"image": f.name, "width": res.meta["width"], "height": res.meta["height"],
                       "num_gaussians": n, "steps": args.steps, "qat_steps": args.qat_steps, "init": init,
                       "init_psnr": res.init_psnr, "fit_time_s": res.fit_time_s, **m,
                       "quant": asdict(spec), "history": res.history[:: max(1, len(res.history) // 50)]}
                if args.save_fields:
                    res.gaussians.save(out.parent / f"{out.name}-fields" / f"{f.stem}-N{n}-{init}{f'-qat{args.qat_steps}' if args.qat_steps else ''}.g2d",
                                       codec="lossless", meta=res.meta)
                rows.append(row)
                print(f"[{k}/{total}] {f.name} N={n} init={init}: PSNR {m['psnr']:.2f} dB (q {m['psnr_q']:.2f}), "
                      f"MS-SSIM {m['ms_ssim']:.4f}, {m['bpp_quantized']:.3f} bpp, fit {res.fit_time_s:.1f} s, "
                      f"decode {m['render_ms']:.2f} ms ({m['fps']:.0f} FPS)", flush=True)
                write(out, rows, args, env)
    write(out, rows, args, env)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
