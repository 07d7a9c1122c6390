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
