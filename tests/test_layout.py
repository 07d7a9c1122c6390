"""The package's architecture, checked: the rasterizer core knows nothing of the applications,
no module takes part in an import cycle, every module imports on its own, and ``import gsplat2d``
loads torch only (no pillow, torchmetrics, tqdm or triton of its own). The map is in
``docs/design.md``."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# installed names of the source folders (pyproject's package-dir mapping)
FOLDERS = {"gsplat2d": ROOT / "gsplat2d", "gsplat2d.kernels": ROOT / "kernels",
           "gsplat2d.train": ROOT / "train", "gsplat2d.eval": ROOT / "eval"}
APPLICATIONS = ("gsplat2d.sr", "gsplat2d.fitting", "gsplat2d.cli", "gsplat2d.train", "gsplat2d.eval")


def _modules() -> dict:
    """{dotted module name: path} of every module of the package."""
    out = {}
    for pkg, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if pkg == "gsplat2d" and parts and parts[0] in ("kernels", "train", "eval"):
                continue
            out[".".join([pkg, *parts])] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set:
    """gsplat2d modules that ``name`` imports anywhere in its file (top level or inside functions)."""
    tree = ast.parse(path.read_text())
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            mods = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {m for m in mods if m in MODULES and m != name}
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _is_app(mod: str) -> bool:
    return any(mod == a or mod.startswith(a + ".") for a in APPLICATIONS)


def test_core_knows_nothing_of_the_applications():
    bad = sorted(f"{m} imports {d}" for m, deps in GRAPH.items() if not _is_app(m) and m not in (
        "gsplat2d.__main__",) for d in deps if _is_app(d))
    assert not bad, bad


def test_no_import_cycles():
    """Including imports inside functions: a lazy cycle still ties two modules together."""
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = 1
        for d in sorted(GRAPH[m]):
            # a package's __init__ importing its own submodules is not a cycle of design
            if state.get(d) == 1 and not (m.startswith(d + ".")):
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_every_module_imports_alone():
    code = """
import importlib, sys
bad = []
for name in sys.argv[1:]:
    for k in [k for k in sys.modules if k == "gsplat2d" or k.startswith("gsplat2d.")]:
        del sys.modules[k]
    try:
        importlib.import_module(name)
    except SystemExit:
        pass  # a __main__ module runs its command
    except Exception as e:
        bad.append(f"{name}: {type(e).__name__}: {e}")
print("\\n".join(bad))
sys.exit(1 if bad else 0)
"""
    names = [m for m in sorted(MODULES) if not m.endswith("__main__")]
    r = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("heavy", ["PIL", "torchmetrics", "tqdm", "triton"])
def test_import_gsplat2d_loads_only_torch(heavy):
    code = (f"import sys, torch; before = set(sys.modules); import gsplat2d; "
            f"new = [m for m in set(sys.modules) - before if m.split('.')[0] == {heavy!r}]; "
            f"print(new); sys.exit(1 if new else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"import gsplat2d loads {r.stdout.strip()}"


def test_docs_hold_no_control_characters():
    """A backslash written through a Python string once became a tab (``\\times``) or a carriage
    return (``\\rceil``) in docs/theory.md's formulas; text files hold none of either."""
    root = Path(__file__).resolve().parents[1]
    bad = []
    for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for i, line in enumerate(p.read_bytes().split(b"\n"), 1):
            if any(c in line for c in (b"\t", b"\r", b"\x07", b"\x08", b"\x0b", b"\x0c")):
                bad.append(f"{p.name}:{i}")
    assert not bad, bad


# ---------------------------------------------------------------------------- applications' layers
#: The application packages. ``gsplat2d.cli`` (the command-line dialect) sits below all of them.
APP_PACKAGES = ("gsplat2d.sr", "gsplat2d.fitting", "gsplat2d.train", "gsplat2d.eval")


def _package(mod: str):
    return next((a for a in APP_PACKAGES + ("gsplat2d.cli",) if mod == a or mod.startswith(a + ".")), None)


def _package_edges(graph: dict) -> dict:
    """{package: {package it imports, with the first module pair that does}} over ``graph``."""
    edges: dict = {}
    for m, deps in sorted(graph.items()):
        for d in sorted(deps):
            a, b = _package(m), _package(d)
            if a and b and a != b:
                edges.setdefault(a, {}).setdefault(b, f"{m} -> {d}")
    return edges


def _package_cycle(edges: dict):
    """One cycle of the package graph as a list of 'module -> module' witnesses, or None."""
    state: dict = {}

    def visit(p, path):
        state[p] = 1
        for q, why in sorted(edges.get(p, {}).items()):
            if state.get(q) == 1:
                start = [x for x, _ in path].index(q)
                return [w for _, w in path[start + 1:]] + [why]
            if q not in state:
                found = visit(q, path + [(q, why)])
                if found:
                    return found
        state[p] = 2
        return None

    for p in sorted(edges):
        if p not in state:
            found = visit(p, [(p, None)])
            if found:
                return found
    return None


def test_no_import_cycles_between_applications():
    """Module-level acyclicity is not enough: ``sr`` importing ``eval.metrics`` while
    ``eval.cli`` imports ``sr.model`` ties the two packages together with no module cycle.
    The applications form layers: sr < eval < (train, fitting)."""
    assert _package_cycle(_package_edges(GRAPH)) is None, _package_cycle(_package_edges(GRAPH))
    # the check itself finds such a cycle (the layout before the demo moved to eval)
    tangled = {**GRAPH, "gsplat2d.sr.rendering": GRAPH["gsplat2d.sr.rendering"] | {"gsplat2d.eval.metrics"}}
    assert _package_cycle(_package_edges(tangled)) == ["gsplat2d.eval.cli -> gsplat2d.sr.model",
                                                       "gsplat2d.sr.rendering -> gsplat2d.eval.metrics"]


def test_command_line_helpers_import_no_application():
    bad = sorted(f"{m} imports {d}" for m, deps in GRAPH.items() if _package(m) == "gsplat2d.cli"
                 for d in deps if _package(d) not in (None, "gsplat2d.cli"))
    assert not bad, bad


# ---------------------------------------------------------------------------- documented paths
_DOC_ROOTS = ("gsplat2d/", "kernels/", "bench/", "tests/", "docs/", "eval/", "train/", "scripts/",
              "examples/", ".ci/")
_PATH_RE = re.compile(r"(?<![\w./-])((?:%s)[\w./\-*{},]*[\w/*}])" % "|".join(re.escape(r) for r in _DOC_ROOTS))


def _documented_paths(text: str) -> list:
    """Repository paths a document names: those with a file ending or a trailing slash (``train/val``
    in prose is not a path); ``{a,b}`` alternatives expanded, ``*`` kept as a glob."""
    out = []
    for raw in _PATH_RE.findall(text):
        raw = raw.rstrip(".,")
        m = re.search(r"\{([^{}]*)\}", raw)
        variants = [raw[: m.start()] + alt + raw[m.end():] for alt in m.group(1).split(",")] if m else [raw]
        out += [v for v in variants if v.endswith("/") or re.search(r"\.\w+$", v) or "*" in v]
    return out


def test_documented_paths_exist():
    """Every repository path the README, docs/ and bench/README.md name exists (a moved module or
    a renamed result file leaves a dead pointer otherwise)."""
    docs = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    named, missing = 0, []
    for doc in docs:
        for p in _documented_paths(doc.read_text()):
            named += 1
            found = list(ROOT.glob(p)) if "*" in p else [ROOT / p] if (ROOT / p).exists() else []
            if not found:
                missing.append(f"{doc.name}: {p}")
    assert named > 100, named  # the README alone names well over a hundred
    assert not missing, missing


def test_documented_path_finder_sees_moves():
    text = "see `gsplat2d/sr/demo.py` and bench/results/fit_kodak-amd-epyc-cpu-256crop.{json,md}; train/val"
    assert _documented_paths(text) == ["gsplat2d/sr/demo.py", "bench/results/fit_kodak-amd-epyc-cpu-256crop.json",
                                       "bench/results/fit_kodak-amd-epyc-cpu-256crop.md"]
    assert not (ROOT / "gsplat2d/sr/demo.py").exists()  # it moved: the test above would name it
