"""The softdec ops the strategies call, looked up at call time.

Every strategy goes through ``softdec.soft_mixture``, ``softdec.sample`` and
``softdec.verify``. A missing op (a build of softdec without that family)
raises a clear ``RuntimeError`` at the first call instead of at import.
"""

from __future__ import annotations

import softdec


def op(name: str):
    fn = getattr(softdec, name, None)
    if fn is None:
        raise RuntimeError(f"softdec.{name} is not available in this build of softdec "
                           f"({softdec.__version__}); the strategy needs it")
    return fn


def has_op(name: str) -> bool:
    return hasattr(softdec, name)
