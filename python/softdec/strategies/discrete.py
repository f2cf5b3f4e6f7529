"""Discrete decoding: one exact draw per row per step through ``softdec.sample``."""

from __future__ import annotations

import torch

from ._ops import op
from .base import MODE_DISCRETE, StepContext, StepResult, Strategy, check_number, entropy_and_max_prob


class Discrete(Strategy):
    """Ordinary token-by-token decoding with ``softdec.sample``.

    Parameters
    ----------
    temperature : float or torch.Tensor, default 1.0
        Softmax temperature; 0 is greedy (argmax). A ``(B,)`` float32 tensor
        gives each row its own value.
    top_k : int or torch.Tensor, default 0
        Keep the k most likely tokens (0 keeps all).
    top_p : float or torch.Tensor, default 1.0
        Nucleus filter applied after top-k.
    min_p : float or torch.Tensor, default 0.0
        Drop tokens below ``min_p * max_prob`` (after top-k and top-p).
    seed : int, torch.Tensor or None, default None
        An int keys row ``b`` by ``softdec.reference.row_seed(seed, b)`` (a
        batch of one repeated prompt gives independent samples; the same seed
        and row reproduce); a ``(B,)`` int64 tensor keys each row by its own
        entry; ``None`` draws per-row keys from torch's default generator at
        the start of generate. Step ``t`` draws from offset ``2 t + 1``.
    stats : bool, default True
        Record the entropy and max probability of ``softmax(logits / T)``
        (T = 0 reads as 1) per step; False skips that extra pass over the
        vocabulary (the stats are then NaN).

    Examples
    --------
    >>> import softdec.strategies as S
    >>> S.Discrete(temperature=0.0)  # greedy
    Discrete(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, seed=None, stats=True)
    """

    def __init__(self, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=None, *, stats=True):
        self.temperature = check_number(temperature, "temperature", lo=0.0)
        self.top_k = check_number(top_k, "top_k", lo=0, integer=True)
        self.top_p = check_number(top_p, "top_p", lo=0.0, lo_open=True, hi=1.0)
        self.min_p = check_number(min_p, "min_p", lo=0.0, hi=1.0)
        self.seed = seed
        self.stats = bool(stats)

    def __repr__(self):
        return (f"Discrete(temperature={self.temperature}, top_k={self.top_k}, top_p={self.top_p}, "
                f"min_p={self.min_p}, seed={self.seed}, stats={self.stats})")

    def draw(self, logits: torch.Tensor, seed: torch.Tensor, offset: int):
        """``softdec.sample`` with this strategy's filters: ``Sampled(ids, valid)``."""
        return op("sample")(logits, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                            min_p=self.min_p, seed=seed, offset=offset)

    def step(self, logits: torch.Tensor, state: dict, ctx: StepContext, eos_mask=None) -> StepResult:
        s = self.draw(logits, ctx.seed, ctx.offset(1))
        if self.stats:
            ent, mp = entropy_and_max_prob(logits, self.temperature)
        else:
            ent = mp = torch.full(s.ids.shape, float("nan"), device=logits.device)
        mode = torch.full_like(s.ids, MODE_DISCRETE, dtype=torch.int8)
        return StepResult(s.ids, torch.zeros_like(s.valid), None, mode, ent, mp, s.valid)
