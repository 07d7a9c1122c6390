"""Ahead-of-time compile report for the gsplat2d Triton kernels (no GPU needed).

Compiles every :class:`~gsplat2d.kernels._aot.AotSpec` listed in ``AOT_SPECS`` of
:mod:`gsplat2d.kernels.binning`, :mod:`gsplat2d.kernels.rasterize_fwd` and
:mod:`gsplat2d.kernels.rasterize_bwd` for NVIDIA (sm_80, sm_90) and AMD (gfx942, gfx90a) targets and reads the resource usage of
the result::

    python -m gsplat2d.kernels.report                   # table, sm_80, sm_90, gfx942, gfx90a
    python -m gsplat2d.kernels.report --json            # JSON: {"environment": ..., "records": [...]}
    python -m gsplat2d.kernels.report --arch 90 --fail-on-spills
    python -m gsplat2d.kernels.report --cost            # + instructions per (Gaussian, pixel) pair
    python -m gsplat2d.kernels.report --cost --check-budget   # exit 1 if a kernel got costlier

How the numbers are obtained:

* ``triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", cap, 32),
  options={"num_warps", "num_stages", "enable_fp_fusion", "maxnreg"})`` produces PTX and a cubin
  exactly as the JIT would: the options and the ``FAST`` constexpr are the launchers' own
  (``kernels/_target.py``), and pointer arguments get the 16-byte divisibility hint the JIT gives
  torch-allocated tensors (``--no-align`` turns that off).
* AMD targets (``GPUTarget("hip", "gfx942", 64)``) compile with ``FAST=False``, the portable
  path launches take there; registers (VGPRs + AGPRs), spills, scratch and LDS bytes come from
  the AMDGCN metadata. They are not costed; their spills are reported but do not fail
  ``--fail-on-spills``.
* ``cuobjdump --dump-resource-usage`` on that cubin gives registers (``REG``), local memory
  (``LOCAL``) and stack frame (``STACK``).
* The PTX is re-assembled with the same ``ptxas`` Triton used for that target (``ptxas`` for
  sm < 90, ``ptxas-blackwell`` otherwise), with Triton's flags plus ``-v``; its log gives spill
  store / load bytes (and a second register count, cross-checked against cuobjdump).
* Shared memory is ``compiled.metadata.shared`` (Triton's static + scratch allocation, bytes).
* Static cost (specs with ``pairs_per_iter``): the cubin is disassembled with the ``nvdisasm``
  Triton ships and the main Gaussian loop is costed per (Gaussian, pixel) pair by
  :mod:`gsplat2d.kernels.cost` (method in ``docs/design.md``): instructions by class on the
  longest ("full") and shortest ("cheap") loop path, and the issue-bound pairs/s of an H100.
  ``--check-budget`` compares with ``kernels/cost_budget.json`` (per-variant ceilings on
  instructions per pair and registers, plus the absolute targets of the C = 3 variants).
* Load-to-use distances (same specs): every global load of the main loop, its kind
  (``gaussian``: address from the list id loaded in the loop; ``list``: that id; ``other``) and
  how many issued instructions later it is first waited on, in the same iteration or round the
  back edge in the next (:func:`gsplat2d.kernels.cost.load_use`; ``--cost`` prints them).
  ``--check-budget`` also applies the budget file's ``load_use`` gate: in the ``C <= 4`` main
  loops no ``gaussian`` load may be waited on in its own iteration fewer than 64 instructions
  after issue.

The tools come from Triton's knobs, so ``TRITON_PTXAS_PATH``, ``TRITON_PTXAS_BLACKWELL_PATH`` and
``TRITON_CUOBJDUMP_PATH`` are honoured; by default they are the binaries bundled in the wheel
(``<triton>/backends/nvidia/bin``).

``TRITON_INTERPRET=1`` turns every ``@triton.jit`` function into an interpreter object that cannot
be compiled. When it is set (the test suite sets it), :func:`compile_report` and the command line
re-run the report in a child process with ``TRITON_INTERPRET`` removed from the environment.
Compilation always runs (``TRITON_ALWAYS_COMPILE=1`` in the child) so ``compile_s`` is a real
compile time, not a cache hit.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterable, Sequence

from gsplat2d.backends import triton_interpret
from gsplat2d.kernels._target import COMPILE_OPTIONS, fast_math_for

KERNEL_MODULES: tuple[str, ...] = (
    "gsplat2d.kernels.binning",
    "gsplat2d.kernels.rasterize_fwd",
    "gsplat2d.kernels.rasterize_bwd",
)

#: NVIDIA compute capabilities (ints) and AMD ``gfx`` targets (strings) the report compiles for.
#: The AMD targets compile with the portable (non-PTX) fast-math path, as launches there do; only
#: NVIDIA targets are costed and budgeted.
DEFAULT_ARCHS: tuple[int | str, ...] = (80, 90, "gfx942", "gfx90a")

# Maximum dynamic shared memory per block (opt-in), bytes.
SHARED_LIMIT: dict[int, int] = {
    70: 98304,
    75: 65536,
    80: 166912,
    86: 101376,
    87: 166912,
    89: 101376,
    90: 232448,
    100: 232448,
    120: 101376,
    "gfx90a": 65536,  # LDS per workgroup
    "gfx942": 65536,
}

MAX_REGISTERS = 255

_CHILD_FLAG = "GSPLAT2D_REPORT_CHILD"

_COLUMNS = (
    ("kernel", "kernel", "<"),
    ("arch", "target", "<"),
    ("warps", "num_warps", ">"),
    ("stages", "num_stages", ">"),
    ("regs", "registers", ">"),
    ("spill_st", "spill_stores", ">"),
    ("spill_ld", "spill_loads", ">"),
    ("local_B", "local_bytes", ">"),
    ("stack_B", "stack_bytes", ">"),
    ("shared_B", "shared_bytes", ">"),
    ("compile_s", "compile_s", ">"),
)


# --------------------------------------------------------------------------------------------
# environment helpers


def _clean_env(cached: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env[_CHILD_FLAG] = "1"
    if not cached:
        env["TRITON_ALWAYS_COMPILE"] = "1"
    return env


def parse_arch(text: str | int) -> int | str:
    """An NVIDIA compute capability (``"90"`` -> 90) or an AMD target (``"gfx942"``)."""
    s = str(text).strip().lower()
    if s.isdigit():
        return int(s)
    if s.startswith("gfx") and len(s) > 3:
        return s
    raise argparse.ArgumentTypeError(f"not a compute capability (80, 90) or AMD gfx target: {text!r}")


def _is_amd(cap: int | str) -> bool:
    return isinstance(cap, str)


def _is_interpreted(fn: Any) -> bool:
    return type(fn).__name__ == "InterpretedFunction"


def environment() -> dict[str, Any]:
    """Versions and tool paths the report was produced with."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as exc:  # pragma: no cover - triton missing
        info["triton"] = f"unavailable ({exc})"
    try:
        import torch

        info["torch"] = torch.__version__
    except Exception as exc:  # pragma: no cover
        info["torch"] = f"unavailable ({exc})"
    try:
        info["tools"] = {
            "ptxas": _tool("ptxas"),
            "ptxas_blackwell": _tool("ptxas_blackwell"),
            "cuobjdump": _tool("cuobjdump"),
            "nvdisasm": _tool("nvdisasm"),
        }
    except Exception as exc:  # pragma: no cover
        info["tools"] = f"unavailable ({exc})"
    return info


def _tool(name: str) -> dict[str, str]:
    from triton import knobs

    t = getattr(knobs.nvidia, name)
    return {"path": t.path, "version": t.version}


def _ptxas_for(cap: int):
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return get_ptxas(cap)
    except Exception:  # older/newer layouts: same rule as Triton 3.9
        from triton import knobs

        return knobs.nvidia.ptxas if cap < 90 else knobs.nvidia.ptxas_blackwell


def _sm_name(cap: int | str) -> str:
    if _is_amd(cap):
        return cap
    try:
        from triton.backends.nvidia.compiler import sm_arch_from_capability

        return sm_arch_from_capability(cap)
    except Exception:
        return f"sm_{cap}{'a' if cap >= 90 else ''}"


# --------------------------------------------------------------------------------------------
# parsing tool output

_RES_RE = re.compile(r"Function\s+(\S+):\s*\n\s*REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")
_SPILL_RE = re.compile(r"(\d+)\s+bytes stack frame,\s*(\d+)\s+bytes spill stores,\s*(\d+)\s+bytes spill loads")
_REGS_RE = re.compile(r"Used\s+(\d+)\s+registers")


def parse_resource_usage(text: str) -> dict[str, dict[str, int]]:
    """Parse ``cuobjdump --dump-resource-usage`` output into ``{function: {REG, STACK, SHARED, LOCAL}}``."""
    out = {}
    for m in _RES_RE.finditer(text):
        out[m.group(1)] = {
            "REG": int(m.group(2)),
            "STACK": int(m.group(3)),
            "SHARED": int(m.group(4)),
            "LOCAL": int(m.group(5)),
        }
    return out


def parse_ptxas_log(text: str) -> dict[str, int]:
    """Parse a ``ptxas -v`` log of a one-function PTX file (sums spills if several appear)."""
    stack = stores = loads = 0
    found = False
    for m in _SPILL_RE.finditer(text):
        found = True
        stack = max(stack, int(m.group(1)))
        stores += int(m.group(2))
        loads += int(m.group(3))
    regs = [int(m.group(1)) for m in _REGS_RE.finditer(text)]
    if not found or not regs:
        raise RuntimeError(f"could not parse ptxas -v output:\n{text}")
    return {"stack": stack, "spill_stores": stores, "spill_loads": loads, "registers": max(regs)}


# --------------------------------------------------------------------------------------------
# compiling one spec


def _attrs_for(spec, align_pointers: bool) -> dict:
    if not align_pointers:
        return {}
    names = list(spec.fn.arg_names)
    attrs = {}
    for name, ty in spec.signature.items():
        if isinstance(ty, str) and ty.startswith("*"):
            attrs[(names.index(name),)] = [["tt.divisibility", 16]]
    return attrs


def _specialised_ints(spec) -> list[str] | None:
    """Integer arguments of ``spec`` whose *value* the JIT specialises on (an int equal to 1
    becomes a constexpr, a multiple of 16 gets a divisibility hint): each such argument doubles
    the variants a launch can compile, and the AOT report builds only the plain one. None when
    the kernel is an interpreter object."""
    params = getattr(spec.fn, "params", None)
    if params is None:
        return None
    return [p.name for p in params
            if spec.signature.get(p.name) in ("i32", "i64", "u32", "u64") and not p.do_not_specialize]


def _options(spec, cap: int | str) -> dict:
    """The launch's compile options (``kernels/_target.py``): ``maxnreg`` on NVIDIA only."""
    opts = {"num_warps": spec.num_warps, "num_stages": spec.num_stages, **COMPILE_OPTIONS}
    if getattr(spec, "maxnreg", None) and not _is_amd(cap):
        opts["maxnreg"] = spec.maxnreg
    return opts


def _target(cap: int | str):
    from triton.backends.compiler import GPUTarget

    return GPUTarget("hip", cap, 64) if _is_amd(cap) else GPUTarget("cuda", cap, 32)


def _constexprs(spec, cap: int | str) -> dict:
    """The spec's constexprs with ``FAST`` as the launchers choose it for this target."""
    ce = dict(spec.constexprs)
    if "FAST" in ce:
        ce["FAST"] = fast_math_for(_target(cap).backend)
    return ce


_AMD_META = {k: re.compile(rf"\.{k}:\s+(\d+)") for k in (
    "vgpr_count", "agpr_count", "vgpr_spill_count", "sgpr_spill_count", "private_segment_fixed_size",
    "group_segment_fixed_size")}


def _measure_amd(rec: dict[str, Any], compiled: Any) -> None:
    """Registers (VGPRs + AGPRs), spills and memory of an AMD kernel, from its AMDGCN metadata."""
    asm: str = compiled.asm["amdgcn"]
    got = {k: int(m.group(1)) for k, rx in _AMD_META.items() if (m := rx.search(asm))}
    rec["function"] = getattr(compiled.metadata, "name", None) or rec["function"]
    rec["registers"] = got.get("vgpr_count", 0) + got.get("agpr_count", 0)
    rec["spill_stores"] = got.get("vgpr_spill_count", 0) + got.get("sgpr_spill_count", 0)
    rec["spill_loads"] = rec["spill_stores"]
    rec["local_bytes"] = got.get("private_segment_fixed_size")
    rec["shared_bytes"] = got.get("group_segment_fixed_size")


def _blank_record(spec, cap: int, module: str) -> dict[str, Any]:
    """The record of one (spec, arch) before compiling: every measurement None."""
    return {
        "kernel": spec.name,
        "function": getattr(spec.fn, "__name__", str(spec.fn)),
        "module": module,
        "arch": cap,
        "target": _sm_name(cap),
        "num_warps": spec.num_warps,
        "num_stages": spec.num_stages,
        "registers": None,
        "spill_stores": None,
        "spill_loads": None,
        "local_bytes": None,
        "stack_bytes": None,
        "shared_bytes": None,
        "shared_limit": SHARED_LIMIT.get(cap),
        "ptxas_registers": None,
        "compile_s": None,
        "cost": None,
        "cost_key": getattr(spec, "cost_key", None),
        "specialised_ints": _specialised_ints(spec),
        "error": None,
    }


def _cubin_usage(cubin_path: str, function: str) -> dict[str, int]:
    """``{REG, STACK, SHARED, LOCAL}`` of ``function`` in the cubin (of its first function
    when that name is not found)."""
    from triton import knobs

    res = subprocess.run(
        [knobs.nvidia.cuobjdump.path, "--dump-resource-usage", cubin_path],
        capture_output=True, text=True, check=True,
    )
    usage = parse_resource_usage(res.stdout)
    if not usage:
        raise RuntimeError(f"no function in cuobjdump output:\n{res.stdout}{res.stderr}")
    return usage.get(function) or next(iter(usage.values()))


def _ptxas_spills(ptx_path: str, md: Any, cap: int, out_path: str) -> dict[str, int]:
    """:func:`parse_ptxas_log` of the PTX re-assembled with ``-v`` by the same assembler, with
    the same flags, as Triton's ``make_cubin`` (a plain cubin does not record spills)."""
    cmd = [_ptxas_for(cap).path]
    cmd += ["-lineinfo"]
    if not getattr(md, "enable_fp_fusion", True):
        cmd += ["--fmad=false"]
    cmd += ["-v", "--regAllocOptLevel=2"]
    extra = getattr(md, "ptx_options", None)
    if extra:
        cmd += extra.split(" ")
    cmd += [f"--gpu-name={_sm_name(cap)}", ptx_path, "-o", out_path]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"ptxas -v failed ({' '.join(cmd)}):\n{res.stderr}")
    return parse_ptxas_log(res.stdout + res.stderr)


def _measure(rec: dict[str, Any], spec, cap: int, compiled: Any) -> None:
    """Fill ``rec`` with the resource usage (and, for costed specs, the main-loop cost) of the
    compiled kernel; the tools read files, so its cubin and PTX go to a temporary folder."""
    md = compiled.metadata
    rec["shared_bytes"] = int(md.shared)
    rec["function"] = md.name if getattr(md, "name", None) else rec["function"]
    cubin: bytes = compiled.asm["cubin"]
    ptx: str = compiled.asm["ptx"]

    with tempfile.TemporaryDirectory(prefix="gsplat2d-report-") as tmp:
        cubin_path = os.path.join(tmp, "k.cubin")
        ptx_path = os.path.join(tmp, "k.ptx")
        with open(cubin_path, "wb") as f:
            f.write(cubin)
        with open(ptx_path, "w") as f:
            f.write(ptx)

        fu = _cubin_usage(cubin_path, rec["function"])
        rec["registers"] = fu["REG"]
        rec["local_bytes"] = fu["LOCAL"]
        rec["stack_bytes"] = fu["STACK"]

        log = _ptxas_spills(ptx_path, md, cap, os.path.join(tmp, "v.cubin"))
        rec["spill_stores"] = log["spill_stores"]
        rec["spill_loads"] = log["spill_loads"]
        rec["ptxas_registers"] = log["registers"]

        if getattr(spec, "pairs_per_iter", None):
            from triton import knobs

            from gsplat2d.kernels.cost import disassemble, load_use, loop_cost

            sass = disassemble(cubin_path, knobs.nvidia.nvdisasm.path)
            rec["cost"] = loop_cost(sass, rec["function"], spec.pairs_per_iter,
                                    tuple(spec.trips))
            rec["cost"]["loads"] = load_use(sass, rec["function"])


def compile_spec(spec, cap: int | str, *, align_pointers: bool = True, module: str = "") -> dict[str, Any]:
    """Compile one spec for compute capability ``cap`` (or AMD target) and measure its resource
    usage."""
    import triton

    rec = _blank_record(spec, cap, module)
    if _is_interpreted(spec.fn):
        rec["error"] = "kernel was decorated under TRITON_INTERPRET=1; run the report without it"
        return rec
    try:
        src = triton.compiler.ASTSource(
            fn=spec.fn,
            signature=dict(spec.signature),
            constexprs=_constexprs(spec, cap),
            attrs=_attrs_for(spec, align_pointers),
        )
        t0 = time.perf_counter()
        compiled = triton.compile(src, target=_target(cap), options=_options(spec, cap))
        rec["compile_s"] = round(time.perf_counter() - t0, 3)
        if _is_amd(cap):
            _measure_amd(rec, compiled)
        else:
            _measure(rec, spec, cap, compiled)
    except Exception as exc:  # report and keep going with the other specs
        rec["error"] = f"{type(exc).__name__}: {exc}".strip()[:4000]
    return rec


def _compile_task(module: str, index: int, cap: int, align_pointers: bool) -> dict[str, Any]:
    mod = importlib.import_module(module)
    return compile_spec(mod.AOT_SPECS[index], cap, align_pointers=align_pointers, module=module)


# --------------------------------------------------------------------------------------------
# the report


def collect_specs(modules: Iterable[str] = KERNEL_MODULES) -> list[tuple[str, int, Any]]:
    """``[(module, index, spec)]`` for every spec in ``AOT_SPECS`` of each module."""
    out = []
    for name in modules:
        mod = importlib.import_module(name)
        specs = getattr(mod, "AOT_SPECS", None)
        if specs is None:
            raise AttributeError(f"{name} has no AOT_SPECS")
        for i, spec in enumerate(specs):
            out.append((name, i, spec))
    return out


def _in_process_report(archs, modules, jobs, align_pointers) -> list[dict[str, Any]]:
    specs = []
    broken = []
    for name in modules:  # a module that fails to import is reported, the others still compile
        try:
            specs += collect_specs([name])
        except Exception as exc:
            for cap in archs:
                broken.append({"kernel": name, "function": None, "module": name, "arch": cap,
                               "target": _sm_name(cap), "error": f"{type(exc).__name__}: {exc}"})
    if broken and not specs:
        return broken
    tasks = [(m, i, cap) for (m, i, _s) in specs for cap in archs]
    if jobs is None:
        jobs = 1
    if jobs <= 1 or len(tasks) <= 1:
        return broken + [compile_spec(s, cap, align_pointers=align_pointers, module=m)
                         for (m, _i, s) in specs for cap in archs]
    import concurrent.futures as cf
    import multiprocessing as mp

    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as ex:
        futs = [ex.submit(_compile_task, m, i, cap, align_pointers) for (m, i, cap) in tasks]
        return broken + [f.result() for f in futs]


def compile_report(archs: Sequence[int] = DEFAULT_ARCHS, modules: Sequence[str] = KERNEL_MODULES, *, jobs: int | None = None,
                   align_pointers: bool = True, timeout: float | None = None, cached: bool = False) -> list[dict[str, Any]]:
    """Compile every AOT spec for every arch; one record (dict) per (spec, arch).

    Records: ``kernel, function, module, arch, target, num_warps, num_stages, registers,
    spill_stores, spill_loads, local_bytes, stack_bytes, shared_bytes, shared_limit,
    ptxas_registers, compile_s, error`` (``error`` is None on success).

    If ``TRITON_INTERPRET`` is set, or the kernel modules were already imported under it, the
    report runs in a child process with a clean environment (``timeout`` seconds at most).
    ``cached=True`` lets the child reuse Triton's cache (same cubins, so the same registers and
    spills; ``compile_s`` is then not a compile time).
    """
    archs = [parse_arch(a) for a in archs]
    need_child = triton_interpret()
    if not need_child:
        for name in modules:
            mod = sys.modules.get(name)
            if mod is not None and any(_is_interpreted(s.fn) for s in getattr(mod, "AOT_SPECS", [])):
                need_child = True
                break
    if not need_child:
        return _in_process_report(archs, modules, jobs, align_pointers)
    return run_report_subprocess(archs, modules, jobs=jobs, align_pointers=align_pointers, timeout=timeout,
                                 cached=cached)["records"]


def run_report_subprocess(archs: Sequence[int] = DEFAULT_ARCHS, modules: Sequence[str] = KERNEL_MODULES, *, jobs: int | None = None,
                          align_pointers: bool = True, timeout: float | None = None, cached: bool = False) -> dict[str, Any]:
    """Run ``python -m gsplat2d.kernels.report --json`` with ``TRITON_INTERPRET`` removed."""
    cmd = [sys.executable, "-m", "gsplat2d.kernels.report", "--json", "--arch", *map(str, archs)]
    cmd += ["--modules", *modules]
    if jobs:
        cmd += ["--jobs", str(jobs)]
    if not align_pointers:
        cmd += ["--no-align"]
    if cached:
        cmd += ["--cached"]
    res = subprocess.run(cmd, env=_clean_env(cached), capture_output=True, text=True, timeout=timeout)
    try:
        return json.loads(res.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(
            f"report subprocess failed (exit {res.returncode}):\nstdout:\n{res.stdout[-4000:]}\n"
            f"stderr:\n{res.stderr[-8000:]}"
        ) from None


def has_spills(rec: dict[str, Any]) -> bool:
    return bool(rec.get("spill_stores") or rec.get("spill_loads"))


def format_table(records: Sequence[dict[str, Any]]) -> str:
    rows = [[h for h, _k, _a in _COLUMNS]]
    errors = []
    for r in records:
        row = []
        for _h, key, _a in _COLUMNS:
            v = r.get(key)
            row.append("-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v)))
        if r.get("error"):
            row[4] = "FAILED"
            errors.append(f"{r['kernel']} ({r['target']}): {r['error']}")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = []
    for j, row in enumerate(rows):
        cells = [c.ljust(w) if a == "<" else c.rjust(w) for c, w, (_h, _k, a) in zip(row, widths, _COLUMNS)]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    if errors:
        lines.append("")
        lines.append("errors:")
        lines += ["  " + e.replace("\n", "\n    ") for e in errors]
    return "\n".join(lines)


_COST_CLASSES = ("mufu", "fp32", "cmp_sel", "shfl", "shared", "global", "atomic", "barrier_fence",
                 "int", "other")

#: Default per-variant budget file (a regression gate: a change may not exceed it).
BUDGET_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cost_budget.json")


def format_cost_table(records: Sequence[dict[str, Any]]) -> str:
    """Instructions per (Gaussian, pixel) pair of every costed variant, by class."""
    head = ["kernel", "arch", "regs", "path", "instr/pair", *_COST_CLASSES, "H100 Gpairs/s"]
    rows = [head]
    for r in records:
        c = r.get("cost")
        if not c:
            continue
        for path in ("full", "cheap"):
            p = c["paths"][path]
            if path == "cheap" and p["total"] == c["paths"]["full"]["total"]:
                continue  # one path only
            rate = p.get("issue_bound_pairs_per_s")
            rows.append([r["kernel"], r["target"], str(r["registers"]), path, f"{p['total']:.1f}",
                         *(f"{p[k]:.2f}" for k in _COST_CLASSES),
                         f"{rate / 1e9:.0f}" if rate else "-"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    out = []
    for j, row in enumerate(rows):
        out.append("  ".join(c.ljust(w) if i < 2 or i == 3 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _distance(ld: dict[str, Any]) -> str:
    """``"same+7"`` (first waited on 7 instructions later in the same iteration), ``"next+31"``
    (only in the next iteration, 31 instructions round the back edge) or ``"-"`` (never)."""
    if ld["same_iteration"] is not None:
        return f"same+{ld['same_iteration']}"
    if ld["next_iteration"] is not None:
        return f"next+{ld['next_iteration']}"
    return "-"


def format_load_table(records: Sequence[dict[str, Any]]) -> str:
    """Load-to-use distance of every global load in each costed main loop
    (:func:`gsplat2d.kernels.cost.load_use`): one row per variant, one cell per ``gaussian`` or
    ``list`` load (``kind:opcode:distance``, in address order), then the ``other`` loads (the
    per-pixel re-reads of the C > 4 backward: hundreds) as a count and their shortest distance."""
    rows = [["kernel", "arch", "loads (kind:opcode:load-to-use)"]]
    for r in records:
        c = r.get("cost")
        if not c or "loads" not in c:
            continue
        cells = [f"{ld['kind']}:{ld['opcode']}:{_distance(ld)}" for ld in c["loads"]
                 if ld["kind"] != "other"]
        other = [ld for ld in c["loads"] if ld["kind"] == "other"]
        if other:
            same = [ld["same_iteration"] for ld in other if ld["same_iteration"] is not None]
            cells.append(f"other: {len(other)} loads" + (f", {len(same)} waited on in their "
                                                          f"iteration (min same+{min(same)})" if same else ""))
        rows.append([r["kernel"], r["target"], "  ".join(cells) or "(none)"])
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    out = []
    for j, row in enumerate(rows):
        out.append("  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2]]).rstrip())
        if j == 0:
            out.append("  ".join(["-" * widths[0], "-" * widths[1], "-" * len(row[2])]))
    return "\n".join(out)


_C_RE = re.compile(r",C=(\d+)\]")


def load_use_gate(rec: dict[str, Any], budget: dict[str, Any]) -> list[str]:
    """Violations of the latency-tolerance gate ``budget["load_use"] = {"min_distance", "max_c",
    "kinds"}``: in the main loop of a variant with ``C <= max_c``, every load of ``kinds``
    (default ``["gaussian"]``: address computed from the list id loaded in the loop) must be first
    waited on in the next iteration or at least ``min_distance`` instructions after issue."""
    gate = budget.get("load_use")
    c = rec.get("cost")
    if not gate or not c:
        return []
    m = _C_RE.search(rec["kernel"])
    if m is None or int(m.group(1)) > int(gate.get("max_c", 4)):
        return []
    key = f"{rec['kernel']}@sm_{rec['arch']}"
    if "loads" not in c:
        return [f"{key}: no load-to-use analysis in the record"]
    from gsplat2d.kernels.cost import load_use_violations

    bad = load_use_violations(c["loads"], int(gate["min_distance"]), tuple(gate.get("kinds", ["gaussian"])))
    return [f"{key}: {ld['kind']} load {ld['opcode']} at {ld['addr']:#06x} is waited on "
            f"{ld['same_iteration']} instructions later in the same iteration (< {gate['min_distance']})"
            for ld in bad]


def load_budget(path: str = BUDGET_PATH) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def check_budget(records: Sequence[dict[str, Any]], budget: dict[str, Any]) -> list[str]:
    """Violations (one line each) of ``budget`` by ``records``; empty when all hold.

    ``budget["variants"]["<kernel>@sm_<arch>"] = {"full", "cheap", "registers"}``: ceilings
    (instructions per pair, registers) a change may not exceed (``slack`` instructions per pair
    of headroom for rounding). ``budget["targets"][cost_key] = {"full", "cheap", "registers"}``:
    absolute ceilings for the variants carrying that ``cost_key`` on ``targets_arch``;
    ``budget["registers_c3"]``: register ceiling of every ``C=3`` variant there. A costed variant
    with no budget entry is a violation too (new kernels must be budgeted).
    ``budget["load_use"]``: the latency-tolerance gate of :func:`load_use_gate`.
    """
    bad = []
    slack = float(budget.get("slack", 0.0))
    variants = budget.get("variants", {})
    targets = budget.get("targets", {})
    t_arch = int(budget.get("targets_arch", 90))
    for r in records:
        c = r.get("cost")
        if not c:
            continue
        key = f"{r['kernel']}@sm_{r['arch']}"
        full, cheap = c["paths"]["full"]["total"], c["paths"]["cheap"]["total"]
        b = variants.get(key)
        if b is None:
            bad.append(f"{key}: no budget entry (full {full:.2f}, cheap {cheap:.2f}, "
                       f"{r['registers']} registers)")
        else:
            if full > b["full"] + slack:
                bad.append(f"{key}: {full:.2f} instructions per pair on the full path > budget "
                           f"{b['full']:.2f}")
            if cheap > b["cheap"] + slack:
                bad.append(f"{key}: {cheap:.2f} instructions per pair on the cheap path > budget "
                           f"{b['cheap']:.2f}")
            if r["registers"] > b["registers"]:
                bad.append(f"{key}: {r['registers']} registers > budget {b['registers']}")
        c3 = budget.get("registers_c3")
        if c3 and ",C=3]" in r["kernel"] and r["arch"] == t_arch and r["registers"] > c3:
            bad.append(f"{key}: {r['registers']} registers > {c3} (every C=3 variant)")
        bad += load_use_gate(r, budget)
        t = targets.get(r.get("cost_key") or "")
        if t and r["arch"] == t_arch:
            for what, val in (("full", full), ("cheap", cheap), ("registers", r["registers"])):
                if what in t and val > t[what]:
                    bad.append(f"{key}: {what} {val:.2f} > target {t[what]} ({r['cost_key']})")
    return bad


def budget_from(records: Sequence[dict[str, Any]], old: dict[str, Any] | None = None) -> dict[str, Any]:
    """A budget file holding the measured values of ``records`` (targets/slack kept from ``old``)."""
    out = {k: v for k, v in (old or {}).items() if k != "variants"}
    out.setdefault("slack", 0.25)
    variants = {}
    for r in records:
        c = r.get("cost")
        if c:
            variants[f"{r['kernel']}@sm_{r['arch']}"] = {
                "full": round(c["paths"]["full"]["total"], 3),
                "cheap": round(c["paths"]["cheap"]["total"], 3),
                "registers": r["registers"],
            }
    out["variants"] = dict(sorted(variants.items()))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m gsplat2d.kernels.report",
        description="Compile the gsplat2d Triton kernels ahead of time and report registers, spills and shared memory.",
    )
    p.add_argument("--json", action="store_true", help="print JSON {environment, records} instead of a table")
    p.add_argument("--arch", type=parse_arch, nargs="+", default=list(DEFAULT_ARCHS),
                   help="NVIDIA compute capabilities and AMD gfx targets (default: 80 90 gfx942 gfx90a)")
    p.add_argument("--fail-on-spills", action="store_true", help="exit 1 if any kernel spills registers on an NVIDIA target")
    p.add_argument("--jobs", "-j", type=int, default=None, help="parallel compile processes (default 1)")
    p.add_argument("--no-align", action="store_true", help="do not give pointer args the 16-byte divisibility hint")
    p.add_argument("--cached", action="store_true", help="allow Triton cache hits (compile_s is then not a compile time)")
    p.add_argument("--cost", action="store_true", help="also print instructions per (Gaussian, pixel) pair by class")
    p.add_argument("--check-budget", nargs="?", const=BUDGET_PATH, default=None, metavar="PATH",
                   help="exit 1 if a variant exceeds its stored cost/register budget (default file: kernels/cost_budget.json)")
    p.add_argument("--write-budget", default=None, metavar="PATH",
                   help="write the measured costs as a new budget file (targets kept from --check-budget's file)")
    p.add_argument("--modules", nargs="+", default=list(KERNEL_MODULES), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if triton_interpret() and not os.environ.get(_CHILD_FLAG):
        # @triton.jit functions would be interpreter objects: re-run without TRITON_INTERPRET.
        cmd = [sys.executable, "-m", "gsplat2d.kernels.report", *(sys.argv[1:] if argv is None else argv)]
        return subprocess.call(cmd, env=_clean_env(args.cached))
    if triton_interpret():
        print("error: TRITON_INTERPRET is set; kernels cannot be compiled", file=sys.stderr)
        return 2

    if not args.cached:
        os.environ["TRITON_ALWAYS_COMPILE"] = "1"  # real compile times; inherited by --jobs workers
    records = _in_process_report(args.arch, args.modules, args.jobs, not args.no_align)
    failed = [r for r in records if r.get("error")]
    spilled = [r for r in records if has_spills(r)]
    if args.json:
        json.dump({"environment": environment(), "records": records}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        env = environment()
        print(f"triton {env.get('triton')}, torch {env.get('torch')}; "
              f"shared limits: " + ", ".join(f"{_sm_name(a)}: {SHARED_LIMIT.get(a, '?')} B" for a in args.arch))
        print(format_table(records))
        if args.cost:
            print()
            print(format_cost_table(records))
            print()
            print(format_load_table(records))
        if spilled:
            print("\nspilling: " + ", ".join(f"{r['kernel']} ({r['target']})" for r in spilled))
    rc = 0
    if args.write_budget:
        old = load_budget(args.check_budget or BUDGET_PATH) if os.path.exists(args.check_budget or BUDGET_PATH) else None
        with open(args.write_budget, "w") as f:
            json.dump(budget_from(records, old), f, indent=1)
            f.write("\n")
    if args.check_budget:
        bad = check_budget(records, load_budget(args.check_budget))
        for line in bad:
            print(f"budget: {line}", file=sys.stderr)
        if bad:
            rc = 1
    if failed:
        return 1
    if args.fail_on_spills and any(not _is_amd(r["arch"]) for r in spilled):
        return 1  # AMD spills are reported, not gated: the launch configurations are NVIDIA's
    return rc


if __name__ == "__main__":
    sys.exit(main())
