"""Argument handling shared by every op wrapper: per-row parameters, seeds.

Each op accepts per-batch Python scalars or per-row tensors ``[B]`` for its
sampling parameters and for ``seed`` / ``offset``. These helpers turn either
into the 1-D tensors the native ops take, and raise ``ValueError`` naming the
argument, the expected and the actual value.
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from typing import Optional, Union

import torch

RowParam = Union[int, float, torch.Tensor]

_INT64_MIN = -(1 << 63)
_UINT64_END = 1 << 64


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def check_tensor(x, name: str, *, dim: Optional[int] = None, layout: str = "",
                 dtypes=None, device: Optional[torch.device] = None, device_of: str = "") -> torch.Tensor:
    """Validate a tensor argument; returns it unchanged."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if dim is not None and x.dim() != dim:
        raise ValueError(f"{name} must be a {dim}-D tensor {layout}, got shape {_shape(x)}".replace("  ", " "))
    if dtypes is not None and x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise ValueError(f"{name} must have dtype in ({names}), got {str(x.dtype).replace('torch.', '')}")
    if device is not None and x.device != device:
        raise ValueError(f"{name} must be on the same device as {device_of} ({device}), got {x.device}")
    return x


FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def device_arg(device, name: str = "device") -> torch.device:
    """A device argument as a ``torch.device`` that this torch and softdec build can run on."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{name} must be a torch.device or a device string such as 'cpu', got {device!r}") from e
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} must be an available device: CUDA is not available "
                             f"(torch {torch.__version__}, torch.version.cuda = {torch.version.cuda}), "
                             f"got {str(dev)!r}")
        return dev
    raise ValueError(f"{name} must be a CPU or CUDA device, got {str(dev)!r}")

# Per-row parameter tensors built from Python scalars, reused across calls on
# CPU: a decoding loop passes the same temperature / top_k / seed every step,
# and building (and range-checking) six small tensors per call was a large part
# of a B = 1 call. The ops only read these tensors. A key holds the argument's
# name and range, so a hit means the value already passed that check. CUDA
# tensors are not cached (a tensor filled on one stream and read on another
# would race), nor anything while torch.compile traces.
_CONST_ROWS: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
_CONST_ROWS_MAX = 256
_SCALAR_TYPES = (int, float)


def _remember(key, t, device: Optional[torch.device] = None):
    """Cache ``t`` (a tensor, or a tuple of tensors on ``device``) under ``key``."""
    dev = t.device if device is None else device
    if dev.type == "cpu" and not torch.compiler.is_compiling():
        _CONST_ROWS[key] = t
        if len(_CONST_ROWS) > _CONST_ROWS_MAX:
            _CONST_ROWS.popitem(last=False)
    return t


def scalar_rows(key: tuple, batch: int, device: torch.device, build, *args):
    """The per-row tensors of one op's scalar settings, built once per setting.

    ``key`` holds the op's name and its scalar arguments, with their types
    where values that compare equal would build differently (a hit means the
    same values already passed ``build``'s checks);
    ``build(batch, device, *args)`` returns the tuple of ``[batch]`` tensors. A decoding loop calls an op with
    the same settings every step: one lookup replaces one ``row_param`` each.
    """
    full = (key, batch, device)
    t = _CONST_ROWS.get(full)
    if t is not None and not torch.compiler.is_compiling():
        return t
    return _remember(full, build(batch, device, *args), device)


def const_row(value, batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A ``[batch]`` tensor filled with ``value`` (shared and read-only on CPU)."""
    key = ("", type(value), value, batch, dtype, device)
    t = _CONST_ROWS.get(key)
    if t is None or torch.compiler.is_compiling():
        t = _remember(key, torch.full((batch,), value, dtype=dtype, device=device))
    return t


_INT64_MAX = (1 << 63) - 1
_NAME_OF = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
            torch.bfloat16: "bfloat16", torch.int64: "int64", torch.int32: "int32"}
# Per-row tensors accepted for integer / floating-point parameters. bool, uint8
# (a mask's dtype), int8/int16 and complex tensors are refused: they are far
# more often a mistake than a parameter.
INT_ROW_DTYPES = (torch.int64, torch.int32)
FLOAT_ROW_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def _type_name(v) -> str:
    t = type(v)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__name__}"


def int_arg(value, name: str, *, lo=None, hi=None) -> int:
    """A Python int argument, checked: the one integer checker of every op.

    Accepts ``int`` and numpy integers; refuses bools (``True`` is an int in
    Python, never a meaningful size), floats (also integral ones: ``top_k=2.7``
    must not become 2), tensors, strings; checks the int64 range and ``[lo, hi]``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {_type_name(value)} {value!r}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{name} must be {_range_text(lo, hi, False, False)}, got {v}")
    if not _INT64_MIN <= v <= _INT64_MAX:
        raise ValueError(f"{name} must fit in int64 (|value| < 2**63), got {v}")
    return v


def float_arg(value, name: str, *, lo=None, hi=None, lo_open: bool = False, hi_open: bool = False,
              finite: bool = True) -> float:
    """A Python real argument as a float, checked: the one float checker of every op.

    Accepts ``int``, ``float`` and numpy reals; refuses bools, complex, tensors,
    strings, NaN, infinities (unless ``finite=False`` and the range allows
    them) and values outside the range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {_type_name(value)} {value!r}")
    try:
        v = float(value)
    except OverflowError:  # an int beyond float's range
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    if v != v:
        raise ValueError(f"{name} must not be NaN, got nan")
    if finite and math.isinf(v):
        what = _range_text(lo, hi, lo_open, hi_open) if (lo is not None or hi is not None) else ""
        raise ValueError(f"{name} must be a finite number{' ' + what if what else ''}, got {v}")
    _check_range_scalar(v, name, lo, hi, lo_open, hi_open)
    return v


def row_param(value: RowParam, name: str, batch: int, device: torch.device, dtype: torch.dtype,
              *, lo=None, hi=None, lo_open: bool = False, hi_open: bool = False,
              finite: bool = True) -> torch.Tensor:
    """A per-batch scalar or per-row tensor as a ``[batch]`` tensor of ``dtype``.

    Python scalars go through :func:`int_arg` / :func:`float_arg` (by
    ``dtype``). Tensors must be 0-D or ``(batch,)``, on ``device``, of an
    integer dtype in ``INT_ROW_DTYPES`` for integer parameters or a float
    dtype in ``FLOAT_ROW_DTYPES`` for float ones. Range checks
    (``lo``/``hi``, open or closed; NaN always, infinities when ``finite``)
    are applied to Python scalars always and to tensors only outside
    torch.compile tracing (a data-dependent check would break the graph); the
    native op checks tensors again.
    """
    if type(value) in _SCALAR_TYPES:
        key = (name, type(value), value, batch, dtype, device, lo, hi, lo_open, hi_open, finite)
        t = _CONST_ROWS.get(key)
        if t is not None and not torch.compiler.is_compiling():
            return t
        if dtype.is_floating_point:
            v = float_arg(value, name, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open, finite=finite)
        else:
            v = int_arg(value, name, lo=lo, hi=hi)
            _check_range_scalar(v, name, lo, hi, lo_open, hi_open)
        return _remember(key, torch.full((batch,), v, dtype=dtype, device=device))
    if isinstance(value, torch.Tensor):
        t = value
        if t.dim() == 0:
            t = t.reshape(1).expand(batch)
        if t.dim() != 1 or t.shape[0] != batch:
            raise ValueError(f"{name} must be a scalar or a tensor of shape ({batch},), got shape {_shape(value)}")
        ok = FLOAT_ROW_DTYPES if dtype.is_floating_point else INT_ROW_DTYPES
        if t.dtype not in ok:
            kind = "a floating-point" if dtype.is_floating_point else "an integer"
            names = ", ".join(dtype_name(d) for d in ok)
            raise ValueError(f"{name} must be {kind} tensor ({names}), got {dtype_name(t.dtype)}")
        if t.device != device:
            raise ValueError(f"{name} must be on the same device as the input ({device}), got {t.device}")
        if t.dtype != dtype:
            t = t.to(dtype)
        if not t.is_contiguous():
            t = t.contiguous()
        if lo is not None or hi is not None or dtype.is_floating_point:
            if not torch.compiler.is_compiling() and t.numel() > 0:
                _check_range_tensor(t, name, lo, hi, lo_open, hi_open, finite)
        return t
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        kind = "a number" if dtype.is_floating_point else "an int"
        shown = f"{_type_name(value)} {value!r}" if isinstance(value, (bool, str)) else _type_name(value)
        raise ValueError(f"{name} must be {kind} or a tensor of shape ({batch},), got {shown}")
    # other numbers (numpy scalars, fractions, complex): checked as the Python number
    if dtype.is_floating_point:
        return row_param(float_arg(value, name, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open, finite=finite),
                         name, batch, device, dtype, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open, finite=finite)
    return row_param(int_arg(value, name, lo=lo, hi=hi), name, batch, device, dtype, lo=lo, hi=hi,
                     lo_open=lo_open, hi_open=hi_open)


def _range_text(lo, hi, lo_open, hi_open) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    return f"{'<' if hi_open else '<='} {hi}"


def _check_range_scalar(v, name, lo, hi, lo_open, hi_open):
    bad = False
    if lo is not None:
        bad |= v <= lo if lo_open else v < lo
    if hi is not None:
        bad |= v >= hi if hi_open else v > hi
    if bad:
        raise ValueError(f"{name} must be {_range_text(lo, hi, lo_open, hi_open)}, got {v}")


def _check_range_tensor(t, name, lo, hi, lo_open, hi_open, finite=True):
    bad = torch.zeros_like(t, dtype=torch.bool)
    if t.is_floating_point():
        bad |= torch.isnan(t)
        if finite:
            bad |= torch.isinf(t)
    if lo is not None:
        bad |= (t <= lo) if lo_open else (t < lo)
    if hi is not None:
        bad |= (t >= hi) if hi_open else (t > hi)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        v = t[i].item()
        what = _range_text(lo, hi, lo_open, hi_open) if (lo is not None or hi is not None) else ""
        if t.is_floating_point() and not math.isfinite(v):
            what = "finite" + (" and " + what if what else "")
        raise ValueError(f"{name} must be {what}, got {v} at row {i}")


def below_autograd(*tensors: torch.Tensor) -> bool:
    """True when no gradient can flow through these inputs (eager mode only).

    The ops' autograd formulas are registered from Python
    (``torch.library.register_autograd``), so every call, even one that needs
    no gradient, passes through a Python autograd kernel first. Wrappers call
    the op under ``torch._C._AutoDispatchBelowAutograd()`` when this is True,
    which is what that kernel does itself in that case, minus its cost.
    """
    if torch.compiler.is_compiling():
        return False
    if not torch.is_grad_enabled():
        return True
    for t in tensors:  # (a loop, not any() over a generator: this runs every call)
        if t.requires_grad:
            return False
    return True


def _seed_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ValueError(f"{name} must be an int or an int64 tensor, got {type(v).__name__}")
    v = int(v)
    if not (_INT64_MIN <= v < _UINT64_END):
        raise ValueError(f"{name} must fit in 64 bits, got {v}")
    return v - _UINT64_END if v >= (1 << 63) else v


# ---- int seed -> per-row keys (DESIGN: "an int seed gives every row an independent stream")
#
# Row b of a call with the int seed s draws from the Philox key
#     row_seed(s, b) = mix64(mix64(s mod 2**64) + GOLDEN * (b + 1) mod 2**64)
# read as a signed int64, where mix64 is splitmix64's finaliser:
#     z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 mod 2**64
#     z = (z ^ (z >> 27)) * 0x94D049BB133111EB mod 2**64
#     mix64(z) = z ^ (z >> 31)
# and GOLDEN = 0x9E3779B97F4A7C15. The inner mix64 makes the keys of two seeds
# unrelated (no (s, b) == (s', b') collision short of a 64-bit coincidence);
# the outer one is splitmix64's output b + 1 from that state. A [B] seed tensor
# is used as given (row b's key is seed[b]).
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_M64 = (1 << 64) - 1


def _signed64(v: int) -> int:
    return v - _UINT64_END if v >= (1 << 63) else v


def mix64(z: int) -> int:
    """splitmix64's finaliser on a 64-bit unsigned int (Python ints; exact)."""
    z &= _M64
    z = ((z ^ (z >> 30)) * _MIX1) & _M64
    z = ((z ^ (z >> 27)) * _MIX2) & _M64
    return z ^ (z >> 31)


def row_seed(seed: int, row: int) -> int:
    """The Philox key (signed int64) of row ``row`` under the int ``seed`` (pure Python)."""
    return _signed64(mix64((mix64(seed) + _GOLDEN * (row + 1)) & _M64))


def _lsr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of an int64 tensor (torch's >> is arithmetic)."""
    return torch.bitwise_and(torch.bitwise_right_shift(z, k), (1 << (64 - k)) - 1)


def _mix64_t(z: torch.Tensor) -> torch.Tensor:
    # int64 multiplication wraps modulo 2**64 (two's complement), as the formula needs
    z = torch.bitwise_xor(z, _lsr(z, 30)) * _signed64(_MIX1)
    z = torch.bitwise_xor(z, _lsr(z, 27)) * _signed64(_MIX2)
    return torch.bitwise_xor(z, _lsr(z, 31))


def _keys_from_base(base: torch.Tensor, batch: int) -> torch.Tensor:
    rows = torch.arange(1, batch + 1, dtype=torch.int64, device=base.device)
    return _mix64_t(rows * _signed64(_GOLDEN) + base)


# Under torch.compile the keys are built by an opaque op: inductor folds arithmetic
# on an arange into its index expressions, and there ``row * GOLDEN`` (which must wrap
# modulo 2**64) came out wrong for some rows (torch 2.13, CPU), so the graph must not
# see that arithmetic.
@torch.library.custom_op("softdec::_row_seeds", mutates_args=())
def _row_seeds_op(base: torch.Tensor, batch: int) -> torch.Tensor:
    return _keys_from_base(base, batch)


@_row_seeds_op.register_fake
def _(base, batch):
    return base.new_empty((batch,))


def _fold(base: torch.Tensor, batch: int) -> torch.Tensor:
    if torch.compiler.is_compiling():
        return _row_seeds_op(base, batch)
    return _keys_from_base(base, batch)


def row_seeds(seed: int, batch: int, device: torch.device) -> torch.Tensor:
    """``[row_seed(seed, b) for b in range(batch)]`` as an int64 ``[batch]`` tensor on ``device``.

    ``seed``: an int, or a 0-D integer tensor (folded the same way, on its device).

    Built with a few elementwise tensor ops on ``device`` (no host-device copy
    of the keys; under torch.compile an opaque op) and cached per
    ``(seed, batch)`` on CPU like the other constant rows.
    """
    if isinstance(seed, torch.Tensor):  # a 0-D tensor: an int seed that stays a tensor (e.g. under compile)
        if seed.dtype not in INT_ROW_DTYPES:
            raise ValueError(f"seed must be an int or an int64 tensor, got a {dtype_name(seed.dtype)} tensor")
        if seed.device != device:
            raise ValueError(f"seed must be on the same device as the input ({device}), got {seed.device}")
        return _fold(_mix64_t(seed.to(torch.int64)), batch)
    key = ("#row_seeds", seed, batch, device)
    t = _CONST_ROWS.get(key) if type(seed) is int else None
    if t is not None and not torch.compiler.is_compiling():
        return t
    s = _seed_int(seed, "seed")
    key = ("#row_seeds", s, batch, device)
    if device.type == "cpu" and batch <= 32 and not torch.compiler.is_compiling():
        # a few rows: the formula in Python ints (~1 us a row) beats ten tensor ops
        base = mix64(s)
        t = torch.tensor([_signed64(mix64((base + _GOLDEN * (b + 1)) & _M64)) for b in range(batch)],
                         dtype=torch.int64)
    else:
        t = _fold(torch.tensor(_signed64(mix64(s)), dtype=torch.int64, device=device), batch)
    return _remember(key, t)


def rng_state(seed, offset, batch: int, device: torch.device,
              generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(seed, offset)`` int64 tensors of shape ``[batch]``.

    ``seed=None`` draws one independent seed per row from ``generator`` (or
    torch's default generator for ``device``), advancing it. An int seed gives
    row ``b`` the key :func:`row_seed` ``(seed, b)`` (independent rows: a
    repeated prompt draws independent samples; the same (seed, row) always
    draws the same); so does a 0-D tensor. A ``[batch]`` tensor is used as
    given: row ``b``'s key is ``seed[b]``, whatever the batch around it.
    """
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {_type_name(generator)}")
    if seed is None:
        gen_device = generator.device if generator is not None else device
        s = torch.randint(_INT64_MIN, (1 << 63) - 1, (batch,), dtype=torch.int64,
                          generator=generator, device=gen_device)
        s = s.to(device)
    elif isinstance(seed, torch.Tensor) and seed.dim() != 0:
        s = _per_row_int64(seed, "seed", batch, device)
    else:
        s = row_seeds(seed, batch, device)
    return s, _per_row_int64(offset, "offset", batch, device)


def _per_row_int64(v, name: str, batch: int, device: torch.device) -> torch.Tensor:
    """An int (shared by every row) or a ``[batch]`` integer tensor as int64 ``[batch]``."""
    if type(v) is int and _INT64_MIN <= v < (1 << 63):
        return const_row(v, batch, torch.int64, device)
    if not isinstance(v, torch.Tensor):
        return const_row(_seed_int(v, name), batch, torch.int64, device)
    if v.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name} must be an int or an int64 tensor, got a {str(v.dtype).replace('torch.', '')} tensor")
    t = v.reshape(1).expand(batch) if v.dim() == 0 else v
    if t.dim() != 1 or t.shape[0] != batch:
        raise ValueError(f"{name} must be an int or a tensor of shape ({batch},), got shape {_shape(v)}")
    if t.device != device:
        raise ValueError(f"{name} must be on the same device as the input ({device}), got {t.device}")
    if t.dtype != torch.int64:
        t = t.to(torch.int64)
    return t if t.is_contiguous() else t.contiguous()


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


