"""Decoding strategies for ``softdec.hf.generate``.

- ``Discrete``: token-by-token sampling (``softdec.sample``).
- ``SoftThinking``: concept tokens (``softdec.soft_mixture``) while thinking,
  Cold Stop, ``max_think_tokens``, then discrete decoding.
- ``Router``: per row per step soft or discrete (ThinkRouter max_prob
  threshold, or LEAD entropy hysteresis).
- ``Speculative``: a draft model proposes, ``softdec.verify`` decides.

Each strategy keeps its per-row state in ``[B]`` tensors.
"""

from .base import (MODE_DISCRETE, MODE_FINISHED, MODE_SOFT, MODE_THINK_END, StepContext, StepResult,
                   Strategy)
from .discrete import Discrete
from .soft import Router, SoftThinking
from .speculative import Speculative

__all__ = ["Discrete", "SoftThinking", "Router", "Speculative", "Strategy", "StepContext", "StepResult",
           "MODE_FINISHED", "MODE_DISCRETE", "MODE_SOFT", "MODE_THINK_END"]
