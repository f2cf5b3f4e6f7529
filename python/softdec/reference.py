"""Pure PyTorch references: the oracles of the tests and the baselines of the
benchmarks. Written for clarity, not speed; tests run them in float64.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["philox4x32_10", "philox_uniform"]

# ============================================================================ RNG

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK = 0xFFFFFFFF


def philox4x32_10(counter, key) -> np.ndarray:
    """Philox4x32-10 on numpy arrays: ``counter`` (..., 4) and ``key`` (..., 2) uint32.

    A direct transcription of the Random123 specification, vectorised over the
    leading dimensions, in uint64 arithmetic.
    """
    c = np.asarray(counter, dtype=np.uint64) & _MASK
    k = np.asarray(key, dtype=np.uint64) & _MASK
    c0, c1, c2, c3 = (c[..., i].copy() for i in range(4))
    k0, k1 = k[..., 0].copy(), k[..., 1].copy()
    for _ in range(10):
        p0 = np.uint64(_M0) * c0
        p1 = np.uint64(_M1) * c2
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ k0) & _MASK, p1 & _MASK, \
                         ((p0 >> np.uint64(32)) ^ c3 ^ k1) & _MASK, p0 & _MASK
        k0 = (k0 + np.uint64(_W0)) & _MASK
        k1 = (k1 + np.uint64(_W1)) & _MASK
    return np.stack([c0, c1, c2, c3], axis=-1).astype(np.uint32)


def philox_uniform(seed: int, offset: int, n: int) -> torch.Tensor:
    """The first ``n`` elements of the ``(seed, offset)`` stream, float32 in (0, 1)."""
    seed &= (1 << 64) - 1
    offset &= (1 << 64) - 1
    nb = (n + 3) // 4
    b = np.arange(nb, dtype=np.uint64)
    ctr = np.stack([b & _MASK, b >> np.uint64(32),
                    np.full(nb, offset & _MASK, np.uint64), np.full(nb, offset >> 32, np.uint64)], -1)
    key = np.broadcast_to(np.array([seed & _MASK, seed >> 32], np.uint64), (nb, 2))
    bits = philox4x32_10(ctr, key).reshape(-1)[:n]
    u = ((bits >> np.uint32(9)).astype(np.float64) + 0.5) / 2.0 ** 23
    return torch.from_numpy(u.astype(np.float32))


# ============================================================================ soft mixture

__all__ += []  # this family's public names


# ============================================================================ sampling

__all__ += []  # this family's public names


# ============================================================================ speculative verification

__all__ += []  # this family's public names


# ============================================================================ token-sparse attention

__all__ += []  # this family's public names

