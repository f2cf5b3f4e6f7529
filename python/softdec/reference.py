"""Pure PyTorch references: the oracles of the tests and the baselines of the
benchmarks. Written for clarity, not speed; tests run them in float64.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["philox4x32_10", "philox_uniform"]

# ============================================================================ RNG

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK = 0xFFFFFFFF


def philox4x32_10(counter, key) -> np.ndarray:
    """Philox4x32-10 on numpy arrays: ``counter`` (..., 4) and ``key`` (..., 2) uint32.

    A direct transcription of the Random123 specification, vectorised over the
    leading dimensions, in uint64 arithmetic.
    """
    c = np.asarray(counter, dtype=np.uint64) & _MASK
    k = np.asarray(key, dtype=np.uint64) & _MASK
    c0, c1, c2, c3 = (c[..., i].copy() for i in range(4))
    k0, k1 = k[..., 0].copy(), k[..., 1].copy()
    for _ in range(10):
        p0 = np.uint64(_M0) * c0
        p1 = np.uint64(_M1) * c2
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ k0) & _MASK, p1 & _MASK, \
                         ((p0 >> np.uint64(32)) ^ c3 ^ k1) & _MASK, p0 & _MASK
        k0 = (k0 + np.uint64(_W0)) & _MASK
        k1 = (k1 + np.uint64(_W1)) & _MASK
    return np.stack([c0, c1, c2, c3], axis=-1).astype(np.uint32)


def philox_uniform(seed: int, offset: int, n: int) -> torch.Tensor:
    """The first ``n`` elements of the ``(seed, offset)`` stream, float32 in (0, 1)."""
    seed &= (1 << 64) - 1
    offset &= (1 << 64) - 1
    nb = (n + 3) // 4
    b = np.arange(nb, dtype=np.uint64)
    ctr = np.stack([b & _MASK, b >> np.uint64(32),
                    np.full(nb, offset & _MASK, np.uint64), np.full(nb, offset >> 32, np.uint64)], -1)
    key = np.broadcast_to(np.array([seed & _MASK, seed >> 32], np.uint64), (nb, 2))
    bits = philox4x32_10(ctr, key).reshape(-1)[:n]
    u = ((bits >> np.uint32(9)).astype(np.float64) + 0.5) / 2.0 ** 23
    return torch.from_numpy(u.astype(np.float32))


# ============================================================================ soft mixture

__all__ += []  # this family's public names


# ============================================================================ sampling

__all__ += []  # this family's public names


# ============================================================================ speculative verification

__all__ += []  # this family's public names


# ============================================================================ token-sparse attention
# SDPA-based oracles (torch.nn.functional.scaled_dot_product_attention). The
# selection rules are spelled out with plain tensor ops, in the dtype given
# (tests pass float64).

def _sdpa(q, k, v, mask=None, is_causal=False, scale=None):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                                            scale=scale)


def _lens_list(seq_lens, B, N):
    if seq_lens is None:
        return [N] * B
    if isinstance(seq_lens, int):
        return [seq_lens] * B
    if isinstance(seq_lens, torch.Tensor):
        seq_lens = seq_lens.tolist()
    return [int(x) for x in seq_lens]


def dense_decode_attention(q, k_cache, v_cache, *, seq_lens=None, scale=None):
    """Dense decode attention over the whole cache with SDPA (GQA): the bench baseline.

    q (B, Hq, d); k_cache, v_cache (B, Hkv, N, d); returns (B, Hq, d). With
    ``seq_lens`` a key mask drops tokens at or beyond each row's length.
    """
    B, Hq, d = q.shape
    Hkv, N = k_cache.shape[1], k_cache.shape[2]
    mask = None
    if seq_lens is not None:
        lens = torch.as_tensor(seq_lens, device=q.device).reshape(-1).expand(B)
        mask = (torch.arange(N, device=q.device)[None, :] < lens[:, None])[:, None, None, :]
    out = torch.nn.functional.scaled_dot_product_attention(
        q[:, :, None, :], k_cache, v_cache, attn_mask=mask, scale=scale, enable_gqa=Hq != Hkv)
    return out[:, :, 0, :]


def page_summary(k_cache, page_size=16, seq_lens=None):
    """(kmin, kmax): per-page per-channel min/max over valid tokens; empty pages 0."""
    B, H, N, d = k_cache.shape
    P = -(-N // page_size)
    kmin = torch.zeros(B, H, P, d, dtype=k_cache.dtype)
    kmax = torch.zeros(B, H, P, d, dtype=k_cache.dtype)
    for b, L in enumerate(_lens_list(seq_lens, B, N)):
        for p in range(P):
            t0, t1 = p * page_size, min((p + 1) * page_size, L)
            if t1 > t0:
                kmin[b, :, p] = k_cache[b, :, t0:t1].amin(dim=1)
                kmax[b, :, p] = k_cache[b, :, t0:t1].amax(dim=1)
    return kmin, kmax


def page_bounds(q, kmin, kmax, scale=1.0):
    """Quest bounds (B, Hq, P): sum_i max(s q_i kmin_i, s q_i kmax_i) (GQA by repeat)."""
    G = q.shape[1] // kmin.shape[1]
    qs = (q * scale)[:, :, None, :]
    mn = kmin.repeat_interleave(G, dim=1).to(q.dtype)
    mx = kmax.repeat_interleave(G, dim=1).to(q.dtype)
    return torch.maximum(qs * mn, qs * mx).sum(-1)


def _region(L, sink, window):
    se = min(sink, L)
    return se, max(se, L - window)


def _top(scores, idx, need):
    """The `need` best of idx by (score desc, index asc), sorted by index."""
    if need >= len(idx):
        return sorted(idx)
    s = torch.nan_to_num(scores.double(), nan=-float("inf")).tolist()
    order = sorted(range(len(idx)), key=lambda i: (-s[i], idx[i]))[:need]
    return sorted(idx[i] for i in order)


def sparse_decode_select(q, k_cache, *, budget, select="page", page_size=16, sink=4, window=64,
                         seq_lens=None, scale=None, kmin=None, kmax=None):
    """Selected token indices per (row, KV head): a list of lists of sorted ints."""
    B, Hq, d = q.shape
    Hkv, N = k_cache.shape[1], k_cache.shape[2]
    G = Hq // Hkv
    scale = d ** -0.5 if scale is None else scale
    lens = _lens_list(seq_lens, B, N)
    if select == "page" and kmin is None:
        kmin, kmax = page_summary(k_cache, page_size, lens)
    out = []
    for b in range(B):
        L = lens[b]
        se, ws = _region(L, sink, window)
        row = []
        if select == "page":
            bnd = page_bounds(q[b:b + 1], kmin[b:b + 1], kmax[b:b + 1], scale)[0]  # (Hq, P)
            bnd = torch.nan_to_num(bnd, nan=-float("inf"))
        else:
            s = torch.einsum("hd,hnd->hn", q[b] * scale, k_cache[b, :, :L].repeat_interleave(G, dim=0))
            s = torch.nan_to_num(s, nan=-float("inf"))
            p = torch.softmax(s, dim=-1) if L else s
        for g in range(Hkv):
            if select == "page":
                if se < ws:
                    first, last = se // page_size, (ws - 1) // page_size + 1
                else:
                    first = last = 0
                pages = list(range(first, last))
                sc = bnd[g * G:(g + 1) * G, first:last].amax(dim=0)
                chosen = _top(sc, pages, -(-budget // page_size))
                mid = [t for pg in chosen for t in range(max(pg * page_size, se), min((pg + 1) * page_size, ws))]
            else:
                cand = list(range(se, ws))
                vote = p[g * G:(g + 1) * G, se:ws].sum(0) if cand else torch.zeros(0)
                mid = _top(vote, cand, budget)
            row.append(list(range(se)) + mid + list(range(ws, L)))
        out.append(row)
    return out


def sparse_decode_attention(q, k_cache, v_cache, *, budget, select="page", page_size=16, sink=4, window=64,
                            seq_lens=None, scale=None, indices=None, kmin=None, kmax=None):
    """softdec.sparse_decode_attention with SDPA over a boolean mask of the selected tokens.

    ``indices`` (a (B, Hkv, M) tensor padded with -1, or nested lists)
    overrides the selection, to check the attention on a given set.
    """
    B, Hq, d = q.shape
    Hkv, N = k_cache.shape[1], k_cache.shape[2]
    G = Hq // Hkv
    if indices is None:
        indices = sparse_decode_select(q, k_cache, budget=budget, select=select, page_size=page_size, sink=sink,
                                       window=window, seq_lens=seq_lens, scale=scale, kmin=kmin, kmax=kmax)
    mask = torch.zeros(B, Hkv, N, dtype=torch.bool)
    for b in range(B):
        for g in range(Hkv):
            ix = indices[b][g]
            ix = torch.as_tensor(ix, dtype=torch.int64)
            ix = ix[ix >= 0]
            mask[b, g, ix] = True
    mask = mask.repeat_interleave(G, dim=1)[:, :, None, :].to(q.device)
    out = _sdpa(q[:, :, None, :], k_cache.repeat_interleave(G, dim=1), v_cache.repeat_interleave(G, dim=1),
                mask=mask, scale=scale)[:, :, 0]
    return torch.where(mask.any(-1), out, torch.zeros_like(out))  # empty set -> 0 (SDPA gives NaN)


def token_sparse_scores(q, k, *, window=128, causal=True, scale=None):
    """(B, Hq, L): sum over the last `window` queries of their softmax over the keys."""
    B, Hq, L, d = q.shape
    G = Hq // k.shape[1]
    scale = d ** -0.5 if scale is None else scale
    w = min(window, L)
    kk = k.repeat_interleave(G, dim=1)
    s = torch.einsum("bhid,bhjd->bhij", q[:, :, L - w:] * scale, kk)
    if causal:
        pos = torch.arange(L - w, L)[:, None]
        s = s.masked_fill(torch.arange(L)[None, :] > pos, float("-inf"))
    return torch.softmax(torch.nan_to_num(s, nan=-float("inf")), dim=-1).nan_to_num(0.0).sum(2)


def token_sparse_kept(scores, *, coverage=0.005, min_tokens=1024, window=128):
    """(B, Hq, L) bool: the drop rule of softdec.token_sparse_prefill on given scores."""
    B, H, L = scores.shape
    w = min(window, L)
    kept = torch.ones(B, H, L, dtype=torch.bool, device=scores.device)
    dmax = min(L - w, L - min(L, max(min_tokens, w)))
    if coverage <= 0 or dmax <= 0:
        return kept
    s = scores[..., :L - w].double()
    sv, order = torch.sort(s, dim=-1, stable=True)  # ascending score, ties by index
    cum = sv.cumsum(-1)
    limit = coverage * scores.double().sum(-1, keepdim=True)
    drop = (cum <= limit) & (torch.arange(L - w, device=s.device) < dmax)
    drop = drop.cumprod(-1).bool()  # the longest prefix only
    kept[..., :L - w].scatter_(-1, order, ~drop)
    return kept


def token_sparse_prefill(q, k, v, *, coverage=0.005, min_tokens=1024, window=128, causal=True, scale=None,
                         kept=None):
    """softdec.token_sparse_prefill: score, drop, gather, SDPA on the kept set, scatter back.

    ``kept`` (B, Hq, L) bool overrides the selection.
    """
    B, Hq, L, d = q.shape
    G = Hq // k.shape[1]
    if kept is None:
        kept = token_sparse_kept(token_sparse_scores(q, k, window=window, causal=causal, scale=scale),
                                 coverage=coverage, min_tokens=min_tokens, window=window)
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(Hq):
            ix = kept[b, h].nonzero()[:, 0].to(q.device)
            if ix.numel() == 0:
                continue
            qs, ks, vs = q[b, h, ix], k[b, h // G, ix], v[b, h // G, ix]
            out[b, h, ix] = _sdpa(qs[None], ks[None], vs[None], is_causal=causal, scale=scale)[0]
    return out


def sparse_decode_attention_topk(q, k_cache, v_cache, *, budget, select="page", page_size=16, sink=4,
                                  window=64, scale=None, kmin=None, kmax=None):
    """A vectorised torch formulation of sparse decode for benchmarking (full caches, no seq_lens).

    Same scores as softdec.sparse_decode_attention; torch.topk picks the set
    (its tie order is unspecified) and SDPA attends over the gathered tokens.
    Page mode may count a page that straddles the sink/window edge twice.
    """
    B, Hq, d = q.shape
    Hkv, N = k_cache.shape[1], k_cache.shape[2]
    G = Hq // Hkv
    scale = d ** -0.5 if scale is None else scale
    qg = (q * scale).reshape(B, Hkv, G, d)
    sink, window = min(sink, N), min(window, max(N - sink, 0))
    mid = N - sink - window
    if budget >= mid:
        idx = torch.arange(N, device=q.device).expand(B, Hkv, N)
    elif select == "token":
        s = torch.einsum("bgjd,bgnd->bgjn", qg.float(), k_cache.float())
        vote = torch.softmax(s, -1).sum(2)[..., sink:N - window]
        top = torch.topk(vote, budget, dim=-1).indices + sink
        edge = torch.cat([torch.arange(sink), torch.arange(N - window, N)]).to(q.device).expand(B, Hkv, -1)
        idx = torch.cat([edge, top], -1)
    else:
        if kmin is None:
            P = -(-N // page_size)
            kp = torch.nn.functional.pad(k_cache, (0, 0, 0, P * page_size - N)).reshape(B, Hkv, P, page_size, d)
            kmin, kmax = kp.amin(3), kp.amax(3)
        P = kmin.shape[2]
        qq = qg.float()[:, :, :, None, :]
        bound = torch.maximum(qq * kmin.float()[:, :, None], qq * kmax.float()[:, :, None]).sum(-1).amax(2)
        first, last = sink // page_size, (N - window - 1) // page_size + 1
        npages = min(-(-budget // page_size), last - first)
        top = torch.topk(bound[..., first:last], npages, dim=-1).indices + first
        tok = (top[..., None] * page_size + torch.arange(page_size, device=q.device)).flatten(-2).clamp(max=N - 1)
        edge = torch.cat([torch.arange(sink), torch.arange(N - window, N)]).to(q.device).expand(B, Hkv, -1)
        idx = torch.cat([edge, tok], -1)
    ks = torch.gather(k_cache, 2, idx[..., None].expand(-1, -1, -1, d))
    vs = torch.gather(v_cache, 2, idx[..., None].expand(-1, -1, -1, d))
    out = torch.nn.functional.scaled_dot_product_attention(qg, ks, vs, scale=1.0)
    return out.reshape(B, Hq, d)


def dense_causal_attention(q, k, v, *, scale=None):
    """Dense causal SDPA (GQA): the prefill bench baseline."""
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                            enable_gqa=q.shape[1] != k.shape[1])


__all__ += ["dense_decode_attention", "page_summary", "page_bounds", "sparse_decode_select",
            "sparse_decode_attention", "token_sparse_scores", "token_sparse_kept", "token_sparse_prefill",
            "dense_causal_attention", "sparse_decode_attention_topk"]

