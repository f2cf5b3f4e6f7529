"""token_sparse_prefill on CUDA (issue 17, item 5): the tensor-core scoring kernels (row statistics split
along the keys, key scores with the keys as MMA rows), the two-stage attention pipeline (32-key tiles), the
dropped-row zeroing, against the float64 reference and the CPU backend. Marked cuda: skipped without a GPU.

Shapes hit every branch: bf16 / fp16 x head_dim 64 / 128 (tensor cores), fp32 and head_dim 48 / 20 (the
SIMT kernels), L not a multiple of the 64-row tiles (65, 301) and above kStatsSplitKeys = 2048 (2100: two key
splits merged by the score kernel), windows that end mid-tile, GQA 1 and 4, both mask modes."""

from __future__ import annotations

import pytest
import torch

import softdec
from softdec import reference as ref
from conftest import TOLS
from prefill_margin import assert_kept_within_margin

pytestmark = pytest.mark.cuda

MMA_DTYPES = [torch.bfloat16, torch.float16]


def _close(out, want, dtype):
    atol, rtol = TOLS[dtype]
    torch.testing.assert_close(out.double().cpu(), want.double().cpu(), atol=atol, rtol=rtol)


def _qkv4(B, Hq, Hkv, L, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, L, d, generator=g).to(dtype)
    k = torch.randn(B, Hkv, L, d, generator=g).to(dtype)
    v = torch.randn(B, Hkv, L, d, generator=g).to(dtype)
    return q, k, v


def _separated(B, Hq, Hkv, L, d, dtype, seed=0):
    """As test_sparse_attention._prefill_separated: every 7th key "high" (score +4 + exact noise), the others
    "low" (-4)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-1, 2, (B, Hq, L, d), generator=g) / 8
    k = torch.randint(-1, 2, (B, Hkv, L, d), generator=g) / 8
    q[..., 0] = 2.0
    k[..., 0] = torch.where(torch.arange(L) % 7 == 0, 2.0, -2.0)
    v = torch.randn(B, Hkv, L, d, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


@pytest.mark.parametrize("dtype", MMA_DTYPES)
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("Hq,Hkv", [(4, 4), (8, 2)])
@pytest.mark.parametrize("L,window", [(65, 33), (301, 100), (2100, 150)])
def test_cuda_mma_scores_select_like_float64(dtype, d, causal, Hq, Hkv, L, window):
    # random scores: the selection equals the float64 drop rule outside the argued fp32 margin
    q, k, v = _qkv4(1, Hq, Hkv, L, d, dtype, seed=L + d)
    kw = dict(coverage=0.3, min_tokens=16, window=window, causal=causal)
    got, kept = softdec.token_sparse_prefill(q.cuda(), k.cuda(), v.cuda(), return_kept=True, **kw)
    kept = kept.cpu()
    qd, kd, vd = q.double(), k.double(), v.double()
    scores = ref.token_sparse_scores(qd, kd, window=window, causal=causal)
    assert int(kept.sum(-1).min()) < L  # something dropped
    assert_kept_within_margin(kept, scores, coverage=0.3, min_tokens=16, window=window)
    assert bool((got.cpu()[~kept] == 0).all())
    _close(got, ref.token_sparse_prefill(qd, kd, vd, causal=causal, kept=kept), dtype)


@pytest.mark.parametrize("dtype,d", [(torch.bfloat16, 64), (torch.float16, 64), (torch.bfloat16, 128),
                                     (torch.float16, 128), (torch.float32, 64), (torch.float16, 20)])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("Hq,Hkv,L", [(2, 2, 65), (8, 2, 2100)])
def test_cuda_prefill_separated_matches_cpu(dtype, d, causal, Hq, Hkv, L):
    # wide-margin inputs: the exact kept set of the CPU backend, outputs within the dtype's tolerance
    # (d = 20 fp16: rows of 40 bytes, the zeroing's element-wise branch). Coverage 0.003: the low non-window
    # keys hold <= 0.2% of the mass at L = 2100 (0.13% at L = 65) and the lightest high key brings that to
    # >= 0.5% (float64, every shape here), so exactly the low keys drop whatever the fp32 rounding.
    q, k, v = _separated(2, Hq, Hkv, L, d, dtype, seed=L)
    kw = dict(coverage=0.003, min_tokens=8, window=33, causal=causal, scale=1.0, return_kept=True)
    want, wk = softdec.token_sparse_prefill(q, k, v, **kw)
    got, gk = softdec.token_sparse_prefill(q.cuda(), k.cuda(), v.cuda(), **kw)
    low = torch.arange(L) % 7 != 0
    low[L - 33:] = False
    assert torch.equal(wk, ~low.expand_as(wk))
    assert torch.equal(gk.cpu(), wk)
    assert bool((got.cpu()[~wk] == 0).all())
    _close(got, want, dtype)


@pytest.mark.parametrize("dtype", MMA_DTYPES)
@pytest.mark.parametrize("d", [64, 128])
def test_cuda_mma_scores_nan_query(dtype, d):
    # a NaN window query: its scores are -inf (NaN -> -inf), so its row adds nothing to the key scores (the
    # reference's nan_to_num does the same); its own output row is NaN, every other row finite
    q, k, v = _qkv4(1, 2, 1, 200, d, dtype, seed=3)
    q[0, 0, 190] = float("nan")
    out, kept = softdec.token_sparse_prefill(q.cuda(), k.cuda(), v.cuda(), coverage=0.3, min_tokens=16,
                                             window=40, return_kept=True)
    out, kept = out.cpu(), kept.cpu()
    assert bool(kept[0, 0, 190]) and bool(torch.isnan(out[0, 0, 190]).all())
    scores = ref.token_sparse_scores(q.double(), k.double(), window=40)
    assert bool(torch.isfinite(scores).all())
    assert_kept_within_margin(kept, scores, coverage=0.3, min_tokens=16, window=40)
    rest = torch.ones(200, dtype=torch.bool)
    rest[190] = False
    assert torch.isfinite(out[0, 0, rest]).all() and torch.isfinite(out[0, 1]).all()
