"""CUDA sparse decode with the selection fused into scoring (csrc/cuda/sparse_attention.cu: score_select_kernel).

The fused paths (default) against the unfused kernels (SOFTDEC_DECODE_FUSED=0: scoring -> votes -> select ->
split-KV attention -> merge) bit for bit, and both against the CPU backend:
  - N = 100: one scoring block per (row, kv head): a single launch scores, selects and attends (no counter);
  - N = 5000: several scoring blocks per (row, kv head) meet at the arrival counter, the last one votes and
    selects; with budget 32 it also attends (one chunk), with 64 / 2048 the split-KV kernel follows (2 / many
    chunks, merge fused);
  - B in {1, 3, 64}, GQA groups 1 / 4 / 8 (two tokens a lane group) and 16 (one token a lane group);
  - two fused calls in a row (both counters back at 0 after a call).
The selection is checked index for index against the CPU with exact scores (quantized q and k, equal heads in
token mode: see the comment above _quantized in test_sparse_attention.py), and against the unfused CUDA path
with random (non-exact) scores too, where only the two CUDA paths must agree (same scores, same softmax
partials, same votes, same keys and tie rule). N = 32768 runs in test_sparse_attention.py's
test_cuda_decode_fused_equals_unfused_and_cpu (same kernels).
"""

from __future__ import annotations

import pytest
import torch

import softdec
from conftest import TOLS

# sink 4, window 28, page size 16: budget 32 selects at most 64 tokens (one 64-token chunk), 64 at most 96 (two
# chunks), 2048 up to the whole cache (many chunks at N = 5000)
BUDGETS = (32, 64, 2048)
KW = dict(page_size=16, sink=4, window=28, scale=1.0)


def _close(out, want, dtype):
    atol, rtol = TOLS[dtype]
    torch.testing.assert_close(out.double().cpu(), want.double().cpu(), atol=atol, rtol=rtol)


def _bits(x):
    return x.view(torch.int32 if x.dtype == torch.float32 else torch.int16)


def _decode(q, k, v, lens, fused, monkeypatch, **kw):
    monkeypatch.setenv("SOFTDEC_DECODE_FUSED", "1" if fused else "0")
    return softdec.sparse_decode_attention(q, k, v, seq_lens=lens, return_indices=True, **kw)


def _inputs(B, G, Hkv, N, d, dtype, select, exact, seed):
    g = torch.Generator().manual_seed(seed)
    if exact:  # scores are multiples of 1/4 (exact in fp32), spread small enough for the votes' exp
        q = (torch.randint(-1, 2, (B, G * Hkv, d), generator=g) / 2).to(dtype)
        k = (torch.randint(-2, 3, (B, Hkv, N, d), generator=g) / 2).to(dtype)
        if select == "token" and G > 1:
            q = q[:, ::G].repeat_interleave(G, 1)  # equal heads: votes rank and tie like the scores
    else:
        q = torch.randn(B, G * Hkv, d, generator=g).to(dtype)
        k = torch.randn(B, Hkv, N, d, generator=g).to(dtype)
    v = torch.randn(B, Hkv, N, d, generator=g).to(dtype)
    # full, cut, empty and short rows (short: every middle token selected, no vote needed)
    lens = torch.tensor([N, N - N // 3, 0, 50] * (B // 4 + 1))[:B]
    if B == 64:
        lens[4:] = torch.randint(0, N + 1, (B - 4,), generator=g)
    return q, k, v, lens


def _check(select, B, G, N, d, dtype, exact, monkeypatch, seed):
    Hkv = 2
    q, k, v, lens = _inputs(B, G, Hkv, N, d, dtype, select, exact, seed)
    qc, kc, vc, lc = q.cuda(), k.cuda(), v.cuda(), lens.cuda()
    for budget in BUDGETS:
        kw = dict(KW, budget=budget, select=select)
        fo, fi = _decode(qc, kc, vc, lc, True, monkeypatch, **kw)
        uo, ui = _decode(qc, kc, vc, lc, False, monkeypatch, **kw)
        assert torch.equal(fi, ui), f"budget {budget}: fused selection != unfused"
        assert torch.equal(_bits(fo), _bits(uo)), f"budget {budget}: fused != unfused bits"
        fo2, fi2 = _decode(qc, kc, vc, lc, True, monkeypatch, **kw)  # counters start from 0 again
        assert torch.equal(fi2, fi) and torch.equal(_bits(fo2), _bits(fo))
        assert bool((fo[lc == 0] == 0).all())
        if exact:
            want, wi = softdec.sparse_decode_attention(q, k, v, seq_lens=lens, return_indices=True, **kw)
            assert torch.equal(fi.cpu(), wi)
            _close(fo.cpu(), want, dtype)


# Each test loops over its shapes (a few seconds each in all: bench/gpu_check.sh runs every test_cuda_ test
# within one phase budget).
@pytest.mark.cuda
@pytest.mark.parametrize("N", [100, 5000])
@pytest.mark.parametrize("select", ["page", "token"])
def test_cuda_decode_score_select_fused_equals_unfused_and_cpu(select, N, monkeypatch):
    for B in (1, 3, 64):
        for G in (1, 4, 8):
            _check(select, B, G, N, 64, torch.bfloat16, True, monkeypatch, seed=1000 * G + B + N)


@pytest.mark.cuda
@pytest.mark.parametrize("select", ["page", "token"])
def test_cuda_decode_score_select_group16_and_dtypes(select, monkeypatch):
    # G = 16: the one-token-a-lane-group scoring branch (its softmax partials), d = 128
    for dtype in (torch.float32, torch.float16):
        _check(select, 3, 16, 3000, 128, dtype, True, monkeypatch, seed=16)


@pytest.mark.cuda
@pytest.mark.parametrize("select", ["page", "token"])
def test_cuda_decode_score_select_random_scores_fused_equals_unfused(select, monkeypatch):
    # random q / k: distinct heads vote with distinct softmaxes and ties are rare; only the CUDA paths are
    # compared (same scores, partials, votes and keys: the same selection and output bits)
    for N in (100, 5000):
        for G in (1, 4, 16):
            _check(select, 3, G, N, 64, torch.float32, False, monkeypatch, seed=7 * G + N)


@pytest.mark.cuda
def test_cuda_decode_score_select_vote_skipped_rows(monkeypatch):
    # budget >= every row's middle: no vote is computed (all middle tokens selected), on both paths
    B, G, Hkv, N, d = 3, 4, 2, 600, 64
    q, k, v, lens = _inputs(B, G, Hkv, N, d, torch.bfloat16, "token", True, seed=5)
    kw = dict(KW, budget=N, select="token")
    qc, kc, vc, lc = q.cuda(), k.cuda(), v.cuda(), lens.cuda()
    fo, fi = _decode(qc, kc, vc, lc, True, monkeypatch, **kw)
    uo, ui = _decode(qc, kc, vc, lc, False, monkeypatch, **kw)
    assert torch.equal(fi, ui) and torch.equal(_bits(fo), _bits(uo))
    want, wi = softdec.sparse_decode_attention(q, k, v, seq_lens=lens, return_indices=True, **kw)
    assert torch.equal(fi.cpu(), wi)
    _close(fo.cpu(), want, torch.bfloat16)
