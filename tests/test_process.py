"""gsplat2d's commands wait passively for OpenMP work (a loaded machine's 3.8x slowdown, see
``gsplat2d/_process.py``); a program that imports gsplat2d keeps its own setting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gsplat2d import _process


@pytest.mark.parametrize("orig, argv0, want", [
    (["python", "-m", "gsplat2d", "fit"], "-m", True),
    (["python", "-m", "gsplat2d.train", "--resume", "x"], "-m", True),
    (["python", "-m", "pytest", "-q"], "-m", False),
    (["/usr/bin/gsplat2d", "render"], "/usr/bin/gsplat2d", True),
    (["python", "my_script.py"], "my_script.py", False),
])
def test_which_processes_are_commands(monkeypatch, orig, argv0, want):
    monkeypatch.setattr(sys, "orig_argv", orig, raising=False)
    monkeypatch.setattr(sys, "argv", [argv0])
    assert _process.is_gsplat2d_command() is want


def _policy(code: str, env_extra: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_a_command_gets_passive_waiting_unless_the_user_chose():
    as_command = "import sys; sys.argv = ['/usr/bin/gsplat2d']; import gsplat2d, os; print(os.environ.get('OMP_WAIT_POLICY'))"
    as_library = "import gsplat2d, os; print(os.environ.get('OMP_WAIT_POLICY'))"
    torch_first = "import sys; sys.argv = ['gsplat2d']; import torch, gsplat2d, os; print(os.environ.get('OMP_WAIT_POLICY'))"
    assert _policy(as_command, {}) == "PASSIVE"
    assert _policy(as_command, {"OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
    assert _policy(as_library, {}) == "None"
    assert _policy(torch_first, {}) == "None"  # too late to matter: not set
