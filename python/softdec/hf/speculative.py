"""Speculative decoding: K draft proposals, one target forward, ``softdec.verify``, cache rollback."""

from __future__ import annotations

import copy

import torch

from .. import strategies as S
from ..strategies._ops import op
from ..strategies.base import MODE_DISCRETE, MODE_FINISHED, MODE_SOFT
from ._common import (GenerateOutput, GenerationStats, _cache_layout, _empty_output, _input_embedding, _legacy_ssm,
                      _linear_layer_types, _Runner, _seeds, _vocab_size)

# ============================================================================ speculative

def _filtered_probs(logits: torch.Tensor, temperature, top_k, top_p, min_p) -> torch.Tensor:
    """Dense filtered, renormalised softmax(logits / T) (softdec's filter order:
    top-k, then top-p, then min-p); T = 0 is one-hot argmax. (rows, V) float32."""
    x = logits.float()
    V = x.shape[-1]
    if temperature == 0:
        return torch.zeros_like(x).scatter_(-1, x.argmax(-1, keepdim=True), 1.0)
    p = torch.softmax(x / temperature, -1)
    if (top_k <= 0 or top_k >= V) and top_p >= 1.0 and min_p <= 0.0:
        return p
    k = V if top_k <= 0 else min(top_k, V)
    w, idx = p.topk(k, -1)
    w = w / w.sum(-1, keepdim=True)
    if top_p < 1.0:
        before = torch.cumsum(w, -1) - w
        w = torch.where(before < top_p, w, torch.zeros_like(w))
        w = w / w.sum(-1, keepdim=True)
    if min_p > 0.0:
        w = torch.where(w >= min_p * w[..., :1], w, torch.zeros_like(w))
        w = w / w.sum(-1, keepdim=True)
    return torch.zeros_like(p).scatter_(-1, idx, w)


def _soft_embed(weight, scale, ids, weights, dtype):
    """Σ_i w_i · weight[ids_i] · scale over the last axis of ids/weights, in fp32."""
    e = (weights.float()[..., None] * weight[ids].float()).sum(-2) * scale
    return e.to(dtype)


_VERIFY_SEED_SALT = 0x5DEECE66D


def _generate_speculative(model, input_ids, mask, spec: S.Speculative, max_new, eos_mask, pad, streamer):
    draft = spec.draft_model
    B, L = input_ids.shape
    device = input_ids.device
    V, Vd = _vocab_size(model), _vocab_size(draft)
    if V != Vd:
        raise ValueError(f"draft_model must share the target's vocabulary: the target has {V} tokens, "
                         f"the draft has {Vd}")
    if _linear_layer_types()[0] is None:
        for m in (model, draft):
            if _cache_layout(m)[1] and not _legacy_ssm(m):  # hybrids: their own cache classes on 4.x
                import transformers
                raise ValueError(f"Speculative on {type(m).__name__} ({getattr(m.config, 'model_type', '?')}) needs "
                                 f"transformers >= 5 to roll back its recurrent / convolution states; got "
                                 f"{transformers.__version__}")
    if max_new == 0:
        return _empty_output(input_ids, B, device)
    if getattr(spec, "tree_paths", None):
        from .tree import _generate_tree
        return _generate_tree(model, input_ids, mask, spec, max_new, eos_mask, pad, streamer)
    if B > 1 and max_new > 1 and _needs_rowwise(model, draft, L + max_new + spec.num_draft + 1):
        return _speculative_rowwise(model, input_ids, mask, spec, max_new, eos_mask, pad, streamer)
    K = spec.num_draft
    soft = spec.method == "soft"
    if soft:
        t_mod, t_w, t_scale = _input_embedding(model, "Speculative(method='soft')")
        d_mod, d_w, d_scale = _input_embedding(draft, "Speculative(method='soft') draft_model")
    seed = _seeds(spec.seed, B, device)
    vseed = seed ^ _VERIFY_SEED_SALT
    tgt, dft = _Runner(model, B, device, rollback=True), _Runner(draft, B, device, rollback=True)
    if L > 1:
        tgt.forward(input_ids=input_ids[:, :-1], new_mask=mask[:, :-1])
        dft.forward(input_ids=input_ids[:, :-1], new_mask=mask[:, :-1])
    last = input_ids[:, -1]
    cap = max_new + K + 1
    out_ids = torch.full((B, cap), pad, dtype=torch.long, device=device)
    modes = torch.full((B, cap), MODE_FINISHED, dtype=torch.int8, device=device)
    n_out = torch.zeros(B, dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    accepted = []
    ar = torch.arange(K + 1, device=device)
    rows = torch.arange(B, device=device)
    if soft:
        t_pend = t_mod(last[:, None])                       # (B, 1, D) target's next input
        d_pend = d_mod(last[:, None])                       # (B, 1|2, D) draft's pending inputs
    else:
        d_pend = last[:, None]
    d_pend_mask = torch.ones(B, 1, dtype=torch.long, device=device)
    r = 0
    while True:
        # ---- draft: K proposals
        d_ids = torch.zeros(B, K, dtype=torch.long, device=device)
        q = None if spec.method == "greedy" or soft else torch.empty(B, K, V, device=device)
        s_ids = s_w = None
        d_embeds = []
        x, x_mask = d_pend, d_pend_mask
        d_snaps = []  # stateful draft: its state after each proposal's forward (index j: d_1..d_j fed)
        for j in range(K):
            if soft:
                lg = dft.forward(inputs_embeds=x, new_mask=x_mask)[:, -1].float()
                st = op("soft_mixture")(lg, d_w, top_k=spec.soft_top_k, temperature=spec.temperature,
                                        top_p=spec.top_p, min_p=spec.min_p, seed=seed, offset=r * K + j,
                                        embed_scale=d_scale, filter_top_k=spec.filter_top_k)
                if s_ids is None:
                    s_ids = torch.empty(B, K, st.ids.shape[1], dtype=torch.long, device=device)
                    s_w = torch.empty(B, K, st.ids.shape[1], device=device)
                s_ids[:, j], s_w[:, j] = st.ids, st.weights
                d_ids[:, j] = st.ids[:, 0]
                x = st.embeds[:, None].to(d_w.dtype)
                d_embeds.append(x)
            else:
                lg = dft.forward(input_ids=x, new_mask=x_mask)[:, -1].float()
                if spec.method == "greedy":
                    tok = lg.argmax(-1)
                else:
                    tok = op("sample")(lg, temperature=spec.temperature, top_k=spec.top_k, top_p=spec.top_p,
                                       min_p=spec.min_p, seed=seed, offset=r * K + j).ids
                    q[:, j] = _filtered_probs(lg, spec.temperature, spec.top_k, spec.top_p, spec.min_p)
                d_ids[:, j] = tok
                x = tok[:, None]
            x_mask = None
            if dft.stateful:
                d_snaps.append(dft.snapshot())
        # ---- target: score last + K drafts in one forward
        t_snap = tgt.snapshot() if tgt.stateful else None
        if soft:
            t_in = torch.cat([t_pend.to(t_w.dtype), _soft_embed(t_w, t_scale, s_ids, s_w, t_w.dtype)], 1)
            tl = tgt.forward(inputs_embeds=t_in, keep=K + 1).float()
            v = op("verify")(tl, None, draft_probs=(s_ids, s_w), method="soft", temperature=spec.temperature,
                             top_k=spec.soft_top_k, top_p=spec.top_p, min_p=spec.min_p, delta=spec.delta,
                             seed=vseed, offset=r, filter_top_k=spec.filter_top_k)
            a = v.num_accepted.to(torch.long)
            corr = v.soft_ids[:, 0]
            toks = torch.where(ar[None] < a[:, None], torch.cat([d_ids, d_ids[:, :1]], 1),
                               corr[:, None].expand(B, K + 1))
        else:
            tl = tgt.forward(input_ids=torch.cat([last[:, None], d_ids], 1), keep=K + 1).float()
            kw = dict(draft_probs=q, method=spec.method, temperature=spec.temperature, top_k=spec.top_k,
                      top_p=spec.top_p, min_p=spec.min_p, seed=vseed, offset=r)
            if spec.method == "typical":
                kw.update(posterior_threshold=spec.posterior_threshold, posterior_alpha=spec.posterior_alpha)
            if spec.method == "relaxed":
                kw.update(neighbours=spec.neighbours, delta=spec.delta)
            v = op("verify")(tl, d_ids, **kw)
            a = v.num_accepted.to(torch.long)
            toks = v.tokens.to(torch.long)
        # ---- emit: accepted drafts then the correction/bonus, cut at eos and max_new_tokens
        emit = (ar[None] <= a[:, None]) & ~finished[:, None]
        is_eos = torch.zeros_like(emit)
        if eos_mask is not None:
            is_eos = eos_mask[toks.clamp(0, V - 1)] & emit
            first = torch.where(is_eos.any(1), is_eos.to(torch.int8).argmax(1), K + 1)
            emit &= ar[None] <= first[:, None]
        emit &= (n_out[:, None] + ar[None]) < max_new
        dest = torch.where(emit, n_out[:, None] + ar[None], cap - 1)
        out_ids.scatter_(1, dest, torch.where(emit, toks, out_ids.gather(1, dest)))
        modes.scatter_(1, dest, torch.where(emit, MODE_SOFT if soft else MODE_DISCRETE,
                                            modes.gather(1, dest)).to(torch.int8))
        accepted.append(torch.where(finished, -1, a))
        if streamer is not None:
            for j in range(K + 1):
                col = emit[:, j]
                if bool(col.any()):
                    streamer.put(torch.where(col, toks[:, j], pad).cpu())
        n_out = n_out + emit.sum(1)
        finished = finished | (is_eos & emit).any(1) | (n_out >= max_new)
        r += 1
        if bool(finished.all()):
            break
        # ---- roll back both caches to the accepted length
        if tgt.stateful:
            # recurrent states cannot be cropped: go back to before the scoring forward and feed the
            # accepted prefix again (B == 1 here, see _speculative_rowwise); nothing to do when all accepted
            na = int(a[0])
            if na < K:
                tgt.restore(t_snap)
                if soft:
                    tgt.forward(inputs_embeds=t_in[:, :na + 1])
                else:
                    tgt.forward(input_ids=torch.cat([last[:, None], d_ids], 1)[:, :na + 1])
        else:
            tgt.keep_last(ar[None] <= a[:, None])                 # last, d_1..d_a
        if dft.stateful:
            dft.restore(d_snaps[min(int(a[0]), K - 1)])           # pending, d_1..d_min(a, K-1)
        elif K > 1:
            dft.keep_last(ar[None, 1:K] <= a[:, None])             # d_1..d_{K-1} fed to the draft
        full = a == K
        if soft:
            own = torch.cat(d_embeds, 1)[:, K - 1:K]               # the draft's d_K embedding
            t_soft = _soft_embed(t_w, t_scale, v.soft_ids, v.soft_weights, t_w.dtype)[:, None]
            d_soft = _soft_embed(d_w, d_scale, v.soft_ids, v.soft_weights, d_w.dtype)[:, None]
            t_pend = t_soft
            d_pend = torch.cat([own.to(d_soft.dtype), d_soft], 1)
        else:
            d_pend = torch.cat([d_ids[:, K - 1:K], toks[rows, a][:, None]], 1)
        last = toks[rows, a]
        d_pend_mask = torch.stack([full.to(torch.long), torch.ones_like(a)], 1)
        if B == 1 and not bool(full[0]):
            # one row: drop the rejected d_K instead of feeding it as a hole (a recurrent layer cannot skip one)
            d_pend, d_pend_mask = d_pend[:, 1:], d_pend_mask[:, 1:]
    S_ = int(n_out.max())
    stats = GenerationStats(modes[:, :S_], torch.full((B, S_), float("nan"), device=device),
                            torch.full((B, S_), float("nan"), device=device), torch.stack(accepted, 1))
    return GenerateOutput(torch.cat([input_ids, out_ids[:, :S_]], 1), stats)


def _needs_rowwise(model, draft, max_len: int) -> bool:
    """Whether rows must run one by one: a recurrent layer, or a sliding window shorter than the
    longest sequence the caches can hold (holes would shift it)."""
    for m in (model, draft):
        window, state = _cache_layout(m)
        if state or (window is not None and window <= max_len):
            return True
    return False


def _speculative_rowwise(model, input_ids, mask, spec, max_new, eos_mask, pad, streamer):
    """Speculative decoding one row at a time, for models with sliding-window or recurrent layers.

    The batched loop keeps rows of different accepted lengths aligned by leaving holes in the
    attention mask. A sliding window counts cache slots, holes included, and a recurrent or
    convolution state cannot skip a slot at all, so on such models each row runs as its own batch
    of one (no holes ever) and the outputs are padded together. The streamer, if any, receives
    the batch's tokens column by column at the end.
    """
    B, L = input_ids.shape
    device = input_ids.device
    outs = []
    # an int (or per-row) seed: row b keeps the key it has in the batched loop
    keys = _seeds(spec.seed, B, device) if spec.seed is not None else None
    for b in range(B):
        row_spec = spec
        if keys is not None:
            row_spec = copy.copy(spec)
            row_spec.seed = keys[b:b + 1]
        outs.append(_generate_speculative(model, input_ids[b:b + 1], mask[b:b + 1], row_spec, max_new, eos_mask,
                                          pad, None))
    S_ = max(o.sequences.shape[1] - L for o in outs)
    R = max(o.stats.num_accepted.shape[1] if o.stats.num_accepted is not None else 0 for o in outs)
    seq = torch.full((B, L + S_), pad, dtype=torch.long, device=device)
    modes = torch.full((B, S_), MODE_FINISHED, dtype=torch.int8, device=device)
    acc = torch.full((B, R), -1, dtype=torch.long, device=device)
    for b, o in enumerate(outs):
        n = o.sequences.shape[1]
        seq[b, :n] = o.sequences[0]
        modes[b, :n - L] = o.stats.mode[0]
        if o.stats.num_accepted is not None:
            acc[b, :o.stats.num_accepted.shape[1]] = o.stats.num_accepted[0]
    if streamer is not None:
        for j in range(S_):
            streamer.put(seq[:, L + j].cpu())
    nan = torch.full((B, S_), float("nan"), device=device)
    return GenerateOutput(seq, GenerationStats(modes, nan, nan.clone(), acc))
