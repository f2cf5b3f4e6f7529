"""The `softdec` command: `softdec info`, `softdec bench [...]`."""

from __future__ import annotations

import json
import sys


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
        from .bench import runner
        return runner.main(rest)
    print(f"softdec: unknown command {cmd!r} (expected info or bench)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
