"""Speculative verification: exact, greedy, typical, relaxed and soft acceptance.

Public names are re-exported by ``softdec`` (and ``softdec.ops``)."""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch

from ._params import (FLOAT_DTYPES, check_tensor, float_arg, int_arg, rng_state, row_param,
                      _register_no_backward)
from ._rng import philox_uniform

_ops = torch.ops.softdec


__all__ = ["Verified", "verify", "chain_speculative_sampling"]

_VERIFY_METHODS = {"exact": 0, "greedy": 1, "typical": 2, "relaxed": 3, "soft": 4}
_SPARSE_SUM_TOL = 1e-3


def _sparse_sum_tol(dtype: torch.dtype, k: int) -> float:
    """How far a sparse draft's weights may sum from 1: 1e-3, plus k unit roundoffs
    of their dtype (weights summing to 1 before a cast to bfloat16 move by up to
    one unit roundoff of their sum; k of them allow weights computed in that dtype)."""
    return _SPARSE_SUM_TOL + k * torch.finfo(dtype).eps / 2


def _draft_probs_arg(draft_probs, tl, B: int, n: int, V: int, axis: str, mcode: int):
    """Checks ``draft_probs`` of verify (``axis`` "K": the drafted positions) and verify_tree
    (``axis`` "nodes"): None, dense ``(batch, n, vocab)`` or sparse ``(ids, weights)``, each
    ``(batch, n, k)``. Returns ``(sparse, dense, ids, weights, sum_tol)``; ``sum_tol`` (how far a
    sparse draft's weights may sum from 1) is None unless the draft is sparse."""
    dev = tl.device
    sparse = isinstance(draft_probs, (tuple, list))
    dense = sid = sw = sum_tol = None
    if sparse:
        if len(draft_probs) != 2:
            raise ValueError(f"draft_probs as a tuple must be (ids, weights), got {len(draft_probs)} items")
        sid = check_tensor(draft_probs[0], "draft_probs ids", dim=3, layout=f"(batch, {axis}, k)",
                           dtypes=(torch.int64, torch.int32), device=dev, device_of="target_logits")
        sw = check_tensor(draft_probs[1], "draft_probs weights", dim=3, layout=f"(batch, {axis}, k)",
                          dtypes=FLOAT_DTYPES, device=dev, device_of="target_logits")
        if tuple(sid.shape[:2]) != (B, n) or sid.shape[2] < 1:
            raise ValueError(f"draft_probs ids must have shape (batch, {axis}, k) = ({B}, {n}, k >= 1) to match "
                             f"target_logits {tuple(tl.shape)}, got {tuple(sid.shape)}")
        if sw.shape != sid.shape:
            raise ValueError(f"draft_probs weights must have the shape of its ids {tuple(sid.shape)}, "
                             f"got {tuple(sw.shape)}")
        sum_tol = _sparse_sum_tol(sw.dtype, sw.shape[2])
        sid = sid.to(torch.int64).contiguous()
        sw = sw.to(torch.float32).contiguous()
    elif draft_probs is not None:
        dense = check_tensor(draft_probs, "draft_probs", dim=3, layout=f"(batch, {axis}, vocab)",
                             dtypes=FLOAT_DTYPES, device=dev, device_of="target_logits")
        if tuple(dense.shape) != (B, n, V):
            raise ValueError(f"draft_probs must have shape (batch, {axis}, vocab) = ({B}, {n}, {V}) to match "
                             f"target_logits {tuple(tl.shape)}, got {tuple(dense.shape)}")
        if dense.dtype != tl.dtype and dense.dtype != torch.float32:
            dense = dense.to(torch.float32)
        if dense.stride(-1) != 1:
            dense = dense.contiguous()
    if mcode == 4 and not sparse:
        raise ValueError(f"method 'soft' needs sparse draft_probs (ids (batch, {axis}, k), weights (batch, {axis}, k))")
    return sparse, dense, sid, sw, sum_tol


class Verified(NamedTuple):
    """Result of :func:`verify`.

    tokens : torch.Tensor
        (batch, K + 1) int64. ``tokens[b, :num_accepted[b]]`` are the accepted
        drafts, ``tokens[b, num_accepted[b]]`` the correction or bonus token (or
        -1 where the target row at that position is invalid: NaN, +inf or all -inf),
        and the rest is -1.
    num_accepted : torch.Tensor
        (batch,) int64, accepted drafts per row, ``0 <= num_accepted[b] <= num_draft[b]``.
    soft_ids : torch.Tensor or None
        (batch, k) int64, method "soft" only: the target's soft token at the
        stop position (ids sorted by weight descending, padded with the top id).
    soft_weights : torch.Tensor or None
        (batch, k) float32, method "soft" only: its weights (zeros for an invalid row).
    """
    tokens: torch.Tensor
    num_accepted: torch.Tensor
    soft_ids: Optional[torch.Tensor]
    soft_weights: Optional[torch.Tensor]


@torch.library.register_fake("softdec::verify")
def _verify_fake(target_logits, draft_ids, num_draft, draft_probs, sparse_ids, sparse_weights,
                 neighbours, method, temperature, top_k, top_p, min_p, posterior_threshold,
                 posterior_alpha, delta, seed, offset, filter_top_k=None):
    torch._check(filter_top_k is None or method == 4,
                 lambda: "filter_top_k is only defined for method 'soft'")
    torch._check(target_logits.dim() == 3, lambda: "target_logits must be 3-D (batch, K+1, vocab)")
    B, K1, V = target_logits.shape
    torch._check(K1 >= 1, lambda: "target_logits must have K+1 >= 1 positions")
    torch._check(draft_ids.dim() == 2 and draft_ids.shape[0] == B and draft_ids.shape[1] == K1 - 1,
                 lambda: "draft_ids must have shape (batch, K)")
    torch._check(num_draft.shape == (B,), lambda: "num_draft must have shape (batch,)")
    if draft_probs is not None:
        torch._check(draft_probs.shape == (B, K1 - 1, V), lambda: "draft_probs must be (batch, K, vocab)")
    if sparse_ids is not None:
        torch._check(sparse_weights is not None and sparse_ids.shape == sparse_weights.shape,
                     lambda: "sparse ids and weights must have the same shape")
    ks = sparse_ids.shape[2] if (method == 4 and sparse_ids is not None) else 0
    return (target_logits.new_empty((B, K1), dtype=torch.int64),
            target_logits.new_empty((B,), dtype=torch.int64),
            target_logits.new_empty((B, ks), dtype=torch.int64),
            target_logits.new_empty((B, ks), dtype=torch.float32))


def _verify_filter(filter_top_k, top_k, tk, ks, B, dev, V):
    """filter_top_k of method 'soft', checked: a (B,) int64 tensor (values >= V become 0)."""
    if not isinstance(filter_top_k, torch.Tensor):
        f = int_arg(filter_top_k, "filter_top_k", lo=0)
        if f >= V:
            f = 0
        if f != 0 and not isinstance(top_k, torch.Tensor):
            kk = min(int(top_k), ks) if int(top_k) > 0 else ks
            if f > _MAX_FILTER_TOP_K:
                raise ValueError(f"filter_top_k must be 0 (the whole vocabulary), >= vocab, or in "
                                 f"[top_k, {_MAX_FILTER_TOP_K}], got {f}")
            if f < kk:
                raise ValueError(f"top_k (the output width, {kk}) must be <= filter_top_k ({f}) "
                                 f"when filter_top_k > 0")
        return torch.full((B,), f, dtype=torch.int64, device=dev)
    fk = row_param(filter_top_k, "filter_top_k", B, dev, torch.int64, lo=0)
    fk = torch.where(fk >= V, torch.zeros_like(fk), fk)
    if not torch.compiler.is_compiling() and B:
        kk = torch.where(tk > 0, tk.clamp(max=ks), torch.full_like(tk, ks))
        bad = (fk != 0) & ((fk < kk) | (fk > _MAX_FILTER_TOP_K))
        if bool(bad.any()):
            r = int(bad.nonzero()[0, 0])
            raise ValueError(f"filter_top_k must be 0 (the whole vocabulary), >= vocab, or in [top_k, "
                             f"{_MAX_FILTER_TOP_K}] (top_k = {int(kk[r])}, the output width), got "
                             f"{int(fk[r])} at row {r}")
    return fk


_MAX_FILTER_TOP_K = 256


def _verify_check_data(tl, draft_ids, n, sparse, sid, sw, neighbours, needs_ids, method, sum_tol):
    """Data-dependent checks (skipped while torch.compile traces; the CPU kernel repeats them)."""
    B, K1, V = tl.shape
    K = K1 - 1
    if K == 0 or B == 0:
        return
    live = torch.arange(K, device=tl.device)[None, :] < n[:, None]  # (B, K) positions verified
    if needs_ids:
        bad = live & ((draft_ids < 0) | (draft_ids >= V))
        if bool(bad.any()):
            b, j = (int(v) for v in bad.nonzero()[0])
            raise ValueError(f"draft_ids must lie in [0, {V}) (the vocabulary of target_logits), "
                             f"got {int(draft_ids[b, j])} at (row {b}, position {j})")
    if sparse:
        bad = live[..., None] & ((sid < 0) | (sid >= V))
        if bool(bad.any()):
            b, j, c = (int(v) for v in bad.nonzero()[0])
            raise ValueError(f"draft_probs ids must lie in [0, {V}), got {int(sid[b, j, c])} "
                             f"at (row {b}, position {j}, entry {c})")
        w = sw.double()
        badw = live & (~torch.isfinite(w).all(-1) | (w < 0).any(-1))
        if bool(badw.any()):
            b, j = (int(v) for v in badw.nonzero()[0])
            raise ValueError(f"draft_probs weights must be finite and non-negative, got "
                             f"{sw[b, j].tolist()} at (row {b}, position {j})")
        tot = w.sum(-1)
        bads = live & ((tot - 1).abs() > sum_tol)
        if bool(bads.any()):
            b, j = (int(v) for v in bads.nonzero()[0])
            raise ValueError(f"draft_probs weights must sum to 1 (within {sum_tol:.4g}) at every "
                             f"drafted position, got {float(tot[b, j]):.6g} at (row {b}, position {j})")
        if needs_ids and method != 4:  # soft drafts: the given ids are only what is emitted
            member = (sid == draft_ids.clamp(0, V - 1)[..., None]).any(-1)
            badm = live & ~member
            if bool(badm.any()):
                b, j = (int(v) for v in badm.nonzero()[0])
                raise ValueError(f"draft_ids[{b}, {j}] = {int(draft_ids[b, j])} must be one of the "
                                 f"sparse draft's ids at that position, got {sid[b, j].tolist()}")
    if neighbours is not None and neighbours.numel():
        # only the rows of the drafted tokens are read (the table may be large)
        rows = torch.unique(draft_ids[live].clamp(0, V - 1))
        sub = neighbours[rows]
        badn = (sub < -1) | (sub >= V)
        if bool(badn.any()):
            r, c = (int(t) for t in badn.nonzero()[0])
            raise ValueError(f"neighbours must lie in [-1, {V}) (-1 = none), got "
                             f"{int(sub[r, c])} at ({int(rows[r])}, {c})")


def verify(target_logits: torch.Tensor, draft_ids: Optional[torch.Tensor], *,
           num_draft: Optional[Union[int, torch.Tensor]] = None,
           draft_probs: Optional[Union[torch.Tensor, tuple]] = None,
           method: str = "exact", temperature: Union[float, torch.Tensor] = 1.0,
           top_k: Union[int, torch.Tensor] = 0, top_p: Union[float, torch.Tensor] = 1.0,
           min_p: Union[float, torch.Tensor] = 0.0, posterior_threshold: float = 0.09,
           posterior_alpha: float = 0.3, neighbours: Optional[torch.Tensor] = None,
           delta: float = 0.1, seed: Optional[Union[int, torch.Tensor]] = None,
           offset: Union[int, torch.Tensor] = 0,
           generator: Optional[torch.Generator] = None,
           filter_top_k: Optional[Union[int, torch.Tensor]] = None) -> Verified:
    """Speculative verification of K drafted positions per row, in one call.

    The target distribution at position ``j`` is the filtered, renormalised
    ``softmax(target_logits[b, j] / T)`` (top-k with ties broken lower index
    first, then top-p on the renormalised top-k, then min-p; ``T = 0`` is the
    one-hot argmax). Row ``b`` verifies positions ``0 .. num_draft[b] - 1`` in
    order, stops at the first rejection and emits one more token there (the
    correction), or after ``num_draft[b]`` acceptances the bonus token drawn
    from the target at position ``num_draft[b]``.

    Methods
    -------
    exact
        Leviathan/Chen rejection sampling: accept draft ``x`` iff
        ``u * q(x) < p(x)``; on rejection emit a draw from ``norm(max(0, p - q))``
        (``p`` if that is 0 numerically). The emitted tokens are distributed
        exactly as the target. ``q`` is one-hot (``draft_probs=None``), dense, or
        sparse (the residual then touches only the ``k`` sparse entries).
    greedy
        accept while ``x == argmax p`` (lowest index on ties), then emit ``argmax p``.
    typical
        Medusa: accept while ``p(x) > min(posterior_threshold, posterior_alpha *
        exp(-H(p)))`` with ``H`` the entropy of the filtered target; the token at
        the stop position is a draw from ``p``.
    relaxed
        LANTERN: ``A(x)`` = the longest prefix of ``neighbours[x]`` (skipping -1,
        ``x`` and repeats) whose target mass is at most ``delta``; accept iff
        ``u * q(x) < p(x) + p(A(x))``; the rejection residual is
        ``max(0, p - q)`` with ``A(x)`` removed. ``delta = 0`` equals exact.
    soft
        speculative Soft Thinking: drafts are soft tokens (the sparse
        ``draft_probs``); the target's soft token at position ``j`` is
        soft_mixture's filtering of ``target_logits[:, j]`` (``top_k`` = the
        draft's ``k`` when 0, no noise). Accept while the total-variation
        distance between the two is ``<= delta + 1e-6`` (the slack absorbs float32
        rounding, so a draft computed by ``soft_mixture`` from the same logits
        counts as identical at ``delta = 0``); the target's soft token at the
        stop position is returned in ``soft_ids``/``soft_weights`` and its top id
        in ``tokens``. Deterministic (no RNG). With ``filter_top_k`` the
        target's soft token is soft_mixture's ``filter_top_k`` chain:
        ``softmax(x / T)`` -> keep the ``filter_top_k`` largest, renormalise ->
        top_p -> min_p -> keep the ``top_k`` (output width) largest ->
        renormalise (CPU and CUDA; on CUDA the soft token's width ``k`` must be
        ``<= 1024`` with ``filter_top_k``).

    RNG layout (Philox, per row ``(seed, offset)``; batch-invariant)
    -----------------------------------------------------------------
    acceptance uniform of position ``j`` = element ``j`` of the ``(seed, offset)``
    stream; the residual or bonus draw at position ``j`` is the exponential race
    ``argmax_i r_i / E_i``, ``E_i = -log u_i``, ``u_i`` = element ``i`` (the vocab
    id) of the ``(seed, offset + 1 + j)`` stream. A call therefore uses streams
    ``offset .. offset + K + 1``: advance ``offset`` by ``K + 2`` between calls
    with the same seed.

    Parameters
    ----------
    target_logits : torch.Tensor
        (batch, K + 1, vocab), float32/bfloat16/float16: target logits at the K
        drafted positions and the bonus position. Last dimension contiguous.
    draft_ids : torch.Tensor or None
        (batch, K), int64/int32: the drafted tokens. May be None only for
        method "soft" (the draft token is then each position's heaviest id).
    num_draft : int or torch.Tensor, optional
        per-row draft length ``[0, K]`` (default K); entries past it are ignored.
    draft_probs : None, torch.Tensor or (torch.Tensor, torch.Tensor)
        None: deterministic drafts (one-hot q). Dense: (batch, K, vocab) float
        probabilities (the dtype of target_logits or float32). Sparse: ``(ids
        (batch, K, k) int64, weights (batch, K, k) float)``, weights non-negative
        summing to 1 (within ``1e-3 + k * u``, ``u`` the unit roundoff of the weights'
        dtype: 2^-8 for bfloat16, 2^-11 for float16, 2^-24 for float32, so weights
        that summed to 1 before a cast pass) and each draft id among its position's ids.
    method : str, default "exact"
        "exact", "greedy", "typical", "relaxed" or "soft".
    temperature, top_k, top_p, min_p : scalar or (batch,) tensor
        target filtering; defaults 1.0, 0 (off), 1.0 (off), 0.0 (off).
    posterior_threshold, posterior_alpha : float, default 0.09, 0.3
        Medusa's epsilon and alpha (method "typical").
    neighbours : torch.Tensor, optional
        (vocab, m) int64 latent neighbours, nearest first, -1 = none (method "relaxed").
    delta : float, default 0.1
        relaxed: extra neighbour mass; soft: the total-variation tolerance.
    seed, offset : int or (batch,) int64 tensor
        Philox key and stream; an int seed keys row ``b`` by
        ``softdec.reference.row_seed(seed, b)`` (independent rows), a tensor
        keys each row by its own entry; ``seed=None`` draws per-row seeds from ``generator``.
    generator : torch.Generator, optional
    filter_top_k : int, (batch,) tensor or None, default None
        method "soft" only (other methods raise ``ValueError`` unless None):
        None keeps the former chain (the top_k cut first) bit for bit; 0 or a
        value >= vocab filters over the whole vocabulary; otherwise it must lie in
        ``[top_k, 256]`` (``top_k`` the output width: the draft's ``k`` when 0).

    Returns
    -------
    Verified
        ``(tokens (batch, K+1) int64 padded with -1, num_accepted (batch,) int64,
        soft_ids, soft_weights)``.

    Notes
    -----
    Invalid target rows (NaN, +inf, or every logit -inf) are a documented
    result, not an error: the row stops at that position with token -1 there
    (``num_accepted`` counts the drafts accepted before it; for "soft" the
    returned soft token is ids 0 / weights 0). Draft ids, sparse ids and
    weights, ``num_draft`` and the neighbours of drafted tokens are checked
    (``ValueError``); the checks that read tensor data are skipped while
    ``torch.compile`` traces, and the CPU kernel repeats the ones that guard
    memory accesses. Dense ``draft_probs`` rows are not checked (a full pass):
    a NaN ``q`` entry rejects its draft and drops out of the residual.
    With the "soft" method, ``tokens`` holds the accepted drafts' ids (the
    given ``draft_ids``, else each position's heaviest id) and the target soft
    token's top id at the stop position.

    Examples
    --------
    >>> import torch, softdec
    >>> logits = torch.randn(2, 4, 50)
    >>> drafts = torch.randint(0, 50, (2, 3))
    >>> out = softdec.verify(logits, drafts, seed=torch.tensor([1, 2]))
    >>> out.tokens.shape, bool((out.num_accepted <= 3).all())
    (torch.Size([2, 4]), True)

    References
    ----------
    Leviathan et al., "Fast Inference from Transformers via Speculative Decoding", ICML 2023;
    Chen et al., "Accelerating LLM Decoding with Speculative Sampling", 2023;
    Cai et al., "Medusa", 2024; Jang et al., "LANTERN", 2024;
    Zhang et al., "Soft Thinking", 2025.
    """
    tl = check_tensor(target_logits, "target_logits", dim=3, layout="(batch, K+1, vocab)",
                      dtypes=FLOAT_DTYPES)
    B, K1, V = tl.shape
    if K1 < 1:
        raise ValueError(f"target_logits must have K+1 >= 1 positions in dim 1, got shape {tuple(tl.shape)}")
    if V < 1:
        raise ValueError(f"target_logits must have a non-empty vocabulary, got shape {tuple(tl.shape)}")
    K = K1 - 1
    dev = tl.device
    if not isinstance(method, str) or method not in _VERIFY_METHODS:
        raise ValueError(f"method must be one of {tuple(_VERIFY_METHODS)}, got {method!r}")
    mcode = _VERIFY_METHODS[method]
    if tl.stride(-1) != 1:
        tl = tl.contiguous()

    sparse, dense, sid, sw, sum_tol = _draft_probs_arg(draft_probs, tl, B, K, V, "K", mcode)
    if sum_tol is None:
        sum_tol = _SPARSE_SUM_TOL
    if mcode == 3:
        if neighbours is None:
            raise ValueError("method 'relaxed' needs neighbours, a (vocab, m) int64 tensor")
        neighbours = check_tensor(neighbours, "neighbours", dim=2, layout="(vocab, m)",
                                  dtypes=(torch.int64, torch.int32), device=dev, device_of="target_logits")
        if neighbours.shape[0] != V:
            raise ValueError(f"neighbours must have one row per vocabulary entry ({V}), got shape "
                             f"{tuple(neighbours.shape)}")
        neighbours = neighbours.to(torch.int64).contiguous()
    else:
        neighbours = None

    needs_ids = draft_ids is not None
    if draft_ids is None:
        if mcode != 4:
            raise ValueError(f"draft_ids is required for method {method!r} (it may be None only for 'soft')")
        draft_ids = sid.gather(2, sw.argmax(-1, keepdim=True))[..., 0]
    else:
        draft_ids = check_tensor(draft_ids, "draft_ids", dim=2, layout="(batch, K)",
                                 dtypes=(torch.int64, torch.int32), device=dev, device_of="target_logits")
        if tuple(draft_ids.shape) != (B, K):
            raise ValueError(f"draft_ids must have shape (batch, K) = ({B}, {K}) to match target_logits "
                             f"{tuple(tl.shape)} (K + 1 = {K1} positions), got {tuple(draft_ids.shape)}")
    draft_ids = draft_ids.to(torch.int64).contiguous()

    n = row_param(K if num_draft is None else num_draft, "num_draft", B, dev, torch.int64, lo=0, hi=K)
    T = row_param(temperature, "temperature", B, dev, torch.float32, lo=0.0)
    tk = row_param(top_k, "top_k", B, dev, torch.int64, lo=0)
    tp = row_param(top_p, "top_p", B, dev, torch.float32, lo=0.0, hi=1.0)
    mp = row_param(min_p, "min_p", B, dev, torch.float32, lo=0.0, hi=1.0)
    posterior_threshold = float_arg(posterior_threshold, "posterior_threshold", lo=0)
    posterior_alpha = float_arg(posterior_alpha, "posterior_alpha", lo=0)
    delta = float_arg(delta, "delta", lo=0)
    if mcode == 4 and not torch.compiler.is_compiling():
        ks = sid.shape[2]
        if isinstance(top_k, torch.Tensor):
            big = bool((tk > ks).any()) if tk.numel() else False
            kmax = int(tk.max()) if tk.numel() else 0
        else:
            big, kmax = int(top_k) > ks, int(top_k)
        if big:
            raise ValueError(f"top_k must be at most the soft draft's k ({ks}) for method 'soft' "
                             f"(0 means k), got {kmax}")
    fk = None
    if filter_top_k is not None:
        if mcode != 4:
            raise ValueError(f"filter_top_k is only defined for method 'soft', got method {method!r} "
                             f"with filter_top_k={filter_top_k!r}; pass None")
        fk = _verify_filter(filter_top_k, top_k, tk, sid.shape[2], B, dev, V)
    if not torch.compiler.is_compiling():
        _verify_check_data(tl, draft_ids, n, sparse, sid, sw, neighbours, needs_ids, mcode, sum_tol)
    s, o = rng_state(seed, offset, B, dev, generator)
    tokens, nacc, soft_ids, soft_w = _ops.verify(
        tl, draft_ids, n, dense, sid, sw, neighbours, mcode, T, tk, tp, mp,
        float(posterior_threshold), float(posterior_alpha), float(delta), s, o, fk)
    if mcode == 4:
        return Verified(tokens, nacc, soft_ids, soft_w)
    return Verified(tokens, nacc, None, None)


# soft_weights are a function of target_logits without a gradient formula here
_register_no_backward("verify", "verify")


def chain_speculative_sampling(draft_probs: torch.Tensor, draft_token_ids: torch.Tensor,
                               target_probs: torch.Tensor,
                               maybe_output_accepted_token_num: Optional[torch.Tensor] = None,
                               maybe_output_emitted_draft_token_num: Optional[torch.Tensor] = None,
                               deterministic: bool = True, generator: Optional[torch.Generator] = None,
                               seed: Optional[Union[int, torch.Tensor]] = None,
                               offset: Union[int, torch.Tensor] = 0):
    """Drop-in for FlashInfer's ``chain_speculative_sampling`` (same argument order and outputs).

    Exact speculative sampling with dense draft probabilities, given target
    *probabilities*; runs :func:`verify` on ``log(target_probs)``.

    Parameters
    ----------
    draft_probs : torch.Tensor
        (batch, K, vocab) float draft probabilities.
    draft_token_ids : torch.Tensor
        (batch, K) int32/int64 drafted tokens.
    target_probs : torch.Tensor
        (batch, K + 1, vocab) float target probabilities.
    maybe_output_accepted_token_num, maybe_output_emitted_draft_token_num : torch.Tensor, optional
        (batch,) int32 counters; when given, the counts are added to them in place
        (FlashInfer's accumulate semantics) and returned.
    deterministic : bool, default True
        accepted for compatibility; softdec is always deterministic.
    generator, seed, offset
        as in :func:`verify` (FlashInfer's uniform_samples are replaced by the
        Philox stream; the same RNG layout as ``verify``).

    Returns
    -------
    (output_token_ids, output_accepted_token_num, output_emitted_draft_token_num)
        (batch, K + 1) int32 padded with -1; (batch,) int32 the number of drafts
        whose acceptance test passes when each position is considered
        independently (FlashInfer's statistic); (batch,) int32 drafts emitted.

    Examples
    --------
    >>> import torch, softdec
    >>> q = torch.softmax(torch.randn(2, 3, 10), -1); p = torch.softmax(torch.randn(2, 4, 10), -1)
    >>> ids = torch.multinomial(q.reshape(-1, 10), 1).reshape(2, 3)
    >>> out, acc, emit = softdec.chain_speculative_sampling(q, ids, p, seed=0)
    >>> out.shape
    torch.Size([2, 4])
    """
    tp = check_tensor(target_probs, "target_probs", dim=3, layout="(batch, K+1, vocab)", dtypes=FLOAT_DTYPES)
    dp = check_tensor(draft_probs, "draft_probs", dim=3, layout="(batch, K, vocab)", dtypes=FLOAT_DTYPES,
                      device=tp.device, device_of="target_probs")
    B, K1, V = tp.shape
    if tuple(dp.shape) != (B, K1 - 1, V):
        raise ValueError(f"draft_probs must have shape (batch, K, vocab) = ({B}, {K1 - 1}, {V}) to match "
                         f"target_probs {tuple(tp.shape)}, got {tuple(dp.shape)}")
    ids = check_tensor(draft_token_ids, "draft_token_ids", dim=2, layout="(batch, K)",
                       dtypes=(torch.int64, torch.int32), device=tp.device, device_of="target_probs")
    for name, c in (("maybe_output_accepted_token_num", maybe_output_accepted_token_num),
                    ("maybe_output_emitted_draft_token_num", maybe_output_emitted_draft_token_num)):
        if c is not None:
            check_tensor(c, name, dim=1, layout="(batch,)", dtypes=(torch.int32, torch.int64),
                         device=tp.device, device_of="target_probs")
            if c.shape[0] != B:
                raise ValueError(f"{name} must have shape ({B},) (one counter per row of target_probs), "
                                 f"got {tuple(c.shape)}")
    if not isinstance(deterministic, bool):
        raise ValueError(f"deterministic must be a bool, got {type(deterministic).__name__} {deterministic!r}")
    s, o = rng_state(seed, offset, B, tp.device, generator)
    logits = torch.log(tp)
    res = verify(logits, ids, draft_probs=dp.to(logits.dtype) if dp.dtype != torch.float32 else dp,
                 seed=s, offset=o)
    K = K1 - 1
    u = philox_uniform((B, K1), s, o)[:, :K]
    p = torch.softmax(logits.float(), -1)
    idx = ids.long()[..., None]
    acc = (u * dp.float().gather(2, idx)[..., 0] < p[:, :K].gather(2, idx)[..., 0]).sum(1).int()
    emit = res.num_accepted.int()
    if maybe_output_accepted_token_num is not None:
        maybe_output_accepted_token_num += acc
        acc = maybe_output_accepted_token_num
    if maybe_output_emitted_draft_token_num is not None:
        maybe_output_emitted_draft_token_num += emit
        emit = maybe_output_emitted_draft_token_num
    return res.tokens.int(), acc, emit
