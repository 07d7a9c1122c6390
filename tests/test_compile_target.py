"""What the compile target decides (``kernels/_target.py``): one reading of ``TRITON_INTERPRET``
for the whole package, Triton's own; inline-PTX fast math only for NVIDIA targets; FMA
contraction passed explicitly on every launch, with the same options the AOT report compiles."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gsplat2d.backends import triton_interpret

VALUES = ["1", "0", "true", "false", "TRUE", "yes", "no", "on", "off", "", "2", "y", " 1", "True "]


@pytest.mark.parametrize("value", VALUES, ids=[repr(v) for v in VALUES])
def test_triton_interpret_is_read_as_triton_reads_it(value, monkeypatch):
    pytest.importorskip("triton")
    code = "import sys; from triton._C.libtriton import getenv_bool; print(getenv_bool('TRITON_INTERPRET', False))"
    env = {"TRITON_INTERPRET": value, "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert triton_interpret() == (r.stdout.strip() == "True")


def test_fast_math_only_on_nvidia_targets():
    pytest.importorskip("triton")
    from gsplat2d.kernels._target import fast_math, fast_math_for

    assert fast_math_for("cuda") and not fast_math_for("hip") and not fast_math_for("cpu")
    assert triton_interpret() is True and fast_math() is False  # this suite runs interpreted here


def test_launches_and_report_compile_with_the_same_options():
    """FMA contraction is explicit (no Triton warning, the same kernels on 3.10) and the report's
    options for a spec are the launch's own."""
    pytest.importorskip("triton")
    from gsplat2d.kernels import rasterize_bwd, rasterize_fwd, report
    from gsplat2d.kernels._target import COMPILE_OPTIONS

    assert COMPILE_OPTIONS == {"enable_fp_fusion": True}
    for mod, backward in ((rasterize_fwd, False), (rasterize_bwd, True)):
        for spec in mod.AOT_SPECS:
            tile, C = int(spec.constexprs["TILE"]), spec.name.split("C=")[1].rstrip("]").split(",")[0]
            mode = spec.name.split("[")[1].split(",")[0]
            cfg = rasterize_fwd.launch_config(tile, int(C), backward=backward, mode=mode)
            opts = report._options(spec, 90)
            assert opts["enable_fp_fusion"] is True and opts["num_warps"] == cfg["num_warps"]
            assert opts.get("maxnreg") == cfg["maxnreg"], spec.name
            assert "maxnreg" not in report._options(spec, "gfx942")
            assert report._constexprs(spec, 90)["FAST"] is True
            assert report._constexprs(spec, "gfx942")["FAST"] is False
