"""CUDA verify(method="soft", filter_top_k=...) against the CPU backend (issue 17).

csrc/cuda/verify.cu: the max(ks, filter_top_k) best tokens by a block count selection, gather and
bitonic sort (row_filter.cuh block_top_candidates), the whole-vocabulary mass by a block pass when
filter_top_k = 0 (filter.h's exact rule: the CPU's value bit for bit), then soft::finalize_row -- the
CPU's function -- on thread 0. Ids and decisions are exact; weights within the soft tests' tolerance
(atol 1e-6, rtol 1e-5: finalize_row's exp / log are the device's and the host's math libraries). Branches: filter_top_k None / 0 / in [top_k, 256] / >= V, temperature 0,
top_p / min_p cuts, integer-valued logits (ties at every cut), -inf-heavy rows, a NaN row, a width
above 256 (fk = 0), B = 1 and 64, V = 700 and 151936, float32 and bfloat16. Marked cuda: skipped
without a GPU.
"""
from __future__ import annotations

import pytest
import torch

import softdec

pytestmark = pytest.mark.cuda

SETTINGS = [
    dict(temperature=0.6, top_p=0.95, min_p=0.001),
    dict(temperature=2.0, top_p=0.5),
    dict(temperature=1.0, top_k=4, min_p=0.05),
    dict(temperature=0.0),
    dict(temperature=0.8),
]


def _cu(x):
    if isinstance(x, tuple):
        return tuple(_cu(t) for t in x)
    return x.cuda() if isinstance(x, torch.Tensor) else x


def _logits(B, K1, V, kind, dtype, g):
    if kind == "ties":  # few distinct values: ties at the filter_top_k, top_p and top_k cuts
        x = torch.randint(-6, 3, (B, K1, V), generator=g).float().div(2)
    else:
        x = torch.randn(B, K1, V, generator=g) * 2.5
        if kind == "ninf":  # most of the row -inf: fewer finite tokens than the cap on some rows
            x[torch.rand(B, K1, V, generator=g) < 0.995] = float("-inf")
            x[:, :, 3] = 0.25
    return x.to(dtype)


def _drafts(lg, K, k, fk, settings, g):
    """Sparse drafts: the CPU target's own soft token on most positions (accepted), random elsewhere."""
    B, _, V = lg.shape
    own_i = torch.empty(B, K, k, dtype=torch.long)
    own_w = torch.empty(B, K, k)
    z = torch.zeros(B, 0, dtype=torch.long)
    for j in range(K):
        o = softdec.verify(lg[:, j:j + 1].contiguous(), z, draft_probs=(torch.zeros(B, 0, k, dtype=torch.long),
                           torch.zeros(B, 0, k)), method="soft", filter_top_k=fk, **settings)
        own_i[:, j], own_w[:, j] = o.soft_ids, o.soft_weights
    rid = torch.randint(0, V, (B, K, k), generator=g)
    rw = torch.softmax(torch.randn(B, K, k, generator=g), -1)
    mix = torch.rand(B, K, 1, generator=g) < 0.75
    did, dw = torch.where(mix, own_i, rid), torch.where(mix, own_w, rw)
    return did, dw / dw.sum(-1, keepdim=True).clamp(min=1e-30)


def _check(lg, dp, **kw):
    want = softdec.verify(lg, None, draft_probs=dp, method="soft", **kw)
    got = softdec.verify(_cu(lg), None, draft_probs=_cu(dp), method="soft", **{a: _cu(v) for a, v in kw.items()})
    assert torch.equal(got.tokens.cpu(), want.tokens)
    assert torch.equal(got.num_accepted.cpu(), want.num_accepted)
    assert torch.equal(got.soft_ids.cpu(), want.soft_ids)
    torch.testing.assert_close(got.soft_weights.cpu(), want.soft_weights, atol=1e-6, rtol=1e-5)
    return want


@pytest.mark.parametrize("fk", [None, 0, 10, 30, 256, "V"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
@pytest.mark.parametrize("B", [1, 64])
@pytest.mark.parametrize("kind", ["random", "ties", "ninf"])
def test_soft_filter_top_k_matches_cpu(fk, settings, B, kind):
    K, V, k = 3, 700, 10
    g = torch.Generator().manual_seed(B * 31 + len(kind))
    lg = _logits(B, K + 1, V, kind, torch.float32, g)
    f = V if fk == "V" else fk
    did, dw = _drafts(lg, K, k, f, settings, g)
    want = _check(lg, (did, dw), delta=0.05, filter_top_k=f, **settings)
    if kind == "random" and B == 64:
        assert 0 < int(want.num_accepted.sum()) < B * K  # both the accept and the emit paths ran


@pytest.mark.parametrize("fk", [0, 30, 256, 151936])
@pytest.mark.parametrize("B", [1, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["random", "ties"])
def test_soft_filter_top_k_large_vocab(fk, B, dtype, kind):
    # Qwen-sized rows: the radix passes over 16-byte loads, the whole-vocabulary mass pass
    K, V, k = 2, 151936, 10
    g = torch.Generator().manual_seed(B + 7)
    lg = _logits(B, K + 1, V, kind, dtype, g)
    did, dw = _drafts(lg, K, k, fk, SETTINGS[0], g)
    _check(lg, (did, dw), delta=0.05, filter_top_k=fk, **SETTINGS[0])


def test_cuda_verify_soft_filter_top_k_rows():
    # (named test_cuda_*: bench/gpu_check.sh runs it in its first test phase)
    B, K, V, k = 5, 2, 900, 8
    g = torch.Generator().manual_seed(3)
    lg = _logits(B, K + 1, V, "random", torch.float32, g)
    lg[1, 0, 17] = float("nan")       # invalid at the first position: token -1, zero soft token
    lg[3, 1, :] = float("-inf")       # no finite logit at position 1
    fk = torch.tensor([30, 0, 8, V + 3, 256])
    did, dw = _drafts(lg.nan_to_num(nan=0.0), K, k, 30, SETTINGS[0], g)
    _check(lg, (did, dw), delta=0.2, filter_top_k=fk, **SETTINGS[0])


@pytest.mark.parametrize("fk", [0, 30])
def test_cuda_verify_soft_filter_top_k_qwen(fk):
    # the first-phase check of bench/gpu_check.sh: B = 64 rows of a Qwen-sized vocabulary
    K, V, k, B = 2, 151936, 10, 64
    g = torch.Generator().manual_seed(fk + 1)
    lg = _logits(B, K + 1, V, "random", torch.float32, g)
    did, dw = _drafts(lg, K, k, fk, SETTINGS[0], g)
    _check(lg, (did, dw), delta=0.05, filter_top_k=fk, **SETTINGS[0])


@pytest.mark.parametrize("B", [1, 64])
def test_soft_filter_top_k_wide_soft_token(B):
    # ks = 300 > 256 (filter_top_k = 0: the candidates are the 300 best); top_k 0 = the full width
    K, V, k = 1, 5003, 300
    g = torch.Generator().manual_seed(B)
    lg = _logits(B, K + 1, V, "random", torch.float32, g)
    did, dw = _drafts(lg, K, k, 0, dict(temperature=1.5), g)
    _check(lg, (did, dw), delta=0.05, filter_top_k=0, temperature=1.5)
    _check(lg, (did, dw), delta=0.05, filter_top_k=V, temperature=1.5, top_p=0.7)


def test_soft_filter_top_k_deterministic():
    B, K, V, k = 64, 2, 151936, 10
    g = torch.Generator().manual_seed(5)
    lg = _cu(_logits(B, K + 1, V, "random", torch.float32, g))
    dp = _cu((torch.randint(0, V, (B, K, k), generator=g), torch.softmax(torch.randn(B, K, k, generator=g), -1)))
    runs = [softdec.verify(lg, None, draft_probs=dp, method="soft", filter_top_k=0, top_p=0.9) for _ in range(3)]
    for r in runs[1:]:
        assert torch.equal(r.soft_ids, runs[0].soft_ids)
        assert torch.equal(r.soft_weights, runs[0].soft_weights)


def test_soft_filter_top_k_too_wide_on_cuda():
    # the CUDA candidates live in the block filter's 1024-entry buffer: a wider soft token is refused
    B, K, V, k = 1, 1, 3000, 1100
    lg = torch.randn(B, K + 1, V).cuda()
    dp = (torch.randint(0, V, (B, K, k)).cuda(), torch.full((B, K, k), 1.0 / k).cuda())
    with pytest.raises((RuntimeError, ValueError), match="filter_top_k"):
        softdec.verify(lg, None, draft_probs=dp, method="soft", filter_top_k=0)
