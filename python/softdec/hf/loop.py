"""The step-by-step decode loop (Discrete, SoftThinking, Router), ``generate`` and the
``model.generate(custom_generate=...)`` entry points."""

from __future__ import annotations

import copy
from typing import Optional

import torch

from .. import strategies as S
from ..strategies.base import MODE_FINISHED, StepContext
from ._common import (GenerateOutput, GenerationStats, _check_transformers, _empty_output, _eos_mask,
                      _input_embedding, _Runner, _seeds, _vocab_size)
from .compiled import _generate_compiled
from .speculative import _generate_speculative
from .trace import _Recorder

# ============================================================================ generate

@torch.no_grad()
def generate(model, input_ids: torch.Tensor, *, strategy, max_new_tokens: int,
             attention_mask: Optional[torch.Tensor] = None, eos_token_id=None, pad_token_id: Optional[int] = None,
             streamer=None, compile: bool = False, compile_mode: str = "default", return_trace: bool = False,
             tokenizer=None) -> GenerateOutput:
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
    compile : bool, default False
        Run each decode step (model forward, the strategy's ops, state updates)
        as one ``torch.compile(fullgraph=True)`` graph over a transformers
        ``StaticCache`` sized ``L + max_new_tokens``, with no host
        synchronisation inside a step; the same tokens as the eager loop. The
        first call per (model, strategy) compiles (slow); later calls with the
        same shapes reuse it. Not for ``Speculative``. Needs transformers >= 5.
    compile_mode : str, default "default"
        ``torch.compile`` mode, e.g. ``"reduce-overhead"`` (CUDA graphs) on a GPU.
    return_trace : bool, default False
        Also return ``trace``, a ``softdec.hf.RolloutTrace``: per step and row the mode, token,
        the soft token's ids / weights / Gumbel noisy logits / kept count, the Philox (seed,
        offset) and positions, O(B * S * k) memory, for RL trainers that recompute log-densities
        (``softdec.hf.replay_logits``). Eager ``Discrete`` / ``SoftThinking`` / ``Router`` only
        (ValueError with ``compile=True`` or ``Speculative``).
    tokenizer : transformers tokenizer, optional
        Converts a string ``strategy.think_end_token_id`` (e.g. ``"</think>"``) to its id.

    Returns
    -------
    GenerateOutput
        ``sequences`` ``(B, L + S)`` int64, per-step ``stats`` and ``trace`` (None unless
        ``return_trace``).

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
    if not isinstance(compile, bool):
        raise ValueError(f"compile must be a bool, got {compile!r}")
    if compile and isinstance(strategy, S.Speculative):
        raise ValueError("compile=True supports Discrete, SoftThinking and Router; Speculative runs a variable "
                         "number of tokens per round and is not compiled")
    if compile_mode not in ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"):
        raise ValueError(f"compile_mode must be a torch.compile mode ('default', 'reduce-overhead', 'max-autotune', "
                         f"'max-autotune-no-cudagraphs'), got {compile_mode!r}")
    if not isinstance(return_trace, bool):
        raise ValueError(f"return_trace must be a bool, got {return_trace!r}")
    if return_trace and (compile or isinstance(strategy, S.Speculative)):
        raise ValueError("return_trace=True is supported by the eager loop for Discrete, SoftThinking and Router "
                         "(not with compile=True, not for Speculative)")
    strategy = _resolve_strategy_tokens(strategy, tokenizer)
    if compile:
        out = _generate_compiled(model, input_ids, attention_mask, strategy, max_new_tokens, eos_mask,
                                 int(pad_token_id), streamer, compile_mode)
    elif isinstance(strategy, S.Speculative):
        out = _generate_speculative(model, input_ids, attention_mask, strategy, max_new_tokens, eos_mask,
                                    int(pad_token_id), streamer)
    else:
        out = _generate_steps(model, input_ids, attention_mask, strategy, max_new_tokens, eos_mask,
                              int(pad_token_id), streamer, return_trace)
    if streamer is not None:
        streamer.end()
    return out


def _resolve_strategy_tokens(strategy, tokenizer):
    """A strategy whose string ``think_end_token_id`` is converted with ``tokenizer`` (a copy; the
    caller's object is unchanged), or the strategy itself."""
    from ..strategies._tokens import resolve_token_id
    if isinstance(getattr(strategy, "think_end_token_id", None), str):
        tid = resolve_token_id(strategy.think_end_token_id, tokenizer, "think_end_token_id")
        strategy = copy.copy(strategy)
        strategy.think_end_token_id = tid
    return strategy


def _generate_steps(model, input_ids, mask, strategy, max_new, eos_mask, pad, streamer,
                    return_trace=False) -> GenerateOutput:
    B, L = input_ids.shape
    device = input_ids.device
    if max_new == 0:
        out = _empty_output(input_ids, B, device)
        if return_trace:
            # no step drew anything: do not advance torch's generator for a seed=None strategy
            seed = (torch.zeros(B, dtype=torch.long, device=device) if strategy.seed is None
                    else _seeds(strategy.seed, B, device))
            rec = _Recorder(strategy, B, 0, seed, mask, device)
            out = out._replace(trace=rec.finish(out.stats.mode, torch.zeros(B, 0, dtype=torch.long,
                                                                          device=device), 0))
        return out
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
    rec = _Recorder(strategy, B, max_new, seed, mask, device) if return_trace else None

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
        if rec is not None:
            rec.record(t, res, modes[:, t])
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
    trace = rec.finish(modes, out_ids, steps) if rec is not None else None
    return GenerateOutput(torch.cat([input_ids, out_ids[:, :steps]], 1), stats, trace)

# ============================================================================ custom_generate entry points

def _custom_generate(model, input_ids, generation_config, strategy, streamer, model_kwargs, cls,
                     return_trace=False, tokenizer=None):
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
                   pad_token_id=pad, streamer=streamer, return_trace=return_trace, tokenizer=tokenizer)
    return out if getattr(gc, "return_dict_in_generate", False) else out.sequences


def discrete_generate(model, input_ids, logits_processor=None, stopping_criteria=None, generation_config=None,
                      synced_gpus=False, streamer=None, strategy=None, return_trace=False, **model_kwargs):
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
    return _custom_generate(model, input_ids, gc, strategy, streamer, model_kwargs, S.Discrete, return_trace)


def soft_thinking_generate(model, input_ids, logits_processor=None, stopping_criteria=None,
                           generation_config=None, synced_gpus=False, streamer=None, strategy=None,
                           return_trace=False, tokenizer=None, **model_kwargs):
    """``model.generate(ids, custom_generate=softdec.hf.soft_thinking_generate, strategy=SoftThinking(...))``.

    ``strategy`` defaults to ``SoftThinking()``. transformers >= 5 does not
    forward ``streamer`` to a callable ``custom_generate`` that takes extra
    arguments (it is replaced by them); call ``softdec.hf.generate`` to stream.
    ``return_trace=True`` (with ``return_dict_in_generate=True``) adds the
    rollout trace. transformers pops ``tokenizer`` before calling a custom
    generate: give it to the strategy (``SoftThinking(..., tokenizer=tok)``).

    Examples
    --------
    >>> # model.generate(ids, custom_generate=softdec.hf.soft_thinking_generate,
    >>> #                strategy=softdec.strategies.SoftThinking(top_k=10), max_new_tokens=64)
    """
    strategy = S.SoftThinking() if strategy is None else strategy
    return _custom_generate(model, input_ids, generation_config, strategy, streamer, model_kwargs, S.SoftThinking,
                            return_trace, tokenizer)


def router_generate(model, input_ids, logits_processor=None, stopping_criteria=None, generation_config=None,
                    synced_gpus=False, streamer=None, strategy=None, return_trace=False, tokenizer=None,
                    **model_kwargs):
    """``model.generate(ids, custom_generate=softdec.hf.router_generate, strategy=Router(...))``;
    ``strategy`` defaults to ``Router()``; ``return_trace`` as in ``soft_thinking_generate``."""
    strategy = S.Router() if strategy is None else strategy
    return _custom_generate(model, input_ids, generation_config, strategy, streamer, model_kwargs, S.Router,
                            return_trace, tokenizer)


def speculative_generate(model, input_ids, logits_processor=None, stopping_criteria=None, generation_config=None,
                         synced_gpus=False, streamer=None, strategy=None, draft_model=None, **model_kwargs):
    """``model.generate(ids, custom_generate=softdec.hf.speculative_generate, strategy=Speculative(draft, 4))``,
    or ``draft_model=draft`` for ``Speculative(draft)`` with defaults."""
    if strategy is None:
        if draft_model is None:
            raise ValueError("speculative_generate needs strategy=Speculative(...) or draft_model=...")
        strategy = S.Speculative(draft_model)
    return _custom_generate(model, input_ids, generation_config, strategy, streamer, model_kwargs, S.Speculative)
