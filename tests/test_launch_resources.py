"""tools/check_launch_resources.py on canned ptxas / PTX output (no GPU, no nvcc)."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

_TOOL = pathlib.Path(__file__).resolve().parents[1] / "tools" / "check_launch_resources.py"
_spec = importlib.util.spec_from_file_location("check_launch_resources", _TOOL)
clr = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = clr  # dataclasses look their module up there
_spec.loader.exec_module(clr)

# ptxas -v of nvcc 13.0 for two archs: a bounded kernel, an unbounded one that needs 91
# registers, one that spills through a callee, one with a big stack.
PTXAS = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z2okPf' for 'sm_90a'
ptxas info    : Function properties for _Z2okPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 4744 bytes smem
ptxas info    : Compile time = 6.541 ms
ptxas info    : Compiling entry function '_Z6selectPf' for 'sm_90a'
ptxas info    : Function properties for _Z6selectPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 91 registers, used 1 barriers, 2192 bytes smem
ptxas info    : Compiling entry function '_Z5spillPf' for 'sm_80'
ptxas info    : Function properties for _Z6helperv
    8 bytes stack frame, 12 bytes spill stores, 12 bytes spill loads
ptxas info    : Function properties for _Z5spillPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 128 registers, used 0 barriers, 360 bytes cmem[0]
ptxas info    : Compiling entry function '_Z5stackPf' for 'sm_80'
ptxas info    : Function properties for _Z5stackPf
    5184 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers, 5184 bytes cumulative stack size, 360 bytes cmem[0]
"""

PTX_90 = """\
.version 9.0
.target sm_90a
.address_size 64
.visible .entry _Z2okPf(
\t.param .u64 .ptr .align 1 _Z2okPf_param_0
)
.maxntid 256, 1, 1
{
}
.visible .entry _Z6selectPf(
\t.param .u64 .ptr .align 1 _Z6selectPf_param_0
)
.reqntid 1024
{
}
"""

PTX_80 = """\
.version 9.0
.target sm_80
.address_size 64
.visible .entry _Z5spillPf(
\t.param .u64 _Z5spillPf_param_0
)
.maxntid 512, 1, 1
{
}
.visible .entry _Z5stackPf(
\t.param .u64 _Z5stackPf_param_0
)
{
}
"""


def test_parse_ptxas():
    ks = {(k.name, k.arch): k for k in clr.parse_ptxas(PTXAS, "x.o")}
    assert set(ks) == {("_Z2okPf", "sm_90a"), ("_Z6selectPf", "sm_90a"), ("_Z5spillPf", "sm_80"),
                       ("_Z5stackPf", "sm_80")}
    ok = ks[("_Z2okPf", "sm_90a")]
    assert (ok.registers, ok.smem, ok.stack, ok.spill_stores, ok.spill_loads) == (40, 4744, 0, 0, 0)
    sp = ks[("_Z5spillPf", "sm_80")]
    assert sp.registers == 128 and sp.spill_stores == 0 and sp.callees_spill == ["_Z6helperv (12 B stores, 12 B loads)"]
    assert ks[("_Z5stackPf", "sm_80")].stack == 5184


def test_parse_ptx_bounds():
    assert clr.parse_ptx(PTX_90) == {"_Z2okPf": (256, 1, 1), "_Z6selectPf": (1024, 1, 1)}
    assert clr.parse_ptx(PTX_80) == {"_Z5spillPf": (512, 1, 1), "_Z5stackPf": None}
    assert clr.ptx_arch(PTX_90) == "sm_90a" and clr.ptx_arch(PTX_80) == "sm_80"


def test_block_registers_granularity():
    k = clr.Kernel("k", "sm_90a", registers=91, maxntid=(1024, 1, 1))
    assert k.block_registers == 96 * 1024  # 91 rounds up to 96 per thread
    k = clr.Kernel("k", "sm_90a", registers=128, maxntid=(500, 1, 1))
    assert k.block_registers == 128 * 512  # 500 threads take 16 whole warps


def _build(tmp_path, ptxas=PTXAS, ptx=(PTX_90, PTX_80)):
    (tmp_path / "ptx").mkdir()
    (tmp_path / "x.cu.o.ptxas.log").write_text(ptxas)
    for i, text in enumerate(ptx):
        (tmp_path / "ptx" / f"x.{i}.ptx").write_text(text)
    return tmp_path


def test_failures_name_each_problem(tmp_path, capsys):
    assert clr.main([str(_build(tmp_path)), "--max-stack", "512", "--no-sass"]) == 1
    err = capsys.readouterr().err
    assert "4 failure(s)" in err
    assert "select(float*): 91 registers x 1024 threads = 98304 allocated registers > 65536" in err
    assert "spill(float*): callee _Z6helperv (12 B stores, 12 B loads) spills" in err
    assert "stack(float*): no __launch_bounds__" in err
    assert "stack(float*): 5184 B stack per thread > 512 B" in err
    assert "ok(float*)" not in err


def test_clean_build_passes(tmp_path, capsys):
    ptxas = PTXAS.split("ptxas info    : Compiling entry function '_Z6selectPf'")[0]
    assert clr.main([str(_build(tmp_path, ptxas, (PTX_90,))), "--no-sass"]) == 0
    assert "launch resources: OK" in capsys.readouterr().out


@pytest.mark.parametrize("what", ["no logs", "stale log"])
def test_missing_inputs_fail(tmp_path, what, capsys):
    if what == "no logs":
        (tmp_path / "ptx").mkdir()
        (tmp_path / "ptx" / "x.ptx").write_text(PTX_90)
        msg = "no *.ptxas.log"
    else:
        _build(tmp_path, ptx=(PTX_90,))  # the sm_80 kernels have no PTX
        msg = "in no PTX file"
    assert clr.main([str(tmp_path), "--no-sass"]) == 1
    assert msg in capsys.readouterr().err


SPILL = """\
ptxas info    : Compiling entry function '_Z4slowPf' for 'sm_90a'
ptxas info    : Function properties for _Z4slowPf
    16 bytes stack frame, 8 bytes spill stores, 16 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 16 bytes cumulative stack size
"""
SPILL_PTX = """\
.target sm_90a
.visible .entry _Z4slowPf(
\t.param .u64 _Z4slowPf_param_0
)
.maxntid 128, 1, 1
{
}
"""


@pytest.mark.parametrize("cap,ok", [(24, True), (20, False), (None, False)])
def test_spill_exceptions_are_capped(tmp_path, capsys, cap, ok):
    build = _build(tmp_path, SPILL, (SPILL_PTX,))
    exc = tmp_path / "exc.txt"
    exc.write_text("# accepted\n" + (f"sm_9*  {cap}  ^slow\\(  # a called slow path\n" if cap else ""))
    assert clr.main([str(build), "--exceptions", str(exc), "--no-sass"]) == (0 if ok else 1)
    out = capsys.readouterr()
    if ok:
        assert "accepted spills <= 24 B in 1 kernel(s) matching sm_9* /^slow\\(/: a called slow path" in out.out
    elif cap:
        assert "spills 24 B (stores + loads), more than the 20 B its exception allows (a called slow path)" in out.err
    else:
        assert "slow(float*): spills (8 B stores, 16 B loads)" in out.err


def test_exception_lines_need_a_reason():
    with pytest.raises(ValueError, match="needs its reason"):
        clr.parse_exceptions("sm_80 8 foo\n")
    with pytest.raises(ValueError, match="expected '<arch glob> <max spill bytes> <regex>  # reason'"):
        clr.parse_exceptions("sm_80 foo  # why\n")


# ---------------------------------------------------------------- SASS atomics (cuobjdump -sass)

# A cuobjdump -sass listing cut down to what the parser reads: two archs, a kernel with a
# shared-memory double atomicAdd (a CAS spin loop) and integer atomics, one with a predicated
# global fp32 reduction, one clean; the opcodes are nvcc 13's.
SASS = """\

Fatbin elf code:
================
arch = sm_80
code version = [1,8]

\tcode for sm_80
\t.target\tsm_80

\t\tFunction : _Z4histPf
\t.headerflags\t@"EF_CUDA_VIRTUAL_SM(EF_CUDA_SM80)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                   /* 0x00000a00ff017b82 */
        /*01a0*/                   ATOMS.POPC.INC.32 RZ, [R5+UR5] ;         /* 0x0000000005ff7f8c */
        /*01b0*/               @P0 ATOMS.ADD R18, [R17], R18 ;              /* 0x000000121112038c */
        /*01f0*/                   ATOMS.CAST.SPIN.64 R6, [R17], R4, R6 ;   /* 0x000000041106738d */
        /*0200*/                   ATOMG.E.ADD.64.STRONG.GPU PT, R2, [R4.64], R6 ;  /* 0x0 */
\t\t..........

\t\tFunction : _Z3sumPf
        /*0000*/                   LDC R1, c[0x0][0x28] ;                   /* 0x00000a00ff017b82 */
        /*0010*/              @!P1 RED.E.ADD.F32.FTZ.RN.STRONG.GPU [R2.64], R5 ;  /* 0x0 */
\t\t..........

Fatbin elf code:
================
arch = sm_90a

\tcode for sm_90a

\t\tFunction : _Z4histPf
        /*21f0*/                   ATOMS.CAST.SPIN.64 R6, [R17], R4, R6 ;   /* 0x000000041106738d */
        /*2200*/                   ATOMG.E.CAS.STRONG.GPU PT, R4, [R2.64], R4, R6 ;  /* 0x0 */
\t\tFunction : _Z5cleanPf
        /*0000*/                   ATOMS.ADD RZ, [R10+UR5], R11 ;           /* 0x0000000b0aff798c */
        /*0010*/                   REDG.E.ADD.STRONG.GPU [R2.64], R5 ;      /* 0x0 */
"""


@pytest.mark.parametrize("opcode,kind", [
    ("ATOMS.CAST.SPIN.64", "cas"), ("ATOMS.CAS.64", "cas"), ("ATOMG.E.CAS.STRONG.GPU", "cas"),
    ("ATOM.E.CAS.64.STRONG.GPU", "cas"), ("RED.E.ADD.F32.FTZ.RN.STRONG.GPU", "fp"),
    ("ATOMG.E.ADD.F64.RN.STRONG.GPU", "fp"), ("ATOM.E.ADD.F16x2.RN.STRONG.GPU", "fp"),
    ("REDG.E.ADD.F32.FTZ.RN.STRONG.GPU", "fp"), ("ATOMS.ADD", None), ("ATOMS.POPC.INC.32", None),
    ("ATOMG.E.ADD.64.STRONG.GPU", None), ("RED.E.ADD.STRONG.GPU", None), ("FADD.FTZ", None),
    ("DADD", None), ("CAS", None)])
def test_atomic_kind(opcode, kind):
    assert clr.atomic_kind(opcode) == kind


def test_parse_sass_functions_and_atomics():
    funcs, atomics = clr.parse_sass(SASS, "x.o")
    assert funcs == [("_Z4histPf", "sm_80"), ("_Z3sumPf", "sm_80"), ("_Z4histPf", "sm_90a"), ("_Z5cleanPf", "sm_90a")]
    got = [(a.kernel, a.arch, a.opcode, a.kind) for a in atomics]
    assert got == [("_Z4histPf", "sm_80", "ATOMS.CAST.SPIN.64", "cas"),
                   ("_Z3sumPf", "sm_80", "RED.E.ADD.F32.FTZ.RN.STRONG.GPU", "fp"),
                   ("_Z4histPf", "sm_90a", "ATOMS.CAST.SPIN.64", "cas"),
                   ("_Z4histPf", "sm_90a", "ATOMG.E.CAS.STRONG.GPU", "cas")]


def test_atomic_failures_and_exceptions():
    _, atomics = clr.parse_sass(SASS, "x.o")
    bad = clr.atomic_failures(atomics, [])
    assert len(bad) == 3  # hist on each arch (cas), sum on sm_80 (fp); clean passes
    assert any(b.startswith("sm_80 x.o: hist(float*): 1 compare-and-swap (a CAS loop): ATOMS.CAST.SPIN.64") for b in bad)
    assert any("sm_90a x.o: hist(float*): 2 compare-and-swap" in b for b in bad)
    assert any("sum(float*): 1 floating-point atomic(s): RED.E.ADD.F32.FTZ.RN.STRONG.GPU" in b for b in bad)
    assert not any("clean" in b for b in bad)
    exc = clr.parse_atomic_exceptions("# x\nsm_*  cas  ^hist\\(  # being rewritten\nsm_80 fp ^nothing  # stale\n")
    bad = clr.atomic_failures(atomics, exc)
    assert len(bad) == 1 and "sum(float*)" in bad[0]
    assert exc[0].used == 2 and exc[1].used == 0
    # an fp exception does not cover a CAS, nor an arch it does not match
    exc = clr.parse_atomic_exceptions("sm_90a cas ^hist  # one arch\nsm_80 fp ^hist  # wrong kind\n")
    bad = clr.atomic_failures(atomics, exc)
    assert len(bad) == 2 and any("sm_80 x.o: hist(float*)" in b for b in bad)


def test_atomic_exception_lines_need_kind_and_reason():
    with pytest.raises(ValueError, match="needs its reason"):
        clr.parse_atomic_exceptions("sm_80 cas foo\n")
    with pytest.raises(ValueError, match="expected '<arch glob> <cas|fp> <regex>  # reason'"):
        clr.parse_atomic_exceptions("sm_80 12 foo  # why\n")


def _fake_cuobjdump(tmp_path, listing):
    (tmp_path / "listing.sass").write_text(listing)
    tool = tmp_path / "cuobjdump"
    tool.write_text(f"#!/bin/sh\ncat '{tmp_path / 'listing.sass'}'\n")
    tool.chmod(0o755)
    return tool


def test_main_fails_on_cas_and_names_it(tmp_path, capsys):
    build = tmp_path / "b"
    build.mkdir()
    ptxas = PTXAS.split("ptxas info    : Compiling entry function '_Z6selectPf'")[0]
    _build(build, ptxas, (PTX_90,))
    (build / "x.cu.o").write_bytes(b"")  # the object beside its ptxas log
    tool = _fake_cuobjdump(tmp_path, SASS)
    exc = tmp_path / "none.txt"
    exc.write_text("")
    assert clr.main([str(build), "--cuobjdump", str(tool), "--atomics-exceptions", str(exc)]) == 1
    cap = capsys.readouterr()
    assert "hist(float*): 1 compare-and-swap (a CAS loop): ATOMS.CAST.SPIN.64" in cap.err
    assert "SASS atomics: 4 functions x arch disassembled" in cap.out
    assert "largest local stack 0 B per thread" in cap.out and "bound 512 B" in cap.out
    exc.write_text("sm_*  cas  ^hist\\(  # being rewritten\nsm_80 fp ^sum\\(  # being rewritten too\n")
    assert clr.main([str(build), "--cuobjdump", str(tool), "--atomics-exceptions", str(exc)]) == 0
    out = capsys.readouterr().out
    assert "accepted cas in 2 kernel(s) matching sm_* /^hist\\(/: being rewritten" in out
    assert "launch resources: OK" in out


def test_main_without_cuobjdump_fails_unless_skipped(tmp_path, capsys, monkeypatch):
    build = tmp_path / "b"
    build.mkdir()
    ptxas = PTXAS.split("ptxas info    : Compiling entry function '_Z6selectPf'")[0]
    _build(build, ptxas, (PTX_90,))
    monkeypatch.setattr(clr, "find_cuobjdump", lambda explicit=None: None)
    assert clr.main([str(build)]) == 1
    assert "no cuobjdump" in capsys.readouterr().err
    assert clr.main([str(build), "--no-sass"]) == 0
    assert "SASS atomics: NOT checked (--no-sass)" in capsys.readouterr().out
