"""Rollout traces: what ``softdec.hf.generate(..., return_trace=True)`` records per step and row so
that an RL trainer (SofT-GRPO, Soft Tokens Hard Truths) can replay a rollout under the current
model and recompute the policy log-density of every soft and discrete token.

Memory is O(B * steps * k): token ids, the soft token's kept ids / weights / noisy logits and the
Philox (seed, offset) of each step, never a ``(B, steps, V)`` or ``(B, steps, D)`` tensor.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from ..strategies.base import MODE_DISCRETE, MODE_SOFT


class RolloutTrace(NamedTuple):
    """Per step and row record of a ``softdec.hf.generate`` rollout (``S`` generated steps, ``k`` the
    soft token width: the strategy's ``top_k``, 0 for ``Discrete``).

    mode : torch.Tensor
        ``(B, S)`` int8, as ``stats.mode``: ``MODE_SOFT`` (1) a soft token was chosen (and fed, unless
        it was the last step), ``MODE_DISCRETE`` (0) / ``MODE_THINK_END`` (2) a discrete token,
        ``MODE_FINISHED`` (-1) padding after the row stopped.
    tokens : torch.Tensor
        ``(B, S)`` int64: the token recorded in ``sequences`` (a discrete step's token, fed as
        ``input_ids``; a soft step's top id, not fed; pad after the row stopped).
    ids : torch.Tensor
        ``(B, S, k)`` int64: the soft token's kept ids, by weight descending (``soft_mixture``'s
        ``ids``); 0 on non-soft steps.
    weights : torch.Tensor
        ``(B, S, k)`` float32: the mixture weights fed (after noise; the Dirichlet sample when
        ``noise="dirichlet"``); 0 past ``nkept`` and on non-soft steps. The step's input embedding
        was ``embed_scale * sum_i weights[b, t, i] * E[ids[b, t, i]]``.
    noisy_logits : torch.Tensor or None
        ``(B, S, k)`` float32: ``y = log w + noise_scale * G`` of ``noise="gumbel"`` (``-inf`` past
        ``nkept`` and on non-soft steps), the ``y`` of ``softdec.gumbel_log_density``; None for other
        noises.
    nkept : torch.Tensor
        ``(B, S)`` int32: entries of ``ids`` that survived the filters (0 on non-soft steps and
        invalid rows).
    seed : torch.Tensor
        ``(B,)`` int64: each row's Philox key (the resolved ``strategy.seed``).
    offset : torch.Tensor
        ``(B, S)`` int64: the Philox offset ``soft_mixture`` used at each step (``2 * t``; the
        discrete draws use ``2 * t + 1``). With ``seed`` it regenerates the step's noise.
    positions : torch.Tensor
        ``(B, S)`` int64: position id of the input that carries step ``t``'s token (the prompt's
        valid length + ``t``).
    noise : str or None
        The strategy's ``noise`` (None, "gumbel", "dirichlet").
    """
    mode: torch.Tensor
    tokens: torch.Tensor
    ids: torch.Tensor
    weights: torch.Tensor
    noisy_logits: Optional[torch.Tensor]
    nkept: torch.Tensor
    seed: torch.Tensor
    offset: torch.Tensor
    positions: torch.Tensor
    noise: Optional[str] = None

    @property
    def soft(self) -> torch.Tensor:
        """``(B, S)`` bool: soft steps."""
        return self.mode == MODE_SOFT

    @property
    def discrete(self) -> torch.Tensor:
        """``(B, S)`` bool: ``MODE_DISCRETE`` steps, the tokens drawn by a ``Discrete`` strategy (their
        policy log-probability is ``log softmax(filtered logits / T)[token]``; one exception: a
        thinking row whose soft token's top id is an eos emits that eos as is, in this mode).
        ``MODE_THINK_END`` steps are not included: the think-end token is emitted by rule
        (``max_think_tokens``, the soft token's top id), or, while a ``Router`` routes discretely,
        drawn (then a trainer may count it as discrete)."""
        return self.mode == MODE_DISCRETE


def _nkept(ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Kept entries of a ``soft_mixture`` row: kept ids are distinct and the tail is padded with the
    row's first id, so the count is 1 + the later entries that differ from the first (0 if invalid)."""
    n = 1 + (ids[:, 1:] != ids[:, :1]).sum(1)
    return torch.where(valid, n, torch.zeros_like(n)).to(torch.int32)


class _Recorder:
    """Collects a trace inside the eager decode loop (one column per step, preallocated)."""

    def __init__(self, strategy, B: int, max_new: int, seed: torch.Tensor, prompt_mask: torch.Tensor, device):
        self.noise = getattr(strategy, "noise", None)
        k = getattr(strategy, "top_k", None) if strategy.needs_embeddings else None
        self.k = int(k.max()) if isinstance(k, torch.Tensor) else (int(k) if k is not None else 0)
        self.B, self.max_new, self.device = B, max_new, device
        self.ids = torch.zeros(B, max_new, self.k, dtype=torch.long, device=device)
        self.weights = torch.zeros(B, max_new, self.k, dtype=torch.float32, device=device)
        self.noisy = (torch.full((B, max_new, self.k), float("-inf"), dtype=torch.float32, device=device)
                      if self.noise == "gumbel" else None)
        self.nkept = torch.zeros(B, max_new, dtype=torch.int32, device=device)
        self.seed = seed.clone()
        self.base_pos = prompt_mask.sum(1)

    def record(self, t: int, res, mode: torch.Tensor) -> None:
        mx = res.mixture
        if mx is None:
            return
        soft = (mode == MODE_SOFT)
        w = mx.ids.shape[1]
        if w != self.k:  # a per-row top_k tensor whose width differs from the preallocated one
            raise RuntimeError(f"rollout trace: soft_mixture returned width {w}, expected {self.k}")
        self.ids[:, t] = torch.where(soft[:, None], mx.ids, torch.zeros_like(mx.ids))
        self.weights[:, t] = torch.where(soft[:, None], mx.weights.float(), torch.zeros_like(self.weights[:, t]))
        if self.noisy is not None and mx.noisy_logits is not None:
            self.noisy[:, t] = torch.where(soft[:, None], mx.noisy_logits.float(), self.noisy[:, t])
        n = _nkept(mx.ids, mx.valid)
        self.nkept[:, t] = torch.where(soft, n, torch.zeros_like(n))

    def finish(self, modes: torch.Tensor, tokens: torch.Tensor, steps: int) -> RolloutTrace:
        B, dev = self.B, self.device
        t = torch.arange(steps, device=dev, dtype=torch.long)
        return RolloutTrace(modes[:, :steps], tokens[:, :steps], self.ids[:, :steps], self.weights[:, :steps],
                            None if self.noisy is None else self.noisy[:, :steps], self.nkept[:, :steps],
                            self.seed, (2 * t)[None].expand(B, steps).contiguous(),
                            self.base_pos[:, None] + t[None], self.noise)


# ============================================================================ replay

def replay_inputs_embeds(model, input_ids: torch.Tensor, trace: RolloutTrace) -> torch.Tensor:
    """``(B, L + S, D)`` input embeddings of a rollout: the prompt's, then per step the token's
    embedding (discrete / finished steps) or ``embed_scale * sum_i w_i E[id_i]`` (soft steps, in
    float32, cast to the table's dtype). Differentiable w.r.t. the model's embedding table."""
    from ._common import _input_embedding
    emb_module, w, scale = _input_embedding(model, "replay")
    prompt = emb_module(input_ids)
    if trace.mode.shape[1] == 0:
        return prompt
    disc = emb_module(trace.tokens)
    rows = w[trace.ids].float()                                      # (B, S, k, D)
    soft = (scale * (trace.weights[..., None] * rows).sum(2)).to(disc.dtype)
    steps = torch.where(trace.soft[..., None], soft, disc)
    return torch.cat([prompt, steps], 1)


def replay_logits(model, input_ids: torch.Tensor, trace: RolloutTrace,
                  attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Logits ``(B, S, V)`` that each step of a rollout was decoded from, recomputed in one forward
    pass over the prompt and the trace's inputs (soft steps as their mixtures). Differentiable
    w.r.t. the model's parameters (call it without ``torch.no_grad`` in a trainer).

    ``input_ids`` / ``attention_mask``: the prompt and its (left-padding) mask as given to
    ``generate``. Step ``t``'s logits come from the position before its token; steps after a row
    stopped are padding (their logits are meaningless)."""
    if not isinstance(trace, RolloutTrace):
        raise ValueError(f"trace must be a softdec.hf.RolloutTrace (generate(..., return_trace=True).trace), "
                         f"got {type(trace).__name__}")
    B, L = input_ids.shape
    S = trace.mode.shape[1]
    if trace.mode.shape[0] != B:
        raise ValueError(f"trace has {trace.mode.shape[0]} rows, input_ids {B}")
    dev = input_ids.device
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if S == 0:
        return torch.zeros(B, 0, 0, device=dev)
    mask = torch.cat([attention_mask.to(torch.long), torch.ones(B, S, dtype=torch.long, device=dev)], 1)
    pos = (mask.cumsum(1) - mask).clamp(min=0)
    embeds = replay_inputs_embeds(model, input_ids.to(torch.long), trace)
    # the last step's token is never fed: its logits are not needed
    out = model(inputs_embeds=embeds[:, :L + S - 1], attention_mask=mask[:, :L + S - 1],
                position_ids=pos[:, :L + S - 1], use_cache=False)
    return out.logits[:, L - 1:L + S - 1]
