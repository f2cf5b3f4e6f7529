"""Drop-rule check of token_sparse_prefill with an argued margin for scores computed in fp32.

A backend computes each key score in fp32 (dot products, exp, row sums, the sum over the window rows), so its
score s'_j differs from the float64 score s_j of the same (dtype-rounded) inputs. Bound used: |s'_j - s_j| <=
eps * s_j with eps = 1e-3. Argument, for the test shapes (d <= 128, L <= 2^12, |q|, |k| entries N(0, 1)
rounded to the dtype, scale d^-1/2 or a given constant <= 1):
  - logit q.k * scale: fp32 accumulation of d exact products (bf16 / fp16 products are exact in fp32), error
    <= d * 2^-24 * scale * sum_i |q_i k_i| <= 128 * 6e-8 * 0.1 * 130 ~ 1e-4 absolute in the worst case
    (typically ~1e-6); it enters exp(s - m) as a relative error of the same size, twice (s and the row max);
  - exp: expf / the CPU's vector exp within a few ulp, CUDA's __expf within 2 + 1.17 |x| ulp, |x| <= 40: 5e-6;
  - row sums and the sum over w <= 2^12 window rows in fp32: relative error <= 2^12 * 6e-8 = 2.4e-4 for sums
    of positive terms (worst case; pairwise / tree orders do far better);
  - the kernels' mass test (the CPU's double cumulative sum, CUDA's fp32 block sums of <= 2^12 scores)
    compares sums of the s'_j against coverage x their total: another <= 2.4e-4 relative, absorbed by also
    perturbing the limit by eps.
Total < 6e-4 < eps. A token's decision is fixed for every score vector within that bound unless it is
"ambiguous" (defined in `kept_decisions`); the check requires equality on the others and few ambiguous ones.
"""

from __future__ import annotations

import torch

EPS = 1e-3


def kept_decisions(scores: torch.Tensor, *, coverage: float, min_tokens: int, window: int, eps: float = EPS):
    """(certain_kept, certain_dropped) bool (B, H, L) for every score vector s' with |s' - s| <= eps s.

    The drop rule: candidates (non-window tokens) ascending by (score, index); the longest prefix whose
    cumulative score stays <= coverage * total and whose length is <= dmax is dropped. For candidate t,
    every u with s_u (1 - eps) <= s_t (1 + eps) may precede it, every u with s_u (1 + eps) < s_t (1 - eps)
    surely does. t is surely dropped when the most mass / positions that can precede it still fit, surely
    kept when the least that must precede it already does not."""
    s = scores.double()
    B, H, L = s.shape
    w = min(window, L)
    nc = L - w
    dmax = min(L - w, L - min(L, max(min_tokens, w)))
    keep = torch.ones(B, H, L, dtype=torch.bool)
    drop = torch.zeros(B, H, L, dtype=torch.bool)
    if coverage <= 0 or dmax <= 0 or nc <= 0:
        return keep, drop
    keep[..., :nc] = False
    total = s.sum(-1, keepdim=True)
    lim_lo = coverage * (1 - eps) * total
    lim_hi = coverage * (1 + eps) * total
    c = s[..., :nc]
    lo, hi = c * (1 - eps), c * (1 + eps)
    may = lo[..., None, :] <= hi[..., :, None]    # [.., t, u]: u may precede t (or be t)
    must = hi[..., None, :] < lo[..., :, None]    # u surely precedes t
    up_mass = (may * hi[..., None, :]).sum(-1)  # includes t itself
    up_pos = may.sum(-1)                        # positions up to and including t
    lo_mass = (must * lo[..., None, :]).sum(-1) + lo
    lo_pos = must.sum(-1)
    drop[..., :nc] = (up_mass <= lim_lo) & (up_pos <= dmax)
    keep[..., :nc] = (lo_mass > lim_hi) | (lo_pos >= dmax)
    return keep, drop


def assert_kept_within_margin(kept: torch.Tensor, scores: torch.Tensor, *, coverage: float, min_tokens: int,
                              window: int, max_ambiguous: float = 0.02, eps: float = EPS):
    """kept equals the drop rule on `scores` (float64) wherever the decision is fixed within eps; at most a
    max_ambiguous fraction of the tokens is undecided (so the check keeps its teeth)."""
    kept = kept.cpu()
    sure_keep, sure_drop = kept_decisions(scores, coverage=coverage, min_tokens=min_tokens, window=window, eps=eps)
    assert not bool((sure_keep & sure_drop).any())
    bad_keep = sure_keep & ~kept
    bad_drop = sure_drop & kept
    assert not bool(bad_keep.any()), f"dropped tokens that every score within eps keeps: {bad_keep.nonzero()[:8]}"
    assert not bool(bad_drop.any()), f"kept tokens that every score within eps drops: {bad_drop.nonzero()[:8]}"
    ambiguous = ~(sure_keep | sure_drop)
    assert float(ambiguous.double().mean()) <= max_ambiguous, float(ambiguous.double().mean())
