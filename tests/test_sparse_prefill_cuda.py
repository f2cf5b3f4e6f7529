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


# ---------------------------------------------------------------- the Hopper wgmma attention (sm_90a)
# SOFTDEC_PREFILL_WGMMA=1 selects prefill_wgmma_kernel on an sm_90 device (compiled, not run before the first
# GPU session: these tests are its first run); elsewhere the switch falls back to the mma.sync kernel, and the
# outputs must then be bitwise those of the switch off. The scoring kernels do not depend on the switch, so the
# kept sets of the two runs are identical.
#
# Bound wgmma vs mma.sync (both on the same kept set). Both compute o = sum_j rn(p_j) v_j / l with p_j =
# exp(s_j - m) taken against the running max m of the tile, l the fp32 sum of the unrounded p (so the weights
# w_j = p_j * prod(alpha) / l are those of exact softmax up to fp32 rounding), and P rounded to the input dtype
# (unit roundoff u: 2^-8 bf16, 2^-11 fp16) before the P V product. Each path therefore returns
# sum_j w_j (1 + d_j) v_j with |d_j| <= u plus fp32 terms, i.e. it is within u * sum_j w_j |v_j| of the exact
# attention; the paths differ in key tile (64 vs 32, so other running maxima and other rounding points) and
# in the tensor cores' fp32 summation order, so their difference is at most 2 u sum_j w_j |v_j| (the P
# rounding of both), + 2 u |o| (each output rounded to the dtype), + 1e-4 sum_j w_j |v_j| (fp32: the S
# dot products differ in summation order by <= d 2^-24 sum|q k| scale ~ 1e-5 relative in exp at these
# shapes, the rescalings by alpha and the fp32 P V accumulation over <= 2100 keys by ~1e-4 at most), + for
# fp16 the subnormal P (p < 2^-14 rounds with absolute error <= 2^-25): n_kept 2^-25 max|v| (l >= 1: the
# row's max key has p = 1). sum_j w_j |v_j| is the float64 reference attention over |v|.
def _wgmma_bound(qd, kd, vd, kept, causal, want, dtype):
    u = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}[dtype]
    absv = ref.token_sparse_prefill(qd, kd, vd.abs(), causal=causal, kept=kept)
    sub = 0.0 if dtype == torch.bfloat16 else float(kept.sum(-1).max()) * 2.0 ** -25 * float(vd.abs().max())
    return (2 * u + 1e-4) * absv + 2 * u * want.abs() + sub


def _prefill_switch(monkeypatch, value, q, k, v, **kw):
    monkeypatch.setenv("SOFTDEC_PREFILL_WGMMA", value)
    out, kept = softdec.token_sparse_prefill(q.cuda(), k.cuda(), v.cuda(), return_kept=True, **kw)
    torch.cuda.synchronize()
    return out.cpu(), kept.cpu()


@pytest.mark.parametrize("dtype", MMA_DTYPES)
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("B,Hq,Hkv,L,causal", [(2, 4, 4, 301, True), (1, 8, 2, 1000, False),
                                               (1, 8, 2, 2100, True)])
def test_cuda_wgmma_prefill_random(monkeypatch, dtype, d, B, Hq, Hkv, L, causal):
    # random inputs (L not a multiple of the 64-row / 64-key tiles, GQA 1 and 4, B 1 and 2): the wgmma output
    # equals the float64 reference on its kept set within the dtype's tolerance, and the mma.sync output within
    # the bound argued above (bitwise where the switch falls back: not an sm_90 device)
    q, k, v = _qkv4(B, Hq, Hkv, L, d, dtype, seed=7 * L + d)
    kw = dict(coverage=0.3, min_tokens=16, window=100, causal=causal)
    o1, k1 = _prefill_switch(monkeypatch, "1", q, k, v, **kw)
    o0, k0 = _prefill_switch(monkeypatch, "0", q, k, v, **kw)
    assert torch.equal(k1, k0)
    assert int(k1.sum(-1).min()) < L  # something dropped: the gathered (compressed) path is exercised
    assert bool((o1[~k1] == 0).all())
    qd, kd, vd = q.double(), k.double(), v.double()
    want = ref.token_sparse_prefill(qd, kd, vd, causal=causal, kept=k1)
    _close(o1, want, dtype)
    if torch.cuda.get_device_capability() != (9, 0):
        assert torch.equal(o1, o0)  # no wgmma kernel here: the switch must fall back to the same kernel
    else:
        diff = (o1.double() - o0.double()).abs()
        bound = _wgmma_bound(qd, kd, vd, k1, causal, want, dtype)
        assert bool((diff <= bound).all()), f"max excess {float((diff - bound).max())}"


@pytest.mark.parametrize("dtype", MMA_DTYPES)
@pytest.mark.parametrize("d", [64, 128])
def test_cuda_wgmma_prefill_separated_matches_cpu(monkeypatch, dtype, d):
    # wide-margin inputs (test_cuda_prefill_separated_matches_cpu): the exact CPU kept set, outputs within the
    # dtype's tolerance of the CPU backend with the switch on, B = 2, GQA 4, L = 301 (not a tile multiple)
    q, k, v = _separated(2, 8, 2, 301, d, dtype, seed=5)
    kw = dict(coverage=0.003, min_tokens=8, window=33, causal=True, scale=1.0)
    want, wk = softdec.token_sparse_prefill(q, k, v, return_kept=True, **kw)
    got, gk = _prefill_switch(monkeypatch, "1", q, k, v, **kw)
    assert torch.equal(gk, wk)
    assert bool((got[~wk] == 0).all())
    _close(got, want, dtype)


@pytest.mark.parametrize("dtype", MMA_DTYPES)
def test_cuda_wgmma_prefill_nan_and_short(monkeypatch, dtype):
    # a NaN query row stays NaN and the others finite (as the mma.sync kernel); L = 40 < one tile; nothing
    # dropped (coverage 0): every row kept, the plain causal attention
    q, k, v = _qkv4(1, 2, 1, 200, 128, dtype, seed=3)
    q[0, 0, 190] = float("nan")
    out, kept = _prefill_switch(monkeypatch, "1", q, k, v, coverage=0.3, min_tokens=16, window=40)
    assert bool(kept[0, 0, 190]) and bool(torch.isnan(out[0, 0, 190]).all())
    rest = torch.ones(200, dtype=torch.bool)
    rest[190] = False
    assert torch.isfinite(out[0, 0, rest]).all() and torch.isfinite(out[0, 1]).all()
    q, k, v = _qkv4(1, 2, 2, 40, 64, dtype, seed=4)
    out, kept = _prefill_switch(monkeypatch, "1", q, k, v, coverage=0.0, window=8)
    assert bool(kept.all())
    _close(out, ref.token_sparse_prefill(q.double(), k.double(), v.double(), causal=True, kept=kept), dtype)
