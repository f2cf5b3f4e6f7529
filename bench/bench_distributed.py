"""softdec.distributed vs the all-gather-the-logits baseline (gloo, CPU ranks).

Run as a script (it starts its own ranks; `softdec bench` has no cases from it):

    PYTHONPATH=python python bench/bench_distributed.py [--world 2] [--reps 30] [--json out.json]

Per decode step, on vocabulary shards of V = 151936 (Qwen2.5) over `world` ranks,
B in {1, 8, 64}, D = 3584 (bf16 embedding rows):

- sample(top_k=50, top_p=0.9), soft_mixture(top_k=10) and verify(method="greedy", K=4):
  softdec.distributed exchanges O(B k) partials (+ the [B, D] mixture);
- sample(top_p=0.9) (no top-k): the top-p cut by a radix select over fixed-point mass
  histograms (4 rounds of [B, 256] int64, summed across ranks), then the blockwise draw;
- sample() (plain) and sample(min_p=0.05): the blockwise inverse-CDF draw (boundary
  tokens, one float64 per 1024-token block, one int64 per row);
- verify(method="exact", top_k=50, K=4) with a dense draft shard: O(B K k) candidates and
  the draft's q at them, then the single-device op on a candidates-only row;
- verify(method="exact", top_p=0.9, K=4) with one-hot drafts: the top-p cut's radix rounds,
  the normaliser passed rank to rank, each rank's race winner;
- the baseline is what serving engines do before sampling: all_gather the full logits
  row(s), then the single-device op (for soft_mixture: then each rank's weighted rows of its
  own shard, all_reduce'd, as the table is sharded).

Bytes are what one rank receives through the collectives in one call (all_gather:
(world - 1) x the tensor; all_reduce: 2 (world - 1) / world x the tensor, a ring;
broadcast: the tensor), tallied by wrapping torch.distributed's functions. Times are
medians over `reps` calls (each after a barrier), on one thread per rank. Both paths
give the same ids (checked every call).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

V, D, K = 151936, 3584, 4
BATCHES = (1, 8, 64)


def cases(quick: bool = False, device: str = "cpu"):
    """`softdec bench` discovers every bench_*.py: this suite needs several processes, run it
    as a script instead."""
    return []


class _Tally:
    def __init__(self):
        self.bytes = 0
        self.calls = 0
        self._orig = {}

    def __enter__(self):
        W = dist.get_world_size()
        for name in ("all_gather", "all_reduce", "broadcast"):
            f = getattr(dist, name)
            self._orig[name] = f

            def wrap(*a, _f=f, _n=name, **kw):
                t = a[1] if _n == "all_gather" else a[0]
                n = t.numel() * t.element_size()
                self.bytes += {"all_gather": (W - 1) * n, "all_reduce": int(2 * (W - 1) / W * n),
                               "broadcast": n if dist.get_rank() != kw.get("src", 0) else 0}[_n]
                self.calls += 1
                return _f(*a, **kw)
            setattr(dist, name, wrap)
        return self

    def __exit__(self, *exc):
        for name, f in self._orig.items():
            setattr(dist, name, f)


def _gather_rows(x, world):
    """The baseline's exchange: the full rows from every rank's shard (equal shards padded)."""
    from softdec.distributed import shard_range
    n_max = shard_range(V, world, 0)[1]
    pad = torch.full((*x.shape[:-1], n_max), -float("inf"), dtype=x.dtype)
    pad[..., :x.shape[-1]] = x
    parts = [torch.empty_like(pad) for _ in range(world)]
    dist.all_gather(parts, pad)
    return torch.cat([p[..., :shard_range(V, world, r)[1]] for r, p in enumerate(parts)], -1)


def _worker(rank, world, init, reps, out, only=(), batches=BATCHES):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    import softdec
    import softdec.distributed as sd
    lo, n = sd.shard_range(V, world, rank)
    rows = []
    for B in batches:
        g = torch.Generator().manual_seed(B)
        x = torch.randn(B, V, generator=g) * 2
        xv = torch.randn(B, K + 1, V, generator=g) * 2
        table = (torch.randn(n, D, generator=g) * 0.02).bfloat16()
        xs, xvs = x[:, lo:lo + n].contiguous(), xv[..., lo:lo + n].contiguous()
        drafts = xv[:, :K].argmax(-1)
        seed = torch.arange(B)

        def dist_sample():
            return sd.sample(xs, vocab_offset=lo, vocab_size=V, top_k=50, top_p=0.9, seed=seed).ids

        def base_sample():
            return softdec.sample(_gather_rows(xs, world), top_k=50, top_p=0.9, seed=seed).ids

        def dist_soft():
            return sd.soft_mixture(xs, table, vocab_offset=lo, vocab_size=V, top_k=10).ids

        dummy = torch.zeros(V, 1)

        def base_soft():
            full = _gather_rows(xs, world)
            st = softdec.soft_mixture(full, dummy, top_k=10)
            own = (st.ids >= lo) & (st.ids < lo + n)
            w = torch.where(own, st.weights, torch.zeros_like(st.weights))
            e = (table[(st.ids - lo).clamp(0, n - 1)].float() * w[..., None]).sum(1)
            dist.all_reduce(e)
            return st.ids

        def dist_top_p():
            return sd.sample(xs, vocab_offset=lo, vocab_size=V, top_p=0.9, seed=seed).ids

        def base_top_p():
            return softdec.sample(_gather_rows(xs, world), top_p=0.9, seed=seed).ids

        def dist_plain():
            return sd.sample(xs, vocab_offset=lo, vocab_size=V, seed=seed).ids

        def base_plain():
            return softdec.sample(_gather_rows(xs, world), seed=seed).ids

        def dist_minp():
            return sd.sample(xs, vocab_offset=lo, vocab_size=V, min_p=0.05, seed=seed).ids

        def base_minp():
            return softdec.sample(_gather_rows(xs, world), min_p=0.05, seed=seed).ids

        qd = torch.softmax(xv[:, :K] + torch.randn(B, K, V, generator=g), -1)
        qds = qd[..., lo:lo + n].contiguous()

        def dist_vexact():
            return sd.verify(xvs, drafts, draft_probs=qds, vocab_offset=lo, vocab_size=V, top_k=50,
                             seed=seed).tokens

        def base_vexact():
            return softdec.verify(_gather_rows(xvs, world), drafts, draft_probs=_gather_rows(qds, world),
                                  top_k=50, seed=seed).tokens

        def dist_vtopp():
            return sd.verify(xvs, drafts, vocab_offset=lo, vocab_size=V, top_p=0.9, seed=seed).tokens

        def base_vtopp():
            return softdec.verify(_gather_rows(xvs, world), drafts, top_p=0.9, seed=seed).tokens

        def dist_verify():
            return sd.verify(xvs, drafts, vocab_offset=lo, vocab_size=V, method="greedy").tokens

        def base_verify():
            return softdec.verify(_gather_rows(xvs, world), drafts, method="greedy").tokens

        for op, fd, fb in (("sample top_k=50,top_p=0.9", dist_sample, base_sample),
                           ("sample top_p=0.9", dist_top_p, base_top_p),
                           ("sample plain", dist_plain, base_plain),
                           ("sample min_p=0.05", dist_minp, base_minp),
                           (f"verify exact top_k=50 dense K={K}", dist_vexact, base_vexact),
                           (f"verify exact top_p=0.9 K={K}", dist_vtopp, base_vtopp),
                           ("soft_mixture top_k=10", dist_soft, base_soft),
                           (f"verify greedy K={K}", dist_verify, base_verify)):
            if only and not any(o in op for o in only):
                continue
            assert torch.equal(fd(), fb()), op
            res = {}
            for name, f in (("dist", fd), ("allgather", fb)):
                with _Tally() as t:
                    f()
                times = []
                for _ in range(reps):
                    dist.barrier()
                    t0 = time.perf_counter()
                    f()
                    times.append(time.perf_counter() - t0)
                tm = torch.tensor([statistics.median(times)])
                dist.all_reduce(tm, op=dist.ReduceOp.MAX)  # the slowest rank's median
                res[name] = dict(bytes=t.bytes, collectives=t.calls, ms=float(tm) * 1e3)
            rows.append(dict(op=op, B=B, V=V, world=world, **{f"{k}_{m}": v for k, r in res.items()
                                                               for m, v in r.items()}))
    if rank == 0:
        with open(out, "w") as f:
            json.dump(rows, f, indent=1)
    dist.destroy_process_group()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--json", default=None)
    p.add_argument("--ops", default="", help="comma-separated substrings of the op names to run (default: all)")
    p.add_argument("--batches", default=",".join(map(str, BATCHES)), help="comma-separated B values")
    a = p.parse_args(argv)
    import tempfile
    tmp = tempfile.mkdtemp()
    out = a.json or os.path.join(tmp, "bench_distributed.json")
    mp.start_processes(_worker, args=(a.world, f"file://{tmp}/rdv", a.reps, out,
                                          tuple(o for o in a.ops.split(",") if o),
                                          tuple(int(b) for b in a.batches.split(","))), nprocs=a.world,
                       start_method="spawn")
    rows = json.load(open(out))
    print(f"{'op':28s} {'B':>2s} {'world':>5s} | {'dist bytes':>11s} {'coll':>4s} {'ms':>8s} | "
          f"{'allgather bytes':>15s} {'coll':>4s} {'ms':>8s} | {'bytes x':>8s} {'time x':>6s}")
    for r in rows:
        print(f"{r['op']:28s} {r['B']:2d} {r['world']:5d} | {r['dist_bytes']:11,d} {r['dist_collectives']:4d} "
              f"{r['dist_ms']:8.3f} | {r['allgather_bytes']:15,d} {r['allgather_collectives']:4d} "
              f"{r['allgather_ms']:8.3f} | {r['allgather_bytes'] / max(r['dist_bytes'], 1):8.1f} "
              f"{r['allgather_ms'] / r['dist_ms']:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
