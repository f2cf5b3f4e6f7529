"""Speculative verification (softdec.verify): lossless by test, invariants, RNG layout, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import softdec
from softdec import reference as ref

METHODS = ["exact", "greedy", "typical", "relaxed"]
KINDS = ["onehot", "dense", "sparse"]


def _case(B, K, V, kind, *, k=4, dtype=torch.float32, scale=2.0, seed=0, device="cpu"):
    """Random target logits, a draft distribution of the given kind and drafts sampled from it."""
    g = torch.Generator().manual_seed(seed)
    lg = (torch.randn(B, K + 1, V, generator=g, dtype=torch.float64) * scale).to(dtype)
    qlog = lg[:, :K].double() + torch.randn(B, K, V, generator=g, dtype=torch.float64)
    q = torch.softmax(qlog, -1)
    if kind == "sparse":
        kk = min(k, V)
        top = torch.topk(qlog + torch.rand(B, K, V, generator=g, dtype=torch.float64), kk, -1).indices
        w = torch.softmax(torch.randn(B, K, kk, generator=g, dtype=torch.float64), -1).float()
        pick = torch.multinomial(w.reshape(-1, kk).double(), 1, generator=g).reshape(B, K)
        d = top.gather(2, pick[..., None])[..., 0]
        dp = (top.to(device), w.to(device))
    else:
        d = torch.multinomial(q.reshape(-1, V), 1, generator=g).reshape(B, K)
        dp = q.float().to(device) if kind == "dense" else None
        if kind == "dense" and dtype != torch.float32:
            dp = dp.to(dtype)
    return lg.to(device), d.to(device), dp


def _ref_args(dp):
    if isinstance(dp, tuple):
        return (dp[0].cpu(), dp[1].cpu())
    return None if dp is None else dp.cpu().double()


def _neighbours(V, m=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    nb = torch.randint(0, V, (V, m), generator=g)
    nb[::5, -1] = -1
    return nb


# ---------------------------------------------------------------------------- against the reference

@pytest.mark.parametrize("V", [1, 7, 1023, 32000, 151936])
@pytest.mark.parametrize("kind", KINDS)
def test_exact_matches_reference_shapes(V, kind, device):
    B, K = (3, 4) if V < 100000 else (2, 3)
    lg, d, dp = _case(B, K, V, kind, device=device, scale=1.0 if V > 1000 else 2.0)
    seeds = torch.tensor([5, 6, 7][:B], device=device)
    got = softdec.verify(lg, d, draft_probs=dp, seed=seeds, offset=3)
    want = ref.verify(lg.cpu().double(), d.cpu(), draft_probs=_ref_args(dp), seed=seeds.cpu(), offset=3)
    assert torch.equal(got.tokens.cpu(), want.tokens)
    assert torch.equal(got.num_accepted.cpu(), want.num_accepted)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("filt", [dict(), dict(temperature=0.7, top_k=20), dict(top_p=0.8),
                                  dict(min_p=0.05, temperature=1.3), dict(temperature=0.0),
                                  dict(top_k=50, top_p=0.9, min_p=0.01)])
def test_methods_match_reference(method, kind, filt, device):
    B, K, V = 64, 4, 301
    lg, d, dp = _case(B, K, V, kind, seed=hash((method, kind)) % 1000, device=device)
    nd = torch.randint(0, K + 1, (B,), generator=torch.Generator().manual_seed(3)).to(device)
    extra = dict(neighbours=_neighbours(V).to(device), delta=0.1) if method == "relaxed" else {}
    seeds = torch.arange(B, device=device) * 7 + 1
    got = softdec.verify(lg, d, num_draft=nd, draft_probs=dp, method=method, seed=seeds, offset=11,
                         **filt, **extra)
    rextra = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in extra.items()}
    want = ref.verify(lg.cpu().double(), d.cpu(), num_draft=nd.cpu(), draft_probs=_ref_args(dp),
                      method=method, seed=seeds.cpu(), offset=11, **filt, **rextra)
    assert torch.equal(got.tokens.cpu(), want.tokens)
    assert torch.equal(got.num_accepted.cpu(), want.num_accepted)
    assert got.soft_ids is None and got.soft_weights is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", KINDS)
def test_low_precision_inputs(dtype, kind):
    B, K, V = 16, 3, 1025
    lg, d, dp = _case(B, K, V, kind, dtype=dtype)
    seeds = torch.arange(B)
    got = softdec.verify(lg, d, draft_probs=dp, seed=seeds)
    rdp = _ref_args(dp)
    want = ref.verify(lg.double(), d, draft_probs=rdp, seed=seeds)
    assert torch.equal(got.tokens, want.tokens)
    # a float32 draft with low-precision logits is accepted too
    if kind == "dense":
        got32 = softdec.verify(lg, d, draft_probs=dp.float(), seed=seeds)
        assert torch.equal(got32.tokens, want.tokens)


def test_per_row_parameters_match_reference():
    B, K, V = 6, 3, 500
    lg, d, dp = _case(B, K, V, "dense")
    T = torch.tensor([0.0, 0.5, 1.0, 1.5, 1.0, 0.8])
    tk = torch.tensor([0, 5, 0, 40, 1, 0])
    tp = torch.tensor([1.0, 1.0, 0.7, 0.9, 1.0, 0.0])
    mp = torch.tensor([0.0, 0.0, 0.1, 0.0, 0.0, 0.0])
    got = softdec.verify(lg, d, draft_probs=dp, temperature=T, top_k=tk, top_p=tp, min_p=mp, seed=3)
    want = ref.verify(lg.double(), d, draft_probs=dp.double(), temperature=T, top_k=tk, top_p=tp,
                      min_p=mp, seed=3)
    assert torch.equal(got.tokens, want.tokens)


# ---------------------------------------------------------------------------- lossless, statistically

def _chi2(counts: np.ndarray, probs: np.ndarray):
    """Chi-square p-value; cells of zero probability must be empty."""
    assert counts[probs == 0].sum() == 0, "a token of zero target probability was emitted"
    keep = probs > 0
    exp = probs[keep] / probs[keep].sum() * counts.sum()
    return stats.chisquare(counts[keep], exp).pvalue


def _table_case(V, kind, k, seed, filt):
    g = torch.Generator().manual_seed(seed)
    tl = torch.randn(V, generator=g, dtype=torch.float64) * 1.5              # target at position 0
    tl1 = torch.randn(V, V, generator=g, dtype=torch.float64) * 1.5          # target at 1 given token 0
    ql = torch.randn(V, generator=g, dtype=torch.float64) * 1.5
    ql1 = torch.randn(V, V, generator=g, dtype=torch.float64) * 1.5
    return tl, tl1, ql, ql1


def _draft_dist(ql, kind, k, g):
    """A draft distribution (dense probs, or sparse support + weights) from logits."""
    V = ql.shape[-1]
    q = torch.softmax(ql, -1)
    if kind != "sparse":
        return q, None
    top = torch.topk(ql, k, -1).indices
    w = torch.softmax(ql.gather(-1, top), -1)
    dense = torch.zeros_like(q).scatter_(-1, top, w)
    return dense, (top, w)


@pytest.mark.parametrize("V", [5, 17])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("filt", [dict(), dict(top_k=3, temperature=0.8)])
def test_lossless_first_token_and_acceptance_rate(V, kind, filt):
    N = 100_000
    tl, tl1, ql, ql1 = _table_case(V, kind, 3, seed=V + len(filt), filt=filt)
    g = torch.Generator().manual_seed(7)
    q0, sp0 = _draft_dist(ql, kind, 3, g)
    x0 = torch.multinomial(q0, N, replacement=True, generator=g)
    q1, sp1 = _draft_dist(ql1, kind, 3, g)                         # (V, V): draft at 1 given x0
    x1 = torch.multinomial(q1[x0], 1, generator=g)[:, 0]
    logits = torch.stack([tl.expand(N, V), tl1[x0]], 1).float()     # target at 1 conditioned on x0
    logits = torch.cat([logits, tl.expand(N, 1, V).float()], 1)    # bonus position (unused here)
    drafts = torch.stack([x0, x1], 1)
    if kind == "dense":
        dp = torch.stack([q0.expand(N, V), q1[x0]], 1).float()
    elif kind == "sparse":
        dp = (torch.stack([sp0[0].expand(N, 3), sp1[0][x0]], 1),
              torch.stack([sp0[1].expand(N, 3), sp1[1][x0]], 1).float())
    else:
        dp = None
    seeds = torch.arange(N) * 1000003 + 17
    out = softdec.verify(logits, drafts, draft_probs=dp, seed=seeds, offset=5, **filt)
    p0, _ = ref.verify_target_probs(tl[None], **filt)
    p0 = p0[0].numpy()
    counts = np.bincount(out.tokens[:, 0].numpy(), minlength=V)
    assert _chi2(counts, p0) > 1e-3
    # acceptance rate at the first position == sum min(p, q) (q one-hot at x: E_x[min(1, p(x))])
    acc = (out.num_accepted >= 1).double().mean().item()
    if kind == "onehot":
        want = float((q0.numpy() * p0).sum())
    else:
        want = float(np.minimum(p0, q0.numpy()).sum())
    se = math.sqrt(want * (1 - want) / N)
    assert abs(acc - want) <= 3 * se + 1e-12


@pytest.mark.parametrize("kind", KINDS)
def test_lossless_joint_of_two_tokens(kind):
    """The first two emitted tokens, with a context-dependent target p1(. | t0) and draft q1(. | x0);
    a row that stops at position 0 gets its second token from the next round (a bonus draw)."""
    V, N = 5, 100_000
    tl, tl1, ql, ql1 = _table_case(V, kind, 3, seed=42, filt={})
    g = torch.Generator().manual_seed(8)
    q0, sp0 = _draft_dist(ql, kind, 3, g)
    q1, sp1 = _draft_dist(ql1, kind, 3, g)
    x0 = torch.multinomial(q0, N, replacement=True, generator=g)
    x1 = torch.multinomial(q1[x0], 1, generator=g)[:, 0]
    logits = torch.stack([tl.expand(N, V), tl1[x0], tl.expand(N, V)], 1).float()
    drafts = torch.stack([x0, x1], 1)
    if kind == "dense":
        dp = torch.stack([q0.expand(N, V), q1[x0]], 1).float()
    elif kind == "sparse":
        dp = (torch.stack([sp0[0].expand(N, 3), sp1[0][x0]], 1),
              torch.stack([sp0[1].expand(N, 3), sp1[1][x0]], 1).float())
    else:
        dp = None
    seeds = torch.arange(N) * 7919 + 3
    out = softdec.verify(logits, drafts, draft_probs=dp, seed=seeds, offset=0)
    t0 = out.tokens[:, 0]
    t1 = out.tokens[:, 1].clone()
    stopped = out.num_accepted == 0
    # next round for the stopped rows: target p1(. | t0), nothing drafted (bonus draw), new offset
    nxt = softdec.verify(tl1[t0[stopped]][:, None, :].float(), torch.zeros(int(stopped.sum()), 0, dtype=torch.long),
                         seed=seeds[stopped], offset=4)
    t1[stopped] = nxt.tokens[:, 0]
    assert bool((t1 >= 0).all())
    p0 = torch.softmax(tl, -1)
    p1 = torch.softmax(tl1, -1)
    joint = (p0[:, None] * p1).reshape(-1).numpy()
    counts = np.bincount((t0 * V + t1).numpy(), minlength=V * V)
    assert _chi2(counts, joint) > 1e-3


def test_lossless_relaxed_delta_zero_and_typical_greedy_target():
    # relaxed with delta = 0 is exact, hence lossless
    V, N = 17, 100_000
    g = torch.Generator().manual_seed(9)
    tl = torch.randn(V, generator=g, dtype=torch.float64)
    q = torch.softmax(torch.randn(V, generator=g, dtype=torch.float64), -1)
    x = torch.multinomial(q, N, replacement=True, generator=g)
    logits = tl.expand(N, 2, V).float()
    out = softdec.verify(logits, x[:, None], draft_probs=q.expand(N, 1, V).float(), method="relaxed",
                         neighbours=_neighbours(V), delta=0.0, seed=torch.arange(N))
    counts = np.bincount(out.tokens[:, 0].numpy(), minlength=V)
    assert _chi2(counts, torch.softmax(tl, -1).numpy()) > 1e-3


# ---------------------------------------------------------------------------- invariants

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", KINDS)
def test_prefix_padding_and_counts(method, kind, device):
    B, K, V = 64, 6, 50
    lg, d, dp = _case(B, K, V, kind, device=device, scale=0.5)
    nd = torch.randint(0, K + 1, (B,), generator=torch.Generator().manual_seed(1)).to(device)
    extra = dict(neighbours=_neighbours(V).to(device)) if method == "relaxed" else {}
    out = softdec.verify(lg, d, num_draft=nd, draft_probs=dp, method=method, seed=torch.arange(B, device=device),
                         **extra)
    tok, na = out.tokens.cpu(), out.num_accepted.cpu()
    assert tok.shape == (B, K + 1) and tok.dtype == torch.int64 and na.dtype == torch.int64
    assert bool((na >= 0).all()) and bool((na <= nd.cpu()).all()) and bool((nd.cpu() <= K).all())
    for b in range(B):
        n = int(na[b])
        assert torch.equal(tok[b, :n], d.cpu()[b, :n])      # accepted drafts form a prefix
        assert 0 <= int(tok[b, n]) < V                     # the correction / bonus token
        assert bool((tok[b, n + 1:] == -1).all())          # padding


def test_q_equal_p_accepts_everything():
    B, K, V = 256, 5, 300
    lg = torch.randn(B, K + 1, V) * 2
    d_probs = torch.softmax(lg[:, :K].double(), -1)
    d = torch.multinomial(d_probs.reshape(-1, V), 1).reshape(B, K)
    out = softdec.verify(lg, d, draft_probs=d_probs.float(), seed=torch.arange(B))
    assert bool((out.num_accepted == K).all())
    # reference in float64: exactly p == q
    want = ref.verify(lg.double(), d, draft_probs=d_probs, seed=torch.arange(B))
    assert bool((want.num_accepted == K).all())
    assert torch.equal(out.tokens, want.tokens)
    # one-hot target (T = 0) and one-hot drafts of its argmax: accepted, bonus = argmax
    am = lg.argmax(-1)
    out = softdec.verify(lg, am[:, :K], temperature=0.0, seed=0)
    assert bool((out.num_accepted == K).all()) and torch.equal(out.tokens, am)


def test_greedy_equals_argmax_loop():
    B, K, V = 40, 5, 97
    lg = torch.randn(B, K + 1, V)
    am = lg.argmax(-1)
    d = am[:, :K].clone()
    g = torch.Generator().manual_seed(2)
    flip = torch.rand(B, K, generator=g) < 0.25
    d[flip] = torch.randint(0, V, (int(flip.sum()),), generator=g)
    out = softdec.verify(lg, d, method="greedy", temperature=0.7, top_p=0.5)
    for b in range(B):
        want = []
        for j in range(K + 1):
            if j < K and int(d[b, j]) == int(am[b, j]):
                want.append(int(d[b, j]))
                continue
            want.append(int(am[b, j]))
            break
        assert out.tokens[b, :len(want)].tolist() == want
        assert int(out.num_accepted[b]) == len(want) - 1


def test_typical_medusa_rule_hand_made():
    # p = [0.7, 0.2, 0.06, 0.04]: H = 0.8889 nats; alpha * exp(-H) = 0.3 * 0.4111 = 0.1233
    p = torch.tensor([0.7, 0.2, 0.06, 0.04], dtype=torch.float64)
    H = float(-(p * p.log()).sum())
    logits = p.log().float().expand(1, 2, 4).contiguous()
    cases = [  # (eps, alpha, token, accepted?)
        (0.09, 0.3, 1, True),    # 0.2 > min(0.09, 0.123)
        (0.09, 0.3, 2, False),   # 0.06 < 0.09
        (0.5, 0.3, 1, True),     # 0.2 > min(0.5, 0.123)
        (0.5, 0.3, 2, False),    # 0.06 < 0.123
        (0.5, 0.1, 2, True),     # 0.06 > 0.1 * 0.411 = 0.0411
        (0.5, 0.1, 3, False),    # 0.04 < 0.0411
        (0.03, 0.1, 3, True),    # 0.04 > min(0.03, 0.0411)
    ]
    for eps, alpha, x, want in cases:
        thr = min(eps, alpha * math.exp(-H))
        assert (float(p[x]) > thr) == want       # the hand computation
        out = softdec.verify(logits, torch.tensor([[x]]), method="typical", posterior_threshold=eps,
                             posterior_alpha=alpha, seed=1)
        assert int(out.num_accepted[0]) == int(want), (eps, alpha, x)
        if want:
            assert int(out.tokens[0, 0]) == x


def test_typical_entropy_uses_the_filtered_target():
    # with top_k = 2 the target is [0.7, 0.2] / 0.9: H = 0.5297, alpha e^-H = 0.1766; 0.2/0.9 = 0.222 > it
    p = torch.tensor([0.7, 0.2, 0.06, 0.04], dtype=torch.float64)
    logits = p.log().float().expand(1, 2, 4).contiguous()
    out = softdec.verify(logits, torch.tensor([[1]]), method="typical", posterior_threshold=0.5,
                         posterior_alpha=0.3, top_k=2, seed=1)
    assert int(out.num_accepted[0]) == 1
    out = softdec.verify(logits, torch.tensor([[2]]), method="typical", posterior_threshold=0.5,
                         posterior_alpha=0.01, top_k=2, seed=1)
    assert int(out.num_accepted[0]) == 0   # filtered out: p = 0


@pytest.mark.parametrize("kind", KINDS)
def test_relaxed_delta_zero_equals_exact(kind):
    B, K, V = 128, 4, 200
    lg, d, dp = _case(B, K, V, kind)
    seeds = torch.arange(B) + 100
    a = softdec.verify(lg, d, draft_probs=dp, method="relaxed", neighbours=_neighbours(V, 8), delta=0.0, seed=seeds)
    b = softdec.verify(lg, d, draft_probs=dp, method="exact", seed=seeds)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.num_accepted, b.num_accepted)


def test_relaxed_neighbour_mass_hand_made():
    # p = [0.05, 0.9, 0.05]; draft x = 0 one-hot; neighbours[0] = [2, 1]: A(0) = {2} (0.05 <= 0.1;
    # adding 1 would exceed), p~(0) = 0.1. Accept iff u < 0.1, the residual excludes token 2.
    p = torch.tensor([0.05, 0.9, 0.05], dtype=torch.float64)
    N = 20000
    logits = p.log().float().expand(N, 2, 3).contiguous()
    nb = torch.tensor([[2, 1], [0, 2], [0, 1]])
    seeds = torch.arange(N)
    out = softdec.verify(logits, torch.zeros(N, 1, dtype=torch.long), method="relaxed", neighbours=nb,
                         delta=0.1, seed=seeds)
    u = softdec.philox_uniform((N, 2), seeds, 0)[:, 0]
    assert torch.equal(out.num_accepted == 1, u < 0.1)
    rejected = out.num_accepted == 0
    assert bool((out.tokens[rejected, 0] == 1).all())   # residual max(0, p - q) without A(0) = {token 1}


def test_neighbour_repeats_and_padding_are_skipped():
    p = torch.tensor([0.02, 0.9, 0.03, 0.05], dtype=torch.float64)
    N = 5000
    logits = p.log().float().expand(N, 2, 4).contiguous()
    nb = torch.tensor([[-1, 0, 2, 2, 3], [0, 2, 3, -1, -1], [0, 1, 3, -1, -1], [0, 1, 2, -1, -1]])
    seeds = torch.arange(N)
    out = softdec.verify(logits, torch.zeros(N, 1, dtype=torch.long), method="relaxed", neighbours=nb,
                         delta=0.08, seed=seeds)
    want = ref.verify(logits.double(), torch.zeros(N, 1, dtype=torch.long), method="relaxed",
                      neighbours=nb, delta=0.08, seed=seeds)
    assert torch.equal(out.tokens, want.tokens)
    u = softdec.philox_uniform((N, 2), seeds, 0)[:, 0]
    assert torch.equal(out.num_accepted == 1, u < 0.02 + 0.03 + 0.05 - 1e-7)  # A(0) = {2, 3}


# ---------------------------------------------------------------------------- soft method

def _target_soft_tokens(lg, k, **filt):
    """The kernel's own target soft token at every position (num_draft = 0 at each position)."""
    B, K1, V = lg.shape
    ids, ws = [], []
    dummy = (torch.zeros(B, 0, k, dtype=torch.long), torch.zeros(B, 0, k))
    for j in range(K1):
        out = softdec.verify(lg[:, j:j + 1].contiguous(), None, draft_probs=dummy, method="soft", **filt)
        ids.append(out.soft_ids)
        ws.append(out.soft_weights)
    return torch.stack(ids, 1), torch.stack(ws, 1)


@pytest.mark.parametrize("filt", [dict(), dict(temperature=0.6, top_p=0.95, min_p=0.001), dict(top_k=3)])
def test_soft_token_matches_soft_mixture_filtering(filt):
    B, V, k = 8, 1000, 6
    lg = torch.randn(B, 1, V) * 3
    ids, w = _target_soft_tokens(lg, k, **filt)
    rid, rw, valid = ref.verify_soft_token(lg[:, 0].double(), k, **filt)
    assert bool(valid.all())
    assert torch.equal(ids[:, 0], rid)
    torch.testing.assert_close(w[:, 0].double(), rw, atol=1e-6, rtol=1e-5)
    assert bool((w[:, 0, :-1] >= w[:, 0, 1:]).all())      # sorted by weight, descending


def test_soft_accepts_identical_rejects_first_far_position():
    B, K, V, k = 16, 4, 500, 5
    lg = torch.randn(B, K + 1, V) * 3
    ids, w = _target_soft_tokens(lg, k, temperature=0.8)
    # identical soft tokens at delta = 0: everything accepted, bonus soft token = target's at K
    out = softdec.verify(lg, None, draft_probs=(ids[:, :K].contiguous(), w[:, :K].contiguous()),
                         method="soft", delta=0.0, temperature=0.8)
    assert bool((out.num_accepted == K).all())
    assert torch.equal(out.soft_ids, ids[:, K]) and torch.equal(out.soft_weights, w[:, K])
    assert torch.equal(out.tokens[:, :K], ids[:, :K, 0]) and torch.equal(out.tokens[:, K], ids[:, K, 0])
    # perturb position 2: move 0.3 of mass from the top entry to a new id -> TV = 0.3 there
    dids, dw = ids[:, :K].clone(), w[:, :K].clone()
    shift = torch.minimum(dw[:, 2, 0], torch.tensor(0.3))
    dw[:, 2, 0] -= shift
    dw[:, 2, -1] = dw[:, 2, -1] + shift
    dids[:, 2, -1] = (ids[:, 2, :].max(-1).values + 1) % V   # an id outside the target's support...
    outside = ~(dids[:, 2, -1:] == ids[:, 2]).any(-1)
    for delta, want_acc in ((0.0, 2), (0.1, 2), (0.35, K)):
        out = softdec.verify(lg, None, draft_probs=(dids, dw), method="soft", delta=delta, temperature=0.8)
        sel = outside & (w[:, 2, -1] == 0)   # rows where the TV is exactly the moved mass
        assert bool((out.num_accepted[sel] == want_acc).all()), delta
        stop = out.num_accepted[sel]
        assert torch.equal(out.soft_ids[sel], ids[sel, stop])
        assert torch.equal(out.soft_weights[sel], w[sel, stop])


def test_soft_matches_reference_and_tv():
    B, K, V, k = 32, 3, 400, 4
    lg = torch.randn(B, K + 1, V) * 2
    g = torch.Generator().manual_seed(5)
    sid = torch.randint(0, V, (B, K, k), generator=g)
    sw = torch.softmax(torch.randn(B, K, k, generator=g), -1)
    # make some drafts close to the target's soft token
    tids, tw = _target_soft_tokens(lg, k)
    close = torch.rand(B, K, generator=g) < 0.7
    sid = torch.where(close[..., None], tids[:, :K], sid)
    sw = torch.where(close[..., None], 0.9 * tw[:, :K] + 0.1 * sw, sw)
    sw = sw / sw.sum(-1, keepdim=True)
    for delta in (0.05, 0.2):
        out = softdec.verify(lg, None, draft_probs=(sid, sw), method="soft", delta=delta)
        want = ref.verify(lg.double(), None, draft_probs=(sid, sw), method="soft", delta=delta)
        assert torch.equal(out.num_accepted, want.num_accepted)
        assert torch.equal(out.tokens, want.tokens)
        assert torch.equal(out.soft_ids, want.soft_ids)
        torch.testing.assert_close(out.soft_weights, want.soft_weights, atol=1e-6, rtol=1e-5)


def test_soft_invalid_row_and_draft_ids_given():
    B, K, V, k = 3, 2, 50, 3
    lg = torch.randn(B, K + 1, V)
    lg[1, 0, 4] = float("nan")
    tids, tw = _target_soft_tokens(lg.nan_to_num(0.0), k)
    out = softdec.verify(lg, tids[:, :K, 1], draft_probs=(tids[:, :K].contiguous(), tw[:, :K].contiguous()),
                         method="soft", delta=0.0)
    assert int(out.num_accepted[1]) == 0 and int(out.tokens[1, 0]) == -1
    assert bool((out.soft_weights[1] == 0).all())
    assert torch.equal(out.tokens[0, :K], tids[0, :K, 1])   # given draft ids are what is emitted


# ---------------------------------------------------------------------------- RNG layout, seeds, batches

def test_rng_layout_acceptance_and_bonus_streams():
    B, V = 200, 64
    lg = torch.randn(B, 2, V)
    seeds = torch.arange(B) * 3 + 1
    x = torch.randint(0, V, (B, 1))
    out = softdec.verify(lg, x, seed=seeds, offset=10)
    p = torch.softmax(lg[:, 0].double(), -1)
    u = softdec.philox_uniform((B, 1), seeds, 10)[:, 0].double()
    assert torch.equal(out.num_accepted == 1, u < p.gather(1, x)[:, 0])
    # bonus draw at position 1 = exponential race on stream offset + 2
    acc = out.num_accepted == 1
    p1 = torch.softmax(lg[:, 1].double(), -1)
    e = -torch.log(softdec.philox_uniform((B, V), seeds, 12).double())
    assert torch.equal(out.tokens[acc, 1], (p1 / e).argmax(-1)[acc])
    # correction on rejection: race on stream offset + 1 over p with x removed
    r = p.scatter(1, x, 0.0)
    e0 = -torch.log(softdec.philox_uniform((B, V), seeds, 11).double())
    assert torch.equal(out.tokens[~acc, 0], (r / e0).argmax(-1)[~acc])


def test_same_seed_and_batch_invariance(device):
    B, K, V = 12, 3, 700
    for kind in KINDS:
        lg, d, dp = _case(B, K, V, kind, device=device)
        seeds = torch.arange(B, device=device) + 40
        offs = torch.arange(B, device=device) * 5
        full = softdec.verify(lg, d, draft_probs=dp, seed=seeds, offset=offs)
        again = softdec.verify(lg, d, draft_probs=dp, seed=seeds, offset=offs)
        assert torch.equal(full.tokens, again.tokens)
        for b in (0, 5, 11):
            sub = dp if dp is None else (tuple(t[b:b + 1] for t in dp) if isinstance(dp, tuple) else dp[b:b + 1])
            one = softdec.verify(lg[b:b + 1], d[b:b + 1], draft_probs=sub, seed=seeds[b:b + 1],
                                 offset=offs[b:b + 1])
            assert torch.equal(one.tokens[0], full.tokens[b])
        perm = torch.randperm(B, generator=torch.Generator().manual_seed(0)).to(device)
        subp = dp if dp is None else (tuple(t[perm] for t in dp) if isinstance(dp, tuple) else dp[perm])
        pm = softdec.verify(lg[perm], d[perm], draft_probs=subp, seed=seeds[perm], offset=offs[perm])
        assert torch.equal(pm.tokens, full.tokens[perm])


def test_generator_and_strided_logits():
    B, K, V = 4, 2, 100
    big = torch.randn(B, K + 1, 2 * V)
    lg = big[:, :, :V]                       # non-contiguous rows, last dim contiguous
    d = torch.randint(0, V, (B, K))
    a = softdec.verify(lg, d, generator=torch.Generator().manual_seed(1))
    b = softdec.verify(lg.contiguous(), d, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.tokens, b.tokens)


def test_nan_and_inf_rows_are_documented_results():
    B, K, V = 4, 3, 30
    lg = torch.randn(B, K + 1, V)
    d = lg[:, :K].argmax(-1)                 # accepted with high probability at T = 0
    lg[0, 0, 3] = float("nan")
    lg[1, 2, :] = -float("inf")
    lg[2, 1, 7] = float("inf")
    out = softdec.verify(lg, d, temperature=0.0, seed=0)
    assert out.tokens[0].tolist() == [-1] * (K + 1) and int(out.num_accepted[0]) == 0
    assert int(out.num_accepted[1]) == 2 and out.tokens[1, 2:].tolist() == [-1, -1]
    assert int(out.num_accepted[2]) == 1 and out.tokens[2, 1:].tolist() == [-1] * K
    assert int(out.num_accepted[3]) == K and int(out.tokens[3, K]) == int(lg[3, K].argmax())


def test_empty_batch_and_zero_drafts():
    out = softdec.verify(torch.randn(0, 3, 10), torch.zeros(0, 2, dtype=torch.long), seed=0)
    assert out.tokens.shape == (0, 3) and out.num_accepted.shape == (0,)
    lg = torch.randn(3, 1, 10)
    out = softdec.verify(lg, torch.zeros(3, 0, dtype=torch.long), seed=torch.arange(3))
    assert bool((out.num_accepted == 0).all()) and out.tokens.shape == (3, 1)
    e = -torch.log(softdec.philox_uniform((3, 10), torch.arange(3), 1).double())
    assert torch.equal(out.tokens[:, 0], (torch.softmax(lg[:, 0].double(), -1) / e).argmax(-1))


# ---------------------------------------------------------------------------- FlashInfer wrapper

def test_chain_speculative_sampling_matches_reference():
    B, K, V = 16, 4, 64
    q = torch.softmax(torch.randn(B, K, V), -1)
    p = torch.softmax(torch.randn(B, K + 1, V), -1)
    ids = torch.multinomial(q.reshape(-1, V), 1).reshape(B, K).int()
    seeds = torch.arange(B)
    out, acc, emit = softdec.chain_speculative_sampling(q, ids, p, seed=seeds)
    rout, racc, remit = ref.chain_speculative_sampling(q, ids, p, seed=seeds)
    assert out.dtype == torch.int32 and out.shape == (B, K + 1)
    assert torch.equal(out, rout) and torch.equal(acc, racc) and torch.equal(emit, remit)
    assert bool((acc >= emit).all()) and bool((emit <= K).all())
    for b in range(B):
        assert bool((out[b, int(emit[b]) + 1:] == -1).all())
    # FlashInfer's counters accumulate in place
    ca = torch.full((B,), 10, dtype=torch.int32)
    ce = torch.full((B,), 20, dtype=torch.int32)
    _, a2, e2 = softdec.chain_speculative_sampling(q, ids, p, ca, ce, seed=seeds)
    assert a2 is ca and torch.equal(ca, acc + 10) and torch.equal(ce, emit + 20)


# ---------------------------------------------------------------------------- bad input

def test_bad_input_messages():
    B, K, V = 2, 3, 10
    lg = torch.randn(B, K + 1, V)
    d = torch.randint(0, V, (B, K))
    with pytest.raises(ValueError, match=r"draft_ids must have shape \(batch, K\) = \(2, 3\) to match target_logits \(2, 4, 10\) \(K \+ 1 = 4 positions\), got \(2, 4\)"):
        softdec.verify(lg, torch.zeros(B, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"draft_ids must lie in \[0, 10\) \(the vocabulary of target_logits\), got 10 at \(row 1, position 2\)"):
        softdec.verify(lg, torch.tensor([[0, 1, 2], [3, 4, 10]]))
    with pytest.raises(ValueError, match=r"draft_ids must lie in \[0, 10\).*got -1 at \(row 0, position 0\)"):
        softdec.verify(lg, torch.tensor([[-1, 1, 2], [3, 4, 5]]))
    # ids past num_draft are ignored (padding)
    softdec.verify(lg, torch.tensor([[0, 1, -1], [3, 4, 5]]), num_draft=torch.tensor([2, 3]), seed=0)
    with pytest.raises(ValueError, match=r"num_draft must be in \[0, 3\], got 4"):
        softdec.verify(lg, d, num_draft=4)
    with pytest.raises(ValueError, match=r"num_draft must be in \[0, 3\], got 5 at row 1"):
        softdec.verify(lg, d, num_draft=torch.tensor([1, 5]))
    with pytest.raises(ValueError, match=r"draft_probs must have shape \(batch, K, vocab\) = \(2, 3, 10\) to match target_logits \(2, 4, 10\), got \(2, 4, 10\)"):
        softdec.verify(lg, d, draft_probs=torch.rand(B, 4, V))
    sid = torch.stack([d, (d + 1) % V], -1)
    with pytest.raises(ValueError, match=r"draft_probs weights must sum to 1 \(within 0.001\) at every drafted position, got 0.9 at \(row 0, position 0\)"):
        softdec.verify(lg, d, draft_probs=(sid, torch.tensor([0.5, 0.4]).expand(B, K, 2).contiguous()))
    with pytest.raises(ValueError, match=r"draft_probs weights must be finite and non-negative"):
        softdec.verify(lg, d, draft_probs=(sid, torch.tensor([1.5, -0.5]).expand(B, K, 2).contiguous()))
    with pytest.raises(ValueError, match=r"draft_ids\[0, 0\] = .* must be one of the sparse draft's ids at that position"):
        softdec.verify(lg, d, draft_probs=((sid + 2) % V, torch.full((B, K, 2), 0.5)))
    with pytest.raises(ValueError, match=r"draft_probs ids must lie in \[0, 10\), got 12"):
        bad = sid.clone()
        bad[0, 0, 1] = 12
        softdec.verify(lg, d, draft_probs=(bad, torch.full((B, K, 2), 0.5)))
    with pytest.raises(ValueError, match=r"draft_probs ids must have shape \(batch, K, k\) = \(2, 3, k >= 1\)"):
        softdec.verify(lg, d, draft_probs=(sid[:, :2], torch.full((B, 2, 2), 0.5)))
    with pytest.raises(ValueError, match=r"method must be one of \('exact', 'greedy', 'typical', 'relaxed', 'soft'\), got 'fast'"):
        softdec.verify(lg, d, method="fast")
    with pytest.raises(ValueError, match=r"method 'relaxed' needs neighbours"):
        softdec.verify(lg, d, method="relaxed")
    with pytest.raises(ValueError, match=r"neighbours must have one row per vocabulary entry \(10\), got shape \(9, 2\)"):
        softdec.verify(lg, d, method="relaxed", neighbours=torch.zeros(9, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"neighbours must lie in \[-1, 10\)"):
        softdec.verify(lg, d, method="relaxed", neighbours=torch.full((V, 2), 11))
    with pytest.raises(ValueError, match=r"method 'soft' needs sparse draft_probs"):
        softdec.verify(lg, d, method="soft")
    with pytest.raises(ValueError, match=r"draft_ids is required for method 'exact'"):
        softdec.verify(lg, None)
    with pytest.raises(ValueError, match=r"top_k must be at most the soft draft's k \(2\)"):
        softdec.verify(lg, None, draft_probs=(sid, torch.full((B, K, 2), 0.5)), method="soft", top_k=5)
    with pytest.raises(ValueError, match=r"target_logits must be a 3-D tensor \(batch, K\+1, vocab\), got shape \(2, 10\)"):
        softdec.verify(lg[:, 0], d)
    with pytest.raises(ValueError, match=r"target_logits must have dtype in \(float32, bfloat16, float16\), got int64"):
        softdec.verify(lg.long(), d)
    with pytest.raises(ValueError, match=r"temperature must be >= 0.0, got -1.0"):
        softdec.verify(lg, d, temperature=-1.0)
    with pytest.raises(ValueError, match=r"top_p must be in \[0.0, 1.0\], got 1.5"):
        softdec.verify(lg, d, top_p=1.5)
    with pytest.raises(ValueError, match=r"delta must be >= 0, got -0.1"):
        softdec.verify(lg, d, delta=-0.1)
    with pytest.raises(ValueError, match=r"draft_ids must have dtype in \(int64, int32\), got float32"):
        softdec.verify(lg, d.float())
    with pytest.raises(ValueError, match=r"draft_probs must have dtype in \(float32, bfloat16, float16\), got float64"):
        softdec.verify(lg, d, draft_probs=torch.rand(B, K, V, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"top_k must be >= 0, got -2"):
        softdec.verify(lg, d, top_k=-2)
    with pytest.raises(ValueError, match=r"target_logits must have a non-empty vocabulary, got shape \(2, 4, 0\)"):
        softdec.verify(torch.zeros(B, K + 1, 0), d)
    # top_k > V is "off", like every softdec filter
    a = softdec.verify(lg, d, top_k=V + 5, seed=1)
    b = softdec.verify(lg, d, seed=1)
    assert torch.equal(a.tokens, b.tokens)


def test_native_op_rejects_bad_input():
    B, K, V = 2, 3, 10
    lg = torch.randn(B, K + 1, V)
    f32 = lambda v: torch.full((B,), v)  # noqa: E731
    i64 = lambda v: torch.full((B,), v, dtype=torch.long)  # noqa: E731
    args = lambda d, n: (lg, d, n, None, None, None, None, 0, f32(1.0), i64(0), f32(1.0), f32(0.0),  # noqa: E731
                         0.09, 0.3, 0.1, i64(0), i64(0))
    with pytest.raises(ValueError, match=r"draft_ids must lie in \[0, 10\) \(the vocabulary of target_logits\), got 99 at \(row 0, position 1\)"):
        torch.ops.softdec.verify(*args(torch.tensor([[0, 99, 1], [1, 2, 3]]), i64(3)))
    with pytest.raises(ValueError, match=r"num_draft must be in \[0, 3\] \(K = draft_ids.size\(1\)\), got 7 at row 0"):
        torch.ops.softdec.verify(*args(torch.zeros(B, K, dtype=torch.long), i64(7)))
    with pytest.raises(ValueError, match=r"draft_ids must have shape \(2, 3\) to match target_logits"):
        torch.ops.softdec.verify(*args(torch.zeros(B, 2, dtype=torch.long), i64(2)))


# ---------------------------------------------------------------------------- opcheck, compile

def _op_args(method=0, kind="dense"):
    B, K, V = 3, 2, 33
    lg, d, dp = _case(B, K, V, kind)
    f32 = lambda v: torch.full((B,), v)  # noqa: E731
    i64 = lambda v: torch.full((B,), v, dtype=torch.long)  # noqa: E731
    dense = dp if kind == "dense" else None
    sid, sw = (dp if kind == "sparse" else (None, None))
    nb = _neighbours(V) if method == 3 else None
    return (lg, d, i64(K), dense, sid, sw, nb, method, f32(1.0), i64(0), f32(1.0), f32(0.0),
            0.09, 0.3, 0.1, torch.arange(B), i64(0))


@pytest.mark.parametrize("method,kind", [(0, "dense"), (0, "sparse"), (0, "onehot"), (1, "onehot"),
                                         (2, "dense"), (3, "onehot"), (4, "sparse")])
def test_opcheck(method, kind):
    torch.library.opcheck(torch.ops.softdec.verify, _op_args(method, kind))


def test_torch_compile_fullgraph():
    B, K, V = 4, 3, 50
    lg, d, dp = _case(B, K, V, "sparse")
    seeds = torch.arange(B)

    def f(lg, d, i, w, s):
        out = softdec.verify(lg, d, draft_probs=(i, w), seed=s, top_k=torch.full((B,), 10))
        return out.tokens, out.num_accepted

    cf = torch.compile(f, fullgraph=True)
    a = cf(lg, d, dp[0], dp[1], seeds)
    b = f(lg, d, dp[0], dp[1], seeds)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])

    def g(lg, i, w):
        out = softdec.verify(lg, None, draft_probs=(i, w), method="soft", delta=0.2)
        return out.tokens, out.soft_ids, out.soft_weights

    cg = torch.compile(g, fullgraph=True)
    a = cg(lg, dp[0], dp[1])
    b = g(lg, dp[0], dp[1])
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("filt", [dict(top_k=5), dict(top_k=1500, top_p=0.7), dict(top_p=0.6),
                                  dict(top_k=40, min_p=0.3), dict(top_k=3000)])
def test_ties_and_large_top_k_match_reference(kind, filt):
    # quantised logits: many ties at every cut; top_k 1500 takes filter.h's radix-selection path
    B, K, V = 24, 3, 3001
    g = torch.Generator().manual_seed(11)
    lg = torch.randint(-4, 5, (B, K + 1, V), generator=g).float()
    _, d, dp = _case(B, K, V, kind, seed=4)
    seeds = torch.arange(B) + 9
    got = softdec.verify(lg, d, draft_probs=dp, seed=seeds, **filt)
    want = ref.verify(lg.double(), d, draft_probs=_ref_args(dp), seed=seeds, **filt)
    assert torch.equal(got.tokens, want.tokens)
    assert torch.equal(got.num_accepted, want.num_accepted)


@pytest.mark.parametrize("filt", [dict(), dict(temperature=0.7, top_k=50), dict(top_p=0.9, min_p=0.02)])
def test_bonus_draw_is_the_exponential_race_on_the_documented_stream(filt):
    # the bonus draw at position j is the exponential race argmax p_i / E_i over the filtered
    # target distribution, E_i = -log u_i, u_i element i of the (seed, offset + 1 + j) stream
    B, V = 500, 1000
    lg = torch.randn(B, 1, V) * 2
    seeds = torch.arange(B) * 31 + 7
    out = softdec.verify(lg, torch.zeros(B, 0, dtype=torch.long), seed=seeds, offset=20, **filt)
    probs, _ = ref.filter_probs(lg[:, 0].double(), filt.get("temperature", 1.0), filt.get("top_k", 0),
                                filt.get("top_p", 1.0), filt.get("min_p", 0.0))
    e = -torch.log(softdec.philox_uniform((B, V), seeds, torch.full((B,), 21)).double())
    want = torch.where(probs > 0, probs.log() - e.log(), torch.full_like(probs, -float("inf"))).argmax(-1)
    assert torch.equal(out.tokens[:, 0], want)


# ---------------------------------------------------------------- CUDA == CPU (run where a GPU is present)

@pytest.mark.cuda
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("filt", [dict(), dict(temperature=0.7, top_k=20, top_p=0.9), dict(min_p=0.05),
                                  dict(temperature=0.0)])
def test_cuda_matches_cpu(method, kind, dtype, filt):
    # verify_kernel against the CPU backend on the same inputs and Philox stream: every method and draft
    # kind, the parallel filter path and the serial top-k / top-p selection (its histograms in shared memory)
    B, K, V = 24, 4, 3001
    lg, d, dp = _case(B, K, V, kind, dtype=dtype, seed=10 * METHODS.index(method) + KINDS.index(kind))
    nd = torch.randint(0, K + 1, (B,), generator=torch.Generator().manual_seed(4))
    extra = dict(neighbours=_neighbours(V), delta=0.1) if method == "relaxed" else {}
    kw = dict(num_draft=nd, method=method, seed=torch.arange(B) * 3 + 1, offset=5, **filt, **extra)
    cuda = lambda x: x.cuda() if isinstance(x, torch.Tensor) else x  # noqa: E731
    want = softdec.verify(lg, d, draft_probs=dp, **kw)
    got = softdec.verify(lg.cuda(), d.cuda(), draft_probs=tuple(map(cuda, dp)) if isinstance(dp, tuple) else cuda(dp),
                         **{a: cuda(v) for a, v in kw.items()})
    assert torch.equal(got.tokens.cpu(), want.tokens)
    assert torch.equal(got.num_accepted.cpu(), want.num_accepted)


@pytest.mark.cuda
@pytest.mark.parametrize("filt", [dict(), dict(temperature=0.8, top_k=3), dict(top_p=0.7)])
def test_cuda_soft_matches_cpu(filt):
    B, K, V, k = 16, 3, 700, 4
    g = torch.Generator().manual_seed(9)
    lg = torch.randn(B, K + 1, V, generator=g) * 2
    tids, tw = _target_soft_tokens(lg, k)
    sid = torch.where((torch.rand(B, K, 1, generator=g) < 0.6), tids[:, :K], torch.randint(0, V, (B, K, k), generator=g))
    sw = torch.softmax(torch.randn(B, K, k, generator=g), -1)
    want = softdec.verify(lg, None, draft_probs=(sid, sw), method="soft", delta=0.2, **filt)
    got = softdec.verify(lg.cuda(), None, draft_probs=(sid.cuda(), sw.cuda()), method="soft", delta=0.2, **filt)
    assert torch.equal(got.num_accepted.cpu(), want.num_accepted)
    assert torch.equal(got.tokens.cpu(), want.tokens)
    assert torch.equal(got.soft_ids.cpu(), want.soft_ids)
    torch.testing.assert_close(got.soft_weights.cpu(), want.soft_weights, atol=1e-6, rtol=1e-5)
