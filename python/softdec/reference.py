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


def row_seed(seed: int, row: int) -> int:
    """The Philox key of row ``row`` when a softdec op gets the int ``seed``.

    ``mix64(mix64(seed) + 0x9E3779B97F4A7C15 * (row + 1))`` modulo 2**64, read
    as a signed int64; ``mix64`` is splitmix64's finaliser (``z ^= z >> 30;
    z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB; z ^= z >> 31``,
    all modulo 2**64). A ``(B,)`` seed tensor is used as given instead.
    """
    m = (1 << 64) - 1

    def mix(z):
        z &= m
        z ^= z >> 30
        z = (z * 0xBF58476D1CE4E5B9) & m
        z ^= z >> 27
        z = (z * 0x94D049BB133111EB) & m
        return z ^ (z >> 31)

    k = mix((mix(seed) + 0x9E3779B97F4A7C15 * (row + 1)) & m)
    return k - (1 << 64) if k >= 1 << 63 else k


def row_keys(seed, batch: int) -> torch.Tensor:
    """The (batch,) int64 CPU keys an op uses for ``seed``: :func:`row_seed` of each
    row for an int (or 0-D tensor) seed, the tensor itself for a (batch,) tensor."""
    if isinstance(seed, torch.Tensor) and seed.dim() > 0:
        return seed.detach().to(device="cpu", dtype=torch.int64).reshape(-1).expand(batch)
    s = int(seed)
    return torch.tensor([row_seed(s, b) for b in range(batch)], dtype=torch.int64)


__all__ += ["row_seed", "row_keys"]

# ============================================================================ soft mixture

import math  # noqa: E402

__all__ += ["soft_mixture", "soft_mixture_dense", "philox_at", "soft_gamma", "philox_normal"]

# Dirichlet noise: Gamma(a) by Marsaglia-Tsang with at most this many attempts
# per token; attempt t of token id uses the Philox block id * 16 + t.
SOFT_GAMMA_ATTEMPTS = 16


@torch.compiler.disable  # numpy inside: a graph break under torch.compile
def philox_at(seed, offset, index) -> torch.Tensor:
    """Elements ``index`` of the per-row ``(seed[r], offset[r])`` Philox streams.

    ``seed``/``offset``: int or (B,) int64; ``index``: (B, n) int64 element
    indices (the stream position of each draw). Returns float32 (B, n) in
    (0, 1), bit-identical to ``philox_uniform`` at those positions.
    """
    index = torch.as_tensor(index, dtype=torch.int64).cpu()
    b = index.shape[0]
    s = torch.as_tensor(seed, dtype=torch.int64).cpu().reshape(-1).expand(b).numpy().astype(np.uint64)
    o = torch.as_tensor(offset, dtype=torch.int64).cpu().reshape(-1).expand(b).numpy().astype(np.uint64)
    i = index.numpy().astype(np.uint64)
    blk = i >> np.uint64(2)
    lane = (i & np.uint64(3)).astype(np.int64)
    so = np.broadcast_to(s[:, None], i.shape)
    oo = np.broadcast_to(o[:, None], i.shape)
    ctr = np.stack([blk & _MASK, blk >> np.uint64(32), oo & _MASK, oo >> np.uint64(32)], -1)
    key = np.stack([so & _MASK, so >> np.uint64(32)], -1)
    bits = np.take_along_axis(philox4x32_10(ctr, key), lane[..., None], -1)[..., 0]
    u = ((bits >> np.uint32(9)).astype(np.float64) + 0.5) / 2.0 ** 23
    return torch.from_numpy(u.astype(np.float32)).reshape(index.shape)


def _na_scalar(v, dtype):
    """A Python float as a 0-d tensor of ``dtype`` (the kernels' rounding of std)."""
    return torch.tensor(float(v), dtype=dtype)


def philox_normal(seed, offset, rows: int, n: int) -> torch.Tensor:
    """The embedding noise eps (rows, n) float32 of soft_mixture / softdec.philox_normal,
    from the per-row (seed[r], offset[r]) streams (int or (rows,) int64): element d
    is Box-Muller (float64) of lanes 0, 1 of Philox block 2**63 + d."""
    s = torch.as_tensor(seed, dtype=torch.int64).cpu().reshape(-1).expand(rows).numpy().astype(np.uint64)
    o = torch.as_tensor(offset, dtype=torch.int64).cpu().reshape(-1).expand(rows).numpy().astype(np.uint64)
    blk = np.uint64(1 << 63) + np.arange(n, dtype=np.uint64)[None, :].repeat(rows, 0)
    so = np.broadcast_to(s[:, None], blk.shape)
    oo = np.broadcast_to(o[:, None], blk.shape)
    ctr = np.stack([blk & _MASK, blk >> np.uint64(32), oo & _MASK, oo >> np.uint64(32)], -1)
    key = np.stack([so & _MASK, so >> np.uint64(32)], -1)
    x = philox4x32_10(ctr, key)
    u0 = (x[..., 0].astype(np.float64) + 0.5) / 2.0 ** 32
    u1 = (x[..., 1].astype(np.float64) + 0.5) / 2.0 ** 32
    eps = np.sqrt(-2.0 * np.log(u0)) * np.cos(6.283185307179586 * u1)
    return torch.from_numpy(eps.astype(np.float32)).reshape(rows, n)


@torch.compiler.disable  # draws through philox_at (numpy)
def soft_gamma(a, seed, offset, ids) -> torch.Tensor:
    """Gamma(a) draws of the Dirichlet noise, float64, from the Philox stream.

    ``a``: (B, n) float64 shapes (a <= 0 gives 0); ``ids``: (B, n) token ids.
    Layout (shared with the kernels): attempt t (0 <= t < 16) of token ``id``
    uses the four uniforms of Philox block ``id * 16 + t`` (stream elements
    ``4 * (id * 16 + t) + {0, 1, 2, 3}``): u0, u1 give a normal by Box-Muller
    (n = sqrt(-2 log u0) cos(2 pi u1)), u2 the Marsaglia-Tsang acceptance test;
    lane 3 of attempt 0 is the boost uniform for a < 1 (Gamma(a) =
    Gamma(a + 1) * u^(1/a)). If all 16 attempts are rejected (probability
    < 1e-20) the draw is d = a' - 1/3. Computed in float64.
    """
    a = torch.as_tensor(a, dtype=torch.float64).cpu()
    ids = torch.as_tensor(ids, dtype=torch.int64).cpu()
    R = SOFT_GAMMA_ATTEMPTS
    t = torch.arange(R, dtype=torch.int64)
    base = (ids[..., None] * R + t) * 4  # (B, n, R)
    flat = lambda lane: philox_at(seed, offset, (base + lane).reshape(ids.shape[0], -1)).reshape(base.shape).double()
    u0, u1, u2, u3 = flat(0), flat(1), flat(2), flat(3)
    boost = a < 1
    ap = torch.where(boost, a + 1, a)
    d = ap - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    n = torch.sqrt(-2.0 * torch.log(u0)) * torch.cos(2.0 * math.pi * u1)
    v = (1.0 + c[..., None] * n) ** 3
    vpos = v > 0
    logv = torch.log(torch.where(vpos, v, torch.ones_like(v)))
    ok = vpos & (torch.log(u2) < 0.5 * n * n + d[..., None] - d[..., None] * v + d[..., None] * logv)
    first = torch.where(ok.any(-1), ok.to(torch.int64).argmax(-1), torch.full_like(a, R - 1, dtype=torch.int64))
    vsel = v.gather(-1, first[..., None])[..., 0]
    g = torch.where(ok.any(-1), d * vsel, d)
    g = torch.where(boost, g * u3[..., 0] ** (1.0 / torch.where(a > 0, a, torch.ones_like(a))), g)
    return torch.where(a > 0, g, torch.zeros_like(g))


def _row_tensor(v, b, dtype, device):
    if isinstance(v, torch.Tensor):
        return v.to(device=device, dtype=dtype).reshape(-1).expand(b)
    return torch.full((b,), v, dtype=dtype, device=device)


def soft_mixture(logits, embedding, *, top_k=10, temperature=1.0, top_p=1.0, min_p=0.0,
                 noise=None, tau=1.0, noise_scale=1.0, dirichlet_alpha=1.0, seed=0, offset=0,
                 embed_scale=1.0, filter_top_k=None, gumbel_clamp=None, gumbel_eps=0.0,
                 embed_noise_std=0.0):
    """Soft Thinking concept tokens, as the plain PyTorch pipeline (oracle and baseline).

    Same arguments and semantics as ``softdec.soft_mixture`` (see its docstring):
    softmax(logits / T) with entropy and max prob of the full distribution
    (of softmax(logits) when T = 0); filter top-k (``filter_top_k``; None:
    top_k, 0: whole vocabulary; ties: lower vocabulary index first), top-p,
    min-p, then the output top-k, each with renormalisation; Gumbel or Dirichlet noise from the Philox stream; sort by
    weight (ties: lower id first); the weighted sum of the k embedding rows.
    Computes in float64 when the inputs are float64, else float32. Returns the
    tuple ``(embeds, ids, weights, entropy, max_prob, valid, noisy_logits)``
    (``noisy_logits`` is None unless ``noise == "gumbel"``). Differentiable by
    autograd w.r.t. logits and embedding except through the Dirichlet draw.
    """
    B, V = logits.shape
    dev = logits.device
    acc = torch.promote_types(torch.promote_types(logits.dtype, embedding.dtype), torch.float32)
    x = logits.to(acc)
    kmax = int(top_k.max()) if isinstance(top_k, torch.Tensor) else int(top_k)
    kr = _row_tensor(top_k, B, torch.int64, dev)
    T = _row_tensor(temperature, B, acc, dev)
    tp = _row_tensor(top_p, B, acc, dev)
    mp = _row_tensor(min_p, B, acc, dev)
    cold = T == 0
    bad = torch.isnan(x).any(1) | torch.isposinf(x).any(1) | torch.isneginf(x).all(1)
    valid = ~bad
    xs = torch.where(bad[:, None], torch.zeros_like(x), x)
    Ts = torch.where(cold, torch.ones_like(T), T)
    z = xs / Ts[:, None]
    logp = torch.log_softmax(z, dim=1)
    p = logp.exp()
    entropy = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(1)
    max_prob = p.max(1).values
    # T = 0: the statistics of softmax(logits) (T = 1), as DESIGN specifies
    entropy = torch.where(bad, torch.zeros_like(entropy), entropy)
    max_prob = torch.where(bad, torch.zeros_like(max_prob), max_prob)
    if filter_top_k is None:
        fr = kr
    else:
        fr = _row_tensor(filter_top_k, B, torch.int64, dev)
        fr = torch.where((fr == 0) | (fr >= V), torch.full_like(fr, V), fr)
    kout = kmax
    kmax = max(kmax, int(fr.max()) if B else kmax)  # candidate width

    # top-k with ties broken toward the lower index: topk gives the threshold
    # value, the set is {x > thr} plus the lowest-index ties at thr.
    ke = min(kmax, V)
    thr = torch.topk(xs, ke, dim=1).values[:, -1:]
    gt = xs > thr
    eq = xs == thr
    need = ke - gt.sum(1, keepdim=True)
    keep = gt | (eq & (torch.cumsum(eq.to(torch.int64), 1) <= need))
    key = keep.to(torch.int64) * (V - torch.arange(V, device=dev))  # kept, lower index first
    ids = torch.topk(key, ke, dim=1).indices
    xv = xs.gather(1, ids)
    order = torch.sort(xv, dim=1, descending=True, stable=True).indices
    ids = ids.gather(1, order)
    xv = xv.gather(1, order)
    if ke < kmax:
        ids = torch.cat([ids, ids[:, :1].expand(B, kmax - ke)], 1)
        xv = torch.cat([xv, torch.full((B, kmax - ke), -math.inf, dtype=acc, device=dev)], 1)
    pos = torch.arange(kmax, device=dev)
    surv = (xv > -math.inf) & (pos < fr[:, None]) & ~bad[:, None]
    surv = surv & (~cold[:, None] | (pos == 0))
    zk = torch.where(surv, xv / Ts[:, None], torch.full_like(xv, -math.inf))
    w = torch.softmax(zk, dim=1)
    w = torch.where(cold[:, None], (pos == 0).to(acc).expand(B, kmax), w)
    w = torch.where(surv, w, torch.zeros_like(w))
    # top-p: the smallest prefix whose mass reaches top_p
    excl = torch.cumsum(w, 1) - w
    surv = surv & ((excl < tp[:, None]) | (tp[:, None] >= 1))
    w = torch.where(surv, w, torch.zeros_like(w))
    w = w / w.sum(1, keepdim=True).clamp_min(torch.finfo(acc).tiny)
    # min-p relative to the largest surviving weight
    surv = surv & (w >= mp[:, None] * w[:, :1])
    w = torch.where(surv, w, torch.zeros_like(w))
    w = w / w.sum(1, keepdim=True).clamp_min(torch.finfo(acc).tiny)
    # the output width: the top_k largest, renormalised
    surv = surv & (pos < kr[:, None])
    w = torch.where(surv, w, torch.zeros_like(w))
    w = w / w.sum(1, keepdim=True).clamp_min(torch.finfo(acc).tiny)
    ids, xv, w, surv, kmax = ids[:, :kout], xv[:, :kout], w[:, :kout], surv[:, :kout], kout

    noisy = None
    if noise == "gumbel":
        u = philox_at(row_keys(seed, B), offset if not isinstance(offset, torch.Tensor) else offset.expand(B), ids).to(dev).to(acc)
        G = -torch.log(-torch.log(u))
        if gumbel_clamp is not None:
            G = G.clamp(gumbel_clamp[0], gumbel_clamp[1])
        y = torch.where(surv, torch.log(torch.where(surv, w, torch.ones_like(w)) + gumbel_eps) + noise_scale * G,
                        torch.full_like(w, -math.inf))
        w = torch.softmax(y / tau, dim=1)
        w = torch.where(surv, w, torch.zeros_like(w))
        noisy = y
    elif noise == "dirichlet":
        a = (dirichlet_alpha * w).detach().double().cpu()
        g = soft_gamma(a, row_keys(seed, B),
                       offset if not isinstance(offset, torch.Tensor) else offset.expand(B), ids.cpu())
        g = torch.where(surv.cpu(), g, torch.zeros_like(g))
        tot = g.sum(1, keepdim=True)
        g = torch.where(tot > 0, g / torch.where(tot > 0, tot, torch.ones_like(tot)), w.detach().double().cpu())
        w = g.to(device=dev, dtype=acc)
    elif noise is not None:
        raise ValueError(f"noise must be None, 'gumbel' or 'dirichlet', got {noise!r}")

    # final order: weight descending, ties lower id first. Without noise the
    # top-k order (logit descending, ties lower id first) already is one, and
    # is kept as is (weights that underflow to equal values keep logit order).
    if noise is not None:
        o1 = torch.argsort(ids, dim=1, stable=True)
        ids, w, surv = ids.gather(1, o1), w.gather(1, o1), surv.gather(1, o1)
        noisy = noisy.gather(1, o1) if noisy is not None else None
        o2 = torch.sort(torch.where(surv, w, torch.full_like(w, -1.0)), dim=1, descending=True, stable=True).indices
        ids, w, surv = ids.gather(1, o2), w.gather(1, o2), surv.gather(1, o2)
        noisy = noisy.gather(1, o2) if noisy is not None else None
    top = torch.where(valid, ids[:, 0], torch.zeros_like(ids[:, 0]))
    ids = torch.where(surv, ids, top[:, None])
    w = torch.where(surv, w, torch.zeros_like(w))
    if noisy is not None:
        noisy = torch.where(surv, noisy, torch.full_like(noisy, -math.inf))

    rows = embedding[ids].to(acc)  # (B, k, D): gather first, convert k rows only
    embeds = embed_scale * torch.einsum("bk,bkd->bd", w, rows)
    embeds = embeds.to(embedding.dtype)
    if embed_noise_std:
        na = torch.float64 if embedding.dtype == torch.float64 else torch.float32
        eps = philox_normal(seed, offset, B, embedding.shape[1]).to(device=dev, dtype=na)
        noisy_e = (embeds.to(na) + _na_scalar(embed_noise_std, na) * eps).to(embedding.dtype)
        embeds = torch.where(valid[:, None], noisy_e, embeds)
    return (embeds, ids, w.to(torch.float32) if acc == torch.float32 else w, entropy, max_prob, valid, noisy)


def soft_mixture_dense(logits, embedding, *, temperature=1.0):
    """The dense concept token ``softmax(logits / T) @ embedding`` over the whole
    vocabulary (no top-k): the formulation the fused gather replaces; a
    benchmark baseline. Computes the matmul in the embedding's dtype."""
    p = torch.softmax(logits.float() / temperature, dim=-1)
    return p.to(embedding.dtype) @ embedding


# ============================================================================ sampling

__all__ += ["filter_probs", "sample", "sample_exact", "uniform53", "draw_mass32", "gumbel_noise", "gumbel_softmax",
            "gumbel_softmax_topk", "top_k_mask_logits", "top_p_renorm_probs", "min_p_renorm_probs"]


def _row_values(v, batch: int, dtype, device) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.to(device=device, dtype=dtype).reshape(-1).expand(batch) if v.numel() == 1 \
            else v.to(device=device, dtype=dtype)
    return torch.full((batch,), v, dtype=dtype, device=device)


def _row_valid(x: torch.Tensor) -> torch.Tensor:
    """A row is valid iff it has no NaN, no +inf and at least one finite logit."""
    return ~torch.isnan(x).any(-1) & ~(x == float("inf")).any(-1) & torch.isfinite(x).any(-1)


def filter_probs(logits: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
    """The filtered, renormalised softmax(logits / T) of every row (sort-based).

    Semantics of include/softdec/filter.h: order = logit descending, ties by
    lower index; top-k keeps the first k (k = 0 or k >= V: all); top-p keeps the
    smallest prefix of the top-k-renormalised distribution whose mass reaches
    top_p (at least one token); min-p keeps p >= min_p * max p; T = 0 is the
    one-hot argmax. Computed in the dtype of ``logits`` (float64 in tests).

    Returns ``(probs[B, V], valid[B])``; invalid rows (NaN, +inf or no finite
    logit) are all zero.
    """
    x = logits
    B, V = x.shape
    dev = x.device
    T = _row_values(temperature, B, x.dtype, dev)
    k = _row_values(top_k, B, torch.int64, dev)
    tp = _row_values(top_p, B, x.dtype, dev)
    mp = _row_values(min_p, B, x.dtype, dev)
    valid = _row_valid(x)
    xs = torch.where(valid[:, None], x, torch.zeros_like(x))
    greedy = T == 0
    z = xs / torch.where(greedy, torch.ones_like(T), T)[:, None]
    order = torch.sort(xs, dim=-1, descending=True, stable=True).indices
    zs = torch.gather(z, 1, order)
    finite = torch.isfinite(zs)
    m = zs[:, :1]
    e = torch.where(finite, torch.exp(zs - m), torch.zeros_like(zs))
    rank = torch.arange(V, device=dev)[None, :]
    keep = finite.clone()
    kk = torch.where((k > 0) & (k < V), k, torch.full_like(k, V))
    keep &= rank < kk[:, None]
    e = e * keep
    total = e.sum(-1, keepdim=True)
    excl = torch.cumsum(e, -1) - e
    use_p = (tp < 1)[:, None]
    keep_p = (excl < tp[:, None] * total) | (rank == 0)
    keep &= ~use_p | keep_p
    keep &= torch.exp(zs - m) >= mp[:, None]
    e = torch.where(keep, torch.exp(zs - m), torch.zeros_like(zs))
    ps = e / e.sum(-1, keepdim=True)
    probs = torch.zeros_like(z).scatter(1, order, ps)
    onehot = torch.zeros_like(z).scatter(1, order[:, :1], 1.0)
    probs = torch.where(greedy[:, None], onehot, probs)
    probs = torch.where(valid[:, None], probs, torch.zeros_like(probs))
    return probs, valid


def sample(logits: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, generator=None):
    """The eager baseline: softmax, sort-based filtering, ``torch.multinomial``.

    Returns ``(ids[B] int64, valid[B] bool)``; invalid rows give id 0.
    """
    probs, valid = filter_probs(logits.float(), temperature, top_k, top_p, min_p)
    safe = torch.where(valid[:, None], probs, torch.ones_like(probs))
    ids = torch.multinomial(safe, 1, generator=generator).squeeze(1)
    return torch.where(valid, ids, torch.zeros_like(ids)), valid


def gumbel_noise(seed, offset, batch: int, vocab: int) -> torch.Tensor:
    """G[r, i] = -log(-log u), u = element i of the (seed[r], offset[r]) stream; float64."""
    seeds = _row_values(seed, batch, torch.int64, "cpu").tolist()
    offs = _row_values(offset, batch, torch.int64, "cpu").tolist()
    u = torch.stack([philox_uniform(s, o, vocab) for s, o in zip(seeds, offs)]) if batch else \
        torch.zeros(0, vocab)
    return -torch.log(-torch.log(u.double()))


def uniform53(seed: int, offset: int) -> float:
    """The one uniform of ``softdec.sample``'s draw: 27 bits of element 0 and 26 bits of
    element 1 of the ``(seed, offset)`` stream, ``(k + 0.5) / 2**53`` (include/softdec/philox.h)."""
    seed &= (1 << 64) - 1
    offset &= (1 << 64) - 1
    ctr = np.array([[0, 0, offset & _MASK, offset >> 32]], np.uint64)
    key = np.array([[seed & _MASK, seed >> 32]], np.uint64)
    w = philox4x32_10(ctr, key)[0]
    k = (int(w[0]) >> 5) << 26 | (int(w[1]) >> 6)
    return (k + 0.5) / 2.0 ** 53


def _f32_fma(a, b, c):
    # a * b is exact in float64 for float32 a, b; one rounding to float32 after the add
    # (a double rounding differs from a true FMA only in ~2^-29 of halfway cases).
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)


def draw_mass32(z: np.ndarray) -> np.ndarray:
    """``filter::fexp2`` of float32 ``z`` step by step in float32 (include/softdec/filter.h):
    2^z, Cephes polynomial on [-1/2, 1/2]; 0 for z <= -125."""
    f = np.float32
    z = np.asarray(z, np.float32)
    live = z > f(-125.0)
    x = np.minimum(np.where(live, z, f(0.0)), f(0.0))
    n = np.rint(x).astype(np.float32)  # nearest, ties to even
    r = (x - n).astype(np.float32)
    p = np.full_like(x, f(1.5403530393381609e-4))
    for c in (1.3333558146428443e-3, 9.6181291076284772e-3, 5.5504108664821580e-2,
              2.4022650695910071e-1, 6.9314718055994531e-1, 1.0):
        p = _f32_fma(p, r, f(c))
    scale = ((n.astype(np.int32) + 127).astype(np.uint32) << np.uint32(23)).view(np.float32)
    return np.where(live, (p * scale).astype(np.float32), f(0.0))


def _pick(mass, target: float) -> int:
    """First j with mass > 0 whose running float64 sum exceeds target, else the last with mass."""
    run, last = 0.0, -1
    for j in np.nonzero(mass > 0)[0]:
        run += float(mass[j])
        last = int(j)
        if run > target:
            return last
    return last


def kept_mass_digits(masses) -> tuple[int, int, int]:
    """The exact rule's digit sums of a set of float masses in [0, 1] (include/softdec/filter.h
    "the kept mass Z, exactly", ``MassSum``): each mass e is cut into three base-2^32 digits below
    the binary point, ``d0 = floor(e 2^32)``, then the next 32 bits twice (exact double steps;
    bits below 2^-96 dropped), and the digits are summed as integers."""
    s0 = s1 = s2 = 0
    for e in masses:
        a = float(e) * 2.0 ** 32
        d0 = math.floor(a)
        a = (a - d0) * 2.0 ** 32
        d1 = math.floor(a)
        a = (a - d1) * 2.0 ** 32
        s0, s1, s2 = s0 + d0, s1 + d1, s2 + math.floor(a)
    return s0, s1, s2


def kept_mass_value(digits) -> float:
    """Z of three digit sums (``MassSum::value``): ``(S0 2^64 + S1 2^32 + S2) 2^-96`` rounded once
    to the nearest double, ties to even (Python's int / int is correctly rounded). The verify
    kernels' factor is ``float32(1 / Z)`` (``filter::inv_norm``)."""
    s0, s1, s2 = (int(v) for v in digits)
    return ((s0 << 64) + (s1 << 32) + s2) / 2 ** 96


def sample_exact(logits: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                 seed=0, offset=0):
    """The exact-stream oracle of ``softdec.sample``: inversion over the kept set.

    Kept set from :func:`filter_probs` (float64). Masses as the kernels compute
    them: ``2^((x - max) * c)`` in float32 (:func:`draw_mass32`), ``c = (1/T) * log2(e)``
    in float32; one uniform ``u`` = :func:`uniform53` of the row's ``(seed, offset)``.
    The sums in the kernels' order (csrc/cpu/sampling_kernels.h): rows with top-k
    (k <= 2048) walk their kept tokens in vocabulary order; the others sum 1024-token
    blocks as 16 float32 lanes (lane l: tokens 16 j + l, in j order) added in float64,
    pick the block, then the token inside it. T = 0: the argmax. Returns ``(ids, valid)``.
    """
    B, V = logits.shape
    x32 = logits.detach().float().cpu()
    probs, valid = filter_probs(logits.detach().double().cpu(), temperature, top_k, top_p, min_p)
    T = _row_values(temperature, B, torch.float32, "cpu")
    K = _row_values(top_k, B, torch.int64, "cpu")
    seeds = row_keys(seed, B).tolist()
    offs = _row_values(offset, B, torch.int64, "cpu").tolist()
    ids = torch.zeros(B, dtype=torch.int64)
    for r in range(B):
        if not bool(valid[r]):
            continue
        kept = (probs[r] > 0).numpy()
        if float(T[r]) == 0.0:
            ids[r] = int(probs[r].argmax())
            continue
        xr = x32[r].numpy()
        c = np.float32(np.float32(1.0) / np.float32(T[r].item())) * np.float32(1.44269504088896341)
        m = np.float32(xr[np.isfinite(xr)].max())
        z = ((xr - m).astype(np.float32) * c).astype(np.float32)
        mass = np.where(kept, draw_mass32(np.where(kept, z, np.float32(-1e30))), np.float32(0))
        u = uniform53(seeds[r], offs[r])
        k = int(K[r])
        if 0 < k < V and k <= 2048:  # the top-k candidate path
            total = 0.0
            for j in np.nonzero(mass > 0)[0]:
                total += float(mass[j])
            ids[r] = _pick(mass, u * total)
            continue
        nb = (V + 1023) // 1024
        padded = np.zeros(nb * 1024, np.float32)
        padded[:V] = mass
        lanes = np.cumsum(padded.reshape(nb, 64, 16), axis=1, dtype=np.float32)[:, -1, :]  # float, j order
        blk = np.zeros(nb)
        for b in range(nb):
            acc = 0.0
            for v in lanes[b]:
                acc += float(v)
            blk[b] = acc
        total = 0.0
        for v in blk:
            total += float(v)
        target = u * total
        b = _pick(blk, target)
        before = 0.0
        for v in blk[:b]:
            before += float(v)
        j = _pick(mass[b * 1024:(b + 1) * 1024], target - before)
        ids[r] = b * 1024 + j
    return ids.to(logits.device), valid.to(logits.device)


def gumbel_softmax(logits: torch.Tensor, tau=1.0, seed=0, offset=0, noise=None):
    """``softmax((logits + G) / tau)`` with softdec's noise (float64), and ``argmax(logits + G)``.
    Rows with NaN, +inf or no finite logit are all zero (argmax 0)."""
    B, V = logits.shape
    x = logits.double()
    g = gumbel_noise(row_keys(seed, B), offset, B, V).to(x.device) if noise is None else noise.double()
    t = _row_values(tau, B, torch.float64, x.device)
    y = x + g
    valid = _row_valid(x)
    probs = torch.softmax(torch.where(valid[:, None], y, torch.zeros_like(y)) / t[:, None], -1)
    probs = torch.where(valid[:, None], probs, torch.zeros_like(probs))
    am = torch.where(valid, torch.where(valid[:, None], y, torch.zeros_like(y)).argmax(-1),
                     torch.zeros(B, dtype=torch.int64, device=x.device))
    return probs, am


def gumbel_softmax_topk(logits: torch.Tensor, k: int, tau=1.0, seed=0, offset=0):
    """The k largest ``logits + G`` (ties: lower index) and the softmax of ``(logits + G) / tau``
    over them; positions beyond the finite tokens repeat the top id with weight 0."""
    B, V = logits.shape
    x = logits.double()
    y = x + gumbel_noise(row_keys(seed, B), offset, B, V).to(x.device)
    valid = _row_valid(x)
    y = torch.where(valid[:, None], y, torch.full_like(y, -float("inf")))
    order = torch.sort(y, dim=-1, descending=True, stable=True).indices[:, :k]
    yk = torch.gather(y, 1, order)
    fin = torch.isfinite(yk)
    t = _row_values(tau, B, torch.float64, x.device)
    w = torch.softmax(torch.where(fin, yk, torch.full_like(yk, -float("inf"))) / t[:, None], -1)
    w = torch.where(fin & valid[:, None], w, torch.zeros_like(w))
    ids = torch.where(fin, order, order[:, :1])
    ids = torch.where(valid[:, None], ids, torch.zeros_like(ids))
    return ids, w


def top_k_mask_logits(logits: torch.Tensor, top_k) -> torch.Tensor:
    """Logits outside each row's top-k (ties: lower index first) set to -inf; k = 0 or k >= V keeps all.
    A row containing a NaN is invalid: all -inf."""
    B, V = logits.shape
    k = _row_values(top_k, B, torch.int64, logits.device)
    bad = torch.isnan(logits).any(-1, keepdim=True).expand(B, V)
    x = torch.where(bad, torch.full_like(logits, -float("inf")), logits)
    order = torch.sort(x, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(V, device=x.device).expand(B, V))
    kk = torch.where((k > 0) & (k < V), k, torch.full_like(k, V))
    return torch.where(rank < kk[:, None], x, torch.full_like(x, -float("inf")))


def _probs_valid(p: torch.Tensor) -> torch.Tensor:
    return (torch.isfinite(p) & (p >= 0)).all(-1) & (p > 0).any(-1)


def top_p_renorm_probs(probs: torch.Tensor, top_p) -> torch.Tensor:
    """Each row restricted to the smallest prefix (descending, ties: lower index) whose mass
    reaches top_p * row sum, renormalised; invalid rows (NaN, inf, negative, all zero) are zero."""
    B, V = probs.shape
    tp = _row_values(top_p, B, probs.dtype, probs.device)
    valid = _probs_valid(probs)
    p = torch.where(valid[:, None], probs, torch.zeros_like(probs))
    ps, order = torch.sort(p, dim=-1, descending=True, stable=True)
    excl = torch.cumsum(ps, -1) - ps
    total = ps.sum(-1, keepdim=True)
    rank = torch.arange(V, device=p.device)[None, :]
    keep = ((excl < tp[:, None] * total) | (rank == 0) | (tp[:, None] >= 1)) & (ps > 0)
    ps = torch.where(keep, ps, torch.zeros_like(ps))
    out = torch.zeros_like(p).scatter(1, order, ps / ps.sum(-1, keepdim=True).clamp_min(1e-300))
    return torch.where(valid[:, None], out, torch.zeros_like(out))


def min_p_renorm_probs(probs: torch.Tensor, min_p) -> torch.Tensor:
    """Each row restricted to p >= min_p * max p, renormalised; invalid rows are zero."""
    B, V = probs.shape
    mp = _row_values(min_p, B, probs.dtype, probs.device)
    valid = _probs_valid(probs)
    p = torch.where(valid[:, None], probs, torch.zeros_like(probs))
    keep = (p >= mp[:, None] * p.max(-1, keepdim=True).values) & (p > 0)
    p = torch.where(keep, p, torch.zeros_like(p))
    out = p / p.sum(-1, keepdim=True).clamp_min(1e-300)
    return torch.where(valid[:, None], out, torch.zeros_like(out))


# ============================================================================ speculative verification

__all__ += ["verify_target_probs", "verify_soft_token", "verify", "chain_speculative_sampling"]

_VERIFY_METHODS = ("exact", "greedy", "typical", "relaxed", "soft")


def _verify_rows(value, batch, dtype, device):
    if isinstance(value, torch.Tensor):
        return value.reshape(-1).expand(batch).to(device=device, dtype=dtype) if value.numel() == 1 \
            else value.to(device=device, dtype=dtype)
    return torch.full((batch,), value, dtype=dtype, device=device)


def verify_target_probs(logits: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0,
                        min_p=0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The target distribution of every softdec verifier, batched over rows.

    ``logits`` (B, V) -> ``(p, valid)``: ``p`` (B, V) the filtered, renormalised
    softmax(logits / T) in the project-wide filter order (top-k with ties broken
    lower index first, then top-p on the renormalised top-k, then min-p, each
    renormalised); T = 0 is the one-hot argmax (lowest index on ties).
    ``valid`` (B,) is False for rows holding NaN or +inf or only -inf (their ``p`` is 0).
    Computes in float64 for float64 input, else float32.
    """
    B, V = logits.shape
    wdt = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.to(wdt)
    dev = x.device
    T = _verify_rows(temperature, B, wdt, dev)
    k = _verify_rows(top_k, B, torch.int64, dev)
    tp = _verify_rows(top_p, B, wdt, dev)
    mp = _verify_rows(min_p, B, wdt, dev)
    valid = ~torch.isnan(x).any(-1) & ~(x == float("inf")).any(-1) & (x > -float("inf")).any(-1)
    xs = torch.where(valid[:, None], x, torch.zeros_like(x))
    greedy = T == 0
    scaled = xs / torch.where(greedy, torch.ones_like(T), T)[:, None]
    p = torch.softmax(scaled, -1)
    onehot = torch.zeros_like(p).scatter_(1, xs.argmax(-1, keepdim=True), 1.0)
    p = torch.where(greedy[:, None], onehot, p)
    if bool(((k <= 0) | (k >= V)).all()) and bool((tp >= 1).all()):
        # no top-k / top-p: min-p alone needs no sort
        keep = ~(p < mp[:, None] * p.max(-1, keepdim=True).values)
        p = torch.where(keep, p, torch.zeros_like(p))
        p = p / p.sum(-1, keepdim=True)
        p = torch.where(valid[:, None], p, torch.zeros_like(p))
        return p, valid
    # sort once (value descending, lower index first on ties): every filter keeps a prefix
    sp, order = torch.sort(p, dim=-1, descending=True, stable=True)
    rank = torch.arange(V, device=dev)[None, :]
    keep = (k[:, None] <= 0) | (rank < k[:, None])
    sp = torch.where(keep, sp, torch.zeros_like(sp))
    sp = sp / sp.sum(-1, keepdim=True)
    excl = torch.cumsum(sp, -1) - sp
    keep = keep & ((tp[:, None] >= 1) | (excl < tp[:, None]) | (rank == 0))
    sp = torch.where(keep, sp, torch.zeros_like(sp))
    sp = sp / sp.sum(-1, keepdim=True)
    keep = keep & ~(sp < mp[:, None] * sp[:, :1])
    sp = torch.where(keep, sp, torch.zeros_like(sp))
    sp = sp / sp.sum(-1, keepdim=True)
    p = torch.zeros_like(sp).scatter_(1, order, sp)
    p = torch.where(valid[:, None], p, torch.zeros_like(p))
    return p, valid


def _filtered_soft_probs(logits, kk, temperature, top_p, min_p, filter_top_k):
    """soft_mixture's filter_top_k chain as a dense (B, V) distribution plus valid (B,):
    softmax(x / T) -> the filter_top_k largest (0 or >= V: all), renormalised ->
    top_p -> min_p -> the kk largest -> renormalised; T = 0: one-hot argmax."""
    B, V = logits.shape
    wdt = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.to(wdt)
    dev = x.device
    T = _verify_rows(temperature, B, wdt, dev)
    tp = _verify_rows(top_p, B, wdt, dev)
    mp = _verify_rows(min_p, B, wdt, dev)
    fk = _verify_rows(filter_top_k, B, torch.int64, dev)
    fk = torch.where((fk <= 0) | (fk >= V), torch.full_like(fk, V), fk)
    valid = ~torch.isnan(x).any(-1) & ~(x == float("inf")).any(-1) & (x > -float("inf")).any(-1)
    xs = torch.where(valid[:, None], x, torch.zeros_like(x))
    greedy = T == 0
    p = torch.softmax(xs / torch.where(greedy, torch.ones_like(T), T)[:, None], -1)
    w, ids = torch.sort(p, dim=-1, descending=True, stable=True)
    r = torch.arange(V, device=dev)[None, :]
    w = torch.where(r < fk[:, None], w, torch.zeros_like(w))
    w = w / w.sum(-1, keepdim=True)
    cum_before = torch.cumsum(w, -1) - w
    keep = (r < fk[:, None]) & ((tp[:, None] >= 1) | (cum_before < tp[:, None]))
    keep &= w >= mp[:, None] * w[:, :1]
    keep &= r < kk[:, None]
    keep[:, 0] = True
    w = torch.where(keep, w, torch.zeros_like(w))
    w = w / w.sum(-1, keepdim=True)
    onehot = torch.zeros_like(w)
    onehot[:, 0] = 1.0
    w = torch.where(greedy[:, None], onehot, w)
    ids = torch.where(greedy[:, None], xs.argmax(-1, keepdim=True).expand_as(ids), ids)
    out = torch.zeros_like(p).scatter_(1, ids, w)
    out = torch.where(greedy[:, None], torch.zeros_like(p).scatter_(1, xs.argmax(-1, keepdim=True), 1.0), out)
    return torch.where(valid[:, None], out, torch.zeros_like(out)), valid


def verify_soft_token(logits: torch.Tensor, k: int, temperature=1.0, top_k=0, top_p=1.0,
                      min_p=0.0, filter_top_k=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The target's soft token: DESIGN "Soft tokens" steps 1-2 and 4 (no noise).

    ``logits`` (B, V) -> ``(ids (B, k) int64, weights (B, k), valid (B,))``: the
    filtered distribution (``top_k`` 0 means ``k``) restricted to its ``k`` largest
    entries, sorted by weight descending (lower id first on ties), ids padded with
    the row's top id and weight 0. Invalid rows give ids 0 and weights 0.
    ``filter_top_k`` (None, int or (B,)): soft_mixture's filter chain (see
    ``softdec.verify``); None keeps the top_k-first chain.
    """
    B, V = logits.shape
    dev = logits.device
    kk = _verify_rows(top_k, B, torch.int64, dev)
    kk = torch.where(kk <= 0, torch.full_like(kk, k), torch.clamp(kk, max=k))
    if filter_top_k is None:
        p, valid = verify_target_probs(logits, temperature, kk, top_p, min_p)
    else:
        p, valid = _filtered_soft_probs(logits, kk, temperature, top_p, min_p, filter_top_k)
    kv = min(k, V)
    w, ids = torch.sort(p, dim=-1, descending=True, stable=True)
    w, ids = w[:, :kv], ids[:, :kv]
    if kv < k:
        w = torch.cat([w, w.new_zeros(B, k - kv)], 1)
        ids = torch.cat([ids, ids[:, :1].expand(B, k - kv)], 1)
    ids = torch.where(w > 0, ids, ids[:, :1].expand_as(ids))
    ids = torch.where(valid[:, None], ids, torch.zeros_like(ids))
    w = torch.where(valid[:, None], w, torch.zeros_like(w))
    return ids, w, valid


def _verify_race(r: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Exponential race argmax_i r_i / E_i, E_i = -log(u_i), u_i = element i of (seed, offset)."""
    from .ops import philox_uniform as _pu
    B, V = r.shape
    u = _pu((B, V), seed.cpu(), offset.cpu()).to(device=r.device, dtype=r.dtype)
    return torch.argmax(r / -torch.log(u), dim=-1)


def _soft_tv(ti, tw, di, dw):
    """Total-variation distance between two sparse distributions (ids, weights), (B, k) each."""
    V = int(max(int(ti.max()), int(di.max()))) + 1 if ti.numel() else 1
    a = torch.zeros(ti.shape[0], V, dtype=torch.float64).scatter_add_(1, ti, tw.double())
    b = torch.zeros(ti.shape[0], V, dtype=torch.float64).scatter_add_(1, di, dw.double())
    return 0.5 * (a - b).abs().sum(-1)


# Soft-rule slack on delta (include/softdec/verify.h kSoftTvSlack): float32 rounding
# of the weights must not make identical soft tokens differ.
SOFT_TV_SLACK = 1e-6


def verify(target_logits: torch.Tensor, draft_ids, *, num_draft=None, draft_probs=None,
           method: str = "exact", temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
           posterior_threshold: float = 0.09, posterior_alpha: float = 0.3, neighbours=None,
           delta: float = 0.1, seed=0, offset=0, filter_top_k=None):
    """Reference of ``softdec.verify``: a straightforward loop over positions, batched over rows.

    Same arguments, RNG layout and results as ``softdec.verify`` (``seed`` and
    ``offset`` are ints or (B,) tensors; no generator). Computes in float64 for
    float64 logits, else float32. Returns ``softdec.Verified``.
    """
    from .ops import Verified
    B, K1, V = target_logits.shape
    K = K1 - 1
    dev = target_logits.device
    m = _VERIFY_METHODS.index(method)
    wdt = torch.float64 if target_logits.dtype == torch.float64 else torch.float32
    n = _verify_rows(K if num_draft is None else num_draft, B, torch.int64, dev)
    s = row_keys(seed, B)
    o = _verify_rows(offset, B, torch.int64, torch.device("cpu"))
    sparse = isinstance(draft_probs, (tuple, list))
    if sparse:
        sid, sw = draft_probs[0].long(), draft_probs[1].to(wdt)
    if draft_ids is None:  # soft drafts: the draft token is each position's heaviest id
        draft_ids = sid.gather(2, sw.argmax(-1, keepdim=True))[..., 0]
    draft_ids = draft_ids.long()
    from .ops import philox_uniform as _pu
    u_acc = _pu((B, K1), s, o).to(device=dev, dtype=wdt)
    tokens = torch.full((B, K1), -1, dtype=torch.int64, device=dev)
    nacc = torch.zeros(B, dtype=torch.int64, device=dev)
    alive = torch.ones(B, dtype=torch.bool, device=dev)
    ks = sid.shape[-1] if (sparse and m == 4) else 0
    soft_ids = torch.zeros(B, ks, dtype=torch.int64, device=dev)
    soft_w = torch.zeros(B, ks, dtype=torch.float32, device=dev)
    ar = torch.arange(B, device=dev)
    for j in range(K1):
        if not bool(alive.any()):
            break
        lj = target_logits[:, j]
        if m == 4:
            ti, tw, valid = verify_soft_token(lj, ks, temperature, top_k, top_p, min_p, filter_top_k)
        else:
            p, valid = verify_target_probs(lj, temperature, top_k, top_p, min_p)
        test = alive & (j < n) & valid
        final = alive & ~test  # rows that emit at this position (stop, bonus or invalid)
        if j < K:
            x = draft_ids[:, j].clamp(0, V - 1)
            if m == 4:
                tv = _soft_tv(ti, tw, sid[:, j], sw[:, j])
                acc = test & (tv <= delta + SOFT_TV_SLACK)
            elif m == 1:
                acc = test & (x == lj.to(wdt).argmax(-1))
            else:
                px = p[ar, x]
                if draft_probs is None:
                    qx = torch.ones_like(px)
                elif sparse:
                    qx = (sw[:, j] * (sid[:, j] == x[:, None])).sum(-1)
                else:
                    qx = draft_probs[:, j].to(wdt)[ar, x]
                if m == 0:
                    acc = test & (u_acc[:, j] * qx < px)
                elif m == 2:
                    plogp = torch.where(p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))),
                                        torch.zeros_like(p))
                    H = -plogp.sum(-1)
                    thr = torch.minimum(torch.full_like(H, posterior_threshold),
                                        posterior_alpha * torch.exp(-H))
                    acc = test & (px > thr)
                else:  # relaxed: x's neighbour prefix holding at most delta extra mass
                    nb = neighbours[x].long()  # (B, m)
                    extra = torch.zeros_like(px)
                    inA = torch.zeros(B, V, dtype=torch.bool, device=dev)
                    open_ = torch.ones_like(test)
                    seen = torch.zeros(B, V, dtype=torch.bool, device=dev)
                    seen[ar, x] = True
                    for c in range(nb.shape[1]):
                        y = nb[:, c]
                        ok = (y >= 0)
                        yc = y.clamp(min=0)
                        fresh = ok & ~seen[ar, yc]
                        py = torch.where(fresh, p[ar, yc], torch.zeros_like(px))
                        open_ = open_ & (extra + py <= delta)
                        take = open_ & fresh
                        extra = extra + torch.where(take, py, torch.zeros_like(py))
                        inA[ar[take], yc[take]] = True
                        seen[ar[fresh], yc[fresh]] = True
                    acc = test & (u_acc[:, j] * qx < px + extra)
            rej = test & ~acc
            tokens[:, j] = torch.where(acc, x, tokens[:, j])
            nacc += acc.long()
        else:
            rej = torch.zeros_like(test)
        # emitted token at the stop position
        if bool((rej | final).any()):
            if m == 4:
                top = torch.where(valid, ti[:, 0], torch.full_like(ti[:, 0], -1))
                stop = rej | final
                tokens[:, j] = torch.where(stop, top, tokens[:, j])
                soft_ids = torch.where(stop[:, None], ti, soft_ids)
                soft_w = torch.where(stop[:, None], tw.float(), soft_w)
            elif m == 1:
                am = lj.to(wdt).argmax(-1)
                stop = rej | final
                tokens[:, j] = torch.where(stop, torch.where(valid, am, torch.full_like(am, -1)), tokens[:, j])
            else:
                if m in (0, 3) and j < K:
                    if draft_probs is None:
                        q = torch.zeros_like(p).scatter_(1, x[:, None], 1.0)
                    elif sparse:
                        q = torch.zeros_like(p).scatter_add_(1, sid[:, j], sw[:, j])
                    else:
                        q = draft_probs[:, j].to(wdt)
                    r = torch.clamp(p - q, min=0)
                    if m == 3:
                        r = torch.where(inA, torch.zeros_like(r), r)
                    r = torch.where((r.sum(-1, keepdim=True) > 0), r, p)
                    r = torch.where(rej[:, None], r, p)
                else:
                    r = p
                tok = _verify_race(r, s, o + 1 + j).to(dev)
                stop = rej | final
                tokens[:, j] = torch.where(stop, torch.where(valid, tok, torch.full_like(tok, -1)), tokens[:, j])
            alive = alive & ~(rej | final)
    return Verified(tokens, nacc, soft_ids if m == 4 else None, soft_w if m == 4 else None)


def chain_speculative_sampling(draft_probs, draft_token_ids, target_probs, *, seed=0, offset=0):
    """Reference of ``softdec.chain_speculative_sampling`` (FlashInfer's argument order).

    Returns ``(output_token_ids (B, K+1) int32, accepted (B,) int32, emitted (B,) int32)``.
    """
    from .ops import philox_uniform as _pu
    B, K, V = draft_probs.shape
    wdt = torch.float64 if target_probs.dtype == torch.float64 else torch.float32
    logits = torch.log(target_probs.to(wdt))
    res = verify(logits, draft_token_ids.long(), draft_probs=draft_probs.to(wdt), seed=seed, offset=offset)
    s = row_keys(seed, B)
    o = _verify_rows(offset, B, torch.int64, torch.device("cpu"))
    u = _pu((B, K + 1), s, o).to(device=draft_probs.device, dtype=wdt)[:, :K]
    p = torch.softmax(logits, -1)
    ids = draft_token_ids.long()[..., None]
    acc = (u * draft_probs.to(wdt).gather(2, ids)[..., 0] < p[:, :K].gather(2, ids)[..., 0]).sum(1)
    return res.tokens.int(), acc.int(), res.num_accepted.int()


# ============================================================================ token-sparse attention
# SDPA-based oracles (torch.nn.functional.scaled_dot_product_attention). The
# selection rules are spelled out with plain tensor ops, in the dtype given
# (tests pass float64).

def _sdpa(q, k, v, mask=None, is_causal=False, scale=None):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                                            scale=scale)


def _lens_list(seq_lens, B, N):
    if seq_lens is None:
        return [N] * B
    if isinstance(seq_lens, int):
        return [seq_lens] * B
    if isinstance(seq_lens, torch.Tensor):
        seq_lens = seq_lens.tolist()
    return [int(x) for x in seq_lens]


def dense_decode_attention(q, k_cache, v_cache, *, seq_lens=None, scale=None):
    """Dense decode attention over the whole cache with SDPA (GQA): the bench baseline.

    q (B, Hq, d); k_cache, v_cache (B, Hkv, N, d); returns (B, Hq, d). With
    ``seq_lens`` a key mask drops tokens at or beyond each row's length.
    """
    B, Hq, d = q.shape
    Hkv, N = k_cache.shape[1], k_cache.shape[2]
    mask = None
    if seq_lens is not None:
        lens = torch.as_tensor(seq_lens, device=q.device).reshape(-1).expand(B)
        mask = (torch.arange(N, device=q.device)[None, :] < lens[:, None])[:, None, None, :]
    out = torch.nn.functional.scaled_dot_product_attention(
        q[:, :, None, :], k_cache, v_cache, attn_mask=mask, scale=scale, enable_gqa=Hq != Hkv)
    return out[:, :, 0, :]


def page_summary(k_cache, page_size=16, seq_lens=None):
    """(kmin, kmax): per-page per-channel min/max over valid tokens; empty pages 0."""
    B, H, N, d = k_cache.shape
    P = -(-N // page_size)
    kmin = torch.zeros(B, H, P, d, dtype=k_cache.dtype)
    kmax = torch.zeros(B, H, P, d, dtype=k_cache.dtype)
    for b, L in enumerate(_lens_list(seq_lens, B, N)):
        for p in range(P):
            t0, t1 = p * page_size, min((p + 1) * page_size, L)
            if t1 > t0:
                kmin[b, :, p] = k_cache[b, :, t0:t1].amin(dim=1)
                kmax[b, :, p] = k_cache[b, :, t0:t1].amax(dim=1)
    return kmin, kmax


def page_bounds(q, kmin, kmax, scale=1.0):
    """Quest bounds (B, Hq, P): sum_i max(s q_i kmin_i, s q_i kmax_i) (GQA by repeat)."""
    G = q.shape[1] // kmin.shape[1]
    qs = (q * scale)[:, :, None, :]
    mn = kmin.repeat_interleave(G, dim=1).to(q.dtype)
    mx = kmax.repeat_interleave(G, dim=1).to(q.dtype)
    return torch.maximum(qs * mn, qs * mx).sum(-1)


def _region(L, sink, window):
    se = min(sink, L)
    return se, max(se, L - window)


def _top(scores, idx, need):
    """The `need` best of idx by (score desc, index asc), sorted by index."""
    if need >= len(idx):
        return sorted(idx)
    s = torch.nan_to_num(scores.double(), nan=-float("inf")).tolist()
    order = sorted(range(len(idx)), key=lambda i: (-s[i], idx[i]))[:need]
    return sorted(idx[i] for i in order)


def sparse_decode_select(q, k_cache, *, budget, select="page", page_size=16, sink=4, window=64,
                         seq_lens=None, scale=None, kmin=None, kmax=None):
    """Selected token indices per (row, KV head): a list of lists of sorted ints."""
    B, Hq, d = q.shape
    Hkv, N = k_cache.shape[1], k_cache.shape[2]
    G = Hq // Hkv
    scale = d ** -0.5 if scale is None else scale
    lens = _lens_list(seq_lens, B, N)
    if select == "page" and kmin is None:
        kmin, kmax = page_summary(k_cache, page_size, lens)
    out = []
    for b in range(B):
        L = lens[b]
        se, ws = _region(L, sink, window)
        row = []
        if select == "page":
            bnd = page_bounds(q[b:b + 1], kmin[b:b + 1], kmax[b:b + 1], scale)[0]  # (Hq, P)
            bnd = torch.nan_to_num(bnd, nan=-float("inf"))
        else:
            s = torch.einsum("hd,hnd->hn", q[b] * scale, k_cache[b, :, :L].repeat_interleave(G, dim=0))
            s = torch.nan_to_num(s, nan=-float("inf"))
            p = torch.softmax(s, dim=-1) if L else s
        for g in range(Hkv):
            if select == "page":
                if se < ws:
                    first, last = se // page_size, (ws - 1) // page_size + 1
                else:
                    first = last = 0
                pages = list(range(first, last))
                sc = bnd[g * G:(g + 1) * G, first:last].amax(dim=0)
                chosen = _top(sc, pages, -(-budget // page_size))
                mid = [t for pg in chosen for t in range(max(pg * page_size, se), min((pg + 1) * page_size, ws))]
            else:
                cand = list(range(se, ws))
                vote = p[g * G:(g + 1) * G, se:ws].sum(0) if cand else torch.zeros(0)
                mid = _top(vote, cand, budget)
            row.append(list(range(se)) + mid + list(range(ws, L)))
        out.append(row)
    return out


def sparse_decode_attention(q, k_cache, v_cache, *, budget, select="page", page_size=16, sink=4, window=64,
                            seq_lens=None, scale=None, indices=None, kmin=None, kmax=None):
    """softdec.sparse_decode_attention with SDPA over a boolean mask of the selected tokens.

    ``indices`` (a (B, Hkv, M) tensor padded with -1, or nested lists)
    overrides the selection, to check the attention on a given set.
    """
    B, Hq, d = q.shape
    Hkv, N = k_cache.shape[1], k_cache.shape[2]
    G = Hq // Hkv
    if indices is None:
        indices = sparse_decode_select(q, k_cache, budget=budget, select=select, page_size=page_size, sink=sink,
                                       window=window, seq_lens=seq_lens, scale=scale, kmin=kmin, kmax=kmax)
    mask = torch.zeros(B, Hkv, N, dtype=torch.bool)
    for b in range(B):
        for g in range(Hkv):
            ix = indices[b][g]
            ix = torch.as_tensor(ix, dtype=torch.int64)
            ix = ix[ix >= 0]
            mask[b, g, ix] = True
    mask = mask.repeat_interleave(G, dim=1)[:, :, None, :].to(q.device)
    out = _sdpa(q[:, :, None, :], k_cache.repeat_interleave(G, dim=1), v_cache.repeat_interleave(G, dim=1),
                mask=mask, scale=scale)[:, :, 0]
    return torch.where(mask.any(-1), out, torch.zeros_like(out))  # empty set -> 0 (SDPA gives NaN)


def token_sparse_scores(q, k, *, window=128, causal=True, scale=None):
    """(B, Hq, L): sum over the last `window` queries of their softmax over the keys."""
    B, Hq, L, d = q.shape
    G = Hq // k.shape[1]
    scale = d ** -0.5 if scale is None else scale
    w = min(window, L)
    kk = k.repeat_interleave(G, dim=1)
    s = torch.einsum("bhid,bhjd->bhij", q[:, :, L - w:] * scale, kk)
    if causal:
        pos = torch.arange(L - w, L)[:, None]
        s = s.masked_fill(torch.arange(L)[None, :] > pos, float("-inf"))
    # NaN scores count as -inf (a row with no finite score adds nothing); nan_to_num alone would also turn
    # the causal mask's -inf into the lowest finite value and hand such a row's mass to the future keys
    s = s.masked_fill(torch.isnan(s), float("-inf"))
    return torch.softmax(s, dim=-1).nan_to_num(0.0).sum(2)


def token_sparse_kept(scores, *, coverage=0.005, min_tokens=1024, window=128):
    """(B, Hq, L) bool: the drop rule of softdec.token_sparse_prefill on given scores."""
    B, H, L = scores.shape
    w = min(window, L)
    kept = torch.ones(B, H, L, dtype=torch.bool, device=scores.device)
    dmax = min(L - w, L - min(L, max(min_tokens, w)))
    if coverage <= 0 or dmax <= 0:
        return kept
    s = scores[..., :L - w].double()
    sv, order = torch.sort(s, dim=-1, stable=True)  # ascending score, ties by index
    cum = sv.cumsum(-1)
    limit = coverage * scores.double().sum(-1, keepdim=True)
    drop = (cum <= limit) & (torch.arange(L - w, device=s.device) < dmax)
    drop = drop.cumprod(-1).bool()  # the longest prefix only
    kept[..., :L - w].scatter_(-1, order, ~drop)
    return kept


def token_sparse_prefill(q, k, v, *, coverage=0.005, min_tokens=1024, window=128, causal=True, scale=None,
                         kept=None):
    """softdec.token_sparse_prefill: score, drop, gather, SDPA on the kept set, scatter back.

    ``kept`` (B, Hq, L) bool overrides the selection.
    """
    B, Hq, L, d = q.shape
    G = Hq // k.shape[1]
    if kept is None:
        kept = token_sparse_kept(token_sparse_scores(q, k, window=window, causal=causal, scale=scale),
                                 coverage=coverage, min_tokens=min_tokens, window=window)
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(Hq):
            ix = kept[b, h].nonzero()[:, 0].to(q.device)
            if ix.numel() == 0:
                continue
            qs, ks, vs = q[b, h, ix], k[b, h // G, ix], v[b, h // G, ix]
            out[b, h, ix] = _sdpa(qs[None], ks[None], vs[None], is_causal=causal, scale=scale)[0]
    return out


def sparse_decode_attention_topk(q, k_cache, v_cache, *, budget, select="page", page_size=16, sink=4,
                                  window=64, scale=None, kmin=None, kmax=None):
    """A vectorised torch formulation of sparse decode for benchmarking (full caches, no seq_lens).

    Same scores as softdec.sparse_decode_attention; torch.topk picks the set
    (its tie order is unspecified) and SDPA attends over the gathered tokens.
    Page mode may count a page that straddles the sink/window edge twice.
    """
    B, Hq, d = q.shape
    Hkv, N = k_cache.shape[1], k_cache.shape[2]
    G = Hq // Hkv
    scale = d ** -0.5 if scale is None else scale
    qg = (q * scale).reshape(B, Hkv, G, d)
    sink, window = min(sink, N), min(window, max(N - sink, 0))
    mid = N - sink - window
    if budget >= mid:
        idx = torch.arange(N, device=q.device).expand(B, Hkv, N)
    elif select == "token":
        s = torch.einsum("bgjd,bgnd->bgjn", qg.float(), k_cache.float())
        vote = torch.softmax(s, -1).sum(2)[..., sink:N - window]
        top = torch.topk(vote, budget, dim=-1).indices + sink
        edge = torch.cat([torch.arange(sink), torch.arange(N - window, N)]).to(q.device).expand(B, Hkv, -1)
        idx = torch.cat([edge, top], -1)
    else:
        if kmin is None:
            P = -(-N // page_size)
            kp = torch.nn.functional.pad(k_cache, (0, 0, 0, P * page_size - N)).reshape(B, Hkv, P, page_size, d)
            kmin, kmax = kp.amin(3), kp.amax(3)
        P = kmin.shape[2]
        qq = qg.float()[:, :, :, None, :]
        bound = torch.maximum(qq * kmin.float()[:, :, None], qq * kmax.float()[:, :, None]).sum(-1).amax(2)
        first, last = sink // page_size, (N - window - 1) // page_size + 1
        npages = min(-(-budget // page_size), last - first)
        top = torch.topk(bound[..., first:last], npages, dim=-1).indices + first
        tok = (top[..., None] * page_size + torch.arange(page_size, device=q.device)).flatten(-2).clamp(max=N - 1)
        edge = torch.cat([torch.arange(sink), torch.arange(N - window, N)]).to(q.device).expand(B, Hkv, -1)
        idx = torch.cat([edge, tok], -1)
    ks = torch.gather(k_cache, 2, idx[..., None].expand(-1, -1, -1, d))
    vs = torch.gather(v_cache, 2, idx[..., None].expand(-1, -1, -1, d))
    out = torch.nn.functional.scaled_dot_product_attention(qg, ks, vs, scale=1.0)
    return out.reshape(B, Hq, d)


def dense_causal_attention(q, k, v, *, scale=None):
    """Dense causal SDPA (GQA): the prefill bench baseline."""
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                            enable_gqa=q.shape[1] != k.shape[1])


__all__ += ["dense_decode_attention", "page_summary", "page_bounds", "sparse_decode_select",
            "sparse_decode_attention", "token_sparse_scores", "token_sparse_kept", "token_sparse_prefill",
            "dense_causal_attention", "sparse_decode_attention_topk"]



# ============================================================================ log-densities

__all__ += ["gumbel_log_density", "dirichlet_log_density", "gaussian_log_density", "soft_grpo_gumbel_log_prob"]


def _kept_log_pi(logits, ids, nkept, temperature):
    """log of softmax(logits / T)[ids] renormalised over the first nkept entries (float64; 0 elsewhere)
    and the kept mask. Equal to log_softmax over the vocabulary, gathered and renormalised; computed
    from the kept logits alone (the normaliser cancels), so a non-finite logit outside the kept ids
    does not matter."""
    x = logits.double()
    B, k = ids.shape
    T = _row_values(temperature, B, torch.float64, x.device)
    n = (torch.full((B,), k, dtype=torch.int64, device=x.device) if nkept is None
         else _row_values(nkept, B, torch.int64, x.device))
    kept = torch.arange(k, device=x.device)[None, :] < n[:, None]
    lk = x.gather(1, ids.clamp(0, x.shape[1] - 1)) / T[:, None]
    lk = torch.where(kept, lk, torch.full_like(lk, -math.inf))
    lse = torch.logsumexp(lk, dim=1, keepdim=True)
    lse = torch.where(n[:, None] > 0, lse, torch.zeros_like(lse))
    return torch.where(kept, lk - lse, torch.zeros_like(lk)), kept


def gumbel_log_density(logits, ids, y, *, temperature=1.0, noise_scale=1.0, gumbel_clamp=None, gumbel_eps=0.0,
                       nkept=None, reduction="mean", min_log_weight=None):
    """float64 reference of :func:`softdec.gumbel_log_density` (differentiable by autograd).

    ``nkept=None`` keeps the entries with ``y > -inf`` (soft_mixture pads the tail with ``-inf``).
    """
    yd = y.double()
    if nkept is None:
        nkept = (yd != -math.inf).sum(1)
    log_pi, kept = _kept_log_pi(logits, ids, nkept, temperature)
    lq = torch.log(torch.exp(log_pi) + gumbel_eps) if gumbel_eps > 0 else log_pi
    z = (torch.where(kept, yd, torch.zeros_like(yd)) - lq) / noise_scale
    if gumbel_clamp is not None:
        z = z.clamp(gumbel_clamp[0], gumbel_clamp[1])
    v = -math.log(noise_scale) - z - torch.exp(-z)
    counted = kept if min_log_weight is None else kept & (lq > min_log_weight)
    v = torch.where(counted, v, torch.zeros_like(v))
    if reduction == "none":
        return v
    s = v.sum(1)
    if reduction == "sum":
        return s
    c = counted.sum(1)
    return torch.where(c > 0, s / c.clamp_min(1), torch.zeros_like(s))


def soft_grpo_gumbel_log_prob(logits, ids, y):
    """SofT-GRPO's trainer quantity, float64, re-derived from its published formula.

    SofT-GRPO (github.com/zz1358m/SofT-GRPO-master, verl-0.4.x/verl/utils/torch_functional.py,
    ``logprobs_from_logits_topk_gumbel``; its actor divides the logits by the rollout temperature
    first): ``pi = softmax(logits)`` over the whole vocabulary, gathered at the stored top-k ids and
    renormalised over them; ``q = log(pi + 1e-6)``; ``z = clamp(y - q, -1.5, 3)``; per entry
    ``-z - exp(-z)``; the mean over the entries with ``q > -3``. (Its rows whose ids[1:] are all 0,
    discrete tokens, use the token's log-probability instead; not modelled here.)
    Equals ``gumbel_log_density(..., gumbel_clamp=(-1.5, 3), gumbel_eps=1e-6, min_log_weight=-3)``
    on rows without padding.
    """
    x = logits.double()
    p = torch.softmax(x, dim=-1).gather(-1, ids)
    q = torch.log(p / p.sum(-1, keepdim=True) + 1e-6)
    z = (y.double() - q).clamp(-1.5, 3)
    v = -z - torch.exp(-z)
    m = (q > -3).double()
    return (v * m).sum(-1) / m.sum(-1)


def dirichlet_log_density(logits, ids, weights, *, temperature=1.0, alpha=1.0, nkept=None):
    """float64 reference of :func:`softdec.dirichlet_log_density` (differentiable by autograd).

    ``nkept=None`` keeps the entries with ``weights != 0``.
    """
    w = weights.double()
    if nkept is None:
        nkept = (w != 0).sum(1)
    log_pi, kept = _kept_log_pi(logits, ids, nkept, temperature)
    a = alpha * torch.exp(log_pi)
    tiny = float(torch.finfo(torch.float32).tiny)
    lw = torch.log(torch.where(w >= tiny, w, torch.full_like(w, tiny)))
    ones = torch.ones_like(a)
    a_safe = torch.where(kept, a, ones)
    v = torch.where(kept, (a_safe - 1) * lw - torch.lgamma(a_safe), torch.zeros_like(a)).sum(1)
    return torch.where(kept.any(1), v + math.lgamma(alpha), torch.zeros_like(v))


def gaussian_log_density(x, mean, *, std):
    """float64 reference of :func:`softdec.gaussian_log_density`: log N(x; mean, std^2 I) per row."""
    d = x.double() - mean.double()
    D = x.shape[1]
    return -0.5 * (d * d).sum(1) / std ** 2 - D * (math.log(std) + 0.5 * math.log(2 * math.pi))


def verify_tree(target_logits: torch.Tensor, tree_tokens, tree_parents, *, draft_probs=None,
                method: str = "exact", temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                posterior_threshold: float = 0.09, posterior_alpha: float = 0.3, delta: float = 0.1,
                seed=0, offset=0):
    """Reference of ``softdec.verify_tree``: a loop over rows walking each tree.

    Same arguments, RNG layout and results as ``softdec.verify_tree`` (``seed`` /
    ``offset`` ints or (B,) tensors). The residual is kept normalised, ``r``
    (float64 for float64 logits), and child ``x`` drafted from ``q`` is accepted
    iff ``u * q(x) < r(x)``; on rejection ``r <- norm(max(0, r - q))``; the
    stop token is the exponential race of ``verify`` over ``r``.
    Returns ``softdec.VerifiedTree``.
    """
    from .ops import VerifiedTree
    from .ops import philox_uniform as _pu
    B, N, V = target_logits.shape
    dev = target_logits.device
    m = _VERIFY_METHODS.index(method)
    wdt = torch.float64 if target_logits.dtype == torch.float64 else torch.float32
    s = _verify_rows(seed, B, torch.int64, torch.device("cpu"))
    o = _verify_rows(offset, B, torch.int64, torch.device("cpu"))
    T = _verify_rows(temperature, B, wdt, dev)
    k = _verify_rows(top_k, B, torch.int64, dev)
    tp = _verify_rows(top_p, B, wdt, dev)
    mp = _verify_rows(min_p, B, wdt, dev)
    sparse = isinstance(draft_probs, (tuple, list))
    if sparse:
        sid, sw = draft_probs[0].long(), draft_probs[1].to(wdt)
    ks = sid.shape[-1] if (sparse and m == 4) else 0
    u_acc = _pu((B, max(N - 1, 1)), s, o).to(device=dev, dtype=wdt)
    nodes = torch.full((B, N), -1, dtype=torch.int64, device=dev)
    tokens = torch.full((B, N), -1, dtype=torch.int64, device=dev)
    nacc = torch.zeros(B, dtype=torch.int64, device=dev)
    soft_ids = torch.zeros(B, ks, dtype=torch.int64, device=dev)
    soft_w = torch.zeros(B, ks, dtype=torch.float32, device=dev)
    toks = tree_tokens.long()
    par = tree_parents.long()
    for b in range(B):
        kids = [[] for _ in range(N)]
        for n in range(1, N):
            if int(par[b, n]) >= 0:
                kids[int(par[b, n])].append(n)
        cur, na = 0, 0
        while True:
            lj = target_logits[b, cur][None]
            rb = slice(b, b + 1)
            if m == 4:
                ti, tw, valid = verify_soft_token(lj, ks, T[rb], k[rb], tp[rb], mp[rb])
                if not bool(valid[0]):
                    tokens[b, na] = -1
                    break
                nxt = None
                for c in kids[cur]:
                    tv = _soft_tv(ti, tw, sid[b, c][None], sw[b, c][None])
                    if float(tv[0]) <= delta + SOFT_TV_SLACK:
                        nxt = c
                        break
                if nxt is None:
                    tokens[b, na] = ti[0, 0]
                    soft_ids[b] = ti[0]
                    soft_w[b] = tw[0].float()
                    break
            else:
                p, valid = verify_target_probs(lj, T[rb], k[rb], tp[rb], mp[rb])
                p = p[0]
                if not bool(valid[0]):
                    tokens[b, na] = -1
                    break
                nxt = None
                r = p.clone()
                if m == 1:
                    am = int(lj[0].to(wdt).argmax())
                    nxt = next((c for c in kids[cur] if int(toks[b, c]) == am), None)
                    if nxt is None:
                        tokens[b, na] = am
                        break
                elif m == 2:
                    plogp = torch.where(p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))),
                                        torch.zeros_like(p))
                    H = float(-plogp.sum())
                    thr = min(posterior_threshold, posterior_alpha * math.exp(-H))
                    nxt = next((c for c in kids[cur] if float(p[int(toks[b, c])]) > thr), None)
                else:
                    for c in kids[cur]:
                        x = int(toks[b, c])
                        if draft_probs is None:
                            q = torch.zeros_like(r)
                            q[x] = 1.0
                        elif sparse:
                            q = torch.zeros_like(r).scatter_add_(0, sid[b, c], sw[b, c])
                        else:
                            q = draft_probs[b, c].to(wdt)
                        if float(u_acc[b, c - 1]) * float(q[x]) < float(r[x]):
                            nxt = c
                            break
                        rn = torch.clamp(r - q, min=0)
                        if not float(rn.sum()) > 0:
                            r = p.clone()  # residual gone through rounding: fall back to p
                            break
                        r = rn / rn.sum()
                if nxt is None:
                    tok = _verify_race(r[None], s[b:b + 1], o[b:b + 1] + 1 + cur)
                    tokens[b, na] = int(tok[0])
                    break
            nodes[b, na] = nxt
            tokens[b, na] = toks[b, nxt]
            na += 1
            cur = nxt
        nacc[b] = na
    return VerifiedTree(nodes, tokens, nacc, soft_ids if m == 4 else None, soft_w if m == 4 else None)
