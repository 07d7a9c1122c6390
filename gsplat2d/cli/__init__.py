"""The ``gsplat2d`` console command: ``gsplat2d {train,render,test,fit,demo} ...``.

``python -m gsplat2d <command>`` is the same. Each subcommand is also a module
(``python -m gsplat2d.train``, ``python -m gsplat2d.sr.render``, ``python -m gsplat2d.eval``,
``python -m gsplat2d.fitting.fit``, ``python -m gsplat2d.eval.demo``); this only dispatches.
"""

from __future__ import annotations

import importlib
import sys
from typing import List, Optional

_COMMANDS = {
    "train": ("gsplat2d.train.cli", "train a super-resolution model (feature or colour)"),
    "render": ("gsplat2d.sr.render", "super-resolve an image (or re-render a .g2d field) at any size"),
    "test": ("gsplat2d.eval.cli", "validate a model: brief report or the Set5/Set14 benchmark protocol"),
    "fit": ("gsplat2d.fitting.fit", "fit an image (or a folder) with N 2D Gaussians; save a compact .g2d file"),
    "demo": ("gsplat2d.eval.demo", "super-resolve a bundled image at several scales with the default model"),
}


def _usage() -> str:
    lines = ["usage: gsplat2d <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {desc}" for name, (_, desc) in _COMMANDS.items()]
    lines += ["", "Run 'gsplat2d <command> --help' for a command's options; 'gsplat2d --version' for the version."]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("--version", "-V"):
        from gsplat2d import __version__

        print(f"gsplat2d {__version__}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in _COMMANDS:
        print(f"gsplat2d: unknown command {cmd!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(_COMMANDS[cmd][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
