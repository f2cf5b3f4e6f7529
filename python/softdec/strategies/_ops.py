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
    if name == "soft_mixture":
        return _soft_mixture_any
    return fn


def _soft_mixture_any(logits, embedding, **kw):
    """softdec.soft_mixture, or softdec.distributed.soft_mixture when ``embedding`` is a rank's rows
    of a vocabulary-sharded table (a tensor-parallel model; softdec.distributed.register_table)."""
    import sys
    dist_mod = sys.modules.get("softdec.distributed")
    if dist_mod is not None and dist_mod.table_shard(embedding) is not None:
        return dist_mod.soft_mixture_full_logits(logits, embedding, **kw)
    return softdec.soft_mixture(logits, embedding, **kw)


def has_op(name: str) -> bool:
    return hasattr(softdec, name)
