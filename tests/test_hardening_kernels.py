"""Issue 14, kernel side: pinned regressions, one test per reproducer.

Each test is a reproducer that crashed, overflowed or gave a silent wrong
answer before the fix (see the issue); it compares against float64 references
where there is a numeric answer.
"""
import pytest
import torch

import softdec

BIG = 2**63 - 1


# ---------------------------------------------------------------- 1. size overflow

@pytest.mark.parametrize("kw", [
    dict(budget=30, sink=BIG, window=BIG),            # the ASan heap-buffer-overflow reproducer
    dict(budget=BIG, sink=0, window=0),
    dict(budget=2**62, sink=2**62, window=2**62),
    dict(budget=BIG, select="page", page_size=16, sink=2**62, window=2**62),
    dict(budget=BIG, select="token", sink=BIG, window=0),
])
def test_sparse_decode_huge_budget_sink_window_is_dense(kw):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 8, generator=g)
    k = torch.randn(1, 1, 64, 8, generator=g)
    v = torch.randn(1, 1, 64, 8, generator=g)
    kw = dict(kw)
    kw.setdefault("select", "token")
    out, idx = softdec.sparse_decode_attention(q, k, v, return_indices=True, **kw)
    # every token selected: dense attention in float64
    s = torch.einsum("bhd,bnd->bhn", q.double(), k[:, 0].double()) / 8 ** 0.5
    ref = torch.einsum("bhn,bnd->bhd", s.softmax(-1), v[:, 0].double())
    assert idx.shape[-1] == 64
    assert (out.double() - ref).abs().max().item() < 1e-5


def test_sparse_decode_huge_page_size():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 8, generator=g)
    k = torch.randn(1, 1, 64, 8, generator=g)
    for ps in (2**62, 2**40):
        s = softdec.build_page_summary(k, page_size=ps)
        assert s.kmin.shape == (1, 1, 1, 8)
        assert torch.equal(s.kmin[:, :, 0], k.amin(2)) and torch.equal(s.kmax[:, :, 0], k.amax(2))
        out = softdec.sparse_decode_attention(q, k, k, budget=10, select="page", page_size=ps,
                                              sink=0, window=0, page_summary=s)
        assert out.shape == (1, 2, 8) and torch.isfinite(out).all()
        softdec.update_page_summary(s, k, start=0, end=64)


@pytest.mark.parametrize("kw", [dict(min_tokens=BIG), dict(window=BIG), dict(min_tokens=BIG, window=BIG)])
def test_token_sparse_prefill_huge_min_tokens_window_keeps_all(kw):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 2, 32, 8, generator=g)
    out, kept = softdec.token_sparse_prefill(x, x, x, coverage=0.5, return_kept=True, **kw)
    assert kept.all()
    s = (x.double() @ x.double().transpose(-1, -2)) / 8 ** 0.5
    s = s.masked_fill(torch.ones(32, 32, dtype=torch.bool).triu(1), float("-inf"))
    ref = s.softmax(-1) @ x.double()
    assert (out.double() - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize("shape", [(3, 2**62), (2**31, 2**31, 2**31), (2**61,)])
def test_philox_uniform_too_many_elements(shape):
    with pytest.raises(ValueError, match=r"philox_uniform: shape .* has too many elements"):
        softdec.philox_uniform(shape, 0)


def test_philox_uniform_kernel_checks_the_product():
    # the raw op (below the Python wrapper) checks rows * n itself
    seed = torch.zeros(3, dtype=torch.long)
    with pytest.raises((ValueError, RuntimeError), match=r"philox_uniform: shape \(3, 4611686018427387904\) has too many"):
        torch.ops.softdec.philox_uniform(seed, seed.clone(), 2**62)


def test_huge_top_k_is_no_filter():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 100, generator=g)
    assert torch.equal(softdec.top_k_mask_logits(x, BIG), x)
    r = softdec.sample(x, top_k=BIG, seed=5)
    r0 = softdec.sample(x, top_k=0, seed=5)
    assert torch.equal(r.ids, r0.ids) and r.valid.all()


# ---------------------------------------------------------------- 2. one NaN policy: a row with a NaN is invalid

def _nan_rows(B=4, V=40000, frac=0.2, seed=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, V, generator=g)
    x[:2][torch.rand(2, V, generator=g) < frac] = float("nan")   # rows 0, 1 hold NaN; rows 2, 3 clean
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k", [0, 1, 50, 40000])
def test_top_k_mask_logits_nan_row_is_invalid(dtype, k):
    x = _nan_rows().to(dtype)
    y = softdec.top_k_mask_logits(x, k)
    assert (y[:2] == float("-inf")).all()                 # NaN rows: all -inf (was: 51-64 kept for k=50)
    kept = (y[2:] > float("-inf")).sum(-1)
    assert (kept == (k if 0 < k < 40000 else 40000)).all()
    # clean rows: exactly the k largest (float64 reference; ties: lower index first)
    if 0 < k < 40000:
        ref = x[2:].double().sort(dim=-1, descending=True, stable=True).indices[:, :k].sort(-1).values
        got = (y[2:] > float("-inf")).nonzero()[:, 1].view(2, k)
        assert torch.equal(got, ref)


def test_sample_nan_row_is_invalid():
    x = _nan_rows()
    r = softdec.sample(x, top_k=50, seed=1)
    assert r.valid.tolist() == [False, False, True, True]
    r = softdec.sample(x, seed=1)
    assert r.valid.tolist() == [False, False, True, True]


def test_renorm_nan_row_is_zero():
    p = _nan_rows().softmax(-1)
    p[:2, 7] = float("nan")
    for y in (softdec.top_p_renorm_probs(p, 0.9), softdec.min_p_renorm_probs(p, 0.1)):
        assert (y[:2] == 0).all()
        assert ((y[2:].double().sum(-1) - 1).abs() < 1e-4).all()


# ---------------------------------------------------------------- 3. subnormal kept mass

@pytest.mark.parametrize("row", [[1e-39], [1e-45], [3e-39, 1e-39], [1e-39, 0.0, 2e-40]])
def test_renorm_subnormal_mass_sums_to_one(row):
    x = torch.tensor([row], dtype=torch.float32)
    xd = x.double()
    for y, keep in ((softdec.min_p_renorm_probs(x, 0.0), xd > 0), (softdec.top_p_renorm_probs(x, 1.0), xd > 0)):
        assert torch.isfinite(y).all()
        ref = torch.where(keep, xd / xd[keep].sum(), torch.zeros_like(xd))
        assert (y.double() - ref).abs().max().item() < 1e-6
    assert softdec.min_p_renorm_probs(torch.tensor([[1e-39]]), 0.5).item() == 1.0


def test_renorm_subnormal_mass_wide_row():
    # AVX-512 path (V >= 16) and the scalar tail
    x = torch.full((1, 37), 1e-40)
    y = softdec.top_p_renorm_probs(x, 1.0)
    assert torch.isfinite(y).all() and abs(y.double().sum().item() - 1) < 1e-5


# ---------------------------------------------------------------- 4. gumbel hard on invalid rows

@pytest.mark.parametrize("top_k", [0, 3])
def test_gumbel_hard_invalid_rows_are_zero(top_k):
    x = torch.randn(4, 10)
    x[0] = float("-inf")
    x[1, 3] = float("nan")
    x[2, 5] = float("inf")
    out = softdec.gumbel_softmax(x, hard=True, top_k=top_k, seed=torch.arange(4))
    y = out if top_k == 0 else out[1]
    assert (y[:3] == 0).all()
    assert y[3].sum().item() == 1.0 and (y[3] == 1).sum().item() == 1


# ---------------------------------------------------------------- 6. in-place outputs must not overlap themselves

@pytest.mark.parametrize("field", ["kmin", "kmax"])
def test_update_page_summary_rejects_expanded_outputs(field):
    k = torch.randn(2, 1, 32, 8)
    s = softdec.build_page_summary(k, page_size=16)
    t = getattr(s, field)[:1].expand(2, -1, -1, -1)   # stride 0 on batch: both rows alias one
    with pytest.raises(ValueError, match=field + r" is written in place and must not overlap itself.*strides \(0,"):
        softdec.update_page_summary(s._replace(**{field: t}), k, start=0, end=32)
    # a contiguous summary is still updated in place
    s = softdec.build_page_summary(k, page_size=16)
    k2 = torch.randn(2, 1, 32, 8)
    softdec.update_page_summary(s, k2, start=0, end=32)
    assert torch.equal(s.kmin, k2.view(2, 1, 2, 16, 8).amin(3)) and torch.equal(s.kmax, k2.view(2, 1, 2, 16, 8).amax(3))


# ---------------------------------------------------------------- 9. NaN keys propagate into page summaries

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_build_page_summary_propagates_nan(dtype):
    g = torch.Generator().manual_seed(9)
    k = torch.randn(1, 2, 64, 8, generator=g)
    k[0, 0, 16:32] = float("nan")                       # an all-NaN page
    k[0, 1, 40, 3] = float("nan")                       # one NaN channel in page 2
    k = k.to(dtype)
    s = softdec.build_page_summary(k, page_size=16)
    ref_min = k.double().view(1, 2, 4, 16, 8).amin(3)   # torch propagates NaN
    ref_max = k.double().view(1, 2, 4, 16, 8).amax(3)
    assert torch.equal(s.kmin.double().isnan(), ref_min.isnan()) and s.kmin[0, 0, 1].isnan().all()
    assert torch.equal(s.kmin.double().nan_to_num(), ref_min.nan_to_num())
    assert torch.equal(s.kmax.double().nan_to_num(), ref_max.nan_to_num())
    softdec.update_page_summary(s, k, start=0, end=64)
    assert torch.equal(s.kmin.double().isnan(), ref_min.isnan())
    # page selection with NaN bounds: NaN scores rank last, deterministic, no crash
    q = torch.randn(1, 4, 8, generator=g).to(dtype)
    v = torch.randn(1, 2, 64, 8, generator=g).to(dtype)
    a = softdec.sparse_decode_attention(q, k, v, budget=16, select="page", page_size=16, sink=0, window=0,
                                        page_summary=s, return_indices=True)
    b = softdec.sparse_decode_attention(q, k, v, budget=16, select="page", page_size=16, sink=0, window=0,
                                        page_summary=s, return_indices=True)
    assert torch.equal(a[1], b[1]) and torch.equal(a[0].isnan(), b[0].isnan())
    idx = a[1][0, 0]
    assert not ((idx >= 16) & (idx < 32)).any()        # the all-NaN page is never picked over finite ones


# ---------------------------------------------------------------- 10. bit-stable results: a row alone == in a batch, 1 == 2 threads

V10 = 151936


def _logits10(B=8, V=V10):
    g = torch.Generator().manual_seed(10)
    return torch.randn(B, V, generator=g) * 3


def _threads(n, fn):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


def _as_list(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for t in out if isinstance(t, torch.Tensor)]


OPS10 = {
    "gumbel_softmax_dense": lambda x, s: softdec.gumbel_softmax(x, tau=0.7, seed=s),
    "gumbel_softmax_topk": lambda x, s: softdec.gumbel_softmax(x, tau=0.7, top_k=20, seed=s),
    "sample": lambda x, s: softdec.sample(x, temperature=0.8, top_k=50, top_p=0.9, seed=s),
    "sample_dense": lambda x, s: softdec.sample(x, seed=s),
    "top_k_mask_logits": lambda x, s: softdec.top_k_mask_logits(x, 100),
    "top_p_renorm_probs": lambda x, s: softdec.top_p_renorm_probs(x.softmax(-1), 0.9),
    "min_p_renorm_probs": lambda x, s: softdec.min_p_renorm_probs(x.softmax(-1), 0.05),
}


@pytest.mark.parametrize("op", list(OPS10))
def test_sampling_ops_bit_stable(op):
    fn = OPS10[op]
    x = _logits10()
    seeds = torch.arange(8) + 100
    batch2 = _threads(2, lambda: _as_list(fn(x, seeds)))
    batch1 = _threads(1, lambda: _as_list(fn(x, seeds)))
    for a, b in zip(batch1, batch2):
        assert torch.equal(a, b), f"{op}: 1 thread != 2 threads"
    for r in (0, 5):
        alone = _threads(2, lambda: _as_list(fn(x[r:r + 1].clone(), seeds[r:r + 1].clone())))
        for a, b in zip(alone, batch2):
            assert torch.equal(a[0], b[r]), f"{op}: row {r} alone != in a batch of 8"


def test_verify_bit_stable():
    g = torch.Generator().manual_seed(11)
    B, K, V = 8, 4, 32000
    t = torch.randn(B, K + 1, V, generator=g) * 2
    dp = torch.randn(B, K, V, generator=g).softmax(-1)
    ids = torch.randint(0, V, (B, K), generator=g)
    seeds = torch.arange(B)
    fn = lambda sl: softdec.verify(t[sl], ids[sl], draft_probs=dp[sl], method="exact", seed=seeds[sl])  # noqa: E731
    o2 = _threads(2, lambda: fn(slice(0, B)))
    o1 = _threads(1, lambda: fn(slice(0, B)))
    for a, b in zip(_as_list(o1), _as_list(o2)):
        assert torch.equal(a, b)
    one = _threads(2, lambda: fn(slice(3, 4)))
    for a, b in zip(_as_list(one), _as_list(o2)):
        assert torch.equal(a[0], b[3])


def test_attention_bit_stable():
    g = torch.Generator().manual_seed(12)
    B, Hq, Hkv, N, d = 8, 4, 2, 512, 64
    q = torch.randn(B, Hq, d, generator=g)
    k = torch.randn(B, Hkv, N, d, generator=g)
    v = torch.randn(B, Hkv, N, d, generator=g)
    for sel in ("token", "page"):
        fn = lambda sl: softdec.sparse_decode_attention(q[sl], k[sl], v[sl], budget=64, select=sel,  # noqa: E731
                                                        return_indices=True)
        o2 = _threads(2, lambda: fn(slice(0, B)))
        o1 = _threads(1, lambda: fn(slice(0, B)))
        assert torch.equal(o1[0], o2[0]) and torch.equal(o1[1], o2[1])
        one = _threads(2, lambda: fn(slice(2, 3)))
        assert torch.equal(one[0][0], o2[0][2]) and torch.equal(one[1][0], o2[1][2])
    s2 = _threads(2, lambda: softdec.build_page_summary(k, page_size=16))
    s1 = _threads(1, lambda: softdec.build_page_summary(k, page_size=16))
    s_one = softdec.build_page_summary(k[5:6], page_size=16)
    assert torch.equal(s1.kmin, s2.kmin) and torch.equal(s1.kmax, s2.kmax)
    assert torch.equal(s_one.kmin[0], s2.kmin[5]) and torch.equal(s_one.kmax[0], s2.kmax[5])
    x = torch.randn(2, 4, 300, 32, generator=g)
    fn = lambda sl: softdec.token_sparse_prefill(x[sl], x[sl], x[sl], coverage=0.05, min_tokens=64,  # noqa: E731
                                                 window=32, return_kept=True)
    p2 = _threads(2, lambda: fn(slice(0, 2)))
    p1 = _threads(1, lambda: fn(slice(0, 2)))
    assert torch.equal(p1[0], p2[0]) and torch.equal(p1[1], p2[1])
    one = _threads(2, lambda: fn(slice(1, 2)))
    assert torch.equal(one[0][0], p2[0][1]) and torch.equal(one[1][0], p2[1][1])
