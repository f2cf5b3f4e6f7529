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
    4. Sort by weight, descending (ties: lower id first). Where fewer than ``k``
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

__all__ += []  # this family's public names


# ============================================================================ speculative verification

__all__ += []  # this family's public names


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


def _is_pow2(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0 and (x & (x - 1)) == 0


def _check_cache(t, name):
    check_tensor(t, name, dim=4, layout="(batch, kv_heads, tokens, head_dim)", dtypes=FLOAT_DTYPES)


def _int_arg(x, name, lo=None):
    if isinstance(x, bool) or not isinstance(x, int):
        raise ValueError(f"{name} must be an int, got {type(x).__name__}")
    if lo is not None and x < lo:
        raise ValueError(f"{name} must be >= {lo}, got {x}")
    return x


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
        head_dim)`` in the dtype of ``k_cache``, and ``page_size``.

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
    if not _is_pow2(page_size):
        raise ValueError(f"page_size must be a power of two, got {page_size}")
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
        From :func:`build_page_summary` on the same cache; updated in place.
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
    s = row_param(start, "start", B, k_cache.device, torch.int64, lo=0, hi=N)
    e = row_param(end, "end", B, k_cache.device, torch.int64, lo=0, hi=N)
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
    if select not in _SELECT_MODES:
        raise ValueError(f"select must be 'page' or 'token', got {select!r}")
    _int_arg(budget, "budget")
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    _int_arg(sink, "sink", 0)
    _int_arg(window, "window", 0)
    if not _is_pow2(page_size):
        raise ValueError(f"page_size must be a power of two, got {page_size}")
    B, Hq, d = q.shape
    N = k_cache.shape[2]
    if k_cache.shape[3] != d:
        raise ValueError(f"k_cache must have head_dim {d} like q, got {k_cache.shape[3]}")
    if k_cache.shape[1] == 0 or Hq % k_cache.shape[1] != 0:
        raise ValueError(f"q heads ({Hq}) must be a multiple of the k_cache kv heads ({k_cache.shape[1]})")
    lens = _lens(seq_lens, "seq_lens", B, N, q.device)
    if scale is None:
        scale = 1.0 / math.sqrt(d) if d > 0 else 1.0
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
    if isinstance(coverage, bool) or not isinstance(coverage, (int, float)) or not (0.0 <= coverage < 1.0):
        raise ValueError(f"coverage must be in [0, 1), got {coverage}")
    _int_arg(min_tokens, "min_tokens", 0)
    _int_arg(window, "window")
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"q heads ({q.shape[1]}) must be a multiple of the k heads ({k.shape[1]})")
    d = q.shape[3]
    if scale is None:
        scale = 1.0 / math.sqrt(d) if d > 0 else 1.0
    out, kept = _ops.token_sparse_prefill(q, k, v, float(coverage), min_tokens, window, bool(causal), float(scale))
    return (out, kept) if return_kept else out


__all__ += ["sparse_decode_attention", "token_sparse_prefill", "build_page_summary", "update_page_summary",
            "PageSummary"]
