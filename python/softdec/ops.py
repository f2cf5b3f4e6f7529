"""Typed wrappers, fake kernels and autograd for every softdec op.

The native kernels live under ``torch.ops.softdec``; the functions here
validate arguments (``ValueError`` naming the argument, the expected and the
actual value), turn per-batch scalars into per-row tensors, and return named
tuples. Each op has a fake (meta) kernel so it works under ``torch.compile``
and ``torch.library.opcheck``.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Union

import torch

from ._params import FLOAT_DTYPES, check_tensor, rng_state, row_param  # noqa: F401

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
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int):
            raise ValueError(f"shape must be a sequence of ints, got {shape!r}")
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
        if device is not None and torch.device(device) != dev:
            raise ValueError(f"device must match the seed tensor's device ({dev}), got {device}")
        rows, n = dims[0], math.prod(dims[1:])
    else:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        rows, n = 1, math.prod(dims)
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


def _finite_number(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    return float(v)


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
    if noise not in _SM_NOISE:
        raise ValueError(f"noise must be None, 'gumbel' or 'dirichlet', got {noise!r}")
    tau = _finite_number(tau, "tau")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    noise_scale = _finite_number(noise_scale, "noise_scale")
    dirichlet_alpha = _finite_number(dirichlet_alpha, "dirichlet_alpha")
    if dirichlet_alpha <= 0:
        raise ValueError(f"dirichlet_alpha must be > 0, got {dirichlet_alpha}")
    embed_scale = _finite_number(embed_scale, "embed_scale")
    dev = logits.device
    if isinstance(top_k, torch.Tensor):
        k = int(top_k.max()) if top_k.numel() else 1
    else:
        if isinstance(top_k, bool) or not isinstance(top_k, int):
            raise ValueError(f"top_k must be an int or an int tensor, got {type(top_k).__name__}")
        k = top_k
    if not 1 <= k <= _SM_MAX_K:
        raise ValueError(f"top_k must be in [1, {_SM_MAX_K}], got {k}")
    kt = row_param(top_k, "top_k", B, dev, torch.int64, lo=1, hi=_SM_MAX_K)
    temp = row_param(temperature, "temperature", B, dev, torch.float64, lo=0)
    tp = row_param(top_p, "top_p", B, dev, torch.float64, lo=0, hi=1, lo_open=True)
    mp = row_param(min_p, "min_p", B, dev, torch.float64, lo=0, hi=1)
    if noise is None and seed is None:
        s = torch.zeros(B, dtype=torch.int64, device=dev)
        _, o = rng_state(0, offset, B, dev)
    else:
        s, o = rng_state(seed, offset, B, dev, generator)
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    if embedding.stride(-1) != 1:
        embedding = embedding.contiguous()
    out = _ops.soft_mixture(logits, embedding, temp, kt, tp, mp, s, o, k, _SM_NOISE[noise], tau,
                            noise_scale, dirichlet_alpha, embed_scale)
    return SoftTokens(out[0], out[1], out[2], out[3], out[4], out[5],
                      out[6] if noise == "gumbel" else None)


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
    ``p < min_p * max p``). The draw is Gumbel-max over the kept set,
    ``argmax_i logits_i / T + G_i``, with ``G_i = -log(-log u_i)`` and ``u_i``
    element ``i`` of the row's ``(seed, offset)`` Philox stream
    (:func:`philox_uniform`), so no sort is needed, a row's draw depends only on
    its own logits and ``(seed, offset)``, and CPU and CUDA draw the same stream.

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
    Gumbel-max trick: Gumbel (1954); Maddison et al., "A* Sampling", NeurIPS 2014.
    Min-p: Nguyen et al., "Turning Up the Heat: Min-p Sampling", 2024.
    """
    logits = _sampling_rows(logits, "logits")
    B = logits.shape[0]
    dev = logits.device
    t = row_param(temperature, "temperature", B, dev, torch.float32, lo=0.0)
    k = row_param(top_k, "top_k", B, dev, torch.int64, lo=0)
    p = row_param(top_p, "top_p", B, dev, torch.float32, lo=0.0, hi=1.0)
    mp = row_param(min_p, "min_p", B, dev, torch.float32, lo=0.0, hi=1.0)
    s, o = rng_state(seed, offset, B, dev, generator)
    ids, valid = _ops.sample(logits, t, k, p, mp, s, o)
    return Sampled(ids, valid)


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
    >>> torch.equal(h.argmax(-1), softdec.sample(x, seed=torch.tensor([3, 4])).ids)
    True

    References
    ----------
    Jang et al., "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017;
    Maddison et al., "The Concrete Distribution", ICLR 2017.
    """
    logits = _sampling_rows(logits, "logits")
    B, V = logits.shape
    dev = logits.device
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise ValueError(f"top_k must be an int, got {type(top_k).__name__}")
    if top_k < 0 or (top_k > V and B > 0):
        raise ValueError(f"top_k must be in [0, vocab] = [0, {V}], got {top_k}")
    t = row_param(tau, "tau", B, dev, torch.float32, lo=0.0, lo_open=True)
    s, o = rng_state(seed, offset, B, dev, generator)
    if top_k == 0:
        y, am = _ops.gumbel_softmax(logits, t, s, o)
        if not hard:
            return y
        y_hard = torch.zeros_like(y).scatter(1, am[:, None], 1.0)
        return y_hard - y.detach() + y
    w, ids = _ops.gumbel_softmax_topk(logits, t, top_k, s, o)
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
        (batch, vocab), ``logits``' dtype. NaN entries are never kept (they become -inf).

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
        inf, a negative entry or no positive entry are all zero.

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

__all__ += []  # this family's public names


# ============================================================================ token-sparse attention

__all__ += []  # this family's public names

