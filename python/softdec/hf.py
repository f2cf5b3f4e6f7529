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
        self.all_valid = True  # no padding and no holes so far: the model may skip the mask

    def forward(self, *, input_ids=None, inputs_embeds=None, new_mask=None, keep: int = 1) -> torch.Tensor:
        x = input_ids if input_ids is not None else inputs_embeds
        b, n = x.shape[0], x.shape[1]
        if new_mask is None:
            new_mask = torch.ones(b, n, dtype=torch.long, device=x.device)
        else:
            new_mask = new_mask.to(torch.long)
            self.all_valid = self.all_valid and bool(new_mask.all())
        if self.all_valid:
            position_ids = (self.pos[:, None] + torch.arange(n, device=x.device)[None]).expand(b, n)
        else:
            position_ids = self.pos[:, None] + torch.cumsum(new_mask, 1) - new_mask
        self.mask = torch.cat([self.mask, new_mask], 1)
        # like transformers' generate, drop an all-ones mask (SDPA then needs no mask at all)
        kw = dict(attention_mask=None if self.all_valid else self.mask, position_ids=position_ids,
                  past_key_values=self.cache, use_cache=True)
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
        self.all_valid = self.all_valid and bool(keep.all())
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
        all_done, any_soft, all_soft = torch.stack([finished.all(), soft.any(), soft.all()]).tolist()
        if all_done or t == max_new - 1:
            break
        if all_soft:
            logits = runner.forward(inputs_embeds=res.embeds[:, None].to(emb_w.dtype))[:, -1]
        elif any_soft:
            # one step, two kinds of rows: discrete rows feed their token's embedding (the module's output)
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
        keep_d = ar[None, 1:K] <= a[:, None]                       # d_1..d_{K-1} fed to the draft
        if K > 1:
            dft.keep_last(keep_d)
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
    S_ = int(n_out.max())
    stats = GenerationStats(modes[:, :S_], torch.full((B, S_), float("nan"), device=device),
                            torch.full((B, S_), float("nan"), device=device), torch.stack(accepted, 1))
    return GenerateOutput(torch.cat([input_ids, out_ids[:, :S_]], 1), stats)


# ============================================================================ custom_generate entry points

def _custom_generate(model, input_ids, generation_config, strategy, streamer, model_kwargs, cls):
    if not isinstance(strategy, cls):
        raise ValueError(f"strategy must be a softdec.strategies.{cls.__name__}, got {type(strategy).__name__}")
    gc = generation_config if generation_config is not None else model.generation_config
    L = input_ids.shape[1]
    max_new = gc.max_new_tokens
    if max_new is None:
        max_new = max(int(gc.max_length) - L, 0)
    eos = getattr(gc, "_eos_token_tensor", None)
    eos = eos.tolist() if isinstance(eos, torch.Tensor) else gc.eos_token_id
    if eos is None:
        eos = []
    pad = getattr(gc, "pad_token_id", None)
    out = generate(model, input_ids, strategy=strategy, max_new_tokens=int(max_new),
                   attention_mask=model_kwargs.get("attention_mask"), eos_token_id=eos,
                   pad_token_id=pad, streamer=streamer)
    return out if getattr(gc, "return_dict_in_generate", False) else out.sequences


def discrete_generate(model, input_ids, logits_processor=None, stopping_criteria=None, generation_config=None,
                      synced_gpus=False, streamer=None, strategy=None, **model_kwargs):
    """``model.generate(ids, custom_generate=softdec.hf.discrete_generate, strategy=Discrete(...), ...)``.

    transformers passes its prepared ``generation_config`` (``max_new_tokens``,
    ``eos_token_id``, ``pad_token_id``) and ``attention_mask``; ``strategy``
    defaults to ``Discrete(temperature=0)`` when ``do_sample`` is False, else
    ``Discrete`` with the config's temperature / top_k / top_p / min_p.
    Returns the sequences, or a ``GenerateOutput`` with
    ``return_dict_in_generate=True``. Logits processors and stopping criteria
    other than max length / eos are not applied.

    Examples
    --------
    >>> # model.generate(ids, custom_generate=softdec.hf.discrete_generate, max_new_tokens=16)
    """
    gc = generation_config if generation_config is not None else model.generation_config
    if strategy is None:
        if getattr(gc, "do_sample", False):
            strategy = S.Discrete(temperature=gc.temperature if gc.temperature is not None else 1.0,
                                  top_k=gc.top_k or 0, top_p=gc.top_p if gc.top_p is not None else 1.0,
                                  min_p=gc.min_p or 0.0)
        else:
            strategy = S.Discrete(temperature=0.0)
    return _custom_generate(model, input_ids, gc, strategy, streamer, model_kwargs, S.Discrete)


def soft_thinking_generate(model, input_ids, logits_processor=None, stopping_criteria=None,
                           generation_config=None, synced_gpus=False, streamer=None, strategy=None,
                           **model_kwargs):
    """``model.generate(ids, custom_generate=softdec.hf.soft_thinking_generate, strategy=SoftThinking(...))``.

    ``strategy`` defaults to ``SoftThinking()``. transformers >= 5 does not
    forward ``streamer`` to a callable ``custom_generate`` that takes extra
    arguments (it is replaced by them); call ``softdec.hf.generate`` to stream.

    Examples
    --------
    >>> # model.generate(ids, custom_generate=softdec.hf.soft_thinking_generate,
    >>> #                strategy=softdec.strategies.SoftThinking(top_k=10), max_new_tokens=64)
    """
    strategy = S.SoftThinking() if strategy is None else strategy
    return _custom_generate(model, input_ids, generation_config, strategy, streamer, model_kwargs, S.SoftThinking)


def router_generate(model, input_ids, logits_processor=None, stopping_criteria=None, generation_config=None,
                    synced_gpus=False, streamer=None, strategy=None, **model_kwargs):
    """``model.generate(ids, custom_generate=softdec.hf.router_generate, strategy=Router(...))``;
    ``strategy`` defaults to ``Router()``."""
    strategy = S.Router() if strategy is None else strategy
    return _custom_generate(model, input_ids, generation_config, strategy, streamer, model_kwargs, S.Router)


def speculative_generate(model, input_ids, logits_processor=None, stopping_criteria=None, generation_config=None,
                         synced_gpus=False, streamer=None, strategy=None, draft_model=None, **model_kwargs):
    """``model.generate(ids, custom_generate=softdec.hf.speculative_generate, strategy=Speculative(draft, 4))``,
    or ``draft_model=draft`` for ``Speculative(draft)`` with defaults."""
    if strategy is None:
        if draft_model is None:
            raise ValueError("speculative_generate needs strategy=Speculative(...) or draft_model=...")
        strategy = S.Speculative(draft_model)
    return _custom_generate(model, input_ids, generation_config, strategy, streamer, model_kwargs, S.Speculative)


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
