"""RNG: counter-based Philox uniforms (the stream every random op draws from).

Public names are re-exported by ``softdec`` (and ``softdec.ops``)."""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Union

import torch

from ._params import (device_arg, rng_state)

_ops = torch.ops.softdec

__all__ = ["philox_uniform", "philox_normal"]


def _shape_dims(shape, *, at_least_1d: bool) -> tuple:
    """``shape`` (an int or a sequence of ints) as a tuple of non-negative ints; ValueError naming
    ``shape`` otherwise (``at_least_1d``: a 0-D shape is refused too)."""
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
    if (at_least_1d and len(dims) == 0) or any(d < 0 for d in dims):
        what = "at least one non-negative size" if at_least_1d else "non-negative sizes"
        raise ValueError(f"shape must hold {what}, got {dims}")
    return dims


def _check_seed_dtype(seed: torch.Tensor) -> None:
    if seed.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"seed must be an int or an int64 tensor, got a {str(seed.dtype).replace('torch.', '')} tensor")


def _output_device(seed, device) -> torch.device:
    """The output device: a tensor seed's own (``device``, if given, must match it), else
    ``device`` (default CPU)."""
    if isinstance(seed, torch.Tensor):
        dev = seed.device
        if device is not None and device_arg(device) != dev:
            raise ValueError(f"device must match the seed tensor's device ({dev}), got {device}")
        return dev
    return device_arg(device) if device is not None else torch.device("cpu")


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
        Output shape ``(B, *rest)``: row ``r`` is the first ``prod(rest)``
        elements of row ``r``'s stream. A shape of fewer than two dimensions
        is one row (row 0), in order.
    seed : int or torch.Tensor
        An int (or 0-D tensor) seed keys row ``r`` by the folded key
        ``softdec.reference.row_seed(seed, r)``, exactly as every random op does with an
        int seed, so ``philox_uniform((B, n), seed, offset)[r]`` is the stream
        row ``r`` of ``sample(logits, seed=seed, offset=offset)`` draws from.
        A ``(B,)`` int64 tensor gives the keys themselves (``shape[0]`` must be
        ``B``): row ``r`` is the raw ``(seed[r], offset[r])`` stream, whatever
        the batch around it (pass ``torch.tensor([key])`` for one raw stream).
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
    dims = _shape_dims(shape, at_least_1d=False)
    if isinstance(seed, torch.Tensor) and seed.dim() != 0:
        _check_seed_dtype(seed)
        if seed.dim() != 1:
            raise ValueError(f"seed must be an int or a 1-D tensor (one seed per row), got shape {tuple(seed.shape)}")
        if len(dims) == 0 or dims[0] != seed.shape[0]:
            raise ValueError(f"shape[0] must equal the number of seeds ({seed.shape[0]}), got shape {dims}")
        rows, n = dims[0], math.prod(dims[1:])
    else:
        rows, n = (dims[0], math.prod(dims[1:])) if len(dims) >= 2 else (1, math.prod(dims))
    dev = _output_device(seed, device)
    if rows * n > 2**60:  # the kernel's limit (numel * 8 bytes must fit in int64)
        raise ValueError(f"philox_uniform: shape {dims} has too many elements ({rows * n}; at most 2**60)")
    s, o = rng_state(seed, offset, rows, dev)
    return _ops.philox_uniform(s, o, n).reshape(dims)


@torch.library.register_fake("softdec::philox_normal")
def _philox_normal_fake(seed, offset, n):
    torch._check(seed.dim() == 1, lambda: "seed must be a 1-D tensor")
    return seed.new_empty((seed.shape[0], n), dtype=torch.float32)


def philox_normal(shape: Union[int, Sequence[int]], seed: Union[int, torch.Tensor],
                  offset: Union[int, torch.Tensor] = 0, *,
                  device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """Standard normals from the Philox stream: exactly the ``eps`` that
    ``soft_mixture(..., embed_noise_std=s)`` adds to its embeddings.

    ``shape`` is ``(rows, n)`` (or ``(n,)``: one row; more dims are
    ``(rows, *rest)`` with ``n = prod(rest)``). Row ``r`` is keyed like row ``r``
    of a ``rows``-row ``soft_mixture`` call with the same ``seed`` / ``offset``
    arguments (the row's ``(seed_r, offset_r)`` as ``soft_mixture`` derives it),
    so ``soft_mixture(x, E, seed=s, offset=o, embed_noise_std=std).embeds``
    minus the same call with ``embed_noise_std=0`` is ``std * philox_normal((B, D), s, o)``
    up to the rounding of the embedding's dtype.

    Counter layout (binding): element ``d`` of a row is Philox4x32-10 with key
    ``(lo32(seed_r), hi32(seed_r))`` and counter ``(lo32(2**63 + d),
    hi32(2**63 + d), lo32(offset_r), hi32(offset_r))``; with lanes ``x0, x1``,
    ``u_j = (x_j + 0.5) / 2**32`` and ``eps = sqrt(-2 log u0) cos(2 pi u1)``
    computed in float64 and rounded to float32. Block indices ``>= 2**63`` are
    never used by the Gumbel (elements ``< V``) or Dirichlet (blocks
    ``< 16 V``) noise of the same stream, so the three never share bits.

    Parameters
    ----------
    shape : int or sequence of int
    seed : int or torch.Tensor
        As ``soft_mixture``'s ``seed`` (an int, or ``(rows,)`` int64 per row).
    offset : int or torch.Tensor, default 0
    device : str or torch.device, optional
        Output device when ``seed`` is an int (default CPU).

    Returns
    -------
    torch.Tensor
        float32 of ``shape``.

    Examples
    --------
    >>> import torch, softdec
    >>> eps = softdec.philox_normal((2, 8), seed=torch.tensor([1, 2]), offset=3)
    >>> eps.shape, eps.dtype
    (torch.Size([2, 8]), torch.float32)
    """
    dims = _shape_dims(shape, at_least_1d=True)
    rows, n = (1, dims[0]) if len(dims) == 1 else (dims[0], math.prod(dims[1:]))
    if isinstance(seed, torch.Tensor):
        _check_seed_dtype(seed)
        if seed.dim() != 1 or seed.shape[0] != rows:
            raise ValueError(f"seed must be an int or a ({rows},) tensor (one seed per row), got shape "
                             f"{tuple(seed.shape)}")
    dev = _output_device(seed, device)
    if rows * n > 2**60:
        raise ValueError(f"philox_normal: shape {dims} has too many elements ({rows * n}; at most 2**60)")
    s, o = rng_state(seed, offset, rows, dev)
    return _ops.philox_normal(s, o, n).reshape(dims)
