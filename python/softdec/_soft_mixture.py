"""Soft mixture: the concept token (filtered softmax, noise, weighted embedding sum).

Public names are re-exported by ``softdec`` (and ``softdec.ops``)."""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Union

import torch

from ._params import (FLOAT_DTYPES, below_autograd, check_tensor, const_row, float_arg, int_arg, rng_state,
                      row_param, scalar_rows, _SCALAR_TYPES)

_ops = torch.ops.softdec


__all__ = ["soft_mixture", "SoftTokens"]

_SM_NOISE = {None: 0, "gumbel": 1, "dirichlet": 2}
_SM_MAX_K = 256  # soft::kMaxTopK in include/softdec/soft_mixture.h
_SM_DTYPES = FLOAT_DTYPES + (torch.float64,)


class SoftTokens(NamedTuple):
    """Result of :func:`soft_mixture` (one concept token per row).

    embeds : (B, D) the embedding's dtype; ids : (B, k) int64; weights : (B, k)
    float32 (float64 for float64 logits); entropy, max_prob : (B,) same float
    dtype; valid : (B,) bool; noisy_logits : (B, k) or None (Gumbel noise only).
    """
    embeds: torch.Tensor
    ids: torch.Tensor
    weights: torch.Tensor
    entropy: torch.Tensor
    max_prob: torch.Tensor
    valid: torch.Tensor
    noisy_logits: Optional[torch.Tensor]


@torch.library.register_fake("softdec::soft_mixture")
def _soft_mixture_fake(logits, embedding, temperature, top_k, top_p, min_p, seed, offset, k, noise,
                       tau, noise_scale, dirichlet_alpha, embed_scale, filter_top_k, kc, gumbel_lo,
                       gumbel_hi, gumbel_eps, embed_noise_std):
    torch._check(logits.dim() == 2, lambda: "logits must be a 2-D tensor (batch, vocab)")
    torch._check(embedding.dim() == 2, lambda: "embedding must be a 2-D tensor (vocab, dim)")
    torch._check(embedding.shape[0] == logits.shape[1],
                 lambda: "embedding must have as many rows as logits has columns")
    torch._check(1 <= k <= _SM_MAX_K, lambda: f"k must be in [1, {_SM_MAX_K}]")
    torch._check(k <= kc <= _SM_MAX_K, lambda: f"kc must be in [k, {_SM_MAX_K}]")
    B, D = logits.shape[0], embedding.shape[1]
    for t in (temperature, top_k, top_p, min_p, seed, offset, filter_top_k):
        torch._check(t.dim() == 1 and t.shape[0] == B, lambda: "per-row parameters must have shape (B,)")
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    e = lambda shape, dt: logits.new_empty(shape, dtype=dt)  # noqa: E731
    return (e((B, D), embedding.dtype), e((B, k), torch.int64), e((B, k), acc), e((B,), acc),
            e((B,), acc), e((B,), torch.bool), e((B, k), acc), e((B,), acc), e((B,), torch.int64))


@torch.library.register_fake("softdec::soft_mixture_backward")
def _soft_mixture_backward_fake(grad_embeds, grad_weights, grad_entropy, grad_max_prob, grad_noisy,
                                logits, embedding, temperature, ids, weights, lse, entropy, max_prob,
                                valid, nkept, noise, tau, embed_scale, gumbel_eps):
    torch._check(logits.dim() == 2, lambda: "logits must be a 2-D tensor (batch, vocab)")
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


@torch.library.register_fake("softdec::soft_mixture_embedding_backward")
def _soft_mixture_embedding_backward_fake(grad_embeds, embedding, ids, weights, nkept, embed_scale):
    torch._check(embedding.dim() == 2, lambda: "embedding must be a 2-D tensor (vocab, dim)")
    return embedding.new_empty(embedding.shape)


def _soft_mixture_setup_context(ctx, inputs, output):
    logits, embedding, temperature = inputs[0], inputs[1], inputs[2]
    _, ids, weights, entropy, max_prob, valid, _, lse, nkept = output
    ctx.save_for_backward(logits, embedding, temperature, ids, weights, lse, entropy, max_prob,
                          valid, nkept)
    ctx.noise, ctx.tau, ctx.embed_scale, ctx.gumbel_eps = inputs[9], inputs[10], inputs[13], inputs[18]


def _soft_mixture_backward(ctx, g_embeds, g_ids, g_weights, g_entropy, g_max_prob, g_valid,
                           g_noisy, g_lse, g_nkept):
    logits, embedding, temperature, ids, weights, lse, entropy, max_prob, valid, nkept = ctx.saved_tensors
    acc = weights.dtype
    B, k = ids.shape
    D = embedding.shape[1]

    def dense(g, shape):
        return weights.new_zeros(shape) if g is None else g.to(acc).contiguous()

    ge = dense(g_embeds, (B, D))
    grad_logits = grad_embedding = None
    if ctx.needs_input_grad[0]:
        grad_logits = _ops.soft_mixture_backward(
            ge, dense(g_weights, (B, k)), dense(g_entropy, (B,)), dense(g_max_prob, (B,)),
            dense(g_noisy, (B, k)), logits, embedding, temperature, ids, weights, lse, entropy,
            max_prob, valid, nkept, ctx.noise, ctx.tau, ctx.embed_scale, ctx.gumbel_eps)
    if ctx.needs_input_grad[1]:
        grad_embedding = _ops.soft_mixture_embedding_backward(ge, embedding, ids, weights, nkept,
                                                              ctx.embed_scale)
    return (grad_logits, grad_embedding) + (None,) * 18


torch.library.register_autograd("softdec::soft_mixture", _soft_mixture_backward,
                                setup_context=_soft_mixture_setup_context)


def soft_mixture(logits: torch.Tensor, embedding: torch.Tensor, *,
                 top_k: Union[int, torch.Tensor] = 10,
                 filter_top_k: Optional[Union[int, torch.Tensor]] = None,
                 temperature: Union[float, torch.Tensor] = 1.0,
                 top_p: Union[float, torch.Tensor] = 1.0,
                 min_p: Union[float, torch.Tensor] = 0.0,
                 noise: Optional[str] = None, tau: float = 1.0, noise_scale: float = 1.0,
                 dirichlet_alpha: float = 1.0,
                 gumbel_clamp: Optional[tuple] = None, gumbel_eps: float = 0.0,
                 embed_noise_std: float = 0.0,
                 seed: Optional[Union[int, torch.Tensor]] = None,
                 offset: Union[int, torch.Tensor] = 0,
                 generator: Optional[torch.Generator] = None,
                 embed_scale: float = 1.0) -> SoftTokens:
    """Soft Thinking concept tokens: the fused softmax / top-k / top-p / min-p /
    noise / embedding-mixture pipeline, one pass over each row of logits.

    Per row (in this order):

    1. ``p = softmax(logits / T)`` over the whole vocabulary; ``entropy = -sum p log p``
       and ``max_prob = max p`` are of this full distribution. ``T = 0`` gives
       the one-hot argmax weights, and then ``entropy`` / ``max_prob`` are those
       of ``softmax(logits)`` (T = 1, as the Soft Thinking reference reports
       them; so Cold Stop and routing see the model's uncertainty).
    2. Keep the ``filter_top_k`` largest ``p`` (ties: the lower vocabulary index
       first; ``None``: ``top_k``; ``0``: the whole vocabulary) and renormalise;
       top-p on those (the smallest prefix of the sorted weights whose mass
       reaches ``top_p``) and renormalise; min-p (drop ``w < min_p * max w``)
       and renormalise; keep the ``top_k`` largest (the output width) and
       renormalise. Tokens with logit ``-inf`` never survive. Soft Thinking's
       ``top_k`` is ``filter_top_k`` here, its ``max_topk`` is ``top_k``.
    3. Noise. ``"gumbel"``: ``y = log w + noise_scale * G``, ``G = -log(-log U)``,
       ``w = softmax(y / tau)``, ``noisy_logits = y``; the uniform of token ``id``
       is element ``id`` of the row's ``(seed, offset)`` Philox stream
       (:func:`softdec.philox_uniform`), whatever its rank. SofT-GRPO's form:
       ``gumbel_clamp=(lo, hi)`` clamps ``G`` to ``[lo, hi]`` (its code: -1.5, 3)
       and ``gumbel_eps`` gives ``y = log(w + gumbel_eps) + noise_scale * G``. ``"dirichlet"``:
       ``w ~ Dir(dirichlet_alpha * w)`` by normalised Gamma draws
       (Marsaglia-Tsang in float64; attempt ``t < 16`` of token ``id`` uses the
       Philox block ``id * 16 + t``, see include/softdec/soft_mixture.h and
       :func:`softdec.reference.soft_gamma`).
    4. Sort by weight, descending (ties: lower id first; without noise the
       top-k order, logit descending, is kept: weights that underflow to the
       same value stay in logit order). Where fewer than ``k``
       tokens survive, ``ids`` is padded with the row's first id, ``weights``
       with 0 and ``noisy_logits`` with ``-inf``.
    5. ``embeds = embed_scale * sum_i weights_i * embedding[ids_i]``, accumulated
       in float32 (float64 for float64 inputs), returned in the embedding's dtype.
       With ``embed_noise_std = s > 0`` (Soft Tokens, Hard Truths; SofT-GRPO's
       default), valid rows then get ``embeds += s * eps`` with
       ``eps = softdec.philox_normal((B, D), seed, offset)`` (the same Philox
       stream, counter blocks ``2**63 + d``: disjoint from the Gumbel and
       Dirichlet draws), added in float32 (float64) and rounded to the
       embedding's dtype. No gradient flows through ``eps``.

    Rows whose logits are all ``-inf`` or contain NaN or ``+inf`` get
    ``valid=False``, ``embeds = 0``, ``ids = 0``, ``weights = 0``,
    ``entropy = max_prob = 0`` (no exception, no out-of-range id).

    Differentiable w.r.t. ``logits`` (through the renormalised, Gumbel-noisy
    weights, ``noisy_logits``, ``entropy`` and ``max_prob``; the kept set is
    treated as fixed) and ``embedding`` (a scatter into the kept rows, returned
    as a dense ``(V, D)`` gradient like ``nn.Embedding``). The Dirichlet draw
    is a stop-gradient: with ``noise="dirichlet"`` no gradient reaches the
    logits through the weights.

    Parameters
    ----------
    logits : torch.Tensor
        (batch, vocab), float32 / bfloat16 / float16 (float64 for gradcheck);
        the last dimension must be contiguous (other strides are honoured).
    embedding : torch.Tensor
        (vocab, dim), float32 / bfloat16 / float16 / float64, the input
        embedding table, any row stride; same device as ``logits``.
    top_k : int or torch.Tensor, default 10
        Tokens kept before top-p, in [1, 256]; a (batch,) int tensor gives each
        row its own value and the output width is its maximum (read with
        ``.item()``, which breaks a ``torch.compile(fullgraph=True)`` graph:
        pass an int there). ``top_k > vocab`` keeps the whole vocabulary and
        pads. The output width.
    filter_top_k : int, torch.Tensor or None, default None
        Candidates kept before top-p / min-p: ``None`` is ``top_k`` (the
        former behaviour, bit for bit), ``0`` the whole vocabulary, otherwise
        in ``[top_k, 256]`` (values ``>= vocab`` act as ``0``); a (batch,)
        int tensor gives each row its own (read with ``.item()``, like
        ``top_k``). ``top_k > filter_top_k > 0`` is a ValueError.
    temperature : float or torch.Tensor, default 1.0
        ``T >= 0`` (0: argmax), scalar or (batch,).
    top_p : float or torch.Tensor, default 1.0
        In (0, 1], scalar or (batch,).
    min_p : float or torch.Tensor, default 0.0
        In [0, 1], scalar or (batch,).
    noise : {None, "gumbel", "dirichlet"}, default None
    tau : float, default 1.0
        Gumbel-softmax temperature (> 0).
    noise_scale : float, default 1.0
        Multiplies the Gumbel noise.
    dirichlet_alpha : float, default 1.0
        Dirichlet concentration scale (> 0); the paper's alpha = 4.
    gumbel_clamp : (float, float) or None, default None
        Clamp ``G`` to ``[lo, hi]`` (``lo < hi``; infinite bounds allowed:
        ``(-inf, inf)`` is no clamp). SofT-GRPO trains with ``(-1.5, 3.0)``.
    gumbel_eps : float, default 0.0
        ``y = log(w + gumbel_eps) + noise_scale * G`` (>= 0; 0 is ``log w``).
    embed_noise_std : float, default 0.0
        Standard deviation of the Gaussian noise on the mixed embedding (>= 0;
        independent of ``noise``, which acts on the weights).
    seed : int or torch.Tensor, optional
        An int keys row ``b`` by ``softdec.reference.row_seed(seed, b)``
        (independent rows); a (batch,) int64 tensor keys each row by its own
        entry, batch-invariantly. ``None`` draws one seed per row
        from ``generator`` (or torch's default generator), advancing it; only
        drawn when ``noise`` is set.
    offset : int or torch.Tensor, default 0
        Philox stream selector (e.g. the decoding step), or (batch,) int64.
    generator : torch.Generator, optional
        Source of ``seed`` when ``seed is None``.
    embed_scale : float, default 1.0
        Multiplies the mixture (models that scale input embeddings, e.g. Gemma).

    Returns
    -------
    SoftTokens
        ``embeds`` (batch, dim) embedding dtype; ``ids`` (batch, k) int64;
        ``weights`` (batch, k) float32 (float64 for float64 logits), each
        valid row sums to 1; ``entropy``, ``max_prob`` (batch,) same float
        dtype; ``valid`` (batch,) bool; ``noisy_logits`` (batch, k) for
        ``noise="gumbel"``, else None.

    Examples
    --------
    >>> import torch, softdec
    >>> logits = torch.randn(2, 1000)
    >>> table = torch.randn(1000, 64, dtype=torch.bfloat16)
    >>> out = softdec.soft_mixture(logits, table, top_k=10, temperature=0.6, top_p=0.95)
    >>> out.embeds.shape, out.ids.shape, bool(torch.allclose(out.weights.sum(1), torch.ones(2)))
    (torch.Size([2, 64]), torch.Size([2, 10]), True)
    >>> noisy = softdec.soft_mixture(logits, table, noise="gumbel", tau=0.5, seed=0)
    >>> noisy.noisy_logits.shape
    torch.Size([2, 10])

    References
    ----------
    Zhang et al., "Soft Thinking: Unlocking the Reasoning Potential of LLMs in
    Continuous Concept Space", 2025 (https://arxiv.org/abs/2505.15778);
    "LLMs are Single-threaded Reasoners: Demystifying the Working Mechanism of
    Soft Thinking", 2025 (Gumbel / Dirichlet randomness); SofT-GRPO, 2025.
    """
    check_tensor(logits, "logits", dim=2, layout="(batch, vocab)", dtypes=_SM_DTYPES)
    check_tensor(embedding, "embedding", dim=2, layout="(vocab, dim)", dtypes=_SM_DTYPES,
                 device=logits.device, device_of="logits")
    B, V = logits.shape
    if V < 1:
        raise ValueError(f"logits must have at least one column (vocab), got shape {tuple(logits.shape)}")
    if embedding.shape[0] != V:
        raise ValueError(f"embedding must have as many rows as logits has columns ({V}), "
                         f"got {embedding.shape[0]}")
    dev = logits.device
    if not logits.is_contiguous() and logits.stride(-1) != 1:
        logits = logits.contiguous()
    if not embedding.is_contiguous() and embedding.stride(-1) != 1:
        embedding = embedding.contiguous()
    # A decoding loop calls with the same plain settings every step: the
    # checked native arguments are cached under the exact settings (bool, numpy
    # or tensor settings, and seed=None with noise, always take _sm_args; int
    # and float values that compare equal build the same arguments).
    if (type(top_k) is int and (filter_top_k is None or type(filter_top_k) is int)
            and type(temperature) in _SCALAR_TYPES
            and type(top_p) in _SCALAR_TYPES and type(min_p) in _SCALAR_TYPES
            and (noise is None or type(noise) is str) and type(tau) in _SCALAR_TYPES
            and type(noise_scale) in _SCALAR_TYPES and type(dirichlet_alpha) in _SCALAR_TYPES
            and type(embed_scale) in _SCALAR_TYPES and type(offset) is int
            and gumbel_clamp is None and type(gumbel_eps) in _SCALAR_TYPES
            and type(embed_noise_std) in _SCALAR_TYPES
            and (embed_noise_std == 0 or type(seed) is int)
            and (type(seed) is int or (seed is None and noise is None))):
        key = ("soft_mixture", top_k, filter_top_k, V, temperature, top_p, min_p, noise, tau, noise_scale,
               dirichlet_alpha, embed_scale, seed, offset, gumbel_eps, embed_noise_std)
        tail = scalar_rows(key, B, dev, _sm_args, top_k, temperature, top_p, min_p, noise, tau,
                           noise_scale, dirichlet_alpha, embed_scale, seed, offset, generator,
                           filter_top_k, V, None, gumbel_eps, embed_noise_std)
    else:
        tail = _sm_args(B, dev, top_k, temperature, top_p, min_p, noise, tau, noise_scale,
                        dirichlet_alpha, embed_scale, seed, offset, generator, filter_top_k, V,
                        gumbel_clamp, gumbel_eps, embed_noise_std)
    if below_autograd(logits, embedding):
        with torch._C._AutoDispatchBelowAutograd():
            out = _SM_OP_BOXED(logits, embedding, *tail)
    else:
        out = _ops.soft_mixture.default(logits, embedding, *tail)
    return SoftTokens(out[0], out[1], out[2], out[3], out[4], out[5],
                      out[6] if noise == "gumbel" else None)


# The op's C++ entry point, without OpOverload.__call__'s Python frame (eager
# calls below autograd only).
_SM_OP_BOXED = getattr(_ops.soft_mixture.default, "_op", _ops.soft_mixture.default)


def _sm_args(B, dev, top_k, temperature, top_p, min_p, noise, tau, noise_scale, dirichlet_alpha,
             embed_scale, seed, offset, generator, filter_top_k=None, V=None, gumbel_clamp=None,
             gumbel_eps=0.0, embed_noise_std=0.0):
    """The native op's arguments after (logits, embedding), checked."""
    kt, temp, tp, mp, k, noise_code, tau, noise_scale, dirichlet_alpha, embed_scale = _sm_settings(
        B, dev, top_k, temperature, top_p, min_p, noise, tau, noise_scale, dirichlet_alpha, embed_scale)
    fk, kc = _sm_filter(filter_top_k, top_k, kt, k, B, dev, V)
    glo, ghi = _gumbel_clamp(gumbel_clamp)
    geps = float_arg(gumbel_eps, "gumbel_eps", lo=0)
    estd = float_arg(embed_noise_std, "embed_noise_std", lo=0)
    if noise is None and seed is None and estd == 0:
        s = const_row(0, B, torch.int64, dev)
        _, o = rng_state(0, offset, B, dev)
    else:
        s, o = rng_state(seed, offset, B, dev, generator)
    return (temp, kt, tp, mp, s, o, k, noise_code, tau, noise_scale, dirichlet_alpha, embed_scale, fk, kc,
            glo, ghi, geps, estd)


def _gumbel_clamp(c):
    """gumbel_clamp, checked: (lo, hi) floats (None: no clamp, (-inf, inf))."""
    if c is None:
        return -math.inf, math.inf
    msg = "gumbel_clamp must be None or a pair (lo, hi) of numbers with lo < hi"
    if isinstance(c, (str, bytes, torch.Tensor)) or not hasattr(c, "__len__") or len(c) != 2:
        raise ValueError(f"{msg}, got {c!r}")
    lo, hi = c
    if isinstance(lo, bool) or isinstance(hi, bool) or not all(isinstance(v, (int, float)) for v in (lo, hi)):
        raise ValueError(f"{msg}, got {c!r}")
    lo, hi = float(lo), float(hi)
    if math.isnan(lo) or math.isnan(hi) or not lo < hi or lo == math.inf or hi == -math.inf:
        raise ValueError(f"{msg}, got ({lo}, {hi})")
    return lo, hi


def _sm_filter(filter_top_k, top_k, kt, k, B, dev, V):
    """filter_top_k, checked: the (B,) int64 tensor (0: whole vocabulary) and the
    candidate width kc = max(k, filter widths) the kernels keep per row."""
    if filter_top_k is None:
        return kt, k
    if not isinstance(filter_top_k, torch.Tensor):
        f = int_arg(filter_top_k, "filter_top_k", lo=0)
        if V is not None and f >= V:
            f = 0  # the whole vocabulary
        if f > _SM_MAX_K:
            raise ValueError(f"filter_top_k must be 0 (the whole vocabulary), >= vocab, or in "
                             f"[top_k, {_SM_MAX_K}], got {f} (vocab {V})")
        if 0 < f:
            if isinstance(top_k, torch.Tensor):
                if not torch.compiler.is_compiling() and B and bool((kt > f).any()):
                    raise ValueError(f"top_k (the output width, max {int(kt.max())}) must be <= "
                                     f"filter_top_k ({f}) when filter_top_k > 0")
            elif top_k > f:
                raise ValueError(f"top_k (the output width, {top_k}) must be <= filter_top_k ({f}) "
                                 f"when filter_top_k > 0")
        return const_row(f, B, torch.int64, dev), max(k, f)
    fk = row_param(filter_top_k, "filter_top_k", B, dev, torch.int64, lo=0)
    if V is not None:
        fk = torch.where(fk >= V, torch.zeros_like(fk), fk)
    if not B:
        return fk, k
    f = int(fk.max())
    if f > _SM_MAX_K:
        raise ValueError(f"filter_top_k must be 0 (the whole vocabulary), >= vocab, or in "
                         f"[top_k, {_SM_MAX_K}], got {f} (vocab {V})")
    bad = (fk > 0) & (kt > fk)
    if bool(bad.any()):
        r = int(bad.nonzero()[0, 0])
        raise ValueError(f"top_k (the output width, {int(kt[r])}) must be <= filter_top_k "
                         f"({int(fk[r])}) when filter_top_k > 0, at row {r}")
    return fk, max(k, f)


def _sm_settings(B, dev, top_k, temperature, top_p, min_p, noise, tau, noise_scale,
                 dirichlet_alpha, embed_scale):
    """soft_mixture's settings, checked: the per-row tensors, k and the scalars."""
    if not (noise is None or isinstance(noise, str)) or noise not in _SM_NOISE:
        raise ValueError(f"noise must be None, 'gumbel' or 'dirichlet', got {noise!r}")
    tau = float_arg(tau, "tau", lo=0, lo_open=True)
    noise_scale = float_arg(noise_scale, "noise_scale")
    dirichlet_alpha = float_arg(dirichlet_alpha, "dirichlet_alpha", lo=0, lo_open=True)
    embed_scale = float_arg(embed_scale, "embed_scale")
    if not isinstance(top_k, torch.Tensor):
        top_k = int_arg(top_k, "top_k", lo=1, hi=_SM_MAX_K)
    kt = row_param(top_k, "top_k", B, dev, torch.int64, lo=1, hi=_SM_MAX_K)
    # the output width: a tensor's maximum (read from the data; 1 for an empty batch)
    k = top_k if not isinstance(top_k, torch.Tensor) else (int(kt.max()) if kt.numel() else 1)
    if not 1 <= k <= _SM_MAX_K:
        raise ValueError(f"top_k must be in [1, {_SM_MAX_K}], got {k}")
    temp = row_param(temperature, "temperature", B, dev, torch.float64, lo=0)
    tp = row_param(top_p, "top_p", B, dev, torch.float64, lo=0, hi=1, lo_open=True)
    mp = row_param(min_p, "min_p", B, dev, torch.float64, lo=0, hi=1)
    return (kt, temp, tp, mp, k, _SM_NOISE[noise], tau, noise_scale, dirichlet_alpha, embed_scale)
