"""The per-step contract between ``softdec.hf.generate`` and a strategy.

A strategy sees the last-position logits of every row and returns, per row,
the token recorded in the output sequence, whether the next model input is a
soft embedding (and that embedding), the step's mode and the distribution's
entropy and max probability. All state lives in ``[B]`` tensors, so rows in one
batch can be in different modes in the same step without Python loops.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Optional

import torch

MODE_FINISHED = -1
"""Step after the row stopped (eos or invalid logits)."""
MODE_DISCRETE = 0
"""A discrete token was emitted and fed."""
MODE_SOFT = 1
"""A soft (concept) token was fed; the sequence records its top id."""
MODE_THINK_END = 2
"""Thinking ended on this step: the think-end token was emitted and fed."""


@dataclasses.dataclass
class StepContext:
    """What generate() hands a strategy each step.

    embedding : torch.Tensor
        ``(V_e, D)`` raw input-embedding table of the model (no scaling).
    embed_scale : float
        Factor the model's embedding module applies to a looked-up row (e.g.
        ``sqrt(hidden)`` for Gemma); soft embeddings are scaled by it once.
    seed : torch.Tensor
        ``(B,)`` int64 per-row Philox keys.
    step : int or torch.Tensor
        Index of the token being generated (0 for the first new token); a
        ``(B,)`` int64 tensor in a compiled decode step (one graph for all steps).
    static : bool
        True inside a compiled decode step: the strategy must not branch on
        tensor values (no host synchronisation); it computes both sides and
        selects per row instead, with the same results.
    """
    embedding: Optional[torch.Tensor]
    embed_scale: float
    seed: torch.Tensor
    step: object
    static: bool = False

    def offset(self, stream: int) -> int:
        """Philox offset of ``stream`` (0: soft-mixture noise, 1: sampling) at this step."""
        return 2 * self.step + stream


class StepResult(NamedTuple):
    ids: torch.Tensor          # (B,) int64: recorded token (top id for soft rows)
    soft: torch.Tensor         # (B,) bool: next input is embeds[b]
    embeds: Optional[torch.Tensor]  # (B, D) soft embeddings (rows where soft), or None
    mode: torch.Tensor         # (B,) int8: MODE_*
    entropy: torch.Tensor      # (B,) float32
    max_prob: torch.Tensor     # (B,) float32
    valid: torch.Tensor        # (B,) bool: False stops the row (NaN / all -inf logits)
    mixture: Optional[object] = None  # the step's softdec.SoftTokens (soft strategies; rollout traces)


class Strategy:
    """Base class of the per-step decoding strategies."""

    needs_embeddings: bool = False
    seed = None

    def init_state(self, batch: int, device: torch.device) -> dict:
        return {}

    def step(self, logits: torch.Tensor, state: dict, ctx: StepContext, eos_mask=None) -> StepResult:  # pragma: no cover
        raise NotImplementedError


def entropy_and_max_prob(logits: torch.Tensor, temperature) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy and max probability of ``softmax(logits / T)`` per row (T <= 0 reads as 1)."""
    x = logits.float()
    if isinstance(temperature, torch.Tensor):
        t = torch.where(temperature > 0, temperature, torch.ones_like(temperature)).float()[:, None]
        x = x / t
    elif temperature > 0 and temperature != 1.0:
        x = x / temperature
    lse = torch.logsumexp(x, dim=-1)
    p = torch.exp(x - lse[:, None])
    ent = lse - (p * torch.where(p > 0, x, torch.zeros_like(x))).sum(-1)
    return ent, torch.exp(x.max(-1).values - lse)


def check_number(value, name: str, *, lo=None, hi=None, lo_open=False, integer=False, allow_none=False):
    """Validate a strategy parameter (Python scalars; tensors are checked by the ops)."""
    if value is None and allow_none:
        return value
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an int" if integer else "a number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if isinstance(value, float) and math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value}")
    if hi is not None and value > hi:
        raise ValueError(f"{name} must be <= {hi}, got {value}")
    return value
