"""Child process of tests/test_fuzz.py: runs the hypothesis fuzz cases of some ops.

    python fuzz_runner.py --ops sample,verify --examples 60 [--seed S] --last LAST.json --results RES.json

Before each example it writes ``{"op", "spec"}`` to LAST (flushed and fsynced),
so a crash that kills this process (segfault, abort, sanitizer report) is
attributed by the parent to the op and the exact spec. After each op it
rewrites RES with ``{op: {"examples": n, "error": text or None}}``: ops missing
from RES after an abnormal exit are the crashed one and those never started.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hseed

import fuzz_cases


def _write(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, default=repr)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run_op(op, examples, seed, last, shrink):
    strategy, _ = fuzz_cases.CASES[op]
    count = [0]

    @settings(max_examples=examples, deadline=None, database=None, derandomize=seed is None,
              suppress_health_check=list(HealthCheck), print_blob=True,
              phases=[Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else []))
    @given(spec=strategy)
    def case(spec):
        _write(last, {"op": op, "spec": spec})
        count[0] += 1
        fuzz_cases.run(spec)

    if seed is not None:
        case = hseed(seed)(case)
    try:
        case()
        err = None
    except BaseException as e:  # noqa: BLE001  (a failing example: report it, keep going)
        notes = "\n".join(dict.fromkeys(getattr(e, "__notes__", [])))  # (hypothesis repeats some)
        err = "".join(traceback.format_exception_only(type(e), e)).strip() + ("\n" + notes if notes else "")
        err += "\n" + "".join(traceback.format_tb(e.__traceback__)[-3:])
    return count[0], err


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", required=True)
    ap.add_argument("--examples", type=int, default=60)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--last", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--no-shrink", action="store_true")
    a = ap.parse_args()
    results = {}
    for op in a.ops.split(","):
        t0 = time.perf_counter()
        n, err = run_op(op, a.examples, a.seed, a.last, not a.no_shrink)
        results[op] = {"examples": n, "error": err, "seconds": round(time.perf_counter() - t0, 2)}
        _write(a.results, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
