"""The soft-token log-densities (gumbel_log_density, dirichlet_log_density,
gaussian_log_density) against what a trainer writes by hand: the eager float32
formula (SofT-GRPO's trainer: softmax over the vocabulary, gather the kept ids,
renormalise, log(pi + 1e-6), clamp [-1.5, 3], mean) and torch.compile of it.

V = 151936 (Qwen2.5), float32 logits, k in {5, 10}, B in {1, 64}; forward
alone and forward + backward (the dense (B, V) logits gradient). Byte floor:
forward = the kept logits, ids and y read + the output written (the kernel
reads only the k kept logits of a row: the renormalised weights do not depend
on the others); forward + backward = that + the (B, V) gradient written.
Dirichlet: B = 64, k = 10, alpha = 4. Gaussian: B = 64, D = 3584, bf16.
"""

from __future__ import annotations

import functools

import torch

import softdec
from .harness import Case

V, D = 151936, 3584
CLAMP, EPS = (-1.5, 3.0), 1e-6


def eager_gumbel(logits, ids, y, temperature=0.7):
    """The hand-written float32 trainer formula (dense softmax over V)."""
    p = torch.softmax(logits.float() / temperature, dim=-1).gather(-1, ids)
    lq = torch.log(p / p.sum(-1, keepdim=True) + EPS)
    z = (y - lq).clamp(*CLAMP)
    return (-z - torch.exp(-z)).mean(-1)


def eager_dirichlet(logits, ids, w, alpha=4.0, temperature=1.0):
    p = torch.softmax(logits.float() / temperature, dim=-1).gather(-1, ids)
    a = alpha * p / p.sum(-1, keepdim=True)
    return torch.lgamma(a.sum(-1)) - torch.lgamma(a).sum(-1) + ((a - 1) * torch.log(w)).sum(-1)


def eager_gaussian(x, mean, std=0.1):
    return torch.distributions.Normal(mean.float(), std).log_prob(x.float()).sum(-1)


@functools.lru_cache(maxsize=None)
def _compiled(fn):
    return torch.compile(fn, dynamic=False)


def _fwd_bwd(f, x, *rest):
    def call():
        x.grad = None
        f(x, *rest).sum().backward()
    return call


def _gumbel(B, k, device, backward):
    g = torch.Generator().manual_seed(B * 10 + k)
    logits = (torch.randn(B, V, generator=g) * 3).to(device)
    tok = softdec.soft_mixture(logits, torch.zeros(V, 1, device=device), top_k=k, temperature=0.7, noise="gumbel",
                               seed=1)
    ids, y = tok.ids, tok.noisy_logits
    kw = dict(temperature=0.7, gumbel_clamp=CLAMP, gumbel_eps=EPS)
    ours = lambda x, i, yy: softdec.gumbel_log_density(x, i, yy, **kw)  # noqa: E731
    fns = {"softdec": ours, "eager": eager_gumbel, "compile": _compiled(eager_gumbel)}
    nbytes = B * k * (4 + 8 + 4) + B * 4
    if backward:
        x = logits.clone().requires_grad_()
        nbytes += B * V * 4
        return {n: _fwd_bwd(f, x, ids, y) for n, f in fns.items()}, nbytes
    return {n: functools.partial(f, logits, ids, y) for n, f in fns.items()}, nbytes


def _dirichlet(B, k, device, backward):
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(B, V, generator=g) * 3).to(device)
    tok = softdec.soft_mixture(logits, torch.zeros(V, 1, device=device), top_k=k, noise="dirichlet",
                               dirichlet_alpha=4.0, seed=1)
    ids, w = tok.ids, tok.weights.clamp_min(torch.finfo(torch.float32).tiny)
    w = w / w.sum(1, keepdim=True)
    ours = lambda x, i, ww: softdec.dirichlet_log_density(x, i, ww, alpha=4.0)  # noqa: E731
    fns = {"softdec": ours, "eager": eager_dirichlet, "compile": _compiled(eager_dirichlet)}
    nbytes = B * k * (4 + 8 + 4) + B * 4
    if backward:
        x = logits.clone().requires_grad_()
        nbytes += B * V * 4
        return {n: _fwd_bwd(f, x, ids, w) for n, f in fns.items()}, nbytes
    return {n: functools.partial(f, logits, ids, w) for n, f in fns.items()}, nbytes


def _gaussian(B, device, backward):
    g = torch.Generator().manual_seed(5)
    mean = torch.randn(B, D, generator=g).to(torch.bfloat16).to(device)
    x = (mean.float() + 0.1 * torch.randn(B, D, generator=g).to(device)).to(torch.bfloat16)
    ours = lambda xx, m: softdec.gaussian_log_density(xx, m, std=0.1)  # noqa: E731
    fns = {"softdec": ours, "eager": eager_gaussian, "compile": _compiled(eager_gaussian)}
    nbytes = 2 * B * D * 2 + B * 4
    if backward:
        m = mean.clone().requires_grad_()
        nbytes += 2 * B * D * 2

        def fwd_bwd(f):
            def call():
                m.grad = None
                f(x, m).sum().backward()
            return call
        return {n: fwd_bwd(f) for n, f in fns.items()}, nbytes
    return {n: functools.partial(f, x, mean) for n, f in fns.items()}, nbytes


def _cap(fns, capped):
    if capped:
        fns.pop("compile", None)
    return fns


def cases(quick: bool, device: str, full: bool = False):
    """quick: B=64 k=5; default: B in {1, 64} at k=5, Dirichlet and Gaussian, compile baselines on the
    B=64 k=5 Gumbel rows only; full: k in {5, 10} and every compile baseline."""
    out = []
    shapes = [(64, 5)] if quick else ([(b, k) for k in (5, 10) for b in (1, 64)] if full else [(1, 5), (64, 5)])
    for B, k in shapes:
        for bwd in (False, True):
            capped = not full and not quick and (B, k) != (64, 5)
            fns, nbytes = _gumbel(B, k, device, bwd)
            out.append(Case(op="gumbel_log_density", label=f"B={B} V={V} k={k} {'fwd+bwd' if bwd else 'fwd'}",
                            fns=_cap(fns, capped), bytes=nbytes, device=device, compile_capped=capped,
                            notes="fp32 logits, T=0.7, clamp [-1.5, 3], eps 1e-6 (SofT-GRPO's trainer)"))
    if not quick:
        for bwd in (False, True):
            fns, nbytes = _dirichlet(64, 10, device, bwd)
            out.append(Case(op="dirichlet_log_density", label=f"B=64 V={V} k=10 {'fwd+bwd' if bwd else 'fwd'}",
                            fns=_cap(fns, not full), bytes=nbytes, device=device, compile_capped=not full,
                            notes="fp32 logits, alpha=4"))
            fns, nbytes = _gaussian(64, device, bwd)
            out.append(Case(op="gaussian_log_density", label=f"B=64 D={D} bf16 {'fwd+bwd' if bwd else 'fwd'}",
                            fns=_cap(fns, not full), bytes=nbytes, device=device, compile_capped=not full,
                            notes="grad w.r.t. mean"))
    return out
