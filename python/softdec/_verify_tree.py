"""Token-tree speculative verification (EAGLE / Medusa trees, SpecTr-style multiple drafts).

Public names are re-exported by ``softdec`` (and ``softdec.ops``)."""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import numpy as np
import torch

from ._params import FLOAT_DTYPES, below_autograd, check_tensor, float_arg, rng_state, row_param, _register_no_backward
from ._verify import _VERIFY_METHODS, _draft_probs_arg

_ops = torch.ops.softdec

__all__ = ["VerifiedTree", "verify_tree"]

_TREE_METHODS = ("exact", "greedy", "typical", "soft")


class VerifiedTree(NamedTuple):
    """Result of :func:`verify_tree`.

    nodes : torch.Tensor
        (batch, N) int64: ``nodes[b, :num_accepted[b]]`` are the accepted node
        indices, root's child first (the root itself is not listed); -1 after.
    tokens : torch.Tensor
        (batch, N) int64: ``tokens[b, :num_accepted[b]]`` the accepted nodes'
        tokens, ``tokens[b, num_accepted[b]]`` the correction or bonus token
        (-1 where the target row at the stop node is invalid), -1 after.
    num_accepted : torch.Tensor
        (batch,) int64, the accepted path's length (root excluded).
    soft_ids, soft_weights : torch.Tensor or None
        (batch, k), method "soft" only: the target's soft token at the stop node.
    """
    nodes: torch.Tensor
    tokens: torch.Tensor
    num_accepted: torch.Tensor
    soft_ids: Optional[torch.Tensor]
    soft_weights: Optional[torch.Tensor]


@torch.library.register_fake("softdec::verify_tree")
def _verify_tree_fake(target_logits, tree_tokens, tree_parents, draft_probs, sparse_ids, sparse_weights,
                      method, temperature, top_k, top_p, min_p, posterior_threshold, posterior_alpha,
                      delta, seed, offset):
    torch._check(target_logits.dim() == 3, lambda: "target_logits must be 3-D (batch, nodes, vocab)")
    B, N, V = target_logits.shape
    torch._check(tree_tokens.shape == (B, N), lambda: "tree_tokens must have shape (batch, nodes)")
    torch._check(tree_parents.shape == (B, N), lambda: "tree_parents must have shape (batch, nodes)")
    if draft_probs is not None:
        torch._check(draft_probs.shape == (B, N, V), lambda: "draft_probs must be (batch, nodes, vocab)")
    ks = sparse_ids.shape[2] if (method == 4 and sparse_ids is not None) else 0
    return (target_logits.new_empty((B, N), dtype=torch.int64),
            target_logits.new_empty((B, N), dtype=torch.int64),
            target_logits.new_empty((B,), dtype=torch.int64),
            target_logits.new_empty((B, ks), dtype=torch.int64),
            target_logits.new_empty((B, ks), dtype=torch.float32))


def _first(mask):
    return tuple(int(v) for v in mask.nonzero()[0])


def _sparse_weights_ok_cpu(parents, sw, sum_tol) -> bool:
    """Fast pass of the sparse weight checks on CPU tensors (a few numpy reductions: the per-call
    cost matters at B = 1): True when every real node's weights are finite, non-negative and sum
    to 1 within sum_tol (a NaN or inf weight makes its sum fail)."""
    if sw.shape[0] == 0 or sw.shape[1] == 1:
        return True
    w = sw.numpy()[:, 1:]
    pad = parents.numpy()[:, 1:] == -1
    if not (pad | (w.min(-1) >= 0)).all():  # a negative or NaN weight (NaN compares False)
        return False
    # weights >= 0 here (+inf possible): the sum cannot hit inf - inf
    return bool((pad | (np.abs(w.sum(-1, dtype=np.float64) - 1.0) <= sum_tol)).all())


def _check_tree_data(tl, tokens, parents, sparse, sid, sw, soft, sum_tol):
    """Structure / token checks that read tensor data (skipped while torch.compile traces;
    the CPU kernel repeats them with the same messages)."""
    B, N, V = tl.shape
    if B == 0:
        return
    root = parents[:, 0]
    if bool((root != -1).any()):
        b = int((root != -1).nonzero()[0, 0])
        raise ValueError(f"tree_parents[{b}, 0] must be -1 (node 0 is the root), got {int(root[b])}")
    if N == 1:
        return
    par = parents[:, 1:]
    idx = torch.arange(1, N, device=tl.device)[None, :].expand_as(par)
    real = par != -1
    bad = real & ((par < 0) | (par >= N))
    if bool(bad.any()):
        b, j = _first(bad)
        raise ValueError(f"tree_parents[{b}, {j + 1}] = {int(par[b, j])} is out of range: parents must be -1 "
                         f"(padding) or a node index in [0, {N})")
    bad = real & (par >= idx)
    if bool(bad.any()):
        b, j = _first(bad)
        raise ValueError(f"tree_parents[{b}, {j + 1}] = {int(par[b, j])} must be smaller than its node index "
                         f"(parents come before their children)")
    pc = par.clamp(0, N - 1)
    pad_parent = real & (pc > 0) & (parents.gather(1, pc) == -1)
    if bool(pad_parent.any()):
        b, j = _first(pad_parent)
        raise ValueError(f"tree_parents[{b}, {j + 1}] = {int(par[b, j])} points at a padding node (ragged "
                         f"trees pad with -1 after their last node's children)")
    tok = tokens[:, 1:]
    bad = real & ((tok < 0) | (tok >= V))
    if bool(bad.any()):
        b, j = _first(bad)
        raise ValueError(f"tree_tokens must lie in [0, {V}) (the vocabulary of target_logits), got "
                         f"{int(tok[b, j])} at (row {b}, node {j + 1})")
    if sparse:
        si, w = sid[:, 1:], sw[:, 1:].double()
        bad = real[..., None] & ((si < 0) | (si >= V))
        if bool(bad.any()):
            b, j, c = _first(bad)
            raise ValueError(f"draft_probs ids must lie in [0, {V}), got {int(si[b, j, c])} at (row {b}, "
                             f"node {j + 1}, entry {c})")
        badw = real & (~torch.isfinite(w).all(-1) | (w < 0).any(-1))
        if bool(badw.any()):
            b, j = _first(badw)
            raise ValueError(f"draft_probs weights must be finite and non-negative, got {sw[b, j + 1].tolist()} "
                             f"at (row {b}, node {j + 1})")
        tot = w.sum(-1)
        bads = real & ((tot - 1).abs() > sum_tol)
        if bool(bads.any()):
            b, j = _first(bads)
            raise ValueError(f"draft_probs weights must sum to 1 (within {sum_tol:.4g}) at every node, got "
                             f"{float(tot[b, j]):.6g} at (row {b}, node {j + 1})")
        if not soft:
            member = (si == tok.clamp(0, V - 1)[..., None]).any(-1)
            badm = real & ~member
            if bool(badm.any()):
                b, j = _first(badm)
                raise ValueError(f"tree_tokens[{b}, {j + 1}] = {int(tok[b, j])} must be one of the sparse "
                                 f"draft's ids at that node, got {si[b, j].tolist()}")


def verify_tree(target_logits: torch.Tensor, tree_tokens: torch.Tensor, tree_parents: torch.Tensor, *,
                draft_probs: Optional[Union[torch.Tensor, tuple]] = None, method: str = "exact",
                temperature: Union[float, torch.Tensor] = 1.0, top_k: Union[int, torch.Tensor] = 0,
                top_p: Union[float, torch.Tensor] = 1.0, min_p: Union[float, torch.Tensor] = 0.0,
                posterior_threshold: float = 0.09, posterior_alpha: float = 0.3, delta: float = 0.1,
                seed: Optional[Union[int, torch.Tensor]] = None, offset: Union[int, torch.Tensor] = 0,
                generator: Optional[torch.Generator] = None) -> VerifiedTree:
    """Speculative verification of a token tree per row (EAGLE / Medusa trees, SpecTr multi-draft).

    Node 0 of each row is the root (the last accepted token; its token is not
    read); ``tree_parents[b, n]`` is the parent of node ``n`` (an earlier node,
    ``< n``), ``-1`` for the root and for padding nodes of ragged trees (a
    padding node may not be a parent). ``target_logits[b, n]`` is the target's
    distribution of the token that follows node ``n`` (filtered as in
    :func:`verify`). ``draft_probs[b, n]`` is the draft distribution node ``n``'s
    token was drawn from (row 0 unused): None for deterministic drafts (one-hot
    ``q``, e.g. top-k expansion), dense ``(batch, N, vocab)`` or sparse ``(ids
    (batch, N, k), weights (batch, N, k))`` with each node's token among its ids.

    The walk starts at the root; at node ``c`` the children of ``c`` are tried
    in index order and the walk moves to the first accepted child; it stops at
    a node with no accepted child and emits one more token there.

    Methods
    -------
    exact
        Recursive rejection sampling over siblings (the multi-draft rule of
        SpecInfer, Miao et al. 2024, and SpecTr, Sun et al. 2023, section 4):
        with residual ``r = p`` at first, child ``x_i`` drafted from ``q_i`` is
        accepted with probability ``min(1, r(x_i) / q_i(x_i))``; on rejection
        ``r <- norm(max(0, r - q_i))`` before the next sibling; if all are
        rejected (or ``c`` is a leaf), the token is a draw from ``r``. When each
        child is an independent draw from its ``q_i`` given the path (one-hot
        ``q``: any fixed drafts), the emitted sequence is distributed exactly
        as the target's.
    greedy
        move to the child whose token is ``argmax p`` (the first such), else
        emit ``argmax p``.
    typical
        Medusa: move to the first child with ``p(x) > min(posterior_threshold,
        posterior_alpha * exp(-H(p)))``; the stop token is a draw from ``p``.
    soft
        the children's sparse ``draft_probs`` are soft tokens; move to the first
        child whose total-variation distance to the target's soft token at ``c``
        is ``<= delta + 1e-6``; the target's soft token at the stop node is
        returned (as in :func:`verify`).

    RNG layout (Philox, per row ``(seed, offset)``)
    ------------------------------------------------
    the acceptance uniform of node ``n`` is element ``n - 1`` of the ``(seed,
    offset)`` stream; the draw at node ``c`` is the exponential race of
    :func:`verify` on the ``(seed, offset + 1 + c)`` stream. A chain
    (``parents = [-1, 0, 1, ...]``) therefore gives exactly :func:`verify`'s
    result with the same seed and offset. A call uses streams ``offset ..
    offset + N``: advance ``offset`` by ``N + 1`` between calls.

    Returns
    -------
    VerifiedTree
        ``(nodes (batch, N), tokens (batch, N), num_accepted (batch,), soft_ids,
        soft_weights)``.

    Notes
    -----
    Bad trees (root parent not -1, a parent not smaller than its node, out of
    range, pointing at a padding node; node tokens outside the vocabulary or
    outside their sparse ids) raise ``ValueError`` (``RuntimeError`` from the
    kernel while ``torch.compile`` traces). Invalid target rows stop the walk
    with token -1, as in :func:`verify`. Method "relaxed" is not supported on trees.

    Examples
    --------
    >>> import torch, softdec
    >>> logits = torch.randn(1, 4, 20)
    >>> tokens = torch.tensor([[0, 3, 5, 7]]); parents = torch.tensor([[-1, 0, 0, 1]])
    >>> out = softdec.verify_tree(logits, tokens, parents, seed=0)
    >>> out.tokens.shape
    torch.Size([1, 4])

    References
    ----------
    Miao et al., "SpecInfer", ASPLOS 2024; Sun et al., "SpecTr: Fast Speculative Decoding via
    Optimal Transport", NeurIPS 2023; Cai et al., "Medusa", 2024; Li et al., "EAGLE-2", 2024.
    """
    tl = check_tensor(target_logits, "target_logits", dim=3, layout="(batch, nodes, vocab)", dtypes=FLOAT_DTYPES)
    B, N, V = tl.shape
    if N < 1:
        raise ValueError(f"target_logits must have N >= 1 tree nodes in dim 1, got shape {tuple(tl.shape)}")
    if V < 1:
        raise ValueError(f"target_logits must have a non-empty vocabulary, got shape {tuple(tl.shape)}")
    dev = tl.device
    if not isinstance(method, str) or method not in _TREE_METHODS:
        raise ValueError(f"method must be one of {_TREE_METHODS} for verify_tree, got {method!r}")
    mcode = _VERIFY_METHODS[method]
    if tl.stride(-1) != 1:
        tl = tl.contiguous()
    tokens = check_tensor(tree_tokens, "tree_tokens", dim=2, layout="(batch, nodes)",
                          dtypes=(torch.int64, torch.int32), device=dev, device_of="target_logits")
    parents = check_tensor(tree_parents, "tree_parents", dim=2, layout="(batch, nodes)",
                           dtypes=(torch.int64, torch.int32), device=dev, device_of="target_logits")
    for name, t in (("tree_tokens", tokens), ("tree_parents", parents)):
        if tuple(t.shape) != (B, N):
            raise ValueError(f"{name} must have shape (batch, nodes) = ({B}, {N}) to match target_logits "
                             f"{tuple(tl.shape)}, got {tuple(t.shape)}")
    tokens = tokens.to(torch.int64).contiguous()
    parents = parents.to(torch.int64).contiguous()

    sparse, dense, sid, sw, sum_tol = _draft_probs_arg(draft_probs, tl, B, N, V, "nodes", mcode)
    if sum_tol is None:
        sum_tol = 0.0
    T = row_param(temperature, "temperature", B, dev, torch.float32, lo=0.0)
    tk = row_param(top_k, "top_k", B, dev, torch.int64, lo=0)
    tp = row_param(top_p, "top_p", B, dev, torch.float32, lo=0.0, hi=1.0)
    mp = row_param(min_p, "min_p", B, dev, torch.float32, lo=0.0, hi=1.0)
    posterior_threshold = float_arg(posterior_threshold, "posterior_threshold", lo=0)
    posterior_alpha = float_arg(posterior_alpha, "posterior_alpha", lo=0)
    delta = float_arg(delta, "delta", lo=0)
    if not torch.compiler.is_compiling():
        if dev.type == "cpu":  # the CPU kernel checks the tree and the ids itself (same messages)
            if sparse and not _sparse_weights_ok_cpu(parents, sw, sum_tol):
                _check_tree_data(tl, tokens, parents, sparse, sid, sw, mcode == 4, sum_tol)  # raises
        else:
            _check_tree_data(tl, tokens, parents, sparse, sid, sw, mcode == 4, sum_tol)
    s, o = rng_state(seed, offset, B, dev, generator)
    args = (tl, tokens, parents, dense, sid, sw, mcode, T, tk, tp, mp, float(posterior_threshold),
            float(posterior_alpha), float(delta), s, o)
    if below_autograd(*[t for t in (tl, dense, sw) if t is not None]):
        with torch._C._AutoDispatchBelowAutograd():
            nodes, toks, nacc, soft_ids, soft_w = _ops.verify_tree(*args)
    else:
        nodes, toks, nacc, soft_ids, soft_w = _ops.verify_tree(*args)
    if mcode == 4:
        return VerifiedTree(nodes, toks, nacc, soft_ids, soft_w)
    return VerifiedTree(nodes, toks, nacc, None, None)


_register_no_backward("verify_tree", "verify_tree")
