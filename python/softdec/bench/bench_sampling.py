"""sample / gumbel_softmax vs the PyTorch references (softmax + sort-based
filtering + torch.multinomial), eager and under torch.compile.

Shapes: V in {151936 (Qwen2.5), 128256 (Llama 3)}, B in {1, 64, 256};
(a) plain sampling, (b) top-k=50 + top-p=0.9, (c) min-p=0.05. Logits are
float32 N(0, 2^2) (no early-exit luck: every token's noise is computed in (a)).
Bytes = the logits read once (the byte floor of a one-pass sampler).
"""

from __future__ import annotations

import torch

import softdec
from . import _peers
from .harness import Case
from softdec import reference as ref

VARIANTS = {
    "plain": dict(),
    "top_k=50,top_p=0.9": dict(top_k=50, top_p=0.9),
    "min_p=0.05": dict(min_p=0.05),
}

_compiled = {}


def _compiled_ref():
    if "sample" not in _compiled:
        _compiled["sample"] = torch.compile(ref.sample, dynamic=False)
    return _compiled["sample"]


def _logits(B, V, seed, device):
    """N(0, 2^2) float32 logits; drawn on the GPU itself on CUDA (no host copy of the DESIGN shapes)."""
    if str(device).startswith("cuda"):
        g = torch.Generator(device=device).manual_seed(seed)
        return torch.randn(B, V, generator=g, device=device) * 2.0
    g = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.randn(B, V, generator=g) * 2.0).to(device)


def gpu_grid(quick: bool, full: bool):
    """The CUDA rows: (V, B, variant) of the sample rows, the Gumbel-softmax B and the filter B. A GPU
    runs the DESIGN shapes in milliseconds, so even --quick has the issue-17 rows: plain and filtered
    sampling at B = 64 (and the top-k + top-p row at B = 1, the latency case)."""
    vs = [151936, 128256] if full else [151936]
    rows = [(V, B, name) for V in vs for B in ([1, 8, 64, 256] if full else [64]) for name in VARIANTS]
    if not full:
        rows.insert(0, (151936, 1, "top_k=50,top_p=0.9"))
    return rows, (256 if full else 64), (256 if full else 64)


def _make(B, V, kw, device, compile_=True):
    x = _logits(B, V, B * 7 + V, device)
    seed = torch.arange(B, device=device, dtype=torch.int64)
    gen = torch.Generator(device=device).manual_seed(0)
    fns = {
        "softdec": lambda: softdec.sample(x, seed=seed, offset=0, **kw),
        "eager": lambda: ref.sample(x, generator=gen, **kw),
    }
    if compile_:
        comp = _compiled_ref()
        fns["compile"] = lambda: comp(x, **kw)
    if not kw:
        fns["multinomial"] = lambda: torch.multinomial(torch.softmax(x, -1), 1, generator=gen)
    fns.update(_peers.sample_fns(x, kw, device))
    return fns, x


def _sample_rows(quick: bool, device: str, full: bool):
    if str(device).startswith("cuda"):
        return gpu_grid(quick, full)[0]
    vs = [151936, 128256] if full else [151936]
    bs = [1, 64, 256] if full else ([1] if quick else [1, 64])
    # default run at B = 64: the top-k + top-p row only
    return [(V, B, name) for V in vs for B in bs for name in VARIANTS
            if full or B == 1 or name == "top_k=50,top_p=0.9"]


def cases(quick: bool, device: str, full: bool = False):
    # default run: V = 151936, B = 64, torch.compile on one sampling variant (its warm-up is the cost)
    gpu = str(device).startswith("cuda")
    vs = [151936, 128256] if full else [151936]
    bs = [1, 64, 256] if full else ([1] if quick else [1, 64])
    out = []
    for V, B, name in _sample_rows(quick, device, full):
        kw = VARIANTS[name]
        capped = not full and not (B > 1 and name == "top_k=50,top_p=0.9")
        fns, x = _make(B, V, kw, device, compile_=not capped)
        out.append(Case(op="sample", label=f"{name} B={B} V={V}", fns=fns,
                        bytes=x.numel() * x.element_size(), device=device, compile_capped=capped,
                        notes="; ".join(filter(None, ["bytes = logits read once", _peers.note(device)]))))
    # Gumbel-softmax (dense): read logits, write probabilities.
    for V in vs[:1]:
        for B in ([gpu_grid(quick, full)[1]] if gpu else ([8] if quick else bs[-1:])):
            x = _logits(B, V, 1, device)
            seed = torch.arange(B, device=device)
            noise = ref.gumbel_noise(seed.cpu(), 0, 1, V).float().to(device).expand(B, V)

            def eager(x=x, noise=noise):
                return torch.softmax((x + noise) / 0.5, -1)

            comp = torch.compile(eager)
            out.append(Case(op="gumbel_softmax", label=f"dense tau=0.5 B={B} V={V}",
                            fns={"softdec": lambda x=x, seed=seed: softdec.gumbel_softmax(x, tau=0.5, seed=seed),
                                 "eager": eager, "compile": comp,
                                 "torch.F": lambda x=x: torch.nn.functional.gumbel_softmax(x, tau=0.5)},
                            bytes=2 * x.numel() * x.element_size(), device=device, memory_bound=gpu,
                            notes="; ".join(filter(None, [
                                "eager/compile get precomputed noise (no RNG cost); compute-bound on CPU",
                                _peers.note(device, "no Gumbel-softmax op (dense probabilities out)")]))))
    # The standalone filter ops (vLLM / SGLang style): read a row, write a row.
    B, V = (gpu_grid(quick, full)[2] if gpu else (8 if quick else bs[-1])), vs[0]
    x = _logits(B, V, 2, device)
    p = torch.softmax(x, -1)
    filters = {
        "top_k_mask_logits k=50": (softdec.top_k_mask_logits, ref.top_k_mask_logits, x, 50),
        "top_p_renorm_probs p=0.9": (softdec.top_p_renorm_probs, ref.top_p_renorm_probs, p, 0.9),
        "min_p_renorm_probs p=0.05": (softdec.min_p_renorm_probs, ref.min_p_renorm_probs, p, 0.05),
    }
    for label, (ours, reference, inp, arg) in filters.items():
        if quick and not gpu and not label.startswith("top_p"):
            continue
        capped = not full and not quick and not label.startswith("top_p")
        fns = {"softdec": lambda f=ours, a=inp, v=arg: f(a, v),
               "eager": lambda f=reference, a=inp, v=arg: f(a, v)}
        if not capped:
            fns["compile"] = lambda f=torch.compile(reference), a=inp, v=arg: f(a, v)
        fns.update(_peers.filter_fns(label.split()[0], inp, arg, device))
        missing = "no min_p_renorm_probs" if label.startswith("min_p") else ""
        out.append(Case(op=label.split()[0], label=f"{label.split()[1]} B={B} V={V}", fns=fns,
                        bytes=2 * inp.numel() * inp.element_size(), device=device, compile_capped=capped,
                        notes="; ".join(filter(None, ["bytes = row read + row written",
                                                      _peers.note(device, missing)]))))
    return out
