"""Peer libraries' equivalents as extra benchmark columns (issue 17: "no slower than FlashInfer").

On CUDA, when the ``flashinfer`` package is importable, rows with a FlashInfer equivalent get
FlashInfer columns on the same inputs; otherwise the row's note says why a column is missing.
Nothing here runs on CPU: FlashInfer is CUDA-only. The calls follow the API of flashinfer-python
0.7 (``flashinfer.sampling.*``, ``flashinfer.BatchDecodeWithPagedKVCacheWrapper`` with
keyword-only optional ``plan`` arguments); older releases that lack a function simply get no
column (the error is reported in the row, not fatal).

Columns (the ratio shown is FlashInfer's time / softdec's time; > 1 means softdec is faster):

- sample (plain, top-k + top-p, min-p), ``top_k_mask_logits``, ``top_p_renorm_probs``:
  ``flashinfer``, its fused kernel on the same logits / probabilities (min-p: FlashInfer's
  sampler takes probabilities, so the softmax is in its timed region).
- verify, exact method with dense drafts (``chain_speculative_sampling``, which takes
  probabilities): ``flashinfer`` = softmax of the target logits + the kernel (the same inputs
  as softdec, which takes logits); ``flashinfer_probs`` = the kernel alone, the target
  probabilities computed before the timed region. One-hot and sparse drafts have no FlashInfer
  equivalent (it takes dense ``[B, K, V]`` draft probabilities only).
- sparse decode (page and token mode): ``flashinfer`` = ``BatchDecodeWithPagedKVCacheWrapper``
  over the same selected tokens (page mode: the 16-token pages softdec selected; token mode:
  page_size 1, the tokens softdec selected), one request per (row, KV head) so that every KV
  head has its own set. That dense decode over the selected budget is the fair peer of the
  attention part: the selection (softdec's scoring and top-k) and ``plan`` run before the timed
  region, so softdec's time includes work the column's does not. ``fi_dense`` = the same
  wrapper over the whole cache (the dense baseline at FlashInfer speed). bf16 / fp16 only.
- soft_mixture: FlashInfer has no fused soft-token op. ``flashinfer_chain`` composes its
  building blocks into the same pipeline: softmax(logits / T), ``top_k_renorm_probs`` (the
  filter_top_k), ``top_p_renorm_probs``, then torch: top-k of the output width, min-p on those
  k weights, renormalise, and a gather + bmm over the k embedding rows. Same ids and weights up
  to ties; it computes no entropy / max_prob (softdec does) and passes over [B, V] several
  times, so it is the pipeline a FlashInfer user would write, not a single-kernel equivalent.
"""

from __future__ import annotations

import importlib
from typing import Optional

import torch

_cache = {}


def flashinfer():
    """The ``flashinfer`` module, or None when it cannot be imported."""
    if "flashinfer" not in _cache:
        try:
            _cache["flashinfer"] = importlib.import_module("flashinfer")
        except Exception:  # not installed, or built for another torch / CUDA
            _cache["flashinfer"] = None
    return _cache["flashinfer"]


def version() -> Optional[str]:
    fi = flashinfer()
    return None if fi is None else str(getattr(fi, "__version__", "unknown"))


def _fi(device):
    return flashinfer() if str(device).startswith("cuda") else None


def note(device: str, missing: str = "") -> str:
    """What a row's note says about the FlashInfer column: nothing on CPU; on CUDA that the package
    did not import, or (``missing``) why this row has no FlashInfer equivalent."""
    if not str(device).startswith("cuda"):
        return ""
    if flashinfer() is None:
        return "flashinfer: not importable, column skipped"
    return f"flashinfer: {missing}" if missing else ""


def summary() -> str:
    v = version()
    return (f"flashinfer {v}: its columns are on the same inputs (see each row's note)" if v is not None
            else "flashinfer: not importable, no FlashInfer columns")


def sample_fns(x: torch.Tensor, kw: dict, device: str) -> dict:
    """FlashInfer's sampler for softdec.sample(x, **kw): plain, top-k + top-p, min-p rows."""
    fi = _fi(device)
    if fi is None:
        return {}
    s = fi.sampling
    if not kw:
        return {"flashinfer": lambda: s.sampling_from_logits(x)}
    if set(kw) == {"top_k", "top_p"}:
        return {"flashinfer": lambda: s.top_k_top_p_sampling_from_logits(x, kw["top_k"], kw["top_p"])}
    if set(kw) == {"min_p"}:  # FlashInfer's min-p sampler takes probabilities: softmax included
        return {"flashinfer": lambda: s.min_p_sampling_from_probs(torch.softmax(x, -1), kw["min_p"])}
    return {}


def filter_fns(name: str, inp: torch.Tensor, arg, device: str) -> dict:
    """FlashInfer's standalone filter op of the same name (top_k_mask_logits, top_p_renorm_probs)."""
    fi = _fi(device)
    if fi is None or name not in ("top_k_mask_logits", "top_p_renorm_probs"):
        return {}
    f = getattr(fi.sampling, name)
    return {"flashinfer": lambda: f(inp, arg)}


def _softmax_rows(s, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Row softmax of x[..., V] / temperature: FlashInfer's own kernel when it has one (0.2.x+)."""
    f = getattr(s, "softmax", None)
    if f is None:
        return torch.softmax(x / temperature if temperature != 1.0 else x, -1)
    V = x.shape[-1]
    return f(x.reshape(-1, V), temperature=temperature).view(x.shape)


def verify_fns(target_logits: torch.Tensor, draft_ids: torch.Tensor, draft_probs, device: str) -> dict:
    """FlashInfer's chain_speculative_sampling for softdec.verify(method="exact", T=1, no filters)
    with dense drafts: draft_probs [B, K, V] float32, draft_token_ids [B, K] int32, target_probs
    [B, K+1, V] float32 (probabilities, so the ``flashinfer`` column includes the softmax)."""
    fi = _fi(device)
    if fi is None or draft_ids is None or not isinstance(draft_probs, torch.Tensor):
        return {}
    s = fi.sampling
    q = draft_probs.float().contiguous()
    ids = draft_ids.to(torch.int32).contiguous()  # its kernel takes int32 ids (converted before timing)
    probs = _softmax_rows(s, target_logits.float()).contiguous()
    return {"flashinfer": lambda: s.chain_speculative_sampling(q, ids, _softmax_rows(s, target_logits)),
            "flashinfer_probs": lambda: s.chain_speculative_sampling(q, ids, probs)}


def _paged(fi, q, k_cache, v_cache, indptr, indices, page_size):
    """A planned BatchDecodeWithPagedKVCacheWrapper: one request per (row, KV head) with one KV head
    and the group's Hq / Hkv query heads; the [B, Hkv, N, d] caches viewed as pages of
    ``page_size`` tokens (page r * (N / page_size) + p is token block p of request r), NHD layout."""
    B, Hq, d = q.shape
    Hkv, N = k_cache.shape[1], k_cache.shape[2]
    G = Hq // Hkv
    P = N // page_size
    kp = k_cache.reshape(B * Hkv * P, page_size, 1, d)  # a view: [B, Hkv, N, d] is contiguous
    vp = v_cache.reshape(B * Hkv * P, page_size, 1, d)
    qq = q.reshape(B * Hkv, G, d)  # query head i attends KV head i // G
    ws = torch.empty(128 << 20, dtype=torch.uint8, device=q.device)
    w = fi.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD")
    last = torch.full((B * Hkv,), page_size, dtype=torch.int32, device=q.device)
    w.plan(indptr, indices, last, G, 1, d, page_size, q_data_type=q.dtype, kv_data_type=k_cache.dtype)
    return lambda: w.run(qq, (kp, vp))


def decode_fns(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, indices: torch.Tensor,
               select: str, page_size: int, device: str) -> dict:
    """FlashInfer paged decode over softdec's selected tokens (``indices`` [B, Hkv, M], -1 padded, from
    sparse_decode_attention(return_indices=True)), and over the whole cache."""
    fi = _fi(device)
    if fi is None or q.dtype not in (torch.float16, torch.bfloat16):
        return {}
    k_cache, v_cache = k_cache.contiguous(), v_cache.contiguous()
    B, Hkv, N = k_cache.shape[0], k_cache.shape[1], k_cache.shape[2]
    if N % page_size:
        return {}
    ps = page_size if select == "page" else 1
    P = N // ps
    sel = indices.reshape(B * Hkv, -1).cpu()
    counts, pages = [], []
    for r in range(B * Hkv):
        tok = sel[r][sel[r] >= 0]
        pg = torch.unique(tok // ps) + r * P  # sorted; page mode: the pages holding the selected tokens
        counts.append(pg.numel())
        pages.append(pg)
    dev = q.device
    indptr = torch.tensor([0] + counts, dtype=torch.int64).cumsum(0).to(torch.int32).to(dev)
    idx = torch.cat(pages).to(torch.int32).to(dev)
    Pd = N // page_size
    dense_ptr = (torch.arange(B * Hkv + 1, dtype=torch.int32) * Pd).to(dev)
    dense_idx = torch.arange(B * Hkv * Pd, dtype=torch.int32).to(dev)
    return {"flashinfer": _paged(fi, q, k_cache, v_cache, indptr, idx, ps),
            "fi_dense": _paged(fi, q, k_cache, v_cache, dense_ptr, dense_idx, page_size)}


def soft_mixture_fns(logits: torch.Tensor, table: torch.Tensor, kw: dict, device: str) -> dict:
    """The soft-token pipeline built from FlashInfer's renorm kernels (see the module docstring)."""
    fi = _fi(device)
    if fi is None or kw.get("noise") is not None or float(kw.get("temperature", 1.0)) <= 0:
        return {}
    s = fi.sampling
    k = int(kw.get("top_k", 10))
    fk = kw.get("filter_top_k")
    fk = k if fk is None else int(fk)
    T = float(kw.get("temperature", 1.0))
    top_p, min_p = float(kw.get("top_p", 1.0)), float(kw.get("min_p", 0.0))
    scale = float(kw.get("embed_scale", 1.0))
    V = logits.shape[-1]

    def chain():
        p = _softmax_rows(s, logits, T)
        if 0 < fk < V:
            p = s.top_k_renorm_probs(p, fk)
        if top_p < 1.0:
            p = s.top_p_renorm_probs(p, top_p)
        w, ids = torch.topk(p, k, -1)  # descending
        if min_p > 0:
            w = torch.where(w >= min_p * w[:, :1], w, torch.zeros_like(w))
        w = w / w.sum(-1, keepdim=True)
        emb = torch.bmm(w.to(table.dtype)[:, None, :], table[ids])[:, 0]
        return (emb * scale if scale != 1.0 else emb), ids, w

    return {"flashinfer_chain": chain}
