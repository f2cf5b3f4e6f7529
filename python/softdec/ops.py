"""Typed wrappers, fake kernels and autograd for every softdec op.

The native kernels live under ``torch.ops.softdec``; the functions here
validate arguments (``ValueError`` naming the argument, the expected and the
actual value), turn per-batch scalars into per-row tensors, and return named
tuples. Each op has a fake (meta) kernel so it works under ``torch.compile``
and ``torch.library.opcheck``.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Optional, Sequence, Union

import torch

from ._params import (FLOAT_DTYPES, below_autograd, check_tensor, const_row, device_arg, dtype_name,  # noqa: F401
                      float_arg, int_arg, rng_state, row_param, scalar_rows, _SCALAR_TYPES)

__all__ = ["philox_uniform"]

_ops = torch.ops.softdec


# ============================================================================ RNG

@torch.library.register_fake("softdec::philox_uniform")
def _philox_uniform_fake(seed, offset, n):
    torch._check(seed.dim() == 1, lambda: "seed must be a 1-D tensor")
    torch._check(offset.shape == seed.shape, lambda: "offset must match seed")
    torch._check(n >= 0, lambda: "n must be non-negative")
    return seed.new_empty((seed.shape[0], n), dtype=torch.float32)


def philox_uniform(shape: Union[int, Sequence[int]], seed: Union[int, torch.Tensor],
                   offset: Union[int, torch.Tensor] = 0, *,
                   device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """The Philox4x32-10 stream every softdec op draws from, as float32 in (0, 1).

    Element ``i`` of the ``(seed, offset)`` stream is lane ``i % 4`` of
    Philox4x32-10 with key ``(lo32(seed), hi32(seed))`` and counter
    ``(lo32(i // 4), hi32(i // 4), lo32(offset), hi32(offset))``, mapped to
    ``((bits >> 9) + 0.5) / 2**23``, so every value lies in
    ``[2**-24, 1 - 2**-24]``. CPU and CUDA produce identical bits.

    Parameters
    ----------
    shape : int or sequence of int
        Output shape. With a tensor ``seed`` of shape ``(B,)``, ``shape[0]``
        must be ``B`` and row ``r`` is the first ``prod(shape[1:])`` elements of
        the ``(seed[r], offset[r])`` stream, whatever the batch around it. With
        an int ``seed`` the whole output is one stream, in row-major order.
    seed : int or torch.Tensor
        64-bit key, or ``(B,)`` int64 per-row keys.
    offset : int or torch.Tensor, default 0
        Stream selector (the decoding position), or ``(B,)`` int64 per row.
    device : str or torch.device, optional
        Output device when ``seed`` is an int (default CPU); with a tensor
        seed the output is on the seed's device.

    Returns
    -------
    torch.Tensor
        float32 of ``shape``, values strictly inside (0, 1).

    Examples
    --------
    >>> import torch, softdec
    >>> u = softdec.philox_uniform((2, 5), seed=torch.tensor([1, 2]), offset=0)
    >>> bool(((u > 0) & (u < 1)).all())
    True

    References
    ----------
    Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011.
    """
    if isinstance(shape, torch.Size) or (isinstance(shape, (tuple, list))):
        dims = tuple(shape)
    elif isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        dims = (shape,)
    else:
        raise ValueError(f"shape must be an int or a sequence of ints, got {type(shape).__name__} {shape!r}")
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral):
            raise ValueError(f"shape must be a sequence of ints, got {shape!r}")
    dims = tuple(int(d) for d in dims)
    if any(d < 0 for d in dims):
        raise ValueError(f"shape must hold non-negative sizes, got {dims}")
    if isinstance(seed, torch.Tensor):
        if seed.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"seed must be an int or an int64 tensor, got a {str(seed.dtype).replace('torch.', '')} tensor")
        if seed.dim() != 1:
            raise ValueError(f"seed must be an int or a 1-D tensor (one seed per row), got shape {tuple(seed.shape)}")
        if len(dims) == 0 or dims[0] != seed.shape[0]:
            raise ValueError(f"shape[0] must equal the number of seeds ({seed.shape[0]}), got shape {dims}")
        dev = seed.device
        if device is not None and device_arg(device) != dev:
            raise ValueError(f"device must match the seed tensor's device ({dev}), got {device}")
        rows, n = dims[0], math.prod(dims[1:])
    else:
        dev = device_arg(device) if device is not None else torch.device("cpu")
        rows, n = 1, math.prod(dims)
    if rows * n > 2**60:  # the kernel's limit (numel * 8 bytes must fit in int64)
        raise ValueError(f"philox_uniform: shape {dims} has too many elements ({rows * n}; at most 2**60)")
    s, o = rng_state(seed, offset, rows, dev)
    return _ops.philox_uniform(s, o, n).reshape(dims)


# ============================================================================ soft mixture

__all__ += ["soft_mixture", "SoftTokens"]

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
                       tau, noise_scale, dirichlet_alpha, embed_scale):
    torch._check(logits.dim() == 2, lambda: "logits must be a 2-D tensor (batch, vocab)")
    torch._check(embedding.dim() == 2, lambda: "embedding must be a 2-D tensor (vocab, dim)")
    torch._check(embedding.shape[0] == logits.shape[1],
                 lambda: "embedding must have as many rows as logits has columns")
    torch._check(1 <= k <= _SM_MAX_K, lambda: f"k must be in [1, {_SM_MAX_K}]")
    B, D = logits.shape[0], embedding.shape[1]
    for t in (temperature, top_k, top_p, min_p, seed, offset):
        torch._check(t.dim() == 1 and t.shape[0] == B, lambda: "per-row parameters must have shape (B,)")
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    e = lambda shape, dt: logits.new_empty(shape, dtype=dt)  # noqa: E731
    return (e((B, D), embedding.dtype), e((B, k), torch.int64), e((B, k), acc), e((B,), acc),
            e((B,), acc), e((B,), torch.bool), e((B, k), acc), e((B,), acc), e((B,), torch.int64))


@torch.library.register_fake("softdec::soft_mixture_backward")
def _soft_mixture_backward_fake(grad_embeds, grad_weights, grad_entropy, grad_max_prob, grad_noisy,
                                logits, embedding, temperature, ids, weights, lse, entropy, max_prob,
                                valid, nkept, noise, tau, embed_scale):
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
    ctx.noise, ctx.tau, ctx.embed_scale = inputs[9], inputs[10], inputs[13]


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
            max_prob, valid, nkept, ctx.noise, ctx.tau, ctx.embed_scale)
    if ctx.needs_input_grad[1]:
        grad_embedding = _ops.soft_mixture_embedding_backward(ge, embedding, ids, weights, nkept,
                                                              ctx.embed_scale)
    return (grad_logits, grad_embedding) + (None,) * 12


torch.library.register_autograd("softdec::soft_mixture", _soft_mixture_backward,
                                setup_context=_soft_mixture_setup_context)


def soft_mixture(logits: torch.Tensor, embedding: torch.Tensor, *,
                 top_k: Union[int, torch.Tensor] = 10,
                 temperature: Union[float, torch.Tensor] = 1.0,
                 top_p: Union[float, torch.Tensor] = 1.0,
                 min_p: Union[float, torch.Tensor] = 0.0,
                 noise: Optional[str] = None, tau: float = 1.0, noise_scale: float = 1.0,
                 dirichlet_alpha: float = 1.0,
                 seed: Optional[Union[int, torch.Tensor]] = None,
                 offset: Union[int, torch.Tensor] = 0,
                 generator: Optional[torch.Generator] = None,
                 embed_scale: float = 1.0) -> SoftTokens:
    """Soft Thinking concept tokens: the fused softmax / top-k / top-p / min-p /
    noise / embedding-mixture pipeline, one pass over each row of logits.

    Per row (in this order):

    1. ``p = softmax(logits / T)`` over the whole vocabulary; ``entropy = -sum p log p``
       and ``max_prob = max p`` are of this full distribution. ``T = 0`` is the
       one-hot argmax (entropy 0, max_prob 1).
    2. Keep the ``top_k`` largest ``p`` (ties: the lower vocabulary index first)
       and renormalise; top-p on those (the smallest prefix of the sorted weights
       whose mass reaches ``top_p``) and renormalise; min-p (drop ``w < min_p * max w``)
       and renormalise. Tokens with logit ``-inf`` never survive.
    3. Noise. ``"gumbel"``: ``y = log w + noise_scale * G``, ``G = -log(-log U)``,
       ``w = softmax(y / tau)``, ``noisy_logits = y``; the uniform of token ``id``
       is element ``id`` of the row's ``(seed, offset)`` Philox stream
       (:func:`softdec.philox_uniform`), whatever its rank. ``"dirichlet"``:
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
        pads.
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
    seed : int or torch.Tensor, optional
        Philox key, or (batch,) int64 per row. ``None`` draws one seed per row
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
    if (type(top_k) is int and type(temperature) in _SCALAR_TYPES
            and type(top_p) in _SCALAR_TYPES and type(min_p) in _SCALAR_TYPES
            and (noise is None or type(noise) is str) and type(tau) in _SCALAR_TYPES
            and type(noise_scale) in _SCALAR_TYPES and type(dirichlet_alpha) in _SCALAR_TYPES
            and type(embed_scale) in _SCALAR_TYPES and type(offset) is int
            and (type(seed) is int or (seed is None and noise is None))):
        key = ("soft_mixture", top_k, temperature, top_p, min_p, noise, tau, noise_scale,
               dirichlet_alpha, embed_scale, seed, offset)
        tail = scalar_rows(key, B, dev, _sm_args, top_k, temperature, top_p, min_p, noise, tau,
                           noise_scale, dirichlet_alpha, embed_scale, seed, offset, generator)
    else:
        tail = _sm_args(B, dev, top_k, temperature, top_p, min_p, noise, tau, noise_scale,
                        dirichlet_alpha, embed_scale, seed, offset, generator)
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
             embed_scale, seed, offset, generator):
    """The native op's arguments after (logits, embedding), checked."""
    kt, temp, tp, mp, k, noise_code, tau, noise_scale, dirichlet_alpha, embed_scale = _sm_settings(
        B, dev, top_k, temperature, top_p, min_p, noise, tau, noise_scale, dirichlet_alpha, embed_scale)
    if noise is None and seed is None:
        s = const_row(0, B, torch.int64, dev)
        _, o = rng_state(0, offset, B, dev)
    else:
        s, o = rng_state(seed, offset, B, dev, generator)
    return (temp, kt, tp, mp, s, o, k, noise_code, tau, noise_scale, dirichlet_alpha, embed_scale)


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


# ============================================================================ sampling

from ._params import RowParam  # noqa: E402

__all__ += ["Sampled", "sample", "gumbel_softmax", "top_k_mask_logits", "top_p_renorm_probs",
            "min_p_renorm_probs"]


class Sampled(NamedTuple):
    """Result of :func:`sample`: ``ids`` (B,) int64 in [0, V); ``valid`` (B,) bool."""
    ids: torch.Tensor
    valid: torch.Tensor


def _sampling_rows(x, name):
    check_tensor(x, name, dim=2, layout="(batch, vocab)", dtypes=FLOAT_DTYPES)
    if x.shape[1] == 0 and x.shape[0] > 0:
        raise ValueError(f"{name} must have at least one column (vocab >= 1), got shape {tuple(x.shape)}")
    if x.shape[1] > 1 and x.stride(1) != 1:
        x = x.contiguous()
    return x


def _fake_rows(x, name):
    torch._check(x.dim() == 2, lambda: f"{name} must be a 2-D tensor (batch, vocab)")


@torch.library.register_fake("softdec::sample")
def _sample_fake(logits, temperature, top_k, top_p, min_p, seed, offset):
    _fake_rows(logits, "logits")
    B = logits.shape[0]
    for t in (temperature, top_k, top_p, min_p, seed, offset):
        torch._check(t.dim() == 1 and t.shape[0] == B, lambda: "per-row parameters must have shape (B,)")
    return (logits.new_empty((B,), dtype=torch.int64), logits.new_empty((B,), dtype=torch.bool))


def sample(logits: torch.Tensor, *, temperature: RowParam = 1.0, top_k: RowParam = 0,
           top_p: RowParam = 1.0, min_p: RowParam = 0.0, seed=None, offset=0,
           generator: Optional[torch.Generator] = None) -> Sampled:
    """An exact draw from the filtered, renormalised ``softmax(logits / T)`` of every row.

    Filters, in order (include/softdec/filter.h, shared with ``verify`` and
    ``soft_mixture``): top-k (ties: lower vocabulary index first), then top-p on
    the top-k-renormalised distribution (the smallest prefix of the sorted
    probabilities whose mass reaches ``top_p``), then min-p (drop
    ``p < min_p * max p``). The draw is by inversion, without sorting the
    vocabulary: one uniform ``u`` per row (53 bits from elements 0 and 1 of the
    row's ``(seed, offset)`` Philox stream, :func:`philox_uniform`), and the
    first kept token, in vocabulary order, whose running mass exceeds ``u`` times
    the kept mass, with masses ``2^((logits_i - max) log2(e) / T)`` in float32 and
    every sum in float64 in a fixed order (``softdec.reference.sample_exact`` is
    the oracle). A row's draw depends only on its own logits and ``(seed,
    offset)``, and CPU and CUDA pick the same token.

    Parameters
    ----------
    logits : torch.Tensor
        (batch, vocab), float32 / bfloat16 / float16; the last dimension must be
        contiguous (strided rows are read in place).
    temperature : float or torch.Tensor, default 1.0
        ``>= 0``, scalar or (batch,) per row. ``0`` is greedy: the argmax (lowest
        index among ties), with every filter ignored.
    top_k : int or torch.Tensor, default 0
        ``>= 0``, scalar or (batch,) int. ``0`` disables top-k; ``k >= vocab``
        (including ``k > vocab``) keeps every token, like vLLM's clamp.
    top_p : float or torch.Tensor, default 1.0
        In ``[0, 1]``. ``1`` disables top-p; ``0`` keeps the top token.
    min_p : float or torch.Tensor, default 0.0
        In ``[0, 1]``. ``0`` disables min-p; ``1`` keeps the tokens equal to the max.
    seed : int, torch.Tensor or None, default None
        64-bit key, or (batch,) int64 per-row keys (every row's own seed is used).
        ``None`` draws one independent seed per row from ``generator``.
    offset : int or torch.Tensor, default 0
        Stream selector (e.g. the decoding step), scalar or (batch,) int64.
    generator : torch.Generator, optional
        Source of the seeds when ``seed`` is None (default: torch's global one).

    Returns
    -------
    Sampled
        ``ids`` (batch,) int64, always in ``[0, vocab)``; ``valid`` (batch,) bool,
        False for rows with a NaN, a +inf or no finite logit (their id is 0).

    Raises
    ------
    ValueError
        Wrong dtype/shape/device, ``temperature < 0``, ``top_k < 0``, ``top_p`` or
        ``min_p`` outside ``[0, 1]``, NaN parameters.

    Examples
    --------
    >>> import torch, softdec
    >>> logits = torch.tensor([[0.0, 2.0, 1.0], [5.0, 0.0, 0.0]])
    >>> out = softdec.sample(logits, temperature=0.0)
    >>> out.ids.tolist(), out.valid.tolist()
    ([1, 0], [True, True])
    >>> a = softdec.sample(logits, top_k=2, seed=torch.tensor([1, 2]))
    >>> b = softdec.sample(logits, top_k=2, seed=torch.tensor([1, 2]))
    >>> torch.equal(a.ids, b.ids)
    True

    References
    ----------
    Inversion sampling without a sort, as in FlashInfer's sampling kernels (Ye et al., 2025).
    Min-p: Nguyen et al., "Turning Up the Heat: Min-p Sampling", 2024.
    """
    logits = _sampling_rows(logits, "logits")
    B = logits.shape[0]
    dev = logits.device
    if (type(temperature) in _SCALAR_TYPES and type(top_k) in _SCALAR_TYPES and type(top_p) in _SCALAR_TYPES
            and type(min_p) in _SCALAR_TYPES):
        key = ("sample", type(temperature), temperature, type(top_k), top_k, type(top_p), top_p,
               type(min_p), min_p)
        t, k, p, mp = scalar_rows(key, B, dev, _sample_settings, temperature, top_k, top_p, min_p)
    else:
        t, k, p, mp = _sample_settings(B, dev, temperature, top_k, top_p, min_p)
    s, o = rng_state(seed, offset, B, dev, generator)
    ids, valid = _sample_op(logits, t, k, p, mp, s, o)
    return Sampled(ids, valid)


def _sample_settings(B, dev, temperature, top_k, top_p, min_p):
    return (row_param(temperature, "temperature", B, dev, torch.float32, lo=0.0),
            row_param(top_k, "top_k", B, dev, torch.int64, lo=0),
            row_param(top_p, "top_p", B, dev, torch.float32, lo=0.0, hi=1.0),
            row_param(min_p, "min_p", B, dev, torch.float32, lo=0.0, hi=1.0))


_sample_op = _ops.sample.default


@torch.library.register_fake("softdec::gumbel_softmax")
def _gumbel_softmax_fake(logits, tau, seed, offset):
    _fake_rows(logits, "logits")
    B = logits.shape[0]
    return torch.empty_like(logits), logits.new_empty((B,), dtype=torch.int64)


@torch.library.register_fake("softdec::gumbel_softmax_topk")
def _gumbel_softmax_topk_fake(logits, tau, k, seed, offset):
    _fake_rows(logits, "logits")
    torch._check(k >= 1, lambda: "k must be >= 1")
    B = logits.shape[0]
    return (logits.new_empty((B, k), dtype=torch.float32), logits.new_empty((B, k), dtype=torch.int64))


def _gs_setup(ctx, inputs, output):
    _, tau, _, _ = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[0], tau)


def _gs_backward(ctx, grad_probs, grad_ids):
    y, tau = ctx.saved_tensors
    yf = y.float()
    g = grad_probs.float()
    gx = yf * (g - (g * yf).sum(-1, keepdim=True)) / tau[:, None]
    return gx.to(y.dtype), None, None, None


torch.library.register_autograd("softdec::gumbel_softmax", _gs_backward, setup_context=_gs_setup)


def _gst_setup(ctx, inputs, output):
    logits, tau, _, _, _ = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1], output[0], tau)
    ctx.vocab = logits.shape[1]
    ctx.dtype = logits.dtype


def _gst_backward(ctx, grad_w, grad_ids):
    ids, w, tau = ctx.saved_tensors
    g = grad_w.float()
    gk = w * (g - (g * w).sum(-1, keepdim=True)) / tau[:, None]
    gx = torch.zeros((ids.shape[0], ctx.vocab), dtype=torch.float32, device=ids.device)
    gx = gx.scatter_add(1, ids, gk)
    return gx.to(ctx.dtype), None, None, None, None


torch.library.register_autograd("softdec::gumbel_softmax_topk", _gst_backward, setup_context=_gst_setup)


def gumbel_softmax(logits: torch.Tensor, *, tau: RowParam = 1.0, hard: bool = False, top_k: int = 0,
                   seed=None, offset=0, generator: Optional[torch.Generator] = None):
    """Gumbel-softmax ``softmax((logits + G) / tau)`` with softdec's Philox noise.

    ``G_i = -log(-log u_i)`` with ``u_i`` element ``i`` of the row's ``(seed, offset)``
    stream: the same noise as :func:`sample`, so with the same ``(seed, offset)``
    the hard sample ``argmax(logits + G)`` equals ``sample(logits, temperature=1)``'s
    draw (unfiltered).

    Parameters
    ----------
    logits : torch.Tensor
        (batch, vocab), float32 / bfloat16 / float16, last dimension contiguous.
    tau : float or torch.Tensor, default 1.0
        Softmax temperature ``> 0``, scalar or (batch,) per row.
    hard : bool, default False
        Straight-through: the forward value is the one-hot of the argmax (dense),
        or weight 1 on the top id (sparse); gradients are those of the soft sample.
    top_k : int, default 0
        ``0``: dense output. ``k > 0``: the sparse pair of the ``k`` largest
        ``logits + G`` (ties: lower index) and the softmax of ``(logits + G) / tau``
        renormalised over them; ``k > vocab`` is an error.
    seed, offset, generator
        As in :func:`sample`.

    Returns
    -------
    torch.Tensor or tuple of torch.Tensor
        Dense: (batch, vocab) in ``logits``' dtype. Sparse: ``(ids, weights)``,
        (batch, k) int64 sorted by weight descending and (batch, k) float32; positions
        past the finite tokens repeat the top id with weight 0. Rows with a NaN, a
        +inf or no finite logit are all zero (ids 0). Differentiable w.r.t. ``logits``.

    Examples
    --------
    >>> import torch, softdec
    >>> x = torch.randn(2, 10)
    >>> y = softdec.gumbel_softmax(x, tau=0.5, seed=torch.tensor([3, 4]))
    >>> torch.allclose(y.sum(-1), torch.ones(2))
    True
    >>> h = softdec.gumbel_softmax(x, hard=True, seed=torch.tensor([3, 4]))
    >>> h.sum(-1).tolist()  # one-hot forward, soft gradient
    [1.0, 1.0]

    References
    ----------
    Jang et al., "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017;
    Maddison et al., "The Concrete Distribution", ICLR 2017.
    """
    logits = _sampling_rows(logits, "logits")
    B, V = logits.shape
    dev = logits.device
    top_k = int_arg(top_k, "top_k", lo=0)
    if top_k > V and B > 0:
        raise ValueError(f"top_k must be in [0, vocab] = [0, {V}], got {top_k}")
    if not isinstance(hard, bool):
        raise ValueError(f"hard must be a bool, got {type(hard).__name__} {hard!r}")
    t = row_param(tau, "tau", B, dev, torch.float32, lo=0.0, lo_open=True)
    s, o = rng_state(seed, offset, B, dev, generator)
    fast = below_autograd(logits)
    if top_k == 0:
        if fast:
            with torch._C._AutoDispatchBelowAutograd():
                y, am = _ops.gumbel_softmax.default(logits, t, s, o)
        else:
            y, am = _ops.gumbel_softmax.default(logits, t, s, o)
        if not hard:
            return y
        y_hard = torch.zeros_like(y).scatter(1, am[:, None], 1.0)
        # invalid rows (NaN, +inf or no finite logit) are all zero in y: keep them zero
        y_hard = torch.where(y.detach().sum(-1, keepdim=True) > 0, y_hard, torch.zeros_like(y_hard))
        return y_hard - y.detach() + y
    if fast:
        with torch._C._AutoDispatchBelowAutograd():
            w, ids = _ops.gumbel_softmax_topk.default(logits, t, top_k, s, o)
    else:
        w, ids = _ops.gumbel_softmax_topk.default(logits, t, top_k, s, o)
    if not hard:
        return ids, w
    w_hard = torch.zeros_like(w)
    w_hard[:, :1] = 1.0
    valid = w.sum(-1, keepdim=True) > 0
    w_hard = torch.where(valid, w_hard, torch.zeros_like(w_hard))
    return ids, w_hard - w.detach() + w


@torch.library.register_fake("softdec::top_k_mask_logits")
def _top_k_mask_logits_fake(logits, top_k):
    _fake_rows(logits, "logits")
    return torch.empty_like(logits)


@torch.library.register_fake("softdec::top_p_renorm_probs")
def _top_p_renorm_probs_fake(probs, top_p):
    _fake_rows(probs, "probs")
    return torch.empty_like(probs)


@torch.library.register_fake("softdec::min_p_renorm_probs")
def _min_p_renorm_probs_fake(probs, min_p):
    _fake_rows(probs, "probs")
    return torch.empty_like(probs)


# ---- autograd of the filters. The kept set is piecewise constant in the
# input, so away from ties the gradient is that of the kept entries with the
# set held fixed (like soft_mixture's): the mask passes the gradient through
# the kept logits; a renormalisation out = p / S over the kept set K, S = sum_K p,
# has d out_i / d p_j = [i in K] (delta_ij - out_i [j in K]) / S, so
# grad p_j = [j in K] (g_j - sum_i g_i out_i) / S.

def _mask_setup(ctx, inputs, output):
    ctx.save_for_backward(output)


def _mask_backward(ctx, grad):
    (out,) = ctx.saved_tensors
    return torch.where(out == float("-inf"), torch.zeros_like(grad), grad), None


torch.library.register_autograd("softdec::top_k_mask_logits", _mask_backward, setup_context=_mask_setup)


def _renorm_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output)


def _renorm_backward(ctx, grad):
    probs, out = ctx.saved_tensors
    acc = torch.float64 if probs.dtype == torch.float64 else torch.float32
    o, g = out.to(acc), grad.to(acc)
    kept = o > 0
    total = torch.where(kept, probs.to(acc), torch.zeros_like(o)).sum(-1, keepdim=True)
    inv = torch.where(total > 0, 1.0 / total, torch.zeros_like(total))
    gp = torch.where(kept, (g - (g * o).sum(-1, keepdim=True)) * inv, torch.zeros_like(o))
    return gp.to(probs.dtype), None


torch.library.register_autograd("softdec::top_p_renorm_probs", _renorm_backward, setup_context=_renorm_setup)
torch.library.register_autograd("softdec::min_p_renorm_probs", _renorm_backward, setup_context=_renorm_setup)


def _no_backward(public: str, *, outputs_differentiable: bool = True):
    """An autograd registration for an op without a gradient formula.

    ``outputs_differentiable=False``: the outputs are marked non-differentiable
    (they never require grad; for values that only select, e.g. page bounds).
    Otherwise float outputs require grad when an input does, and backward
    raises naming the op, so a loss that reaches them fails instead of silently
    getting no gradient from them.
    """
    def setup(ctx, inputs, output):
        if not outputs_differentiable:
            outs = output if isinstance(output, (tuple, list)) else (output,)
            ctx.mark_non_differentiable(*[t for t in outs if isinstance(t, torch.Tensor)])

    def backward(ctx, *grads):
        raise RuntimeError(f"softdec.{public} is not differentiable (it has no backward formula); "
                           "call it under torch.no_grad() or on detached inputs")
    return setup, backward


def _register_no_backward(op: str, public: str, **kw):
    setup, backward = _no_backward(public, **kw)
    torch.library.register_autograd(f"softdec::{op}", backward, setup_context=setup)


# integer outputs only (ids, valid): nothing ever requires grad
_register_no_backward("sample", "sample", outputs_differentiable=False)


def top_k_mask_logits(logits: torch.Tensor, top_k: RowParam) -> torch.Tensor:
    """Set every logit outside its row's top-k to ``-inf`` (FlashInfer's ``top_k_mask_logits``).

    Parameters
    ----------
    logits : torch.Tensor
        (batch, vocab), float32 / bfloat16 / float16.
    top_k : int or torch.Tensor
        ``>= 0``, scalar or (batch,) int. Exactly ``k`` tokens are kept (ties: lower
        vocabulary index first, unlike FlashInfer which may keep every tie);
        ``0`` or ``k >= vocab`` keeps every token.

    Returns
    -------
    torch.Tensor
        (batch, vocab), ``logits``' dtype. A row containing a NaN is invalid (the
        policy of every op, see the README) and comes back all ``-inf``, like a
        row with no finite logit.
        Differentiable: the gradient passes through the kept entries (the kept
        set held fixed), masked entries get 0.

    Examples
    --------
    >>> import torch, softdec
    >>> softdec.top_k_mask_logits(torch.tensor([[1.0, 3.0, 2.0, 3.0]]), 2).tolist()
    [[-inf, 3.0, -inf, 3.0]]
    """
    logits = _sampling_rows(logits, "logits")
    k = row_param(top_k, "top_k", logits.shape[0], logits.device, torch.int64, lo=0)
    return _ops.top_k_mask_logits(logits, k)


def top_p_renorm_probs(probs: torch.Tensor, top_p: RowParam) -> torch.Tensor:
    """Keep the smallest prefix of each row's sorted probabilities whose mass reaches
    ``top_p`` (of the row's sum), zero the rest, renormalise (FlashInfer's ``top_p_renorm_probs``).

    Parameters
    ----------
    probs : torch.Tensor
        (batch, vocab), float32 / bfloat16 / float16, non-negative.
    top_p : float or torch.Tensor
        In ``[0, 1]``, scalar or (batch,). ``0`` keeps the top token (ties: lower
        index); ``1`` keeps every non-zero entry.

    Returns
    -------
    torch.Tensor
        (batch, vocab), ``probs``' dtype, rows summing to 1. Rows with a NaN, an
        inf, a negative entry or no positive entry are all zero. Differentiable
        w.r.t. ``probs``: the Jacobian of ``p_i / sum_kept p`` over the kept
        (non-zero output) entries, the kept set held fixed; 0 elsewhere.

    Examples
    --------
    >>> import torch, softdec
    >>> softdec.top_p_renorm_probs(torch.tensor([[0.5, 0.3, 0.2]]), 0.7).tolist()
    [[0.625, 0.375, 0.0]]
    """
    probs = _sampling_rows(probs, "probs")
    p = row_param(top_p, "top_p", probs.shape[0], probs.device, torch.float32, lo=0.0, hi=1.0)
    return _ops.top_p_renorm_probs(probs, p)


def min_p_renorm_probs(probs: torch.Tensor, min_p: RowParam) -> torch.Tensor:
    """Keep ``p >= min_p * max p`` in each row, zero the rest, renormalise (min-p filtering
    of Nguyen et al., 2024, as FlashInfer applies it in ``min_p_sampling_from_probs``).

    Parameters
    ----------
    probs : torch.Tensor
        (batch, vocab), float32 / bfloat16 / float16, non-negative.
    min_p : float or torch.Tensor
        In ``[0, 1]``, scalar or (batch,). ``1`` keeps the entries equal to the max.

    Returns
    -------
    torch.Tensor
        (batch, vocab), ``probs``' dtype; invalid rows (NaN, inf, negative, all zero) are zero.
        Differentiable w.r.t. ``probs`` as :func:`top_p_renorm_probs`.

    Examples
    --------
    >>> import torch, softdec
    >>> out = softdec.min_p_renorm_probs(torch.tensor([[0.6, 0.3, 0.1]]), 0.5)
    >>> [round(v, 4) for v in out[0].tolist()]
    [0.6667, 0.3333, 0.0]
    """
    probs = _sampling_rows(probs, "probs")
    p = row_param(min_p, "min_p", probs.shape[0], probs.device, torch.float32, lo=0.0, hi=1.0)
    return _ops.min_p_renorm_probs(probs, p)


# ============================================================================ speculative verification

__all__ += ["Verified", "verify", "chain_speculative_sampling"]

_VERIFY_METHODS = {"exact": 0, "greedy": 1, "typical": 2, "relaxed": 3, "soft": 4}
_SPARSE_SUM_TOL = 1e-3


def _sparse_sum_tol(dtype: torch.dtype, k: int) -> float:
    """How far a sparse draft's weights may sum from 1: 1e-3, plus k unit roundoffs
    of their dtype (weights summing to 1 before a cast to bfloat16 move by up to
    one unit roundoff of their sum; k of them allow weights computed in that dtype)."""
    return _SPARSE_SUM_TOL + k * torch.finfo(dtype).eps / 2


class Verified(NamedTuple):
    """Result of :func:`verify`.

    tokens : torch.Tensor
        (batch, K + 1) int64. ``tokens[b, :num_accepted[b]]`` are the accepted
        drafts, ``tokens[b, num_accepted[b]]`` the correction or bonus token (or
        -1 where the target row at that position is invalid: NaN, +inf or all -inf),
        and the rest is -1.
    num_accepted : torch.Tensor
        (batch,) int64, accepted drafts per row, ``0 <= num_accepted[b] <= num_draft[b]``.
    soft_ids : torch.Tensor or None
        (batch, k) int64, method "soft" only: the target's soft token at the
        stop position (ids sorted by weight descending, padded with the top id).
    soft_weights : torch.Tensor or None
        (batch, k) float32, method "soft" only: its weights (zeros for an invalid row).
    """
    tokens: torch.Tensor
    num_accepted: torch.Tensor
    soft_ids: Optional[torch.Tensor]
    soft_weights: Optional[torch.Tensor]


@torch.library.register_fake("softdec::verify")
def _verify_fake(target_logits, draft_ids, num_draft, draft_probs, sparse_ids, sparse_weights,
                 neighbours, method, temperature, top_k, top_p, min_p, posterior_threshold,
                 posterior_alpha, delta, seed, offset):
    torch._check(target_logits.dim() == 3, lambda: "target_logits must be 3-D (batch, K+1, vocab)")
    B, K1, V = target_logits.shape
    torch._check(K1 >= 1, lambda: "target_logits must have K+1 >= 1 positions")
    torch._check(draft_ids.dim() == 2 and draft_ids.shape[0] == B and draft_ids.shape[1] == K1 - 1,
                 lambda: "draft_ids must have shape (batch, K)")
    torch._check(num_draft.shape == (B,), lambda: "num_draft must have shape (batch,)")
    if draft_probs is not None:
        torch._check(draft_probs.shape == (B, K1 - 1, V), lambda: "draft_probs must be (batch, K, vocab)")
    if sparse_ids is not None:
        torch._check(sparse_weights is not None and sparse_ids.shape == sparse_weights.shape,
                     lambda: "sparse ids and weights must have the same shape")
    ks = sparse_ids.shape[2] if (method == 4 and sparse_ids is not None) else 0
    return (target_logits.new_empty((B, K1), dtype=torch.int64),
            target_logits.new_empty((B,), dtype=torch.int64),
            target_logits.new_empty((B, ks), dtype=torch.int64),
            target_logits.new_empty((B, ks), dtype=torch.float32))


def _verify_check_data(tl, draft_ids, n, sparse, sid, sw, neighbours, needs_ids, method, sum_tol):
    """Data-dependent checks (skipped while torch.compile traces; the CPU kernel repeats them)."""
    B, K1, V = tl.shape
    K = K1 - 1
    if K == 0 or B == 0:
        return
    live = torch.arange(K, device=tl.device)[None, :] < n[:, None]  # (B, K) positions verified
    if needs_ids:
        bad = live & ((draft_ids < 0) | (draft_ids >= V))
        if bool(bad.any()):
            b, j = (int(v) for v in bad.nonzero()[0])
            raise ValueError(f"draft_ids must lie in [0, {V}) (the vocabulary of target_logits), "
                             f"got {int(draft_ids[b, j])} at (row {b}, position {j})")
    if sparse:
        bad = live[..., None] & ((sid < 0) | (sid >= V))
        if bool(bad.any()):
            b, j, c = (int(v) for v in bad.nonzero()[0])
            raise ValueError(f"draft_probs ids must lie in [0, {V}), got {int(sid[b, j, c])} "
                             f"at (row {b}, position {j}, entry {c})")
        w = sw.double()
        badw = live & (~torch.isfinite(w).all(-1) | (w < 0).any(-1))
        if bool(badw.any()):
            b, j = (int(v) for v in badw.nonzero()[0])
            raise ValueError(f"draft_probs weights must be finite and non-negative, got "
                             f"{sw[b, j].tolist()} at (row {b}, position {j})")
        tot = w.sum(-1)
        bads = live & ((tot - 1).abs() > sum_tol)
        if bool(bads.any()):
            b, j = (int(v) for v in bads.nonzero()[0])
            raise ValueError(f"draft_probs weights must sum to 1 (within {sum_tol:.4g}) at every "
                             f"drafted position, got {float(tot[b, j]):.6g} at (row {b}, position {j})")
        if needs_ids and method != 4:  # soft drafts: the given ids are only what is emitted
            member = (sid == draft_ids.clamp(0, V - 1)[..., None]).any(-1)
            badm = live & ~member
            if bool(badm.any()):
                b, j = (int(v) for v in badm.nonzero()[0])
                raise ValueError(f"draft_ids[{b}, {j}] = {int(draft_ids[b, j])} must be one of the "
                                 f"sparse draft's ids at that position, got {sid[b, j].tolist()}")
    if neighbours is not None and neighbours.numel():
        # only the rows of the drafted tokens are read (the table may be large)
        rows = torch.unique(draft_ids[live].clamp(0, V - 1))
        sub = neighbours[rows]
        badn = (sub < -1) | (sub >= V)
        if bool(badn.any()):
            r, c = (int(t) for t in badn.nonzero()[0])
            raise ValueError(f"neighbours must lie in [-1, {V}) (-1 = none), got "
                             f"{int(sub[r, c])} at ({int(rows[r])}, {c})")


def verify(target_logits: torch.Tensor, draft_ids: Optional[torch.Tensor], *,
           num_draft: Optional[Union[int, torch.Tensor]] = None,
           draft_probs: Optional[Union[torch.Tensor, tuple]] = None,
           method: str = "exact", temperature: Union[float, torch.Tensor] = 1.0,
           top_k: Union[int, torch.Tensor] = 0, top_p: Union[float, torch.Tensor] = 1.0,
           min_p: Union[float, torch.Tensor] = 0.0, posterior_threshold: float = 0.09,
           posterior_alpha: float = 0.3, neighbours: Optional[torch.Tensor] = None,
           delta: float = 0.1, seed: Optional[Union[int, torch.Tensor]] = None,
           offset: Union[int, torch.Tensor] = 0,
           generator: Optional[torch.Generator] = None) -> Verified:
    """Speculative verification of K drafted positions per row, in one call.

    The target distribution at position ``j`` is the filtered, renormalised
    ``softmax(target_logits[b, j] / T)`` (top-k with ties broken lower index
    first, then top-p on the renormalised top-k, then min-p; ``T = 0`` is the
    one-hot argmax). Row ``b`` verifies positions ``0 .. num_draft[b] - 1`` in
    order, stops at the first rejection and emits one more token there (the
    correction), or after ``num_draft[b]`` acceptances the bonus token drawn
    from the target at position ``num_draft[b]``.

    Methods
    -------
    exact
        Leviathan/Chen rejection sampling: accept draft ``x`` iff
        ``u * q(x) < p(x)``; on rejection emit a draw from ``norm(max(0, p - q))``
        (``p`` if that is 0 numerically). The emitted tokens are distributed
        exactly as the target. ``q`` is one-hot (``draft_probs=None``), dense, or
        sparse (the residual then touches only the ``k`` sparse entries).
    greedy
        accept while ``x == argmax p`` (lowest index on ties), then emit ``argmax p``.
    typical
        Medusa: accept while ``p(x) > min(posterior_threshold, posterior_alpha *
        exp(-H(p)))`` with ``H`` the entropy of the filtered target; the token at
        the stop position is a draw from ``p``.
    relaxed
        LANTERN: ``A(x)`` = the longest prefix of ``neighbours[x]`` (skipping -1,
        ``x`` and repeats) whose target mass is at most ``delta``; accept iff
        ``u * q(x) < p(x) + p(A(x))``; the rejection residual is
        ``max(0, p - q)`` with ``A(x)`` removed. ``delta = 0`` equals exact.
    soft
        speculative Soft Thinking: drafts are soft tokens (the sparse
        ``draft_probs``); the target's soft token at position ``j`` is
        soft_mixture's filtering of ``target_logits[:, j]`` (``top_k`` = the
        draft's ``k`` when 0, no noise). Accept while the total-variation
        distance between the two is ``<= delta + 1e-6`` (the slack absorbs float32
        rounding, so a draft computed by ``soft_mixture`` from the same logits
        counts as identical at ``delta = 0``); the target's soft token at the
        stop position is returned in ``soft_ids``/``soft_weights`` and its top id
        in ``tokens``. Deterministic (no RNG).

    RNG layout (Philox, per row ``(seed, offset)``; batch-invariant)
    -----------------------------------------------------------------
    acceptance uniform of position ``j`` = element ``j`` of the ``(seed, offset)``
    stream; the residual or bonus draw at position ``j`` is the exponential race
    ``argmax_i r_i / E_i``, ``E_i = -log u_i``, ``u_i`` = element ``i`` (the vocab
    id) of the ``(seed, offset + 1 + j)`` stream. A call therefore uses streams
    ``offset .. offset + K + 1``: advance ``offset`` by ``K + 2`` between calls
    with the same seed.

    Parameters
    ----------
    target_logits : torch.Tensor
        (batch, K + 1, vocab), float32/bfloat16/float16: target logits at the K
        drafted positions and the bonus position. Last dimension contiguous.
    draft_ids : torch.Tensor or None
        (batch, K), int64/int32: the drafted tokens. May be None only for
        method "soft" (the draft token is then each position's heaviest id).
    num_draft : int or torch.Tensor, optional
        per-row draft length ``[0, K]`` (default K); entries past it are ignored.
    draft_probs : None, torch.Tensor or (torch.Tensor, torch.Tensor)
        None: deterministic drafts (one-hot q). Dense: (batch, K, vocab) float
        probabilities (the dtype of target_logits or float32). Sparse: ``(ids
        (batch, K, k) int64, weights (batch, K, k) float)``, weights non-negative
        summing to 1 (within ``1e-3 + k * u``, ``u`` the unit roundoff of the weights'
        dtype: 2^-8 for bfloat16, 2^-11 for float16, 2^-24 for float32, so weights
        that summed to 1 before a cast pass) and each draft id among its position's ids.
    method : str, default "exact"
        "exact", "greedy", "typical", "relaxed" or "soft".
    temperature, top_k, top_p, min_p : scalar or (batch,) tensor
        target filtering; defaults 1.0, 0 (off), 1.0 (off), 0.0 (off).
    posterior_threshold, posterior_alpha : float, default 0.09, 0.3
        Medusa's epsilon and alpha (method "typical").
    neighbours : torch.Tensor, optional
        (vocab, m) int64 latent neighbours, nearest first, -1 = none (method "relaxed").
    delta : float, default 0.1
        relaxed: extra neighbour mass; soft: the total-variation tolerance.
    seed, offset : int or (batch,) int64 tensor
        Philox key and stream; ``seed=None`` draws per-row seeds from ``generator``.
    generator : torch.Generator, optional

    Returns
    -------
    Verified
        ``(tokens (batch, K+1) int64 padded with -1, num_accepted (batch,) int64,
        soft_ids, soft_weights)``.

    Notes
    -----
    Invalid target rows (NaN, +inf, or every logit -inf) are a documented
    result, not an error: the row stops at that position with token -1 there
    (``num_accepted`` counts the drafts accepted before it; for "soft" the
    returned soft token is ids 0 / weights 0). Draft ids, sparse ids and
    weights, ``num_draft`` and the neighbours of drafted tokens are checked
    (``ValueError``); the checks that read tensor data are skipped while
    ``torch.compile`` traces, and the CPU kernel repeats the ones that guard
    memory accesses. Dense ``draft_probs`` rows are not checked (a full pass):
    a NaN ``q`` entry rejects its draft and drops out of the residual.
    With the "soft" method, ``tokens`` holds the accepted drafts' ids (the
    given ``draft_ids``, else each position's heaviest id) and the target soft
    token's top id at the stop position.

    Examples
    --------
    >>> import torch, softdec
    >>> logits = torch.randn(2, 4, 50)
    >>> drafts = torch.randint(0, 50, (2, 3))
    >>> out = softdec.verify(logits, drafts, seed=torch.tensor([1, 2]))
    >>> out.tokens.shape, bool((out.num_accepted <= 3).all())
    (torch.Size([2, 4]), True)

    References
    ----------
    Leviathan et al., "Fast Inference from Transformers via Speculative Decoding", ICML 2023;
    Chen et al., "Accelerating LLM Decoding with Speculative Sampling", 2023;
    Cai et al., "Medusa", 2024; Jang et al., "LANTERN", 2024;
    Zhang et al., "Soft Thinking", 2025.
    """
    tl = check_tensor(target_logits, "target_logits", dim=3, layout="(batch, K+1, vocab)",
                      dtypes=FLOAT_DTYPES)
    B, K1, V = tl.shape
    if K1 < 1:
        raise ValueError(f"target_logits must have K+1 >= 1 positions in dim 1, got shape {tuple(tl.shape)}")
    if V < 1:
        raise ValueError(f"target_logits must have a non-empty vocabulary, got shape {tuple(tl.shape)}")
    K = K1 - 1
    dev = tl.device
    if not isinstance(method, str) or method not in _VERIFY_METHODS:
        raise ValueError(f"method must be one of {tuple(_VERIFY_METHODS)}, got {method!r}")
    mcode = _VERIFY_METHODS[method]
    if tl.stride(-1) != 1:
        tl = tl.contiguous()

    sparse = isinstance(draft_probs, (tuple, list))
    dense = None
    sid = sw = None
    sum_tol = _SPARSE_SUM_TOL
    if sparse:
        if len(draft_probs) != 2:
            raise ValueError(f"draft_probs as a tuple must be (ids, weights), got {len(draft_probs)} items")
        sid = check_tensor(draft_probs[0], "draft_probs ids", dim=3, layout="(batch, K, k)",
                           dtypes=(torch.int64, torch.int32), device=dev, device_of="target_logits")
        sw = check_tensor(draft_probs[1], "draft_probs weights", dim=3, layout="(batch, K, k)",
                          dtypes=FLOAT_DTYPES, device=dev, device_of="target_logits")
        if tuple(sid.shape[:2]) != (B, K) or sid.shape[2] < 1:
            raise ValueError(f"draft_probs ids must have shape (batch, K, k) = ({B}, {K}, k >= 1) to match "
                             f"target_logits {tuple(tl.shape)}, got {tuple(sid.shape)}")
        if sw.shape != sid.shape:
            raise ValueError(f"draft_probs weights must have the shape of its ids {tuple(sid.shape)}, "
                             f"got {tuple(sw.shape)}")
        sum_tol = _sparse_sum_tol(sw.dtype, sw.shape[2])
        sid = sid.to(torch.int64).contiguous()
        sw = sw.to(torch.float32).contiguous()
    elif draft_probs is not None:
        dense = check_tensor(draft_probs, "draft_probs", dim=3, layout="(batch, K, vocab)",
                             dtypes=FLOAT_DTYPES, device=dev, device_of="target_logits")
        if tuple(dense.shape) != (B, K, V):
            raise ValueError(f"draft_probs must have shape (batch, K, vocab) = ({B}, {K}, {V}) to match "
                             f"target_logits {tuple(tl.shape)}, got {tuple(dense.shape)}")
        if dense.dtype != tl.dtype and dense.dtype != torch.float32:
            dense = dense.to(torch.float32)
        if dense.stride(-1) != 1:
            dense = dense.contiguous()
    if mcode == 4 and not sparse:
        raise ValueError("method 'soft' needs sparse draft_probs (ids (batch, K, k), weights (batch, K, k))")
    if mcode == 3:
        if neighbours is None:
            raise ValueError("method 'relaxed' needs neighbours, a (vocab, m) int64 tensor")
        neighbours = check_tensor(neighbours, "neighbours", dim=2, layout="(vocab, m)",
                                  dtypes=(torch.int64, torch.int32), device=dev, device_of="target_logits")
        if neighbours.shape[0] != V:
            raise ValueError(f"neighbours must have one row per vocabulary entry ({V}), got shape "
                             f"{tuple(neighbours.shape)}")
        neighbours = neighbours.to(torch.int64).contiguous()
    else:
        neighbours = None

    needs_ids = draft_ids is not None
    if draft_ids is None:
        if mcode != 4:
            raise ValueError(f"draft_ids is required for method {method!r} (it may be None only for 'soft')")
        draft_ids = sid.gather(2, sw.argmax(-1, keepdim=True))[..., 0]
    else:
        draft_ids = check_tensor(draft_ids, "draft_ids", dim=2, layout="(batch, K)",
                                 dtypes=(torch.int64, torch.int32), device=dev, device_of="target_logits")
        if tuple(draft_ids.shape) != (B, K):
            raise ValueError(f"draft_ids must have shape (batch, K) = ({B}, {K}) to match target_logits "
                             f"{tuple(tl.shape)} (K + 1 = {K1} positions), got {tuple(draft_ids.shape)}")
    draft_ids = draft_ids.to(torch.int64).contiguous()

    n = row_param(K if num_draft is None else num_draft, "num_draft", B, dev, torch.int64, lo=0, hi=K)
    T = row_param(temperature, "temperature", B, dev, torch.float32, lo=0.0)
    tk = row_param(top_k, "top_k", B, dev, torch.int64, lo=0)
    tp = row_param(top_p, "top_p", B, dev, torch.float32, lo=0.0, hi=1.0)
    mp = row_param(min_p, "min_p", B, dev, torch.float32, lo=0.0, hi=1.0)
    posterior_threshold = float_arg(posterior_threshold, "posterior_threshold", lo=0)
    posterior_alpha = float_arg(posterior_alpha, "posterior_alpha", lo=0)
    delta = float_arg(delta, "delta", lo=0)
    if mcode == 4 and not torch.compiler.is_compiling():
        ks = sid.shape[2]
        if isinstance(top_k, torch.Tensor):
            big = bool((tk > ks).any()) if tk.numel() else False
            kmax = int(tk.max()) if tk.numel() else 0
        else:
            big, kmax = int(top_k) > ks, int(top_k)
        if big:
            raise ValueError(f"top_k must be at most the soft draft's k ({ks}) for method 'soft' "
                             f"(0 means k), got {kmax}")
    if not torch.compiler.is_compiling():
        _verify_check_data(tl, draft_ids, n, sparse, sid, sw, neighbours, needs_ids, mcode, sum_tol)
    s, o = rng_state(seed, offset, B, dev, generator)
    tokens, nacc, soft_ids, soft_w = _ops.verify(
        tl, draft_ids, n, dense, sid, sw, neighbours, mcode, T, tk, tp, mp,
        float(posterior_threshold), float(posterior_alpha), float(delta), s, o)
    if mcode == 4:
        return Verified(tokens, nacc, soft_ids, soft_w)
    return Verified(tokens, nacc, None, None)


# soft_weights are a function of target_logits without a gradient formula here
_register_no_backward("verify", "verify")


def chain_speculative_sampling(draft_probs: torch.Tensor, draft_token_ids: torch.Tensor,
                               target_probs: torch.Tensor,
                               maybe_output_accepted_token_num: Optional[torch.Tensor] = None,
                               maybe_output_emitted_draft_token_num: Optional[torch.Tensor] = None,
                               deterministic: bool = True, generator: Optional[torch.Generator] = None,
                               seed: Optional[Union[int, torch.Tensor]] = None,
                               offset: Union[int, torch.Tensor] = 0):
    """Drop-in for FlashInfer's ``chain_speculative_sampling`` (same argument order and outputs).

    Exact speculative sampling with dense draft probabilities, given target
    *probabilities*; runs :func:`verify` on ``log(target_probs)``.

    Parameters
    ----------
    draft_probs : torch.Tensor
        (batch, K, vocab) float draft probabilities.
    draft_token_ids : torch.Tensor
        (batch, K) int32/int64 drafted tokens.
    target_probs : torch.Tensor
        (batch, K + 1, vocab) float target probabilities.
    maybe_output_accepted_token_num, maybe_output_emitted_draft_token_num : torch.Tensor, optional
        (batch,) int32 counters; when given, the counts are added to them in place
        (FlashInfer's accumulate semantics) and returned.
    deterministic : bool, default True
        accepted for compatibility; softdec is always deterministic.
    generator, seed, offset
        as in :func:`verify` (FlashInfer's uniform_samples are replaced by the
        Philox stream; the same RNG layout as ``verify``).

    Returns
    -------
    (output_token_ids, output_accepted_token_num, output_emitted_draft_token_num)
        (batch, K + 1) int32 padded with -1; (batch,) int32 the number of drafts
        whose acceptance test passes when each position is considered
        independently (FlashInfer's statistic); (batch,) int32 drafts emitted.

    Examples
    --------
    >>> import torch, softdec
    >>> q = torch.softmax(torch.randn(2, 3, 10), -1); p = torch.softmax(torch.randn(2, 4, 10), -1)
    >>> ids = torch.multinomial(q.reshape(-1, 10), 1).reshape(2, 3)
    >>> out, acc, emit = softdec.chain_speculative_sampling(q, ids, p, seed=0)
    >>> out.shape
    torch.Size([2, 4])
    """
    tp = check_tensor(target_probs, "target_probs", dim=3, layout="(batch, K+1, vocab)", dtypes=FLOAT_DTYPES)
    dp = check_tensor(draft_probs, "draft_probs", dim=3, layout="(batch, K, vocab)", dtypes=FLOAT_DTYPES,
                      device=tp.device, device_of="target_probs")
    B, K1, V = tp.shape
    if tuple(dp.shape) != (B, K1 - 1, V):
        raise ValueError(f"draft_probs must have shape (batch, K, vocab) = ({B}, {K1 - 1}, {V}) to match "
                         f"target_probs {tuple(tp.shape)}, got {tuple(dp.shape)}")
    ids = check_tensor(draft_token_ids, "draft_token_ids", dim=2, layout="(batch, K)",
                       dtypes=(torch.int64, torch.int32), device=tp.device, device_of="target_probs")
    for name, c in (("maybe_output_accepted_token_num", maybe_output_accepted_token_num),
                    ("maybe_output_emitted_draft_token_num", maybe_output_emitted_draft_token_num)):
        if c is not None:
            check_tensor(c, name, dim=1, layout="(batch,)", dtypes=(torch.int32, torch.int64),
                         device=tp.device, device_of="target_probs")
            if c.shape[0] != B:
                raise ValueError(f"{name} must have shape ({B},) (one counter per row of target_probs), "
                                 f"got {tuple(c.shape)}")
    if not isinstance(deterministic, bool):
        raise ValueError(f"deterministic must be a bool, got {type(deterministic).__name__} {deterministic!r}")
    s, o = rng_state(seed, offset, B, tp.device, generator)
    logits = torch.log(tp)
    res = verify(logits, ids, draft_probs=dp.to(logits.dtype) if dp.dtype != torch.float32 else dp,
                 seed=s, offset=o)
    K = K1 - 1
    u = philox_uniform((B, K1), s, o)[:, :K]
    p = torch.softmax(logits.float(), -1)
    idx = ids.long()[..., None]
    acc = (u * dp.float().gather(2, idx)[..., 0] < p[:, :K].gather(2, idx)[..., 0]).sum(1).int()
    emit = res.num_accepted.int()
    if maybe_output_accepted_token_num is not None:
        maybe_output_accepted_token_num += acc
        acc = maybe_output_accepted_token_num
    if maybe_output_emitted_draft_token_num is not None:
        maybe_output_emitted_draft_token_num += emit
        emit = maybe_output_emitted_draft_token_num
    return res.tokens.int(), acc, emit


# ============================================================================ token-sparse attention


_SELECT_MODES = {"page": 0, "token": 1}


class PageSummary(NamedTuple):
    """Per-page, per-channel key bounds for ``select="page"`` (Quest).

    kmin, kmax : torch.Tensor
        ``(batch, kv_heads, ceil(tokens / page_size), head_dim)``, the dtype of
        the key cache (min/max of cache values are exact in that dtype).
    page_size : int
    """
    kmin: torch.Tensor
    kmax: torch.Tensor
    page_size: int


def _page_size_arg(x, name="page_size") -> int:
    x = int_arg(x, name)
    if x < 1 or x & (x - 1):
        raise ValueError(f"{name} must be a power of two, got {x}")
    return x


def _check_cache(t, name):
    check_tensor(t, name, dim=4, layout="(batch, kv_heads, tokens, head_dim)", dtypes=FLOAT_DTYPES)


def _last_dense(t):
    """``t`` itself when its last dimension is contiguous (other strides are honoured
    by the kernels), else a contiguous copy: the kernels read rows as vectors."""
    return t if t.dim() == 0 or t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def _lens(seq_lens, name, batch, n, device):
    if seq_lens is None:
        return torch.full((batch,), n, dtype=torch.int64, device=device)
    return row_param(seq_lens, name, batch, device, torch.int64, lo=0, hi=n)


@torch.library.register_fake("softdec::sparse_page_summary")
def _page_summary_fake(k_cache, page_size, seq_lens):
    torch._check(k_cache.dim() == 4, lambda: "k_cache must be 4-D")
    torch._check(page_size > 0 and (page_size & (page_size - 1)) == 0,
                 lambda: "page_size must be a power of two")
    B, H, N, d = k_cache.shape
    P = (N + page_size - 1) // page_size
    return k_cache.new_empty((B, H, P, d)), k_cache.new_empty((B, H, P, d))


@torch.library.register_fake("softdec::sparse_page_summary_update")
def _page_summary_update_fake(kmin, kmax, k_cache, start, end):
    torch._check(kmin.shape == kmax.shape, lambda: "kmax must have the shape of kmin")
    return None


# page bounds only rank pages (a selection): no gradient flows through them
_register_no_backward("sparse_page_summary", "build_page_summary", outputs_differentiable=False)


def build_page_summary(k_cache: torch.Tensor, *, page_size: int = 16,
                       seq_lens: Optional[Union[int, torch.Tensor]] = None) -> PageSummary:
    """Per-page, per-channel key min and max of a KV cache (Quest page summaries).

    Build once (after prefill), then keep current with
    :func:`update_page_summary` as tokens are appended, and pass to
    :func:`sparse_decode_attention` (``page_summary=``) so decoding never
    rescans the cache.

    Parameters
    ----------
    k_cache : torch.Tensor
        ``(batch, kv_heads, tokens, head_dim)``, float32/bfloat16/float16; only
        the last dimension must be contiguous.
    page_size : int, default 16
        Tokens per page, a power of two. Page ``p`` holds tokens
        ``[p * page_size, (p + 1) * page_size)``.
    seq_lens : int or torch.Tensor, optional
        ``(batch,)`` int64 valid lengths (default: every token). Tokens at or
        beyond ``seq_lens[b]`` are ignored; pages with no valid token are 0.

    Returns
    -------
    PageSummary
        ``kmin``, ``kmax`` of shape ``(batch, kv_heads, ceil(tokens / page_size),
        head_dim)`` in the dtype of ``k_cache``, and ``page_size``. A NaN key
        propagates (as ``torch.amin`` / ``amax``): its channel's bounds on that
        page are NaN; page selection ranks a NaN page score last.

    Examples
    --------
    >>> import torch, softdec
    >>> k = torch.randn(1, 2, 64, 8)
    >>> s = softdec.build_page_summary(k, page_size=16)
    >>> tuple(s.kmin.shape)
    (1, 2, 4, 8)

    References
    ----------
    Tang et al., "Quest: Query-Aware Sparsity for Efficient Long-Context LLM
    Inference", ICML 2024. https://arxiv.org/abs/2406.10774
    """
    _check_cache(k_cache, "k_cache")
    page_size = _page_size_arg(page_size)
    k_cache = _last_dense(k_cache)
    B, _, N, _ = k_cache.shape
    lens = _lens(seq_lens, "seq_lens", B, N, k_cache.device)
    kmin, kmax = _ops.sparse_page_summary(k_cache, page_size, lens)
    return PageSummary(kmin, kmax, page_size)


def update_page_summary(summary: PageSummary, k_cache: torch.Tensor, *,
                        start: Union[int, torch.Tensor], end: Union[int, torch.Tensor]) -> PageSummary:
    """Update page summaries in place after tokens ``[start, end)`` were written to the cache.

    Only the pages those tokens touch are recomputed (from the page's first
    token up to ``end``, so the result is exact and calling twice is harmless):
    one page per decoding step, never the whole cache.

    Parameters
    ----------
    summary : PageSummary
        From :func:`build_page_summary` on the same cache; updated in place, so
        ``kmin`` / ``kmax`` must not overlap themselves (an ``expand()``-ed tensor
        is rejected with a ValueError).
    k_cache : torch.Tensor
        ``(batch, kv_heads, tokens, head_dim)``, the key cache holding the new tokens.
    start, end : int or torch.Tensor
        ``(batch,)`` int64 per row: the appended tokens are ``[start[b], end[b])``
        (``start = old length``, ``end = new length``); ``start <= end <= tokens``.

    Returns
    -------
    PageSummary
        ``summary`` itself.

    Examples
    --------
    >>> import torch, softdec
    >>> k = torch.randn(1, 2, 64, 8)
    >>> s = softdec.build_page_summary(k, page_size=16, seq_lens=40)
    >>> k[:, :, 40] = 5.0
    >>> _ = softdec.update_page_summary(s, k, start=40, end=41)
    >>> bool((s.kmax[:, :, 2] == 5.0).all())
    True

    References
    ----------
    Tang et al., "Quest", ICML 2024. https://arxiv.org/abs/2406.10774
    """
    _check_cache(k_cache, "k_cache")
    if not isinstance(summary, PageSummary):
        raise ValueError(f"summary must be a PageSummary (from build_page_summary), got {type(summary).__name__}")
    B, _, N, _ = k_cache.shape
    P = (N + summary.page_size - 1) // summary.page_size
    if summary.kmin.shape != (B, k_cache.shape[1], P, k_cache.shape[3]):
        raise ValueError(f"summary.kmin must have shape {(B, k_cache.shape[1], P, k_cache.shape[3])} "
                         f"for this k_cache and page_size {summary.page_size}, got {tuple(summary.kmin.shape)}")
    k_cache = _last_dense(k_cache)
    s = row_param(start, "start", B, k_cache.device, torch.int64, lo=0, hi=N)
    e = row_param(end, "end", B, k_cache.device, torch.int64, lo=0, hi=N)
    if N == 0:  # an empty cache has no page to update (start = end = 0)
        return summary
    _ops.sparse_page_summary_update(summary.kmin, summary.kmax, k_cache, s, e)
    return summary


def _max_selected(n, budget, page_mode, page_size, sink, window):
    mid = -(-budget // page_size) * page_size if page_mode else budget
    return min(n, sink + window + mid)


@torch.library.register_fake("softdec::sparse_decode_attention")
def _sparse_decode_fake(q, k_cache, v_cache, seq_lens, budget, select, page_size, sink, window, scale,
                        kmin, kmax, return_indices):
    torch._check(q.dim() == 3, lambda: "q must be 3-D")
    torch._check(k_cache.dim() == 4 and v_cache.shape == k_cache.shape, lambda: "bad cache shapes")
    torch._check(q.shape[1] % k_cache.shape[1] == 0, lambda: "q heads must be a multiple of kv heads")
    torch._check(budget > 0, lambda: "budget must be positive")
    B, Hkv, N = k_cache.shape[0], k_cache.shape[1], k_cache.shape[2]
    M = _max_selected(N, budget, select == 0, page_size, sink, window)
    return q.new_empty(q.shape), q.new_empty((B if return_indices else 0, Hkv, M), dtype=torch.int64)


_register_no_backward("sparse_decode_attention", "sparse_decode_attention")


def sparse_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, *,
                            budget: int, select: str = "page", page_size: int = 16, sink: int = 4,
                            window: int = 64, seq_lens: Optional[Union[int, torch.Tensor]] = None,
                            scale: Optional[float] = None, return_indices: bool = False,
                            page_summary: Optional[PageSummary] = None):
    """Decode attention over a selected token set: sink + window + the ``budget`` most relevant tokens.

    Per row ``b`` with ``L = seq_lens[b]`` valid tokens and per KV head, the
    selected set is the first ``sink`` tokens, the last ``window`` tokens and,
    among the tokens in between (the middle):

    - ``select="token"`` (TokenSelect): exact scores ``s_h = scale * q_h . k``;
      every query head of the KV head's group votes with its softmax over the L
      valid tokens, the votes are summed, and the ``budget`` middle tokens with
      the largest summed votes are kept (one set per KV head, shared by its
      query group).
    - ``select="page"`` (Quest): pages are aligned blocks of ``page_size``
      tokens; a page's bound for query head h is ``sum_i max(q_i kmin_i,
      q_i kmax_i)`` (>= every ``q . k`` in the page); a KV head ranks a page by
      the **max** of its query heads' bounds, and the ``ceil(budget /
      page_size)`` top pages overlapping the middle contribute their middle tokens.

    Ties rank the lower token (page) index first; NaN scores rank last. Then
    every query head attends (softmax(scale q.k) v) over its KV head's set.
    ``budget >= L`` selects every token, i.e. dense attention, exactly.
    Tokens at or beyond ``seq_lens[b]`` are never read; ``seq_lens[b] = 0``
    gives a zero output row.

    Parameters
    ----------
    q : torch.Tensor
        ``(batch, q_heads, head_dim)``, float32/bfloat16/float16: one decode query per row.
    k_cache, v_cache : torch.Tensor
        ``(batch, kv_heads, tokens, head_dim)``, dtype of ``q``; ``q_heads`` a
        multiple of ``kv_heads`` (GQA). Only the last dimension must be contiguous.
    budget : int
        Middle tokens to keep (> 0); page mode keeps ``ceil(budget / page_size)`` pages.
    select : {"page", "token"}, default "page"
    page_size : int, default 16
        Power of two (page mode).
    sink : int, default 4
        Leading tokens always attended.
    window : int, default 64
        Trailing tokens always attended.
    seq_lens : int or torch.Tensor, optional
        ``(batch,)`` int64 valid lengths in ``[0, tokens]`` (default: all).
    scale : float, optional
        Softmax scale, default ``1 / sqrt(head_dim)``.
    return_indices : bool, default False
        Also return the selected token indices.
    page_summary : PageSummary, optional
        Precomputed summaries (:func:`build_page_summary`, kept current with
        :func:`update_page_summary`) with the same ``page_size``; computed from
        the cache when absent (page mode only).

    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        ``out`` ``(batch, q_heads, head_dim)`` in the dtype of ``q``; with
        ``return_indices``, also ``indices`` ``(batch, kv_heads, M)`` int64,
        ascending, padded with -1, ``M = min(tokens, sink + window + budget)``
        (page mode: ``budget`` rounded up to whole pages).

    Examples
    --------
    >>> import torch, softdec
    >>> q = torch.randn(1, 8, 64); k = torch.randn(1, 2, 4096, 64); v = torch.randn(1, 2, 4096, 64)
    >>> out = softdec.sparse_decode_attention(q, k, v, budget=256, select="page")
    >>> tuple(out.shape)
    (1, 8, 64)

    References
    ----------
    Tang et al., "Quest: Query-Aware Sparsity for Efficient Long-Context LLM
    Inference", ICML 2024 (https://arxiv.org/abs/2406.10774); Wu et al.,
    "TokenSelect: Efficient Long-Context Inference and Length Extrapolation for
    LLMs via Dynamic Token-Level KV Cache Selection", 2024 (https://arxiv.org/abs/2411.02886).
    """
    check_tensor(q, "q", dim=3, layout="(batch, q_heads, head_dim)", dtypes=FLOAT_DTYPES)
    _check_cache(k_cache, "k_cache")
    _check_cache(v_cache, "v_cache")
    q, k_cache, v_cache = _last_dense(q), _last_dense(k_cache), _last_dense(v_cache)
    if not isinstance(select, str) or select not in _SELECT_MODES:
        raise ValueError(f"select must be 'page' or 'token', got {select!r}")
    budget = int_arg(budget, "budget", lo=1)
    sink = int_arg(sink, "sink", lo=0)
    window = int_arg(window, "window", lo=0)
    page_size = _page_size_arg(page_size)
    if not isinstance(return_indices, bool):
        raise ValueError(f"return_indices must be a bool, got {type(return_indices).__name__} {return_indices!r}")
    B, Hq, d = q.shape
    N = k_cache.shape[2]
    if k_cache.shape[3] != d:
        raise ValueError(f"k_cache must have head_dim {d} like q, got {k_cache.shape[3]}")
    if k_cache.shape[1] == 0 or Hq % k_cache.shape[1] != 0:
        raise ValueError(f"q heads ({Hq}) must be a multiple of the k_cache kv heads ({k_cache.shape[1]})")
    lens = _lens(seq_lens, "seq_lens", B, N, q.device)
    scale = 1.0 / math.sqrt(d) if d > 0 and scale is None else (1.0 if scale is None else float_arg(scale, "scale"))
    kmin = kmax = None
    if page_summary is not None and select == "page":
        if not isinstance(page_summary, PageSummary):
            raise ValueError(f"page_summary must be a PageSummary, got {type(page_summary).__name__}")
        if page_summary.page_size != page_size:
            raise ValueError(f"page_summary.page_size must equal page_size ({page_size}), got {page_summary.page_size}")
        kmin, kmax = page_summary.kmin, page_summary.kmax
    out, idx = _ops.sparse_decode_attention(q, k_cache, v_cache, lens, budget, _SELECT_MODES[select],
                                            page_size, sink, window, float(scale), kmin, kmax,
                                            bool(return_indices))
    return (out, idx) if return_indices else out


@torch.library.register_fake("softdec::token_sparse_prefill")
def _token_sparse_prefill_fake(q, k, v, coverage, min_tokens, window, causal, scale):
    torch._check(q.dim() == 4 and k.dim() == 4 and v.shape == k.shape, lambda: "bad shapes")
    torch._check(q.shape[1] % k.shape[1] == 0, lambda: "q heads must be a multiple of k heads")
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.bool)


_register_no_backward("token_sparse_prefill", "token_sparse_prefill")


def token_sparse_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, coverage: float = 0.005,
                         min_tokens: int = 1024, window: int = 128, causal: bool = True,
                         scale: Optional[float] = None, return_kept: bool = False):
    """Token-sparse prefill attention: per head, drop the low-importance tail, attend densely on the rest.

    Per (row, query head), with ``w = min(window, L)``:

    1. Scores: ``score[j] = sum_{i in last w queries} softmax_i(scale q_i . k)[j]``
       (causal: query i sees keys j <= i), computed a block of query rows at a
       time with an online softmax; no ``[L, L]`` matrix.
    2. Drop: over the non-window tokens in ascending (score, index) order,
       drop the longest prefix whose cumulative score is <= ``coverage *
       sum(score)``, keeping at least ``min(min_tokens, L)`` tokens. The last
       ``w`` tokens (the scoring queries) are always kept. ``coverage = 0``
       keeps every token (exactly dense attention).
    3. Gather Q, K, V (the query head's KV head) to the kept set, run dense
       (causal, by position) attention on it, and scatter the outputs back;
       dropped rows are 0.

    Parameters
    ----------
    q : torch.Tensor
        ``(batch, q_heads, L, head_dim)``, float32/bfloat16/float16.
    k, v : torch.Tensor
        ``(batch, kv_heads, L, head_dim)``, dtype of ``q``; ``q_heads`` a multiple of ``kv_heads``.
    coverage : float, default 0.005
        Score mass that may be dropped, in ``[0, 1)``.
    min_tokens : int, default 1024
        Never keep fewer tokens than this (all when ``L <= min_tokens``).
    window : int, default 128
        Number of trailing queries that score the keys (> 0).
    causal : bool, default True
    scale : float, optional
        Default ``1 / sqrt(head_dim)``.
    return_kept : bool, default False
        Also return the kept mask.

    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        ``out`` ``(batch, q_heads, L, head_dim)`` in the dtype of ``q``; with
        ``return_kept``, also ``kept`` ``(batch, q_heads, L)`` bool.

    Examples
    --------
    >>> import torch, softdec
    >>> q = torch.randn(1, 4, 512, 32); k = torch.randn(1, 2, 512, 32); v = torch.randn(1, 2, 512, 32)
    >>> out, kept = softdec.token_sparse_prefill(q, k, v, coverage=0.2, min_tokens=128, return_kept=True)
    >>> tuple(out.shape), bool(kept[..., -128:].all())
    ((1, 4, 512, 32), True)

    References
    ----------
    "Token Sparse Attention" (2026): per-head Q/K/V compression during
    prefill with scatter-back; Quest/TokenSelect for decoding.
    """
    check_tensor(q, "q", dim=4, layout="(batch, q_heads, tokens, head_dim)", dtypes=FLOAT_DTYPES)
    check_tensor(k, "k", dim=4, layout="(batch, kv_heads, tokens, head_dim)", dtypes=FLOAT_DTYPES)
    check_tensor(v, "v", dim=4, layout="(batch, kv_heads, tokens, head_dim)", dtypes=FLOAT_DTYPES)
    q, k, v = _last_dense(q), _last_dense(k), _last_dense(v)
    coverage = float_arg(coverage, "coverage", lo=0, hi=1, hi_open=True)
    min_tokens = int_arg(min_tokens, "min_tokens", lo=0)
    window = int_arg(window, "window", lo=1)
    for name, flag in (("causal", causal), ("return_kept", return_kept)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be a bool, got {type(flag).__name__} {flag!r}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"q heads ({q.shape[1]}) must be a multiple of the k heads ({k.shape[1]})")
    d = q.shape[3]
    scale = 1.0 / math.sqrt(d) if d > 0 and scale is None else (1.0 if scale is None else float_arg(scale, "scale"))
    out, kept = _ops.token_sparse_prefill(q, k, v, float(coverage), min_tokens, window, bool(causal), float(scale))
    return (out, kept) if return_kept else out


__all__ += ["sparse_decode_attention", "token_sparse_prefill", "build_page_summary", "update_page_summary",
            "PageSummary"]
