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

from ._common import (MIN_TRANSFORMERS, GenerateOutput, GenerationStats, _accepts, _check_transformers,  # noqa: F401
                      _eos_mask, _input_embedding, _new_cache, _Runner, _seeds, _vocab_size, crop_cache)
from .attention import (SPARSE_ATTN_NAME, _token_sparse_attention, disable_token_sparse_attention,  # noqa: F401
                        enable_token_sparse_attention)
from .loop import (discrete_generate, generate, router_generate, soft_thinking_generate,  # noqa: F401
                   speculative_generate)
from .speculative import _filtered_probs, _generate_speculative, _soft_embed  # noqa: F401
from .trace import RolloutTrace, replay_inputs_embeds, replay_logits  # noqa: F401
from .tree import compact_cache, tree_attention_mask, tree_position_ids  # noqa: F401

__all__ = ["generate", "GenerateOutput", "GenerationStats", "discrete_generate", "soft_thinking_generate",
           "router_generate", "speculative_generate", "enable_token_sparse_attention",
           "disable_token_sparse_attention", "crop_cache", "MIN_TRANSFORMERS", "RolloutTrace", "replay_logits",
           "replay_inputs_embeds", "tree_attention_mask", "tree_position_ids", "compact_cache"]
