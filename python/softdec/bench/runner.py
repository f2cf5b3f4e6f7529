"""The `softdec bench` runner: every softdec.bench.bench_<op> module's cases in one run.

Each bench module defines ``cases(quick: bool, device: str[, full: bool])`` and
returns a list of ``harness.Case``. Three sizes:

- default: the DESIGN shapes that matter most (one or two rows per family at the
  real vocabulary / cache sizes), under 5 minutes on 2 CPU cores including the
  torch.compile warm-ups of the references;
- ``--quick``: a smoke run (under 1 minute); on CUDA it keeps the DESIGN shapes of the rows the GPU
  targets are stated for (sample plain / filtered at B = 64, soft_mixture B in {1, 8, 64} at D = 3584,
  verify B = 64, sparse decode N = 32768), with the FlashInfer columns when flashinfer imports;
- ``--full``: the whole DESIGN grid (20+ minutes on 2 cores).

A module whose ``cases`` takes no ``full`` argument gives its non-quick grid in
both the default and the full run. The runner measures the copy bandwidth
first, times every case (progress on stderr, one line per finished row with the
elapsed time), prints the table on stdout, writes the JSON record (machine,
commit, versions) and plots the speedups.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import pkgutil
import sys
import time

from . import _peers, harness

FAMILIES_DOC = "philox, sampling, soft_mixture, verify, sparse_attention, e2e"


def module_names() -> list:
    """The bench_<op> modules shipped in softdec.bench, sorted."""
    here = os.path.dirname(os.path.abspath(__file__))
    return sorted(m.name for m in pkgutil.iter_modules([here]) if m.name.startswith("bench_"))


def discover(only=None) -> list:
    names = module_names()
    if only:
        unknown = [o for o in only if not any(o in n for n in names)]
        if unknown:
            known = ", ".join(n[len("bench_"):] for n in names)
            raise ValueError(f"--only: no benchmark family matches {', '.join(map(repr, unknown))} "
                             f"(families: {known})")
        names = [n for n in names if any(o in n for o in only)]
    return [importlib.import_module(f"{__package__}.{n}") for n in names]


def module_cases(mod, *, quick: bool, full: bool, device: str) -> list:
    params = inspect.signature(mod.cases).parameters
    if "full" in params:
        return mod.cases(quick=quick, device=device, full=full)
    return mod.cases(quick=quick, device=device)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="softdec bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="smoke run: small shapes, few rows, no torch.compile baselines (< 1 minute); "
                           "with --device cuda the DESIGN shapes of the issue-17 rows (a GPU runs them fast)")
    size.add_argument("--full", action="store_true", help="the whole DESIGN grid (20+ minutes on 2 cores)")
    p.add_argument("--only", default="", metavar="NAME[,NAME]",
                   help=f"comma-separated op families ({FAMILIES_DOC})")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu (default) or cuda")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    p.add_argument("--budget", type=float, default=None,
                   help="max seconds timing one callable (default 4, --quick 0.5)")
    p.add_argument("--rounds", type=int, default=None,
                   help=f"timing windows per fast callable and for the copy bandwidth, best kept "
                        f"(default {harness.ROUNDS}, --quick 1)")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="output JSON (default ./softdec-bench-results/bench-<time>.json in the current folder)")
    p.add_argument("--plot", default=None, metavar="PATH", help="output PNG of speedups (default beside the JSON)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.budget is not None and not args.budget > 0:
        p.error(f"--budget must be > 0, got {args.budget}")
    if args.rounds is not None and args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    only = [o.strip() for o in args.only.split(",") if o.strip()]
    if args.only and not only:
        p.error("--only: give at least one family name")
    rounds = args.rounds or (1 if args.quick else harness.ROUNDS)
    budget = args.budget or (0.5 if args.quick else 4.0)
    mode = "quick" if args.quick else ("full" if args.full else "default")

    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("softdec bench: --device cuda given but no CUDA device is available", file=sys.stderr)
        return 2
    try:
        mods = discover(only)
    except ValueError as e:
        p.error(str(e))

    t_start = time.perf_counter()
    env = harness.environment()
    info = env["softdec"]
    print(f"softdec {info['version']} | torch {info['torch']} | {info['cpu']} | threads {info['threads']} | "
          f"isa {','.join(info['cpu_isa']) or 'generic'} | device {args.device} | run {mode}"
          + (f" ({env['gpu']})" if "gpu" in env else ""))
    print(f"  measuring copy bandwidth ({rounds} window(s)) ...", file=sys.stderr, flush=True)
    bw = harness.copy_bandwidth(args.device, windows=rounds)
    print(f"copy bandwidth ({args.device}): {bw:.1f} GB/s (read + write, best of {rounds} windows); "
          f"byte floor = bytes / bandwidth")
    print(f"fast callables (< {harness.FAST_S * 1e3:.0f} ms a call) are timed in {rounds} interleaved "
          "windows and keep their best median")
    print("ratios are baseline time / softdec time (higher is better); floor = floor time / softdec time"
          + ("" if args.device != "cuda" else
             "\non CUDA: the copy above is a device-to-device copy, so floor = the fraction of HBM bandwidth "
             "(issue 17 target >= 0.70 on the memory-bound rows); " + _peers.summary()) + "\n", flush=True)
    if args.device == "cuda":
        env["peers"] = {"flashinfer": _peers.version()}

    cases = []
    for mod in mods:
        print(f"  [{time.perf_counter() - t_start:6.1f}s] preparing {mod.__name__.rsplit('.', 1)[1]} ...",
              file=sys.stderr, flush=True)
        cases.extend(module_cases(mod, quick=args.quick, full=args.full, device=args.device))
    print(harness.HEADER, flush=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.json or os.path.join(os.getcwd(), "softdec-bench-results", f"bench-{stamp}.json")
    env["timing"] = {"rounds": rounds, "fast_s": harness.FAST_S, "mode": mode, "budget_s": budget,
                     "total_s": None, "partial": True, "cases": len(cases)}

    def checkpoint(rows_so_far):  # a run stopped by a time limit keeps its finished rows
        harness.write_json(out, env, {args.device: bw}, rows_so_far)

    rows = harness.run_cases(cases, bandwidth_gbs=bw, budget_s=budget, rounds=rounds,
                             skip=("compile",) if args.no_compile or args.quick else (), t0=t_start,
                             on_row=checkpoint)
    total = time.perf_counter() - t_start
    env["timing"].update(total_s=total, partial=False)
    if args.quick and not args.no_compile:
        print("\n--quick: no torch.compile baselines (their warm-ups alone take minutes); run without --quick")
    elif any(c.compile_capped for c in cases) and not args.no_compile:
        print("\ncompile '-' on some rows: in this run size the torch.compile baseline is timed on one row per "
              "op family (its warm-up dominates a short run); --full compiles every row")
    harness.write_json(out, env, {args.device: bw}, rows)
    png = harness.plot(rows, args.plot or os.path.splitext(out)[0] + ".png")
    print(f"\n{len(rows)} rows in {total:.0f} s ({mode} run)\nJSON: {out}" + (f"\nplot: {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
