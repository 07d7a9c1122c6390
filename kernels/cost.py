"""Static instruction cost of a compiled kernel's main loop, read from its SASS (no GPU needed).

The question this answers: how many instructions does a warp issue per (Gaussian, pixel) pair in
the steady state of a rasterizer? On H100/H200 this work is issue-bound (each SM sub-partition
issues one warp-instruction per clock), so fewer instructions per pair is higher throughput.

Method (every step can be repeated by hand on ``nvdisasm -c`` output):

1. **Parse** the disassembly of one function into instructions ``(address, guard predicate,
   opcode, operands)``; comments and ``NOP`` padding after the last ``EXIT``/self-branch are
   ignored.
2. **Control-flow graph.** Block leaders are the entry, every branch target and every instruction
   after a branch or ``EXIT``. Edges: fall-through (unless the block ends in an unguarded ``BRA``
   or ``EXIT``) and the branch target. ``BRA.DIV`` (taken only when the warp is *diverged*, i.e.
   the slow path of a warp-synchronous shuffle/vote) and ``WARPSYNC.COLLECTIVE`` targets are
   treated as not taken: on the hot path the warp is converged. A ``CALL`` to a subroutine
   symbol returns to the next instruction (its callee is not followed); a ``CALL`` to a local
   ``.L`` label is a jump (ptxas leaves loops that way on sm_80 and older).
3. **Loops** are natural loops of back edges ``u -> h`` where ``h`` dominates ``u``; loops with
   the same header are merged. The **main loop** is the innermost loop that contains the
   per-pair exponential (``MUFU.EX2``): every (Gaussian, pixel) pair evaluates exactly one.
4. **Paths.** Inside the main loop, with its back edges cut, every path from the header to a
   back edge is one steady-state iteration. The report gives the *longest* such path (the
   "full" path: every optional block executed) and the *shortest* (the "cheap" path a kernel
   takes when it skips the per-pixel work). Paths that leave the loop are not iterations.
   Nested loops inside the main loop are not expected; if present they are counted once and
   flagged (``inner_loops``).
5. **Per pair.** One main-loop iteration issues the path's instructions once per warp and
   covers ``pairs_per_iter`` pairs per thread (Gaussians per iteration x pixels per thread: a
   property of the kernel's block sizes, stated by the caller, e.g. 1 for gsplat's one pixel
   per thread and one Gaussian per iteration). Loops *enclosing* the main loop (e.g. a chunk
   loop that tests "all pixels done?" every 16 Gaussians, or gsplat's batch loop that stages
   256 Gaussians in shared memory) add their own longest path, excluding the blocks of loops
   nested in them, divided by ``pairs_per_iter * trips`` where ``trips[k]`` is the steady-state
   trip count of the loop one level further in (also stated by the caller).

   ``instructions per pair = path(main) / pairs_per_iter
                            + sum_k path(enclosing_k \\ inner) / (pairs_per_iter * prod(trips[:k+1]))``

6. **Classes** (by opcode, before the first ``.``): see :data:`CLASSES`. Every issued
   instruction counts once, predicated-off ones included (they still take an issue slot).

7. **Load-to-use distance** (:func:`load_use`). For every global load in the main loop
   (``LDG``/``LD``, any width: ``LDG.E.128`` writes four registers), the fewest issued
   instructions from the load to the first instruction that must wait for it: one that reads any
   of its destination registers (a ``.64`` operand ``R4.64`` reads R4 and R5, the last source of
   ``IMAD.WIDE`` is a register pair, a ``.64``/``.128`` store reads 2/4 data registers) or writes
   one (SASS scoreboards also hold a write-after-write). The search follows every path of the
   loop, round the back edge into the next iteration (so a value loaded at the bottom of
   iteration ``g`` and first read at the top of ``g + 1`` is "next iteration" with the distance
   round the back edge); paths that leave the loop end the search. ``same_iteration`` is the
   shortest distance to a waiting instruction reached without crossing the back edge (None if
   every path crosses it first), ``next_iteration`` the shortest one reached only after crossing
   it. Each load is classified by a flow-sensitive taint of the loop's registers: ``gaussian``
   when its address depends on a value loaded in the loop (the tile list's id; loop-carried
   values included), ``list`` when it does not but the value it loads feeds a ``gaussian``
   load's address (the id itself), ``other`` otherwise (e.g. a per-pixel re-read).

Issue bound: ``H100_ISSUE_SLOTS_PER_S / instructions_per_pair`` (132 SMs x 1.98 GHz x 4
sub-partitions x 32 threads); MUFU bound: ``H100_MUFU_PER_S / mufu_per_pair`` (16 MUFU
results per clock per SM).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from typing import Iterable, Sequence

__all__ = [
    "CLASSES", "H100_ISSUE_SLOTS_PER_S", "H100_MUFU_PER_S", "Instr", "Function", "parse_sass",
    "loop_cost", "load_use", "disassemble", "classify",
]

#: H100 SXM: 132 SMs x 1.98 GHz boost x 4 SMSPs x 32 lanes (one warp-instruction per SMSP per clock).
H100_ISSUE_SLOTS_PER_S = 132 * 1.98e9 * 128
#: H100 SXM: 16 MUFU (SFU) results per clock per SM.
H100_MUFU_PER_S = 132 * 1.98e9 * 16

#: Instruction classes, by base opcode (text before the first '.'). Anything else is "other".
CLASSES: dict[str, tuple[str, ...]] = {
    "mufu": ("MUFU",),
    "fp32": ("FADD", "FMUL", "FFMA", "FMNMX", "FADD32I", "FMUL32I", "FFMA32I", "FSWZADD", "FCHK",
             "FRND"),
    "cmp_sel": ("FSETP", "ISETP", "FSEL", "SEL", "PLOP3", "FSET", "ISET", "PSETP", "P2R", "R2P",
                "UISETP", "USEL", "UPLOP3", "UP2UR", "UR2UP", "VOTE", "VOTEU", "IMNMX", "VIMNMX"),
    "shfl": ("SHFL",),
    "shared": ("LDS", "STS", "LDSM", "STSM", "ATOMS", "LDGSTS"),
    "global": ("LDG", "STG", "LD", "ST", "LDL", "STL", "UBLKCP", "UTMALDG"),
    "atomic": ("RED", "REDG", "ATOM", "ATOMG", "REDUX"),
    "barrier_fence": ("BAR", "MEMBAR", "FENCE", "ERRBAR", "CGAERRBAR", "CCTL", "DEPBAR", "SYNCS",
                      "WARPSYNC", "BSSY", "BSYNC"),
    "int": ("IADD3", "IMAD", "LEA", "SHF", "LOP3", "IABS", "IADD", "IMUL", "VIADD", "UIADD3",
            "UIMAD", "ULEA", "USHF", "ULOP3", "SGXT", "BMSK", "FLO", "POPC", "BREV", "PRMT",
            "UPRMT", "USGXT", "IMAD.WIDE", "I2F", "F2I", "I2FP", "F2F", "F2IP", "FRND"),
}
_CLASS_OF = {op: cls for cls, ops in CLASSES.items() for op in ops}
CLASS_NAMES: tuple[str, ...] = (*CLASSES, "other")


def classify(opcode: str) -> str:
    """Class of an opcode such as ``"FSETP.GE.AND"`` (see :data:`CLASSES`)."""
    return _CLASS_OF.get(opcode.split(".", 1)[0], "other")


@dataclass(frozen=True)
class Instr:
    addr: int
    guard: str | None  # "@P0", "@!UP1", ... or None
    opcode: str  # "FSETP.GE.AND"
    operands: str
    target: str | None  # branch target label, if any

    @property
    def base(self) -> str:
        return self.opcode.split(".", 1)[0]


@dataclass
class Function:
    name: str
    instrs: list[Instr]
    labels: dict[str, int]  # label -> index of the instruction it precedes


_SECTION_RE = re.compile(r"^\s*\.section\s+\.text\.([^,\s]+)")
_LABEL_RE = re.compile(r"^\s*(\.L\w+|[A-Za-z_$][\w$.]*):\s*$")
_INSTR_RE = re.compile(
    r"^\s*/\*([0-9a-fA-F]+)\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)\s*(.*?)\s*;"
)
_TARGET_RE = re.compile(r"`\(([^)]+)\)")


def parse_sass(text: str) -> dict[str, Function]:
    """Functions of an ``nvdisasm -c`` listing (one per ``.text.<name>`` section)."""
    funcs: dict[str, Function] = {}
    cur: Function | None = None
    pending: list[str] = []
    for line in text.splitlines():
        m = _SECTION_RE.match(line)
        if m:
            cur = Function(m.group(1), [], {})
            funcs[cur.name] = cur
            pending = []
            continue
        if cur is None:
            continue
        s = line.split("//", 1)[0]
        if not s.strip():
            continue
        m = _INSTR_RE.match(s)
        if m:
            ops = m.group(4)
            t = _TARGET_RE.search(ops)
            ins = Instr(int(m.group(1), 16), (m.group(2) or "").strip() or None, m.group(3), ops,
                        t.group(1) if t else None)
            for lab in pending:
                cur.labels[lab] = len(cur.instrs)
            pending = []
            cur.instrs.append(ins)
            continue
        m = _LABEL_RE.match(s)
        if m:
            pending.append(m.group(1))
    return funcs


def disassemble(cubin_path: str, nvdisasm: str) -> str:
    """``nvdisasm -c`` of a cubin (code sections only)."""
    res = subprocess.run([nvdisasm, "-c", cubin_path], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"nvdisasm failed on {cubin_path}: {res.stderr.strip()[:2000]}")
    return res.stdout


# ------------------------------------------------------------------------------------------------
# control flow


_COLD_BRANCHES = ("BRA.DIV", "WARPSYNC.COLLECTIVE")


def _is_branch(ins: Instr) -> bool:
    if ins.base == "CALL":
        # sm_80 and older: ptxas also leaves loops with "@P CALL.REL.NOINC `(.L_x_N)", a jump to a
        # local label that never returns; a call to a subroutine symbol ($__internal_...) does.
        return (ins.target or "").startswith(".L")
    return ins.base in ("BRA", "JMP", "BRX", "JMX") and not ins.opcode.startswith("BRA.DIV")


def _unconditional(ins: Instr) -> bool:
    if ins.guard not in (None, "@PT"):
        return False
    # "BRA.U !UP0, `(...)" style: a predicate operand makes it conditional
    head = ins.operands.split("`", 1)[0]
    return not re.search(r"!?U?P[0-6T]\b", head) or "PT" == head.strip(" ,")


@dataclass
class _Block:
    start: int
    end: int  # exclusive instruction index
    succ: list[int] = field(default_factory=list)


def _blocks(fn: Function) -> tuple[list[_Block], dict[int, int]]:
    instrs = fn.instrs
    leaders = {0}
    for i, ins in enumerate(instrs):
        if ins.target is not None and _is_branch(ins) and ins.target in fn.labels:
            leaders.add(fn.labels[ins.target])
        if _is_branch(ins) or ins.base in ("EXIT", "RET", "BRX", "JMX"):
            if i + 1 < len(instrs):
                leaders.add(i + 1)
    order = sorted(leaders)
    blocks = [_Block(s, e) for s, e in zip(order, order[1:] + [len(instrs)])]
    at = {b.start: k for k, b in enumerate(blocks)}
    for k, b in enumerate(blocks):
        last = instrs[b.end - 1]
        falls = True
        if _is_branch(last):
            if last.target in fn.labels:
                b.succ.append(at[fn.labels[last.target]])
            if _unconditional(last):
                falls = False
        elif last.base in ("EXIT", "RET") and last.guard in (None, "@PT"):
            falls = False
        if falls and k + 1 < len(blocks):
            b.succ.append(k + 1)
    return blocks, at


def _reachable(blocks: list[_Block]) -> list[int]:
    seen, stack, order = set(), [0], []
    while stack:
        k = stack.pop()
        if k in seen:
            continue
        seen.add(k)
        order.append(k)
        stack.extend(blocks[k].succ)
    return sorted(order)


def _dominators(blocks: list[_Block], nodes: list[int]) -> dict[int, set[int]]:
    preds: dict[int, list[int]] = {k: [] for k in nodes}
    for k in nodes:
        for s in blocks[k].succ:
            if s in preds:
                preds[s].append(k)
    allset = set(nodes)
    dom = {k: set(allset) for k in nodes}
    dom[0] = {0}
    changed = True
    while changed:
        changed = False
        for k in nodes:
            if k == 0:
                continue
            ps = [dom[p] for p in preds[k]]
            new = set.intersection(*ps) | {k} if ps else {k}
            if new != dom[k]:
                dom[k] = new
                changed = True
    return dom


@dataclass
class Loop:
    header: int
    body: set[int]
    latches: set[int]
    parent: "Loop | None" = None
    children: list["Loop"] = field(default_factory=list)


def _loops(blocks: list[_Block]) -> list[Loop]:
    nodes = _reachable(blocks)
    dom = _dominators(blocks, nodes)
    preds: dict[int, list[int]] = {k: [] for k in nodes}
    for k in nodes:
        for s in blocks[k].succ:
            preds[s].append(k)
    by_header: dict[int, Loop] = {}
    for u in nodes:
        for h in blocks[u].succ:
            if h in dom[u]:  # back edge u -> h
                body, stack = {h, u}, [u]
                while stack:
                    x = stack.pop()
                    if x == h:
                        continue
                    for p in preds[x]:
                        if p not in body:
                            body.add(p)
                            stack.append(p)
                lp = by_header.setdefault(h, Loop(h, set(), set()))
                lp.body |= body
                lp.latches.add(u)
    loops = sorted(by_header.values(), key=lambda L: len(L.body))
    for i, L in enumerate(loops):
        for M in loops[i + 1:]:
            if L.body < M.body or (L.body <= M.body and L.header != M.header):
                L.parent = M
                M.children.append(L)
                break
    return loops


def _path(blocks, fn, loop: Loop, exclude: set[int], longest: bool) -> list[int]:
    """Blocks of the longest/shortest header -> back-edge path of ``loop`` (back edges cut;
    blocks in ``exclude`` (nested loops) are skipped over: their entries jump to their exits)."""
    body = loop.body
    cost = {k: (blocks[k].end - blocks[k].start) for k in body}

    def succ(k):
        out = []
        for s in blocks[k].succ:
            if s == loop.header or s not in body:
                continue
            out.append(s)
        return out

    # collapse excluded (nested-loop) blocks: treat them as zero-cost pass-through nodes with the
    # union of their out-of-region successors; their internal back edges are ignored
    def succ_x(k):
        res, stack, seen = [], list(succ(k)), set()
        while stack:
            s = stack.pop()
            if s in seen:
                continue
            seen.add(s)
            if s in exclude:
                stack.extend(t for t in succ(s) if t not in seen)
            else:
                res.append(s)
        return res

    nodes = [k for k in body if k not in exclude]
    # topological order by DFS from the header (the cut graph is acyclic)
    order, state = [], {}

    def visit(k):
        stack = [(k, iter(succ_x(k)))]
        state[k] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                state[node] = 2
                order.append(node)
            elif state.get(nxt) is None:
                state[nxt] = 1
                stack.append((nxt, iter(succ_x(nxt))))
            elif state.get(nxt) == 1:
                raise RuntimeError("cycle in the main loop body after cutting its back edges")

    visit(loop.header)
    order.reverse()
    ends = {k for k in nodes if loop.header in blocks[k].succ}  # latches (incl. through nested)
    for k in nodes:
        if any(s in exclude for s in succ(k)):
            # a path through a nested loop back to our header
            stack, seen = [s for s in succ(k) if s in exclude], set()
            while stack:
                s = stack.pop()
                if s in seen:
                    continue
                seen.add(s)
                if loop.header in blocks[s].succ:
                    ends.add(k)
                stack.extend(t for t in succ(s) if t in exclude)
    INF = float("inf")
    best: dict[int, float] = {k: (-INF if longest else INF) for k in order}
    prev: dict[int, int | None] = {}
    best[loop.header] = cost[loop.header]
    prev[loop.header] = None
    better = (lambda a, b: a > b) if longest else (lambda a, b: a < b)
    for k in order:
        if best[k] in (INF, -INF):
            continue
        for s in succ_x(k):
            v = best[k] + cost[s]
            if better(v, best[s]):
                best[s] = v
                prev[s] = k
    cands = [k for k in ends if best.get(k) not in (None, INF, -INF)]
    if not cands:
        raise RuntimeError("no path from the loop header to a back edge")
    end = max(cands, key=lambda k: best[k]) if longest else min(cands, key=lambda k: best[k])
    path = []
    k: int | None = end
    while k is not None:
        path.append(k)
        k = prev[k]
    return path[::-1]


def _count(blocks, fn, path: Iterable[int]) -> dict[str, int]:
    out = {c: 0 for c in CLASS_NAMES}
    out["total"] = 0
    for k in path:
        for ins in fn.instrs[blocks[k].start:blocks[k].end]:
            out[classify(ins.opcode)] += 1
            out["total"] += 1
    return out


def _scale_add(acc: dict[str, float], counts: dict[str, int], f: float) -> None:
    for k, v in counts.items():
        acc[k] = acc.get(k, 0.0) + v * f


def loop_cost(
    sass: str,
    function: str | None,
    pairs_per_iter: float,
    trips: Sequence[float] = (),
    marker: str = "MUFU.EX2",
) -> dict:
    """Per-pair cost of ``function``'s main loop (see the module docstring for the method).

    Args:
        sass: ``nvdisasm -c`` text.
        function: function name (None: the only / first function).
        pairs_per_iter: (Gaussian, pixel) pairs one thread covers per main-loop iteration.
        trips: steady-state trip counts, innermost first: ``trips[0]`` iterations of the main
            loop per iteration of its enclosing loop, and so on. Enclosing loops beyond
            ``len(trips)`` are not counted (per-tile setup).
        marker: opcode prefix identifying the main loop (innermost loop containing it).

    Returns a dict with ``paths`` (``{"full": {...}, "cheap": {...}}``, each the per-pair count
    by class plus ``total``), ``loop_instructions`` (raw counts of the longest main-loop path),
    ``marker_per_iter``, ``inner_loops`` and ``enclosing`` (loops added with their trip counts).
    """
    funcs = parse_sass(sass)
    if not funcs:
        raise ValueError("no function found in the SASS listing")
    fn = funcs[function] if function else next(iter(funcs.values()))
    blocks, _ = _blocks(fn)
    loops = _loops(blocks)

    def has_marker(L):
        return any(
            ins.opcode.startswith(marker)
            for k in L.body for ins in fn.instrs[blocks[k].start:blocks[k].end]
        )

    cands = [L for L in loops if has_marker(L)]
    if not cands:
        raise ValueError(f"{fn.name}: no loop contains {marker}")
    main = min(cands, key=lambda L: len(L.body))
    nested = set().union(*[c.body for c in main.children]) if main.children else set()
    result: dict = {"function": fn.name, "pairs_per_iter": pairs_per_iter, "paths": {},
                    "inner_loops": len(main.children), "enclosing": []}
    for name, longest in (("full", True), ("cheap", False)):
        path = _path(blocks, fn, main, nested, longest)
        raw = _count(blocks, fn, path)
        if nested:  # counted once (flagged)
            for c in main.children:
                _scale_add(raw, _count(blocks, fn, sorted(c.body)), 1.0)
        per = {k: v / pairs_per_iter for k, v in raw.items()}
        if name == "full":
            result["loop_instructions"] = raw["total"]
            result["marker_per_iter"] = sum(
                1 for k in path for ins in fn.instrs[blocks[k].start:blocks[k].end]
                if ins.opcode.startswith(marker)
            )
        result["paths"][name] = per
    # enclosing loops
    scale = pairs_per_iter
    inner = main
    for t in trips:
        outer = inner.parent
        if outer is None:
            break
        scale *= t
        excl = set().union(*[c.body for c in outer.children])
        path = _path(blocks, fn, outer, excl, True)
        raw = _count(blocks, fn, path)
        result["enclosing"].append({"instructions": raw["total"], "per_pair_divisor": scale})
        for name in result["paths"]:
            _scale_add(result["paths"][name], raw, 1.0 / scale)
        inner = outer
    for name, per in result["paths"].items():
        for k in per:
            per[k] = round(per[k], 3)
        tot = per["total"]
        per["issue_bound_pairs_per_s"] = H100_ISSUE_SLOTS_PER_S / tot if tot else None
        per["mufu_bound_pairs_per_s"] = H100_MUFU_PER_S / per["mufu"] if per["mufu"] else None
    return result


# ------------------------------------------------------------------------------------------------
# load-to-use distances

#: Opcodes (base) whose first operand is not a destination (stores, branches, barriers, ...).
_NO_DEST = frozenset((
    "ST", "STG", "STS", "STL", "RED", "REDG", "BRA", "BRX", "JMP", "JMX", "CALL", "RET", "EXIT",
    "BAR", "BSSY", "BSYNC", "WARPSYNC", "NOP", "MEMBAR", "FENCE", "ERRBAR", "CCTL", "DEPBAR",
    "YIELD", "NANOSLEEP", "KILL", "BPT", "STSM", "SYNCS", "CGAERRBAR",
))
#: Global loads (register destination).
_GLOBAL_LOADS = frozenset(("LDG", "LD"))
_REG_TOKEN = re.compile(r"(?<![\w.])(U?R)(\d+)((?:\.[A-Za-z0-9_]+)*)")
_PRED_TOKEN = re.compile(r"^!?U?P(?:[0-7]|T)$")


def _width(opcode: str) -> int:
    """Registers written by a wide destination (``LDG.E.128``: 4, ``.64``/``.WIDE``: 2). A type
    modifier such as ``.U64`` is not a width: ``SHF.L.U64.HI`` writes one register."""
    mods = opcode.split(".")[1:]
    if "128" in mods:
        return 4
    if any(m in ("64", "WIDE") for m in mods):
        return 2
    return 1


def _regs(token: str) -> list[str]:
    """Registers named by one operand (``R4.64`` -> R4, R5; ``-|R7|`` -> R7; ``RZ`` -> none)."""
    out = []
    for m in _REG_TOKEN.finditer(token):
        n = int(m.group(2))
        out.append(f"{m.group(1)}{n}")
        if ".64" in m.group(3):
            out.append(f"{m.group(1)}{n + 1}")
    return out


def _split_operands(operands: str) -> list[str]:
    return [o.strip() for o in operands.split(",") if o.strip()]


def defs_uses(ins: Instr) -> tuple[list[str], list[str]]:
    """(registers written, registers read) by one instruction; R and UR registers only
    (predicates are not tracked). See the module docstring, step 7."""
    ops = _split_operands(ins.operands)
    base = ins.base
    n_def = 0
    if ops and base not in _NO_DEST and not ops[0].lstrip("desc").startswith("["):
        n_def = 1
        if base in ("SHFL", "ATOM", "ATOMG", "ATOMS") and len(ops) > 1 and _PRED_TOKEN.match(ops[0]):
            n_def = 2  # "SHFL.BFLY PT, R10, R9, ...": predicate, then the register result
        while n_def < len(ops) and _PRED_TOKEN.match(ops[n_def]):
            n_def += 1  # carry / compare outputs ("IADD3 R4, P0, R2, ...", "ISETP P0, PT, ...")
    defs: list[str] = []
    for tok in ops[:n_def]:
        for r in _regs(tok):
            if r.startswith("UR") or r.startswith("R"):
                n = int(r.lstrip("UR"))
                pre = "UR" if r.startswith("UR") else "R"
                defs += [f"{pre}{n + j}" for j in range(_width(ins.opcode))]
    uses: list[str] = []
    srcs = ops[n_def:]
    wide_data = base in ("ST", "STG", "STS", "STL", "RED", "REDG", "ATOM", "ATOMG", "ATOMS")
    for j, tok in enumerate(srcs):
        regs = _regs(tok)
        last = j == len(srcs) - 1
        if regs and "[" not in tok and (
            (base == "IMAD" and ".WIDE" in ins.opcode and last) or wide_data
        ):
            # a 64-bit addend of IMAD.WIDE; a wide store's data registers
            w = 2 if base == "IMAD" else _width(ins.opcode)
            n = int(regs[0].lstrip("UR"))
            pre = "UR" if regs[0].startswith("UR") else "R"
            regs = [f"{pre}{n + k}" for k in range(w)]
        uses += regs
    return defs, uses


def _main_loop(fn: Function, marker: str):
    blocks, _ = _blocks(fn)
    loops = _loops(blocks)
    cands = [L for L in loops if any(
        ins.opcode.startswith(marker) for k in L.body for ins in fn.instrs[blocks[k].start:blocks[k].end])]
    if not cands:
        raise ValueError(f"{fn.name}: no loop contains {marker}")
    return blocks, min(cands, key=lambda L: len(L.body))


def _taint(fn: Function, blocks, loop: Loop) -> tuple[dict[int, bool], dict[int, set[int]]]:
    """Flow-sensitive taint of the loop: registers holding a value loaded by a global load of the
    loop (or computed from one), iterated to a fixed point round the back edges. Returns
    ``{load index: its address is tainted}`` and ``{load index: indices of the loads whose address
    its value reaches}``."""
    body = sorted(loop.body)
    # taint = {register: set of load indices it derives from}
    state_in: dict[int, dict[str, frozenset]] = {k: {} for k in body}
    addr_from: dict[int, set[int]] = {}
    feeds: dict[int, set[int]] = {}
    changed = True
    while changed:
        changed = False
        for k in body:
            st = dict(state_in[k])
            for i in range(blocks[k].start, blocks[k].end):
                ins = fn.instrs[i]
                defs, uses = defs_uses(ins)
                src = frozenset().union(*(st.get(r, frozenset()) for r in uses))
                if ins.base in _GLOBAL_LOADS:
                    addr_from.setdefault(i, set()).update(src)
                    for j in src:
                        feeds.setdefault(j, set()).add(i)
                    val = frozenset((i,))
                else:
                    val = src
                for r in defs:
                    if ins.guard in (None, "@PT"):
                        if val:
                            st[r] = val
                        else:
                            st.pop(r, None)
                    elif val:
                        st[r] = st.get(r, frozenset()) | val
            for s in blocks[k].succ:
                if s not in loop.body:
                    continue
                cur = state_in[s]
                for r, v in st.items():
                    if not v <= cur.get(r, frozenset()):
                        cur[r] = cur.get(r, frozenset()) | v
                        changed = True
    return {i: bool(v) for i, v in addr_from.items()}, feeds


def load_use(sass: str, function: str | None = None, marker: str = "MUFU.EX2") -> list[dict]:
    """Load-to-use distance of every global load in ``function``'s main loop (module docstring,
    step 7). One dict per load, in address order: ``addr``, ``opcode``, ``dest`` (registers),
    ``kind`` (``"gaussian"``, ``"list"``, ``"other"``), ``same_iteration`` / ``next_iteration``
    (issued instructions from the load to the first one waiting for it, or None) and ``use``
    (address of that instruction on the shortest path)."""
    import heapq

    funcs = parse_sass(sass)
    if not funcs:
        raise ValueError("no function found in the SASS listing")
    fn = funcs[function] if function else next(iter(funcs.values()))
    blocks, loop = _main_loop(fn, marker)
    block_of = {}
    for k in loop.body:
        for i in range(blocks[k].start, blocks[k].end):
            block_of[i] = k
    tainted, feeds = _taint(fn, blocks, loop)
    out = []
    for i in sorted(block_of):
        ins = fn.instrs[i]
        if ins.base not in _GLOBAL_LOADS:
            continue
        dest = set(defs_uses(ins)[0])
        best = {False: None, True: None}
        use_at = {False: None, True: None}
        # Dijkstra over (instruction index, crossed the back edge); distance = instructions issued
        heap = [(0, False, i)]
        seen = set()
        while heap:
            d, wrapped, j = heapq.heappop(heap)
            if (j, wrapped) in seen:
                continue
            seen.add((j, wrapped))
            if d > 0:
                dj, uj = defs_uses(fn.instrs[j])
                if dest & (set(uj) | set(dj)):
                    if best[wrapped] is None:
                        best[wrapped], use_at[wrapped] = d, fn.instrs[j].addr
                    continue  # this path waits here
            k = block_of[j]
            if j + 1 < blocks[k].end:
                heapq.heappush(heap, (d + 1, wrapped, j + 1))
                continue
            for s in blocks[k].succ:
                if s not in loop.body:
                    continue  # leaves the loop
                w = wrapped or s == loop.header
                heapq.heappush(heap, (d + 1, w, blocks[s].start))
        kind = "gaussian" if tainted.get(i) else ("list" if any(
            tainted.get(j) for j in feeds.get(i, ())) else "other")
        out.append({
            "addr": ins.addr, "opcode": ins.opcode, "dest": sorted(dest, key=lambda r: (len(r), r)),
            "kind": kind, "same_iteration": best[False], "next_iteration": best[True],
            "use": use_at[False] if best[False] is not None else use_at[True],
        })
    return out


def load_use_violations(loads: Sequence[dict], min_distance: int,
                        kinds: Sequence[str] = ("gaussian",)) -> list[dict]:
    """The loads of ``kinds`` first waited on in their own iteration fewer than ``min_distance``
    instructions after issue (the latency-tolerance gate)."""
    return [ld for ld in loads if ld["kind"] in kinds and ld["same_iteration"] is not None
            and ld["same_iteration"] < min_distance]
