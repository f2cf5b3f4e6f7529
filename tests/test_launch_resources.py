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
    assert clr.main([str(_build(tmp_path)), "--max-stack", "512"]) == 1
    err = capsys.readouterr().err
    assert "4 failure(s)" in err
    assert "select(float*): 91 registers x 1024 threads = 98304 allocated registers > 65536" in err
    assert "spill(float*): callee _Z6helperv (12 B stores, 12 B loads) spills" in err
    assert "stack(float*): no __launch_bounds__" in err
    assert "stack(float*): 5184 B stack per thread > 512 B" in err
    assert "ok(float*)" not in err


def test_clean_build_passes(tmp_path, capsys):
    ptxas = PTXAS.split("ptxas info    : Compiling entry function '_Z6selectPf'")[0]
    assert clr.main([str(_build(tmp_path, ptxas, (PTX_90,)))]) == 0
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
    assert clr.main([str(tmp_path)]) == 1
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
    assert clr.main([str(build), "--exceptions", str(exc)]) == (0 if ok else 1)
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
