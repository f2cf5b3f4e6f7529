#!/usr/bin/env python3
"""Check that a built softdec _C.so keeps each CPU level's instructions inside that level.

The CPU kernels are compiled once per capability level (csrc/cpu/capability.h), each copy in
namespace softdec::cpu_<level>; everything else (registration, the dispatch that picks a level,
pybind11 glue, and the inline torch/std code the link keeps) must run on any CPU the build
supports. This disassembles the library (objdump -d -C, unstripped: it needs the local
symbols) and attributes every instruction to its function:

* AVX-512 (EVEX-encoded instructions, zmm registers, xmm/ymm16-31, opmask registers k0-k7)
  is allowed only in functions whose (demangled) name contains ``cpu_avx512::`` (the
  avx512 level's own code and the templates instantiated with it) -- or anywhere in a
  single-level ``native`` build, which is not dispatched.
* VEX-encoded instructions (AVX, AVX2, FMA, F16C) are allowed only in ``cpu_avx2::`` /
  ``cpu_avx512::`` functions when the build's lowest level is ``generic`` (--baseline
  generic), i.e. when the library promises to run on x86-64 CPUs without AVX. With the
  default levels (avx2 lowest, --baseline avx2) the library needs AVX2 anyway and only the
  AVX-512 rule applies, but --strict-glue still requires the glue that runs before a level
  is chosen (softdec::cpu_dispatch, PyInit__C, static initialisers) to be free of VEX too.

Usage: tools/check_isa.py path/to/_C.so [--baseline avx2|generic] [--strict-glue] [-v]
Exit 0: clean; 1: violations (listed); 2: cannot check (no objdump, stripped library).
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import defaultdict

FUNC_RE = re.compile(r"^([0-9a-f]+) <(.*)>:$")
# objdump line: "  1234:\t62 f1 7c 48 10 04 24 \tvmovups (%rsp),%zmm0"
INSN_RE = re.compile(r"^\s*[0-9a-f]+:\t((?:[0-9a-f]{2} )+)\s*\t?(.*)$")
PREFIXES = {"67", "2e", "3e", "26", "36", "64", "65"}  # may precede an EVEX/VEX prefix
AVX512_REG_RE = re.compile(r"%zmm\d+|%[xy]mm(1[6-9]|2\d|3[01])\b|%k[0-7]\b")
VEX_REG_RE = re.compile(r"%ymm\d+")

GLUE_MARKERS = ("softdec::cpu_dispatch", "PyInit__C", "_GLOBAL__sub_I", "build_info",
                "pybind11_init__C")


def classify(raw: list[str], text: str) -> str | None:
    """'avx512', 'vex' or None for one instruction (raw bytes of its first line)."""
    i = 0
    while i < len(raw) and raw[i] in PREFIXES:
        i += 1
    first = raw[i] if i < len(raw) else ""
    # In 64-bit mode 0x62 is always the EVEX prefix (BOUND is invalid there).
    if first == "62" or AVX512_REG_RE.search(text):
        return "avx512"
    if first in ("c4", "c5") or VEX_REG_RE.search(text):
        return "vex"
    return None


REF_RE = re.compile(r"^(?:call|j)\w*\s+([0-9a-f]+) <|# ([0-9a-f]+) <")


def scan(objdump_out: str):
    """Functions are keyed by address (each level has its own copy of a same-named clone).
    -> (names {addr: name}, counts {addr: {"avx512": n, "vex": n}}, callers {addr: {addr}})."""
    names: dict[int, str] = {}
    counts: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    refs: list[tuple[int, int]] = []  # (referring function, target address)
    func = -1
    names[func] = "<no symbol>"
    for line in objdump_out.splitlines():
        m = FUNC_RE.match(line)
        if m:
            func = int(m.group(1), 16)
            names[func] = m.group(2)
            continue
        m = INSN_RE.match(line)
        if not m or not m.group(2):
            continue
        text = m.group(2)
        kind = classify(m.group(1).split(), text)
        if kind:
            counts[func][kind] += 1
        r = REF_RE.search(text)
        if r:
            refs.append((func, int(r.group(1) or r.group(2), 16)))
    callers: dict[int, set[int]] = defaultdict(set)
    for src, dst in refs:
        # references to a function's entry: calls, jumps (tail calls, .cold parts), addresses taken
        if dst in names and dst != src:
            callers[dst].add(src)
    return names, counts, callers


def reachable_only_from(funcs, allowed, callers):
    """The functions of `funcs` whose every referrer is allowed (or such a function itself):
    the local clones (.constprop, .isra, .cold) and inline-function copies only a level's code
    calls. A function nothing in the code refers to (e.g. only a vtable) is not contained."""
    contained: set[int] = set()
    changed = True
    while changed:
        changed = False
        for f in funcs:
            if f in contained or not callers.get(f):
                continue
            if all(allowed(c) or c in contained for c in callers[f]):
                contained.add(f)
                changed = True
    return contained


def check(names, counts, callers, baseline: str, strict_glue: bool):
    """Violations [(name, kind, count)] and how many functions outside the avx512 namespace
    may use AVX-512 because only its code refers to them (clones GCC made in its objects)."""
    def in512(f):
        return "cpu_avx512::" in names[f]

    def in_level(f):
        return "cpu_avx512::" in names[f] or "cpu_avx2::" in names[f]

    bad = []
    out512 = [f for f, c in counts.items() if c.get("avx512") and not in512(f)]
    ok512 = reachable_only_from(out512, in512, callers)
    bad += [(names[f], "avx512", counts[f]["avx512"]) for f in out512 if f not in ok512]
    outvex = [f for f, c in counts.items() if c.get("vex") and not in_level(f)]
    if baseline == "generic":
        okvex = reachable_only_from(outvex, in_level, callers)
        bad += [(names[f], "vex", counts[f]["vex"]) for f in outvex if f not in okvex]
    elif strict_glue:
        bad += [(names[f], "vex", counts[f]["vex"]) for f in outvex
                if any(mk in names[f] for mk in GLUE_MARKERS)]
    return sorted(bad), len(ok512)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("library")
    ap.add_argument("--baseline", choices=["avx2", "generic"], default=None,
                    help="the build's lowest CPU level (default: read from the symbols)")
    ap.add_argument("--strict-glue", action="store_true",
                    help="also forbid VEX in the glue that runs before a level is chosen")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    objdump = shutil.which("objdump")
    if not objdump:
        print("check_isa: objdump not found", file=sys.stderr)
        return 2
    out = subprocess.run([objdump, "-d", "-C", "-w", args.library],
                         check=True, capture_output=True, text=True).stdout
    names, counts, callers = scan(out)
    nfunc = len(names) - 1
    if nfunc < 50 or not any("softdec::" in n for n in names.values()):
        print(f"check_isa: {args.library} has no local symbols (stripped?); cannot attribute "
              "instructions to functions", file=sys.stderr)
        return 2
    levels = [lv for lv in ("generic", "avx2", "avx512", "native")
              if f"softdec::cpu_{lv}::" in out]
    native = levels == ["native"]
    baseline = args.baseline or ("generic" if "generic" in levels else "avx2")
    bad, n_contained = ([], 0) if native else check(names, counts, callers, baseline, args.strict_glue)
    total = defaultdict(int)
    where = defaultdict(int)
    for func, c in counts.items():
        for k, n in c.items():
            total[k] += n
            if k == "avx512":
                where["cpu_avx512" if "cpu_avx512::" in names[func] else "other"] += n
    print(f"check_isa: {args.library}: levels {', '.join(levels) or '?'} (baseline {baseline}); "
          f"{nfunc} functions; AVX-512 instructions: {total['avx512']} "
          f"({where['cpu_avx512']} in softdec::cpu_avx512, the rest in {n_contained} functions only "
          f"it refers to), VEX: {total['vex']}")
    if args.verbose:
        for func, c in sorted(counts.items(), key=lambda x: -sum(x[1].values()))[:20]:
            print(f"  {dict(c)}  {names[func][:160]}")
    if native:
        print("check_isa: single-level native build (not dispatched): nothing to check")
        return 0
    if bad:
        print(f"check_isa: FAIL: {len(bad)} functions outside their level use its instructions:")
        for func, kind, n in bad[:40]:
            print(f"  {kind:6s} x{n:<5d} {func[:200]}")
        return 1
    print("check_isa: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
