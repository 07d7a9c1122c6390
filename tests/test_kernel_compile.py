"""Ahead-of-time compile check of every Triton kernel variant for sm_80 and sm_90 (no GPU needed).

The conftest sets TRITON_INTERPRET=1, under which ``@triton.jit`` functions cannot be compiled, so
the report (``python -m gsplat2d.kernels.report --json``) runs once per session in a child process
with TRITON_INTERPRET removed. Each (spec, arch) is one test: it compiled, uses 1..255 registers,
spills nothing and fits the arch's shared memory.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import pytest

HAVE_TRITON = importlib.util.find_spec("triton") is not None
pytestmark = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")

ARCHS = (80, 90)
SHARED_LIMIT = {80: 166912, 90: 232448}
KERNEL_MODULES = (
    "gsplat2d.kernels.binning",
    "gsplat2d.kernels.rasterize_fwd",
    "gsplat2d.kernels.rasterize_bwd",
)
REPORT_TIMEOUT_S = float(os.environ.get("GSPLAT2D_REPORT_TIMEOUT", "600"))


def _module_specs():
    """(module -> spec names, module -> import error) at collection time. Importing the kernel
    modules under the interpreter is fine: only the spec names are needed here."""
    names, errors = {}, {}
    if not HAVE_TRITON:
        return names, errors
    for mod in KERNEL_MODULES:
        try:
            m = importlib.import_module(mod)
            names[mod] = [s.name for s in m.AOT_SPECS]
        except Exception as exc:  # reported by test_module_has_aot_specs
            errors[mod] = f"{type(exc).__name__}: {exc}"
    return names, errors


_SPECS, _IMPORT_ERRORS = _module_specs()
_CASES = [
    pytest.param(mod, name, cap, id=f"{name}-sm{cap}")
    for mod, names in _SPECS.items()
    for name in names
    for cap in ARCHS
]


@pytest.fixture(scope="session")
def report():
    from gsplat2d.kernels.report import run_report_subprocess

    modules = [m for m in KERNEL_MODULES if m in _SPECS]
    if not modules:
        pytest.fail(f"no kernel module imports: {_IMPORT_ERRORS}")
    # parallel compiles (spawned workers) pay off from 2 cores; Triton's cache is reused (the
    # cubins, hence registers and spills, are the same; only compile_s loses its meaning)
    ncpu = os.cpu_count() or 1
    jobs = min(4, ncpu) if ncpu >= 2 else None
    out = run_report_subprocess(ARCHS, modules, jobs=jobs, timeout=REPORT_TIMEOUT_S, cached=True)
    return {(r["kernel"], r["arch"]): r for r in out["records"]}


@pytest.mark.parametrize("mod", KERNEL_MODULES, ids=[m.rsplit(".", 1)[1] for m in KERNEL_MODULES])
def test_module_has_aot_specs(mod):
    assert mod not in _IMPORT_ERRORS, f"{mod} does not import: {_IMPORT_ERRORS.get(mod)}"
    assert _SPECS[mod], f"{mod}.AOT_SPECS is empty"


def test_spec_names_unique():
    all_names = [n for names in _SPECS.values() for n in names]
    dup = sorted({n for n in all_names if all_names.count(n) > 1})
    assert not dup, f"duplicate AOT spec names: {dup}"


@pytest.mark.parametrize("mod,kernel,arch", _CASES)
def test_kernel_compiles_without_spills(report, mod, kernel, arch):
    rec = report.get((kernel, arch))
    assert rec is not None, f"{kernel} was not compiled for sm_{arch}"
    assert rec["error"] is None, f"{kernel} failed to compile for sm_{arch}:\n{rec['error']}"
    where = f"{kernel} on {rec['target']} ({rec['num_warps']} warps)"
    assert 0 < rec["registers"] <= 255, f"{where}: {rec['registers']} registers"
    assert rec["spill_stores"] == 0 and rec["spill_loads"] == 0, (
        f"{where} spills: {rec['spill_stores']} B stored, {rec['spill_loads']} B loaded "
        f"({rec['registers']} registers, stack frame {rec['stack_bytes']} B)"
    )
    assert rec["shared_bytes"] <= SHARED_LIMIT[arch], (
        f"{where}: {rec['shared_bytes']} B shared memory > {SHARED_LIMIT[arch]} B limit"
    )
