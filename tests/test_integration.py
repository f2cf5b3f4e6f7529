"""Cross-family contracts: the ops written per family agree where DESIGN says they must."""

from __future__ import annotations

import pytest
import torch

import softdec


def _soft(logits, k, temperature, top_p, min_p):
    st = softdec.soft_mixture(logits, torch.zeros(logits.shape[-1], 4), top_k=k, temperature=temperature,
                              top_p=top_p, min_p=min_p)
    return st.ids, st.weights


@pytest.mark.parametrize("temperature,top_p,min_p", [(1.0, 1.0, 0.0), (0.6, 0.95, 0.001), (1.3, 0.8, 0.05)])
@pytest.mark.parametrize("k", [1, 5, 16])
def test_verify_soft_returns_soft_mixture_token(k, temperature, top_p, min_p):
    """DESIGN: the target's soft token in verify(method="soft") is soft_mixture's
    filtering of target_logits; drafts equal to it are accepted at delta = 0, and
    the token returned at the first rejection equals soft_mixture's."""
    g = torch.Generator().manual_seed(k)
    B, K, V = 5, 3, 64
    tl = torch.randn(B, K + 1, V, generator=g) * 3
    ids = torch.empty(B, K, k, dtype=torch.int64)
    w = torch.empty(B, K, k)
    for j in range(K):
        ids[:, j], w[:, j] = _soft(tl[:, j], k, temperature, top_p, min_p)
    kw = dict(method="soft", top_k=k, temperature=temperature, top_p=top_p, min_p=min_p, delta=0.0, seed=0)
    out = softdec.verify(tl, None, draft_probs=(ids, w), **kw)
    assert out.num_accepted.tolist() == [K] * B
    last_ids, last_w = _soft(tl[:, K], k, temperature, top_p, min_p)
    assert torch.equal(out.soft_ids, last_ids)
    torch.testing.assert_close(out.soft_weights, last_w, rtol=1e-6, atol=1e-7)

    # A draft far from the target at position 1 (its weight on the target's least likely
    # tokens) is rejected there; the returned soft token is the target's at position 1.
    if k < V // 2:
        bad_ids = ids.clone()
        bad_ids[:, 1] = torch.argsort(tl[:, 1], dim=-1)[:, :k]
        bad_w = w.clone()
        bad_w[:, 1] = 1.0 / k
        out = softdec.verify(tl, None, draft_probs=(bad_ids, bad_w), **{**kw, "delta": 0.5})
        assert out.num_accepted.tolist() == [1] * B
        want_ids, want_w = _soft(tl[:, 1], k, temperature, top_p, min_p)
        assert torch.equal(out.soft_ids, want_ids)
        torch.testing.assert_close(out.soft_weights, want_w, rtol=1e-6, atol=1e-7)


def test_sample_filtering_matches_soft_mixture_kept_set():
    """Both families apply the same filter order (top-k, top-p, min-p) with ties to the
    lower index: every token `sample` draws is in soft_mixture's kept set."""
    g = torch.Generator().manual_seed(1)
    V, R = 40, 4000
    logits = (torch.randn(1, V, generator=g) * 2).expand(R, V).contiguous()
    kw = dict(top_k=8, temperature=0.8, top_p=0.7, min_p=0.05)
    drawn = softdec.sample(logits, seed=torch.arange(R), **kw).ids
    st = softdec.soft_mixture(logits[:1], torch.zeros(V, 2), **kw)
    kept = set(st.ids[0][st.weights[0] > 0].tolist())
    assert set(drawn.tolist()) <= kept
    assert len(set(drawn.tolist())) == len(kept)  # every kept token shows up in 4000 draws


def test_gumbel_soft_mixture_and_sample_share_the_noise_stream():
    """One RNG layout: Gumbel noise of token i is element i of the row's (seed, offset)
    stream in soft_mixture and gumbel_softmax; sample's one uniform is made of elements
    0 and 1 of the same stream."""
    from softdec import reference as ref
    V = 30
    logits = torch.randn(3, V)
    seed, off = torch.tensor([5, 6, 7]), torch.tensor([0, 2, 4])
    u = softdec.philox_uniform((3, V), seed, off).double()
    gumbel = -torch.log(-torch.log(u))
    want = torch.argmax(logits.double() + gumbel, dim=-1)
    hard_ids = softdec.gumbel_softmax(logits, tau=1.0, hard=True, seed=seed, offset=off).argmax(-1)
    assert torch.equal(hard_ids, want)
    st = softdec.soft_mixture(logits, torch.zeros(V, 2), top_k=V, noise="gumbel", tau=1.0, seed=seed, offset=off)
    assert torch.equal(st.ids[:, 0], want)
    # the 53-bit uniform of sample: 27 + 26 top bits of elements 0 and 1 (float32 elements keep 23 bits)
    for r in range(3):
        u53 = ref.uniform53(int(seed[r]), int(off[r]))
        assert abs(u53 - float(u[r, 0])) < 2.0 ** -22
    assert torch.equal(softdec.sample(logits, seed=seed, offset=off).ids, ref.sample_exact(logits, seed=seed, offset=off)[0])
