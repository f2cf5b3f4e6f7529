"""Soft-token log-densities for policy gradients (SofT-GRPO; Soft Tokens, Hard Truths).

The rollout stores what :func:`softdec.soft_mixture` sampled (``ids``,
``noisy_logits`` or ``weights``, the mixed embedding); the trainer re-scores it
under the current policy's logits with these ops and back-propagates into the
logits. Public names are re-exported by ``softdec`` (and ``softdec.ops``).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

from ._params import FLOAT_DTYPES, below_autograd, check_tensor, float_arg, row_param

_ops = torch.ops.softdec

__all__ = ["gumbel_log_density", "dirichlet_log_density", "gaussian_log_density"]

_LD_DTYPES = FLOAT_DTYPES + (torch.float64,)
_REDUCTIONS = {"none": 0, "sum": 1, "mean": 2}


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------- fake kernels

def _sparse_fake_checks(logits, ids, values):
    torch._check(logits.dim() == 2, lambda: "logits must be a 2-D tensor (batch, vocab)")
    torch._check(ids.dim() == 2 and ids.shape[0] == logits.shape[0], lambda: "ids must be (batch, k)")
    torch._check(values.shape == ids.shape, lambda: "y / weights must have the shape of ids")


@torch.library.register_fake("softdec::gumbel_log_density")
def _gumbel_fake(logits, ids, y, nkept, temperature, noise_scale, clamp_lo, clamp_hi, eps, min_log_weight,
                 reduction):
    _sparse_fake_checks(logits, ids, y)
    shape = tuple(ids.shape) if reduction == 0 else (logits.shape[0],)
    return logits.new_empty(shape, dtype=_acc(logits.dtype))


@torch.library.register_fake("softdec::gumbel_log_density_backward")
def _gumbel_backward_fake(grad, logits, ids, y, nkept, temperature, noise_scale, clamp_lo, clamp_hi, eps,
                          min_log_weight, reduction):
    _sparse_fake_checks(logits, ids, y)
    return (torch.empty_like(logits, memory_format=torch.contiguous_format),
            logits.new_empty(tuple(ids.shape), dtype=_acc(logits.dtype)))


@torch.library.register_fake("softdec::dirichlet_log_density")
def _dirichlet_fake(logits, ids, weights, nkept, temperature, alpha):
    _sparse_fake_checks(logits, ids, weights)
    return logits.new_empty((logits.shape[0],), dtype=_acc(logits.dtype))


@torch.library.register_fake("softdec::dirichlet_log_density_backward")
def _dirichlet_backward_fake(grad, logits, ids, weights, nkept, temperature, alpha):
    _sparse_fake_checks(logits, ids, weights)
    return (torch.empty_like(logits, memory_format=torch.contiguous_format),
            logits.new_empty(tuple(ids.shape), dtype=_acc(logits.dtype)))


@torch.library.register_fake("softdec::gaussian_log_density")
def _gaussian_fake(x, mean, std):
    torch._check(x.dim() == 2 and mean.shape == x.shape, lambda: "x and mean must be (batch, dim)")
    return x.new_empty((x.shape[0],), dtype=_acc(x.dtype))


@torch.library.register_fake("softdec::gaussian_log_density_backward")
def _gaussian_backward_fake(grad, x, mean, std):
    torch._check(x.dim() == 2 and mean.shape == x.shape, lambda: "x and mean must be (batch, dim)")
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(x, memory_format=torch.contiguous_format))


# ---------------------------------------------------------------- autograd

def _gumbel_setup(ctx, inputs, output):
    logits, ids, y, nkept, temperature = inputs[:5]
    ctx.save_for_backward(logits, ids, y, nkept, temperature)
    ctx.scalars = inputs[5:]


def _gumbel_backward(ctx, grad):
    logits, ids, y, nkept, temperature = ctx.saved_tensors
    gl, gy = _ops.gumbel_log_density_backward(grad.contiguous(), logits, ids, y, nkept, temperature, *ctx.scalars)
    return (gl if ctx.needs_input_grad[0] else None, None, gy if ctx.needs_input_grad[2] else None) + (None,) * 8


torch.library.register_autograd("softdec::gumbel_log_density", _gumbel_backward, setup_context=_gumbel_setup)


def _dirichlet_setup(ctx, inputs, output):
    logits, ids, weights, nkept, temperature, alpha = inputs
    ctx.save_for_backward(logits, ids, weights, nkept, temperature)
    ctx.alpha = alpha


def _dirichlet_backward(ctx, grad):
    logits, ids, weights, nkept, temperature = ctx.saved_tensors
    gl, gw = _ops.dirichlet_log_density_backward(grad.contiguous(), logits, ids, weights, nkept, temperature,
                                                 ctx.alpha)
    return (gl if ctx.needs_input_grad[0] else None, None, gw if ctx.needs_input_grad[2] else None, None, None,
            None)


torch.library.register_autograd("softdec::dirichlet_log_density", _dirichlet_backward,
                                setup_context=_dirichlet_setup)


def _gaussian_setup(ctx, inputs, output):
    x, mean, std = inputs
    ctx.save_for_backward(x, mean)
    ctx.std = std


def _gaussian_backward(ctx, grad):
    x, mean = ctx.saved_tensors
    gx, gm = _ops.gaussian_log_density_backward(grad.contiguous(), x, mean, ctx.std)
    return (gx if ctx.needs_input_grad[0] else None, gm if ctx.needs_input_grad[1] else None, None)


torch.library.register_autograd("softdec::gaussian_log_density", _gaussian_backward, setup_context=_gaussian_setup)


# ---------------------------------------------------------------- wrappers

def _sparse_args(logits, ids, values, values_name, temperature, nkept, pad_is):
    """Checked (logits, ids, values, nkept, temperature) for the Gumbel / Dirichlet ops."""
    check_tensor(logits, "logits", dim=2, layout="(batch, vocab)", dtypes=_LD_DTYPES)
    B, V = logits.shape
    if V < 1:
        raise ValueError(f"logits must have at least one column (vocab), got shape {tuple(logits.shape)}")
    dev = logits.device
    check_tensor(ids, "ids", dim=2, layout="(batch, k)", dtypes=(torch.int64,), device=dev, device_of="logits")
    if ids.shape[0] != B:
        raise ValueError(f"ids must have one row per row of logits ({B}), got shape {tuple(ids.shape)}")
    check_tensor(values, values_name, device=dev, device_of="logits")
    if tuple(values.shape) != tuple(ids.shape):
        raise ValueError(f"{values_name} must have the shape of ids {tuple(ids.shape)}, got {tuple(values.shape)}")
    acc = _acc(logits.dtype)
    if values.dtype != acc:
        raise ValueError(f"{values_name} must be {str(acc).replace('torch.', '')} for "
                         f"{str(logits.dtype).replace('torch.', '')} logits (soft_mixture's output dtype), "
                         f"got {str(values.dtype).replace('torch.', '')}")
    if logits.stride(-1) != 1 and logits.numel() > 0:
        logits = logits.contiguous()
    ids = ids.contiguous()
    values = values.contiguous()
    temp = row_param(temperature, "temperature", B, dev, torch.float64, lo=0, lo_open=True)
    if nkept is None:
        # soft_mixture pads the tail of a row: y with -inf, weights with 0
        nk = (values != pad_is).sum(1, dtype=torch.int64)
    else:
        nk = row_param(nkept, "nkept", B, dev, torch.int64, lo=0, hi=ids.shape[1])
    return logits, ids, values, nk, temp


def gumbel_log_density(logits: torch.Tensor, ids: torch.Tensor, y: torch.Tensor, *,
                       temperature: Union[float, torch.Tensor] = 1.0, noise_scale: float = 1.0,
                       gumbel_clamp: Optional[Sequence[float]] = None, gumbel_eps: float = 0.0,
                       nkept: Optional[Union[int, torch.Tensor]] = None, reduction: str = "mean",
                       min_log_weight: Optional[float] = None) -> torch.Tensor:
    """Gumbel log-density of stored noisy logits ``y`` under new ``logits``
    (SofT-GRPO's policy log-probability of a soft token).

    Per row, over the kept entries ``i < nkept`` of ``ids``:

    * ``pi_i`` = ``softmax(logits / T)[ids_i]`` renormalised over the kept ids
      (the vocabulary normaliser cancels, so only the kept logits are read: the
      gradient w.r.t. ``logits`` is zero outside ``ids`` and a non-finite logit
      elsewhere in the row does not matter; a NaN or ``+inf`` kept logit gives
      NaN, a ``-inf`` one ``pi_i = 0``);
    * ``z_i = (y_i - log(pi_i + gumbel_eps)) / noise_scale``, clamped to
      ``gumbel_clamp = (lo, hi)`` when given (the clamp's gradient is 1 inside
      ``[lo, hi]``, 0 outside, as ``torch.clamp``);
    * ``v_i = -log(noise_scale) - z_i - exp(-z_i)``: the log-density of
      ``y_i = log(pi_i + eps) + noise_scale * G_i``, ``G_i ~ Gumbel(0, 1)``,
      including the Jacobian ``-log(noise_scale)`` of the scale (0 at SofT-GRPO's
      scale 1; constant in the logits, so it never changes a gradient);
    * ``reduction``: ``"mean"`` (SofT-GRPO) or ``"sum"`` over the counted
      entries -> ``(B,)``, or ``"none"`` -> ``(B, k)`` with 0 at padded /
      excluded entries. A row with no counted entry gives 0 (and no gradient).

    With ``y = soft_mixture(..., noise="gumbel").noisy_logits`` and the same
    logits, temperature, ``noise_scale`` and ``gumbel_eps``, ``z_i`` is exactly
    the Gumbel draw of the rollout (``-log(-log u)``, ``u`` = element ``ids_i``
    of the row's Philox stream).

    Parameters
    ----------
    logits : torch.Tensor
        (batch, vocab) float32 / bfloat16 / float16 / float64, the current
        policy's logits (before the temperature).
    ids : torch.Tensor
        (batch, k) int64, the rollout's kept ids (``SoftTokens.ids``).
    y : torch.Tensor
        (batch, k) float32 (float64 for float64 logits), the stored noisy
        logits (``SoftTokens.noisy_logits``). Kept entries must be finite
        (NaN / inf: ``ValueError`` on CPU; NaN output for the row on CUDA).
    temperature : float or torch.Tensor
        ``T > 0``, scalar or (batch,): the rollout's temperature.
    noise_scale : float
        ``> 0``, the rollout's Gumbel scale.
    gumbel_clamp : (lo, hi), optional
        Clamp of ``z`` (SofT-GRPO's trainer: ``(-1.5, 3)``); ``lo < hi``.
    gumbel_eps : float
        ``>= 0``: ``log(pi + eps)`` (SofT-GRPO's trainer: ``1e-6``).
    nkept : int or torch.Tensor, optional
        Kept entries per row, in ``[0, k]``; default: the entries with
        ``y > -inf`` (soft_mixture pads the tail of a row with ``-inf``).
    reduction : {"mean", "sum", "none"}
    min_log_weight : float, optional
        Count only entries with ``log(pi + eps) > min_log_weight`` in the sum /
        mean (SofT-GRPO's trainer: ``-3``); default: every kept entry.

    Returns
    -------
    torch.Tensor
        (batch,) or (batch, k) for ``"none"``; float32 (float64 for float64
        logits). Differentiable w.r.t. ``logits`` (dense gradient, logits'
        dtype) and ``y``.

    Examples
    --------
    >>> import torch, softdec
    >>> logits = torch.randn(2, 100)
    >>> tok = softdec.soft_mixture(logits, torch.randn(100, 8), top_k=5, noise="gumbel", seed=0)
    >>> lp = softdec.gumbel_log_density(logits, tok.ids, tok.noisy_logits)
    >>> lp.shape
    torch.Size([2])

    References
    ----------
    Zheng and Lee, "SofT-GRPO: Surpassing Discrete-Token LLM Reinforcement
    Learning via Gumbel-Reparameterized Soft-Thinking Policy Optimization",
    2025 (https://arxiv.org/abs/2511.06411).
    """
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    noise_scale = float_arg(noise_scale, "noise_scale", lo=0, lo_open=True)
    gumbel_eps = float_arg(gumbel_eps, "gumbel_eps", lo=0)
    if gumbel_clamp is None:
        lo, hi = -math.inf, math.inf
    else:
        if isinstance(gumbel_clamp, (str, bytes)) or not hasattr(gumbel_clamp, "__len__") or len(gumbel_clamp) != 2:
            raise ValueError(f"gumbel_clamp must be None or a pair (lo, hi), got {gumbel_clamp!r}")
        lo = float_arg(gumbel_clamp[0], "gumbel_clamp[0]", finite=False)
        hi = float_arg(gumbel_clamp[1], "gumbel_clamp[1]", finite=False)
        if not lo < hi:
            raise ValueError(f"gumbel_clamp must be (lo, hi) with lo < hi, got ({lo}, {hi})")
    mlw = -math.inf if min_log_weight is None else float_arg(min_log_weight, "min_log_weight", finite=False)
    logits, ids, y, nk, temp = _sparse_args(logits, ids, y, "y", temperature, nkept, -math.inf)
    args = (logits, ids, y, nk, temp, noise_scale, lo, hi, gumbel_eps, mlw, _REDUCTIONS[reduction])
    if below_autograd(logits, y):
        with torch._C._AutoDispatchBelowAutograd():
            return _ops.gumbel_log_density.default(*args)
    return _ops.gumbel_log_density.default(*args)


def dirichlet_log_density(logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, *,
                          temperature: Union[float, torch.Tensor] = 1.0, alpha: float = 1.0,
                          nkept: Optional[Union[int, torch.Tensor]] = None) -> torch.Tensor:
    """Dirichlet log-density ``log Dir(weights; alpha * pi)`` of stored mixture
    weights under new ``logits`` (soft_mixture's ``noise="dirichlet"`` draws
    ``w ~ Dir(dirichlet_alpha * w)``).

    Per row, over the kept entries ``i < nkept``: ``pi`` as in
    :func:`gumbel_log_density` (``softmax(logits / T)[ids]`` renormalised over
    the kept ids), ``a_i = alpha * pi_i`` and
    ``lgamma(alpha) - sum_i lgamma(a_i) + sum_i (a_i - 1) log w_i``, float64
    inside. ``w_i`` below ``FLT_MIN`` (a float32 draw that underflowed) counts
    as ``FLT_MIN`` (and gets no gradient). A row with no kept entry gives 0.

    Parameters
    ----------
    logits : torch.Tensor
        (batch, vocab) float32 / bfloat16 / float16 / float64.
    ids : torch.Tensor
        (batch, k) int64 (``SoftTokens.ids``).
    weights : torch.Tensor
        (batch, k) float32 (float64 for float64 logits), ``SoftTokens.weights``:
        the kept entries must be finite, ``>= 0`` and sum to 1 within 1e-3
        (``ValueError`` on CPU; not checked on CUDA).
    temperature : float or torch.Tensor
        ``T > 0``, scalar or (batch,).
    alpha : float
        ``> 0``, soft_mixture's ``dirichlet_alpha``.
    nkept : int or torch.Tensor, optional
        Kept entries per row in ``[0, k]``; default: the entries with
        ``weights != 0`` (soft_mixture pads with 0; a kept float32 draw that
        underflowed to exactly 0 would be taken for padding: pass ``nkept``
        when that can happen, i.e. for small ``alpha * pi``).

    Returns
    -------
    torch.Tensor
        (batch,) float32 (float64 for float64 logits); differentiable w.r.t.
        ``logits`` and ``weights``.
    """
    alpha = float_arg(alpha, "alpha", lo=0, lo_open=True)
    logits, ids, weights, nk, temp = _sparse_args(logits, ids, weights, "weights", temperature, nkept, 0.0)
    args = (logits, ids, weights, nk, temp, alpha)
    if below_autograd(logits, weights):
        with torch._C._AutoDispatchBelowAutograd():
            return _ops.dirichlet_log_density.default(*args)
    return _ops.dirichlet_log_density.default(*args)


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, *, std: float) -> torch.Tensor:
    """``log N(x; mean, std^2 I)`` per row: the embedding-noise density of Soft
    Tokens, Hard Truths (``x = embeds + std * eps``).

    ``-sum_d (x_d - mean_d)^2 / (2 std^2) - D log(std) - D log(2 pi) / 2``,
    accumulated in float32 (float64 for float64 inputs).

    Parameters
    ----------
    x, mean : torch.Tensor
        (batch, dim), the same float dtype (float32 / bfloat16 / float16 /
        float64) and device; ``mean`` is typically ``SoftTokens.embeds``
        (itself differentiable w.r.t. the logits).
    std : float
        ``> 0``.

    Returns
    -------
    torch.Tensor
        (batch,) float32 (float64 for float64 inputs); differentiable w.r.t.
        ``x`` and ``mean``.
    """
    check_tensor(x, "x", dim=2, layout="(batch, dim)", dtypes=_LD_DTYPES)
    check_tensor(mean, "mean", device=x.device, device_of="x")
    if tuple(mean.shape) != tuple(x.shape):
        raise ValueError(f"mean must have the shape of x {tuple(x.shape)}, got {tuple(mean.shape)}")
    if mean.dtype != x.dtype:
        raise ValueError(f"mean must have the dtype of x ({str(x.dtype).replace('torch.', '')}), "
                         f"got {str(mean.dtype).replace('torch.', '')}")
    std = float_arg(std, "std", lo=0, lo_open=True)
    x = x.contiguous()
    mean = mean.contiguous()
    if below_autograd(x, mean):
        with torch._C._AutoDispatchBelowAutograd():
            return _ops.gaussian_log_density.default(x, mean, std)
    return _ops.gaussian_log_density.default(x, mean, std)
