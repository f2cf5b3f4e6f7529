"""Peer libraries' equivalents as extra benchmark columns (issue 17: "no slower than FlashInfer").

On CUDA, when the ``flashinfer`` package is importable, the sampling and filter rows get a
``flashinfer`` column (its fused kernels on the same inputs); otherwise the row's note says
why the column is missing. Nothing here runs on CPU: FlashInfer is CUDA-only.
"""

from __future__ import annotations

import importlib

import torch

_MISSING = object()
_cache = {}


def flashinfer():
    """The ``flashinfer`` module, or None when it cannot be imported."""
    if "flashinfer" not in _cache:
        try:
            _cache["flashinfer"] = importlib.import_module("flashinfer")
        except Exception:  # not installed, or built for another torch / CUDA
            _cache["flashinfer"] = None
    return _cache["flashinfer"]


def note(device: str) -> str:
    """What a row's note says about the FlashInfer column."""
    if not str(device).startswith("cuda"):
        return ""
    return "" if flashinfer() is not None else "flashinfer: not importable, column skipped"


def sample_fns(x: torch.Tensor, kw: dict, device: str) -> dict:
    """FlashInfer's sampler for softdec.sample(x, **kw): plain, top-k + top-p, min-p rows."""
    fi = flashinfer() if str(device).startswith("cuda") else None
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
    fi = flashinfer() if str(device).startswith("cuda") else None
    if fi is None or name not in ("top_k_mask_logits", "top_p_renorm_probs"):
        return {}
    f = getattr(fi.sampling, name)
    return {"flashinfer": lambda: f(inp, arg)}
