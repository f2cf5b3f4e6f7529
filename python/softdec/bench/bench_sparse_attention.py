"""Token-sparse attention: sparse decode (page / token selection) vs dense SDPA decode,
and token-sparse prefill vs dense causal SDPA.

Rows: B = 1, Hq = 32, Hkv = 8, d = 128, budget 2048 (sink 4, window 64), bf16 and
fp32, N in {8192, 32768}; prefill at L = 8192 with about a quarter of the tokens
kept. Baselines come from softdec.reference: "dense" is SDPA over the whole
cache (the number the speed-up targets are stated against), "eager" is the
vectorised torch formulation of the same sparse op (topk + gather + SDPA),
"compile" is torch.compile of it.
"""

from __future__ import annotations

import os

import torch

import softdec
from softdec import reference as ref
from . import _peers
from .harness import Case

HQ, HKV, D, BUDGET, SINK, WINDOW, PS = 32, 8, 128, 2048, 4, 64, 16


def _decode_inputs(N, dtype, device):
    gen_dev = device if str(device).startswith("cuda") else "cpu"  # a GPU draws its own inputs
    g = torch.Generator(device=gen_dev).manual_seed(0)
    q = torch.randn(1, HQ, D, generator=g, device=gen_dev).to(dtype).to(device)
    k = torch.randn(1, HKV, N, D, generator=g, device=gen_dev).to(dtype).to(device)
    v = torch.randn(1, HKV, N, D, generator=g, device=gen_dev).to(dtype).to(device)
    return q, k, v


def _with_env(fn, name, value):
    """fn with the environment variable `name` set to `value` for the call (the CUDA ops read their
    SOFTDEC_* switches on every call)."""
    def run():
        old = os.environ.get(name)
        os.environ[name] = value
        try:
            return fn()
        finally:
            if old is None:
                del os.environ[name]
            else:
                os.environ[name] = old
    return run


def _with_fused(fn, value):
    """fn with SOFTDEC_DECODE_FUSED set to `value` for the call."""
    return _with_env(fn, "SOFTDEC_DECODE_FUSED", value)


def _decode_case(N, dtype, select, device, compile_=True, budget=BUDGET, window=WINDOW):
    q, k, v = _decode_inputs(N, dtype, device)
    summ = softdec.build_page_summary(k, page_size=PS)
    kw = dict(budget=budget, select=select, sink=SINK, window=window)
    eager = lambda: ref.sparse_decode_attention_topk(q, k, v, page_size=PS, kmin=summ.kmin, kmax=summ.kmax, **kw)  # noqa: E731
    esz = k.element_size()
    M = SINK + window + budget
    if select == "page":
        ours = lambda: softdec.sparse_decode_attention(q, k, v, page_size=PS, page_summary=summ, **kw)  # noqa: E731
        nbytes = 2 * (N // PS) * HKV * D * esz + 2 * M * HKV * D * esz  # summaries + selected K and V
    else:
        ours = lambda: softdec.sparse_decode_attention(q, k, v, **kw)  # noqa: E731
        nbytes = N * HKV * D * esz + M * HKV * D * esz  # all of K + selected V
    fns = {"softdec": ours, "eager": eager, "dense": lambda: ref.dense_decode_attention(q, k, v)}
    if str(device).startswith("cuda"):  # the fused kernels vs SOFTDEC_DECODE_FUSED=0, both paying the same env-var toggle
        fns["fused"] = _with_fused(ours, "1")
        fns["unfused"] = _with_fused(ours, "0")
    if compile_:
        comp = torch.compile(ref.sparse_decode_attention_topk)
        fns["compile"] = lambda: comp(q, k, v, page_size=PS, kmin=summ.kmin, kmax=summ.kmax, **kw)
    notes = ["dense = SDPA over the whole cache (target: page >= 5x, token >= 1.5x)"]
    if str(device).startswith("cuda"):
        # FlashInfer over the tokens softdec selects (selection and plan() outside its timed region)
        summ_kw = dict(page_size=PS, page_summary=summ) if select == "page" else {}
        _, idx = softdec.sparse_decode_attention(q, k, v, return_indices=True, **summ_kw, **kw)
        fns.update(_peers.decode_fns(q, k, v, idx, select, PS, device))
        notes.append(_peers.note(device, "" if dtype in (torch.bfloat16, torch.float16) else
                                 "its decode kernels take fp16 / bf16 only") or
                     ("flashinfer = paged decode over the same selected "
                      + ("pages" if select == "page" else "tokens (page_size 1)")
                      + ", selection + plan outside its timed region; fi_dense = over the whole cache"))
    dname = str(dtype).replace("torch.", "")
    return Case(op="sparse_decode", label=f"{select} N={N} {dname} budget={budget}", fns=fns, bytes=nbytes,
                device=device, notes="; ".join(notes))


def _prefill_case(L, dtype, device):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, HQ, L, D, generator=g).to(dtype).to(device)
    k = torch.randn(1, HKV, L, D, generator=g).to(dtype).to(device)
    v = torch.randn(1, HKV, L, D, generator=g).to(dtype).to(device)
    kw = dict(coverage=0.9, min_tokens=L // 4, window=128)  # random data: keeps ~L/4 per head
    fns = {"softdec": lambda: softdec.token_sparse_prefill(q, k, v, **kw),
           "eager": lambda: ref.token_sparse_prefill(q, k, v, **kw),
           "dense": lambda: ref.dense_causal_attention(q, k, v)}
    notes = ["compute-bound; dense = causal SDPA over all L (target >= 2x)"]
    if str(device).startswith("cuda") and dtype in (torch.bfloat16, torch.float16):
        # the attention step's Hopper wgmma kernel (opt-in, compiled but not run before a GPU session measured
        # it) vs the default mma.sync kernel, both paying the same env-var toggle; off sm_90 both are mma.sync
        ours = fns["softdec"]
        fns["wgmma"] = _with_env(ours, "SOFTDEC_PREFILL_WGMMA", "1")
        fns["mma_sync"] = _with_env(ours, "SOFTDEC_PREFILL_WGMMA", "0")
        notes.append("wgmma / mma_sync = softdec with SOFTDEC_PREFILL_WGMMA=1 / 0 (the sm_90a warpgroup-MMA "
                     "attention vs the mma.sync one; the same kernel off sm_90)")
    dname = str(dtype).replace("torch.", "")
    return Case(op="token_sparse_prefill", label=f"L={L} {dname} keep~1/4", fns=fns,
                bytes=4 * HQ * L * D * q.element_size(), memory_bound=False, device=device,
                notes="; ".join(notes))


def decode_rows(quick: bool, full: bool, gpu: bool):
    """(dtype, N, select) of the sparse decode rows; a GPU gets page and token mode even in --quick."""
    dtypes = [torch.bfloat16, torch.float32] if full else [torch.bfloat16]
    Ns = [8192, 32768] if full else [32768]
    return [(dtype, N, select) for dtype in dtypes for N in Ns
            for select in (("page",) if quick and not gpu else ("page", "token"))]


def cases(quick: bool, device: str, full: bool = False):
    out = []
    gpu = str(device).startswith("cuda")
    dtypes = [torch.bfloat16, torch.float32] if full else [torch.bfloat16]
    for dtype, N, select in decode_rows(quick, full, gpu):
        capped = not full and not quick and select == "token"
        c = _decode_case(N, dtype, select, device, compile_=not capped)
        c.compile_capped = capped
        out.append(c)
    if gpu:  # at most 64 selected tokens: the one-block decode path (one launch after scoring)
        out.append(_decode_case(32768, torch.bfloat16, "page", device, compile_=False, budget=32, window=28))
    if quick and not gpu:
        return out  # the eager prefill reference takes ~10 s even at L = 1024 on 2 cores
    for dtype in dtypes:
        c = _prefill_case(8192 if full or gpu else 2048, dtype, device)
        c.notes = "; ".join(filter(None, [c.notes, _peers.note(device, "no token-sparse prefill (the dense "
                                                                       "causal prefill is not this op)")]))
        out.append(c)
    return out
