"""Process settings for gsplat2d's own commands, applied before torch is imported.

OpenMP's threads spin while they wait for work (``OMP_WAIT_POLICY=ACTIVE``, libgomp's default
when threads <= cores). With one busy process beside a command on a 2-core machine that spinning
fights the other process for the cores: a 200-step fit on the torch backend took 63.5 s instead
of 16.9 s idle, an x4 render 6.9 s instead of 3.7 s; with passive waiting 20.8 s and 4.0 s, and
idle within a few percent of the default (``bench/cpu_loaded_machine.sh``,
``bench/results/cpu-loaded-machine-amd-epyc-znver3-2026-12-07.md``). libgomp reads the policy once,
when torch loads it, so it is set here, for the ``gsplat2d`` console command and
``python -m gsplat2d...`` only (a program that imports gsplat2d keeps its own setting), and never
over one the user set.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def is_gsplat2d_command() -> bool:
    """Whether this process is a gsplat2d command (``gsplat2d ...`` or ``python -m gsplat2d...``)."""
    argv = list(getattr(sys, "orig_argv", []))
    if "-m" in argv:
        i = argv.index("-m")
        return i + 1 < len(argv) and argv[i + 1].split(".")[0] == "gsplat2d"
    return Path(sys.argv[0] if sys.argv else "").stem == "gsplat2d"


def apply_command_defaults() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` for a gsplat2d command whose torch is not loaded yet, unless set."""
    if is_gsplat2d_command() and "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
