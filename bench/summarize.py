"""Summarise a pytest-benchmark JSON file into ``bench/results/<device-slug>-<YYYY-MM-DD>.{json,md}``.

    python -m pytest bench/ --benchmark-only --benchmark-json=/tmp/bench.json
    python bench/summarize.py /tmp/bench.json            # -> bench/results/<slug>-<date>.json/.md

The device name comes from the benchmarks' ``extra_info`` (``device_name``; CUDA: the GPU name)
and otherwise from ``torch.cuda`` or ``/proc/cpuinfo`` ("model name"), so it works for CPU and GPU
runs. The .json keeps, per benchmark: name, group, stats (seconds) and extra_info; the .md is a
table (name, mean ms, rate in G Gaussian-pixel evaluations per second).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def cpu_model_name() -> str:
    from benchlib import cpu_model_name as _cpu_model_name  # bench/ is on sys.path as the script dir

    return _cpu_model_name()


def detect_device(benchmarks: list[dict]) -> tuple[str, str]:
    """(device type, device name) of the run."""
    for b in benchmarks:
        info = b.get("extra_info") or {}
        dev = str(info.get("device", ""))
        if dev.startswith("cuda") and info.get("device_name"):
            return "cuda", str(info["device_name"])
        if dev:
            return "cpu", cpu_model_name()
    try:
        import torch

        if torch.cuda.is_available():
            return "cuda", torch.cuda.get_device_name()
    except Exception:
        pass
    return "cpu", cpu_model_name()


def slug(name: str) -> str:
    s = re.sub(r"\((r|tm|c)\)", "", name.lower())
    s = re.sub(r"[^a-z0-9]+", "-", s).strip("-")
    return s or "unknown-device"


def _fmt_rate(rate) -> str:
    return "-" if not rate else f"{rate / 1e9:.3f}"


def summarize(raw: dict, out_dir: str, date: str | None = None, tag: str | None = None) -> tuple[str, str]:
    benches = raw.get("benchmarks", [])
    if not benches:
        raise SystemExit("no benchmarks in the input JSON (was it run with --benchmark-only, without --benchmark-disable?)")
    dev_type, dev_name = detect_device(benches)
    date = date or _dt.date.today().isoformat()
    base = f"{slug(dev_name)}-{date}" + (f"-{slug(tag)}" if tag else "")
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, base + ".json")
    md_path = os.path.join(out_dir, base + ".md")

    first = benches[0].get("extra_info") or {}
    records = []
    for b in benches:
        st = b.get("stats") or {}
        info = dict(b.get("extra_info") or {})
        mean = st.get("mean")
        rate = info.get("gauss_pixel_evals_per_s")
        if rate is None and mean and info.get("pairs") is not None:
            rate = info["pairs"] * info.get("tile_size", 16) ** 2 / mean
            info["gauss_pixel_evals_per_s"] = rate
        records.append({
            "name": b.get("name"),
            "group": b.get("group"),
            "mean_s": mean,
            "median_s": st.get("median"),
            "min_s": st.get("min"),
            "stddev_s": st.get("stddev"),
            "rounds": st.get("rounds"),
            "extra_info": info,
        })
    summary = {
        "device_type": dev_type,
        "device_name": dev_name,
        "date": date,
        "torch": first.get("torch"),
        "triton": first.get("triton"),
        "torch_threads": first.get("torch_threads"),
        "cpu_count": os.cpu_count(),
        "machine_info": raw.get("machine_info"),
        "commit_info": raw.get("commit_info"),
        "benchmarks": records,
    }
    with open(json_path, "w") as f:
        json.dump(summary, f, indent=2)

    lines = [
        f"# gsplat2d benchmarks: {dev_name} ({date})",
        "",
        f"device: {dev_type}, {dev_name}; torch {summary['torch']}, triton {summary['triton']}, "
        f"torch threads {summary['torch_threads']}, {os.cpu_count()} CPUs visible",
        "",
        "rate = tile-Gaussian pairs x tile_size^2 / mean time, in G Gaussian-pixel evaluations/s",
        "",
        "| name | stage | backend | mode | W x H | N | C | pairs | mean ms | rounds | rate (G/s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {"bin": 0, "fwd": 1, "bwd": 2, "fwdbwd": 3}
    sr = [r for r in records if r["extra_info"].get("stage") in ("encode", "render")]
    records = [r for r in records if r not in sr]
    records.sort(key=lambda r: (
        r["extra_info"].get("H", 0) * r["extra_info"].get("W", 0), r["extra_info"].get("N", 0),
        r["extra_info"].get("case", ""), order.get(r["extra_info"].get("stage"), 9),
        r["extra_info"].get("mode") or "", r["extra_info"].get("backend", ""),
    ))
    for r in records:
        i = r["extra_info"]
        mean_ms = "-" if r["mean_s"] is None else f"{r['mean_s'] * 1e3:.2f}"
        lines.append(
            f"| {r['name']} | {i.get('stage', '')} | {i.get('backend', '')} | {i.get('mode') or '-'} | "
            f"{i.get('W', '')}x{i.get('H', '')} | {i.get('N', '')} | {i.get('C', '')} | {i.get('pairs', '')} | "
            f"{mean_ms} | {r['rounds']} | {_fmt_rate(i.get('gauss_pixel_evals_per_s'))} |"
        )
    if sr:
        lines += [
            "",
            "Super-resolution (shipped default model): encode = the network once; render = rasterize the",
            "field at the output size (no network).",
            "",
            "| name | stage | LR W x H | scale | output W x H | mean ms | rounds | output Mpix/s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        sr.sort(key=lambda r: (r["extra_info"]["stage"] != "encode", r["extra_info"].get("scale", 0)))
        for r in sr:
            i = r["extra_info"]
            mean_ms = "-" if r["mean_s"] is None else f"{r['mean_s'] * 1e3:.2f}"
            out = f"{i['out_w']}x{i['out_h']}" if "out_w" in i else "-"
            rate = f"{i['output_mpix_per_s']:.2f}" if i.get("output_mpix_per_s") else "-"
            lines.append(
                f"| {r['name']} | {i['stage']} | {i.get('lr_w')}x{i.get('lr_h')} | {i.get('scale', '-')} | {out} | "
                f"{mean_ms} | {r['rounds']} | {rate} |"
            )
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return json_path, md_path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bench_json", help="file written by pytest --benchmark-json=...")
    p.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    p.add_argument("--date", default=None, help="YYYY-MM-DD (default: today)")
    p.add_argument("--tag", default=None, help="suffix for the file names")
    args = p.parse_args(argv)
    with open(args.bench_json) as f:
        raw = json.load(f)
    json_path, md_path = summarize(raw, args.out_dir, args.date, args.tag)
    print(json_path)
    print(md_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
