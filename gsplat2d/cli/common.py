"""One command-line dialect for ``gsplat2d train|render|test|demo|fit``.

* One error type, :class:`UserError`: a bad argument or input, printed as one line
  ``gsplat2d <command>: error: <what is wrong>`` and exit code :data:`EXIT_USER_ERROR` (2);
  runtime failures (out of memory, a full disk) exit 1, also as one line; Ctrl-C / SIGTERM
  exit 130 / 143. :func:`run_command` does this for every command.
* One flag style, the brief's snake_case (``--model_path``, ``--input_path``,
  ``--output_path``, ``--batch_size``); the dashed spelling is accepted as a hidden alias
  (:func:`add_alias`).
* Shared options (:func:`add_runtime_args`): ``--device``, ``--backend``, ``--num_threads``,
  ``--quiet``; one device picker (:func:`pick_device`), one size and scale parser
  (:func:`parse_size`, :func:`parse_scale`, :func:`check_output_size`).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
import re
import signal
import sys
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from gsplat2d.image_files import read_image_uint8, write_image_atomic
from gsplat2d._validate import BACKENDS, MAX_PIXELS, MAX_SIDE, check_output_pixels

__all__ = [
    "UserError", "EXIT_USER_ERROR", "MAX_SIDE", "MAX_PIXELS", "run_command", "add_alias",
    "add_runtime_args", "apply_runtime_args", "pick_device", "check_backend", "parse_scale",
    "parse_size", "check_output_size", "output_size", "check_folder_creatable", "load_image_file",
    "save_image_atomic",
]

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem with the user's arguments or inputs: one line, exit code 2, no traceback."""


def run_command(prog: str, parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int],
                argv: Optional[Sequence[str]]) -> int:
    """Parse ``argv`` and call ``run(args)``, turning every failure into one line on stderr
    prefixed with ``prog`` (the command as the user types it, e.g. ``gsplat2d render``).

    Exit status: ``run``'s return value; 2 for :class:`UserError` and argparse errors; 1 for
    runtime failures (``OSError``, ``RuntimeError``, ``MemoryError``, ``ValueError``); 130 for
    Ctrl-C and 143 for SIGTERM (both unwind normally, so temporary files are removed).
    """
    parser.prog = prog
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as e:  # --help (0) or an argparse error (2; message already printed)
        return int(e.code or 0)
    old = None
    try:
        old = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread
        pass
    try:
        return int(run(args) or 0)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except _Terminated:
        print(f"{prog}: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError, MemoryError) as e:
        print(f"{prog}: error: {type(e).__name__}: {_first_line(e)}", file=sys.stderr)
        return 1
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


class _Terminated(BaseException):
    pass


def _raise_terminated(signum, frame):  # pragma: no cover - exercised through a subprocess
    raise _Terminated()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def add_alias(parser, dest_flag: str, *aliases: str) -> None:
    """Accept ``aliases`` (e.g. ``--num-gaussians``) for the already added ``dest_flag``
    (``--num_gaussians``) without showing them in ``--help``."""
    action = next(a for a in parser._actions if dest_flag in a.option_strings)
    for alias in aliases:
        kwargs = {"dest": action.dest, "help": argparse.SUPPRESS, "default": argparse.SUPPRESS}
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                               argparse._StoreConstAction)):
            parser.add_argument(alias, action="store_const", const=action.const, **kwargs)
        else:
            parser.add_argument(alias, type=action.type, choices=action.choices, nargs=action.nargs,
                                metavar=action.metavar, **kwargs)


def check_folder_creatable(folder, flag: str) -> None:
    """:class:`UserError` unless ``folder`` is an existing writable folder or could be created
    (its nearest existing ancestor is a writable folder). Creates nothing: commands make their
    output folders only when they have something to write."""
    import os
    from pathlib import Path

    p = Path(folder).resolve()
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {folder} is a file; give a folder")
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise UserError(f"{flag} {folder}: {p} is a file, so the folder cannot be created")
    if not os.access(p, os.W_OK):
        raise UserError(f"{flag} {folder}: cannot write in {p}")


def check_output_file(path, flag: str) -> None:
    """:class:`UserError` unless a file can be written at ``path`` once the work is done: not a
    folder, and its folder exists and is writable or can be created (:func:`check_folder_creatable`).
    Every command checks its outputs with this before any work starts."""
    from pathlib import Path

    if Path(path).is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name")
    check_folder_creatable(Path(path).parent, f"{flag} {path}: folder")


def add_runtime_args(parser, *, backend: bool = True) -> None:
    """``--device``, ``--backend`` (optional), ``--num_threads`` and ``--quiet``."""
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda[:N]")
    if backend:
        parser.add_argument("--backend", default="auto", choices=BACKENDS,
                            help="rasterizer backend (auto: triton on CUDA, numba on CPU; torch: the "
                            "plain-PyTorch cross-check)")
    parser.add_argument("--num_threads", type=int, default=0,
                        help="CPU threads for torch (0: torch's default)")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")


def apply_runtime_args(args: argparse.Namespace) -> torch.device:
    """Validate and apply the shared options (threads, device, backend); returns the device."""
    if getattr(args, "num_threads", 0):
        if args.num_threads < 0:
            raise UserError(f"--num_threads must be >= 0, got {args.num_threads}")
        torch.set_num_threads(args.num_threads)
    device = pick_device(args.device)
    if hasattr(args, "backend"):
        check_backend(args.backend, device)
    return device


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; a clear
    :class:`UserError` for anything else or for CUDA on a machine without it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown --device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported --device {name!r} (use auto, cpu, cuda or cuda:N)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA device is available here (use --device cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def check_backend(backend: str, device: torch.device) -> None:
    """The rasterizer's own backend rule for ``device`` (``--backend triton`` needs CUDA tensors
    or Triton's interpreter), as a :class:`UserError`."""
    from gsplat2d.rasterize import _pick_backend

    try:
        _pick_backend(backend, device, 16)
    except RuntimeError as e:
        raise UserError(f"--backend {backend}: {e}") from None


_NUM = r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:nan|inf|infinity))\s*"


def parse_scale(text: str) -> Tuple[float, float]:
    """``"4"`` -> ``(4.0, 4.0)``; ``"2.5x3"`` -> ``(2.5, 3.0)`` (horizontal x vertical).

    Raises :class:`UserError` unless both factors are finite and positive."""
    s = str(text).strip()
    m = re.fullmatch(_NUM + r"(?:[xX*]" + _NUM + r")?", s, flags=re.IGNORECASE)
    if not m:
        raise UserError(f"--scale must be a number such as 4 or 3.7, or SXxSY such as 2.5x3; got {text!r}")
    sx = float(m.group(1))
    sy = float(m.group(2)) if m.group(2) is not None else sx
    for v in (sx, sy):
        if not math.isfinite(v) or v <= 0:
            raise UserError(f"--scale must be a finite number > 0, got {text!r}")
    return sx, sy


def parse_size(text: str, flag: str = "--size") -> Tuple[int, int]:
    """``"3840x2160"`` -> ``(3840, 2160)`` (width x height), checked by
    :func:`check_output_size`."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", str(text))
    if not m:
        raise UserError(f"{flag} must be WIDTHxHEIGHT in pixels, such as 3840x2160; got {text!r}")
    w, h = int(m.group(1)), int(m.group(2))
    check_output_size(w, h, what=f"{flag} {text}")
    return w, h


def check_output_size(width: int, height: int, what: str = "output") -> None:
    """:func:`gsplat2d._validate.check_output_pixels` as a :class:`UserError` prefixed with
    ``what`` (the flag and value the size came from)."""
    try:
        check_output_pixels(width, height)
    except ValueError as e:
        raise UserError(f"{what}: {e}") from None


def output_size(width: int, height: int, scale: Tuple[float, float]) -> Tuple[int, int]:
    """``(round(width * sx), round(height * sy))``, checked with :func:`check_output_size`."""
    sx, sy = scale
    fw, fh = width * sx, height * sy
    if fw > 2 * MAX_SIDE or fh > 2 * MAX_SIDE:  # before round(): keeps huge floats out of int()
        raise UserError(f"--scale {sx:g}x{sy:g} turns {width}x{height} into more than {MAX_SIDE} px per side")
    w, h = int(round(fw)), int(round(fh))
    check_output_size(w, h, what=f"{width}x{height} at --scale {sx:g}x{sy:g}")
    return w, h


def load_image_file(path: "str | os.PathLike[str]") -> torch.Tensor:
    """Decode an image to float32 ``[3, H, W]`` in ``[0, 1]`` (:func:`gsplat2d.image_files.read_image_uint8`:
    grey replicated, alpha dropped, palette expanded, 16/32-bit scaled to 8 bit)."""
    path = Path(path)
    try:
        rgb = read_image_uint8(path)
    except Image.DecompressionBombError as e:
        raise UserError(f"input image {path} is too large: {e}") from None
    except ValueError as e:
        raise UserError(f"input {path} is not a readable image: {e.__cause__ or e}") from None
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)


def save_image_atomic(array: np.ndarray, path: "str | os.PathLike[str]") -> None:
    """:func:`gsplat2d.image_files.write_image_atomic`, with the commands' error type."""
    try:
        write_image_atomic(array, path)
    except ValueError as e:
        if "file ending" in str(e):
            raise UserError(f"output {e}") from None
        raise
