"""``python -m gsplat2d.eval`` / ``gsplat2d test``: validate a super-resolution model.

Two protocols:

``crops`` (default; the test command of the original project brief, which called it ``brief``:
that name is still accepted)::

    python -m gsplat2d.eval --model_path models/my_model.pth --data_path ./DIV2K_valid_HR --batch_size 1

    Takes a centre crop (``--crop``, default 256 x 256) of every HR image, mod-crops it to the scale,
    makes its LR image with MATLAB-style bicubic (``gsplat2d.eval.resize.imresize``), super-resolves
    it with the model at exactly the crop size, and writes

    * ``--output_dir``: ``GT | bicubic | SR`` comparison PNGs, each panel labelled with PSNR/SSIM;
    * ``--gt_dir``: the HR crops; ``--ren_dir``: the model's renders (8-bit PNG);

    then prints the ``--- Validation Complete ---`` block with the average PSNR / SSIM of the model.

``benchmark`` (``--protocol benchmark`` or ``--benchmark``): full images of one or more datasets at
several scales (``--scales``, default ``2,3,4,6,3.5``), bicubic and model side by side in a table
(``--json`` writes it too). A dataset folder is either HR-only (LR images are made) or the
Set5/Set14 layout ``HR/`` + ``LR_bicubic/X{s}/{name}x{s}.png``, whose provided LR images are used
for the integer scales they exist for.

Metric (both protocols, :data:`METRIC`): PSNR and SSIM on the BT.601 Y channel with
``ceil(scale)`` pixels shaved from every border, the SR image quantised to 8 bit, the HR Y rounded
to 8 bit as MATLAB ``rgb2ycbcr`` does for the ``uint8`` ground truth (SR Y unrounded, as for a
``double`` image), greyscale images compared on their grey level; mean over images. With the
MATLAB bicubic baseline this reproduces the published Set5 bicubic figures (33.66 / 30.39 / 28.42
dB at x2 / x3 / x4) to within 0.005 dB; see ``gsplat2d.eval.resize.BICUBIC_STUDY``.

Non-integer scales: LR size ``h = floor(H / s)``, HR cropped (top-left) to ``round(h * s)``;
see :func:`gsplat2d.eval.resize.lr_size_for`. The model always renders at exactly the HR size.

User errors (missing or empty folder, unreadable model, bad option values) print one
``error: ...`` line on stderr and return exit code 2; unreadable image files are skipped with a
warning.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw

from gsplat2d.image_files import IMAGE_EXTENSIONS, list_images
from gsplat2d._io import atomic_write
from gsplat2d.cli.common import UserError, check_folder_creatable, check_output_file, pick_device, run_command
from gsplat2d.eval.metrics import load_image_uint8, ms_ssim_y, psnr_y, ssim_y
from gsplat2d.eval.resize import bicubic_sr, is_integer_scale, lr_size_for, make_lr

__all__ = ["main", "build_parser", "METRIC", "IMAGE_EXTS"]

IMAGE_EXTS = IMAGE_EXTENSIONS  # one list for every command (gsplat2d.image_files)
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
DEFAULT_SCALES = "2,3,4,6,3.5"
METRIC = (
    "Y-channel (BT.601) PSNR/SSIM, shave = ceil(scale) px, SR quantised to 8 bit, HR Y rounded to 8 bit "
    "(MATLAB rgb2ycbcr on uint8), greyscale images on the grey level, mean over images"
)


_PROG = "gsplat2d test"


def _warn(msg: str) -> None:
    print(f"{_PROG}: warning: {msg}", file=sys.stderr)


# ----------------------------------------------------------------------------- arguments
def _scale_value(text: str) -> float:
    try:
        s = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(s) or s < 1:
        raise argparse.ArgumentTypeError(f"scale must be a number >= 1, got {text!r}")
    return s


def _scale_list(text: str) -> List[float]:
    parts = [p for p in text.replace(" ", ",").split(",") if p]
    if not parts:
        raise argparse.ArgumentTypeError("give at least one scale, e.g. 2,3,4")
    out: List[float] = []
    for p in parts:
        s = _scale_value(p)
        if s not in out:
            out.append(s)
    return out


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=_PROG,
        description=(
            "Validate a gsplat2d super-resolution model. Default protocol 'crops': centre crops, "
            "comparison/GT/render PNGs and an average PSNR/SSIM report. '--benchmark': full images "
            "at several scales, bicubic vs model table (Set5/Set14 conventions). "
            f"Metric: {METRIC}."
        ),
    )
    p.add_argument("--model_path", default=None,
                   help="model checkpoint (.pth from 'gsplat2d train'), or a shipped model: 'feature' (the "
                        "default, gsplat2d/weights/gaussian_sr_feature.pth) or 'colour' (the colour model)")
    p.add_argument("--data_path", nargs="+", required=True, metavar="DIR",
                   help="one or more image folders: HR images directly (e.g. DIV2K_valid_HR) or the "
                        "Set5/Set14 layout with HR/ and LR_bicubic/X{s}/ subfolders")
    p.add_argument("--batch_size", type=_positive_int, default=1,
                   help="crops super-resolved per model call in the crops protocol (crops of equal size "
                        "are batched; the benchmark runs full images one at a time) [1]")
    p.add_argument("--scale", type=_scale_value, default=None,
                   help="upscaling factor of the crops protocol (non-integer allowed) [4]; with "
                        "--benchmark and no --scales, the single benchmark scale")
    p.add_argument("--crop", type=_nonneg_int, default=256,
                   help="crops protocol: centre crop size in HR pixels (square; images smaller than "
                        "the crop are used whole), then mod-cropped to the scale; 0 = whole images [256]")
    p.add_argument("--output_dir", default="./validation_output",
                   help="crops protocol: GT | bicubic | SR comparison PNGs [./validation_output]")
    p.add_argument("--gt_dir", default="./validationGT", help="crops protocol: HR crops [./validationGT]")
    p.add_argument("--ren_dir", default="./validationRen",
                   help="crops protocol: the model's SR renders [./validationRen]")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N [auto]")
    p.add_argument("--protocol", choices=("crops", "benchmark"), default="crops",
                   type=lambda s: "crops" if s == "brief" else s,  # the name of earlier releases
                   help="crops (centre crops + images + report) or benchmark (full images, table) [crops]")
    p.add_argument("--benchmark", dest="protocol", action="store_const", const="benchmark",
                   help="same as --protocol benchmark")
    p.add_argument("--scales", type=_scale_list, default=None,
                   help=f"benchmark scales, comma separated; non-integer allowed [{DEFAULT_SCALES}]")
    p.add_argument("--lpips", action="store_true",
                   help="benchmark: also LPIPS (AlexNet, RGB; needs torchvision and its weights, skipped "
                        "with a note when they cannot be loaded)")
    p.add_argument("--ms_ssim", action="store_true",
                   help="benchmark: also MS-SSIM on Y (fewer than 5 scales on small images)")
    p.add_argument("--json", default=None, metavar="PATH", help="benchmark: write the results table as JSON")
    p.add_argument("--max_images", type=_positive_int, default=None,
                   help="evaluate only the first N images (sorted by name) of each dataset")
    return p


# ----------------------------------------------------------------------------- inputs
@dataclass
class Dataset:
    arg: str  # as the user gave it
    name: str
    hr_dir: Path
    lr_root: Optional[Path]  # LR_bicubic folder, if any
    files: List[Path] = field(default_factory=list)


def find_dataset(arg: str, max_images: Optional[int] = None) -> Dataset:
    p = Path(arg)
    if not p.exists():
        raise UserError(f"data path not found: {arg}")
    if not p.is_dir():
        raise UserError(f"data path is not a folder: {arg}")
    hr_dir = p / "HR" if (p / "HR").is_dir() else p
    lr_root = p / "LR_bicubic" if (p / "LR_bicubic").is_dir() else None
    files = list_images(hr_dir)
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_EXTS)}) in {hr_dir}")
    if max_images is not None:
        files = files[:max_images]
    name = p.resolve().name or str(p)
    return Dataset(arg, name, hr_dir, lr_root, files)


def read_image(path: Path) -> Optional[Tuple[np.ndarray, bool]]:
    """``(uint8 [H, W, 3], is_greyscale)``, or ``None`` (with a warning) for an unreadable file."""
    try:
        with Image.open(path) as im:
            grey = im.mode in GREY_MODES
        return load_image_uint8(path), grey
    except Exception as e:  # pillow raises many types for bad files
        _warn(f"skipping {path}: {e}")
        return None


def _find_lr(ds: Dataset, stem: str, scale: float) -> Optional[Path]:
    if ds.lr_root is None or not is_integer_scale(scale):
        return None
    folder = ds.lr_root / f"X{int(scale)}"
    if not folder.is_dir():
        return None
    for name in (f"{stem}x{int(scale)}", stem):
        for ext in IMAGE_EXTS:
            for cand in (folder / (name + ext), folder / (name + ext.upper())):
                if cand.is_file():
                    return cand
    return None


_device = pick_device


def _load_model(path: Optional[str], device: torch.device):
    from gsplat2d.sr.model import load_model, resolve_model_path

    shown = resolve_model_path(path)
    try:
        model = load_model(path, map_location="cpu")
    except (FileNotFoundError, ValueError, OSError) as e:
        raise UserError(f"cannot load model {shown}: {e}") from None
    return model.to(device).eval(), shown


def _to_tensor(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(u8.transpose(2, 0, 1))).float().div_(255.0)


def _to_u8(img: torch.Tensor) -> np.ndarray:
    x = img.detach().float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).cpu().numpy()
    return x.transpose(1, 2, 0)


@torch.no_grad()
def _super_resolve(model, lrs: List[np.ndarray], hw: Tuple[int, int], device: torch.device) -> List[torch.Tensor]:
    batch = torch.stack([_to_tensor(lr) for lr in lrs]).to(device)
    sr = model(batch, (hw[1], hw[0]))
    return [x.float().clamp(0.0, 1.0).cpu() for x in sr]


def _check_shave(hr_hw: Tuple[int, int], scale: float) -> None:
    """ValueError when shaving ``ceil(scale)`` px from every border leaves no pixel to score."""
    shave = _shave(scale)
    if min(hr_hw) <= 2 * shave:
        raise ValueError(f"{hr_hw[1]}x{hr_hw[0]} px is too small to score at {_scale_label(scale)} "
                         f"({shave} px are shaved from each border)")


def _shave(scale: float) -> int:
    return int(math.ceil(scale - 1e-9))


def _scale_label(s: float) -> str:
    return f"x{int(s)}" if is_integer_scale(s) else f"x{s:g}"


def _pair_metrics(sr: torch.Tensor, hr: torch.Tensor, scale: float, grey: bool) -> Tuple[float, float]:
    kw = dict(round_hr_y=True, grey=grey)
    return psnr_y(sr, hr, _shave(scale), **kw), ssim_y(sr, hr, _shave(scale), **kw)


# ----------------------------------------------------------------------------- crops protocol
def _centre_crop(hr: np.ndarray, crop: int) -> np.ndarray:
    if crop <= 0:
        return hr
    H, W = hr.shape[:2]
    ch, cw = min(crop, H), min(crop, W)
    top, left = (H - ch) // 2, (W - cw) // 2
    return hr[top : top + ch, left : left + cw]


def _panel_label(draw: ImageDraw.ImageDraw, xy: Tuple[int, int], lines: Sequence[str]) -> None:
    x, y = xy
    for line in lines:
        draw.text((x, y), line, fill=(0, 0, 0))
        y += 12


def comparison_image(
    hr: np.ndarray, bic: np.ndarray, sr: np.ndarray, labels: Sequence[Sequence[str]]
) -> Image.Image:
    """``GT | bicubic | SR`` side by side, each panel with its label lines above it (pillow's
    default font). Panels narrower than 160 px are enlarged (nearest neighbour) for the labels."""
    H, W = hr.shape[:2]
    k = min(8, max(1, math.ceil(160 / W)))
    pw, ph = W * k, H * k
    gap, strip = 4, 12 * max(len(l) for l in labels) + 6
    canvas = Image.new("RGB", (3 * pw + 2 * gap, ph + strip), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (arr, lines) in enumerate(zip((hr, bic, sr), labels)):
        im = Image.fromarray(arr)
        if k > 1:
            im = im.resize((pw, ph), Image.NEAREST)
        x0 = i * (pw + gap)
        canvas.paste(im, (x0, strip))
        _panel_label(draw, (x0 + 3, 3), lines)
    return canvas


def _unique_name(stem: str, used: set) -> str:
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}_{n}"
    used.add(name)
    return name


def _make_dirs(*dirs: str) -> None:
    for d in dirs:
        try:
            Path(d).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create output folder {d}: {e}") from None


@dataclass
class _BriefItem:
    """One crops-protocol crop ready for the model."""

    name: str  # output file stem, unique across datasets
    hr: np.ndarray
    lr: np.ndarray
    grey: bool
    index: int  # 1-based position among all files, skipped ones included


class _BriefPlan:
    """Iterates the crops-protocol crops of all datasets and counts the files skipped."""

    def __init__(self, datasets: List[Dataset], crop: int, scale: float) -> None:
        self.datasets = datasets
        self.crop = crop
        self.scale = scale
        self.skipped = 0

    def __iter__(self) -> Iterator[_BriefItem]:
        # Lazy: a crop is a view of its full image, so reading everything up front would hold
        # every full-size image in memory at once.
        prefix = len(self.datasets) > 1
        used: set = set()
        index = 0
        for ds in self.datasets:
            for path in ds.files:
                index += 1
                got = read_image(path)
                if got is None:
                    self.skipped += 1
                    continue
                hr_full, grey = got
                try:
                    hr, lr = make_lr(_centre_crop(hr_full, self.crop), self.scale)
                    _check_shave(hr.shape[:2], self.scale)
                except ValueError as e:
                    _warn(f"skipping {path}: {e}")
                    self.skipped += 1
                    continue
                name = _unique_name(f"{ds.name}_{path.stem}" if prefix else path.stem, used)
                yield _BriefItem(name, hr, lr, grey, index)


def _score_and_write_crop(
    it: _BriefItem, sr: torch.Tensor, scale: float, args: argparse.Namespace, n_files: int
) -> Tuple[float, float, float, float]:
    """Scores one super-resolved crop against bicubic, writes its GT, render and comparison PNGs and
    prints its progress line; returns ``(bicubic PSNR, bicubic SSIM, SR PSNR, SR SSIM)``."""
    hw = it.hr.shape[:2]
    hr_t = _to_tensor(it.hr)
    bic = bicubic_sr(it.lr, hw)
    bp, bs = _pair_metrics(bic, hr_t, scale, it.grey)
    sp, ss = _pair_metrics(sr, hr_t, scale, it.grey)
    sr_u8, bic_u8 = _to_u8(sr), _to_u8(bic)
    name = it.name + ".png"
    try:
        Image.fromarray(it.hr).save(Path(args.gt_dir) / name)
        Image.fromarray(sr_u8).save(Path(args.ren_dir) / name)
        comparison_image(
            it.hr, bic_u8, sr_u8,
            [["GT", f"{hw[1]}x{hw[0]}"], ["Bicubic", f"PSNR {bp:.2f} dB  SSIM {bs:.4f}"],
             ["SR (model)", f"PSNR {sp:.2f} dB  SSIM {ss:.4f}"]],
        ).save(Path(args.output_dir) / name)
    except OSError as e:
        raise UserError(f"cannot write output image {name}: {e}") from None
    print(f"[{it.index}/{n_files}] {it.name}  {hw[1]}x{hw[0]}  bicubic {bp:.2f} dB / {bs:.4f}"
          f"  SR {sp:.2f} dB / {ss:.4f}")
    return bp, bs, sp, ss


class _BriefBatcher:
    """Collects crops of one size into model batches of ``--batch_size``; super-resolves each batch,
    writes its files and keeps the scores."""

    def __init__(self, model: torch.nn.Module, device: torch.device, scale: float,
                 args: argparse.Namespace, n_files: int) -> None:
        self.model = model
        self.device = device
        self.scale = scale
        self.args = args
        self.n_files = n_files
        self.pending: List[_BriefItem] = []
        self.results: List[Tuple[float, float, float, float]] = []

    def add(self, item: _BriefItem) -> None:
        """Queues a crop, super-resolving the queue first if the crop's size differs from it."""
        if self.pending and self.pending[0].hr.shape != item.hr.shape:
            self.flush()
        self.pending.append(item)
        if len(self.pending) >= self.args.batch_size:
            self.flush()

    def flush(self) -> None:
        """Super-resolves the queued crops in one model call and writes their files."""
        if not self.pending:
            return
        hw = self.pending[0].hr.shape[:2]
        srs = _super_resolve(self.model, [it.lr for it in self.pending], hw, self.device)
        _make_dirs(self.args.output_dir, self.args.gt_dir, self.args.ren_dir)
        for it, sr in zip(self.pending, srs):
            self.results.append(_score_and_write_crop(it, sr, self.scale, self.args, self.n_files))
        self.pending.clear()


def _print_crops_report(
    args: argparse.Namespace, shown_model: str, results: List[Tuple[float, float, float, float]],
    n_files: int, skipped: int,
) -> None:
    """Prints the averages and the ``--- Validation Complete ---`` block."""
    avg = np.mean(np.asarray(results, dtype=np.float64), axis=0)
    print(f"Evaluated {len(results)} of {n_files} images ({skipped} skipped)")
    print(f"Bicubic baseline: PSNR {avg[0]:.4f} dB, SSIM {avg[1]:.4f}")
    print("--- Validation Complete ---")
    print(f"Dataset: {', '.join(args.data_path)}")
    print(f"Model:   {shown_model}")
    print(f"Comparison Output:  {args.output_dir}")
    print(f"GT Output:          {args.gt_dir}")
    print(f"Rendered Output:    {args.ren_dir}")
    print(f"Average PSNR: {avg[2]:.4f} dB")
    print(f"Average SSIM: {avg[3]:.4f}")
    print("---------------------------")


def run_crops(args: argparse.Namespace) -> int:
    """The crops protocol: centre crops, comparison/GT/render PNGs and the average PSNR/SSIM report."""
    scale = 4.0 if args.scale is None else args.scale
    datasets = [find_dataset(a, args.max_images) for a in args.data_path]
    device = _device(args.device)
    model, shown_model = _load_model(args.model_path, device)
    for flag, d in (("--output_dir", args.output_dir), ("--gt_dir", args.gt_dir), ("--ren_dir", args.ren_dir)):
        check_folder_creatable(d, flag)  # made when the first image is written, not before
    n_files = sum(len(d.files) for d in datasets)
    print(f"Validating {shown_model} on {n_files} image(s), scale {_scale_label(scale)}, "
          f"{'whole images' if args.crop == 0 else f'{args.crop}x{args.crop} centre crops'}, device {device}")
    print(f"Metric: {METRIC}")

    plan = _BriefPlan(datasets, args.crop, scale)
    batcher = _BriefBatcher(model, device, scale, args, n_files)
    for item in plan:
        batcher.add(item)
    batcher.flush()
    if not batcher.results:
        raise UserError("no image could be evaluated (all were unreadable or too small)")
    _print_crops_report(args, shown_model, batcher.results, n_files, plan.skipped)
    return 0


# ----------------------------------------------------------------------------- benchmark protocol
class _Lpips:
    """LPIPS (AlexNet, torchmetrics) on RGB; disabled with one note if it cannot be loaded."""

    def __init__(self, device: torch.device) -> None:
        self.metric = None
        self.note: Optional[str] = None
        try:
            from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

            self.metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).to(device)
            self.device = device
        except Exception as e:  # no torchvision, or no weights offline
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            self.note = f"LPIPS skipped: its network weights could not be loaded ({type(e).__name__}: {msg})"

    @torch.no_grad()
    def __call__(self, sr: torch.Tensor, hr: torch.Tensor, shave: int) -> Optional[float]:
        if self.metric is None:
            return None
        if shave:
            sr, hr = sr[..., shave:-shave, shave:-shave], hr[..., shave:-shave, shave:-shave]
        try:
            return float(self.metric(sr[None].float().to(self.device), hr[None].float().to(self.device)))
        except Exception as e:
            _warn(f"LPIPS failed on a {tuple(hr.shape[-2:])} image: {e}")
            return None


def _mean(xs: List[Optional[float]]) -> Optional[float]:
    """Mean of the finite values (an infinite PSNR — SR identical to HR — is left out of the mean)."""
    vals = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.mean(vals)) if vals else None


def _delta(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else a - b


def _finite(obj):
    """JSON-safe copy: non-finite floats (PSNR of identical images, MS-SSIM of tiny ones) -> None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _fmt(v: Optional[float], digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _benchmark_scales(args: argparse.Namespace) -> List[float]:
    """``--scales``, else the single ``--scale``, else :data:`DEFAULT_SCALES`."""
    if args.scales is not None:
        return args.scales
    if args.scale is not None:
        return [args.scale]
    return _scale_list(DEFAULT_SCALES)


@dataclass
class _Scoring:
    """What scoring one benchmark image needs: the model and the optional metrics asked for."""

    model: torch.nn.Module
    device: torch.device
    ms_ssim: bool
    lpips: Optional[_Lpips]  # None when not asked for or its network could not be loaded

    def extra_columns(self) -> List[Tuple[str, str, int]]:
        """``(key, label, digits)`` of the optional metrics, in table order."""
        extra = []
        if self.ms_ssim:
            extra.append(("ms_ssim", "MS-SSIM", 4))
        if self.lpips is not None:
            extra.append(("lpips", "LPIPS", 4))
        return extra


def _benchmark_pair(
    ds: Dataset, path: Path, hr_full: np.ndarray, s: float, hr_hw: Tuple[int, int], lr_hw: Tuple[int, int]
) -> Tuple[np.ndarray, np.ndarray, str]:
    """The HR crop and LR image of one image at scale ``s``: the dataset's LR file when it has the
    expected size, else one made from the HR image; with the LR source, ``provided`` or ``made``."""
    (H, W), (h, w) = hr_hw, lr_hw
    lp = _find_lr(ds, path.stem, s)
    if lp is not None:
        got_lr = read_image(lp)
        if got_lr is not None and got_lr[0].shape[:2] == (h, w):
            return hr_full[:H, :W], got_lr[0], "provided"
        if got_lr is not None:
            _warn(f"{lp} is {got_lr[0].shape[1]}x{got_lr[0].shape[0]}, expected {w}x{h}; "
                  f"making the LR image instead")
    hr, lr = make_lr(hr_full, s)
    return hr, lr, "made"


def _score_benchmark_image(
    sc: _Scoring, image: str, hr: np.ndarray, lr: np.ndarray, s: float, grey: bool,
    hr_hw: Tuple[int, int], lr_hw: Tuple[int, int],
) -> dict:
    """The per-image record: sizes and the bicubic and model scores at scale ``s``."""
    (H, W), (h, w) = hr_hw, lr_hw
    hr_t = _to_tensor(hr)
    bic = bicubic_sr(lr, (H, W))
    sr = _super_resolve(sc.model, [lr], (H, W), sc.device)[0]
    rec = {"image": image, "hr_size": [W, H], "lr_size": [w, h]}
    for key, img in (("bicubic", bic), ("model", sr)):
        p_, s_ = _pair_metrics(img, hr_t, s, grey)
        m = {"psnr": p_, "ssim": s_}
        if sc.ms_ssim:
            m["ms_ssim"] = ms_ssim_y(img, hr_t, _shave(s), round_hr_y=True, grey=grey)
        if sc.lpips is not None:
            m["lpips"] = sc.lpips(img, hr_t, _shave(s))
        rec[key] = m
    return rec


def _measure_dataset(
    ds: Dataset, scales: List[float], sc: _Scoring
) -> Tuple[Dict[float, List[dict]], Dict[float, Dict[str, int]]]:
    """Scores every readable image of ``ds`` at every scale it is large enough for; returns the
    per-image records and the LR source counts, both by scale."""
    per: Dict[float, List[dict]] = {s: [] for s in scales}
    lr_src: Dict[float, Dict[str, int]] = {s: {"provided": 0, "made": 0} for s in scales}
    n_read = 0
    for i, path in enumerate(ds.files, 1):
        got = read_image(path)
        if got is None:
            continue
        n_read += 1
        hr_full, grey = got
        for s in scales:
            try:
                hr_hw, lr_hw = lr_size_for(hr_full.shape[:2], s)
                _check_shave(hr_hw, s)
            except ValueError as e:
                _warn(f"{ds.name}/{path.name} skipped at {_scale_label(s)}: {e}")
                continue
            hr, lr, source = _benchmark_pair(ds, path, hr_full, s, hr_hw, lr_hw)
            lr_src[s][source] += 1
            per[s].append(_score_benchmark_image(sc, path.name, hr, lr, s, grey, hr_hw, lr_hw))
        print(f"[{i}/{len(ds.files)}] {ds.name}/{path.name}", file=sys.stderr)
    if n_read == 0:
        raise UserError(f"no readable image in {ds.hr_dir}")
    return per, lr_src


def _dataset_rows(
    ds: Dataset, scales: List[float], per: Dict[float, List[dict]], lr_src: Dict[float, Dict[str, int]]
) -> List[dict]:
    """One results row per scale of ``ds`` with at least one image: mean scores and deltas."""
    rows = []
    for s in scales:
        recs = per[s]
        if not recs:
            _warn(f"{ds.name} {_scale_label(s)}: no image large enough")
            continue
        row = {"dataset": ds.name, "path": ds.arg, "scale": s, "images": len(recs), "lr_source": lr_src[s],
               "shave": _shave(s)}
        for key in ("bicubic", "model"):
            row[key] = {m: _mean([r[key].get(m) for r in recs]) for m in recs[0][key]}
        row["delta_psnr"] = _delta(row["model"]["psnr"], row["bicubic"]["psnr"])
        row["delta_ssim"] = _delta(row["model"]["ssim"], row["bicubic"]["ssim"])
        row["per_image"] = recs
        rows.append(row)
    return rows


def _print_benchmark_table(rows: List[dict], extra: List[Tuple[str, str, int]]) -> None:
    """Prints the results table (blank line first), text columns left-aligned, numbers right."""
    head = ["dataset", "scale", "images", "LR prov/made", "bic PSNR", "bic SSIM"]
    head += [f"bic {lab}" for _, lab, _ in extra]
    head += ["model PSNR", "model SSIM"] + [f"model {lab}" for _, lab, _ in extra] + ["dPSNR", "dSSIM"]
    table = []
    for r in rows:
        line = [r["dataset"], _scale_label(r["scale"]), str(r["images"]),
                f"{r['lr_source']['provided']}/{r['lr_source']['made']}"]
        for key in ("bicubic", "model"):
            line += [_fmt(r[key]["psnr"], 4), _fmt(r[key]["ssim"], 4)]
            line += [_fmt(r[key].get(k), d) for k, _, d in extra]
        line += ["-" if r[k] is None else f"{r[k]:+.4f}" for k in ("delta_psnr", "delta_ssim")]
        table.append(line)
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(head)]
    print()
    print("  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths))))
    for t in table:
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(t, widths))))


def _write_benchmark_json(path: str, payload: dict) -> None:
    """Writes the ``--json`` file and says so."""
    try:
        text = json.dumps(payload, indent=2, allow_nan=False) + "\n"
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(text.encode()), suffix=".json")
    except (OSError, ValueError) as e:
        raise UserError(f"cannot write --json {path}: {e}") from None
    print(f"JSON written to {path}")


def run_benchmark(args: argparse.Namespace) -> int:
    """The benchmark protocol: full images at several scales, bicubic vs model table (and JSON)."""
    scales = _benchmark_scales(args)
    datasets = [find_dataset(a, args.max_images) for a in args.data_path]
    device = _device(args.device)
    model, shown_model = _load_model(args.model_path, device)
    if args.json:
        check_output_file(args.json, "--json")  # before the evaluation, not after it
    lpips = _Lpips(device) if args.lpips else None
    print(f"Benchmark of {shown_model}: {', '.join(d.name for d in datasets)} at "
          f"{', '.join(_scale_label(s) for s in scales)}, device {device}")
    print(f"Metric: {METRIC}")

    sc = _Scoring(model, device, args.ms_ssim, lpips if lpips is not None and lpips.metric is not None else None)
    rows: List[dict] = []
    for ds in datasets:
        per, lr_src = _measure_dataset(ds, scales, sc)
        rows += _dataset_rows(ds, scales, per, lr_src)
    if not rows:
        raise UserError("no image could be evaluated at any scale")

    _print_benchmark_table(rows, sc.extra_columns())
    if lpips is not None and lpips.note:
        print(f"note: {lpips.note}")
    if args.json:
        payload = {"protocol": "benchmark", "model": shown_model, "metric": METRIC, "device": str(device),
                   "scales": scales, "lpips_note": lpips.note if lpips is not None else None,
                   "results": _finite(rows)}
        _write_benchmark_json(args.json, payload)
    return 0


# ----------------------------------------------------------------------------- entry point
def _run(args: argparse.Namespace) -> int:
    if args.protocol == "benchmark":
        return run_benchmark(args)
    return run_crops(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``gsplat2d test``; returns the exit status (2: bad arguments or inputs)."""
    return run_command(_PROG, build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
