"""A compiled decode step: model forward + strategy + state updates as one ``torch.compile`` graph
over a static KV cache, with no host synchronisation inside a step (so that on a GPU it can be
captured as a CUDA graph, e.g. ``compile_mode="reduce-overhead"``).

Every step feeds ``inputs_embeds`` (discrete rows their token's embedding, soft rows their
mixture), so there is no per-step choice between ``input_ids`` and embeddings; finished rows keep
running and emit padding; the strategy computes both sides of its per-row choices
(``StepContext.static``). The loop runs ``max_new_tokens`` steps and trims the columns after the
step where every row had stopped, which is what the eager loop returns.
"""

from __future__ import annotations

import torch

from ..strategies.base import MODE_FINISHED, StepContext
from ._common import (GenerateOutput, GenerationStats, _accepts, _cache_kwarg, _empty_output, _input_embedding,
                      _legacy_ssm, _seeds)

_COMPILED = {}


def _static_cache(model, max_len: int):
    from transformers import StaticCache
    try:
        return StaticCache(config=model.config, max_cache_len=max_len)
    except TypeError as e:
        raise ValueError(f"compile=True needs transformers' StaticCache(config=..., max_cache_len=...) "
                         f"(transformers >= 5): {e}") from None


def _compiled_step(model, strategy, mode: str):
    """The step function, compiled once per (model, strategy, mode) and reused across calls."""
    key = (id(model), id(strategy), mode)
    hit = _COMPILED.get(key)
    if hit is not None and hit[0] is model and hit[1] is strategy:
        return hit[2]
    cache_kw = _cache_kwarg(model)
    keep = _accepts(model, "logits_to_keep")

    def step(logits, state, seed, t, finished, emb_w, scale, eos_mask, pad, emb_module, cache, attn_mask,
             position, cache_position):
        ctx = StepContext(emb_w, scale, seed, t, static=True)
        res = strategy.step(logits.float(), state, ctx, eos_mask=eos_mask)
        ids = torch.where(finished, pad, res.ids)
        mode = torch.where(finished, MODE_FINISHED, res.mode).to(torch.int8)
        stop = ~res.valid
        if eos_mask is not None:
            stop = stop | (eos_mask[res.ids.clamp(0, eos_mask.numel() - 1)] & ~res.soft)
        now_finished = finished | stop
        soft = res.soft & ~now_finished
        embeds = emb_module(ids[:, None])
        if res.embeds is not None:
            embeds = torch.where(soft[:, None, None], res.embeds[:, None].to(embeds.dtype), embeds)
        kw = {"inputs_embeds": embeds, "attention_mask": attn_mask, "position_ids": position[:, None],
              "cache_position": cache_position, cache_kw: cache, "use_cache": True}
        if keep:
            kw["logits_to_keep"] = 1
        nxt = model(**kw).logits[:, -1]
        return ids, mode, res.entropy, res.max_prob, now_finished, nxt

    fn = torch.compile(step, mode=None if mode == "default" else mode, fullgraph=True, dynamic=False)
    _COMPILED.clear()  # one compiled step at a time: they hold the model
    _COMPILED[key] = (model, strategy, fn)
    return fn


def _generate_compiled(model, input_ids, mask, strategy, max_new, eos_mask, pad, streamer, mode) -> GenerateOutput:
    B, L = input_ids.shape
    device = input_ids.device
    if max_new == 0:
        return _empty_output(input_ids, B, device)
    if _legacy_ssm(model):
        raise ValueError(f"generate(compile=True) needs a model on transformers' common cache (StaticCache); "
                         f"{type(model).__name__} takes transformers 4.x's `cache_params`: use compile=False")
    emb_module, emb_w, scale = _input_embedding(model, "generate(compile=True)")
    if not strategy.needs_embeddings:
        emb_w = None
    cache_kw = _cache_kwarg(model)
    total = L + max_new
    cache = _static_cache(model, total)
    attn = torch.zeros(B, total, dtype=torch.long, device=device)
    attn[:, :L] = mask
    position = (mask.cumsum(1) - 1).clamp(min=0)
    kw = {"input_ids": input_ids, "attention_mask": attn[:, :L], "position_ids": position,
          "cache_position": torch.arange(L, device=device), cache_kw: cache, "use_cache": True}
    if _accepts(model, "logits_to_keep"):
        kw["logits_to_keep"] = 1
    logits = model(**kw).logits[:, -1]
    pos = mask.sum(1)                                    # (B,) next position per row
    state = strategy.init_state(B, device)
    seed = _seeds(strategy.seed, B, device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    pad_t = torch.tensor(pad, dtype=torch.long, device=device)
    out_ids = torch.full((B, max_new), pad, dtype=torch.long, device=device)
    modes = torch.full((B, max_new), MODE_FINISHED, dtype=torch.int8, device=device)
    ents = torch.full((B, max_new), float("nan"), device=device)
    mps = torch.full((B, max_new), float("nan"), device=device)
    done_at = torch.zeros(max_new, dtype=torch.bool, device=device)
    fn = _compiled_step(model, strategy, mode)
    steps = torch.arange(max_new, device=device)
    for t in range(max_new):
        attn[:, L + t] = 1                                # the token fed after this step's choice
        ids, m, e, p, finished, logits = fn(logits, state, seed, steps[t].expand(B), finished, emb_w, scale,
                                            eos_mask, pad_t, emb_module, cache, attn, pos,
                                            steps[t:t + 1] + L)
        out_ids[:, t], modes[:, t], ents[:, t], mps[:, t] = ids, m, e, p
        done_at[t] = finished.all()
        pos = pos + 1
        if streamer is not None:
            streamer.put(ids.cpu())
    # the eager loop stops after the first step where every row has finished
    n = int(torch.where(done_at.any(), done_at.to(torch.int8).argmax() + 1, max_new))
    stats = GenerationStats(modes[:, :n], ents[:, :n], mps[:, :n])
    return GenerateOutput(torch.cat([input_ids, out_ids[:, :n]], 1), stats)
