"""TEMPORARY torch stand-ins for ops not yet merged (removed before the final commit)."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch


class SoftTokens(NamedTuple):
    embeds: torch.Tensor
    ids: torch.Tensor
    weights: torch.Tensor
    entropy: torch.Tensor
    max_prob: torch.Tensor
    valid: torch.Tensor
    noisy_logits: Optional[torch.Tensor]


class Sampled(NamedTuple):
    ids: torch.Tensor
    valid: torch.Tensor


class Verified(NamedTuple):
    tokens: torch.Tensor
    num_accepted: torch.Tensor
    soft_ids: Optional[torch.Tensor]
    soft_weights: Optional[torch.Tensor]


def _rows(v, B, dev, dt):
    if isinstance(v, torch.Tensor):
        return v.to(dev, dt).reshape(-1).expand(B)
    return torch.full((B,), v, device=dev, dtype=dt)


def _filtered(logits, temperature, top_k, top_p, min_p):
    B, V = logits.shape
    T = _rows(temperature, B, logits.device, torch.float64)
    l = logits.double()
    greedy = T <= 0
    p = torch.softmax(l / torch.where(greedy, 1.0, T)[:, None], -1)
    oh = torch.zeros_like(p).scatter_(1, l.argmax(-1, keepdim=True), 1.0)
    p = torch.where(greedy[:, None], oh, p)
    k = _rows(top_k, B, logits.device, torch.int64)
    k = torch.where((k <= 0) | (k > V), V, k)
    sp, si = p.sort(-1, descending=True)
    ar = torch.arange(V, device=p.device)
    keep = ar[None] < k[:, None]
    sp = sp * keep
    sp = sp / sp.sum(-1, keepdim=True)
    tp = _rows(top_p, B, logits.device, torch.float64)
    cum = sp.cumsum(-1) - sp
    keep &= cum < tp[:, None] - 1e-12
    keep[:, 0] = True
    sp = sp * keep
    sp = sp / sp.sum(-1, keepdim=True)
    mp = _rows(min_p, B, logits.device, torch.float64)
    keep &= sp >= mp[:, None] * sp[:, :1]
    sp = sp * keep
    sp = sp / sp.sum(-1, keepdim=True)
    return torch.zeros_like(p).scatter_(1, si, sp)


def sample(logits, *, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=None, offset=0, generator=None):
    q = _filtered(logits, temperature, top_k, top_p, min_p)
    g = torch.Generator().manual_seed((int(seed[0]) if isinstance(seed, torch.Tensor) else (seed or 0)) % (1 << 62) + int(offset[0] if isinstance(offset, torch.Tensor) else offset))
    ids = torch.multinomial(q.float().cpu(), 1, generator=g).squeeze(1).to(logits.device)
    return Sampled(ids, torch.ones_like(ids, dtype=torch.bool))


def soft_mixture(logits, embedding, *, top_k=10, temperature=1.0, top_p=1.0, min_p=0.0, noise=None, tau=1.0,
                 noise_scale=1.0, dirichlet_alpha=1.0, seed=None, offset=0, generator=None, embed_scale=1.0):
    B, V = logits.shape
    T = _rows(temperature, B, logits.device, torch.float64)
    l = logits.double()
    p_full = torch.softmax(l / torch.where(T <= 0, 1.0, T)[:, None], -1)
    ent = -(p_full * torch.log(p_full.clamp_min(1e-300))).sum(-1)
    mx = p_full.max(-1).values
    q = _filtered(logits, temperature, top_k, top_p, min_p)
    k = int(top_k)
    w, ids = q.topk(k, -1)
    embeds = (w.float()[..., None] * embedding[ids].float()).sum(1) * embed_scale
    return SoftTokens(embeds.to(embedding.dtype), ids, w.float(), ent.float(), mx.float(),
                      torch.ones(B, dtype=torch.bool, device=logits.device), None)


def verify(target_logits, draft_ids, *, num_draft=None, draft_probs=None, method="exact", temperature=1.0,
           top_k=0, top_p=1.0, min_p=0.0, seed=None, offset=0, generator=None, **kw):
    B, K1, V = target_logits.shape
    K = K1 - 1
    p = _filtered(target_logits.reshape(B * K1, V), temperature, top_k, top_p, min_p).reshape(B, K1, V)
    g = torch.Generator().manual_seed((int(seed[0]) * 1000003 + int(offset)) % (1 << 62) if isinstance(seed, torch.Tensor) else 0)
    tokens = torch.full((B, K1), -1, dtype=torch.int64)
    acc = torch.zeros(B, dtype=torch.int64)
    for b in range(B):
        j = 0
        while j < K:
            x = int(draft_ids[b, j])
            if method == "greedy":
                if x == int(p[b, j].argmax()):
                    tokens[b, j] = x; j += 1; continue
                break
            qx = 1.0 if draft_probs is None else float(draft_probs[b, j, x])
            if torch.rand((), generator=g).item() < min(1.0, float(p[b, j, x]) / max(qx, 1e-300)):
                tokens[b, j] = x; j += 1; continue
            break
        acc[b] = j
        if method == "greedy":
            tokens[b, j] = int(p[b, j].argmax())
        elif j < K:
            qq = torch.zeros(V, dtype=torch.float64) if draft_probs is None else draft_probs[b, j].double()
            if draft_probs is None:
                qq[int(draft_ids[b, j])] = 1.0
            r = (p[b, j] - qq).clamp_min(0)
            tokens[b, j] = int(torch.multinomial(r.float(), 1, generator=g))
        else:
            tokens[b, j] = int(torch.multinomial(p[b, j].float(), 1, generator=g))
    return Verified(tokens.to(target_logits.device), acc.to(target_logits.device), None, None)


def sparse_decode_attention(q, k_cache, v_cache, *, budget, select="page", page_size=16, sink=4, window=64,
                            seq_lens=None, scale=None, return_indices=False):
    B, Hq, d = q.shape
    Hkv, N = k_cache.shape[1], k_cache.shape[2]
    g = Hq // Hkv
    k = k_cache.repeat_interleave(g, 1).float()
    v = v_cache.repeat_interleave(g, 1).float()
    s = torch.einsum("bhd,bhnd->bhn", q.float(), k) * (scale if scale is not None else d ** -0.5)
    if seq_lens is not None:
        s = s.masked_fill(torch.arange(N)[None, None] >= seq_lens[:, None, None], float("-inf"))
    return torch.einsum("bhn,bhnd->bhd", s.softmax(-1), v).to(q.dtype)


def token_sparse_prefill(q, k, v, *, coverage=0.005, min_tokens=1024, window=128, causal=True, scale=None):
    g = q.shape[1] // k.shape[1]
    return torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1),
                                                            is_causal=causal, scale=scale)
