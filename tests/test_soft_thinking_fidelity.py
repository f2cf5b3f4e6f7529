"""Soft Thinking as the paper runs it (issue 15, items 1 and 2).

* ``filter_top_k``: the candidate top-k (Soft Thinking's ``top_k``) separate from
  the output width (its ``max_topk``, our ``top_k``), checked against a float64
  re-implementation of the reference pipeline written from its description
  (shared/PAPERS.md): logits / T -> softmax (entropy on the full vocabulary) ->
  top-k(30) renorm -> top-p(0.95) renorm -> min-p(0.001) renorm -> top
  max_topk(10) -> renorm. Ties: the lower vocabulary id first (softdec's rule).
* T = 0: weights one-hot argmax, entropy / max_prob those of T = 1.
"""

from __future__ import annotations

import pytest
import torch

import softdec
from softdec import reference as ref

V_QWEN = 151936
ST = dict(top_k=10, filter_top_k=30, top_p=0.95, min_p=0.001, temperature=0.6)


def soft_thinking_pipeline(logits, table, *, max_topk=10, top_k=30, top_p=0.95, min_p=0.001,
                           temperature=0.6):
    """The Soft Thinking sampler step, float64, one row at a time, written from
    the paper's description with a full stable sort (ties: lower id first)."""
    B, V = logits.shape
    D = table.shape[1]
    ids = torch.zeros(B, max_topk, dtype=torch.int64)
    w = torch.zeros(B, max_topk, dtype=torch.float64)
    ent = torch.zeros(B, dtype=torch.float64)
    mp = torch.zeros(B, dtype=torch.float64)
    emb = torch.zeros(B, D, dtype=torch.float64)
    for b in range(B):
        x = logits[b].double() / temperature
        p = torch.softmax(x, 0)
        lp = torch.log_softmax(x, 0)
        ent[b] = -(torch.where(p > 0, p * lp, torch.zeros_like(p))).sum()
        mp[b] = p.max()
        # descending by probability, ties by lower id: sort ids ascending first, then a stable sort
        order = torch.sort(x, descending=True, stable=True).indices
        sp, sid = p[order][:top_k], order[:top_k]
        sp = sp / sp.sum()                                   # top-k renorm
        excl = torch.cumsum(sp, 0) - sp
        keep = excl < top_p                                  # smallest prefix reaching top_p
        sp, sid = sp[keep], sid[keep]
        sp = sp / sp.sum()                                   # top-p renorm
        keep = sp >= min_p * sp.max()
        sp, sid = sp[keep], sid[keep]
        sp = sp / sp.sum()                                   # min-p renorm
        sp, sid = sp[:max_topk], sid[:max_topk]
        sp = sp / sp.sum()                                   # max_topk renorm
        n = sp.numel()
        ids[b, :n], w[b, :n] = sid, sp
        ids[b, n:] = sid[0]
        emb[b] = (sp[:, None] * table[sid].double()).sum(0)
    return ids, w, ent, mp, emb


def _compare(out, want):
    ids, w, ent, mp, emb = want
    assert torch.equal(out.ids, ids)
    torch.testing.assert_close(out.weights.double(), w, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(out.entropy.double(), ent, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out.max_prob.double(), mp, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.embeds.double(), emb, atol=1e-5, rtol=1e-5)


def _logits(kind, B, V, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, V, generator=g)
    if kind == "peaked":        # a few dominant tokens (a confident model)
        x = x * 1.5
        x[:, torch.randint(V, (5,), generator=g)] += torch.tensor([12.0, 11.0, 10.5, 9.0, 8.0])
    elif kind == "flat":        # thousands of tokens in the top-p set
        x = x * 0.3
    elif kind == "ties":        # repeated values, also across the top-30 / top-10 boundaries
        x = torch.round(x * 2) / 2
        x[:, 100:140] = 4.0
        x[:, 7] = 4.0
    return x


@pytest.mark.parametrize("kind", ["random", "peaked", "ties"])
def test_matches_soft_thinking_pipeline_qwen_vocab(kind):
    logits = _logits(kind, 3, V_QWEN, 1)
    table = torch.randn(V_QWEN, 16, generator=torch.Generator().manual_seed(2))
    out = softdec.soft_mixture(logits, table, **ST)
    _compare(out, soft_thinking_pipeline(logits, table))
    # and softdec's own float64 reference agrees
    r = ref.soft_mixture(logits.double(), table.double(), **ST)
    assert torch.equal(out.ids, r[1])
    torch.testing.assert_close(out.weights.double(), r[2], atol=2e-6, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["random", "peaked", "ties", "flat"])
@pytest.mark.parametrize("T", [0.6, 1.0])
def test_matches_soft_thinking_pipeline_more_rows(kind, T):
    logits = _logits(kind, 16, V_QWEN, 3)
    table = torch.randn(V_QWEN, 8, generator=torch.Generator().manual_seed(4))
    out = softdec.soft_mixture(logits, table, **{**ST, "temperature": T})
    _compare(out, soft_thinking_pipeline(logits, table, temperature=T))


def test_filter_width_changes_the_kept_set():
    """With the paper's settings the filter width matters: top-p on the top-30
    mass keeps a different set from top-p on the top-10 mass."""
    logits = _logits("random", 8, 5000, 5)
    table = torch.randn(5000, 4)
    a = softdec.soft_mixture(logits, table, **ST)
    b = softdec.soft_mixture(logits, table, **{**ST, "filter_top_k": None})
    assert not torch.equal(a.weights, b.weights)
    _compare(a, soft_thinking_pipeline(logits, table))


@pytest.mark.parametrize("top_p, min_p", [(0.95, 0.0), (0.5, 0.0), (1.0, 0.001), (0.9, 0.01), (1.0, 0.0)])
@pytest.mark.parametrize("kind", ["flat", "random", "peaked"])
def test_whole_vocabulary_filter(top_p, min_p, kind):
    """filter_top_k = 0: the whole vocabulary feeds top-p (thousands of tokens
    for flat logits), no cap."""
    V = 32000
    logits = _logits(kind, 4, V, 6)
    table = torch.randn(V, 8, generator=torch.Generator().manual_seed(7))
    out = softdec.soft_mixture(logits, table, top_k=10, filter_top_k=0, top_p=top_p, min_p=min_p,
                               temperature=0.6)
    _compare(out, soft_thinking_pipeline(logits, table, top_k=V, top_p=top_p, min_p=min_p))
    r = ref.soft_mixture(logits.double(), table.double(), top_k=10, filter_top_k=0, top_p=top_p,
                         min_p=min_p, temperature=0.6)
    assert torch.equal(out.ids, r[1])
    # a filter at least as wide as the vocabulary is the whole vocabulary
    big = softdec.soft_mixture(logits[:, :200], table[:200], top_k=10, filter_top_k=500, top_p=top_p,
                               min_p=min_p, temperature=0.6)
    whole = softdec.soft_mixture(logits[:, :200], table[:200], top_k=10, filter_top_k=0, top_p=top_p,
                                 min_p=min_p, temperature=0.6)
    assert torch.equal(big.ids, whole.ids) and torch.equal(big.weights, whole.weights)


def test_none_is_top_k_bit_for_bit():
    logits = _logits("random", 5, 3000, 8)
    table = torch.randn(3000, 8)
    for kw in (dict(top_p=0.9), dict(min_p=0.05), dict(top_p=0.95, min_p=0.001, temperature=0.6), {}):
        a = softdec.soft_mixture(logits, table, top_k=10, **kw)
        b = softdec.soft_mixture(logits, table, top_k=10, filter_top_k=10, **kw)
        for x, y in zip(a[:6], b[:6]):
            assert torch.equal(x, y)
        r = ref.soft_mixture(logits.double(), table.double(), top_k=10, **kw)
        assert torch.equal(a.ids, r[1])


def test_per_row_filter_top_k():
    V = 4000
    logits = _logits("random", 4, V, 9)
    table = torch.randn(V, 8)
    fk = torch.tensor([10, 30, 0, 64])
    out = softdec.soft_mixture(logits, table, top_k=10, filter_top_k=fk, top_p=0.95, min_p=0.001,
                               temperature=0.6)
    for b in range(4):
        want = soft_thinking_pipeline(logits[b:b + 1], table, top_k=int(fk[b]) or V)
        row = softdec.SoftTokens(*(t[b:b + 1] if t is not None else None for t in out))
        _compare(row, want)


@pytest.mark.parametrize("noise", ["gumbel", "dirichlet"])
def test_noise_on_top_of_the_filter_matches_reference(noise):
    logits = _logits("random", 3, 2000, 10)
    table = torch.randn(2000, 8)
    kw = dict(ST, noise=noise, tau=0.5, seed=3)
    out = softdec.soft_mixture(logits, table, **kw)
    r = ref.soft_mixture(logits.double(), table.double(), **kw)
    assert torch.equal(out.ids, r[1])
    torch.testing.assert_close(out.weights.double(), r[2], atol=2e-6, rtol=1e-5)


def test_filter_top_k_bad_input():
    x, t = torch.randn(2, 500), torch.randn(500, 4)
    with pytest.raises(ValueError, match=r"top_k \(the output width, 10\) must be <= filter_top_k \(5\)"):
        softdec.soft_mixture(x, t, top_k=10, filter_top_k=5)
    with pytest.raises(ValueError, match=r"filter_top_k must be >= 0, got -1"):
        softdec.soft_mixture(x, t, top_k=10, filter_top_k=-1)
    with pytest.raises(ValueError, match=r"filter_top_k must be 0 \(the whole vocabulary\), >= vocab, or in "
                                         r"\[top_k, 256\], got 300"):
        softdec.soft_mixture(x, t, top_k=10, filter_top_k=300)
    with pytest.raises(ValueError, match=r"filter_top_k must be an int"):
        softdec.soft_mixture(x, t, top_k=10, filter_top_k=2.5)
    with pytest.raises(ValueError, match=r"top_k \(the output width, 10\) must be <= filter_top_k \(4\) when "
                                         r"filter_top_k > 0, at row 1"):
        softdec.soft_mixture(x, t, top_k=10, filter_top_k=torch.tensor([0, 4]))


def test_opcheck_and_compile_with_filter():
    g = torch.Generator().manual_seed(11)
    B, V, k = 3, 300, 5
    args = (torch.randn(B, V, generator=g), torch.randn(V, 8, generator=g),
            torch.full((B,), 0.6, dtype=torch.float64), torch.full((B,), k),
            torch.full((B,), 0.95, dtype=torch.float64), torch.full((B,), 0.001, dtype=torch.float64),
            torch.arange(B), torch.zeros(B, dtype=torch.int64), k, 1, 0.5, 1.0, 1.0, 1.0,
            torch.tensor([30, 0, 5]), 30, -1.5, 3.0, 1e-6, 0.0)
    torch.library.opcheck(torch.ops.softdec.soft_mixture, args)
    lg, tb = args[0].clone().requires_grad_(), args[1].clone().requires_grad_()
    torch.library.opcheck(torch.ops.softdec.soft_mixture, (lg, tb) + args[2:])

    def f(x, t):
        o = softdec.soft_mixture(x, t, **ST)
        return o.embeds, o.weights, o.entropy

    x, t = args[0], args[1]
    got = torch.compile(f, fullgraph=True)(x, t)
    want = f(x, t)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_gradcheck_with_filter():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(2, 60, generator=g, dtype=torch.float64).requires_grad_()
    t = torch.randn(60, 3, generator=g, dtype=torch.float64).requires_grad_()

    def f(x, t):
        o = softdec.soft_mixture(x, t, top_k=4, filter_top_k=12, top_p=0.9, temperature=0.7)
        return o.embeds, o.weights, o.entropy, o.max_prob

    assert torch.autograd.gradcheck(f, (x, t))


# ---------------------------------------------------------------- T = 0 statistics


def test_temperature_zero_reports_t1_statistics():
    logits = _logits("random", 4, 5000, 13)
    table = torch.randn(5000, 8)
    out = softdec.soft_mixture(logits, table, temperature=0.0, top_k=10, filter_top_k=30)
    one = softdec.soft_mixture(logits, table, temperature=1.0, top_k=10)
    torch.testing.assert_close(out.entropy, one.entropy)
    torch.testing.assert_close(out.max_prob, one.max_prob)
    assert torch.equal(out.ids[:, 0], logits.argmax(1))
    assert torch.equal(out.weights[:, 0], torch.ones(4)) and (out.weights[:, 1:] == 0).all()
    r = ref.soft_mixture(logits.double(), table.double(), temperature=0.0, top_k=10, filter_top_k=30)
    torch.testing.assert_close(out.entropy.double(), r[3], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out.max_prob.double(), r[4], atol=1e-6, rtol=1e-5)
    # per-row temperatures: the T = 0 row alone reports T = 1 statistics
    mixed = softdec.soft_mixture(logits, table, temperature=torch.tensor([0.0, 0.5, 0.0, 2.0]), top_k=10)
    torch.testing.assert_close(mixed.entropy[[0, 2]], one.entropy[[0, 2]])
    half = softdec.soft_mixture(logits[1:2], table, temperature=0.5, top_k=10)
    torch.testing.assert_close(mixed.entropy[1:2], half.entropy)


def test_temperature_zero_statistics_gradient():
    """At T = 0 the entropy / max prob are differentiable functions of the
    logits (those of T = 1); the one-hot weights carry no gradient."""
    g = torch.Generator().manual_seed(14)
    x = torch.randn(3, 40, generator=g, dtype=torch.float64).requires_grad_()
    t = torch.randn(40, 3, generator=g, dtype=torch.float64)

    def f(x):
        o = softdec.soft_mixture(x, t, top_k=4, temperature=0.0)
        return o.entropy, o.max_prob, o.weights

    assert torch.autograd.gradcheck(f, (x,))
    o = softdec.soft_mixture(x, t, top_k=4, temperature=0.0)
    o.entropy.sum().backward()
    y = x.detach().clone().requires_grad_()
    p = torch.softmax(y, 1)
    (-(p * p.log()).sum()).backward()
    torch.testing.assert_close(x.grad, y.grad)


# ---------------------------------------------------------------- strategies at T = 0 (scripted logits)

import softdec.strategies as S  # noqa: E402
from softdec.strategies.base import StepContext  # noqa: E402

_VS, _END = 64, 63


def _script(steps=6, seed=20):
    """Per-step logits for 3 rows: row 0 confident (T=1 entropy ~1e-4), row 1
    uncertain (flat), row 2 confident for 2 steps, then uncertain."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in range(steps):
        x = torch.randn(3, _VS, generator=g) * 0.1
        x[0, 5] += 14.0
        x[2, 9] += 14.0 if s < 2 else 0.5
        x[:, _END] = -10.0
        out.append(x)
    return out


def _run(strategy, script):
    table = torch.randn(_VS, 8, generator=torch.Generator().manual_seed(1))
    state = strategy.init_state(3, torch.device("cpu"))
    res = []
    for step, x in enumerate(script):
        ctx = StepContext(table, 1.0, torch.arange(3), step)
        res.append(strategy.step(x, state, ctx))
    return res


def test_cold_stop_at_temperature_zero_uses_t1_entropy():
    script = _script()
    mk = lambda T: S.SoftThinking(top_k=4, filter_top_k=8, temperature=T, cold_stop_entropy=0.01,  # noqa: E731
                                  cold_stop_steps=2, think_end_token_id=_END,
                                  after=S.Discrete(temperature=0.0))
    cold, one, tiny = _run(mk(0.0), script), _run(mk(1.0), script), _run(mk(1e-4), script)
    ents = torch.stack([r.entropy for r in cold])
    torch.testing.assert_close(ents, torch.stack([r.entropy for r in one]))
    # Cold Stop fires only on the rows whose T = 1 entropy stays low: row 0 (and row 2, whose
    # two confident steps count) emit think-end at step 1; row 1 keeps thinking
    modes = torch.stack([r.mode for r in cold])
    assert modes[0].tolist() == [S.MODE_SOFT] * 3
    assert modes[1].tolist() == [S.MODE_THINK_END, S.MODE_SOFT, S.MODE_THINK_END]
    assert torch.equal(modes, torch.stack([r.mode for r in one]))
    assert (torch.stack([r.ids for r in cold])[1, [0, 2]] == _END).all()
    assert not (torch.stack([r.ids for r in cold])[:, 1] == _END).any()
    # the tokens themselves are the T -> 0+ ones (one-hot argmax mixtures) while thinking
    for a, b in zip(cold[:1], tiny[:1]):
        assert torch.equal(a.ids, b.ids)
        torch.testing.assert_close(a.embeds, b.embeds)


def test_discrete_and_soft_agree_on_t0_statistics():
    script = _script(steps=2)
    soft = _run(S.SoftThinking(top_k=4, temperature=0.0), script)
    disc = _run(S.Discrete(temperature=0.0), script)
    for a, b in zip(soft, disc):
        torch.testing.assert_close(a.entropy, b.entropy, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.max_prob, b.max_prob, atol=1e-6, rtol=1e-5)
        assert torch.equal(a.ids, b.ids)


@pytest.mark.parametrize("variant", ["max_prob", "lead"])
def test_router_at_temperature_zero_routes_on_t1_statistics(variant):
    script = _script()
    mk = lambda T: S.Router(threshold=0.5, variant=variant, low_entropy=0.2, high_entropy=1.0,  # noqa: E731
                            min_steps=1, top_k=4, temperature=T, discrete=S.Discrete(temperature=0.0))
    cold, one = _run(mk(0.0), script), _run(mk(1.0), script)
    mc, mo = torch.stack([r.mode for r in cold]), torch.stack([r.mode for r in one])
    assert torch.equal(mc, mo)
    # the decisions are not constant: some rows are soft and some discrete
    assert (mc == mc.flatten()[0]).logical_not().any()


# ---------------------------------------------------------------- SofT-GRPO Gumbel options (item 4)

import math  # noqa: E402

from scipy import stats  # noqa: E402


def _gumbel_samples(n=100_000, V=8, clamp=(-1.5, 3.0), eps=0.0):
    """G of n independent rows (per-row seeds), recovered from noisy_logits:
    G = y - log(w + eps) with noise_scale = 1."""
    g = torch.Generator().manual_seed(30)
    base = torch.randn(1, V, generator=g, dtype=torch.float64)
    x = base.expand(n, V).contiguous()
    t = torch.zeros(V, 1, dtype=torch.float64)
    kw = dict(top_k=V, temperature=1.0)
    w = softdec.soft_mixture(x[:1], t, **kw).weights          # the pre-noise weights (sorted)
    ids = softdec.soft_mixture(x[:1], t, **kw).ids
    o = softdec.soft_mixture(x, t, noise="gumbel", seed=torch.arange(n), gumbel_clamp=clamp, gumbel_eps=eps, **kw)
    # noisy_logits are sorted by the noisy weight: map back to the pre-noise weight of each id
    wpre = torch.zeros(V, dtype=torch.float64)
    wpre[ids[0]] = w[0]
    return (o.noisy_logits - torch.log(wpre[o.ids] + eps)).flatten()


def test_gumbel_clamp_distribution():
    lo, hi = -1.5, 3.0
    G = _gumbel_samples()
    n = G.numel()
    assert G.min() >= lo - 1e-9 and G.max() <= hi + 1e-9
    at_lo, at_hi = (G - lo).abs() < 1e-9, (G - hi).abs() < 1e-9
    # clamping piles the tails' mass exactly on the bounds
    for frac, p in ((at_lo, math.exp(-math.exp(-lo))), (at_hi, 1.0 - math.exp(-math.exp(-hi)))):
        k = int(frac.sum())
        assert stats.binomtest(k, n, p).pvalue > 1e-4, (k, n * p)
    # inside: the Gumbel law truncated to (lo, hi)
    inner = G[~at_lo & ~at_hi].numpy()
    F = lambda v: math.exp(-math.exp(-v))  # noqa: E731
    Flo, Fhi = F(lo), F(hi)
    cdf = lambda v: (stats.gumbel_r.cdf(v) - Flo) / (Fhi - Flo)  # noqa: E731
    assert stats.kstest(inner, cdf).pvalue > 1e-4


def test_gumbel_eps_form():
    G = _gumbel_samples(n=2000, clamp=None, eps=1e-3)
    # unclamped G recovered through log(w + eps): a Gumbel sample
    assert stats.kstest(G.numpy(), stats.gumbel_r.cdf).pvalue > 1e-4


@pytest.mark.parametrize("clamp, eps", [((-1.5, 3.0), 0.0), (None, 1e-2), ((-1.5, 3.0), 1e-6)])
def test_gumbel_options_match_reference_and_gradcheck(clamp, eps):
    g = torch.Generator().manual_seed(31)
    x = torch.randn(3, 300, generator=g)
    t = torch.randn(300, 8, generator=g)
    kw = dict(ST, noise="gumbel", tau=0.5, seed=4, gumbel_clamp=clamp, gumbel_eps=eps)
    out = softdec.soft_mixture(x, t, **kw)
    r = ref.soft_mixture(x.double(), t.double(), **kw)
    assert torch.equal(out.ids, r[1])
    torch.testing.assert_close(out.weights.double(), r[2], atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(out.noisy_logits.double(), r[6], atol=1e-5, rtol=1e-5)
    x64 = torch.randn(2, 40, generator=g, dtype=torch.float64).requires_grad_()
    t64 = torch.randn(40, 3, generator=g, dtype=torch.float64)

    def f(x):
        o = softdec.soft_mixture(x, t64, top_k=5, filter_top_k=10, temperature=0.8, noise="gumbel", tau=0.5,
                                 seed=2, gumbel_clamp=clamp, gumbel_eps=eps)
        return o.embeds, o.weights, o.noisy_logits.clamp_min(-1e30)

    assert torch.autograd.gradcheck(f, (x64,))


def test_gumbel_options_bad_input():
    x, t = torch.randn(2, 50), torch.randn(50, 4)
    msg = r"gumbel_clamp must be None or a pair \(lo, hi\) of numbers with lo < hi, got "
    with pytest.raises(ValueError, match=msg + r"\(3.0, -1.5\)"):
        softdec.soft_mixture(x, t, noise="gumbel", seed=0, gumbel_clamp=(3.0, -1.5))
    with pytest.raises(ValueError, match=msg + r"\(1.0, 1.0\)"):
        softdec.soft_mixture(x, t, noise="gumbel", seed=0, gumbel_clamp=(1, 1))
    with pytest.raises(ValueError, match=msg + r"\(nan, 3.0\)"):
        softdec.soft_mixture(x, t, noise="gumbel", seed=0, gumbel_clamp=(float("nan"), 3.0))
    with pytest.raises(ValueError, match=msg + r"\(1.0,\)"):
        softdec.soft_mixture(x, t, noise="gumbel", seed=0, gumbel_clamp=(1.0,))
    with pytest.raises(ValueError, match=r"gumbel_eps must be >= 0, got -0.1"):
        softdec.soft_mixture(x, t, noise="gumbel", seed=0, gumbel_eps=-0.1)
    # defaults: today's output bit for bit
    a = softdec.soft_mixture(x, t, noise="gumbel", seed=0)
    b = softdec.soft_mixture(x, t, noise="gumbel", seed=0, gumbel_clamp=(-math.inf, math.inf), gumbel_eps=0.0)
    assert torch.equal(a.weights, b.weights) and torch.equal(a.noisy_logits, b.noisy_logits)


# ---------------------------------------------------------------- Gaussian embedding noise (item 4)


def test_philox_normal_matches_reference_and_is_standard_normal():
    seeds, offs = torch.arange(4) * 7 + 1, torch.tensor([0, 3, 2**40, 5])
    e = softdec.philox_normal((4, 30_000), seeds, offs)
    r = ref.philox_normal(seeds, offs, 4, 30_000)
    # float64 Box-Muller rounded to float32 on both sides: equal up to libm's last bit
    torch.testing.assert_close(e, r, atol=1e-6, rtol=0)
    assert (e == r).float().mean() > 0.999
    x = e.double().flatten().numpy()  # 1.2e5 draws
    assert stats.kstest(x, "norm").pvalue > 1e-4
    assert abs(x.mean()) < 5 / math.sqrt(x.size)
    assert abs(x.var() - 1) < 5 * math.sqrt(2 / x.size)
    # rows are independent streams: no correlation between rows
    c = torch.corrcoef(e.double())
    assert (c - torch.eye(4, dtype=torch.float64)).abs().max() < 5 / math.sqrt(30_000)
    # a row's noise does not depend on the batch around it
    assert torch.equal(softdec.philox_normal((1, 30_000), seeds[2:3], offs[2:3])[0], e[2])
    # shapes: (n,) is one row
    assert softdec.philox_normal(5, seed=torch.tensor([3])[0].item()).shape == (5,)


@pytest.mark.parametrize("edt", [torch.float32, torch.bfloat16, torch.float64])
def test_embed_noise_is_std_times_philox_normal(edt):
    g = torch.Generator().manual_seed(40)
    B, V, D = 5, 700, 96
    x = torch.randn(B, V, generator=g)
    x[3] = float("nan")  # an invalid row gets no noise (embeds stay 0)
    t = torch.randn(V, D, generator=g).to(edt)
    seeds, off = torch.arange(B) + 11, 4
    kw = dict(ST, seed=seeds, offset=off)
    clean = softdec.soft_mixture(x, t, **kw)
    noisy = softdec.soft_mixture(x, t, embed_noise_std=0.3, **kw)
    eps = softdec.philox_normal((B, D), seeds, off)
    acc = torch.float64 if edt == torch.float64 else torch.float32
    want = (clean.embeds.to(acc) + torch.tensor(0.3, dtype=acc) * eps.to(acc)).to(edt)
    want[3] = 0
    # equal up to one rounding of the embedding dtype (the kernel may fuse the multiply-add)
    ulp = torch.finfo(edt).eps
    torch.testing.assert_close(noisy.embeds.double(), want.double(), atol=2 * ulp, rtol=2 * ulp)
    assert (noisy.embeds[3] == 0).all()
    for a, b in zip(clean[1:6], noisy[1:6]):  # ids, weights, stats untouched
        assert torch.equal(a, b)
    r = ref.soft_mixture(x.double() if edt == torch.float64 else x, t, embed_noise_std=0.3, **kw)
    torch.testing.assert_close(noisy.embeds.double(), r[0].double(), atol=2e-2 if edt == torch.bfloat16 else 1e-5,
                               rtol=1e-2 if edt == torch.bfloat16 else 1e-5)


def test_embed_noise_with_gumbel_and_int_seed():
    g = torch.Generator().manual_seed(41)
    x, t = torch.randn(3, 400, generator=g), torch.randn(400, 32, generator=g)
    a = softdec.soft_mixture(x, t, noise="gumbel", seed=9, offset=2, **ST)
    b = softdec.soft_mixture(x, t, noise="gumbel", seed=9, offset=2, embed_noise_std=0.5, **ST)
    # Gumbel draws (elements < V) and the embedding noise (blocks >= 2^63) never share bits
    assert torch.equal(a.weights, b.weights) and torch.equal(a.noisy_logits, b.noisy_logits)
    eps = softdec.philox_normal((3, 32), 9, 2)
    torch.testing.assert_close(b.embeds - a.embeds, 0.5 * eps, atol=1e-6, rtol=1e-6)
    # noise without a seed draws one from the generator (still reproducible through it)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    c1 = softdec.soft_mixture(x, t, embed_noise_std=0.5, generator=g1, **ST)
    c2 = softdec.soft_mixture(x, t, embed_noise_std=0.5, generator=g2, **ST)
    assert torch.equal(c1.embeds, c2.embeds) and not torch.equal(c1.embeds, softdec.soft_mixture(x, t, **ST).embeds)


def test_embed_noise_gradcheck_opcheck_compile_and_errors():
    g = torch.Generator().manual_seed(42)
    x = torch.randn(2, 50, generator=g, dtype=torch.float64).requires_grad_()
    t = torch.randn(50, 4, generator=g, dtype=torch.float64).requires_grad_()

    def f(x, t):
        return softdec.soft_mixture(x, t, top_k=5, filter_top_k=9, temperature=0.7, seed=1,
                                   embed_noise_std=0.2).embeds

    assert torch.autograd.gradcheck(f, (x, t))
    B, V = 3, 60
    args = (torch.randn(B, V, generator=g), torch.randn(V, 8, generator=g),
            torch.full((B,), 0.6, dtype=torch.float64), torch.full((B,), 4),
            torch.full((B,), 0.95, dtype=torch.float64), torch.zeros(B, dtype=torch.float64),
            torch.arange(B), torch.zeros(B, dtype=torch.int64), 4, 0, 1.0, 1.0, 1.0, 1.0,
            torch.full((B,), 8), 8, -math.inf, math.inf, 0.0, 0.25)
    torch.library.opcheck(torch.ops.softdec.soft_mixture, args)
    torch.library.opcheck(torch.ops.softdec.philox_normal, (torch.arange(3), torch.zeros(3, dtype=torch.int64), 7))
    xx, tt = args[0], args[1]
    fn = lambda a, b: softdec.soft_mixture(a, b, top_k=4, seed=3, embed_noise_std=0.25).embeds  # noqa: E731
    assert torch.equal(torch.compile(fn, fullgraph=True)(xx, tt), fn(xx, tt))
    with pytest.raises(ValueError, match=r"embed_noise_std must be >= 0, got -0.5"):
        softdec.soft_mixture(xx, tt, embed_noise_std=-0.5)
    with pytest.raises(ValueError, match=r"seed must be an int or a \(2,\) tensor"):
        softdec.philox_normal((2, 4), torch.arange(3))


def test_strategy_passes_the_noise_options():
    script = _script(steps=1)
    plain = _run(S.SoftThinking(top_k=4, filter_top_k=8, temperature=0.6, noise="gumbel", seed=0), script)
    opts = _run(S.SoftThinking(top_k=4, filter_top_k=8, temperature=0.6, noise="gumbel", gumbel_clamp=(-1.5, 3.0),
                               gumbel_eps=1e-6, embed_noise_std=0.1, seed=0), script)
    table = torch.randn(_VS, 8, generator=torch.Generator().manual_seed(1))
    want = softdec.soft_mixture(script[0], table, top_k=4, filter_top_k=8, temperature=0.6, noise="gumbel",
                                gumbel_clamp=(-1.5, 3.0), gumbel_eps=1e-6, embed_noise_std=0.1,
                                seed=torch.arange(3), offset=StepContext(table, 1.0, torch.arange(3), 0).offset(0))
    assert torch.equal(opts[0].embeds, want.embeds)
    assert not torch.equal(plain[0].embeds, opts[0].embeds)


# ---------------------------------------------------------------- CUDA (run when a GPU is present)


def _cu(kw):
    return {a: (v.cuda() if isinstance(v, torch.Tensor) else v) for a, v in kw.items()}


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["random", "peaked", "ties", "flat"])
@pytest.mark.parametrize("fk", [30, 0, torch.tensor([10, 30, 0])])
def test_cuda_filter_top_k_matches_cpu(kind, fk):
    logits = _logits(kind, 3, V_QWEN, 50)
    table = torch.randn(V_QWEN, 64, generator=torch.Generator().manual_seed(51)).to(torch.bfloat16)
    kw = dict(ST, filter_top_k=fk)
    c = softdec.soft_mixture(logits, table, **kw)
    g = softdec.soft_mixture(logits.cuda(), table.cuda(), **_cu(kw))
    assert torch.equal(g.ids.cpu(), c.ids)
    torch.testing.assert_close(g.weights.cpu(), c.weights, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(g.entropy.cpu(), c.entropy, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(g.embeds.cpu().float(), c.embeds.float(), atol=1e-2, rtol=1e-2)


@pytest.mark.cuda
def test_cuda_temperature_zero_statistics_and_gradient():
    x = torch.randn(3, 5000, generator=torch.Generator().manual_seed(52))
    t = torch.randn(5000, 16)
    c = softdec.soft_mixture(x, t, temperature=0.0, top_k=10)
    g = softdec.soft_mixture(x.cuda(), t.cuda(), temperature=0.0, top_k=10)
    torch.testing.assert_close(g.entropy.cpu(), c.entropy, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g.max_prob.cpu(), c.max_prob, atol=1e-6, rtol=1e-5)
    xc, xg = x.clone().requires_grad_(), x.cuda().requires_grad_()
    softdec.soft_mixture(xc, t, temperature=0.0).entropy.sum().backward()
    softdec.soft_mixture(xg, t.cuda(), temperature=0.0).entropy.sum().backward()
    torch.testing.assert_close(xg.grad.cpu(), xc.grad, atol=1e-6, rtol=1e-4)


@pytest.mark.cuda
@pytest.mark.parametrize("edt", [torch.float32, torch.bfloat16])
def test_cuda_gumbel_options_and_embed_noise_match_cpu(edt):
    x = torch.randn(4, 3000, generator=torch.Generator().manual_seed(53))
    t = torch.randn(3000, 40).to(edt)
    kw = dict(ST, noise="gumbel", tau=0.5, gumbel_clamp=(-1.5, 3.0), gumbel_eps=1e-6, embed_noise_std=0.2,
              seed=torch.arange(4), offset=3)
    c = softdec.soft_mixture(x, t, **kw)
    g = softdec.soft_mixture(x.cuda(), t.cuda(), **_cu(kw))
    assert torch.equal(g.ids.cpu(), c.ids)
    torch.testing.assert_close(g.weights.cpu(), c.weights, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(g.noisy_logits.cpu(), c.noisy_logits, atol=1e-5, rtol=1e-5)
    ulp = torch.finfo(edt).eps
    torch.testing.assert_close(g.embeds.cpu().double(), c.embeds.double(), atol=4 * ulp, rtol=4 * ulp)
    e_c = softdec.philox_normal((4, 40), torch.arange(4), 3)
    e_g = softdec.philox_normal((4, 40), torch.arange(4).cuda(), 3)
    torch.testing.assert_close(e_g.cpu(), e_c, atol=1e-6, rtol=0)
    xc, xg = x.double().requires_grad_(), x.double().cuda().requires_grad_()
    softdec.soft_mixture(xc, t.double(), **kw).embeds.square().sum().backward()
    softdec.soft_mixture(xg, t.double().cuda(), **_cu(kw)).embeds.square().sum().backward()
    torch.testing.assert_close(xg.grad.cpu(), xc.grad, atol=1e-9, rtol=1e-7)
