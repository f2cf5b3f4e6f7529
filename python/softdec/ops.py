"""Typed wrappers, fake kernels and autograd for every softdec op.

The native kernels live under ``torch.ops.softdec``; the functions here
validate arguments (``ValueError`` naming the argument, the expected and the
actual value), turn per-batch scalars into per-row tensors, and return named
tuples. Each op has a fake (meta) kernel so it works under ``torch.compile``
and ``torch.library.opcheck``.

This module re-exports the per-family modules (``_rng``, ``_sampling``,
``_soft_mixture``, ``_verify``, ``_attention``, ``_log_density``) under one name.
"""

from __future__ import annotations

from . import _attention, _log_density, _rng, _sampling, _soft_mixture, _verify, _verify_tree
from ._attention import *  # noqa: F401,F403
from ._log_density import *  # noqa: F401,F403
from ._rng import *  # noqa: F401,F403
from ._sampling import *  # noqa: F401,F403
from ._soft_mixture import *  # noqa: F401,F403
from ._verify import *  # noqa: F401,F403
from ._verify_tree import *  # noqa: F401,F403

__all__ = [*_rng.__all__, *_soft_mixture.__all__, *_sampling.__all__, *_verify.__all__, *_verify_tree.__all__,
           *_attention.__all__, *_log_density.__all__]
