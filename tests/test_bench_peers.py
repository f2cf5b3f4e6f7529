"""The bench's FlashInfer columns (python/softdec/bench/_peers.py): wired on CUDA only, with a note
when the package is missing. FlashInfer itself is CUDA-only, so a stand-in module records the calls."""

import sys
import types

import torch

from softdec.bench import _peers, bench_sampling


def _fake_flashinfer(calls):
    s = types.SimpleNamespace(
        sampling_from_logits=lambda x: calls.append(("plain", x.shape)),
        top_k_top_p_sampling_from_logits=lambda x, k, p: calls.append(("topk_topp", k, p)),
        min_p_sampling_from_probs=lambda probs, p: calls.append(("min_p", float(probs.sum(-1)[0]), p)),
        top_k_mask_logits=lambda x, k: calls.append(("top_k_mask_logits", k)),
        top_p_renorm_probs=lambda x, p: calls.append(("top_p_renorm_probs", p)),
    )
    return types.SimpleNamespace(sampling=s)


def test_no_flashinfer_column_on_cpu(monkeypatch):
    calls = []
    monkeypatch.setitem(_peers._cache, "flashinfer", _fake_flashinfer(calls))
    assert _peers.sample_fns(torch.zeros(1, 4), {}, "cpu") == {}
    assert _peers.filter_fns("top_p_renorm_probs", torch.zeros(1, 4), 0.9, "cpu") == {}
    assert _peers.note("cpu") == ""
    fns, _ = bench_sampling._make(1, 64, {"top_k": 50, "top_p": 0.9}, "cpu", compile_=False)
    assert "flashinfer" not in fns


def test_flashinfer_columns_on_cuda_call_the_matching_kernels(monkeypatch):
    calls = []
    monkeypatch.setitem(_peers._cache, "flashinfer", _fake_flashinfer(calls))
    x = torch.randn(2, 16)
    _peers.sample_fns(x, {}, "cuda")["flashinfer"]()
    _peers.sample_fns(x, {"top_k": 50, "top_p": 0.9}, "cuda")["flashinfer"]()
    _peers.sample_fns(x, {"min_p": 0.05}, "cuda")["flashinfer"]()
    _peers.filter_fns("top_k_mask_logits", x, 50, "cuda")["flashinfer"]()
    _peers.filter_fns("top_p_renorm_probs", x, 0.9, "cuda")["flashinfer"]()
    assert _peers.filter_fns("min_p_renorm_probs", x, 0.05, "cuda") == {}  # FlashInfer has none
    assert calls[0] == ("plain", (2, 16))
    assert calls[1] == ("topk_topp", 50, 0.9)
    assert calls[2][0] == "min_p" and abs(calls[2][1] - 1.0) < 1e-6 and calls[2][2] == 0.05  # given probs
    assert calls[3] == ("top_k_mask_logits", 50) and calls[4] == ("top_p_renorm_probs", 0.9)
    assert _peers.note("cuda") == ""


def test_missing_flashinfer_is_noted_on_cuda(monkeypatch):
    monkeypatch.setitem(_peers._cache, "flashinfer", None)
    assert _peers.sample_fns(torch.zeros(1, 4), {}, "cuda") == {}
    assert _peers.note("cuda") == "flashinfer: not importable, column skipped"
    monkeypatch.delitem(_peers._cache, "flashinfer")
    monkeypatch.setitem(sys.modules, "flashinfer", None)  # import fails
    assert _peers.flashinfer() is None


# ---------------------------------------------------------------------------------------------
# verify, sparse decode and soft_mixture columns. The stand-in follows flashinfer-python 0.7's
# documented signatures and checks what it is given (shapes, dtypes, probabilities vs logits,
# the paged layout), and computes the real result where the test compares it, so a wrong call
# or a wrong view of the cache fails here rather than on the first GPU run.

import math

import pytest

import softdec
from softdec import reference as ref
from softdec.bench import bench_soft_mixture, bench_sparse_attention, bench_verify, harness


def _is_probs(t):
    return t.dtype == torch.float32 and bool(torch.all(t >= 0)) and torch.allclose(
        t.sum(-1), torch.ones(t.shape[:-1]), atol=1e-4)


class _Wrapper:
    """BatchDecodeWithPagedKVCacheWrapper(float_workspace_buffer, kv_layout="NHD"): plan() then run()."""

    def __init__(self, calls, ws, kv_layout="NHD"):
        assert ws.dtype == torch.uint8 and ws.dim() == 1 and ws.numel() >= 8 << 20
        assert kv_layout == "NHD"
        self.calls, self.plan_args = calls, None

    def plan(self, indptr, indices, last_page_len, num_qo_heads, num_kv_heads, head_dim, page_size,
             *deprecated_positional, q_data_type=torch.float16, kv_data_type=None, **kw):
        assert not deprecated_positional, "optional plan() arguments must be keywords"
        assert not kw, f"unexpected plan() arguments {sorted(kw)}"
        assert indptr.dtype == indices.dtype == last_page_len.dtype == torch.int32
        batch = last_page_len.numel()
        assert indptr.shape == (batch + 1,) and int(indptr[0]) == 0 and int(indptr[-1]) == indices.numel()
        assert bool(torch.all(indptr[1:] >= indptr[:-1]))
        assert bool(torch.all((last_page_len >= 1) & (last_page_len <= page_size)))
        self.plan_args = (indptr.long(), indices.long(), last_page_len.long(), num_qo_heads, num_kv_heads,
                          head_dim, page_size, q_data_type, kv_data_type or q_data_type)

    def run(self, q, paged_kv_cache):
        indptr, indices, last, Hq, Hkv, d, ps, qdt, kvdt = self.plan_args
        k, v = paged_kv_cache
        batch = last.numel()
        assert q.shape == (batch, Hq, d) and q.dtype == qdt
        assert k.shape == v.shape and k.shape[1:] == (ps, Hkv, d) and k.dtype == v.dtype == kvdt
        assert int(indices.max()) < k.shape[0]
        self.calls.append(("decode", batch, Hq, Hkv, ps, indices.numel()))
        out = torch.empty(q.shape, dtype=torch.float32)
        G = Hq // Hkv
        for r in range(batch):
            pages = indices[indptr[r]:indptr[r + 1]]
            n = (pages.numel() - 1) * ps + int(last[r])
            ks = k[pages].reshape(-1, Hkv, d)[:n].float()
            vs = v[pages].reshape(-1, Hkv, d)[:n].float()
            for h in range(Hq):
                s = ks[:, h // G] @ q[r, h].float() / math.sqrt(d)
                out[r, h] = torch.softmax(s, 0) @ vs[:, h // G]
        return out.to(q.dtype)


def _fake_flashinfer_full(calls):
    def softmax(logits, temperature=None, enable_pdl=None):
        assert logits.dim() == 2 and logits.dtype == torch.float32
        calls.append(("softmax", tuple(logits.shape), temperature))
        return torch.softmax(logits / (1.0 if temperature is None else temperature), -1)

    def chain_speculative_sampling(draft_probs, draft_token_ids, target_probs,
                                   maybe_output_accepted_token_num=None,
                                   maybe_output_emitted_draft_token_num=None, deterministic=True,
                                   generator=None, seed=None, offset=None):
        B, K, V = draft_probs.shape
        assert draft_token_ids.shape == (B, K) and draft_token_ids.dtype == torch.int32
        assert target_probs.shape == (B, K + 1, V)
        assert _is_probs(draft_probs) and _is_probs(target_probs), "takes probabilities, not logits"
        assert bool(torch.all(draft_probs.gather(2, draft_token_ids.long()[..., None]) > 0))
        calls.append(("chain", target_probs))
        z = torch.zeros(B, dtype=torch.int32)
        return torch.full((B, K + 1), -1, dtype=torch.int32), z, z

    def top_k_renorm_probs(probs, top_k):
        assert _is_probs(probs) and isinstance(top_k, int) and 0 < top_k < probs.shape[-1]
        calls.append(("top_k_renorm_probs", top_k))
        kth = torch.topk(probs, top_k, -1).values[:, -1:]
        p = torch.where(probs >= kth, probs, torch.zeros_like(probs))
        return p / p.sum(-1, keepdim=True)

    def top_p_renorm_probs(probs, top_p):
        assert _is_probs(probs) and isinstance(top_p, float) and 0 < top_p < 1
        calls.append(("top_p_renorm_probs", top_p))
        srt, order = torch.sort(probs, -1, descending=True)
        before = torch.cumsum(srt.double(), -1) - srt.double()  # mass of the more probable tokens
        keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, order, before < top_p)
        p = torch.where(keep, probs, torch.zeros_like(probs))
        return p / p.sum(-1, keepdim=True)

    s = types.SimpleNamespace(softmax=softmax, chain_speculative_sampling=chain_speculative_sampling,
                              top_k_renorm_probs=top_k_renorm_probs, top_p_renorm_probs=top_p_renorm_probs)
    return types.SimpleNamespace(sampling=s, __version__="0.7.2-standin",
                                 BatchDecodeWithPagedKVCacheWrapper=lambda ws, layout="NHD": _Wrapper(calls, ws,
                                                                                                      layout))


@pytest.fixture
def fake_fi(monkeypatch):
    calls = []
    monkeypatch.setitem(_peers._cache, "flashinfer", _fake_flashinfer_full(calls))
    return calls


def test_verify_column_gets_probabilities_int32_ids_and_the_dense_drafts(fake_fi):
    B, K, V = 3, 4, 50
    g = torch.Generator().manual_seed(0)
    lg = torch.randn(B, K + 1, V, generator=g) * 3
    q = torch.softmax(torch.randn(B, K, V, generator=g), -1)
    d = torch.multinomial(q.reshape(-1, V), 1, generator=g).reshape(B, K)
    fns = _peers.verify_fns(lg, d, q, "cuda")
    assert set(fns) == {"flashinfer", "flashinfer_probs"}
    fns["flashinfer"]()
    fns["flashinfer_probs"]()
    chains = [c for c in fake_fi if c[0] == "chain"]
    assert len(chains) == 2
    for _, tp in chains:  # both columns see softmax(target logits) at T = 1, as softdec.verify does
        assert torch.allclose(tp, torch.softmax(lg, -1), atol=1e-6)
    # the "flashinfer" column computes the softmax inside its timed call; "flashinfer_probs" does not
    n_soft = sum(1 for c in fake_fi if c[0] == "softmax")
    fake_fi.clear()
    fns["flashinfer_probs"]()
    assert [c[0] for c in fake_fi] == ["chain"]
    fns["flashinfer"]()
    assert [c[0] for c in fake_fi] == ["chain", "softmax", "chain"] and n_soft == 2
    # one-hot (None) and sparse (ids, weights) drafts: no FlashInfer equivalent
    assert _peers.verify_fns(lg, d, None, "cuda") == {}
    assert _peers.verify_fns(lg, d, (d[..., None], torch.ones(B, K, 1)), "cuda") == {}
    assert _peers.verify_fns(lg, d, q, "cpu") == {}


def test_verify_accepted_path_bytes():
    lg = torch.zeros(2, 4, 10)  # K = 3
    dp = torch.zeros(2, 3, 10)
    n = torch.tensor([0, 3])
    # logits: positions 0..n (1 + 4); draft probs: positions 0..min(n, K-1) (1 + 3); 40 bytes a row each
    assert bench_verify.accepted_path_bytes(lg, dp, n) == (5 + 4) * 40
    assert bench_verify.accepted_path_bytes(lg, None, n) == 5 * 40


def _decode_inputs(dtype=torch.bfloat16, N=256, Hq=8, Hkv=2, d=16):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, Hq, d, generator=g).to(dtype)
    k = torch.randn(1, Hkv, N, d, generator=g).to(dtype)
    v = torch.randn(1, Hkv, N, d, generator=g).to(dtype)
    return q, k, v


def _attend(q, k, v, tokens_per_head):
    """float32 attention of every query head over its KV head's token list."""
    Hq, Hkv, d = q.shape[1], k.shape[1], q.shape[2]
    out = torch.empty(1, Hq, d)
    for h in range(Hq):
        t = tokens_per_head[h // (Hq // Hkv)]
        ks, vs = k[0, h // (Hq // Hkv), t].float(), v[0, h // (Hq // Hkv), t].float()
        out[0, h] = torch.softmax(ks @ q[0, h].float() / math.sqrt(d), 0) @ vs
    return out


@pytest.mark.parametrize("select", ["page", "token"])
def test_decode_column_attends_the_selected_tokens_of_each_kv_head(fake_fi, select):
    q, k, v = _decode_inputs()
    PS, kw = 16, dict(budget=64, select=select, sink=4, window=32)
    summ = dict(page_size=PS) if select == "page" else {}
    out, idx = softdec.sparse_decode_attention(q, k, v, return_indices=True, **summ, **kw)
    fns = _peers.decode_fns(q, k, v, idx, select, PS, "cuda")
    assert set(fns) == {"flashinfer", "fi_dense"}
    got = fns["flashinfer"]().reshape(q.shape).float()
    sel = [idx[0, h][idx[0, h] >= 0] for h in range(k.shape[1])]
    assert sel[0].tolist() != sel[1].tolist()  # the KV heads select different sets: a real check
    if select == "page":  # whole pages: the pages that hold the selected tokens
        want_tokens = [(torch.unique(t // PS)[:, None] * PS + torch.arange(PS)).flatten() for t in sel]
    else:
        want_tokens = sel
    want = _attend(q, k, v, want_tokens)
    assert torch.allclose(got, want, atol=2e-2, rtol=2e-2)
    if select == "token":  # the same token set as softdec: the same attention (bf16 outputs)
        assert torch.allclose(got, out.float(), atol=3e-2, rtol=3e-2)
    calls = [c for c in fake_fi if c[0] == "decode"]
    # one request per (row, KV head): 2 requests, 1 KV head each, the group's 4 query heads
    assert calls[0][1:5] == (2, 4, 1, PS if select == "page" else 1)
    dense = fns["fi_dense"]().reshape(q.shape).float()
    assert torch.allclose(dense, ref.dense_decode_attention(q.float(), k.float(), v.float()), atol=2e-2,
                          rtol=2e-2)


def test_decode_column_skips_fp32_and_cpu(fake_fi):
    q, k, v = _decode_inputs(torch.float32)
    idx = torch.zeros(1, 2, 4, dtype=torch.int64)
    assert _peers.decode_fns(q, k, v, idx, "page", 16, "cuda") == {}
    assert _peers.decode_fns(q.bfloat16(), k.bfloat16(), v.bfloat16(), idx, "page", 16, "cpu") == {}


@pytest.mark.parametrize("filter_top_k", [None, 30])
def test_soft_mixture_chain_matches_softdec(fake_fi, filter_top_k):
    g = torch.Generator().manual_seed(5)
    V, D, B = 2000, 24, 4
    logits = torch.randn(B, V, generator=g) * 3
    table = torch.randn(V, D, generator=g)
    kw = bench_soft_mixture._settings(10, filter_top_k=filter_top_k)
    fns = _peers.soft_mixture_fns(logits, table, kw, "cuda")
    emb, ids, w = fns["flashinfer_chain"]()
    st = softdec.soft_mixture(logits, table, **kw)
    names = [c[0] for c in fake_fi]
    assert names == ["softmax", "top_k_renorm_probs", "top_p_renorm_probs"]
    assert fake_fi[0][2] == 0.6 and fake_fi[1][1] == (filter_top_k or 10) and fake_fi[2][1] == 0.95
    kept = st.weights > 0
    assert torch.equal(kept, w > 0) and kept.sum(1).min() >= 2 and bool((~kept).any())  # min-p drops some
    assert torch.equal(ids[kept], st.ids[kept])
    assert torch.allclose(w, st.weights, atol=1e-5)
    assert torch.allclose(emb, st.embeds, atol=1e-4)
    # noise has no FlashInfer counterpart; nothing on CPU
    assert _peers.soft_mixture_fns(logits, table, bench_soft_mixture._settings(10, "gumbel"), "cuda") == {}
    assert _peers.soft_mixture_fns(logits, table, kw, "cpu") == {}


def test_notes_name_the_missing_equivalent(fake_fi, monkeypatch):
    assert _peers.note("cuda", "no tree verification") == "flashinfer: no tree verification"
    assert _peers.note("cuda") == "" and _peers.note("cpu", "x") == ""
    assert _peers.version() == "0.7.2-standin" and "0.7.2-standin" in _peers.summary()
    monkeypatch.setitem(_peers._cache, "flashinfer", None)
    assert _peers.note("cuda", "x") == "flashinfer: not importable, column skipped"
    assert _peers.version() is None and "not importable" in _peers.summary()


def test_cuda_grid_has_the_issue_17_rows_at_design_shapes():
    # gpu_check.sh runs `softdec bench --device cuda --quick`: these rows must be in its grid
    rows, gumbel_b, filter_b = bench_sampling.gpu_grid(quick=True, full=False)
    for name in bench_sampling.VARIANTS:  # plain and filtered sampling at B = 64, V = 151936
        assert (151936, 64, name) in rows
    assert gumbel_b == filter_b == 64
    assert (64, 4) in bench_verify.gpu_shapes(full=False)
    assert {b for b, _ in bench_soft_mixture.GPU_SHAPES} == {1, 8, 64}
    dec = bench_sparse_attention.decode_rows(quick=True, full=False, gpu=True)
    assert (torch.bfloat16, 32768, "page") in dec and (torch.bfloat16, 32768, "token") in dec
    # the CPU grids are unchanged by the GPU rows
    assert bench_sparse_attention.decode_rows(quick=True, full=False, gpu=False) == [
        (torch.bfloat16, 32768, "page")]
    cpu_rows = bench_sampling._sample_rows(quick=True, device="cpu", full=False)
    assert cpu_rows == [(151936, 1, name) for name in bench_sampling.VARIANTS]


def test_run_cases_reports_each_finished_row(capsys):
    seen = []
    cases = [harness.Case(op="noop", label=str(i), fns={"softdec": lambda: None}, bytes=8) for i in range(2)]
    rows = harness.run_cases(cases, bandwidth_gbs=1.0, budget_s=0.01, rounds=1, progress=False,
                             on_row=lambda rs: seen.append(len(rs)))
    assert seen == [1, 2] and len(rows) == 2 and rows[0]["floor_fraction"] > 0
