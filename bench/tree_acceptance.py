"""Mean accepted length per round, chain vs token tree, at the same number of target-scored tokens
(tiny random models built from configs, nothing downloaded; not a timing benchmark).

    PYTHONPATH=python:tests python bench/tree_acceptance.py [arch ...]   (default llama)

A chain of K drafts scores K + 1 tokens per target forward; a tree of N nodes scores N. The draft is
the target with Gaussian noise (std 0.02; weights have std 0.15) on every weight matrix (so it agrees often, not always).
"""

from __future__ import annotations

import sys

import torch

import softdec.hf as H
import softdec.strategies as S


def perturbed(model, make, noise, seed=5):
    d = make()
    d.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in d.parameters():
            if p.dim() >= 2:
                p.add_(noise * torch.randn(p.shape, generator=g))
    return d


def main() -> int:
    from hf_archs import make_arch_model
    rows = []
    for arch in sys.argv[1:] or ("llama",):
        model = make_arch_model(arch, seed=0)
        draft = perturbed(model, lambda: make_arch_model(arch, seed=0), 0.02)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(3, 96, (4, 6), generator=g)
        for method, temp in (("greedy", 0.0), ("exact", 1.0)):
            for tree, K in (((2, 2), 6), ([(0,), (1,), (2,), (0, 0), (0, 0, 0), (0, 0, 0, 0), (1, 0), (0, 1)], 8)):
                for name, spec in (("chain", S.Speculative(draft, K, method, temperature=temp, seed=1)),
                                   ("tree", S.Speculative(draft, method=method, temperature=temp, seed=1,
                                                          tree=tree))):
                    out = H.generate(model, ids, strategy=spec, max_new_tokens=32, eos_token_id=[])
                    acc = out.stats.num_accepted
                    mean = float(acc[acc >= 0].double().mean())
                    scored = K + 1
                    rows.append((arch, method, scored, name if name == "chain" else f"tree {tree}", mean))
                    print(*rows[-1], sep=" | ", flush=True)
    print("| arch | method | target-scored tokens / round | drafter | mean accepted / round |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
