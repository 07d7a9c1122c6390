"""Side-by-side evaluation of super-resolution checkpoints (e.g. the shipped colour model and the
feature-splatting model): Y-PSNR/SSIM from ``gsplat2d test --benchmark`` per dataset and scale,
parameter counts, the training budget each checkpoint records, and CPU encode / render times and
render memory.

    python bench/sr_compare.py --model colour=gsplat2d/weights/gaussian_sr_colour.pth \\
        --model feature=models/gaussian_sr_feature.pth \\
        --data_path ../shared/data/Set5 ../shared/data/Set14 --scales 2,3,4,6,3.5 \\
        --out bench/results/sr-colour-vs-feature-amd-epyc-2026-12-02

writes ``OUT.json`` (everything, per image included) and ``OUT.md`` (the tables).

Render cost: one LR image (``--cost_image``, default Set5 ``baby`` LR x4, 128x128) is encoded and
rendered at x2, x4, x8, x16 with the CLI's windowed renderer; times are medians of ``--repeats`` runs
after a warm-up, in this process. Memory is the largest growth of the resident set during a render
over its level at the render's start (sampled every 2 ms from ``/proc/self/statm``; the uint8
output is part of it), each (model, scale) in a fresh subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # never shadow a caller's modules
    sys.path.append(str(HERE))

COST_SCALES = (2, 4, 8, 16)  # x16 (2048x2048) shows the window bound: memory stops growing


def _benchmark(path: str, data: list, scales: str) -> dict:
    """``gsplat2d test --benchmark`` on ``data``; its JSON payload."""
    from gsplat2d.eval.cli import main as test_main

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "b.json"
        rc = test_main(["--benchmark", "--model_path", path, "--data_path", *data, "--scales", scales,
                        "--device", "cpu", "--json", str(out)])
        if rc != 0:
            raise SystemExit(f"gsplat2d test failed on {path} (exit {rc})")
        return json.loads(out.read_text())


def _model_facts(path: str) -> dict:
    """Kind, parameter count, config and the training record a checkpoint carries."""
    from gsplat2d.sr.model import load_checkpoint, load_model

    ck = load_checkpoint(path)
    model = load_model(path)
    facts = {"path": path, "arch": ck.get("arch", "pixel"), "parameters": model.num_parameters(),
             "config": ck["config"]}
    for key in ("train_config", "metrics", "model_card"):
        if isinstance(ck.get(key), str):
            facts[key] = json.loads(ck[key])
    return facts


_COST_CHILD = r"""
import json, os, sys, threading, time, torch
from gsplat2d.sr.model import load_model
from gsplat2d.sr.render import load_image_file
from gsplat2d.sr.rendering import encode_image, render_to_array
path, image, scale, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
model = load_model(path)
lr = load_image_file(image)
h, w = lr.shape[-2:]
field = encode_image(model, lr)
render_to_array(field, 2 * w, 2 * h, backend="torch", decode=model.pixel_decoder(field, 2 * w, 2 * h))  # warm-up
enc = []
for _ in range(repeats):
    t0 = time.perf_counter(); field = encode_image(model, lr); enc.append(time.perf_counter() - t0)
W, H = w * scale, h * scale
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
peak, done = [0], [False]
def sample():  # the render's peak resident set, sampled every 2 ms
    while not done[0]:
        peak[0] = max(peak[0], rss()); time.sleep(0.002)
ren, growth = [], []
for _ in range(repeats):
    base = rss(); peak[0] = base; done[0] = False
    th = threading.Thread(target=sample); th.start()
    t0 = time.perf_counter()
    out = render_to_array(field, W, H, backend="torch", decode=model.pixel_decoder(field, W, H))
    ren.append(time.perf_counter() - t0)
    done[0] = True; th.join()
    growth.append(peak[0] - base)
    del out
out = render_to_array(field, W, H, backend="torch", decode=model.pixel_decoder(field, W, H))
print(json.dumps({"lr_size": [w, h], "out_size": [W, H], "encode_ms": sorted(enc)[len(enc) // 2] * 1e3,
                  "render_ms": sorted(ren)[len(ren) // 2] * 1e3, "render_peak_rss_growth_mib": max(growth) / 2**20,
                  "output_mib": out.nbytes / 2**20, "gaussians": field.num_gaussians,
                  "threads": torch.get_num_threads()}))
"""


def _render_cost(path: str, image: str, repeats: int) -> list:
    rows = []
    for s in COST_SCALES:
        p = subprocess.run([sys.executable, "-c", _COST_CHILD, path, image, str(s), str(repeats)],
                           capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise SystemExit(f"render cost run failed for {path} x{s}:\n{p.stderr}")
        rows.append({"scale": s, **json.loads(p.stdout.strip().splitlines()[-1])})
    return rows


def _machine() -> dict:
    import torch
    from benchlib import cpu_model_name

    return {"cpu": cpu_model_name(), "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}


def _markdown(report: dict) -> str:
    labels = list(report["models"])
    m = report["machine"]
    lines = [f"# SR models side by side ({m['date']}, {m['cpu']}, {m['cores']} cores, torch {m['torch']}, CPU)", ""]
    lines += ["| model | kind | parameters | training (min of steps) | steps | val PSNR (dB) |", "|---|---|---|---|---|---|"]
    for label in labels:
        f = report["models"][label]
        mt, card = f.get("metrics", {}), f.get("model_card", {})
        minutes = mt.get("train_seconds")
        minutes = minutes / 60 if minutes is not None else card.get("train_time_min")
        val = mt.get("val_psnr", card.get("val_psnr_db"))
        lines.append(f"| {label} | {f['arch']} | {f['parameters']:,} | "
                     f"{'%.1f' % minutes if minutes is not None else 'n/a'} | {mt.get('step', card.get('steps', 'n/a'))} | "
                     f"{'%.3f' % val if val is not None else 'n/a'} |")
    lines += ["", "Y-PSNR (dB) / SSIM, `ceil(scale)` px shaved (`gsplat2d test --benchmark`):", ""]
    head = "| dataset | scale | bicubic | " + " | ".join(labels) + " |"
    lines += [head, "|" + "---|" * (3 + len(labels))]
    first = report["benchmarks"][labels[0]]["results"]
    for i, row in enumerate(first):
        cells = [row["dataset"], f"x{row['scale']:g}", f"{row['bicubic']['psnr']:.3f} / {row['bicubic']['ssim']:.4f}"]
        for label in labels:
            r = report["benchmarks"][label]["results"][i]
            cells.append(f"{r['model']['psnr']:.3f} / {r['model']['ssim']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    if not report["render_cost"]:
        return "\n".join(lines) + "\n"
    lines += ["", f"CPU render cost ({report['cost_image']}, torch backend, windowed renderer; medians of "
              f"{report['repeats']}):", "",
              "| model | scale | output | encode ms | render ms | render peak RSS growth MiB |", "|---|---|---|---|---|---|"]
    for label in labels:
        for c in report["render_cost"][label]:
            lines.append(f"| {label} | x{c['scale']} | {c['out_size'][0]}x{c['out_size'][1]} | {c['encode_ms']:.1f} | "
                         f"{c['render_ms']:.1f} | {c['render_peak_rss_growth_mib']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="LABEL=PATH")
    p.add_argument("--data_path", nargs="+", required=True)
    p.add_argument("--scales", default="2,3,4,6,3.5")
    p.add_argument("--cost_image", default=str(HERE.parent.parent / "shared/data/Set5/LR_bicubic/X4/babyx4.png"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no_cost", action="store_true", help="skip the render cost measurement")
    p.add_argument("--out", required=True, help="output path without extension (.json and .md are written)")
    args = p.parse_args(argv)
    models = dict(m.split("=", 1) for m in args.model)
    report = {"machine": _machine(), "scales": args.scales, "cost_image": args.cost_image, "repeats": args.repeats,
              "models": {k: _model_facts(v) for k, v in models.items()},
              "benchmarks": {k: _benchmark(v, args.data_path, args.scales) for k, v in models.items()},
              "render_cost": {} if args.no_cost else {k: _render_cost(v, args.cost_image, args.repeats)
                                                      for k, v in models.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(report, indent=1) + "\n")
    Path(args.out + ".md").write_text(_markdown(report))
    print(_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
