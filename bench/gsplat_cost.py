"""Static SASS cost of gsplat's CUDA rasterizer per (Gaussian, pixel) pair, counted like ours.

gsplat2d costs its own Triton kernels with :mod:`gsplat2d.kernels.cost` (instructions a warp
issues per (Gaussian, pixel) pair in the main loop, read from ``nvdisasm -c`` output; method in
that module's docstring). This script applies the *same* counting code to the reference: the
3DGS rasterize-to-pixels forward and backward kernels of the gsplat library, compiled the way
gsplat compiles them. No GPU is needed. It is not run in CI: it downloads about 140 MB of wheels
(about 380 MB in the workdir once unpacked).

Run (from the repository root, in an environment where ``gsplat2d`` is installed)::

    python bench/gsplat_cost.py [--workdir DIR] [--out PATH] [--arch 90 80]

Default ``--workdir``: ``${XDG_CACHE_HOME:-~/.cache}/gsplat2d-gsplat-cost``; default ``--out``:
``bench/results/gsplat-<version>-cost-sm<arch>[-sm<arch>...].json`` (``--arch 90`` gives
``gsplat-1.5.3-cost-sm90.json``). Everything downloaded or built stays in the workdir; the Python
environment running the script is not modified (wheels go to ``pip install --target``).

Method
------
1. **Toolchain.** ``pip download gsplat==GSPLAT_VERSION --no-deps`` (a py3-none-any wheel that
   ships its CUDA sources under ``gsplat/cuda/csrc``), and ``pip install --no-deps --target``
   of the NVIDIA compiler wheels, all pinned: ``nvidia-cuda-nvcc`` (nvcc, ptxas, cudafe++),
   ``nvidia-nvvm`` (cicc), ``nvidia-cuda-crt`` (crt/ headers), ``nvidia-cuda-runtime``
   (cuda_runtime.h, cooperative_groups), ``nvidia-cuda-cccl`` (``<nv/target>``, needed by
   cooperative_groups; no 13.5 release exists, the newest is used; it holds headers only and
   does not change the device code) and ``nvidia-cuda-nvdisasm`` (the disassembler matching the
   compiler). nvcc finds its pieces through the wheel's ``bin/nvcc.profile``; the host
   compiler is the system ``g++`` (preprocessing only).
2. **Kernels, verbatim.** The ``__global__`` templates ``rasterize_to_pixels_3dgs_fwd_kernel`` and
   ``rasterize_to_pixels_3dgs_bwd_kernel`` are cut out of ``RasterizeToPixels3DGS{Fwd,Bwd}.cu`` by
   locating ``template <...> __global__ void <name>(`` and its matching closing brace (comments
   and literals skipped); their text is not modified. The generated translation unit includes
   gsplat's own headers (``gsplat/cuda/include``, glm from ``csrc/third_party/glm``) and
   instantiates ``<CDIM=3, float>`` explicitly. Stubs (nothing else is added):

   * ``gpuAtomicAdd(float *, float)``: the one ATen function the backward calls. Defined exactly
     as ATen's float overload (``ATen/cuda/Atomic.cuh``: ``return atomicAdd(address, val);``) so
     that torch's headers are not needed.
   * Includes of ``ATen/...`` and ``c10/...`` (used only by the ``at::Tensor`` launch wrappers,
     which are not compiled) and of ``Rasterization.h`` (declarations of those wrappers; needs
     ``at::optional``) are left out.
   * ``namespace cg = cooperative_groups;``: the alias the source files declare before the kernel.
   * The explicit instantiation ``template __global__ void <name><3, float>(...)`` with the
     kernel's own parameter list (``scalar_t`` written as ``float``) replaces gsplat's launch
     wrappers and their ``__INS__(3)`` instantiations.
3. **Flags** (``NVCC_FLAGS``): gsplat's JIT build (``gsplat/cuda/_backend.py``) passes
   ``-O3 -use_fast_math`` (unless ``FAST_COMPILE``/``NO_FAST_MATH``), and
   ``torch.utils.cpp_extension`` adds ``COMMON_NVCC_FLAGS`` (``-D__CUDA_NO_HALF*``,
   ``--expt-relaxed-constexpr``) and a ``-std`` flag; ``-arch=sm_XX -cubin`` stands for torch's
   ``-gencode=arch=compute_XX,code=sm_XX``. With nvcc 13.5.37 the torch additions and the
   ``-std`` level (17 or 20) give byte-identical SASS; ``-use_fast_math`` matters (without it the
   backward's full path is 271 instead of 260 instructions).
4. **Counting.** ``nvdisasm -c`` of the cubin, ``cuobjdump --dump-resource-usage`` (Triton's
   bundled cuobjdump) for registers, and :func:`gsplat2d.kernels.cost.loop_cost` with marker
   ``MUFU.EX2``. gsplat runs one thread per pixel and one Gaussian per inner-loop iteration, so
   ``pairs_per_iter`` is the number of ``MUFU.EX2`` per iteration (``marker_per_iter``; 1 unless
   nvcc unrolled the loop, which it does not here). The inner loop walks a batch of
   ``block_size`` = 16 x 16 = 256 Gaussians staged in shared memory, inside a batch loop:
   reported both without (``trips=()``) and with that loop amortised (``trips=(256 /
   pairs_per_iter,)``, i.e. full batches).

Two readings of the same SASS
-----------------------------
``as_compiled`` is :func:`loop_cost` on the listing as is: "full" is the longest iteration (every
optional block executed), "cheap" the shortest. For the backward these are not the iterations a
default gsplat launch runs, so a second reading, ``steady_state``, cuts two kinds of edges out of
the listing (rewriting branch instructions in the text; they still count as issued) and runs
:func:`loop_cost` again:

* **Branches that skip the exponential.** The backward evaluates ``__expf`` only ``if (valid)``;
  a warp with no valid lane (all outside the image or past their last contributor) jumps over it,
  and that 17-instruction iteration is :func:`loop_cost`'s cheap path. It is not a steady state:
  the batch loop starts at the warp's largest ``last_id``, so the lane holding it is valid in
  every iteration of a warp inside the image. A guarded forward branch inside the main loop from
  before the first ``MUFU.EX2`` to after it is cut; the cheap path then is "every lane evaluates
  the Gaussian, none passes ``alpha >= 1/255``" (39 on sm_90). The forward has no such branch.
* **``absgrad=False``.** gsplat's default launch passes ``v_means2d_abs = nullptr``; the backward
  then skips the ``warpSum`` of ``v_xy_abs_local`` (10 SHFL) and two atomics. The full path of
  ``as_compiled`` includes them (260 on sm_90, 236 without). The predicate ``v_means2d_abs !=
  nullptr`` is found by its parameter's constant-bank address (``EIATTR_KPARAM_INFO`` and
  ``EIATTR_PARAM_CBANK`` of ``cuobjdump -elf``): branches guarded by it are resolved as for a
  null pointer. The result is checked against the source (exactly 10 SHFL and 2 atomics fewer on
  the full path); ``checks`` in the JSON records it.

Results (nvcc 13.5.37, gsplat 1.5.3, C=3, float; instructions per pair, inner loop only; the
batch loop adds 48/256 = 0.19 (forward) and 68/256 = 0.27 (backward) on sm_90)::

    kernel  arch  as_compiled full / cheap  steady_state full / cheap  MUFU  registers
    fwd     90    52 / 31                   52 / 31                    1     45
    bwd     90    260 / 17  (55 SHFL)       236 / 39  (45 SHFL)        2     48
    fwd     80    51 / 31                   51 / 31                    1     40
    bwd     80    263 / 18                  239 / 40                   2     48

``steady_state`` reproduces the numbers of the issue this script was written for (sm_90: forward
full 52, cheap 31, 45 registers; backward full 236 with 2 MUFU and 45 SHFL, cheap 39, 48
registers); :func:`loop_cost` alone (``as_compiled``) differs for the backward for the two
reasons above. The main loops are not unrolled (``marker_per_iter`` = 1).

sm_80 and older: ptxas exits loops with ``@P CALL.REL.NOINC <label>``, a jump that does not
return; :mod:`gsplat2d.kernels.cost` treats a ``CALL`` to a local label as that jump.

Output: a JSON file (environment, source files with sha256, stubs, and per kernel and
architecture the registers, ``loop_instructions``, ``marker_per_iter`` and per-pair counts by
instruction class for the full and cheap paths, with and without the batch loop, for both
readings), written atomically, and a markdown table on stdout. Errors: one line on stderr naming
what failed, exit code 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from gsplat2d.kernels.cost import Function, Instr

GSPLAT_VERSION = "1.5.3"
#: nvidia-cuda-nvcc, -nvvm, -crt, -runtime and -nvdisasm share the CUDA release number.
CUDA_VERSION = "13.5.37"
#: nvidia-cuda-cccl has no 13.5 release; headers only (<nv/target> for cooperative_groups).
CCCL_VERSION = "13.3.5.0.6"
DEFAULT_ARCHS = ("90",)

#: gsplat's flags (gsplat/cuda/_backend.py), then those torch.utils.cpp_extension adds.
GSPLAT_NVCC_FLAGS = ("-O3", "-use_fast_math")
TORCH_NVCC_FLAGS = (
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
    "--expt-relaxed-constexpr",
    "-std=c++17",
)
NVCC_FLAGS = GSPLAT_NVCC_FLAGS + TORCH_NVCC_FLAGS

CDIM = 3
SCALAR = "float"
#: gsplat's default tile_size 16: 16 x 16 threads, one batch of 256 Gaussians in shared memory.
BLOCK_SIZE = 256
MARKER = "MUFU.EX2"
#: warpSum over a 32-lane warp: log2(32) butterfly shuffles per float.
SHFL_PER_WARP_SUM = 5

CSRC = "gsplat/cuda/csrc"
INCLUDE = "gsplat/cuda/include"
GLM = "gsplat/cuda/csrc/third_party/glm"
#: Header includes of the .cu files that only serve the at::Tensor launch wrappers.
OMITTED_INCLUDE_PREFIXES = ("ATen/", "c10/", "torch/")
OMITTED_INCLUDES = ("Rasterization.h",)

ATOMIC_STUB = """\
// Stub for ATen/cuda/Atomic.cuh (torch headers are not used): ATen's float overload, verbatim.
inline __device__ float gpuAtomicAdd(float *address, float val) {
  return atomicAdd(address, val);
}
"""

STUBS = (
    ("gpuAtomicAdd(float *, float): defined as in ATen/cuda/Atomic.cuh (return atomicAdd(address, "
     "val);) instead of including torch headers; the only ATen function the kernels call"),
    ("includes of ATen/* and c10/* (launch wrappers only) and of Rasterization.h (wrapper "
     "declarations using at::optional) left out; gsplat/cuda/include and glm are used as shipped"),
    "namespace cg = cooperative_groups; declared before the kernel, as in the source files",
    ("explicit instantiation template __global__ void <kernel><3, float>(<kernel's parameter "
     "list, scalar_t written as float>) in place of gsplat's launch wrappers and __INS__(3)"),
)


@dataclass(frozen=True)
class KernelSpec:
    key: str  # "fwd" / "bwd"
    source: str  # file name under gsplat/cuda/csrc
    name: str  # __global__ template name (namespace gsplat)
    #: pointer parameters gsplat's default launch passes as nullptr, with the change each makes
    #: to the full path (checked), e.g. absgrad=False -> v_means2d_abs = nullptr.
    null_pointers: dict[str, dict[str, int]] = field(default_factory=dict)


KERNELS = (
    KernelSpec("fwd", "RasterizeToPixels3DGSFwd.cu", "rasterize_to_pixels_3dgs_fwd_kernel"),
    KernelSpec(
        "bwd", "RasterizeToPixels3DGSBwd.cu", "rasterize_to_pixels_3dgs_bwd_kernel",
        # warpSum(v_xy_abs_local) (2 floats) and two gpuAtomicAdd of v_means2d_abs
        null_pointers={"v_means2d_abs": {"shfl": -2 * SHFL_PER_WARP_SUM, "atomic": -2}},
    ),
)

CLASS_KEYS = ("mufu", "fp32", "cmp_sel", "shfl", "shared", "global", "atomic", "barrier_fence",
              "int", "other", "total")


class CostError(Exception):
    """A step failed; the message is printed as one line and the script exits with status 2."""


# --------------------------------------------------------------------------------------------
# small helpers


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run(cmd: Sequence[str], what: str) -> str:
    """Run ``cmd``; return stdout, or raise :class:`CostError` naming ``what`` and the last
    meaningful line of its error output."""
    try:
        res = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    except OSError as exc:
        raise CostError(f"{what}: cannot run {cmd[0]}: {exc}") from None
    if res.returncode != 0:
        raise CostError(f"{what} failed (exit {res.returncode}): {last_error_line(res)}")
    return res.stdout


def last_error_line(res: subprocess.CompletedProcess) -> str:
    lines = [ln.strip() for ln in (res.stderr or res.stdout or "").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or ["no output"])[-1][:400]


def last_lines(text: str, n: int) -> str:
    return "; ".join(ln.strip() for ln in text.strip().splitlines()[-n:])


# --------------------------------------------------------------------------------------------
# 1. downloads


def pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]


def fetch_gsplat(workdir: Path, version: str) -> tuple[Path, Path]:
    """Download the gsplat wheel (no dependencies) and unpack it; returns (wheel, tree)."""
    wheels = workdir / "wheels"
    wheel = wheels / f"gsplat-{version}-py3-none-any.whl"
    if not wheel.is_file():
        wheels.mkdir(parents=True, exist_ok=True)
        run(pip("download", "--no-deps", "--only-binary=:all:", "--dest", str(wheels),
                f"gsplat=={version}"), f"pip download gsplat=={version}")
        if not wheel.is_file():
            raise CostError(f"pip download gsplat=={version} did not produce {wheel.name}")
    tree = workdir / f"gsplat-{version}"
    if not (tree / CSRC).is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=".gsplat-", dir=workdir))
        try:
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(tmp)
        except (OSError, zipfile.BadZipFile) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CostError(f"unpacking {wheel} failed: {exc}") from None
        shutil.rmtree(tree, ignore_errors=True)
        os.replace(tmp, tree)
    return wheel, tree


def cuda_packages(cuda: str, cccl: str) -> list[str]:
    return [f"nvidia-cuda-nvcc=={cuda}", f"nvidia-nvvm=={cuda}", f"nvidia-cuda-crt=={cuda}",
            f"nvidia-cuda-runtime=={cuda}", f"nvidia-cuda-nvdisasm=={cuda}",
            f"nvidia-cuda-cccl=={cccl}"]


def install_cuda(workdir: Path, cuda: str, cccl: str) -> Path:
    """``pip install --target`` the pinned compiler wheels; returns the toolkit root
    (the folder holding bin/nvcc, nvvm/, include/)."""
    target = workdir / f"cuda-{cuda}-cccl-{cccl}"
    if not _toolkit_roots(target):
        tmp = Path(tempfile.mkdtemp(prefix=".cuda-", dir=workdir))
        try:
            run(pip("install", "--no-deps", "--only-binary=:all:", "--no-compile",
                    "--target", str(tmp), *cuda_packages(cuda, cccl)),
                "pip install " + " ".join(cuda_packages(cuda, cccl)))
        except CostError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    roots = _toolkit_roots(target)
    if len(roots) != 1:
        raise CostError(f"expected one nvidia/cu*/bin/nvcc under {target}, found {len(roots)}")
    return roots[0]


def _toolkit_roots(target: Path) -> list[Path]:
    return sorted(p.parent.parent for p in target.glob("nvidia/cu*/bin/nvcc"))


def triton_tool(name: str) -> str:
    try:
        from triton import knobs
    except ImportError as exc:
        raise CostError(f"triton is needed for its bundled {name} ({exc}); or pass --{name}")
    return getattr(knobs.nvidia, name).path


# --------------------------------------------------------------------------------------------
# 2. kernel extraction and the translation unit


def matching_bracket(text: str, start: int) -> int:
    """Index of the bracket closing ``text[start]`` (``(`` or ``{``); comments, string and
    character literals are skipped."""
    opener = text[start]
    closer = {"(": ")", "{": "}"}[opener]
    depth, i, n = 0, start, len(text)
    while i < n:
        if text.startswith("//", i):
            i = text.find("\n", i)
            if i < 0:
                break
        elif text.startswith("/*", i):
            i = text.find("*/", i + 2)
            if i < 0:
                break
            i += 1
        elif text[i] in "\"'":
            quote = text[i]
            i += 1
            while i < n and text[i] != quote:
                i += 2 if text[i] == "\\" else 1
        elif text[i] == opener:
            depth += 1
        elif text[i] == closer:
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise CostError(f"unbalanced {opener!r} in kernel source")


def strip_comments(code: str) -> str:
    return re.sub(r"//[^\n]*|/\*.*?\*/", " ", code, flags=re.DOTALL)


@dataclass
class KernelSource:
    definition: str  # the template, verbatim
    template_params: str  # "<uint32_t CDIM, typename scalar_t>"
    params: str  # "(...)" verbatim, comments included
    param_names: list[str]
    includes: list[str]  # '#include' lines of the file that the TU keeps
    omitted_includes: list[str]


def extract_kernel(source_text: str, spec: KernelSpec) -> KernelSource:
    m = re.search(r"template\s*(<[^<>{};]*>)\s*__global__\s+void\s+" + re.escape(spec.name)
                  + r"\s*\(", source_text)
    if not m:
        raise CostError(f"{spec.source}: no '__global__ void {spec.name}(' template found")
    paren = m.end() - 1
    paren_end = matching_bracket(source_text, paren)
    brace = source_text.find("{", paren_end)
    if brace < 0 or source_text[paren_end + 1:brace].strip():
        raise CostError(f"{spec.source}: {spec.name}: no body after the parameter list")
    end = matching_bracket(source_text, brace)
    params = source_text[paren:paren_end + 1]
    names = [re.findall(r"\w+", p)[-1] for p in strip_comments(params[1:-1]).split(",")]
    kept: list[str] = []
    omitted: list[str] = []
    include_re = re.compile(r"^[ \t]*#include\s*[<\"]([^>\"]+)[>\"]", flags=re.MULTILINE)
    for inc in include_re.finditer(source_text):
        header = inc.group(1)
        bad = header.startswith(OMITTED_INCLUDE_PREFIXES) or header in OMITTED_INCLUDES
        (omitted if bad else kept).append(inc.group(0).strip())
    return KernelSource(source_text[m.start():end + 1], m.group(1), params, names, kept, omitted)


def translation_unit(src: KernelSource, spec: KernelSpec, version: str, source_sha: str) -> str:
    if re.sub(r"\s+", " ", src.template_params) != "<uint32_t CDIM, typename scalar_t>":
        raise CostError(f"{spec.name}: unexpected template parameters {src.template_params}")
    inst_params = re.sub(r"\bscalar_t\b", SCALAR, re.sub(r"\bCDIM\b", str(CDIM), src.params))
    needs_atomic = "gpuAtomicAdd" in src.definition
    return "\n".join([
        f"// Generated by bench/gsplat_cost.py from gsplat {version}: {CSRC}/{spec.source}",
        f"// (sha256 {source_sha}). The kernel between BEGIN and END is copied verbatim.",
        *src.includes,
        "",
        ATOMIC_STUB if needs_atomic else "",
        "namespace gsplat {",
        "namespace cg = cooperative_groups;",
        "",
        f"// ---- BEGIN {spec.source}: {spec.name} (verbatim) ----",
        src.definition,
        f"// ---- END {spec.source}: {spec.name} ----",
        "",
        f"template __global__ void {spec.name}<{CDIM}, {SCALAR}>{inst_params};",
        "",
        "} // namespace gsplat",
        "",
    ])


def compile_cubin(nvcc: Path, tu: Path, arch: str, includes: Sequence[Path], cubin: Path,
                  what: str) -> list[str]:
    cmd = [str(nvcc), "-cubin", f"-arch=sm_{arch}", *NVCC_FLAGS,
           *(f"-I{d}" for d in includes), "-o", str(cubin), str(tu)]
    env = {k: v for k, v in os.environ.items()
           if k not in ("NVCC_PREPEND_FLAGS", "NVCC_APPEND_FLAGS", "NVCC_CCBIN")}
    log = cubin.with_suffix(".nvcc.log")
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    except OSError as exc:
        raise CostError(f"nvcc for {what}: cannot run {nvcc}: {exc}") from None
    log.write_text(" ".join(cmd) + "\n\n" + res.stdout + res.stderr)
    if res.returncode != 0 or not cubin.is_file():
        raise CostError(f"nvcc failed for {what}: {last_error_line(res)} (log: {log})")
    return cmd


# --------------------------------------------------------------------------------------------
# 3. resource usage, parameter layout


def resource_usage(cuobjdump: str, cubin: Path, function: str) -> dict[str, int]:
    from gsplat2d.kernels.report import parse_resource_usage

    out = run([cuobjdump, "--dump-resource-usage", str(cubin)], f"cuobjdump {cubin.name}")
    usage = parse_resource_usage(out)
    if function not in usage:
        raise CostError(f"cuobjdump --dump-resource-usage: no entry for {function} in {cubin}")
    return usage[function]


def param_cbank_addresses(cuobjdump: str, cubin: Path, function: str) -> dict[int, int]:
    """``{parameter ordinal: constant-bank byte address}`` from the ``.nv.info.<function>``
    section of ``cuobjdump -elf`` (``EIATTR_KPARAM_INFO`` offsets + ``EIATTR_PARAM_CBANK``
    base)."""
    out = run([cuobjdump, "-elf", str(cubin)], f"cuobjdump -elf {cubin.name}")
    sections = re.split(r"^(\.\S+)\s*$", out, flags=re.MULTILINE)
    info = dict(zip(sections[1::2], sections[2::2])).get(f".nv.info.{function}", "")
    base = re.search(r"EIATTR_PARAM_CBANK\s+Format:\s*\S+\s+Value:\s*0x[0-9a-f]+\s+0x([0-9a-f]+)",
                     info, flags=re.IGNORECASE)
    params = re.findall(r"Ordinal\s*:\s*0x([0-9a-f]+)\s+Offset\s*:\s*0x([0-9a-f]+)", info,
                        flags=re.IGNORECASE)
    if not base or not params:
        return {}
    start = int(base.group(1), 16) & 0xFFFF  # value: size << 16 | offset
    return {int(o, 16): start + int(off, 16) for o, off in params}


# --------------------------------------------------------------------------------------------
# 4. counting


def costs(sass: str, function: str) -> dict[str, Any]:
    """:func:`loop_cost` without and with the batch loop; ``pairs_per_iter`` from the number of
    exponentials per main-loop iteration (one Gaussian each, one pixel per thread)."""
    from gsplat2d.kernels.cost import loop_cost

    probe = loop_cost(sass, function, 1, (), marker=MARKER)
    pairs = probe["marker_per_iter"]
    if pairs < 1:
        raise CostError(f"{function}: main loop has no {MARKER} on its longest path")
    inner = loop_cost(sass, function, pairs, (), marker=MARKER)
    batch = loop_cost(sass, function, pairs, (BLOCK_SIZE / pairs,), marker=MARKER)

    def keep(path: dict[str, float]) -> dict[str, float]:  # counts only, not the H100 bounds
        return {k: path[k] for k in CLASS_KEYS}

    return {
        "pairs_per_iter": pairs,
        "marker_per_iter": probe["marker_per_iter"],
        "loop_instructions": inner["loop_instructions"],
        "inner_loops": inner["inner_loops"],
        "batch_loop": batch["enclosing"][0] if batch["enclosing"] else None,
        "per_pair": {
            "inner_loop": {name: keep(p) for name, p in inner["paths"].items()},
            "with_batch_loop": {name: keep(p) for name, p in batch["paths"].items()},
        },
    }


#: ``{instruction address: function rewriting that listing line}``
LineEdits = dict[int, Callable[[str], str]]


def _rewrite_lines(sass: str, edits: LineEdits) -> str:
    out = []
    for line in sass.splitlines(keepends=True):
        m = re.match(r"\s*/\*([0-9a-fA-F]+)\*/", line)
        if m and int(m.group(1), 16) in edits:
            line = edits[int(m.group(1), 16)](line)
        out.append(line)
    return "".join(out)


CUT_LABEL = ".L_gsplat_cost_cut"  # a label that does not exist: the edge disappears


def _cut(target: str) -> Callable[[str], str]:
    return lambda line: line.replace(f"`({target})", f"`({CUT_LABEL})")


def _is_jump(ins: Instr) -> bool:
    return ins.base == "BRA" and not ins.opcode.startswith("BRA.DIV")


def _condition(ins: Instr) -> str | None:
    """Predicate of a conditional jump, ``"!P1"``-style: its guard (``@!P1 BRA``) or, on
    sm_100+, its predicate operand (``BRA.U !UP0, `(...)``); None if unconditional."""
    if not _is_jump(ins):
        return None
    if ins.guard and ins.guard != "@PT":
        return ins.guard[1:]
    head = ins.operands.split("`", 1)[0].strip(" ,")
    return head if re.fullmatch(r"!?U?P[0-6]", head) else None


def _always_taken(ins: Instr) -> Callable[[str], str]:
    """Drop the jump's condition (guard or predicate operand)."""
    cond = _condition(ins) or ""
    if ins.guard and ins.guard != "@PT":
        guard = re.escape(ins.guard)
        return lambda line: re.sub(r"(\*/\s+)" + guard + r"\s+", r"\1", line, count=1)
    return lambda line: re.sub(re.escape(cond) + r"\s*,\s*`", "`", line, count=1)


def marker_bypass_edits(fn: Function, marker: str) -> tuple[LineEdits, list[str]]:
    """Cut conditional forward jumps of the main loop from before its first ``marker`` to after
    it (the main loop: the smallest backward-jump span holding a marker)."""
    spans = []
    for i, ins in enumerate(fn.instrs):
        h = fn.labels.get(ins.target or "")
        if _is_jump(ins) and h is not None and h <= i and any(
                x.opcode.startswith(marker) for x in fn.instrs[h:i + 1]):
            spans.append((i - h, h, i))
    if not spans:
        return {}, []
    _, start, end = min(spans)
    mk = next(k for k in range(start, end + 1) if fn.instrs[k].opcode.startswith(marker))
    edits: LineEdits = {}
    notes: list[str] = []
    for k in range(start, mk):
        ins = fn.instrs[k]
        t = fn.labels.get(ins.target or "")
        if _condition(ins) and t is not None and mk < t <= end:
            edits[ins.addr] = _cut(ins.target)
            notes.append(f"cut {ins.opcode} on {_condition(ins)} to {ins.target} at "
                         f"{ins.addr:#06x}: skips {marker} at {fn.instrs[mk].addr:#06x}")
    return edits, notes


_ZERO = ("RZ", "URZ")
_TRUE = ("PT", "UPT")
_ISETP_NE = re.compile(r"U?ISETP\.NE(?:\.U32|\.U64)?\.AND(\.EX)?")


def null_pointer_edits(fn: Function, address: int, name: str) -> tuple[LineEdits, list[str]]:
    """Resolve jumps on ``pointer != nullptr`` for a null pointer parameter at constant-bank
    byte ``address``. The predicate P is recognised as the 64-bit compare with zero
    ``[U]ISETP.NE[.U32].AND P, PT, lo, RZ, PT`` + ``[U]ISETP.NE[.U32].AND.EX P, PT, hi, RZ, PT,
    P``, or ``ISETP.NE.U64.AND P, PT, lo, RZ, PT`` (sm_120) (operands in either order;
    ``lo``/``hi``: the parameter's ``c[0x0][...]`` words or the
    registers a ``ULDC.64``/``LDCU.64``/``LDC.64`` loaded them into), tracked in layout order;
    any other mention of P or write of those registers forgets them (conservative). Jumps on ``!P``
    become unconditional, jumps on ``P`` are cut. The caller checks the result."""
    lo, hi = f"c[0x0][{address:#x}]", f"c[0x0][{address + 4:#x}]"
    lo_regs, hi_regs = {lo}, {hi}
    pending: set[str] = set()
    nonnull: set[str] = set()
    edits: LineEdits = {}
    notes: list[str] = []

    def compares_with_zero(ops: list[str], regs: set[str]) -> bool:
        pair = {ops[2], ops[3]}
        return ops[1] in _TRUE and ops[4] in _TRUE and len(pair & set(_ZERO)) == 1 \
            and (pair - set(_ZERO)) <= regs

    for ins in fn.instrs:
        ops = [o.strip() for o in ins.operands.split(",")] if ins.operands else []
        cond = _condition(ins)
        if cond is not None:
            if cond.lstrip("!") in nonnull:
                taken = cond.startswith("!")
                edits[ins.addr] = _always_taken(ins) if taken else _cut(ins.target)
                notes.append(f"{name} == nullptr: {ins.opcode} on {cond} to {ins.target} at "
                             f"{ins.addr:#06x} {'always' if taken else 'never'} taken")
            continue
        dest = re.fullmatch(r"(U?R)(\d+)", ops[0]) if ops else None
        if ins.opcode in ("ULDC.64", "LDCU.64", "LDC.64") and dest and ops[1:] == [lo]:
            reg, n = dest.group(1), int(dest.group(2))
            lo_regs.add(f"{reg}{n}")
            hi_regs.add(f"{reg}{n + 1}")
            continue
        m = _ISETP_NE.fullmatch(ins.opcode)
        if m and not m.group(1) and len(ops) == 5 and compares_with_zero(ops, lo_regs):
            if ".U64." in ins.opcode:  # sm_120: one 64-bit compare
                pending.discard(ops[0])
                nonnull.add(ops[0])
            else:
                nonnull.discard(ops[0])
                pending.add(ops[0])
            continue
        if (m and m.group(1) and len(ops) == 6 and ops[0] in pending and ops[5] == ops[0]
                and compares_with_zero(ops, hi_regs)):
            pending.discard(ops[0])
            nonnull.add(ops[0])
            continue
        for tok in ops:
            reg = tok.lstrip("-!|").rstrip("|").split(".")[0]
            pending.discard(reg)
            nonnull.discard(reg)
        if dest:  # a register write: forget the pointer words it may overwrite
            reg, n = dest.group(1), int(dest.group(2))
            for r in range(n, n + (2 if ".64" in ins.opcode else 1)):
                lo_regs.discard(f"{reg}{r}")
                hi_regs.discard(f"{reg}{r}")
    return edits, notes


def steady_state(sass: str, function: str, spec: KernelSpec, cbank: dict[int, int],
                 param_names: list[str], as_compiled: dict[str, Any]) -> dict[str, Any]:
    """The ``steady_state`` reading (see the docstring): edited listing, re-costed, checked."""
    from gsplat2d.kernels.cost import parse_sass

    fn = parse_sass(sass)[function]
    edits, notes = marker_bypass_edits(fn, MARKER)
    checks: dict[str, Any] = {}
    for name, expect in spec.null_pointers.items():
        address = cbank.get(param_names.index(name))
        if address is None:
            checks[name] = {"ok": False, "why": "parameter address not found (cuobjdump -elf)"}
            continue
        more, more_notes = null_pointer_edits(fn, address, name)
        edits.update(more)
        notes += more_notes
        checks[name] = {"expected_full_path_change": expect}
    result = costs(_rewrite_lines(sass, edits), function)
    full_before = as_compiled["per_pair"]["inner_loop"]["full"]
    full_after = result["per_pair"]["inner_loop"]["full"]
    pairs = result["pairs_per_iter"]
    for name, check in checks.items():
        if "expected_full_path_change" not in check:
            continue
        got = {k: round((full_after[k] - full_before[k]) * pairs, 3) for k in check[
            "expected_full_path_change"]}
        check["full_path_change"] = got
        check["ok"] = got == {k: float(v) for k, v in check["expected_full_path_change"].items()}
    cheap = result["per_pair"]["inner_loop"]["cheap"]
    checks["cheap_path_evaluates_exponential"] = {"ok": cheap["mufu"] > 0}
    result.update(edits=notes, checks=checks)
    return result


# --------------------------------------------------------------------------------------------
# 5. report


def tool_version(path: str) -> str:
    try:
        res = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    except OSError as exc:
        return f"unavailable ({exc})"
    return last_lines(res.stdout, 2)


def host_compiler() -> str:
    """First line of ``g++ --version`` (nvcc's default host compiler; preprocessing only)."""
    try:
        res = subprocess.run(["g++", "--version"], capture_output=True, text=True, check=False)
    except OSError:
        return "unknown"
    return (res.stdout.strip().splitlines() or ["unknown"])[0]


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Temporary file in the same folder, fsync, rename (:func:`gsplat2d._io.atomic_write`)."""
    from gsplat2d._io import atomic_write

    payload = (json.dumps(data, indent=2) + "\n").encode()

    def write(f: BinaryIO) -> None:
        f.write(payload)

    try:
        atomic_write(path, write, suffix=".json")
    except OSError as exc:
        raise CostError(f"writing {path} failed: {exc}") from None


def markdown_table(kernels: dict[str, Any]) -> str:
    head = ("| kernel | arch | reading | full/pair | full +batch | cheap/pair | cheap +batch "
            "| MUFU | SHFL | regs |")
    rows = [head, "|---|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for name, per_arch in kernels.items():
        for arch, rec in per_arch["arch"].items():
            for reading in ("as_compiled", "steady_state"):
                r = rec[reading]
                inner, batch = r["per_pair"]["inner_loop"], r["per_pair"]["with_batch_loop"]
                rows.append(
                    f"| {name} | {arch} | {reading} | {inner['full']['total']:g} "
                    f"| {batch['full']['total']:.2f} | {inner['cheap']['total']:g} "
                    f"| {batch['cheap']['total']:.2f} | {inner['full']['mufu']:g} "
                    f"| {inner['full']['shfl']:g} | {rec['registers']} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------------------------


def default_workdir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "gsplat2d-gsplat-cost"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=default_workdir(),
                   help="cache folder for wheels, toolkit and builds (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON output (default: bench/results/gsplat-<ver>-cost-sm<arch>.json)")
    p.add_argument("--arch", nargs="+", default=list(DEFAULT_ARCHS),
                   help="SM versions, e.g. 90 80 (default: %(default)s)")
    p.add_argument("--gsplat", default=GSPLAT_VERSION, help="gsplat version (%(default)s)")
    p.add_argument("--cuda", default=CUDA_VERSION,
                   help="version of the nvidia-cuda-nvcc/-nvvm/-crt/-runtime/-nvdisasm wheels "
                        "(%(default)s)")
    p.add_argument("--cccl", default=CCCL_VERSION,
                   help="nvidia-cuda-cccl version (%(default)s)")
    p.add_argument("--nvdisasm", default=None, help="nvdisasm to use (default: the CUDA wheel's)")
    p.add_argument("--cuobjdump", default=None, help="cuobjdump to use (default: Triton's)")
    args = p.parse_args(argv)
    for a in args.arch:
        if not re.fullmatch(r"\d{2,3}[af]?", a):
            p.error(f"--arch: expected SM versions like 90 or 80, got {a!r}")
    return args


@dataclass
class Toolchain:
    nvcc: Path
    nvdisasm: str
    cuobjdump: str
    includes: list[Path]  # gsplat/cuda/include, glm
    build: Path  # build folder (one sub-folder per arch)


def measure(spec: KernelSpec, src: KernelSource, arch: str, tools: Toolchain, version: str,
            source_sha: str) -> tuple[dict[str, Any], list[str]]:
    """Compile, disassemble and cost one kernel for one arch; returns (record, nvcc command)."""
    from gsplat2d.kernels.cost import disassemble, parse_sass

    what = f"{spec.name} sm_{arch}"
    adir = tools.build / f"sm_{arch}"
    adir.mkdir(parents=True, exist_ok=True)
    tu, cubin = adir / f"{spec.key}.cu", adir / f"{spec.key}.cubin"
    tu.write_text(translation_unit(src, spec, version, source_sha))
    cubin.unlink(missing_ok=True)
    cmd = compile_cubin(tools.nvcc, tu, arch, tools.includes, cubin, what)
    try:
        sass = disassemble(str(cubin), tools.nvdisasm)
    except (RuntimeError, OSError) as exc:
        raise CostError(f"nvdisasm of {what}: {exc}") from None
    (adir / f"{spec.key}.sass").write_text(sass)
    funcs = [f for f in parse_sass(sass) if spec.name in f]
    if len(funcs) != 1:
        raise CostError(f"{cubin}: expected one function named like {spec.name}, found {funcs}")
    function = funcs[0]
    usage = resource_usage(tools.cuobjdump, cubin, function)
    try:
        as_compiled = costs(sass, function)
        steady = steady_state(sass, function, spec,
                              param_cbank_addresses(tools.cuobjdump, cubin, function),
                              src.param_names, as_compiled)
    except ValueError as exc:  # loop_cost: no loop holds the marker
        raise CostError(f"costing {what}: {exc}") from None
    if as_compiled["pairs_per_iter"] != 1:
        print(f"note: {what}: nvcc unrolled the main loop {as_compiled['pairs_per_iter']}x; "
              "pairs_per_iter set accordingly", file=sys.stderr)
    if as_compiled["batch_loop"] is None:
        print(f"warning: {what}: no loop encloses the main loop; 'with_batch_loop' equals "
              "'inner_loop'", file=sys.stderr)
    failed = [k for k, c in steady["checks"].items() if not c.get("ok")]
    if failed:
        print(f"warning: {what}: steady_state checks failed: {', '.join(failed)}",
              file=sys.stderr)
    record = {
        "function": function,
        "registers": usage["REG"], "stack_bytes": usage["STACK"],
        "local_bytes": usage["LOCAL"], "static_shared_bytes": usage["SHARED"],
        "as_compiled": as_compiled,
        "steady_state": steady,
    }
    return record, cmd


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or (Path(__file__).resolve().parent / "results" /
                       f"gsplat-{args.gsplat}-cost-{'-'.join('sm' + a for a in args.arch)}.json")
    try:
        import gsplat2d.kernels.cost  # binds gsplat2d; fails before any download
    except ImportError as exc:
        raise CostError(f"gsplat2d is not importable ({exc}); run `pip install -e .` first")
    workdir = args.workdir.expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    print(f"gsplat {args.gsplat}, CUDA wheels {args.cuda} (cccl {args.cccl}) in {workdir}",
          file=sys.stderr)
    wheel, tree = fetch_gsplat(workdir, args.gsplat)
    cuda = install_cuda(workdir, args.cuda, args.cccl)
    nvdisasm = args.nvdisasm or str(cuda / "bin" / "nvdisasm")
    if not args.nvdisasm and not Path(nvdisasm).is_file():
        nvdisasm = triton_tool("nvdisasm")
    tools = Toolchain(
        nvcc=cuda / "bin" / "nvcc", nvdisasm=nvdisasm,
        cuobjdump=args.cuobjdump or triton_tool("cuobjdump"),
        includes=[tree / INCLUDE, tree / GLM],
        build=workdir / "build" / f"gsplat-{args.gsplat}-cuda-{args.cuda}",
    )

    sources = [{"file": f"{INCLUDE}/{h}", "sha256": sha256(tree / INCLUDE / h)}
               for h in ("Common.h", "Utils.cuh")]
    kernels: dict[str, Any] = {}
    nvcc_cmd: list[str] = []
    for spec in KERNELS:
        path = tree / CSRC / spec.source
        try:
            text = path.read_text()
        except OSError as exc:
            raise CostError(f"gsplat {args.gsplat}: cannot read {CSRC}/{spec.source}: {exc}")
        digest = sha256(path)
        sources.append({"file": f"{CSRC}/{spec.source}", "sha256": digest})
        src = extract_kernel(text, spec)
        kernels[spec.name] = {
            "kernel": f"gsplat::{spec.name}<{CDIM}, {SCALAR}>", "source": f"{CSRC}/{spec.source}",
            "source_sha256": digest, "kept_includes": src.includes,
            "omitted_includes": src.omitted_includes, "arch": {},
        }
        for arch in args.arch:
            record, nvcc_cmd = measure(spec, src, arch, tools, args.gsplat, digest)
            kernels[spec.name]["arch"][f"sm_{arch}"] = record

    result = {
        "generated_by": "bench/gsplat_cost.py",
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "gsplat2d": getattr(gsplat2d, "__version__", "unknown"),
            "gsplat": {"version": args.gsplat, "wheel": wheel.name, "wheel_sha256": sha256(wheel)},
            "cuda_wheels": cuda_packages(args.cuda, args.cccl),
            "nvcc": tool_version(str(tools.nvcc)),
            "nvdisasm": tool_version(tools.nvdisasm),
            "cuobjdump": tool_version(tools.cuobjdump),
            "host_compiler": host_compiler(),
            "nvcc_flags": list(NVCC_FLAGS),
            "nvcc_command": [a.replace(str(workdir), "$WORKDIR") for a in nvcc_cmd],
            "archs": [f"sm_{a}" for a in args.arch],
        },
        "method": {
            "cost_module": "gsplat2d.kernels.cost.loop_cost",
            "marker": MARKER, "cdim": CDIM, "scalar": SCALAR, "block_size": BLOCK_SIZE,
            "pairs": "one pixel per thread, one Gaussian per MUFU.EX2 (pairs_per_iter = "
                     "marker_per_iter)",
            "with_batch_loop": "trips = (block_size / pairs_per_iter,): full 256-Gaussian batches",
            "as_compiled": "loop_cost on the listing as is (full: longest iteration, cheap: "
                           "shortest)",
            "steady_state": "edges cut: jumps skipping the exponential; jumps on "
                            "v_means2d_abs != nullptr resolved for absgrad=False (gsplat's "
                            "default); see bench/gsplat_cost.py",
        },
        "sources": sources,
        "stubs": list(STUBS),
        "kernels": kernels,
    }
    write_json_atomic(out, result)
    print(markdown_table(kernels))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CostError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
