"""softdec.hf.generate(compile=True) vs the eager loop vs transformers' own generate, on a randomly
initialised model with Qwen2.5-0.5B's shapes (built from a config, nothing downloaded).

Run: ``PYTHONPATH=python python bench/bench_hf_compile.py [--layers 24] [--new 32] [--reps 3]``.
Each timed call generates ``new`` tokens for ``B`` rows from a ``prompt``-token prompt; the first
compiled call (compilation) is timed separately and excluded. Prints median, p20 and p80 per call
and the speedups (baseline median / compiled median), checks that the compiled loop returns the
eager loop's tokens, and appends one JSON line per row to bench/results_hf_compile.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time

import torch

from softdec.bench.bench_e2e import build_model  # Qwen2.5-0.5B shapes


def _times(fn, reps):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    q = lambda f: ts[min(len(ts) - 1, int(f * (len(ts) - 1) + 0.5))]  # noqa: E731
    return q(0.5), q(0.2), q(0.8)


def _append(args, row):
    """One JSON line per measured row (machine, commit, versions, settings, numbers)."""
    import transformers
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        commit = "unknown"
    rec = dict(bench="hf_compile", machine=platform.machine(), processor=platform.processor(),
               threads=torch.get_num_threads(), commit=commit, torch=torch.__version__,
               transformers=transformers.__version__, args=vars(args), **row)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results_hf_compile.json"), "a") as f:
        f.write(json.dumps(rec) + "\n")


def main():
    import softdec.hf as H
    import softdec.strategies as S
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--strategies", default="greedy,soft")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build_model(args.layers, "cpu", torch.float32)
    V = model.config.vocab_size
    rows = []
    print(f"Qwen2.5-0.5B shapes, {args.layers} layers, fp32, CPU x{torch.get_num_threads()} threads, "
          f"prompt {args.prompt}, {args.new} new tokens per call", flush=True)
    print(f"{'strategy':9} {'B':>2} {'compile s':>9} {'compiled s (p20-p80)':>24} {'eager s':>9} {'hf s':>9} "
          f"{'x eager':>8} {'x hf':>7} same", flush=True)
    for name in args.strategies.split(","):
        for B in [int(b) for b in args.batches.split(",")]:
            g = torch.Generator().manual_seed(B)
            ids = torch.randint(0, V, (B, args.prompt), generator=g)
            st = S.Discrete(temperature=0.0) if name == "greedy" else S.SoftThinking(top_k=10, seed=1)
            run = dict(strategy=st, max_new_tokens=args.new, eos_token_id=[])
            t0 = time.perf_counter()
            c = H.generate(model, ids, compile=True, **run)
            t_compile = time.perf_counter() - t0
            e = H.generate(model, ids, **run)
            same = bool(torch.equal(c.sequences, e.sequences))
            tc = _times(lambda: H.generate(model, ids, compile=True, **run), args.reps)
            te = _times(lambda: H.generate(model, ids, **run), args.reps)
            th = (float("nan"),) * 3
            if name == "greedy":
                th = _times(lambda: model.generate(ids, do_sample=False, max_new_tokens=args.new,
                                                   min_new_tokens=args.new, pad_token_id=0), args.reps)
            row = dict(strategy=name, B=B, compile_s=t_compile, compiled=tc, eager=te, hf=th, same_tokens=same,
                       x_eager=te[0] / tc[0], x_hf=th[0] / tc[0])
            rows.append(row)
            _append(args, row)
            print(f"{name:9} {B:>2} {t_compile:9.1f} {tc[0]:9.3f} ({tc[1]:.3f}-{tc[2]:.3f}) {te[0]:9.3f} "
                  f"{th[0]:9.3f} {row['x_eager']:8.2f} {row['x_hf']:7.2f} {same}", flush=True)


if __name__ == "__main__":
    main()
