"""File helpers shared by checkpoints, Gaussian files, image inputs and image outputs."""

from __future__ import annotations

import os
import tempfile
from typing import BinaryIO, Callable, Union


__all__ = ["atomic_write", "short_load_error"]


def atomic_write(path: Union[str, "os.PathLike[str]"], write: Callable[[BinaryIO], None], suffix: str = ".tmp") -> None:
    """Call ``write(f)`` on a temporary file in ``path``'s folder, fsync, then rename over
    ``path``: readers see the old file or the complete new one, never a partial write. The
    result gets the usual ``0o666 & ~umask`` mode (``mkstemp`` alone would leave 0600)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def short_load_error(e: BaseException) -> str:
    """``torch.load``'s error without its multi-paragraph advice (which suggests
    ``weights_only=False`` -- the wrong thing to do with an untrusted file)."""
    msg = str(e)
    cut = msg.find("Weights only load failed")
    if cut >= 0:
        return (msg[:cut].rstrip(" :") + ": " if msg[:cut].strip() else "") + "the file is damaged, of another kind, or holds objects other than tensors"
    return msg.splitlines()[0] if msg else type(e).__name__
