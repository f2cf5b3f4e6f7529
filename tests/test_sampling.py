"""sample, gumbel_softmax and the filter ops: exact-stream oracle, distribution
(chi-square), reproducibility, batch-invariance, edge cases, bad input, opcheck,
torch.compile, autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import softdec
from softdec import reference as ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
INF = float("inf")

SETTINGS = [
    dict(),
    dict(temperature=0.7),
    dict(top_k=5),
    dict(top_k=50, top_p=0.9),
    dict(top_p=0.8),
    dict(min_p=0.05),
    dict(temperature=1.3, top_k=20, top_p=0.7, min_p=0.1),
    dict(top_k=3000),
    dict(temperature=0.0),
]


def _logits(b, v, dtype=torch.float32, scale=2.0, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, v, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)


# ---------------------------------------------------------------- exact-stream oracle

@pytest.mark.parametrize("V,B", [(1, 3), (7, 64), (1023, 3), (32000, 3), (151936, 1)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_matches_inverse_cdf_oracle(V, B, dtype, device):
    x = _logits(B, V, dtype, seed=V + B, device=device)
    seed = torch.arange(B, device=device) * 7919 + 11
    for kw in SETTINGS:
        got = softdec.sample(x, seed=seed, offset=5, **kw)
        want_ids, want_valid = ref.sample_exact(x.float().cpu(), seed=seed.cpu(), offset=5, **kw)
        assert got.valid.all()
        assert torch.equal(got.ids.cpu(), want_ids), kw


def test_sample_per_row_parameters_honoured(device):
    B, V = 64, 1023
    x = _logits(B, V, seed=3)
    g = torch.Generator().manual_seed(1)
    T = torch.rand(B, generator=g) * 1.5
    T[::7] = 0.0
    k = torch.randint(0, 60, (B,), generator=g)
    p = torch.rand(B, generator=g)
    mp = torch.rand(B, generator=g) * 0.3
    seed = torch.randint(-2**62, 2**62, (B,), generator=g)
    off = torch.randint(0, 1000, (B,), generator=g)
    dev = [t.to(device) for t in (x, T, k, p, mp, seed, off)]
    got = softdec.sample(dev[0], temperature=dev[1], top_k=dev[2], top_p=dev[3], min_p=dev[4], seed=dev[5],
                         offset=dev[6])
    want, _ = ref.sample_exact(x, T, k, p, mp, seed, off)
    assert torch.equal(got.ids.cpu(), want)
    probs, _ = ref.filter_probs(x.double(), T.double(), k, p.double(), mp.double())
    assert (probs.gather(1, got.ids.cpu()[:, None]) > 0).all()


@pytest.mark.parametrize("col", [100, 101])  # 101: rows not 16-byte aligned (no vector loads on CUDA)
def test_strided_rows_are_read_in_place(col, device):
    big = _logits(5, 3000, seed=4, device=device)
    x = big[:, col:col + 1023]
    assert x.stride(0) == 3000
    s = torch.arange(5, device=device)
    for kw in SETTINGS:
        assert torch.equal(softdec.sample(x, seed=s, **kw).ids, softdec.sample(x.contiguous(), seed=s, **kw).ids)


# ---------------------------------------------------------------- distribution

def _chi2(counts: np.ndarray, probs: np.ndarray, n: int):
    assert counts[probs == 0].sum() == 0, "a filtered-out token was drawn"
    keep = probs > 0
    exp = probs[keep] * n
    if keep.sum() == 1:
        assert counts[keep][0] == n
        return 1.0
    return stats.chisquare(counts[keep], exp / exp.sum() * counts[keep].sum()).pvalue


N_DRAWS = 100_000


@pytest.mark.parametrize("V", [2, 7, 50])
@pytest.mark.parametrize("case", range(4))
def test_sample_chi_square(V, case):
    g = torch.Generator().manual_seed(100 * V + case)
    x = torch.randn(1, V, generator=g) * (0.5 + 2 * torch.rand(1, generator=g))
    kw = dict(temperature=float(0.3 + torch.rand(1, generator=g)),
              top_k=int(torch.randint(0, V + 2, (1,), generator=g)),
              top_p=float(torch.rand(1, generator=g)) if case % 2 else 1.0,
              min_p=float(torch.rand(1, generator=g) * 0.3) if case >= 2 else 0.0)
    probs, _ = ref.filter_probs(x.double(), **kw)
    xs = x.expand(N_DRAWS, V)
    out = softdec.sample(xs, seed=torch.arange(N_DRAWS) + 1000 * case, offset=case, **kw)
    assert out.valid.all()
    counts = torch.bincount(out.ids, minlength=V).numpy()
    assert _chi2(counts, probs[0].numpy(), N_DRAWS) > 1e-3, kw


def test_sample_chi_square_per_row_mixture():
    # half the rows use one setting, half another (per-row tensors), in one call
    V = 50
    x = torch.randn(1, V, generator=torch.Generator().manual_seed(9)) * 2
    n = N_DRAWS
    half = torch.arange(n) % 2 == 0
    T = torch.where(half, 0.8, 1.5)
    k = torch.where(half, 10, 0)
    p = torch.where(half, 0.9, 1.0)
    mp = torch.where(half, 0.0, 0.02)
    out = softdec.sample(x.expand(n, V), temperature=T, top_k=k, top_p=p, min_p=mp, seed=torch.arange(n))
    for sel, kw in [(half, dict(temperature=0.8, top_k=10, top_p=0.9)), (~half, dict(temperature=1.5, min_p=0.02))]:
        probs, _ = ref.filter_probs(x.double(), **kw)
        counts = torch.bincount(out.ids[sel], minlength=V).numpy()
        assert _chi2(counts, probs[0].numpy(), int(sel.sum())) > 1e-3


@pytest.mark.parametrize("V", [2, 7, 50])
def test_gumbel_softmax_hard_chi_square(V):
    g = torch.Generator().manual_seed(V)
    x = torch.randn(1, V, generator=g) * 1.5
    probs = torch.softmax(x.double(), -1)[0].numpy()
    xs = x.expand(N_DRAWS, V)
    seed = torch.arange(N_DRAWS) + 77
    h = softdec.gumbel_softmax(xs, tau=0.5, hard=True, seed=seed)
    assert torch.equal(h.sum(-1), torch.ones(N_DRAWS))
    counts = torch.bincount(h.argmax(-1), minlength=V).numpy()
    assert _chi2(counts, probs, N_DRAWS) > 1e-3
    k = min(3, V)
    ids, w = softdec.gumbel_softmax(xs, top_k=k, seed=seed)
    counts = torch.bincount(ids[:, 0], minlength=V).numpy()
    assert _chi2(counts, probs, N_DRAWS) > 1e-3
    # the top id of the sparse pair is the dense hard sample, draw for draw
    assert torch.equal(ids[:, 0], h.argmax(-1))


def test_rows_with_distinct_seeds_are_independent():
    # FlashInfer used only seed[0]: rows with equal logits drew the same token.
    n = 40_000
    x = torch.tensor([[0.0, 0.0]]).expand(2 * n, 2)
    ids = softdec.sample(x, seed=torch.arange(2 * n) * 3 + 1).ids.reshape(n, 2)
    table = np.zeros((2, 2))
    np.add.at(table, (ids[:, 0].numpy(), ids[:, 1].numpy()), 1)
    assert stats.chi2_contingency(table).pvalue > 1e-3
    assert not torch.equal(ids[:, 0], ids[:, 1])


# ---------------------------------------------------------------- reproducibility

def test_same_seed_same_ids_and_offsets_differ():
    x = _logits(64, 1023, seed=5)
    s = torch.arange(64) + 3
    a = softdec.sample(x, seed=s, offset=1, top_k=40)
    b = softdec.sample(x, seed=s, offset=1, top_k=40)
    c = softdec.sample(x, seed=s, offset=2, top_k=40)
    assert torch.equal(a.ids, b.ids)
    assert (a.ids != c.ids).any()


@pytest.mark.parametrize("kw", SETTINGS[:7])
def test_batch_invariance(kw):
    x = _logits(9, 40000, seed=6)  # few rows: the vocabulary is split across threads
    s = torch.arange(9) * 101
    o = torch.arange(9)
    full = softdec.sample(x, seed=s, offset=o, **kw).ids
    for r in range(9):
        alone = softdec.sample(x[r:r + 1], seed=s[r:r + 1], offset=o[r:r + 1], **kw).ids
        assert alone.item() == full[r].item()
    perm = torch.tensor([4, 2, 8, 0, 1, 7, 3, 6, 5])
    assert torch.equal(softdec.sample(x[perm], seed=s[perm], offset=o[perm], **kw).ids, full[perm])
    big = torch.cat([x, _logits(55, 40000, seed=7)])
    assert torch.equal(softdec.sample(big, seed=torch.cat([s, torch.arange(55)]),
                                      offset=torch.cat([o, torch.zeros(55, dtype=torch.int64)]), **kw).ids[:9], full)


def test_generator_seeds():
    x = _logits(8, 100, seed=8)
    a = softdec.sample(x, generator=torch.Generator().manual_seed(3)).ids
    b = softdec.sample(x, generator=torch.Generator().manual_seed(3)).ids
    assert torch.equal(a, b)


def test_gumbel_noise_layout_is_the_philox_stream():
    # zero logits, tau = 1: log y_i - log y_0 = G_i - G_0 with G from element i of the stream
    B, V = 3, 1000
    s = torch.tensor([1, 2, 3])
    y = softdec.gumbel_softmax(torch.zeros(B, V), seed=s, offset=4).double()
    g = ref.gumbel_noise(s, 4, B, V)
    assert torch.allclose(y.log() - y[:, :1].log(), g - g[:, :1], atol=2e-5)


@pytest.mark.parametrize("V", [7, 1023, 151936])
def test_gumbel_softmax_hard_is_the_gumbel_max_of_the_stream(V):
    x = _logits(4, V, seed=V)
    s = torch.tensor([5, 6, 7, 8])
    h = softdec.gumbel_softmax(x, hard=True, seed=s, offset=3)
    _, am = ref.gumbel_softmax(x, 1.0, s, 3)
    assert torch.equal(h.argmax(-1), am)


# ---------------------------------------------------------------- edge cases

def test_invalid_rows():
    x = _logits(6, 50, seed=9)
    x[1, 3] = float("nan")
    x[2] = -INF
    x[3, 7] = INF
    x[4, :] = -INF
    x[4, 17] = 0.0  # one finite token: always drawn
    for kw in SETTINGS:
        out = softdec.sample(x, seed=torch.arange(6), **kw)
        assert out.valid.tolist() == [True, False, False, False, True, True], kw
        assert out.ids[1:4].tolist() == [0, 0, 0]
        assert out.ids[4].item() == 17
        assert ((out.ids >= 0) & (out.ids < 50)).all()
    y = softdec.gumbel_softmax(x, seed=torch.arange(6))
    assert torch.equal(y[1:4], torch.zeros(3, 50)) and torch.allclose(y[[0, 4, 5]].sum(-1), torch.ones(3))
    ids, w = softdec.gumbel_softmax(x, top_k=3, seed=torch.arange(6))
    assert torch.equal(w[1:4], torch.zeros(3, 3)) and ids[4].tolist() == [17, 17, 17]
    assert w[4].tolist() == [1.0, 0.0, 0.0]


def test_minus_inf_tokens_never_drawn():
    x = torch.zeros(20000, 7)
    x[:, [1, 4]] = -INF
    for kw in [dict(), dict(top_k=6), dict(top_p=0.99), dict(min_p=0.5)]:
        ids = softdec.sample(x, seed=torch.arange(20000), **kw).ids
        assert not ((ids == 1) | (ids == 4)).any()
        assert set(ids.tolist()) == {0, 2, 3, 5, 6}


def test_greedy_ties_lower_index_and_filters_ignored():
    x = torch.tensor([[1.0, 3.0, 3.0, 2.0], [-INF, -1.0, -1.0, -INF]])
    out = softdec.sample(x, temperature=0.0, top_k=3, top_p=0.1, min_p=0.9, seed=1)
    assert out.ids.tolist() == [1, 1] and out.valid.all()


def test_k_larger_than_vocab_is_no_filter():
    x = _logits(16, 30, seed=10)
    s = torch.arange(16)
    a = softdec.sample(x, top_k=0, seed=s).ids
    assert torch.equal(softdec.sample(x, top_k=30, seed=s).ids, a)
    assert torch.equal(softdec.sample(x, top_k=1000, seed=s).ids, a)


def test_top_p_zero_keeps_the_top_token_and_min_p_one_keeps_the_max_ties():
    x = _logits(2000, 20, seed=11)
    am = x.argmax(-1)
    assert torch.equal(softdec.sample(x, top_p=0.0, seed=torch.arange(2000)).ids, am)
    assert torch.equal(softdec.sample(x, min_p=1.0, seed=torch.arange(2000)).ids, am)
    t = torch.tensor([[0.0, 2.0, 1.0, 2.0]]).expand(20000, 4)
    ids = softdec.sample(t, min_p=1.0, seed=torch.arange(20000)).ids
    assert set(ids.tolist()) == {1, 3}
    assert stats.binomtest(int((ids == 1).sum()), 20000).pvalue > 1e-3
    # top-k with ties keeps the lower index: k = 1 on [2, 2] is token 0 only
    ids = softdec.sample(torch.tensor([[2.0, 2.0]]).expand(1000, 2), top_k=1, seed=torch.arange(1000)).ids
    assert (ids == 0).all()


def test_empty_batch():
    out = softdec.sample(torch.zeros(0, 10), seed=0)
    assert out.ids.shape == (0,) and out.valid.shape == (0,)
    assert softdec.gumbel_softmax(torch.zeros(0, 10), seed=0).shape == (0, 10)
    assert softdec.top_k_mask_logits(torch.zeros(0, 10), 3).shape == (0, 10)


def test_vocab_one():
    out = softdec.sample(torch.randn(5, 1), seed=torch.arange(5), top_k=3, top_p=0.2)
    assert out.ids.tolist() == [0] * 5 and out.valid.all()


# ---------------------------------------------------------------- gumbel_softmax values and gradients

@pytest.mark.parametrize("V,B", [(1, 1), (7, 3), (1023, 64), (151936, 2)])
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-6), (torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_gumbel_softmax_dense_matches_reference(V, B, dtype, atol):
    x = _logits(B, V, dtype, seed=V)
    s = torch.arange(B) + 40
    y = softdec.gumbel_softmax(x, tau=0.6, seed=s, offset=1)
    assert y.dtype == dtype
    want, am = ref.gumbel_softmax(x.float(), 0.6, s, 1)
    torch.testing.assert_close(y.double(), want, atol=atol, rtol=1e-2 if dtype != torch.float32 else 1e-4)


@pytest.mark.parametrize("V,k", [(7, 1), (7, 7), (1023, 10), (151936, 15)])
def test_gumbel_softmax_topk_matches_reference(V, k):
    x = _logits(3, V, seed=V + k)
    s = torch.tensor([3, 1, 4])
    tau = torch.tensor([0.1, 0.5, 2.0])
    ids, w = softdec.gumbel_softmax(x, tau=tau, top_k=k, seed=s)
    ri, rw = ref.gumbel_softmax_topk(x, k, tau, s, 0)
    assert torch.equal(ids, ri)
    torch.testing.assert_close(w.double(), rw, atol=2e-6, rtol=1e-4)


def test_gumbel_softmax_gradients():
    x = _logits(3, 50, seed=12).requires_grad_(True)
    xd = x.detach().double().requires_grad_(True)
    s = torch.tensor([1, 2, 3])
    w = torch.randn(3, 50, dtype=torch.float64)
    noise = ref.gumbel_noise(s, 0, 3, 50)
    for hard in (False, True):
        y = softdec.gumbel_softmax(x, tau=0.7, hard=hard, seed=s)
        (y.double() * w).sum().backward()
        yr = torch.softmax((xd + noise) / 0.7, -1)
        (yr * w).sum().backward()
        torch.testing.assert_close(x.grad.double(), xd.grad, atol=1e-5, rtol=1e-4)
        x.grad = None
        xd.grad = None
    # sparse: gradient flows to the k kept ids only
    ids, wt = softdec.gumbel_softmax(x, tau=0.7, top_k=4, seed=s)
    ww = torch.randn(3, 4, dtype=torch.float64)
    (wt.double() * ww).sum().backward()
    yk = torch.gather(xd + noise, 1, ids)
    (torch.softmax(yk / 0.7, -1) * ww).sum().backward()
    torch.testing.assert_close(x.grad.double(), xd.grad, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- filter ops

@pytest.mark.parametrize("V", [1, 7, 1023, 32000])
@pytest.mark.parametrize("dtype", DTYPES)
def test_top_k_mask_logits(V, dtype):
    x = _logits(3, V, dtype, seed=V)
    x[0, : min(V, 5)] = 1.0  # ties
    for k in [0, 1, 3, 50, V, V + 5, torch.tensor([1, 0, 2])]:
        assert torch.equal(softdec.top_k_mask_logits(x, k), ref.top_k_mask_logits(x, k))


@pytest.mark.parametrize("V", [1, 7, 1023, 32000])
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-6), (torch.bfloat16, 8e-3), (torch.float16, 1e-3)])
def test_renorm_probs(V, dtype, atol):
    p = torch.softmax(_logits(3, V, seed=V + 1), -1).to(dtype)
    for tp in [0.0, 0.3, 0.9, 1.0, torch.tensor([0.2, 0.5, 0.99])]:
        want = ref.top_p_renorm_probs(p.double(), tp)
        torch.testing.assert_close(softdec.top_p_renorm_probs(p, tp).double(), want, atol=atol, rtol=1e-2)
    for mp in [0.0, 0.05, 0.5, 1.0, torch.tensor([0.1, 0.0, 0.7])]:
        want = ref.min_p_renorm_probs(p.double(), mp)
        torch.testing.assert_close(softdec.min_p_renorm_probs(p, mp).double(), want, atol=atol, rtol=1e-2)


def test_renorm_probs_invalid_rows_are_zero():
    p = torch.tensor([[0.5, 0.5], [float("nan"), 1.0], [0.0, 0.0], [-0.1, 1.1]])
    assert torch.equal(softdec.top_p_renorm_probs(p, 0.5), torch.tensor([[1.0, 0.0], [0, 0], [0, 0], [0, 0]]))
    assert torch.equal(softdec.min_p_renorm_probs(p, 1.0), torch.tensor([[0.5, 0.5], [0, 0], [0, 0], [0, 0]]))


# ---------------------------------------------------------------- bad input

def test_bad_arguments():
    x = torch.randn(2, 5)
    with pytest.raises(ValueError, match=r"temperature must be >= 0.0, got -1.0"):
        softdec.sample(x, temperature=-1.0)
    with pytest.raises(ValueError, match=r"temperature must be >= 0.0, got -0.5 at row 1"):
        softdec.sample(x, temperature=torch.tensor([1.0, -0.5]))
    with pytest.raises(ValueError, match=r"top_k must be >= 0, got -2"):
        softdec.sample(x, top_k=-2)
    with pytest.raises(ValueError, match=r"top_p must be in \[0.0, 1.0\], got 1.5"):
        softdec.sample(x, top_p=1.5)
    with pytest.raises(ValueError, match=r"min_p must be in \[0.0, 1.0\], got -0.1"):
        softdec.sample(x, min_p=-0.1)
    with pytest.raises(ValueError, match=r"temperature must not be NaN"):
        softdec.sample(x, temperature=float("nan"))
    with pytest.raises(ValueError, match=r"logits must have dtype in \(float32, bfloat16, float16\), got int64"):
        softdec.sample(torch.zeros(2, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"logits must be a 2-D tensor \(batch, vocab\), got shape \(5,\)"):
        softdec.sample(torch.zeros(5))
    with pytest.raises(ValueError, match=r"logits must have at least one column \(vocab >= 1\), got shape \(2, 0\)"):
        softdec.sample(torch.zeros(2, 0))
    with pytest.raises(ValueError, match=r"top_k must be a scalar or a tensor of shape \(2,\), got shape \(3,\)"):
        softdec.sample(x, top_k=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"seed must be an int or a tensor of shape \(2,\), got shape \(3,\)"):
        softdec.sample(x, seed=torch.arange(3))
    with pytest.raises(ValueError, match=r"tau must be > 0.0, got 0.0"):
        softdec.gumbel_softmax(x, tau=0.0)
    with pytest.raises(ValueError, match=r"top_k must be in \[0, vocab\] = \[0, 5\], got 6"):
        softdec.gumbel_softmax(x, top_k=6)
    with pytest.raises(ValueError, match=r"top_p must be in \[0.0, 1.0\], got 2.0"):
        softdec.top_p_renorm_probs(x.softmax(-1), 2.0)
    with pytest.raises(ValueError, match=r"min_p must be in \[0.0, 1.0\], got -1.0"):
        softdec.min_p_renorm_probs(x.softmax(-1), -1.0)
    with pytest.raises(ValueError, match=r"top_k must be >= 0, got -1"):
        softdec.top_k_mask_logits(x, -1)


def test_native_ops_reject_bad_input():
    x = torch.randn(2, 5)
    f = torch.ones(2)
    i = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"temperature must be a finite value >= 0, got -1 at row 1"):
        torch.ops.softdec.sample(x, torch.tensor([1.0, -1.0]), i, f, f * 0, i, i)
    with pytest.raises(ValueError, match=r"top_p must be in \[0, 1\], got 2 at row 0"):
        torch.ops.softdec.sample(x, f, i, torch.tensor([2.0, 1.0]), f * 0, i, i)
    with pytest.raises(ValueError, match=r"top_k must have shape \(2,\) \(one value per row of logits\), got \(3,\)"):
        torch.ops.softdec.sample(x, f, torch.zeros(3, dtype=torch.int64), f, f * 0, i, i)
    with pytest.raises(ValueError, match=r"logits must be float32, bfloat16 or float16, got int64"):
        torch.ops.softdec.sample(i.reshape(1, 2), f[:1], i[:1], f[:1], f[:1], i[:1], i[:1])
    with pytest.raises(ValueError, match=r"tau must be a finite value > 0, got 0 at row 0"):
        torch.ops.softdec.gumbel_softmax(x, torch.tensor([0.0, 1.0]), i, i)
    with pytest.raises(ValueError, match=r"k must be in \[1, vocab\] = \[1, 5\], got 9"):
        torch.ops.softdec.gumbel_softmax_topk(x, f, 9, i, i)


# ---------------------------------------------------------------- opcheck / compile

def test_opcheck():
    x = torch.randn(3, 37)
    f = torch.tensor([1.0, 0.5, 0.0])
    k = torch.tensor([0, 5, 2])
    i = torch.tensor([1, 2, 3])
    z = torch.zeros(3, dtype=torch.int64)
    torch.library.opcheck(torch.ops.softdec.sample, (x, f, k, torch.tensor([1.0, 0.9, 0.5]), torch.zeros(3), i, z))
    torch.library.opcheck(torch.ops.softdec.gumbel_softmax, (x.requires_grad_(True), torch.ones(3), i, z))
    torch.library.opcheck(torch.ops.softdec.gumbel_softmax_topk, (x, torch.ones(3), 4, i, z))
    torch.library.opcheck(torch.ops.softdec.top_k_mask_logits, (x.detach(), k))
    p = torch.softmax(torch.randn(3, 37), -1)
    torch.library.opcheck(torch.ops.softdec.top_p_renorm_probs, (p, torch.tensor([0.5, 0.9, 1.0])))
    torch.library.opcheck(torch.ops.softdec.min_p_renorm_probs, (p, torch.tensor([0.5, 0.0, 1.0])))


def test_torch_compile_fullgraph():
    x = _logits(4, 300, seed=13)
    s = torch.arange(4)

    def f(x, s):
        a = softdec.sample(x, temperature=0.8, top_k=20, top_p=0.9, min_p=0.01, seed=s)
        y = softdec.gumbel_softmax(x, tau=0.5, hard=True, seed=s)
        ids, w = softdec.gumbel_softmax(x, top_k=5, seed=s)
        m = softdec.top_k_mask_logits(x, 10)
        p = softdec.top_p_renorm_probs(torch.softmax(m, -1), 0.9)
        q = softdec.min_p_renorm_probs(p, 0.1)
        return a.ids, a.valid, y, ids, w, q

    got = torch.compile(f, fullgraph=True)(x, s)
    want = f(x, s)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


# ---------------------------------------------------------------- CUDA == CPU (run where a GPU is present)

@pytest.mark.cuda
@pytest.mark.parametrize("V,B", [(7, 64), (1023, 3), (32000, 5), (151936, 4)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_cpu(V, B, dtype):
    x = _logits(B, V, dtype, seed=V)
    x[0, : min(V, 3)] = x[0].max()  # ties
    s = torch.arange(B) * 13 + 1
    xc, sc = x.cuda(), s.cuda()
    for kw in SETTINGS:
        a = softdec.sample(x, seed=s, offset=2, **kw)
        b = softdec.sample(xc, seed=sc, offset=2, **kw)
        assert torch.equal(a.ids, b.ids.cpu()) and torch.equal(a.valid, b.valid.cpu()), kw
    atol, rtol = {torch.float32: (1e-6, 1e-4), torch.bfloat16: (1e-3, 1.6e-2), torch.float16: (1e-4, 2e-3)}[dtype]
    torch.testing.assert_close(softdec.gumbel_softmax(xc, tau=0.7, seed=sc).cpu().float(),
                               softdec.gumbel_softmax(x, tau=0.7, seed=s).float(), atol=atol, rtol=rtol)
    k = min(V, 10)
    ia, wa = softdec.gumbel_softmax(x, top_k=k, seed=s)
    ib, wb = softdec.gumbel_softmax(xc, top_k=k, seed=sc)
    assert torch.equal(ia, ib.cpu())
    torch.testing.assert_close(wa, wb.cpu(), atol=1e-6, rtol=1e-5)
    for kk in [0, 1, 5, V]:
        assert torch.equal(softdec.top_k_mask_logits(x, kk), softdec.top_k_mask_logits(xc, kk).cpu())
    p = torch.softmax(x.float(), -1).to(dtype)
    for tp in [0.0, 0.5, 0.9]:
        torch.testing.assert_close(softdec.top_p_renorm_probs(p, tp), softdec.top_p_renorm_probs(p.cuda(), tp).cpu(),
                                   atol=atol, rtol=rtol)
    torch.testing.assert_close(softdec.min_p_renorm_probs(p, 0.1), softdec.min_p_renorm_probs(p.cuda(), 0.1).cpu(),
                               atol=atol, rtol=rtol)


@pytest.mark.cuda
@pytest.mark.parametrize("V", [1023, 32000, 151936])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [2.0, 40.0])  # 40: most masses underflow (2^z, z <= -125 -> 0)
def test_cuda_sample_per_row_mixture_matches_cpu(V, dtype, scale):
    # every path of sample in one batch, per-row parameters: greedy, plain, min-p,
    # top-p, top-k candidate rule (k <= 2048, incl. 2048 itself), large k (block
    # rule), k >= V, ties at the top and at a top-k cut, invalid rows
    B = 24
    x = _logits(B, V, dtype, scale=scale, seed=V + int(scale))
    x[1, :5] = x[1].max()
    x[2, 100:140] = 1.5  # ties straddling a top-k cut
    x[3, 7] = float("nan")
    x[4] = -INF
    x[4, V // 2] = 0.0
    g = torch.Generator().manual_seed(V)
    T = (torch.rand(B, generator=g) * 1.5 + 0.05).float()
    T[0] = 0.0
    k = torch.tensor([0, 0, 30, 0, 0, 1, 5, 50, 2048, 2049, 3000, V, V + 7, 0, 0, 0, 40, 2000, 0, 0, 100, 0, 4096, 0])
    p = torch.ones(B)
    p[[13, 14, 16, 17, 20, 22]] = torch.tensor([0.0, 0.3, 0.9, 0.95, 0.5, 0.8])
    mp = torch.zeros(B)
    mp[[15, 16, 18, 21, 22]] = torch.tensor([0.05, 0.1, 1.0, 0.01, 0.2])
    seed = torch.randint(-2**62, 2**62, (B,), generator=g)
    off = torch.randint(0, 1000, (B,), generator=g)
    a = softdec.sample(x, temperature=T, top_k=k, top_p=p, min_p=mp, seed=seed, offset=off)
    args = [t.cuda() for t in (x, T, k, p, mp, seed, off)]
    b = softdec.sample(args[0], temperature=args[1], top_k=args[2], top_p=args[3], min_p=args[4], seed=args[5],
                       offset=args[6])
    assert torch.equal(a.valid, b.valid.cpu())
    assert torch.equal(a.ids, b.ids.cpu()), (a.ids != b.ids.cpu()).nonzero().flatten().tolist()
    assert a.valid.tolist() == [r != 3 for r in range(B)]


@pytest.mark.cuda
def test_cuda_invalid_rows():
    x = _logits(4, 50, seed=1).cuda()
    x[1, 3] = float("nan")
    x[2] = -INF
    x[3, 7] = INF
    for kw in SETTINGS:
        out = softdec.sample(x, seed=torch.arange(4, device="cuda"), **kw)
        assert out.valid.tolist() == [True, False, False, False]
        assert out.ids[1:].tolist() == [0, 0, 0]
