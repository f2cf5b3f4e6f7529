"""Decoding strategies for any Hugging Face causal LM (transformers >= 4.57).

``generate(model, input_ids, strategy=..., max_new_tokens=...)`` runs a
batched decode loop over any ``AutoModelForCausalLM``: left padding through
the attention mask, per-row stop flags, a ``DynamicCache``, a streamer, and a
per-row choice each step between feeding ``input_ids`` (discrete tokens) and
``inputs_embeds`` (soft tokens; discrete rows of the same step get their
token's embedding). Strategies live in ``softdec.strategies``.

Speculative decoding keeps per-row accepted lengths without re-padding: a row
that accepted fewer drafts than another marks the rejected cache slots as
holes in its attention mask (positions come from the mask, so rotary
positions stay contiguous), and cache slots that no row accepted are cropped.

Also here: ``model.generate(ids, custom_generate=softdec.hf.<strategy>_generate)``
entry points, and a token-sparse attention backend registered through
transformers' ``AttentionInterface`` / ``AttentionMaskInterface``.

Minimum transformers version: 4.57 (``AttentionInterface``,
``AttentionMaskInterface``, callable ``custom_generate``, ``DynamicCache``
layers); tested with 5.x. ``DynamicCache.crop`` changed meaning between them
(4.57: a positive argument is the length to keep; 5.x: only a negative count of
tokens to remove), so this module only ever calls ``crop(-n)`` with n > 0,
which both versions read as "remove the last n positions".
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import NamedTuple, Optional

import torch

from . import strategies as S
from .strategies._ops import op
from .strategies.base import MODE_DISCRETE, MODE_FINISHED, MODE_SOFT, StepContext

MIN_TRANSFORMERS = "4.57"

__all__ = ["generate", "GenerateOutput", "GenerationStats", "discrete_generate", "soft_thinking_generate",
           "router_generate", "speculative_generate", "enable_token_sparse_attention",
           "disable_token_sparse_attention", "crop_cache", "MIN_TRANSFORMERS"]


def _check_transformers():
    import transformers
    ver = tuple(int(x) for x in transformers.__version__.split(".")[:2] if x.isdigit())
    if ver < (4, 57):
        raise RuntimeError(f"softdec.hf needs transformers >= {MIN_TRANSFORMERS}, got {transformers.__version__}")
    return transformers


# ============================================================================ outputs

@dataclasses.dataclass
class GenerationStats:
    """Per-step statistics of one ``generate`` call.

    mode : torch.Tensor
        ``(B, S)`` int8, one column per generated token: ``MODE_DISCRETE`` (0),
        ``MODE_SOFT`` (1), ``MODE_THINK_END`` (2), or ``MODE_FINISHED`` (-1)
        after the row stopped.
    entropy, max_prob : torch.Tensor
        ``(B, S)`` float32: entropy (nats) and max probability of the
        distribution the step was decoded from (NaN where not computed, e.g.
        speculative rounds).
    num_accepted : torch.Tensor or None
        ``(B, R)`` int64 accepted draft tokens per speculative round (-1 after
        the row stopped); None for non-speculative strategies.
    """
    mode: torch.Tensor
    entropy: torch.Tensor
    max_prob: torch.Tensor
    num_accepted: Optional[torch.Tensor] = None

    @property
    def soft_tokens(self) -> torch.Tensor:
        """``(B,)`` number of soft steps per row."""
        return (self.mode == MODE_SOFT).sum(1)

    @property
    def generated_tokens(self) -> torch.Tensor:
        """``(B,)`` number of generated tokens per row (eos included)."""
        return (self.mode != MODE_FINISHED).sum(1)


class GenerateOutput(NamedTuple):
    """``sequences``: ``(B, L + S)`` int64, the (left-padded) prompt followed by
    the generated tokens (pad after a row stopped; soft steps record the
    concept token's top id); ``stats``: ``GenerationStats``."""
    sequences: torch.Tensor
    stats: GenerationStats


# ============================================================================ model plumbing

def crop_cache(cache, num_remove: int) -> None:
    """Remove the last ``num_remove`` positions from a KV cache, portably.

    transformers 4.57's ``DynamicCache.crop(max_length)`` keeps ``max_length``
    positions when positive and removes ``|max_length|`` when negative (and
    ``crop(0)`` empties it); 5.x accepts only the negative form. Calling
    ``crop(-n)`` for n > 0 means the same in both; n == 0 does nothing.
    Legacy tuple caches are sliced.
    """
    if num_remove <= 0:
        return
    if hasattr(cache, "crop"):
        cache.crop(-int(num_remove))
        return
    raise ValueError(f"cache of type {type(cache).__name__} cannot be cropped (no crop method)")


def _new_cache(model):
    from transformers import DynamicCache
    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older signatures
        return DynamicCache()


def _vocab_size(model) -> int:
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None and getattr(out, "weight", None) is not None:
        return int(out.weight.shape[0])
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(cfg.vocab_size)


def _input_embedding(model, what: str):
    """(module, raw weight table, scale the module applies), or ValueError."""
    try:
        emb = model.get_input_embeddings()
    except (NotImplementedError, AttributeError):
        emb = None
    w = getattr(emb, "weight", None) if emb is not None else None
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise ValueError(f"{what} needs a model with an input-embedding table (model.get_input_embeddings() "
                         f"returning a module with a 2-D weight), got {type(emb).__name__ if emb is not None else None}")
    # the module may scale its lookup (Gemma: sqrt(hidden)); probe one row, the soft embeds apply the
    # same factor once, so what the model sees for a one-hot mixture is exactly what ids would give.
    with torch.no_grad():
        rows = min(int(w.shape[0]), 16)
        norms = w[:rows].float().norm(dim=1)
        i = int(norms.argmax())
        if float(norms[i]) == 0.0:
            return emb, w, 1.0
        ref = w[i].float()
        got = emb(torch.tensor([[i]], device=w.device))[0, 0].float()
        scale = float((got @ ref) / (ref @ ref))
        if not torch.allclose(got, scale * ref, rtol=1e-2, atol=1e-3 * float(ref.abs().max()) * max(abs(scale), 1)):
            raise ValueError(f"{what} needs the input-embedding module to be a (scaled) table lookup; "
                             f"{type(emb).__name__} is not")
    return emb, w, scale


def _accepts(model, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


class _Runner:
    """One model, its cache, its 2-D attention mask (holes allowed) and next positions."""

    def __init__(self, model, batch: int, device):
        self.model = model
        self.cache = _new_cache(model)
        self.mask = torch.zeros(batch, 0, dtype=torch.long, device=device)
        self.pos = torch.zeros(batch, dtype=torch.long, device=device)
        self.keep_arg = _accepts(model, "logits_to_keep")

    def forward(self, *, input_ids=None, inputs_embeds=None, new_mask=None, keep: int = 1) -> torch.Tensor:
        x = input_ids if input_ids is not None else inputs_embeds
        b, n = x.shape[0], x.shape[1]
        if new_mask is None:
            new_mask = torch.ones(b, n, dtype=torch.long, device=x.device)
        new_mask = new_mask.to(torch.long)
        position_ids = self.pos[:, None] + torch.cumsum(new_mask, 1) - new_mask
        self.mask = torch.cat([self.mask, new_mask], 1)
        kw = dict(attention_mask=self.mask, position_ids=position_ids, past_key_values=self.cache, use_cache=True)
        if self.keep_arg:
            kw["logits_to_keep"] = keep
        if input_ids is not None:
            out = self.model(input_ids=input_ids, **kw)
        else:
            out = self.model(inputs_embeds=inputs_embeds, **kw)
        if out.past_key_values is not None and out.past_key_values is not self.cache:
            self.cache = out.past_key_values
        self.pos = self.pos + new_mask.sum(1)
        return out.logits[:, -keep:]

    def keep_last(self, keep: torch.Tensor) -> None:
        """Invalidate positions among the last ``keep.shape[1]`` fed (``keep`` False) and crop the
        trailing ones that no row keeps."""
        n = keep.shape[1]
        tail = self.mask[:, -n:]
        new_tail = tail * keep.to(tail.dtype)
        self.pos = self.pos - (tail - new_tail).sum(1)
        self.mask = torch.cat([self.mask[:, :-n], new_tail], 1)
        col_used = new_tail.any(0)
        used = torch.nonzero(col_used)
        last_used = int(used[-1, 0]) + 1 if used.numel() else 0
        drop = n - last_used
        if drop > 0:
            crop_cache(self.cache, drop)
            self.mask = self.mask[:, :-drop]


def _eos_mask(eos_token_id, vocab: int, device) -> Optional[torch.Tensor]:
    if eos_token_id is None:
        return None
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(
        eos_token_id.tolist() if isinstance(eos_token_id, torch.Tensor) else eos_token_id)
    m = torch.zeros(vocab, dtype=torch.bool, device=device)
    for i in ids:
        if not isinstance(i, int) or isinstance(i, bool) or not (0 <= i < vocab):
            raise ValueError(f"eos_token_id must hold ids in [0, {vocab}), got {eos_token_id!r}")
        m[i] = True
    return m


def _seeds(seed, batch: int, device) -> torch.Tensor:
    from ._params import rng_state
    s, _ = rng_state(seed, 0, batch, device)
    return s


# ============================================================================ generate

@torch.no_grad()
def generate(model, input_ids: torch.Tensor, *, strategy, max_new_tokens: int,
             attention_mask: Optional[torch.Tensor] = None, eos_token_id=None, pad_token_id: Optional[int] = None,
             streamer=None) -> GenerateOutput:
    """Batched decoding of any Hugging Face causal LM with a softdec strategy.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        An ``AutoModelForCausalLM`` (decoder-only) in eval mode.
    input_ids : torch.Tensor
        ``(B, L)`` int64 prompts, left-padded, on the model's device.
    strategy : softdec.strategies.Strategy
        ``Discrete``, ``SoftThinking``, ``Router`` or ``Speculative``.
    max_new_tokens : int
        Tokens to generate per row (at most; rows stop at eos).
    attention_mask : torch.Tensor, optional
        ``(B, L)`` 0/1 padding mask (left padding); default all ones.
    eos_token_id : int or list of int, optional
        Stop ids; default ``model.generation_config.eos_token_id``.
    pad_token_id : int, optional
        Fills rows after they stopped; default the generation config's pad,
        else the first eos, else 0.
    streamer : transformers.BaseStreamer, optional
        Receives the prompt, then each step's ``(B,)`` tokens, then ``end()``.

    Returns
    -------
    GenerateOutput
        ``sequences`` ``(B, L + S)`` int64 and per-step ``stats``.

    Examples
    --------
    >>> import torch, softdec.hf, softdec.strategies as S
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                   num_attention_heads=4, num_key_value_heads=2)
    >>> model = LlamaForCausalLM(cfg).eval()
    >>> ids = torch.randint(0, 64, (2, 5))
    >>> out = softdec.hf.generate(model, ids, strategy=S.SoftThinking(top_k=4, max_think_tokens=3,
    ...                           think_end_token_id=1), max_new_tokens=8)
    >>> out.sequences.shape[0], out.stats.mode.shape[0]
    (2, 2)

    References
    ----------
    Zhang et al., "Soft Thinking", 2025; Leviathan et al., ICML 2023.
    """
    _check_transformers()
    if not isinstance(strategy, S.Strategy):
        raise ValueError(f"strategy must be a softdec.strategies strategy (Discrete, SoftThinking, Router, "
                         f"Speculative), got {type(strategy).__name__}")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"input_ids must be a (batch, length) int64 tensor, got "
                         f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
    B, L = input_ids.shape
    if B == 0 or L == 0:
        raise ValueError(f"input_ids must hold at least one row and one token, got shape {tuple(input_ids.shape)}")
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError("softdec.hf.generate supports decoder-only causal LMs; the model is an encoder-decoder")
    device = input_ids.device
    input_ids = input_ids.to(torch.long)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    elif attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                         f"got {tuple(attention_mask.shape)}")
    attention_mask = attention_mask.to(device=device, dtype=torch.long)
    if bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("attention_mask must use left padding (the last column must be 1 in every row)")
    gc = getattr(model, "generation_config", None)
    if eos_token_id is None and gc is not None:
        eos_token_id = gc.eos_token_id
    V = _vocab_size(model)
    eos_mask = _eos_mask(eos_token_id, V, device)
    if pad_token_id is None:
        pad_token_id = getattr(gc, "pad_token_id", None) if gc is not None else None
        if pad_token_id is None:
            pad_token_id = int(torch.nonzero(eos_mask)[0, 0]) if eos_mask is not None and eos_mask.any() else 0
    if isinstance(pad_token_id, (list, tuple)):
        pad_token_id = pad_token_id[0]

    if streamer is not None:
        streamer.put(input_ids.cpu())
    if isinstance(strategy, S.Speculative):
        out = _generate_speculative(model, input_ids, attention_mask, strategy, max_new_tokens, eos_mask,
                                    int(pad_token_id), streamer)
    else:
        out = _generate_steps(model, input_ids, attention_mask, strategy, max_new_tokens, eos_mask,
                              int(pad_token_id), streamer)
    if streamer is not None:
        streamer.end()
    return out


def _empty_output(input_ids, B, device):
    z = torch.zeros(B, 0, device=device)
    return GenerateOutput(input_ids, GenerationStats(z.to(torch.int8), z.clone(), z.clone()))


def _generate_steps(model, input_ids, mask, strategy, max_new, eos_mask, pad, streamer) -> GenerateOutput:
    B, L = input_ids.shape
    device = input_ids.device
    if max_new == 0:
        return _empty_output(input_ids, B, device)
    emb_module, emb_w, scale = (None, None, 1.0)
    if strategy.needs_embeddings:
        emb_module, emb_w, scale = _input_embedding(model, type(strategy).__name__)
    runner = _Runner(model, B, device)
    state = strategy.init_state(B, device)
    seed = _seeds(strategy.seed, B, device)
    out_ids = torch.full((B, max_new), pad, dtype=torch.long, device=device)
    modes = torch.full((B, max_new), MODE_FINISHED, dtype=torch.int8, device=device)
    ents = torch.full((B, max_new), float("nan"), device=device)
    mps = torch.full((B, max_new), float("nan"), device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)

    logits = runner.forward(input_ids=input_ids, new_mask=mask)[:, -1]
    steps = 0
    for t in range(max_new):
        ctx = StepContext(emb_w, scale, seed, t)
        res = strategy.step(logits.float(), state, ctx, eos_mask=eos_mask)
        ids = torch.where(finished, pad, res.ids)
        out_ids[:, t] = ids
        modes[:, t] = torch.where(finished, MODE_FINISHED, res.mode).to(torch.int8)
        ents[:, t] = res.entropy
        mps[:, t] = res.max_prob
        stop = ~res.valid
        if eos_mask is not None:
            stop |= eos_mask[res.ids.clamp(0, eos_mask.numel() - 1)] & ~res.soft
        finished = finished | stop
        steps = t + 1
        if streamer is not None:
            streamer.put(ids.cpu())
        soft = res.soft & ~finished
        flags = torch.stack([finished.all(), soft.any()]).tolist()
        if flags[0] or t == max_new - 1:
            break
        if flags[1]:
            embeds = emb_module(ids[:, None])
            embeds = torch.where(soft[:, None, None], res.embeds[:, None].to(embeds.dtype), embeds)
            logits = runner.forward(inputs_embeds=embeds)[:, -1]
        else:
            logits = runner.forward(input_ids=ids[:, None])[:, -1]
    stats = GenerationStats(modes[:, :steps], ents[:, :steps], mps[:, :steps])
    return GenerateOutput(torch.cat([input_ids, out_ids[:, :steps]], 1), stats)


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
    if max_new == 0:
        return _empty_output(input_ids, B, device)
    K = spec.num_draft
    soft = spec.method == "soft"
    if soft:
        t_mod, t_w, t_scale = _input_embedding(model, "Speculative(method='soft')")
        d_mod, d_w, d_scale = _input_embedding(draft, "Speculative(method='soft') draft_model")
    seed = _seeds(spec.seed, B, device)
    vseed = seed ^ _VERIFY_SEED_SALT
    tgt, dft = _Runner(model, B, device), _Runner(draft, B, device)
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
        for j in range(K):
            if soft:
                lg = dft.forward(inputs_embeds=x, new_mask=x_mask)[:, -1].float()
                st = op("soft_mixture")(lg, d_w, top_k=spec.soft_top_k, temperature=spec.temperature,
                                        top_p=spec.top_p, min_p=spec.min_p, seed=seed, offset=r * K + j,
                                        embed_scale=d_scale)
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
        # ---- target: score last + K drafts in one forward
        if soft:
            t_in = torch.cat([t_pend.to(t_w.dtype), _soft_embed(t_w, t_scale, s_ids, s_w, t_w.dtype)], 1)
            tl = tgt.forward(inputs_embeds=t_in, keep=K + 1).float()
            v = op("verify")(tl, None, draft_probs=(s_ids, s_w), method="soft", temperature=spec.temperature,
                             top_k=spec.soft_top_k, top_p=spec.top_p, min_p=spec.min_p, delta=spec.delta,
                             seed=vseed, offset=r)
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
        tgt.keep_last(ar[None] <= a[:, None])                     # last, d_1..d_a
        n_fed = dft.mask.shape[1]
        keep_d = ar[None, 1:K] <= a[:, None]                       # d_1..d_{K-1} fed to the draft
        if K > 1:
            dft.keep_last(keep_d)
        del n_fed
        full = a == K
        if soft:
            own = torch.cat(d_embeds, 1)[:, K - 1:K]               # the draft's d_K embedding
            t_soft = _soft_embed(t_w, t_scale, v.soft_ids, v.soft_weights, t_w.dtype)[:, None]
            d_soft = _soft_embed(d_w, d_scale, v.soft_ids, v.soft_weights, d_w.dtype)[:, None]
            t_pend = t_soft
            d_pend = torch.cat([own.to(d_soft.dtype), d_soft], 1)
        else:
            last = toks[rows, a]
            d_pend = torch.cat([d_ids[:, K - 1:K], last[:, None]], 1)
        if soft:
            last = toks[rows, a]
        d_pend_mask = torch.stack([full.to(torch.long), torch.ones_like(a)], 1)
    S_ = int(n_out.max())
    stats = GenerationStats(modes[:, :S_], torch.full((B, S_), float("nan"), device=device),
                            torch.full((B, S_), float("nan"), device=device), torch.stack(accepted, 1))
    return GenerateOutput(torch.cat([input_ids, out_ids[:, :S_]], 1), stats)
