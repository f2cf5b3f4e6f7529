"""softdec.verify vs its float reference (eager and torch.compile): exact verification at
V = 151936 for one-hot, dense and sparse drafts, plus the other methods at one shape."""

from __future__ import annotations

import torch

import softdec
from . import _peers
from .harness import Case
from softdec import reference as ref

V = 151936


def _inputs(B, K, kind, device, k=8, seed=0):
    """Target logits, and drafts sampled from a draft distribution close to the target
    (q = softmax(target + noise)), so acceptance is realistic (about half per position)."""
    gen_dev = device if str(device).startswith("cuda") else "cpu"  # a GPU draws its own inputs
    g = torch.Generator(device=gen_dev).manual_seed(seed)
    lg = torch.randn(B, K + 1, V, generator=g, device=gen_dev) * 4
    qlog = lg[:, :K] + torch.randn(B, K, V, generator=g, device=gen_dev)
    if kind == "sparse":
        top = torch.topk(qlog, k, -1)
        w = torch.softmax(top.values, -1)
        pick = torch.multinomial(w.reshape(-1, k), 1, generator=g).reshape(B, K)
        d = top.indices.gather(2, pick[..., None])[..., 0]
        dp = (top.indices.to(device), w.to(device))
    else:
        q = torch.softmax(qlog, -1)
        d = torch.multinomial(q.reshape(-1, V), 1, generator=g).reshape(B, K)
        dp = q.to(device) if kind == "dense" else None
    return lg.to(device), d.to(device), dp


def _fns(lg, d, dp, device, compile_=True, **kw):
    B = lg.shape[0]
    seed = torch.arange(B, dtype=torch.int64, device=device)
    ours = lambda: softdec.verify(lg, d, draft_probs=dp, seed=seed, **kw)  # noqa: E731
    eager = lambda: ref.verify(lg, d, draft_probs=dp, seed=seed, **kw)  # noqa: E731
    fns = {"softdec": ours, "eager": eager}
    if compile_:
        compiled_ref = torch.compile(ref.verify)
        fns["compile"] = lambda: compiled_ref(lg, d, draft_probs=dp, seed=seed, **kw)
    return fns


def accepted_path_bytes(lg, dp, num_accepted):
    """Bytes a verifier that stops at the first rejection must read: per row, the target logits of
    positions 0..num_accepted (the accepted drafts, then the rejected or bonus position) and, for
    dense drafts, the draft probabilities of the positions below K among them."""
    B, K1, V = lg.shape
    n = num_accepted.to("cpu", torch.int64)
    total = int((n + 1).sum()) * V * lg.element_size()
    if isinstance(dp, torch.Tensor):
        total += int(torch.clamp(n + 1, max=K1 - 1).sum()) * V * dp.element_size()
    return total


def gpu_shapes(full: bool):
    """CUDA rows, every run size: B in {1, 64} at K = 4 with one-hot, dense and sparse drafts
    (issue 17: verify at B = 64); --full adds K = 8."""
    return [(1, 4), (1, 8), (64, 4), (64, 8)] if full else [(1, 4), (64, 4)]


def cases(quick: bool, device: str, full: bool = False):
    out = []
    gpu = str(device).startswith("cuda")
    shapes = gpu_shapes(full) if gpu else (
        [(1, 4), (1, 8), (64, 4), (64, 8)] if full else ([(1, 4)] if quick else [(1, 4), (64, 4)]))
    for B, K in shapes:
        for kind in ("onehot", "dense", "sparse"):
            if not full and not gpu and B > 1 and kind != "onehot":
                continue  # default CPU run at B = 64: the one-hot draft only
            # default run: torch.compile of the reference on one row (each shape and kind recompiles)
            capped = not full and not quick and not (B == 1 and kind == "sparse")
            lg, d, dp = _inputs(B, K, kind, device)
            fns = _fns(lg, d, dp, device, compile_=not capped)
            if gpu:
                # the CUDA kernel walks positions in order and stops at the first rejection: the byte
                # floor is the accepted path of this very call (same seeds every call)
                seed = torch.arange(B, dtype=torch.int64, device=device)
                nacc = softdec.verify(lg, d, draft_probs=dp, seed=seed).num_accepted
                nbytes = accepted_path_bytes(lg, dp, nacc)
                fns.update(_peers.verify_fns(lg, d, dp, device))
                notes = [f"bytes = the accepted path's positions ({float(nacc.float().mean()):.2f} of {K} "
                         "drafts accepted on average), read once",
                         _peers.note(device, "" if kind == "dense" else
                                     "chain_speculative_sampling takes dense draft probs only: column on the "
                                     "dense rows")]
            else:
                nbytes = lg.numel() * lg.element_size() + (dp.numel() * dp.element_size()
                                                           if kind == "dense" else 0)
                notes = ["stops at the first rejection: bytes = all K+1 positions (upper bound)"]
            out.append(Case(op="verify", label=f"exact {kind} B={B} K={K} V={V}", fns=fns,
                            bytes=nbytes, memory_bound=gpu, device=device, compile_capped=capped,
                            notes="; ".join(filter(None, notes))))
    if full:
        B, K = 64, 4
        lg, d, dp = _inputs(B, K, "sparse", device)
        nb = torch.randint(0, V, (V, 4), generator=torch.Generator().manual_seed(1)).to(device)
        for method, kw in (("greedy", {}), ("typical", {}), ("relaxed", dict(neighbours=nb, delta=0.05)),
                           ("soft", dict(delta=0.3))):
            dd = None if method == "soft" else d
            fns = _fns(lg, dd, dp, device, method=method, **kw)
            out.append(Case(op="verify", label=f"{method} sparse B={B} K={K} V={V}", fns=fns,
                            bytes=lg.numel() * 4, memory_bound=False, device=device))
    return out


def _tree_inputs(B, N, kind, device, k=8, seed=0, dtype=torch.float32):
    """A 4-ary tree of N nodes (node n's parent (n - 1) // 4), target logits per node and node tokens
    drafted from a distribution close to the target at the parent (so paths go deep): one-hot drafts
    take the top token, dense and sparse drafts draw from q = softmax(target + noise) (its top k for
    sparse)."""
    g = torch.Generator().manual_seed(seed)
    parents = torch.tensor([-1] + [(n - 1) // 4 for n in range(1, N)]).expand(B, N).contiguous()
    lg = torch.randn(B, N, V, generator=g, dtype=torch.float32).mul_(4).to(dtype)
    par = parents[0].clamp(min=0)
    qlog = lg[:, par].float() + torch.randn(B, N, V, generator=g) if B * N <= 1024 else lg[:, par].float()
    dp = None
    if kind == "sparse":
        top = torch.topk(qlog, k, -1)
        w = torch.softmax(top.values, -1)
        pick = torch.multinomial(w.reshape(-1, k), 1, generator=g).reshape(B, N)
        tokens = top.indices.gather(2, pick[..., None])[..., 0]
        dp = (top.indices.to(device), w.to(device))
    elif kind == "dense":
        q = torch.softmax(qlog, -1)
        tokens = torch.multinomial(q.reshape(-1, V), 1, generator=g).reshape(B, N)
        dp = q.to(dtype).to(device)
    else:
        tokens = qlog.argmax(-1)  # deterministic (top-1) drafts
    return lg.to(device), tokens.to(device), parents.to(device), dp


def tree_cases(quick: bool, device: str, full: bool = False):
    """quick: B=1 N=16 one-hot, no compile. Default: B=1, N in {16, 64}, one-hot / dense / sparse, with
    torch.compile of the reference. full: also B=64, N in {16, 64} (the float64 reference walks rows in
    Python: one B=64 call takes seconds to a minute, timed once), dense drafts up to B*N = 1024 nodes
    (a (64, 64, 151936) dense draft would be 2.5 GB)."""
    out = []
    shapes = [(1, 16), (1, 64), (64, 16), (64, 64)] if full else ([(1, 16)] if quick else [(1, 16), (1, 64)])
    for B, N in shapes:
        for kind in (("onehot",) if quick else ("onehot", "dense", "sparse")):
            if kind == "dense" and B * N > 1024:
                continue
            capped = quick or (not full and kind != "sparse")  # default run: compile on the sparse rows
            dtype = torch.bfloat16 if B * N > 1024 else torch.float32
            lg, tokens, parents, dp = _tree_inputs(B, N, kind, device, dtype=dtype)
            seed = torch.arange(B, dtype=torch.int64, device=device)
            ours = lambda lg=lg, t=tokens, p=parents, dp=dp, s=seed: softdec.verify_tree(lg, t, p, draft_probs=dp, seed=s)  # noqa: E731
            eager = lambda lg=lg, t=tokens, p=parents, dp=dp, s=seed: ref.verify_tree(lg, t, p, draft_probs=dp, seed=s)  # noqa: E731
            fns = {"softdec": ours, "eager": eager}
            if not capped:
                compiled_ref = torch.compile(ref.verify_tree)
                fns["compile"] = lambda lg=lg, t=tokens, p=parents, dp=dp, s=seed: compiled_ref(  # noqa: E731
                    lg, t, p, draft_probs=dp, seed=s)
            nbytes = lg.numel() * lg.element_size() + (dp.numel() * dp.element_size() if kind == "dense" else 0)
            out.append(Case(op="verify_tree", label=f"exact {kind} B={B} N={N} V={V} {str(dtype)[6:]}",
                            fns=fns, compile_capped=capped and not quick,
                            bytes=nbytes, memory_bound=False, device=device,
                            notes="; ".join(filter(None, [
                                "walks only the accepted path: bytes = all N nodes (upper bound)",
                                _peers.note(device, "no token-tree verification (chain only)")]))))
    return out


_chain_cases = cases


def cases(quick: bool, device: str, full: bool = False):  # noqa: F811
    return _chain_cases(quick, device, full) + tree_cases(quick, device, full)
