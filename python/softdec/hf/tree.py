"""Token-tree speculative decoding for Hugging Face models: tree attention masks, position ids,
KV-cache compaction of the accepted path, and the ``Speculative(..., tree=...)`` decode loop.

A tree is ``parents`` (N,) or (B, N) int64: node 0 is the root (the last accepted token),
``parents[n] < n`` for the other nodes, -1 pads ragged trees. Nodes are fed to a model in index
order after ``past_len`` cached positions: node ``n`` sits at cache column ``past_len + n`` and
position ``past_len + depth(n)``, and attends to every cached position and to its ancestors and
itself in the tree.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..strategies.base import MODE_DISCRETE, MODE_FINISHED
from .._rng import philox_uniform
from ._common import GenerateOutput, GenerationStats, _cache_kwarg, _cache_layout, _new_cache, _seeds, _vocab_size

__all__ = ["tree_depths", "tree_ancestors", "tree_attention_mask", "tree_position_ids", "compact_cache",
           "tree_from_spec", "sample_siblings"]


def _as_batch(parents: torch.Tensor) -> torch.Tensor:
    if not isinstance(parents, torch.Tensor) or parents.dim() not in (1, 2):
        raise ValueError(f"parents must be a (N,) or (batch, N) int tensor, got "
                         f"{tuple(parents.shape) if isinstance(parents, torch.Tensor) else type(parents).__name__}")
    p = parents.long()
    return p[None] if p.dim() == 1 else p


def tree_ancestors(parents: torch.Tensor) -> torch.Tensor:
    """(B, N, N) bool: ``anc[b, i, j]`` is True iff node j is node i or one of its ancestors.
    Padding nodes (parent -1 after node 0) are their own only ancestor."""
    p = _as_batch(parents)
    B, N = p.shape
    anc = torch.eye(N, dtype=torch.bool, device=p.device).expand(B, N, N).clone()
    for n in range(1, N):  # parents come first: copy the parent's row
        par = p[:, n]
        real = par >= 0
        if bool(real.any()):
            rows = anc[torch.arange(B, device=p.device), par.clamp(min=0)]
            anc[:, n] |= rows & real[:, None]
    return anc


def tree_depths(parents: torch.Tensor) -> torch.Tensor:
    """(B, N) int64 depth of each node (root 0; padding nodes 0)."""
    anc = tree_ancestors(parents)
    p = _as_batch(parents)
    d = anc.sum(-1) - 1
    return torch.where((p >= 0) | (torch.arange(p.shape[1], device=p.device) == 0), d, torch.zeros_like(d))


def tree_attention_mask(parents: torch.Tensor, past_len: int = 0, *, dtype: torch.dtype = torch.float32,
                        past_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A 4-D additive attention mask (B, 1, N, past_len + N) for feeding a tree after ``past_len`` cached
    positions: 0 where node i may attend (every cached position allowed by ``past_mask`` (B, past_len),
    default all; node i itself and its ancestors), the dtype's minimum elsewhere. Usable as
    ``attention_mask`` of a transformers forward (eager and SDPA attention)."""
    anc = tree_ancestors(parents)
    B, N, _ = anc.shape
    past = torch.ones(B, N, past_len, dtype=torch.bool, device=anc.device)
    if past_mask is not None:
        past = past & past_mask.bool()[:, None, :]
    allowed = torch.cat([past, anc], -1)
    m = torch.zeros(B, 1, N, past_len + N, dtype=dtype, device=anc.device)
    return m.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)


def tree_position_ids(parents: torch.Tensor, past_len=0) -> torch.Tensor:
    """(B, N) int64 position ids: ``past_len + depth(n)`` (``past_len`` an int or a (B,) tensor)."""
    d = tree_depths(parents)
    if isinstance(past_len, torch.Tensor):
        return d + past_len.long().to(d.device)[:, None]
    return d + int(past_len)


def compact_cache(cache, keep: torch.Tensor) -> None:
    """Keep only the cache positions ``keep`` ((S',) int64, ascending), in place: every layer's keys
    and values are gathered along the sequence axis, so the cache ends as if only those positions
    had been fed (e.g. the context, the root and the accepted path of a token tree). Works on
    ``DynamicCache`` with ``layers`` (transformers >= 4.56, 5.x) and the older ``key_cache`` /
    ``value_cache`` lists. Not for sliding-window or recurrent layers."""
    keep = keep.long()
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            k = getattr(layer, "keys", None)
            if not isinstance(k, torch.Tensor) or k.numel() == 0:
                continue
            idx = keep.to(k.device)
            layer.keys = k.index_select(-2, idx)
            layer.values = layer.values.index_select(-2, idx)
        return
    if hasattr(cache, "key_cache"):
        for i, k in enumerate(cache.key_cache):
            if isinstance(k, torch.Tensor) and k.numel():
                idx = keep.to(k.device)
                cache.key_cache[i] = k.index_select(-2, idx)
                cache.value_cache[i] = cache.value_cache[i].index_select(-2, idx)
        return
    raise ValueError(f"cache of type {type(cache).__name__} cannot be compacted (no layers / key_cache)")


def tree_from_spec(tree) -> list[tuple[int, ...]]:
    """Normalise ``Speculative(tree=...)``: ``(k, depth)`` (top-k children per node to a depth) or a list
    of rank paths (a Medusa-style fixed tree: ``(0,)`` is the draft's top token after the root, ``(0, 1)``
    the second-ranked token after that, ...; every prefix of a path must be listed). Returns the paths in
    breadth-first order (by depth, then rank)."""
    if isinstance(tree, tuple) and len(tree) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                          for v in tree):
        k, depth = tree
        if k < 1 or depth < 1:
            raise ValueError(f"tree=(k, depth) needs k >= 1 and depth >= 1, got {tree!r}")
        if (k ** (depth + 1) - 1) // max(k - 1, 1) > 4096 if k > 1 else depth > 4096:
            raise ValueError(f"tree=(k, depth) = {tree!r} has more than 4096 nodes")
        paths = [()]
        out = []
        for _ in range(depth):
            paths = [p + (r,) for p in paths for r in range(k)]
            out.extend(paths)
    else:
        try:
            out = [tuple(int(r) for r in p) for p in tree]
        except TypeError:
            raise ValueError(f"tree must be (k, depth) or a list of rank paths like [(0,), (1,), (0, 0)], "
                             f"got {tree!r}") from None
        if not out:
            raise ValueError("tree must have at least one node besides the root")
        seen = set(out)
        if len(seen) != len(out):
            raise ValueError(f"tree paths must be distinct, got {tree!r}")
        for p in out:
            if len(p) == 0 or any(r < 0 for r in p):
                raise ValueError(f"tree paths must be non-empty tuples of ranks >= 0, got {p!r}")
            if len(p) > 1 and p[:-1] not in seen:
                raise ValueError(f"tree path {p!r} needs its parent path {p[:-1]!r} in the tree")
    return sorted(out, key=lambda p: (len(p), p))


def _tree_arrays(paths):
    """parents (N,), depth (N,), rank (N,) lists for the root + BFS-ordered paths."""
    index = {(): 0}
    parents, depth, rank = [-1], [0], [0]
    for i, p in enumerate(paths, start=1):
        index[p] = i
        parents.append(index[p[:-1]])
        depth.append(len(p))
        rank.append(p[-1])
    return parents, depth, rank


def sample_siblings(q: torch.Tensor, m: int, uniforms: torch.Tensor):
    """Draw ``m`` children per parent from the draft distribution ``q`` without replacement, and the
    proposal each child was drawn from (what ``verify_tree(method="exact")`` needs as ``draft_probs``).

    ``q`` is (R, V) (one row per parent: the draft's filtered, normalised distribution); ``uniforms``
    (R, V) in (0, 1) (e.g. a Philox stream per parent). Gumbel-top-m on ``log q`` draws the children in
    order as successive draws without replacement: child ``j`` is a draw from ``q_j``, ``q`` with the
    earlier siblings' tokens removed and renormalised. Verifying the children in this order with
    recursive rejection (accept ``x_j`` with probability ``min(1, r(x_j) / q_j(x_j))``, on rejection
    ``r <- norm(max(0, r - q_j))``) is then a chain of standard speculative steps, each with proposal
    ``q_j``, so the emitted token is distributed exactly as the target (recursive speculative decoding
    without replacement: Jeon et al., "Recursive Speculative Decoding: Accelerating LLM Inference via
    Sampling Without Replacement", 2024; the multi-draft rule of SpecTr, Sun et al., NeurIPS 2023).
    When ``q``'s support is exhausted (fewer than ``m`` tokens with ``q > 0``), the remaining children
    take the next Gumbel keys' tokens with a one-hot proposal (still a valid speculative step).

    Returns ``tokens`` (R, m) int64 and ``probs`` (R, m, V) float32 (``probs[:, j]`` is ``q_j``).
    """
    q = q.float()
    R, V = q.shape
    if not 1 <= m <= V:
        raise ValueError(f"m must be in [1, vocab] = [1, {V}], got {m}")
    g = -torch.log(-torch.log(uniforms.float().clamp(1e-30, 1.0 - 1e-7)))
    keys = torch.where(q > 0, torch.log(q.clamp_min(1e-38)) + g, torch.full_like(q, float("-inf")))
    kv, idx = keys.topk(m, -1)
    probs = q[:, None, :].repeat(1, m, 1)
    for j in range(1, m):  # remove the earlier siblings' tokens
        probs[:, j:].scatter_(-1, idx[:, j - 1, None, None].expand(R, m - j, 1), 0.0)
    z = probs.sum(-1, keepdim=True)
    onehot = torch.zeros_like(probs).scatter_(-1, idx[..., None], 1.0)
    ok = torch.isfinite(kv)[..., None] & (z > 0)
    probs = torch.where(ok, probs / z.clamp_min(1e-38), onehot)
    return idx, probs


_DRAFT_SEED_SALT = 0x2545F4914F6CDD1D


def _gather_rows(cache, idx: torch.Tensor) -> None:
    """Per-row compaction: every layer's keys / values become ``kv[b, :, idx[b]]`` ((B, S') int64)."""
    def g(t):
        i = idx.to(t.device)[:, None, :, None].expand(t.shape[0], t.shape[1], idx.shape[1], t.shape[3])
        return t.gather(2, i)
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            k = getattr(layer, "keys", None)
            if isinstance(k, torch.Tensor) and k.numel():
                layer.keys, layer.values = g(k), g(layer.values)
        return
    if hasattr(cache, "key_cache"):
        for i, k in enumerate(cache.key_cache):
            if isinstance(k, torch.Tensor) and k.numel():
                cache.key_cache[i], cache.value_cache[i] = g(k), g(cache.value_cache[i])
        return
    raise ValueError(f"cache of type {type(cache).__name__} cannot be compacted (no layers / key_cache)")


def _compact_rows(cache, valid: torch.Tensor) -> torch.Tensor:
    """Keep each row's valid cache columns (``valid`` (B, S) bool), right-aligned in a common length
    (shorter rows get masked padding columns on the left). Returns the new validity (B, S')."""
    B, S = valid.shape
    keep = int(valid.sum(-1).max()) if B else 0
    if keep == S:
        return valid
    key = valid.long() * S + torch.arange(S, device=valid.device)
    srt = key.sort(-1).values[:, S - keep:]
    _gather_rows(cache, srt % S)
    return srt >= S


def _mask4(past: torch.Tensor, block: torch.Tensor, dtype) -> torch.Tensor:
    """4-D additive mask (B, 1, n, S + w): cached columns allowed by ``past`` (B, S), new columns by
    ``block`` ((B or 1), n, w) (columns after the S cached ones, the last n the queries); a query always sees itself (padding queries would otherwise see
    nothing, and a fully masked row gives NaN)."""
    B, S = past.shape
    n, w = block.shape[-2:]  # w >= n: the block's last n columns are the queries themselves
    allowed = torch.cat([past[:, None, :].expand(B, n, S), block.expand(B, n, w)], -1)
    allowed[:, torch.arange(n), S + w - n + torch.arange(n)] = True
    m = torch.zeros(B, 1, n, S + w, dtype=dtype, device=past.device)
    return m.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)


def _generate_tree(model, input_ids, mask, spec, max_new, eos_mask, pad, streamer):
    """Tree speculation, all rows batched (see ``Speculative``'s ``tree``).

    Each row's KV caches hold only its context, root and accepted paths: after every round the
    columns of rejected nodes are dropped per row (``_compact_rows``: valid columns right-aligned,
    shorter rows padded on the left and masked); positions are tracked per row and every forward
    gets an explicit 4-D mask and position ids."""
    from .speculative import _filtered_probs
    draft = spec.draft_model
    B, L = input_ids.shape
    device = input_ids.device
    V, Vd = _vocab_size(model), _vocab_size(draft)
    if V != Vd:
        raise ValueError(f"draft_model must share the target's vocabulary: the target has {V} tokens, "
                         f"the draft has {Vd}")
    for m in (model, draft):
        window, state = _cache_layout(m)
        if window is not None or state:
            raise ValueError(f"Speculative(tree=...) needs full-attention models (the tree is scored with a 4-D mask "
                             f"and the cache compacted); {type(m).__name__} has sliding-window or recurrent layers")
    paths = spec.tree_paths
    par_l, depth_l, rank_l = _tree_arrays(paths)
    N = len(par_l)
    D = max(depth_l)
    parents = torch.tensor(par_l, device=device)
    depth = torch.tensor(depth_l, device=device)
    anc = tree_ancestors(parents)  # (1, N, N)
    levels = [[i for i in range(N) if depth_l[i] == d] for d in range(D + 1)]
    fed = sum(len(lv) for lv in levels[:D])  # nodes the draft scores (those below the last level)
    max_rank = max(rank_l)
    seeds = _seeds(spec.seed, B, device) ^ 0x5DEECE66D
    dseeds = _seeds(spec.seed, B, device) ^ _DRAFT_SEED_SALT
    # exact / typical at T > 0: sampled siblings (lossless recursive rejection); else deterministic top-k
    sampled = spec.method in ("exact", "typical") and spec.temperature > 0
    kids = [[i for i in range(1, N) if par_l[i] == c] for c in range(N)]
    t_kw, d_kw = _cache_kwarg(model), _cache_kwarg(draft)
    t_dt, d_dt = next(model.parameters()).dtype, next(draft.parameters()).dtype
    ar = torch.arange(B, device=device)

    # ---- prefill: each row's context (its unmasked tokens but the last, the first root), left-padded
    rows = [input_ids[b][mask[b].bool()] if mask is not None else input_ids[b] for b in range(B)]
    for b, row in enumerate(rows):
        if row.numel() == 0:
            raise ValueError(f"row {b} of input_ids has no unmasked token")
    clen = torch.tensor([r.numel() - 1 for r in rows], device=device)
    C = int(clen.max())
    tcache, dcache = _new_cache(model), _new_cache(draft)
    tvalid = torch.zeros(B, C, dtype=torch.bool, device=device)
    if C > 0:
        ctx = torch.zeros(B, C, dtype=torch.long, device=device)
        for b, row in enumerate(rows):
            if row.numel() > 1:
                ctx[b, C - row.numel() + 1:] = row[:-1]
        tvalid = torch.arange(C, device=device)[None] >= (C - clen)[:, None]
        pos = (torch.arange(C, device=device)[None] - (C - clen)[:, None]).clamp(min=0)
        causal = torch.ones(C, C, dtype=torch.bool, device=device).tril()[None] & tvalid[:, None, :]
        empty = torch.zeros(B, 0, dtype=torch.bool, device=device)
        model(input_ids=ctx, position_ids=pos, attention_mask=_mask4(empty, causal, t_dt), use_cache=True,
              **{t_kw: tcache})
        draft(input_ids=ctx, position_ids=pos, attention_mask=_mask4(empty, causal, d_dt), use_cache=True,
              **{d_kw: dcache})
    dvalid = tvalid.clone()
    pos = clen.clone()  # position of each row's root
    pending = torch.stack([torch.zeros(B, dtype=torch.long, device=device),
                           torch.stack([r[-1] for r in rows]).to(device)], 1)  # left-padded (B, 2)
    plen = torch.ones(B, dtype=torch.long, device=device)

    gen = [[] for _ in range(B)]
    accs = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=device)
    r = 0
    while not bool(done.all()):
        # ---- draft: the pending tokens (1 or 2 per row), then the tree level by level
        pvalid = torch.arange(2, device=device)[None] >= (2 - plen)[:, None]
        ppos = (pos[:, None] + torch.arange(-1, 1, device=device)[None]).clamp(min=0)
        blk = torch.ones(2, 2, dtype=torch.bool, device=device).tril()[None] & pvalid[:, None, :]
        lg = draft(input_ids=pending, position_ids=ppos, attention_mask=_mask4(dvalid, blk, d_dt),
                   use_cache=True, **{d_kw: dcache}).logits[:, -1]
        dvalid = torch.cat([dvalid, pvalid], 1)
        R0 = dvalid.shape[1] - 1  # the root's draft column; node n sits at R0 + n
        tokens = torch.zeros(B, N, dtype=torch.long, device=device)
        tokens[:, 0] = pending[:, 1]
        node_logits = {0: lg}
        dprobs = None
        if sampled:
            dprobs = torch.zeros(B, N, V, device=device)
            dprobs[ar, 0, tokens[:, 0]] = 1.0  # unused (the root)
        for d in range(1, D + 1):
            if sampled:  # children drawn without replacement from the draft's q (sample_siblings)
                for c in levels[d - 1]:
                    if not kids[c]:
                        continue
                    q = _filtered_probs(node_logits[c], spec.temperature, spec.top_k, spec.top_p, spec.min_p)
                    u = philox_uniform((B, V), dseeds, r * N + c)
                    tk, pr = sample_siblings(q, len(kids[c]), u)
                    tokens[:, kids[c]] = tk
                    dprobs[:, kids[c]] = pr
            else:
                for c in levels[d - 1]:
                    if kids[c]:
                        top = torch.topk(node_logits[c].float(), max_rank + 1, -1).indices
                        tokens[:, kids[c]] = top[:, [rank_l[i] for i in kids[c]]]
            if d == D:
                break
            lo, hi = levels[d][0], levels[d][-1] + 1
            out = draft(input_ids=tokens[:, lo:hi], position_ids=pos[:, None] + depth[None, lo:hi],
                        attention_mask=_mask4(dvalid[:, :R0], anc[:, lo:hi, :hi], d_dt), use_cache=True,
                        **{d_kw: dcache})
            for j, i in enumerate(range(lo, hi)):
                node_logits[i] = out.logits[:, j]
        # ---- target: every row's tree in one forward
        tl = model(input_ids=tokens, position_ids=pos[:, None] + depth[None],
                   attention_mask=_mask4(tvalid, anc, t_dt), use_cache=True, **{t_kw: tcache}).logits.float()
        kw = dict(method=spec.method, temperature=spec.temperature, top_k=spec.top_k, top_p=spec.top_p,
                  min_p=spec.min_p, seed=seeds, offset=r * (N + 1))
        if spec.method == "typical":
            kw.update(posterior_threshold=spec.posterior_threshold, posterior_alpha=spec.posterior_alpha)
        elif sampled:
            kw.update(draft_probs=dprobs)
        from .._verify_tree import verify_tree
        v = verify_tree(tl, tokens, parents.expand(B, N).contiguous(), **kw)
        na = v.num_accepted
        r += 1
        # ---- emit (per row, until max_new / EOS)
        na_l, tok_l = na.tolist(), v.tokens.tolist()
        for b in range(B):
            if bool(done[b]):
                continue
            accs[b].append(na_l[b])
            for t in tok_l[b][:na_l[b] + 1]:
                gen[b].append(t)
                if (eos_mask is not None and bool(eos_mask[t])) or len(gen[b]) >= max_new:
                    done[b] = True
                    break
        if bool(done.all()):
            break
        # ---- keep context + root + accepted path in both caches (per row), set up the next round
        onpath = torch.zeros(B, N + 1, dtype=torch.bool, device=device)
        onpath[:, 0] = True
        onpath.scatter_(1, torch.where(v.nodes >= 0, v.nodes, N), True)
        onpath = onpath[:, :N]
        tvalid = _compact_rows(tcache, torch.cat([tvalid, onpath], 1))
        dvalid = _compact_rows(dcache, torch.cat([dvalid, onpath[:, 1:fed]], 1))
        last = v.nodes.gather(1, (na - 1).clamp(min=0)[:, None])[:, 0]
        deep = (na > 0) & (last >= fed)  # the path ends on the last level: the draft has not seen it
        bonus = v.tokens.gather(1, na[:, None])[:, 0]
        pending = torch.stack([torch.where(deep, tokens.gather(1, last.clamp(min=0)[:, None])[:, 0], 0), bonus], 1)
        plen = 1 + deep.long()
        pos = pos + 1 + na

    S_ = max(len(g) for g in gen)
    R = max(len(a) for a in accs)
    seq = torch.full((B, L + S_), pad, dtype=torch.long, device=device)
    seq[:, :L] = input_ids
    modes = torch.full((B, S_), MODE_FINISHED, dtype=torch.int8, device=device)
    acc = torch.full((B, R), -1, dtype=torch.long, device=device)
    for b, (g, a) in enumerate(zip(gen, accs)):
        seq[b, L:L + len(g)] = torch.tensor(g, dtype=torch.long, device=device)
        modes[b, :len(g)] = MODE_DISCRETE
        acc[b, :len(a)] = torch.tensor(a, dtype=torch.long, device=device)
    if streamer is not None:
        for j in range(S_):
            streamer.put(seq[:, L + j].cpu())
    nan = torch.full((B, S_), float("nan"), device=device)
    return GenerateOutput(seq, GenerationStats(modes, nan, nan.clone(), acc))
