"""Shared plumbing of ``softdec.hf``: version check, outputs, the per-model runner (cache, mask,
positions), eos / seed helpers."""

from __future__ import annotations

import dataclasses
import inspect
from typing import NamedTuple, Optional

import torch

from ..strategies.base import MODE_FINISHED, MODE_SOFT

MIN_TRANSFORMERS = "4.57"


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
    from .._params import rng_state
    s, _ = rng_state(seed, 0, batch, device)
    return s



def _empty_output(input_ids, B, device):
    z = torch.zeros(B, 0, device=device)
    return GenerateOutput(input_ids, GenerationStats(z.to(torch.int8), z.clone(), z.clone()))

