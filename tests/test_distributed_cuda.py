"""softdec.distributed on CUDA shards (csrc/cuda/distributed.cu and the device plumbing of
python/softdec/distributed.py).

1. Each of the eleven shard helpers on a device equals the CPU op on the same inputs: ids,
   blocks, flags, candidate lists and the cut's integer histograms exactly, float64 block
   sums / targets bit for bit (the CUDA kernels follow the CPU's summation order:
   sampling_kernels.h's lane rule, the in-order double walks and sums), the exact verify's
   normaliser digits (filter.h MassSum: int64 [R, 3] integer sums, exact in any order)
   equal, the race's float32 keys bit for bit, for V not divisible by 4 or 1024,
   unaligned shard offsets, ties (equal logits, +0 / -0), -inf-heavy rows, NaN / +inf rows,
   B = 1 and 64, V = 151936, float32 / bfloat16 / float16.
2. softdec.distributed.sample / soft_mixture / verify with CUDA shards equal the single-device
   CUDA ops: one NCCL rank (the whole row), and two gloo ranks holding CUDA tensors on the
   same GPU (the shard split, the collectives on CUDA tensors). Started inside pytest like the
   CPU tests of test_distributed.py, bounded in time.

Every test is parametrized over DEVICES (conftest): the CPU instance compares the CPU op
with itself and runs the distributed ops on CPU shards (it checks the test code here); the
"cuda" instance is marked cuda and runs when a GPU is lent (the names start with test_cuda_:
bench/gpu_check.sh runs them in its first test phase, `pytest -m cuda -k test_cuda_`).
"""

from __future__ import annotations


import pytest
import torch

import softdec
import softdec.distributed as sd
from conftest import DEVICES
from dist_spawn import spawn

ops = torch.ops.softdec
TIMEOUT_S = 300
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _rows(kind, B, V, g):
    """float32 (B, V) logits of one pattern; every row valid unless the kind says otherwise."""
    if kind == "random":
        x = torch.randn(B, V, generator=g) * 3
    elif kind == "ties":  # values on a 0.5 grid: many equal logits, inside and across blocks / shards
        x = torch.round(torch.randn(B, V, generator=g) * 2) / 2
    elif kind == "equal":  # every logit ties: the lowest ids win
        x = torch.full((B, V), 1.25)
    elif kind == "signed_zero":  # +0 / -0 tie
        x = torch.zeros(B, V)
        x[:, 1::2] = -0.0
        x[:, ::7] = -1.0
    elif kind == "ninf":  # 95% -inf: fewer finite tokens than c on most shards
        x = torch.randn(B, V, generator=g)
        x[torch.rand(B, V, generator=g) < 0.95] = -float("inf")
        x[:, V // 2] = 0.5  # at least one finite token
    else:
        raise ValueError(kind)
    return x


KINDS = ["random", "ties", "equal", "signed_zero", "ninf"]


def _shards(V):
    """(offset, size) shards: the whole row, an unaligned offset ending at V (the last,
    shorter block), one inside the row starting on a block edge, one unaligned at both ends."""
    out = [(0, V), (777, V - 777), (1024, min(V, 4096) - 1024), (5, min(V, 2500) - 5 - 3)]
    return [(lo, n) for lo, n in out if n > 0 and lo + n <= V]


def _params(B, g):
    T = torch.rand(B, generator=g) * 1.7 + 0.3
    MP = torch.where(torch.rand(B, generator=g) < 0.5, torch.zeros(B), torch.rand(B, generator=g) * 0.2)
    return T, MP


def _inv_z(digits):
    """float(1 / Z) of int64 [R, 3] MassSum digit sums: Z = (S0 2^64 + S1 2^32 + S2) 2^-96
    rounded once (Python's int / int is correctly rounded: filter::MassSum::value), then
    filter::inv_norm; 0 for an empty kept set."""
    import numpy as np  # (here, not at the top: the spawned ranks import this module)
    from softdec.reference import kept_mass_value
    z = [kept_mass_value(d) for d in digits.cpu().tolist()]
    return torch.tensor(np.array([1.0 / v if v > 0 else 0.0 for v in z], dtype=np.float32))


# ------------------------------------------------------------------ 1. the shard helpers

def _skip_large_on_cpu(device, V):
    if device == "cpu" and V > 10000:
        pytest.skip("the CPU instance compares the CPU op with itself: the small shapes check the test code")

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,V", [(1, 1031), (64, 5003), (1, 151936), (8, 151936)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_block_draw_ops_equal_cpu(device, B, V, dtype):
    """shard_block_masses, block_draw_target and shard_block_pick on `device` equal the CPU
    ops bit for bit (float64 sums compared with torch.equal), for every shard layout."""
    _skip_large_on_cpu(device, V)
    g = torch.Generator().manual_seed(V + B)
    for kind in KINDS:
        x = _rows(kind, B, V, g).to(dtype)
        m = x.float().max(1).values
        T, MP = _params(B, g)
        s, o = torch.arange(B) * 3 + 1, torch.arange(B) % 5
        d = lambda t: t.to(device)  # noqa: E731
        full = ops.shard_block_masses(x, 0, V, m, T, MP)
        full_d = ops.shard_block_masses(d(x), 0, V, d(m), d(T), d(MP))
        assert full_d.device.type == device
        assert torch.equal(full_d.cpu(), full), (kind, (full_d.cpu() - full).abs().max())
        block, target = ops.block_draw_target(full, s, o)
        block_d, target_d = ops.block_draw_target(d(full), d(s), d(o))
        assert torch.equal(block_d.cpu(), block), kind
        assert torch.equal(target_d.cpu(), target), kind  # float64, bit for bit
        # the single-device draw through the shard helpers is softdec.sample's plain / min-p draw
        ref = softdec.sample(d(x), temperature=d(T), min_p=d(MP), seed=d(s), offset=d(o)).ids
        pick_full = ops.shard_block_pick(d(x), 0, V, d(m), d(T), d(MP), d(block), d(target))
        assert torch.equal(pick_full.cpu(), ref.cpu()), kind
        for lo, n in _shards(V):
            xs = x[:, lo:lo + n]  # a strided view: rows keep the full row's stride
            a = ops.shard_block_masses(xs, lo, V, m, T, MP)
            b = ops.shard_block_masses(d(xs), lo, V, d(m), d(T), d(MP))
            assert torch.equal(b.cpu(), a), (kind, lo, n)
            a = ops.shard_block_pick(xs, lo, V, m, T, MP, block, target)
            b = ops.shard_block_pick(d(xs), lo, V, d(m), d(T), d(MP), d(block), d(target))
            assert torch.equal(b.cpu(), a), (kind, lo, n)
    # rows without mass: block -1, target 0
    z = torch.zeros(3, 7, dtype=torch.float64)
    z[1, 4] = 2.5
    a = ops.block_draw_target(z, torch.arange(3), torch.zeros(3, dtype=torch.int64))
    b = ops.block_draw_target(z.to(device), torch.arange(3, device=device), torch.zeros(3, dtype=torch.int64,
                                                                                        device=device))
    assert torch.equal(b[0].cpu(), a[0]) and torch.equal(b[1].cpu(), a[1])
    assert a[0].tolist() == [-1, 4, -1]


def _partials_equal(a, b):
    """Rows of partials equal; the +inf flag (column 1) is compared only where the row has no
    NaN (the CPU's vector pass may miss a +inf next to a NaN; such a row is invalid anyway)."""
    ok = a[:, 0] == 0
    assert torch.equal(a[:, 0], b[:, 0])
    assert torch.equal(a[ok, 1], b[ok, 1])
    assert torch.equal(a[:, 2:], b[:, 2:])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,V", [(1, 1031), (64, 5003), (1, 151936), (4, 151936)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_partials_and_merge_equal_cpu(device, B, V, dtype):
    """shard_partials (flags, max and its lowest id, the first c tokens in id order) and
    merge_partials of the gathered shards on `device` equal the CPU ops exactly, for c = 0, 1,
    5, 50, 300, 2048 (c larger than a shard's finite tokens on the -inf-heavy rows)."""
    _skip_large_on_cpu(device, V)
    g = torch.Generator().manual_seed(2 * V + B)
    for kind in KINDS + ["edge"]:
        if kind == "edge":
            x = _rows("random", max(B, 4), V, g)
            x[0, 5] = float("nan")
            x[1, V - 3] = float("inf")
            x[2] = -float("inf")
            x[3, 11] = x[3, V - 2] = x[3].max() + 1  # the max tied across shards
        else:
            x = _rows(kind, B, V, g)
        x = x.to(dtype)
        d = lambda t: t.to(device)  # noqa: E731
        for c in (0, 1, 5, 50, 300, 2048):
            for lo, n in _shards(V):
                xs = x[:, lo:lo + n]
                a = ops.shard_partials(xs, lo, c)
                b = ops.shard_partials(d(xs), lo, c)
                assert b.device.type == device and b.shape == a.shape
                _partials_equal(a, b.cpu())
            for world in (2, 4):
                parts = []
                for r in range(world):
                    lo, n = sd.shard_range(V, world, r)
                    parts.append(ops.shard_partials(x[:, lo:lo + n].contiguous(), lo, c))
                gp = torch.stack(parts)
                a = ops.merge_partials(gp, c)
                b = ops.merge_partials(d(gp), c)
                for u, v in zip(a, b):
                    assert v.device.type == device
                    torch.testing.assert_close(v.cpu(), u, rtol=0, atol=0, equal_nan=True)


_IMAX = (1 << 63) - 1


def _order_key(x: torch.Tensor) -> torch.Tensor:
    """filter::order_key of float32 values -> int64 (< 2^32)."""
    b = (x.float() + 0.0).view(torch.int32).long() & 0xFFFFFFFF
    return torch.where(b >= 0x80000000, (~b) & 0xFFFFFFFF, b | 0x80000000)


def _cut_inputs(x, g):
    """Two per-row cuts of x (B, V) float32: none (-inf, _IMAX), and one at the 40-th largest
    logit with a random global cut index (ties at the cut value kept up to it)."""
    B, V = x.shape
    none = (torch.full((B,), -float("inf")), torch.full((B,), _IMAX, dtype=torch.int64))
    j = min(39, V - 1)
    cv = x.float().sort(1, descending=True).values[:, j].contiguous()
    cv = torch.where(cv > -float("inf"), cv, torch.full_like(cv, -float("inf")))
    ci = torch.randint(0, V, (B,), generator=g)
    return [none, (cv, ci)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,V", [(1, 1031), (64, 5003), (1, 151936)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_cut_and_race_ops_equal_cpu(device, B, V, dtype):
    """The six top-p / exact-verify shard helpers on `device` equal the CPU ops on the same
    inputs: shard_radix_hist (int64 histograms of counts and fixed-point masses, exactly, for
    every shift and a prefix taken from a real token), shard_nth_tie (ids), shard_cut_block_masses
    (float64 bit for bit) / shard_cut_block_pick (ids), shard_kept_mass (the int64 digit sums
    equal: exact integer sums, any order) and shard_verify_race (key float32 bit for
    bit, id, the skipped token's p), for every shard layout (offsets not multiples of 4 or 1024,
    V not divisible by the block), ties (ties within and across shards), -inf-heavy rows."""
    _skip_large_on_cpu(device, V)
    g = torch.Generator().manual_seed(3 * V + B)
    d = lambda t: t.to(device)  # noqa: E731
    for kind in KINDS:
        x = _rows(kind, B, V, g).to(dtype)
        xf = x.float()
        m = xf.max(1).values
        T, MP = _params(B, g)
        keys = _order_key(xf)
        pick_j = torch.where(xf > -float("inf"), torch.rand(B, V, generator=g), torch.zeros(B, V)).argmax(1)
        prefix_full = keys[torch.arange(B), pick_j]
        s, o = torch.arange(B) * 7 + 3, torch.arange(B) % 3
        for cv, ci in _cut_inputs(xf, g):
            full = ops.shard_cut_block_masses(x, 0, V, m, T, MP, cv, ci)
            block, target = ops.block_draw_target(full, s, o)
            inv_z = _inv_z(ops.shard_kept_mass(x, 0, m, T, MP, cv, ci, torch.full((B,), -1, dtype=torch.int64))[0])
            for lo, n in _shards(V):
                xs = x[:, lo:lo + n]  # strided rows
                args = (m, T, MP, cv, ci)
                for shift in (24, 16, 8, 0):
                    a = ops.shard_radix_hist(xs, lo, V, m, T, cv, ci, prefix_full, shift)
                    b = ops.shard_radix_hist(d(xs), lo, V, d(m), d(T), d(cv), d(ci), d(prefix_full), shift)
                    assert b.device.type == device
                    assert torch.equal(b.cpu(), a), (kind, lo, n, shift)
                value = xf[torch.arange(B), pick_j]
                for nth in (torch.zeros(B, dtype=torch.int64), torch.ones(B, dtype=torch.int64),
                            torch.randint(1, 6, (B,), generator=g), torch.full((B,), 10 ** 6)):
                    a = ops.shard_nth_tie(xs, lo, value, cv, ci, nth)
                    b = ops.shard_nth_tie(d(xs), lo, d(value), d(cv), d(ci), d(nth))
                    assert torch.equal(b.cpu(), a), (kind, lo, n, nth)
                a = ops.shard_cut_block_masses(xs, lo, V, *args)
                b = ops.shard_cut_block_masses(d(xs), lo, V, *map(d, args))
                assert torch.equal(b.cpu(), a), (kind, lo, n)  # float64, bit for bit
                a = ops.shard_cut_block_pick(xs, lo, V, *args, block, target)
                b = ops.shard_cut_block_pick(d(xs), lo, V, *map(d, args), d(block), d(target))
                assert torch.equal(b.cpu(), a), (kind, lo, n)
                want = torch.randint(max(lo - 3, 0), min(lo + n + 3, V), (B,), generator=g)
                a = ops.shard_kept_mass(xs, lo, *args, want)
                b = ops.shard_kept_mass(d(xs), lo, *map(d, args), d(want))
                assert b[0].dtype == torch.int64 and b[0].shape == (B, 3)
                assert torch.equal(b[0].cpu(), a[0]), (kind, lo, n)  # the integer digit sums, exactly
                assert torch.equal(b[1].cpu(), a[1]), (kind, lo, n)
                for skip in (torch.full((B,), -1, dtype=torch.int64), want):
                    a = ops.shard_verify_race(xs, lo, *args, inv_z, s, o + 1, skip)
                    b = ops.shard_verify_race(d(xs), lo, *map(d, args), d(inv_z), d(s), d(o + 1), d(skip))
                    for u, v in zip(a, b):
                        assert torch.equal(v.cpu(), u), (kind, lo, n)


def _top_p_cut(x, T, p):
    """The (cut value, cut index) of a top-p cut of float32 rows x at temperatures T: the token at
    which the sorted softmax's float64 running mass first reaches p (the op takes any cut; this
    one keeps a realistic top-p prefix, ties at the cut kept up to its index)."""
    B, V = x.shape
    xs, idx = (x.double() / T.double()[:, None]).sort(dim=1, descending=True, stable=True)
    cum = torch.softmax(xs, 1).cumsum(1)
    j = torch.searchsorted(cum, torch.full((B, 1), p, dtype=torch.float64)).clamp(max=V - 1)[:, 0]
    ar = torch.arange(B)
    cv = x[ar, idx[ar, j]].float()
    return torch.where(cv > -float("inf"), cv, torch.full_like(cv, -float("inf"))), idx[ar, j]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,V", [(1, 1031), (64, 5003), (1, 151936), (8, 151936)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_kept_mass_digits_equal_cpu(device, B, V, dtype):
    """shard_kept_mass on `device`: the int64 [R, 3] MassSum digit sums of the kept masses equal
    the CPU op's exactly (torch.equal: integer sums, exact in any order and thread layout), and
    the wanted token's mass bit for bit, for every shard layout (unaligned offsets, strided rows),
    -inf-heavy rows and fully -inf rows, no cut / a 40-th-token cut / top-p cuts (0.5, 0.9), and
    min-p on half of the rows; the shards' digits add up to the whole row's."""
    _skip_large_on_cpu(device, V)
    g = torch.Generator().manual_seed(11 * V + B)
    d = lambda t: t.to(device)  # noqa: E731
    for kind in (["random", "ties", "ninf"] if V > 10000 else KINDS):
        xf = _rows(kind, B, V, g)
        if B > 1:
            xf[B // 2] = -float("inf")  # a row with nothing kept: digits 0, every mass 0
        x = xf.to(dtype)
        xf = x.float()
        m = xf.max(1).values
        T, MP = _params(B, g)
        cuts = _cut_inputs(xf, g) + [_top_p_cut(xf, T, p) for p in (0.5, 0.9)]
        for cv, ci in cuts:
            args = (m, T, MP, cv, ci)
            whole = None
            parts = torch.zeros(B, 3, dtype=torch.int64)
            for lo, n in _shards(V) + [(0, V // 2), (V // 2, V - V // 2)]:
                xs = x[:, lo:lo + n]
                want = torch.randint(max(lo - 3, 0), min(lo + n + 3, V), (B,), generator=g)
                a = ops.shard_kept_mass(xs, lo, *args, want)
                b = ops.shard_kept_mass(d(xs), lo, *map(d, args), d(want))
                assert b[0].device.type == device and b[0].dtype == torch.int64 and b[0].shape == (B, 3)
                assert torch.equal(b[0].cpu(), a[0]), (kind, lo, n, (b[0].cpu() - a[0]).abs().max())
                assert torch.equal(b[1].cpu(), a[1]), (kind, lo, n)
                if (lo, n) == (0, V):
                    whole = a[0]
                elif (lo, n) in ((0, V // 2), (V // 2, V - V // 2)):
                    parts += a[0]
            assert torch.equal(parts, whole), kind  # any split: the same integers
            if B > 1:
                assert whole[B // 2].eq(0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_cuda_ops_bad_input_and_compile(device):
    """The CUDA entry points check shapes / dtypes / devices like the CPU ones (same messages),
    and the ops compile (fake kernels) with fullgraph=True on the device."""
    x = torch.randn(3, 2500, device=device)
    m = x.max(1).values
    T = torch.ones(3, device=device)
    MP = torch.zeros(3, device=device)
    with pytest.raises(ValueError, match="must lie in"):
        ops.shard_block_masses(x, 100, 2500, m, T, MP)
    with pytest.raises(ValueError, match="max_logit"):
        ops.shard_block_masses(x, 0, 2500, m.double(), T, MP)
    with pytest.raises(ValueError, match="columns"):
        ops.merge_partials(torch.zeros(2, 3, 20, dtype=torch.float64, device=device), 5)
    with pytest.raises(ValueError, match="c must be"):
        ops.shard_partials(x, 0, -1)
    with pytest.raises(ValueError, match="blk"):
        ops.block_draw_target(torch.zeros(3, 4, device=device), torch.zeros(3, dtype=torch.int64, device=device),
                              torch.zeros(3, dtype=torch.int64, device=device))
    cv = torch.full((3,), -float("inf"), device=device)
    ci = torch.full((3,), _IMAX, dtype=torch.int64, device=device)
    i64 = torch.zeros(3, dtype=torch.int64, device=device)
    with pytest.raises(ValueError, match="shift must be"):
        ops.shard_radix_hist(x, 0, 2500, m, T, cv, ci, i64, 3)
    with pytest.raises(ValueError, match="cut_index"):
        ops.shard_cut_block_masses(x, 0, 2500, m, T, MP, cv, ci.float())
    with pytest.raises(ValueError, match="n"):
        ops.shard_nth_tie(x, 0, m, cv, ci, i64.float())
    with pytest.raises(ValueError, match="want"):
        ops.shard_kept_mass(x, 0, m, T, MP, cv, ci, i64[:2])
    with pytest.raises(ValueError, match="want"):
        ops.shard_kept_mass(x, 0, m, T, MP, cv, ci, m)
    with pytest.raises(ValueError, match="seed"):
        ops.shard_verify_race(x, 0, m, T, MP, cv, ci, T, m, i64, i64)
    if device == "cuda":
        with pytest.raises(ValueError, match="same device"):
            ops.shard_block_masses(x, 0, 2500, m.cpu(), T, MP)
        with pytest.raises(ValueError, match="same device"):
            ops.shard_verify_race(x, 0, m, T, MP, cv, ci, T, i64.cpu(), i64, i64)
    s, o = torch.arange(3, device=device), torch.zeros(3, dtype=torch.int64, device=device)

    def f(x, m, T, MP, s, o):
        b = ops.shard_block_masses(x, 0, 2500, m, T, MP)
        bl, tg = ops.block_draw_target(b, s, o)
        p = ops.shard_partials(x, 0, 4)
        return ops.shard_block_pick(x, 0, 2500, m, T, MP, bl, tg), ops.merge_partials(p[None], 4)[4]
    want = f(x, m, T, MP, s, o)
    got = torch.compile(f, fullgraph=True)(x, m, T, MP, s, o)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    torch.library.opcheck(ops.shard_partials.default, (x, 0, 6))
    torch.library.opcheck(ops.shard_block_masses.default, (x, 0, 2500, m, T, MP))
    # the cut / exact-verify helpers: fake kernels, compile, opcheck on the device
    pre = i64 + 0x80000000

    def h(x, m, T, MP, cv, ci, pre, s, o):
        hist = ops.shard_radix_hist(x, 0, 2500, m, T, cv, ci, pre, 24)
        tie = ops.shard_nth_tie(x, 0, m, cv, ci, o + 1)
        cb = ops.shard_cut_block_masses(x, 0, 2500, m, T, MP, cv, ci)
        z, e = ops.shard_kept_mass(x, 0, m, T, MP, cv, ci, o)
        zd = (z.double() * torch.tensor([2.0 ** -32, 2.0 ** -64, 2.0 ** -96], dtype=torch.float64,
                                        device=z.device)).sum(1)  # Z up to rounding (enough here)
        k, i, p = ops.shard_verify_race(x, 0, m, T, MP, cv, ci, (1 / zd).float(), s, o, o)
        return hist, tie, cb, z, e, k, i, p
    want = h(x, m, T, MP, cv, ci, pre, s, o)
    got = torch.compile(h, fullgraph=True)(x, m, T, MP, cv, ci, pre, s, o)
    for u, v in zip(want, got):
        assert torch.equal(u, v)
    torch.library.opcheck(ops.shard_radix_hist.default, (x, 0, 2500, m, T, cv, ci, pre, 16))
    torch.library.opcheck(ops.shard_nth_tie.default, (x, 0, m, cv, ci, o + 1))
    torch.library.opcheck(ops.shard_cut_block_pick.default, (x, 0, 2500, m, T, MP, cv, ci, i64, i64.double()))
    torch.library.opcheck(ops.shard_kept_mass.default, (x, 0, m, T, MP, cv, ci, o))
    torch.library.opcheck(ops.shard_verify_race.default, (x, 0, m, T, MP, cv, ci, T, s, o, o))


# ------------------------------------------------------------------ 2. the distributed ops on CUDA shards

def _spawn(fn, world, backend, tmp_path, *args):
    # args[0] is the device: two gloo ranks holding CUDA tensors share GPU 0
    spawn(fn, world, tmp_path, *args, backend=backend, cuda=backend == "nccl" or args[0] == "cuda", timeout=TIMEOUT_S)


def _worker(rank, world, device, V):
    dev = torch.device(device)
    g = torch.Generator().manual_seed(V)
    B = 5
    x = torch.randn(B, V, generator=g) * 3
    x[1, :V - 40] = -float("inf")       # finite only in the last shard: k > other shards' kept sets
    x[2, 3] = x[2, V - 2] = x[2].max() + 1  # the max tied across shards
    x[3, 7] = float("nan")              # an invalid row
    x = x.to(dev)
    lo, n = sd.shard_range(V, world, rank)
    xs = x[:, lo:lo + n]

    def same(a, b, what):
        assert b.device == dev, (what, b.device)
        assert torch.equal(a, b), (what, a, b)

    # sample: greedy, top-k (+ top-p / min-p), plain and min-p (the blockwise draw), top-p and
    # top-k > 2048 (the cut on shards: shard_radix_hist, shard_nth_tie, shard_cut_block_*)
    for kw in [dict(temperature=0.0), dict(top_k=5), dict(top_k=60, top_p=0.9), dict(top_k=300, temperature=0.7),
               dict(), dict(min_p=0.05, temperature=0.7), dict(top_p=0.8), dict(top_p=0.95, min_p=0.02),
               dict(top_k=3000, top_p=0.9, temperature=0.8), dict(top_k=3000),
               dict(top_p=torch.tensor([0.5, 1.0, 0.99, 0.0, 0.7], device=dev)),
               dict(top_k=torch.tensor([0, 3, 7, 100, 2000], device=dev),
                    temperature=torch.tensor([1.0, 0.0, 0.5, 1.0, 2.0], device=dev))]:
        for seed in range(4):
            a = softdec.sample(x, seed=seed, **kw)
            b = sd.sample(xs, vocab_offset=lo, vocab_size=V, seed=seed, **kw)
            same(a.ids, b.ids, ("sample", kw, seed))
            same(a.valid, b.valid, ("sample valid", kw))
    a = softdec.sample(x.bfloat16(), top_k=20, seed=3)
    b = sd.sample(xs.bfloat16(), vocab_offset=lo, vocab_size=V, top_k=20, seed=3)
    same(a.ids, b.ids, "sample bf16")
    # top-p on rows of many ties (a 0.5 grid): the cut splits runs of equal logits across the
    # shards (shard_nth_tie)
    xt = (torch.round(torch.randn(B, V, generator=g) * 2) / 2).to(dev)
    for p in (0.3, 0.6, 0.9):
        for seed in range(3):
            a = softdec.sample(xt, top_p=p, seed=seed)
            b = sd.sample(xt[:, lo:lo + n], vocab_offset=lo, vocab_size=V, top_p=p, seed=seed)
            same(a.ids, b.ids, ("sample ties top_p", p, seed))
    # soft_mixture (ids exactly; floats within the CPU tests' tolerances)
    table = torch.randn(V, 16, generator=g).to(dev)
    for kw in [dict(top_k=8), dict(top_k=8, temperature=0.5, top_p=0.9), dict(top_k=4, noise="gumbel", seed=1),
               dict(top_k=8, noise="dirichlet", seed=2), dict(top_k=4, filter_top_k=32, seed=0)]:
        a = softdec.soft_mixture(x, table, **kw)
        b = sd.soft_mixture(xs, table[lo:lo + n], vocab_offset=lo, vocab_size=V, **kw)
        same(a.ids, b.ids, ("soft_mixture", kw))
        same(a.valid, b.valid, ("soft_mixture valid", kw))
        torch.testing.assert_close(b.weights, a.weights, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(b.entropy, a.entropy, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b.max_prob, a.max_prob, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(b.embeds, a.embeds, atol=1e-5, rtol=1e-5)
    # verify: greedy, exact (one-hot: the normaliser chain shard_kept_mass and the race
    # shard_verify_race on shards; top-p / top-k > 2048 targets through the cut), top-k targets
    # (candidates), dense / sparse drafts
    K = 3
    tl = (torch.randn(B, K + 1, V, generator=g) * 3).to(dev)
    tl[:, :, 10] += 6.0  # drafts of id 10 get accepted now and then
    dids = torch.randint(0, V, (B, K), generator=g)
    dids[:, 0] = 10
    dids = dids.to(dev)
    dense = torch.softmax(torch.randn(B, K, V, generator=g), -1).to(dev)
    sid = torch.randint(0, V, (B, K, 5), generator=g).to(dev)
    sw = torch.softmax(torch.randn(B, K, 5, generator=g), -1).to(dev)
    for kw in [dict(method="greedy"), dict(method="exact"), dict(method="exact", temperature=0.7, min_p=0.05),
               dict(method="exact", top_p=0.9), dict(method="exact", temperature=0.8, top_p=0.7, min_p=0.01),
               dict(method="exact", top_k=3000, top_p=0.95),
               dict(method="exact", top_k=20), dict(method="exact", top_k=20, dense=True),
               dict(method="soft", sparse=True), dict(method="typical")]:
        kw = dict(kw)
        full_dp = shard_dp = None
        if kw.pop("dense", False):
            full_dp, shard_dp = dense, dense[:, :, lo:lo + n].contiguous()
        if kw.pop("sparse", False):
            full_dp = shard_dp = (sid, sw)
        for seed in range(3):
            # (exact: the shards' normaliser is the single-device op's Z by the exact rule on every
            # backend and split, so the decisions and race winners are identical, no tolerance)
            a = softdec.verify(tl, dids, draft_probs=full_dp, seed=seed, **kw)
            b = sd.verify(tl[:, :, lo:lo + n], dids, vocab_offset=lo, vocab_size=V, draft_probs=shard_dp,
                          seed=seed, **kw)
            same(a.tokens, b.tokens, ("verify", kw, seed))
            same(a.num_accepted, b.num_accepted, ("verify accepted", kw, seed))
            if a.soft_ids is not None:
                same(a.soft_ids, b.soft_ids, ("verify soft_ids", kw))
                torch.testing.assert_close(b.soft_weights, a.soft_weights, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("V", [1031, 151936])
def test_cuda_one_rank_equals_single_device(device, V, tmp_path):
    """One rank (NCCL on CUDA, gloo on CPU) holding the whole row."""
    _spawn(_worker, 1, "nccl" if device == "cuda" else "gloo", tmp_path, device, V)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("V", [1031, 151936])
def test_cuda_two_gloo_ranks_equal_single_device(device, V, tmp_path):
    """Two gloo ranks whose shards are tensors on `device` (on CUDA: both on the one GPU; gloo
    runs its collectives on CUDA tensors through host copies)."""
    _spawn(_worker, 2, "gloo", tmp_path, device, V)
