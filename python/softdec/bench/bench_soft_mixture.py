"""soft_mixture (Soft Thinking concept tokens) against the eager reference,
torch.compile of it and the dense ``softmax(logits / T) @ E`` formulation.

Shapes from the issue: V = 151936 (Qwen2.5), D = 3584, bf16 embedding table,
float32 logits, k in {10, 30}, B in {1, 8, 64}, with the Soft Thinking
settings T = 0.6, top_p = 0.95, min_p = 0.001. Byte floor = logits read +
the kept embedding rows read (at most k per row) + the outputs written.
"""

from __future__ import annotations

import functools

import torch

import softdec
from softdec import reference as ref
from . import _peers
from .harness import Case

V, D = 151936, 3584
_TABLES: dict = {}


def _table(device, d=D):
    if (device, d) not in _TABLES:  # 1.1 GB at D = 3584: build once per device
        if str(device).startswith("cuda"):  # drawn on the GPU: no 1.1 GB host draw and copy
            g = torch.Generator(device=device).manual_seed(0)
            _TABLES[device, d] = torch.randn(V, d, generator=g, dtype=torch.bfloat16, device=device).mul_(0.02)
        else:
            g = torch.Generator().manual_seed(0)
            t = torch.randn(V, d, generator=g, dtype=torch.bfloat16)  # drawn in bf16: half the bytes of float32
            _TABLES[device, d] = t.mul_(0.02).to(device)
    return _TABLES[device, d]


@functools.lru_cache(maxsize=None)
def _compiled():
    return torch.compile(ref.soft_mixture, dynamic=False)


def _settings(k, noise=None, filter_top_k=None):
    kw = dict(top_k=k, temperature=0.6, top_p=0.95, min_p=0.001, noise=noise, tau=0.5, seed=1)
    if filter_top_k is not None:  # Soft Thinking's published settings: its top_k 30, max_topk 10
        kw["filter_top_k"] = filter_top_k
    return kw


def _kept_rows(logits, table, kw):
    """Embedding rows soft_mixture gathers (top-p / min-p keep 7-23 of k here)."""
    return int((softdec.soft_mixture(logits, table, **kw).weights > 0).sum())


def _make(B, k, device, noise=None, d=D, compile_=True, filter_top_k=None):
    if str(device).startswith("cuda"):
        g = torch.Generator(device=device).manual_seed(B * 100 + k)
        logits = torch.randn(B, V, generator=g, device=device) * 3
    else:
        g = torch.Generator().manual_seed(B * 100 + k)
        logits = (torch.randn(B, V, generator=g) * 3).to(device)
    table = _table(device, d)
    kw = _settings(k, noise, filter_top_k)
    fns = {
        "softdec": lambda: softdec.soft_mixture(logits, table, **kw),
        "eager": lambda: ref.soft_mixture(logits, table, **kw),
        "dense": lambda: ref.soft_mixture_dense(logits, table, temperature=0.6),
    }
    if compile_:
        fns["compile"] = lambda: _compiled()(logits, table, **kw)
    fns.update(_peers.soft_mixture_fns(logits, table, kw, device))
    kept = _kept_rows(logits, table, kw)
    nbytes = logits.numel() * logits.element_size() + kept * d * table.element_size() \
        + B * d * table.element_size() + B * k * (8 + 4)
    return fns, nbytes


def _make_cold(k, device, n=64):
    """B = 1 as in decoding: every call a new row of logits (n rows, 39 MB at
    n = 64: more than the L3, so each call reads its logits from DRAM) and so
    other embedding rows. Every callable cycles through the same rows."""
    g = torch.Generator().manual_seed(7 + k)
    rows = [(torch.randn(1, V, generator=g) * 3).to(device) for _ in range(n)]
    table = _table(device)
    kw = _settings(k)

    def cycling(f):
        state = [0]

        def call():
            state[0] = (state[0] + 1) % n
            return f(rows[state[0]])
        return call

    fns = {
        "softdec": cycling(lambda x: softdec.soft_mixture(x, table, **kw)),
        "eager": cycling(lambda x: ref.soft_mixture(x, table, **kw)),
        "compile": cycling(lambda x: _compiled()(x, table, **kw)),
        "dense": cycling(lambda x: ref.soft_mixture_dense(x, table, temperature=0.6)),
    }
    kept = sum(_kept_rows(x, table, kw) for x in rows) / n
    nbytes = V * rows[0].element_size() + kept * D * table.element_size() \
        + D * table.element_size() + k * (8 + 4)
    return fns, int(nbytes)


GPU_SHAPES = [(1, 10), (8, 10), (64, 30)]  # CUDA, every run size: the DESIGN B in {1, 8, 64} at D = 3584


def _chain_note(device):
    return _peers.note(device, "no fused soft-token op; flashinfer_chain = softmax + top_k_renorm_probs + "
                               "top_p_renorm_probs + torch top-k / min-p / gather-bmm (no entropy)")


def cases(quick: bool, device: str, full: bool = False):
    gpu = str(device).startswith("cuda")
    shapes = [(b, k) for k in (10, 30) for b in (1, 8, 64)] if full else (
        GPU_SHAPES if gpu else ([(1, 10), (8, 30)] if quick else [(1, 10), (64, 30)]))
    # quick: Qwen2.5-0.5B's hidden size (a 0.27 GB table, not 1.1 GB); a GPU takes the DESIGN D
    d = 896 if quick and not gpu else D
    out = []
    for B, k in shapes:
        capped = not full and not quick and B > 1
        fns, nbytes = _make(B, k, device, d=d, compile_=not capped)
        out.append(Case(op="soft_mixture", label=f"B={B} V={V} D={d} k={k} bf16", fns=fns,
                        bytes=nbytes, device=device, compile_capped=capped,
                        notes="; ".join(filter(None, ["fp32 logits, bf16 table, T=0.6 top_p=0.95 min_p=0.001",
                                                      _chain_note(device)]))))
    for B in ((64,) if quick else (1, 64)):
        capped = not full and not quick and B > 1
        fns, nbytes = _make(B, 10, device, d=d, compile_=not capped, filter_top_k=30)
        out.append(Case(op="soft_mixture", label=f"B={B} V={V} D={d} k=10 filter_top_k=30 bf16", fns=fns,
                        bytes=nbytes, device=device, compile_capped=capped,
                        notes="; ".join(filter(None, [
                            "Soft Thinking's settings: filter 30 -> top_p 0.95 -> min_p 0.001 -> top 10, T=0.6",
                            _chain_note(device)]))))
    if full:
        for k in (10, 30):
            fns, nbytes = _make_cold(k, device)
            out.append(Case(op="soft_mixture", label=f"B=1 V={V} D={D} k={k} bf16 cold", fns=fns,
                            bytes=nbytes, device=device,
                            notes="a new row of logits every call (64 rows cycled, 39 MB)"))
        fns, nbytes = _make(8, 10, device, noise="gumbel")
        out.append(Case(op="soft_mixture", label=f"B=8 V={V} D={D} k=10 gumbel", fns=fns,
                        bytes=nbytes, device=device, notes="Gumbel noise, tau=0.5"))
    return out
