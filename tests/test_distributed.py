"""softdec.distributed: vocabulary-parallel ops on 2 and 4 gloo processes equal the
single-device ops (ids exactly; floats within the tolerances documented in
softdec.distributed).

Each test spawns its ranks with torch.multiprocessing (bounded by a timeout); every
rank holds a shard of the same full logits, runs the distributed op and compares
with the single-device op on the full row. V = 1031 is not divisible by 2 or 4,
and rows whose finite tokens sit in one shard make k larger than other shards'
kept sets.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist

import softdec
import softdec.distributed as sd
from softdec import reference as ref
from dist_spawn import spawn

TIMEOUT_S = 120
V = 1031


def _spawn(fn, world: int, tmp_path, *args):
    """Run fn(rank, world, *args) on `world` gloo ranks; fail on error or after TIMEOUT_S."""
    spawn(fn, world, tmp_path, *args, timeout=TIMEOUT_S)


def _logits(B, V, *, scale=3.0, seed=0, extra=()):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, *extra, V, generator=g) * scale
    return x, g


def _edge_rows(x):
    """NaN in row 1, all -inf row 2, row 3 finite only in the last shard, row 4 with
    ties across shards (equal logits at ids in different shards)."""
    x[1, ..., 5] = float("nan")
    x[2] = -float("inf")
    x[3, ..., :V - 40] = -float("inf")
    x[4, ..., 3] = x[4, ..., V - 2] = x[4].max() + 1.0
    return x


# ------------------------------------------------------------------ sample

def _sample_worker(rank, world):
    x = _edge_rows(_logits(6, V)[0])
    lo, n = sd.shard_range(V, world, rank)
    xs = x[:, lo:lo + n]
    configs = [dict(temperature=0.0), dict(top_k=5), dict(top_k=60, top_p=0.9),
               dict(top_k=300, temperature=0.7),  # k > 40 finite tokens of row 3, > a 4-rank shard
               dict(top_k=50, min_p=0.1), dict(), dict(top_p=0.8), dict(min_p=0.05, temperature=0.7),
               dict(top_k=torch.tensor([0, 3, 7, 100, 1, 2000]),
                    temperature=torch.tensor([1.0, 0.0, 0.5, 1.0, 2.0, 1.0]))]
    for kw in configs:
        for seed in range(12):
            a = softdec.sample(x, seed=seed, **kw)
            b = sd.sample(xs, vocab_offset=lo, vocab_size=V, seed=seed, **kw)
            assert torch.equal(a.ids, b.ids), (kw, seed, a.ids, b.ids)
            assert torch.equal(a.valid, b.valid), (kw, seed)
        # per-row seed tensors and offsets
        s, o = torch.arange(6) * 7 + 1, torch.arange(6)
        a = softdec.sample(x, seed=s, offset=o, **kw)
        b = sd.sample(xs, vocab_offset=lo, vocab_size=V, seed=s, offset=o, **kw)
        assert torch.equal(a.ids, b.ids), kw
    # bf16 logits
    xb = x.bfloat16()
    a = softdec.sample(xb, top_k=20, seed=3)
    b = sd.sample(xb[:, lo:lo + n], vocab_offset=lo, vocab_size=V, top_k=20, seed=3)
    assert torch.equal(a.ids, b.ids)
    # seed=None: rank 0 draws the seeds, every rank returns the same ids
    b = sd.sample(xs, vocab_offset=lo, vocab_size=V, top_k=50)
    allids = [torch.empty_like(b.ids) for _ in range(world)]
    dist.all_gather(allids, b.ids)
    assert all(torch.equal(allids[0], t) for t in allids)


@pytest.mark.parametrize("world", [2, 4])
def test_sample_equals_single_device(world, tmp_path):
    _spawn(_sample_worker, world, tmp_path)


def _layouts(Vv, world):
    """shard_range's split, and a hand-made one: shards ending on block (1024-token) edges,
    one shorter than a block, one spanning several blocks."""
    even = [sd.shard_range(Vv, world, r) for r in range(world)]
    cuts = {2: [0, 2048, Vv], 4: [0, 1024, 1500, 3072, Vv]}[world]
    odd = [(cuts[r], cuts[r + 1] - cuts[r]) for r in range(world)]
    return [even, odd]


def _sample_blocks_worker(rank, world):
    """Plain and min-p rows (the blockwise inverse-CDF draw on shards): V over several
    1024-token blocks, blocks split between shards and blocks inside one shard, rows whose
    mass sits in one shard's block (the pick is rank-local there)."""
    Vv, B = 4100, 8
    x, g = _logits(B, Vv, scale=2.0, seed=7)
    x[1, 5] = float("nan")                  # invalid
    x[2, :3000] = -float("inf")             # mass in the last shards only
    x[3, 1100:1300] += 8.0                  # mass in one block
    x[4] = x[4].bfloat16().float()          # ties
    x[5, :] = 0.0                           # uniform row: every block counts
    x[6, 2040:2060] += 6.0                  # mass around a block edge
    cfgs = [dict(), dict(temperature=0.3), dict(temperature=2.0), dict(min_p=0.05),
            dict(min_p=0.3, temperature=0.7), dict(top_k=Vv, min_p=0.01),
            dict(temperature=torch.tensor([1.0, 0.5, 0.0, 2.0, 1.0, 0.7, 1.3, 0.9]),
                 min_p=torch.tensor([0.0, 0.1, 0.0, 0.0, 0.2, 0.0, 0.05, 0.0]),
                 top_k=torch.tensor([0, 0, 0, 5, 0, 0, 0, 40]))]
    for layout in _layouts(Vv, world):
        lo, n = layout[rank]
        xs = x[:, lo:lo + n]
        for kw in cfgs:
            for seed in range(25):
                a = softdec.sample(x, seed=seed, **kw)
                b = sd.sample(xs, vocab_offset=lo, vocab_size=Vv, seed=seed, **kw)
                assert torch.equal(a.ids, b.ids), (layout, kw, seed, a.ids, b.ids)
                assert torch.equal(a.valid, b.valid)
        a = softdec.sample(x.bfloat16(), seed=3, min_p=0.02)
        b = sd.sample(xs.bfloat16(), vocab_offset=lo, vocab_size=Vv, seed=3, min_p=0.02)
        assert torch.equal(a.ids, b.ids)


@pytest.mark.parametrize("world", [2, 4])
def test_sample_plain_and_min_p_blockwise(world, tmp_path):
    _spawn(_sample_blocks_worker, world, tmp_path)


def test_block_kernels_opcheck():
    """The draw helpers of csrc/cpu/distributed.cpp: fake kernels and opcheck; on one
    shard covering the row they reproduce softdec.sample's plain / min-p draw."""
    ops = torch.ops.softdec
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2500, generator=g) * 2
    m = x.max(1).values
    T = torch.tensor([1.0, 0.5, 2.0])
    MP = torch.tensor([0.0, 0.1, 0.0])
    s, o = torch.tensor([1, 2, 3]), torch.tensor([0, 5, 9])
    blk = ops.shard_block_masses(x, 0, 2500, m, T, MP)
    assert blk.shape == (3, 3) and blk.dtype == torch.float64
    block, target = ops.block_draw_target(blk, s, o)
    ids = ops.shard_block_pick(x, 0, 2500, m, T, MP, block, target)
    ref = softdec.sample(x, temperature=T, min_p=MP, seed=s, offset=o).ids
    assert torch.equal(ids, ref)
    # a shard holding blocks 1..2 only: block 0 is not its own (-1)
    own = ops.shard_block_pick(x[:, 1024:], 1024, 2500, m, T, MP, block, target)
    assert torch.equal(own, torch.where(block >= 1, ref, torch.full_like(ref, -1)))
    assert ops.shard_block_masses(x[:, 1000:], 1000, 2500, m, T, MP).shape == (3, 2)
    torch.library.opcheck(ops.shard_block_masses.default, (x, 0, 2500, m, T, MP))
    torch.library.opcheck(ops.block_draw_target.default, (blk, s, o))
    torch.library.opcheck(ops.shard_block_pick.default, (x, 0, 2500, m, T, MP, block, target))

    def f(x, m, T, MP, s, o):
        b = ops.shard_block_masses(x, 0, 2500, m, T, MP)
        bl, tg = ops.block_draw_target(b, s, o)
        return ops.shard_block_pick(x, 0, 2500, m, T, MP, bl, tg)
    assert torch.equal(torch.compile(f, fullgraph=True)(x, m, T, MP, s, o), ref)
    # the shard partials and their merge (two shards of one row set)
    xp = x.clone()
    xp[0, 7] = xp[0, 1900] = xp[0].max() + 1  # a tie across the shards
    xp[1, 3] = float("nan")
    xp[2, :2000] = -float("inf")
    p0, p1 = ops.shard_partials(xp[:, :1200], 0, 6), ops.shard_partials(xp[:, 1200:], 1200, 6)
    assert p0.shape == (3, 8 + 12) and p0.dtype == torch.float64
    valid, mx, am, cv, ci = ops.merge_partials(torch.stack([p0, p1]), 6)
    assert valid.tolist() == [True, False, True]
    assert am[0] == 7 and am[2] == int(xp[2].argmax()) and mx[0] == xp[0].max()
    for r in (0, 2):
        want = torch.sort(torch.topk(xp[r], 6).indices).values  # no ties among the first 6 but the max
        got = ci[r][ci[r] >= 0]
        assert set(want.tolist()) <= set(got.tolist()) and torch.equal(got, torch.sort(got).values)
        assert torch.equal(cv[r, :got.numel()], xp[r, got])
    assert torch.isnan(cv[1]).all()
    torch.library.opcheck(ops.shard_partials.default, (xp, 0, 6))
    # (rows 0 and 2: an invalid row's NaN compact row never compares equal to itself)
    torch.library.opcheck(ops.merge_partials.default, (torch.stack([p0, p1])[:, [0, 2]].contiguous(), 6))
    with pytest.raises(ValueError, match="columns"):
        ops.merge_partials(torch.stack([p0, p1]), 5)
    with pytest.raises(ValueError, match="must lie in"):
        ops.shard_block_masses(x, 100, 2500, m, T, MP)
    with pytest.raises(ValueError, match="temperature must be finite"):
        ops.shard_block_masses(x, 0, 2500, m, torch.zeros(3), MP)


# ------------------------------------------------------------------ top-p (and top-k > 2048) rows: the cut on shards

class _CountTies:
    """Stand-in for torch.ops.softdec inside softdec.distributed that counts the rows whose
    cut index came from shard_nth_tie (a cut inside a run of tied logits)."""

    def __init__(self, ops):
        self._ops, self.rows = ops, 0

    def __getattr__(self, name):
        if name != "shard_nth_tie":
            return getattr(self._ops, name)

        def f(*a):
            self.rows += int((a[-1] > 0).sum())
            return self._ops.shard_nth_tie(*a)
        return f


def _top_p_rows(B, Vv, seed):
    x, _ = _logits(B, Vv, scale=2.0, seed=seed)
    if B > 1:
        x[1] = (x[1] * 2).round() / 2          # long runs of equal logits in every shard
        x[2, :Vv // 2] = -float("inf")          # the mass in the upper shards only
        x[3] = 0.0                              # uniform: one run of V ties
        x[4] = x[4].bfloat16().float()          # bf16-rounded values: ties
    return x


def _sample_top_p_worker(rank, world):
    import softdec.distributed as sdm
    counter = _CountTies(sdm._ops)
    sdm._ops = counter
    try:
        for Vv, B in ((1031, 5), (4100, 5), (4100, 1)):
            x = _top_p_rows(B, Vv, seed=Vv + B)
            layouts = _layouts(Vv, world) if Vv == 4100 else [[sd.shard_range(Vv, world, r) for r in range(world)]]
            for layout in layouts:
                lo, n = layout[rank]
                xs = x[:, lo:lo + n]
                for top_p in (0.5, 0.9, 0.99):
                    for T in (0.7, 1.0):
                        for min_p in (0.0, 0.05):
                            for seed in range(5):  # (bounded: the ranks share the 120 s limit)
                                kw = dict(top_p=top_p, temperature=T, min_p=min_p, seed=seed)
                                a = softdec.sample(x, **kw)
                                b = sd.sample(xs, vocab_offset=lo, vocab_size=Vv, **kw)
                                assert torch.equal(a.ids, b.ids), (Vv, layout, kw, a.ids, b.ids)
                                assert torch.equal(a.valid, b.valid)
        # top_p = 0 (the top token), top-k > 2048 with and without top-p, per-row settings mixing
        # every path, bf16 shards
        Vv = 4100
        x = _top_p_rows(5, Vv, seed=1)
        lo, n = sd.shard_range(Vv, world, rank)
        xs = x[:, lo:lo + n]
        cfgs = [dict(top_p=0.0), dict(top_k=3000, top_p=0.9), dict(top_k=2049), dict(top_k=2500, min_p=0.02),
                dict(top_k=4099, top_p=0.5, temperature=0.7),
                dict(top_p=torch.tensor([0.5, 0.9, 1.0, 0.99, 0.0]), top_k=torch.tensor([0, 3000, 0, 5, 2100]),
                     temperature=torch.tensor([1.0, 0.7, 1.0, 0.0, 1.3]), min_p=torch.tensor([0.0, 0.0, 0.1, 0.0, 0.0]))]
        for kw in cfgs:
            for seed in range(10):
                a = softdec.sample(x, seed=seed, **kw)
                b = sd.sample(xs, vocab_offset=lo, vocab_size=Vv, seed=seed, **kw)
                assert torch.equal(a.ids, b.ids), (kw, seed, a.ids, b.ids)
        a = softdec.sample(x.bfloat16(), top_p=0.9, seed=4)
        b = sd.sample(xs.bfloat16(), vocab_offset=lo, vocab_size=Vv, top_p=0.9, seed=4)
        assert torch.equal(a.ids, b.ids)
        # the exchange is O(B) histograms and boundary tokens: no collective carries the rows
        Vv = 50021
        x, _ = _logits(5, Vv, seed=2)
        lo, n = sd.shard_range(Vv, world, rank)
        xs = x[:, lo:lo + n]
        sizes = []
        orig = (dist.all_gather, dist.all_reduce)

        def ag(out, t, **kw):
            sizes.append(t.numel())
            return orig[0](out, t, **kw)

        def ar(t, **kw):
            sizes.append(t.numel())
            return orig[1](t, **kw)
        dist.all_gather, dist.all_reduce = ag, ar
        try:
            b = sd.sample(xs, vocab_offset=lo, vocab_size=Vv, top_p=0.9, seed=0)
        finally:
            dist.all_gather, dist.all_reduce = orig
        assert torch.equal(b.ids, softdec.sample(x, top_p=0.9, seed=0).ids)
        assert max(sizes) <= 6 * (8 + 1024) < 5 * n // 2, sizes
        assert counter.rows > 0  # some cuts fell inside a run of ties (shard_nth_tie)
    finally:
        sdm._ops = counter._ops


@pytest.mark.parametrize("world", [2, 4])
def test_sample_top_p_on_shards_equals_single_device(world, tmp_path):
    _spawn(_sample_top_p_worker, world, tmp_path)


def test_cut_kernels_opcheck():
    """shard_radix_hist / shard_nth_tie / shard_cut_block_*: fake kernels, opcheck, compile; on
    one shard covering the row, the cut and draw (world = 1) equal softdec.sample."""
    from softdec.distributed import Shard, _cut, _draw_blocks
    ops = torch.ops.softdec
    Vv = 2500
    x = _top_p_rows(5, Vv, seed=3)
    m = x.max(1).values
    am = x.argmax(1)
    T = torch.tensor([1.0, 0.7, 1.0, 1.0, 0.5])
    MP = torch.tensor([0.0, 0.0, 0.05, 0.0, 0.0])
    P = torch.tensor([0.9, 0.5, 0.99, 0.5, 0.0])
    Kk = torch.tensor([0, 0, 2100, 0, 0])
    sh = Shard(None, 0, 1, 0, Vv, Vv)
    cv, ci = _cut(x, [(0, Vv)], m, am, T, Kk, P, sh)
    s, o = torch.arange(5), torch.arange(5) * 3
    frag = torch.zeros(1, 5, 0, dtype=torch.float64)
    for seed in range(20):
        got = _draw_blocks(x, frag, [(0, Vv)], m, T, MP, s + seed, o, sh, cut=(cv, ci))
        want = softdec.sample(x, temperature=T, top_k=Kk, top_p=P, min_p=MP, seed=s + seed, offset=o).ids
        assert torch.equal(got, want), (seed, got, want)
    # the histograms: counts and masses of the finite tokens by the top byte of their key
    none_v = torch.full((5,), -math.inf)
    none_i = torch.full((5,), (1 << 63) - 1)
    zero = torch.zeros(5, dtype=torch.int64)
    h = ops.shard_radix_hist(x, 0, Vv, m, T, none_v, none_i, zero, 24)
    assert h.shape == (5, 512) and h.dtype == torch.int64
    assert torch.equal(h[:, 256:].sum(1), (x > -math.inf).sum(1))
    sft = 63 - Vv.bit_length() - 1  # filter::mass_shift(V, 1.0)
    e = torch.exp((x.double() - m[:, None].double()) / T[:, None].double())
    assert torch.allclose(h[:, :256].sum(1).double(), e.sum(1) * 2.0 ** sft, rtol=1e-5)
    # one shard's histogram plus the other's is the whole row's
    h0 = ops.shard_radix_hist(x[:, :1234].contiguous(), 0, Vv, m, T, none_v, none_i, zero, 24)
    h1 = ops.shard_radix_hist(x[:, 1234:].contiguous(), 1234, Vv, m, T, none_v, none_i, zero, 24)
    assert torch.equal(h0 + h1, h)
    # the n-th tie at a value: row 3 is all zeros
    val = torch.zeros(5)
    nth = torch.tensor([0, 1, 1, 7, 1])
    t = ops.shard_nth_tie(x[:, 1000:].contiguous(), 1000, val, none_v, none_i, nth)
    assert t[0] == -1 and t[3] == 1006
    assert ops.shard_nth_tie(x, 0, val, val, torch.full((5,), 2), nth)[3] == -1  # prefix: ids <= 2 only
    blk = ops.shard_cut_block_masses(x, 0, Vv, m, T, MP, cv, ci)
    block, target = ops.block_draw_target(blk, s, o)
    pick = ops.shard_cut_block_pick(x, 0, Vv, m, T, MP, cv, ci, block, target)
    torch.library.opcheck(ops.shard_radix_hist.default, (x, 0, Vv, m, T, none_v, none_i, zero, 16))
    torch.library.opcheck(ops.shard_nth_tie.default, (x, 0, val, none_v, none_i, nth))
    torch.library.opcheck(ops.shard_cut_block_masses.default, (x, 0, Vv, m, T, MP, cv, ci))
    torch.library.opcheck(ops.shard_cut_block_pick.default, (x, 0, Vv, m, T, MP, cv, ci, block, target))

    def f(x, m, T, MP, cv, ci, s, o, val, nth):
        hh = ops.shard_radix_hist(x, 0, Vv, m, T, cv, ci, torch.zeros_like(s), 24)
        b = ops.shard_cut_block_masses(x, 0, Vv, m, T, MP, cv, ci)
        bl, tg = ops.block_draw_target(b, s, o)
        return hh, ops.shard_nth_tie(x, 0, val, cv, ci, nth), ops.shard_cut_block_pick(x, 0, Vv, m, T, MP, cv, ci, bl, tg)
    args = (x, m, T, MP, cv, ci, s, o, val, nth)
    for a_, b_ in zip(torch.compile(f, fullgraph=True)(*args), f(*args)):
        assert torch.equal(a_, b_)
    assert torch.equal(pick, f(*args)[2])
    with pytest.raises(ValueError, match="shift must be"):
        ops.shard_radix_hist(x, 0, Vv, m, T, none_v, none_i, zero, 4)
    with pytest.raises(ValueError, match="prefix must hold a 32-bit key"):
        ops.shard_radix_hist(x, 0, Vv, m, T, none_v, none_i, zero - 1, 24)
    with pytest.raises(ValueError, match="cut_value"):
        ops.shard_cut_block_masses(x, 0, Vv, m, T, MP, none_v.double(), ci)
    with pytest.raises(ValueError, match="cut_index"):
        ops.shard_nth_tie(x, 0, val, none_v, none_i[:3], nth)
    with pytest.raises(ValueError, match="temperature must be finite"):
        ops.shard_radix_hist(x, 0, Vv, m, torch.zeros(5), none_v, none_i, zero, 24)


# ------------------------------------------------------------------ soft_mixture

def _soft_worker(rank, world):
    x, g = _logits(6, V)
    x = _edge_rows(x)
    E = torch.randn(V, 24, generator=g)
    lo, n = sd.shard_range(V, world, rank)
    xs = x[:, lo:lo + n]
    configs = [dict(top_k=10), dict(top_k=200, top_p=0.9, temperature=0.6), dict(top_k=4, min_p=0.2),
               dict(top_k=7, temperature=0.0), dict(top_k=64, temperature=2.0),  # k > row 3's 40 tokens
               dict(top_k=10, noise="gumbel", seed=3, tau=0.5),
               dict(top_k=16, noise="gumbel", seed=torch.arange(6) + 11, noise_scale=0.7, embed_scale=2.0),
               dict(top_k=12, noise="dirichlet", seed=5, dirichlet_alpha=0.5, temperature=2.0),
               dict(top_k=64, noise="dirichlet", seed=torch.arange(6) + 3, dirichlet_alpha=3.0),
               dict(top_k=torch.tensor([1, 2, 3, 50, 5, 6]), temperature=torch.tensor([1.0, 1, 0, 0.5, 1, 3])),
               # Soft Thinking's published settings (filter 30 -> top_p -> min_p -> top 10)
               dict(top_k=10, filter_top_k=30, top_p=0.95, min_p=0.001, temperature=0.6),
               dict(top_k=5, filter_top_k=40, temperature=0.0),
               # SofT-GRPO's Gumbel form and Gaussian embedding noise
               dict(top_k=5, noise="gumbel", tau=0.1, gumbel_clamp=(-1.5, 3.0), gumbel_eps=1e-6, seed=9,
                    embed_noise_std=0.1)]
    for table in (E, E.bfloat16()):
        for kw in configs:
            a = softdec.soft_mixture(x, table, **kw)
            b = sd.soft_mixture(xs, table[lo:lo + n], vocab_offset=lo, vocab_size=V, **kw)
            assert torch.equal(a.ids, b.ids), (kw, a.ids, b.ids)
            assert torch.equal(a.valid, b.valid)
            torch.testing.assert_close(b.weights, a.weights, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(b.entropy, a.entropy, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(b.max_prob, a.max_prob, atol=1e-6, rtol=1e-5)
            assert b.embeds.dtype == table.dtype
            tol = dict(atol=1e-5, rtol=1e-5) if table.dtype == torch.float32 else dict(atol=2e-2, rtol=1e-2)
            torch.testing.assert_close(b.embeds.float(), a.embeds.float(), **tol)
            assert (a.noisy_logits is None) == (b.noisy_logits is None)
            if a.noisy_logits is not None:
                torch.testing.assert_close(b.noisy_logits, a.noisy_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("world", [2, 4])
def test_soft_mixture_equals_single_device(world, tmp_path):
    _spawn(_soft_worker, world, tmp_path)


def test_soft_mixture_unsupported_filter_widths_are_named():
    x = torch.randn(2, 10)
    E = torch.randn(10, 4)
    with pytest.raises(NotImplementedError, match="filter_top_k=0"):
        sd.soft_mixture(x, E, vocab_offset=0, vocab_size=10, top_k=2, filter_top_k=0)
    with pytest.raises(ValueError, match=r"top_k \(the output width, 5\) must be <= filter_top_k \(3\)"):
        sd.soft_mixture(x, E, vocab_offset=0, vocab_size=10, top_k=5, filter_top_k=3)


# ------------------------------------------------------------------ verify

def _verify_worker(rank, world):
    B, K = 6, 4
    x, g = _logits(B, V, scale=6.0, extra=(K + 1,))
    x = _edge_rows(x)
    lo, n = sd.shard_range(V, world, rank)
    xs = x[..., lo:lo + n]
    # drafts: the target's own samples (high acceptance) mixed with random ids
    clean = torch.nan_to_num(x, nan=0.0, neginf=-1e4)
    own = torch.stack([softdec.sample(clean[:, j], seed=j).ids for j in range(K)], 1)
    d = torch.where(torch.rand(B, K, generator=g) < 0.8, own, torch.randint(0, V, (B, K), generator=g))
    nd = torch.tensor([4, 3, 4, 0, 2, 1])
    configs = [dict(method="greedy"), dict(method="greedy", num_draft=nd, temperature=0.0),
               dict(method="exact"), dict(method="exact", temperature=0.7, num_draft=nd),
               dict(method="exact", min_p=0.1), dict(method="exact", temperature=0.0),
               dict(method="exact", temperature=torch.tensor([1.0, 0.0, 0.5, 1.0, 2.0, 1.0]))]
    accepted = 0
    for kw in configs:
        for seed in range(10):
            a = softdec.verify(x, d, seed=seed, **kw)
            b = sd.verify(xs, d, vocab_offset=lo, vocab_size=V, seed=seed, **kw)
            assert torch.equal(a.tokens, b.tokens), (kw, seed, a.tokens, b.tokens)
            assert torch.equal(a.num_accepted, b.num_accepted), (kw, seed)
            accepted += int(a.num_accepted.sum())
    assert accepted > 50  # the drafts exercise acceptances, not only first-position rejections
    for kw in [dict(top_k=0), dict(top_k=3, top_p=0.9, temperature=0.5), dict(top_k=0, min_p=0.1)]:
        for delta in (0.05, 0.3):
            xd = clean[:, :K] + 0.3 * torch.randn(B, K, V, generator=g)
            st = softdec.soft_mixture(xd.reshape(B * K, V), torch.zeros(V, 1), top_k=6)
            sp = (st.ids.view(B, K, 6), st.weights.view(B, K, 6))
            for di in (None, sp[0][..., 0]):
                a = softdec.verify(x, di, draft_probs=sp, method="soft", delta=delta, **kw)
                b = sd.verify(xs, di, draft_probs=sp, method="soft", delta=delta, vocab_offset=lo,
                              vocab_size=V, **kw)
                assert torch.equal(a.tokens, b.tokens), (kw, delta, a.tokens, b.tokens)
                assert torch.equal(a.num_accepted, b.num_accepted)
                assert torch.equal(a.soft_ids, b.soft_ids)
                torch.testing.assert_close(b.soft_weights, a.soft_weights, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("world", [2, 4])
def test_verify_equals_single_device(world, tmp_path):
    _spawn(_verify_worker, world, tmp_path)


def _verify_filtered_worker(rank, world):
    """verify with top-k / top-p / min-p targets, dense and sparse drafts, the typical and
    relaxed rules and soft's filter_top_k: equal to the single-device op."""
    B, K = 6, 4
    x, g = _logits(B, V, scale=4.0, extra=(K + 1,), seed=3)
    x = _edge_rows(x)
    lo, n = sd.shard_range(V, world, rank)
    xs = x[..., lo:lo + n]
    clean = torch.nan_to_num(x, nan=0.0, neginf=-1e4)
    xd = clean[:, :K] + 0.5 * torch.randn(B, K, V, generator=g)
    q = torch.softmax(xd, -1)                                   # dense drafts
    own = torch.stack([softdec.sample(xd[:, j], seed=j + 50).ids for j in range(K)], 1)
    st = softdec.soft_mixture(xd.reshape(B * K, V), torch.zeros(V, 1), top_k=8)
    sp = (st.ids.view(B, K, 8), st.weights.view(B, K, 8))     # sparse drafts
    sdraft = sp[0][..., 0]
    nbrs = torch.randint(-1, V, (V, 4), generator=g)
    nd = torch.tensor([4, 3, 4, 0, 2, 1])
    topk = [dict(top_k=5), dict(top_k=50, top_p=0.9), dict(top_k=20, min_p=0.1, temperature=0.7),
            dict(top_k=300, temperature=1.5),  # > row 3's 40 finite tokens, > a 4-rank shard
            dict(top_k=torch.tensor([1, 3, 7, 100, 2, 9]), temperature=torch.tensor([1.0, 0.0, 0.5, 1.0, 2.0, 1.0]))]
    cases = []
    for f in topk:
        cases += [(own, None, dict(method="exact", **f)), (own, "dense", dict(method="exact", **f)),
                  (sdraft, "sparse", dict(method="exact", num_draft=nd, **f)),
                  (own, None, dict(method="typical", **f)), (own, "dense", dict(method="typical", **f)),
                  (own, None, dict(method="relaxed", neighbours=nbrs, delta=0.2, **f)),
                  (own, "dense", dict(method="relaxed", neighbours=nbrs, delta=0.05, **f))]
    # without top-k: the exact race on shards (one-hot; top-p, min_p) and the all-gather fallback
    cases += [(own, None, dict(method="exact", top_p=0.8)), (own, "dense", dict(method="exact")),
              (sdraft, "sparse", dict(method="exact", min_p=0.05)), (own, None, dict(method="typical")),
              (own, None, dict(method="relaxed", neighbours=nbrs))]
    accepted = 0
    for d, kind, kw in cases:
        for seed in range(6):
            dp_full = q if kind == "dense" else (sp if kind == "sparse" else None)
            dp_shard = q[..., lo:lo + n] if kind == "dense" else dp_full
            a = softdec.verify(x, d, draft_probs=dp_full, seed=seed, **kw)
            b = sd.verify(xs, d, draft_probs=dp_shard, vocab_offset=lo, vocab_size=V, seed=seed, **kw)
            assert torch.equal(a.tokens, b.tokens), (kind, kw, seed, a.tokens, b.tokens)
            assert torch.equal(a.num_accepted, b.num_accepted), (kind, kw, seed)
            accepted += int(a.num_accepted.sum())
    assert accepted > 100
    for fk in (30, 0):
        for kw in (dict(), dict(top_k=4, top_p=0.9, temperature=0.6)):
            a = softdec.verify(x, sdraft, draft_probs=sp, method="soft", filter_top_k=fk, delta=0.3, **kw)
            b = sd.verify(xs, sdraft, draft_probs=sp, method="soft", filter_top_k=fk, delta=0.3,
                          vocab_offset=lo, vocab_size=V, **kw)
            assert torch.equal(a.tokens, b.tokens), (fk, kw)
            assert torch.equal(a.num_accepted, b.num_accepted)
            assert torch.equal(a.soft_ids, b.soft_ids)
            torch.testing.assert_close(b.soft_weights, a.soft_weights, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("world", [2, 4])
def test_verify_filtered_and_drafts_equal_single_device(world, tmp_path):
    _spawn(_verify_filtered_worker, world, tmp_path)


# ------------------------------------------------------------------ bad input

def _errors_worker(rank, world):
    x = torch.randn(2, 600)
    with pytest.raises(ValueError, match="tile"):  # both ranks claim [0, 600)
        sd.sample(x, vocab_offset=0, vocab_size=1200, top_k=3, seed=0)
    lo, n = sd.shard_range(1031, world, rank)
    with pytest.raises(ValueError, match="vocab_offset"):
        sd.sample(torch.randn(2, n), vocab_offset=1031, vocab_size=1031)
    with pytest.raises(ValueError, match="draft_ids must lie in"):
        sd.verify(torch.randn(1, 2, n), torch.tensor([[1031]]), vocab_offset=lo, vocab_size=1031)
    with pytest.raises(ValueError, match="embedding must have as many rows"):
        sd.soft_mixture(torch.randn(1, n), torch.randn(n + 1, 4), vocab_offset=lo, vocab_size=1031)
    with pytest.raises(ValueError, match=r"dense draft_probs must be the shard \(batch, K, vocab_local\)"):
        sd.verify(torch.randn(1, 2, n), torch.tensor([[1]]), draft_probs=torch.rand(1, 1, 1031),
                  vocab_offset=lo, vocab_size=1031)
    with pytest.raises(ValueError, match="filter_top_k is only defined"):
        sd.verify(torch.randn(1, 2, n), torch.tensor([[1]]), vocab_offset=lo, vocab_size=1031, filter_top_k=3)


def _verify_exact_top_p_worker(rank, world):
    """verify(method="exact") with one-hot drafts and top-p targets (no top-k): the cut, the
    normaliser and the race on shards equal the single-device op."""
    import softdec.distributed as sdm
    counter = _CountTies(sdm._ops)
    sdm._ops = counter
    try:
        B, K = 5, 4
        for Vv, layout_of in ((1031, None), (4100, "odd")):
            x, g = _logits(B, Vv, scale=6.0, extra=(K + 1,), seed=Vv)
            x[1] = (x[1] * 2).round() / 2          # runs of ties across the shards
            x[2, :, :Vv // 2] = -float("inf")       # mass in the upper shards
            x[3, 2, 7] = float("nan")               # an invalid position
            x[4] = x[4].bfloat16().float()
            layout = _layouts(Vv, world)[1] if layout_of else [sd.shard_range(Vv, world, r) for r in range(world)]
            lo, n = layout[rank]
            xs = x[..., lo:lo + n]
            clean = torch.nan_to_num(x, nan=0.0, neginf=-1e4)
            own = torch.stack([softdec.sample(clean[:, j], seed=j, top_p=0.9).ids for j in range(K)], 1)
            d = torch.where(torch.rand(B, K, generator=g) < 0.8, own, torch.randint(0, Vv, (B, K), generator=g))
            nd = torch.tensor([4, 3, 4, 0, 2])
            accepted = 0
            cfgs = [dict(top_p=p, temperature=t, min_p=mp) for p in (0.5, 0.9, 0.99) for t in (0.7, 1.0)
                    for mp in (0.0, 0.05)]
            cfgs += [dict(top_p=0.0), dict(top_p=0.9, num_draft=nd), dict(top_p=0.9, temperature=0.0),
                     dict(top_k=3000, top_p=0.95), dict(top_k=2100, min_p=0.01, temperature=0.7),
                     dict(top_p=torch.tensor([0.9, 1.0, 0.5, 0.8, 0.95]),
                          temperature=torch.tensor([1.0, 0.0, 0.7, 1.0, 1.3]))]
            for kw in cfgs:
                for seed in range(4):
                    a = softdec.verify(x, d, method="exact", seed=seed, **kw)
                    b = sd.verify(xs, d, method="exact", vocab_offset=lo, vocab_size=Vv, seed=seed, **kw)
                    assert torch.equal(a.tokens, b.tokens), (Vv, kw, seed, a.tokens, b.tokens)
                    assert torch.equal(a.num_accepted, b.num_accepted), (Vv, kw, seed)
                    accepted += int(a.num_accepted.sum())
            assert accepted > 20
        # no row of logits moves: the exchange is O(B (K + 1)) partials and histograms (at most
        # [B (K + 1), 512] int64, whatever V)
        sizes = []
        orig = (dist.all_gather, dist.all_reduce, dist.broadcast)

        def ag(out, t, **kw):
            sizes.append(t.numel())
            return orig[0](out, t, **kw)

        def ar(t, **kw):
            sizes.append(t.numel())
            return orig[1](t, **kw)

        def bc(t, **kw):
            sizes.append(t.numel())
            return orig[2](t, **kw)
        dist.all_gather, dist.all_reduce, dist.broadcast = ag, ar, bc
        try:
            sd.verify(xs, d, method="exact", vocab_offset=lo, vocab_size=Vv, top_p=0.9, seed=0)
        finally:
            dist.all_gather, dist.all_reduce, dist.broadcast = orig
        assert max(sizes) <= B * (K + 1) * 512, sizes
        assert counter.rows > 0  # some cuts fell inside a run of ties
    finally:
        sdm._ops = counter._ops


@pytest.mark.parametrize("world", [2, 4])
def test_verify_exact_top_p_on_shards_equals_single_device(world, tmp_path):
    _spawn(_verify_exact_top_p_worker, world, tmp_path)


def test_verify_race_kernels_opcheck():
    """shard_kept_mass / shard_verify_race: fake kernels, opcheck, compile; the kept masses' digit
    sums (filter.h MassSum) are exact: two shards add up to the row's, and they equal the digits of
    every kept token's mass summed in Python; two shards' race winners merge to the row's."""
    ops = torch.ops.softdec
    Vv = 3000
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, Vv, generator=g) * 3
    m = x.max(1).values
    T = torch.tensor([1.0, 0.7, 1.0, 1.3])
    MP = torch.tensor([0.0, 0.05, 0.0, 0.0])
    cv = torch.tensor([-math.inf, -math.inf, float(x[2].sort(descending=True).values[40]), -math.inf])
    ci = torch.full((4,), (1 << 63) - 1)
    want = torch.tensor([5, int(x[1].argmin()), int(x[2].argmax()), int(x[3].argmin())])
    z, ew = ops.shard_kept_mass(x, 0, m, T, MP, cv, ci, want)
    assert z.dtype == torch.int64 and z.shape == (4, 3) and (z >= 0).all()
    z0a, ew0 = ops.shard_kept_mass(x[:, :1700].contiguous(), 0, m, T, MP, cv, ci, want)
    z1a, ew1 = ops.shard_kept_mass(x[:, 1700:].contiguous(), 1700, m, T, MP, cv, ci, want)
    assert torch.equal(z, z0a + z1a)  # integer digit sums: exact in any split
    assert torch.equal(torch.maximum(ew0, ew1), ew)  # the holder's mass, -1 elsewhere
    assert torch.equal(torch.where(want < 1700, ew1, ew0), torch.full((4,), -1.0))
    assert ew[1] == 0.0 and ew[2] == 1.0 and 0 < ew[3] < 1e-3  # below min-p; the max; kept
    # the digits of every token's mass (the kernel's fexp bits, read through `want`) summed in Python
    for r in range(4):
        rows = x[r:r + 1].expand(Vv, Vv).contiguous()
        one = lambda t: t[r:r + 1].expand(Vv).contiguous()  # noqa: E731
        _, e_all = ops.shard_kept_mass(rows, 0, one(m), one(T), one(MP), one(cv), one(ci), torch.arange(Vv))
        assert tuple(z[r].tolist()) == ref.kept_mass_digits(e_all.tolist()), r
    Z = torch.tensor([ref.kept_mass_value(d) for d in z.tolist()], dtype=torch.float64)
    sc = (x - m[:, None]) / T[:, None]
    kept = (sc >= torch.log(MP.clamp_min(1e-30))[:, None]) & (x >= cv[:, None])
    torch.testing.assert_close(Z, torch.where(kept, sc.double().exp(), torch.zeros_like(Z[:, None])).sum(1),
                               rtol=1e-6, atol=0)
    z = Z
    inv_z = (1.0 / z).float()
    seed, stream = torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8])
    skip = torch.tensor([-1, 10, 2000, int(x[3].argmax())])
    key, bid, px = ops.shard_verify_race(x, 0, m, T, MP, cv, ci, inv_z, seed, stream, skip)
    assert (bid >= 0).all() and not (bid == skip).any()
    assert px[0] == -1 and (px[1:] >= 0).all()
    # two shards: the larger key (lower id on ties) is the row's winner
    k0, i0, _ = ops.shard_verify_race(x[:, :1234].contiguous(), 0, m, T, MP, cv, ci, inv_z, seed, stream, skip)
    k1, i1, _ = ops.shard_verify_race(x[:, 1234:].contiguous(), 1234, m, T, MP, cv, ci, inv_z, seed, stream, skip)
    assert torch.equal(torch.where((k1 > k0) & (i1 >= 0), i1, i0), bid)
    # the race is the exponential race of p: its winners follow p (chi-square over draws)
    y = torch.tensor([[0.0, -0.5, -1.0, -3.0, -math.inf, 0.2]])
    n = 100000
    yy = y.expand(n, 6).contiguous()
    mm = torch.full((n,), 0.2)
    one = torch.ones(n)
    zz, _ = ops.shard_kept_mass(yy, 0, mm, one, torch.zeros(n), torch.full((n,), -math.inf),
                                torch.full((n,), (1 << 63) - 1), torch.full((n,), -1))
    assert (zz == zz[:1]).all()
    _, w, _ = ops.shard_verify_race(yy, 0, mm, one, torch.zeros(n), torch.full((n,), -math.inf),
                                    torch.full((n,), (1 << 63) - 1), torch.full((n,), 1.0 / ref.kept_mass_value(zz[0])),
                                    torch.arange(n),
                                    torch.zeros(n, dtype=torch.int64), torch.full((n,), -1))
    p = torch.softmax(y[0].double(), 0)
    cnt = torch.bincount(w, minlength=6).double()
    from scipy.stats import chisquare
    assert cnt[4] == 0
    live = p > 0
    assert chisquare(cnt[live], p[live] / p[live].sum() * cnt.sum()).pvalue > 1e-4
    args = (x, 0, m, T, MP, cv, ci, inv_z, seed, stream, skip)
    torch.library.opcheck(ops.shard_kept_mass.default, (x, 0, m, T, MP, cv, ci, want))
    torch.library.opcheck(ops.shard_verify_race.default, args)

    def f(x, m, T, MP, cv, ci, inv_z, seed, stream, skip):
        zf, ef = ops.shard_kept_mass(x, 0, m, T, MP, cv, ci, skip)
        return zf, ef, ops.shard_verify_race(x, 0, m, T, MP, cv, ci, inv_z, seed, stream, skip)
    got = torch.compile(f, fullgraph=True)(x, m, T, MP, cv, ci, inv_z, seed, stream, skip)
    eager = f(x, m, T, MP, cv, ci, inv_z, seed, stream, skip)
    assert torch.equal(got[0], eager[0]) and torch.equal(got[1], eager[1])
    for a_, b_ in zip(got[2], (key, bid, px)):
        assert torch.equal(a_, b_)
    with pytest.raises(ValueError, match="want"):
        ops.shard_kept_mass(x, 0, m, T, MP, cv, ci, want.float())
    with pytest.raises(ValueError, match="want"):
        ops.shard_kept_mass(x, 0, m, T, MP, cv, ci, want[:1])
    with pytest.raises(ValueError, match="inv_z"):
        ops.shard_verify_race(x, 0, m, T, MP, cv, ci, inv_z[:2], seed, stream, skip)
    with pytest.raises(ValueError, match="temperature must be finite"):
        ops.shard_verify_race(x, 0, m, torch.zeros(4), MP, cv, ci, inv_z, seed, stream, skip)


def test_bad_input_is_rejected(tmp_path):
    _spawn(_errors_worker, 2, tmp_path)


def test_needs_process_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    with pytest.raises(RuntimeError, match="process group"):
        sd.sample(torch.randn(1, 10), vocab_offset=0, vocab_size=10)
    with pytest.raises(ValueError, match="rank"):
        sd.shard_range(10, 2, 2)


def test_shard_range_tiles():
    for Vv in (1, 7, 1031, 151936):
        for w in (1, 2, 3, 4, 8):
            spans = [sd.shard_range(Vv, w, r) for r in range(w)]
            assert sum(n for _, n in spans) == Vv
            assert all(spans[i][0] + spans[i][1] == spans[i + 1][0] for i in range(w - 1))


def test_bytes_per_call():
    # O(B k) partials, independent of V
    assert sd.bytes_per_call("sample", 8, 50, 2) == 9 * 8 * (8 + 100)
    # plain rows: header + boundary tokens, 74 inner blocks of a 75968-token shard, one int64
    assert sd.bytes_per_call("sample_plain", 1, 0, 2, vocab_size=151936) == 2 * 8 * (8 + 1024) + 74 * 8 + 8
    # top-p rows: the plain rows' exchange + 3 all_reduces of [1, 256] int64 + an all_gather of [1, 512]
    assert sd.bytes_per_call("sample_top_p", 1, 0, 2, vocab_size=151936) == \
        sd.bytes_per_call("sample_plain", 1, 0, 2, vocab_size=151936) + 3 * 2048 + 4096
    assert sd.bytes_per_call("soft_mixture", 1, 10, 2, D=3584) == 8 * (8 + 20) + 3584 * 4
    assert sd.bytes_per_call("verify", 1, 1, 2, K=4) == 5 * 8 * (8 + 2)
    # one-hot exact: partials + layout row, the chain's broadcast, the race winners; top-p adds the rounds
    assert sd.bytes_per_call("verify_exact", 1, 0, 2, K=4) == 6 * 64 + 5 * 32 + 16
    assert sd.bytes_per_call("verify_exact_top_p", 1, 0, 2, K=4) == \
        sd.bytes_per_call("verify_exact", 1, 0, 2, K=4) + 3 * 5 * 2048 + 5 * 4096
    with pytest.raises(ValueError, match="op must be"):
        sd.bytes_per_call("nope", 1, 1, 2)


# ------------------------------------------------------------------ softdec.hf.generate, tensor-parallel

def _has(mod):
    import importlib.util
    return importlib.util.find_spec(mod) is not None


@pytest.mark.parametrize("mode", ["manual", pytest.param("auto", marks=pytest.mark.skipif(
    not _has("accelerate"), reason="transformers' tp_plan needs accelerate"))])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_generate_tensor_parallel_equals_single_process(arch, mode, tmp_path):
    """torchrun --nproc-per-node 2 (gloo): Discrete(T=0), SoftThinking and greedy Speculative on
    the tensor-parallel model (vocabulary-sharded embedding) give the single-process sequences."""
    import json
    import subprocess
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    out = tmp_path / "out.json"
    # the ranks import the softdec this process imported (an in-place build or the installed package)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(softdec.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [pkg_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           os.path.join(here, "dist_tp_generate.py"), arch, str(out), mode]
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"torchrun did not finish in {TIMEOUT_S} s")
    assert p.returncode == 0, p.stderr[-4000:]
    res = json.loads(out.read_text())
    for name in ("discrete", "soft", "spec"):
        assert res[name]["equal"], (name, res[name])
        assert len(res[name]["tp"][0]) == 5 + 12
