"""``gsplat2d train`` / ``python -m gsplat2d train``: train an arbitrary-scale super-resolution model (the feature model by default, or the colour model).

Brief's command::

    python -m gsplat2d.train --dataset_path ./DIV2K_train_HR --epochs 50 --batch_size 8 \\
        --lr 1e-4 --save_path models/my_model.pth

Multi-GPU: ``torchrun --nproc_per_node 4 -m gsplat2d.train ...`` (DDP; gloo on CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import List, Optional, Sequence

from gsplat2d._validate import BACKENDS
from gsplat2d.cli.common import UserError, run_command
from gsplat2d.sr.model import PRESET_ALIASES, PRESETS


def _scales(text: str):
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals or any(not (v >= 1.0) for v in vals):
        raise argparse.ArgumentTypeError(f"scales must be >= 1, got {text!r}")
    return vals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gsplat2d train",
        description="Train an arbitrary-scale super-resolution model that maps an LR image to 2D Gaussians (--preset feature, the default, or the colour model).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--dataset_path", default=None,
                   help="folder of HR training images (PNG/JPG/BMP, nested ok); required unless --resume")
    g.add_argument("--val_path", default=None, help="folder of HR validation images")
    g.add_argument("--val_split", type=int, default=0, help="hold out N training images for validation (no --val_path)")
    g.add_argument("--val_scales", type=_scales, default=(2.0, 3.0, 4.0), help="validation scales, e.g. 2,3,4")
    g.add_argument("--val_crop", type=int, default=0, help="centre-crop validation images to this side (0 = full)")
    g.add_argument("--val_max_images", type=int, default=0, help="use at most N validation images (0 = all)")
    g.add_argument("--patch_size", type=int, default=48, help="LR patch side; HR crop = round(patch * scale)")
    g.add_argument("--scale_min", type=float, default=1.0, help="smallest training scale")
    g.add_argument("--scale_max", type=float, default=4.0, help="largest training scale (one U(min,max) scale per batch)")
    g.add_argument("--repeat", type=int, default=1, help="passes over the training images per epoch")
    g.add_argument("--num_workers", type=int, default=0, help="DataLoader worker processes")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=50)
    g.add_argument("--batch_size", type=int, default=8)
    g.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (cosine decay to lr * min_lr_ratio)")
    g.add_argument("--min_lr_ratio", type=float, default=0.01)
    g.add_argument("--warmup_steps", type=int, default=0)
    g.add_argument("--grad_clip", type=float, default=0.0, help="clip the gradient norm (0 = off)")
    g.add_argument("--l1_weight", type=float, default=0.8, help="loss = l1_weight * L1 + ms_ssim_weight * (1 - MS-SSIM)")
    g.add_argument("--ms_ssim_weight", type=float, default=0.2)
    g.add_argument("--early_stop", type=int, default=0, help="stop after N epochs without val PSNR gain (0 = off)")
    g.add_argument("--max_steps", type=int, default=0, help="stop after N optimiser steps in total (0 = no limit)")
    g.add_argument("--time_budget_min", type=float, default=0.0,
                   help="stop after this many minutes of training steps (validation not counted); the cosine "
                   "decay then follows the time spent, so runs of equal budget compare fairly (0 = off)")
    g = p.add_argument_group("model and run")
    g.add_argument("--preset", default="feature", type=lambda s: PRESET_ALIASES.get(s, s), choices=list(PRESETS),
                   help="model architecture: feature (feature splatting + MLP decoder; the shipped default) or "
                   "colour (the shipped colour model), small, base, cholesky (wider colour models, "
                   "the Cholesky head)")
    g.add_argument("--model", default="{}",
                   help="JSON overrides of the preset's config (SRConfig or FeatureSRConfig), e.g. '{\"k\": 2}'")
    g.add_argument("--save_path", default="models/my_model.pth", help="best model (by val PSNR); *.last.pth beside it resumes")
    g.add_argument("--resume", default=None,
                   help="continue a run from its *.last.pth checkpoint, with the arguments it recorded; only "
                   f"{', '.join('--' + f for f in sorted(RESUME_MAY_CHANGE))} may be given anew")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run already at --save_path (by default an existing run is refused)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="rasterizer backend (auto: triton on CUDA, numba on CPU)")
    g.add_argument("--amp", action="store_true", help="bf16 autocast for the CNN (GPUs); rasterization stays fp32")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--samples_dir", default="train_samples", help="per-epoch LR | bicubic | SR | HR strips")
    g.add_argument("--metrics_path", default=None, help="JSONL metrics (default: <save_path stem>.metrics.jsonl)")
    g.add_argument("--no_lpips", action="store_true", help="skip val LPIPS")
    g.add_argument("--no_progress", action="store_true", help="no progress bar")
    g.add_argument("--num_threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    g.add_argument("--quiet", action="store_true", help="no progress bar (the per-epoch lines stay)")
    return p


#: Arguments a resumed run may be given anew (its length, its outputs, where and how it runs);
#: every other one is the recorded run's, and a different value given with --resume is refused.
RESUME_MAY_CHANGE = frozenset({
    "epochs", "time_budget_min", "max_steps", "early_stop", "save_path", "metrics_path", "samples_dir",
    "device", "backend", "num_workers", "num_threads", "no_lpips", "no_progress", "quiet", "resume", "overwrite",
})


def _explicit(argv: Sequence[str]) -> set:
    """The destinations of the options given on the command line (not defaulted)."""
    p = build_parser()
    for a in p._actions:
        a.default, a.required = argparse.SUPPRESS, False
    return set(vars(p.parse_known_args(list(argv))[0]))


def _resumed_args(args: argparse.Namespace, explicit: set) -> argparse.Namespace:
    """``args`` with every argument the ``--resume`` checkpoint recorded restored; an explicitly
    given one that differs, and may not change, is a :class:`UserError`."""
    from gsplat2d.train.loop import checkpoint_train_config

    rec = checkpoint_train_config(args.resume)
    if rec is None:
        raise UserError(f"{args.resume} records no training arguments (not a *.last.pth of gsplat2d train)")
    recorded = dict(rec, model=json.dumps(rec.get("model", {}), sort_keys=True), no_lpips=not rec.get("lpips", True))
    given = dict(vars(args))
    if "model" in explicit:
        given["model"] = json.dumps(json.loads(args.model), sort_keys=True)
    out = dict(given)
    for k, v in recorded.items():
        if k not in given:
            continue
        if k in explicit and k not in RESUME_MAY_CHANGE:
            mine = tuple(given[k]) if isinstance(given[k], (list, tuple)) else given[k]
            theirs = tuple(v) if isinstance(v, (list, tuple)) else v
            if mine != theirs:
                raise UserError(f"--{k} {given[k]} differs from the resumed run's {v} ({args.resume}); "
                                f"a resumed run keeps its arguments (only "
                                f"{', '.join('--' + f for f in sorted(RESUME_MAY_CHANGE - {'resume', 'overwrite'}))}"
                                f" may change)")
        if k not in explicit:
            out[k] = tuple(v) if k == "val_scales" else v
    return argparse.Namespace(**out)


def _run(args: argparse.Namespace, explicit: set) -> int:
    from gsplat2d.train.loop import TrainConfig, train

    if args.resume:
        if not Path(args.resume).is_file():
            raise UserError(f"--resume {args.resume}: no such file")
        args = _resumed_args(args, explicit)
    elif not args.dataset_path:
        raise UserError("--dataset_path is required (or --resume a run's *.last.pth)")
    try:
        overrides = json.loads(args.model)
        if not isinstance(overrides, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise UserError(f"--model must be a JSON object of model config fields ({e})") from None
    if args.num_threads < 0:
        raise UserError(f"--num_threads must be >= 0, got {args.num_threads}")
    if args.num_threads:
        import torch

        torch.set_num_threads(args.num_threads)
    names = {f.name for f in fields(TrainConfig)}
    kw = {k: v for k, v in vars(args).items() if k in names and k not in ("model", "lpips", "progress")}
    cfg = TrainConfig(**kw, model=overrides, lpips=not args.no_lpips,
                      progress=not (args.no_progress or args.quiet))
    try:
        summary = train(cfg, resume=args.resume, overwrite=args.overwrite)
    except (FileNotFoundError, ValueError) as e:  # data, paths, configs: the user's to fix
        raise UserError(str(e)) from None
    except KeyboardInterrupt:
        print("gsplat2d train: the last finished epoch is in the *.last.pth checkpoint", file=sys.stderr)
        raise
    if not summary.get("model_saved", True):
        print(f"gsplat2d train: error: no model saved at {cfg.save_path}: every epoch diverged (lower --lr)",
              file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``gsplat2d train``; returns the exit status (2: bad arguments or inputs)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_command("gsplat2d train", build_parser(), lambda a: _run(a, _explicit(argv)), argv)
