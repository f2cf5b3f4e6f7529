"""Token-sparse attention backend registered through transformers' ``AttentionInterface``."""

from __future__ import annotations

from typing import Optional

import torch

from ..strategies._ops import op
from ._common import _check_transformers

# ============================================================================ token-sparse attention backend

SPARSE_ATTN_NAME = "softdec_token_sparse"
"""Name under which the backend is registered in AttentionInterface / AttentionMaskInterface."""


def _dense_attention(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _key_validity(attention_mask, batch: int, n: int):
    """(B, N) bool validity of each key for the last query, or None when every key is valid."""
    if attention_mask is None:
        return None
    m = attention_mask
    if m.dim() == 4:
        m = m[:, 0, -1, :]
    if m.dtype != torch.bool:
        m = m > torch.finfo(m.dtype).min / 2
    m = m[..., -n:].expand(batch, n)
    return None if bool(m.all()) else m


def _token_sparse_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                            is_causal=None, **kwargs):
    """AttentionInterface function: sparse decode per step, token-sparse prefill on long prompts,
    SDPA everywhere else (layers not selected, padded prefill, chunked prefill, dropout, softcap)."""
    cfg = getattr(module, "_softdec_sparse", None)
    B, Hq, Lq, d = query.shape
    N = key.shape[2]
    sw = kwargs.get("sliding_window")
    if cfg is None or dropout > 0.0 or kwargs.get("softcap") is not None or (sw is not None and sw < N):
        return _dense_attention(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                is_causal=is_causal, **kwargs)
    if Lq == 1:
        valid = _key_validity(attention_mask, B, N)
        k, v, seq_lens = key, value, None
        if valid is not None:
            # padded rows / speculative holes: move each row's valid keys to the front (a copy)
            order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
            idx = order[:, None, :, None].expand(B, key.shape[1], N, d)
            k, v = key.gather(2, idx), value.gather(2, idx)
            seq_lens = valid.sum(1).to(torch.int64)
        extra = {}
        if cfg["select"] == "page" and valid is None and cfg["cache_pages"]:
            extra["page_summary"] = _page_summary(cfg, key, B, N)
        else:
            cfg["_pages"] = None
        out = op("sparse_decode_attention")(query[:, :, 0].contiguous(), k.contiguous(), v.contiguous(),
                                            budget=cfg["budget"], select=cfg["select"],
                                            page_size=cfg["page_size"], sink=cfg["sink"], window=cfg["window"],
                                            seq_lens=seq_lens, scale=scaling, **extra)
        return out[:, None].to(query.dtype), None
    cfg["_pages"] = None  # a multi-token step (prefill, speculative scoring) may rewrite cached keys
    if cfg["prefill"] and Lq == N and Lq >= cfg["prefill_min_length"] and _key_validity(attention_mask, B, N) is None:
        if attention_mask is None or bool(attention_mask.dim() == 4 and
                                          (attention_mask[:, :, -1, :] if attention_mask.dtype == torch.bool
                                           else attention_mask[:, :, -1, :] == 0).all()):
            out = op("token_sparse_prefill")(query.contiguous(), key.contiguous(), value.contiguous(),
                                             coverage=cfg["coverage"], min_tokens=cfg["min_tokens"],
                                             window=cfg["prefill_window"], causal=True, scale=scaling)
            return out.transpose(1, 2).contiguous(), None
    return _dense_attention(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                            is_causal=is_causal, **kwargs)


def _page_summary(cfg, key, batch: int, n: int):
    """This layer's Quest page summaries, updated by one token per decode step (built on the first
    decode step after any multi-token forward, or when the cache did not grow by exactly one)."""
    ps = cfg["page_size"]
    st = cfg.get("_pages")
    if st is not None and st[1] == n - 1 and st[0].kmin.shape[0] == batch and st[0].kmin.shape[1] == key.shape[1]:
        summ = st[0]
        pages = (n + ps - 1) // ps
        if summ.kmin.shape[2] < pages:  # the new token opens a page
            pad = summ.kmin.new_zeros(summ.kmin.shape[:2] + (pages - summ.kmin.shape[2], summ.kmin.shape[3]))
            summ = type(summ)(torch.cat([summ.kmin, pad], 2), torch.cat([summ.kmax, pad.clone()], 2), ps)
        op("update_page_summary")(summ, key, start=n - 1, end=n)
    else:
        summ = op("build_page_summary")(key, page_size=ps)
    cfg["_pages"] = (summ, n)
    return summ


def _attention_modules(model):
    mods = []
    for name, mod in model.named_modules():
        if type(mod).__name__.endswith("Attention") and isinstance(getattr(mod, "layer_idx", None), int):
            mods.append(mod)
    return mods


def _register_sparse_backend():
    from transformers import AttentionInterface
    try:
        from transformers import AttentionMaskInterface
    except ImportError:  # older layout
        from transformers.masking_utils import AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask
    AttentionInterface.register(SPARSE_ATTN_NAME, _token_sparse_attention)
    AttentionMaskInterface.register(SPARSE_ATTN_NAME, sdpa_mask)


def _set_attn(model, name: str):
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:
        model.config._attn_implementation = name


def enable_token_sparse_attention(model, *, budget: int, select: str = "page", layers=None, prefill: bool = True,
                                  page_size: int = 16, sink: int = 4, window: int = 64, coverage: float = 0.005,
                                  min_tokens: int = 1024, prefill_window: int = 128,
                                  prefill_min_length: Optional[int] = None, cache_page_summaries: bool = True):
    """Switch a model's attention to softdec's token-sparse kernels.

    Registers ``"softdec_token_sparse"`` in transformers' ``AttentionInterface``
    (with ``sdpa_mask`` as its mask function in ``AttentionMaskInterface``) and
    sets it as the model's attention implementation. In the selected layers,
    each decode step (one query) runs ``softdec.sparse_decode_attention`` over
    the KV cache (sink + local window + the ``budget`` most relevant tokens),
    and an unpadded prompt of at least ``prefill_min_length`` tokens runs
    ``softdec.token_sparse_prefill``; everything else (other layers, padded or
    chunked prefill) runs SDPA. Padded batches (and speculative cache holes)
    compact each row's valid keys to the front before the sparse kernel (a
    copy per step).

    Parameters
    ----------
    model : transformers.PreTrainedModel
    budget : int
        Tokens selected per KV head beyond sink and window (>= 1). ``budget``
        at least the context length is dense attention, exactly.
    select : {"page", "token"}, default "page"
        Quest page bounds or exact token scores (TokenSelect).
    layers : iterable of int, optional
        Layer indices to make sparse (negative counts from the end); default all.
        Token Sparse Attention applies the prefill to the second half.
    prefill : bool, default True
        Use token-sparse prefill on long prompts.
    page_size, sink, window : int
        ``sparse_decode_attention`` parameters.
    coverage, min_tokens, prefill_window : float, int, int
        ``token_sparse_prefill`` parameters.
    prefill_min_length : int, optional
        Shortest prompt that uses the sparse prefill; default ``min_tokens + 1``
        (shorter prompts would keep every token anyway).
    cache_page_summaries : bool, default True
        Page mode: keep each layer's Quest page summaries (per-page key
        min/max) across decode steps and update only the page the new token
        lands in, instead of rescanning the whole cache every step. They are
        rebuilt after any multi-token forward or padded step.

    Returns
    -------
    model
        The same model, switched.

    Examples
    --------
    >>> # softdec.hf.enable_token_sparse_attention(model, budget=2048, select="page",
    >>> #                                          layers=range(14, 28))
    >>> # ... model.generate(...) / softdec.hf.generate(...)
    >>> # softdec.hf.disable_token_sparse_attention(model)

    References
    ----------
    Tang et al., "Quest", ICML 2024; Wu et al., "TokenSelect", 2024; Token Sparse Attention, 2026.
    """
    _check_transformers()
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be a positive int, got {budget!r}")
    if select not in ("page", "token"):
        raise ValueError(f"select must be 'page' or 'token', got {select!r}")
    for nm, val in (("page_size", page_size), ("min_tokens", min_tokens), ("prefill_window", prefill_window)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"{nm} must be a positive int, got {val!r}")
    for nm, val in (("sink", sink), ("window", window)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 0:
            raise ValueError(f"{nm} must be a non-negative int, got {val!r}")
    if not (0.0 <= float(coverage) < 1.0):
        raise ValueError(f"coverage must be in [0, 1), got {coverage!r}")
    mods = _attention_modules(model)
    if not mods:
        raise ValueError(f"found no attention layers (modules with a layer_idx) in {type(model).__name__}")
    n_layers = max(m.layer_idx for m in mods) + 1
    if layers is None:
        chosen = set(range(n_layers))
    else:
        chosen = set()
        for i in layers:
            if isinstance(i, bool) or not isinstance(i, int) or not (-n_layers <= i < n_layers):
                raise ValueError(f"layers must hold layer indices in [-{n_layers}, {n_layers}), got {i!r}")
            chosen.add(i % n_layers)
    cfg = dict(budget=budget, select=select, page_size=page_size, sink=sink, window=window, prefill=bool(prefill),
               coverage=float(coverage), min_tokens=min_tokens, prefill_window=prefill_window,
               prefill_min_length=min_tokens + 1 if prefill_min_length is None else int(prefill_min_length),
               cache_pages=bool(cache_page_summaries) and hasattr(__import__("softdec"), "build_page_summary"))
    _register_sparse_backend()
    if getattr(model, "_softdec_prev_attn", None) is None:
        model._softdec_prev_attn = model.config._attn_implementation
    for m in mods:
        m._softdec_sparse = dict(cfg) if m.layer_idx in chosen else None
    _set_attn(model, SPARSE_ATTN_NAME)
    return model


def disable_token_sparse_attention(model):
    """Switch the model back to the attention implementation it had before
    ``enable_token_sparse_attention`` (a no-op if it was never enabled)."""
    prev = getattr(model, "_softdec_prev_attn", None)
    for m in _attention_modules(model):
        if hasattr(m, "_softdec_sparse"):
            del m._softdec_sparse
    if prev is not None:
        _set_attn(model, prev)
        model._softdec_prev_attn = None
    return model
