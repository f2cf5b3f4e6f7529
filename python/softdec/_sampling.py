"""Sampling: exact draws with filtering, Gumbel-softmax, and the standalone filters.

Public names are re-exported by ``softdec`` (and ``softdec.ops``)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from ._params import (FLOAT_DTYPES, below_autograd, check_tensor, int_arg, rng_state, row_param, scalar_rows,
                      _SCALAR_TYPES, _register_no_backward)

from ._params import RowParam

_ops = torch.ops.softdec

__all__ = ["Sampled", "sample", "gumbel_softmax", "top_k_mask_logits", "top_p_renorm_probs",
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
        An int gives every row an independent stream: row ``b`` is keyed by
        ``softdec.reference.row_seed(seed, b)`` (so identical rows draw
        independently, and the same (seed, row) draws the same). A (batch,)
        int64 tensor gives each row its own key as is (a row's draw never
        depends on the batch around it). ``None`` draws one independent seed
        per row from ``generator``.
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
