"""Soft Thinking (concept tokens), Cold Stop, and per-row soft/discrete routing.

Soft Thinking: Zhang et al., "Soft Thinking: Unlocking the Reasoning Potential
of LLMs in Continuous Concept Space", 2025 (https://arxiv.org/abs/2505.15778).
ThinkRouter (2026): soft when max_prob >= threshold, else a discrete sample.
LEAD: entropy hysteresis between soft and discrete modes.
"""

from __future__ import annotations

from typing import Optional

import torch

from ._ops import op
from ._tokens import resolve_token_id
from .base import (MODE_DISCRETE, MODE_SOFT, MODE_THINK_END, StepContext, StepResult, Strategy, check_number)
from .discrete import Discrete

_NOISES = (None, "gumbel", "dirichlet")


class _SoftBase(Strategy):
    needs_embeddings = True

    def _init_soft(self, top_k, top_p, min_p, temperature, noise, tau, noise_scale, dirichlet_alpha,
                   think_end_token_id, max_think_tokens, after, seed, tokenizer=None, filter_top_k=None,
                   gumbel_clamp=None, gumbel_eps=0.0, embed_noise_std=0.0):
        self.embed_noise_std = check_number(embed_noise_std, "embed_noise_std", lo=0.0)
        self.gumbel_clamp = None if gumbel_clamp is None else tuple(gumbel_clamp)
        self.gumbel_eps = check_number(gumbel_eps, "gumbel_eps", lo=0.0)
        self.top_k = check_number(top_k, "top_k", lo=1, integer=True)
        self.filter_top_k = check_number(filter_top_k, "filter_top_k", lo=0, integer=True, allow_none=True)
        if (isinstance(self.filter_top_k, int) and isinstance(self.top_k, int)
                and self.filter_top_k > 0 and self.top_k > self.filter_top_k):
            raise ValueError(f"top_k (the output width, {self.top_k}) must be <= filter_top_k "
                             f"({self.filter_top_k}) when filter_top_k > 0")
        self.top_p = check_number(top_p, "top_p", lo=0.0, lo_open=True, hi=1.0)
        self.min_p = check_number(min_p, "min_p", lo=0.0, hi=1.0)
        self.temperature = check_number(temperature, "temperature", lo=0.0)
        if noise not in _NOISES:
            raise ValueError(f"noise must be None, 'gumbel' or 'dirichlet', got {noise!r}")
        self.noise = noise
        self.tau = check_number(tau, "tau", lo=0.0, lo_open=True)
        self.noise_scale = check_number(noise_scale, "noise_scale", lo=0.0)
        self.dirichlet_alpha = check_number(dirichlet_alpha, "dirichlet_alpha", lo=0.0, lo_open=True)
        # a string stays a string until a tokenizer converts it (here, or softdec.hf.generate(tokenizer=...))
        think_end_token_id = resolve_token_id(think_end_token_id, tokenizer, "think_end_token_id") \
            if tokenizer is not None else think_end_token_id
        self.think_end_token_id = think_end_token_id if isinstance(think_end_token_id, str) else check_number(
            think_end_token_id, "think_end_token_id", lo=0, integer=True, allow_none=True)
        self.max_think_tokens = check_number(max_think_tokens, "max_think_tokens", lo=0, integer=True,
                                             allow_none=True)
        if after is None:
            after = Discrete()
        if not isinstance(after, Discrete):
            raise ValueError(f"after must be a softdec.strategies.Discrete, got {type(after).__name__}")
        self.after = after
        self.seed = seed

    def _mixture(self, logits, ctx: StepContext):
        return op("soft_mixture")(logits, ctx.embedding, top_k=self.top_k, filter_top_k=self.filter_top_k,
                                  temperature=self.temperature,
                                  top_p=self.top_p, min_p=self.min_p, noise=self.noise, tau=self.tau,
                                  noise_scale=self.noise_scale, dirichlet_alpha=self.dirichlet_alpha,
                                  seed=ctx.seed, offset=ctx.offset(0), embed_scale=ctx.embed_scale,
                                  gumbel_clamp=self.gumbel_clamp, gumbel_eps=self.gumbel_eps,
                                  embed_noise_std=self.embed_noise_std)

    def init_state(self, batch, device):
        return {"thinking": torch.ones(batch, dtype=torch.bool, device=device),
                "think_count": torch.zeros(batch, dtype=torch.int64, device=device)}

    def _finish(self, logits, st, soft_wanted, end_now, eos_top, state, ctx, discrete: Discrete) -> StepResult:
        """Combine the soft token, the think-end token, a top-1 eos and discrete draws per row."""
        thinking = state["thinking"]
        top = st.ids[:, 0]
        soft = soft_wanted & ~end_now & ~eos_top
        emit_end = end_now & ~eos_top & (self.think_end_token_id is not None)
        need_draw = ~soft & ~emit_end & ~eos_top
        ids = torch.where(emit_end, torch.full_like(top, self.think_end_token_id or 0), top)
        valid = st.valid
        if ctx.static or bool(need_draw.any()):
            d = discrete.draw(logits, ctx.seed, ctx.offset(1))
            ids = torch.where(need_draw, d.ids, ids)
            valid = torch.where(need_draw, d.valid, valid)
        mode = torch.where(soft, MODE_SOFT, MODE_DISCRETE)
        mode = torch.where(emit_end, MODE_THINK_END, mode).to(torch.int8)
        state["think_count"] = state["think_count"] + soft.to(torch.int64)
        state["thinking"] = thinking & ~end_now & ~eos_top
        return StepResult(ids, soft, st.embeds, mode, st.entropy, st.max_prob, valid, st)

    def _end_conditions(self, st, state, eos_mask):
        """(end, eos_top): thinking ends on this step (max_think_tokens reached or top-1 is the
        think-end id); the top-1 id is an eos id (emitted as a discrete token, stops the row)."""
        thinking = state["thinking"]
        top = st.ids[:, 0]
        end = torch.zeros_like(thinking)
        if self.max_think_tokens is not None:
            end |= state["think_count"] >= self.max_think_tokens
        if self.think_end_token_id is not None:
            end |= top == self.think_end_token_id
        eos_top = torch.zeros_like(thinking)
        if eos_mask is not None:
            eos_top = eos_mask[top.clamp(0, eos_mask.numel() - 1)] & (top < eos_mask.numel())
        return end & thinking, eos_top & thinking


class SoftThinking(_SoftBase):
    """Soft Thinking: feed concept tokens (probability-weighted mixtures of
    token embeddings, ``softdec.soft_mixture``) while a row thinks, then decode
    discretely with ``after``.

    Per row and step while thinking: ``soft_mixture`` of the logits (top-k ->
    top-p -> min-p, optional Gumbel/Dirichlet noise) becomes the next input
    embedding, built from the model's raw embedding table and scaled once by
    the embedding module's own factor (Gemma's ``sqrt(hidden)``); the sequence
    records the mixture's top id. Thinking ends on the step where

    - the entropy of ``softmax(logits / temperature)`` has been below
      ``cold_stop_entropy`` for ``cold_stop_steps`` consecutive thinking steps
      (Cold Stop; this step is the N-th such step), or
    - ``max_think_tokens`` soft tokens have already been fed, or
    - the mixture's top id is ``think_end_token_id`` (the model closes its
      thought) or an eos id.

    On that step the row emits ``think_end_token_id`` as a discrete token
    (``mode == MODE_THINK_END``; a top-1 eos is emitted as itself and stops
    the row); with ``think_end_token_id=None`` it emits a draw from ``after``
    instead. From the next step on it decodes with ``after``. All of this is
    per row, in ``[B]`` tensors: rows of a batch switch independently.

    Parameters
    ----------
    top_k : int, default 10
        The concept token's width (Soft Thinking's ``max_topk``).
    filter_top_k : int or None, default None (keyword)
        Candidates kept before top-p / min-p (Soft Thinking's ``top_k``, 30 in
        the paper); None: ``top_k``; 0: the whole vocabulary.
    gumbel_clamp, gumbel_eps, embed_noise_std : (keyword)
        SofT-GRPO's Gumbel form and the Gaussian embedding noise, as in
        ``softdec.soft_mixture``.
        Tokens in each concept token (Soft Thinking's max_topk; 5-20).
    top_p, min_p, temperature : float, defaults 1.0, 0.0, 1.0
        Filters of ``soft_mixture``; temperature 0 makes the mixture one-hot
        (the entropy / max prob are then those of ``softmax(logits)``, T = 1,
        so Cold Stop and routing still see the model's uncertainty).
    noise : {None, "gumbel", "dirichlet"}, default None
        Exploration noise on the mixture weights (tau, noise_scale,
        dirichlet_alpha as in ``softdec.soft_mixture``).
    cold_stop_entropy : float, default 0.01
        Entropy threshold (nats) of Cold Stop.
    cold_stop_steps : int or None, default None
        Consecutive low-entropy steps that end thinking; None disables Cold
        Stop (the paper uses 256).
    think_end_token_id : int, str or None
        The ``</think>`` id, or its text (``"</think>"``) converted with
        ``tokenizer`` (here or ``softdec.hf.generate(tokenizer=...)``); it must
        map to exactly one token id (ValueError otherwise).
    max_think_tokens : int or None
        At most this many soft tokens per row.
    after : Discrete, default Discrete()
        Decoding after thinking ends.
    seed : int, torch.Tensor or None
        Philox key(s) for the noise and the discrete draws: an int keys row
        ``b`` by ``softdec.reference.row_seed(seed, b)``, a ``(B,)`` tensor each
        row by its own entry (see :class:`Discrete`).
    tokenizer : transformers tokenizer, optional
        Converts a string ``think_end_token_id``.

    Examples
    --------
    >>> import softdec.strategies as S
    >>> st = S.SoftThinking(top_k=10, temperature=0.6, top_p=0.95, cold_stop_steps=256,
    ...                     think_end_token_id=151668, after=S.Discrete(temperature=0.0))
    """

    def __init__(self, top_k=10, top_p=1.0, min_p=0.0, temperature=1.0, noise=None, tau=1.0,
                 cold_stop_entropy=0.01, cold_stop_steps=None, think_end_token_id=None,
                 max_think_tokens=None, after=None, *, noise_scale=1.0, dirichlet_alpha=1.0, seed=None,
                 tokenizer=None, filter_top_k=None, gumbel_clamp=None, gumbel_eps=0.0, embed_noise_std=0.0):
        self._init_soft(top_k, top_p, min_p, temperature, noise, tau, noise_scale, dirichlet_alpha,
                        think_end_token_id, max_think_tokens, after, seed, tokenizer, filter_top_k, gumbel_clamp,
                        gumbel_eps, embed_noise_std)
        self.cold_stop_entropy = check_number(cold_stop_entropy, "cold_stop_entropy", lo=0.0)
        self.cold_stop_steps = check_number(cold_stop_steps, "cold_stop_steps", lo=1, integer=True,
                                            allow_none=True)

    def __repr__(self):
        return (f"SoftThinking(top_k={self.top_k}, filter_top_k={self.filter_top_k}, top_p={self.top_p}, min_p={self.min_p}, "
                f"temperature={self.temperature}, noise={self.noise!r}, tau={self.tau}, "
                f"cold_stop_entropy={self.cold_stop_entropy}, cold_stop_steps={self.cold_stop_steps}, "
                f"think_end_token_id={self.think_end_token_id}, max_think_tokens={self.max_think_tokens}, "
                f"after={self.after!r})")

    def init_state(self, batch, device):
        s = super().init_state(batch, device)
        s["low_count"] = torch.zeros(batch, dtype=torch.int64, device=device)
        return s

    def step(self, logits, state, ctx, eos_mask=None) -> StepResult:
        st = self._mixture(logits, ctx)
        thinking = state["thinking"]
        end, eos_top = self._end_conditions(st, state, eos_mask)
        if self.cold_stop_steps is not None:
            low = thinking & (st.entropy < self.cold_stop_entropy)
            state["low_count"] = torch.where(low, state["low_count"] + 1, torch.zeros_like(state["low_count"]))
            end |= thinking & (state["low_count"] >= self.cold_stop_steps)
        return self._finish(logits, st, thinking, end, eos_top, state, ctx, self.after)


class Router(_SoftBase):
    """Per row per step, a soft token or a discrete token.

    ``variant="max_prob"`` (ThinkRouter): soft when the max probability of
    ``softmax(logits / temperature)`` is ``>= threshold``, otherwise a discrete
    draw from ``discrete``.

    ``variant="lead"`` (LEAD, entropy hysteresis): rows start in soft mode; a
    soft row switches to discrete when the entropy falls below
    ``low_entropy`` and below the entropy at its last switch; a discrete row
    switches back to soft when the entropy exceeds ``high_entropy`` after at
    least ``min_steps`` steps in discrete mode.

    With ``think_end_token_id`` set, a row that emits it (or reaches
    ``max_think_tokens`` soft tokens, which emits it) leaves routing and
    decodes with ``after`` from then on.

    Parameters
    ----------
    threshold : float, default 0.5
        ThinkRouter's max_prob threshold, in [0, 1].
    variant : {"max_prob", "lead"}, default "max_prob"
    low_entropy, high_entropy : float, defaults 0.2, 1.0
        LEAD's switch thresholds (nats).
    min_steps : int, default 256
        LEAD: steps in discrete mode before switching back to soft.
    discrete : Discrete, default Discrete()
        Draws for discrete steps while routing.
    top_k, top_p, min_p, temperature, noise, tau, think_end_token_id,
    max_think_tokens, after, seed, tokenizer, filter_top_k, gumbel_clamp, gumbel_eps, embed_noise_std :
        As in ``SoftThinking``.

    Examples
    --------
    >>> import softdec.strategies as S
    >>> r = S.Router(threshold=0.6, top_k=10, discrete=S.Discrete(temperature=0.7))
    >>> lead = S.Router(variant="lead", low_entropy=0.2, high_entropy=1.0, min_steps=256)
    """

    def __init__(self, threshold=0.5, *, variant="max_prob", low_entropy=0.2, high_entropy=1.0, min_steps=256,
                 discrete=None, top_k=10, top_p=1.0, min_p=0.0, temperature=1.0, noise=None, tau=1.0,
                 noise_scale=1.0, dirichlet_alpha=1.0, think_end_token_id=None, max_think_tokens=None,
                 after=None, seed=None, tokenizer=None, filter_top_k=None, gumbel_clamp=None, gumbel_eps=0.0,
                 embed_noise_std=0.0):
        self._init_soft(top_k, top_p, min_p, temperature, noise, tau, noise_scale, dirichlet_alpha,
                        think_end_token_id, max_think_tokens, after, seed, tokenizer, filter_top_k, gumbel_clamp,
                        gumbel_eps, embed_noise_std)
        if variant not in ("max_prob", "lead"):
            raise ValueError(f"variant must be 'max_prob' or 'lead', got {variant!r}")
        self.variant = variant
        self.threshold = check_number(threshold, "threshold", lo=0.0, hi=1.0)
        self.low_entropy = check_number(low_entropy, "low_entropy", lo=0.0)
        self.high_entropy = check_number(high_entropy, "high_entropy", lo=0.0)
        self.min_steps = check_number(min_steps, "min_steps", lo=0, integer=True)
        if discrete is None:
            discrete = Discrete()
        if not isinstance(discrete, Discrete):
            raise ValueError(f"discrete must be a softdec.strategies.Discrete, got {type(discrete).__name__}")
        self.discrete = discrete

    def __repr__(self):
        return (f"Router(threshold={self.threshold}, variant={self.variant!r}, top_k={self.top_k}, "
                f"temperature={self.temperature}, discrete={self.discrete!r}, after={self.after!r})")

    def init_state(self, batch, device):
        s = super().init_state(batch, device)
        s["lead_soft"] = torch.ones(batch, dtype=torch.bool, device=device)
        s["lead_steps"] = torch.zeros(batch, dtype=torch.int64, device=device)
        s["lead_last_h"] = torch.full((batch,), float("inf"), device=device)
        return s

    def step(self, logits, state, ctx, eos_mask=None) -> StepResult:
        st = self._mixture(logits, ctx)
        thinking = state["thinking"]
        if self.variant == "max_prob":
            soft = st.max_prob >= self.threshold
        else:
            h = st.entropy
            in_soft, steps = state["lead_soft"], state["lead_steps"] + 1
            to_discrete = in_soft & (h < self.low_entropy) & (h < state["lead_last_h"])
            to_soft = ~in_soft & (h > self.high_entropy) & (steps >= self.min_steps)
            switch = thinking & (to_discrete | to_soft)
            state["lead_last_h"] = torch.where(switch, h, state["lead_last_h"])
            state["lead_steps"] = torch.where(switch, torch.zeros_like(steps), steps)
            in_soft = in_soft ^ switch
            state["lead_soft"] = in_soft
            soft = in_soft
        soft = soft & thinking
        end, eos_top = self._end_conditions(st, state, eos_mask)
        eos_top = eos_top & soft
        # rows routed to discrete this step only end thinking through max_think_tokens / their own draw
        end = end & (soft | (state["think_count"] >= (self.max_think_tokens if self.max_think_tokens is not None
                                                       else 1 << 62)))
        res = self._finish(logits, st, soft, end, eos_top, state, ctx, self.discrete)
        if self.think_end_token_id is not None:
            # a discrete draw of think-end while routing ends thinking too
            drew_end = thinking & ~soft & (res.ids == self.think_end_token_id)
            state["thinking"] = state["thinking"] & ~drew_end
            res = res._replace(mode=torch.where(drew_end, MODE_THINK_END, res.mode).to(torch.int8))
        return res

    def _finish(self, logits, st, soft_wanted, end_now, eos_top, state, ctx, discrete):
        # rows that already left thinking decode with `after`; routed-discrete rows with `discrete`
        thinking = state["thinking"]
        res = super()._finish(logits, st, soft_wanted, end_now, eos_top, state, ctx, discrete)
        done = ~thinking
        if self.after is not discrete and (ctx.static or bool(done.any())):
            d = self.after.draw(logits, ctx.seed, ctx.offset(1))
            res = res._replace(ids=torch.where(done, d.ids, res.ids), valid=torch.where(done, d.valid, res.valid))
        return res
