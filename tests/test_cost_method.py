"""The static SASS cost method (``gsplat2d.kernels.cost``) on hand-written listings with known
answers: loop detection, full and cheap paths, cold ``BRA.DIV`` edges, enclosing-loop
amortisation and instruction classes. No compiler needed."""

from __future__ import annotations

import pytest

from gsplat2d.kernels.cost import classify, loop_cost, parse_sass

# entry (3) -> [header: 4 instrs incl. EX2] -> optional block (5) -> latch (2) -> back to header;
# an outer loop (2 more instrs) around it; exit. Instruction counts are chosen to be distinct.
LISTING = """
//--------------------- .text.k --------------------------
        .section        .text.k,"ax",@progbits
k:
.text.k:
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   S2R R0, SR_TID.X ;
        /*0020*/                   IADD3 R2, R0, 0x1, RZ ;
.L_x_outer:
        /*0030*/                   LDS R3, [R2] ;
        /*0040*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
.L_x_head:
        /*0050*/                   FADD R4, R3, -R5 ;
        /*0060*/                   FFMA R6, R4, R4, R7 ;
        /*0070*/                   MUFU.EX2 R8, R6 ;
        /*0080*/               @P0 BRA `(.L_x_latch) ;
        /*0090*/                   FSETP.GE.AND P1, PT, R8, 0.0039, PT ;
        /*00a0*/                   FSEL R9, R8, RZ, P1 ;
        /*00b0*/                   SHFL.BFLY PT, R10, R9, 0x1, 0x1f ;
        /*00c0*/                   BRA.DIV UR4, `(.L_x_cold) ;
        /*00d0*/                   FFMA R11, R9, R12, R11 ;
.L_x_latch:
        /*00e0*/                   ISETP.NE.AND P2, PT, R13, RZ, PT ;
        /*00f0*/               @P2 BRA `(.L_x_head) ;
        /*0100*/                   ISETP.NE.AND P3, PT, R14, RZ, PT ;
        /*0110*/               @P3 BRA `(.L_x_outer) ;
        /*0120*/                   EXIT ;
.L_x_cold:
        /*0130*/                   WARPSYNC.COLLECTIVE R15, `(.L_x_latch) ;
        /*0140*/                   SHFL.BFLY P4, R10, R9, 0x1, 0x1f ;
        /*0150*/                   BRA `(.L_x_latch) ;
.L_x_end:
        /*0160*/                   BRA `(.L_x_end);
        /*0170*/                   NOP;
"""


def test_parse_and_classes():
    fn = parse_sass(LISTING)["k"]
    assert len(fn.instrs) == 24
    assert classify("MUFU.EX2") == "mufu" and classify("FSETP.GE.AND") == "cmp_sel"
    assert classify("REDG.E.ADD.F32.FTZ.RN.STRONG.GPU") == "atomic"
    assert classify("SHFL.BFLY") == "shfl" and classify("LDG.E.64") == "global"
    assert classify("BAR.SYNC.DEFER_BLOCKING") == "barrier_fence" and classify("IMAD.WIDE") == "int"


def test_full_and_cheap_paths():
    r = loop_cost(LISTING, "k", pairs_per_iter=1)
    full, cheap = r["paths"]["full"], r["paths"]["cheap"]
    # full: header 4 + optional 5 (the BRA.DIV falls through: warp converged) + latch 2 = 11
    assert full["total"] == 11 and r["loop_instructions"] == 11
    assert full["mufu"] == 1 and full["shfl"] == 1 and full["fp32"] == 3 and full["cmp_sel"] == 3
    # cheap: header 4 + latch 2 (the cold WARPSYNC/SHFL stub is never on a hot path)
    assert cheap["total"] == 6 and cheap["shfl"] == 0
    assert r["marker_per_iter"] == 1 and r["inner_loops"] == 0


def test_pairs_per_iteration_and_enclosing_loop():
    r = loop_cost(LISTING, "k", pairs_per_iter=2, trips=(16,))
    # the outer loop adds LDS + BAR + ISETP + BRA = 4 instructions every 16 iterations of 2 pairs
    assert r["enclosing"] == [{"instructions": 4, "per_pair_divisor": 32}]
    assert r["paths"]["full"]["total"] == pytest.approx(11 / 2 + 4 / 32, abs=1e-3)
    assert r["paths"]["cheap"]["total"] == pytest.approx(6 / 2 + 4 / 32, abs=1e-3)
    assert r["paths"]["full"]["barrier_fence"] == pytest.approx(1 / 32, abs=1e-3)


def test_no_loop_with_the_marker_is_an_error():
    with pytest.raises(ValueError, match="no loop contains"):
        loop_cost(LISTING, "k", 1, marker="MUFU.RCP")


# Load-to-use distances: a software-pipelined loop. In each iteration the record address is made
# from the id loaded in the *previous* iteration (R8, loop-carried), then the next id (list load),
# the record (A: LDG.E.128, first read at the top of the next iteration) and two more floats (B:
# LDG.E.64 into R4, R5, whose *second* register is read 3 instructions later) are loaded.
PIPELINED = """
        .section        .text.p,"ax",@progbits
p:
.text.p:
        /*0000*/                   MOV R10, c[0x0][0x160] ;
        /*0010*/                   MOV R11, c[0x0][0x164] ;
        /*0020*/                   LDG.E R8, desc[UR4][R10.64] ;
        /*0030*/                   MOV R18, c[0x0][0x168] ;
        /*0040*/                   MOV R19, c[0x0][0x16c] ;
.L_x_head:
        /*0050*/                   FADD R20, R30, -R12 ;
        /*0060*/                   FFMA R21, R20, R13, R14 ;
        /*0070*/                   MUFU.EX2 R22, R21 ;
        /*0080*/                   IMAD.WIDE R16, R8, 0x20, R18 ;
        /*0090*/                   IADD3 R10, P0, R10, 0x4, RZ ;
        /*00a0*/                   IADD3.X R11, RZ, R11, RZ, P0, !PT ;
        /*00b0*/                   LDG.E R8, desc[UR4][R10.64] ;
        /*00c0*/                   LDG.E.128 R12, desc[UR4][R16.64] ;
        /*00d0*/                   LDG.E.64 R4, desc[UR4][R16.64+0x10] ;
        /*00e0*/                   MOV R41, UR5 ;
        /*00f0*/                   FMUL R43, R22, R25 ;
        /*0100*/                   FADD R44, R5, R22 ;
        /*0110*/                   ISETP.GE.AND P1, PT, R44, RZ, PT ;
        /*0120*/               @P1 BRA `(.L_x_skip) ;
        /*0130*/                   FFMA R45, R4, R22, R45 ;
.L_x_skip:
        /*0140*/                   FADD R46, R46, R22 ;
        /*0150*/                   ISETP.NE.AND P2, PT, R47, RZ, PT ;
        /*0160*/               @P2 BRA `(.L_x_head) ;
        /*0170*/                   EXIT ;
.L_x_end:
        /*0180*/                   BRA `(.L_x_end);
"""


def test_defs_and_uses():
    from gsplat2d.kernels.cost import defs_uses

    fn = parse_sass(PIPELINED)["p"]
    by_addr = {ins.addr: ins for ins in fn.instrs}
    assert defs_uses(by_addr[0x80]) == (["R16", "R17"], ["R8", "R18", "R19"])  # 64-bit addend
    assert defs_uses(by_addr[0xc0])[0] == ["R12", "R13", "R14", "R15"]
    assert defs_uses(by_addr[0xd0]) == (["R4", "R5"], ["UR4", "R16", "R17"])
    assert defs_uses(by_addr[0xe0]) == (["R41"], ["UR5"])  # UR5 is not R5
    assert defs_uses(by_addr[0xa0])[0] == ["R11"] and defs_uses(by_addr[0x110])[0] == []
    shf = parse_sass(PIPELINED.replace("MOV R41, UR5", "SHF.L.U64.HI R41, R7, 0x3, R6"))["p"]
    assert defs_uses([i for i in shf.instrs if i.addr == 0xe0][0])[0] == ["R41"]  # .U64 is a type, not a 64-bit destination


def test_load_to_use_distances():
    from gsplat2d.kernels.cost import load_use

    loads = {ld["addr"]: ld for ld in load_use(PIPELINED, "p")}
    assert sorted(loads) == [0xb0, 0xc0, 0xd0]  # the load before the loop is not in it
    ids, rec, two = loads[0xb0], loads[0xc0], loads[0xd0]
    # the id feeds the record address only through the back edge: "list"; the record loads'
    # addresses come from it: "gaussian" (needs the loop-carried taint)
    assert (ids["kind"], rec["kind"], two["kind"]) == ("list", "gaussian", "gaussian")
    # A: no reader in its own iteration; round the back edge on the *shortest* path (the
    # branch skips 0x130): 0xd0..0x120 (6), 0x140, 0x150, 0x160 (9), the header FADD (10)
    assert rec["same_iteration"] is None and rec["next_iteration"] == 10 and rec["use"] == 0x50
    # B: the first reader reads R5 (its second register), 3 instructions on; UR5 (d=1) and R25
    # (d=2) are other registers, and R4 is read only at d=6
    assert two["same_iteration"] == 3 and two["use"] == 0x100
    # the id: read by the IMAD.WIDE of the next iteration, 14 instructions on
    assert ids["same_iteration"] is None and ids["next_iteration"] == 14 and ids["use"] == 0x80


def test_load_to_use_gate():
    from gsplat2d.kernels.cost import load_use, load_use_violations
    from gsplat2d.kernels.report import load_use_gate

    loads = load_use(PIPELINED, "p")
    assert [ld["addr"] for ld in load_use_violations(loads, 64)] == [0xd0]
    assert load_use_violations(loads, 3) == []  # "fewer than": 3 instructions pass a limit of 3
    budget = {"load_use": {"min_distance": 64, "max_c": 4, "kinds": ["gaussian"]}}
    rec = {"kernel": "rasterize_fwd[alpha,TILE=16,C=3]", "arch": 90, "cost": {"loads": loads}}
    bad = load_use_gate(rec, budget)
    assert len(bad) == 1 and "0x00d0" in bad[0] and "3 instructions" in bad[0]
    assert load_use_gate({**rec, "kernel": "rasterize_fwd[alpha,TILE=16,C=8]"}, budget) == []
    assert load_use_gate(rec, {}) == []
