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
            torch.tensor([30, 0, 5]), 30)
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
