"""Ahead-of-time compile check of every Triton kernel variant for sm_80, sm_90 and the AMD targets
gfx942 (MI300) and gfx90a (MI200), no GPU needed.

The conftest sets TRITON_INTERPRET=1, under which ``@triton.jit`` functions cannot be compiled, so
the report (``python -m gsplat2d.kernels.report --json``) runs once per session in a child process
with TRITON_INTERPRET removed. Each (spec, arch) is one test: it compiled and fits the arch's shared
memory; on NVIDIA it uses 1..255 registers and spills nothing. On the AMD targets the test is that
the launchers' portable fast-math path compiles (the inline PTX would not); their registers and
spills are reported, not gated (the C = 96 backward spills there: its launch configuration is
NVIDIA's). NVIDIA rasterizer variants also stay within their
stored per-pair instruction and register budget (``kernels/cost_budget.json``, a regression gate)
and their main loop evaluates exactly one exponential per (Gaussian, pixel) pair it claims.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import pytest

HAVE_TRITON = importlib.util.find_spec("triton") is not None
pytestmark = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")

ARCHS = (80, 90, "gfx942", "gfx90a")
SHARED_LIMIT = {80: 166912, 90: 232448, "gfx942": 65536, "gfx90a": 65536}
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
    pytest.param(mod, name, cap, id=f"{name}-{cap if isinstance(cap, str) else f'sm{cap}'}")
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
    assert rec["shared_bytes"] <= SHARED_LIMIT[arch], (
        f"{where}: {rec['shared_bytes']} B shared memory > {SHARED_LIMIT[arch]} B limit"
    )
    if isinstance(arch, str):  # AMD: compiles, and has registers; spills are reported only
        assert rec["registers"] > 0, where
        return
    assert 0 < rec["registers"] <= 255, f"{where}: {rec['registers']} registers"
    assert rec["spill_stores"] == 0 and rec["spill_loads"] == 0, (
        f"{where} spills: {rec['spill_stores']} B stored, {rec['spill_loads']} B loaded "
        f"({rec['registers']} registers, stack frame {rec['stack_bytes']} B)"
    )


def _costed_cases():
    # the EXACT forward variants (a launch with a non-finite colour) compile but are not costed
    return [c for c in _CASES if "rasterize_" in c.values[1] and ",exact]" not in c.values[1]
            and not isinstance(c.values[2], str)]


@pytest.fixture(scope="session")
def budget():
    from gsplat2d.kernels.report import BUDGET_PATH, load_budget

    return load_budget(BUDGET_PATH)


@pytest.mark.parametrize("mod,kernel,arch", _costed_cases())
def test_kernel_cost_within_budget(report, budget, mod, kernel, arch):
    from gsplat2d.kernels.report import check_budget

    rec = report[(kernel, arch)]
    assert rec["error"] is None, rec["error"]
    assert rec["cost"] is not None, f"{kernel}: no cost (pairs_per_iter missing from its AotSpec?)"
    bad = check_budget([rec], budget)
    assert not bad, "\n".join(bad) + (
        "\n(if the change is intended, regenerate the budget: python -m gsplat2d.kernels.report "
        "--cost --check-budget --write-budget kernels/cost_budget.json, and say why in the commit)")


@pytest.mark.parametrize("mod,kernel,arch", _costed_cases())
def test_main_loop_has_one_exponential_per_pair(report, mod, kernel, arch):
    """Cross-check of the per-pair normalisation: one iteration of the loop the cost report
    picked evaluates exactly ``pairs_per_iter`` exponentials (one per pair), so the loop is the
    Gaussian loop and the divisor is right."""
    c = report[(kernel, arch)]["cost"]
    assert c["marker_per_iter"] == c["pairs_per_iter"], (kernel, c["marker_per_iter"], c["pairs_per_iter"])
    assert c["inner_loops"] == 0, f"{kernel}: a loop nested in the Gaussian loop is counted once"


@pytest.mark.parametrize("mod,kernel,arch", [c for c in _CASES if c.values[2] == 90])
def test_sizes_are_never_specialised(report, mod, kernel, arch):
    """Every int argument is ``do_not_specialize``: the JIT then builds exactly the variant the AOT
    report compiled (an int equal to 1 would otherwise become a constexpr -- the cause of the
    old compile failure on one-tile-wide images -- and every new multiple-of-16 pattern would be
    another 0.4-1.2 s compile during training with random scales)."""
    rec = report[(kernel, arch)]
    assert rec["specialised_ints"] == [], f"{kernel}: {rec['specialised_ints']} lack do_not_specialize"
