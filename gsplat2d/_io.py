"""File helpers shared by checkpoints, Gaussian files, image inputs and image outputs."""

from __future__ import annotations

import os
import warnings
from typing import Any, BinaryIO, Callable, Union


__all__ = ["atomic_write", "short_load_error", "load_tensors"]


#: Temporary files of :func:`atomic_write` are named ``.<target name>.<pid>.<random>.g2dtmp<suffix>``.
_TMP_TAG = ".g2dtmp"


def atomic_write(path: Union[str, "os.PathLike[str]"], write: Callable[[BinaryIO], None], suffix: str = ".tmp") -> None:
    """Call ``write(f)`` on a temporary file in ``path``'s folder, fsync, then rename over
    ``path``: readers see the old file or the complete new one, never a partial write.

    The result keeps the permission bits of the file it replaces (else the usual
    ``0o666 & ~umask``). Any exception, Ctrl-C, or SIGTERM under the commands (which turn it
    into an exception) removes the temporary file; one left by a process killed with SIGKILL is
    removed by the next write to the same path (the temporary name carries the target's name and
    the writer's pid, and only files of dead processes are removed).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    _remove_stale_temps(folder, base)
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.{os.urandom(4).hex()}{_TMP_TAG}{suffix}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        try:
            mode = os.stat(path).st_mode & 0o7777  # keep the replaced file's permissions
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _remove_stale_temps(folder: str, base: str) -> None:
    """Remove ``atomic_write`` temporaries for ``base`` whose writer process no longer exists."""
    prefix = f".{base}."
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and _TMP_TAG in name):
            continue
        pid = name[len(prefix):].split(".", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            os.unlink(os.path.join(folder, name))
        except OSError:
            pass


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    return True


def short_load_error(e: BaseException) -> str:
    """``torch.load``'s error without its multi-paragraph advice (which suggests
    ``weights_only=False`` -- the wrong thing to do with an untrusted file)."""
    msg = str(e)
    if "PytorchStreamReader" in msg or "zip archive" in msg:  # torch's archive reader: a cut or damaged file
        return "the file is truncated or damaged (its archive cannot be read)"
    cut = msg.find("Weights only load failed")
    if cut >= 0:
        return (msg[:cut].rstrip(" :") + ": " if msg[:cut].strip() else "") + "the file is damaged, of another kind, or holds objects other than tensors"
    return msg.splitlines()[0] if msg else type(e).__name__


def load_tensors(path: str, map_location: Any, what: str) -> Any:
    """``torch.load(path, weights_only=True)``: only tensors and plain containers, never code
    from the file. Any failure is a ``ValueError`` "``path`` is not a readable ``what``: ..."
    without torch's advice; torch's pickle-protocol warning is not shown to the user."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable {what}: {short_load_error(e)}") from None
