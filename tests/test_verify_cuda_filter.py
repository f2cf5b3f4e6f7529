"""CUDA verify / verify_tree with top-k / top-p / min-p against the CPU backend (issue 17, item 1).

The CUDA row filter is block-wide (csrc/cuda/row_filter.cuh): the CPU's candidate rule for
0 < top_k <= 1024 (sorted candidates, then filter.h's top_p_prefix / finish_from_sorted: bit-exact)
and a block radix selection for top-p alone or top_k > 1024. These tests hit every branch: small V
and V = 151936, B = 1 and 64, ties at the top-k and top-p cuts (integer logits), top_k 1 / 50 / 1024
/ 1025 / 3000, top_p 0 / 0.5 / 0.9, min_p, every method. All marked cuda: skipped without a GPU.
"""
from __future__ import annotations

import pytest
import torch

import softdec
from test_verify import METHODS, _case, _neighbours

pytestmark = pytest.mark.cuda

FILTERS = [
    dict(temperature=0.7, top_k=50),                         # candidate rule, top-k only
    dict(temperature=0.9, top_k=50, top_p=0.9),              # candidate rule + top-p
    dict(top_k=1024, top_p=0.8, min_p=0.01),                 # the candidate rule's largest k
    dict(top_k=1025, top_p=0.8),                             # radix rule: count select then mass select
    dict(temperature=1.3, top_k=3000),                       # radix rule, top-k only
    dict(top_p=0.9),                                         # radix rule, top-p only (the mass select)
    dict(top_p=0.5, min_p=0.05),                             # radix top-p with min-p
    dict(top_p=0.0),                                         # top_p = 0: the top token
    dict(top_k=1, top_p=0.3),                                # one candidate
    dict(min_p=0.1),                                         # no cut, min-p only (unchanged path)
]


def _cu(x):
    if isinstance(x, tuple):
        return tuple(_cu(t) for t in x)
    return x.cuda() if isinstance(x, torch.Tensor) else x


def _tie_logits(B, K1, V, seed, dtype):
    # few distinct values: long runs of ties at every cut (top-k, top-p, the top token)
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-6, 3, (B, K1, V), generator=g).float().div(2).to(dtype)


def _check_verify(lg, d, dp, kw):
    want = softdec.verify(lg, d, draft_probs=dp, **kw)
    got = softdec.verify(_cu(lg), _cu(d), draft_probs=_cu(dp), **{a: _cu(v) for a, v in kw.items()})
    assert torch.equal(got.tokens.cpu(), want.tokens)
    assert torch.equal(got.num_accepted.cpu(), want.num_accepted)
    if kw.get("method") == "soft":
        assert torch.equal(got.soft_ids.cpu(), want.soft_ids)
        torch.testing.assert_close(got.soft_weights.cpu(), want.soft_weights, atol=1e-6, rtol=1e-5)
    return got


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("filt", FILTERS, ids=lambda f: "-".join(f"{k}{v}" for k, v in f.items()))
@pytest.mark.parametrize("B", [1, 64])
@pytest.mark.parametrize("ties", [False, True])
def test_filtered_verify_matches_cpu(method, filt, B, ties):
    K, V = 3, 5003
    dtype = torch.float32
    kind = "dense" if method == "exact" else "onehot"
    lg, d, dp = _case(B, K, V, kind, dtype=dtype, seed=METHODS.index(method) + 7 * B)
    if ties:
        lg = _tie_logits(B, K + 1, V, seed=B, dtype=dtype)
    nd = torch.randint(0, K + 1, (B,), generator=torch.Generator().manual_seed(B))
    extra = dict(neighbours=_neighbours(V), delta=0.1) if method == "relaxed" else {}
    kw = dict(num_draft=nd, method=method, seed=torch.arange(B) * 7 + 3, offset=11, **filt, **extra)
    _check_verify(lg, d, dp, kw)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("filt", [FILTERS[1], FILTERS[3], FILTERS[5], FILTERS[6]],
                         ids=["k50-p0.9", "k1025-p0.8", "p0.9", "p0.5-minp"])
@pytest.mark.parametrize("B", [1, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_filtered_verify_matches_cpu_large_vocab(method, filt, B, dtype):
    # Qwen-sized vocabulary: the radix passes, the tie scans over 16 warp segments, 16-byte loads
    K, V = 2, 151936
    kind = "dense" if method == "exact" else "onehot"
    lg, d, dp = _case(B, K, V, kind, dtype=dtype, seed=3 + METHODS.index(method))
    nd = torch.full((B,), K, dtype=torch.long)
    extra = dict(neighbours=_neighbours(V), delta=0.1) if method == "relaxed" else {}
    kw = dict(num_draft=nd, method=method, seed=torch.arange(B) + 1, offset=2, **filt, **extra)
    _check_verify(lg, d, dp, kw)


@pytest.mark.parametrize("filt", [dict(), dict(temperature=0.8, top_k=3), dict(top_p=0.7),
                                  dict(top_p=0.9, min_p=0.05), dict(temperature=0.5, top_k=2, top_p=0.5)])
@pytest.mark.parametrize("B", [1, 64])
@pytest.mark.parametrize("V", [700, 151936])
def test_soft_verify_matches_cpu(filt, B, V):
    # method "soft": top_k is min(top_k, k) (always the candidate rule); the soft token and its weights
    K, k = 2, 4
    g = torch.Generator().manual_seed(V + B)
    lg = torch.randn(B, K + 1, V, generator=g) * 2
    sid = torch.randint(0, V, (B, K, k), generator=g)
    sid[:, :, 0] = lg[:, :K].argmax(-1)
    sw = torch.softmax(torch.randn(B, K, k, generator=g) * 3, -1)
    kw = dict(method="soft", delta=0.3, **filt)
    _check_verify(lg, None, (sid, sw), kw)


def test_greedy_ignores_the_filter():
    # method "greedy" is the argmax whatever the filter (the kernel skips the filter entirely)
    B, K, V = 64, 3, 151936
    lg, d, _ = _case(B, K, V, "onehot", seed=5)
    d[::2] = lg[::2, :K].argmax(-1)
    plain = softdec.verify(_cu(lg), _cu(d), method="greedy")
    for filt in FILTERS:
        got = softdec.verify(_cu(lg), _cu(d), method="greedy", **filt)
        assert torch.equal(got.tokens, plain.tokens)
        assert torch.equal(got.num_accepted, plain.num_accepted)


def test_filtered_verify_is_deterministic():
    # the radix rule's mass sums are in a fixed order: repeated calls give identical tokens
    B, K, V = 64, 3, 151936
    lg, d, dp = _case(B, K, V, "dense", seed=8)
    kw = dict(method="exact", top_p=0.9, seed=torch.arange(B).cuda(), num_draft=torch.full((B,), K).cuda())
    runs = [softdec.verify(_cu(lg), _cu(d), draft_probs=_cu(dp), **kw) for _ in range(3)]
    for r in runs[1:]:
        assert torch.equal(r.tokens, runs[0].tokens)


# ---------------------------------------------------------------- verify_tree

@pytest.mark.parametrize("method", ["exact", "greedy", "typical"])
@pytest.mark.parametrize("filt", FILTERS, ids=lambda f: "-".join(f"{k}{v}" for k, v in f.items()))
@pytest.mark.parametrize("B,V", [(1, 5003), (64, 5003), (4, 151936)])
@pytest.mark.parametrize("ties", [False, True])
def test_filtered_verify_tree_matches_cpu(method, filt, B, V, ties):
    N = 7
    g = torch.Generator().manual_seed(B + V)
    par = torch.tensor([-1, 0, 0, 1, 1, 2, 3]).expand(B, N).contiguous()
    lg = (torch.randn(B, N, V, generator=g) * 2) if not ties else _tie_logits(B, N, V, seed=B, dtype=torch.float32)
    lgp = lg.gather(1, par.clamp(min=0)[..., None].expand(B, N, V))
    tokens = torch.where(torch.rand(B, N, generator=g) < 0.6, lgp.argmax(-1), torch.randint(0, V, (B, N), generator=g))
    # top_k 1025 and 3000 are CPU candidate / radix rules in verify_tree (kSmallK 2048); the kept set is the same
    kw = dict(method=method, seed=torch.arange(B) * 5 + 1, offset=3, **filt)
    want = softdec.verify_tree(lg, tokens, par, **kw)
    got = softdec.verify_tree(_cu(lg), _cu(tokens), _cu(par), **{a: _cu(v) for a, v in kw.items()})
    assert torch.equal(got.tokens.cpu(), want.tokens)
    assert torch.equal(got.nodes.cpu(), want.nodes)
    assert torch.equal(got.num_accepted.cpu(), want.num_accepted)
