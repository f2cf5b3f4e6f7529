"""Speculative decoding: a draft model proposes, the target verifies with ``softdec.verify``.

Leviathan et al., "Fast Inference from Transformers via Speculative Decoding",
ICML 2023; Chen et al., "Accelerating Large Language Model Decoding with
Speculative Sampling", 2023. The decode loop lives in ``softdec.hf``.
"""

from __future__ import annotations

import torch

from .base import Strategy, check_number

_METHODS = ("exact", "greedy", "typical", "relaxed", "soft")


class Speculative(Strategy):
    """Draft-then-verify decoding with a second (smaller) causal LM.

    Each round the draft model proposes ``num_draft`` tokens autoregressively
    (sampled from its own filtered distribution ``q``; argmax for
    ``method="greedy"``; soft tokens from ``soft_mixture`` for
    ``method="soft"``), the target scores all of them in one forward, and
    ``softdec.verify`` accepts a prefix and emits a correction or bonus token.
    Both models' KV caches are rolled back to the accepted length (per row,
    through the attention mask; trailing positions no row accepted are
    cropped from the caches).

    Parameters
    ----------
    draft_model : transformers.PreTrainedModel
        A causal LM with the same vocabulary as the target.
    num_draft : int, default 4
        Draft tokens per round (K >= 1).
    method : {"exact", "greedy", "typical", "relaxed", "soft"}, default "exact"
        Acceptance rule of ``softdec.verify``. ``exact`` keeps the target's
        distribution exactly; ``greedy`` reproduces greedy decoding token for
        token; ``soft`` runs speculative Soft Thinking (the draft thinks
        softly, the target accepts while the total-variation distance between
        the soft tokens is <= ``delta`` and feeds its own soft token after a
        rejection). Soft speculative steps are all soft (no Cold Stop or
        think-end switching inside this strategy); the sequence records each
        soft token's top id.
    temperature, top_k, top_p, min_p : default 1.0, 0, 1.0, 0.0
        The target's (and the draft's) sampling filters. For ``soft``,
        ``top_k`` is the concept-token size (default 10 when 0).
    posterior_threshold, posterior_alpha, neighbours, delta :
        Passed to ``softdec.verify`` (typical / relaxed / soft rules).
    filter_top_k : int or None, default None
        method "soft" only: soft_mixture's filter width for both the draft's
        and the target's soft tokens (``softdec.verify(filter_top_k=...)``;
        None: the top_k-first chain; 0: whole vocabulary; else in [top_k, 256]).
    seed : int, torch.Tensor or None
        Philox key(s) for the draft draws and the verification: an int keys row
        ``b`` by ``softdec.reference.row_seed(seed, b)``, a ``(B,)`` tensor each
        row by its own entry (see :class:`Discrete`).
    tree : None, (k, depth) or list of rank paths
        Token-tree speculation (``num_draft`` is then unused): the draft
        expands the top-``k`` tokens under every node to ``depth`` levels, or a
        fixed Medusa-style tree given as rank paths (``[(0,), (1,), (0, 0)]``:
        the draft's two top tokens after the root, and the top token after the
        first); the target scores the whole tree in one forward with a tree
        attention mask, ``softdec.verify_tree`` accepts a path, and both KV
        caches are compacted to each row's accepted path. Methods "exact" and
        "typical" at ``temperature > 0`` draw each node's children from the
        draft's filtered ``q`` without replacement (Gumbel-top-k on the Philox
        stream; ``softdec.hf.tree.sample_siblings``) and verify child ``j``
        against ``q`` with the earlier siblings removed, so "exact" keeps the
        target's distribution (recursive speculative decoding, Jeon et al.
        2024; a fixed tree's children take the draws in rank order, gaps in
        the ranks ignored); "greedy" and T = 0 expand the draft's top tokens. All rows run
        batched (one target forward per round, per-row positions and cache
        compaction). Full-attention models only.

    Examples
    --------
    >>> import softdec.strategies as S
    >>> # spec = S.Speculative(draft_model, num_draft=4, method="exact", temperature=0.8)
    """

    def __init__(self, draft_model, num_draft=4, method="exact", *, temperature=1.0, top_k=0, top_p=1.0,
                 min_p=0.0, posterior_threshold=0.09, posterior_alpha=0.3, neighbours=None, delta=0.1,
                 seed=None, tree=None, filter_top_k=None):
        if draft_model is None or not callable(draft_model):
            raise ValueError(f"draft_model must be a causal LM module, got {type(draft_model).__name__}")
        if isinstance(num_draft, bool) or not isinstance(num_draft, int) or num_draft <= 0:
            raise ValueError(f"num_draft must be a positive int, got {num_draft!r}")
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        self.draft_model = draft_model
        self.num_draft = num_draft
        self.method = method
        self.temperature = check_number(temperature, "temperature", lo=0.0)
        self.top_k = check_number(top_k, "top_k", lo=0, integer=True)
        self.top_p = check_number(top_p, "top_p", lo=0.0, lo_open=True, hi=1.0)
        self.min_p = check_number(min_p, "min_p", lo=0.0, hi=1.0)
        self.posterior_threshold = posterior_threshold
        self.posterior_alpha = posterior_alpha
        self.neighbours = neighbours
        self.delta = check_number(delta, "delta", lo=0.0)
        self.seed = seed
        if filter_top_k is not None:
            if method != "soft":
                raise ValueError(f"filter_top_k is only defined for method 'soft', got method {method!r}; "
                                 f"pass None")
            filter_top_k = check_number(filter_top_k, "filter_top_k", lo=0, integer=True)
            if 0 < filter_top_k < self.soft_top_k_of(self.top_k):
                raise ValueError(f"top_k (the concept-token size, {self.soft_top_k_of(self.top_k)}) must be "
                                 f"<= filter_top_k ({filter_top_k}) when filter_top_k > 0")
        self.filter_top_k = filter_top_k
        self.needs_embeddings = method == "soft"
        self.tree = tree
        self.tree_paths = None
        if tree is not None:
            from ..hf.tree import tree_from_spec
            if method not in ("exact", "greedy", "typical"):
                raise ValueError(f"tree speculation supports methods 'exact', 'greedy' and 'typical', got {method!r}")
            self.tree_paths = tree_from_spec(tree)

    @staticmethod
    def soft_top_k_of(top_k) -> int:
        return top_k if top_k > 0 else 10

    @property
    def soft_top_k(self) -> int:
        return self.soft_top_k_of(self.top_k)

    def __repr__(self):
        return (f"Speculative(draft_model={type(self.draft_model).__name__}, num_draft={self.num_draft}, "
                f"method={self.method!r}, temperature={self.temperature}, top_k={self.top_k}, "
                f"top_p={self.top_p}, min_p={self.min_p})")
