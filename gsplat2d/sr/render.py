"""``gsplat2d render``: super-resolve an image (or a folder of images) at any size, or re-render a
saved Gaussian field.

Examples::

    gsplat2d render --input_path lr.png --output_path hr.png --scale 4
    gsplat2d render --model_path models/my_model.pth --input_path lr.png --output_path hr.png --scale 3.7
    gsplat2d render --input_path lr.png --output_path hr.png --scale 2.5x3      # sx x sy
    gsplat2d render --input_path lr.png --output_path hr.png --size 3840x2160   # exact W x H
    gsplat2d render --input_path lr_dir/ --output_path sr_dir/ --scale 4        # a folder
    gsplat2d render --input_path lr.png --save_gaussians field.g2d               # encode only
    gsplat2d render --gaussians field.g2d --size 8000x8000 --output_path big.png
    gsplat2d render --gaussians field.g2d --scale 2.5 --output_path big.png     # x2.5 of the source size
    gsplat2d render --gaussians feat.g2d --model_path feature.pth --scale 4 --output_path big.png

The network runs once per input (``encode``); the field is then rasterized window by window
(``--window`` pixels square, default 512) into an 8-bit image, so the memory of a very large
render is the uint8 output plus one window, and the result equals an untiled render.

A ``.g2d`` file stores Gaussians in normalised image coordinates plus metadata: fields written by
``--save_gaussians`` or ``gsplat2d fit`` record their render mode and source size, so ``--scale``
(relative to that size) and the right mode work; for older files without metadata give ``--size``
(and ``--mode alpha`` for alpha-mode fields; the default is ``sum``).

A feature model (``--preset feature``) renders the same way: its per-pixel decoder runs on each
window after rasterization. Its ``--save_gaussians`` file holds the feature field (colour base,
features, weight channel) plus the decoder's kind and weight hash, not the decoder itself:
``--gaussians`` re-renders it with the model that encoded it: a shipped model's field by itself,
any other with ``--model_path`` (checked against the hash); without it, it says what is missing.

Also ``python -m gsplat2d.sr.render``. Exit status: 0 on success, 2 for bad arguments or inputs,
1 when rendering fails; errors are one line on stderr, and no partial output file is left.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple, List, Optional, Sequence, Tuple

import torch
from PIL import Image, UnidentifiedImageError

from gsplat2d._io import short_load_error
from gsplat2d._validate import MAX_PIXELS
from gsplat2d.cli.common import (
    EXIT_USER_ERROR,
    UserError,
    add_alias,
    add_runtime_args,
    apply_runtime_args,
    check_folder_creatable,
    check_output_file,
    check_output_size,
    output_size,
    parse_scale,
    parse_size,
    run_command,
    load_image_file,
    save_image_atomic,
)
from gsplat2d.image_files import IMAGE_EXTENSIONS, image_size, list_images
from gsplat2d.image_files import OUTPUT_FORMATS as _OUTPUT_FORMATS
from gsplat2d.binning import MODES
from gsplat2d.gaussians import Gaussians2D
# the library this command drives (its public names stay importable from this module)
from gsplat2d.sr.rendering import (
    DECODER_KIND,
    DEFAULT_WINDOW,
    decoder_meta,
    degenerate_gaussians,
    encode_image,
    render_to_array,
    sync,
    unbatch,
    warm_up,
)

__all__ = [
    "MAX_PIXELS",
    "DEFAULT_WINDOW",
    "RenderError",
    "parse_scale",
    "parse_size",
    "output_size",
    "load_image_file",
    "encode_image",
    "render_to_array",
    "save_image_atomic",
    "main",
]

_PROG = "gsplat2d render"


#: The commands' one error type (:class:`gsplat2d.cli.common.UserError`), under this command's name.
RenderError = UserError


# ---------------------------------------------------------------------------------- images
def _open_header(path: Path) -> Tuple[int, int]:
    """Size ``(W, H)`` of an image file, reading only its header; RenderError if unreadable."""
    try:
        with Image.open(path) as im:
            return image_size(im)  # as seen: a 90-degree EXIF orientation swaps W and H
    except Image.DecompressionBombError as e:
        raise RenderError(f"input image {path} is too large: {e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise RenderError(f"input {path} is not a readable image: {e}") from None


# ---------------------------------------------------------------------------------- CLI
def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=_PROG,
        description="Super-resolve an image (or every image in a folder) to any size with a "
        "pixel-to-Gaussian model, or re-render a saved .g2d Gaussian field.",
        epilog="A .g2d field from --save_gaussians or 'gsplat2d fit' records its mode and source size, so "
        "--scale works on it; files without that metadata need --size (and --mode alpha for alpha fields).",
    )
    p.add_argument("--input_path", help="LR image file, or a folder of images")
    p.add_argument("--output_path", help="output image (.png), or a folder when --input_path is a folder")
    p.add_argument("--model_path", help="model checkpoint (.pth), or a shipped model: 'feature' (the default) or "
                   "'colour' (the colour model). With --gaussians: the feature model whose decoder a feature field needs")
    p.add_argument("--scale", help="upscaling factor: a number > 0 (4, 3.7, 12) or SXxSY (2.5x3)")
    p.add_argument("--size", help="exact output size WIDTHxHEIGHT in pixels, e.g. 3840x2160")
    p.add_argument("--save_gaussians", metavar="PATH",
                   help="also write the encoded field to PATH (.g2d; a folder for a folder input)")
    p.add_argument("--gaussians", metavar="FIELD.g2d",
                   help="render this saved field instead of encoding an image (--size, or --scale of its source size)")
    p.add_argument("--mode", choices=MODES,
                   help="rasterizer mode; default: the model's mode, or 'sum' for --gaussians")
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                   help=f"render in square windows of this many pixels (bounded memory; default {DEFAULT_WINDOW})")
    add_runtime_args(p)
    add_alias(p, "--input_path", "--input-path")
    add_alias(p, "--output_path", "--output-path")
    add_alias(p, "--model_path", "--model-path")
    add_alias(p, "--save_gaussians", "--save-gaussians")
    return p


def _fail(msg: str) -> None:
    raise RenderError(msg)


def _short(e: BaseException) -> str:
    return short_load_error(e)


def _list_images(folder: Path) -> List[Path]:
    files = list_images(folder)
    if not files:
        _fail(f"input folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    stems = {}
    for f in files:
        if f.stem in stems:
            _fail(f"input folder {folder}: {stems[f.stem].name} and {f.name} would both write {f.stem}.png")
        stems[f.stem] = f
    return files


class _Job(NamedTuple):
    """One image of a render: its input, LR size, output size and where its results go."""

    src: Path
    lr_size: Tuple[int, int]
    out_size: Optional[Tuple[int, int]]
    dst: Optional[Path]
    field_dst: Optional[Path]


def _run(args: argparse.Namespace) -> int:
    say = (lambda *a, **k: None) if args.quiet else print
    scale, size = _check_arguments(args)
    if args.gaussians is not None:
        return _run_field(args, size, scale, say)
    inp = Path(args.input_path)
    if not inp.exists():
        _fail(f"input not found: {inp}")
    folder_mode = inp.is_dir()
    jobs, failed = _plan_jobs(args, inp, folder_mode, scale, size)
    device = apply_runtime_args(args)
    model, mode = _load_model_for(args, device)
    warm_up(model, mode, args.backend, device)
    failed += _render_jobs(args, jobs, model, mode, device, folder_mode, say)
    n_total = len(jobs) + len([f for f in failed if f not in {j.src for j in jobs}])
    if args.save_gaussians is not None and not args.quiet:
        # a feature field decodes with the model that made it; a shipped one is found by its hash
        needs = f" --model_path {args.model_path}" if model.arch == "feature" and args.model_path else ""
        print(f"re-render a field with: {_PROG} --gaussians FIELD.g2d{needs} --scale S (or --size WxH) "
              "--output_path OUT.png")
    if failed:
        print(f"{_PROG}: {len(failed)} of {n_total} images failed", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def _check_arguments(args: argparse.Namespace):
    """Everything that needs no file access; returns ``(scale, size)``."""
    if args.window < 1:
        _fail(f"--window must be >= 1 pixel, got {args.window}")
    scale = parse_scale(args.scale) if args.scale is not None else None
    size = parse_size(args.size) if args.size is not None else None
    if scale is not None and size is not None:
        _fail("give either --scale or --size, not both")
    if args.gaussians is not None:
        for flag, val in (("--input_path", args.input_path), ("--save_gaussians", args.save_gaussians)):
            if val is not None:
                _fail(f"{flag} cannot be combined with --gaussians (which renders a saved field)")
        if args.output_path is None:
            _fail("--gaussians needs --output_path")
        if scale is None and size is None:
            _fail("--gaussians needs --size WIDTHxHEIGHT or --scale S (--scale only for files that record "
                  "their source size)")
        return scale, size
    if args.input_path is None:
        _fail("give --input_path (an image or a folder), or --gaussians FIELD.g2d")
    if args.output_path is None and args.save_gaussians is None:
        _fail("nothing to write: give --output_path and/or --save_gaussians")
    if args.output_path is not None and scale is None and size is None:
        _fail("give the output size with --scale (e.g. 4 or 2.5x3) or --size (e.g. 3840x2160)")
    if args.output_path is None and (scale is not None or size is not None):
        _fail("--scale/--size need --output_path")
    return scale, size


def _plan_jobs(args, inp: Path, folder_mode: bool, scale, size) -> Tuple[List[_Job], List[Path]]:
    """Inputs and outputs, all checked before anything is written. In a folder, an image whose
    header cannot be read (or whose output would be too large) is skipped with one warning."""
    inputs = _list_images(inp) if folder_mode else [inp]
    out_root = Path(args.output_path) if args.output_path is not None else None
    g_root = Path(args.save_gaussians) if args.save_gaussians is not None else None
    if folder_mode:
        for flag, root in (("--output_path", out_root), ("--save_gaussians", g_root)):
            if root is not None and root.exists() and not root.is_dir():
                _fail(f"{flag} {root} is a file, but --input_path is a folder: give a folder")
    else:
        if out_root is not None:
            if out_root.is_dir() or args.output_path.endswith(("/", os.sep)):
                out_root = out_root / (inp.stem + ".png")
            if out_root.suffix.lower() not in _OUTPUT_FORMATS:
                _fail(f"--output_path {out_root}: unsupported file ending {out_root.suffix!r}; use .png")
        if g_root is not None:
            if g_root.is_dir() or args.save_gaussians.endswith(("/", os.sep)):
                g_root = g_root / (inp.stem + ".g2d")
            if g_root.suffix.lower() != ".g2d":
                _fail(f"--save_gaussians {g_root}: a field is written as a .g2d file")
    jobs, failed = [], []
    for src in inputs:
        try:
            w, h = _open_header(src)
            osz = None
            if out_root is not None:
                osz = size if size is not None else output_size(w, h, scale)
        except RenderError as e:
            if not folder_mode:
                raise RenderError(f"{src}: {e}" if str(src) not in str(e) else str(e)) from None
            print(f"{_PROG}: warning: skipped {src}: {e}", file=sys.stderr)
            failed.append(src)
            continue
        dst = (out_root / (src.stem + ".png") if folder_mode else out_root) if out_root is not None else None
        gdst = (g_root / (src.stem + ".g2d") if folder_mode else g_root) if g_root is not None else None
        if dst is not None and dst.exists() and dst.resolve() == src.resolve():
            _fail(f"--output_path would overwrite the input {src}")
        jobs.append(_Job(src, (w, h), osz, dst, gdst))
    if not jobs:
        _fail(f"no image of {inp} could be read ({len(failed)} skipped)")
    # where the results go, before any encode (a folder render still skips a single image whose
    # file then cannot be written, and goes on)
    if folder_mode:
        for flag, root in (("--output_path", out_root), ("--save_gaussians", g_root)):
            if root is not None:
                check_folder_creatable(root, flag)
    else:
        if out_root is not None:
            check_output_file(out_root, "--output_path")
        if g_root is not None:
            check_output_file(g_root, "--save_gaussians")
    return jobs, failed


def _load_model_for(args, device: torch.device):
    from gsplat2d.sr.model import load_model, resolve_model_path

    mpath = resolve_model_path(args.model_path)
    try:
        model = load_model(mpath, map_location="cpu").to(device)
    except FileNotFoundError as e:
        _fail(f"{e}" + ("" if args.model_path else " (the shipped default model is missing)"))
    except ValueError as e:
        _fail(_short(e))
    if model.arch == "feature" and args.mode == "alpha":
        _fail(f"{mpath} is a feature-splatting model; it renders in sum mode only (drop --mode alpha)")
    mode = args.mode or model.config.mode
    if args.mode and args.mode != model.config.mode:
        print(f"{_PROG}: warning: {mpath} was trained for --mode {model.config.mode}, rendering with {args.mode}",
              file=sys.stderr)
    return model, mode


def _render_jobs(args, jobs: List[_Job], model, mode: str, device: torch.device, folder_mode: bool, say) -> List[Path]:
    """Encode, save and render every job (timed); in a folder an image that fails to decode is
    skipped with one warning. Returns the skipped inputs."""
    progress = None
    if folder_mode and not args.quiet:
        from tqdm import tqdm

        progress = tqdm(total=len(jobs), unit="img", file=sys.stderr)
        say = progress.write
    failed: List[Path] = []
    t_enc = t_ren = 0.0
    try:
        for job in jobs:
            try:
                lr = load_image_file(job.src)
            except RenderError as e:
                if not folder_mode:
                    raise
                print(f"{_PROG}: warning: skipped {job.src}: {e}", file=sys.stderr)
                failed.append(job.src)
                continue
            box = [lr]
            del lr  # _render_one frees it after the encode
            try:
                line, enc_ms, ren_ms = _render_one(job, box, model, mode, args, device)
            except OSError as e:  # this image's output cannot be written: the others still can
                if not folder_mode:
                    raise
                print(f"{_PROG}: warning: skipped {job.src}: cannot write its output: {e}", file=sys.stderr)
                failed.append(job.src)
                continue
            t_enc, t_ren = t_enc + enc_ms, t_ren + ren_ms
            say(line)
            if progress is not None:
                progress.update(1)
    finally:
        if progress is not None:
            progress.close()
    if len(jobs) > 1 and not args.quiet:
        print(f"{len(jobs) - len(failed)} images: encode {t_enc:.0f} ms, render {t_ren:.0f} ms in total")
    return failed


def _render_one(job: _Job, lr_box: List[torch.Tensor], model, mode: str, args, device: torch.device):
    """Encode the LR image in ``lr_box`` (taken out of it, so it is freed before the render: a
    10.7 MP photo's is 128 MB), save the field and render, as ``job`` says."""
    (w, h) = job.lr_size
    sync(device)
    t0 = time.perf_counter()
    field = encode_image(model, lr_box.pop())
    sync(device)
    enc_ms = (time.perf_counter() - t0) * 1e3
    ren_ms = 0.0
    line = f"{job.src}: {w}x{h}, {field.num_gaussians} Gaussians, encode {enc_ms:.1f} ms"
    if job.field_dst is not None:
        # Mode and LR size travel with the field, so it re-renders with --scale and the right mode.
        field.mode = mode  # the mode this command renders with (--mode may override the model's)
        field.save(job.field_dst, meta=decoder_meta(model))
        line += f", field -> {job.field_dst}"
    if job.dst is not None:
        ow, oh = job.out_size
        t2 = time.perf_counter()
        arr = render_to_array(field, ow, oh, mode=mode, window=args.window, backend=args.backend, model=model)
        sync(device)
        ren_ms = (time.perf_counter() - t2) * 1e3
        save_image_atomic(arr, job.dst)
        line += f", render {ow}x{oh} {ren_ms:.1f} ms -> {job.dst}"
    return line, enc_ms, ren_ms


def _run_field(args: argparse.Namespace, size: Optional[Tuple[int, int]], scale, say) -> int:
    gpath = Path(args.gaussians)
    out = Path(args.output_path)
    if out.is_dir() or args.output_path.endswith(("/", os.sep)):
        out = out / (gpath.stem + ".png")
    if out.suffix.lower() not in _OUTPUT_FORMATS:
        _fail(f"--output_path {out}: unsupported file ending {out.suffix!r}; use .png")
    device = apply_runtime_args(args)
    try:
        field, meta = Gaussians2D.load_with_meta(gpath, map_location=device)
    except FileNotFoundError as e:
        _fail(str(e))
    except (ValueError, TypeError) as e:
        _fail(f"bad Gaussian file: {_short(e)}")
    try:
        field = unbatch(field, str(gpath))
    except ValueError as e:
        _fail(str(e))
    decoder = _field_decoder(args, gpath, field, meta, device)
    if decoder is None and field.channels not in (1, 3):
        _fail(f"{gpath} has {field.channels} colour channels; an image needs 1 or 3")
    if decoder is not None and args.mode == "alpha":
        _fail(f"{gpath} is a feature field; it renders in its sum mode only (drop --mode alpha)")
    warning = degenerate_gaussians(field)
    if warning:
        print(f"{_PROG}: warning: {gpath}: {warning}", file=sys.stderr)
    field = field.to(torch.float32) if field.dtype != torch.float32 else field
    # Files record their render mode and source size when written by --save_gaussians or
    # gsplat2d fit; older files fall back to sum mode and need --size.
    mode = args.mode or meta.get("mode") or "sum"
    if args.mode and meta.get("mode") and args.mode != meta["mode"]:
        print(f"warning: {gpath} was made for mode {meta['mode']!r}; rendering with --mode {args.mode}",
              file=sys.stderr)
    if size is None:
        src_w, src_h = meta.get("width"), meta.get("height")
        if not (isinstance(src_w, int) and isinstance(src_h, int)):
            _fail(f"--scale: {gpath} does not record its source size; give --size WIDTHxHEIGHT")
        size = output_size(src_w, src_h, scale)
    w, h = size
    check_output_size(w, h)
    # Warm-up: JIT out of the timing.
    render_to_array(field, 8, 8, mode=mode, backend=args.backend, model=decoder)
    sync(device)
    t0 = time.perf_counter()
    arr = render_to_array(field, w, h, mode=mode, window=args.window, backend=args.backend, model=decoder)
    sync(device)
    ren_ms = (time.perf_counter() - t0) * 1e3
    save_image_atomic(arr, out)
    say(f"{gpath}: {field.num_gaussians} Gaussians, mode {mode}, render {w}x{h} {ren_ms:.1f} ms -> {out}")
    return 0




def _field_decoder(args, gpath: Path, field: Gaussians2D, meta: dict, device: torch.device):
    """The feature model that decodes ``field`` (``--model_path``, checked against the hash the
    file records), or None for a colour field."""
    if "decoder" not in meta:
        if args.model_path is not None:
            _fail(f"--model_path is only used with feature fields; {gpath} holds colours")
        return None
    want = meta.get("decoder_sha256")
    if meta["decoder"] != DECODER_KIND or not isinstance(want, str):
        _fail(f"{gpath} needs a decoder this gsplat2d does not know ({meta['decoder']!r})")
    from gsplat2d.sr.model import SHIPPED_MODELS, load_model

    model_path = args.model_path
    if model_path is None:  # a field of a shipped model decodes with it, by its hash
        model_path = next((name for name, h in _shipped_decoder_hashes(SHIPPED_MODELS) if h == want), None)
    if model_path is None:
        _fail(f"{gpath} holds a feature field ({field.channels} channels) that needs the decoder of the model "
              f"that encoded it: add --model_path MODEL.pth (decoder sha256 {want[:12]}...)")
    try:
        model = load_model(model_path, map_location="cpu").to(device)
    except FileNotFoundError as e:
        _fail(str(e))
    except ValueError as e:
        _fail(_short(e))
    if model.arch != "feature" or model.decoder_sha256() != want:
        _fail(f"--model_path {model_path} is not the model that encoded {gpath} (its decoder differs: "
              f"the file needs sha256 {want[:12]}...)")
    if field.channels != model.field_channels:
        _fail(f"{gpath} has {field.channels} channels; {model_path} decodes {model.field_channels}")
    return model


def _shipped_decoder_hashes(shipped):
    """``(name, decoder sha256)`` of each shipped feature model."""
    from gsplat2d.sr.model import load_model

    for name in shipped:
        model = load_model(name)
        if model.arch == "feature":
            yield name, model.decoder_sha256()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``gsplat2d render``; returns the exit status."""
    return run_command(_PROG, _build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
