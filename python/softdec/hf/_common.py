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
    concept token's top id); ``stats``: ``GenerationStats``; ``trace``: a
    ``softdec.hf.RolloutTrace`` with ``generate(..., return_trace=True)``, else None."""
    sequences: torch.Tensor
    stats: GenerationStats
    trace: Optional[object] = None


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


def _new_cache(model, rollback: bool = False):
    """A ``DynamicCache`` laid out from the model's config (sliding-window, linear-attention and
    state-space layers get their own layer types).

    ``rollback=True`` (speculative decoding) asks sliding-window layers to keep the states a
    ``crop`` needs (``activate_past_recording``, transformers >= 5); where that method does not
    exist, sliding-window models get full-length layers instead (the mask still applies the window).
    Linear-attention / state-space layers are rolled back by ``_Runner.snapshot`` / ``restore``.
    """
    from transformers import DynamicCache
    if _linear_layer_types()[0] is None and _config_has_state_layers(model):
        return None  # transformers < 5: hybrid models build their own cache class on the first forward
    try:
        cache = DynamicCache(config=model.config)
    except TypeError:  # older signatures
        return DynamicCache()
    if rollback:
        if hasattr(cache, "activate_past_recording"):
            for layer in getattr(cache, "layers", []):
                if getattr(layer, "is_sliding", False) and hasattr(layer, "activate_past_recording"):
                    layer.activate_past_recording()
        elif any(getattr(layer, "is_sliding", False) for layer in getattr(cache, "layers", [])):
            cache = DynamicCache()
    return cache


def _config_has_state_layers(model) -> bool:
    """Whether the config lists layers that are neither full nor sliding/chunked attention."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    types = [str(t) for t in (getattr(cfg, "layer_types", None) or [])]
    return any(t not in ("full_attention", "attention") and "sliding" not in t and "chunked" not in t for t in types)


def _linear_layer_types():
    """transformers' cache layer classes: (linear-attention / SSM state mixin or None, DynamicLayer or None)."""
    try:
        from transformers.cache_utils import LinearAttentionCacheLayerMixin as lin
    except ImportError:
        lin = None
    try:
        from transformers.cache_utils import DynamicLayer as dyn
    except ImportError:
        dyn = None
    return lin, dyn


def _cache_layout(model) -> tuple[Optional[int], bool]:
    """(smallest sliding window of the model's layers or None, whether it has recurrent /
    linear-attention / convolution-state layers)."""
    lin, _ = _linear_layer_types()
    try:
        layers = getattr(_new_cache(model), "layers", [])
    except Exception:  # a config transformers cannot lay out: decide from the config alone
        layers = []
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    windows = [int(layer.sliding_window) for layer in layers if getattr(layer, "is_sliding", False)
               and isinstance(getattr(layer, "sliding_window", None), int)]
    types = [str(t) for t in (getattr(cfg, "layer_types", None) or [])]
    if any("sliding" in t or "chunked" in t for t in types):
        w = getattr(cfg, "sliding_window", None) or getattr(cfg, "attention_chunk_size", None)
        if isinstance(w, int):
            windows.append(w)
    state = (lin is not None and any(isinstance(layer, lin) for layer in layers)) or _config_has_state_layers(model) \
        or _legacy_ssm(model)
    return (min(windows) if windows else None), state


def _kv_len(layer) -> int:
    if hasattr(layer, "cumulative_length") and not isinstance(getattr(layer, "cumulative_length"), torch.Tensor):
        return int(layer.cumulative_length)
    keys = getattr(layer, "keys", None)
    if not isinstance(keys, torch.Tensor) or keys.numel() == 0:
        return 0
    return int(keys.shape[-2])


def _kv_crop(layer, n: int) -> None:
    """Remove the last n key/value positions of one cache layer (its key/value part only)."""
    lin, dyn = _linear_layer_types()
    for cls in type(layer).__mro__:
        if "crop" in cls.__dict__ and (dyn is None or issubclass(cls, dyn)) and not (lin and issubclass(cls, lin)):
            cls.crop(layer, -int(n))
            return
    raise ValueError(f"cache layer of type {type(layer).__name__} cannot be cropped")


def _vocab_size(model) -> int:
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None and getattr(out, "weight", None) is not None:
        return int(out.weight.shape[0])
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(cfg.vocab_size)


def _replicated_table(w: torch.Tensor, what: str) -> torch.Tensor:
    """A tensor-parallel model's (transformers tp_plan) embedding table as a plain tensor: a
    replicated DTensor is the full table on every rank (its local tensor); a vocabulary-sharded
    one is refused (the strategies mix rows of the full table)."""
    try:
        from torch.distributed.tensor import DTensor, Replicate
    except ImportError:  # torch without distributed
        return w
    if not isinstance(w, DTensor):
        return w
    if all(isinstance(p, Replicate) for p in w.placements):
        return w.to_local()
    # vocabulary-parallel (Shard(0)): this rank's rows, marked so that the strategies' soft_mixture
    # runs softdec.distributed.soft_mixture on them (the same result as the full table)
    from .. import distributed
    try:
        local, group, off, V = distributed.from_dtensor(w)
    except ValueError as e:
        raise ValueError(f"{what} needs the full input-embedding table or a vocabulary shard of it: {e}") from None
    return distributed.register_table(local, group, off, V)


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
    w = _replicated_table(w, what)
    table = w
    # the module may scale its lookup (Gemma: sqrt(hidden)); probe one row, the soft embeds apply the
    # same factor once, so what the model sees for a one-hot mixture is exactly what ids would give.
    with torch.no_grad():
        rows = min(int(w.shape[0]), 16)
        shard = _table_shard(w)
        if shard is not None:  # the probe rows are global rows 0..15: rank 0's, broadcast
            rows = min(rows, _probe_rows(w, shard))
            w = _broadcast_rows(w, rows, shard)
        norms = w[:rows].float().norm(dim=1)
        i = int(norms.argmax())
        if float(norms[i]) == 0.0:
            return emb, table, 1.0
        ref = w[i].float()
        got = emb(torch.tensor([[i]], device=w.device))[0, 0].float()
        scale = float((got @ ref) / (ref @ ref))
        if not torch.allclose(got, scale * ref, rtol=1e-2, atol=1e-3 * float(ref.abs().max()) * max(abs(scale), 1)):
            raise ValueError(f"{what} needs the input-embedding module to be a (scaled) table lookup; "
                             f"{type(emb).__name__} is not")
    return emb, table, scale


def _table_shard(w):
    from .. import distributed
    return distributed.table_shard(w)


def _probe_rows(w, shard) -> int:
    import torch.distributed as dist
    n = torch.tensor([w.shape[0] if shard[1] == 0 else 1 << 30])
    dist.all_reduce(n, op=dist.ReduceOp.MIN, group=shard[0])
    return int(n)


def _broadcast_rows(w, rows, shard):
    import torch.distributed as dist
    group = shard[0]
    out = w[:rows].clone() if shard[1] == 0 else w.new_empty(rows, w.shape[1])
    src = [r for r in range(dist.get_world_size(group))]
    offs = [None] * len(src)
    dist.all_gather_object(offs, shard[1], group=group)
    dist.broadcast(out, src=dist.get_global_rank(group, offs.index(0)) if group is not None else offs.index(0),
                   group=group)
    return out


def _accepts(model, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _cache_kwarg(model) -> str:
    """The name under which the model's forward takes its cache: ``cache`` (transformers >= 5.2x;
    ``past_key_values`` is deprecated there), ``past_key_values``, or ``cache_params`` (the state-space
    models of transformers 4.x: Mamba, FalconMamba, Mamba2; see :func:`_legacy_ssm`); ValueError when none."""
    for name in ("cache", "past_key_values", "cache_params"):
        if _accepts(model, name):
            return name
    raise ValueError(f"softdec.hf needs a model whose forward takes a cache (`cache`, `past_key_values` or "
                     f"`cache_params`) so that "
                     f"each decode step feeds one token; {type(model).__name__} "
                     f"({getattr(model.config, 'model_type', '?')}) takes none of them, so it is not supported")


def _legacy_ssm(model) -> bool:
    """A state-space model on transformers' 4.x API: its forward takes ``cache_params`` (a
    MambaCache-like object with ``conv_states`` / ``ssm_states``, built by the model on the first
    forward) and ``cache_position``, and no ``past_key_values`` / ``cache`` (transformers 5 moved these
    models to the common cache)."""
    return not _accepts(model, "cache") and not _accepts(model, "past_key_values") and _accepts(model, "cache_params")


_SSM_STATES = ("conv_states", "ssm_states")


def _ssm_state_tensors(cache):
    """{name: [tensor, ...]} of a legacy state-space cache's states (a list per layer or one stacked tensor)."""
    out = {}
    for name in _SSM_STATES:
        val = getattr(cache, name, None)
        if isinstance(val, torch.Tensor):
            out[name] = [val]
        elif isinstance(val, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in val):
            out[name] = list(val)
    return out


class _Runner:
    """One model, its cache, its 2-D attention mask (holes allowed) and next positions."""

    def __init__(self, model, batch: int, device, rollback: bool = False):
        self.model = model
        self.cache_kw = _cache_kwarg(model)
        self.legacy_ssm = _legacy_ssm(model)
        # a legacy state-space model builds its cache on the first forward (and its first
        # cache_position); the later single-token steps pass cache_position = last + 1 as generate does
        self.cache = None if self.legacy_ssm else _new_cache(model, rollback=rollback)
        self.ssm_pos = None
        self.mask = torch.zeros(batch, 0, dtype=torch.long, device=device)
        self.pos = torch.zeros(batch, dtype=torch.long, device=device)
        self.keep_arg = _accepts(model, "logits_to_keep")
        self.all_valid = True  # no padding and no holes so far: the model may skip the mask
        lin, _ = _linear_layer_types()
        # recurrent / conv states cannot be cropped: speculative rollback snapshots and restores them
        layers = getattr(self.cache, "layers", [])
        self.stateful = lin is not None and any(isinstance(layer, lin) for layer in layers)
        # a pure state-space model (Mamba) has no attention to mask: like transformers' generate, it gets the
        # mask of the tokens fed now (zeroing padded inputs), not the whole history
        self.state_only = self.stateful and not any(hasattr(layer, "keys") for layer in layers)
        if self.legacy_ssm:
            self.stateful = self.state_only = True

    def snapshot(self):
        """The runner's state now: mask, positions, each cache layer's key/value length and a copy of
        its recurrent / conv states (small: fixed size per row)."""
        lin, _ = _linear_layer_types()
        layers = []
        for layer in getattr(self.cache, "layers", []):
            ent = {"kv": _kv_len(layer) if hasattr(layer, "keys") else None}
            if lin is not None and isinstance(layer, lin):
                ent["conv"] = {i: None if t is None else t.clone() for i, t in layer.conv_states.items()}
                ent["rec"] = {i: None if t is None else t.clone() for i, t in layer.recurrent_states.items()}
                ent["flags"] = (dict(layer.is_conv_states_initialized), dict(layer.is_recurrent_states_initialized),
                                dict(layer.has_previous_state))
            layers.append(ent)
        ssm = None
        if self.legacy_ssm and self.cache is not None:
            ssm = {k: [t.clone() for t in v] for k, v in _ssm_state_tensors(self.cache).items()}
        return dict(mask=self.mask, pos=self.pos, all_valid=self.all_valid, layers=layers, ssm=ssm,
                    ssm_pos=self.ssm_pos)

    def restore(self, snap) -> None:
        """Put the runner back to ``snap``: crop key/value layers to their length then, copy the
        recurrent / conv states back."""
        self.mask, self.pos, self.all_valid = snap["mask"], snap["pos"], snap["all_valid"]
        if self.legacy_ssm:
            self.ssm_pos = snap["ssm_pos"]
            if snap["ssm"] is not None and self.cache is not None:
                cur = _ssm_state_tensors(self.cache)
                for name, saved in snap["ssm"].items():
                    for t, v in zip(cur[name], saved):
                        t.copy_(v)  # in place: the model keeps static addresses
        for layer, ent in zip(getattr(self.cache, "layers", []), snap["layers"]):
            if ent["kv"] is not None:
                extra = _kv_len(layer) - ent["kv"]
                if extra > 0:
                    _kv_crop(layer, extra)
            if "conv" in ent:
                for name, saved in (("conv_states", ent["conv"]), ("recurrent_states", ent["rec"])):
                    cur = getattr(layer, name)
                    for i, t in saved.items():
                        if t is not None and isinstance(cur.get(i), torch.Tensor) and cur[i].shape == t.shape:
                            cur[i].copy_(t)  # keeps the static address
                        else:
                            cur[i] = t
                ci, ri, hp = ent["flags"]
                layer.is_conv_states_initialized.update(ci)
                layer.is_recurrent_states_initialized.update(ri)
                layer.has_previous_state.update(hp)

    def forward(self, *, input_ids=None, inputs_embeds=None, new_mask=None, keep: int = 1) -> torch.Tensor:
        x = input_ids if input_ids is not None else inputs_embeds
        b, n = x.shape[0], x.shape[1]
        if self.state_only and n > 1 and self.mask.shape[1] > 0:
            # transformers' state-space models (Mamba) continue a cached state correctly one token at a
            # time only (a multi-token continuation differs from the full-sequence forward), so a
            # speculative scoring or re-feed runs token by token
            outs = []
            for j in range(n):
                sl = slice(j, j + 1)
                outs.append(self.forward(input_ids=None if input_ids is None else input_ids[:, sl],
                                         inputs_embeds=None if inputs_embeds is None else inputs_embeds[:, sl],
                                         new_mask=None if new_mask is None else new_mask[:, sl]))
            return torch.cat(outs, 1)[:, -keep:]
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
        attn = None if self.all_valid else self.mask
        if self.state_only:
            attn = None if bool(new_mask.all()) else new_mask
        if self.legacy_ssm:
            kw = {"attention_mask": attn, "use_cache": True}
            if self.cache is not None:  # continue: one token (the multi-token case runs token by token above)
                self.ssm_pos = self.ssm_pos + 1
                kw.update(cache_params=self.cache, cache_position=torch.tensor([self.ssm_pos], device=x.device))
        else:
            kw = {"attention_mask": attn, "position_ids": position_ids,
                  self.cache_kw: self.cache, "use_cache": True}
        if self.keep_arg:
            kw["logits_to_keep"] = keep
        if input_ids is not None:
            out = self.model(input_ids=input_ids, **kw)
        else:
            out = self.model(inputs_embeds=inputs_embeds, **kw)
        new_cache = getattr(out, self.cache_kw, None)
        if new_cache is None and self.cache_kw == "cache":
            new_cache = getattr(out, "past_key_values", None)
        if new_cache is not None and new_cache is not self.cache:
            if self.legacy_ssm and self.cache is None:
                # the first forward's cache_position is arange(conv kernel) (transformers' Mamba prefill)
                cfg = self.model.config.get_text_config() if hasattr(self.model.config, "get_text_config") \
                    else self.model.config
                self.ssm_pos = int(getattr(cfg, "conv_kernel", 1)) - 1
            self.cache = new_cache
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

