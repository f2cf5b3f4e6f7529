"""The `softdec` command: `softdec info`, `softdec bench [...]`."""

from __future__ import annotations

import json
import os
import sys


def _find_bench_dir() -> str | None:
    cands = [os.environ.get("SOFTDEC_BENCH_DIR"), os.path.join(os.getcwd(), "bench")]
    d = os.getcwd()
    while True:
        cands.append(os.path.join(d, "bench"))
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    here = os.path.dirname(os.path.abspath(__file__))
    cands.append(os.path.join(here, "..", "..", "bench"))  # source tree (python/softdec)
    for c in cands:
        if c and os.path.isfile(os.path.join(c, "runner.py")) and os.path.isfile(os.path.join(c, "harness.py")):
            return os.path.abspath(c)
    return None


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: softdec {info,bench} [options]\n\n"
              "  info    print the build and machine facts (JSON)\n"
              "  bench   run the benchmark suite (softdec bench --help)")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "info":
        import softdec
        print(json.dumps(softdec.info(), indent=2))
        return 0
    if cmd == "bench":
        bench_dir = _find_bench_dir()
        if bench_dir is None:
            print("softdec bench: no bench/ folder found; run it from a softdec source checkout "
                  "or set SOFTDEC_BENCH_DIR", file=sys.stderr)
            return 2
        sys.path.insert(0, bench_dir)
        import runner
        return runner.main(rest)
    print(f"softdec: unknown command {cmd!r} (expected info or bench)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
