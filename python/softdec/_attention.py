"""Token-sparse attention: page summaries, sparse decode and sparse prefill.

Public names are re-exported by ``softdec`` (and ``softdec.ops``)."""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Union

import torch

from ._params import (FLOAT_DTYPES, check_tensor, float_arg, int_arg, row_param, _register_no_backward)

_ops = torch.ops.softdec


_SELECT_MODES = {"page": 0, "token": 1}


class PageSummary(NamedTuple):
    """Per-page, per-channel key bounds for ``select="page"`` (Quest).

    kmin, kmax : torch.Tensor
        ``(batch, kv_heads, ceil(tokens / page_size), head_dim)``, the dtype of
        the key cache (min/max of cache values are exact in that dtype).
    page_size : int
    """
    kmin: torch.Tensor
    kmax: torch.Tensor
    page_size: int


def _page_size_arg(x, name="page_size") -> int:
    x = int_arg(x, name)
    if x < 1 or x & (x - 1):
        raise ValueError(f"{name} must be a power of two, got {x}")
    return x


def _check_cache(t, name):
    check_tensor(t, name, dim=4, layout="(batch, kv_heads, tokens, head_dim)", dtypes=FLOAT_DTYPES)


def _last_dense(t):
    """``t`` itself when its last dimension is contiguous (other strides are honoured
    by the kernels), else a contiguous copy: the kernels read rows as vectors."""
    return t if t.dim() == 0 or t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def _lens(seq_lens, name, batch, n, device):
    if seq_lens is None:
        return torch.full((batch,), n, dtype=torch.int64, device=device)
    return row_param(seq_lens, name, batch, device, torch.int64, lo=0, hi=n)


@torch.library.register_fake("softdec::sparse_page_summary")
def _page_summary_fake(k_cache, page_size, seq_lens):
    torch._check(k_cache.dim() == 4, lambda: "k_cache must be 4-D")
    torch._check(page_size > 0 and (page_size & (page_size - 1)) == 0,
                 lambda: "page_size must be a power of two")
    B, H, N, d = k_cache.shape
    P = (N + page_size - 1) // page_size
    return k_cache.new_empty((B, H, P, d)), k_cache.new_empty((B, H, P, d))


@torch.library.register_fake("softdec::sparse_page_summary_update")
def _page_summary_update_fake(kmin, kmax, k_cache, start, end):
    torch._check(kmin.shape == kmax.shape, lambda: "kmax must have the shape of kmin")
    return None


# page bounds only rank pages (a selection): no gradient flows through them
_register_no_backward("sparse_page_summary", "build_page_summary", outputs_differentiable=False)


def build_page_summary(k_cache: torch.Tensor, *, page_size: int = 16,
                       seq_lens: Optional[Union[int, torch.Tensor]] = None) -> PageSummary:
    """Per-page, per-channel key min and max of a KV cache (Quest page summaries).

    Build once (after prefill), then keep current with
    :func:`update_page_summary` as tokens are appended, and pass to
    :func:`sparse_decode_attention` (``page_summary=``) so decoding never
    rescans the cache.

    Parameters
    ----------
    k_cache : torch.Tensor
        ``(batch, kv_heads, tokens, head_dim)``, float32/bfloat16/float16; only
        the last dimension must be contiguous.
    page_size : int, default 16
        Tokens per page, a power of two. Page ``p`` holds tokens
        ``[p * page_size, (p + 1) * page_size)``.
    seq_lens : int or torch.Tensor, optional
        ``(batch,)`` int64 valid lengths (default: every token). Tokens at or
        beyond ``seq_lens[b]`` are ignored; pages with no valid token are 0.

    Returns
    -------
    PageSummary
        ``kmin``, ``kmax`` of shape ``(batch, kv_heads, ceil(tokens / page_size),
        head_dim)`` in the dtype of ``k_cache``, and ``page_size``. A NaN key
        propagates (as ``torch.amin`` / ``amax``): its channel's bounds on that
        page are NaN; page selection ranks a NaN page score last.

    Examples
    --------
    >>> import torch, softdec
    >>> k = torch.randn(1, 2, 64, 8)
    >>> s = softdec.build_page_summary(k, page_size=16)
    >>> tuple(s.kmin.shape)
    (1, 2, 4, 8)

    References
    ----------
    Tang et al., "Quest: Query-Aware Sparsity for Efficient Long-Context LLM
    Inference", ICML 2024. https://arxiv.org/abs/2406.10774
    """
    _check_cache(k_cache, "k_cache")
    page_size = _page_size_arg(page_size)
    k_cache = _last_dense(k_cache)
    B, _, N, _ = k_cache.shape
    lens = _lens(seq_lens, "seq_lens", B, N, k_cache.device)
    kmin, kmax = _ops.sparse_page_summary(k_cache, page_size, lens)
    return PageSummary(kmin, kmax, page_size)


def update_page_summary(summary: PageSummary, k_cache: torch.Tensor, *,
                        start: Union[int, torch.Tensor], end: Union[int, torch.Tensor]) -> PageSummary:
    """Update page summaries in place after tokens ``[start, end)`` were written to the cache.

    Only the pages those tokens touch are recomputed (from the page's first
    token up to ``end``, so the result is exact and calling twice is harmless):
    one page per decoding step, never the whole cache.

    Parameters
    ----------
    summary : PageSummary
        From :func:`build_page_summary` on the same cache; updated in place, so
        ``kmin`` / ``kmax`` must not overlap themselves (an ``expand()``-ed tensor
        is rejected with a ValueError).
    k_cache : torch.Tensor
        ``(batch, kv_heads, tokens, head_dim)``, the key cache holding the new tokens.
    start, end : int or torch.Tensor
        ``(batch,)`` int64 per row: the appended tokens are ``[start[b], end[b])``
        (``start = old length``, ``end = new length``); ``start <= end <= tokens``.

    Returns
    -------
    PageSummary
        ``summary`` itself.

    Examples
    --------
    >>> import torch, softdec
    >>> k = torch.randn(1, 2, 64, 8)
    >>> s = softdec.build_page_summary(k, page_size=16, seq_lens=40)
    >>> k[:, :, 40] = 5.0
    >>> _ = softdec.update_page_summary(s, k, start=40, end=41)
    >>> bool((s.kmax[:, :, 2] == 5.0).all())
    True

    References
    ----------
    Tang et al., "Quest", ICML 2024. https://arxiv.org/abs/2406.10774
    """
    _check_cache(k_cache, "k_cache")
    if not isinstance(summary, PageSummary):
        raise ValueError(f"summary must be a PageSummary (from build_page_summary), got {type(summary).__name__}")
    B, _, N, _ = k_cache.shape
    P = (N + summary.page_size - 1) // summary.page_size
    if summary.kmin.shape != (B, k_cache.shape[1], P, k_cache.shape[3]):
        raise ValueError(f"summary.kmin must have shape {(B, k_cache.shape[1], P, k_cache.shape[3])} "
                         f"for this k_cache and page_size {summary.page_size}, got {tuple(summary.kmin.shape)}")
    k_cache = _last_dense(k_cache)
    s = row_param(start, "start", B, k_cache.device, torch.int64, lo=0, hi=N)
    e = row_param(end, "end", B, k_cache.device, torch.int64, lo=0, hi=N)
    if N == 0:  # an empty cache has no page to update (start = end = 0)
        return summary
    _ops.sparse_page_summary_update(summary.kmin, summary.kmax, k_cache, s, e)
    return summary


def _max_selected(n, budget, page_mode, page_size, sink, window):
    mid = -(-budget // page_size) * page_size if page_mode else budget
    return min(n, sink + window + mid)


@torch.library.register_fake("softdec::sparse_decode_attention")
def _sparse_decode_fake(q, k_cache, v_cache, seq_lens, budget, select, page_size, sink, window, scale,
                        kmin, kmax, return_indices):
    torch._check(q.dim() == 3, lambda: "q must be 3-D")
    torch._check(k_cache.dim() == 4 and v_cache.shape == k_cache.shape, lambda: "bad cache shapes")
    torch._check(q.shape[1] % k_cache.shape[1] == 0, lambda: "q heads must be a multiple of kv heads")
    torch._check(budget > 0, lambda: "budget must be positive")
    B, Hkv, N = k_cache.shape[0], k_cache.shape[1], k_cache.shape[2]
    M = _max_selected(N, budget, select == 0, page_size, sink, window)
    return q.new_empty(q.shape), q.new_empty((B if return_indices else 0, Hkv, M), dtype=torch.int64)


_register_no_backward("sparse_decode_attention", "sparse_decode_attention")


def sparse_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, *,
                            budget: int, select: str = "page", page_size: int = 16, sink: int = 4,
                            window: int = 64, seq_lens: Optional[Union[int, torch.Tensor]] = None,
                            scale: Optional[float] = None, return_indices: bool = False,
                            page_summary: Optional[PageSummary] = None):
    """Decode attention over a selected token set: sink + window + the ``budget`` most relevant tokens.

    Per row ``b`` with ``L = seq_lens[b]`` valid tokens and per KV head, the
    selected set is the first ``sink`` tokens, the last ``window`` tokens and,
    among the tokens in between (the middle):

    - ``select="token"`` (TokenSelect): exact scores ``s_h = scale * q_h . k``;
      every query head of the KV head's group votes with its softmax over the L
      valid tokens, the votes are summed, and the ``budget`` middle tokens with
      the largest summed votes are kept (one set per KV head, shared by its
      query group).
    - ``select="page"`` (Quest): pages are aligned blocks of ``page_size``
      tokens; a page's bound for query head h is ``sum_i max(q_i kmin_i,
      q_i kmax_i)`` (>= every ``q . k`` in the page); a KV head ranks a page by
      the **max** of its query heads' bounds, and the ``ceil(budget /
      page_size)`` top pages overlapping the middle contribute their middle tokens.

    Ties rank the lower token (page) index first; NaN scores rank last. Then
    every query head attends (softmax(scale q.k) v) over its KV head's set.
    ``budget >= L`` selects every token, i.e. dense attention, exactly.
    Tokens at or beyond ``seq_lens[b]`` are never read; ``seq_lens[b] = 0``
    gives a zero output row.

    Parameters
    ----------
    q : torch.Tensor
        ``(batch, q_heads, head_dim)``, float32/bfloat16/float16: one decode query per row.
    k_cache, v_cache : torch.Tensor
        ``(batch, kv_heads, tokens, head_dim)``, dtype of ``q``; ``q_heads`` a
        multiple of ``kv_heads`` (GQA). Only the last dimension must be contiguous.
    budget : int
        Middle tokens to keep (> 0); page mode keeps ``ceil(budget / page_size)`` pages.
    select : {"page", "token"}, default "page"
    page_size : int, default 16
        Power of two (page mode).
    sink : int, default 4
        Leading tokens always attended.
    window : int, default 64
        Trailing tokens always attended.
    seq_lens : int or torch.Tensor, optional
        ``(batch,)`` int64 valid lengths in ``[0, tokens]`` (default: all).
    scale : float, optional
        Softmax scale, default ``1 / sqrt(head_dim)``.
    return_indices : bool, default False
        Also return the selected token indices.
    page_summary : PageSummary, optional
        Precomputed summaries (:func:`build_page_summary`, kept current with
        :func:`update_page_summary`) with the same ``page_size``; computed from
        the cache when absent (page mode only).

    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        ``out`` ``(batch, q_heads, head_dim)`` in the dtype of ``q``; with
        ``return_indices``, also ``indices`` ``(batch, kv_heads, M)`` int64,
        ascending, padded with -1, ``M = min(tokens, sink + window + budget)``
        (page mode: ``budget`` rounded up to whole pages).

    Examples
    --------
    >>> import torch, softdec
    >>> q = torch.randn(1, 8, 64); k = torch.randn(1, 2, 4096, 64); v = torch.randn(1, 2, 4096, 64)
    >>> out = softdec.sparse_decode_attention(q, k, v, budget=256, select="page")
    >>> tuple(out.shape)
    (1, 8, 64)

    References
    ----------
    Tang et al., "Quest: Query-Aware Sparsity for Efficient Long-Context LLM
    Inference", ICML 2024 (https://arxiv.org/abs/2406.10774); Wu et al.,
    "TokenSelect: Efficient Long-Context Inference and Length Extrapolation for
    LLMs via Dynamic Token-Level KV Cache Selection", 2024 (https://arxiv.org/abs/2411.02886).
    """
    check_tensor(q, "q", dim=3, layout="(batch, q_heads, head_dim)", dtypes=FLOAT_DTYPES)
    _check_cache(k_cache, "k_cache")
    _check_cache(v_cache, "v_cache")
    q, k_cache, v_cache = _last_dense(q), _last_dense(k_cache), _last_dense(v_cache)
    if not isinstance(select, str) or select not in _SELECT_MODES:
        raise ValueError(f"select must be 'page' or 'token', got {select!r}")
    budget = int_arg(budget, "budget", lo=1)
    sink = int_arg(sink, "sink", lo=0)
    window = int_arg(window, "window", lo=0)
    page_size = _page_size_arg(page_size)
    if not isinstance(return_indices, bool):
        raise ValueError(f"return_indices must be a bool, got {type(return_indices).__name__} {return_indices!r}")
    B, Hq, d = q.shape
    N = k_cache.shape[2]
    if k_cache.shape[3] != d:
        raise ValueError(f"k_cache must have head_dim {d} like q, got {k_cache.shape[3]}")
    if k_cache.shape[1] == 0 or Hq % k_cache.shape[1] != 0:
        raise ValueError(f"q heads ({Hq}) must be a multiple of the k_cache kv heads ({k_cache.shape[1]})")
    lens = _lens(seq_lens, "seq_lens", B, N, q.device)
    scale = 1.0 / math.sqrt(d) if d > 0 and scale is None else (1.0 if scale is None else float_arg(scale, "scale"))
    kmin = kmax = None
    if page_summary is not None and select == "page":
        if not isinstance(page_summary, PageSummary):
            raise ValueError(f"page_summary must be a PageSummary, got {type(page_summary).__name__}")
        if page_summary.page_size != page_size:
            raise ValueError(f"page_summary.page_size must equal page_size ({page_size}), got {page_summary.page_size}")
        kmin, kmax = page_summary.kmin, page_summary.kmax
    out, idx = _ops.sparse_decode_attention(q, k_cache, v_cache, lens, budget, _SELECT_MODES[select],
                                            page_size, sink, window, float(scale), kmin, kmax,
                                            bool(return_indices))
    return (out, idx) if return_indices else out


@torch.library.register_fake("softdec::token_sparse_prefill")
def _token_sparse_prefill_fake(q, k, v, coverage, min_tokens, window, causal, scale):
    torch._check(q.dim() == 4 and k.dim() == 4 and v.shape == k.shape, lambda: "bad shapes")
    torch._check(q.shape[1] % k.shape[1] == 0, lambda: "q heads must be a multiple of k heads")
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.bool)


_register_no_backward("token_sparse_prefill", "token_sparse_prefill")


def token_sparse_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, coverage: float = 0.005,
                         min_tokens: int = 1024, window: int = 128, causal: bool = True,
                         scale: Optional[float] = None, return_kept: bool = False):
    """Token-sparse prefill attention: per head, drop the low-importance tail, attend densely on the rest.

    Per (row, query head), with ``w = min(window, L)``:

    1. Scores: ``score[j] = sum_{i in last w queries} softmax_i(scale q_i . k)[j]``
       (causal: query i sees keys j <= i), computed a block of query rows at a
       time with an online softmax; no ``[L, L]`` matrix.
    2. Drop: over the non-window tokens in ascending (score, index) order,
       drop the longest prefix whose cumulative score is <= ``coverage *
       sum(score)``, keeping at least ``min(min_tokens, L)`` tokens. The last
       ``w`` tokens (the scoring queries) are always kept. ``coverage = 0``
       keeps every token (exactly dense attention).
    3. Gather Q, K, V (the query head's KV head) to the kept set, run dense
       (causal, by position) attention on it, and scatter the outputs back;
       dropped rows are 0.

    Parameters
    ----------
    q : torch.Tensor
        ``(batch, q_heads, L, head_dim)``, float32/bfloat16/float16.
    k, v : torch.Tensor
        ``(batch, kv_heads, L, head_dim)``, dtype of ``q``; ``q_heads`` a multiple of ``kv_heads``.
    coverage : float, default 0.005
        Score mass that may be dropped, in ``[0, 1)``.
    min_tokens : int, default 1024
        Never keep fewer tokens than this (all when ``L <= min_tokens``).
    window : int, default 128
        Number of trailing queries that score the keys (> 0).
    causal : bool, default True
    scale : float, optional
        Default ``1 / sqrt(head_dim)``.
    return_kept : bool, default False
        Also return the kept mask.

    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        ``out`` ``(batch, q_heads, L, head_dim)`` in the dtype of ``q``; with
        ``return_kept``, also ``kept`` ``(batch, q_heads, L)`` bool.

    Examples
    --------
    >>> import torch, softdec
    >>> q = torch.randn(1, 4, 512, 32); k = torch.randn(1, 2, 512, 32); v = torch.randn(1, 2, 512, 32)
    >>> out, kept = softdec.token_sparse_prefill(q, k, v, coverage=0.2, min_tokens=128, return_kept=True)
    >>> tuple(out.shape), bool(kept[..., -128:].all())
    ((1, 4, 512, 32), True)

    References
    ----------
    "Token Sparse Attention" (2026): per-head Q/K/V compression during
    prefill with scatter-back; Quest/TokenSelect for decoding.
    """
    check_tensor(q, "q", dim=4, layout="(batch, q_heads, tokens, head_dim)", dtypes=FLOAT_DTYPES)
    check_tensor(k, "k", dim=4, layout="(batch, kv_heads, tokens, head_dim)", dtypes=FLOAT_DTYPES)
    check_tensor(v, "v", dim=4, layout="(batch, kv_heads, tokens, head_dim)", dtypes=FLOAT_DTYPES)
    q, k, v = _last_dense(q), _last_dense(k), _last_dense(v)
    coverage = float_arg(coverage, "coverage", lo=0, hi=1, hi_open=True)
    min_tokens = int_arg(min_tokens, "min_tokens", lo=0)
    window = int_arg(window, "window", lo=1)
    for name, flag in (("causal", causal), ("return_kept", return_kept)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be a bool, got {type(flag).__name__} {flag!r}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"q heads ({q.shape[1]}) must be a multiple of the k heads ({k.shape[1]})")
    d = q.shape[3]
    scale = 1.0 / math.sqrt(d) if d > 0 and scale is None else (1.0 if scale is None else float_arg(scale, "scale"))
    out, kept = _ops.token_sparse_prefill(q, k, v, float(coverage), min_tokens, window, bool(causal), float(scale))
    return (out, kept) if return_kept else out


__all__ = ["sparse_decode_attention", "token_sparse_prefill", "build_page_summary", "update_page_summary",
            "PageSummary"]
