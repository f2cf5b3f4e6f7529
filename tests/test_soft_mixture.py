"""softdec.soft_mixture (Soft Thinking concept tokens): the float64 reference,
ties, strides, per-row parameters, T = 0, invalid rows, noise (exact stream and
distribution), autograd, opcheck, torch.compile and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

import softdec
from softdec import reference as ref

from conftest import TOLS

# (logits dtype, embedding dtype): weights are compared at float32 precision
# (the kernel computes them in float32 from the same quantised logits), embeds
# at the embedding dtype's tolerance.
DTYPES = [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
          (torch.float16, torch.float16), (torch.float32, torch.bfloat16)]


def _ref(logits, table, **kw):
    kw.setdefault("seed", 0)
    return ref.soft_mixture(logits.double(), table.double(), **kw)


def _check(out, want, table_dtype, *, check_embeds=True):
    embeds, ids, weights, entropy, max_prob, valid, noisy = want
    assert torch.equal(out.valid, valid)
    assert torch.equal(out.ids, ids)
    torch.testing.assert_close(out.weights.double(), weights, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(out.entropy.double(), entropy, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out.max_prob.double(), max_prob, atol=1e-6, rtol=1e-5)
    if noisy is None:
        assert out.noisy_logits is None
    else:
        torch.testing.assert_close(out.noisy_logits.double(), noisy, atol=1e-5, rtol=1e-5)
    if check_embeds:
        atol, rtol = TOLS[table_dtype]
        assert out.embeds.dtype == table_dtype
        # the reference accumulates in float64 and rounds once to the table dtype
        torch.testing.assert_close(out.embeds.double(), embeds.double(), atol=atol, rtol=rtol)


GRID = [(B, V, k) for V in (1, 7, 1023, 32000) for B in (1, 3, 64) for k in (1, 5, 30, 64)] + \
       [(B, 151936, k) for B in (1, 3) for k in (1, 5, 30, 64)]


@pytest.mark.parametrize("B,V,k", GRID)
def test_matches_reference_grid(B, V, k):
    k = min(k, V) if k == 64 else k
    g = torch.Generator().manual_seed(V * 131 + B * 7 + k)
    logits = (torch.randn(B, V, generator=g) * 3).to(torch.bfloat16 if V == 151936 else torch.float32)
    table = torch.randn(V, 48, generator=g).to(torch.bfloat16)
    kw = dict(top_k=k, temperature=0.7, top_p=0.9, min_p=0.02)
    _check(softdec.soft_mixture(logits, table, **kw), _ref(logits, table, **kw), torch.bfloat16)


@pytest.mark.parametrize("ldt,edt", DTYPES)
@pytest.mark.parametrize("noise", [None, "gumbel", "dirichlet"])
def test_dtypes_and_noise_match_reference(ldt, edt, noise):
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(5, 1023, generator=g) * 2).to(ldt)
    table = torch.randn(1023, 100, generator=g).to(edt)
    kw = dict(top_k=30, temperature=0.8, top_p=0.95, min_p=0.001, noise=noise, tau=0.5,
              dirichlet_alpha=4.0, seed=torch.tensor([1, 2, 3, 4, 5]), offset=7)
    _check(softdec.soft_mixture(logits, table, **kw), _ref(logits, table, **kw), edt)


def test_ties_lower_index_first():
    V = 1000
    g = torch.Generator().manual_seed(2)
    logits = torch.randint(-3, 3, (4, V), generator=g).float()  # many exact ties
    logits[3] = 0.0  # every token tied
    table = torch.randn(V, 16, generator=g)
    out = softdec.soft_mixture(logits, table, top_k=20)
    want = _ref(logits, table, top_k=20)
    assert torch.equal(out.ids, want[1])
    assert out.ids[3].tolist() == list(range(20))
    for b in range(3):
        top = torch.sort(logits[b], descending=True, stable=True).indices[:20]
        assert out.ids[b].tolist() == top.tolist()
    # bf16 logits: ties from quantisation
    lb = torch.randn(3, 32000, generator=g).to(torch.bfloat16)
    _check(softdec.soft_mixture(lb, table.new_zeros(32000, 8), top_k=64),
           _ref(lb, table.new_zeros(32000, 8), top_k=64), torch.float32)


def test_strided_logits_and_table():
    g = torch.Generator().manual_seed(3)
    big_logits = torch.randn(6, 2100, generator=g)
    logits = big_logits[::2, 50:1073]  # row stride 4200, last dim contiguous
    big_table = torch.randn(1023, 200, generator=g).to(torch.bfloat16)
    table = big_table[:, 17:117]  # row stride 200
    assert logits.stride() == (4200, 1) and table.stride() == (200, 1)
    kw = dict(top_k=10, top_p=0.8, noise="gumbel", seed=5)
    _check(softdec.soft_mixture(logits, table, **kw), _ref(logits, table, **kw), torch.bfloat16)
    # a non-contiguous last dimension is copied, not rejected
    out = softdec.soft_mixture(logits.t().contiguous().t(), table, **kw)
    _check(out, _ref(logits, table, **kw), torch.bfloat16)


def test_per_row_parameters():
    B, V = 6, 1023
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(B, V, generator=g) * 2
    table = torch.randn(V, 32, generator=g)
    kw = dict(top_k=torch.tensor([1, 5, 30, 64, 7, 64]),
              temperature=torch.tensor([0.5, 1.0, 0.0, 2.0, 0.6, 1.3], dtype=torch.float64),
              top_p=torch.tensor([1.0, 0.5, 0.9, 0.95, 0.3, 1.0]),
              min_p=torch.tensor([0.0, 0.1, 0.0, 0.001, 0.5, 0.05]),
              noise="gumbel", seed=torch.arange(B) + 100, offset=torch.arange(B))
    out = softdec.soft_mixture(logits, table, **kw)
    assert out.ids.shape == (B, 64)
    _check(out, _ref(logits, table, **kw), torch.float32)
    # each row equals the same row alone with scalar parameters
    for b in range(B):
        alone = softdec.soft_mixture(
            logits[b:b + 1], table, top_k=int(kw["top_k"][b]), temperature=float(kw["temperature"][b]),
            top_p=float(kw["top_p"][b]), min_p=float(kw["min_p"][b]), noise="gumbel",
            seed=kw["seed"][b:b + 1], offset=int(kw["offset"][b]))
        kb = int(kw["top_k"][b])
        assert torch.equal(alone.ids[0], out.ids[b, :kb])
        assert torch.equal(alone.weights[0], out.weights[b, :kb])
        assert torch.equal(alone.embeds[0], out.embeds[b])


def test_temperature_zero_is_argmax():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 500, generator=g)
    logits[1, [10, 20]] = 9.0  # tie at the max: the lower index wins
    table = torch.randn(500, 8, generator=g)
    out = softdec.soft_mixture(logits, table, top_k=5, temperature=0.0, noise="gumbel", seed=1)
    assert out.ids[:, 0].tolist() == [int(logits[0].argmax()), 10, int(logits[2].argmax())]
    assert torch.equal(out.weights[:, 0], torch.ones(3))
    assert torch.equal(out.weights[:, 1:], torch.zeros(3, 4))
    assert torch.equal(out.ids[:, 1:], out.ids[:, :1].expand(3, 4))  # padded with the top id
    # entropy / max prob are those of softmax(logits) (T = 1, DESIGN)
    p = torch.softmax(logits.double(), 1)
    torch.testing.assert_close(out.entropy.double(), -(p * p.log()).sum(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.max_prob.double(), p.max(1).values, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.embeds, table[out.ids[:, 0]])
    _check(out, _ref(logits, table, top_k=5, temperature=0.0, noise="gumbel", seed=1), torch.float32)


@pytest.mark.parametrize("T", [1e-3, 1e-30, 1e-45, 1e-300])
def test_tiny_temperature_is_finite(T):
    # 1 / T overflows float32: the kernel clamps it and tends to the argmax
    # (exact ties share the mass) instead of producing NaN
    logits = torch.tensor([[1.0, 3.0, 3.0, 2.9999, -5.0], [0.5, -1.0, 2.0, 1.0, 0.0]])
    table = torch.randn(5, 8)
    for noise in (None, "gumbel"):
        out = softdec.soft_mixture(logits, table, top_k=4, temperature=T, noise=noise, seed=2)
        assert out.valid.all() and out.weights.isfinite().all() and out.embeds.isfinite().all()
        assert out.entropy.isfinite().all() and out.max_prob.isfinite().all()
        _check(out, _ref(logits, table, top_k=4, temperature=T, noise=noise, seed=2), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_invalid_rows(dtype):
    V = 1025
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(5, V, generator=g)
    logits[0] = -math.inf
    logits[1, 700] = math.nan
    logits[2, 3] = math.inf
    logits[3, :] = -math.inf
    logits[3, [5, 900]] = 1.0  # two finite tokens only: the rest is padding
    logits = logits.to(dtype)
    table = torch.randn(V, 24, generator=g)
    for noise in (None, "gumbel", "dirichlet"):
        out = softdec.soft_mixture(logits, table, top_k=10, noise=noise, seed=3)
        assert out.valid.tolist() == [False, False, False, True, True]
        assert torch.equal(out.embeds[:3], torch.zeros(3, 24))
        assert torch.equal(out.ids[:3], torch.zeros(3, 10, dtype=torch.int64))
        assert torch.equal(out.weights[:3], torch.zeros(3, 10))
        assert not out.embeds.isnan().any() and not out.weights.isnan().any()
        assert set(out.ids[3, :2].tolist()) == {5, 900} and (out.ids[3, 2:] == out.ids[3, 0]).all()
        assert torch.equal(out.weights[3, 2:], torch.zeros(8))
        _check(out, _ref(logits, table, top_k=10, noise=noise, seed=3), torch.float32)


@pytest.mark.parametrize("T", [1.0, 0.05])
def test_scan_chunk_fallbacks(T):
    # The CPU scan's fast path (256-token chunks, no per-value clamps) hands a
    # chunk to the exact per-vector path on -inf / NaN / huge logits; every row
    # here hits one of those cases (or an extreme of the fast path) and must
    # still match the float64 reference.
    V = 4099
    g = torch.Generator().manual_seed(11)
    x = torch.randn(10, V, generator=g, dtype=torch.float64) * 3
    x[0, ::97] = -math.inf                       # scattered masked tokens
    x[1, torch.rand(V, generator=g) < 0.9] = -math.inf  # mostly masked (constrained decoding)
    x[2] *= 1000                                 # |max * t| beyond the fast path's range
    x[3] += 5000
    x[4] -= 3000
    x[5, 1234] = 60.0                            # one dominant token: the rest underflows
    x[6, 256:512] = -math.inf
    x[6, 300] = 2.5                              # a chunk with a single finite value
    x[7] = torch.linspace(-10, 10, V, dtype=torch.float64)  # max grows in every chunk
    x[8] = torch.linspace(10, -10, V, dtype=torch.float64)
    x[9] = 0.0                                   # all ties
    logits = x.float()
    table = torch.randn(V, 40, generator=g)
    kw = dict(top_k=7, temperature=T)
    out = softdec.soft_mixture(logits, table, **kw)
    assert out.valid.all()
    _check(out, _ref(logits, table, **kw), torch.float32)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = softdec.soft_mixture(logits, table, **kw)
    finally:
        torch.set_num_threads(old)
    _check(one, _ref(logits, table, **kw), torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_embeds_round_like_torch(dtype):
    # top_k = 1: embeds = fl32(row * embed_scale) rounded once to the table
    # dtype, bit for bit what torch's float32 multiply and .to(dtype) give
    # (vector columns, 16-column remainder and scalar tail; a NaN column stays NaN)
    V, D = 300, 200
    g = torch.Generator().manual_seed(12)
    table = (torch.randn(V, D, generator=g) * 3).to(dtype)
    table[:, 5] = math.nan
    logits = torch.randn(4, V, generator=g)
    out = softdec.soft_mixture(logits, table, top_k=1, embed_scale=0.3)
    want = (table[logits.argmax(1)].float() * 0.3).to(dtype)
    assert out.embeds[:, 5].isnan().all() and not out.embeds[:, 6:].isnan().any()
    bits = torch.int16 if dtype != torch.float32 else torch.int32  # (NaN payloads differ)
    assert torch.equal(out.embeds[:, 6:].contiguous().view(bits), want[:, 6:].contiguous().view(bits))
    assert torch.equal(out.embeds[:, :5].contiguous().view(bits), want[:, :5].contiguous().view(bits))


def test_k_larger_than_vocab_pads():
    logits = torch.tensor([[0.5, 2.0, -1.0], [0.0, 0.0, 0.0]])
    table = torch.eye(3)
    out = softdec.soft_mixture(logits, table, top_k=5)
    assert out.ids.tolist() == [[1, 0, 2, 1, 1], [0, 1, 2, 0, 0]]
    assert torch.equal(out.weights[:, 3:], torch.zeros(2, 2))
    torch.testing.assert_close(out.weights[0, :3], torch.softmax(logits[0], 0)[[1, 0, 2]])
    _check(out, _ref(logits, table, top_k=5), torch.float32)


def test_vocab_one_and_empty_batch():
    out = softdec.soft_mixture(torch.tensor([[3.0]]), torch.tensor([[1.0, 2.0]]), top_k=1)
    assert out.ids.tolist() == [[0]] and out.weights.tolist() == [[1.0]]
    assert out.embeds.tolist() == [[1.0, 2.0]] and out.entropy.tolist() == [0.0]
    empty = softdec.soft_mixture(torch.zeros(0, 7), torch.zeros(7, 4), top_k=3)
    assert empty.embeds.shape == (0, 4) and empty.ids.shape == (0, 3) and empty.valid.shape == (0,)


def test_embed_scale_and_recommended_settings():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 32000, generator=g) * 4
    table = torch.randn(32000, 64, generator=g).to(torch.bfloat16)
    kw = dict(top_k=30, temperature=0.6, top_p=0.95, min_p=0.001, embed_scale=2.5)
    out = softdec.soft_mixture(logits, table, **kw)
    _check(out, _ref(logits, table, **kw), torch.bfloat16)
    assert torch.allclose(out.weights.sum(1), torch.ones(3))


# ---------------------------------------------------------------- noise


@pytest.mark.parametrize("noise", ["gumbel", "dirichlet"])
def test_same_seed_same_output_and_batch_invariance(noise):
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(8, 1023, generator=g)
    table = torch.randn(1023, 16, generator=g)
    seeds = torch.arange(8) * 17
    a = softdec.soft_mixture(logits, table, top_k=10, noise=noise, seed=seeds, offset=3)
    b = softdec.soft_mixture(logits, table, top_k=10, noise=noise, seed=seeds, offset=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b) if x is not None)
    c = softdec.soft_mixture(logits, table, top_k=10, noise=noise, seed=seeds, offset=4)
    assert not torch.equal(a.weights, c.weights)
    perm = torch.tensor([3, 7, 0, 1, 6, 2, 5, 4])
    p = softdec.soft_mixture(logits[perm], table, top_k=10, noise=noise, seed=seeds[perm], offset=3)
    assert torch.equal(p.weights, a.weights[perm]) and torch.equal(p.ids, a.ids[perm])
    one = softdec.soft_mixture(logits[5:6], table, top_k=10, noise=noise, seed=seeds[5:6], offset=3)
    assert torch.equal(one.weights[0], a.weights[5]) and torch.equal(one.embeds[0], a.embeds[5])


def test_gumbel_noise_is_tied_to_token_id():
    # G of token id is philox_uniform element `id`: the noisy logit minus log w
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(2, 300, generator=g)
    out = softdec.soft_mixture(logits, torch.zeros(300, 4), top_k=8, noise="gumbel", seed=11,
                               offset=torch.tensor([0, 5]), noise_scale=0.7)
    base = softdec.soft_mixture(logits, torch.zeros(300, 4), top_k=8)
    for b in range(2):
        # int seed 11: row b's key is row_seed(11, b)
        u = softdec.philox_uniform((1, 300), torch.tensor([ref.row_seed(11, b)]), torch.tensor([[0, 5][b]]))[0]
        G = -torch.log(-torch.log(u.double()))
        w = dict(zip(base.ids[b].tolist(), base.weights[b].double().tolist()))
        want = torch.tensor([math.log(w[i]) + 0.7 * float(G[i]) for i in out.ids[b].tolist()])
        torch.testing.assert_close(out.noisy_logits[b].double(), want.double(), atol=1e-5, rtol=1e-5)


def test_gumbel_top_token_follows_the_filtered_distribution():
    # argmax(log w + G) is an exact draw from w (Gumbel-max), whatever tau is.
    N, V = 100_000, 6
    logits = torch.tensor([[1.0, 0.2, -0.5, 0.7, -2.0, 0.0]]).expand(N, V)
    out = softdec.soft_mixture(logits, torch.zeros(V, 1), top_k=4, temperature=0.8, tau=0.3,
                               noise="gumbel", seed=torch.arange(N), offset=1)
    p = torch.softmax(logits[0].double() / 0.8, 0)
    keep = torch.topk(p, 4).indices
    q = torch.zeros(V, dtype=torch.float64)
    q[keep] = p[keep] / p[keep].sum()
    counts = torch.bincount(out.ids[:, 0], minlength=V).double()
    assert counts[q == 0].sum() == 0  # filtered tokens never win
    exp = q[q > 0] / q[q > 0].sum() * counts.sum()
    chi = stats.chisquare(counts[q > 0].numpy(), exp.numpy())
    assert chi.pvalue > 1e-3, chi


def test_gumbel_softmax_weights_distribution():
    # The mean Gumbel-softmax weight of each token matches a Monte Carlo
    # estimate from torch's own Gumbel sampler (independent randomness).
    N, V, tau = 100_000, 5, 0.7
    logits = torch.tensor([[0.3, 1.2, -0.4, 0.8, 0.0]]).expand(N, V)
    out = softdec.soft_mixture(logits, torch.zeros(V, 1), top_k=5, tau=tau, noise="gumbel",
                               seed=torch.arange(N) + 12345)
    w = torch.zeros(N, V, dtype=torch.float64).scatter_(1, out.ids, out.weights.double())
    gen = torch.Generator().manual_seed(0)
    G = -torch.log(-torch.log(torch.rand(N, V, generator=gen, dtype=torch.float64)))
    mc = torch.softmax((torch.log_softmax(logits[0].double(), 0) + G) / tau, 1)
    diff = w.mean(0) - mc.mean(0)
    se = torch.sqrt(w.var(0) / N + mc.var(0) / N)
    assert (diff.abs() < 5 * se).all(), (diff, se)


def test_dirichlet_weights_have_the_right_mean():
    N, V, alpha = 100_000, 5, 4.0
    logits = torch.tensor([[0.5, 1.5, -0.3, 0.9, 0.1]]).expand(N, V)
    out = softdec.soft_mixture(logits, torch.zeros(V, 1), top_k=5, noise="dirichlet",
                               dirichlet_alpha=alpha, seed=torch.arange(N))
    w = torch.zeros(N, V, dtype=torch.float64).scatter_(1, out.ids, out.weights.double())
    p = torch.softmax(logits[0].double(), 0)
    se = torch.sqrt(p * (1 - p) / (alpha + 1) / N)
    assert ((w.mean(0) - p).abs() < 5 * se).all(), (w.mean(0), p)
    # the variance of Dir(alpha p) is p (1 - p) / (alpha + 1)
    torch.testing.assert_close(w.var(0), p * (1 - p) / (alpha + 1), rtol=0.05, atol=0)


def test_gamma_draws_match_the_gamma_distribution():
    for a in (0.3, 1.0, 4.0):
        g = ref.soft_gamma(torch.full((1, 50_000), a, dtype=torch.float64), 7, 0,
                           torch.arange(50_000)[None])[0]
        ks = stats.kstest(g.numpy(), stats.gamma(a).cdf)
        assert ks.pvalue > 1e-3, (a, ks)


# ---------------------------------------------------------------- autograd


def _grad_inputs(noise, V=40, B=3, D=6):
    g = torch.Generator().manual_seed(10)
    logits = (torch.randn(B, V, generator=g, dtype=torch.float64) * 2).requires_grad_()
    table = torch.randn(V, D, generator=g, dtype=torch.float64).requires_grad_()
    kw = dict(top_k=6, temperature=0.7, top_p=0.9, min_p=0.01, noise=noise, tau=0.6,
              seed=torch.arange(B), embed_scale=1.5)
    return logits, table, kw


@pytest.mark.parametrize("noise", [None, "gumbel"])
def test_gradcheck_float64(noise):
    logits, table, kw = _grad_inputs(noise)

    def f(lg, tb):
        o = softdec.soft_mixture(lg, tb, **kw)
        outs = (o.embeds, o.weights, o.entropy, o.max_prob)
        # padding slots hold -inf: compare the finite (kept) noisy logits
        y = o.noisy_logits
        return outs + ((torch.where(y.isfinite(), y, 0.0),) if noise else ())

    assert torch.autograd.gradcheck(f, (logits, table), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("noise", [None, "gumbel", "dirichlet"])
def test_gradients_match_reference_autograd(noise):
    logits, table, kw = _grad_inputs(noise, V=1023, B=4, D=16)
    o = softdec.soft_mixture(logits, table, **kw)
    r = ref.soft_mixture(logits, table, **kw)
    g = torch.Generator().manual_seed(11)
    ge, gw = torch.randn(o.embeds.shape, generator=g, dtype=torch.float64), torch.randn(o.weights.shape, generator=g, dtype=torch.float64)
    gh, gm = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)

    def loss(e, w, h, m, y):
        s = (e * ge).sum() + (w * gw).sum() + (h * gh).sum() + (m * gm).sum()
        return s + ((y * gw).nan_to_num(0.0, 0.0, 0.0).sum() if y is not None else 0)

    got = torch.autograd.grad(loss(o.embeds, o.weights, o.entropy, o.max_prob, o.noisy_logits), (logits, table))
    want = torch.autograd.grad(loss(r[0], r[2], r[3], r[4], r[6]), (logits, table))
    torch.testing.assert_close(got[0], want[0], atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(got[1], want[1], atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_low_precision(dtype):
    g = torch.Generator().manual_seed(12)
    logits = torch.randn(3, 1023, generator=g).to(dtype).requires_grad_()
    table = torch.randn(1023, 32, generator=g).to(dtype).requires_grad_()
    o = softdec.soft_mixture(logits, table, top_k=10, temperature=0.8, noise="gumbel", seed=1)
    (o.embeds.float().square().sum() + o.entropy.sum()).backward()
    l64, t64 = logits.detach().double().requires_grad_(), table.detach().double().requires_grad_()
    r = ref.soft_mixture(l64, t64, top_k=10, temperature=0.8, noise="gumbel", seed=1)
    (r[0].square().sum() + r[3].sum()).backward()
    atol, rtol = TOLS[dtype]
    assert logits.grad.dtype == dtype and table.grad.dtype == dtype
    torch.testing.assert_close(logits.grad.double(), l64.grad, atol=atol * 5, rtol=rtol * 5)
    torch.testing.assert_close(table.grad.double(), t64.grad, atol=atol * 5, rtol=rtol * 5)
    # the embedding gradient touches only the kept rows
    touched = torch.zeros(1023, dtype=torch.bool)
    touched[o.ids.flatten()] = True
    assert (table.grad[~touched] == 0).all()


# ---------------------------------------------------------------- op plumbing


def _native_args(B=3, V=50, D=8, k=5, noise=1):
    g = torch.Generator().manual_seed(13)
    return (torch.randn(B, V, generator=g), torch.randn(V, D, generator=g),
            torch.full((B,), 0.8, dtype=torch.float64), torch.full((B,), k),
            torch.full((B,), 0.9, dtype=torch.float64), torch.zeros(B, dtype=torch.float64),
            torch.arange(B), torch.zeros(B, dtype=torch.int64), k, noise, 0.5, 1.0, 1.0, 1.0,
            torch.full((B,), k), k, -math.inf, math.inf, 0.0, 0.0)


def test_opcheck():
    args = _native_args()
    torch.library.opcheck(torch.ops.softdec.soft_mixture, args)
    lg, tb = args[0].clone().requires_grad_(), args[1].clone().requires_grad_()
    torch.library.opcheck(torch.ops.softdec.soft_mixture, (lg, tb) + args[2:])


@pytest.mark.parametrize("noise", [0, 1])
def test_opcheck_backward_ops(noise):
    """The two backward kernels, called as the autograd formula calls them."""
    args = _native_args(noise=noise)
    out = torch.ops.softdec.soft_mixture(*args)
    embeds, ids, weights, entropy, max_prob, valid, noisy, lse, nkept = out
    logits, embedding, temperature = args[0], args[1], args[2]
    g = torch.Generator().manual_seed(21)
    ge = torch.randn(embeds.shape, generator=g)
    gw, gn = torch.randn(weights.shape, generator=g), torch.randn(weights.shape, generator=g)
    gh, gm = torch.randn(entropy.shape, generator=g), torch.randn(max_prob.shape, generator=g)
    noise_, tau, embed_scale = args[9], args[10], args[13]
    torch.library.opcheck(torch.ops.softdec.soft_mixture_backward,
                          (ge, gw, gh, gm, gn, logits, embedding, temperature, ids, weights, lse, entropy,
                           max_prob, valid, nkept, noise_, tau, embed_scale, 0.0))
    torch.library.opcheck(torch.ops.softdec.soft_mixture_embedding_backward,
                          (ge, embedding, ids, weights, nkept, embed_scale))


def test_torch_compile_fullgraph():
    g = torch.Generator().manual_seed(14)
    logits, table = torch.randn(4, 1023, generator=g), torch.randn(1023, 16, generator=g)

    def f(lg, tb):
        o = softdec.soft_mixture(lg, tb, top_k=10, temperature=0.7, top_p=0.9, noise="gumbel",
                                 seed=3, offset=1)
        return o.embeds, o.ids, o.weights, o.entropy

    cf = torch.compile(f, fullgraph=True)
    for x, y in zip(cf(logits, table), f(logits, table)):
        assert torch.equal(x, y)


def test_bad_inputs():
    lg, tb = torch.randn(2, 10), torch.randn(10, 4)
    sm = softdec.soft_mixture
    with pytest.raises(ValueError, match=r"embedding must have as many rows as logits has columns \(10\), got 9"):
        sm(lg, torch.randn(9, 4))
    with pytest.raises(ValueError, match=r"logits must be a 2-D tensor \(batch, vocab\), got shape \(10,\)"):
        sm(lg[0], tb)
    with pytest.raises(ValueError, match=r"embedding must be a 2-D tensor \(vocab, dim\), got shape \(10, 4, 1\)"):
        sm(lg, tb[..., None])
    with pytest.raises(ValueError, match=r"top_k must be in \[1, 256\], got 0"):
        sm(lg, tb, top_k=0)
    with pytest.raises(ValueError, match=r"top_k must be in \[1, 256\], got 300"):
        sm(lg, tb, top_k=300)
    with pytest.raises(ValueError, match=r"top_k must be in \[1, 256\], got 0 at row 1"):
        sm(lg, tb, top_k=torch.tensor([3, 0]))
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 0.0"):
        sm(lg, tb, top_p=0.0)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 1.5"):
        sm(lg, tb, top_p=1.5)
    with pytest.raises(ValueError, match=r"min_p must be in \[0, 1\], got -0.1"):
        sm(lg, tb, min_p=-0.1)
    with pytest.raises(ValueError, match=r"temperature must be >= 0, got -1.0"):
        sm(lg, tb, temperature=-1.0)
    with pytest.raises(ValueError, match=r"temperature must be >= 0, got -0.5 at row 0"):
        sm(lg, tb, temperature=torch.tensor([-0.5, 1.0]))
    with pytest.raises(ValueError, match=r"logits must have dtype in \(float32, bfloat16, float16, float64\), got int64"):
        sm(lg.long(), tb)
    with pytest.raises(ValueError, match=r"embedding must have dtype in .*got int32"):
        sm(lg, tb.int())
    with pytest.raises(ValueError, match=r"noise must be None, 'gumbel' or 'dirichlet', got 'normal'"):
        sm(lg, tb, noise="normal")
    with pytest.raises(ValueError, match=r"tau must be > 0, got 0.0"):
        sm(lg, tb, tau=0.0)
    with pytest.raises(ValueError, match=r"dirichlet_alpha must be > 0, got -1.0"):
        sm(lg, tb, dirichlet_alpha=-1.0)
    with pytest.raises(ValueError, match=r"seed must be an int or a tensor of shape \(2,\), got shape \(3,\)"):
        sm(lg, tb, noise="gumbel", seed=torch.arange(3))
    with pytest.raises(ValueError, match=r"logits must have at least one column \(vocab\), got shape \(2, 0\)"):
        sm(torch.zeros(2, 0), torch.zeros(0, 4))
    with pytest.raises(ValueError, match=r"temperature must be a scalar or a tensor of shape \(2,\), got shape \(3,\)"):
        sm(lg, tb, temperature=torch.ones(3))
    with pytest.raises(ValueError, match=r"embedding must be on the same device as logits \(cpu\), got meta"):
        sm(lg, tb.to("meta"))
    with pytest.raises(ValueError, match=r"temperature must be on the same device as the input \(cpu\), got meta"):
        sm(lg, tb, temperature=torch.ones(2, device="meta"))
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"embedding must be on the same device as logits \(cpu\), got cuda:0"):
            sm(lg, tb.cuda())


def test_native_op_rejects_bad_input():
    args = list(_native_args())
    op = torch.ops.softdec.soft_mixture
    with pytest.raises(ValueError, match=r"embedding must have as many rows as logits has columns \(50\), got 49"):
        op(*([args[0], args[1][:49]] + args[2:]))
    with pytest.raises(ValueError, match=r"temperature must be float64, got float32"):
        op(*(args[:2] + [args[2].float()] + args[3:]))
    with pytest.raises(ValueError, match=r"top_k must have shape \(3,\) \(one value per row of logits\), got \(2,\)"):
        op(*(args[:3] + [args[3][:2]] + args[4:]))
    with pytest.raises(ValueError, match=r"k \(the output width, max top_k\) must be in \[1, 256\], got 0"):
        op(*(args[:8] + [0] + args[9:]))
    with pytest.raises(ValueError, match=r"top_k must be in \[1, 5\], got 6 at row 0"):
        op(*(args[:3] + [torch.full((3,), 6)] + args[4:]))
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 0 at row 0"):
        op(*(args[:4] + [torch.zeros(3, dtype=torch.float64)] + args[5:]))
    with pytest.raises(ValueError, match=r"noise must be 0 \(none\), 1 \(gumbel\) or 2 \(dirichlet\), got 3"):
        op(*(args[:9] + [3] + args[10:]))
    with pytest.raises(ValueError, match=r"logits must be float32, bfloat16, float16 or float64, got int64"):
        op(*([args[0].long()] + args[1:]))
    with pytest.raises(ValueError, match=r"logits must be contiguous in its last dimension, got stride 3"):
        op(*([torch.randn(3, 150)[:, ::3]] + args[1:]))


# ---------------------------------------------------------------- CUDA (same semantics, same stream)


@pytest.mark.cuda
@pytest.mark.parametrize("ldt,edt", DTYPES)
@pytest.mark.parametrize("noise", [None, "gumbel", "dirichlet"])
@pytest.mark.parametrize("B,V", [(1, 7), (3, 1023), (64, 32000), (3, 151936)])
def test_cuda_matches_reference(ldt, edt, noise, B, V):
    g = torch.Generator().manual_seed(B + V)
    logits = (torch.randn(B, V, generator=g) * 3).to(ldt)
    logits[0, : min(V, 5)] = logits[0, 0]  # ties
    if B > 1:
        logits[1] = -math.inf
    table = torch.randn(V, 72, generator=g).to(edt)
    kw = dict(top_k=min(30, V), temperature=0.7, top_p=0.95, min_p=0.001, noise=noise, tau=0.5,
              dirichlet_alpha=4.0, seed=torch.arange(B) + 1, offset=2)
    out = softdec.soft_mixture(logits.cuda(), table.cuda(),
                               **{a: (v.cuda() if isinstance(v, torch.Tensor) else v) for a, v in kw.items()})
    out = type(out)(*[x.cpu() if x is not None else None for x in out])
    _check(out, _ref(logits, table, **kw), edt)
    cpu = softdec.soft_mixture(logits, table, **kw)
    assert torch.equal(out.ids, cpu.ids) and torch.equal(out.valid, cpu.valid)


@pytest.mark.cuda
@pytest.mark.parametrize("noise", [None, "gumbel"])
def test_cuda_gradients_match_cpu(noise):
    logits, table, kw = _grad_inputs(noise, V=1023, B=4, D=16)
    o = softdec.soft_mixture(logits, table, **kw)
    lc, tc = logits.detach().cuda().requires_grad_(), table.detach().cuda().requires_grad_()
    oc = softdec.soft_mixture(lc, tc, **{a: (v.cuda() if isinstance(v, torch.Tensor) else v) for a, v in kw.items()})
    loss = lambda x: (x.embeds.square().sum() + x.entropy.sum() + x.max_prob.sum()  # noqa: E731
                      + (x.weights * torch.arange(x.weights.shape[1], device=x.weights.device)).sum())
    got = torch.autograd.grad(loss(oc), (lc, tc))
    want = torch.autograd.grad(loss(o), (logits, table))
    torch.testing.assert_close(got[0].cpu(), want[0], atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(got[1].cpu(), want[1], atol=1e-10, rtol=1e-8)


@pytest.mark.cuda
def test_cuda_opcheck_and_compile():
    args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in _native_args())
    torch.library.opcheck(torch.ops.softdec.soft_mixture, args)
    with pytest.raises(ValueError, match=r"tau must be > 0 and finite, got inf"):
        torch.ops.softdec.soft_mixture(*(args[:10] + (math.inf,) + args[11:]))
    logits, table = args[0], args[1]
    f = lambda lg, tb: softdec.soft_mixture(lg, tb, top_k=5, noise="gumbel", seed=1).embeds  # noqa: E731
    assert torch.equal(torch.compile(f, fullgraph=True)(logits, table), f(logits, table))


@pytest.mark.cuda
def test_cuda_more_rows_than_grid_y():
    # scan / gather put rows in grid y (at most 65535 a launch): 65537 rows take two launches
    B, V, D = 65537, 40, 8
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(B, V, generator=g) * 2
    table = torch.randn(V, D, generator=g)
    kw = dict(top_k=4, temperature=0.8, top_p=0.9, seed=torch.arange(B), noise="gumbel", tau=0.7)
    want = softdec.soft_mixture(logits, table, **kw)
    got = softdec.soft_mixture(logits.cuda(), table.cuda(),
                               **{a: (v.cuda() if isinstance(v, torch.Tensor) else v) for a, v in kw.items()})
    assert torch.equal(got.ids.cpu(), want.ids) and torch.equal(got.valid.cpu(), want.valid)
    torch.testing.assert_close(got.weights.cpu(), want.weights, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.embeds.cpu(), want.embeds, atol=1e-5, rtol=1e-4)
