"""Token-sparse attention backend registered through transformers' ``AttentionInterface``."""

from __future__ import annotations

import logging
import sys
from typing import Optional

import torch

from ..strategies._ops import op
from ._common import _check_transformers

# ============================================================================ token-sparse attention backend

SPARSE_ATTN_NAME = "softdec_token_sparse"
"""Name under which the backend is registered in AttentionInterface / AttentionMaskInterface
(for a model on ``sdpa``; a model on ``eager`` gets ``softdec_token_sparse_eager``, whose mask
function is the eager one)."""

_ORIGINALS = ("sdpa", "eager")
_log = logging.getLogger("softdec.hf")


def _original_attention(module, impl: str):
    """The attention function the model ran before the switch: transformers' registered one
    (``sdpa``) or the module's own ``eager_attention_forward`` (the modeling file's, which applies
    that architecture's softcap / sinks)."""
    if impl == "eager":
        fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
        if fn is not None:
            return fn
        return None  # the module computes attention itself (Bloom): it never calls the backend
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    return sdpa_attention_forward


def _dense_attention(module, query, key, value, attention_mask, **kwargs):
    fn = getattr(module, "_softdec_dense", "sdpa")
    if fn == "sdpa":
        from transformers.integrations.sdpa_attention import sdpa_attention_forward as fn
    elif fn is None:
        raise RuntimeError(f"{type(module).__name__} called the token-sparse backend but its model has no "
                           f"eager_attention_forward to fall back to")
    return fn(module, query, key, value, attention_mask, **kwargs)


def _dense_reason(attention_mask, dropout, kwargs) -> Optional[str]:
    """Why this call must run the layer's own attention, or None when the sparse kernels compute
    exactly the same thing (softcap, attention sinks and additive biases such as ALiBi are not in them)."""
    if dropout > 0.0:
        return "dropout"
    if kwargs.get("softcap") is not None:
        return "logit softcapping"
    if kwargs.get("s_aux") is not None or kwargs.get("sinks") is not None:
        return "attention sinks"
    m = attention_mask
    if isinstance(m, torch.Tensor) and m.is_floating_point() and m.dim() == 4:
        row = m[:, :, -1:, :]
        if bool(((row != 0) & (row > torch.finfo(m.dtype).min / 2)).any()):
            return "additive attention bias (e.g. ALiBi)"
    return None


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
    the model's own attention (its ``sdpa`` or ``eager`` function) everywhere else: layers not selected,
    padded or chunked prefill, and any call the kernels would not compute exactly (dropout, logit
    softcapping, attention sinks, an additive bias in the mask)."""
    cfg = getattr(module, "_softdec_sparse", None)
    B, Hq, Lq, d = query.shape
    N = key.shape[2]
    sw = kwargs.get("sliding_window")
    module._softdec_called = True
    reason = _dense_reason(attention_mask, dropout, kwargs) if cfg is not None else None
    if reason is not None:
        module._softdec_reason = reason
    if cfg is None or reason is not None:
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
    if (cfg["prefill"] and Lq == N and Lq >= cfg["prefill_min_length"] and not (sw is not None and sw < N)
            and _key_validity(attention_mask, B, N) is None):
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


def _register_sparse_backend(original: str) -> str:
    """Register the backend under a name whose mask function is the original implementation's
    (bool masks for sdpa, additive float masks for eager); returns the name."""
    from transformers import AttentionInterface
    try:
        from transformers import AttentionMaskInterface
    except ImportError:  # older layout
        from transformers.masking_utils import AttentionMaskInterface
    from transformers import masking_utils
    name = SPARSE_ATTN_NAME if original == "sdpa" else f"{SPARSE_ATTN_NAME}_{original}"
    AttentionInterface.register(name, _token_sparse_attention)
    AttentionMaskInterface.register(name, masking_utils.sdpa_mask if original == "sdpa" else masking_utils.eager_mask)
    return name


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
    (``"softdec_token_sparse_eager"`` for a model on eager attention), with the
    original implementation's mask function in ``AttentionMaskInterface``, and
    sets it as the model's attention implementation. In the selected layers,
    each decode step (one query) runs ``softdec.sparse_decode_attention`` over
    the KV cache (sink + local window + the ``budget`` most relevant tokens),
    and an unpadded prompt of at least ``prefill_min_length`` tokens runs
    ``softdec.token_sparse_prefill``; everything else (other layers, padded or
    chunked prefill) runs the model's own attention function, never a
    different one. Padded batches (and speculative cache holes) compact each
    row's valid keys to the front before the sparse kernel (a copy per step);
    sliding-window layers decode sparsely over their window (the mask marks
    the keys outside it).

    A layer stays on the model's own attention, never approximated, when the
    kernels would not compute it exactly: logit softcapping (Gemma 2),
    attention sinks (gpt-oss), an additive bias in the mask, or an
    architecture that computes attention itself instead of calling the
    interface (ALiBi in Bloom and Falcon). A two-token probe forward finds
    these when the backend is enabled; the result is in
    ``model.softdec_sparse_layers`` (sorted layer indices) and
    ``model.softdec_dense_layers`` ({layer: reason}), and is logged on the
    ``softdec.hf`` logger (a warning when a selected layer stays dense).
    Models on other implementations (flash, flex) are refused: switch them to
    ``sdpa`` first.

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
        The same model, switched, with ``softdec_sparse_layers`` and
        ``softdec_dense_layers`` set.

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
    prev = getattr(model, "_softdec_prev_attn", None) or model.config._attn_implementation
    if prev not in _ORIGINALS:
        raise ValueError(f"enable_token_sparse_attention needs a model on 'sdpa' or 'eager' attention (its dense "
                         f"fallback is the model's own implementation), got {prev!r}; switch first with "
                         f"model.set_attn_implementation('sdpa')")
    name = _register_sparse_backend(prev)
    for m in mods:
        m._softdec_sparse = dict(cfg) if m.layer_idx in chosen else None
        m._softdec_dense = _original_attention(m, prev)
        m._softdec_called, m._softdec_reason = False, None
    try:
        _set_attn(model, name)
    except (ValueError, NotImplementedError) as e:
        for m in mods:
            for attr in ("_softdec_sparse", "_softdec_dense", "_softdec_called", "_softdec_reason"):
                if hasattr(m, attr):
                    delattr(m, attr)
        raise ValueError(f"{type(model).__name__} cannot switch to the token-sparse backend: it does not route its "
                         f"attention through transformers' AttentionInterface ({e})") from None
    model._softdec_prev_attn = prev
    _probe_layers(model, mods, chosen)
    return model


def _probe_layers(model, mods, chosen) -> None:
    """Run two tokens through the model once and record which selected layers reach the sparse
    kernels: ``model.softdec_sparse_layers`` (sorted layer indices) and ``model.softdec_dense_layers``
    ({layer index: reason}) for the selected layers left on the model's own attention."""
    dev = next(model.parameters()).device
    with torch.no_grad():
        model(input_ids=torch.full((1, 2), 1, dtype=torch.long, device=dev), use_cache=False)
    sparse, dense = [], {}
    for m in mods:
        if m.layer_idx not in chosen:
            continue
        if not m._softdec_called:
            dense[m.layer_idx] = ("not routed through transformers' AttentionInterface (the architecture computes "
                                  "attention itself, e.g. ALiBi in Bloom / Falcon)")
        elif m._softdec_reason is not None:
            dense[m.layer_idx] = m._softdec_reason
            m._softdec_sparse = None
        else:
            sparse.append(m.layer_idx)
    model.softdec_sparse_layers = sorted(set(sparse))
    model.softdec_dense_layers = dict(sorted(dense.items()))
    _log.info("softdec token-sparse attention: sparse layers %s", model.softdec_sparse_layers)
    if dense:
        _log.warning("softdec token-sparse attention: %d selected layer(s) stay on the model's own attention: %s",
                     len(dense), "; ".join(f"{i}: {r}" for i, r in model.softdec_dense_layers.items()))


def disable_token_sparse_attention(model):
    """Switch the model back to the attention implementation it had before
    ``enable_token_sparse_attention`` (a no-op if it was never enabled)."""
    prev = getattr(model, "_softdec_prev_attn", None)
    for m in _attention_modules(model):
        for attr in ("_softdec_sparse", "_softdec_dense", "_softdec_called", "_softdec_reason"):
            if hasattr(m, attr):
                delattr(m, attr)
    for attr in ("softdec_sparse_layers", "softdec_dense_layers"):
        if hasattr(model, attr):
            delattr(model, attr)
    if prev is not None:
        _set_attn(model, prev)
        model._softdec_prev_attn = None
    return model
