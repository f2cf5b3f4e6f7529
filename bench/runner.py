"""The `softdec bench` runner: every bench/bench_<op>.py's cases in one run.

Each bench module defines ``cases(quick: bool, device: str) -> list[Case]``
(and pytest-benchmark tests for `pytest bench/`). The runner measures the copy
bandwidth first, times every case, prints the table, appends the JSON record
with machine, commit and versions, and plots the speedups.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import harness  # noqa: E402


def discover(only=None):
    mods = []
    for path in sorted(glob.glob(os.path.join(HERE, "bench_*.py"))):
        name = os.path.splitext(os.path.basename(path))[0]
        if only and not any(o in name for o in only):
            continue
        mods.append(importlib.import_module(name))
    return mods


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="softdec bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller shapes and fewer cases (smoke run)")
    p.add_argument("--only", default="", help="comma-separated op families (e.g. philox,soft_mixture)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    p.add_argument("--budget", type=float, default=4.0, help="max seconds timing one callable")
    p.add_argument("--rounds", type=int, default=harness.ROUNDS,
                   help="timing windows per fast callable and for the copy bandwidth (best kept)")
    p.add_argument("--json", default=None, help="output JSON (default bench/results/<time>.json)")
    p.add_argument("--plot", default=None, help="output PNG of speedups (default beside the JSON)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = p.parse_args(argv)

    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("softdec bench: --device cuda given but no CUDA device is available", file=sys.stderr)
        return 2

    env = harness.environment()
    info = env["softdec"]
    print(f"softdec {info['version']} | torch {info['torch']} | {info['cpu']} | threads {info['threads']} | "
          f"isa {','.join(info['cpu_isa']) or 'generic'} | device {args.device}"
          + (f" ({env['gpu']})" if "gpu" in env else ""))
    bw = harness.copy_bandwidth(args.device, windows=max(1, args.rounds))
    print(f"copy bandwidth ({args.device}): {bw:.1f} GB/s (read + write, best of {max(1, args.rounds)} windows); "
          f"byte floor = bytes / bandwidth")
    print(f"fast callables (< {harness.FAST_S * 1e3:.0f} ms a call) are timed in {max(1, args.rounds)} interleaved "
          "windows and keep their best median")
    print("ratios are baseline time / softdec time (higher is better); floor = floor time / softdec time\n")

    only = [o.strip() for o in args.only.split(",") if o.strip()]
    cases = []
    for mod in discover(only):
        cases.extend(mod.cases(quick=args.quick, device=args.device))
    print(harness.HEADER)
    rows = harness.run_cases(cases, bandwidth_gbs=bw, budget_s=args.budget, rounds=max(1, args.rounds),
                             skip=("compile",) if args.no_compile else ())
    env["timing"] = {"rounds": max(1, args.rounds), "fast_s": harness.FAST_S}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.json or os.path.join(HERE, "results", f"bench-{stamp}.json")
    harness.write_json(out, env, {args.device: bw}, rows)
    png = harness.plot(rows, args.plot or os.path.splitext(out)[0] + ".png")
    print(f"\nJSON: {out}" + (f"\nplot: {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
