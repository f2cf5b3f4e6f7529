"""Token-tree verification (softdec.verify_tree): lossless by test, chain == verify, reference, bad trees."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import softdec
from softdec import reference as ref

KINDS = ["onehot", "dense", "sparse"]


def _chi2(counts: np.ndarray, probs: np.ndarray):
    """Chi-square p-value; cells of zero probability must be empty."""
    assert counts[probs == 0].sum() == 0, "a token of zero target probability was emitted"
    keep = probs > 0
    exp = probs[keep] / probs[keep].sum() * counts.sum()
    return stats.chisquare(counts[keep], exp).pvalue


def _sparse_of(ql, k):
    """Sparse draft (support = the k largest logits, weights = their softmax) and its dense form."""
    top = torch.topk(ql, k, -1).indices
    w = torch.softmax(ql.gather(-1, top), -1)
    return top, w, torch.zeros_like(ql).scatter_(-1, top, w)


def _draft_nodes(qlogits, kind, g, k=3):
    """Draws one token per row from each node's draft. qlogits: (T, n, V) per-row, per-node draft logits.
    Returns tokens (T, n), and draft_probs for those nodes in the verify_tree form (dense / sparse / None)."""
    T, n, V = qlogits.shape
    if kind == "sparse":
        top, w, dense = _sparse_of(qlogits, k)
        x = torch.multinomial(dense.reshape(-1, V), 1, generator=g).reshape(T, n)
        return x, (top, w.float())
    q = torch.softmax(qlogits, -1)
    x = torch.multinomial(q.reshape(-1, V), 1, generator=g).reshape(T, n)
    if kind == "dense":
        return x, q.float()
    # deterministic drafts: any tokens chosen independently of the acceptance uniforms
    return x, None


def _with_root(dp, T, V, k=3):
    """Prepends the (unused) root row to per-node draft probs."""
    if dp is None:
        return None
    if isinstance(dp, tuple):
        i, w = dp
        return (torch.cat([i[:, :1], i], 1), torch.cat([w[:, :1], w], 1))
    return torch.cat([dp[:, :1], dp], 1)


# ---------------------------------------------------------------------------- lossless, statistically

@pytest.mark.parametrize("V", [5, 17])
@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("kind", KINDS)
def test_lossless_depth1_siblings(V, m, kind):
    """Root with m children, each drafted independently from its own q_i: the emitted token ~ p."""
    T = 100_000
    g = torch.Generator().manual_seed(100 * V + 10 * m + KINDS.index(kind))
    tl = torch.randn(V, generator=g, dtype=torch.float64) * 1.5
    ql = torch.randn(m, V, generator=g, dtype=torch.float64) * 1.5        # per-sibling drafts
    x, dp = _draft_nodes(ql.expand(T, m, V), kind, g)
    N = 1 + m
    logits = torch.cat([tl.expand(T, 1, V), torch.randn(N - 1, V, generator=g, dtype=torch.float64)
                        .expand(T, N - 1, V)], 1).float()
    tokens = torch.cat([torch.zeros(T, 1, dtype=torch.long), x], 1)
    parents = torch.tensor([-1] + [0] * m).expand(T, N)
    out = softdec.verify_tree(logits, tokens, parents, draft_probs=_with_root(dp, T, V),
                              seed=torch.arange(T) * 1000003 + 11, offset=2)
    p0 = torch.softmax(tl, -1).numpy()
    counts = np.bincount(out.tokens[:, 0].numpy(), minlength=V)
    assert _chi2(counts, p0) > 1e-3
    # the path is consistent: accepted node's token == emitted token 0
    acc = out.num_accepted == 1
    assert torch.equal(tokens[acc].gather(1, out.nodes[acc][:, :1])[:, 0], out.tokens[acc, 0])


@pytest.mark.parametrize("kind", KINDS)
def test_lossless_depth1_with_filters(kind):
    """Same, with top-k / temperature / min-p on the target: filtered tokens never emitted."""
    V, m, T = 17, 3, 100_000
    g = torch.Generator().manual_seed(5)
    tl = torch.randn(V, generator=g, dtype=torch.float64) * 1.5
    ql = torch.randn(m, V, generator=g, dtype=torch.float64) * 1.5
    x, dp = _draft_nodes(ql.expand(T, m, V), kind, g)
    logits = tl.expand(T, 1 + m, V).float()
    tokens = torch.cat([torch.zeros(T, 1, dtype=torch.long), x], 1)
    parents = torch.tensor([-1] + [0] * m).expand(T, 1 + m)
    filt = dict(temperature=0.8, top_k=6, min_p=0.05)
    out = softdec.verify_tree(logits, tokens, parents, draft_probs=_with_root(dp, T, V), seed=torch.arange(T),
                              **filt)
    p0, _ = ref.verify_target_probs(tl[None], **filt)
    counts = np.bincount(out.tokens[:, 0].numpy(), minlength=V)
    assert _chi2(counts, p0[0].numpy()) > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_lossless_joint_depth2(kind):
    """Root -> 2 children (i.i.d. from q0) -> 2 children each (i.i.d. from q1(. | parent token)); the
    first two emitted tokens are jointly p0(t0) p1(t1 | t0). A row that stops at depth 0 takes its second
    token from the next round (a bonus draw at t0, a one-node tree)."""
    V, T = 5, 100_000
    g = torch.Generator().manual_seed(42 + KINDS.index(kind))
    tl = torch.randn(V, generator=g, dtype=torch.float64) * 1.5
    tl1 = torch.randn(V, V, generator=g, dtype=torch.float64) * 1.5        # target after token x
    ql = torch.randn(V, generator=g, dtype=torch.float64) * 1.5
    ql1 = torch.randn(V, V, generator=g, dtype=torch.float64) * 1.5
    # nodes: 0 root, 1 a, 2 b, 3 a's first, 4 a's second, 5 b's first, 6 b's second
    xa, dpa = _draft_nodes(ql.expand(T, 2, V), kind, g)
    xb, dpb = _draft_nodes(torch.cat([ql1[xa[:, :1]].expand(T, 2, V), ql1[xa[:, 1:]].expand(T, 2, V)], 1), kind, g)
    tokens = torch.cat([torch.zeros(T, 1, dtype=torch.long), xa, xb], 1)
    parents = torch.tensor([-1, 0, 0, 1, 1, 2, 2]).expand(T, 7)
    logits = torch.stack([tl.expand(T, V), tl1[xa[:, 0]], tl1[xa[:, 1]]] + [tl.expand(T, V)] * 4, 1).float()
    if kind == "dense":
        dp = torch.cat([dpa[:, :1], dpa, dpb], 1)
    elif kind == "sparse":
        dp = tuple(torch.cat([a[:, :1], a, b], 1) for a, b in zip(dpa, dpb))
    else:
        dp = None
    seeds = torch.arange(T) * 7919 + 3
    out = softdec.verify_tree(logits, tokens, parents, draft_probs=dp, seed=seeds, offset=0)
    t0 = out.tokens[:, 0]
    t1 = out.tokens[:, 1].clone()
    stopped = out.num_accepted == 0
    ns = int(stopped.sum())
    nxt = softdec.verify_tree(tl1[t0[stopped]][:, None, :].float(), torch.zeros(ns, 1, dtype=torch.long),
                              torch.full((ns, 1), -1), seed=seeds[stopped], offset=8)
    t1[stopped] = nxt.tokens[:, 0]
    assert bool((t1 >= 0).all())
    joint = (torch.softmax(tl, -1)[:, None] * torch.softmax(tl1, -1)).reshape(-1).numpy()
    counts = np.bincount((t0 * V + t1).numpy(), minlength=V * V)
    assert _chi2(counts, joint) > 1e-3


def test_acceptance_length_matches_analytic():
    """Fixed drafts x1 != x2 under the root, y1 != y2 under each: E[len] = sum_x p(x) (1 + sum_y p1(y | x))."""
    V, T = 7, 200_000
    g = torch.Generator().manual_seed(3)
    tl = torch.randn(V, generator=g, dtype=torch.float64)
    tl1 = torch.randn(V, V, generator=g, dtype=torch.float64)
    x, y = [2, 5], [1, 2]
    tokens = torch.tensor([0, x[0], x[1], y[0], y[1], y[0], y[1]]).expand(T, 7)
    parents = torch.tensor([-1, 0, 0, 1, 1, 2, 2]).expand(T, 7)
    logits = torch.stack([tl, tl1[x[0]], tl1[x[1]]] + [tl] * 4, 0).float().expand(T, 7, V)
    out = softdec.verify_tree(logits, tokens, parents, seed=torch.arange(T) + 99)
    p = torch.softmax(tl, -1)
    p1 = torch.softmax(tl1, -1)
    want = sum(float(p[a]) * (1 + float(p1[a, y[0]] + p1[a, y[1]])) for a in x)
    L = out.num_accepted.double()
    se = float(L.std()) / math.sqrt(T)
    assert abs(float(L.mean()) - want) <= 3 * se
    # the path follows parents: the second accepted node is a child of the first
    two = out.num_accepted == 2
    assert bool((parents[0][out.nodes[two, 1]] == out.nodes[two, 0]).all())


def test_q_equal_p_accepts_first_child():
    V, B = 11, 64
    g = torch.Generator().manual_seed(1)
    lg = torch.randn(B, 3, V, generator=g)
    q = torch.softmax(lg, -1)
    tokens = torch.cat([torch.zeros(B, 1, dtype=torch.long), torch.multinomial(q[:, 0], 2, generator=g)], 1)
    dp = q[:, :1].expand(B, 3, V)  # both children drafted from the root's target
    out = softdec.verify_tree(lg, tokens, torch.tensor([-1, 0, 0]).expand(B, 3), draft_probs=dp, seed=0)
    assert bool((out.num_accepted == 1).all()) and bool((out.nodes[:, 0] == 1).all())


# ---------------------------------------------------------------------------- chain == verify, reference

def _chain(B, K, V, kind, seed, dtype=torch.float32, k=4):
    g = torch.Generator().manual_seed(seed)
    lg = (torch.randn(B, K + 1, V, generator=g) * 2).to(dtype)
    qlog = lg[:, :K].double() + torch.randn(B, K, V, generator=g, dtype=torch.float64)
    if kind == "sparse":
        top = torch.topk(qlog, k, -1).indices
        w = torch.softmax(torch.randn(B, K, k, generator=g, dtype=torch.float64), -1).float()
        d = top.gather(2, torch.multinomial(w.reshape(-1, k).double(), 1, generator=g).reshape(B, K, 1))[..., 0]
        dp = (top, w)
    else:
        q = torch.softmax(qlog, -1)
        d = torch.multinomial(q.reshape(-1, V), 1, generator=g).reshape(B, K)
        dp = q.to(dtype if dtype != torch.float64 else torch.float32) if kind == "dense" else None
    return lg, d, dp


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["exact", "greedy", "typical"])
@pytest.mark.parametrize("filt", [dict(), dict(temperature=0.7, top_k=20, top_p=0.9), dict(min_p=0.05),
                                  dict(temperature=0.0), dict(top_p=0.5)])
@pytest.mark.parametrize("V", [7, 1023])
def test_chain_as_tree_equals_verify(kind, method, filt, V):
    B, K = 48, 4
    lg, d, dp = _chain(B, K, V, kind, seed=V + len(filt))
    seeds = torch.arange(B) * 31 + 7
    want = softdec.verify(lg, d, draft_probs=dp, method=method, seed=seeds, offset=9, **filt)
    tokens = torch.cat([torch.zeros(B, 1, dtype=torch.long), d], 1)
    parents = torch.arange(-1, K).expand(B, K + 1)
    tdp = _with_root(dp, B, V)
    got = softdec.verify_tree(lg, tokens, parents, draft_probs=tdp, method=method, seed=seeds, offset=9, **filt)
    assert torch.equal(got.tokens, want.tokens)
    assert torch.equal(got.num_accepted, want.num_accepted)
    n = got.num_accepted
    ar = torch.arange(K + 1)[None, :]
    assert torch.equal(torch.where(ar < n[:, None], ar + 1, -1), got.nodes)


def test_chain_as_tree_equals_verify_soft():
    B, K, V, k = 32, 3, 300, 4
    g = torch.Generator().manual_seed(2)
    lg = torch.randn(B, K + 1, V, generator=g) * 3
    # drafts: the target's own soft tokens (accepted), perturbed on some rows
    ids = torch.stack([ref.verify_soft_token(lg[:, j], k)[0] for j in range(K)], 1)
    w = torch.stack([ref.verify_soft_token(lg[:, j], k)[1] for j in range(K)], 1).float()
    flip = torch.rand(B, K, generator=g) < 0.3
    w = torch.where(flip[..., None], w.flip(-1), w)
    d = ids[..., 0]
    want = softdec.verify(lg, d, draft_probs=(ids, w), method="soft", delta=0.05)
    tokens = torch.cat([torch.zeros(B, 1, dtype=torch.long), d], 1)
    got = softdec.verify_tree(lg, tokens, torch.arange(-1, K).expand(B, K + 1),
                              draft_probs=(torch.cat([ids[:, :1], ids], 1), torch.cat([w[:, :1], w], 1)),
                              method="soft", delta=0.05)
    assert torch.equal(got.tokens, want.tokens)
    assert torch.equal(got.num_accepted, want.num_accepted)
    assert torch.equal(got.soft_ids, want.soft_ids) and torch.equal(got.soft_weights, want.soft_weights)


def _random_tree(B, N, V, g, pad=True):
    """Random ragged trees: node n's parent uniform in [0, n); trailing nodes padded per row."""
    par = torch.full((B, N), -1, dtype=torch.long)
    for n in range(1, N):
        par[:, n] = torch.randint(0, n, (B,), generator=g)
    if pad:
        size = torch.randint(N // 2, N + 1, (B,), generator=g)
        par = torch.where(torch.arange(N)[None, :] < size[:, None], par, torch.full_like(par, -1))
        par[:, 0] = -1
    tokens = torch.randint(0, V, (B, N), generator=g)
    return tokens, par


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["exact", "greedy", "typical"])
def test_matches_reference_random_trees(kind, method):
    B, N, V = 40, 9, 31
    g = torch.Generator().manual_seed(KINDS.index(kind) * 7 + len(method))
    tokens, par = _random_tree(B, N, V, g)
    lg = torch.randn(B, N, V, generator=g) * 1.5
    # node n is drafted from a distribution close to the target at its parent, so that paths go deep
    lgp = lg.gather(1, par.clamp(min=0)[..., None].expand(B, N, V))
    qlog = lgp.double() + 0.5 * torch.randn(B, N, V, generator=g, dtype=torch.float64)
    dp = None
    if kind == "dense":
        dp = torch.softmax(qlog, -1).float()
        tokens = torch.multinomial(dp.reshape(-1, V), 1, generator=g).reshape(B, N)
    elif kind == "sparse":
        top, w, _ = _sparse_of(qlog, 4)
        tokens = top.gather(2, torch.randint(0, 4, (B, N, 1), generator=g))[..., 0]
        dp = (top, w.float())
    else:
        tokens = torch.where(torch.rand(B, N, generator=g) < 0.5, lgp.argmax(-1), tokens)
    kw = dict(method=method, seed=torch.arange(B), offset=4)
    got = softdec.verify_tree(lg, tokens, par, draft_probs=dp, **kw)
    want = ref.verify_tree(lg.double(), tokens, par,
                           draft_probs=dp.double() if isinstance(dp, torch.Tensor) else dp, **kw)
    assert torch.equal(got.tokens, want.tokens)
    assert torch.equal(got.nodes, want.nodes)
    assert torch.equal(got.num_accepted, want.num_accepted)
    assert bool((got.num_accepted >= 2).any())  # the trees are actually walked


def test_same_seed_batch_invariance_and_generator():
    B, N, V = 16, 7, 50
    g = torch.Generator().manual_seed(0)
    tokens, par = _random_tree(B, N, V, g, pad=False)
    lg = torch.randn(B, N, V, generator=g)
    a = softdec.verify_tree(lg, tokens, par, seed=torch.arange(B))
    b = softdec.verify_tree(lg[3:4], tokens[3:4], par[3:4], seed=torch.tensor([3]))
    assert torch.equal(a.tokens[3:4], b.tokens)
    # an int seed keys row b by softdec.reference.row_seed(seed, b)
    e = softdec.verify_tree(lg, tokens, par, seed=5)
    f = softdec.verify_tree(lg[3:4], tokens[3:4], par[3:4], seed=torch.tensor([ref.row_seed(5, 3)]))
    assert torch.equal(e.tokens[3:4], f.tokens)
    c = softdec.verify_tree(lg, tokens, par, generator=torch.Generator().manual_seed(1))
    d = softdec.verify_tree(lg, tokens, par, generator=torch.Generator().manual_seed(1))
    assert torch.equal(c.tokens, d.tokens)


@pytest.mark.parametrize("min_p", [0.0, 0.01])
@pytest.mark.parametrize("kind", ["onehot", "dense", "sparse"])
def test_single_row_split_race_equals_row_in_batch(kind, min_p):
    # B = 1 runs the target filter's passes, the dense residual and the vocabulary-wide races in
    # 16384-token pieces on torch's threads; a row inside a batch runs them serially. Both must
    # take the same decisions, token for token (sums are per piece, merged in a fixed order).
    B, N, V, k = 6, 5, 70001, 4
    g = torch.Generator().manual_seed(3)
    tokens, par = _random_tree(B, N, V, g, pad=False)
    lg = torch.randn(B, N, V, generator=g) * 0.5
    dp = None
    if kind == "dense":
        dp = torch.softmax(torch.randn(B, N, V, generator=g), -1)
    elif kind == "sparse":  # node tokens among their ids; shared ids across siblings
        ids = torch.randint(0, 50, (B, N, k), generator=g)
        ids[..., 0] = tokens
        ids = torch.where(torch.arange(k) == 0, ids, (ids + tokens[..., None]) % V)
        dp = (ids, torch.softmax(torch.randn(B, N, k, generator=g), -1))
    for off in range(4):
        a = softdec.verify_tree(lg, tokens, par, draft_probs=dp, seed=torch.arange(B), offset=off, min_p=min_p)
        for r in range(B):
            dr = None if dp is None else (dp[r:r + 1] if kind == "dense" else (dp[0][r:r + 1], dp[1][r:r + 1]))
            b = softdec.verify_tree(lg[r:r + 1], tokens[r:r + 1], par[r:r + 1], draft_probs=dr,
                                    seed=torch.tensor([r]), offset=off, min_p=min_p)
            assert torch.equal(a.tokens[r:r + 1], b.tokens) and torch.equal(a.nodes[r:r + 1], b.nodes)


def test_invalid_rows_empty_batch_and_root_only():
    V = 9
    lg = torch.randn(3, 2, V)
    lg[1, 0, 2] = float("nan")
    lg[2, 1] = float("-inf")
    tokens = torch.tensor([[0, int(lg[0, 0].argmax())]] * 3)
    tokens[2, 1] = int(lg[2, 0].argmax())
    par = torch.tensor([[-1, 0]] * 3)
    out = softdec.verify_tree(lg, tokens, par, method="greedy")
    assert out.tokens[1, 0] == -1 and out.num_accepted[1] == 0
    assert out.num_accepted[2] == 1 and out.tokens[2, 1] == -1
    e = softdec.verify_tree(torch.zeros(0, 3, V), torch.zeros(0, 3, dtype=torch.long),
                            torch.zeros(0, 3, dtype=torch.long), seed=0)
    assert e.tokens.shape == (0, 3)
    r = softdec.verify_tree(lg[:1, :1], tokens[:1, :1], par[:1, :1], seed=0)  # bonus draw only
    assert r.num_accepted[0] == 0 and 0 <= int(r.tokens[0, 0]) < V


# ---------------------------------------------------------------------------- bad trees, bad input

BAD = [
    ([[0, 0, 1]], r"tree_parents\[0, 0\] must be -1 \(node 0 is the root\), got 0"),
    ([[-1, 0, 2]], r"tree_parents\[0, 2\] = 2 must be smaller than its node index"),
    ([[-1, 0, 5]], r"tree_parents\[0, 2\] = 5 is out of range: parents must be -1 \(padding\) or a node index in \[0, 3\)"),
    ([[-1, 0, -2]], r"tree_parents\[0, 2\] = -2 is out of range"),
    ([[-1, -1, 1]], r"tree_parents\[0, 2\] = 1 points at a padding node"),
]


@pytest.mark.parametrize("parents,msg", BAD)
def test_bad_trees_have_pinned_messages(parents, msg):
    lg = torch.randn(1, 3, 10)
    tokens = torch.tensor([[0, 1, 2]])
    with pytest.raises(ValueError, match=msg):
        softdec.verify_tree(lg, tokens, torch.tensor(parents), seed=0)
    # the native op repeats the checks (torch.compile skips the wrapper's data checks)
    f32 = torch.ones(1)
    i64 = torch.zeros(1, dtype=torch.long)
    with pytest.raises((ValueError, RuntimeError), match=msg):
        torch.ops.softdec.verify_tree(lg, tokens, torch.tensor(parents), None, None, None, 0, f32, i64, f32,
                                      torch.zeros(1), 0.09, 0.3, 0.1, i64, i64)


def test_bad_tokens_and_drafts_have_pinned_messages():
    B, N, V = 1, 3, 10
    lg = torch.randn(B, N, V)
    par = torch.tensor([[-1, 0, 0]])
    with pytest.raises(ValueError, match=r"tree_tokens must lie in \[0, 10\).*got 10 at \(row 0, node 2\)"):
        softdec.verify_tree(lg, torch.tensor([[0, 1, 10]]), par, seed=0)
    # the root's token is never read
    softdec.verify_tree(lg, torch.tensor([[-5, 1, 2]]), par, seed=0)
    # padding nodes' tokens are never read
    softdec.verify_tree(lg, torch.tensor([[0, 1, -1]]), torch.tensor([[-1, 0, -1]]), seed=0)
    ids = torch.tensor([[[0, 1], [1, 3], [2, 4]]])
    w = torch.full((1, 3, 2), 0.5)
    with pytest.raises(ValueError, match=r"tree_tokens\[0, 2\] = 7 must be one of the sparse draft's ids"):
        softdec.verify_tree(lg, torch.tensor([[0, 1, 7]]), par, draft_probs=(ids, w), seed=0)
    f32 = torch.ones(1)
    i64 = torch.zeros(1, dtype=torch.long)
    with pytest.raises((ValueError, RuntimeError), match=r"tree_tokens\[0, 2\] = 7 must be one of the sparse draft's ids"):
        torch.ops.softdec.verify_tree(lg, torch.tensor([[0, 1, 7]]), par, None, ids, w, 0, f32, i64, f32,
                                      torch.zeros(1), 0.09, 0.3, 0.1, i64, i64)
    with pytest.raises(ValueError, match=r"draft_probs weights must sum to 1"):
        softdec.verify_tree(lg, torch.tensor([[0, 1, 2]]), par, draft_probs=(ids, w * 0.5), seed=0)
    with pytest.raises(ValueError, match=r"tree_parents must have shape \(batch, nodes\) = \(1, 3\)"):
        softdec.verify_tree(lg, torch.tensor([[0, 1, 2]]), torch.tensor([[-1, 0]]), seed=0)
    with pytest.raises(ValueError, match=r"draft_probs must have shape \(batch, nodes, vocab\) = \(1, 3, 10\)"):
        softdec.verify_tree(lg, torch.tensor([[0, 1, 2]]), par, draft_probs=torch.ones(1, 2, 10) / 10, seed=0)
    with pytest.raises(ValueError, match=r"method must be one of \('exact', 'greedy', 'typical', 'soft'\)"):
        softdec.verify_tree(lg, torch.tensor([[0, 1, 2]]), par, method="relaxed", seed=0)
    with pytest.raises(ValueError, match=r"method 'soft' needs sparse draft_probs"):
        softdec.verify_tree(lg, torch.tensor([[0, 1, 2]]), par, method="soft", seed=0)
    with pytest.raises(ValueError, match=r"temperature"):
        softdec.verify_tree(lg, torch.tensor([[0, 1, 2]]), par, temperature=-1.0, seed=0)


# ---------------------------------------------------------------------------- opcheck, compile

def _op_args(method, kind):
    B, N, V = 3, 5, 33
    g = torch.Generator().manual_seed(0)
    lg = torch.randn(B, N, V, generator=g)
    par = torch.tensor([-1, 0, 0, 1, 1]).expand(B, N).contiguous()
    tokens = torch.randint(0, V, (B, N), generator=g)
    dense = sid = sw = None
    if kind == "dense":
        dense = torch.softmax(torch.randn(B, N, V, generator=g), -1)
    elif kind == "sparse":
        sid, sw, _ = _sparse_of(torch.randn(B, N, V, generator=g), 3)
        tokens = sid[..., 0].contiguous()
        sw = sw.float().contiguous()
    f32 = lambda v: torch.full((B,), v)  # noqa: E731
    i64 = lambda v: torch.full((B,), v, dtype=torch.long)  # noqa: E731
    return (lg, tokens, par, dense, sid, sw, method, f32(1.0), i64(0), f32(1.0), f32(0.0), 0.09, 0.3, 0.1,
            torch.arange(B), i64(0))


@pytest.mark.parametrize("method,kind", [(0, "onehot"), (0, "dense"), (0, "sparse"), (1, "onehot"),
                                         (2, "dense"), (4, "sparse")])
def test_opcheck(method, kind):
    torch.library.opcheck(torch.ops.softdec.verify_tree, _op_args(method, kind))


def test_torch_compile_fullgraph():
    args = _op_args(0, "sparse")
    lg, tokens, par, _, sid, sw = args[:6]

    def f(lg, tokens, par, sid, sw, s):
        out = softdec.verify_tree(lg, tokens, par, draft_probs=(sid, sw), seed=s, top_k=10)
        return out.nodes, out.tokens, out.num_accepted

    cf = torch.compile(f, fullgraph=True)
    s = torch.arange(3)
    a = cf(lg, tokens, par, sid, sw, s)
    b = f(lg, tokens, par, sid, sw, s)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_not_differentiable():
    lg = torch.randn(1, 2, 5, requires_grad=True)
    out = softdec.verify_tree(lg, torch.tensor([[0, 1]]), torch.tensor([[-1, 0]]), method="soft",
                              draft_probs=(torch.tensor([[[0, 1], [1, 2]]]), torch.full((1, 2, 2), 0.5)))
    with pytest.raises(RuntimeError, match="not differentiable"):
        out.soft_weights.sum().backward()


# ---------------------------------------------------------------- CUDA == CPU (run where a GPU is present)

@pytest.mark.cuda
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["exact", "greedy", "typical"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("filt", [dict(), dict(temperature=0.7, top_k=20, top_p=0.9), dict(temperature=0.0)])
def test_cuda_matches_cpu(kind, method, dtype, filt):
    B, N, V = 24, 9, 3001
    g = torch.Generator().manual_seed(KINDS.index(kind) + 3 * len(method))
    tokens, par = _random_tree(B, N, V, g)
    lg = (torch.randn(B, N, V, generator=g) * 2).to(dtype)
    lgp = lg.float().gather(1, par.clamp(min=0)[..., None].expand(B, N, V))
    qlog = lgp.double() + 0.5 * torch.randn(B, N, V, generator=g, dtype=torch.float64)
    dp = None
    if kind == "dense":
        dp = torch.softmax(qlog, -1).float()
        tokens = torch.multinomial(dp.reshape(-1, V), 1, generator=g).reshape(B, N)
    elif kind == "sparse":
        top, w, _ = _sparse_of(qlog, 4)
        tokens = top.gather(2, torch.randint(0, 4, (B, N, 1), generator=g))[..., 0]
        dp = (top, w.float())
    else:
        tokens = torch.where(torch.rand(B, N, generator=g) < 0.5, lgp.argmax(-1), tokens)
    kw = dict(method=method, seed=torch.arange(B) * 5 + 1, offset=3, **filt)
    want = softdec.verify_tree(lg, tokens, par, draft_probs=dp, **kw)
    cu = lambda x: x.cuda() if isinstance(x, torch.Tensor) else x  # noqa: E731
    got = softdec.verify_tree(lg.cuda(), tokens.cuda(), par.cuda(),
                              draft_probs=tuple(map(cu, dp)) if isinstance(dp, tuple) else cu(dp),
                              **{a: cu(v) for a, v in kw.items()})
    assert torch.equal(got.tokens.cpu(), want.tokens)
    assert torch.equal(got.nodes.cpu(), want.nodes)


@pytest.mark.cuda
def test_cuda_soft_and_chain_match_cpu():
    B, K, V, k = 16, 3, 700, 4
    g = torch.Generator().manual_seed(9)
    lg = torch.randn(B, K + 1, V, generator=g) * 2
    ids = torch.stack([ref.verify_soft_token(lg[:, j], k)[0] for j in range(K)], 1)
    w = torch.stack([ref.verify_soft_token(lg[:, j], k)[1] for j in range(K)], 1).float()
    w = torch.where((torch.rand(B, K, generator=g) < 0.3)[..., None], w.flip(-1), w)
    tokens = torch.cat([torch.zeros(B, 1, dtype=torch.long), ids[..., 0]], 1)
    par = torch.arange(-1, K).expand(B, K + 1).contiguous()
    sp = (torch.cat([ids[:, :1], ids], 1), torch.cat([w[:, :1], w], 1))
    want = softdec.verify_tree(lg, tokens, par, draft_probs=sp, method="soft", delta=0.05)
    got = softdec.verify_tree(lg.cuda(), tokens.cuda(), par.cuda(), draft_probs=tuple(t.cuda() for t in sp),
                              method="soft", delta=0.05)
    assert torch.equal(got.tokens.cpu(), want.tokens)
    assert torch.equal(got.soft_ids.cpu(), want.soft_ids)
