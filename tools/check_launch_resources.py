#!/usr/bin/env python3
"""Launch-resource check of every CUDA kernel softdec compiles (no GPU needed).

Reads what the CUDA compile check (`make cuda-check`, build dir build/cuda-check)
leaves behind when built with SOFTDEC_CUDA_RESOURCE_REPORT (always on for
SOFTDEC_CUDA_CHECK_ONLY):

- `<object>.ptxas.log` beside each object: ptxas -v of every kernel for every
  arch (registers, stack frame, spill stores / loads, shared memory), written by
  tools/ptxas_log.sh;
- `ptx/<source>.compute_<arch>.ptx`: the PTX, whose `.maxntid` / `.reqntid` is
  each kernel's `__launch_bounds__`.

and fails (exit 1) when, for any kernel and arch,

- it has no launch bound (then nothing stops a launch of 1024 threads from
  needing more registers than an SM has),
- registers x max threads per block, at the hardware's allocation granularity
  (per-thread registers rounded up to 8, warps), exceed 65536, so a launch at its
  bound fails with "too many resources requested for launch",
- it spills registers (spill stores or loads > 0, its own or a callee's), or
- its stack (the larger of its frame and ptxas' cumulative stack size) exceeds
  --max-stack bytes (default 512): the driver reserves that much local memory
  for every thread that can be resident on the device (about 270k threads on an
  H200, so 4 KB per thread would be over 1 GB outside torch's allocator).

Known spills can be accepted one by one in an exceptions file (default
tools/launch_resources_exceptions.txt beside this script): each line is
`<arch glob> <max spill bytes> <regex on the demangled kernel name>  # reason`;
a kernel matching a line may spill up to that many bytes (stores + loads), no
more; a line matching no kernel is reported as stale.

The same run disassembles every object (`cuobjdump -sass`, found on PATH, next to
nvcc, in $CUDA_HOME/bin, from the PyPI wheels nvidia-cuda-cuobjdump and -nvdisasm, or given by
--cuobjdump / $CUOBJDUMP) and fails when a
kernel contains

- a compare-and-swap (ATOMS.CAS / ATOMS.CAST, ATOM(G).*CAS*, any atomic or RED
  whose opcode has a CAS component): a CAS spin loop is what nvcc emits for an
  atomic it has no instruction for (a shared-memory double or 64-bit add), and
  its order of updates varies from run to run;
- a floating-point atomic or reduction (ATOM / ATOMS / ATOMG / RED / REDG with an
  F16 / BF16 / F32 / F64 type): the sum depends on the order of arrival, so it
  cannot feed a result that must be bit-exact with the CPU,

unless an atomics exception (default tools/sass_atomics_exceptions.txt) lists it:
`<arch glob> <cas|fp> <regex on the demangled kernel name>  # reason`. A line
matching no offending kernel is reported as stale. Without cuobjdump the SASS
check fails (--no-sass skips it, saying so).

    python3 tools/check_launch_resources.py build/cuda-check [--max-stack 512]
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import pathlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

REGS_PER_BLOCK = 65536  # sm_80 and sm_90: 64K 32-bit registers per block (and per SM)
REG_UNIT = 8            # per-thread registers are allocated in multiples of 8 (256 per warp)
DEFAULT_MAX_STACK = 512


@dataclass
class Kernel:
    name: str                 # mangled
    arch: str                 # e.g. sm_90a
    source: str = ""          # the object or PTX file it came from
    registers: int | None = None
    stack_frame: int = 0
    cumulative_stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    smem: int = 0
    maxntid: tuple[int, int, int] | None = None
    callees_spill: list[str] = field(default_factory=list)

    @property
    def threads(self) -> int | None:
        return None if self.maxntid is None else self.maxntid[0] * self.maxntid[1] * self.maxntid[2]

    @property
    def stack(self) -> int:
        return max(self.stack_frame, self.cumulative_stack)

    @property
    def block_registers(self) -> int | None:
        """Registers a block at the launch bound takes, at the allocation granularity."""
        if self.registers is None or self.threads is None:
            return None
        per_thread = math.ceil(self.registers / REG_UNIT) * REG_UNIT
        return per_thread * 32 * math.ceil(self.threads / 32)


_ENTRY = re.compile(r"^ptxas info\s*: Compiling entry function '([^']+)' for '(sm_\w+)'")
_PROPS = re.compile(r"^ptxas info\s*: Function properties for (\S+)")
_FRAME = re.compile(r"^\s*(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"^ptxas info\s*: Used (\d+) registers(.*)$")
_SMEM = re.compile(r"(\d+) bytes smem")
_CUMUL = re.compile(r"(\d+) bytes cumulative stack size")


def parse_ptxas(text: str, source: str = "") -> list[Kernel]:
    """Kernels of one ptxas -v report (any number of archs and entries)."""
    out: list[Kernel] = []
    cur: Kernel | None = None
    props_of: str | None = None  # the function whose "Function properties" line came last
    for line in text.splitlines():
        m = _ENTRY.match(line)
        if m:
            cur = Kernel(name=m.group(1), arch=m.group(2), source=source)
            out.append(cur)
            props_of = None
            continue
        m = _PROPS.match(line)
        if m:
            props_of = m.group(1)
            continue
        m = _FRAME.match(line)
        if m and props_of is not None:
            frame, st, ld = (int(x) for x in m.groups())
            if cur is not None and props_of == cur.name:
                cur.stack_frame, cur.spill_stores, cur.spill_loads = frame, st, ld
            elif cur is not None and (st or ld):  # a non-inlined callee of the current entry spills
                cur.callees_spill.append(f"{props_of} ({st} B stores, {ld} B loads)")
            props_of = None
            continue
        m = _USED.match(line)
        if m and cur is not None:
            cur.registers = int(m.group(1))
            rest = m.group(2)
            s = _SMEM.search(rest)
            cur.smem = int(s.group(1)) if s else 0
            c = _CUMUL.search(rest)
            cur.cumulative_stack = int(c.group(1)) if c else 0
    return out


_PTX_ENTRY = re.compile(r"\.entry\s+([\w$.]+)\s*\(")
_PTX_NTID = re.compile(r"\.(maxntid|reqntid)\s+(\d+)(?:\s*,\s*(\d+))?(?:\s*,\s*(\d+))?")


def parse_ptx(text: str) -> dict[str, tuple[int, int, int] | None]:
    """Launch bound of every .entry of one PTX file (None when it has none)."""
    out: dict[str, tuple[int, int, int] | None] = {}
    for m in _PTX_ENTRY.finditer(text):
        name = m.group(1)
        # the performance directives sit between the parameter list and the body
        close = text.find(")", m.end())
        body = text.find("{", close)
        directives = text[close:body] if close >= 0 and body >= 0 else ""
        bound = None
        for d in _PTX_NTID.finditer(directives):
            dims = tuple(int(x) if x else 1 for x in d.group(2, 3, 4))
            bound = dims if bound is None else min(bound, dims, key=lambda t: t[0] * t[1] * t[2])
        out[name] = bound
    return out


def ptx_arch(text: str) -> str | None:
    """The arch a PTX file is for, from its `.target sm_XX` directive."""
    m = re.search(r"^\s*\.target\s+(sm_\w+)", text, re.M)
    return m.group(1) if m else None


def collect(build: pathlib.Path) -> tuple[list[Kernel], list[str]]:
    """Every kernel of the build, with its launch bound; plus problems with the inputs."""
    problems: list[str] = []
    logs = sorted(build.rglob("*.ptxas.log"))
    ptxs = sorted((build / "ptx").glob("*.ptx")) if (build / "ptx").is_dir() else []
    if not logs:
        problems.append(f"no *.ptxas.log under {build}: build it with SOFTDEC_CUDA_CHECK_ONLY=ON or "
                        "SOFTDEC_CUDA_RESOURCE_REPORT=ON (make cuda-check)")
    if not ptxs:
        problems.append(f"no PTX under {build / 'ptx'} (the --keep output of the same build)")
    kernels: list[Kernel] = []
    for log in logs:
        kernels += parse_ptxas(log.read_text(errors="replace"), source=log.name.removesuffix(".ptxas.log"))
    bounds: dict[tuple[str, str], tuple[int, int, int] | None] = {}
    for ptx in ptxs:
        text = ptx.read_text(errors="replace")
        arch = ptx_arch(text)
        if arch is None:
            problems.append(f"{ptx}: no .target directive")
            continue
        for name, b in parse_ptx(text).items():
            bounds[(name, arch)] = b
    for k in kernels:
        if (k.name, k.arch) in bounds:
            k.maxntid = bounds[(k.name, k.arch)]
        else:
            problems.append(f"{k.arch} {k.name}: in the ptxas report of {k.source} but in no PTX file "
                            f"(a stale report? rebuild {build})")
    return kernels, problems


@dataclass
class Exception_:
    arch: str       # glob
    max_spill: int  # bytes, stores + loads
    pattern: str    # regex searched in the demangled name
    reason: str
    used: int = 0


def _exception_lines(text: str, what: str, field: str, field_ok) -> list[tuple[str, str, str, str]]:
    """(arch glob, field, regex, reason) of every line `<arch glob> <field> <regex>  # reason` of an
    exceptions file (both files: blank and comment-only lines skipped); ValueError naming the line
    when the field fails field_ok, the reason is missing or the regex does not compile."""
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        line, _, reason = raw.partition("#")
        if not line.strip():
            continue
        parts = line.split(None, 2)
        if len(parts) != 3 or not field_ok(parts[1]):
            raise ValueError(f"{what} line {n}: expected '<arch glob> <{field}> <regex>  # reason', got {raw!r}")
        if not reason.strip():
            raise ValueError(f"{what} line {n}: every exception needs its reason after '#'")
        re.compile(parts[2].strip())
        out.append((parts[0], parts[1], parts[2].strip(), reason.strip()))
    return out


def _exception_matches(e: Exception_ | AtomicException, arch: str, kernel: str) -> bool:
    """Whether exception e (of either file) covers the mangled kernel on arch."""
    return fnmatch.fnmatchcase(arch, e.arch) and re.search(e.pattern, demangle(kernel)) is not None


def parse_exceptions(text: str) -> list[Exception_]:
    return [Exception_(arch, int(spill), pattern, reason) for arch, spill, pattern, reason in
            _exception_lines(text, "exceptions", "max spill bytes", str.isdigit)]


def _allowed_spill(k: Kernel, exceptions: list[Exception_]) -> Exception_ | None:
    return next((e for e in exceptions if _exception_matches(e, k.arch, k.name)), None)


def failures(kernels: list[Kernel], max_stack: int, exceptions: list[Exception_] | None = None) -> list[str]:
    out = []
    for k in kernels:
        who = f"{k.arch} {k.source}: {short(k.name, 160)}"
        if k.registers is None:
            out.append(f"{who}: no register count in the ptxas report")
        if k.maxntid is None:
            out.append(f"{who}: no __launch_bounds__ (no .maxntid in the PTX); give it the thread count "
                       "its launch uses")
        elif k.block_registers is not None and k.block_registers > REGS_PER_BLOCK:
            out.append(f"{who}: {k.registers} registers x {k.threads} threads = {k.block_registers} "
                       f"allocated registers > {REGS_PER_BLOCK}: every launch at its bound fails")
        if k.spill_stores or k.spill_loads:
            e = _allowed_spill(k, exceptions or [])
            spill = k.spill_stores + k.spill_loads
            if e is None:
                out.append(f"{who}: spills ({k.spill_stores} B stores, {k.spill_loads} B loads)")
            elif spill > e.max_spill:
                out.append(f"{who}: spills {spill} B (stores + loads), more than the {e.max_spill} B its "
                           f"exception allows ({e.reason})")
            else:
                e.used += 1
        for c in k.callees_spill:
            out.append(f"{who}: callee {c} spills")
        if k.stack > max_stack:
            out.append(f"{who}: {k.stack} B stack per thread > {max_stack} B")
    return out


# ------------------------------------------------------------------ SASS: atomics

_SASS_ARCH = re.compile(r"^\s*code for (sm_\w+)")
_SASS_FUNC = re.compile(r"^\s*Function : (\S+)")
# an instruction line: /*addr*/  [@!P0]  OPCODE operands ;
_SASS_INSN = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Za-z0-9_]+)*)")
_ATOMIC_OPS = {"ATOM", "ATOMS", "ATOMG", "RED", "REDG", "REDS"}
_FP_TYPE = re.compile(r"^(F16|BF16|F32|F64|F16X2|BF16X2|F16x2|BF16x2|BF16_V2|F16_V2)")


@dataclass
class Atomic:
    kernel: str   # mangled
    arch: str
    opcode: str   # e.g. ATOMS.CAST.SPIN.64
    kind: str     # "cas" or "fp"
    source: str = ""


def atomic_kind(opcode: str) -> str | None:
    """'cas' for a compare-and-swap, 'fp' for a floating-point atomic / reduction, None otherwise."""
    parts = opcode.split(".")
    if parts[0] not in _ATOMIC_OPS:
        return None
    mods = parts[1:]
    if any(m in ("CAS", "CAST") for m in mods):
        return "cas"
    if any(_FP_TYPE.match(m) for m in mods):
        return "fp"
    return None


def parse_sass(text: str, source: str = "") -> tuple[list[tuple[str, str]], list[Atomic]]:
    """(kernel, arch) of every function of a `cuobjdump -sass` listing, and its CAS / fp atomics."""
    funcs: list[tuple[str, str]] = []
    atomics: list[Atomic] = []
    arch = "?"
    func: str | None = None
    for line in text.splitlines():
        m = _SASS_ARCH.match(line)
        if m:
            arch = m.group(1)
            func = None
            continue
        m = _SASS_FUNC.match(line)
        if m:
            func = m.group(1)
            funcs.append((func, arch))
            continue
        if func is None:
            continue
        m = _SASS_INSN.match(line)
        if m:
            kind = atomic_kind(m.group(1))
            if kind:
                atomics.append(Atomic(func, arch, m.group(1), kind, source))
    return funcs, atomics


@dataclass
class AtomicException:
    arch: str     # glob
    kind: str     # cas | fp
    pattern: str  # regex searched in the demangled name
    reason: str
    used: int = 0


def parse_atomic_exceptions(text: str) -> list[AtomicException]:
    return [AtomicException(arch, kind, pattern, reason) for arch, kind, pattern, reason in
            _exception_lines(text, "atomics exceptions", "cas|fp", lambda f: f in ("cas", "fp"))]


def atomic_failures(atomics: list[Atomic], exceptions: list[AtomicException]) -> list[str]:
    """One line per (kernel, arch, kind) with an atomic no exception accepts."""
    seen: dict[tuple[str, str, str], list[Atomic]] = {}
    for a in atomics:
        seen.setdefault((a.kernel, a.arch, a.kind), []).append(a)
    out = []
    for (kernel, arch, kind), found in seen.items():
        exc = next((e for e in exceptions if e.kind == kind and _exception_matches(e, arch, kernel)), None)
        if exc is not None:
            exc.used += 1
            continue
        ops = sorted({a.opcode for a in found})
        what = "compare-and-swap (a CAS loop)" if kind == "cas" else "floating-point atomic(s)"
        out.append(f"{arch} {found[0].source}: {short(kernel, 160)}: {len(found)} {what}: {', '.join(ops)}")
    return out


def find_cuobjdump(explicit: str | None = None) -> str | None:
    cands = [explicit, os.environ.get("CUOBJDUMP"), shutil.which("cuobjdump")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        cands.append(str(pathlib.Path(nvcc).resolve().parent / "cuobjdump"))
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env):
            cands.append(str(pathlib.Path(os.environ[env]) / "bin" / "cuobjdump"))
    cands.append("/usr/local/cuda/bin/cuobjdump")
    # the PyPI wheels nvidia-cuda-cuobjdump + nvidia-cuda-nvdisasm (make cuda-check installs them): site-packages/nvidia/cu*/bin
    for p in sys.path:
        if p and pathlib.Path(p, "nvidia").is_dir():
            cands += sorted(str(c) for c in pathlib.Path(p, "nvidia").glob("*/bin/cuobjdump"))
    for c in cands:
        if c and pathlib.Path(c).is_file() and os.access(c, os.X_OK):
            return c
    return None


def collect_sass(build: pathlib.Path, cuobjdump: str) -> tuple[list[tuple[str, str]], list[Atomic], list[str]]:
    """Disassemble the object of every ptxas report under build."""
    funcs: list[tuple[str, str]] = []
    atomics: list[Atomic] = []
    problems: list[str] = []
    for log in sorted(build.rglob("*.ptxas.log")):
        obj = log.with_name(log.name.removesuffix(".ptxas.log"))
        if not obj.is_file():
            problems.append(f"{log}: no object {obj.name} beside it to disassemble")
            continue
        # cuobjdump -sass runs nvdisasm: look for it beside cuobjdump first (the wheels share a bin dir)
        env = dict(os.environ, PATH=str(pathlib.Path(cuobjdump).parent) + os.pathsep + os.environ.get("PATH", ""))
        r = subprocess.run([cuobjdump, "-sass", str(obj)], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            problems.append(f"{cuobjdump} -sass {obj}: exit {r.returncode}: {r.stderr.strip()[:300]}")
            continue
        f, a = parse_sass(r.stdout, source=obj.name)
        if not f:
            problems.append(f"{obj}: cuobjdump -sass listed no function")
        funcs += f
        atomics += a
    return funcs, atomics, problems


_DEMANGLED: dict[str, str] = {}


def demangle(name: str) -> str:
    if name not in _DEMANGLED:
        try:
            r = subprocess.run(["c++filt", name], capture_output=True, text=True, timeout=10)
            _DEMANGLED[name] = r.stdout.strip() or name
        except (OSError, subprocess.SubprocessError):
            _DEMANGLED[name] = name
    return _DEMANGLED[name]


def short(name: str, width: int = 90) -> str:
    d = demangle(name)
    d = re.sub(r"softdec::(\(anonymous namespace\)::)?", "", d)
    return d if len(d) <= width else d[: width - 3] + "..."


def table(kernels: list[Kernel]) -> str:
    rows = ["arch     thr   regs  regs*thr  stack spill  smem  kernel"]
    for k in sorted(kernels, key=lambda k: (k.source, k.arch, demangle(k.name))):
        rows.append(f"{k.arch:<8} {k.threads if k.threads else '-':>4} {k.registers if k.registers is not None else '-':>5}"
                    f" {k.block_registers if k.block_registers else '-':>9} {k.stack:>6}"
                    f" {k.spill_stores + k.spill_loads:>5} {k.smem:>5}  {k.source}: {short(k.name)}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("build", type=pathlib.Path, help="the CUDA build dir (e.g. build/cuda-check)")
    ap.add_argument("--max-stack", type=int, default=DEFAULT_MAX_STACK,
                    help=f"largest stack per thread in bytes (default {DEFAULT_MAX_STACK})")
    ap.add_argument("--quiet", action="store_true", help="print only the summary and the failures")
    ap.add_argument("--exceptions", type=pathlib.Path,
                    default=pathlib.Path(__file__).with_name("launch_resources_exceptions.txt"),
                    help="accepted spills (default: launch_resources_exceptions.txt beside this script)")
    ap.add_argument("--atomics-exceptions", type=pathlib.Path,
                    default=pathlib.Path(__file__).with_name("sass_atomics_exceptions.txt"),
                    help="accepted CAS / fp atomics (default: sass_atomics_exceptions.txt beside this script)")
    ap.add_argument("--cuobjdump", default=None, help="the cuobjdump to use (default: $CUOBJDUMP, PATH, nvcc's dir)")
    ap.add_argument("--no-sass", action="store_true", help="skip the SASS atomics check (says so)")
    a = ap.parse_args(argv)
    exceptions = parse_exceptions(a.exceptions.read_text()) if a.exceptions.is_file() else []
    atomic_exc = (parse_atomic_exceptions(a.atomics_exceptions.read_text())
                  if a.atomics_exceptions.is_file() else [])
    kernels, problems = collect(a.build)
    if not a.quiet and kernels:
        print(table(kernels))
    bad = problems + failures(kernels, a.max_stack, exceptions)
    archs = sorted({k.arch for k in kernels})
    print(f"launch resources: {len(kernels)} kernels x arch ({', '.join(archs) or 'none'}), "
          f"limits: regs x threads <= {REGS_PER_BLOCK}, no spills but the listed exceptions, "
          f"stack <= {a.max_stack} B")
    if kernels:
        top = max(kernels, key=lambda k: k.stack)
        print(f"launch resources: largest local stack {top.stack} B per thread ({top.arch} {short(top.name)}); "
              f"bound {a.max_stack} B")
    if a.no_sass:
        print("SASS atomics: NOT checked (--no-sass)")
    else:
        tool = find_cuobjdump(a.cuobjdump)
        if tool is None:
            bad.append("no cuobjdump (PATH, nvcc's dir, $CUDA_HOME/bin, $CUOBJDUMP): the SASS atomics check "
                       "cannot run; pass --cuobjdump or --no-sass")
        else:
            funcs, atomics, sprob = collect_sass(a.build, tool)
            bad += sprob
            bad += atomic_failures(atomics, atomic_exc)
            ncas = sum(1 for x in atomics if x.kind == "cas")
            nfp = len(atomics) - ncas
            print(f"SASS atomics: {len(funcs)} functions x arch disassembled ({tool}); {ncas} CAS and {nfp} "
                  f"floating-point atomic instructions in {len({(x.kernel, x.arch) for x in atomics})} "
                  "kernel(s) x arch; none allowed outside the listed exceptions")
            for e in atomic_exc:
                if e.used:
                    print(f"SASS atomics: accepted {e.kind} in {e.used} kernel(s) matching {e.arch} /{e.pattern}/: "
                          f"{e.reason}")
                elif funcs:
                    print(f"SASS atomics: stale exception (matches no kernel with {e.kind} atomics): "
                          f"{e.arch} {e.kind} /{e.pattern}/")
    for e in exceptions:
        if e.used:
            print(f"launch resources: accepted spills <= {e.max_spill} B in {e.used} kernel(s) matching "
                  f"{e.arch} /{e.pattern}/: {e.reason}")
        elif kernels:
            print(f"launch resources: stale exception (matches no spilling kernel): {e.arch} /{e.pattern}/")
    if not kernels:
        bad.append("no kernels found")
    if bad:
        print(f"launch resources: {len(bad)} failure(s):", file=sys.stderr)
        for b in bad:
            print("  " + b, file=sys.stderr)
        return 1
    print("launch resources: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
