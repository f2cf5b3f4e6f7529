"""philox_uniform vs torch.rand (the RNG stream every op draws from) and philox_normal vs torch.randn."""

from __future__ import annotations

import torch

import softdec
from .harness import Case


def _make(shape, device):
    b = shape[0]
    seed = torch.arange(b, dtype=torch.int64, device=device)
    off = torch.zeros(b, dtype=torch.int64, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    return (lambda: softdec.philox_uniform(shape, seed, off),
            lambda: torch.rand(shape, device=device, generator=gen))


def cases(quick: bool, device: str, full: bool = False):
    gpu = str(device).startswith("cuda")  # a GPU: the B = 64 row even in --quick; write-bound there
    shapes = [(64 if gpu else 8, 151936)] if quick else (
        [(1, 151936), (64, 151936), (256, 151936)] if full else [(64, 151936)])
    out = []
    for shape in shapes:
        ours, rand = _make(shape, device)
        n = shape[0] * shape[1]
        out.append(Case(op="philox_uniform", label=f"B={shape[0]} V={shape[1]}",
                        fns={"softdec": ours, "torch.rand": rand}, bytes=4 * n,
                        memory_bound=gpu, device=device,
                        notes="bytes = the output written" if gpu else
                        "compute-bound: 10 Philox rounds per 4 uniforms"))
    if quick:
        return out
    # the Gaussian embedding noise of soft_mixture (embed_noise_std), B x D = 64 x 3584
    b, d = 64, 3584
    seed = torch.arange(b, dtype=torch.int64, device=device)
    off = torch.zeros(b, dtype=torch.int64, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    out.append(Case(op="philox_normal", label=f"B={b} D={d}",
                    fns={"softdec": lambda: softdec.philox_normal((b, d), seed, off),
                         "torch.randn": lambda: torch.randn((b, d), device=device, generator=gen)},
                    bytes=4 * b * d, memory_bound=False, device=device,
                    notes="compute-bound: one Philox block and a float64 Box-Muller per element"))
    return out
