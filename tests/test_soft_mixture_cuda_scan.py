"""CUDA soft_mixture scan (csrc/cuda/soft_mixture.cu, issue 17): the first-tile threshold
(block radix select once kc candidates are in), the select-based compaction, the final rank
sort and the deterministic O(B k D) embedding gradient, against the CPU backend (exact ids,
the same ties rule: lower id first) and the float64 reference. Every test needs a GPU (marked
cuda); the shapes hit each branch: V below one tile, one slice, V = 151936 (several slices),
k = 1 / 10 / 30 / 256, filter_top_k = 256, V = 600001 (tens of slices merged by finalize_kernel's
block select), rows of equal logits (ties inside and across tiles
and slices), +0 / -0 ties, -inf-heavy rows, increasing rows (a compaction after every tile),
Gumbel / Dirichlet noise, B = 1 and 64."""

from __future__ import annotations

import math

import pytest
import torch

import softdec
from softdec import reference as ref

pytestmark = pytest.mark.cuda

LDTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def _cuda(kw):
    return {a: (v.cuda() if isinstance(v, torch.Tensor) else v) for a, v in kw.items()}


def _rows(kind, B, V, dtype, g):
    """(B, V) logits of one pattern; every row is valid (at least one finite logit)."""
    if kind == "random":
        x = torch.randn(B, V, generator=g, dtype=torch.float64) * 3
    elif kind == "equal":  # every logit ties: the k lowest ids win, in every slice
        x = torch.full((B, V), 1.25, dtype=torch.float64)
    elif kind == "signed_zero":  # +0 / -0 tie (ranks_before: equal values)
        x = torch.zeros(B, V, dtype=torch.float64)
        x[:, 1::2] = -0.0
        x[:, ::7] = -1.0
    elif kind == "ninf":  # 95% -inf: fewer candidates than kc in most tiles
        x = torch.randn(B, V, generator=g, dtype=torch.float64)
        x[torch.rand(B, V, generator=g) < 0.95] = -math.inf
        x[:, V // 2] = 0.5
    elif kind == "increasing":  # every tile beats the threshold: a compaction after each
        x = torch.linspace(-4, 4, V, dtype=torch.float64).expand(B, V).clone()
    elif kind == "decreasing":  # the first tile holds the answer
        x = torch.linspace(4, -4, V, dtype=torch.float64).expand(B, V).clone()
    elif kind == "few":  # four distinct values: ties everywhere
        x = torch.randint(0, 4, (B, V), generator=g).double()
    else:
        raise AssertionError(kind)
    return x.to(dtype)


def _compare(logits, table, kw, *, ref_check=True):
    cpu = softdec.soft_mixture(logits, table, **kw)
    got = softdec.soft_mixture(logits.cuda(), table.cuda(), **_cuda(kw))
    got = type(got)(*[x.cpu() if x is not None else None for x in got])
    assert torch.equal(got.valid, cpu.valid)
    assert torch.equal(got.ids, cpu.ids)
    tol = dict(atol=1e-12, rtol=1e-10) if logits.dtype == torch.float64 else dict(atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(got.weights, cpu.weights, **tol)
    torch.testing.assert_close(got.entropy, cpu.entropy, **({"atol": 1e-4, "rtol": 1e-5}
                                                            if logits.dtype != torch.float64 else tol))
    torch.testing.assert_close(got.max_prob, cpu.max_prob, **tol)
    if ref_check:
        want = ref.soft_mixture(logits.double(), table.double(), **{**kw, "seed": kw.get("seed", 0)})
        assert torch.equal(got.ids, want[1])
        torch.testing.assert_close(got.weights.double(), want[2], atol=2e-6, rtol=1e-5)
    return got


@pytest.mark.parametrize("dtype", LDTYPES)
@pytest.mark.parametrize("kind", ["random", "equal", "signed_zero", "ninf", "increasing", "decreasing", "few"])
@pytest.mark.parametrize("V", [7, 300, 1025, 40000])
@pytest.mark.parametrize("k", [1, 10, 30])
def test_scan_thresholds_match_cpu(dtype, kind, V, k):
    if k > V:
        pytest.skip("k > V")
    g = torch.Generator().manual_seed(V * 7 + k)
    B = 3
    logits = _rows(kind, B, V, dtype, g)
    table = torch.randn(V, 24, generator=g)
    kw = dict(top_k=k, temperature=0.8, top_p=1.0, seed=torch.arange(B))
    got = _compare(logits, table, kw)
    if kind in ("equal", "signed_zero") and k <= V:
        # ties: the lowest ids (in value order: for signed_zero the zeros first)
        vals = logits[0].double()
        order = sorted(range(V), key=lambda i: (-float(vals[i]), i))[:k]
        assert got.ids[0].tolist() == order


@pytest.mark.parametrize("dtype", LDTYPES)
@pytest.mark.parametrize("kind", ["random", "equal", "increasing", "few"])
@pytest.mark.parametrize("B,k", [(1, 10), (64, 10), (64, 1), (3, 30)])
def test_scan_vocab_151936(dtype, kind, B, k):
    # several slices per row (a slice is 16 tiles: 8192 / 16384 / 32768 logits by dtype)
    g = torch.Generator().manual_seed(B * 31 + k)
    V = 151936
    logits = _rows(kind, B, V, dtype, g)
    table = torch.randn(V, 16, generator=g).to(torch.bfloat16)
    # top_p off the 0.1 grid: equal rows keep k tokens of weight 1/k (no float tie at the cut)
    kw = dict(top_k=k, temperature=0.7, top_p=0.93, min_p=0.001, seed=torch.arange(B))
    _compare(logits, table, kw, ref_check=B <= 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("kind", ["random", "equal", "increasing", "ninf"])
@pytest.mark.parametrize("V", [300, 5000, 151936])
def test_scan_kc_256(dtype, kind, V):
    # kc = 256 candidates (the largest), through top_k = 256 and through filter_top_k = 256
    g = torch.Generator().manual_seed(V)
    B = 2
    logits = _rows(kind, B, V, dtype, g)
    table = torch.randn(V, 8, generator=g)
    kw = dict(top_k=min(256, V), temperature=1.3, seed=torch.arange(B))
    _compare(logits, table, kw, ref_check=V < 151936)
    kw = dict(top_k=10, filter_top_k=min(256, V - 1), temperature=1.3, top_p=0.97, min_p=0.0005,
              seed=torch.arange(B))
    _compare(logits, table, kw, ref_check=V < 151936)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("kind", ["random", "few", "ninf", "equal", "signed_zero"])
@pytest.mark.parametrize("B,k,fk", [(1, 10, None), (64, 10, 256), (3, 256, None)])
def test_finalize_merge_many_slices(dtype, kind, B, k, fk):
    # finalize_kernel's block merge of the slice lists: 37 (float32) / 19 (16-bit) / 74 (float64)
    # slices, so the live slots far outnumber kc (the radix select and the tie-id select across
    # slices), slices shorter than kc ("ninf"), ties across every slice ("equal", "few")
    g = torch.Generator().manual_seed(B + k)
    V = 600_001
    logits = _rows(kind, B, V, dtype, g)
    table = torch.randn(V, 8, generator=g)
    kw = dict(top_k=k, filter_top_k=fk, temperature=0.9, top_p=0.97, min_p=0.0005, seed=torch.arange(B))
    _compare(logits, table, kw, ref_check=False)
    if kind == "equal":  # every logit ties: the kc lowest ids, in id order
        got = softdec.soft_mixture(logits.cuda(), table.cuda(), **_cuda(kw))
        assert got.ids[0, :10].cpu().tolist() == list(range(10))


def test_cuda_soft_mixture_finalize_merge():
    # the first-phase check of bench/gpu_check.sh (test_cuda_*): the block merge, many slices, ties
    test_finalize_merge_many_slices(torch.float32, "few", 64, 10, 256)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("noise", ["gumbel", "dirichlet"])
@pytest.mark.parametrize("kind", ["random", "equal", "few"])
@pytest.mark.parametrize("V,k", [(300, 10), (151936, 10), (40000, 30)])
def test_scan_noise_exact_ids(dtype, noise, kind, V, k):
    g = torch.Generator().manual_seed(V + k)
    B = 64 if V != 151936 else 8
    logits = _rows(kind, B, V, dtype, g)
    table = torch.randn(V, 16, generator=g)
    kw = dict(top_k=k, temperature=0.9, top_p=0.95, noise=noise, tau=0.5, dirichlet_alpha=2.0,
              seed=torch.arange(B) + 5, offset=3)
    _compare(logits, table, kw, ref_check=False)


def test_scan_deterministic():
    # candidate slots are filled in a run-dependent order; the outputs must not depend on it
    g = torch.Generator().manual_seed(3)
    logits = _rows("few", 64, 151936, torch.bfloat16, g).cuda()
    table = torch.randn(151936, 64, generator=g).cuda()
    a = softdec.soft_mixture(logits, table, top_k=30, filter_top_k=256, top_p=0.9, seed=1)
    b = softdec.soft_mixture(logits, table, top_k=30, filter_top_k=256, top_p=0.9, seed=1)
    for x, y in zip(a, b):
        if x is not None:
            assert torch.equal(x, y)


# ------------------------------------------------------------------ embedding gradient


def _emb_inputs(B, k, Ve, D, wdt, g, dup):
    ids = torch.stack([torch.randperm(Ve, generator=g)[:k] for _ in range(B)])
    if dup:  # the same few ids in many rows, in different slots
        common = torch.randperm(Ve, generator=g)[:min(k, 3)]
        for b in range(0, B, 2):
            ids[b, : len(common)] = common.roll(b % len(common))
            rest = torch.tensor([i for i in torch.randperm(Ve, generator=g).tolist() if i not in common.tolist()])
            ids[b, len(common):] = rest[: k - len(common)]
    nkept = torch.randint(0, k + 1, (B,), generator=g)  # dropped slots must not contribute
    weights = torch.rand(B, k, generator=g, dtype=torch.float64).to(wdt)
    ge = torch.randn(B, D, generator=g, dtype=torch.float64).to(wdt)
    return ge, ids, weights, nkept


def _emb_ref(ge, Ve, ids, weights, nkept, scale):
    out = torch.zeros(Ve, ge.shape[1], dtype=torch.float64)
    for b in range(ids.shape[0]):
        for i in range(int(nkept[b])):
            out[ids[b, i]] += float(weights[b, i]) * scale * ge[b].double()
    return out


@pytest.mark.parametrize("edt,wdt", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                     (torch.float16, torch.float32), (torch.float64, torch.float64)])
@pytest.mark.parametrize("B,k,Ve,D", [(1, 1, 7, 5), (64, 10, 151936, 72), (300, 30, 5000, 130),
                                      (64, 256, 300, 8), (5, 4, 40, 1030)])
@pytest.mark.parametrize("dup", [False, True])
def test_embedding_backward_matches_cpu(edt, wdt, B, k, Ve, D, dup):
    g = torch.Generator().manual_seed(B * 13 + k + D)
    ge, ids, weights, nkept = _emb_inputs(B, k, Ve, D, wdt, g, dup)
    emb = torch.zeros(Ve, D, dtype=edt)
    op = torch.ops.softdec.soft_mixture_embedding_backward
    want = op(ge, emb, ids, weights, nkept, 1.5)
    got = op(ge.cuda(), emb.cuda(), ids.cuda(), weights.cuda(), nkept.cuda(), 1.5)
    again = op(ge.cuda(), emb.cuda(), ids.cuda(), weights.cuda(), nkept.cuda(), 1.5)
    assert torch.equal(got, again)  # deterministic: a fixed summation order
    assert got.dtype == edt
    # the same order and formula as the CPU kernel (FMA contraction may differ)
    tol = {torch.float32: (1e-6, 1e-5), torch.float64: (1e-12, 1e-12),
           torch.bfloat16: (1e-2, 1e-2), torch.float16: (1e-3, 1e-3)}[edt]
    torch.testing.assert_close(got.cpu(), want, atol=tol[0], rtol=tol[1])
    if Ve * D <= 2_000_000:
        r = _emb_ref(ge, Ve, ids, weights, nkept, 1.5)
        torch.testing.assert_close(got.cpu().double(), r, atol=max(tol[0], 1e-5) if edt != torch.float64 else 1e-12,
                                   rtol=max(tol[1], 1e-5) if edt != torch.float64 else 1e-12)


def test_embedding_backward_through_autograd_equal_rows():
    # rows of equal logits: every row keeps ids 0..k-1, the worst case for duplicates
    B, V, D = 64, 1025, 40
    logits = torch.zeros(B, V)
    table = torch.randn(V, D, generator=torch.Generator().manual_seed(1))
    tc = table.cuda().requires_grad_()
    out = softdec.soft_mixture(logits.cuda(), tc, top_k=10)
    (gc,) = torch.autograd.grad(out.embeds.square().sum(), tc)
    tt = table.clone().requires_grad_()
    o2 = softdec.soft_mixture(logits, tt, top_k=10)
    (gw,) = torch.autograd.grad(o2.embeds.square().sum(), tt)
    torch.testing.assert_close(gc.cpu(), gw, atol=1e-5, rtol=1e-5)
    assert gc[10:].abs().sum().item() == 0.0
